// amp.cu: mixed precision's cast of the float32 master parameters to the compute dtype, once per
// step (gpuconv.amp.cast_parameters), several parameters per launch. Each cast alone is a launch
// of CuPy's astype; a network's 8-25 low-precision parameters are then 1-4 launches a step.
//
//   cast_parameters   dst[i] = src[i] rounded once to storage_t (to nearest even, from_acc in
//                     common.cuh: ml_dtypes' bfloat16 and NumPy's float16 rounding, bit for bit)
//
// Up to CAST_TENSORS parameters per launch, each its own (src, dst, n) written out per slot (no
// array of pointers in device memory); grid (blocks, count): blockIdx.y picks the parameter,
// grid-stride over its elements in x. src is float32 whatever the build; the bf16 and fp16 builds
// are the ones the launcher runs (the float32 build would copy, the float64 build widen).
//
// Registers on sm_90 (ptxas 13, tests/test_nvrtc.py): 24-28, no spills.
//
// Kernels (extern "C"; GPUCONV_BLOCK threads): cast_parameters.

#define CAST_TENSORS 8

__device__ void cast_one(const float* src, storage_t* dst, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) dst[i] = from_acc((acc_t)src[i]);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
cast_parameters(const float* s0, storage_t* d0, long long n0, const float* s1, storage_t* d1, long long n1,
                const float* s2, storage_t* d2, long long n2, const float* s3, storage_t* d3, long long n3,
                const float* s4, storage_t* d4, long long n4, const float* s5, storage_t* d5, long long n5,
                const float* s6, storage_t* d6, long long n6, const float* s7, storage_t* d7, long long n7) {
    switch (blockIdx.y) {
        case 0: cast_one(s0, d0, n0); break;
        case 1: cast_one(s1, d1, n1); break;
        case 2: cast_one(s2, d2, n2); break;
        case 3: cast_one(s3, d3, n3); break;
        case 4: cast_one(s4, d4, n4); break;
        case 5: cast_one(s5, d5, n5); break;
        case 6: cast_one(s6, d6, n6); break;
        case 7: cast_one(s7, d7, n7); break;
    }
}
