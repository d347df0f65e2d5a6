// common.cuh: helpers shared by every kernel file.
//
// The registry (gpuconv/kernels/) builds each translation unit as
//     #define GPUCONV_STORAGE bf16_t   // the arrays' element type: double, float, bf16_t or half_t
//     #define GPUCONV_ACC float        // what products and sums are computed in
//     #define GPUCONV_TF32 0           // 1: GEMM operands rounded to TF32 (float32 builds only)
//     #define GPUCONV_TENSOR_CORES 1   // 1: the operands have a tensor-core format (bf16, fp16, TF32)
//     #line 1 "kernels/common.cuh"   <this file>
//     #line 1 "kernels/mma.cuh"      <the tensor-core instructions, in the files that use them>
//     #line 1 "kernels/<op>.cu"      <the op file>
// and no file includes another: NVRTC has no host headers, and the host simulator compiles the
// same text with g++. For the same reason only a small CUDA surface is used: __global__,
// __device__, __shared__, the thread-index built-ins, __syncthreads, atomicAdd, the
// __float_as_uint/__uint_as_float reinterpretations, __launch_bounds__ (defined away below
// when absent) and one inline-PTX cvt (TF32, GPU side only).
//
// Precision: one rule on every backend (gpuconv/precision.py states it for the Python side).
//   storage_t  the element type of the arrays: double (float64), float (float32), bf16_t
//              (bfloat16, ml_dtypes), half_t (float16).
//   acc_t      the type every product and sum is computed in: double for the float64 build,
//              float for all others. A bf16/fp16 kernel reads its inputs with to_acc (exact),
//              multiplies and adds in float32 (a product of two bf16 or two fp16 values is exact
//              in float32), and rounds each output ONCE with from_acc, to nearest even.
//   TF32       a compute mode of the float32 build, not a type: GPUCONV_TF32 rounds the GEMM
//              operands to TF32 (10 explicit mantissa bits) as they are staged (gemm_operand);
//              products (exact: 11 x 11 bits) and sums stay float32, as on tensor cores.
// Conversions are bit manipulations on 16/32-bit integers, the same text on the GPU and in
// the simulator, and bit-exact against ml_dtypes (bfloat16) and NumPy (float16) for every value:
// subnormals, overflow to inf, inf, NaN (tests/test_precision_kernels.py checks them all).

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

// Element offsets are 64-bit: a CIFAR batch of 512 x 256 x 32 x 32 floats is 2^27 elements,
// and N*C*H*W passes 2^31 soon after; GEMM row/column indices stay int (the launchers check).
typedef long long index_t;

// Threads per block of the elementwise and pooling kernels (a multiple of the 32-lane warp;
// 256 keeps 8 warps in flight per block, enough to hide global latency on sm_80/sm_90).
// The launchers size their grids with gpuconv.kernels.BLOCK, the same number (tests check).
#define GPUCONV_BLOCK 256

__device__ inline int imin(int a, int b) { return a < b ? a : b; }
__device__ inline int imax(int a, int b) { return a > b ? a : b; }

// Floor division that is right for negative numerators (C's / truncates toward zero).
__device__ inline int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Whether this block is the last of the `blocks` blocks sharing `ticket` to get here in this
// launch (a block-uniform answer): a reduction finished by whichever block arrives last. Every
// thread fences its writes, then thread 0 takes a ticket (atomicAdd); the last resets it to 0
// for the next launch and fences, so that its reads of the others' writes (volatile: past L1,
// they were written by other SMs) come after them.
// (Not inline: the simulator makes its __shared__ a static of the function, which in an inline
// function lands in a section of its own.)
__device__ bool last_block_of(unsigned* ticket, unsigned blocks) {
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        last = atomicAdd(ticket, 1u) == blocks - 1;
        if (last) {
            *ticket = 0;
            __threadfence();
        }
    }
    __syncthreads();
    return last;
}

// First flat index of a grid-stride loop, and its step, in 64 bits.
__device__ inline index_t global_thread_index() {
    return (index_t)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ inline index_t global_thread_count() {
    return (index_t)gridDim.x * blockDim.x;
}

// a / b with *rest = a % b, for a >= 0 and b >= 1. A 64-bit division by a value known only at run
// time is a long emulated sequence, several times the 32-bit one; an index below 2^31 (every
// index of an array under 2^31 elements, which is nearly all of them) takes the 32-bit division.
__device__ inline index_t divmod_index(index_t a, int b, int* rest) {
    if (a <= (index_t)0x7fffffff) {
        const unsigned q = (unsigned)a / (unsigned)b;
        *rest = (int)((unsigned)a - q * (unsigned)b);
        return (index_t)q;
    }
    const index_t q = a / b;
    *rest = (int)(a - q * b);
    return q;
}

// Division by a divisor d (1 <= d < 2^31) known on the host: n / d for 0 <= n < 2^31 as a
// multiply-high, an add and a shift (Granlund and Montgomery's round-up method), where a 32-bit
// division by a value known only at run time is some 20 instructions. With s = ceil(log2 d) and
// m = floor(2^32 * (2^s - d) / d) + 1 (below 2^32; 1 for a power of two, d = 1 included), n / d
// = (mulhi(n, m) + n) >> s exactly: (m + 2^32) / 2^(32+s) exceeds 1/d by at most 2^-(32+s),
// which n < 2^31 turns into less than 1/d. The launcher computes (m, s)
// (gpuconv.kernels.fast_divisor) and passes them as kernel arguments, which the loops keep in
// uniform registers (sm_90 SASS: IMAD.WIDE.U32 and SHF on UR operands): no per-thread register.
struct FastDiv {
    unsigned m, s;
    __device__ int div(int n) const {
        const unsigned hi = (unsigned)(((unsigned long long)(unsigned)n * m) >> 32);
        return (int)((hi + (unsigned)n) >> s);
    }
};

// A strided data gradient's phases (kernels/conv2d.cu, conv2d_tc.cu). With strides (sh, sw),
// dx[ih] receives dy[oh] * w[fh] only where ih + ph - fh = oh * sh: the input rows of one phase r
// (ih = r + sh * i) meet the taps of one residue f0 = (r + ph) % sh alone (fh = f0 + sh * j), each
// at oh = i + q - j with q = (r + ph - f0) / sh. So the data gradient splits into sh * sw dense
// unit-stride GEMMs, one per blockIdx.z, each over the taps that reach its rows: no product of a
// tap and a pixel it does not reach (a strided gather's zeros, (sh * sw - 1) / (sh * sw) of its
// products) and no division by the stride. The launchers order the filter's taps by phase (by
// fh % sh, fw % sw, then fh / sh, fw / sw: gpuconv/ops/_launch_conv2d_tc.py's phase_order), so that
// a phase's taps are one run of each filter row. StridePhase is one dimension of a phase; at unit
// stride it is the whole problem (size = extent, taps = F, q = p, first = 0).
struct StridePhase {
    int r;      // the phase: input rows r, r + s, ...
    int size;   // how many (possibly 0: an extent shorter than the stride)
    int taps;   // the taps that reach them: ceil(F / s) or floor(F / s), 0 where the stride passes
                // over the filter (dx is 0 there)
    int q;      // oh = i + q - j for input row r + s * i and tap f0 + s * j
    int first;  // the taps of the phases before this one, in the phase-ordered filter
    __device__ StridePhase(int r_, int extent, int F, int s, int p) : r(r_) {
        const int f0 = (r_ + p) % s;
        size = (extent - r_ + s - 1) / s;  // (0 <= numerator for r < s)
        taps = (F - f0 + s - 1) / s;       // (0 where f0 >= F: 1 - s <= F - f0 <= 0)
        q = (r_ + p - f0) / s;
        first = f0 * (F / s) + (f0 < F % s ? f0 : F % s);  // (the residues below F % s have one tap more)
    }
};

// A phase's GEMM row m = (n, i, j) (per_image = its rows' and columns' sizes' product, size_w the
// columns') as image n and the input pixel (r_h + sh i, r_w + sw j) of a W-wide plane.
struct PhasePixel {
    int per_image, size_w, W, sh, sw, rh, rw;
    __device__ int operator()(int m, int* n) const {
        *n = m / per_image;
        const int p = m - *n * per_image, i = p / size_w, j = p - i * size_w;
        return (rh + sh * i) * W + rw + sw * j;
    }
};

// Splits the flat index i of a row-major [...][H][W] array into its two fastest coordinates
// (h, w) and returns the index of the plane above them (i may pass 2^31: see divmod_index).
__device__ inline index_t split_hw(index_t i, int H, int W, int* h, int* w) {
    return divmod_index(divmod_index(i, W, w), H, h);
}

// ------------------------------------------------------------------------------------------
// Element types and conversions.
//
// The 2-byte formats are structs, not bare unsigned shorts, so that no arithmetic can happen on
// their bits by accident: every read goes through to_acc, every write through from_acc.
// `numpy_dtype` names the NumPy dtype of the arrays they point into; the host simulator's
// argument checks read it (a GPU does not look at it).
struct bf16_t {
    unsigned short bits;
    static constexpr const char* numpy_dtype = "bfloat16";
};
struct half_t {
    unsigned short bits;
    static constexpr const char* numpy_dtype = "float16";
};

typedef GPUCONV_STORAGE storage_t;
typedef GPUCONV_ACC acc_t;

// bfloat16 is the top half of a float32: widening is a shift, exact for every pattern.
__device__ inline float bf16_to_float(bf16_t v) { return __uint_as_float((unsigned)v.bits << 16); }

// Round to nearest even by adding 0x7fff plus the lowest kept bit, then truncating: a carry out
// of the mantissa moves to the next binade, and past the largest finite value to inf, as IEEE
// rounding does. bfloat16 has float32's exponent range, so subnormals need no special case.
// Every NaN becomes the quiet NaN 0x7fc0 with its sign, as ml_dtypes (Eigen) produces.
__device__ inline bf16_t float_to_bf16(float f) {
    const unsigned u = __float_as_uint(f);
    bf16_t r;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        r.bits = (unsigned short)(((u >> 16) & 0x8000u) | 0x7fc0u);
    } else {
        r.bits = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    return r;
}

// float16: 1 sign, 5 exponent (bias 15), 10 mantissa bits; widening is exact. Subnormals are
// m * 2^-24, exact in float32; inf and NaN keep their payload shifted up, as NumPy does.
__device__ inline float half_to_float(half_t v) {
    const unsigned h = v.bits, sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (m << 13));
    if (e == 0) return __uint_as_float(sign | __float_as_uint((float)(int)m * 5.9604644775390625e-08f));  // 2^-24
    return __uint_as_float(sign | ((e + 112u) << 23) | (m << 13));
}

// Round to nearest even into float16, NumPy's float32 -> float16 rule bit for bit:
//   |f| >= 65520 (halfway from the largest finite, 65504, to 2^16) -> inf;
//   normal range: rebias the exponent by 127 - 15 and round the 23-bit mantissa to 10 bits;
//   below 2^-14: a subnormal m * 2^-24, the mantissa shifted right with its own rounding (a
//   round-up out of the largest subnormal lands on the smallest normal, 0x0400, by itself).
//   NaN keeps its sign and the top 10 payload bits, made nonzero (0x7c01) if they were all zero.
__device__ inline half_t float_to_half(float f) {
    const unsigned u = __float_as_uint(f), a = u & 0x7fffffffu;
    const unsigned sign = (u >> 16) & 0x8000u;
    unsigned h;
    if (a > 0x7f800000u) {
        const unsigned payload = (a >> 13) & 0x3ffu;
        h = 0x7c00u | (payload ? payload : 1u);
    } else if (a >= 0x477ff000u) {
        h = 0x7c00u;
    } else if (a >= 0x38800000u) {
        const unsigned r = a - 0x38000000u;  // exponent - 112
        h = (r + 0xfffu + ((r >> 13) & 1u)) >> 13;
    } else if (a <= 0x33000000u) {  // |f| <= 2^-25, half the smallest subnormal: ties to 0
        h = 0;
    } else {
        const unsigned shift = 126u - (a >> 23);  // 14 .. 24
        const unsigned m = (a & 0x7fffffu) | 0x800000u;
        const unsigned rest = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        h = m >> shift;
        if (rest > half || (rest == half && (h & 1u))) ++h;
    }
    half_t r;
    r.bits = (unsigned short)(sign | h);
    return r;
}

// A product rounded on its own: NVRTC contracts a*b + c into one FMA by default (-fmad=true), and
// kernels that follow a reference operation for operation (NumPy rounds every product) write
// mul_rn(a, b) + c, whose __fmul_rn/__dmul_rn is never contracted.
__device__ inline float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ inline double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// Reads and writes of storage_t in acc_t, overloaded per type (a tag picks from_acc's result).
__device__ inline double to_acc(double v) { return v; }
__device__ inline float to_acc(float v) { return v; }
__device__ inline float to_acc(bf16_t v) { return bf16_to_float(v); }
__device__ inline float to_acc(half_t v) { return half_to_float(v); }
__device__ inline double storage_from(double v, double*) { return v; }
__device__ inline float storage_from(float v, float*) { return v; }
__device__ inline bf16_t storage_from(float v, bf16_t*) { return float_to_bf16(v); }
__device__ inline half_t storage_from(float v, half_t*) { return float_to_half(v); }
__device__ inline storage_t from_acc(acc_t v) { return storage_from(v, (storage_t*)0); }

// TF32 as the tensor cores take it: PTX `cvt.rna.tf32.f32`, round to nearest with ties AWAY
// from zero (PTX ISA, cvt, floating-point rounding modifiers: ".rna: rounding to nearest, with
// ties away from zero"; the tf32 register layout is implementation-defined, so the 13 low bits
// are cleared to get a float32 holding exactly the TF32 value). The simulator's plain-C twin
// adds half of the dropped part's weight to the magnitude bits and truncates: ties go away from
// zero, a carry moves to the next binade, past the largest finite to inf. Inf passes through
// unchanged and a NaN is returned as it came, on both sides. cvt to .tf32 needs sm_80: below it
// (a T4's or a V100's TF32 convolutions, on CUDA cores) the GPU computes the twin too, which
// ptxas would otherwise refuse ("Feature '.tf32' requires .target sm_80").
__device__ inline float tf32_round(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    // The NaN test on the bits, not x != x: with the float compare ptxas spills 8 bytes in
    // conv2d_backward_weight_v1's TF32 build (sm_90).
    const unsigned u = __float_as_uint(x);
    return __uint_as_float((u & 0x7fffffffu) > 0x7f800000u ? u : (r & 0xffffe000u));
#else
    const unsigned u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return x;
    return __uint_as_float((u + 0x1000u) & 0xffffe000u);
#endif
}

// x rounded to TF32 for a tensor-core operand: tf32_round's value in five instructions on sm_90
// where tf32_round takes seven (its cvt.rna is a compare, an add and a mask, to which it adds a
// NaN test on the bits and a select). Half a TF32 ulp added to a finite value's bits, predicated,
// then the 13 low bits cleared: to nearest, ties away from zero, a carry into the next binade
// and past the largest finite to inf, as cvt.rna; an infinity passes; a NaN gets its quiet bit
// first, so one whose payload lay in the cleared bits stays a NaN (its payload is not kept:
// only a tensor core reads it, whose NaN results carry none). The low bits are cleared: mma.sync's
// handling of them is not documented (wgmma is documented to truncate them), and the simulator
// checks that the operands the launcher rounded hold none.
__device__ inline float tf32_operand(float x) {
#ifdef __CUDA_ARCH__
    // Predicated, so ptxas keeps it at two tests and two predicated operations (written in C, it
    // computed both results and selected).
    unsigned u;
    asm("{\n\t.reg .pred finite, nan;\n\t.reg .f32 a;\n\t"
        "abs.f32 a, %1;\n\t"
        "setp.lt.f32 finite, a, 0f7F800000;\n\t"
        "setp.nan.f32 nan, %1, %1;\n\t"
        "mov.b32 %0, %1;\n\t"
        "@finite add.u32 %0, %0, 0x1000;\n\t"
        "@nan or.b32 %0, %0, 0x00400000;\n\t}"
        : "=r"(u) : "f"(x));
    return __uint_as_float(u & 0xffffe000u);
#else
    unsigned u = __float_as_uint(x);
    const unsigned a = u & 0x7fffffffu;
    if (a < 0x7f800000u) {  // finite
        u += 0x1000u;
    } else if (a > 0x7f800000u) {  // NaN
        u |= 0x00400000u;
    }
    return __uint_as_float(u & 0xffffe000u);
#endif
}

// A multiplicand of a GEMM as the conv kernels stage it: widened to acc_t, and in a TF32 build
// rounded to TF32. Sums (bias, bias gradient, split-K reduction) never go through it.
__device__ inline acc_t gemm_operand(storage_t v) {
#if GPUCONV_TF32
    return tf32_round(to_acc(v));
#else
    return to_acc(v);
#endif
}

// ReLU with np.maximum(v, 0)'s semantics, which the references use: a NaN propagates (v != v),
// and -0.0 becomes +0.0 (the comparison is false for it, so the result is the literal 0).
__device__ inline acc_t relu_value(acc_t v) { return (v > 0 || v != v) ? v : (acc_t)0; }

// Four storage elements loaded or stored as one transaction: 16 bytes in float32, 32 in
// float64, 8 in bfloat16/float16. The launcher only uses it when the pointers are aligned to
// sizeof(storage4) (four elements).
struct alignas(4 * sizeof(storage_t)) storage4 {
    storage_t x, y, z, w;
};
// The same for four acc_t values (the v3 conv tiles in shared memory).
struct alignas(4 * sizeof(acc_t)) acc4 {
    acc_t x, y, z, w;
};

// V adjacent channels of one channels_last pixel, loaded or stored as one transaction of up to 16
// bytes (wider ones, V float32 beside V bfloat16, as 16-byte pieces); V = 1 is the element itself.
// The _vec kernels of pooling and batch norm take VEC16 = 16 bytes of storage_t per thread (8
// bfloat16/float16, 4 float32, 2 float64) where C is a multiple and every array 16-byte aligned
// (their launchers check).
template <class T, int V>
struct alignas(V * sizeof(T) < 16 ? V * sizeof(T) : 16) Lanes {
    T v[V];
};
#define VEC16 ((int)(16 / sizeof(storage_t)))
