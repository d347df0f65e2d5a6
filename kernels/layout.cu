// layout.cu: 4-D activations moved between the two memory layouts, NCHW and NHWC (channels_last),
// in one pass over memory (gpuconv/layout.py on CuPy arrays; gpuconv/ops/_launch_layout.py).
//
//   layout_transpose   per image n < images, an R x S row-major matrix into an S x Rp one:
//                        dst[n][s][r] = src[n][r][s]   for r < R
//                        dst[n][s][r] = 0              for R <= r < Rp
//                      NCHW -> NHWC: R = C, S = H*W, Rp the NHWC channel stride (C, or C padded
//                      with zero channels to the tensor cores' 16-byte piece); NHWC -> NCHW: R =
//                      H*W, S = C, Rp = R. The values are moved as bits (a NaN keeps its payload),
//                      except that with `tf32` (float32 only) each is rounded to TF32 as it is
//                      written (tf32_operand, common.cuh): a TF32 tensor-core operand converted
//                      and rounded in the same pass.
//
// Why a kernel: a transposing copy as an elementwise kernel (CuPy's ascontiguousarray of a
// transposed view) reads one side of the transpose with a stride of R or S elements, so each
// warp's 32 loads touch 32 different 32-byte sectors and use 2-4 bytes of each, and it computes
// every element's four coordinates by division. Here a block moves a 32 x 32 tile through shared
// memory: it reads 32 rows of 32 consecutive elements of src and writes 32 rows of 32 consecutive
// elements of dst, both sides coalesced; the tile's row pitch of 33 elements keeps the column
// reads of shared memory off a single bank.
//
// Launch (the launcher's one helper, _launch_layout.transpose): 256 threads (8 warps: each warp
// a tile row, 4 rows each), grid.x = ceil(S / 32) * ceil(Rp / 32) tiles (s fastest), grid.y =
// min(images, 65535), the blocks striding over the images. Offsets are index_t: an image and the
// batch may pass 2^31 elements; R, S and Rp are int (the launcher checks).
//
// Resources per kernel and build (ptxas of CUDA 13.0 for sm_90, the registry's NVRTC options;
// tests/test_nvrtc.py holds every figure to ptxas's report): registers / static shared memory
// in bytes / bytes spilled (stores + loads); "-": no such build.
//   ptxas 13.0         f32          f64          bf16         f16          tf32
//   layout_transpose   34/4224/0    40/8448/0    40/2112/0    40/2112/0    -

#define LAYOUT_TILE 32     // a tile's side, in elements
#define LAYOUT_ROWS 8      // warps per block: each moves LAYOUT_TILE / LAYOUT_ROWS rows of its tile

// The value as written: rounded to TF32 where asked (float32), else as it is.
__device__ inline float layout_written(float v, int tf32) { return tf32 ? tf32_operand(v) : v; }
template <class T>
__device__ inline T layout_written(T v, int) { return v; }

extern "C" __global__ void __launch_bounds__(LAYOUT_TILE * LAYOUT_ROWS)
layout_transpose(const storage_t* src, storage_t* dst, long long images, int R, int S, int Rp, int s_tiles,
                 int tf32) {
    __shared__ storage_t tile[LAYOUT_TILE][LAYOUT_TILE + 1];
    const int lane = threadIdx.x % LAYOUT_TILE, row = threadIdx.x / LAYOUT_TILE;
    const int s0 = (int)(blockIdx.x % (unsigned)s_tiles) * LAYOUT_TILE;
    const int r0 = (int)(blockIdx.x / (unsigned)s_tiles) * LAYOUT_TILE;
    const storage_t zero{};
    for (index_t n = blockIdx.y; n < images; n += gridDim.y) {
        const storage_t* a = src + n * R * (index_t)S;
        storage_t* b = dst + n * S * (index_t)Rp;
        // read: rows r of src, 32 consecutive s a warp; r past R reads as the zero channels
        for (int i = row; i < LAYOUT_TILE; i += LAYOUT_ROWS) {
            const int r = r0 + i, s = s0 + lane;
            tile[i][lane] = (r < R && s < S) ? a[(index_t)r * S + s] : zero;
        }
        __syncthreads();
        // write: rows s of dst, 32 consecutive r a warp (the tile read down a column)
        for (int i = row; i < LAYOUT_TILE; i += LAYOUT_ROWS) {
            const int s = s0 + i, r = r0 + lane;
            if (s < S && r < Rp) b[(index_t)s * Rp + r] = layout_written(tile[lane][i], tf32);
        }
        __syncthreads();  // the tile is read before the next image's loads overwrite it
    }
}
