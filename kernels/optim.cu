// optim.cu: optimizer updates fused into one pass over a parameter (gpuconv.optim, gpuconv.lookahead). The array form
// of an update is a chain of elementwise operations, each its own launch and temporary: SGD with
// weight decay and Nesterov momentum is eight. Per parameter and step that is host time, and a
// training step of the CIFAR networks runs on a GPU faster than Python can submit it; here it is
// one launch.
//
//   sgd_update   PyTorch's SGD (dampening 0), as gpuconv.optim.SGD writes it with arrays:
//                  g = grad + weight_decay * p                       (weight_decay != 0)
//                  b = first ? g : b * momentum + g;  buffer = b     (momentum != 0)
//                  g = nesterov ? g + momentum * b : b               (momentum != 0)
//                  p = p - lr * g
//
// The learning rate is read from device memory (lr[0], the parameter group's entry of the
// optimizer's float64 array, written before each step): a step captured in a CUDA graph then
// follows its schedule, where a kernel argument would be frozen at the value of the capture.
//
// Element types (common.cuh): p, grad and the momentum buffer are storage_t, float32 or float64
// (the launcher takes no other, so acc_t is the same type: every build compiles the kernel, only
// those two run it); the hyperparameters arrive as double and are rounded to the element type
// once, as NumPy rounds a Python float against a float32 array. Every product is
// rounded on its own (mul_rn) and each operation in the array form's order, so the result is the
// array form's, bit for bit.
//
// Several parameters per launch: sgd_update takes up to SGD_TENSORS of them (one parameter group:
// the same learning rate and hyperparameters), each its own (p, grad, buffer, n, first), and its
// grid's y index picks the parameter (grid (blocks, count): blockIdx.y < count). A network's 14-25
// parameters are then 2-4 launches a step instead of one each. The arguments are written out per
// slot (no array of pointers in device memory, which would be one more transfer a step, and one
// a captured CUDA graph would freeze).
//
//   lookahead_update   the weight average of gpuconv.lookahead.Lookahead, pulled back onto the model:
//                  ema = ema + (w - ema) * rate     (rate = 1 - decay; skipped when it is 0)
//                  w = ema
//                every 5 steps of airbench94 over each parameter and float buffer (33 arrays:
//                165 array operations an update in the array form, 5 launches here).
//
// Registers on sm_90 (ptxas 13, tests/test_nvrtc.py): sgd_update 28-32, lookahead_update 22-30; no spills.
//
// Kernels (extern "C"; grid-stride over each parameter's elements in x, GPUCONV_BLOCK threads, one
// element per thread and step): sgd_update, lookahead_update (LOOKAHEAD_TENSORS arrays a launch,
// the same way).
//
// Resources per kernel and build (ptxas of CUDA 13.0 for sm_90, the registry's NVRTC options;
// tests/test_nvrtc.py holds every figure to ptxas's report): registers / static shared memory
// in bytes / bytes spilled (stores + loads); "-": no such build (TF32: conv2d, conv2d_tc, gemm_tc).
//   ptxas 13.0        f32          f64          bf16         f16          tf32
//   sgd_update        30/0/0       32/0/0       30/0/0       28/0/0       -
//   lookahead_update  30/0/0       28/0/0       26/0/0       22/0/0       -

#define SGD_TENSORS 8
#define LOOKAHEAD_TENSORS 8

__device__ void sgd_update_one(storage_t* p, const storage_t* grad, storage_t* buffer, long long n, int first,
                               acc_t lr, acc_t m, acc_t wd, int nesterov) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) {
        const acc_t w = to_acc(p[i]);
        acc_t g = to_acc(grad[i]);
        if (wd != (acc_t)0) g = g + mul_rn(wd, w);
        if (m != (acc_t)0) {
            const acc_t b = first ? g : mul_rn(to_acc(buffer[i]), m) + g;
            buffer[i] = from_acc(b);
            g = nesterov ? g + mul_rn(m, b) : b;
        }
        p[i] = from_acc(w - mul_rn(lr, g));
    }
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
sgd_update(storage_t* p0, const storage_t* g0, storage_t* b0, long long n0, int first0,
           storage_t* p1, const storage_t* g1, storage_t* b1, long long n1, int first1,
           storage_t* p2, const storage_t* g2, storage_t* b2, long long n2, int first2,
           storage_t* p3, const storage_t* g3, storage_t* b3, long long n3, int first3,
           storage_t* p4, const storage_t* g4, storage_t* b4, long long n4, int first4,
           storage_t* p5, const storage_t* g5, storage_t* b5, long long n5, int first5,
           storage_t* p6, const storage_t* g6, storage_t* b6, long long n6, int first6,
           storage_t* p7, const storage_t* g7, storage_t* b7, long long n7, int first7,
           const double* lr, double momentum, double weight_decay, int nesterov) {
    const acc_t lr_ = (acc_t)lr[0], m = (acc_t)momentum, wd = (acc_t)weight_decay;
    switch (blockIdx.y) {
        case 0: sgd_update_one(p0, g0, b0, n0, first0, lr_, m, wd, nesterov); break;
        case 1: sgd_update_one(p1, g1, b1, n1, first1, lr_, m, wd, nesterov); break;
        case 2: sgd_update_one(p2, g2, b2, n2, first2, lr_, m, wd, nesterov); break;
        case 3: sgd_update_one(p3, g3, b3, n3, first3, lr_, m, wd, nesterov); break;
        case 4: sgd_update_one(p4, g4, b4, n4, first4, lr_, m, wd, nesterov); break;
        case 5: sgd_update_one(p5, g5, b5, n5, first5, lr_, m, wd, nesterov); break;
        case 6: sgd_update_one(p6, g6, b6, n6, first6, lr_, m, wd, nesterov); break;
        case 7: sgd_update_one(p7, g7, b7, n7, first7, lr_, m, wd, nesterov); break;
    }
}

__device__ void lookahead_update_one(storage_t* w, storage_t* ema, long long n, acc_t rate) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) {
        acc_t e = to_acc(ema[i]);
        if (rate != (acc_t)0) {
            e = e + mul_rn(to_acc(w[i]) - e, rate);
            ema[i] = from_acc(e);
        }
        w[i] = from_acc(e);
    }
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
lookahead_update(storage_t* w0, storage_t* e0, long long n0, storage_t* w1, storage_t* e1, long long n1,
                 storage_t* w2, storage_t* e2, long long n2, storage_t* w3, storage_t* e3, long long n3,
                 storage_t* w4, storage_t* e4, long long n4, storage_t* w5, storage_t* e5, long long n5,
                 storage_t* w6, storage_t* e6, long long n6, storage_t* w7, storage_t* e7, long long n7,
                 double rate) {
    const acc_t r = (acc_t)rate;
    switch (blockIdx.y) {
        case 0: lookahead_update_one(w0, e0, n0, r); break;
        case 1: lookahead_update_one(w1, e1, n1, r); break;
        case 2: lookahead_update_one(w2, e2, n2, r); break;
        case 3: lookahead_update_one(w3, e3, n3, r); break;
        case 4: lookahead_update_one(w4, e4, n4, r); break;
        case 5: lookahead_update_one(w5, e5, n5, r); break;
        case 6: lookahead_update_one(w6, e6, n6, r); break;
        case 7: lookahead_update_one(w7, e7, n7, r); break;
    }
}
