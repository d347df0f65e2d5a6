// wgmma_probe.cu: kernels/wgmma.cuh's instructions alone, for tests/test_wgmma.py. Built by the
// kernel registry like kernels/*.cu (GPUCONV_KERNELS_DIR pointed at a copy of common.cuh, mma.cuh
// and wgmma.cuh beside this file, both headers in its UNIT_HEADERS), float32 build; sm_90a on a
// GPU. One block of one or two warpgroups (128 or 256 threads).

// One m64n128k16 per warpgroup: the shared images a_img (A_BYTES) and b_img (B_BYTES) are copied
// into shared memory as they are, the descriptors made from (lbo, sbo) and the swizzle of each
// operand (0, 32, 64 or 128 bytes), A's start moved a_skip bytes on (a k16 step within an atom);
// thread t's 64 accumulators start as c[64t ..] and end in d[64t ..]. kind: 0 bf16, 1 fp16;
// ta, tb the transpose flags. Warpgroup g reads its A at a_img + g * a_group bytes. mode (the
// simulator's checks of misuse; on a GPU only mode 0 is defined):
//   0: fence, mma, commit, wait 0;
//   1: as 0, and d[64t + i] first receives the accumulators read between commit and wait (still
//      C in the simulator), the results going to d[64 * threads + 64t ..];
//   2: as 0, and A's shared image zeroed between commit and wait (read at the wait: D = C);
//   3: no wgmma.fence (reported);
//   4: lane 5 of each warp passes another B descriptor (reported);
//   5: warp 1 of each warpgroup passes another B descriptor (reported);
//   6: warp 3 of each warpgroup skips the mma_async (reported);
//   7: the accumulators zeroed between commit and wait, while the mma_async may still read and
//      write them (reported);
//   8: B's descriptor with base offset 1 (reported);
//   9: the images stored without fence.proxy.async before the barrier (reported);
//  10: fence.proxy.async after the barrier, not before it (reported);
//  11: thread 37 alone skips fence.proxy.async (reported);
//  12: each thread fences its stores, and no barrier follows before the wgmma (reported);
//  13: fence.proxy.async before the stores, not after them (reported).
#define A_BYTES 16384
#define B_BYTES 16384

#if GPUCONV_WGMMA
// Both operand images into shared memory, published to the async proxy and the block (but in
// wgmma_probe's modes 9-13).
__device__ void load_images(unsigned char* sa, unsigned char* sb, const unsigned char* a_img, const unsigned char* b_img,
                            int mode = 0) {
    if (mode == 13) fence_proxy_async();
    for (int i = threadIdx.x; i < A_BYTES; i += blockDim.x) sa[i] = a_img[i];
    for (int i = threadIdx.x; i < B_BYTES; i += blockDim.x) sb[i] = b_img[i];
    if (mode != 9 && mode != 10 && mode != 13 && (mode != 11 || threadIdx.x != 37)) fence_proxy_async();
    if (mode != 12) __syncthreads();
    if (mode == 10) fence_proxy_async();
}
#endif

template <int W>
__device__ unsigned long long probe_descriptor(const unsigned char* p, int lbo, int sbo) {
    return wgmma_descriptor<W>(p, (unsigned)lbo, (unsigned)sbo);
}

__device__ unsigned long long descriptor(const unsigned char* p, int swizzle, int lbo, int sbo) {
    switch (swizzle) {
        case 128: return probe_descriptor<128>(p, lbo, sbo);
        case 64: return probe_descriptor<64>(p, lbo, sbo);
        case 32: return probe_descriptor<32>(p, lbo, sbo);
        default: return probe_descriptor<0>(p, lbo, sbo);
    }
}

// One m64nNk16 of the operand type `kind` (0 bf16, 1 fp16) and transpose flags (ta, tb), or
// m64nNk8 .tf32 (kind 2: K-major operands only, ta = tb = 0).
template <int N>
__device__ void probe_mma(int kind, int ta, int tb, float acc[N / 2], unsigned long long da, unsigned long long db) {
#if GPUCONV_WGMMA
    if (kind == 2) {
        WarpgroupOp<float, N>::template mma<0, 0>(acc, da, db);
    } else if (kind == 0) {
        if (ta == 0 && tb == 0) WarpgroupOp<bf16_t, N>::template mma<0, 0>(acc, da, db);
        else if (ta == 0) WarpgroupOp<bf16_t, N>::template mma<0, 1>(acc, da, db);
        else if (tb == 0) WarpgroupOp<bf16_t, N>::template mma<1, 0>(acc, da, db);
        else WarpgroupOp<bf16_t, N>::template mma<1, 1>(acc, da, db);
    } else {
        if (ta == 0 && tb == 0) WarpgroupOp<half_t, N>::template mma<0, 0>(acc, da, db);
        else if (ta == 0) WarpgroupOp<half_t, N>::template mma<0, 1>(acc, da, db);
        else if (tb == 0) WarpgroupOp<half_t, N>::template mma<1, 0>(acc, da, db);
        else WarpgroupOp<half_t, N>::template mma<1, 1>(acc, da, db);
    }
#endif
}

extern "C" __global__ void wgmma_probe(const unsigned char* a_img, const unsigned char* b_img, const float* c, float* d,
                                       int a_group, int a_skip, int swizzle_a, int lbo_a, int sbo_a, int swizzle_b,
                                       int lbo_b, int sbo_b, int kind, int ta, int tb, int mode) {
#if GPUCONV_WGMMA
    __shared__ __align__(1024) unsigned char sa[A_BYTES];
    __shared__ __align__(1024) unsigned char sb[B_BYTES];
    const int t = threadIdx.x, g = t / 128;
    load_images(sa, sb, a_img, b_img, mode);
    float acc[64];
    for (int i = 0; i < 64; ++i) acc[i] = c[64 * t + i];
    const unsigned long long da = descriptor(sa + g * a_group + a_skip, swizzle_a, lbo_a, sbo_a);
    unsigned long long db = descriptor(sb, swizzle_b, lbo_b, sbo_b);
    if ((mode == 4 && t % 32 == 5) || (mode == 5 && t / 32 % 4 == 1)) db += 2;
    if (mode == 8) db |= 1ull << 49;
    if (mode != 3) wgmma_fence();
    if (mode != 6 || t / 32 % 4 != 3) probe_mma<128>(kind, ta, tb, acc, da, db);
    wgmma_commit();
    float* out = d;
    if (mode == 1) {
        for (int i = 0; i < 64; ++i) d[64 * t + i] = acc[i];
        out = d + 64 * blockDim.x;
    }
    if (mode == 7)
        for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
    if (mode == 2)  // every thread zeroes all of it (a race on a GPU; the simulator runs warps in turn)
        for (int i = 0; i < A_BYTES; ++i) sa[i] = 0;
    wgmma_wait<0>();
    for (int i = 0; i < 64; ++i) out[64 * t + i] = acc[i];
#endif
}

// One m64nNk16 of one warpgroup, N = 64 or 256 (wgmma_probe's 128 with its modes): as its mode 0,
// N / 2 accumulators per thread.
template <int N>
__device__ void wgmma_n_probe(const unsigned char* a_img, const unsigned char* b_img, const float* c, float* d,
                              int swizzle_a, int lbo_a, int sbo_a, int swizzle_b, int lbo_b, int sbo_b, int kind,
                              int ta, int tb) {
#if GPUCONV_WGMMA
    __shared__ __align__(1024) unsigned char sa[A_BYTES];
    __shared__ __align__(1024) unsigned char sb[B_BYTES];
    constexpr int ACC = N / 2;
    const int t = threadIdx.x;
    load_images(sa, sb, a_img, b_img);
    float acc[ACC];
    for (int i = 0; i < ACC; ++i) acc[i] = c[ACC * t + i];
    const unsigned long long da = descriptor(sa, swizzle_a, lbo_a, sbo_a), db = descriptor(sb, swizzle_b, lbo_b, sbo_b);
    wgmma_fence();
    probe_mma<N>(kind, ta, tb, acc, da, db);
    wgmma_commit();
    wgmma_wait<0>();
    for (int i = 0; i < ACC; ++i) d[ACC * t + i] = acc[i];
#endif
}

extern "C" __global__ void wgmma64_probe(const unsigned char* a_img, const unsigned char* b_img, const float* c,
                                         float* d, int swizzle_a, int lbo_a, int sbo_a, int swizzle_b, int lbo_b,
                                         int sbo_b, int kind, int ta, int tb) {
    wgmma_n_probe<64>(a_img, b_img, c, d, swizzle_a, lbo_a, sbo_a, swizzle_b, lbo_b, sbo_b, kind, ta, tb);
}

extern "C" __global__ void wgmma256_probe(const unsigned char* a_img, const unsigned char* b_img, const float* c,
                                          float* d, int swizzle_a, int lbo_a, int sbo_a, int swizzle_b, int lbo_b,
                                          int sbo_b, int kind, int ta, int tb) {
    wgmma_n_probe<256>(a_img, b_img, c, d, swizzle_a, lbo_a, sbo_a, swizzle_b, lbo_b, sbo_b, kind, ta, tb);
}

// The descriptors wgmma_descriptor makes for a 1024-byte aligned shared array moved `skip` bytes
// on, with LBO lbo and SBO sbo bytes: out[0 .. 3] for the swizzles 0, 32, 64 and 128 bytes, out[4]
// the array's own (no swizzle, LBO and SBO 0). tests/test_wgmma.py reads their bits by the PTX
// ISA's table, not by the simulator's decoding.
extern "C" __global__ void wgmma_descriptor_probe(unsigned long long* out, int skip, int lbo, int sbo) {
    __shared__ __align__(1024) unsigned char s[1024];
    if (threadIdx.x == 0) {
        const int widths[4] = {0, 32, 64, 128};
        for (int i = 0; i < 4; ++i) out[i] = descriptor(s + skip, widths[i], lbo, sbo);
        out[4] = descriptor(s, 0, 0, 0);
    }
}
