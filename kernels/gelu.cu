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
//
// Resources per kernel and build (ptxas of CUDA 13.0 for sm_90, the registry's NVRTC options;
// tests/test_nvrtc.py holds every figure to ptxas's report): registers / static shared memory
// in bytes / bytes spilled (stores + loads); "-": no such build (TF32: conv2d, conv2d_tc, gemm_tc).
//   ptxas 13.0     f32          f64          bf16         f16          tf32
//   gelu_forward   27/0/0       30/0/0       25/0/0       24/0/0       -
//   gelu_backward  32/0/0       48/0/0       31/0/0       26/0/0       -

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
gelu_forward(const storage_t* x, storage_t* y, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) y[i] = gelu_fwd(x[i]);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
gelu_backward(const storage_t* dy, const storage_t* x, storage_t* dx, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) dx[i] = gelu_bwd(dy[i], x[i]);
}
