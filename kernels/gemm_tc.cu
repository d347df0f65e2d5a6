// gemm_tc.cu: a tiled GEMM on tensor cores (mma.sync, ldmatrix, cp.async; kernels/mma.cuh), the
// template the tensor-core convolutions generalize (an implicit GEMM is this GEMM with operand
// loaders that compute im2col addresses).
//
//   C[M, N] = A[M, K] B            A row-major [M][K]; C row-major [M][N]
//   gemm_tc_nt   B given as [N][K] (C = A B^T, both operands K-contiguous: ldmatrix)
//   gemm_tc_nn   B given as [K][N] (N-contiguous: ldmatrix.trans); bf16/fp16 builds only, since
//                .trans moves 16-bit elements and cannot transpose TF32's 32-bit ones
//
// Precision (common.cuh): storage_t operands, products exact and sums in float32 on the tensor
// cores (bf16 -> mma .bf16, fp16 -> .f16, float32 in the TF32 build -> .tf32 with each operand
// rounded by tf32_round), each output rounded ONCE: into C (storage_t) or, when C is null, written
// as float32 into C32 (a workspace, e.g. split-K partial sums). The kernels compute only in the
// builds with a tensor-core format (GPUCONV_TENSOR_CORES: bfloat16, float16, TF32); in float64 and
// strict float32 (and gemm_tc_nn in TF32) they trap.
//
// Launch: block = TC_THREADS (128: 4 warps), grid = (ceil(M / 64), ceil(N / 64)); static shared
// memory 3 stages x 8 KiB = 24 KiB. vec_a, vec_b: the bytes each copy moves for A and B, 16, 8, 4
// (cp.async) or 2 (plain loads, for 16-bit rows of odd length); the launcher picks the largest
// that divides the operand's row pitch in bytes and its address
// (gpuconv/ops/_launch_gemm_tc.py). M, N >= 1 and K >= 0 of any size (edges zero-filled, stores
// guarded).
//
// Structure (what the conv kernels reuse):
// - A CTA computes a 64x64 tile of C; its 4 warps each a 32x32 quarter, as 2 x 4 mma tiles of
//   16x8 (32 float accumulators per thread).
// - K is walked in k-tiles of TC_KBYTES = 64 bytes (32 bf16/fp16 or 16 TF32 elements): 2 mma
//   steps of 32 bytes each.
// - Operand loaders (DenseTileLoader here; an im2col loader for a convolution): an object with
//       void load(unsigned char* stage, int kt, int vec) const;
//   that issues this thread's share of the copies of k-tile kt into one shared-memory stage,
//   laid out as ROWS rows of ROW_BYTES bytes, swizzled (swizzle_offset in mma.cuh), zero-filling
//   every byte outside the operand. The main loop only sees stages.
// - Fragment readers (FragA, FragB_nt, FragB_nn) turn a stage into a warp's mma fragments with
//   ldmatrix; an epilogue functor stores an accumulator element.
// - The pipeline (tc_gemm_mainloop) keeps TC_STAGES - 1 = 2 k-tiles in flight: one
//   cp.async.wait_group + one __syncthreads per k-tile (see the comments there).
// A Hopper variant (wgmma.mma_async from shared-memory descriptors, TMA or cp.async.bulk loads)
// would keep the loaders' stage layout (64- and 128-byte swizzles are wgmma's 64B/128B modes; its
// stages need 1024-byte alignment) and replace the fragment readers and the mma loop.

#define TC_BM 64            // CTA tile rows (M)
#define TC_BN 64            // CTA tile columns (N)
#define TC_KBYTES 64        // bytes of K per k-tile: one 64-byte row per M (or N) row of a stage
#define TC_STAGES 3         // shared-memory stages: 2 k-tiles in flight while a third is multiplied
#define TC_THREADS 128      // 4 warps, 2 x 2 over the CTA tile, 32 x 32 each
#define TC_A_STAGE (TC_BM * TC_KBYTES)   // bytes of one A stage (4096)
#define TC_B_STAGE (TC_BN * TC_KBYTES)   // bytes of one B stage, either layout (4096)

// ------------------------------------------------------------------------------------------
// Loading: one copy of VEC bytes, src_bytes of them from global memory, the rest zeros.
template <int VEC>
__device__ inline void copy_piece(unsigned char* dst, const unsigned char* src, int src_bytes) {
    cp_async_ca<VEC>(dst, src, src_bytes);
}
template <>
__device__ inline void copy_piece<16>(unsigned char* dst, const unsigned char* src, int src_bytes) {
    cp_async_cg(dst, src, src_bytes);  // the tile is read once per block: keep it out of L1
}
template <>
__device__ inline void copy_piece<2>(unsigned char* dst, const unsigned char* src, int src_bytes) {
    // 16-bit rows of odd length are only 2-byte aligned, below cp.async's smallest copy: a plain
    // load and store, visible to the block after the barrier that precedes the tile's use.
    *(unsigned short*)dst = src_bytes ? *(const unsigned short*)src : (unsigned short)0;
}

// An operand tile of a dense row-major matrix: ROWS rows of ROW_BYTES bytes per stage. Row r,
// byte b of k-tile kt come from global row (kt * kt_rows + r) and byte (kt * kt_bytes + b) counted
// from `base`, the tile's first element: A and B [N][K] step along their rows (kt_bytes =
// TC_KBYTES), B [K][N] steps down its rows (kt_rows = 32 rows of K). Outside rows_valid rows or
// row_bytes bytes the stage is zero-filled (cp.async src-size), so edges need no other guard.
template <int ROWS, int ROW_BYTES>
struct DenseTileLoader {
    const unsigned char* base;
    long long pitch;      // bytes between consecutive rows in global memory
    int rows_valid;       // rows from `base` on that lie in the matrix
    long long row_bytes;  // bytes of a row from `base` on that lie in the matrix
    int kt_rows, kt_bytes;

    __device__ void load(unsigned char* stage, int kt, int vec) const {
        switch (vec) {
            case 16: copy<16>(stage, kt); break;
            case 8: copy<8>(stage, kt); break;
            case 4: copy<4>(stage, kt); break;
            default: copy<2>(stage, kt); break;
        }
    }

    template <int VEC>
    __device__ void copy(unsigned char* stage, int kt) const {
        constexpr int PER_ROW = ROW_BYTES / VEC, PIECES = ROWS * PER_ROW;
        const int row0 = kt * kt_rows;
        const long long byte0 = (long long)kt * kt_bytes;
        // Not unrolled: unrolled, ptxas kept the addresses of every piece of the four widths live
        // across the k-loop (255 registers on sm_90); rolled up, the kernel needs about 60.
#pragma unroll 1
        for (int q = 0; q < (PIECES + TC_THREADS - 1) / TC_THREADS; ++q) {
            const int p = threadIdx.x + q * TC_THREADS;
            if (PIECES % TC_THREADS == 0 || p < PIECES) {
                const int r = p / PER_ROW, b = (p % PER_ROW) * VEC;
                const long long left = row0 + r < rows_valid ? row_bytes - (byte0 + b) : 0;
                const int n = left <= 0 ? 0 : (left < VEC ? (int)left : VEC);
                const unsigned char* src = n ? base + (row0 + r) * pitch + byte0 + b : base;
                copy_piece<VEC>(stage + swizzle_offset<ROW_BYTES>(r, b), src, n);
            }
        }
    }
};

// ------------------------------------------------------------------------------------------
// Fragments. A warp's lane l supplies the row address of matrix j = l / 8, row l % 8 of each
// ldmatrix.x4 (mma.cuh's table). Warp w covers rows 32 * (w / 2) and columns 32 * (w % 2) of the
// CTA tile; ks is the mma step (32 bytes of K) within the stage.

// A stage [BM rows][64 bytes of K]: one x4 per 16x(32 bytes) fragment: matrices (rows 0-7,
// bytes 0-15), (rows 8-15, bytes 0-15), (rows 0-7, bytes 16-31), (rows 8-15, bytes 16-31).
struct FragA {
    template <class Op>
    __device__ static void load(const unsigned char* stage, int ks, unsigned a[2][4]) {
        const int lane = threadIdx.x % 32, j = lane / 8, wm = threadIdx.x / 32 / 2;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int row = 32 * wm + 16 * i + 8 * (j & 1) + lane % 8;
            ldmatrix_x4(a[i], stage + swizzle_offset<TC_KBYTES>(row, 32 * ks + 16 * (j >> 1)));
            Op::prepare(a[i], 4);
        }
    }
};

// B stage [BN rows of N][64 bytes of K] (B given as [N][K]): one x4 per two 8-column B
// fragments: matrices (n 0-7, bytes 0-15), (n 0-7, bytes 16-31), (n 8-15, ...), (n 8-15, ...).
struct FragB_nt {
    template <class Op>
    __device__ static void load(const unsigned char* stage, int ks, unsigned b[4][2]) {
        const int lane = threadIdx.x % 32, j = lane / 8, wn = threadIdx.x / 32 % 2;
#pragma unroll
        for (int p = 0; p < 2; ++p) {
            const int row = 32 * wn + 16 * p + 8 * (j >> 1) + lane % 8;
            unsigned r[4];
            ldmatrix_x4(r, stage + swizzle_offset<TC_KBYTES>(row, 32 * ks + 16 * (j & 1)));
            Op::prepare(r, 4);
            b[2 * p][0] = r[0]; b[2 * p][1] = r[1]; b[2 * p + 1][0] = r[2]; b[2 * p + 1][1] = r[3];
        }
    }
};

// B stage [32 rows of K][BN columns of N, 128 bytes] (B given as [K][N], 16-bit): .trans reads
// the 8x8 blocks column-major: matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), ...
struct FragB_nn {
    template <class Op>
    __device__ static void load(const unsigned char* stage, int ks, unsigned b[4][2]) {
        const int lane = threadIdx.x % 32, j = lane / 8, wn = threadIdx.x / 32 % 2;
#pragma unroll
        for (int p = 0; p < 2; ++p) {
            const int krow = 16 * ks + 8 * (j & 1) + lane % 8;
            const int col = 32 * wn + 16 * p + 8 * (j >> 1);
            unsigned r[4];
            ldmatrix_x4_trans(r, stage + swizzle_offset<2 * TC_BN>(krow, 2 * col));
            b[2 * p][0] = r[0]; b[2 * p][1] = r[1]; b[2 * p + 1][0] = r[2]; b[2 * p + 1][1] = r[3];
        }
    }
};

// ------------------------------------------------------------------------------------------
// The pipeline. Groups are committed every round, empty or not, so that "all but the newest
// TC_STAGES - 2 groups" is always k-tile kt. Per k-tile kt:
//   wait_group  -> this thread's copies of tile kt have landed;
//   __syncthreads -> everyone's have, and every warp is done with tile kt - 1, whose stage
//                    ((kt - 1) % STAGES == (kt + STAGES - 1) % STAGES) is refilled next;
//   issue tile kt + STAGES - 1, then multiply tile kt while it streams in.
template <class Op, class FragB, class LoaderA, class LoaderB>
__device__ void tc_gemm_mainloop(const LoaderA& la, const LoaderB& lb, int ktiles, int vec_a, int vec_b,
                                 unsigned char* As, unsigned char* Bs, float acc[2][4][4]) {
#pragma unroll
    for (int s = 0; s < TC_STAGES - 1; ++s) {
        if (s < ktiles) {
            la.load(As + s * TC_A_STAGE, s, vec_a);
            lb.load(Bs + s * TC_B_STAGE, s, vec_b);
        }
        cp_async_commit();
    }
    for (int kt = 0; kt < ktiles; ++kt) {
        cp_async_wait<TC_STAGES - 2>();
        __syncthreads();
        const int next = kt + TC_STAGES - 1;
        if (next < ktiles) {
            la.load(As + next % TC_STAGES * TC_A_STAGE, next, vec_a);
            lb.load(Bs + next % TC_STAGES * TC_B_STAGE, next, vec_b);
        }
        cp_async_commit();
        const unsigned char* A = As + kt % TC_STAGES * TC_A_STAGE;
        const unsigned char* B = Bs + kt % TC_STAGES * TC_B_STAGE;
#pragma unroll
        for (int ks = 0; ks < TC_KBYTES / 32; ++ks) {
            unsigned a[2][4], b[4][2];
            FragA::load<Op>(A, ks, a);
            FragB::template load<Op>(B, ks, b);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int n = 0; n < 4; ++n) Op::mma(acc[i][n], a[i], b[n]);
        }
    }
}

// The epilogue: accumulator element r of mma tile (i, n) is C[g + 8 * (r / 2)][2t + r % 2] of
// that tile (mma.cuh's C layout); stores are guarded against M and N.
struct GemmStore {
    storage_t* C;
    float* C32;
    int M, N;
    __device__ void operator()(int row, int col, float v) const {
        if (row >= M || col >= N) return;
        const index_t at = (index_t)row * N + col;
        if (C) C[at] = from_acc(v);
        else C32[at] = v;
    }
};

template <class Epilogue>
__device__ void tc_gemm_epilogue(const Epilogue& store, int m0, int n0, const float acc[2][4][4]) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int row0 = m0 + 32 * (warp / 2) + lane / 4, col0 = n0 + 32 * (warp % 2) + 2 * (lane % 4);
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int n = 0; n < 4; ++n)
#pragma unroll
            for (int r = 0; r < 4; ++r) store(row0 + 16 * i + 8 * (r / 2), col0 + 8 * n + r % 2, acc[i][n][r]);
}

// The kernel body: LoaderB and FragB fix B's layout.
template <class FragB, int B_ROWS, int B_ROW_BYTES>
__device__ void gemm_tc_body(const storage_t* A, const storage_t* B, storage_t* C, float* C32, int M, int N, int K,
                             int vec_a, int vec_b, bool b_kn) {
    __shared__ __align__(128) unsigned char As[TC_STAGES * TC_A_STAGE];
    __shared__ __align__(128) unsigned char Bs[TC_STAGES * TC_B_STAGE];
    const int es = (int)sizeof(storage_t);
    const int m0 = blockIdx.x * TC_BM, n0 = blockIdx.y * TC_BN;
    const long long kbytes = (long long)K * es;
    DenseTileLoader<TC_BM, TC_KBYTES> la = {(const unsigned char*)(A + (index_t)m0 * K), kbytes, M - m0, kbytes,
                                            0, TC_KBYTES};
    DenseTileLoader<B_ROWS, B_ROW_BYTES> lb;
    if (b_kn) lb = {(const unsigned char*)(B + n0), (long long)N * es, K, (long long)(N - n0) * es, B_ROWS, 0};
    else lb = {(const unsigned char*)(B + (index_t)n0 * K), kbytes, N - n0, kbytes, 0, TC_KBYTES};
    float acc[2][4][4] = {};
    const int ktiles = (int)((kbytes + TC_KBYTES - 1) / TC_KBYTES);
    tc_gemm_mainloop<TensorCoreOp<storage_t>, FragB>(la, lb, ktiles, vec_a, vec_b, As, Bs, acc);
    tc_gemm_epilogue(GemmStore{C, C32, M, N}, m0, n0, acc);
}

// Every build exports both entry points (the registry's one table of names per file); where a
// build has no tensor-core format for them (float64, strict float32; TF32 for the .trans path)
// the body traps. The launcher refuses those calls before they reach a GPU.
extern "C" __global__ void __launch_bounds__(TC_THREADS)
gemm_tc_nt(const storage_t* A, const storage_t* B, storage_t* C, float* C32, int M, int N, int K, int vec_a, int vec_b) {
#if GPUCONV_TENSOR_CORES
    gemm_tc_body<FragB_nt, TC_BN, TC_KBYTES>(A, B, C, C32, M, N, K, vec_a, vec_b, false);
#else
    __trap();
#endif
}

extern "C" __global__ void __launch_bounds__(TC_THREADS)
gemm_tc_nn(const storage_t* A, const storage_t* B, storage_t* C, float* C32, int M, int N, int K, int vec_a, int vec_b) {
#if GPUCONV_TENSOR_CORES && !GPUCONV_TF32
    gemm_tc_body<FragB_nn, TC_KBYTES / 2, 2 * TC_BN>(A, B, C, C32, M, N, K, vec_a, vec_b, true);
#else
    __trap();
#endif
}
