// batchnorm.cu: BatchNorm2d over the (N, H, W) axes of an N x C x H x W activation, NCHW or
// channels_last (NHWC memory; the flag `cl`), with gpuconv.ops.batchnorm's semantics: training
// normalizes with the batch mean and biased variance and updates the running statistics with the
// unbiased one; eval normalizes with the running statistics.
//
// Element types (common.cuh): x, y, dy, dx are storage_t; the statistics, gamma, beta, the
// running statistics, dgamma, dbeta, the partial sums and the cached xhat are acc_t (float32 for
// bfloat16/float16/float32 storage, double for float64). y and dx are rounded once.
//
// Reductions, deterministic by construction (no atomics; every sum has one fixed order that
// depends on the shape only, not on the device, so 'sim' and every GPU give the same bits):
//   pass 1 (`*_sums` kernels, grid (channel groups, S), GPUCONV_BLOCK threads): split s of S
//     owns a contiguous chunk of the N*H*W positions of its channels and writes one partial sum
//     per channel to partial[s][c]. NCHW: one channel per block, the threads walk the chunk's
//     positions (contiguous within each image plane). NHWC: 32 channels per block (lane = channel,
//     so a warp reads 32 adjacent channels of one pixel), the 8 warps take every 8th pixel. Each
//     thread sums sequentially, then a shared-memory tree sums the threads of a channel.
//   pass 2 (`*_mean`, `*_variance`, `*_backward_reduce`, grid ceil(C / 32)): 32 channels x 8
//     lanes per block; lane j sums splits j, j + 8, ..., then a tree over the 8 lanes.
//   The launcher (gpuconv/ops/_launch_batchnorm.py, `geometry`) picks S from the shape.
// Training forward: sums -> mean -> centered_squares -> variance (inv_std, running stats) ->
// normalize: x is read three times, the mean is exact before the variance is taken (two-pass,
// the reference's mean((x - mean)^2), not E[x^2] - mean^2). Eval: eval_inv_std -> normalize.
// Backward: backward_sums (dy and dy * xhat together) -> backward_reduce -> backward_dx.
//
// Elementwise arithmetic follows the reference operation for operation, each product rounded on
// its own (mul_rn: NVRTC would otherwise contract a*b + c into one FMA), so with the same
// statistics the kernels give the reference's bits; the sums differ from NumPy's pairwise
// order by rounding only (tests derive the bound from the reduction length).

__device__ inline float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ inline double mul_rn(double a, double b) { return __dmul_rn(a, b); }

#define BN_LANES 32  // channels per block in the NHWC sums and in every pass-2 kernel
#define BN_ROWS (GPUCONV_BLOCK / BN_LANES)

// The chunk of split s: positions [s * chunk, min((s + 1) * chunk, count)) of a channel's
// count = N * HW positions; position e is pixel p = e % HW of image n = e / HW.
struct Chunk {
    int begin, end;
    __device__ Chunk(int s, int chunk, int count) {
        begin = s * chunk;
        end = imin(count, begin + chunk);
    }
};

__device__ inline index_t bn_at(int e, int c, int C, int HW, int cl) {
    if (cl) return (index_t)e * C + c;
    const int n = e / HW;
    return ((index_t)n * C + c) * HW + (e - n * HW);
}

// Sums f(memory index, c) over this block's chunk, into out_a[s * C + c] and out_b[...] (f gives
// two values; a pass that needs one leaves the second 0). Every thread reaches every barrier.
template <class F>
__device__ void channel_partial_sums(int C, int HW, int count, int chunk, int cl, F f, acc_t* out_a,
                                     acc_t* out_b) {
    __shared__ acc_t red_a[GPUCONV_BLOCK];
    __shared__ acc_t red_b[GPUCONV_BLOCK];
    const int t = threadIdx.x, s = blockIdx.y;
    const Chunk ch(s, chunk, count);
    int c, first, step, lanes;
    if (cl) {
        c = blockIdx.x * BN_LANES + t % BN_LANES, first = ch.begin + t / BN_LANES, step = BN_ROWS, lanes = BN_LANES;
    } else {
        c = blockIdx.x, first = ch.begin + t, step = GPUCONV_BLOCK, lanes = 1;
    }
    acc_t a = 0, b = 0;
    if (c < C) {
        for (int e = first; e < ch.end; e += step) {
            acc_t fa, fb;
            f(bn_at(e, c, C, HW, cl), c, &fa, &fb);
            a += fa;
            b += fb;
        }
    }
    red_a[t] = a;
    red_b[t] = b;
    __syncthreads();
    for (int half = GPUCONV_BLOCK / 2; half >= lanes; half >>= 1) {
        if (t < half) {
            red_a[t] += red_a[t + half];
            red_b[t] += red_b[t + half];
        }
        __syncthreads();
    }
    if (t < lanes && c < C) {
        out_a[(index_t)s * C + c] = red_a[t];
        if (out_b) out_b[(index_t)s * C + c] = red_b[t];
    }
}

// Pass 2: the sum over the S splits of partial[s * C + c] for this block's channel c (lane t % 32),
// returned to the threads t < 32 (others get 0). Every thread reaches every barrier.
__device__ acc_t split_sum(const acc_t* partial, int S, int C, int* channel) {
    __shared__ acc_t red[GPUCONV_BLOCK];
    const int t = threadIdx.x, c = blockIdx.x * BN_LANES + t % BN_LANES;
    acc_t a = 0;
    if (c < C)
        for (int s = t / BN_LANES; s < S; s += BN_ROWS) a += partial[(index_t)s * C + c];
    red[t] = a;
    __syncthreads();
    for (int half = GPUCONV_BLOCK / 2; half >= BN_LANES; half >>= 1) {
        if (t < half) red[t] += red[t + half];
        __syncthreads();
    }
    *channel = c;
    return t < BN_LANES ? red[t] : (acc_t)0;
}

struct SumX {
    const storage_t* x;
    __device__ void operator()(index_t i, int, acc_t* a, acc_t* b) const {
        *a = to_acc(x[i]);
        *b = 0;
    }
};

struct CenteredSquare {
    const storage_t* x;
    const acc_t* mean;
    __device__ void operator()(index_t i, int c, acc_t* a, acc_t* b) const {
        const acc_t d = to_acc(x[i]) - mean[c];
        *a = mul_rn(d, d);
        *b = 0;
    }
};

struct DyAndDyXhat {
    const storage_t* dy;
    const acc_t* xhat;
    __device__ void operator()(index_t i, int, acc_t* a, acc_t* b) const {
        const acc_t g = to_acc(dy[i]);
        *a = g;
        *b = mul_rn(g, xhat[i]);
    }
};

// partial[s][c] = sum of x over split s.
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
batchnorm2d_sums(const storage_t* x, acc_t* partial, int C, int HW, int count, int chunk, int cl) {
    channel_partial_sums(C, HW, count, chunk, cl, SumX{x}, partial, (acc_t*)0);
}

// mean[c] = (sum over the splits) / count, a true division as NumPy's mean.
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
batchnorm2d_mean(const acc_t* partial, acc_t* mean, int S, int C, int count) {
    int c;
    const acc_t total = split_sum(partial, S, C, &c);
    if (threadIdx.x < BN_LANES && c < C) mean[c] = total / (acc_t)count;
}

// partial[s][c] = sum of (x - mean[c])^2 over split s.
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
batchnorm2d_centered_squares(const storage_t* x, const acc_t* mean, acc_t* partial, int C, int HW, int count,
                             int chunk, int cl) {
    channel_partial_sums(C, HW, count, chunk, cl, CenteredSquare{x, mean}, partial, (acc_t*)0);
}

// var = (sum over the splits) / count; inv_std = 1 / sqrt(var + eps); when has_running, the
// running statistics are updated in place as the reference does: r = r * (1 - m), then
// r += m * mean and r += (m * count / (count - 1)) * var, each product rounded on its own (the
// three coefficients come from the host in double, rounded to acc_t as NumPy's dt(...) does).
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
batchnorm2d_variance(const acc_t* partial, const acc_t* mean, acc_t* inv_std, acc_t* running_mean,
                     acc_t* running_var, int S, int C, int count, double eps, double keep, double momentum,
                     double momentum_unbiased, int has_running) {
    int c;
    const acc_t total = split_sum(partial, S, C, &c);
    if (threadIdx.x < BN_LANES && c < C) {
        const acc_t var = total / (acc_t)count;
        inv_std[c] = (acc_t)1 / sqrt(var + (acc_t)eps);
        if (has_running) {
            running_mean[c] = mul_rn(running_mean[c], (acc_t)keep) + mul_rn((acc_t)momentum, mean[c]);
            running_var[c] = mul_rn(running_var[c], (acc_t)keep) + mul_rn((acc_t)momentum_unbiased, var);
        }
    }
}

// Eval mode: inv_std = 1 / sqrt(running_var + eps), one thread per channel.
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
batchnorm2d_eval_inv_std(const acc_t* running_var, acc_t* inv_std, int C, double eps) {
    const int c = blockIdx.x * GPUCONV_BLOCK + threadIdx.x;
    if (c < C) inv_std[c] = (acc_t)1 / sqrt(running_var[c] + (acc_t)eps);
}

// The channel of a grid-stride loop's element, carried from step to step without a division:
// memory index i has channel (i / inner) % C, inner = HW for NCHW and 1 for NHWC. A thread's first
// index and the stride are below 2^31 (grid_1d caps the grid), so the setup divides in 32 bits;
// each step then adds the stride's quotient and remainder with one carry (no 64-bit division,
// whose out-of-line routine ptxas made spill).
struct ChannelWalk {
    int c, r, dc, dr, inner, C;
    __device__ ChannelWalk(int C_, int HW, int cl) : C(C_) {
        inner = cl ? 1 : HW;
        const unsigned first = (unsigned)global_thread_index(), stride = (unsigned)global_thread_count();
        r = (int)(first % (unsigned)inner);
        c = (int)((first / (unsigned)inner) % (unsigned)C);
        dr = (int)(stride % (unsigned)inner);
        dc = (int)((stride / (unsigned)inner) % (unsigned)C);
    }
    __device__ void step() {
        r += dr;
        const int carry = r >= inner;
        if (carry) r -= inner;
        c += dc + carry;
        if (c >= C) c -= C;
    }
};

// xhat = (x - mean) * inv_std (acc_t, kept for the backward), y = xhat * gamma + beta rounded once;
// one thread per element in memory order (grid-stride).
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
batchnorm2d_normalize(const storage_t* x, const acc_t* mean, const acc_t* inv_std, const acc_t* gamma,
                      const acc_t* beta, storage_t* y, acc_t* xhat, index_t total, int C, int HW, int cl) {
    ChannelWalk walk(C, HW, cl);
    for (index_t i = global_thread_index(); i < total; i += global_thread_count(), walk.step()) {
        const int c = walk.c;
        const acc_t h = mul_rn(to_acc(x[i]) - mean[c], inv_std[c]);
        xhat[i] = h;
        y[i] = from_acc(mul_rn(h, gamma[c]) + beta[c]);
    }
}

// partial[s][c] = sum of dy and partial[S + s][c] = sum of dy * xhat over split s.
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
batchnorm2d_backward_sums(const storage_t* dy, const acc_t* xhat, acc_t* partial, int S, int C, int HW, int count,
                          int chunk, int cl) {
    channel_partial_sums(C, HW, count, chunk, cl, DyAndDyXhat{dy, xhat}, partial, partial + (index_t)S * C);
}

// dbeta[c] = sum of dy, dgamma[c] = sum of dy * xhat, from backward_sums' partials.
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
batchnorm2d_backward_reduce(const acc_t* partial, acc_t* dgamma, acc_t* dbeta, int S, int C) {
    int c;
    const acc_t db = split_sum(partial, S, C, &c);
    const acc_t dg = split_sum(partial + (index_t)S * C, S, C, &c);
    if (threadIdx.x < BN_LANES && c < C) {
        dbeta[c] = db;
        dgamma[c] = dg;
    }
}

// Training: dx = (dy - dbeta * (1/count) - xhat * (dgamma * (1/count))) * (gamma * inv_std);
// eval: dx = dy * (gamma * inv_std); in the reference's order, rounded once to storage_t.
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
batchnorm2d_backward_dx(const storage_t* dy, const acc_t* xhat, const acc_t* gamma, const acc_t* inv_std,
                        const acc_t* dgamma, const acc_t* dbeta, storage_t* dx, index_t total, int C, int HW,
                        int count, int training, int cl) {
    const acc_t inv_count = (acc_t)(1.0 / (double)count);
    ChannelWalk walk(C, HW, cl);
    for (index_t i = global_thread_index(); i < total; i += global_thread_count(), walk.step()) {
        const int c = walk.c;
        const acc_t scale = mul_rn(gamma[c], inv_std[c]);
        acc_t g = to_acc(dy[i]);
        if (training) {
            g = g - mul_rn(dbeta[c], inv_count);
            g = g - mul_rn(xhat[i], mul_rn(dgamma[c], inv_count));
        }
        dx[i] = from_acc(mul_rn(g, scale));
    }
}
