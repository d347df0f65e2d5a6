// gelu.cu: GELU, exact (erf) form, elementwise over a flat array of n elements.
//
//   forward   y  = x * Phi(x),                      Phi(x) = erfc(-x / sqrt(2)) / 2
//   backward  dx = dy * (Phi(x) + x * phi(x)),     phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
//
// Phi goes through erfc, not 1 + erf: the negative tail keeps its relative accuracy instead of
// a cancellation residue (gelu(-6) is -6e-9). erfc/exp are CUDA's (erfcf/expf: 2-4 ulp in
// float32); the host simulator gets the C library's through math.h.
//
// Element types (common.cuh): arrays are storage_t, each value is widened to acc_t, computed in
// acc_t (float32 for bf16/fp16, double for float64) and rounded back once.
//
// Kernels (extern "C"; 1-D grid-stride grids of GPUCONV_BLOCK threads, one element per thread
// and step): gelu_forward, gelu_backward.

__device__ inline float gelu_erfc(float v) { return erfcf(v); }
__device__ inline double gelu_erfc(double v) { return erfc(v); }
__device__ inline float gelu_exp(float v) { return expf(v); }
__device__ inline double gelu_exp(double v) { return exp(v); }

__device__ inline acc_t normal_cdf(acc_t v) { return (acc_t)0.5 * gelu_erfc(-v * (acc_t)0.70710678118654752440); }

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
gelu_forward(const storage_t* x, storage_t* y, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) {
        const acc_t v = to_acc(x[i]);
        y[i] = from_acc(v * normal_cdf(v));
    }
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
gelu_backward(const storage_t* dy, const storage_t* x, storage_t* dx, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) {
        const acc_t v = to_acc(x[i]);
        const acc_t pdf = (acc_t)0.39894228040143267794 * gelu_exp(v * v * (acc_t)-0.5);
        dx[i] = from_acc(to_acc(dy[i]) * (normal_cdf(v) + v * pdf));
    }
}
