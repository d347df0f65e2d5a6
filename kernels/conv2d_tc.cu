// conv2d_tc.cu: 2-D convolution on tensor cores (mma.sync, ldmatrix, cp.async): implicit GEMMs over
// channels_last (NHWC) activations, on the tile machinery of kernels/tc_tile.cuh.
//
//   y[n,oh,ow,k] = b[k] + sum_{fh,fw,c} x[n, oh*sh-ph+fh, ow*sw-pw+fw, c] * w[k,fh,fw,c]
//
// Layouts. Tensor cores take the reduction dimension contiguous in both operands, so every array
// here is NHWC (the launcher, gpuconv/ops/_launch_conv2d_tc.py, passes channels_last arrays as
// they are and converts NCHW ones) and the filters are repacked K-contiguous: KRSC [K][FH][FW][Cp]
// for the forward, CRSK [C][FH][FW][Kp] for the data gradient. The reduction index runs over
// (fh, fw, channel) with the channel count padded to Cp (Kp), a multiple of the 16-byte piece
// (8 bf16/fp16 or 4 float elements), so that one piece never straddles two filter taps and its
// source address is 16-byte aligned: the launcher pads the channels of an operand whose count is
// not such a multiple (the first layer's 3) with zeros.
//
// Kernels (extern "C"), each in seven tile shapes (tc_tile.cuh): `_tc` on TcTile64 (64x64 outputs,
// 128 threads, 24 KiB of shared memory), `_tc128` on TcTile128 (128x128, 256 threads, 48 KiB:
// twice the reuse of every staged element, a quarter of the blocks), `_tc128w` on TcTile128w
// (128x128 with 128 threads, each warp 64x64: twice the mmas per warp and k-tile for the same
// fragment, loop and barrier overhead), `_tcwg` on TcTileWg (128x128, 256 threads as 2
// warpgroups on Hopper's wgmma m64n128k16, 4 stages = 64 KiB of dynamic shared memory),
// `_tcwg256` on TcTileWg256 (128x256, m64n256k16, 96 KiB), `_tcwgn64` on TcTileWgN64 (256x64,
// m64n64k16, 80 KiB: GEMMs of 64 columns or fewer) and `_tcwgm64` on TcTileWgM64 (64x128, one
// warpgroup, 48 KiB static: GEMMs of 64 rows or fewer); the wgmma shapes compute in the bf16,
// fp16 and TF32 builds for sm_90a and the simulator only, trapping elsewhere (the launcher runs
// the mma.sync tile of their width instead: tc128, or tc for tcwgn64 and tcwgm64; TF32 operands
// are K-major, m64nNk8); below, T is the tile side (BM x BN for the wgmma shapes but tcwg).
//   conv2d_forward_tc[128]          Y[m, k] = P[m, r] W[k, r]^T, m = (n, oh, ow), r = (fh, fw, c):
//                                   the patch rows P gathered from x by PatchRows (cp.async, zero
//                                   fill for padding), W dense; bias, ReLU and the cast fused in
//                                   the epilogue, y NHWC. grid = (ceil(N*OH*OW / T), ceil(K / T)).
//   conv2d_backward_data_tc[128]    dX[m, c] = G[m, l] W'[c, l]^T, m = (n, ih, iw), l = (fh, fw, k),
//                                   G[m, l] = dy[n, (ih+ph-fh)/sh, (iw+pw-fw)/sw, k] where the
//                                   division is exact and in range, else 0, computed per phase of
//                                   the strides (StridePhase): a block of phase z = blockIdx.z takes
//                                   its rows ih = r_h + sh i, iw = r_w + sw j and the taps that
//                                   reach them, where every division is exact (GradRows), from W'
//                                   in phase order (CRSK with the taps ordered by fh % sh, fw % sw,
//                                   fh / sh, fw / sw; at unit stride plain CRSK). dx NHWC.
//                                   grid = (ceil(N*ceil(H/sh)*ceil(W/sw) / T), ceil(C / T), sh*sw).
//   conv2d_backward_weight_tc[128]  dW[k, r] = dY^T[k, l] P[l, r], l = (n, oh, ow): both operands
//                                   are read along l, which is strided in NHWC, so bf16/fp16 stage
//                                   them K-strided (cp.async) and read them with ldmatrix.trans,
//                                   and TF32 (whose 32-bit elements .trans cannot move) transposes
//                                   them on the way into shared memory (TransposedGradRows,
//                                   TransposedPatchRows). The reduction over N*OH*OW is split over
//                                   gridDim.z blocks, each writing float32 partial sums to its own
//                                   workspace slice ws[z][k][r]; grid = (ceil(K / T),
//                                   ceil(FH*FW*Cp / T), splits), every split `chunk` positions (a
//                                   multiple of the k-tile's 32 or 16).
//   conv2d_tc_weight_reduce         dw[k, c, fh, fw] (OIHW) = sum_z ws[z][k][(fh*FW + fw)*Cp + c] in
//                                   a fixed order (deterministic, no float atomics), rounded once;
//                                   with `widen`, the rounded value is written widened into the
//                                   float32 dw32 instead (what a float32 master's gradient
//                                   accumulates: one cast fewer). 1-D grid-stride over the
//                                   K*C*FH*FW filter elements.
//   conv2d_tc_round_tf32            a TF32 launch's two operands rounded before it, in one launch
//                                   (at the end of this file).
//
// Precision (common.cuh, gpuconv/precision.py): storage_t operands, products exact and sums in
// float32 on the tensor cores, each output rounded once. TF32 operands are rounded by
// tf32_operand once per launch, before it (conv2d_tc_round_tf32): the loops round nothing
// (Prerounded), and the simulator checks that every value they stage is a TF32 value. The kernels
// compute only in the builds with a tensor-core format (GPUCONV_TENSOR_CORES); elsewhere they
// trap, and the launcher never sends them there.
// GEMM rows and columns are int (the launcher checks the sizes); element offsets are index_t.
//
// Resources on sm_90a (ptxas 13.0; tests/test_nvrtc.py checks the bounds, the absence of spills and
// the table below).
// TcTile64: forward 76 registers, backward-data 96, backward-weight 94 (TF32: 128, its loads
// held in registers across the mmas); 24576 B of static shared memory; at 96 registers the register
// file holds 5 blocks of 4 warps per SM, at 128 four. TcTile128 (warp tiles of 64x32: 64
// accumulators per thread): 124-128 registers in every build (the weight gradient bounded to it),
// 49152 B of static shared memory; 2 blocks of 8 warps per SM (registers and shared memory both
// allow 2; 4 would need at most 64 registers). TcTile128w (64x64 warp tiles, 128 accumulators per
// thread): 233-246 registers, 49152 B; 2 blocks of 4 warps per SM. TcTileWg (sm_90a): 110-128
// registers, 65536 B of dynamic stages (and 1 KiB to align them), 2 blocks of 8 warps per SM; its
// bf16 loops issue 107-124 instructions a k-tile per warp around 2 HGMMAs (tc128: 139-170 around 32
// HMMAs and 12 ldmatrix, the same multiply-adds; TF32 142 forward, 139 data gradient, 172-178
// weight gradient, which transposes its operands through registers; tcwg's TF32 107-140).
// TcTileWg256: 174-216 registers, 98304 B, one block per SM; 119-196 instructions a k-tile for
// twice the work. TcTileWgN64: 120-128 registers, 81920 B of dynamic stages, 2 blocks per SM;
// 125-139 instructions a k-tile around 4 HGMMAs of 64 columns (tcwg's multiply-adds). TcTileWgM64:
// 114-128 registers (TF32 weight gradient 158: 3 blocks), 49152 B static, 4 blocks of 4 warps per
// SM; 122-185 instructions a k-tile per warp around 2 HGMMAs (a quarter of tcwg's CTA work in half
// its warps). The pipelined waits keep ptxas from serializing the HGMMAs (tests/test_nvrtc.py fails
// on its C7514 warning). The loaders keep their rows' addresses and coordinates, their pieces'
// swizzled stage offsets and the dense operands' positions in registers for the whole loop, carried
// from k-tile to k-tile, and the fragment readers one swizzled lane address per operand
// (tc_tile.cuh): registers spent to keep address arithmetic out of the k-loop, whose issue slots
// the tensor cores need (benchmarks/sass_loop.py counts them per k-tile).
// The weight gradient's body picks between two instances of its loop at run time: 16-byte dY
// copies (channel counts that are multiples of 8) or narrower ones.
//
// Resources per kernel and build (ptxas of CUDA 13.0 for sm_90a, the registry's NVRTC options;
// tests/test_nvrtc.py holds every figure to ptxas's report): registers / static shared memory
// in bytes / bytes spilled (stores + loads); the tile kernels trap in float32 and float64.
//   ptxas 13.0                      f32          f64          bf16         f16          tf32
//   conv2d_forward_tc               4/0/0        4/0/0        76/24576/0   76/24576/0   76/24576/0
//   conv2d_backward_data_tc         4/0/0        4/0/0        96/24576/0   96/24576/0   95/24576/0
//   conv2d_backward_weight_tc       4/0/0        4/0/0        94/24576/0   94/24576/0   128/24576/0
//   conv2d_forward_tc128            4/0/0        4/0/0        125/49152/0  125/49152/0  125/49152/0
//   conv2d_backward_data_tc128      4/0/0        4/0/0        128/49152/0  128/49152/0  128/49152/0
//   conv2d_backward_weight_tc128    4/0/0        4/0/0        126/49152/0  126/49152/0  128/49152/0
//   conv2d_forward_tc128w           4/0/0        4/0/0        233/49152/0  233/49152/0  233/49152/0
//   conv2d_backward_data_tc128w     4/0/0        4/0/0        238/49152/0  238/49152/0  238/49152/0
//   conv2d_backward_weight_tc128w   4/0/0        4/0/0        238/49152/0  238/49152/0  246/49152/0
//   conv2d_forward_tcwg             4/0/0        4/0/0        110/0/0      110/0/0      110/0/0
//   conv2d_backward_data_tcwg       4/0/0        4/0/0        114/0/0      114/0/0      114/0/0
//   conv2d_backward_weight_tcwg     4/0/0        4/0/0        120/0/0      120/0/0      128/0/0
//   conv2d_forward_tcwg256          4/0/0        4/0/0        174/0/0      174/0/0      174/0/0
//   conv2d_backward_data_tcwg256    4/0/0        4/0/0        176/0/0      176/0/0      176/0/0
//   conv2d_backward_weight_tcwg256  4/0/0        4/0/0        193/0/0      193/0/0      216/0/0
//   conv2d_forward_tcwgn64          4/0/0        4/0/0        124/0/0      124/0/0      124/0/0
//   conv2d_backward_data_tcwgn64    4/0/0        4/0/0        128/0/0      128/0/0      128/0/0
//   conv2d_backward_weight_tcwgn64  4/0/0        4/0/0        120/0/0      120/0/0      128/0/0
//   conv2d_forward_tcwgm64          4/0/0        4/0/0        114/49152/0  114/49152/0  114/49152/0
//   conv2d_backward_data_tcwgm64    4/0/0        4/0/0        118/49152/0  118/49152/0  118/49152/0
//   conv2d_backward_weight_tcwgm64  4/0/0        4/0/0        120/49152/0  120/49152/0  158/49152/0
//   conv2d_tc_weight_reduce         32/0/0       32/0/0       32/0/0       32/0/0       32/0/0
//   conv2d_tc_round_tf32            4/0/0        4/0/0        4/0/0        4/0/0        20/0/0
//
// The sm_75 build (a T4: float16 alone, each m16n8k16 two m16n8k8, cp.async synchronous copies;
// the wgmma tiles trap), ptxas 13.0 for sm_75, checked by tests/test_nvrtc.py as the table above.
// On its SM (64 KiB of shared memory, 64K registers, 1024 threads) the 128x128 tiles run one
// block of 8 warps, TcTile64 two of 4 warps (shared memory the limit).
//   ptxas 13.0 sm_75                f16
//   conv2d_forward_tc               103/24576/0
//   conv2d_backward_data_tc         109/24576/0
//   conv2d_backward_weight_tc       115/24576/0
//   conv2d_forward_tc128            146/49152/0
//   conv2d_backward_data_tc128      154/49152/0
//   conv2d_backward_weight_tc128    158/49152/0
//   conv2d_forward_tc128w           228/49152/0
//   conv2d_backward_data_tc128w     236/49152/0
//   conv2d_backward_weight_tc128w   234/49152/0
//   conv2d_forward_tcwg             4/0/0
//   conv2d_backward_data_tcwg       4/0/0
//   conv2d_backward_weight_tcwg     4/0/0
//   conv2d_forward_tcwg256          4/0/0
//   conv2d_backward_data_tcwg256    4/0/0
//   conv2d_backward_weight_tcwg256  4/0/0
//   conv2d_forward_tcwgn64          4/0/0
//   conv2d_backward_data_tcwgn64    4/0/0
//   conv2d_backward_weight_tcwgn64  4/0/0
//   conv2d_forward_tcwgm64          4/0/0
//   conv2d_backward_data_tcwgm64    4/0/0
//   conv2d_backward_weight_tcwgm64  4/0/0
//   conv2d_tc_weight_reduce         47/0/0
//   conv2d_tc_round_tf32            4/0/0
// ------------------------------------------------------------------------------------------
// Operand loaders of the implicit GEMMs. Each moves 16-byte pieces (cp.async.cg): an mk stage of
// BM rows x 64 bytes is 4 * BM pieces, P = 4 * BM / THREADS per thread (2 in TcTile64 and
// TcTile128, 4 in TcTile128w), in rows t / 4 + i * THREADS / 4 at byte 16 * (t % 4). A thread's
// rows are fixed for the whole loop, so their pixel coordinates are decoded once; the reduction
// index its byte column holds is walked from k-tile to k-tile (ReductionWalk).

// The element of the padded reduction (tap (fh, fw), channel c) of this thread's piece of the next
// k-tile, walked k-tile by k-tile instead of divided out each time: the main loop loads k-tiles
// 0, 1, 2, ... in order (tc_gemm_mainloop), so each load takes the walk's position and steps it
// one k-tile on, adding the k-tile's elements to the channel with carries into the tap
// (the carry loop runs once per k-tile when Cp >= the k-tile's 32 or 16 elements, a few times
// for the first layer's padded 8). Two integer divisions per k-tile and thread fewer, in kernels
// whose issue slots, not their tensor cores, are the limit (Nsight Compute on an H200: the
// integer pipe the busiest). The simulator checks the order it relies on.
struct ReductionWalk {
    int fh, fw, c, cp, fw_count;
    int off;                 // c + fw * fw_step + fh * fh_step: the piece's element offset from its row's
    int fw_step, fh_step;    // (fh, fw) = (0, 0) element, carried with the walk (one add per k-tile)
    int kt;  // the next k-tile (checked on the simulator only)

    __device__ ReductionWalk(int byte, int cp_, int fw_count_, int fw_step_, int fh_step_)
        : cp(cp_), fw_count(fw_count_), fw_step(fw_step_), fh_step(fh_step_), kt(0) {
        const int r = byte / (int)sizeof(storage_t), tap = r / cp;  // k-tile 0
        c = r - tap * cp;
        fh = tap / fw_count;
        fw = tap - fh * fw_count;
        off = c + fw * fw_step + fh * fh_step;
    }

    __device__ void step(int kt_loaded) {
#ifndef __CUDA_ARCH__
        if (kt_loaded != kt++) __trap();  // a loader called out of order would read the wrong taps
#endif
        c += TC_KBYTES / (int)sizeof(storage_t);
        off += TC_KBYTES / (int)sizeof(storage_t);
        while (c >= cp) {
            c -= cp;
            off += fw_step - cp;
            if (++fw == fw_count) {
                fw = 0;
                ++fh;
                off += fh_step - fw_count * fw_step;
            }
        }
    }
};

// 16-byte pieces per thread of an mk stage of BM rows (4 pieces a row): 2 in TcTile64, TcTile128
// and the warpgroup tiles, 4 in TcTile128w (half the threads).
template <class S>
__device__ constexpr int tc_pieces() {
    static_assert(S::BM * 4 % S::THREADS == 0, "whole 16-byte pieces per thread");
    return S::BM * 4 / S::THREADS;
}

// The row of an mk stage that piece i of this thread fills.
template <class S>
__device__ inline int tc_piece_row(int i) {
    return (int)threadIdx.x / 4 + S::THREADS / 4 * i;
}

// Rounds this thread's pieces of a landed mk stage to TF32 in place, or checks them (Tf32Pass): the
// TF32 build's wgmma reads shared memory as it is, and so do the mma.sync tiles.
template <class S, Tf32Pass PASS>
__device__ inline void round_pieces_tf32(unsigned char* stage, const PieceOffsets<TC_KBYTES, S::THREADS / 4>& pieces) {
#pragma unroll
    for (int i = 0; i < tc_pieces<S>(); ++i) round_piece_tf32<PASS>(stage + pieces(i));
}

// Forward A: row m = (n, oh, ow) of the patch matrix of an NHWC input with Cp channels. A row's
// pieces are read at row_at (the address of its (fh, fw) = (0, 0) tap, which may lie outside the
// image: it is only read plus the walk's offset, and only where the tap is inside) plus the
// walk's offset of (fh, fw, c): one multiply-add per row and k-tile, the bounds tested unsigned.
template <class S>
struct PatchRows : AsyncLoader {
    const storage_t* x;
    int H, W, FH;
    static constexpr int P = tc_pieces<S>();
    PieceOffsets<TC_KBYTES, S::THREADS / 4> pieces;  // this thread's pieces in a stage
    const storage_t* row_at[P];  // x + ((n * H + ih0) * W + iw0) * Cp (x for rows past M)
    int ih0[P], iw0[P];     // oh * sh - ph, ow * sw - pw (a huge negative value for rows past M)
    mutable ReductionWalk walk;  // (fh, fw, c) of the next k-tile's piece

    __device__ PatchRows(const storage_t* x_, int m0, int M, int H_, int W_, int Cp, int FH_, int FW, int OH, int OW,
                         int sh, int sw, int ph, int pw)
        : x(x_), H(H_), W(W_), FH(FH_), pieces(tc_piece_row<S>(0), 16 * (threadIdx.x % 4)),
          walk(16 * (threadIdx.x % 4), Cp, FW, Cp, W_ * Cp) {
        for (int i = 0; i < P; ++i) {
            const int m = m0 + tc_piece_row<S>(i);
            const int n = m / (OH * OW), p = m - n * (OH * OW), oh = p / OW, ow = p - oh * OW;
            ih0[i] = m < M ? oh * sh - ph : -(1 << 30);
            iw0[i] = ow * sw - pw;
            row_at[i] = m < M ? x_ + (((index_t)n * H + ih0[i]) * W + iw0[i]) * Cp : x_;
        }
    }

    __device__ void load(unsigned char* stage, int kt, int) const {
        const int fh = walk.fh, fw = walk.fw, off = walk.off;
        walk.step(kt);
#pragma unroll
        for (int i = 0; i < P; ++i) {
            const bool ok = fh < FH && (unsigned)(ih0[i] + fh) < (unsigned)H && (unsigned)(iw0[i] + fw) < (unsigned)W;
            cp_async_cg(stage + pieces(i), ok ? row_at[i] + off : x, ok ? 16 : 0);
        }
    }
    template <Tf32Pass PASS>
    __device__ void round_tf32(unsigned char* stage) const { round_pieces_tf32<S, PASS>(stage, pieces); }
};

// A phase's GEMM row m = (n, i, j) as the row of dx it computes: the input pixel
// (r_h + sh i, r_w + sw j) of image n (the epilogue's row map, RowMajorStore).
struct PhaseRows {
    PhasePixel at;
    int H;
    __device__ index_t operator()(int m) const {
        int n;
        const int p = at(m, &n);
        return (index_t)n * H * at.W + p;
    }
};

// Backward-data A, one phase's row m = (n, i, j) of the gathered output gradient (the input pixel
// (r_h + sh i, r_w + sw j); with (I, J) = (i + q_h, j + q_w), the tap (fh', fw') of the phase reads
// dy[n, I - fh', J - fw'] where that exists), dy NHWC with Kp channels. Reads as PatchRows does:
// at row_at (dy at (I, J)) plus the walk's offset, which steps back OW * Kp per tap row and Kp per
// tap column. (PatchRows with the walk's direction reversed; one template of the two, the direction
// a parameter, cost tc128's data gradient a 12-byte spill at its 128 registers, ptxas 13.0.)
template <class S>
struct GradRows : AsyncLoader {
    const storage_t* dy;
    int OH, OW, FH;  // FH: the phase's tap rows
    static constexpr int P = tc_pieces<S>();
    PieceOffsets<TC_KBYTES, S::THREADS / 4> pieces;  // this thread's pieces in a stage
    const storage_t* row_at[P];  // dy + (n * OH * OW + I * OW + J) * Kp (dy for rows past M)
    int ihp[P], iwp[P];     // I, J (a huge negative value for rows past M)
    mutable ReductionWalk walk;  // (fh', fw', k) of the next k-tile's piece

    // H, W: the phase's rows and columns (StridePhase::size); FH, FW its taps; qh, qw: StridePhase::q.
    __device__ GradRows(const storage_t* dy_, int m0, int M, int H, int W, int Kp, int FH_, int FW, int OH_, int OW_,
                        int qh, int qw)
        : dy(dy_), OH(OH_), OW(OW_), FH(FH_),
          pieces(tc_piece_row<S>(0), 16 * (threadIdx.x % 4)),
          walk(16 * (threadIdx.x % 4), Kp, FW, -Kp, -OW_ * Kp) {
        for (int i = 0; i < P; ++i) {
            const int m = m0 + tc_piece_row<S>(i);
            const int n = m / (H * W), p = m - n * (H * W), ih = p / W, iw = p - ih * W;
            ihp[i] = m < M ? ih + qh : -(1 << 30);
            iwp[i] = iw + qw;
            row_at[i] = m < M ? dy_ + ((index_t)n * OH * OW + (index_t)ihp[i] * OW + iwp[i]) * Kp : dy_;
        }
    }

    __device__ void load(unsigned char* stage, int kt, int) const {
        const int fh = walk.fh, fw = walk.fw, off = walk.off;
        walk.step(kt);
#pragma unroll
        for (int i = 0; i < P; ++i) {
            const int oh = ihp[i] - fh, ow = iwp[i] - fw;
            const bool ok = fh < FH && (unsigned)oh < (unsigned)OH && (unsigned)ow < (unsigned)OW;
            cp_async_cg(stage + pieces(i), ok ? row_at[i] + off : dy, ok ? 16 : 0);
        }
    }
    template <Tf32Pass PASS>
    __device__ void round_tf32(unsigned char* stage) const { round_pieces_tf32<S, PASS>(stage, pieces); }
};

// An output position l = (n, oh, ow) walked forward by a fixed step of positions (a k-tile's)
// instead of divided out at each k-tile: the step's own digits (n, oh, ow) are divided out once,
// and each step adds them digit by digit with one carry each (every digit stays below its radix,
// so one subtraction suffices). The main loop loads k-tiles in order; the simulator checks it.
struct PositionStep {
    int n, oh, ow;
    __device__ PositionStep(int positions, int OH, int OW)
        : n(positions / (OH * OW)), oh(positions / OW % OH), ow(positions % OW) {}
};

struct PositionWalk {
    int oh, ow;
    const storage_t* src;  // the piece at the position: from its image's first element, (oh * sh * W + ow * sw) * Cp on
    int kt;  // the next k-tile (checked on the simulator only)

    __device__ PositionWalk() : oh(0), ow(0), src(nullptr), kt(0) {}
    // ``at0``: the piece at position 0 (its column's offset from the (0, 0) tap included).
    __device__ PositionWalk(int l, int OH, int OW, int W, int Cp, int sh, int sw, const storage_t* at0, index_t image)
        : kt(0) {
        const int n = l / (OH * OW), p = l - n * (OH * OW);
        oh = p / OW;
        ow = p - oh * OW;
        src = at0 + n * image + (oh * sh * W + ow * sw) * Cp;
    }

    // ``inc``: the elements the step itself moves, images included, and what a carry out of ow
    // and out of oh adds (see PatchColumns): a pointer carried, no multiply by the image size.
    __device__ void step(const PositionStep& d, int OH, int OW, const index_t inc[3], int kt_loaded) {
#ifndef __CUDA_ARCH__
        if (kt_loaded != kt++) __trap();  // a loader called out of order would read the wrong positions
#endif
        ow += d.ow;
        const int carry_w = ow >= OW;
        if (carry_w) ow -= OW;
        oh += d.oh + carry_w;
        const int carry_h = oh >= OH;
        if (carry_h) oh -= OH;
        src += inc[0] + (carry_w ? inc[1] : 0) + (carry_h ? inc[2] : 0);
    }
};

// PositionWalk::step's increments for a step `d` of positions over NHWC images of H x W x Cp
// (`image` elements): one position more in ow, oh moves sw * Cp, sh * W * Cp elements of the
// image; a carry out of ow trades OW of the first for one of the second, out of oh (into the next
// image) OH of the second for a whole image; the step's own images are whole images.
__device__ inline void position_increments(const PositionStep& d, int OH, int OW, int W, int Cp, int sh, int sw,
                                           index_t image, index_t inc[3]) {
    const int ew = sw * Cp, eh = sh * W * Cp;
    inc[0] = d.n * image + d.ow * ew + d.oh * eh;
    inc[1] = eh - OW * ew;
    inc[2] = image - (index_t)OH * eh;
}

// Backward-weight B, K-strided (16-bit): stage rows are the 32 positions l = (n, oh, ow) of a
// k-tile, BN columns r = (fh, fw, c) each; 4 * BN pieces, P per thread: the thread's column
// (one filter tap, 8 channels) is fixed, its rows are t / (BN / 8) and every 32 / P rows further.
template <class S>
struct PatchColumns : AsyncLoader {
    static constexpr int PER_ROW = S::BN / 8;  // 16-byte pieces per stage row
    static constexpr int P = TC_KM_ROWS * PER_ROW / S::THREADS;  // pieces per thread
    const storage_t* x;
    int H, W, OH, OW, sh, sw;
    int l0, l_end;          // this split's positions
    PieceOffsets<2 * S::BN, TC_KM_ROWS / P> pieces;  // this thread's pieces in a stage
    int fh, fw;             // this thread's column's tap, less the padding: ih = oh * sh + fh
    bool col_ok;
    PositionStep step;      // a k-tile's TC_KM_ROWS positions
    index_t inc[3];         // a k-tile's step in elements, the carries' corrections
    mutable PositionWalk at[P];  // the positions of this thread's rows in the next k-tile

    __device__ PatchColumns(const storage_t* x_, int n0, int H_, int W_, int Cp, int FH, int FW_, int OH_, int OW_,
                            int sh_, int sw_, int ph, int pw, int l0_, int l_end_)
        : x(x_), H(H_), W(W_), OH(OH_), OW(OW_), sh(sh_), sw(sw_), l0(l0_), l_end(l_end_),
          pieces(row(0), 16 * (threadIdx.x % PER_ROW)), step(TC_KM_ROWS, OH_, OW_) {
        static_assert(TC_KM_ROWS * PER_ROW % S::THREADS == 0, "whole 16-byte pieces per thread");
        const int r = n0 + pieces.byte / (int)sizeof(storage_t);
        const int tap = r / Cp, c = r - tap * Cp;
        fh = tap / FW_;
        fw = tap - fh * FW_;
        col_ok = fh < FH;
        fh -= ph;  // folded: ih = oh * sh + fh
        fw -= pw;
        const index_t image = (index_t)H_ * W_ * Cp;  // elements per image
        // (fh * W + fw) * Cp + c: the column's offset from the position's (0, 0) tap
        for (int i = 0; i < P; ++i)
            at[i] = PositionWalk(l0_ + row(i), OH_, OW_, W_, Cp, sh_, sw_, x_ + ((fh * W_ + fw) * Cp + c), image);
        position_increments(step, OH_, OW_, W_, Cp, sh_, sw_, image, inc);
    }

    __device__ static int row(int i) { return (int)threadIdx.x / PER_ROW + TC_KM_ROWS / P * i; }

    __device__ void load(unsigned char* stage, int kt, int) const {
#pragma unroll
        for (int i = 0; i < P; ++i) {
            const int l = l0 + kt * TC_KM_ROWS + row(i);
            const int ih = at[i].oh * sh + fh, iw = at[i].ow * sw + fw;
            const storage_t* src = at[i].src;
            at[i].step(step, OH, OW, inc, kt);
            const bool ok = col_ok && l < l_end && (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W;
            cp_async_cg(stage + pieces(i), ok ? src : x, ok ? 16 : 0);
        }
    }
};

// The TF32 weight gradient's operands, transposed as they are staged. ldmatrix.trans moves 16-bit
// elements only, so for float data the K-strided operands are turned K-contiguous on the way into
// shared memory: each thread loads 4 consecutive floats of one position l (channels, contiguous in
// NHWC) and stores them down a column of an mk stage (BM rows x 16 positions; 4 * BM pieces, P
// per thread: position t % 16, rows 4 * (t / 16) + i * THREADS / 4). These are plain loads
// and stores, not cp.async, in two halves (ColumnPieces): load() issues the global loads into
// registers before the k-tile being multiplied, land() stores them after it, so that the loads'
// latency passes behind the mmas instead of stalling the stores. The stage is written two k-tiles
// before it is read, and the main loop's barrier at that k-tile orders the stores before the
// fragment reads, as it orders cp.async data.
#define TC_TF32_POSITIONS (TC_KBYTES / 4)   // positions l per k-tile: 16

template <class S>
__device__ inline int tc_column_row(int i) {
    return 4 * ((int)threadIdx.x / TC_TF32_POSITIONS) + S::THREADS / 4 * i;
}

// Where a thread's 4 floats of piece i go: rows tc_column_row(i) + j (j < 4) of its column `pos`,
// stored as they are: the launcher rounded dy and x to TF32 (Prerounded; on the simulator each
// value stored is checked to be one). The four rows' swizzled offsets are computed once; the
// pieces lie THREADS / 4 rows apart, a multiple of 8, so in the same swizzle phase (checked on the
// simulator against stage_offset).
template <class S>
struct ColumnOffsets {
    static_assert(S::THREADS / 4 % 8 == 0, "pieces 8 rows apart share the swizzle's phase");
    int at[4], pos;
    __device__ explicit ColumnOffsets(int pos_) : pos(pos_) {
        for (int j = 0; j < 4; ++j) at[j] = stage_offset<TC_KBYTES>(tc_column_row<S>(0) + j, 4 * pos_);
    }
    __device__ void store(unsigned char* stage, int i, const float v[4]) const {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int off = at[j] + i * (S::THREADS / 4) * TC_KBYTES;
#ifndef __CUDA_ARCH__
            if (off != stage_offset<TC_KBYTES>(tc_column_row<S>(i) + j, 4 * pos)) __trap();
#endif
#ifndef __CUDA_ARCH__
            check_tf32(v[j]);
#endif
            *(float*)(stage + off) = v[j];
        }
    }
};

// A transposed loader's P pieces of the k-tile in flight, in registers between its load() and its
// land(), which stores them down their columns.
template <class S, int P>
struct ColumnPieces {
    ColumnOffsets<S> cols;
    mutable float v[P][4];
    __device__ explicit ColumnPieces(int pos) : cols(pos) {}
    __device__ void land(unsigned char* stage) const {
#pragma unroll
        for (int i = 0; i < P; ++i) cols.store(stage, i, v[i]);
    }
    template <Tf32Pass>
    __device__ void round_tf32(unsigned char*) const {}  // checked as stored (ColumnOffsets::store)
};

// A = dY^T: rows m are the output channels k, read from dy NHWC [L][K] at this thread's position
// l (carried from k-tile to k-tile, as its row's address): VEC4 (K a multiple of 4, dy 16-byte
// aligned) loads a piece's 4 channels at once, else one by one.
template <class S, bool VEC4>
struct TransposedGradRows : ColumnPieces<S, tc_pieces<S>()> {
    const float* dy;
    int K, m0, l_end;
    mutable int l;             // this thread's position in the next k-tile
    mutable const float* at;   // dy + l * K + m0
    mutable int kt;            // the next k-tile (checked on the simulator only)

    __device__ TransposedGradRows(const float* dy_, int K_, int m0_, int l0, int l_end_)
        : ColumnPieces<S, tc_pieces<S>()>(threadIdx.x % TC_TF32_POSITIONS), dy(dy_), K(K_), m0(m0_), l_end(l_end_),
          l(l0 + (int)threadIdx.x % TC_TF32_POSITIONS), at(dy_ + (index_t)l * K_ + m0_), kt(0) {}

    __device__ void load(unsigned char*, int kt_loaded, int) const {
#ifndef __CUDA_ARCH__
        if (kt_loaded != kt++) __trap();  // the carried position needs the order
#else
        (void)kt_loaded;
#endif
        const bool in = l < l_end;
#pragma unroll
        for (int i = 0; i < tc_pieces<S>(); ++i) {
            const int row = tc_column_row<S>(i);
            float* v = this->v[i];
            v[0] = v[1] = v[2] = v[3] = 0.0f;
            if (VEC4) {
                if (in && m0 + row < K) {
                    const float4 f = *(const float4*)(at + row);
                    v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
                }
            } else {
                for (int j = 0; j < 4; ++j)
                    if (in && m0 + row + j < K) v[j] = at[row + j];
            }
        }
        l += TC_TF32_POSITIONS;
        at += (index_t)TC_TF32_POSITIONS * K;
    }
};

// B = P: rows n are the patch columns r = (fh, fw, c) (4 consecutive channels of one tap, 16-byte
// aligned since Cp is a multiple of 4: one float4), read at the position's input pixel; the
// position is walked from k-tile to k-tile (PositionWalk, as the 16-bit builds' PatchColumns).
template <class S>
struct TransposedPatchRows : ColumnPieces<S, S::BN * 4 / S::THREADS> {
    const float* x;
    int H, W, OH, OW, sh, sw, l_end;
    static constexpr int P = S::BN * 4 / S::THREADS;  // B's BN rows, 4 per thread and round
    int fh[P], fw[P];       // this thread's column groups' taps, folded with the padding
    int col_off[P];         // (fh * W + fw) * Cp + c: their offsets from the position's (0, 0) tap
    bool ok[P];
    PositionStep step;      // a k-tile's TC_TF32_POSITIONS positions
    index_t inc[3];
    mutable int l;          // this thread's position in the next k-tile
    mutable PositionWalk at;

    __device__ TransposedPatchRows(const float* x_, int n0, int H_, int W_, int Cp, int FH, int FW, int OH_, int OW_,
                                   int sh_, int sw_, int ph, int pw, int l0, int l_end_)
        : ColumnPieces<S, S::BN * 4 / S::THREADS>(threadIdx.x % TC_TF32_POSITIONS), x(x_), H(H_), W(W_), OH(OH_),
          OW(OW_), sh(sh_), sw(sw_), l_end(l_end_), step(TC_TF32_POSITIONS, OH_, OW_),
          l(l0 + (int)threadIdx.x % TC_TF32_POSITIONS) {
        for (int i = 0; i < P; ++i) {
            const int r = n0 + tc_column_row<S>(i), tap = r / Cp, c = r - tap * Cp;
            fh[i] = tap / FW;
            fw[i] = tap - fh[i] * FW;
            ok[i] = fh[i] < FH;
            fh[i] -= ph;
            fw[i] -= pw;
            col_off[i] = (fh[i] * W_ + fw[i]) * Cp + c;
        }
        const index_t image = (index_t)H_ * W_ * Cp;
        at = PositionWalk(l, OH_, OW_, W_, Cp, sh_, sw_, x_, image);
        position_increments(step, OH_, OW_, W_, Cp, sh_, sw_, image, inc);
    }

    __device__ void load(unsigned char*, int kt, int) const {
        const int oh = at.oh, ow = at.ow;
        const float* pixel = at.src;
        at.step(step, OH, OW, inc, kt);
        const bool in = l < l_end;
        l += TC_TF32_POSITIONS;
#pragma unroll
        for (int i = 0; i < P; ++i) {
            const int ih = oh * sh + fh[i], iw = ow * sw + fw[i];
            float* v = this->v[i];
            v[0] = v[1] = v[2] = v[3] = 0.0f;
            if (ok[i] && in && (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W) {
                const float4 f = *(const float4*)(pixel + col_off[i]);
                v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
            }
        }
    }
};

// ------------------------------------------------------------------------------------------
// The kernels' bodies, per tile shape. In the TF32 build every direction takes operands the
// launcher rounded (conv2d_tc_round_tf32 below): their loops round nothing (Prerounded).
typedef Prerounded<TensorCoreOp<storage_t> > ConvOp;
template <class S>
__device__ void conv2d_forward_tc_body(const storage_t* x, const storage_t* w, const storage_t* b, storage_t* y, int N,
                                       int Cp, int H, int W, int K, int FH, int FW, int OH, int OW, int sh, int sw,
                                       int ph, int pw, int has_bias, int relu) {
    TC_DECLARE_STAGES(S, As, Bs);
    const int M = N * OH * OW, R = FH * FW * Cp;
    const int m0 = blockIdx.x * S::BM, n0 = blockIdx.y * S::BN;
    const int rbytes = R * (int)sizeof(storage_t);
    PatchRows<S> la(x, m0, M, H, W, Cp, FH, FW, OH, OW, sh, sw, ph, pw);
    DenseTileLoader<S::BN, TC_KBYTES, S::THREADS> lb((const unsigned char*)(w + (index_t)n0 * R), rbytes, K - n0,
                                                     rbytes);
    float acc[S::MI][S::NI][4] = {};
    const int ktiles = (rbytes + TC_KBYTES - 1) / TC_KBYTES;
    // (Guarded: told that the loop runs, the compiler keeps its invariants, the stages' shared
    // addresses and the arguments it reads, out of it: sm_90 SASS per k-tile, tc128 150 -> 142,
    // tcwg 119 -> 110. The weight gradient's loop spills under the same guard: not there.)
    if (ktiles > 0) tc_gemm_mainloop<S, ConvOp, FragA<S>, FragB_nt<S>>(la, lb, ktiles, 16, 16, As, Bs, acc);
    tc_gemm_epilogue<S>(RowMajorStore<storage_t>{y, has_bias ? b : nullptr, M, K, relu}, m0, n0, acc);  // y, NHWC
}

template <class S>
__device__ void conv2d_backward_data_tc_body(const storage_t* dy, const storage_t* wt, storage_t* dx, int N, int C,
                                             int H, int W, int Kp, int FH, int FW, int OH, int OW, int sh, int sw,
                                             int ph, int pw) {
    TC_DECLARE_STAGES(S, As, Bs);
    const StridePhase rows(blockIdx.z / sw, H, FH, sh, ph), cols(blockIdx.z % sw, W, FW, sw, pw);
    const int M = N * rows.size * cols.size, L = rows.taps * cols.taps * Kp;
    const int m0 = blockIdx.x * S::BM, n0 = blockIdx.y * S::BN;
    if (m0 >= M) return;  // (the grid's rows are the largest phase's)
    float acc[S::MI][S::NI][4] = {};
    if (L > 0) {  // (else no tap reaches the phase: its dx is 0)
        const int es = (int)sizeof(storage_t), lbytes = L * es, filter = FH * FW * Kp;
        DenseTileLoader<S::BN, TC_KBYTES, S::THREADS> lb(
            (const unsigned char*)(wt + (index_t)n0 * filter + (rows.first * FW + rows.taps * cols.first) * Kp),
            (long long)filter * es, C - n0, lbytes);
        GradRows<S> la(dy, m0, M, rows.size, cols.size, Kp, rows.taps, cols.taps, OH, OW, rows.q, cols.q);
        tc_gemm_mainloop<S, ConvOp, FragA<S>, FragB_nt<S>>(la, lb, (lbytes + TC_KBYTES - 1) / TC_KBYTES, 16, 16, As,
                                                            Bs, acc);
    }
    if (sh == 1 && sw == 1)
        tc_gemm_epilogue<S>(RowMajorStore<storage_t>{dx, nullptr, M, C, 0}, m0, n0, acc);  // dx, NHWC
    else  // the phase's rows, (rows.r + sh i, cols.r + sw j) of each image
        tc_gemm_epilogue<S>(RowMajorStore<storage_t, PhaseRows>{dx, nullptr, M, C, 0,
                                                                PhaseRows{PhasePixel{rows.size * cols.size, cols.size, W,
                                                                                     sh, sw, rows.r, cols.r}, H}},
                            m0, n0, acc);
}

template <class S>
__device__ void conv2d_backward_weight_tc_body(const storage_t* dy, const storage_t* x, float* ws, int N, int Cp,
                                               int H, int W, int K, int FH, int FW, int OH, int OW, int sh, int sw,
                                               int ph, int pw, int chunk, int vec_dy) {
    TC_DECLARE_STAGES(S, As, Bs);
    const int L = N * OH * OW, R = FH * FW * Cp;
    const int m0 = blockIdx.x * S::BM, n0 = blockIdx.y * S::BN;
    const int l0 = blockIdx.z * chunk, l_end = imin(L, l0 + chunk);
    const int es = (int)sizeof(storage_t);
    float acc[S::MI][S::NI][4] = {};
    const int ktiles = imax((l_end - l0 + TC_KBYTES / es - 1) / (TC_KBYTES / es), 0);
#if GPUCONV_TF32
    TransposedPatchRows<S> lb(x, n0, H, W, Cp, FH, FW, OH, OW, sh, sw, ph, pw, l0, l_end);
    if (vec_dy == 16 && K % 4 == 0) {  // a piece's 4 channels of dy in one 16-byte load
        TransposedGradRows<S, true> la(dy, K, m0, l0, l_end);
        tc_gemm_mainloop<S, ConvOp, FragA<S>, FragB_nt<S>>(la, lb, ktiles, 0, 0, As, Bs, acc);
    } else {
        TransposedGradRows<S, false> la(dy, K, m0, l0, l_end);
        tc_gemm_mainloop<S, ConvOp, FragA<S>, FragB_nt<S>>(la, lb, ktiles, 0, 0, As, Bs, acc);
    }
#else
    DenseTileLoader<TC_KM_ROWS, 2 * S::BM, S::THREADS> la((const unsigned char*)(dy + (index_t)l0 * K + m0),
                                                          (long long)K * es, l_end - l0, (K - m0) * es);
    PatchColumns<S> lb(x, n0, H, W, Cp, FH, FW, OH, OW, sh, sw, ph, pw, l0, l_end);
    if (vec_dy == 16 && K * es % 16 == 0)  // channel counts that are multiples of 8: only 16-byte copies
        tc_gemm_mainloop<S, ConvOp, FragA_km<S>, FragB_nn<S>>(la, lb, ktiles, 16, 16, As, Bs, acc);
    else
        tc_gemm_mainloop<S, ConvOp, FragA_km<S>, FragB_nn<S>>(la, lb, ktiles, imin(vec_dy, 8), 16, As,
                                                                                Bs, acc);
#endif
    // the split's float32 partial sums of dW, [K][R]
    tc_gemm_epilogue<S>(RowMajorStore<float>{ws + (index_t)blockIdx.z * K * R, nullptr, K, R, 0}, m0, n0, acc);
}

// ------------------------------------------------------------------------------------------
// Entry points: one per direction and tile shape (written out: the simulator reads the kernels'
// signatures from this text), trapping in the builds without a tensor-core format.
#if GPUCONV_TENSOR_CORES
#define TC_BODY(call) call
#else
#define TC_BODY(call) __trap()
#endif

extern "C" __global__ void __launch_bounds__(TcTile64::THREADS)
conv2d_forward_tc(const storage_t* x, const storage_t* w, const storage_t* b, storage_t* y, int N, int Cp,
    int H, int W, int K, int FH, int FW, int OH, int OW, int sh, int sw, int ph, int pw, int has_bias, int relu) {
    TC_BODY((conv2d_forward_tc_body<TcTile64>(x, w, b, y, N, Cp, H, W, K, FH, FW, OH, OW, sh, sw, ph, pw, has_bias,
                                            relu)));
}

extern "C" __global__ void __launch_bounds__(TcTile64::THREADS)
conv2d_backward_data_tc(const storage_t* dy, const storage_t* wt, storage_t* dx, int N, int C, int H, int W,
    int Kp, int FH, int FW, int OH, int OW, int sh, int sw, int ph, int pw) {
    TC_BODY((conv2d_backward_data_tc_body<TcTile64>(dy, wt, dx, N, C, H, W, Kp, FH, FW, OH, OW, sh, sw, ph, pw)));
}

// vec_dy: the bytes each copy of dy moves in the 16-bit builds (16, 8, 4 or 2: the largest dividing
// K * sizeof and dy's address; dy needs no channel padding, it is read as a dense [L][K] matrix).
extern "C" __global__ void __launch_bounds__(TcTile64::THREADS)
conv2d_backward_weight_tc(const storage_t* dy, const storage_t* x, float* ws, int N, int Cp, int H, int W,
    int K, int FH, int FW, int OH, int OW, int sh, int sw, int ph, int pw, int chunk, int vec_dy) {
    TC_BODY((conv2d_backward_weight_tc_body<TcTile64>(dy, x, ws, N, Cp, H, W, K, FH, FW, OH, OW, sh, sw, ph, pw, chunk,
                                                    vec_dy)));
}

extern "C" __global__ void __launch_bounds__(TcTile128::THREADS)
conv2d_forward_tc128(const storage_t* x, const storage_t* w, const storage_t* b, storage_t* y, int N, int Cp,
    int H, int W, int K, int FH, int FW, int OH, int OW, int sh, int sw, int ph, int pw, int has_bias, int relu) {
    TC_BODY((conv2d_forward_tc_body<TcTile128>(x, w, b, y, N, Cp, H, W, K, FH, FW, OH, OW, sh, sw, ph, pw, has_bias,
                                            relu)));
}

extern "C" __global__ void __launch_bounds__(TcTile128::THREADS)
conv2d_backward_data_tc128(const storage_t* dy, const storage_t* wt, storage_t* dx, int N, int C, int H, int W,
    int Kp, int FH, int FW, int OH, int OW, int sh, int sw, int ph, int pw) {
    TC_BODY((conv2d_backward_data_tc_body<TcTile128>(dy, wt, dx, N, C, H, W, Kp, FH, FW, OH, OW, sh, sw, ph, pw)));
}

// vec_dy: the bytes each copy of dy moves in the 16-bit builds (16, 8, 4 or 2: the largest dividing
// K * sizeof and dy's address; dy needs no channel padding, it is read as a dense [L][K] matrix).
// Bounded to 2 blocks per SM (128 registers a thread): unbounded, ptxas spends up to 168 on this
// loop (the TF32 build, whose loads stay in registers across the mmas, and the 16-bit builds
// alike) and the SM holds one block of 8 warps. (The bound on the other two spills them.) Not on
// sm_75, whose SM holds 64 KiB of shared memory: every 128x128 tile runs one block per SM there,
// and bounded this one spilled 140 bytes.
#if GPUCONV_MMA_SM75
#define TC128_WEIGHT_MIN_BLOCKS 1
#else
#define TC128_WEIGHT_MIN_BLOCKS 2
#endif
extern "C" __global__ void __launch_bounds__(TcTile128::THREADS, TC128_WEIGHT_MIN_BLOCKS)
conv2d_backward_weight_tc128(const storage_t* dy, const storage_t* x, float* ws, int N, int Cp, int H, int W,
    int K, int FH, int FW, int OH, int OW, int sh, int sw, int ph, int pw, int chunk, int vec_dy) {
    TC_BODY((conv2d_backward_weight_tc_body<TcTile128>(dy, x, ws, N, Cp, H, W, K, FH, FW, OH, OW, sh, sw, ph, pw, chunk,
                                                    vec_dy)));
}

extern "C" __global__ void __launch_bounds__(TcTile128w::THREADS)
conv2d_forward_tc128w(const storage_t* x, const storage_t* w, const storage_t* b, storage_t* y, int N, int Cp,
    int H, int W, int K, int FH, int FW, int OH, int OW, int sh, int sw, int ph, int pw, int has_bias, int relu) {
    TC_BODY((conv2d_forward_tc_body<TcTile128w>(x, w, b, y, N, Cp, H, W, K, FH, FW, OH, OW, sh, sw, ph, pw, has_bias,
                                             relu)));
}

extern "C" __global__ void __launch_bounds__(TcTile128w::THREADS)
conv2d_backward_data_tc128w(const storage_t* dy, const storage_t* wt, storage_t* dx, int N, int C, int H, int W,
    int Kp, int FH, int FW, int OH, int OW, int sh, int sw, int ph, int pw) {
    TC_BODY((conv2d_backward_data_tc_body<TcTile128w>(dy, wt, dx, N, C, H, W, Kp, FH, FW, OH, OW, sh, sw, ph, pw)));
}

// vec_dy: the bytes each copy of dy moves in the 16-bit builds (16, 8, 4 or 2: the largest dividing
// K * sizeof and dy's address; dy needs no channel padding, it is read as a dense [L][K] matrix).
extern "C" __global__ void __launch_bounds__(TcTile128w::THREADS)
conv2d_backward_weight_tc128w(const storage_t* dy, const storage_t* x, float* ws, int N, int Cp, int H, int W,
    int K, int FH, int FW, int OH, int OW, int sh, int sw, int ph, int pw, int chunk, int vec_dy) {
    TC_BODY((conv2d_backward_weight_tc_body<TcTile128w>(dy, x, ws, N, Cp, H, W, K, FH, FW, OH, OW, sh, sw, ph, pw,
                                                     chunk, vec_dy)));
}

// The warpgroup (wgmma) tiles: the tensor-core builds (bf16, fp16, TF32) for sm_90a and the
// simulator only.
#if GPUCONV_TENSOR_CORES && GPUCONV_WGMMA
#define TCWG_BODY(call) call
#else
#define TCWG_BODY(call) __trap()
#endif

extern "C" __global__ void __launch_bounds__(TcTileWg::THREADS)
conv2d_forward_tcwg(const storage_t* x, const storage_t* w, const storage_t* b, storage_t* y, int N, int Cp,
    int H, int W, int K, int FH, int FW, int OH, int OW, int sh, int sw, int ph, int pw, int has_bias, int relu) {
    TCWG_BODY((conv2d_forward_tc_body<TcTileWg>(x, w, b, y, N, Cp, H, W, K, FH, FW, OH, OW, sh, sw, ph, pw, has_bias,
                                              relu)));
}

extern "C" __global__ void __launch_bounds__(TcTileWg::THREADS)
conv2d_backward_data_tcwg(const storage_t* dy, const storage_t* wt, storage_t* dx, int N, int C, int H, int W,
    int Kp, int FH, int FW, int OH, int OW, int sh, int sw, int ph, int pw) {
    TCWG_BODY((conv2d_backward_data_tc_body<TcTileWg>(dy, wt, dx, N, C, H, W, Kp, FH, FW, OH, OW, sh, sw, ph, pw)));
}

// vec_dy: the bytes each copy of dy moves in the 16-bit builds (16, 8, 4 or 2: the largest dividing
// K * sizeof and dy's address; dy needs no channel padding, it is read as a dense [L][K] matrix).
extern "C" __global__ void __launch_bounds__(TcTileWg::THREADS)
conv2d_backward_weight_tcwg(const storage_t* dy, const storage_t* x, float* ws, int N, int Cp, int H, int W,
    int K, int FH, int FW, int OH, int OW, int sh, int sw, int ph, int pw, int chunk, int vec_dy) {
    TCWG_BODY((conv2d_backward_weight_tc_body<TcTileWg>(dy, x, ws, N, Cp, H, W, K, FH, FW, OH, OW, sh, sw, ph, pw,
                                                      chunk, vec_dy)));
}

extern "C" __global__ void __launch_bounds__(TcTileWg256::THREADS)
conv2d_forward_tcwg256(const storage_t* x, const storage_t* w, const storage_t* b, storage_t* y, int N, int Cp,
    int H, int W, int K, int FH, int FW, int OH, int OW, int sh, int sw, int ph, int pw, int has_bias, int relu) {
    TCWG_BODY((conv2d_forward_tc_body<TcTileWg256>(x, w, b, y, N, Cp, H, W, K, FH, FW, OH, OW, sh, sw, ph, pw,
                                                 has_bias, relu)));
}

extern "C" __global__ void __launch_bounds__(TcTileWg256::THREADS)
conv2d_backward_data_tcwg256(const storage_t* dy, const storage_t* wt, storage_t* dx, int N, int C, int H, int W,
    int Kp, int FH, int FW, int OH, int OW, int sh, int sw, int ph, int pw) {
    TCWG_BODY((conv2d_backward_data_tc_body<TcTileWg256>(dy, wt, dx, N, C, H, W, Kp, FH, FW, OH, OW, sh, sw, ph, pw)));
}

// vec_dy: the bytes each copy of dy moves in the 16-bit builds (16, 8, 4 or 2: the largest dividing
// K * sizeof and dy's address; dy needs no channel padding, it is read as a dense [L][K] matrix).
extern "C" __global__ void __launch_bounds__(TcTileWg256::THREADS)
conv2d_backward_weight_tcwg256(const storage_t* dy, const storage_t* x, float* ws, int N, int Cp, int H, int W,
    int K, int FH, int FW, int OH, int OW, int sh, int sw, int ph, int pw, int chunk, int vec_dy) {
    TCWG_BODY((conv2d_backward_weight_tc_body<TcTileWg256>(dy, x, ws, N, Cp, H, W, K, FH, FW, OH, OW, sh, sw, ph, pw,
                                                         chunk, vec_dy)));
}

extern "C" __global__ void __launch_bounds__(TcTileWgN64::THREADS)
conv2d_forward_tcwgn64(const storage_t* x, const storage_t* w, const storage_t* b, storage_t* y, int N, int Cp,
    int H, int W, int K, int FH, int FW, int OH, int OW, int sh, int sw, int ph, int pw, int has_bias, int relu) {
    TCWG_BODY((conv2d_forward_tc_body<TcTileWgN64>(x, w, b, y, N, Cp, H, W, K, FH, FW, OH, OW, sh, sw, ph, pw,
                                                has_bias, relu)));
}

extern "C" __global__ void __launch_bounds__(TcTileWgN64::THREADS)
conv2d_backward_data_tcwgn64(const storage_t* dy, const storage_t* wt, storage_t* dx, int N, int C, int H, int W,
    int Kp, int FH, int FW, int OH, int OW, int sh, int sw, int ph, int pw) {
    TCWG_BODY((conv2d_backward_data_tc_body<TcTileWgN64>(dy, wt, dx, N, C, H, W, Kp, FH, FW, OH, OW, sh, sw, ph, pw)));
}

// vec_dy: the bytes each copy of dy moves in the 16-bit builds (16, 8, 4 or 2: the largest dividing
// K * sizeof and dy's address; dy needs no channel padding, it is read as a dense [L][K] matrix).
extern "C" __global__ void __launch_bounds__(TcTileWgN64::THREADS)
conv2d_backward_weight_tcwgn64(const storage_t* dy, const storage_t* x, float* ws, int N, int Cp, int H, int W,
    int K, int FH, int FW, int OH, int OW, int sh, int sw, int ph, int pw, int chunk, int vec_dy) {
    TCWG_BODY((conv2d_backward_weight_tc_body<TcTileWgN64>(dy, x, ws, N, Cp, H, W, K, FH, FW, OH, OW, sh, sw, ph, pw,
                                                        chunk, vec_dy)));
}

extern "C" __global__ void __launch_bounds__(TcTileWgM64::THREADS)
conv2d_forward_tcwgm64(const storage_t* x, const storage_t* w, const storage_t* b, storage_t* y, int N, int Cp,
    int H, int W, int K, int FH, int FW, int OH, int OW, int sh, int sw, int ph, int pw, int has_bias, int relu) {
    TCWG_BODY((conv2d_forward_tc_body<TcTileWgM64>(x, w, b, y, N, Cp, H, W, K, FH, FW, OH, OW, sh, sw, ph, pw,
                                                has_bias, relu)));
}

extern "C" __global__ void __launch_bounds__(TcTileWgM64::THREADS)
conv2d_backward_data_tcwgm64(const storage_t* dy, const storage_t* wt, storage_t* dx, int N, int C, int H, int W,
    int Kp, int FH, int FW, int OH, int OW, int sh, int sw, int ph, int pw) {
    TCWG_BODY((conv2d_backward_data_tc_body<TcTileWgM64>(dy, wt, dx, N, C, H, W, Kp, FH, FW, OH, OW, sh, sw, ph, pw)));
}

// vec_dy: the bytes each copy of dy moves in the 16-bit builds (16, 8, 4 or 2: the largest dividing
// K * sizeof and dy's address; dy needs no channel padding, it is read as a dense [L][K] matrix).
extern "C" __global__ void __launch_bounds__(TcTileWgM64::THREADS)
conv2d_backward_weight_tcwgm64(const storage_t* dy, const storage_t* x, float* ws, int N, int Cp, int H, int W,
    int K, int FH, int FW, int OH, int OW, int sh, int sw, int ph, int pw, int chunk, int vec_dy) {
    TCWG_BODY((conv2d_backward_weight_tc_body<TcTileWgM64>(dy, x, ws, N, Cp, H, W, K, FH, FW, OH, OW, sh, sw, ph, pw,
                                                        chunk, vec_dy)));
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
conv2d_tc_weight_reduce(const float* ws, storage_t* dw, float* dw32, int widen, int splits, int K, int C, int Cp,
                        int FH, int FW) {
    const index_t taps = (index_t)FH * FW, count = (index_t)K * C * taps, slice = (index_t)K * taps * Cp;
    for (index_t e = global_thread_index(); e < count; e += global_thread_count()) {
        const index_t tap = e % taps, kc = e / taps, c = kc % C, k = kc / C;
        const index_t at = (k * taps + tap) * Cp + c;
        float s = 0.0f;
        for (int z = 0; z < splits; ++z) s += ws[z * slice + at];
        const storage_t rounded = storage_from(s, (storage_t*)0);
        if (widen)
            dw32[e] = (float)to_acc(rounded);
        else
            dw[e] = rounded;
    }
}


// dst = src rounded to TF32 (tf32_operand: to nearest, ties away from zero, a NaN kept a NaN, the
// 13 low bits cleared), over up to two arrays a launch: the two operands of a TF32 launch (the
// NHWC activations or output gradient and the packed filters; the weight gradient's output
// gradient and activations), which the tiles read as they are (Prerounded). n0, n1: elements
// (multiples of 4 where the channels are padded to whole pieces; the weight gradient's dy is not,
// K channels of any count: the tail), the arrays 16-byte aligned; dst may be src (in place). Grid
// (blocks, 1 or 2): blockIdx.y picks the array, grid-stride over its float4s (and a tail of up to
// 3 elements). Traps in the builds other than TF32, which have nothing to round.
__device__ void round_tf32_one(const storage_t* src, storage_t* dst, long long n) {
    const index_t quads = (index_t)(n / 4);
    for (index_t e = global_thread_index(); e < quads; e += global_thread_count()) {
        float4 v = ((const float4*)src)[e];
        v.x = tf32_operand(v.x), v.y = tf32_operand(v.y), v.z = tf32_operand(v.z), v.w = tf32_operand(v.w);
        ((float4*)dst)[e] = v;
    }
    const index_t e = 4 * quads + global_thread_index();
    if (e < n) dst[e] = from_acc(tf32_operand(to_acc(src[e])));
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
conv2d_tc_round_tf32(const storage_t* s0, storage_t* d0, long long n0, const storage_t* s1, storage_t* d1,
                     long long n1) {
#if GPUCONV_TF32
    if (blockIdx.y == 0)
        round_tf32_one(s0, d0, n0);
    else
        round_tf32_one(s1, d1, n1);
#else
    (void)s0, (void)d0, (void)n0, (void)s1, (void)d1, (void)n1;
    __trap();
#endif
}
