// loss.cu: softmax cross-entropy with label smoothing, the batch's mean loss and its gradient
// in one launch (gpuconv.ops.softmax_cross_entropy's semantics). The array form is about 25
// elementwise operations and reductions, each its own launch: on a GPU the host time to submit
// them exceeds their work by far at CIFAR's 10 classes.
//
//   per row i, with m = max_j z_ij, s = sum_j exp(z_ij - m), lp_ij = (z_ij - m) - log s:
//     loss_i   = -(1 - eps) * lp_i,label  -  (eps / C) * sum_j lp_ij      (second term when eps != 0)
//     dz_ij    = ((exp(z_ij - m) / s - eps / C  - [j == label] (1 - eps)) * (1 / N)  [* g]
//   loss = sum_i loss_i / N   (with mean = 0: sum_i loss_i, and the launcher passes 1 for 1 / N)
// A label outside 0..C-1 makes its row's loss and gradient NaN (the loss then is NaN): the GPU
// never reads labels back to check them. With ``hits`` (else null) the launch also counts the
// rows whose prediction is right: hits[0] = #{i : argmax_j z_ij == label_i}, argmax as NumPy's
// (the first maximal index; a NaN counts as the maximum, its first one wins), a training step's
// accuracy without the argmax, compare and sum launches of its own. With ``grad_scale`` (else
// null) each gradient is multiplied by g = grad_scale[0] before its rounding to storage_t: fp16's
// loss scale, applied while the gradient is still float32 (a gradient rounded to float16 first
// would lose what lies below float16's range, which is what the scale is there to keep).
//
// PyTorch's class weights and ignore_index: with ``class_w`` (else null) a row's loss is
//     loss_i = -(1 - eps) * (w_label * lp_i,label)  -  (eps / C) * sum_j (w_j * lp_ij)
//     dz_ij  = (p_ij * ((1 - eps) w_label + (eps / C) W) - (eps / C) w_j - [j == label] (1 - eps) w_label) * (1 / D)
// (W = wstats[0], the weights' sum); a row whose label is ``ignore_label`` (when ``has_ignore``) has
// loss 0, gradient 0 and is never a hit. With ``wstats`` (else null) the mean divides by
// D = wstats[1], the kept rows' weights summed (their count without weights), where it divides by N
// otherwise. Both sums come from the launcher (array reductions of the weights and labels), so
// the kernel and the reference divide by the same bits.
//
// Launch: a 1-D grid of GPUCONV_BLOCK threads, one warp per row (lanes stride over the classes;
// the max and the sums are xor-shuffle trees, a fixed order), rows grid-strided. Each row's loss
// goes to row_loss[i]; the last block to finish (a ticket taken with atomicAdd after a fence)
// adds row_loss[0..N) in a fixed order (thread t sums rows t, t + B, ..., then a shared-memory
// tree), and row_hits likewise into hits[0], writes loss[0] and resets the ticket to 0 for the next
// launch. So the sum's order does not
// depend on which block finishes last: the same bits from every run (on the simulator, whose
// C-library exp and log may differ from CUDA's by an ulp, bits of its own).
//
// Element types (common.cuh): logits and dlogits are storage_t; everything is computed in acc_t
// (float32 for bfloat16/float16/float32 logits, double for float64) and dlogits rounded once.
// The elementwise arithmetic follows the reference's operation order (products rounded on their
// own, mul_rn); exp and log are the device's (expf/logf: a few ulp), so results agree with the
// reference to rounding.
//
// Registers on sm_90 (ptxas 13, the table below): 40 in the float32 and bf16 builds, 32 in fp16,
// 64 in float64; 2 KiB of shared memory (3 KiB in float64) and the last-block flag; no spills.
//
// Kernels (extern "C"): softmax_cross_entropy.
//
// Resources per kernel and build (ptxas of CUDA 13.0 for sm_90, the registry's NVRTC options;
// tests/test_nvrtc.py holds every figure to ptxas's report): registers / static shared memory
// in bytes / bytes spilled (stores + loads); "-": no such build (TF32: conv2d, conv2d_tc, gemm_tc).
//   ptxas 13.0             f32          f64          bf16         f16          tf32
//   softmax_cross_entropy  40/2052/0    64/3080/0    40/2052/0    32/2052/0    -

#define LOSS_WARPS (GPUCONV_BLOCK / 32)
#define LOSS_FULL_MASK 0xffffffffu

__device__ inline float loss_exp(float v) { return expf(v); }
__device__ inline double loss_exp(double v) { return exp(v); }
__device__ inline float loss_log(float v) { return logf(v); }
__device__ inline double loss_log(double v) { return log(v); }

__device__ inline acc_t warp_sum(acc_t v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(LOSS_FULL_MASK, v, o);
    return v;
}

// Whether class j with logit v comes before class i with logit u as NumPy's argmax ranks them: a
// NaN first (the lower index among NaNs), then the larger value, then the lower index. A total
// order, so an xor-shuffle tree leaves every lane with the row's argmax.
__device__ inline bool argmax_before(acc_t v, int j, acc_t u, int i) {
    const bool v_nan = v != v, u_nan = u != u;
    if (v_nan || u_nan) return v_nan && (!u_nan || j < i);
    return v > u || (v == u && j < i);
}

// The row's argmax j (C when no lane saw a class) and, in v, its value: the row's maximum as NumPy's
// max gives it (NaN when any logit is: NaN ranks first), one tree for both. A lane that saw no
// class (C < 32 leaves lanes idle) holds index C and loses every comparison.
__device__ inline int warp_argmax(acc_t& v, int j, int C) {
    for (int o = 16; o > 0; o >>= 1) {
        const acc_t vo = __shfl_xor_sync(LOSS_FULL_MASK, v, o);
        const int jo = __shfl_xor_sync(LOSS_FULL_MASK, j, o);
        if (jo < C && (j >= C || argmax_before(vo, jo, v, j))) {
            v = vo;
            j = jo;
        }
    }
    return j;
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
softmax_cross_entropy(const storage_t* logits, const long long* labels, acc_t* row_loss, acc_t* loss,
                      storage_t* dlogits, int* row_hits, int* hits, unsigned* ticket, int N, int C, acc_t keep,
                      acc_t eps_c, int smooth, acc_t inv_n, const acc_t* grad_scale, int mean,
                      const acc_t* class_w, const acc_t* wstats, long long ignore_label, int has_ignore) {
    const int lane = threadIdx.x & 31;
    const acc_t nan = (acc_t)0 / (acc_t)0;
    const acc_t gs = grad_scale ? *grad_scale : (acc_t)1;
    if (wstats) inv_n = mean ? (acc_t)1 / wstats[1] : (acc_t)1;
    for (int row = blockIdx.x * LOSS_WARPS + (threadIdx.x >> 5); row < N; row += gridDim.x * LOSS_WARPS) {
        const storage_t* z = logits + (index_t)row * C;
        acc_t m = -(acc_t)1 / (acc_t)0;  // the lane's maximum, then the row's
        int arg = C;
        for (int j = lane; j < C; j += 32) {
            const acc_t v = to_acc(z[j]);
            if (arg == C || argmax_before(v, j, m, arg)) {
                m = v;
                arg = j;
            }
        }
        arg = warp_argmax(m, arg, C);
        acc_t s = 0;
        for (int j = lane; j < C; j += 32) s += loss_exp(to_acc(z[j]) - m);
        s = warp_sum(s);
        const acc_t log_s = loss_log(s);
        acc_t lp_sum = 0;
        if (smooth) {
            for (int j = lane; j < C; j += 32) {
                const acc_t lp = (to_acc(z[j]) - m) - log_s;
                lp_sum += class_w ? mul_rn(class_w[j], lp) : lp;
            }
            lp_sum = warp_sum(lp_sum);
        }
        const long long label = labels[row];
        const bool ignored = has_ignore && label == ignore_label;
        const bool valid = ignored || (label >= 0 && label < C);
        const acc_t w_label = class_w && valid && !ignored ? class_w[label] : (acc_t)1;
        const acc_t keep_w = class_w ? mul_rn(keep, w_label) : keep;  // (1 - eps) w_label
        if (lane == 0) {
            acc_t r = nan;
            if (ignored) {
                r = 0;
            } else if (valid) {
                const acc_t lp = (to_acc(z[label]) - m) - log_s;
                r = mul_rn(-keep, class_w ? mul_rn(w_label, lp) : lp);
                if (smooth) r -= mul_rn(eps_c, lp_sum);
            }
            row_loss[row] = r;
            if (hits) row_hits[row] = !ignored && arg == label;
        }
        // the softmax's coefficient: 1 without weights, (1 - eps) w_label + (eps / C) W with them
        const acc_t coef = class_w ? keep_w + (smooth ? mul_rn(eps_c, wstats[0]) : (acc_t)0) : (acc_t)1;
        storage_t* d = dlogits + (index_t)row * C;
        for (int j = lane; j < C; j += 32) {
            acc_t g = loss_exp(to_acc(z[j]) - m) / s;
            if (class_w) g = mul_rn(g, coef);
            if (smooth) g -= class_w ? mul_rn(eps_c, class_w[j]) : eps_c;
            if (j == label) g -= keep_w;
            g = mul_rn(g, inv_n);
            if (grad_scale) g = mul_rn(g, gs);
            d[j] = from_acc(ignored ? (acc_t)0 : valid ? g : nan);
        }
    }

    // The last block adds the rows' losses (common.cuh's last_block_of), reading them past L1.
    __shared__ acc_t part[GPUCONV_BLOCK];
    __shared__ int hit_part[GPUCONV_BLOCK];
    if (last_block_of(ticket, gridDim.x)) {
        const volatile acc_t* rows = row_loss;
        const volatile int* row_hit = row_hits;
        acc_t t = 0;
        int h = 0;
        for (int i = threadIdx.x; i < N; i += GPUCONV_BLOCK) {
            t += rows[i];
            if (hits) h += row_hit[i];
        }
        part[threadIdx.x] = t;
        hit_part[threadIdx.x] = h;
        __syncthreads();
        for (int half = GPUCONV_BLOCK / 2; half > 0; half >>= 1) {
            if (threadIdx.x < half) {
                part[threadIdx.x] += part[threadIdx.x + half];
                hit_part[threadIdx.x] += hit_part[threadIdx.x + half];
            }
            __syncthreads();
        }
        if (threadIdx.x == 0) {
            loss[0] = !mean ? part[0] : part[0] / (wstats ? wstats[1] : (acc_t)N);
            if (hits) hits[0] = hit_part[0];
        }
    }
}
