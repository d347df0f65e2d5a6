// warp_probe.cu: each instruction of kernels/mma.cuh alone, for tests/test_warp_primitives.py.
// Built by the kernel registry like kernels/*.cu (GPUCONV_KERNELS_DIR pointed at a copy of
// common.cuh and mma.cuh beside this file, with mma.cuh in its UNIT_HEADERS), float32 build; the
// instructions do not depend on the build. One warp per block unless a test says otherwise. In the
// simulator's sm_75 build (kernels.sim_arch(75)) the bf16 and tf32 mma do not exist: those probes
// trap there.

// One mma over registers the test laid out: lane l's A, B and C fragments are a[4l..], b[2l..],
// c[4l..]; D goes to d[4l..]. kind: 0 bf16 m16n8k16, 1 fp16 m16n8k16, 2 tf32 m16n8k8 (the
// registers as given: the test rounds to TF32).
extern "C" __global__ void mma_probe(const unsigned* a, const unsigned* b, const float* c, float* d, int kind) {
    const int l = threadIdx.x;
    unsigned ra[4] = {a[4 * l], a[4 * l + 1], a[4 * l + 2], a[4 * l + 3]}, rb[2] = {b[2 * l], b[2 * l + 1]};
    float rc[4] = {c[4 * l], c[4 * l + 1], c[4 * l + 2], c[4 * l + 3]}, rd[4];
#if GPUCONV_MMA_SM75
    if (kind != 1) __trap();
    mma_m16n8k16_f16(rd, ra, rb, rc);
#else
    if (kind == 0) mma_m16n8k16_bf16(rd, ra, rb, rc);
    else if (kind == 1) mma_m16n8k16_f16(rd, ra, rb, rc);
    else mma_m16n8k8_tf32(rd, ra, rb, rc);
#endif
    for (int r = 0; r < 4; ++r) d[4 * l + r] = rd[r];
}

// One mma.m16n8k8 .f16 (sm_75's): lane l's A and B fragments are a[2l..], b[l]; C c[4l..], D d[4l..].
extern "C" __global__ void mma_k8_probe(const unsigned* a, const unsigned* b, const float* c, float* d) {
    const int l = threadIdx.x;
    unsigned ra[2] = {a[2 * l], a[2 * l + 1]}, rb[1] = {b[l]};
    float rc[4] = {c[4 * l], c[4 * l + 1], c[4 * l + 2], c[4 * l + 3]}, rd[4];
    mma_m16n8k8_f16(rd, ra, rb, rc);
    for (int r = 0; r < 4; ++r) d[4 * l + r] = rd[r];
}

// ldmatrix of a 64-row tile of 16-byte rows copied from src (64 x 8 16-bit values): lane l's
// address is the tile's byte offsets[l] (global_lane: that lane passes a global address
// instead); out[4l + j] receives register j. num: 1, 2 or 4; trans: 0 or 1.
extern "C" __global__ void ldmatrix_probe(const unsigned short* src, const int* offsets, unsigned* out, int num,
                                          int trans, int global_lane) {
    __shared__ __align__(16) unsigned short tile[64 * 8];
    const int l = threadIdx.x;
    for (int i = l; i < 64 * 8; i += 32) tile[i] = src[i];
    __syncthreads();
    const void* row = l == global_lane ? (const void*)src : (const void*)((const unsigned char*)tile + offsets[l]);
    unsigned r[4] = {0, 0, 0, 0};
    if (trans) {
        if (num == 1) ldmatrix_x1_trans(r, row);
        else if (num == 2) ldmatrix_x2_trans(r, row);
        else ldmatrix_x4_trans(r, row);
    } else {
        if (num == 1) ldmatrix_x1(r, row);
        else if (num == 2) ldmatrix_x2(r, row);
        else ldmatrix_x4(r, row);
    }
    for (int j = 0; j < 4; ++j) out[4 * l + j] = r[j];
}

// cp.async. Thread t copies, in three commit groups:
//   group 0: 16 bytes (.cg) of src[4t .. 4t+3] into g0[4t ..], src_bytes of them (rest zero);
//   group 1: 8 bytes (.ca) of src[128 + 2t ..] into g1[2t ..];
//   group 2: 4 bytes (.ca) of src[192 + t] into g2[t].
// out[32 * s + t], for the snapshots s of this thread's (or, with neighbour = 1, thread t+1's)
// first float of each destination:
//   s = 0, 1, 2: g0, g1, g2 before any wait; 3, 4, 5: after wait_group 2 (group 0 retired: at
//   most the 2 newest stay in flight); 6, 7, 8: after wait_group 1 (groups 0 and 1); 9, 10, 11:
//   after wait_all.
// and tail[4t .. 4t+3] = all of g0's chunk after wait_all (the zero fill). On a GPU only the
// snapshots after the waits that retired a group are defined; the simulator poisons the rest.
extern "C" __global__ void cp_async_probe(const float* src, float* out, float* tail, int src_bytes, int neighbour) {
    __shared__ __align__(16) float g0[128], g1[64], g2[32];
    const int t = threadIdx.x, u = neighbour ? (t + 1) % 32 : t;
    cp_async_cg(g0 + 4 * t, src + 4 * t, src_bytes);
    cp_async_commit();
    cp_async_ca<8>(g1 + 2 * t, src + 128 + 2 * t, 8);
    cp_async_commit();
    cp_async_ca<4>(g2 + t, src + 192 + t, 4);
    cp_async_commit();
    float* o = out + t;
    o[0] = g0[4 * u]; o[32] = g1[2 * u]; o[64] = g2[u];
    cp_async_wait<2>();
    o[96] = g0[4 * u]; o[128] = g1[2 * u]; o[160] = g2[u];
    cp_async_wait<1>();
    o[192] = g0[4 * u]; o[224] = g1[2 * u]; o[256] = g2[u];
    cp_async_wait_all();
    o[288] = g0[4 * u]; o[320] = g1[2 * u]; o[352] = g2[u];
    for (int i = 0; i < 4; ++i) tail[4 * t + i] = g0[4 * t + i];
}

// A stage refilled while still holding the previous tile: out[t] is read after the copy over it
// was issued (the write-after-read race of a pipeline that refills a stage before every warp is
// done with it), out[32 + t] after the wait.
extern "C" __global__ void cp_async_refill(const float* src, float* out) {
    __shared__ __align__(16) float s[32];
    const int t = threadIdx.x;
    s[t] = -1.0f;
    __syncthreads();
    cp_async_ca<4>(s + t, src + t, 4);
    cp_async_commit();
    out[t] = s[t];
    cp_async_wait<0>();
    out[32 + t] = s[t];
}

// cp.async misuse the simulator reports: mode 0 a src-size above the cp-size, 1 a global
// destination, 2 a misaligned source, 3 a source past the end of buf (16 floats; reported by
// the AddressSanitizer build).
extern "C" __global__ void cp_async_misuse(float* buf, int mode) {
    __shared__ __align__(16) float s[8];
    if (mode == 0) cp_async_cg(s, buf, 20);
    else if (mode == 1) cp_async_cg(buf + 4, buf, 16);
    else if (mode == 2) cp_async_ca<8>(s, buf + 1, 8);
    else cp_async_cg(s, buf + 16, 16);
    cp_async_wait_all();
    buf[threadIdx.x] = s[0];
}

// Warp instructions reached by part of a block: threads >= active skip the instruction and then
// exit (how = 0), wait at __syncthreads (1), or run the same instruction from another line (2).
// insn: 0 mma (bf16), 1 ldmatrix.x4.
extern "C" __global__ void partial_warp(float* d, int active, int how, int insn) {
    __shared__ __align__(16) unsigned short tile[32 * 8];
    for (int i = threadIdx.x; i < 32 * 8; i += blockDim.x) tile[i] = 0;
    __syncthreads();
    const int l = threadIdx.x % 32;
    unsigned a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    float c[4] = {0, 0, 0, 0};
#if GPUCONV_MMA_SM75
    if (insn == 0) __trap();
#define mma_m16n8k16_bf16 mma_m16n8k16_f16
#endif
    if ((int)threadIdx.x < active) {
        if (insn == 0) mma_m16n8k16_bf16(c, a, b, c);
        else ldmatrix_x4(a, tile + 8 * l);
    } else if (how == 2) {
        if (insn == 0) mma_m16n8k16_bf16(c, a, b, c);
        else ldmatrix_x4(a, tile + 8 * l);
    } else if (how == 0) {
        return;
    }
    __syncthreads();
    d[threadIdx.x] = c[0] + (float)a[0];
}

// The swizzle: out[r * 8 + c] = swizzle_offset<64 or 128>(r, 16 c) for 16 rows of 4 or 8 chunks.
extern "C" __global__ void swizzle_probe(int* out64, int* out128) {
    const int r = threadIdx.x;
    if (r < 16) {
        for (int c = 0; c < 4; ++c) out64[4 * r + c] = swizzle_offset<64>(r, 16 * c);
        for (int c = 0; c < 8; ++c) out128[8 * r + c] = swizzle_offset<128>(r, 16 * c);
    }
}
