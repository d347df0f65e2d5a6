// activation.cuh: the elementwise activations, one element at a time, for the files that apply
// them: relu.cu, gelu.cu and activations.cu (the ops on their own) and batchnorm.cu (batch norm
// with its activation fused, where a network follows BatchNorm2d with ReLU or GELU). One
// definition, so a fused and a separate op give the same bits.
//
//   ReLU  y = max(x, 0) (np.maximum's semantics, see relu_value in common.cuh);
//         dx = dy where x > 0, else 0
//   GELU  exact (erf) form: y = x * Phi(x), Phi(x) = erfc(-x / sqrt(2)) / 2;
//         dx = dy * (Phi(x) + x * phi(x)), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
// Phi goes through erfc, not 1 + erf: the negative tail keeps its relative accuracy instead of a
// cancellation residue (gelu(-6) is -6e-9). erfc/exp are CUDA's (erfcf/expf: 2-4 ulp in float32);
// the host simulator gets the C library's through math.h. Every product is rounded on its own
// (mul_rn), so no context lets the compiler contract one into an FMA differently.
//
//   LeakyReLU  y = x where x > 0, else x * slope (slope in acc_t);
//              dx = dy where x > 0, else dy * slope (PyTorch's: the slope at 0 and at NaN)
//   Sigmoid    s = (x >= 0 ? 1 : e) / (1 + e), e = exp(-|x|): exp never overflows, and the
//              negative side keeps its relative accuracy (1 / (1 + exp(-x)) is 1/inf = 0 there);
//              dx = dy * (1 - y) * y from the output y (as PyTorch's sigmoid_backward)
//   Tanh       y = tanh(x); dx = dy * (1 - y * y) from the output y (as PyTorch's tanh_backward)
//   SiLU       y = x * s(x); dx = dy * s * (1 + x * (1 - s)) from the input x (PyTorch's order)
// The backward from the output is plain arithmetic: the same bits as the NumPy reference on the
// same y. exp/tanh are CUDA's (expf/tanhf: 2 ulp in float32) and the C library's on the host
// simulator: within a few ulp of NumPy's, not bit for bit.
//
// Both directions take and return storage_t (x, dy and the result as the arrays hold them) and
// compute in acc_t: act_forward(x, act) and act_backward(dy, x, act) with act one of ACT_NONE,
// ACT_RELU, ACT_GELU (the launchers pass gpuconv.ops.batchnorm.ACTIVATIONS' index).

#define ACT_NONE 0
#define ACT_RELU 1
#define ACT_GELU 2

__device__ inline float gelu_erfc(float v) { return erfcf(v); }
__device__ inline double gelu_erfc(double v) { return erfc(v); }
__device__ inline float gelu_exp(float v) { return expf(v); }
__device__ inline double gelu_exp(double v) { return exp(v); }

__device__ inline float act_exp(float v) { return expf(v); }
__device__ inline double act_exp(double v) { return exp(v); }
__device__ inline float act_tanh(float v) { return tanhf(v); }
__device__ inline double act_tanh(double v) { return tanh(v); }

__device__ inline acc_t normal_cdf(acc_t v) {
    return mul_rn((acc_t)0.5, gelu_erfc(mul_rn(-v, (acc_t)0.70710678118654752440)));
}

__device__ inline acc_t gelu_value(acc_t v) { return mul_rn(v, normal_cdf(v)); }

__device__ inline acc_t gelu_grad(acc_t g, acc_t v) {
    const acc_t pdf = mul_rn((acc_t)0.39894228040143267794, gelu_exp(mul_rn(mul_rn(v, v), (acc_t)-0.5)));
    return mul_rn(g, normal_cdf(v) + mul_rn(v, pdf));
}

__device__ inline acc_t relu_grad(acc_t g, acc_t a) { return a > 0 ? g : (acc_t)0; }

// Positive values come back as the input's own bits, and a NaN as the reference rounds it (its
// payload in float16/float32, ml_dtypes' quiet NaN in bfloat16): never through a float max,
// which the compiler may turn into max.NaN, whose NaN is the canonical one (seen on an H200).
__device__ inline storage_t relu_fwd(storage_t x) {
    const acc_t v = to_acc(x);
    if (v != v) return from_acc(v);
    return v > 0 ? x : from_acc((acc_t)0);
}
__device__ inline storage_t relu_bwd(storage_t g, storage_t a) { return from_acc(relu_grad(to_acc(g), to_acc(a))); }

__device__ inline storage_t gelu_fwd(storage_t x) { return from_acc(gelu_value(to_acc(x))); }
__device__ inline storage_t gelu_bwd(storage_t g, storage_t a) { return from_acc(gelu_grad(to_acc(g), to_acc(a))); }

__device__ inline acc_t leaky_relu_value(acc_t v, acc_t slope) { return v > 0 ? v : mul_rn(v, slope); }
__device__ inline acc_t leaky_relu_grad(acc_t g, acc_t v, acc_t slope) { return v > 0 ? g : mul_rn(g, slope); }

__device__ inline acc_t sigmoid_value(acc_t v) {
    const acc_t e = act_exp(-fabs(v));  // in (0, 1]
    return (v >= 0 ? (acc_t)1 : e) / ((acc_t)1 + e);
}
__device__ inline acc_t sigmoid_grad(acc_t g, acc_t y) { return mul_rn(mul_rn(g, (acc_t)1 - y), y); }

__device__ inline acc_t tanh_grad(acc_t g, acc_t y) { return mul_rn(g, (acc_t)1 - mul_rn(y, y)); }

__device__ inline acc_t silu_value(acc_t v) { return mul_rn(v, sigmoid_value(v)); }
__device__ inline acc_t silu_grad(acc_t g, acc_t v) {
    const acc_t s = sigmoid_value(v);
    return mul_rn(mul_rn(g, s), (acc_t)1 + mul_rn(v, (acc_t)1 - s));
}

__device__ inline storage_t leaky_relu_fwd(storage_t x, acc_t slope) {
    return from_acc(leaky_relu_value(to_acc(x), slope));
}
__device__ inline storage_t leaky_relu_bwd(storage_t g, storage_t a, acc_t slope) {
    return from_acc(leaky_relu_grad(to_acc(g), to_acc(a), slope));
}
__device__ inline storage_t sigmoid_fwd(storage_t x) { return from_acc(sigmoid_value(to_acc(x))); }
__device__ inline storage_t sigmoid_bwd(storage_t g, storage_t y) {
    return from_acc(sigmoid_grad(to_acc(g), to_acc(y)));
}
__device__ inline storage_t tanh_fwd(storage_t x) { return from_acc(act_tanh(to_acc(x))); }
__device__ inline storage_t tanh_bwd(storage_t g, storage_t y) { return from_acc(tanh_grad(to_acc(g), to_acc(y))); }
__device__ inline storage_t silu_fwd(storage_t x) { return from_acc(silu_value(to_acc(x))); }
__device__ inline storage_t silu_bwd(storage_t g, storage_t a) { return from_acc(silu_grad(to_acc(g), to_acc(a))); }

__device__ inline storage_t act_forward(storage_t x, int act) {
    return act == ACT_RELU ? relu_fwd(x) : act == ACT_GELU ? gelu_fwd(x) : x;
}

__device__ inline storage_t act_backward(storage_t g, storage_t x, int act) {
    return act == ACT_RELU ? relu_bwd(g, x) : act == ACT_GELU ? gelu_bwd(g, x) : g;
}
