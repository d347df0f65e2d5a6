// conv2d_grouped.cu: grouped and dilated 2-D convolution (F.conv2d's groups and dilation), direct
// (no GEMM tiles): depthwise and few-channels-per-group convolutions have too short a reduction
// (C/G*FH*FW: 9 for a depthwise 3x3) for an implicit GEMM's tiles to pay.
//
//   y[n,k,oh,ow] = b[k] + sum_{c',fh,fw} x[n, g*Cg + c', oh*sh - ph + fh*dh, ow*sw - pw + fw*dw] * w[k,c',fh,fw]
//
// with G groups, Cg = C/G input and Kg = K/G output channels per group, g = k / Kg the group of
// filter k; w is (K, Cg, FH, FW), as PyTorch's. Arrays are NCHW or, with channels_last = 1, NHWC
// memory (x, y, dy, dx alike: the launcher gives every activation in the layout of the forward's
// input); w and dw are always OIHW.
//
// Element types as in conv2d.cu (common.cuh): storage_t arrays, acc_t products and sums, each
// output rounded once; a TF32 build rounds the x/w/dy operands (gemm_operand), not the bias.
//
// Kernels (all extern "C"; 1-D grid-stride loops of GPUCONV_BLOCK threads, 64-bit indices):
//   conv2d_grouped_forward          one thread per output element, bias fused. NCHW: ow fastest
//                                   across threads; channels_last: k fastest, so the threads of a
//                                   warp read adjacent channels of one pixel (coalesced; for a
//                                   depthwise convolution c = k).
//   conv2d_grouped_backward_data    a gather: one thread per dx element (iw fastest, or c fastest
//                                   channels_last), summing over the taps whose window covers it
//                                   (divisibility tests for the stride) and the Kg filters of its
//                                   group. No atomics.
//   conv2d_grouped_backward_weight  split reduction: thread t = z*count + e sums weight element e's
//                                   products over positions [z*chunk, (z+1)*chunk) of the N*OH*OW
//                                   and writes ws[z*count + e_oihw] (acc_t); conv2d.cu's
//                                   conv2d_reduce_splits then adds the splits in a fixed order and
//                                   rounds once into dw (deterministic: no float atomics). With one
//                                   split and storage_t == acc_t the launcher passes dw as ws. e
//                                   enumerates (k, c', fh, fw) with fw fastest (NCHW: adjacent taps
//                                   read adjacent x) or k fastest (channels_last: adjacent channels).
// The bias gradient is conv2d.cu's conv2d_backward_bias.
//
// Resources per kernel and build (ptxas of CUDA 13.0 for sm_90, the registry's NVRTC options;
// tests/test_nvrtc.py holds every figure to ptxas's report): registers / static shared memory
// in bytes / bytes spilled (stores + loads).
//   ptxas 13.0                      f32        f64        bf16       f16        tf32
//   conv2d_grouped_forward          48/0/0     48/0/0     59/0/0     52/0/0     58/0/0
//   conv2d_grouped_backward_data    64/0/0     64/0/0     58/0/0     47/0/0     60/0/0
//   conv2d_grouped_backward_weight  40/0/0     40/0/0     40/0/0     34/0/0     40/0/0

// The flat offset of activation element (n, c, h, w) of an N x C x H x W array in NCHW or NHWC memory.
__device__ inline index_t act_offset(int n, int c, int h, int w, int C, int H, int W, int channels_last) {
    return channels_last ? (((index_t)n * H + h) * W + w) * C + c : (((index_t)n * C + c) * H + h) * W + w;
}

// Splits flat index i of an activation into (n, c, h, w) in the thread order of the layout:
// NCHW w fastest, channels_last c fastest.
__device__ inline void act_coords(index_t i, int C, int H, int W, int channels_last, int* n, int* c, int* h,
                                  int* w) {
    if (channels_last) {
        const index_t p = divmod_index(i, C, c);
        *n = (int)split_hw(p, H, W, h, w);
    } else {
        const index_t t = split_hw(i, H, W, h, w);
        *n = (int)divmod_index(t, C, c);
    }
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
conv2d_grouped_forward(const storage_t* x, const storage_t* w, const storage_t* b, storage_t* y,
                       int N, int C, int H, int W, int K, int FH, int FW, int OH, int OW,
                       int sh, int sw, int ph, int pw, int dh, int dw, int groups, int has_bias,
                       int channels_last) {
    const int Cg = C / groups, Kg = K / groups;
    const index_t total = (index_t)N * K * OH * OW;
    for (index_t i = global_thread_index(); i < total; i += global_thread_count()) {
        int n, k, oh, ow;
        act_coords(i, K, OH, OW, channels_last, &n, &k, &oh, &ow);
        const int c0 = (k / Kg) * Cg;
        const storage_t* wk = w + (index_t)k * Cg * FH * FW;
        acc_t acc = 0;
        for (int fh = 0; fh < FH; ++fh) {
            const int ih = oh * sh - ph + fh * dh;
            if (ih < 0 || ih >= H) continue;
            for (int fw = 0; fw < FW; ++fw) {
                const int iw = ow * sw - pw + fw * dw;
                if (iw < 0 || iw >= W) continue;
                for (int cl = 0; cl < Cg; ++cl)
                    acc += gemm_operand(x[act_offset(n, c0 + cl, ih, iw, C, H, W, channels_last)]) *
                           gemm_operand(wk[((index_t)cl * FH + fh) * FW + fw]);
            }
        }
        if (has_bias) acc += to_acc(b[k]);
        y[i] = from_acc(acc);
    }
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
conv2d_grouped_backward_data(const storage_t* dy, const storage_t* w, storage_t* dx,
                             int N, int C, int H, int W, int K, int FH, int FW, int OH, int OW,
                             int sh, int sw, int ph, int pw, int dh, int dw, int groups, int channels_last) {
    const int Cg = C / groups, Kg = K / groups;
    const index_t total = (index_t)N * C * H * W;
    for (index_t i = global_thread_index(); i < total; i += global_thread_count()) {
        int n, c, ih, iw;
        act_coords(i, C, H, W, channels_last, &n, &c, &ih, &iw);
        const int g = c / Cg, cl = c - g * Cg;
        acc_t acc = 0;
        for (int fh = 0; fh < FH; ++fh) {
            const int ohs = ih + ph - fh * dh;
            if (ohs < 0 || ohs % sh != 0 || ohs / sh >= OH) continue;
            const int oh = ohs / sh;
            for (int fw = 0; fw < FW; ++fw) {
                const int ows = iw + pw - fw * dw;
                if (ows < 0 || ows % sw != 0 || ows / sw >= OW) continue;
                const int ow = ows / sw;
                for (int kk = 0; kk < Kg; ++kk) {
                    const int k = g * Kg + kk;
                    acc += gemm_operand(dy[act_offset(n, k, oh, ow, K, OH, OW, channels_last)]) *
                           gemm_operand(w[(((index_t)k * Cg + cl) * FH + fh) * FW + fw]);
                }
            }
        }
        dx[i] = from_acc(acc);
    }
}

// Split z reduces positions l = (n, oh, ow) in [z*chunk, min((z+1)*chunk, N*OH*OW)).
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
conv2d_grouped_backward_weight(const storage_t* dy, const storage_t* x, acc_t* ws,
                               int N, int C, int H, int W, int K, int FH, int FW, int OH, int OW,
                               int sh, int sw, int ph, int pw, int dh, int dw, int groups, int channels_last,
                               int splits, long long chunk) {
    const int Cg = C / groups, Kg = K / groups;
    const index_t count = (index_t)K * Cg * FH * FW, L = (index_t)N * OH * OW;
    const index_t total = count * splits;
    for (index_t t = global_thread_index(); t < total; t += global_thread_count()) {
        const index_t z = t / count, e = t - z * count;  // (once per thread: the loop below is the work)
        int k, cl, fh, fw;
        if (channels_last) {  // e = ((fh*FW + fw)*Cg + cl)*K + k
            const index_t r = divmod_index(e, K, &k);
            const index_t tap = divmod_index(r, Cg, &cl);
            fh = (int)divmod_index(tap, FW, &fw);
        } else {  // e = ((k*Cg + cl)*FH + fh)*FW + fw
            const index_t r = split_hw(e, FH, FW, &fh, &fw);
            k = (int)divmod_index(r, Cg, &cl);
        }
        const int c = (k / Kg) * Cg + cl;
        const index_t lbegin = z * chunk, lend = lbegin + chunk < L ? lbegin + chunk : L;
        int oh, ow;
        int n = (int)split_hw(lbegin, OH, OW, &oh, &ow);
        acc_t acc = 0;
        for (index_t l = lbegin; l < lend; ++l) {
            const int ih = oh * sh - ph + fh * dh, iw = ow * sw - pw + fw * dw;
            if (ih >= 0 && ih < H && iw >= 0 && iw < W)
                acc += gemm_operand(dy[act_offset(n, k, oh, ow, K, OH, OW, channels_last)]) *
                       gemm_operand(x[act_offset(n, c, ih, iw, C, H, W, channels_last)]);
            if (++ow == OW) {  // the next position, without a division
                ow = 0;
                if (++oh == OH) {
                    oh = 0;
                    ++n;
                }
            }
        }
        ws[z * count + (((index_t)k * Cg + cl) * FH + fh) * FW + fw] = acc;
    }
}
