// dropout.cu: inverted dropout with a counter-based mask, elementwise over a flat array of n elements.
//
//   mask[i] = keep(key, i) ? scale : 0      scale = 1/(1-p) rounded to acc_t
//   forward   y = x * mask                  (mask is written too: the backward's cache)
//   backward  dx = dy * mask
//
// x, y, dy, dx are storage_t; the mask and the scale are acc_t (float32 for a bfloat16/float16
// x: the product is formed in float32 with the float32 scale and rounded once, so a kept
// element is scaled by 1/(1-p) itself, not by 1/(1-p) rounded to 8 or 11 bits).
//
// The mask is a pure function of (key, i), i the flat C-order index, so it needs no generator
// state on the device and the NumPy reference (gpuconv/ops/dropout.py) reproduces it bit for bit:
//   h(key, i) = splitmix64_mix(key + (i + 1) * 0x9E3779B97F4A7C15)   (mod 2^64)
// i.e. the (i+1)-th output of SplitMix64 seeded with key (Steele, Lea & Flood 2014; the mixer is
// Stafford's "Mix13"), which passes BigCrush. The element is kept iff u >= p for the 53-bit
// uniform u = (h >> 11) * 2^-53, decided in integers, the same rule in float32 and float64:
//   keep  <=>  (h >> 11) >= threshold,   threshold = ceil(p * 2^53)   (computed by the launcher)
//
// Kernels (extern "C"; 1-D grid-stride grids of GPUCONV_BLOCK threads,
// one element per thread and step: both are bound by memory traffic, the hash is ~10 integer ops):
//   dropout_forward    x, key, threshold, scale, key_at -> y, mask
//                      key_at: null, or a device word holding the key, read instead of key (a step
//                      replayed as a CUDA graph takes its key from there: written before each replay)
//   dropout_backward   dy, mask -> dx
//
// Resources per kernel and build (ptxas of CUDA 13.0 for sm_90, the registry's NVRTC options;
// tests/test_nvrtc.py holds every figure to ptxas's report): registers / static shared memory
// in bytes / bytes spilled (stores + loads); "-": no such build (TF32: conv2d, conv2d_tc, gemm_tc).
//   ptxas 13.0        f32          f64          bf16         f16          tf32
//   dropout_forward   32/0/0       32/0/0       30/0/0       28/0/0       -
//   dropout_backward  28/0/0       32/0/0       28/0/0       24/0/0       -

typedef unsigned long long u64_t;

__device__ inline u64_t dropout_hash(u64_t key, index_t i) {
    u64_t z = key + (u64_t)(i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
dropout_forward(const storage_t* x, storage_t* y, acc_t* mask, long long n, u64_t key, u64_t threshold, acc_t scale,
                const u64_t* key_at) {
    if (key_at != nullptr) key = *key_at;  // the key written on the device before a replayed step
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) {
        const acc_t m = (dropout_hash(key, i) >> 11) >= threshold ? scale : (acc_t)0;
        mask[i] = m;
        y[i] = from_acc(to_acc(x[i]) * m);
    }
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
dropout_backward(const storage_t* dy, const acc_t* mask, storage_t* dx, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) dx[i] = from_acc(to_acc(dy[i]) * mask[i]);
}
