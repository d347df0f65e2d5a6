// scale.cu: multiplication by a constant, elementwise over a flat array of n elements (the output
// scaling of ResNet-9 and airbench94's heads, gpuconv.layers.Scale).
//
//   forward   y  = factor * x
//   backward  dx = factor * dy     (the same kernel)
//
// Element types (common.cuh): arrays are storage_t; factor arrives as a double and is rounded once
// to acc_t (float32 for bf16/fp16/float32, double for float64), as the reference rounds a Python
// float against its compute dtype; each product is formed in acc_t (mul_rn) and rounded once.
//
// Kernels (extern "C"; 1-D grid-stride grids of GPUCONV_BLOCK threads, one element per thread
// and step): scale_forward.
//
// Resources per kernel and build (ptxas of CUDA 13.0 for sm_90, the registry's NVRTC options;
// tests/test_nvrtc.py holds every figure to ptxas's report): registers / static shared memory
// in bytes / bytes spilled (stores + loads); "-": no such build (TF32: conv2d, conv2d_tc, gemm_tc).
//   ptxas 13.0     f32          f64          bf16         f16          tf32
//   scale_forward  28/0/0       28/0/0       23/0/0       22/0/0       -

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
scale_forward(const storage_t* x, storage_t* y, long long n, double factor) {
    const acc_t f = (acc_t)factor;
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) y[i] = from_acc(mul_rn(to_acc(x[i]), f));
}
