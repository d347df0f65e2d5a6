// dropout.cu: inverted dropout with a counter-based mask, elementwise over a flat array of n elements.
//
//   mask[i] = keep(key, i) ? scale : 0      scale = 1/(1-p) rounded to real_t
//   forward   y = x * mask                  (mask is written too: the backward's cache)
//   backward  dx = dy * mask
//
// The mask is a pure function of (key, i), i the flat C-order index, so it needs no generator
// state on the device and the NumPy reference (gpuconv/ops/dropout.py) reproduces it bit for bit:
//   h(key, i) = splitmix64_mix(key + (i + 1) * 0x9E3779B97F4A7C15)   (mod 2^64)
// i.e. the (i+1)-th output of SplitMix64 seeded with key (Steele, Lea & Flood 2014; the mixer is
// Stafford's "Mix13"), which passes BigCrush. The element is kept iff u >= p for the 53-bit
// uniform u = (h >> 11) * 2^-53, decided in integers, the same rule in float32 and float64:
//   keep  <=>  (h >> 11) >= threshold,   threshold = ceil(p * 2^53)   (computed by the launcher)
//
// Kernels (extern "C", real_t = float or double; 1-D grid-stride grids of GPUCONV_BLOCK threads,
// one element per thread and step: both are bound by memory traffic, the hash is ~10 integer ops):
//   dropout_forward    x, key, threshold, scale -> y, mask
//   dropout_backward   dy, mask -> dx

typedef unsigned long long u64_t;

__device__ inline u64_t dropout_hash(u64_t key, index_t i) {
    u64_t z = key + (u64_t)(i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
dropout_forward(const real_t* x, real_t* y, real_t* mask, long long n, u64_t key, u64_t threshold, real_t scale) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) {
        const real_t m = (dropout_hash(key, i) >> 11) >= threshold ? scale : (real_t)0;
        mask[i] = m;
        y[i] = x[i] * m;
    }
}

extern "C" __global__ void __launch_bounds__(GPUCONV_BLOCK)
dropout_backward(const real_t* dy, const real_t* mask, real_t* dx, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) dx[i] = dy[i] * mask[i];
}
