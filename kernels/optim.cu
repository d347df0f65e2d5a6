// optim.cu: optimizer updates fused into one pass over a parameter (gpuconv.optim). The array form
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
// Kernels (extern "C"; 1-D grid-stride grids of GPUCONV_BLOCK threads, one element per thread
// and step): sgd_update.

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
sgd_update(storage_t* p, const storage_t* grad, storage_t* buffer, const double* lr, long long n, double momentum,
           double weight_decay, int nesterov, int first) {
    const acc_t lr_ = (acc_t)lr[0], m = (acc_t)momentum, wd = (acc_t)weight_decay;
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) {
        const acc_t w = to_acc(p[i]);
        acc_t g = to_acc(grad[i]);
        if (wd != (acc_t)0) g = g + mul_rn(wd, w);
        if (m != (acc_t)0) {
            const acc_t b = first ? g : mul_rn(to_acc(buffer[i]), m) + g;
            buffer[i] = from_acc(b);
            g = nesterov ? g + mul_rn(m, b) : b;
        }
        p[i] = from_acc(w - mul_rn(lr_, g));
    }
}
