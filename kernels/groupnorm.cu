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
//   groupnorm_stats            grid (N * G): one block per (n, g). Two-pass, so accurate for a
//                              large mean (1000 + small noise): pass 1 sums the group's values,
//                              mean = sum / M; pass 2 (the same values again, from cache) sums
//                              (x - mean)^2, var = that / M, rstd = 1 / sqrt(var + eps). Never
//                              E[x^2] - mean^2, which cancels.
//   groupnorm_normalize        grid (N * G, chunks): block (ng, k) writes y = (x - mean) * rstd *
//                              weight[c] + bias[c] over chunk k of the group's values.
//   groupnorm_backward_sums    grid (N * C) NCHW: one block per (n, c), the threads walk its H*W
//                              pixels; NHWC grid (N * ceil(C / 32)): 32 channels per block (lane
//                              = channel: a warp reads 32 adjacent channels of a pixel), the 8
//                              warps take every 8th pixel. Per (n, c): sum_dy and sum_dy_xhat
//                              (xhat recomputed with the forward's operations).
//   groupnorm_backward_reduce  1-D grid, one thread per channel and per (n, g): dbias[c] and
//                              dweight[c] add sum_dy and sum_dy_xhat over n = 0, 1, ..., N - 1
//                              in order; group_dy[n, g] and group_dy_xhat[n, g] add
//                              weight[c] * sum_dy[n, c] (and * sum_dy_xhat) over the group's
//                              channels in order.
//   groupnorm_backward_dx      grid (N * G, chunks), as normalize: dx = (dy * weight - group_dy /
//                              M - xhat * (group_dy_xhat / M)) * rstd, in the reference's order.
// Deterministic by construction: no float atomics; every sum has one fixed order (each thread in
// index order, then a shared-memory tree in a fixed shape; the reductions over N sequential) that
// depends on the shape only, so 'sim' and every GPU give the same bits.
// Positions e in [0, M) of group (n, g): NCHW, the group is contiguous (memory base + e); NHWC,
// e = p * Cg + j is channel g * Cg + j of pixel p. M and a channel's H * W are int (the launcher
// declines M past 2^30); memory indices are 64-bit.
//
// Elementwise arithmetic follows the reference operation for operation, each product rounded on
// its own (mul_rn: NVRTC would otherwise contract a*b + c into one FMA), so with the same
// statistics the kernels give the reference's bits; the sums differ from NumPy's pairwise order
// by rounding only (tests derive the bound from the reduction length).
//
// Registers on sm_90 (ptxas 13, tests/test_nvrtc.py): 28-60 per kernel, 2 KiB of shared memory
// per block for the block sums (4 KiB in float64), no spills.
//
// Resources per kernel and build (ptxas of CUDA 13.0 for sm_90, the registry's NVRTC options;
// tests/test_nvrtc.py holds every figure to ptxas's report): registers / static shared memory
// in bytes / bytes spilled (stores + loads); "-": no such build (TF32: conv2d, conv2d_tc, gemm_tc).
//   ptxas 13.0                   f32          f64          bf16         f16          tf32
//   groupnorm_stats              40/2048/0    40/4096/0    34/2048/0    30/2048/0    -
//   groupnorm_normalize          48/0/0       58/0/0       48/0/0       28/0/0       -
//   groupnorm_backward_sums      32/2048/0    32/4096/0    32/2048/0    28/2048/0    -
//   groupnorm_backward_reduce    32/0/0       32/0/0       32/0/0       32/0/0       -
//   groupnorm_backward_dx        60/0/0       60/0/0       48/0/0       30/0/0       -


#define GN_LANES 32  // channels per block of the NHWC backward sums
#define GN_ROWS (GPUCONV_BLOCK / GN_LANES)

// The memory index of position e of the group whose first element is at `base` (see the header).
__device__ inline index_t gn_index(index_t base, int e, int Cg, int C, int cl, int* j) {
    if (!cl) return base + e;
    const int p = e / Cg;
    *j = e - p * Cg;
    return base + (index_t)p * C + *j;
}

// The memory index of group (n, g)'s first element.
__device__ inline index_t gn_base(int n, int g, int Cg, int C, int HW, int cl) {
    return cl ? (index_t)n * HW * C + (index_t)g * Cg : ((index_t)n * C + (index_t)g * Cg) * HW;
}

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

// xhat = (x - mean) * rstd: the forward's, and the backward's recomputation of it (the same bits).
__device__ inline acc_t gn_xhat(storage_t x, acc_t mean, acc_t rstd) { return mul_rn(to_acc(x) - mean, rstd); }

// Statistics of group (n, g) = blockIdx.x: mean = (sum of its M values) / M (a true division, as
// NumPy's mean); var = (sum of (x - mean)^2) / M; rstd = 1 / sqrt(var + eps).
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
groupnorm_stats(const storage_t* x, acc_t* mean, acc_t* rstd, int C, int HW, int G, double eps, int cl) {
    const int ng = blockIdx.x, n = ng / G, g = ng - n * G, Cg = C / G, M = Cg * HW;
    const index_t base = gn_base(n, g, Cg, C, HW, cl);
    int j = 0;
    acc_t s = 0, total, unused;
    for (int e = threadIdx.x; e < M; e += GPUCONV_BLOCK) s += to_acc(x[gn_index(base, e, Cg, C, cl, &j)]);
    gn_block_sums(s, (acc_t)0, 1, &total, &unused);
    const acc_t m = total / (acc_t)M;
    acc_t q = 0, squares;
    for (int e = threadIdx.x; e < M; e += GPUCONV_BLOCK) {
        const acc_t d = to_acc(x[gn_index(base, e, Cg, C, cl, &j)]) - m;
        q += mul_rn(d, d);
    }
    gn_block_sums(q, (acc_t)0, 1, &squares, &unused);
    if (threadIdx.x == 0) {
        mean[ng] = m;
        rstd[ng] = (acc_t)1 / sqrt(squares / (acc_t)M + (acc_t)eps);
    }
}

// y = (x - mean) * rstd * weight[c] + bias[c], rounded once; block (ng, k) covers positions
// [k * chunk, min((k + 1) * chunk, M)) of group ng.
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
groupnorm_normalize(const storage_t* x, const acc_t* mean, const acc_t* rstd, const acc_t* weight, const acc_t* bias,
                    storage_t* y, int C, int HW, int G, int chunk, int cl) {
    const int ng = blockIdx.x, n = ng / G, g = ng - n * G, Cg = C / G, M = Cg * HW;
    const index_t base = gn_base(n, g, Cg, C, HW, cl);
    const acc_t m = mean[ng], r = rstd[ng];
    const int end = imin(M, ((int)blockIdx.y + 1) * chunk);
    int j = 0;
    for (int e = (int)blockIdx.y * chunk + threadIdx.x; e < end; e += GPUCONV_BLOCK) {
        const index_t i = gn_index(base, e, Cg, C, cl, &j);
        const int c = g * Cg + (cl ? j : e / HW);
        y[i] = from_acc(mul_rn(gn_xhat(x[i], m, r), weight[c]) + bias[c]);
    }
}

// Per (n, c): sum_dy[n * C + c] and sum_dy_xhat[n * C + c] over the H * W pixels (see the header
// for the blocks of each layout).
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
groupnorm_backward_sums(const storage_t* dy, const storage_t* x, const acc_t* mean, const acc_t* rstd, acc_t* sum_dy,
                        acc_t* sum_dy_xhat, int C, int HW, int G, int cl) {
    const int t = threadIdx.x;
    int n, c, first, step, lanes;
    if (cl) {
        const int slabs = (C + GN_LANES - 1) / GN_LANES;
        n = blockIdx.x / slabs, c = (blockIdx.x - n * slabs) * GN_LANES + t % GN_LANES;
        first = t / GN_LANES, step = GN_ROWS, lanes = GN_LANES;
    } else {
        n = blockIdx.x / C, c = blockIdx.x - n * C, first = t, step = GPUCONV_BLOCK, lanes = 1;
    }
    const bool in = c < C;  // a lane past the last channel reads nothing and sums nothing
    const int ng = n * G + (in ? c / (C / G) : 0);
    const acc_t m = in ? mean[ng] : (acc_t)0, r = in ? rstd[ng] : (acc_t)0;
    acc_t a = 0, b = 0;
    if (in) {
        const index_t at = cl ? (index_t)n * HW * C + c : ((index_t)n * C + c) * HW;
        const index_t stride = cl ? (index_t)C : (index_t)1;
        for (int p = first; p < HW; p += step) {
            const index_t i = at + (index_t)p * stride;
            const acc_t d = to_acc(dy[i]);
            a += d;
            b += mul_rn(d, gn_xhat(x[i], m, r));
        }
    }
    acc_t sa, sb;
    gn_block_sums(a, b, lanes, &sa, &sb);
    if (t < lanes && in) {
        sum_dy[(index_t)n * C + c] = sa;
        sum_dy_xhat[(index_t)n * C + c] = sb;
    }
}

// Thread i < C: dbias[i] and dweight[i], the sums over n in order; thread C + ng (ng < N * G):
// group_dy[ng] and group_dy_xhat[ng], the sums of weight[c] * sum_dy[n, c] (and of
// weight[c] * sum_dy_xhat[n, c]) over the group's channels in order.
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
groupnorm_backward_reduce(const acc_t* sum_dy, const acc_t* sum_dy_xhat, const acc_t* weight, acc_t* dweight,
                          acc_t* dbias, acc_t* group_dy, acc_t* group_dy_xhat, int N, int C, int G) {
    const index_t i = global_thread_index();
    acc_t a = 0, b = 0;
    if (i < C) {
        for (int n = 0; n < N; ++n) {
            a += sum_dy[(index_t)n * C + i];
            b += sum_dy_xhat[(index_t)n * C + i];
        }
        dbias[i] = a;
        dweight[i] = b;
    } else if (i < C + (index_t)N * G) {
        const int ng = (int)(i - C), n = ng / G, g = ng - n * G, Cg = C / G;
        for (int c = g * Cg; c < (g + 1) * Cg; ++c) {
            a += mul_rn(sum_dy[(index_t)n * C + c], weight[c]);
            b += mul_rn(sum_dy_xhat[(index_t)n * C + c], weight[c]);
        }
        group_dy[ng] = a;
        group_dy_xhat[ng] = b;
    }
}

// dx = (dy * weight[c] - group_dy * (1/M) - xhat * (group_dy_xhat * (1/M))) * rstd, in the
// reference's order, rounded once; blocks as groupnorm_normalize's.
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
groupnorm_backward_dx(const storage_t* dy, const storage_t* x, const acc_t* mean, const acc_t* rstd,
                      const acc_t* weight, const acc_t* group_dy, const acc_t* group_dy_xhat, storage_t* dx, int C,
                      int HW, int G, int chunk, int cl) {
    const int ng = blockIdx.x, n = ng / G, g = ng - n * G, Cg = C / G, M = Cg * HW;
    const index_t base = gn_base(n, g, Cg, C, HW, cl);
    const acc_t inv_count = (acc_t)(1.0 / (double)M);
    const acc_t m = mean[ng], r = rstd[ng];
    const acc_t mean_dy = mul_rn(group_dy[ng], inv_count), mean_dy_xhat = mul_rn(group_dy_xhat[ng], inv_count);
    const int end = imin(M, ((int)blockIdx.y + 1) * chunk);
    int j = 0;
    for (int e = (int)blockIdx.y * chunk + threadIdx.x; e < end; e += GPUCONV_BLOCK) {
        const index_t i = gn_index(base, e, Cg, C, cl, &j);
        const int c = g * Cg + (cl ? j : e / HW);
        acc_t v = mul_rn(to_acc(dy[i]), weight[c]);
        v = v - mean_dy;
        v = v - mul_rn(gn_xhat(x[i], m, r), mean_dy_xhat);
        dx[i] = from_acc(mul_rn(v, r));
    }
}
