// relu.cu: rectified linear unit, elementwise over a flat array of n elements.
//
//   forward   y = max(x, 0)   with NumPy's np.maximum(x, 0) semantics (NaN propagates,
//                             -0.0 becomes +0.0), so results are bit-identical to the reference
//   backward  dx = dy where x > 0, else 0   (x: the forward input, or its output: same sign test)
//
// Element types (common.cuh): arrays are storage_t, each value is widened to acc_t, and the
// result rounded back once, which for ReLU returns the input's own value: bit-identical to the
// reference in every dtype (a bfloat16 NaN comes back as the quiet NaN ml_dtypes makes of it).
//
// The per-element functions (relu_fwd, relu_bwd) are in activation.cuh, shared with batch norm's
// fused activation.
//
// Kernels (extern "C"; 1-D grid-stride grids of GPUCONV_BLOCK threads):
//   relu_forward_v1, relu_backward_v1   one element per thread and step.
//   relu_forward_v2, relu_backward_v2   four elements per load/store (one 16-byte transaction in
//                                       float32, 8 bytes in bfloat16/float16): the launcher uses
//                                       them only when every pointer is aligned to
//                                       sizeof(storage4), four elements; the n % 4 tail elements
//                                       are done one by one by the first threads.
//
// Resources per kernel and build (ptxas of CUDA 13.0 for sm_90, the registry's NVRTC options;
// tests/test_nvrtc.py holds every figure to ptxas's report): registers / static shared memory
// in bytes / bytes spilled (stores + loads); "-": no such build (TF32: conv2d, conv2d_tc, gemm_tc).
//   ptxas 13.0        f32          f64          bf16         f16          tf32
//   relu_forward_v1   26/0/0       26/0/0       22/0/0       24/0/0       -
//   relu_forward_v2   32/0/0       31/0/0       19/0/0       23/0/0       -
//   relu_backward_v1  26/0/0       28/0/0       24/0/0       22/0/0       -
//   relu_backward_v2  30/0/0       38/0/0       27/0/0       32/0/0       -

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
relu_forward_v1(const storage_t* x, storage_t* y, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) y[i] = relu_fwd(x[i]);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
relu_backward_v1(const storage_t* dy, const storage_t* x, storage_t* dx, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) dx[i] = relu_bwd(dy[i], x[i]);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
relu_forward_v2(const storage_t* x, storage_t* y, long long n) {
    const index_t n4 = n / 4;
    const storage4* x4 = (const storage4*)x;
    storage4* y4 = (storage4*)y;
    for (index_t i = global_thread_index(); i < n4; i += global_thread_count()) {
        storage4 v = x4[i];
        v.x = relu_fwd(v.x);
        v.y = relu_fwd(v.y);
        v.z = relu_fwd(v.z);
        v.w = relu_fwd(v.w);
        y4[i] = v;
    }
    const index_t tail = n4 * 4 + global_thread_index();
    if (tail < n) y[tail] = relu_fwd(x[tail]);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
relu_backward_v2(const storage_t* dy, const storage_t* x, storage_t* dx, long long n) {
    const index_t n4 = n / 4;
    const storage4* g4 = (const storage4*)dy;
    const storage4* x4 = (const storage4*)x;
    storage4* d4 = (storage4*)dx;
    for (index_t i = global_thread_index(); i < n4; i += global_thread_count()) {
        const storage4 g = g4[i], a = x4[i];
        storage4 d;
        d.x = relu_bwd(g.x, a.x);
        d.y = relu_bwd(g.y, a.y);
        d.z = relu_bwd(g.z, a.z);
        d.w = relu_bwd(g.w, a.w);
        d4[i] = d;
    }
    const index_t tail = n4 * 4 + global_thread_index();
    if (tail < n) dx[tail] = relu_bwd(dy[tail], x[tail]);
}
