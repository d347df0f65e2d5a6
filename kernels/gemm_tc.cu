// gemm_tc.cu: a tiled GEMM on tensor cores (mma.sync, ldmatrix, cp.async; kernels/mma.cuh), the
// template the tensor-core convolutions generalize (an implicit GEMM is this GEMM with operand
// loaders that compute im2col addresses).
//
//   C[M, N] = A[M, K] B (+ bias)   A row-major [M][K]; C row-major [M][N]; bias[N] or null (nt only)
//   gemm_tc_nt   B given as [N][K] (C = A B^T, both operands K-contiguous: ldmatrix)
//   gemm_tc_nn   B given as [K][N] (N-contiguous: ldmatrix.trans); bf16/fp16 builds only, since
//                .trans moves 16-bit elements and cannot transpose TF32's 32-bit ones
//
// Precision (common.cuh): storage_t operands, products exact and sums in float32 on the tensor
// cores (bf16 -> mma .bf16, fp16 -> .f16, float32 in the TF32 build -> .tf32 with each operand
// rounded by tf32_operand: in shared memory for aligned operands, else in the fragments), the
// bias (storage_t, one per column: gpuconv.ops.linear's) added to the float32 sum, each output
// rounded ONCE: into C (storage_t) or, when C is null, written as float32 into C32 (a workspace,
// e.g. split-K partial sums). The kernels compute only in the builds with a tensor-core format
// (GPUCONV_TENSOR_CORES: bfloat16, float16, TF32); in float64 and strict float32 (and gemm_tc_nn
// in TF32) they trap.
//
// Launch: block = 128 threads (4 warps, TcTile64), grid = (ceil(M / 64), ceil(N / 64)); static shared
// memory 3 stages x 8 KiB = 24 KiB. vec_a, vec_b: the bytes each copy moves for A and B, 16, 8, 4
// (cp.async) or 2 (plain loads, for 16-bit rows of odd length); the launcher picks the largest
// that divides the operand's row pitch in bytes and its address
// (gpuconv/ops/_launch_gemm_tc.py). M, N >= 1 and K >= 0 of any size (edges zero-filled, stores
// guarded).
//
// The tile machinery (the 64x64 CTA tile of 4 warps, k-tiles of 64 bytes, the dense loader,
// the fragment readers, the 3-stage cp.async pipeline) is kernels/tc_tile.cuh, shared with the
// implicit-GEMM convolutions of kernels/conv2d_tc.cu.
//
// Resources per kernel and build (ptxas of CUDA 13.0 for sm_90, the registry's NVRTC options;
// tests/test_nvrtc.py holds every figure to ptxas's report): registers / static shared memory
// in bytes / bytes spilled (stores + loads); the GEMMs trap in float32 and float64 (gemm_tc_nn in TF32 too).
//   ptxas 13.0  f32          f64          bf16         f16          tf32
//   gemm_tc_nt  4/0/0        4/0/0        72/24576/0   80/24576/0   79/24576/0
//   gemm_tc_nn  4/0/0        4/0/0        72/24576/0   72/24576/0   4/0/0
//
// The sm_75 build (a T4: float16 alone, each m16n8k16 two m16n8k8, cp.async synchronous copies):
//   ptxas 13.0 sm_75  f16
//   gemm_tc_nt        98/24576/0
//   gemm_tc_nn        98/24576/0

// The kernel body on the 64x64 tile: LoaderB and FragB fix B's layout.
typedef TcTile64 GemmTile;

template <class FragB, int B_ROWS, int B_ROW_BYTES>
__device__ void gemm_tc_body(const storage_t* A, const storage_t* B, const storage_t* bias, storage_t* C, float* C32,
                             int M, int N, int K, int vec_a, int vec_b, bool b_kn) {
    typedef GemmTile S;
    TC_DECLARE_STAGES(S, As, Bs);
    const int es = (int)sizeof(storage_t);
    const int m0 = blockIdx.x * S::BM, n0 = blockIdx.y * S::BN;
    const int kbytes = K * es;  // byte counts are ints (the launcher checks)
    // The 16-byte loops copy whole pieces: rows of other lengths take the general loop
    if (kbytes % 16) vec_a = imin(vec_a, 8);
    if ((b_kn ? N * es : kbytes) % 16) vec_b = imin(vec_b, 8);
    typedef DenseTileLoader<B_ROWS, B_ROW_BYTES, S::THREADS> LoaderB;
    DenseTileLoader<S::BM, TC_KBYTES, S::THREADS> la((const unsigned char*)(A + (index_t)m0 * K), kbytes, M - m0,
                                                     kbytes);
    const LoaderB lb = b_kn ? LoaderB((const unsigned char*)(B + n0), (long long)N * es, K, (N - n0) * es)
                            : LoaderB((const unsigned char*)(B + (index_t)n0 * K), kbytes, N - n0, kbytes);
    float acc[S::MI][S::NI][4] = {};
    const int ktiles = (kbytes + TC_KBYTES - 1) / TC_KBYTES;
    // aligned operands: the loop with only 16-byte copies (TF32 rounded in the stage). (K = 0: no
    // loop. The guard also keeps the loops' invariants out of them, as in conv2d_tc.cu's forward.)
    if (ktiles <= 0) {
    } else if (vec_a == 16 && vec_b == 16)
        tc_gemm_mainloop<S, StageRounded<TensorCoreOp<storage_t> >, FragA<S>, FragB>(la, lb, ktiles, 16, 16, As, Bs,
                                                                                      acc);
    else  // narrower copies are not whole pieces of one thread's: TF32 rounded in the fragments
        tc_gemm_mainloop<S, TensorCoreOp<storage_t>, FragA<S>, FragB>(la, lb, ktiles, vec_a, vec_b, As, Bs, acc);
    if (C)
        tc_gemm_epilogue<S>(RowMajorStore<storage_t>{C, bias, M, N, 0}, m0, n0, acc);
    else
        tc_gemm_epilogue<S>(RowMajorStore<float>{C32, bias, M, N, 0}, m0, n0, acc);
}

// Every build exports both entry points (the registry's one table of names per file); where a
// build has no tensor-core format for them (float64, strict float32; TF32 for the .trans path)
// the body traps. The launcher refuses those calls before they reach a GPU.
extern "C" __global__ void __launch_bounds__(GemmTile::THREADS)
gemm_tc_nt(const storage_t* A, const storage_t* B, const storage_t* bias, storage_t* C, float* C32, int M, int N, int K,
           int vec_a, int vec_b) {
#if GPUCONV_TENSOR_CORES
    gemm_tc_body<FragB_nt<GemmTile>, GemmTile::BN, TC_KBYTES>(A, B, bias, C, C32, M, N, K, vec_a, vec_b, false);
#else
    __trap();
#endif
}

extern "C" __global__ void __launch_bounds__(GemmTile::THREADS)
gemm_tc_nn(const storage_t* A, const storage_t* B, const storage_t* bias, storage_t* C, float* C32, int M, int N, int K,
           int vec_a, int vec_b) {
#if GPUCONV_TENSOR_CORES && !GPUCONV_TF32
    // No bias here (the linear layer's is its forward's, an nt product): a null pointer the compiler
    // sees, whose epilogue branch costs the .trans loop no registers (with it, 24 bytes spilled).
    (void)bias;
    gemm_tc_body<FragB_nn<GemmTile>, TC_KM_ROWS, 2 * GemmTile::BN>(A, B, (const storage_t*)0, C, C32, M, N, K, vec_a,
                                                                    vec_b, true);
#else
    __trap();
#endif
}
