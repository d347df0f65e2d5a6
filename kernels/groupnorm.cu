// groupnorm.cu: GroupNorm over an N x C x H x W activation, NCHW or channels_last (NHWC memory;
// the flag `cl`), with gpuconv.ops.groupnorm's semantics: the C channels fall into G groups of
// Cg = C / G consecutive channels, and each (sample n, group g) is normalized with the mean and
// the biased variance of its M = Cg * H * W values, then scaled and shifted per channel.
//
// Element types (common.cuh): x, y, dy, dx are storage_t; the statistics (mean, rstd per (n, g)),
// weight, bias, dweight, dbias and every partial sum are acc_t (float32 for bfloat16/float16/
// float32 storage, double for float64). y and dx are rounded once. A missing weight or bias is
// passed as ones or zeros (the launcher's), the reference's arithmetic either way.
//
// Kernels, launch shapes (gpuconv/ops/_launch_groupnorm.py, `geometry`), GPUCONV_BLOCK threads:
//   groupnorm_channel_stats    per (n, c, split), two passes over a span of its H*W pixels (the
//                              second from cache): the sum, and the sum of squared deviations
//                              from the span's own mean. Blocks (ChannelBlock): NCHW one per
//                              (n, c), the threads walk its contiguous pixels; NHWC one per (n,
//                              32 channels), lane = channel (a warp reads 32 adjacent channels
//                              of a pixel), the 8 warps take every 8th pixel; grid y: the
//                              splits of the pixels (a small batch spread over the GPU).
//   groupnorm_group_stats      one warp per (n, g): mean = (sum of the partials' sums) / M;
//                              the partials' squared deviations combined about it (Chan et al.:
//                              M2 = sum_k M2_k + P_k (mean_k - mean)^2), var = M2 / M, rstd =
//                              1 / sqrt(var + eps). Two-pass in effect, so accurate for a large
//                              mean (1000 + small noise); never E[x^2] - mean^2, which cancels.
//   groupnorm_normalize        y = (x - mean) * rstd * weight[c] + bias[c]; chunks of contiguous
//                              memory (gn_elementwise): grid (N * G, chunks) over each group's
//                              values NCHW, (N, chunks) over each image's NHWC.
//   groupnorm_backward_sums    per (n, c, split), blocks as channel_stats': sum_dy and sum_dy_xhat
//                              (xhat recomputed with the forward's operations).
//   groupnorm_backward_reduce  one warp per channel and per (n, g): dbias[c] and dweight[c] add
//                              sum_dy and sum_dy_xhat over n and the splits; group_dy[n, g]
//                              and group_dy_xhat[n, g] add weight[c] * sum_dy[n, c, s] (and *
//                              sum_dy_xhat) over the group's channels and the splits.
//   groupnorm_backward_dx      dx = (dy * weight - group_dy / M - xhat * (group_dy_xhat / M)) *
//                              rstd, in the reference's order; blocks as normalize's.
// The warp-level sums (group_stats, backward_reduce): lane l adds terms l, l + 32, ... in order,
// then an xor-shuffle tree (the same bits on every lane); a thread per output would wait for N
// (or Cg) loads one after another (estimated, not measured: 512 L2 latencies are ~0.1 ms, more
// than a pass over a batch of 512 fast_net activations).
// Per-(n, c, split) partial sums make every reduction parallel over N * C blocks (N * C / 32
// NHWC) whatever the groups (GroupNorm(1, C) of a batch of 2 fills the GPU as well as
// GroupNorm(C, C)), times the splits of the pixels where that is too few blocks (a small batch,
// the launcher's `splits`, a rule of the shape alone), and let NHWC read memory coalesced (a
// group's values are Cg channels apart from pixel to pixel).
// Deterministic by construction: no float atomics; every sum has one fixed order (each thread in
// index order, then a shared-memory or shuffle tree in a fixed shape) that
// depends on the shape only, so 'sim' and every GPU give the same bits.
// Positions within an image (C * H * W) are int (the launcher declines more than 2^30); memory
// indices are 64-bit.
//
// Elementwise arithmetic follows the reference operation for operation, each product rounded on
// its own (mul_rn: NVRTC would otherwise contract a*b + c into one FMA), so with the same
// statistics the kernels give the reference's bits; the sums differ from NumPy's pairwise order
// by rounding only (tests derive the bound from the reduction length).
//
// Registers on sm_90 (ptxas 13, tests/test_nvrtc.py): 29-48 per kernel, 2 KiB of shared memory
// per block for the block sums (4 KiB in float64), no spills.
//
// Resources per kernel and build (ptxas of CUDA 13.0 for sm_90, the registry's NVRTC options;
// tests/test_nvrtc.py holds every figure to ptxas's report): registers / static shared memory
// in bytes / bytes spilled (stores + loads); "-": no such build (TF32: conv2d, conv2d_tc, gemm_tc).
//   ptxas 13.0                   f32          f64          bf16         f16          tf32
//   groupnorm_channel_stats      32/2048/0    40/4096/0    31/2048/0    29/2048/0    -
//   groupnorm_group_stats        32/0/0       40/0/0       32/0/0       32/0/0       -
//   groupnorm_normalize          40/0/0       48/0/0       32/0/0       32/0/0       -
//   groupnorm_backward_sums      32/2048/0    32/4096/0    32/2048/0    30/2048/0    -
//   groupnorm_backward_reduce    36/0/0       40/0/0       36/0/0       36/0/0       -
//   groupnorm_backward_dx        48/0/0       48/0/0       40/0/0       32/0/0       -


#define GN_LANES 32  // channels per block of the NHWC per-channel sums
#define GN_ROWS (GPUCONV_BLOCK / GN_LANES)
#define GN_FULL_MASK 0xffffffffu

// The block's totals of a and b over the threads of each of `lanes` channels (lanes = 1: the
// whole block): a shared-memory tree in a fixed order; the totals come back to every thread of
// the channel. Every thread reaches every barrier (the first one keeps a previous call's readers
// ahead of this call's writers).
__device__ void gn_block_sums(acc_t a, acc_t b, int lanes, acc_t* sum_a, acc_t* sum_b) {
    __shared__ acc_t red_a[GPUCONV_BLOCK];
    __shared__ acc_t red_b[GPUCONV_BLOCK];
    const int t = threadIdx.x;
    __syncthreads();
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
    *sum_a = red_a[t % lanes];
    *sum_b = red_b[t % lanes];
}

// The thread's share of a per-(sample, channel, split) reduction over pixels [p0, end), the
// split s = blockIdx.y's span of the H * W pixels (the launcher's `span`; the last split may be
// shorter): NCHW, block (n, c) = blockIdx.x / C, % C, the 256 threads walk the channel's
// contiguous pixels (lanes = 1); NHWC, block (n, 32-channel slab), lane = channel (a warp reads
// 32 adjacent channels of one pixel), the 8 warps take every 8th pixel. index(p): the memory
// index of pixel p; slot: the partial's index, (n * C + c) * splits + s.
struct ChannelBlock {
    int n, c, first, step, lanes, end, count;
    bool in;  // a lane past the last channel reads nothing and sums nothing
    index_t at, stride, slot;
    __device__ ChannelBlock(int C, int HW, int span, int cl) {
        const int t = threadIdx.x, p0 = (int)blockIdx.y * span;
        end = imin(HW, p0 + span), count = end - p0;
        if (cl) {
            const int slabs = (C + GN_LANES - 1) / GN_LANES;
            n = blockIdx.x / slabs, c = (blockIdx.x - n * slabs) * GN_LANES + t % GN_LANES;
            first = t / GN_LANES, step = GN_ROWS, lanes = GN_LANES;
            at = (index_t)n * HW * C + c, stride = C;
        } else {
            n = blockIdx.x / C, c = blockIdx.x - n * C, first = t, step = GPUCONV_BLOCK, lanes = 1;
            at = ((index_t)n * C + c) * HW, stride = 1;
        }
        first += p0;
        in = c < C;
        if (!in) first = end;
        slot = ((index_t)n * C + (in ? c : 0)) * gridDim.y + blockIdx.y;
    }
    __device__ index_t index(int p) const { return at + (index_t)p * stride; }
};

// The elementwise kernels' walk: f(i, c, ng) for memory index i, its channel c and its (sample,
// group) ng over this block's chunk. NCHW, block (ng, k): positions [k * chunk, (k + 1) * chunk)
// of group ng's M = Cg * HW contiguous values (one division per element, e / HW); NHWC, block
// (n, k): that chunk of image n's C * HW contiguous values (e % C and c / Cg per element), so a
// warp reads 32 adjacent elements in either layout.
template <class F>
__device__ void gn_elementwise(int C, int HW, int G, int chunk, int cl, const F& f) {
    const int Cg = C / G, total = cl ? C * HW : Cg * HW;
    const index_t base = (index_t)blockIdx.x * total;
    const int end = imin(total, ((int)blockIdx.y + 1) * chunk);
    for (int e = (int)blockIdx.y * chunk + (int)threadIdx.x; e < end; e += GPUCONV_BLOCK) {
        if (cl) {
            const int c = e % C;
            f(base + e, c, (int)blockIdx.x * G + c / Cg);
        } else {
            f(base + e, ((int)blockIdx.x % G) * Cg + e / HW, (int)blockIdx.x);
        }
    }
}

// xhat = (x - mean) * rstd: the forward's, and the backward's recomputation of it (the same bits).
__device__ inline acc_t gn_xhat(storage_t x, acc_t mean, acc_t rstd) { return mul_rn(to_acc(x) - mean, rstd); }

// Per (n, c, split), two passes over the split's pixels (the second from cache): channel_sum[slot],
// the sum, and channel_m2[slot], the sum of squared deviations from the split's own mean.
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
groupnorm_channel_stats(const storage_t* x, acc_t* channel_sum, acc_t* channel_m2, int C, int HW, int span, int cl) {
    const ChannelBlock b(C, HW, span, cl);
    acc_t s = 0, sum, m2, unused;
    for (int p = b.first; p < b.end; p += b.step) s += to_acc(x[b.index(p)]);
    gn_block_sums(s, (acc_t)0, b.lanes, &sum, &unused);
    const acc_t m = sum / (acc_t)b.count;
    acc_t q = 0;
    for (int p = b.first; p < b.end; p += b.step) {
        const acc_t d = to_acc(x[b.index(p)]) - m;
        q += mul_rn(d, d);
    }
    gn_block_sums(q, (acc_t)0, b.lanes, &m2, &unused);
    if ((int)threadIdx.x < b.lanes && b.in) {
        channel_sum[b.slot] = sum;
        channel_m2[b.slot] = m2;
    }
}

// The sum over a warp's 32 lanes, the same bits on every lane (an xor-shuffle tree: lane l and
// lane l ^ o add the same two values). Every lane of the warp calls it.
__device__ inline acc_t gn_warp_sum(acc_t v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(GN_FULL_MASK, v, o);
    return v;
}

// The warp's index in the grid (blocks of whole warps): the warp-level kernels give each output
// to one warp, whose lanes stride over its terms in order, then gn_warp_sum.
__device__ inline index_t gn_warp_index() { return global_thread_index() / 32; }

// One warp per (n, g) over its Cg * splits partials (channel-major, the splits of a channel
// adjacent): mean = (sum of the partials' sums) / M, M = Cg * HW (a true division, as NumPy's
// mean); the squared deviations combined about it (Chan et al.: M2 = sum_k M2_k + P_k *
// (mean_k - mean)^2 over partials k of P_k pixels, each product rounded on its own), var = M2 /
// M, rstd = 1 / sqrt(var + eps).
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
groupnorm_group_stats(const acc_t* channel_sum, const acc_t* channel_m2, acc_t* mean, acc_t* rstd, int N, int C,
                      int HW, int G, int span, double eps) {
    const index_t w = gn_warp_index();
    const int lane = threadIdx.x % 32;
    if (w < (index_t)N * G) {  // warp-uniform: whole warps in or out
        const int ng = (int)w, Cg = C / G, splits = (HW + span - 1) / span, parts = Cg * splits;
        const index_t first = (index_t)ng * parts;  // ((n * C + g * Cg) * splits): the group's first partial
        const acc_t count = (acc_t)Cg * (acc_t)HW;
        acc_t s = 0;
        for (int k = lane; k < parts; k += 32) s += channel_sum[first + k];
        const acc_t m = gn_warp_sum(s) / count;
        acc_t m2 = 0;
        for (int k = lane; k < parts; k += 32) {
            const int sp = k % splits;
            const acc_t pixels = (acc_t)imin(span, HW - sp * span);
            const acc_t d = channel_sum[first + k] / pixels - m;
            m2 += channel_m2[first + k] + mul_rn(pixels, mul_rn(d, d));
        }
        m2 = gn_warp_sum(m2);
        if (lane == 0) {
            mean[ng] = m;
            rstd[ng] = (acc_t)1 / sqrt(m2 / count + (acc_t)eps);
        }
    }
}

struct Normalize {
    const storage_t* x;
    const acc_t *mean, *rstd, *weight, *bias;
    storage_t* y;
    __device__ void operator()(index_t i, int c, int ng) const {
        y[i] = from_acc(mul_rn(gn_xhat(x[i], mean[ng], rstd[ng]), weight[c]) + bias[c]);
    }
};

// y = (x - mean) * rstd * weight[c] + bias[c], rounded once (blocks: gn_elementwise).
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
groupnorm_normalize(const storage_t* x, const acc_t* mean, const acc_t* rstd, const acc_t* weight, const acc_t* bias,
                    storage_t* y, int C, int HW, int G, int chunk, int cl) {
    gn_elementwise(C, HW, G, chunk, cl, Normalize{x, mean, rstd, weight, bias, y});
}

// Per (n, c, split): sum_dy[slot] and sum_dy_xhat[slot] over the split's pixels (xhat
// recomputed with the forward's operations).
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
groupnorm_backward_sums(const storage_t* dy, const storage_t* x, const acc_t* mean, const acc_t* rstd, acc_t* sum_dy,
                        acc_t* sum_dy_xhat, int C, int HW, int G, int span, int cl) {
    const ChannelBlock b(C, HW, span, cl);
    const int ng = b.n * G + (b.in ? b.c / (C / G) : 0);
    const acc_t m = b.in ? mean[ng] : (acc_t)0, r = b.in ? rstd[ng] : (acc_t)0;
    acc_t a = 0, v = 0, sa, sv;
    for (int p = b.first; p < b.end; p += b.step) {
        const index_t i = b.index(p);
        const acc_t d = to_acc(dy[i]);
        a += d;
        v += mul_rn(d, gn_xhat(x[i], m, r));
    }
    gn_block_sums(a, v, b.lanes, &sa, &sv);
    if ((int)threadIdx.x < b.lanes && b.in) {
        sum_dy[b.slot] = sa;
        sum_dy_xhat[b.slot] = sv;
    }
}

// One warp per output, over the (n, c, split) partials. Warp i < C: dbias[i] and dweight[i], the
// sums of sum_dy[n, i, s] and sum_dy_xhat[n, i, s] over n and s; warp C + ng (ng < N * G):
// group_dy[ng] and group_dy_xhat[ng], the sums of weight[c] * sum_dy[n, c, s] (and of weight[c]
// * sum_dy_xhat[n, c, s]) over the group's channels and s.
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
groupnorm_backward_reduce(const acc_t* sum_dy, const acc_t* sum_dy_xhat, const acc_t* weight, acc_t* dweight,
                          acc_t* dbias, acc_t* group_dy, acc_t* group_dy_xhat, int N, int C, int G, int splits) {
    const index_t w = gn_warp_index();
    const int lane = threadIdx.x % 32;
    acc_t a = 0, b = 0;
    if (w < C) {  // warp-uniform branches
        for (index_t k = lane; k < (index_t)N * splits; k += 32) {
            const index_t at = ((k / splits) * C + w) * splits + k % splits;
            a += sum_dy[at];
            b += sum_dy_xhat[at];
        }
        a = gn_warp_sum(a);
        b = gn_warp_sum(b);
        if (lane == 0) {
            dbias[w] = a;
            dweight[w] = b;
        }
    } else if (w < C + (index_t)N * G) {
        const int ng = (int)(w - C), Cg = C / G, g = ng % G, parts = Cg * splits;
        const index_t first = (index_t)ng * parts;  // ((n * C + g * Cg) * splits)
        for (int k = lane; k < parts; k += 32) {
            const acc_t wc = weight[g * Cg + k / splits];
            a += mul_rn(sum_dy[first + k], wc);
            b += mul_rn(sum_dy_xhat[first + k], wc);
        }
        a = gn_warp_sum(a);
        b = gn_warp_sum(b);
        if (lane == 0) {
            group_dy[ng] = a;
            group_dy_xhat[ng] = b;
        }
    }
}

struct DataGradient {
    const storage_t *dy, *x;
    const acc_t *mean, *rstd, *weight, *group_dy, *group_dy_xhat;
    storage_t* dx;
    acc_t inv_count;
    __device__ void operator()(index_t i, int c, int ng) const {
        const acc_t r = rstd[ng];
        acc_t v = mul_rn(to_acc(dy[i]), weight[c]);
        v = v - mul_rn(group_dy[ng], inv_count);
        v = v - mul_rn(gn_xhat(x[i], mean[ng], r), mul_rn(group_dy_xhat[ng], inv_count));
        dx[i] = from_acc(mul_rn(v, r));
    }
};

// dx = (dy * weight[c] - group_dy * (1/M) - xhat * (group_dy_xhat * (1/M))) * rstd, in the
// reference's order, rounded once (blocks: gn_elementwise).
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
groupnorm_backward_dx(const storage_t* dy, const storage_t* x, const acc_t* mean, const acc_t* rstd,
                      const acc_t* weight, const acc_t* group_dy, const acc_t* group_dy_xhat, storage_t* dx, int C,
                      int HW, int G, int chunk, int cl) {
    const acc_t inv_count = (acc_t)(1.0 / ((double)(C / G) * (double)HW));
    gn_elementwise(C, HW, G, chunk, cl,
                   DataGradient{dy, x, mean, rstd, weight, group_dy, group_dy_xhat, dx, inv_count});
}
