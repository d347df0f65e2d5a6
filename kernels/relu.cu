// relu.cu: rectified linear unit, elementwise over a flat array of n elements.
//
//   forward   y = max(x, 0)   with NumPy's np.maximum(x, 0) semantics (NaN propagates,
//                             -0.0 becomes +0.0), so results are bit-identical to the reference
//   backward  dx = dy where x > 0, else 0   (x: the forward input, or its output: same sign test)
//
// Kernels (extern "C", real_t = float or double; 1-D grid-stride grids of GPUCONV_BLOCK threads):
//   relu_forward_v1, relu_backward_v1   one element per thread and step.
//   relu_forward_v2, relu_backward_v2   four elements per load/store (one 16-byte transaction in
//                                       float32): the launcher uses them only when every pointer
//                                       is aligned to sizeof(real4); the n % 4 tail elements are
//                                       done one by one by the first threads.
//   bias_relu_forward                   y[n,c,...] = relu(x + b[c]) (relu flag) over NCHW with
//                                       hw = H*W: the fused bias epilogue for layers that add a
//                                       per-channel bias after a non-conv op.

__device__ inline real_t relu_grad(real_t g, real_t a) { return a > 0 ? g : (real_t)0; }

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
relu_forward_v1(const real_t* x, real_t* y, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) y[i] = relu_value(x[i]);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
relu_backward_v1(const real_t* dy, const real_t* x, real_t* dx, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) dx[i] = relu_grad(dy[i], x[i]);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
relu_forward_v2(const real_t* x, real_t* y, long long n) {
    const index_t n4 = n / 4;
    const real4* x4 = (const real4*)x;
    real4* y4 = (real4*)y;
    for (index_t i = global_thread_index(); i < n4; i += global_thread_count()) {
        real4 v = x4[i];
        v.x = relu_value(v.x);
        v.y = relu_value(v.y);
        v.z = relu_value(v.z);
        v.w = relu_value(v.w);
        y4[i] = v;
    }
    const index_t tail = n4 * 4 + global_thread_index();
    if (tail < n) y[tail] = relu_value(x[tail]);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
relu_backward_v2(const real_t* dy, const real_t* x, real_t* dx, long long n) {
    const index_t n4 = n / 4;
    const real4* g4 = (const real4*)dy;
    const real4* x4 = (const real4*)x;
    real4* d4 = (real4*)dx;
    for (index_t i = global_thread_index(); i < n4; i += global_thread_count()) {
        real4 g = g4[i], a = x4[i], d;
        d.x = relu_grad(g.x, a.x);
        d.y = relu_grad(g.y, a.y);
        d.z = relu_grad(g.z, a.z);
        d.w = relu_grad(g.w, a.w);
        d4[i] = d;
    }
    const index_t tail = n4 * 4 + global_thread_index();
    if (tail < n) dx[tail] = relu_grad(dy[tail], x[tail]);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
bias_relu_forward(const real_t* x, const real_t* b, real_t* y, long long n, int C, int hw, int relu) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) {
        real_t v = x[i] + b[(i / hw) % C];
        y[i] = relu ? relu_value(v) : v;
    }
}
