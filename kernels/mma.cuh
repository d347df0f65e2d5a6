// mma.cuh: the warp-level tensor-core instructions of sm_80 (sm_90 runs them too), their sm_75
// (Turing: T4, RTX 20xx) forms, and the shared-memory swizzle their tiles use. Each instruction has ONE GPU form (inline PTX) and ONE
// simulator form (C++ over the 32 lanes of a warp, on gpuconv/hostsim's warp_instruction and
// deferred-copy queue), chosen by __CUDA_ARCH__, which NVRTC defines and the simulator does not.
// The registry adds this header after common.cuh to the units that list it
// (gpuconv.kernels.UNIT_HEADERS); it includes nothing itself.
//
// Layouts and semantics are those of the PTX ISA (NVIDIA, "Parallel Thread Execution ISA",
// version 9.x; sections "Matrix Fragments for mma.m16n8k16 with floating point type", "Matrix
// Fragments for mma.m16n8k8", "Warp-level matrix load instruction: ldmatrix" with its Figure
// "ldmatrix fragment layout for one 8x8 Matrix with 16-bit elements", and "Data Movement and
// Conversion Instructions: cp.async", "cp.async.commit_group", "cp.async.wait_group"). For lane l
// of a warp, with g = l >> 2 (the PTX's groupID) and t = l % 4 (threadID_in_group):
//
//   mma.m16n8k16 .bf16/.f16: every .b32 register holds two elements, the lower-indexed one in its
//   low 16 bits ("elements low to high" a0, a1, ...):
//     A 16x16 (row):  a[0] = A[g][2t, 2t+1]    a[1] = A[g+8][2t, 2t+1]
//                     a[2] = A[g][2t+8, 2t+9]  a[3] = A[g+8][2t+8, 2t+9]
//     B 16x8 (col):   b[0] = B[2t, 2t+1][g]    b[1] = B[2t+8, 2t+9][g]
//   mma.m16n8k8 .f16 (sm_75): A 16x8 (row):  a[0] = A[g][2t, 2t+1]  a[1] = A[g+8][2t, 2t+1]
//                             B 8x8 (col):   b[0] = B[2t, 2t+1][g]
//     so an m16n8k16 fragment is two of them: a[0], a[1] with b[0] hold k 0-7, a[2], a[3] with b[1]
//     k 8-15 (CUTLASS's SM75_16x8x8_F32F16F16F32_TN layouts say the same).
//   mma.m16n8k8 .tf32: one element per register:
//     A 16x8:  a[0] = A[g][t]  a[1] = A[g+8][t]  a[2] = A[g][t+4]  a[3] = A[g+8][t+4]
//     B 8x8:   b[0] = B[t][g]  b[1] = B[t+4][g]
//   C and D (16x8 float32), both shapes: c[0] = C[g][2t]    c[1] = C[g][2t+1]
//                                        c[2] = C[g+8][2t]  c[3] = C[g+8][2t+1]
//   ldmatrix .m8n8 .b16, matrix j (j < 1, 2 or 4 for .x1/.x2/.x4) into register r[j]: lanes
//   8j .. 8j+7 give the addresses of its rows 0..7 (16 bytes each; the other lanes' addresses are
//   not used), and lane l receives row g, elements 2t and 2t+1; with .trans it receives
//   elements [2t][g] and [2t+1][g] (the matrix read column-major).
//
// So ldmatrix.x4 of a 16x16 16-bit tile (matrices: rows 0-7 and 8-15 of columns 0-7, then of
// columns 8-15) is exactly an A fragment; of a [n][k] tile (k contiguous) it is two B fragments;
// and .trans of a [k][n] tile (n contiguous) gives B fragments too. On 32-bit data one 16-byte
// row is four floats, so ldmatrix (without .trans) of 8x4-float matrices is exactly the tf32
// fragments: a GEMM written in bytes (32 bytes of K per mma, 16 per matrix column block) is the
// same code for bf16, fp16 and tf32. .trans moves 16-bit elements and cannot transpose floats.
//
// The simulator's arithmetic. NVIDIA does not specify the order or internal precision of the sums
// inside one mma; the simulator fixes one: for each output, the k products (exact in float32:
// bf16 x bf16 and fp16 x fp16 have at most 22 significant bits, tf32 x tf32 too) are summed in
// float32 in order k = 0, 1, ..., each addition rounded to nearest even, then C is added. Results
// are deterministic; tests hold both the simulator and a GPU to the NumPy product within a bound
// derived from K (gpuconv.gradcheck.reduction_tolerance), and to exact equality where every
// partial sum is exact (small integers). A .tf32 operand uses only its TF32 bits (sign, exponent,
// 10 mantissa bits): the simulator clears the 13 low bits of each (as wgmma is documented to),
// so a kernel must round its operands first, as the precision rule asks and the tests check
// (tf32_operand, common.cuh).
//
// cp.async in the simulator: the destination is filled with 0xFF poison when the copy is issued
// (its content is undefined on a GPU until the copy completes) and the data lands only at the
// cp.async.wait_group / wait_all that retires its group. A read of the destination before that
// wait and the barrier after it (this thread or another, a consumer of the stage's previous tile
// included) sees NaN/garbage and fails the tests.
//
// The sm_75 build (GPUCONV_MMA_SM75: NVRTC for compute capability 7.5, or the simulator's sm_75
// build, GPUCONV_SIM_SM75, which gpuconv.kernels.sim_arch(75) asks for): Turing's tensor cores
// multiply float16 only, in mma.m16n8k8 (PTX ISA: .m16n8k8 .f16 needs sm_75; .m16n8k16, .bf16 and
// .tf32 sm_80), and it has ldmatrix (.trans included) but no cp.async. So there
// mma_m16n8k16_f16 is two m16n8k8 .f16 (k 0-7, then k 8-15 added to that), the bf16 and TF32
// forms do not exist (TensorCoreOp of those types stops the compile by name), cp.async is a
// synchronous copy with the same zero fill (commit and wait do nothing: the data is in shared
// memory when the copy returns, and the pipeline's barriers order it for the other threads), and
// wgmma.cuh builds no wgmma. The simulator runs the same forms in its sm_75 build.
//
// A warp instruction reached by fewer than 32 lanes, or by lanes at different call sites, is
// reported by the simulator as warp divergence naming the kernel, block, warp, instruction and
// line (the call site is the caller's line, passed by default arguments in the simulator form).

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 750
#error "kernels/mma.cuh needs sm_75 or newer (mma.sync .f16 and ldmatrix; bf16, tf32 and cp.async sm_80): compile for compute_75+"
#endif
#ifdef __CUDA_ARCH__
#define GPUCONV_MMA_SM75 (__CUDA_ARCH__ < 800)
#elif defined(GPUCONV_SIM_SM75) && GPUCONV_SIM_SM75
#define GPUCONV_MMA_SM75 1
#else
#define GPUCONV_MMA_SM75 0
#endif

#ifdef __CUDA_ARCH__
#define GPUCONV_SITE
#define GPUCONV_SITE_FIRST
#define GPUCONV_SITE_FWD
// The 32-bit shared-window address of a generic pointer into shared memory, as ldmatrix and
// cp.async take it.
__device__ inline unsigned smem_address(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
#else
// The caller's file and line, for the divergence messages (evaluated at each call site).
#define GPUCONV_SITE , const char *site_file = __builtin_FILE(), int site_line = __builtin_LINE()
#define GPUCONV_SITE_FIRST const char *site_file = __builtin_FILE(), int site_line = __builtin_LINE()
#define GPUCONV_SITE_FWD , site_file, site_line

namespace mma_sim {
// One lane's operands of an mma: A and B fragments, C, and D written back by the warp.
struct MmaLane { unsigned a[4], b[2]; float c[4], d[4]; };

inline float bf16_bits(unsigned h) { return __uint_as_float(h << 16); }
inline float f16_bits(unsigned h) { half_t v; v.bits = (unsigned short)h; return half_to_float(v); }
inline float tf32_bits(unsigned u) { return __uint_as_float(u & 0xffffe000u); }

// D = A B + C for one m16n8k16 (.bf16 or .f16, TO_FLOAT widening one 16-bit element), m16n8k8
// .f16 (PAIRS: two elements per register) or m16n8k8 .tf32 over the 32 lanes' fragments, laid
// out as in the table at the top.
template <int K, float (*TO_FLOAT)(unsigned), bool PAIRS = K == 16>
void mma_lanes(void* const* ops) {
    float A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < 32; ++l) {
        const MmaLane* p = (const MmaLane*)ops[l];
        const int g = l >> 2, t = l & 3;
        if (K == 8 && PAIRS) {
            for (int r = 0; r < 2; ++r) {  // a[r]: row g (+8 for r = 1), columns 2t, 2t+1
                A[g + 8 * r][2 * t] = TO_FLOAT(p->a[r] & 0xffffu);
                A[g + 8 * r][2 * t + 1] = TO_FLOAT(p->a[r] >> 16);
            }
            B[2 * t][g] = TO_FLOAT(p->b[0] & 0xffffu);  // b[0]: rows 2t, 2t+1, column g
            B[2 * t + 1][g] = TO_FLOAT(p->b[0] >> 16);
        } else if (K == 16) {
            for (int r = 0; r < 4; ++r) {  // a[r]: rows g (+8 for r odd), columns 2t (+8 for r >= 2)
                const int row = g + 8 * (r & 1), col = 2 * t + 8 * (r >> 1);
                A[row][col] = TO_FLOAT(p->a[r] & 0xffffu);
                A[row][col + 1] = TO_FLOAT(p->a[r] >> 16);
            }
            for (int r = 0; r < 2; ++r) {  // b[r]: rows 2t, 2t+1 (+8 for r = 1), column g
                B[2 * t + 8 * r][g] = TO_FLOAT(p->b[r] & 0xffffu);
                B[2 * t + 8 * r + 1][g] = TO_FLOAT(p->b[r] >> 16);
            }
        } else {
            for (int r = 0; r < 4; ++r) A[g + 8 * (r & 1)][t + 4 * (r >> 1)] = TO_FLOAT(p->a[r]);
            B[t][g] = TO_FLOAT(p->b[0]);
            B[t + 4][g] = TO_FLOAT(p->b[1]);
        }
        for (int r = 0; r < 4; ++r) C[g + 8 * (r >> 1)][2 * t + (r & 1)] = p->c[r];
    }
    for (int l = 0; l < 32; ++l) {
        MmaLane* p = (MmaLane*)ops[l];
        const int g = l >> 2, t = l & 3;
        for (int r = 0; r < 4; ++r) {
            const int i = g + 8 * (r >> 1), j = 2 * t + (r & 1);
            float s = 0.0f;
            for (int k = 0; k < K; ++k) s += A[i][k] * B[k][j];
            p->d[r] = s + C[i][j];
        }
    }
}

// A_REGS and B_REGS: the fragment registers the shape has (m16n8k8 .f16: 2 and 1).
template <int K, float (*TO_FLOAT)(unsigned), int A_REGS = 4, int B_REGS = 2>
inline void mma(float d[4], const unsigned* a, const unsigned* b, const float c[4], const char* name,
                const char* file, int line) {
    MmaLane op = {};
    for (int r = 0; r < 4; ++r) op.c[r] = c[r];
    for (int r = 0; r < A_REGS; ++r) op.a[r] = a[r];
    for (int r = 0; r < B_REGS; ++r) op.b[r] = b[r];
    gpuconv_sim::warp_instruction(name, mma_lanes<K, TO_FLOAT, A_REGS == 2>, &op, file, line);
    for (int r = 0; r < 4; ++r) d[r] = op.d[r];
}

// One lane's ldmatrix: the row address it supplies and the registers it receives.
struct LdmatrixLane { const void* row; unsigned r[4]; };

template <int NUM, bool TRANS>
void ldmatrix_lanes(void* const* ops) {
    const unsigned short* rows[32];
    for (int l = 0; l < 8 * NUM; ++l) {  // only lanes 0 .. 8*NUM-1 supply addresses
        const void* p = ((const LdmatrixLane*)ops[l])->row;
        if ((uintptr_t)p % 16) {
            gpuconv_sim::insn_error("lane %d's row address %p is not 16-byte aligned (ldmatrix reads 16-byte rows): "
                                    "align the tile and its row pitch to 16 bytes", l, p);
            return;
        }
        if (!gpuconv_sim::shared_range(p, 16)) {
            gpuconv_sim::insn_error("lane %d's row address %p is not in shared memory: ldmatrix reads __shared__ tiles "
                                    "(stage global data through shared memory first)", l, p);
            return;
        }
        rows[l] = (const unsigned short*)p;
    }
    for (int l = 0; l < 32; ++l) {
        LdmatrixLane* p = (LdmatrixLane*)ops[l];
        const int g = l >> 2, t = l & 3;
        for (int j = 0; j < NUM; ++j) {
            const unsigned short* const* m = rows + 8 * j;  // matrix j's eight rows
            const unsigned lo = TRANS ? m[2 * t][g] : m[g][2 * t];
            const unsigned hi = TRANS ? m[2 * t + 1][g] : m[g][2 * t + 1];
            p->r[j] = lo | hi << 16;
        }
    }
}

template <int NUM, bool TRANS>
inline void ldmatrix(unsigned* r, const void* row, const char* name, const char* file, int line) {
    LdmatrixLane op;
    op.row = row;
    gpuconv_sim::warp_instruction(name, ldmatrix_lanes<NUM, TRANS>, &op, file, line);
    for (int j = 0; j < NUM; ++j) r[j] = op.r[j];
}

// cp.async: check the operands as the PTX states them, poison the destination until the copy
// completes, and queue it for the wait that retires its group.
inline void cp_async(void* dst, const void* src, int bytes, int src_bytes, const char* name) {
    if (src_bytes < 0 || src_bytes > bytes)
        gpuconv_sim::thread_error("issues %s with src-size %d: it must lie in 0..%d (the cp-size); the bytes past "
                                  "src-size are zero-filled", name, src_bytes, bytes);
    if (!gpuconv_sim::shared_range(dst, (size_t)bytes))
        gpuconv_sim::thread_error("issues %s to %p, which is not %d bytes of shared memory: the destination of "
                                  "cp.async is a __shared__ tile", name, dst, bytes);
    if ((uintptr_t)dst % bytes || (uintptr_t)src % bytes)
        gpuconv_sim::thread_error("issues %s from %p to %p: both addresses must be aligned to the cp-size, %d "
                                  "bytes (choose a smaller copy for a misaligned operand)", name, src, dst, bytes);
#ifdef __SANITIZE_ADDRESS__
    // The source is read at the wait; touch it now too, so that AddressSanitizer names the
    // thread and the line that issued an out-of-bounds copy.
    unsigned char probe[16];
    if (src_bytes) memcpy(probe, src, (size_t)src_bytes);
#endif
#if GPUCONV_MMA_SM75
    // sm_75 has no cp.async: the copy happens now (mma.cuh's cp_async_sync on the GPU).
    if (src_bytes > 0 && src_bytes <= bytes) memcpy(dst, src, (size_t)src_bytes);
    if (src_bytes >= 0 && src_bytes < bytes) memset((char*)dst + src_bytes, 0, (size_t)(bytes - src_bytes));
#else
    memset(dst, 0xFF, (size_t)bytes);
    gpuconv_sim::defer_copy(dst, src, (unsigned)bytes, (unsigned)src_bytes);
#endif
}
}  // namespace mma_sim
#endif

// ------------------------------------------------------------------------------------------
// mma.sync: d = a * b + c over the warp's fragments (d may be c: accumulate in place).

// m16n8k8 .f16 (sm_75 on): a[0..1], b[0] as in the table at the top.
__device__ inline void mma_m16n8k8_f16(float d[4], const unsigned a[2], const unsigned b[1],
                                       const float c[4] GPUCONV_SITE) {
#ifdef __CUDA_ARCH__
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%8,%9,%10};"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(b[0]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#else
    mma_sim::mma<8, mma_sim::f16_bits, 2, 1>(d, a, b, c, "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32",
                                             site_file, site_line);
#endif
}

#if GPUCONV_MMA_SM75
// sm_75: k 0-7 (a[0], a[1], b[0]), then k 8-15 (a[2], a[3], b[1]) added to that.
__device__ inline void mma_m16n8k16_f16(float d[4], const unsigned a[4], const unsigned b[2],
                                        const float c[4] GPUCONV_SITE) {
    mma_m16n8k8_f16(d, a, b, c GPUCONV_SITE_FWD);
    mma_m16n8k8_f16(d, a + 2, b + 1, d GPUCONV_SITE_FWD);
}
#else
__device__ inline void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2],
                                         const float c[4] GPUCONV_SITE) {
#ifdef __CUDA_ARCH__
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#else
    mma_sim::mma<16, mma_sim::bf16_bits>(d, a, b, c, "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
                                         site_file, site_line);
#endif
}

__device__ inline void mma_m16n8k16_f16(float d[4], const unsigned a[4], const unsigned b[2],
                                        const float c[4] GPUCONV_SITE) {
#ifdef __CUDA_ARCH__
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#else
    mma_sim::mma<16, mma_sim::f16_bits>(d, a, b, c, "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
                                        site_file, site_line);
#endif
}

// a and b hold float32 bit patterns already rounded for TF32 (tf32_operand).
__device__ inline void mma_m16n8k8_tf32(float d[4], const unsigned a[4], const unsigned b[2],
                                        const float c[4] GPUCONV_SITE) {
#ifdef __CUDA_ARCH__
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#else
    mma_sim::mma<8, mma_sim::tf32_bits>(d, a, b, c, "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32",
                                        site_file, site_line);
#endif
}
#endif  // GPUCONV_MMA_SM75

// ------------------------------------------------------------------------------------------
// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}[.trans].shared.b16: `row` is this lane's row address (a
// 16-byte-aligned pointer into shared memory), r[j] receives matrix j's fragment.
// The "memory" clobbers keep the compiler from moving shared-memory stores across the loads.
#ifdef __CUDA_ARCH__
#define GPUCONV_LDMATRIX(NAME, NUM, TRANS, PTX, OUTS, ...)                                       \
    __device__ inline void NAME(unsigned r[NUM], const void* row) {                             \
        asm volatile(PTX " " OUTS ", [%" #NUM "];" : __VA_ARGS__ : "r"(smem_address(row)) : "memory"); \
    }
#else
#define GPUCONV_LDMATRIX(NAME, NUM, TRANS, PTX, OUTS, ...)                                       \
    inline void NAME(unsigned r[NUM], const void* row GPUCONV_SITE) {                           \
        mma_sim::ldmatrix<NUM, TRANS>(r, row, PTX, site_file, site_line);                         \
    }
#endif
GPUCONV_LDMATRIX(ldmatrix_x1, 1, false, "ldmatrix.sync.aligned.m8n8.x1.shared.b16", "{%0}", "=r"(r[0]))
GPUCONV_LDMATRIX(ldmatrix_x2, 2, false, "ldmatrix.sync.aligned.m8n8.x2.shared.b16", "{%0,%1}", "=r"(r[0]), "=r"(r[1]))
GPUCONV_LDMATRIX(ldmatrix_x4, 4, false, "ldmatrix.sync.aligned.m8n8.x4.shared.b16", "{%0,%1,%2,%3}",
                 "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]))
GPUCONV_LDMATRIX(ldmatrix_x1_trans, 1, true, "ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16", "{%0}", "=r"(r[0]))
GPUCONV_LDMATRIX(ldmatrix_x2_trans, 2, true, "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16", "{%0,%1}",
                 "=r"(r[0]), "=r"(r[1]))
GPUCONV_LDMATRIX(ldmatrix_x4_trans, 4, true, "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16", "{%0,%1,%2,%3}",
                 "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]))
#undef GPUCONV_LDMATRIX

// ------------------------------------------------------------------------------------------
// cp.async.{ca,cg}.shared.global [smem], [gmem], BYTES, src_bytes: copies src_bytes bytes
// (0..BYTES) from global memory and zero-fills the rest of the BYTES at smem, asynchronously:
// the data may be read only after the cp.async.wait_group that retires its commit group (and,
// for other threads, a __syncthreads after that). src_bytes 0 reads nothing (padding, rows past
// the edge; gmem must still be a valid, aligned address). Both addresses aligned to BYTES.
// .ca (4, 8 or 16 bytes) caches in L1 and L2; .cg (16 bytes only) in L2 alone, for tiles that
// each block reads once.
// On sm_75 (no cp.async) each is cp_async_sync: the same bytes, copied before it returns.
#if GPUCONV_MMA_SM75 && defined(__CUDA_ARCH__)
template <int BYTES> struct CopyVector;
template <> struct CopyVector<4> { typedef unsigned type; };
template <> struct CopyVector<8> { typedef uint2 type; };
template <> struct CopyVector<16> { typedef uint4 type; };

template <int BYTES>
__device__ inline void cp_async_sync(void* smem, const void* gmem, int src_bytes) {
    typedef typename CopyVector<BYTES>::type V;
    if (src_bytes == BYTES) {
        *(V*)smem = *(const V*)gmem;
    } else if (src_bytes <= 0) {
        *(V*)smem = V();
    } else {  // a row's last bytes (the general loader's narrow edges): byte by byte, zeros after
#pragma unroll
        for (int i = 0; i < BYTES; ++i)
            ((unsigned char*)smem)[i] = i < src_bytes ? ((const unsigned char*)gmem)[i] : (unsigned char)0;
    }
}
#endif

template <int BYTES>
__device__ inline void cp_async_ca(void* smem, const void* gmem, int src_bytes) {
    static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
#if GPUCONV_MMA_SM75 && defined(__CUDA_ARCH__)
    cp_async_sync<BYTES>(smem, gmem, src_bytes);
#elif defined(__CUDA_ARCH__)
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;"
                 :: "r"(smem_address(smem)), "l"(gmem), "n"(BYTES), "r"(src_bytes) : "memory");
#else
    mma_sim::cp_async(smem, gmem, BYTES, src_bytes, "cp.async.ca.shared.global");
#endif
}

__device__ inline void cp_async_cg(void* smem, const void* gmem, int src_bytes) {
#if GPUCONV_MMA_SM75 && defined(__CUDA_ARCH__)
    cp_async_sync<16>(smem, gmem, src_bytes);
#elif defined(__CUDA_ARCH__)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;"
                 :: "r"(smem_address(smem)), "l"(gmem), "r"(src_bytes) : "memory");
#else
    mma_sim::cp_async(smem, gmem, 16, src_bytes, "cp.async.cg.shared.global");
#endif
}

// Closes the group of this thread's cp.async issued since the last commit (possibly empty).
__device__ inline void cp_async_commit() {
#if GPUCONV_MMA_SM75
#elif defined(__CUDA_ARCH__)
    asm volatile("cp.async.commit_group;" ::: "memory");
#else
    gpuconv_sim::commit_copies();
#endif
}

// Waits until at most N of this thread's committed groups are still in flight (the N newest).
template <int N>
__device__ inline void cp_async_wait() {
#if GPUCONV_MMA_SM75
#elif defined(__CUDA_ARCH__)
    asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory");
#else
    gpuconv_sim::complete_copies(N);
#endif
}

// Waits for every cp.async of this thread, committed or not.
__device__ inline void cp_async_wait_all() {
#if GPUCONV_MMA_SM75
#elif defined(__CUDA_ARCH__)
    asm volatile("cp.async.wait_all;" ::: "memory");
#else
    gpuconv_sim::commit_copies();
    gpuconv_sim::complete_copies(0);
#endif
}

// ------------------------------------------------------------------------------------------
// The shared-memory swizzle of the operand tiles. A tile row is ROW_BYTES = 64 or 128 bytes: 4 or
// 8 chunks of 16 bytes. ldmatrix reads one 16-byte chunk from each of 8 consecutive rows at once
// (one matrix), and 32 banks x 4 bytes = 128 bytes serve a request without conflict only if the
// 8 chunks fall in 8 different 16-byte bank groups. Unswizzled, the chunks of one column of 64- or
// 128-byte rows share 2 or 1 bank groups (4- or 8-way conflicts). So bits 4-6 of the byte offset
// (the chunk within a 128-byte line) are XORed with bits 7-9 (the line's index, mod 8), masked to
// the chunks a row has:
//   128-byte rows: chunk' = chunk ^ (row % 8)
//    64-byte rows: chunk' = chunk ^ ((row / 2) % 4)
// CUTLASS's Swizzle<3,4,3> and Swizzle<2,4,3> (llm.c's and the wgmma 128B/64B swizzle modes).
// Within one 16-byte chunk nothing moves, so 16-byte copies and ldmatrix rows stay contiguous;
// 8 consecutive rows of one logical chunk hit 8 distinct bank groups (tests/test_warp_primitives.py
// checks it). A tile must start on a 128-byte boundary (1024 for a future wgmma descriptor).
template <int ROW_BYTES>
__device__ inline int swizzle_offset(int row, int byte) {
    static_assert(ROW_BYTES == 64 || ROW_BYTES == 128, "the swizzle is defined for 64- and 128-byte rows");
    const int off = row * ROW_BYTES + byte;
    return off ^ (((off >> 7) & (ROW_BYTES / 16 - 1)) << 4);
}

// ------------------------------------------------------------------------------------------
// The tensor-core operation of a storage type, the one place a kernel's dtype picks the mma:
// bf16_t -> m16n8k16 .bf16, half_t -> m16n8k16 .f16, float (the TF32 build) -> m16n8k8 .tf32; the
// sm_75 build has half_t alone (its m16n8k16 being two m16n8k8).
// Every shape takes 32 bytes of K per mma, A fragments of 4 and B fragments of 2 registers, and
// accumulates float32. prepare() turns fragment registers loaded from storage into the
// instruction's operand format (TF32: rounded with cvt.rna, the precision rule's rounding);
// ROUNDS_FRAGMENTS says whether it does anything. ROUNDS_STAGES and PREROUNDED (false here) say
// where else a TF32 operand is rounded: in shared memory (StageRounded), or before the launch
// (Prerounded).
template <class T> struct TensorCoreOp {
    static_assert(sizeof(T) == 0, "no tensor-core multiply for this storage type in this build: the sm_75 build "
                  "(compute capability 7.5) multiplies float16 only; bfloat16 and TF32 need compute capability 8.0 "
                  "and run on the CUDA-core kernels below it (gpuconv.kernels.tensor_cores_available)");
};

#if !GPUCONV_MMA_SM75
template <> struct TensorCoreOp<bf16_t> {
    typedef bf16_t storage;
    static constexpr bool ROUNDS_FRAGMENTS = false, ROUNDS_STAGES = false, PREROUNDED = false;
    __device__ static void prepare(unsigned*, int) {}
    __device__ static void mma(float acc[4], const unsigned a[4], const unsigned b[2] GPUCONV_SITE) {
        mma_m16n8k16_bf16(acc, a, b, acc GPUCONV_SITE_FWD);
    }
};

#endif

template <> struct TensorCoreOp<half_t> {
    typedef half_t storage;
    static constexpr bool ROUNDS_FRAGMENTS = false, ROUNDS_STAGES = false, PREROUNDED = false;
    __device__ static void prepare(unsigned*, int) {}
    __device__ static void mma(float acc[4], const unsigned a[4], const unsigned b[2] GPUCONV_SITE) {
        mma_m16n8k16_f16(acc, a, b, acc GPUCONV_SITE_FWD);
    }
};

#if !GPUCONV_MMA_SM75
template <> struct TensorCoreOp<float> {
    typedef float storage;
    static constexpr bool ROUNDS_FRAGMENTS = true, ROUNDS_STAGES = false, PREROUNDED = false;
    __device__ static void prepare(unsigned* r, int n) {
        for (int i = 0; i < n; ++i) r[i] = __float_as_uint(tf32_operand(__uint_as_float(r[i])));
    }
    __device__ static void mma(float acc[4], const unsigned a[4], const unsigned b[2] GPUCONV_SITE) {
        mma_m16n8k8_tf32(acc, a, b, acc GPUCONV_SITE_FWD);
    }
};
#endif

// Op with its operands already in the instruction's format in shared memory: TF32 values rounded
// once per k-tile by the threads that copied them (tc_tile.cuh's TcMultiply::prepare), so the
// fragments go to the mma as read. Every value of a stage is read by several warps (an A row by
// each warp of its tile row), so rounding the stage takes a third of the fragment roundings of
// a 128x128 tile: a k-tile's 48 values a thread become 16, plus a load and
// a store per 16-byte piece. For loaders whose every copy is a 16-byte piece of the thread's own
// (round_tf32 rounds those): the pieces of another thread's copies may not have landed yet.
template <class Op>
struct StageRounded : Op {
    static constexpr bool ROUNDS_FRAGMENTS = false, ROUNDS_STAGES = true, PREROUNDED = false;
    __device__ static void prepare(unsigned*, int) {}
};

// Op with operands the launcher rounded to TF32 before the launch (gpuconv/ops/_launch_conv2d_tc.py:
// the convolutions, every direction, conv2d_tc_round_tf32), so neither the stages nor the
// fragments are rounded: in a 128x128 tile's k-tile that is a third of the loop's instructions
// (sm_90: forward 236 -> 150, weight gradient 274 -> 178). Every element is rounded once by that
// pass where a stage rounding rounded it once per tile that read it. The simulator checks the
// promise: a staged value that is not a TF32 value ends the launch with an error
// (tc_prepare_stages, and the loaders that store through registers). In the 16-bit builds it is
// Op as it is.
template <class Op>
struct Prerounded : Op {
    static constexpr bool ROUNDS_FRAGMENTS = false, ROUNDS_STAGES = false, PREROUNDED = GPUCONV_TF32 != 0;
    __device__ static void prepare(unsigned*, int) {}
};
