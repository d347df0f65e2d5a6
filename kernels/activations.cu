// activations.cu: the smooth and leaky activations PyTorch's CIFAR-10 models use beside ReLU and
// GELU, elementwise over a flat array of n elements.
//
//   leaky_relu  y  = x where x > 0, else x * slope;     dx = dy where x > 0, else dy * slope
//   sigmoid     y  = 1 / (1 + exp(-x));                 dx = dy * (1 - y) * y    (from the output)
//   tanh        y  = tanh(x);                           dx = dy * (1 - y * y)    (from the output)
//   silu        y  = x * sigmoid(x);                    dx = dy * s * (1 + x * (1 - s)), s = sigmoid(x)
//
// The per-element functions (overflow-free sigmoid, each product rounded on its own) are in
// activation.cuh, beside ReLU's and GELU's, so that a fused use gives the same bits.
//
// Element types (common.cuh): arrays are storage_t, each value is widened to acc_t, computed in
// acc_t (float32 for bf16/fp16, double for float64) and rounded back once. The slope arrives as a
// double and is rounded once to acc_t, as the reference rounds it against its compute dtype.
//
// Kernels (extern "C"; 1-D grid-stride grids of GPUCONV_BLOCK threads, one element per thread
// and step): <activation>_forward(x, y, n[, slope]) and <activation>_backward(dy, x or y, dx,
// n[, slope]) for leaky_relu, sigmoid, tanh and silu; sigmoid's and tanh's backward read the
// forward's output, the others its input.
//
// Resources per kernel and build (ptxas of CUDA 13.0 for sm_90, the registry's NVRTC options;
// tests/test_nvrtc.py holds every figure to ptxas's report): registers / static shared memory
// in bytes / bytes spilled (stores + loads); "-": no such build (TF32: conv2d, conv2d_tc, gemm_tc).
//   ptxas 13.0           f32          f64          bf16         f16          tf32
//   leaky_relu_forward   24/0/0       26/0/0       24/0/0       24/0/0       -
//   leaky_relu_backward  28/0/0       26/0/0       26/0/0       24/0/0       -
//   sigmoid_forward      29/0/0       36/0/0       27/0/0       21/0/0       -
//   sigmoid_backward     26/0/0       30/0/0       24/0/0       22/0/0       -
//   tanh_forward         26/0/0       28/0/0       24/0/0       24/0/0       -
//   tanh_backward        24/0/0       30/0/0       24/0/0       22/0/0       -
//   silu_forward         29/0/0       38/0/0       27/0/0       24/0/0       -
//   silu_backward        31/0/0       40/0/0       26/0/0       24/0/0       -

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
leaky_relu_forward(const storage_t* x, storage_t* y, long long n, double slope) {
    const acc_t s = (acc_t)slope;
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) y[i] = leaky_relu_fwd(x[i], s);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
leaky_relu_backward(const storage_t* dy, const storage_t* x, storage_t* dx, long long n, double slope) {
    const acc_t s = (acc_t)slope;
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) dx[i] = leaky_relu_bwd(dy[i], x[i], s);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
sigmoid_forward(const storage_t* x, storage_t* y, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) y[i] = sigmoid_fwd(x[i]);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
sigmoid_backward(const storage_t* dy, const storage_t* y, storage_t* dx, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) dx[i] = sigmoid_bwd(dy[i], y[i]);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
tanh_forward(const storage_t* x, storage_t* y, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) y[i] = tanh_fwd(x[i]);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
tanh_backward(const storage_t* dy, const storage_t* y, storage_t* dx, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) dx[i] = tanh_bwd(dy[i], y[i]);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
silu_forward(const storage_t* x, storage_t* y, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) y[i] = silu_fwd(x[i]);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
silu_backward(const storage_t* dy, const storage_t* x, storage_t* dx, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) dx[i] = silu_bwd(dy[i], x[i]);
}
