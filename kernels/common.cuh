// common.cuh: helpers shared by every kernel file.
//
// The registry (gpuconv/kernels.py) builds each translation unit as
//     typedef float real_t;   (or double: the float64 build used for gradient checks)
//     #line 1 "kernels/common.cuh"   <this file>
//     #line 1 "kernels/<op>.cu"      <the op file>
// so real_t is deliberately not defined here, and no file includes another: NVRTC has no
// host headers, and the host simulator compiles the same text with g++. For the same reason
// only a small CUDA surface is used: __global__, __device__, __shared__, the thread-index
// built-ins, __syncthreads, atomicAdd, __launch_bounds__ (defined away below when absent).

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

__device__ inline int ceil_div(int a, int b) { return floor_div(a + b - 1, b); }

// First flat index of a grid-stride loop, and its step, in 64 bits.
__device__ inline index_t global_thread_index() {
    return (index_t)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ inline index_t global_thread_count() {
    return (index_t)gridDim.x * blockDim.x;
}

// Splits the flat index i of a row-major [...][H][W] array into its two fastest coordinates
// (h, w) and returns the index of the plane above them. The divisions stay 64-bit because i
// may pass 2^31.
__device__ inline index_t split_hw(index_t i, int H, int W, int* h, int* w) {
    *w = (int)(i % W);
    index_t t = i / W;
    *h = (int)(t % H);
    return t / H;
}

// ReLU with np.maximum(v, 0)'s semantics, which the references use: a NaN propagates (v != v),
// and -0.0 becomes +0.0 (the comparison is false for it, so the result is the literal 0).
__device__ inline real_t relu_value(real_t v) { return (v > 0 || v != v) ? v : (real_t)0; }

// Four elements loaded or stored as one 16-byte (float) / 32-byte (double) transaction.
// The launcher only uses it when the pointers are aligned to sizeof(real4).
struct alignas(4 * sizeof(real_t)) real4 {
    real_t x, y, z, w;
};
