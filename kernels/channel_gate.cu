// channel_gate.cu: channel gating, y = gate * x, with one gate value per sample and channel: x is
// N x C x H x W, NCHW or channels_last (NHWC memory; the flag `cl`), gate N x C (the (N, C, 1, 1)
// array's memory, the same in either layout); gpuconv.ops.channel_gate's semantics (the output of
// a squeeze-and-excitation block).
//
//   channel_gate_forward        y = gate[n, c] * x
//   channel_gate_backward_gate  dgate[n, c] = the sum over H, W of dy * x
//   channel_gate_backward_data  dx = dy * gate[n, c] + add, add one of: none (mode 0); an array
//                               of x's shape and layout (mode 1); the backward of a global average
//                               pool, pooled[n, c] * (acc_t)spread rounded to storage_t as
//                               avg_pool2d_backward rounds it (a zero as +0.0), at every pixel of
//                               plane (n, c) (mode 2: no full-size array is made for it)
//
// Element types (common.cuh): every array is storage_t; products and sums are formed in acc_t
// (float32 for bfloat16/float16/float32, double for float64), each product rounded on its own
// (mul_rn: no FMA contraction), each output rounded once to storage_t: one pass over memory per
// kernel, where the array form made float32 copies of x, the gate and the product first.
//
// Kernels, launch shapes (gpuconv/ops/_launch_channel_gate.py):
//   forward, backward_data   grids of GPUCONV_BLOCK threads, (x, y) = (a stride over an image's
//                            C * H * W elements, one per thread and step, in memory order: x's
//                            layout; the images), about 32 blocks per SM in all; the element's
//                            channel by one 32-bit division.
//   backward_gate            one fixed order of the H * W products per (n, c), the same in both
//                            layouts (so the same bits): lane l of 32 adds the products of pixels
//                            l, l + 32, l + 64, ... in order onto +0.0, then an xor-shuffle tree
//                            over the 32 lanes (lanes 0-15 + lanes 16-31, then 0-7 + 8-15, ...),
//                            rounded once. NCHW: a warp per plane (8 planes per block), the lanes
//                            read 32 adjacent pixels. NHWC: a block per (n, 32 channels), lane =
//                            channel (a warp reads 32 adjacent channels of one pixel), warp w
//                            holds the partial sums of lanes w, w + 8, w + 16, w + 24; the tree
//                            runs over those 32 sums in shared memory, one thread per channel.
//                            Deterministic (no atomics); the NumPy reference
//                            (gpuconv/ops/channel_gate.py, _gate_sums) adds in this order too.
// Memory indices are 64-bit; C * H * W and N * C are int (the launcher declines more).
//
// Resources per kernel and build (ptxas of CUDA 13.0 for sm_90, the registry's NVRTC options;
// tests/test_nvrtc.py holds every figure to ptxas's report): registers / static shared memory
// in bytes / bytes spilled (stores + loads); "-": no such build (TF32: conv2d, conv2d_tc, gemm_tc).
//   ptxas 13.0                  f32          f64          bf16         f16          tf32
//   channel_gate_forward        24/0/0       25/0/0       22/0/0       19/0/0       -
//   channel_gate_backward_gate  48/4096/0    48/8192/0    48/4096/0    32/4096/0    -
//   channel_gate_backward_data  28/0/0       28/0/0       28/0/0       26/0/0       -

#define CG_LANES 32                        // the lanes of a sum (a warp), and NHWC's channels per block
#define CG_WARPS (GPUCONV_BLOCK / CG_LANES)
#define CG_FULL_MASK 0xffffffffu

// The elementwise kernels' walk: image n = blockIdx.y, blockIdx.y + gridDim.y, ... (more images
// than grid y's 65535 loop), and within it a grid-stride loop over its C * H * W elements j in
// memory order; the gate index of element j of image n is n * C + c, c = j / HW (NCHW) or j % C
// (NHWC): one 32-bit division per element (j < 2^31: the launcher declines larger images).
__device__ inline int cg_channel(int j, int C, int HW, int cl) { return cl ? j % C : j / HW; }

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
channel_gate_forward(const storage_t* x, const storage_t* gate, storage_t* y, int N, int C, int HW, int cl) {
    const int chw = C * HW;
    for (int n = blockIdx.y; n < N; n += gridDim.y) {
        const index_t image = (index_t)n * chw;
        const storage_t* g = gate + (index_t)n * C;
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < chw; j += gridDim.x * blockDim.x)
            y[image + j] = from_acc(mul_rn(to_acc(x[image + j]), to_acc(g[cg_channel(j, C, HW, cl)])));
    }
}

// add's value for plane nc in mode 2: the average pool's backward of pooled[nc], rounded to
// storage_t (its +0.0 + share turns a -0.0 into +0.0, as the reference's spread adds onto zeros).
__device__ inline acc_t cg_pooled_share(const storage_t* pooled, index_t nc, acc_t spread) {
    const acc_t share = mul_rn(to_acc(pooled[nc]), spread);
    return to_acc(from_acc(share == (acc_t)0 ? (acc_t)0 : share));
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
channel_gate_backward_data(const storage_t* dy, const storage_t* gate, const storage_t* add, storage_t* dx,
                           int N, int C, int HW, int cl, int add_mode, double spread) {
    const acc_t s = (acc_t)spread;
    const int chw = C * HW;
    for (int n = blockIdx.y; n < N; n += gridDim.y) {
        const index_t image = (index_t)n * chw;
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < chw; j += gridDim.x * blockDim.x) {
            const index_t nc = (index_t)n * C + cg_channel(j, C, HW, cl);
            acc_t v = mul_rn(to_acc(dy[image + j]), to_acc(gate[nc]));
            if (add_mode == 1) v += to_acc(add[image + j]);
            else if (add_mode == 2) v += cg_pooled_share(add, nc, s);
            dx[image + j] = from_acc(v);
        }
    }
}

// dgate: the grid's blocks cover planes (NCHW: CG_WARPS planes per block) or (n, 32-channel group)
// pairs (NHWC: groups = ceil(C / 32) per image), blocks = the launcher's count. Every thread
// reaches the barrier; threads past the last plane or channel add nothing and write nothing.
extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
channel_gate_backward_gate(const storage_t* dy, const storage_t* x, storage_t* dgate, int N, int C, int HW, int cl) {
    __shared__ acc_t red[CG_LANES][CG_LANES];  // NHWC: [lane of the sum][channel of the group]
    const int t = threadIdx.x, lane = t % CG_LANES, warp = t / CG_LANES;
    if (!cl) {
        const index_t plane = (index_t)blockIdx.x * CG_WARPS + warp;
        const bool in = plane < (index_t)N * C;
        acc_t v = 0;
        if (in) {
            const index_t base = plane * HW;
            for (int p = lane; p < HW; p += CG_LANES) v += mul_rn(to_acc(dy[base + p]), to_acc(x[base + p]));
        }
        for (int o = CG_LANES / 2; o > 0; o >>= 1) v += __shfl_xor_sync(CG_FULL_MASK, v, o);
        if (in && lane == 0) dgate[plane] = from_acc(v);
    } else {
        const int groups = (C + CG_LANES - 1) / CG_LANES;
        const int n = blockIdx.x / groups, c = (blockIdx.x - n * groups) * CG_LANES + lane;
        const bool in = c < C;
        acc_t v[CG_LANES / CG_WARPS];
        for (int j = 0; j < CG_LANES / CG_WARPS; ++j) v[j] = 0;
        if (in) {
            const index_t base = (index_t)n * HW * C + c;
            for (int p0 = 0; p0 < HW; p0 += CG_LANES) {
                for (int j = 0; j < CG_LANES / CG_WARPS; ++j) {
                    const int p = p0 + warp + j * CG_WARPS;
                    if (p < HW) {
                        const index_t at = base + (index_t)p * C;
                        v[j] += mul_rn(to_acc(dy[at]), to_acc(x[at]));
                    }
                }
            }
        }
        for (int j = 0; j < CG_LANES / CG_WARPS; ++j) red[warp + j * CG_WARPS][lane] = v[j];
        __syncthreads();
        if (warp == 0) {  // lane = channel: the tree over its 32 sums, in the shuffle tree's pairs
            for (int width = CG_LANES / 2; width > 0; width >>= 1)
                for (int l = 0; l < width; ++l) red[l][lane] += red[l + width][lane];
            if (in) dgate[(index_t)n * C + c] = from_acc(red[0][lane]);
        }
    }
}
