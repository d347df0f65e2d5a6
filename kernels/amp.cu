// amp.cu: mixed precision's cast of the float32 master parameters to the compute dtype, once per
// step (gpuconv.amp.cast_parameters), several parameters per launch. Each cast alone is a launch
// of CuPy's astype; a network's 8-25 low-precision parameters are then 1-4 launches a step.
//
//   cast_parameters   dst = src rounded once to storage_t (to nearest even, from_acc in
//                     common.cuh: ml_dtypes' bfloat16 and NumPy's float16 rounding, bit for bit).
//                     A slot's (inner, taps) transposes on the way: src is [O][inner][taps]
//                     (OIHW filters: inner = I, taps = H*W), dst [O][taps][inner] (OHWI, the
//                     channels_last filters the tensor-core convolutions read without a
//                     repacking copy); inner = 1 copies in order. A slot with rows > 0 writes
//                     the data gradient's filters instead: dst [inner][taps][rows_padded]
//                     (CRSK, the O axis padded with zeros to n / (inner * taps)), which the
//                     tensor-core data gradient would otherwise repack from the OHWI copy.
//
// Up to CAST_TENSORS parameters per launch, each its own (src, dst, n) written out per slot (no
// array of pointers in device memory); grid (blocks, count): blockIdx.y picks the parameter,
// grid-stride over its elements in x. src is float32 whatever the build; the bf16 and fp16 builds
// are the ones the launcher runs (the float32 build would copy, the float64 build widen).
//
// Registers on sm_90 (ptxas 13, the table below): 30-32; no spills in the bf16 and fp16 builds the
// launcher runs (the float32 build, never launched, spills 320 bytes).
//
// Kernels (extern "C"; GPUCONV_BLOCK threads): cast_parameters.
//
// Resources per kernel and build (ptxas of CUDA 13.0 for sm_90, the registry's NVRTC options;
// tests/test_nvrtc.py holds every figure to ptxas's report): registers / static shared memory
// in bytes / bytes spilled (stores + loads); "-": no such build (TF32: conv2d, conv2d_tc, gemm_tc).
//   ptxas 13.0       f32          f64          bf16         f16          tf32
//   cast_parameters  32/0/320     32/0/0       30/0/0       30/0/0       -

#define CAST_TENSORS 8

// dst[e], e = (o * taps + t) * inner + i, from src[(o * inner + i) * taps + t]; with rows > 0,
// e = (i * taps + t) * padded + o, from the same src element for o < rows, zero above.
__device__ void cast_one(const float* src, storage_t* dst, long long n, int inner, int taps, int rows) {
    const index_t row = (index_t)inner * taps;
    const index_t padded = rows > 0 && row > 0 ? n / row : 0;
    for (index_t e = global_thread_index(); e < n; e += global_thread_count()) {
        index_t at = e;
        if (rows > 0) {
            const index_t it = e / padded, o = e - it * padded;
            const index_t i = it / taps, t = it - i * taps;
            dst[e] = o < rows ? from_acc((acc_t)src[(o * inner + i) * taps + t]) : from_acc((acc_t)0);
            continue;
        }
        if (inner > 1) {
            const index_t o = e / row;
            const index_t r = e - o * row, t = r / inner, i = r - t * inner;
            at = o * row + i * taps + t;
        }
        dst[e] = from_acc((acc_t)src[at]);
    }
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
cast_parameters(const float* s0, storage_t* d0, long long n0, int i0, int t0, int r0,
                const float* s1, storage_t* d1, long long n1, int i1, int t1, int r1,
                const float* s2, storage_t* d2, long long n2, int i2, int t2, int r2,
                const float* s3, storage_t* d3, long long n3, int i3, int t3, int r3,
                const float* s4, storage_t* d4, long long n4, int i4, int t4, int r4,
                const float* s5, storage_t* d5, long long n5, int i5, int t5, int r5,
                const float* s6, storage_t* d6, long long n6, int i6, int t6, int r6,
                const float* s7, storage_t* d7, long long n7, int i7, int t7, int r7) {
    switch (blockIdx.y) {
        case 0: cast_one(s0, d0, n0, i0, t0, r0); break;
        case 1: cast_one(s1, d1, n1, i1, t1, r1); break;
        case 2: cast_one(s2, d2, n2, i2, t2, r2); break;
        case 3: cast_one(s3, d3, n3, i3, t3, r3); break;
        case 4: cast_one(s4, d4, n4, i4, t4, r4); break;
        case 5: cast_one(s5, d5, n5, i5, t5, r5); break;
        case 6: cast_one(s6, d6, n6, i6, t6, r6); break;
        case 7: cast_one(s7, d7, n7, i7, t7, r7); break;
    }
}
