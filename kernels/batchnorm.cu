// batchnorm.cu: BatchNorm2d over the (N, H, W) axes of an N x C x H x W activation, NCHW or
// channels_last (NHWC memory; the flag `cl`), with gpuconv.ops.batchnorm's semantics: training
// normalizes with the batch mean and biased variance and updates the running statistics with the
// unbiased one; eval normalizes with the running statistics.
//
// Element types (common.cuh): x, y, dy, dx are storage_t; the statistics, gamma, beta, the
// running statistics, dgamma, dbeta and the partial sums are acc_t (float32 for
// bfloat16/float16/float32 storage, double for float64). y and dx are rounded once.
// The backward reads x (storage_t, as the forward read it) and the mean and recomputes
// xhat = (x - mean) * inv_std with the forward's operations (bn_xhat), so the forward keeps no
// acc_t xhat: for bf16/fp16 x, 2 bytes cached per element instead of 4, and 2 fewer bytes read
// per element by each backward kernel and 4 fewer written by normalize.
//
// Reductions, deterministic by construction (no float atomics; every sum has one fixed order that
// depends on the shape only, not on the device or on which block finishes first, so 'sim' and
// every GPU give the same bits):
//   pass 1 (in batchnorm2d_stats, batchnorm2d_backward_sums; grid (channel groups, S),
//     GPUCONV_BLOCK threads): split s of S owns a contiguous chunk of the N*H*W positions of its
//     channels and writes two partials per channel: partial[s][c] and partial[S + s][c]. NCHW:
//     one channel per block, the threads walk the chunk's positions (contiguous within each
//     image plane). NHWC: 32 channels per block (lane = channel, so a warp reads 32 adjacent
//     channels of one pixel), the 8 warps take every 8th pixel. Each thread sums sequentially,
//     then a shared-memory tree sums the threads of a channel.
//   pass 2, in the same launch: the last block to finish among those of a 32-channel group (a
//     ticket per group, taken with atomicAdd after a fence, counted from 0 and reset to 0 by that
//     block) reduces the group's partials, 32 channels x 8 rows: row j adds splits j, j + 8, ...
//     in order, then a tree over the 8 rows.
//   The launcher (gpuconv/ops/_launch_batchnorm.py, `geometry`) picks S from the shape: about
//   4096 positions per block NCHW, 32 channels x 256 pixels NHWC, at most 512 splits.
// Training forward, 2 launches, x read once from memory for the statistics and once to normalize:
//   stats     per split: the sum, and the centered sum of squares about the split's own mean
//             (its chunk read twice by the same block, the second time from cache); then, in the
//             group's last block: mean = sum / count; the splits' squares combined about the
//             batch mean (Chan et al.: M2 = sum_s M2_s + n_s (mean_s - mean)^2), var = M2 /
//             count, the biased variance of the reference's mean((x - mean)^2) (never E[x^2] -
//             mean^2, which cancels); inv_std; the running statistics
//   normalize y, elementwise.
// Eval: eval_inv_std -> normalize. Backward, 2 launches: backward_sums (dy and x in one read for
// dy and dy * xhat; dgamma and dbeta in each group's last block) -> backward_dx. normalize and backward_dx
// have a _vec form for channels_last (16 bytes of channels per thread, their statistics hoisted:
// they load x, or dy and x, per element, where the element kernels also load five or six
// per-channel values).
// A fused activation (act = ACT_RELU or ACT_GELU, activation.cuh): normalize writes y = act(z),
// z the normalization's output rounded to storage_t as the separate op would return it; the
// backward recomputes z from the recomputed xhat (and gamma, beta) in backward_sums and backward_dx
// and takes dz = act's backward at z, rounded to storage_t as the separate op returns it. So
// the fused layer gives the bits of BatchNorm2d followed by the activation layer, without the
// activation's two passes over memory (and two launches) and without keeping z.
// Registers on sm_90 (ptxas 13, tests/test_nvrtc.py): 14-32 per kernel in the float32, bf16 and
// fp16 builds (the _vec forms 40-80: a channel group's statistics and the inlined GELU); in
// float64 18-64, the _vec forms 46 and 80; at most 6 KiB of shared memory per block and the
// last-block flag (12 KiB in float64, batchnorm2d_stats); no spills but in float64's
// backward_dx_vec (160 bytes around the double erfc call). The table below has every figure.
//
// Elementwise arithmetic follows the reference operation for operation, each product rounded on
// its own (mul_rn: NVRTC would otherwise contract a*b + c into one FMA), so with the same
// statistics the kernels give the reference's bits; the sums differ from NumPy's pairwise
// order by rounding only (tests derive the bound from the reduction length).
//
// Resources per kernel and build (ptxas of CUDA 13.0 for sm_90, the registry's NVRTC options;
// tests/test_nvrtc.py holds every figure to ptxas's report): registers / static shared memory
// in bytes / bytes spilled (stores + loads); "-": no such build (TF32: conv2d, conv2d_tc, gemm_tc).
//   ptxas 13.0                   f32          f64          bf16         f16          tf32
//   batchnorm2d_stats            32/6148/0    48/12296/0   32/6148/0    32/6148/0    -
//   batchnorm2d_eval_inv_std     14/0/0       18/0/0       14/0/0       14/0/0       -
//   batchnorm2d_normalize        32/0/0       40/0/0       32/0/0       29/0/0       -
//   batchnorm2d_normalize_vec    40/0/0       46/0/0       63/0/0       56/0/0       -
//   batchnorm2d_backward_sums    32/3076/0    64/6152/0    32/3076/0    32/3076/0    -
//   batchnorm2d_backward_dx      32/0/0       56/0/0       31/0/0       32/0/0       -
//   batchnorm2d_backward_dx_vec  56/0/0       80/0/160     80/0/0       80/0/0       -


#define BN_LANES 32  // channels per block in the NHWC sums and per group of pass 2
#define BN_ROWS (GPUCONV_BLOCK / BN_LANES)

// The chunk of split s: positions [s * chunk, min((s + 1) * chunk, count)) of a channel's
// count = N * HW positions; position e is pixel p = e % HW of image n = e / HW. The launcher makes
// every chunk non-empty.
__device__ inline int chunk_begin(int s, int chunk) { return s * chunk; }
__device__ inline int chunk_end(int s, int chunk, int count) { return imin(count, (s + 1) * chunk); }

// The memory index of a thread's positions e, e + step, ... of channel c, advanced without a
// division per element (a 32-bit division by HW costs about as many instructions as the
// bandwidth leaves for a whole element on an H200): NHWC adds step * C; NCHW adds the step's
// quotient by HW in image planes and its remainder in pixels, with one carry.
struct PositionWalk {
    index_t at, step_at, carry_at;
    int p, dp, HW;
    __device__ PositionWalk(int e, int step, int c, int C, int HW_, int cl) : HW(HW_) {
        if (cl) {
            at = (index_t)e * C + c, step_at = (index_t)step * C, carry_at = 0, p = 0, dp = 0;
        } else {
            const int n = e / HW;
            p = e - n * HW, dp = step % HW;
            at = ((index_t)n * C + c) * HW + p;
            step_at = (index_t)(step / HW) * C * HW + dp;
            carry_at = (index_t)C * HW - HW;  // from pixel HW of plane (n, c) to pixel 0 of (n + 1, c)
        }
    }
    __device__ void next() {
        at += step_at;
        p += dp;
        if (p >= HW) {
            p -= HW;
            at += carry_at;
        }
    }
};

// Pass 1's block: split s = blockIdx.y of channel c. NCHW: one channel, the 256 threads walk the
// chunk (lanes = 1); NHWC: 32 channels (lane = t % 32), the 8 warps take every 8th pixel.
struct SplitBlock {
    int c, s, first, end, step, lanes;
    __device__ SplitBlock(int C, int count, int chunk, int cl) {
        const int t = threadIdx.x;
        s = blockIdx.y;
        end = chunk_end(s, chunk, count);
        if (cl) {
            c = blockIdx.x * BN_LANES + t % BN_LANES, first = chunk_begin(s, chunk) + t / BN_LANES;
            step = BN_ROWS, lanes = BN_LANES;
        } else {
            c = blockIdx.x, first = chunk_begin(s, chunk) + t, step = GPUCONV_BLOCK, lanes = 1;
        }
        if (c >= C) first = end;  // a lane past the last channel adds nothing
    }
};

// The block's two sums over its chunk of f(memory index) for each thread's channel: every thread
// sums its positions in order, then a shared-memory tree adds the threads of a channel in a fixed
// order; the totals come back to every thread of the channel. Every thread reaches every barrier
// (the first one keeps a previous call's readers ahead of this call's writers).
template <class F>
__device__ void block_channel_sums(const SplitBlock& b, int C, int HW, int cl, F f, acc_t* sum_a, acc_t* sum_b) {
    __shared__ acc_t red_a[GPUCONV_BLOCK];
    __shared__ acc_t red_b[GPUCONV_BLOCK];
    const int t = threadIdx.x;
    acc_t a = 0, v = 0;
    PositionWalk walk(b.first, b.step, b.c, C, HW, cl);
    for (int e = b.first; e < b.end; e += b.step, walk.next()) {
        acc_t fa, fb;
        f(walk.at, &fa, &fb);
        a += fa;
        v += fb;
    }
    __syncthreads();
    red_a[t] = a;
    red_b[t] = v;
    __syncthreads();
    for (int half = GPUCONV_BLOCK / 2; half >= b.lanes; half >>= 1) {
        if (t < half) {
            red_a[t] += red_a[t + half];
            red_b[t] += red_b[t + half];
        }
        __syncthreads();
    }
    *sum_a = red_a[t % b.lanes];
    *sum_b = red_b[t % b.lanes];
}

// Pass 2: for channel c = group * 32 + t % 32, the sum over the S splits of f(s, c): lane row
// t / 32 adds splits row, row + 8, ... in order, then a tree over the 8 rows. The total comes back
// to every thread (0 past the last channel). Barriers as above.
template <class F>
__device__ acc_t split_reduce(int group, int S, int C, F f) {
    __shared__ acc_t red[GPUCONV_BLOCK];
    const int t = threadIdx.x, c = group * BN_LANES + t % BN_LANES;
    acc_t a = 0;
    if (c < C)
        for (int s = t / BN_LANES; s < S; s += BN_ROWS) a += f(s, c);
    __syncthreads();
    red[t] = a;
    __syncthreads();
    for (int half = GPUCONV_BLOCK / 2; half >= BN_LANES; half >>= 1) {
        if (t < half) red[t] += red[t + half];
        __syncthreads();
    }
    return red[t % BN_LANES];
}

// Pass 2 reads partials other blocks wrote in this launch: past L1 (volatile), after the ticket.
struct PartialAt {  // partial[s][c] of an S x C array
    const volatile acc_t* p;
    int C;
    __device__ acc_t operator()(int s, int c) const { return p[(index_t)s * C + c]; }
};

// Whether this block is the last of its channel group to finish pass 1 (common.cuh's
// last_block_of on the group's ticket). A group is a 32-channel group: NHWC, this block's S
// splits; NCHW, its (up to) 32 channels' S splits each.
__device__ bool last_of_group(unsigned* tickets, int group, int S, int C, int cl) {
    return last_block_of(tickets + group, (unsigned)S * (cl ? 1u : (unsigned)imin(BN_LANES, C - group * BN_LANES)));
}

__device__ inline int group_of_block(int cl) { return cl ? (int)blockIdx.x : (int)blockIdx.x / BN_LANES; }

struct SumX {
    const storage_t* x;
    __device__ void operator()(index_t i, acc_t* a, acc_t* b) const {
        *a = to_acc(x[i]);
        *b = 0;
    }
};

struct CenteredSquare {
    const storage_t* x;
    acc_t mean;
    __device__ void operator()(index_t i, acc_t* a, acc_t* b) const {
        const acc_t d = to_acc(x[i]) - mean;
        *a = mul_rn(d, d);
        *b = 0;
    }
};

// xhat = (x - mean) * inv_std: the forward's, and the backward's recomputation of it (the same bits).
__device__ inline acc_t bn_xhat(storage_t x, acc_t mean, acc_t inv_std) { return mul_rn(to_acc(x) - mean, inv_std); }

// The forward's output z of the normalization, as rounded to storage_t before the activation,
// recomputed from xhat exactly as batchnorm2d_normalize computed it.
__device__ inline storage_t bn_output(acc_t h, acc_t gamma, acc_t beta) { return from_acc(mul_rn(h, gamma) + beta); }

// The gradient reaching the normalization's output: dy through the fused activation's backward
// at z (rounded to storage_t, as the separate activation op returns it), dy itself without one.
__device__ inline acc_t bn_output_grad(storage_t dy, acc_t h, acc_t gamma, acc_t beta, int act) {
    return act == ACT_NONE ? to_acc(dy) : to_acc(act_backward(dy, bn_output(h, gamma, beta), act));
}

struct DyAndDyXhat {
    const storage_t* dy;
    const storage_t* x;
    acc_t mean, inv_std, gamma, beta;  // the thread's channel's (gamma, beta: fused activation only)
    int act;
    __device__ void operator()(index_t i, acc_t* a, acc_t* b) const {
        const acc_t h = bn_xhat(x[i], mean, inv_std);
        const acc_t g = bn_output_grad(dy[i], h, gamma, beta, act);
        *a = g;
        *b = mul_rn(g, h);
    }
};

// A split's contribution to the total centered sum of squares about the batch mean (Chan et al.'s
// pairwise combination): M2_s + n_s * (mean_s - mean)^2, each product rounded on its own.
struct SplitSquares {
    const volatile acc_t* partial;
    int S, C, count, chunk;
    acc_t mean;
    __device__ acc_t operator()(int s, int c) const {
        const acc_t n = (acc_t)(chunk_end(s, chunk, count) - chunk_begin(s, chunk));
        const acc_t d = partial[(index_t)s * C + c] / n - mean;
        return partial[((index_t)S + s) * C + c] + mul_rn(n, mul_rn(d, d));
    }
};

// The training forward's statistics, one launch. Pass 1, one read of x from memory: per split s
// and channel c, the sum partial[s][c] and the centered sum of squares partial[S + s][c] about the
// split's own mean (sum / n_s); the second loop re-reads the chunk the block has just read (from
// cache: 16 KiB NCHW, 32 channels x chunk pixels NHWC). Pass 2, in the group's last block: mean =
// (sum over the splits) / count (a true division, as NumPy's mean); the biased variance var =
// (combined sum of squares) / count; inv_std = 1 / sqrt(var + eps); when has_running, the running
// statistics are updated in place as the reference does: r = r * (1 - m), then r += m * mean and
// r += (m * count / (count - 1)) * var, each product rounded on its own (the three coefficients
// come from the host in double and are rounded to acc_t, as NumPy's dt(...) rounds them).
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
batchnorm2d_stats(const storage_t* x, acc_t* partial, acc_t* mean, acc_t* inv_std, acc_t* running_mean,
                  acc_t* running_var, unsigned* tickets, int S, int C, int HW, int count, int chunk, double eps,
                  double keep, double momentum, double momentum_unbiased, int has_running, int cl) {
    const SplitBlock b(C, count, chunk, cl);
    acc_t sum, m2, unused;
    block_channel_sums(b, C, HW, cl, SumX{x}, &sum, &unused);
    const acc_t local_mean = sum / (acc_t)(chunk_end(b.s, chunk, count) - chunk_begin(b.s, chunk));
    block_channel_sums(b, C, HW, cl, CenteredSquare{x, local_mean}, &m2, &unused);
    if ((int)threadIdx.x < b.lanes && b.c < C) {
        partial[(index_t)b.s * C + b.c] = sum;
        partial[((index_t)S + b.s) * C + b.c] = m2;
    }
    const int group = group_of_block(cl);
    if (last_of_group(tickets, group, S, C, cl)) {  // block-uniform: the whole block or none of it
        const acc_t m = split_reduce(group, S, C, PartialAt{partial, C}) / (acc_t)count;
        const acc_t var = split_reduce(group, S, C, SplitSquares{partial, S, C, count, chunk, m}) / (acc_t)count;
        const int c = group * BN_LANES + threadIdx.x;
        if (threadIdx.x < BN_LANES && c < C) {
            mean[c] = m;
            inv_std[c] = (acc_t)1 / sqrt(var + (acc_t)eps);
            if (has_running) {
                running_mean[c] = mul_rn(running_mean[c], (acc_t)keep) + mul_rn((acc_t)momentum, m);
                running_var[c] = mul_rn(running_var[c], (acc_t)keep) + mul_rn((acc_t)momentum_unbiased, var);
            }
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

// xhat = (x - mean) * inv_std (acc_t, recomputed by the backward), z = xhat * gamma + beta rounded
// once, y = act(z) (activation.cuh; y = z without one); one thread per element in memory order
// (grid-stride).
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
batchnorm2d_normalize(const storage_t* x, const acc_t* mean, const acc_t* inv_std, const acc_t* gamma,
                      const acc_t* beta, storage_t* y, index_t total, int C, int HW, int act, int cl) {
    ChannelWalk walk(C, HW, cl);
    for (index_t i = global_thread_index(); i < total; i += global_thread_count(), walk.step()) {
        const int c = walk.c;
        const acc_t h = bn_xhat(x[i], mean[c], inv_std[c]);
        y[i] = act_forward(bn_output(h, gamma[c], beta[c]), act);
    }
}

// The same, channels_last with C a multiple of VEC16 and every array 16-byte aligned (the launcher
// checks): VEC16 channels of one pixel per thread, x and y as 16 bytes, and the channels'
// statistics read again only when the thread's channel group changes (never, when
// the grid's thread count is a multiple of C / VEC16). The same arithmetic per element.
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
batchnorm2d_normalize_vec(const storage_t* x, const acc_t* mean, const acc_t* inv_std, const acc_t* gamma,
                          const acc_t* beta, storage_t* y, index_t groups, int C, int act) {
    typedef Lanes<storage_t, VEC16> S;
    typedef Lanes<acc_t, VEC16> A;
    ChannelWalk walk(C / VEC16, 1, 1);
    int c = -1;
    A m, s, g, b;
    for (index_t i = global_thread_index(); i < groups; i += global_thread_count(), walk.step()) {
        if (walk.c != c) {
            c = walk.c;
            m = ((const A*)mean)[c], s = ((const A*)inv_std)[c], g = ((const A*)gamma)[c], b = ((const A*)beta)[c];
        }
        const S xv = ((const S*)x)[i];
        S yv;
#pragma unroll
        for (int l = 0; l < VEC16; ++l)
            yv.v[l] = act_forward(bn_output(bn_xhat(xv.v[l], m.v[l], s.v[l]), g.v[l], b.v[l]), act);
        ((S*)y)[i] = yv;
    }
}

// Pass 1: partial[s][c] = sum of dz and partial[S + s][c] = sum of dz * xhat over split s (one
// read of dy and x; xhat recomputed, bn_xhat), dz the gradient at the normalization's output
// (bn_output_grad: dy, or dy through the fused activation); pass 2, in the group's last block:
// dbeta[c] = sum of dz, dgamma[c] = sum of dz * xhat over the splits.
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
batchnorm2d_backward_sums(const storage_t* dy, const storage_t* x, const acc_t* mean, const acc_t* inv_std,
                          const acc_t* gamma, const acc_t* beta, acc_t* partial, acc_t* dgamma, acc_t* dbeta,
                          unsigned* tickets, int S, int C, int HW, int count, int chunk, int act, int cl) {
    const SplitBlock b(C, count, chunk, cl);
    const bool in = b.c < C;  // a lane past the last channel reads no parameters (and sums nothing)
    acc_t sum_dy, sum_dy_xhat;
    const acc_t zero = 0;
    block_channel_sums(b, C, HW, cl,
                       DyAndDyXhat{dy, x, in ? mean[b.c] : zero, in ? inv_std[b.c] : zero, in ? gamma[b.c] : zero,
                                   in ? beta[b.c] : zero, act},
                       &sum_dy, &sum_dy_xhat);
    if ((int)threadIdx.x < b.lanes && b.c < C) {
        partial[(index_t)b.s * C + b.c] = sum_dy;
        partial[((index_t)S + b.s) * C + b.c] = sum_dy_xhat;
    }
    const int group = group_of_block(cl);
    if (last_of_group(tickets, group, S, C, cl)) {  // block-uniform
        const acc_t db = split_reduce(group, S, C, PartialAt{partial, C});
        const acc_t dg = split_reduce(group, S, C, PartialAt{partial + (index_t)S * C, C});
        const int c = group * BN_LANES + threadIdx.x;
        if (threadIdx.x < BN_LANES && c < C) {
            dbeta[c] = db;
            dgamma[c] = dg;
        }
    }
}

// Training: dx = (dz - dbeta * (1/count) - xhat * (dgamma * (1/count))) * (gamma * inv_std);
// eval: dx = dz * (gamma * inv_std); in the reference's order, rounded once to storage_t. dz: dy,
// or dy through the fused activation (bn_output_grad, recomputed as backward_sums computed it);
// xhat recomputed from x (bn_xhat).
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
batchnorm2d_backward_dx(const storage_t* dy, const storage_t* x, const acc_t* mean, const acc_t* gamma,
                        const acc_t* beta, const acc_t* inv_std, const acc_t* dgamma, const acc_t* dbeta, storage_t* dx,
                        index_t total, int C, int HW, int count, int training, int act, int cl) {
    const acc_t inv_count = (acc_t)(1.0 / (double)count);
    ChannelWalk walk(C, HW, cl);
    for (index_t i = global_thread_index(); i < total; i += global_thread_count(), walk.step()) {
        const int c = walk.c;
        const acc_t scale = mul_rn(gamma[c], inv_std[c]);
        // eval without a fused activation reads no x
        const acc_t h = training || act != ACT_NONE ? bn_xhat(x[i], mean[c], inv_std[c]) : (acc_t)0;
        acc_t g = bn_output_grad(dy[i], h, gamma[c], beta[c], act);
        if (training) {
            g = g - mul_rn(dbeta[c], inv_count);
            g = g - mul_rn(h, mul_rn(dgamma[c], inv_count));
        }
        dx[i] = from_acc(mul_rn(g, scale));
    }
}

// The same, channels_last, VEC16 channels of one pixel per thread (as batchnorm2d_normalize_vec).
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
batchnorm2d_backward_dx_vec(const storage_t* dy, const storage_t* x, const acc_t* mean, const acc_t* gamma,
                            const acc_t* beta, const acc_t* inv_std, const acc_t* dgamma, const acc_t* dbeta,
                            storage_t* dx, index_t groups, int C, int count, int training, int act) {
    typedef Lanes<storage_t, VEC16> S;
    typedef Lanes<acc_t, VEC16> A;
    const acc_t inv_count = (acc_t)(1.0 / (double)count);
    ChannelWalk walk(C / VEC16, 1, 1);
    int c = -1;
    A is, mn, db, dg, gm, bt;
    for (index_t i = global_thread_index(); i < groups; i += global_thread_count(), walk.step()) {
        if (walk.c != c) {
            c = walk.c;
            is = ((const A*)inv_std)[c], mn = ((const A*)mean)[c];
            gm = ((const A*)gamma)[c], bt = ((const A*)beta)[c];
            db = ((const A*)dbeta)[c], dg = ((const A*)dgamma)[c];
#pragma unroll
            for (int l = 0; l < VEC16; ++l) {
                db.v[l] = mul_rn(db.v[l], inv_count);
                dg.v[l] = mul_rn(dg.v[l], inv_count);
            }
        }
        const S d = ((const S*)dy)[i];
        S xv;
        if (training || act != ACT_NONE) xv = ((const S*)x)[i];  // eval without one reads no x
        S out;
#pragma unroll
        for (int l = 0; l < VEC16; ++l) {
            const acc_t h = training || act != ACT_NONE ? bn_xhat(xv.v[l], mn.v[l], is.v[l]) : (acc_t)0;
            acc_t g = act == ACT_NONE ? to_acc(d.v[l]) : bn_output_grad(d.v[l], h, gm.v[l], bt.v[l], act);
            if (training) {
                g = g - db.v[l];
                g = g - mul_rn(h, dg.v[l]);
            }
            // the scale gamma * inv_std per element: kept as a seventh vector, it took the bf16 and
            // fp16 builds to 91-99 registers, past the 80 that leave 3 blocks of 256 per SM
            out.v[l] = from_acc(mul_rn(g, mul_rn(gm.v[l], is.v[l])));
        }
        ((S*)dx)[i] = out;
    }
}
