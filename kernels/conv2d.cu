// conv2d.cu: 2-D convolution (cross-correlation, as PyTorch) over NCHW input and OIHW filters.
//
//   y[n,k,oh,ow] = b[k] + sum_{c,fh,fw} x[n,c,oh*sh-ph+fh,ow*sw-pw+fw] * w[k,c,fh,fw]
//
// Element types (common.cuh): x, w, b, y, dy, dx, dw, db are storage_t (float64, float32,
// bfloat16 or float16 arrays); every operand is widened to acc_t (double for float64, float
// otherwise) as it is staged, products and sums run in acc_t, and each output is rounded once
// to storage_t in the epilogue. The split-K workspace stays acc_t (float32 for a bf16/fp16
// build: the partial sums are not rounded; conv2d_reduce_splits rounds their total once). In a
// TF32 build (float32 only) gemm_operand rounds each staged x/w/dy operand to TF32; the bias and
// the bias gradient are sums and stay float32.
//
// Kernels (all extern "C"):
//   conv2d_forward_v1          one thread per output element; grid-stride 1-D grid of
//                              GPUCONV_BLOCK threads. The readable spec on the device.
//   conv2d_forward_v2          implicit GEMM  Y[m, k] = P[m, r] W^T[r, k]  with m = (n, oh, ow),
//                              r = (c, fh, fw): 64x64 output tiles, the patch matrix P and the
//                              filters staged through shared memory 8 reduction steps at a time
//                              (never materialized: each tile is gathered from x), 8x8 outputs
//                              per thread in registers, the next tile prefetched into registers
//                              while the current one is multiplied. Bias and ReLU (flags) fused
//                              in the epilogue. Block = CONV_THREADS (64) threads,
//                              grid = (ceil(M/64), ceil(K/64)).
//   conv2d_forward_v3          the same GEMM with 128x128 tiles, CONV3_THREADS (256) threads of
//                              8x8 outputs, acc4 shared-memory reads, double-buffered tiles
//                              (one barrier per round); grid = (ceil(M/128), ceil(K/128)).
//                              "auto" runs it for float32 from 128 output channels on, as the
//                              H200 measured (gpuconv.kernels.auto_variant; the v3 section at
//                              the end of this file).
//   conv2d_backward_data_v1    one thread per input element, gathering every (oh, ow, k) whose
//                              window covers it (stride/padding handled by divisibility tests).
//   conv2d_backward_data_v2    implicit GEMM  dX[m, c] = G[m, l] W'[l, c]  with m = (n, ih, iw),
//                              l = (k, fh, fw), G[m, l] = dy[n, k, (ih+ph-fh)/sh, (iw+pw-fw)/sw]
//                              where that division is exact and in range, else 0, computed per
//                              phase of the strides (StridePhase): a block of phase z = blockIdx.z
//                              takes its rows ih = r_h + sh i, iw = r_w + sw j and the taps that
//                              reach them, where every division is exact, from w with its taps
//                              in phase order (at unit stride w itself). Same tiling as the
//                              forward; grid = (ceil(N*ceil(H/sh)*ceil(W/sw)/64), ceil(C/64), sh*sw).
//   conv2d_backward_data_v3    the v2 GEMM on the v3 tiling;
//                              grid = (ceil(N*ceil(H/sh)*ceil(W/sw)/128), ceil(C/128), sh*sw).
//   conv2d_backward_weight_v1  one thread per filter element, reducing over n, oh, ow.
//   conv2d_backward_weight_v2  implicit GEMM  dW^T[r, k] = P^T[r, l] dY[l, k], l = (n, oh, ow):
//                              the long reduction (N*OH*OW) is split over gridDim.z blocks, each
//                              writing its partial sum to its own slice of a workspace;
//                              conv2d_reduce_splits then adds the slices in a fixed order, so
//                              the result is deterministic (no float atomics).
//                              grid = (ceil(C*FH*FW/64), ceil(K/64), splits).
//   conv2d_backward_weight_v3  the v2 split-K GEMM on the v3 tiling;
//                              grid = (ceil(C*FH*FW/128), ceil(K/128), splits).
//   conv2d_reduce_splits       dw[e] = sum_z ws[z*count + e] (acc_t workspace, rounded once into
//                              storage_t); 1-D grid-stride. For a 2-byte storage_t the launcher
//                              always goes through the workspace, even with one split.
//   conv2d_backward_bias       db[k] = sum_{n,oh,ow} dy[n,k,oh,ow]; one block of GPUCONV_BLOCK
//                              threads per k, tree reduction in shared memory (deterministic);
//                              dy NCHW or channels_last (NHWC memory), summed in the same order.
//
// GEMM row/column indices are int (the launchers check M, N, L < 2^31 and fall back to v1, whose
// indices are 64-bit, beyond); element offsets into x, y, dy, dx are index_t (64-bit), but for the
// gathers' offsets within one image, int (the launchers check an image's C*H*W and K*OH*OW too).
//
// Index decoding in the main loops: each round decodes a loader's reduction or position index
// (r = (c, fh, fw), l = (k, fh, fw) or (n, oh, ow)) with FastDiv (common.cuh): a multiply-high,
// an add and a shift per digit, where an integer division by a run-time value is some 20
// instructions in loops of 512 FMAs a round. The tiled kernels take the (m, s) pairs as their
// last arguments (gpuconv.kernels.fast_divisor): FH*FW and FW for the forward, OH*OW and OW for
// the weight gradient, and for the data gradient a phase's FH'*FW' and FW' (DataDivisors: a side
// has one of two tap counts, so the product one of four). The data gradient's phases are unit-stride
// problems (oh = i + q - fh' as it is), whatever the stride. sm_90 SASS, float32, instructions per
// round of the main loop (512 FFMAs; a static count, benchmarks/sass_loop.py --build f32): forward
// v3 769 -> 708, v2 1079 -> 953; data gradient v3 1085 -> 769, v2 1491 -> 992 at any stride (before
// its phases: 765 and 975 at unit stride, 961 and 1255 strided, where at stride 2 three rounds
// in four multiplied zeros); weight gradient v3 783 -> 750 (740 without its minimum-blocks
// hint), v2 1003 -> 958.
// Registers on sm_90 (ptxas 13, float32, see tests/test_nvrtc.py; the bf16/fp16 builds stage
// float32 tiles and use the same shared memory): v2 forward and backward-data 128 (CONV2_MIN_BLOCKS:
// 8 blocks of 2 warps per SM), backward-weight 168 (6 blocks), 4352 B of shared memory per block;
// v3 forward 127 registers and backward-data 128, 16896 B (2 blocks = 16 warps per SM),
// backward-weight 128 (CONV3_WEIGHT_MIN_BLOCKS: 2 blocks, where 130 registers held it to one, as
// the H200 timed it). No spills but v3's weight gradient's 32 B (40-64 B in the 16-bit and TF32
// builds; see the kernel). (The H200 timed v2's forward and backward-data at 168 and 167
// registers, before FastDiv replaced their divisions.)
//
// Resources per kernel and build (ptxas of CUDA 13.0 for sm_90, the registry's NVRTC options;
// tests/test_nvrtc.py holds every figure to ptxas's report): registers / static shared memory
// in bytes / bytes spilled (stores + loads).
//   ptxas 13.0                 f32          f64          bf16         f16          tf32
//   conv2d_forward_v1          48/0/0       48/0/0       46/0/0       44/0/0       48/0/0
//   conv2d_forward_v2          128/4352/0   244/8704/0   128/4352/0   128/4352/0   128/4352/0
//   conv2d_forward_v3          127/16896/0  226/33792/0  127/16896/0  122/16896/0  127/16896/0
//   conv2d_backward_data_v1    48/0/0       48/0/0       48/0/0       46/0/0       48/0/0
//   conv2d_backward_data_v2    126/4352/0   244/8704/0   128/4352/0   126/4352/0   128/4352/0
//   conv2d_backward_data_v3    128/16896/0  236/33792/0  128/16896/0  127/16896/0  128/16896/0
//   conv2d_backward_weight_v1  47/0/0       48/0/0       46/0/0       39/0/0       38/0/0
//   conv2d_backward_weight_v2  168/4352/0   254/8704/0   196/4352/0   166/4352/0   168/4352/0
//   conv2d_backward_weight_v3  128/16896/32 246/33792/0  128/16896/40 128/16896/48 128/16896/64
//   conv2d_reduce_splits       32/0/0       32/0/0       32/0/0       32/0/0       32/0/0
//   conv2d_backward_bias       32/1024/0    40/2048/0    32/1024/0    32/1024/0    32/1024/0

#define CONV_BM 64        // output-tile rows (the contiguous output dimension: m, or r for dW)
#define CONV_BN 64        // output-tile columns
#define CONV_BK 8         // reduction steps staged per shared-memory round
#define CONV_TM 8         // rows per thread
#define CONV_TN 8         // columns per thread
#define CONV_THREADS 64   // (BM/TM) * (BN/TN)
// Blocks per SM the forward and data-gradient kernels are built for: 8 (128 registers) where they
// fit without a spill (ptxas 13.0, every 4-byte-accumulator build: 130-166 registers, 6 or 7
// blocks, without the hint; 0.5-1.6% more instructions a round with it, float32); float64's 8x8
// double tiles do not (4-9 KB of spills), nor does the weight gradient in any build (232-256 B).
#define CONV2_MIN_BLOCKS (sizeof(acc_t) == 8 ? 1 : 8)
// Row padding of the shared tiles: with 68 floats per row the column-major stores of the
// "l-fast" loaders (8 threads down a column, 4 columns per warp) hit 32 distinct banks.
#define CONV_SROW (CONV_BM + 4)

// ------------------------------------------------------------------------------------------
// The GEMM main loop shared by the three tiled kernels.
//
// acc[i][j] += sum_l A(row0 + tx + 8i, l) * B(l, col0 + ty + 8j) for l in [lbegin, lend).
// A loader stages its tile into As[l - l0][row], B into Bs[l - l0][col]; each loader owns its
// thread-to-element mapping (chosen so that its global loads are coalesced) and prefetches
// the next tile into registers (load) before it is written to shared memory (store).
// Rows are strided by 8 across threads (tx + 8i) so that the epilogue's stores of one warp
// land on consecutive addresses of the contiguous output dimension.
template <class LoaderA, class LoaderB>
__device__ void conv_gemm_mainloop(LoaderA& la, LoaderB& lb, int lbegin, int lend,
                                   acc_t (*As)[CONV_SROW], acc_t (*Bs)[CONV_SROW],
                                   acc_t acc[CONV_TM][CONV_TN]) {
    const int tx = threadIdx.x % (CONV_BM / CONV_TM);
    const int ty = threadIdx.x / (CONV_BM / CONV_TM);
    la.load(lbegin, lend);
    lb.load(lbegin, lend);
    // Every thread runs the same number of rounds, so the barriers are never divergent.
    for (int l0 = lbegin; l0 < lend; l0 += CONV_BK) {
        la.store(As);
        lb.store(Bs);
        __syncthreads();
        if (l0 + CONV_BK < lend) {  // prefetch: the global loads overlap the FMAs below
            la.load(l0 + CONV_BK, lend);
            lb.load(l0 + CONV_BK, lend);
        }
#pragma unroll
        for (int kk = 0; kk < CONV_BK; ++kk) {
            acc_t a[CONV_TM], b[CONV_TN];
#pragma unroll
            for (int i = 0; i < CONV_TM; ++i) a[i] = As[kk][tx + 8 * i];
#pragma unroll
            for (int j = 0; j < CONV_TN; ++j) b[j] = Bs[kk][ty + 8 * j];
#pragma unroll
            for (int i = 0; i < CONV_TM; ++i)
#pragma unroll
                for (int j = 0; j < CONV_TN; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();  // the tile is fully read before the next round overwrites it
    }
}

// A loader's staging registers and their store into a shared-memory tile (any row length: v2's
// acc_t[CONV_SROW] rows, v3's conv3_tile_t). SlotStaging: this thread's N registers are
// reduction steps lq0 .. lq0 + N - 1 of tile row or column `slot`, both set by the loader.
// LFastStaging: thread t writes reduction step t % BK of the columns t / BK + STEP * q (v2: STEP
// 8, v3: STEP 32).
template <int N>
struct SlotStaging {
    acc_t reg[N];
    int slot, lq0;
    template <typename Tile>
    __device__ void store(Tile S) {
#pragma unroll
        for (int q = 0; q < N; ++q) S[lq0 + q][slot] = reg[q];
    }
};

template <int N, int BK, int STEP>
struct LFastStaging {
    acc_t reg[N];
    template <typename Tile>
    __device__ void store(Tile S) {
#pragma unroll
        for (int q = 0; q < N; ++q) S[threadIdx.x % BK][threadIdx.x / BK + STEP * q] = reg[q];
    }
};

// Row loaders (A operand, "m-fast"): thread t stages tile row slot = t % BM and reduction
// steps lq0 = N * (t / BM) .. + N - 1 of each round (v2: 64 threads, BM 64, N 8: row t, every
// step; v3: 256 threads, BM 128, N 4), so one warp reads 32 consecutive output positions
// (consecutive iw for stride 1): coalesced, and the row decode (n, oh, ow) happens once per thread.
template <int N, int BM>
struct RowSlot : SlotStaging<N> {
    __device__ RowSlot() {
        this->slot = (int)(threadIdx.x % BM);
        this->lq0 = N * (int)(threadIdx.x / BM);
    }
};

// Patch matrix of the forward pass: P[m, r] = x[n, c, oh*sh-ph+fh, ow*sw-pw+fw] (0 if padded).
template <int N, int BM>
struct PatchRowLoader : RowSlot<N, BM> {
    const storage_t* img;  // x + n*C*H*W
    int valid, ih0, iw0, H, W, FH, FW;
    FastDiv taps, fws;  // by FH * FW and by FW
    __device__ PatchRowLoader(const storage_t* x, int row0, int M, int C, int H_, int W_, int FH_, int FW_,
                              int OH, int OW, int sh, int sw, int ph, int pw, FastDiv taps_, FastDiv fws_)
        : H(H_), W(W_), FH(FH_), FW(FW_), taps(taps_), fws(fws_) {
        const int m = row0 + this->slot;
        valid = m < M;
        const int mm = valid ? m : 0;
        const int n = mm / (OH * OW), p = mm - n * (OH * OW);
        const int oh = p / OW, ow = p - oh * OW;
        img = x + (index_t)n * C * H * W;
        ih0 = oh * sh - ph;
        iw0 = ow * sw - pw;
    }
    __device__ void load(int l0, int lend) {
        // Decode r = (c, fh, fw) once per round (by FastDiv: an integer division by a run-time
        // value costs ~20 instructions) and step it along the round's elements.
        const int l = l0 + this->lq0;
        int c = taps.div(l), f = l - c * (FH * FW);
        int fh = fws.div(f), fw = f - fh * FW;
#pragma unroll
        for (int q = 0; q < N; ++q) {
            acc_t v = 0;
            const int ih = ih0 + fh, iw = iw0 + fw;
            if (valid && l + q < lend && ih >= 0 && ih < H && iw >= 0 && iw < W)
                v = gemm_operand(img[(c * H + ih) * W + iw]);  // (an image's C*H*W is an int: the launcher)
            this->reg[q] = v;
            if (++fw == FW) {
                fw = 0;
                if (++fh == FH) {
                    fh = 0;
                    ++c;
                }
            }
        }
    }
};

// Output-gradient gather of one phase of the backward-data pass: G[m, l] with m = (n, i, j), the
// input pixel (r_h + sh i, r_w + sw j), and l = (k, fh', fw'), the phase's tap (f0_h + sh fh',
// f0_w + sw fw'), is dy[n, k, oh, ow] at (oh, ow) = (i + q_h - fh', j + q_w - fw') where that is in
// range, else 0: unit-stride indices, stepped down with fh' and fw'. l is decoded once per round,
// by the phase's tap counts (FastDiv by FH * FW, then by FW).
template <int N, int BM>
struct GradGatherRowLoader : RowSlot<N, BM> {
    const storage_t* img;  // dy + n*K*OH*OW
    int valid, ihp, iwp, FH, FW, OH, OW;  // ihp, iwp: i + q_h, j + q_w; FH, FW: the phase's taps
    FastDiv taps, fws;  // by FH * FW and by FW
    // H, W: the phase's rows and columns (StridePhase::size), FH, FW its taps, qh, qw StridePhase::q.
    __device__ GradGatherRowLoader(const storage_t* dy, int row0, int M, int H, int W, int K, int FH_, int FW_,
                                   int OH_, int OW_, int qh, int qw, FastDiv taps_, FastDiv fws_)
        : FH(FH_), FW(FW_), OH(OH_), OW(OW_), taps(taps_), fws(fws_) {
        const int m = row0 + this->slot;
        valid = m < M;
        const int mm = valid ? m : 0;
        const int n = mm / (H * W), p = mm - n * (H * W);
        const int i = p / W, j = p - i * W;
        img = dy + (index_t)n * K * OH * OW;
        ihp = i + qh;
        iwp = j + qw;
    }
    __device__ void load(int l0, int lend) {
        const int l = l0 + this->lq0;
        int k = taps.div(l), f = l - k * (FH * FW);
        int fh = fws.div(f), fw = f - fh * FW;
        int oh = ihp - fh, ow = iwp - fw;
#pragma unroll
        for (int q = 0; q < N; ++q) {
            acc_t v = 0;
            if (valid && l + q < lend && (unsigned)oh < (unsigned)OH && (unsigned)ow < (unsigned)OW)
                v = gemm_operand(img[(k * OH + oh) * OW + ow]);  // (K*OH*OW is an int: the launcher)
            this->reg[q] = v;
            if (++fw == FW) {  // j + q_w - fw' restarts at iwp
                fw = 0;
                ow = iwp;
                if (++fh == FH) {  // next filter: i + q_h - fh' restarts at ihp
                    fh = 0;
                    ++k;
                    oh = ihp;
                } else {
                    --oh;
                }
            } else {
                --ow;
            }
        }
    }
};

// Where GEMM row m of the data gradient lies in its NCHW plane: image n and pixel p. DensePixels:
// the rows are the planes' pixels in order (unit stride); PhasePixels: a phase's rows (n, i, j),
// the pixel (r_h + sh i, r_w + sw j).
struct DensePixels {
    __device__ int operator()(int m, int P, int* n) const {
        *n = m / P;
        return m - *n * P;
    }
};

struct PhasePixels {
    PhasePixel at;
    __device__ int operator()(int m, int, int* n) const { return at(m, n); }
};

// "l-fast" loaders: thread t reads reduction step kk = t % 8 of tile columns t/8 + 8q, so 8
// neighbouring threads read 8 consecutive reduction indices (contiguous in memory for each of
// these operands), and the reduction index is decoded once per round, not per element.

// Forward filters as W^T[r, k] = w[k, r] (w is K x C*FH*FW, row-major).
struct FilterColLoader : LFastStaging<CONV_TN, CONV_BK, 8> {
    const storage_t* w;
    int col0, ncols, R;
    __device__ FilterColLoader(const storage_t* w_, int col0_, int ncols_, int R_) : w(w_), col0(col0_), ncols(ncols_), R(R_) {}
    __device__ void load(int l0, int lend) {
        int r = l0 + (int)threadIdx.x % CONV_BK;
#pragma unroll
        for (int q = 0; q < CONV_TN; ++q) {
            int k = col0 + (int)threadIdx.x / CONV_BK + 8 * q;
            reg[q] = (r < lend && k < ncols) ? gemm_operand(w[(index_t)k * R + r]) : (acc_t)0;
        }
    }
};

// Backward-data filters of a phase as W'[l, c] = w'[k, c, first + f], l = (k, f) with f the
// phase's tap (fh', fw') of T = FH' * FW', from the phase-ordered filter w' (StridePhase).
struct FilterBwdColLoader : LFastStaging<CONV_TN, CONV_BK, 8> {
    const storage_t* w;  // w' + the phase's first tap
    int col0, C, FHW, T;
    FastDiv taps;  // by T
    __device__ FilterBwdColLoader(const storage_t* w_, int col0_, int C_, int FHW_, int T_, FastDiv taps_)
        : w(w_), col0(col0_), C(C_), FHW(FHW_), T(T_), taps(taps_) {}
    __device__ void load(int l0, int lend) {
        int l = l0 + (int)threadIdx.x % CONV_BK;
        int k = taps.div(l), f = l - k * T;
        const storage_t* base = w + (index_t)k * C * FHW + f;
#pragma unroll
        for (int q = 0; q < CONV_TN; ++q) {
            int c = col0 + (int)threadIdx.x / CONV_BK + 8 * q;
            reg[q] = (l < lend && c < C) ? gemm_operand(base[(index_t)c * FHW]) : (acc_t)0;
        }
    }
};

// Backward-weight column loaders (both operands l-fast): thread t reads reduction step
// kk = t % 8 of tile columns t / 8 + STEP * q, q in [0, N) (v2: N 8, STEP 8; v3: N 4, STEP 32):
// 8 neighbouring threads read 8 consecutive l = (n, oh, ow), contiguous in x (stride 1) and in
// dy, and l is decoded once per round. In v3 the stores S[kk][t/8 + 32q] of a warp (kk 0..7,
// four columns) fall in 32 distinct banks.

// Patches P^T staged [l][r], r = (c, fh, fw): a thread's N rows never change, so their decode
// is done once, in the constructor.
template <int N, int STEP>
struct PatchColLoader : LFastStaging<N, CONV_BK, STEP> {
    const storage_t* x;
    int CHW, H, W, OH, OW, sh, sw, ph, pw;
    int off[N];  // c*H*W + fh*W + fw of each row; -1 for rows past C*FH*FW
    int tap[N];  // fh << 16 | fw (the launcher keeps filters under 32768 wide)
    FastDiv planes, ows;  // by OH * OW and by OW
    __device__ PatchColLoader(const storage_t* x_, int row0, int C, int H_, int W_, int FH, int FW,
                              int OH_, int OW_, int sh_, int sw_, int ph_, int pw_, FastDiv planes_, FastDiv ows_)
        : x(x_), CHW(C * H_ * W_), H(H_), W(W_), OH(OH_), OW(OW_), sh(sh_), sw(sw_), ph(ph_), pw(pw_),
          planes(planes_), ows(ows_) {
#pragma unroll
        for (int q = 0; q < N; ++q) {
            const int r = row0 + (int)threadIdx.x / CONV_BK + STEP * q;
            const int c = r / (FH * FW), f = r - c * (FH * FW);
            const int fh = f / FW, fw = f - fh * FW;
            off[q] = r < C * FH * FW ? (c * H + fh) * W + fw : -1;
            tap[q] = (fh << 16) | fw;
        }
    }
    __device__ void load(int l0, int lend) {
        const int l = l0 + (int)threadIdx.x % CONV_BK;
        const int n = planes.div(l), p = l - n * (OH * OW);
        const int oh = ows.div(p), ow = p - oh * OW;
        const int ih0 = oh * sh - ph, iw0 = ow * sw - pw;
        const index_t base = (index_t)n * CHW + ih0 * W + iw0;
#pragma unroll
        for (int q = 0; q < N; ++q) {
            const int ih = ih0 + (tap[q] >> 16), iw = iw0 + (tap[q] & 0xffff);
            this->reg[q] = (l < lend && off[q] >= 0 && ih >= 0 && ih < H && iw >= 0 && iw < W)
                               ? gemm_operand(x[base + off[q]]) : (acc_t)0;
        }
    }
};

// Output gradients staged [l][k] = dy[n, k, oh, ow], l = (n, oh, ow).
template <int N, int STEP>
struct GradColLoader : LFastStaging<N, CONV_BK, STEP> {
    const storage_t* dy;
    int col0, K, OHW;
    FastDiv planes;  // by OHW
    __device__ GradColLoader(const storage_t* dy_, int col0_, int K_, int OHW_, FastDiv planes_)
        : dy(dy_), col0(col0_), K(K_), OHW(OHW_), planes(planes_) {}
    __device__ void load(int l0, int lend) {
        const int l = l0 + (int)threadIdx.x % CONV_BK;
        const int n = planes.div(l), p = l - n * OHW;
#pragma unroll
        for (int q = 0; q < N; ++q) {
            const int k = col0 + (int)threadIdx.x / CONV_BK + STEP * q;
            this->reg[q] = (l < lend && k < K) ? gemm_operand(dy[((index_t)n * K + k) * OHW + p]) : (acc_t)0;
        }
    }
};

__device__ inline void conv_zero(acc_t acc[CONV_TM][CONV_TN]) {
#pragma unroll
    for (int i = 0; i < CONV_TM; ++i)
#pragma unroll
        for (int j = 0; j < CONV_TN; ++j) acc[i][j] = 0;
}

// Where accumulator acc[i][j] of this thread sits in its tile: row Map::row(i), column
// Map::col(j). v2: rows tx + 8i and columns ty + 8j, (tx, ty) = (t % 8, t / 8), as its main loop
// reads them; v3's map (Conv3Map) is with its main loop, below.
struct Conv2Map {
    __device__ static int row(int i) { return (int)(threadIdx.x % 8) + 8 * i; }
    __device__ static int col(int j) { return (int)(threadIdx.x / 8) + 8 * j; }
};

// Epilogue of the forward and backward-data GEMMs: acc[i][j] is the output (m, col), m at (n, p)
// (Pixels: p a position in a plane of P elements; a strided data gradient's phase maps its rows
// there) and col one of `cols` channels, stored to out[n, col, p] after the bias (null: none) and
// ReLU (forward only). A warp's stores for one (i, j) land on consecutive p (v2: rows tx + 8i; a
// phase's, sw apart), or 4 apart with the four i of a thread filling the gaps (v3: L2 merges the
// partial sectors).
template <class Map, class Pixels = DensePixels>
__device__ inline void conv_store_nchw(acc_t acc[CONV_TM][CONV_TN], storage_t* out, int row0, int col0, int M,
                                       int cols, int P, const storage_t* bias, int relu, Pixels at = Pixels{}) {
#pragma unroll
    for (int i = 0; i < CONV_TM; ++i) {
        const int m = row0 + Map::row(i);
        if (m >= M) continue;
        int n;
        const int p = at(m, P, &n);
        storage_t* on = out + (index_t)n * cols * P + p;
#pragma unroll
        for (int j = 0; j < CONV_TN; ++j) {
            const int c = col0 + Map::col(j);
            if (c >= cols) continue;
            acc_t v = acc[i][j];
            if (bias) v += to_acc(bias[c]);
            on[(index_t)c * P] = from_acc(relu ? relu_value(v) : v);
        }
    }
}

// Epilogue of the weight gradient: acc[i][j] is dW^T[r, k], stored as this split's slice
// out[k * R + r] of the workspace (or dw itself, with one split).
template <class Map>
__device__ inline void conv_store_weight(acc_t acc[CONV_TM][CONV_TN], acc_t* out, int row0, int col0, int R, int K) {
#pragma unroll
    for (int i = 0; i < CONV_TM; ++i) {
        const int r = row0 + Map::row(i);
        if (r >= R) continue;
#pragma unroll
        for (int j = 0; j < CONV_TN; ++j) {
            const int k = col0 + Map::col(j);
            if (k < K) out[(index_t)k * R + r] = acc[i][j];
        }
    }
}

// ------------------------------------------------------------------------------------------
// Forward
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
conv2d_forward_v1(const storage_t* x, const storage_t* w, const storage_t* b, storage_t* y,
                  int N, int C, int H, int W, int K, int FH, int FW, int OH, int OW,
                  int sh, int sw, int ph, int pw, int has_bias, int relu) {
    const index_t total = (index_t)N * K * OH * OW;
    for (index_t i = global_thread_index(); i < total; i += global_thread_count()) {
        int oh, ow;
        const index_t t = split_hw(i, OH, OW, &oh, &ow);
        const int k = (int)(t % K), n = (int)(t / K);
        acc_t acc = 0;
        for (int c = 0; c < C; ++c) {
            const storage_t* xc = x + ((index_t)n * C + c) * H * W;
            const storage_t* wc = w + ((index_t)k * C + c) * FH * FW;
            for (int fh = 0; fh < FH; ++fh) {
                int ih = oh * sh - ph + fh;
                if (ih < 0 || ih >= H) continue;
                for (int fw = 0; fw < FW; ++fw) {
                    int iw = ow * sw - pw + fw;
                    if (iw < 0 || iw >= W) continue;
                    acc += gemm_operand(xc[(index_t)ih * W + iw]) * gemm_operand(wc[fh * FW + fw]);
                }
            }
        }
        if (has_bias) acc += to_acc(b[k]);
        y[i] = from_acc(relu ? relu_value(acc) : acc);
    }
}

extern "C" __global__ void __launch_bounds__(CONV_THREADS, CONV2_MIN_BLOCKS)
conv2d_forward_v2(const storage_t* x, const storage_t* w, const storage_t* b, storage_t* y,
                  int N, int C, int H, int W, int K, int FH, int FW, int OH, int OW,
                  int sh, int sw, int ph, int pw, int has_bias, int relu, unsigned taps_m, unsigned taps_s,
                  unsigned fw_m, unsigned fw_s) {
    __shared__ acc_t As[CONV_BK][CONV_SROW];
    __shared__ acc_t Bs[CONV_BK][CONV_SROW];
    const int M = N * OH * OW, R = C * FH * FW;
    const int row0 = blockIdx.x * CONV_BM, col0 = blockIdx.y * CONV_BN;
    PatchRowLoader<CONV_BK, CONV_BM> la(x, row0, M, C, H, W, FH, FW, OH, OW, sh, sw, ph, pw, FastDiv{taps_m, taps_s},
                                        FastDiv{fw_m, fw_s});
    FilterColLoader lb(w, col0, K, R);
    acc_t acc[CONV_TM][CONV_TN];
    conv_zero(acc);
    conv_gemm_mainloop(la, lb, 0, R, As, Bs, acc);
    conv_store_nchw<Conv2Map>(acc, y, row0, col0, M, K, OH * OW, has_bias ? b : nullptr, relu);
}

// ------------------------------------------------------------------------------------------
// Backward data
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
conv2d_backward_data_v1(const storage_t* dy, const storage_t* w, storage_t* dx,
                        int N, int C, int H, int W, int K, int FH, int FW, int OH, int OW,
                        int sh, int sw, int ph, int pw) {
    const index_t total = (index_t)N * C * H * W;
    for (index_t i = global_thread_index(); i < total; i += global_thread_count()) {
        int ih, iw;
        const index_t t = split_hw(i, H, W, &ih, &iw);
        const int c = (int)(t % C), n = (int)(t / C);
        acc_t acc = 0;
        for (int fh = 0; fh < FH; ++fh) {
            int ohs = ih + ph - fh;
            if (ohs < 0 || ohs % sh != 0 || ohs / sh >= OH) continue;
            int oh = ohs / sh;
            for (int fw = 0; fw < FW; ++fw) {
                int ows = iw + pw - fw;
                if (ows < 0 || ows % sw != 0 || ows / sw >= OW) continue;
                int ow = ows / sw;
                for (int k = 0; k < K; ++k)
                    acc += gemm_operand(dy[(((index_t)n * K + k) * OH + oh) * OW + ow]) *
                           gemm_operand(w[(((index_t)k * C + c) * FH + fh) * FW + fw]);
            }
        }
        dx[i] = from_acc(acc);
    }
}

// The data gradient's FastDiv pairs (the tiled kernels' last arguments): by a phase's tap count
// T = FH' * FW' for (FH', FW') = (hi, hi), (hi, lo), (lo, hi), (lo, lo), where a side has ceil(F / s)
// taps (hi) or floor(F / s) (lo), then by FW' = hi and lo (a count of 0: by 1, never divided by).
struct DataDivisors {
    unsigned hh_m, hh_s, hl_m, hl_s, lh_m, lh_s, ll_m, ll_s, w_m, w_s, wl_m, wl_s;
};

// A data-gradient block's phase of the strides, blockIdx.z = r_h * sw + r_w (StridePhase), and the
// FastDivs by its T and FW'.
struct DataGradPhase {
    StridePhase rows, cols;
    FastDiv taps, fws;  // by T and by FW'
    __device__ DataGradPhase(int H, int W, int FH, int FW, int sh, int sw, int ph, int pw, const DataDivisors& d)
        : rows((int)blockIdx.z / sw, H, FH, sh, ph), cols((int)blockIdx.z % sw, W, FW, sw, pw) {
        const bool lo_h = rows.taps != (FH + sh - 1) / sh, lo_w = cols.taps != (FW + sw - 1) / sw;
        taps = lo_h ? (lo_w ? FastDiv{d.ll_m, d.ll_s} : FastDiv{d.lh_m, d.lh_s})
                    : (lo_w ? FastDiv{d.hl_m, d.hl_s} : FastDiv{d.hh_m, d.hh_s});
        fws = lo_w ? FastDiv{d.wl_m, d.wl_s} : FastDiv{d.w_m, d.w_s};
    }
    __device__ int pixels() const { return rows.size * cols.size; }
    __device__ int taps_count() const { return rows.taps * cols.taps; }  // T
    // The phase's first tap in the phase-ordered filter (a filter row FW taps long).
    __device__ int first(int FW) const { return rows.first * FW + rows.taps * cols.first; }
    // The epilogue of the phase's rows into dx (NCHW): at unit stride the rows are dx's own.
    template <class Map>
    __device__ void store(acc_t acc[CONV_TM][CONV_TN], storage_t* dx, int row0, int col0, int M, int C, int H, int W,
                          int sh, int sw) const {
        if (sh == 1 && sw == 1)
            conv_store_nchw<Map>(acc, dx, row0, col0, M, C, H * W, nullptr, 0);
        else
            conv_store_nchw<Map>(acc, dx, row0, col0, M, C, H * W, nullptr, 0,
                                 PhasePixels{PhasePixel{pixels(), cols.size, W, sh, sw, rows.r, cols.r}});
    }
};

// grid = (ceil(N * ceil(H / sh) * ceil(W / sw) / 64), ceil(C / 64), sh * sw): the rows of the
// largest phase (the first), a phase per blockIdx.z; w in phase order (StridePhase), the last
// arguments DataDivisors.
extern "C" __global__ void __launch_bounds__(CONV_THREADS, CONV2_MIN_BLOCKS)
conv2d_backward_data_v2(const storage_t* dy, const storage_t* w, storage_t* dx,
                        int N, int C, int H, int W, int K, int FH, int FW, int OH, int OW,
                        int sh, int sw, int ph, int pw, unsigned hh_m, unsigned hh_s, unsigned hl_m, unsigned hl_s,
                        unsigned lh_m, unsigned lh_s, unsigned ll_m, unsigned ll_s, unsigned fw_m, unsigned fw_s,
                        unsigned fwl_m, unsigned fwl_s) {
    __shared__ acc_t As[CONV_BK][CONV_SROW];
    __shared__ acc_t Bs[CONV_BK][CONV_SROW];
    const DataGradPhase phase(H, W, FH, FW, sh, sw, ph, pw,
                              DataDivisors{hh_m, hh_s, hl_m, hl_s, lh_m, lh_s, ll_m, ll_s, fw_m, fw_s, fwl_m, fwl_s});
    const StridePhase &rows = phase.rows, &cols = phase.cols;
    const int M = N * phase.pixels();
    const int row0 = blockIdx.x * CONV_BM, col0 = blockIdx.y * CONV_BN;
    if (row0 >= M) return;  // (a block-uniform exit before any barrier)
    GradGatherRowLoader<CONV_BK, CONV_BM> la(dy, row0, M, rows.size, cols.size, K, rows.taps, cols.taps, OH, OW,
                                             rows.q, cols.q, phase.taps, phase.fws);
    FilterBwdColLoader lb(w + phase.first(FW), col0, C, FH * FW, phase.taps_count(), phase.taps);
    acc_t acc[CONV_TM][CONV_TN];
    conv_zero(acc);
    conv_gemm_mainloop(la, lb, 0, K * phase.taps_count(), As, Bs, acc);  // (no round where no tap reaches the phase)
    phase.store<Conv2Map>(acc, dx, row0, col0, M, C, H, W, sh, sw);
}

// ------------------------------------------------------------------------------------------
// Backward weight
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
conv2d_backward_weight_v1(const storage_t* dy, const storage_t* x, storage_t* dw,
                          int N, int C, int H, int W, int K, int FH, int FW, int OH, int OW,
                          int sh, int sw, int ph, int pw) {
    const index_t total = (index_t)K * C * FH * FW;
    for (index_t i = global_thread_index(); i < total; i += global_thread_count()) {
        int fh, fw;
        const index_t t = split_hw(i, FH, FW, &fh, &fw);
        const int c = (int)(t % C), k = (int)(t / C);
        acc_t acc = 0;
        for (int n = 0; n < N; ++n) {
            const storage_t* xc = x + ((index_t)n * C + c) * H * W;
            const storage_t* dyk = dy + ((index_t)n * K + k) * OH * OW;
            for (int oh = 0; oh < OH; ++oh) {
                int ih = oh * sh - ph + fh;
                if (ih < 0 || ih >= H) continue;
                for (int ow = 0; ow < OW; ++ow) {
                    int iw = ow * sw - pw + fw;
                    if (iw < 0 || iw >= W) continue;
                    acc += gemm_operand(dyk[(index_t)oh * OW + ow]) * gemm_operand(xc[(index_t)ih * W + iw]);
                }
            }
        }
        dw[i] = from_acc(acc);
    }
}

// Split z reduces l in [z*chunk, min((z+1)*chunk, N*OH*OW)) and writes ws[z*K*R + k*R + r];
// with one split the launcher passes dw itself as ws.
extern "C" __global__ void __launch_bounds__(CONV_THREADS)
conv2d_backward_weight_v2(const storage_t* dy, const storage_t* x, acc_t* ws,
                          int N, int C, int H, int W, int K, int FH, int FW, int OH, int OW,
                          int sh, int sw, int ph, int pw, int chunk, unsigned planes_m, unsigned planes_s,
                          unsigned ow_m, unsigned ow_s) {
    __shared__ acc_t As[CONV_BK][CONV_SROW];
    __shared__ acc_t Bs[CONV_BK][CONV_SROW];
    const int R = C * FH * FW, L = N * OH * OW;
    const int row0 = blockIdx.x * CONV_BM, col0 = blockIdx.y * CONV_BN;
    const int lbegin = blockIdx.z * chunk;
    const int lend = imin(L, lbegin + chunk);
    const FastDiv planes{planes_m, planes_s};
    PatchColLoader<CONV_TM, 8> la(x, row0, C, H, W, FH, FW, OH, OW, sh, sw, ph, pw, planes, FastDiv{ow_m, ow_s});
    GradColLoader<CONV_TN, 8> lb(dy, col0, K, OH * OW, planes);
    acc_t acc[CONV_TM][CONV_TN];
    conv_zero(acc);
    conv_gemm_mainloop(la, lb, lbegin, lend, As, Bs, acc);
    conv_store_weight<Conv2Map>(acc, ws + (index_t)blockIdx.z * K * R, row0, col0, R, K);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
conv2d_reduce_splits(const acc_t* ws, storage_t* dw, int splits, long long count) {
    for (index_t e = global_thread_index(); e < count; e += global_thread_count()) {
        acc_t s = 0;
        for (int z = 0; z < splits; ++z) s += ws[(index_t)z * count + e];
        dw[e] = from_acc(s);
    }
}

// ------------------------------------------------------------------------------------------
// Bias gradient: one block per output channel. Launch with exactly GPUCONV_BLOCK threads.
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
conv2d_backward_bias(const storage_t* dy, storage_t* db, int N, int K, int OHW, int channels_last) {
    __shared__ acc_t partial[GPUCONV_BLOCK];
    const int k = blockIdx.x;
    acc_t s = 0;
    const index_t per_channel = (index_t)N * OHW;
    for (index_t e = threadIdx.x; e < per_channel; e += GPUCONV_BLOCK) {
        if (channels_last) {  // NHWC memory: pixel e's channels are adjacent
            s += to_acc(dy[e * K + k]);
        } else {
            index_t n = e / OHW, p = e - n * OHW;
            s += to_acc(dy[(n * K + k) * OHW + p]);
        }
    }
    partial[threadIdx.x] = s;
    __syncthreads();
    for (int half = GPUCONV_BLOCK / 2; half > 0; half >>= 1) {
        if ((int)threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) db[k] = from_acc(partial[0]);
}

// ==========================================================================================
// v3: 128x128 output tiles, 256 threads, 8x8 outputs per thread, double-buffered shared memory.
//
// Why a second tiled variant: v2's 64-thread blocks give each SM few warps to switch between,
// and its scalar shared-memory reads cost one load per FMA pair column. v3 is the classic
// high-throughput SGEMM shape: a 128x128 tile amortizes every staged element over 128 FMAs
// (v2: 64), each thread reads its 8 A and 8 B values per step as four 16-byte vector loads
// (2 FMAs per loaded scalar become 4), and the two shared buffers let the stores of the next
// tile go to the idle buffer, so one __syncthreads per round suffices (v2 needs two).
// Shared memory: 2 buffers x 2 operands x 8 x 132 values (16.9 KB float, 33.8 KB double).
// The H200's measurement (benchmarks/bench_conv2d.py, which times every variant) made it "auto"'s
// choice for float32 from 128 output channels on (gpuconv.kernels.auto_variant); below that, v2.
//
// Thread (tx, ty) = (t % 16, t / 16) owns rows  {tx*4 + i, 64 + tx*4 + i}  and columns
// {ty*4 + j, 64 + ty*4 + j}, i, j in [0, 4): the rows of one thread are two runs of four, so
// they come out of shared memory as two acc4 loads; a quarter-warp (8 threads) reads 128
// consecutive bytes (no bank conflict), and the two ty of a warp read the same B words
// (broadcast). The patch and gradient loaders and the epilogues are v2's templates, instantiated
// for this tiling (PatchRowLoader<4, 128>, PatchColLoader<4, 32>, conv_store_nchw<Conv3Map>, ...);
// only the filter loaders below have a mapping of their own.

#define CONV3_BM 128
#define CONV3_BN 128
#define CONV3_BK 8
#define CONV3_THREADS 256
// Row padding 4 keeps every row 16-byte aligned (acc4 reads) and, for the column loaders
// (two threads per column, four reduction steps each), sends the 32 stores of a warp to 32
// distinct banks: row lq and row lq + 4 differ by 4 * 132 words = 16 banks.
#define CONV3_SROW (CONV3_BM + 4)

// Shared tiles are declared as acc4 so that they are aligned for the vector reads; the
// loaders see them as plain acc_t rows (float32 in the bf16/fp16 builds: operands are widened
// once, when staged, not at every one of the 128 reads of each staged value).
typedef acc_t (*conv3_tile_t)[CONV3_SROW];
#define CONV3_TILE(arr, buf) ((conv3_tile_t)(arr)[buf])

// acc[4*i2 + i][4*j2 + j] += sum_l A(row0 + 64*i2 + 4*tx + i, l) * B(l, col0 + 64*j2 + 4*ty + j).
template <class LoaderA, class LoaderB>
__device__ void conv3_mainloop(LoaderA& la, LoaderB& lb, int lbegin, int lend,
                               acc4 (*As)[CONV3_BK][CONV3_SROW / 4], acc4 (*Bs)[CONV3_BK][CONV3_SROW / 4],
                               acc_t acc[8][8]) {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    la.load(lbegin, lend);
    lb.load(lbegin, lend);
    la.store(CONV3_TILE(As, 0));
    lb.store(CONV3_TILE(Bs, 0));
    __syncthreads();
    int buf = 0;
    // Every thread runs the same rounds and the "more" test is uniform: no divergent barrier.
    for (int l0 = lbegin; l0 < lend; l0 += CONV3_BK) {
        const bool more = l0 + CONV3_BK < lend;
        if (more) {  // global loads of the next tile in flight while this one is multiplied
            la.load(l0 + CONV3_BK, lend);
            lb.load(l0 + CONV3_BK, lend);
        }
#pragma unroll
        for (int kk = 0; kk < CONV3_BK; ++kk) {
            const acc4 a0 = As[buf][kk][tx], a1 = As[buf][kk][16 + tx];  // rows 4tx.., 64+4tx..
            const acc4 b0 = Bs[buf][kk][ty], b1 = Bs[buf][kk][16 + ty];
            const acc_t a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            const acc_t b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[i][j] += a[i] * b[j];
        }
        if (more) {  // the other buffer was last read before the previous barrier
            la.store(CONV3_TILE(As, buf ^ 1));
            lb.store(CONV3_TILE(Bs, buf ^ 1));
        }
        __syncthreads();
        buf ^= 1;
    }
}

// Tile row (0..127) of accumulator row i of this thread, and column likewise.
struct Conv3Map {
    __device__ static int row(int i) { return (i >> 2) * 64 + (int)(threadIdx.x % 16) * 4 + (i & 3); }
    __device__ static int col(int j) { return (j >> 2) * 64 + (int)(threadIdx.x / 16) * 4 + (j & 3); }
};

// The row loaders (A operand) are v2's PatchRowLoader and GradGatherRowLoader with 4 steps of
// 128 rows: thread t stages tile row t % 128 and reduction steps 4 * (t / 128) .. + 3 of each
// round, so a warp reads 32 consecutive output positions per step.

// Column loaders (B operand, l-fast): thread t owns tile column t / 2 and reduction steps
// 4 * (t % 2) .. + 3, which are contiguous in memory for the filters: the two threads of a
// column read one 32-byte sector together.

// Forward filters W^T[r, k] = w[k, r] (w is K x R row-major, R = C*FH*FW).
struct FilterColLoader3 : SlotStaging<4> {
    const storage_t* wk;  // w + k*R of this thread's column (or w when the column is past K)
    int validk, R;
    __device__ FilterColLoader3(const storage_t* w, int col0, int K, int R_) : R(R_) {
        slot = (int)threadIdx.x / 2;
        lq0 = 4 * ((int)threadIdx.x % 2);
        validk = col0 + slot < K;
        wk = w + (validk ? (index_t)(col0 + slot) * R : 0);
    }
    __device__ void load(int l0, int lend) {
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int r = l0 + lq0 + q;
            reg[q] = (validk && r < lend) ? gemm_operand(wk[r]) : (acc_t)0;
        }
    }
};

// Backward-data filters of a phase, W'[l, c] = w'[k, c, first + f], l = (k, f) (v2's
// FilterBwdColLoader): a run of T taps of each filter row.
struct FilterBwdColLoader3 : SlotStaging<4> {
    const storage_t* wc;  // w' + c*FHW + the phase's first tap, of this thread's column
    int validc, C, FHW, T;
    FastDiv taps;  // by T
    __device__ FilterBwdColLoader3(const storage_t* w, int col0, int C_, int FHW_, int T_, FastDiv taps_)
        : C(C_), FHW(FHW_), T(T_), taps(taps_) {
        slot = (int)threadIdx.x / 2;
        lq0 = 4 * ((int)threadIdx.x % 2);
        validc = col0 + slot < C;
        wc = w + (validc ? (index_t)(col0 + slot) * FHW : 0);
    }
    __device__ void load(int l0, int lend) {
        const int l = l0 + lq0;
        int k = taps.div(l), f = l - k * T;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            reg[q] = (validc && l + q < lend) ? gemm_operand(wc[(index_t)k * C * FHW + f]) : (acc_t)0;
            if (++f == T) {
                f = 0;
                ++k;
            }
        }
    }
};

// Same signature and semantics as conv2d_forward_v1/v2. Block = CONV3_THREADS (256),
// grid = (ceil(N*OH*OW / 128), ceil(K / 128)).
extern "C" __global__ void __launch_bounds__(CONV3_THREADS)
conv2d_forward_v3(const storage_t* x, const storage_t* w, const storage_t* b, storage_t* y,
                  int N, int C, int H, int W, int K, int FH, int FW, int OH, int OW,
                  int sh, int sw, int ph, int pw, int has_bias, int relu, unsigned taps_m, unsigned taps_s,
                  unsigned fw_m, unsigned fw_s) {
    __shared__ acc4 As[2][CONV3_BK][CONV3_SROW / 4];
    __shared__ acc4 Bs[2][CONV3_BK][CONV3_SROW / 4];
    const int M = N * OH * OW, R = C * FH * FW;
    const int row0 = blockIdx.x * CONV3_BM, col0 = blockIdx.y * CONV3_BN;
    PatchRowLoader<4, CONV3_BM> la(x, row0, M, C, H, W, FH, FW, OH, OW, sh, sw, ph, pw, FastDiv{taps_m, taps_s},
                                   FastDiv{fw_m, fw_s});
    FilterColLoader3 lb(w, col0, K, R);
    acc_t acc[8][8];
    conv_zero(acc);  // v3 threads also hold 8x8 (CONV_TM x CONV_TN) outputs
    conv3_mainloop(la, lb, 0, R, As, Bs, acc);
    conv_store_nchw<Conv3Map>(acc, y, row0, col0, M, K, OH * OW, has_bias ? b : nullptr, relu);
}

// Same signature and semantics as conv2d_backward_data_v2. Block = CONV3_THREADS (256),
// grid = (ceil(N * ceil(H / sh) * ceil(W / sw) / 128), ceil(C / 128), sh * sw).
extern "C" __global__ void __launch_bounds__(CONV3_THREADS)
conv2d_backward_data_v3(const storage_t* dy, const storage_t* w, storage_t* dx,
                        int N, int C, int H, int W, int K, int FH, int FW, int OH, int OW,
                        int sh, int sw, int ph, int pw, unsigned hh_m, unsigned hh_s, unsigned hl_m, unsigned hl_s,
                        unsigned lh_m, unsigned lh_s, unsigned ll_m, unsigned ll_s, unsigned fw_m, unsigned fw_s,
                        unsigned fwl_m, unsigned fwl_s) {
    __shared__ acc4 As[2][CONV3_BK][CONV3_SROW / 4];
    __shared__ acc4 Bs[2][CONV3_BK][CONV3_SROW / 4];
    const DataGradPhase phase(H, W, FH, FW, sh, sw, ph, pw,
                              DataDivisors{hh_m, hh_s, hl_m, hl_s, lh_m, lh_s, ll_m, ll_s, fw_m, fw_s, fwl_m, fwl_s});
    const StridePhase &rows = phase.rows, &cols = phase.cols;
    const int M = N * phase.pixels();
    const int row0 = blockIdx.x * CONV3_BM, col0 = blockIdx.y * CONV3_BN;
    if (row0 >= M) return;  // (a block-uniform exit before any barrier)
    GradGatherRowLoader<4, CONV3_BM> la(dy, row0, M, rows.size, cols.size, K, rows.taps, cols.taps, OH, OW, rows.q,
                                        cols.q, phase.taps, phase.fws);
    FilterBwdColLoader3 lb(w + phase.first(FW), col0, C, FH * FW, phase.taps_count(), phase.taps);
    acc_t acc[8][8];
    conv_zero(acc);
    conv3_mainloop(la, lb, 0, K * phase.taps_count(), As, Bs, acc);
    phase.store<Conv3Map>(acc, dx, row0, col0, M, C, H, W, sh, sw);
}

// Same signature and semantics as conv2d_backward_weight_v2 (split z reduces l in
// [z*chunk, min((z+1)*chunk, N*OH*OW)) into ws[z*K*R + k*R + r]). Block = CONV3_THREADS (256),
// grid = (ceil(C*FH*FW / 128), ceil(K / 128), splits). Built for 2 blocks (16 warps) per SM, as
// the forward and the data gradient run: without the hint ptxas takes 130 registers (float32), so
// one block of 8 warps fits, and each round's barrier drains the SM. With it, 128 registers and a
// spill of four loop-invariant values (float32: 32 B, stored before the main loop and reloaded by
// 4 LDLs a round, L1 hits; the round 740 -> 750 instructions; 40-64 B in the 16-bit and TF32
// builds). float64 keeps one block (the hint would spill 4 KB).
#define CONV3_WEIGHT_MIN_BLOCKS (sizeof(acc_t) == 8 ? 1 : 2)
extern "C" __global__ void __launch_bounds__(CONV3_THREADS, CONV3_WEIGHT_MIN_BLOCKS)
conv2d_backward_weight_v3(const storage_t* dy, const storage_t* x, acc_t* ws,
                          int N, int C, int H, int W, int K, int FH, int FW, int OH, int OW,
                          int sh, int sw, int ph, int pw, int chunk, unsigned planes_m, unsigned planes_s,
                          unsigned ow_m, unsigned ow_s) {
    __shared__ acc4 As[2][CONV3_BK][CONV3_SROW / 4];
    __shared__ acc4 Bs[2][CONV3_BK][CONV3_SROW / 4];
    const int R = C * FH * FW, L = N * OH * OW;
    const int row0 = blockIdx.x * CONV3_BM, col0 = blockIdx.y * CONV3_BN;
    const int lbegin = blockIdx.z * chunk;
    const int lend = imin(L, lbegin + chunk);
    const FastDiv planes{planes_m, planes_s};
    PatchColLoader<4, 32> la(x, row0, C, H, W, FH, FW, OH, OW, sh, sw, ph, pw, planes, FastDiv{ow_m, ow_s});
    GradColLoader<4, 32> lb(dy, col0, K, OH * OW, planes);
    acc_t acc[8][8];
    conv_zero(acc);
    conv3_mainloop(la, lb, lbegin, lend, As, Bs, acc);
    conv_store_weight<Conv3Map>(acc, ws + (index_t)blockIdx.z * K * R, row0, col0, R, K);
}
