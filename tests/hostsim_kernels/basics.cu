// Test fixtures for tests/test_hostsim.py: small kernels exercising each simulator feature.
// real_t comes from the including test, as kernels/*.cu get it from the kernel registry.

extern "C" __global__ void vector_add(const real_t* __restrict__ a, const real_t* __restrict__ b,
                                      real_t* __restrict__ out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = a[i] + b[i];
}

// One partial sum per 256-thread block: a shared-memory tree with a barrier per level.
extern "C" __global__ void __launch_bounds__(256) block_sum(const real_t* x, real_t* partial, int n) {
  __shared__ real_t tile[256];
  int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
  tile[t] = i < n ? x[i] : (real_t)0;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (t < s) tile[t] += tile[t + s];
    __syncthreads();
  }
  if (t == 0) partial[blockIdx.x] = tile[0];
}

// The same tree without barriers: a race the simulator must expose.
extern "C" __global__ void block_sum_no_barrier(const real_t* x, real_t* partial, int n) {
  __shared__ real_t tile[256];
  int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
  tile[t] = i < n ? x[i] : (real_t)0;
  for (int s = blockDim.x / 2; s > 0; s >>= 1)
    if (t < s) tile[t] += tile[t + s];
  if (t == 0) partial[blockIdx.x] = tile[0];
}

// A 3-point stencil without a barrier: reads both neighbours, so either schedule sees poison.
extern "C" __global__ void stencil_no_barrier(const real_t* x, real_t* y) {
  __shared__ real_t tile[128];
  int t = threadIdx.x, n = blockDim.x;
  tile[t] = x[t];
  y[t] = tile[(t + n - 1) % n] + tile[t] + tile[(t + 1) % n];
}

extern "C" __global__ void divergent_barrier(real_t* out) {
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = (real_t)1;
}

extern "C" __global__ void two_barrier_sites(real_t* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = (real_t)1;
}

__device__ __forceinline__ real_t warp_reduce(real_t v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

extern "C" __global__ void warp_sum(const real_t* x, real_t* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  real_t v = warp_reduce(i < n ? x[i] : (real_t)0);
  if ((threadIdx.x & (warpSize - 1)) == 0) atomicAdd(out, v);
}

extern "C" __global__ void shuffle_variants(int* out) {
  int t = threadIdx.x, lane = t % 32, warp = t / 32, n = blockDim.x;
  out[0 * n + t] = __shfl_sync(0xffffffffu, lane + warp * 100, 5);
  out[1 * n + t] = __shfl_up_sync(0xffffffffu, t, 3);
  out[2 * n + t] = __shfl_down_sync(0xffffffffu, t, 3);
  out[3 * n + t] = __shfl_xor_sync(0xffffffffu, t, 1);
  out[4 * n + t] = (int)__ballot_sync(0xffffffffu, lane % 2 == 0);
}

// Block-local histogram in shared memory, merged into the global one with atomics.
extern "C" __global__ void histogram(const int* values, int* hist, double* total, int n) {
  __shared__ int local[16];
  int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
  if (t < 16) local[t] = 0;
  __syncthreads();
  if (i < n) {
    atomicAdd(&local[values[i]], 1);
    atomicAdd(total, (double)values[i]);
  }
  __syncthreads();
  if (t < 16) atomicAdd(&hist[t], local[t]);
}

extern "C" __global__ void reverse_in_block(const real_t* x, real_t* out) {
  extern __shared__ real_t buf[];
  int t = threadIdx.x, base = blockIdx.x * blockDim.x;
  buf[t] = x[base + t];
  __syncthreads();
  out[base + t] = buf[blockDim.x - 1 - t];
}

extern "C" __global__ void read_dynamic_shared(real_t* out) {
  extern __shared__ __align__(16) unsigned char raw[];
  out[threadIdx.x] = reinterpret_cast<real_t*>(raw)[threadIdx.x];
}

extern "C" __global__ void coords(int* out) {
  unsigned block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  unsigned thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  int* o = out + 6 * (block * blockDim.x * blockDim.y * blockDim.z + thread);
  o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
  o[3] = blockIdx.x; o[4] = blockIdx.y; o[5] = blockIdx.z;
}

extern "C" __global__ void sum4(const float4* __restrict__ x, real_t* out) {
  float4 v = __ldg(&x[threadIdx.x]);
  out[threadIdx.x] = fmaxf(v.x, 0.0f) + v.y + v.z + v.w;
}

// Out-of-bounds fixtures for the sanitized build (launched with 2 blocks of 64 threads).
extern "C" __global__ void write_past_end(real_t* y, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  y[i] = (real_t)n;  // no bounds check: threads with i >= n write past the array
}

__device__ __noinline__ void store_one(real_t* p, int i) { p[i] = (real_t)1; }

extern "C" __global__ void static_shared_overrun(real_t* y, int n) {
  __shared__ real_t tile[64];
  store_one(tile, threadIdx.x + 1);  // thread 63 writes tile[64], through a pointer: ASan's catch
  __syncthreads();
  if (threadIdx.x == 0 && blockIdx.x * 64 < n) y[blockIdx.x] = tile[1];
}

extern "C" __global__ void static_index_overrun(real_t* y, int n) {
  __shared__ real_t tile[64];
  tile[threadIdx.x + 1] = (real_t)1;  // the same overrun indexing the array: UBSan's catch
  __syncthreads();
  if (threadIdx.x == 0 && blockIdx.x * 64 < n) y[blockIdx.x] = tile[1];
}

extern "C" __global__ void dynamic_shared_overrun(real_t* y, int n) {
  extern __shared__ real_t dyn[];
  dyn[threadIdx.x + 1] = (real_t)1;  // launched with 64 floats: thread 63 writes dyn[64]
  __syncthreads();
  if (threadIdx.x == 0 && blockIdx.x * 64 < n) y[blockIdx.x] = dyn[1];
}

// Warp collectives: a shuffle that half the warp skips for a barrier (divergence), a reduction
// whose tail lanes exited (they read as poison), one confined to a half-warp mask (legal), and
// block-wide barrier reductions.
extern "C" __global__ void warp_divergent(real_t* y) {
  real_t v = y[threadIdx.x];
  if (threadIdx.x % 32 < 16) v = __shfl_down_sync(0xffffffffu, v, 1);
  __syncthreads();
  y[threadIdx.x] = v;
}

extern "C" __global__ void warp_sum_early_exit(const real_t* x, real_t* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;  // the tail warp's shuffles then read lanes that exited
  real_t v = warp_reduce(x[i]);
  if (threadIdx.x % 32 == 0) out[i / 32] = v;
}

extern "C" __global__ void half_warp_shuffle(int* y) {
  int lane = threadIdx.x % 32, v = threadIdx.x;
  if (lane < 16) v = __shfl_xor_sync(0x0000ffffu, v, 1);
  y[threadIdx.x] = v + 1000 * (__activemask() == 0xffffffffu) + 10000 * __all_sync(0xffffffffu, lane < 32);
}

extern "C" __global__ void barrier_reductions(int* y) {
  int t = threadIdx.x;
  int c = __syncthreads_count(t % 3 == 0);
  int a = __syncthreads_and(t < 1000), o = __syncthreads_or(t == 5), none = __syncthreads_or(t > 1000);
  y[t] = c * 1000 + a * 100 + o * 10 + none;
}

extern "C" __global__ void traps(real_t* y) {
  if (blockIdx.x == 1 && threadIdx.x == 3) __trap();
  y[threadIdx.x] = (real_t)1;
}

__device__ __noinline__ int deep(int n) {
  volatile char frame[1024];
  frame[n % 1024] = (char)n;
  return n == 0 ? 0 : deep(n - 1) + frame[n % 1024];
}

extern "C" __global__ void stack_hog(int* y, int depth) { y[threadIdx.x] = deep(depth); }

// Templated per dtype behind extern "C" entry points (the registry's other option).
template <class T> __device__ void scale_impl(T* y, T a) {
  __shared__ T tile[32];
  tile[threadIdx.x] = y[threadIdx.x] * a;
  __syncthreads();
  y[threadIdx.x] = tile[31 - threadIdx.x];
}
extern "C" __global__ void scale_reverse_f32(float* y, float a) { scale_impl<float>(y, a); }
extern "C" __global__ void scale_reverse_f64(double* y, double a) { scale_impl<double>(y, a); }

// A template's __shared__ tile, read before anything writes it (then written, so that a second
// launch that saw the first launch's values would show it). g++ places a template's static
// locals outside the poisoned section; the simulator registers them.
template <class T> __device__ void read_unwritten_impl(T* y) {
  __shared__ __align__(16) T tile[32], other[8];
  y[blockIdx.x * 32 + threadIdx.x] = tile[threadIdx.x] + other[threadIdx.x % 8];
  __syncthreads();
  tile[threadIdx.x] = (T)1;
  other[threadIdx.x % 8] = (T)1;
}
extern "C" __global__ void template_shared_poison(real_t* y) { read_unwritten_impl<real_t>(y); }

extern "C" __global__ void mask_excludes_self(real_t* y) {
  y[threadIdx.x] = __shfl_sync(0x1u, y[threadIdx.x], 0);  // lanes 1..31 are not in the mask
}

#ifndef GPUCONV_TEST_VALUE
#define GPUCONV_TEST_VALUE 1
#endif
extern "C" __global__ void option_value(int* y) { y[threadIdx.x] = GPUCONV_TEST_VALUE; }

// Warp 1 writes a tile that warp 0 reads after a shuffle but with no __syncthreads between: a
// race (a warp collective orders nothing across warps) that must show as poison in one order.
extern "C" __global__ void cross_warp_without_barrier(real_t* y) {
  __shared__ real_t tile[32];
  const int lane = threadIdx.x % 32;
  if (threadIdx.x >= 32) tile[lane] = (real_t)lane;
  const real_t v = __shfl_sync(0xffffffffu, (real_t)lane, lane);
  if (threadIdx.x < 32) y[lane] = tile[lane] + v;
}
