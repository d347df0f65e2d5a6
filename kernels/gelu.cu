// gelu.cu: GELU, exact (erf) form, elementwise over a flat array of n elements.
//
//   forward   y  = x * Phi(x),                      Phi(x) = erfc(-x / sqrt(2)) / 2
//   backward  dx = dy * (Phi(x) + x * phi(x)),     phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
//
// The per-element functions (gelu_fwd, gelu_bwd: erfc, not 1 + erf, each product rounded on its
// own) are in activation.cuh, shared with batch norm's fused activation.
//
// Element types (common.cuh): arrays are storage_t, each value is widened to acc_t, computed in
// acc_t (float32 for bf16/fp16, double for float64) and rounded back once.
//
// Kernels (extern "C"; 1-D grid-stride grids of GPUCONV_BLOCK threads, one element per thread
// and step): gelu_forward, gelu_backward.

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
gelu_forward(const storage_t* x, storage_t* y, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) y[i] = gelu_fwd(x[i]);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
gelu_backward(const storage_t* dy, const storage_t* x, storage_t* dx, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) dx[i] = gelu_bwd(dy[i], x[i]);
}
