// pool2d.cu: max, average and LP pooling, each (n, c) plane independently, over NCHW or
// channels_last (NHWC memory) activations (gpuconv.layout): the flag `cl` says which, and x, y, dy,
// dx and the switches all share it. Each thread owns one element in memory order, or VEC16
// adjacent channels of one pixel in the _vec kernels (NHWC: channels fastest, so neighbouring
// threads read neighbouring channels, coalesced in either layout); the taps of a window and their
// order are the same in both layouts, so are the results, bit for bit.
//
// Windows are kh x kw with stride sh, sw and zero-or-more padding ph, pw, at most half the window
// (PyTorch's rule, so every window holds an input): padded cells are skipped, so they never win a
// max (PyTorch's -inf padding; where every input is -inf the first in-bounds tap takes the switch,
// as in PyTorch), and count in an average's divisor (count_include_pad=True) except in the
// _exclude_pad kernels. The launcher runs padded poolings on the element kernels only (not
// _disjoint, not _vec). Offsets are 64-bit.
//
// Element types (common.cuh): x, y, dy, dx are storage_t; values are read into acc_t, compared
// or summed there, and each output is rounded once to storage_t. Max pooling only compares and
// copies (adding 0 to a non-NaN maximum, for +0.0), so its outputs equal the reference bit for
// bit in every dtype; a bfloat16 NaN comes back as the quiet NaN ml_dtypes makes of it, as the
// reference's float32 round trip does. Gradients are sums: a NaN among their terms comes out a
// NaN, whose payload is the hardware's (a GPU's add returns its canonical NaN).
//
// Kernels (extern "C"; 1-D grid-stride grids of GPUCONV_BLOCK threads):
//   max_pool2d_forward    one thread per output: y = max over the window and the "switch"
//                         argmax = fh*kw + fw, the window-local tap of the maximum (int32, the
//                         layout of gpuconv.ops.MaxPool2dCache): the first maximum in row-major
//                         tap order wins ties, and a zero maximum is +0.0 (np.maximum returns
//                         either of tied signed zeros, so the rule says which). A NaN makes the
//                         output NaN (np.maximum) and takes the switch, the first NaN in tap
//                         order (np.argmax's rule): the output's gradient goes to the input the
//                         output is, as PyTorch routes it, never to a finite value that lost.
//   max_pool2d_backward   one thread per INPUT element: gathers dy of every output whose window
//                         covers it and whose switch points at it. Correct for overlapping
//                         windows and deterministic (no atomics).
//   max_pool2d_backward_disjoint, avg_pool2d_backward_disjoint
//                         the same gradients when the windows do not overlap (stride = kernel, no
//                         padding; max pool 2x2 and 4x4 of the CIFAR nets): one thread per OUTPUT
//                         writes its window's inputs, and the zeros of any rows and columns past
//                         the last window (floor pooling: airbench's 31 -> 15). No covering range
//                         and kh*kw times fewer threads; the same bits as the gather kernels.
//   avg_pool2d_forward    one thread per output: window sum * (1/(kh*kw)).
//   avg_pool2d_backward   one thread per input element: sum of dy * (1/(kh*kw)) over the windows
//                         covering it (gather, deterministic).
//   avg_pool2d_{forward,backward}_exclude_pad
//                         the same with count_include_pad=False (padded poolings only): each
//                         window's divisor is its in-bounds taps, 1/(rows*cols) rounded as above.
//   adaptive_{avg,max}_pool2d_{forward,backward}
//                         PyTorch's adaptive pooling to an output size that need not divide
//                         the input's (windows of different sizes, overlapping): see there.
//   lp_pool2d_forward     one thread per output: y = (sum over the window of x^p)^(1/p) (x*x and
//                         sqrt for p = 2), PyTorch's lp_pool2d; non-integer p of a negative x is
//                         NaN there too.
//   lp_pool2d_backward    one thread per input element: sum over the covering windows of
//                         dy * x^(p-1) * y^(1-p), and 0 from a window whose norm y is 0 (where
//                         the gradient of the norm is undefined; PyTorch's choice as well).
//   max_pool2d_forward_pairs, max_pool2d_backward_disjoint_pairs
//                         NCHW, windows 2 wide at stride 2 (kh rows at stride kh), no padding, W
//                         a multiple of 4 and no row past the last window (the CIFAR nets' 2x2):
//                         one thread per two adjacent outputs of a row, each window row one
//                         storage4 (16 bytes in float32) loaded or stored, where one output a
//                         thread moved 8 bytes a row and reached under half a copy's bandwidth on
//                         an H200 (float32, 512x128x32x32). The same taps in the same order as
//                         the element kernels (max_take, max_value): the same bits.
//   <name>_vec            (max and average pooling) the same kernel with VEC16 adjacent
//                         channels per thread, 16 bytes per load and store (8 bfloat16/float16
//                         values, 4 float32, 2 float64): channels_last only, with C a multiple of
//                         VEC16 and every array 16-byte aligned (the launcher checks). One
//                         2-byte element per thread reached a fifth of a copy's bandwidth on an
//                         H200 (bfloat16 channels_last, 2x2 max pool); the lanes compute exactly
//                         what the element kernel does, so the bits are the same.
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
//
// Resources per kernel and build (ptxas of CUDA 13.0 for sm_90, the registry's NVRTC options;
// tests/test_nvrtc.py holds every figure to ptxas's report): registers / static shared memory
// in bytes / bytes spilled (stores + loads); "-": no such build (TF32: conv2d, conv2d_tc, gemm_tc).
//   ptxas 13.0                        f32          f64          bf16         f16          tf32
//   max_pool2d_forward                46/0/0       48/0/0       46/0/0       38/0/0       -
//   max_pool2d_forward_vec            40/0/0       40/0/0       48/0/0       52/0/0       -
//   max_pool2d_backward               32/0/0       28/0/0       31/0/0       28/0/0       -
//   max_pool2d_backward_vec           44/0/0       48/0/0       62/0/0       44/0/0       -
//   max_pool2d_backward_disjoint      40/0/0       40/0/0       40/0/0       48/0/0       -
//   max_pool2d_backward_disjoint_vec  62/0/0       48/0/0       54/0/0       78/0/0       -
//   avg_pool2d_forward                40/0/0       40/0/0       40/0/0       48/0/0       -
//   avg_pool2d_forward_vec            64/0/0       64/0/0       40/0/0       40/0/0       -
//   avg_pool2d_backward               28/0/0       32/0/0       28/0/0       31/0/0       -
//   avg_pool2d_backward_vec           40/0/0       48/0/0       43/0/0       31/0/0       -
//   avg_pool2d_backward_disjoint      35/0/0       40/0/0       40/0/0       40/0/0       -
//   avg_pool2d_backward_disjoint_vec  48/0/0       48/0/0       40/0/0       64/0/0       -
//   avg_pool2d_forward_exclude_pad    40/0/0       40/0/0       40/0/0       48/0/0       -
//   avg_pool2d_backward_exclude_pad   28/0/0       29/0/0       30/0/0       30/0/0       -
//   lp_pool2d_forward                 32/0/0       54/0/0       32/0/0       33/0/0       -
//   lp_pool2d_backward                31/0/0       45/0/0       31/0/0       29/0/0       -
//   adaptive_avg_pool2d_forward       32/0/0       32/0/0       32/0/0       30/0/0       -
//   adaptive_avg_pool2d_backward      47/0/0       48/0/0       48/0/0       35/0/0       -
//   adaptive_max_pool2d_forward       32/0/0       32/0/0       32/0/0       32/0/0       -
//   adaptive_max_pool2d_backward      40/0/0       40/0/0       40/0/0       40/0/0       -
//   max_pool2d_forward_pairs          32/0/0       32/0/0       32/0/0       32/0/0       -
//   max_pool2d_backward_disjoint_pairs 30/0/0      32/0/0       32/0/0       32/0/0       -


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
// truncation is the floor; they divide unsigned, whose sequence is shorter than a signed division's
// and holds fewer registers (float16 max_pool2d_backward spilled with signed ones). (Written as
// max(0, ceil_div(...)) with a floor division of a signed numerator, NVRTC 13.0's build gave lo = 0
// for every input, seen on an H200; NVRTC 13.5 and the host simulator build that form right.)
__device__ inline void covering_range(int i, int k, int s, int p, int O, int* lo, int* hi) {
    const int first = i + p - k + 1;
    *lo = first > 0 ? (int)(((unsigned)first + s - 1) / (unsigned)s) : 0;
    *hi = imin(O - 1, (int)((unsigned)(i + p) / (unsigned)s));
}

// Per lane of V channels, the sum over the outputs whose windows cover input (n, c.., ih, iw) of
// the term f gives each covering output's lanes for that input's window-local tap fh * kw + fw.
// Outputs run from the last to the first, i.e. taps in row-major order: the references' order.
template <int V, class F>
__device__ inline void covering_sum(index_t n, int c, int ih, int iw, const Act4& out, int kh, int kw, int sh,
                                    int sw, int ph, int pw, F f, acc_t* s) {
    int oh_lo, oh_hi, ow_lo, ow_hi;
    covering_range(ih, kh, sh, ph, out.H, &oh_lo, &oh_hi);
    covering_range(iw, kw, sw, pw, out.W, &ow_lo, &ow_hi);
#pragma unroll
    for (int l = 0; l < V; ++l) s[l] = 0;
    const index_t px = out.cl ? out.C : 1, base = out.at(n, c, 0, 0);  // plane (n, c) of the outputs
    for (int oh = oh_hi; oh >= oh_lo; --oh) {
        const index_t row = base + (index_t)oh * out.W * px;
        for (int ow = ow_hi; ow >= ow_lo; --ow) {
            const typename F::Loaded at = f.load(row + ow * px, oh, ow);
            const int tap = (ih + ph - oh * sh) * kw + (iw + pw - ow * sw);
#pragma unroll
            for (int l = 0; l < V; ++l) s[l] += f.term(at, tap, l);
        }
    }
}

// Per covering output: max pooling routes dy to the switch's tap, average pooling shares it.
// load(o, oh, ow) reads output (oh, ow)'s V lanes, at memory index o, once; term(.., tap, l) is lane l's share for that tap.
template <int V>
struct MaxRoute {
    const storage_t* dy;
    const int* argmax;
    struct Loaded {
        Lanes<storage_t, V> d;
        Lanes<int, V> a;
    };
    __device__ Loaded load(index_t o, int, int) const {
        return {*(const Lanes<storage_t, V>*)(dy + o), *(const Lanes<int, V>*)(argmax + o)};
    }
    __device__ acc_t term(const Loaded& at, int tap, int l) const {
        return at.a.v[l] == tap ? to_acc(at.d.v[l]) : (acc_t)0;
    }
};

// The average's divisor as the reference applies it: the float32 (or float64) reciprocal.
__device__ inline acc_t avg_inv(int kh, int kw) { return (acc_t)(1.0 / (double)(kh * kw)); }

// count_include_pad=False: the reciprocal of output (oh, ow)'s in-bounds taps (every window has one:
// padding <= kernel // 2), as the reference rounds it.
__device__ inline int taps_inside(int o, int s, int p, int k, int n) {
    const int first = o * s - p;
    return imin(first + k, n) - imax(first, 0);
}
struct InBounds {
    int H, W, kh, kw, sh, sw, ph, pw;
    __device__ acc_t inv(int oh, int ow) const {
        return avg_inv(taps_inside(oh, sh, ph, kh, H), taps_inside(ow, sw, pw, kw, W));
    }
};

// One lane: dy times its window's own reciprocal (count_include_pad=False), rounded on its own as AvgShare's.
struct AvgShareInBounds {
    const storage_t* dy;
    InBounds b;
    typedef acc_t Loaded;
    __device__ acc_t load(index_t o, int oh, int ow) const { return mul_rn(to_acc(dy[o]), b.inv(oh, ow)); }
    __device__ acc_t term(acc_t at, int, int) const { return at; }
};

template <int V>
struct AvgShare {
    const storage_t* dy;
    acc_t inv;
    typedef Lanes<storage_t, V> Loaded;
    __device__ Loaded load(index_t o, int, int) const { return *(const Lanes<storage_t, V>*)(dy + o); }
    __device__ acc_t term(const Loaded& at, int, int l) const { return mul_rn(to_acc(at.v[l]), inv); }
};

// The flat group index g of a grid-stride loop over N x C/V x OH x OW (or H x W) groups of V
// channels: returns n, sets the group's first channel and its pixel. Element g * V is the group's
// first element in memory (V > 1 runs channels_last only, where a group's lanes are adjacent).
template <int V>
__device__ inline index_t split_group(index_t g, int C, int H, int W, int cl, int* c, int* h, int* w) {
    const Act4 groups = {C / V, H, W, cl};
    const index_t n = groups.split(g, c, h, w);
    *c *= V;
    return n;
}

// One tap of a max window, in row-major tap order: the first sets the maximum and the switch; after
// it, strict > keeps the first of equal maxima, and the first NaN takes the switch (!(v <= best) is
// v > best or v a NaN) and keeps it (best is NaN from then on: np.maximum's NaN on either side stays).
__device__ inline void max_take(acc_t v, int tap, bool first, acc_t& best, int& best_at) {
    if (first) {
        best = v;
        best_at = tap;
    } else {
        if (!(v <= best) && best == best) best_at = tap;
        if (v > best || v != v) best = v;
    }
}

// A window's maximum as stored: -0.0 -> +0.0 as the reference; a NaN is copied, never added (a GPU's
// float add returns its canonical NaN, where the reference and the simulator's x86 keep the payload).
__device__ inline storage_t max_value(acc_t m) { return from_acc(m != m ? m : m + (acc_t)0); }

template <int V>
__device__ inline void max_forward(const storage_t* x, storage_t* y, int* argmax, int N, int C, int H, int W, int OH,
                                   int OW, int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    const index_t total = (index_t)N * (C / V) * OH * OW;
    const Act4 in = {C, H, W, cl};
    for (index_t g = global_thread_index(); g < total; g += global_thread_count()) {
        int c, oh, ow;
        const index_t n = split_group<V>(g, C, OH, OW, cl, &c, &oh, &ow);
        acc_t best[V];
        Lanes<int, V> best_at;
        bool first = true;  // every lane sees the same taps: the first in-bounds one starts them all
        for (int fh = 0; fh < kh; ++fh) {
            int ih = oh * sh - ph + fh;
            if (ih < 0 || ih >= H) continue;
            for (int fw = 0; fw < kw; ++fw) {
                int iw = ow * sw - pw + fw;
                if (iw < 0 || iw >= W) continue;
                const Lanes<storage_t, V> xv = *(const Lanes<storage_t, V>*)(x + in.at(n, c, ih, iw));
#pragma unroll
                for (int l = 0; l < V; ++l) max_take(to_acc(xv.v[l]), fh * kw + fw, first, best[l], best_at.v[l]);
                first = false;
            }
        }
        Lanes<storage_t, V> out;
#pragma unroll
        for (int l = 0; l < V; ++l) {
            out.v[l] = first ? from_acc((acc_t)0) : max_value(best[l]);
            if (first) best_at.v[l] = -1;
        }
        *(Lanes<storage_t, V>*)(y + g * V) = out;
        *(Lanes<int, V>*)(argmax + g * V) = best_at;
    }
}

// One thread per V lanes of an INPUT pixel: the sum over its covering outputs (max_pool2d_backward,
// avg_pool2d_backward).
template <int V, class F>
__device__ inline void gather_backward(storage_t* dx, int N, int C, int H, int W, int OH, int OW, int kh, int kw,
                                       int sh, int sw, int ph, int pw, int cl, F f) {
    const index_t total = (index_t)N * (C / V) * H * W;
    const Act4 out = {C, OH, OW, cl};
    for (index_t g = global_thread_index(); g < total; g += global_thread_count()) {
        int c, ih, iw;
        const index_t n = split_group<V>(g, C, H, W, cl, &c, &ih, &iw);
        acc_t s[V];
        covering_sum<V>(n, c, ih, iw, out, kh, kw, sh, sw, ph, pw, f, s);
        Lanes<storage_t, V> d;
#pragma unroll
        for (int l = 0; l < V; ++l) d.v[l] = from_acc(s[l]);
        *(Lanes<storage_t, V>*)(dx + g * V) = d;
    }
}

// Disjoint windows (stride = kernel, no padding: the launcher takes these kernels only then): output
// (oh, ow) of plane (n, c) writes dx over its window, each value 0 + f's term as in covering_sum,
// whose one term is added to a zero (so -0.0 becomes +0.0 in both). Rows and columns past the last
// window (floor pooling: H - OH * kh < kh of them) are written as zeros by the last row and
// column of outputs, so every element of dx is written once.
template <int V, class F>
__device__ inline void disjoint_backward(storage_t* dx, int N, int C, int H, int W, int OH, int OW, int kh, int kw,
                                         int cl, F f) {
    const index_t total = (index_t)N * (C / V) * OH * OW;
    const Act4 in = {C, H, W, cl};
    for (index_t g = global_thread_index(); g < total; g += global_thread_count()) {
        int c, oh, ow;
        const index_t n = split_group<V>(g, C, OH, OW, cl, &c, &oh, &ow);
        const typename F::Loaded at = f.load(g * V, oh, ow);
        const int rows = oh == OH - 1 ? H - oh * kh : kh, cols = ow == OW - 1 ? W - ow * kw : kw;
        for (int fh = 0; fh < rows; ++fh)
            for (int fw = 0; fw < cols; ++fw) {
                const bool inside = fh < kh && fw < kw;
                Lanes<storage_t, V> d;
#pragma unroll
                for (int l = 0; l < V; ++l)
                    d.v[l] = from_acc((acc_t)0 + (inside ? f.term(at, fh * kw + fw, l) : (acc_t)0));
                *(Lanes<storage_t, V>*)(dx + in.at(n, c, oh * kh + fh, ow * kw + fw)) = d;
            }
    }
}

// Per lane, the sum over output (oh, ow)'s window of f(x) for its in-bounds taps, in row-major tap
// order (the reference's order: the average's result is bit-identical to it).
template <int V, class F>
__device__ inline void window_sum(const storage_t* x, const Act4& in, index_t n, int c, int oh, int ow, int kh,
                                  int kw, int sh, int sw, int ph, int pw, F f, acc_t* s) {
#pragma unroll
    for (int l = 0; l < V; ++l) s[l] = 0;
    for (int fh = 0; fh < kh; ++fh) {
        int ih = oh * sh - ph + fh;
        if (ih < 0 || ih >= in.H) continue;
        for (int fw = 0; fw < kw; ++fw) {
            int iw = ow * sw - pw + fw;
            if (iw < 0 || iw >= in.W) continue;
            const Lanes<storage_t, V> xv = *(const Lanes<storage_t, V>*)(x + in.at(n, c, ih, iw));
#pragma unroll
            for (int l = 0; l < V; ++l) s[l] += f(to_acc(xv.v[l]));
        }
    }
}

struct Identity {
    __device__ acc_t operator()(acc_t v) const { return v; }
};

// InBounds: count_include_pad=False, each window divided by its in-bounds taps (V = 1 only).
template <int V, bool InBoundsDivisor = false>
__device__ inline void avg_forward(const storage_t* x, storage_t* y, int N, int C, int H, int W, int OH, int OW,
                                   int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    const index_t total = (index_t)N * (C / V) * OH * OW;
    const Act4 in = {C, H, W, cl};
    const acc_t all = avg_inv(kh, kw);
    for (index_t g = global_thread_index(); g < total; g += global_thread_count()) {
        int c, oh, ow;
        const index_t n = split_group<V>(g, C, OH, OW, cl, &c, &oh, &ow);
        acc_t s[V];
        window_sum<V>(x, in, n, c, oh, ow, kh, kw, sh, sw, ph, pw, Identity(), s);
        const acc_t inv = InBoundsDivisor ? InBounds{H, W, kh, kw, sh, sw, ph, pw}.inv(oh, ow) : all;
        Lanes<storage_t, V> out;
#pragma unroll
        for (int l = 0; l < V; ++l) out.v[l] = from_acc(s[l] * inv);
        *(Lanes<storage_t, V>*)(y + g * V) = out;
    }
}

// The entry points: each body once as the element-per-thread kernel (either layout) and once as
// the _vec kernel, VEC16 channels per thread (channels_last with C % VEC16 == 0 and 16-byte
// aligned arrays: the launcher checks), which reads and writes 16 bytes at a time.

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
max_pool2d_forward(const storage_t* x, storage_t* y, int* argmax,
    int N, int C, int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    max_forward<1>(x, y, argmax, N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, cl);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
max_pool2d_forward_vec(const storage_t* x, storage_t* y, int* argmax,
    int N, int C, int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    max_forward<VEC16>(x, y, argmax, N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, cl);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
max_pool2d_backward(const storage_t* dy, const int* argmax, storage_t* dx,
    int N, int C, int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    gather_backward<1>(dx, N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, cl, MaxRoute<1>{dy, argmax});
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
max_pool2d_backward_vec(const storage_t* dy, const int* argmax, storage_t* dx,
    int N, int C, int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    gather_backward<VEC16>(dx, N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, cl, MaxRoute<VEC16>{dy, argmax});
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
max_pool2d_backward_disjoint(const storage_t* dy, const int* argmax, storage_t* dx,
    int N, int C, int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    disjoint_backward<1>(dx, N, C, H, W, OH, OW, kh, kw, cl, MaxRoute<1>{dy, argmax});
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
max_pool2d_backward_disjoint_vec(const storage_t* dy, const int* argmax, storage_t* dx,
    int N, int C, int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    disjoint_backward<VEC16>(dx, N, C, H, W, OH, OW, kh, kw, cl, MaxRoute<VEC16>{dy, argmax});
}

// NCHW windows 2 wide at stride 2 (kh rows at stride kh), no padding, W % 4 == 0 and H == OH * kh,
// every array aligned to its loads (the launcher checks): one thread per two adjacent outputs of a
// row, each window row one storage4 of the four inputs under them, lanes 0 and 1 its halves. The
// same taps in the same order as max_pool2d_forward and max_pool2d_backward_disjoint: the same bits.
// Thread g of a _pairs kernel takes outputs 2g and 2g + 1 (a row's ow = 2q and 2q + 1: OW is even);
// the first row of their windows starts at this input element (rows of W, kh of them).
__device__ inline index_t pair_start(index_t g, int H, int W, int OH, int OW, int kh) {
    int oh, q;
    const index_t plane = split_hw(g, OH, OW / 2, &oh, &q);
    return (plane * H + (index_t)oh * kh) * W + 4 * q;
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
max_pool2d_forward_pairs(const storage_t* x, storage_t* y, int* argmax,
    int N, int C, int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    const index_t total = (index_t)N * C * OH * (OW / 2);
    for (index_t g = global_thread_index(); g < total; g += global_thread_count()) {
        const storage_t* row = x + pair_start(g, H, W, OH, OW, kh);
        acc_t best[2];
        Lanes<int, 2> at;
        for (int fh = 0; fh < kh; ++fh) {
            const storage4 v = *(const storage4*)(row + (index_t)fh * W);
            const acc_t tap[4] = {to_acc(v.x), to_acc(v.y), to_acc(v.z), to_acc(v.w)};
#pragma unroll
            for (int l = 0; l < 2; ++l)
#pragma unroll
                for (int fw = 0; fw < 2; ++fw) max_take(tap[2 * l + fw], fh * 2 + fw, fh == 0 && fw == 0, best[l], at.v[l]);
        }
        Lanes<storage_t, 2> out;
#pragma unroll
        for (int l = 0; l < 2; ++l) out.v[l] = max_value(best[l]);
        *(Lanes<storage_t, 2>*)(y + 2 * g) = out;
        *(Lanes<int, 2>*)(argmax + 2 * g) = at;
    }
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
max_pool2d_backward_disjoint_pairs(const storage_t* dy, const int* argmax, storage_t* dx,
    int N, int C, int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    const index_t total = (index_t)N * C * OH * (OW / 2);
    for (index_t g = global_thread_index(); g < total; g += global_thread_count()) {
        const Lanes<storage_t, 2> d = *(const Lanes<storage_t, 2>*)(dy + 2 * g);
        const Lanes<int, 2> a = *(const Lanes<int, 2>*)(argmax + 2 * g);
        const acc_t d0 = to_acc(d.v[0]), d1 = to_acc(d.v[1]);
        storage_t* row = dx + pair_start(g, H, W, OH, OW, kh);
        for (int fh = 0; fh < kh; ++fh) {  // each value 0 + its term, as disjoint_backward's
            storage4 v;
            v.x = from_acc((acc_t)0 + (a.v[0] == fh * 2 ? d0 : (acc_t)0));
            v.y = from_acc((acc_t)0 + (a.v[0] == fh * 2 + 1 ? d0 : (acc_t)0));
            v.z = from_acc((acc_t)0 + (a.v[1] == fh * 2 ? d1 : (acc_t)0));
            v.w = from_acc((acc_t)0 + (a.v[1] == fh * 2 + 1 ? d1 : (acc_t)0));
            *(storage4*)(row + (index_t)fh * W) = v;
        }
    }
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
avg_pool2d_forward(const storage_t* x, storage_t* y,
    int N, int C, int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    avg_forward<1>(x, y, N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, cl);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
avg_pool2d_forward_vec(const storage_t* x, storage_t* y,
    int N, int C, int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    avg_forward<VEC16>(x, y, N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, cl);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
avg_pool2d_forward_exclude_pad(const storage_t* x, storage_t* y,
    int N, int C, int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    avg_forward<1, true>(x, y, N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, cl);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
avg_pool2d_backward_exclude_pad(const storage_t* dy, storage_t* dx,
    int N, int C, int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    gather_backward<1>(dx, N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, cl,
                       AvgShareInBounds{dy, InBounds{H, W, kh, kw, sh, sw, ph, pw}});
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
avg_pool2d_backward(const storage_t* dy, storage_t* dx,
    int N, int C, int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    gather_backward<1>(dx, N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, cl, AvgShare<1>{dy, avg_inv(kh, kw)});
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
avg_pool2d_backward_vec(const storage_t* dy, storage_t* dx,
    int N, int C, int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    gather_backward<VEC16>(dx, N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, cl,
                              AvgShare<VEC16>{dy, avg_inv(kh, kw)});
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
avg_pool2d_backward_disjoint(const storage_t* dy, storage_t* dx,
    int N, int C, int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    disjoint_backward<1>(dx, N, C, H, W, OH, OW, kh, kw, cl, AvgShare<1>{dy, avg_inv(kh, kw)});
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
avg_pool2d_backward_disjoint_vec(const storage_t* dy, storage_t* dx,
    int N, int C, int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    disjoint_backward<VEC16>(dx, N, C, H, W, OH, OW, kh, kw, cl, AvgShare<VEC16>{dy, avg_inv(kh, kw)});
}

// Adaptive pooling (PyTorch's adaptive_avg_pool2d / adaptive_max_pool2d) to an OH x OW output
// whose size need not divide the input's: output row i pools input rows [floor(i*H/OH),
// ceil((i+1)*H/OH)), likewise for columns, so windows differ in size and may overlap. (When OH
// divides H they are the fixed windows of the kernels above, which the launcher uses then.)
// Forward: one thread per output, taps in row-major order; the average is the float32 (float64)
// sum times the rounded reciprocal of its window's size, the max takes the first maximum, or the
// first NaN, with a zero maximum +0.0 (max_forward's rules), and its switch is the input's index
// ih * W + iw within the plane. Backward: one thread per input, summing over the outputs whose
// windows cover it in increasing order (row-major), each its dy times its own reciprocal (average)
// or dy where the switch points at this input (max): the reference's order, bit for bit.
// Window bounds are computed in 32-bit unsigned arithmetic, i * in + in + out - 1 < (in + 1) *
// (out + 1): the launcher takes only sizes where that is at most 2^32 (any up to 65535), whose
// bounds need no 64-bit division (a called routine, around which float64's backward spilled).
__device__ inline int adaptive_start(int i, int in, int out) { return (int)((unsigned)i * in / out); }
__device__ inline int adaptive_end(int i, int in, int out) { return (int)(((unsigned)i * in + in + out - 1) / out); }
// The outputs whose windows cover input row r: floor(r*O/I) .. ceil((r+1)*O/I) - 1.
__device__ inline void adaptive_covering(int r, int in, int out, int* lo, int* hi) {
    *lo = (int)((unsigned)r * out / in);
    *hi = imin(out - 1, (int)(((unsigned)r * out + out + in - 1) / in) - 1);
}

// Output i of an N x C x OH x OW grid (memory order) and its window [h0, h1) x [w0, w1) of the input.
struct AdaptiveWindow {
    index_t n;
    int c, h0, h1, w0, w1;
    __device__ AdaptiveWindow(index_t i, const Act4& out, int H, int W) {
        int oh, ow;
        n = out.split(i, &c, &oh, &ow);
        h0 = adaptive_start(oh, H, out.H), h1 = adaptive_end(oh, H, out.H);
        w0 = adaptive_start(ow, W, out.W), w1 = adaptive_end(ow, W, out.W);
    }
};

// Input i of an N x C x H x W grid: the sum over the outputs whose windows cover it
// (row-major, increasing) of f(output's memory index, its window's rows, its window's columns).
template <class F>
__device__ inline acc_t adaptive_gather(index_t i, const Act4& in, const Act4& out, F f) {
    int c, ih, iw, oh_lo, oh_hi, ow_lo, ow_hi;
    const index_t n = in.split(i, &c, &ih, &iw);
    adaptive_covering(ih, in.H, out.H, &oh_lo, &oh_hi);
    adaptive_covering(iw, in.W, out.W, &ow_lo, &ow_hi);
    acc_t s = 0;
    for (int oh = oh_lo; oh <= oh_hi; ++oh) {
        const int rows = adaptive_end(oh, in.H, out.H) - adaptive_start(oh, in.H, out.H);
        for (int ow = ow_lo; ow <= ow_hi; ++ow) {
            const int cols = adaptive_end(ow, in.W, out.W) - adaptive_start(ow, in.W, out.W);
            s += f(out.at(n, c, oh, ow), ih * in.W + iw, rows, cols);
        }
    }
    return s;
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
adaptive_avg_pool2d_forward(const storage_t* x, storage_t* y, int N, int C, int H, int W, int OH, int OW, int cl) {
    const index_t total = (index_t)N * C * OH * OW;
    const Act4 in = {C, H, W, cl}, out = {C, OH, OW, cl};
    for (index_t i = global_thread_index(); i < total; i += global_thread_count()) {
        const AdaptiveWindow a(i, out, H, W);
        acc_t s = 0;
        for (int ih = a.h0; ih < a.h1; ++ih)
            for (int iw = a.w0; iw < a.w1; ++iw) s += to_acc(x[in.at(a.n, a.c, ih, iw)]);
        y[i] = from_acc(s * avg_inv(a.h1 - a.h0, a.w1 - a.w0));
    }
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
adaptive_max_pool2d_forward(const storage_t* x, storage_t* y, int* argmax, int N, int C, int H, int W, int OH,
                            int OW, int cl) {
    const index_t total = (index_t)N * C * OH * OW;
    const Act4 in = {C, H, W, cl}, out = {C, OH, OW, cl};
    for (index_t i = global_thread_index(); i < total; i += global_thread_count()) {
        const AdaptiveWindow a(i, out, H, W);
        acc_t best = to_acc(x[in.at(a.n, a.c, a.h0, a.w0)]);  // every window holds at least one input
        int at = a.h0 * W + a.w0;
        for (int ih = a.h0; ih < a.h1; ++ih)
            for (int iw = a.w0; iw < a.w1; ++iw) {
                const acc_t v = to_acc(x[in.at(a.n, a.c, ih, iw)]);
                if (!(v <= best) && best == best) at = ih * W + iw;  // as max_forward: first max, first NaN
                if (v > best || v != v) best = v;
            }
        y[i] = from_acc(best != best ? best : best + (acc_t)0);
        argmax[i] = at;
    }
}

struct AdaptiveAvgShare {  // an output's dy times its own window's reciprocal
    const storage_t* dy;
    __device__ acc_t operator()(index_t o, int, int rows, int cols) const {
        return mul_rn(to_acc(dy[o]), avg_inv(rows, cols));
    }
};

struct AdaptiveMaxRoute {  // an output's dy where its switch is this input
    const storage_t* dy;
    const int* argmax;
    __device__ acc_t operator()(index_t o, int self, int, int) const {
        return argmax[o] == self ? to_acc(dy[o]) : (acc_t)0;
    }
};

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
adaptive_avg_pool2d_backward(const storage_t* dy, storage_t* dx, int N, int C, int H, int W, int OH, int OW,
                             int cl) {
    const index_t total = (index_t)N * C * H * W;
    const Act4 in = {C, H, W, cl}, out = {C, OH, OW, cl};
    for (index_t i = global_thread_index(); i < total; i += global_thread_count())
        dx[i] = from_acc(adaptive_gather(i, in, out, AdaptiveAvgShare{dy}));
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
adaptive_max_pool2d_backward(const storage_t* dy, const int* argmax, storage_t* dx, int N, int C, int H, int W,
                             int OH, int OW, int cl) {
    const index_t total = (index_t)N * C * H * W;
    const Act4 in = {C, H, W, cl}, out = {C, OH, OW, cl};
    for (index_t i = global_thread_index(); i < total; i += global_thread_count())
        dx[i] = from_acc(adaptive_gather(i, in, out, AdaptiveMaxRoute{dy, argmax}));
}

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

// dy * y^(1-p) of a covering output; 0 from a window of norm 0 (one lane).
struct LpShare {
    const storage_t* dy;
    const storage_t* y;
    acc_t p;
    typedef acc_t Loaded;
    __device__ acc_t load(index_t o, int, int) const {
        const acc_t yv = to_acc(y[o]);
        if (yv == (acc_t)0) return 0;
        const acc_t scale = p == (acc_t)2 ? (acc_t)1 / yv : p == (acc_t)1 ? (acc_t)1 : pow(yv, (acc_t)1 - p);
        return to_acc(dy[o]) * scale;
    }
    __device__ acc_t term(acc_t at, int, int) const { return at; }
};

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
lp_pool2d_forward(const storage_t* x, storage_t* y, double norm, int N, int C, int H, int W, int OH, int OW,
                  int kh, int kw, int sh, int sw, int ph, int pw, int cl) {
    const index_t total = (index_t)N * C * OH * OW;
    const Act4 in = {C, H, W, cl}, out = {C, OH, OW, cl};
    const acc_t p = (acc_t)norm;
    for (index_t i = global_thread_index(); i < total; i += global_thread_count()) {
        int c, oh, ow;
        const index_t n = out.split(i, &c, &oh, &ow);
        acc_t s;
        window_sum<1>(x, in, n, c, oh, ow, kh, kw, sh, sw, ph, pw, LpPower{p}, &s);
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
        acc_t s;
        covering_sum<1>(n, c, ih, iw, out, kh, kw, sh, sw, ph, pw, LpShare{dy, y, p}, &s);
        dx[i] = from_acc(s * xpow);
    }
}

