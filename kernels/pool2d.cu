// pool2d.cu: max, average and LP pooling, each (n, c) plane independently, over NCHW or
// channels_last (NHWC memory) activations (gpuconv.layout): the flag `cl` says which, and x, y, dy,
// dx and the switches all share it. Each thread owns one element in memory order (NHWC: channels
// fastest, so neighbouring threads read neighbouring channels, coalesced in either layout); the
// taps of a window and their order are the same in both layouts, so are the results, bit for bit.
//
// Windows are kh x kw with stride sh, sw and zero-or-more padding ph, pw (padded cells never win
// a max and count in an average's divisor, as PyTorch's count_include_pad=True). Offsets are
// 64-bit.
//
// Element types (common.cuh): x, y, dy, dx are storage_t; values are read into acc_t, compared
// or summed there, and each output is rounded once to storage_t. Max pooling only compares and
// copies, so its outputs equal the reference bit for bit in every dtype; a bfloat16 NaN comes back
// as the quiet NaN ml_dtypes makes of it, as the reference's float32 round trip does.
//
// Kernels (extern "C"; 1-D grid-stride grids of GPUCONV_BLOCK threads):
//   max_pool2d_forward    one thread per output: y = max over the window and the "switch"
//                         argmax = fh*kw + fw, the window-local tap of the maximum (int32, the
//                         layout of gpuconv.ops.MaxPool2dCache): the first maximum in row-major
//                         tap order wins ties. A NaN makes the output NaN (np.maximum) and
//                         freezes the switch at the largest tap before it: the reference's rule.
//   max_pool2d_backward   one thread per INPUT element: gathers dy of every output whose window
//                         covers it and whose switch points at it. Correct for overlapping
//                         windows and deterministic (no atomics).
//   max_pool2d_backward_disjoint, avg_pool2d_backward_disjoint
//                         the same gradients when the windows tile the input without overlap
//                         (stride = kernel, no padding, the windows fill the input; max pool 2x2
//                         and 4x4 of the CIFAR nets): one thread per OUTPUT writes its window's
//                         inputs. No covering range and kh*kw times fewer threads; the same bits
//                         as the gather kernels.
//   avg_pool2d_forward    one thread per output: window sum * (1/(kh*kw)).
//   avg_pool2d_backward   one thread per input element: sum of dy * (1/(kh*kw)) over the windows
//                         covering it (gather, deterministic).
//   lp_pool2d_forward     one thread per output: y = (sum over the window of x^p)^(1/p) (x*x and
//                         sqrt for p = 2), PyTorch's lp_pool2d; non-integer p of a negative x is
//                         NaN there too.
//   lp_pool2d_backward    one thread per input element: sum over the covering windows of
//                         dy * x^(p-1) * y^(1-p), and 0 from a window whose norm y is 0 (where
//                         the gradient of the norm is undefined; PyTorch's choice as well).
// LP pooling uses pow(), whose last bit differs between libraries: it matches the reference to
// rounding, not bit for bit (p = 1 and p = 2 use no pow and match it exactly).
//
// Sums run in the reference's order (taps in row-major order, i.e. covering outputs from the
// last to the first), and the divisor is applied as the same rounded reciprocal, so results
// are bit-identical to gpuconv.ops' NumPy reference, not merely close (in bfloat16/float16 too:
// both sum the same float32 values in the same order and round once). That needs the product
// dy * (1/(kh*kw)) rounded on its own before it is added (the reference's `share`): NVRTC
// contracts a*b + c into one FMA by default (--fmad=true), so it goes through mul_rn, whose
// __fmul_rn/__dmul_rn are never contracted.


// An N x C x H x W activation, NCHW or channels_last: memory index <-> (n, c, h, w).
struct Act4 {
    int C, H, W, cl;
    __device__ index_t at(index_t n, int c, int h, int w) const {
        return cl ? ((n * H + h) * W + w) * C + c : ((n * C + c) * H + h) * W + w;
    }
    __device__ index_t split(index_t i, int* c, int* h, int* w) const {  // returns n
        if (cl) return split_hw(divmod_index(i, C, c), H, W, h, w);
        return divmod_index(split_hw(i, H, W, h, w), C, c);
    }
};

// The outputs whose windows cover input row i: oh*s - p <= i <= oh*s - p + k - 1, so
// ceil((i + p - k + 1) / s) <= oh <= (i + p) / s, within [0, O). Every division here is of a
// non-negative int (the first numerator is tested against 0 before it is divided), where C's
// truncation is the floor. (Written as max(0, ceil_div(...)) with a floor division of a signed
// numerator, NVRTC 13.0's build gave lo = 0 for every input, seen on an H200; NVRTC 13.5 and
// the host simulator build that form right.)
__device__ inline void covering_range(int i, int k, int s, int p, int O, int* lo, int* hi) {
    const int first = i + p - k + 1;
    *lo = first > 0 ? (first + s - 1) / s : 0;
    *hi = imin(O - 1, (i + p) / s);
}

// The sum over the outputs whose windows cover input (n, c, ih, iw) of f(output index, tap), the
// tap being that input's window-local index fh * kw + fw in the output's window. Outputs run from
// the last to the first, i.e. taps in row-major order: the references' order.
template <class F>
__device__ inline acc_t covering_sum(index_t n, int c, int ih, int iw, const Act4& out, int kh, int kw, int sh,
                                     int sw, int ph, int pw, F f) {
    int oh_lo, oh_hi, ow_lo, ow_hi;
    covering_range(ih, kh, sh, ph, out.H, &oh_lo, &oh_hi);
    covering_range(iw, kw, sw, pw, out.W, &ow_lo, &ow_hi);
    acc_t s = 0;
    for (int oh = oh_hi; oh >= oh_lo; --oh)
        for (int ow = ow_hi; ow >= ow_lo; --ow)
            s += f(out.at(n, c, oh, ow), (ih + ph - oh * sh) * kw + (iw + pw - ow * sw));
    return s;
}

// Per covering output: max pooling routes dy to the switch's tap, average pooling shares it.
struct MaxRoute {
    const storage_t* dy;
    const int* argmax;
    __device__ acc_t operator()(index_t o, int tap) const { return argmax[o] == tap ? to_acc(dy[o]) : (acc_t)0; }
};

struct AvgShare {
    const storage_t* dy;
    acc_t inv;
    __device__ acc_t operator()(index_t o, int) const { return mul_rn(to_acc(dy[o]), inv); }
};

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
max_pool2d_forward(const storage_t* x, storage_t* y, int* argmax, int N, int C, int H, int W, int OH, int OW,
                   int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    const index_t total = (index_t)N * C * OH * OW;
    const Act4 in = {C, H, W, cl}, out = {C, OH, OW, cl};
    for (index_t i = global_thread_index(); i < total; i += global_thread_count()) {
        int c, oh, ow;
        const index_t n = out.split(i, &c, &oh, &ow);
        acc_t best = 0;
        int best_at = -1;
        for (int fh = 0; fh < kh; ++fh) {
            int ih = oh * sh - ph + fh;
            if (ih < 0 || ih >= H) continue;
            for (int fw = 0; fw < kw; ++fw) {
                int iw = ow * sw - pw + fw;
                if (iw < 0 || iw >= W) continue;
                const acc_t v = to_acc(x[in.at(n, c, ih, iw)]);
                if (best_at < 0) {
                    best = v;
                    best_at = fh * kw + fw;
                } else {
                    // Strict > keeps the first of equal maxima and is false against a NaN.
                    if (v > best) best_at = fh * kw + fw;
                    if (v > best || v != v) best = v;  // np.maximum: a NaN on either side stays
                }
            }
        }
        y[i] = from_acc(best);
        argmax[i] = best_at;
    }
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
max_pool2d_backward(const storage_t* dy, const int* argmax, storage_t* dx, int N, int C, int H, int W,
                    int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    const index_t total = (index_t)N * C * H * W;
    const Act4 in = {C, H, W, cl}, out = {C, OH, OW, cl};
    for (index_t i = global_thread_index(); i < total; i += global_thread_count()) {
        int c, ih, iw;
        const index_t n = in.split(i, &c, &ih, &iw);
        dx[i] = from_acc(covering_sum(n, c, ih, iw, out, kh, kw, sh, sw, ph, pw, MaxRoute{dy, argmax}));
    }
}

// Disjoint windows (OH * kh == H and OW * kw == W: the launcher takes these kernels only then): output
// (oh, ow) of plane (n, c) writes dx over its window, each value 0 + f(tap) as in covering_sum,
// whose one term is added to a zero (so -0.0 becomes +0.0 in both).
template <class F>
__device__ inline void disjoint_backward(storage_t* dx, int N, int C, int H, int W, int OH, int OW, int kh, int kw,
                                         int cl, F f) {
    const index_t total = (index_t)N * C * OH * OW;
    const Act4 in = {C, H, W, cl}, out = {C, OH, OW, cl};
    for (index_t o = global_thread_index(); o < total; o += global_thread_count()) {
        int c, oh, ow;
        const index_t n = out.split(o, &c, &oh, &ow);
        for (int fh = 0; fh < kh; ++fh)
            for (int fw = 0; fw < kw; ++fw)
                dx[in.at(n, c, oh * kh + fh, ow * kw + fw)] = from_acc((acc_t)0 + f(o, fh * kw + fw));
    }
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
max_pool2d_backward_disjoint(const storage_t* dy, const int* argmax, storage_t* dx, int N, int C, int H, int W,
                             int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    disjoint_backward(dx, N, C, H, W, OH, OW, kh, kw, cl, MaxRoute{dy, argmax});
}

// The sum over output (oh, ow)'s window of f(x) for its in-bounds taps, in row-major tap order
// (the reference's order: the average's result is bit-identical to it).
template <class F>
__device__ inline acc_t window_sum(const storage_t* x, const Act4& in, index_t n, int c, int oh, int ow, int kh,
                                   int kw, int sh, int sw, int ph, int pw, F f) {
    acc_t s = 0;
    for (int fh = 0; fh < kh; ++fh) {
        int ih = oh * sh - ph + fh;
        if (ih < 0 || ih >= in.H) continue;
        for (int fw = 0; fw < kw; ++fw) {
            int iw = ow * sw - pw + fw;
            if (iw >= 0 && iw < in.W) s += f(to_acc(x[in.at(n, c, ih, iw)]));
        }
    }
    return s;
}

struct Identity {
    __device__ acc_t operator()(acc_t v) const { return v; }
};

// x^p in the accumulator type, with the exact forms for the common norms.
__device__ inline acc_t lp_power(acc_t v, acc_t p) {
    if (p == (acc_t)2) return v * v;
    if (p == (acc_t)1) return v;
    return pow(v, p);
}

__device__ inline acc_t lp_root(acc_t s, acc_t p) {
    if (p == (acc_t)2) return sqrt(s);
    if (p == (acc_t)1) return s;
    return pow(s, (acc_t)1 / p);
}

struct LpPower {
    acc_t p;
    __device__ acc_t operator()(acc_t v) const { return lp_power(v, p); }
};

// dy * y^(1-p) of a covering output; 0 from a window of norm 0.
struct LpShare {
    const storage_t* dy;
    const storage_t* y;
    acc_t p;
    __device__ acc_t operator()(index_t o, int) const {
        const acc_t yv = to_acc(y[o]);
        if (yv == (acc_t)0) return 0;
        const acc_t scale = p == (acc_t)2 ? (acc_t)1 / yv : p == (acc_t)1 ? (acc_t)1 : pow(yv, (acc_t)1 - p);
        return to_acc(dy[o]) * scale;
    }
};

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
avg_pool2d_forward(const storage_t* x, storage_t* y, int N, int C, int H, int W, int OH, int OW,
                   int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    const index_t total = (index_t)N * C * OH * OW;
    const Act4 in = {C, H, W, cl}, out = {C, OH, OW, cl};
    const acc_t inv = (acc_t)(1.0 / (double)(kh * kw));
    for (index_t i = global_thread_index(); i < total; i += global_thread_count()) {
        int c, oh, ow;
        const index_t n = out.split(i, &c, &oh, &ow);
        const acc_t s = window_sum(x, in, n, c, oh, ow, kh, kw, sh, sw, ph, pw, Identity());
        y[i] = from_acc(s * inv);
    }
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
avg_pool2d_backward(const storage_t* dy, storage_t* dx, int N, int C, int H, int W, int OH, int OW,
                    int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    const index_t total = (index_t)N * C * H * W;
    const Act4 in = {C, H, W, cl}, out = {C, OH, OW, cl};
    const acc_t inv = (acc_t)(1.0 / (double)(kh * kw));
    for (index_t i = global_thread_index(); i < total; i += global_thread_count()) {
        int c, ih, iw;
        const index_t n = in.split(i, &c, &ih, &iw);
        dx[i] = from_acc(covering_sum(n, c, ih, iw, out, kh, kw, sh, sw, ph, pw, AvgShare{dy, inv}));
    }
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
avg_pool2d_backward_disjoint(const storage_t* dy, storage_t* dx, int N, int C, int H, int W, int OH, int OW,
                             int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    disjoint_backward(dx, N, C, H, W, OH, OW, kh, kw, cl, AvgShare{dy, (acc_t)(1.0 / (double)(kh * kw))});
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
lp_pool2d_forward(const storage_t* x, storage_t* y, double norm, int N, int C, int H, int W, int OH, int OW,
                  int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    const index_t total = (index_t)N * C * OH * OW;
    const Act4 in = {C, H, W, cl}, out = {C, OH, OW, cl};
    const acc_t p = (acc_t)norm;
    for (index_t i = global_thread_index(); i < total; i += global_thread_count()) {
        int c, oh, ow;
        const index_t n = out.split(i, &c, &oh, &ow);
        const acc_t s = window_sum(x, in, n, c, oh, ow, kh, kw, sh, sw, ph, pw, LpPower{p});
        y[i] = from_acc(lp_root(s, p));
    }
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
lp_pool2d_backward(const storage_t* dy, const storage_t* x, const storage_t* y, storage_t* dx, double norm,
                   int N, int C, int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw,
                   int cl) {
    const index_t total = (index_t)N * C * H * W;
    const Act4 in = {C, H, W, cl}, out = {C, OH, OW, cl};
    const acc_t p = (acc_t)norm;
    for (index_t i = global_thread_index(); i < total; i += global_thread_count()) {
        int c, ih, iw;
        const index_t n = in.split(i, &c, &ih, &iw);
        const acc_t xv = to_acc(x[i]);
        const acc_t xpow = p == (acc_t)2 ? xv : p == (acc_t)1 ? (acc_t)1 : pow(xv, p - (acc_t)1);
        const acc_t s = covering_sum(n, c, ih, iw, out, kh, kw, sh, sw, ph, pw, LpShare{dy, y, p});
        dx[i] = from_acc(s * xpow);
    }
}

