// gpuconv host simulator: the CUDA C device API for g++, force-included (-include) before a
// kernel translation unit. Each thread of a block is a fiber (its own stack); a block's fibers run one
// at a time and give control back only at __syncthreads, a warp collective, or their end, so a
// kernel without barriers costs two context switches per thread. Blocks run one after another.
// __shared__ is static storage in the "gpuconv_shared" section, refilled with 0xFF (a NaN for
// floats) before every block so a read before the barrier that should have ordered it shows up.
// The tensor-core instructions (kernels/mma.cuh) build on two pieces here: warp_instruction, a
// collective over all 32 lanes for mma.sync/ldmatrix, and a per-thread queue of deferred copies
// for cp.async, performed only at the wait that retires them.
#pragma once
#include <float.h>
#include <limits.h>
#include <math.h>  // libstdc++'s math.h: float overloads of exp/log/... in the global namespace
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <type_traits>
#include <ucontext.h>
#include <unistd.h>
#include <utility>
#ifdef __SANITIZE_ADDRESS__
#include <dlfcn.h>
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ __attribute__((section("gpuconv_shared"))) static
#define __syncthreads() ((void)gpuconv_sim::block_barrier(__FILE__, __LINE__, 0, 0))
#define __syncthreads_count(p) gpuconv_sim::block_barrier(__FILE__, __LINE__, 1, (p))
#define __syncthreads_and(p) gpuconv_sim::block_barrier(__FILE__, __LINE__, 2, (p))
#define __syncthreads_or(p) gpuconv_sim::block_barrier(__FILE__, __LINE__, 3, (p))
#define GPUCONV_DYN_SMEM_MAX 232448  // 227 KiB: the largest opt-in dynamic shared memory (H100)

struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
#define GPUCONV_VEC(T, N, A, ...) \
  struct __attribute__((aligned(A))) N { T __VA_ARGS__; };
GPUCONV_VEC(float, float2, 8, x, y) GPUCONV_VEC(float, float3, 4, x, y, z)
GPUCONV_VEC(float, float4, 16, x, y, z, w) GPUCONV_VEC(double, double2, 16, x, y)
GPUCONV_VEC(double, double4, 32, x, y, z, w) GPUCONV_VEC(int, int2, 8, x, y)
GPUCONV_VEC(int, int3, 4, x, y, z) GPUCONV_VEC(int, int4, 16, x, y, z, w)
GPUCONV_VEC(unsigned, uint2, 8, x, y) GPUCONV_VEC(unsigned, uint4, 16, x, y, z, w)
GPUCONV_VEC(unsigned char, uchar4, 4, x, y, z, w) GPUCONV_VEC(long long, longlong2, 16, x, y)
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float3 make_float3(float x, float y, float z) { return {x, y, z}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline double2 make_double2(double x, double y) { return {x, y}; }
inline double4 make_double4(double x, double y, double z, double w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int3 make_int3(int x, int y, int z) { return {x, y, z}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return {x, y, z}; }
inline dim3 make_dim3(unsigned x, unsigned y, unsigned z) { return dim3(x, y, z); }

// The thread's coordinates: plain globals the scheduler rewrites before every switch.
static uint3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
static const int warpSize = 32;

namespace gpuconv_sim {
#if defined(__x86_64__) && !defined(GPUCONV_SIM_UCONTEXT)
// A context is a saved stack pointer with the callee-saved registers pushed under it: about
// 5 ns a switch, where swapcontext's signal-mask system call costs 0.3-0.5 us.
struct Context { void* sp; };
extern "C" __attribute__((visibility("hidden"))) void gpuconv_sim_switch(void** save, void* to);
extern "C" __attribute__((visibility("hidden"))) void gpuconv_sim_thunk();
asm(R"(
  .text
  .hidden gpuconv_sim_switch
  .hidden gpuconv_sim_thunk
  .type gpuconv_sim_switch, @function
gpuconv_sim_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size gpuconv_sim_switch, .-gpuconv_sim_switch
  .type gpuconv_sim_thunk, @function
gpuconv_sim_thunk:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size gpuconv_sim_thunk, .-gpuconv_sim_thunk
)");
inline void ctx_swap(Context* from, Context* to) { gpuconv_sim_switch(&from->sp, to->sp); }
inline void ctx_make(Context* c, char* stack, size_t size, void (*fn)(int), int arg) {
  void** sp = (void**)(((uintptr_t)(stack + size)) & ~(uintptr_t)15) - 7;
  sp[0] = sp[1] = sp[4] = sp[5] = nullptr;  // r15 r14 rbx rbp (rbp 0 ends frame-pointer unwinds)
  sp[2] = (void*)fn; sp[3] = (void*)(intptr_t)arg; sp[6] = (void*)gpuconv_sim_thunk;
  c->sp = sp;
}
#else
struct Context { ucontext_t uc; };
inline void ctx_swap(Context* from, Context* to) { swapcontext(&from->uc, &to->uc); }
inline void ctx_make(Context* c, char* stack, size_t size, void (*fn)(int), int arg) {
  getcontext(&c->uc);
  c->uc.uc_stack.ss_sp = stack; c->uc.uc_stack.ss_size = size; c->uc.uc_link = nullptr;
  makecontext(&c->uc, (void (*)())fn, 1, arg);
}
#endif
enum State { READY, AT_BARRIER, AT_WARP, DONE };
enum WarpOp { W_SYNC, W_IDX, W_UP, W_DOWN, W_XOR, W_BALLOT, W_INSN };
// A cp.async copy issued and not yet performed: `bytes` land at dst, the first src_bytes read
// from src and the rest zero; `group` is the commit group it belongs to (the count of groups the
// thread had committed when it was issued).
struct DeferredCopy { void* dst; const void* src; unsigned bytes, src_bytes, group; };
#define GPUCONV_SIM_COPIES_MAX 256  // cp.async in flight per thread (a 3-stage GEMM uses about 24)
struct Fiber {
  Context ctx;
  char* map; size_t map_size; char* stack; size_t stack_size;
  int state; bool fresh;
  uint3 tid; unsigned lane, warp;
  const char* file; int line, pred;           // barrier call site and predicate
  int wop, arg, width; unsigned mask;          // pending warp collective
  uint64_t value, result;                      // exchange slot and what the lane receives
  const char* insn; void (*insn_fn)(void* const*); void* insn_ops;  // pending warp instruction
  const char* insn_file; int insn_line;        // ... and where the kernel called it
  DeferredCopy* copies; unsigned ncopies, groups;  // cp.async in flight; groups committed so far
  uint32_t* open; uint32_t nopen, cap_open;   // async proxy: the write intervals it has not fenced
  uint32_t landed, ran_epoch;                  // ... its interval of landed cp.async; in the running set
  bool proxy_fenced;                           // gave control back at fence.proxy.async
  void* fake_stack;
};
struct Runtime {
  Fiber** fibers; unsigned capacity, n; size_t stack_size;
  Fiber* cur; Context sched; void* sched_fake;
  const void* main_bottom; size_t main_size;
  void (*entry)(void**); void** args; const char* kernel;
  int reverse, status, in_launch, bar_count; char msg[8192];
  size_t dyn_bytes;         // dynamic shared memory of this launch
  unsigned insn_warp;       // the warp whose instruction is being executed (for its messages)
  const Fiber* insn_lane0;  // ... and its lane 0 (the instruction's name and call site)
  unsigned long long block_serial;  // counts the blocks run since the module loaded
  // Checks state that warp instructions keep per warp outside the fibers (wgmma's warpgroups) once
  // every thread has reached a __syncthreads or returned; nonzero with status and msg set. Null
  // until a kernel's first such instruction installs it.
  int (*block_check)(const char* file, int line);
};
static Runtime rt;
// Dynamic shared memory. CUDA promises the extern array 16-byte alignment, no more (whatever its
// __align__ says): the forward schedule gives it a 1024-byte boundary, the reverse one 16 bytes
// past one, so a kernel that relies on more than 16 fails there.
#define GPUCONV_DYN_SMEM_SKEW 16
alignas(1024) static unsigned char dyn_smem_buffer[GPUCONV_DYN_SMEM_MAX + GPUCONV_DYN_SMEM_SKEW];
static unsigned char* dyn_smem = dyn_smem_buffer;  // this launch's extern array
__attribute__((section("gpuconv_shared"), used)) static char shared_anchor[16];

inline void switch_to_scheduler(Fiber* f) {
#ifdef __SANITIZE_ADDRESS__
  __sanitizer_start_switch_fiber(&f->fake_stack, rt.main_bottom, rt.main_size);
#endif
  ctx_swap(&f->ctx, &rt.sched);
#ifdef __SANITIZE_ADDRESS__
  __sanitizer_finish_switch_fiber(f->fake_stack, &rt.main_bottom, &rt.main_size);
#endif
}

inline int block_barrier(const char* file, int line, int kind, int pred) {
  Fiber* f = rt.cur;
  f->state = AT_BARRIER; f->file = file; f->line = line; f->pred = pred != 0;
  switch_to_scheduler(f);
  if (kind == 1) return rt.bar_count;
  if (kind == 2) return rt.bar_count == (int)rt.n;
  return kind == 3 ? rt.bar_count > 0 : 0;
}

inline uint64_t warp_op(int op, unsigned mask, uint64_t v, int arg, int width) {
  Fiber* f = rt.cur;
  f->state = AT_WARP; f->wop = op; f->mask = mask; f->value = v; f->arg = arg; f->width = width;
  switch_to_scheduler(f);
  return f->result;
}
unsigned warp_lanes();       // the lanes that exist in the calling thread's warp
unsigned warp_live_lanes();  // ... and have not returned

// A .sync.aligned warp instruction (mma.sync, ldmatrix): each lane parks a pointer to its
// operands; once all 32 lanes of the warp wait at the same instruction (same lane function, same
// call site), `fn` runs once with the 32 operand pointers in lane order and the lanes resume.
// A warp that cannot get there (a lane exited, waits at __syncthreads or at another instruction,
// or the warp has fewer than 32 threads) is reported as warp divergence naming the instruction,
// never a hang.
inline void warp_instruction(const char* name, void (*fn)(void* const*), void* ops, const char* file, int line) {
  Fiber* f = rt.cur;
  f->state = AT_WARP; f->wop = W_INSN; f->mask = 0xffffffffu;
  f->insn = name; f->insn_fn = fn; f->insn_ops = ops; f->insn_file = file; f->insn_line = line;
  switch_to_scheduler(f);
}
// Errors found by an instruction: insn_error from a warp instruction's lane function ("kernel K,
// block B, warp W: <name> (file:line): <fmt>"), thread_error from a thread ("kernel K, block B
// thread T <fmt>", fmt a verb phrase: "called __trap()"; it does not return). Both end the
// launch with a SimulatorError.
void insn_error(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void thread_error(const char* fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
// Whether [p, p + n) lies in this launch's shared memory (static __shared__ or dynamic).
bool shared_range(const void* p, size_t n);
// Registers a __shared__ variable that g++ left outside the "gpuconv_shared" section (a static
// local of a template: the source rewrite calls this after each __shared__ declaration). From
// then on it is poisoned with the section before every block, and poisoned now.
bool shared_var(void* p, size_t n);
// The block's shared-memory window as instructions address it (a 32-bit shared address: cp.async
// and ldmatrix operands, wgmma's matrix descriptors). shared_address(p) is p's place in the window:
// each shared array a block addresses gets its window range on first use (arrays never overlap,
// the window stays under the 256 KiB a descriptor's 14-bit field of 16-byte units can name), at an
// offset congruent to its host address modulo 1024, so the address bits 0-9 that the hardware's
// swizzles read are the host's. shared_pointer(a, n) is the host memory behind window bytes
// [a, a + n), null where they are not one array's. Both end the launch with an error naming the
// problem (p not in shared memory, an address outside every array).
unsigned shared_address(const void* p);
void* shared_pointer(unsigned a, size_t n);
// The serial number of the running block (distinct for every block of every launch): per-warp
// state kept outside the fibers (wgmma's queue) is reset when it changes.
inline unsigned long long block_serial() { return rt.block_serial; }
// The calling thread's queue of deferred copies (cp.async): defer_copy adds one to the open group,
// commit_copies closes that group, complete_copies(keep) performs, in issue order, every copy of
// all but the `keep` most recently committed groups (copies not yet committed stay queued).
void defer_copy(void* dst, const void* src, unsigned bytes, unsigned src_bytes);
void commit_copies();
void complete_copies(unsigned keep);
// The async proxy (wgmma's operand reads through matrix descriptors) as the PTX ISA's memory model
// has it: a generic-proxy write to shared memory (a store, a landed cp.async) reaches an
// async-proxy read only through fence.proxy.async.shared::cta by the writing thread and then a
// barrier (__syncthreads) before the read. In a unit whose PTX mapping reads through the async
// proxy (async_proxy_unit, called once by kernels/wgmma.cuh), the simulator attributes the changes
// of shared memory to the threads that made them (comparing it with a shadow copy after each pass
// of the scheduler over a warp, a thread giving control back at its fence so that a pass ends its
// run there; a landed cp.async at once) and keeps, per byte, the threads its last write may be
// from and the barrier interval in which all of them had fenced it.
// fence_proxy_async is the fence; async_proxy_unpublished(p, n) returns the first of the n bytes at
// p whose last generic write has not reached the async proxy (null when all have), and
// async_proxy_describe says why, for the reading instruction's error. A kernel's first launch
// learns whether it uses the async proxy; one that does not runs without the comparisons after.
bool async_proxy_unit();
void fence_proxy_async();
const void* async_proxy_unpublished(const void* p, size_t n);
void async_proxy_describe(const void* p, char* buf, size_t size);
template <class T> inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type over 8 bytes");
  uint64_t b = 0; memcpy(&b, &v, sizeof(T)); return b;
}
template <class T> inline T from_bits(uint64_t b) { T v; memcpy(&v, &b, sizeof(T)); return v; }

// Kernel entry: unpack the argument addresses Python packed into a void* array.
template <class... A, size_t... I>
inline void invoke_impl(void (*f)(A...), void** a, std::index_sequence<I...>) {
  f(*static_cast<A*>(a[I])...);
}
template <class... A> inline void invoke(void (*f)(A...), void** a) {
  invoke_impl(f, a, std::index_sequence_for<A...>{});
}

// The parameter types as the compiler sees them ("const f4*,i4,..."): the argument checks
// trust this rather than a regex over the source, so typedefs and macros cannot fool them.
template <class T> struct VecName { static constexpr const char* name = nullptr; };
#define GPUCONV_VNAME(N, S) template <> struct VecName<N> { static constexpr const char* name = S; };
GPUCONV_VNAME(float2, "v2f4") GPUCONV_VNAME(float3, "v3f4") GPUCONV_VNAME(float4, "v4f4")
GPUCONV_VNAME(double2, "v2f8") GPUCONV_VNAME(double4, "v4f8") GPUCONV_VNAME(int2, "v2i4")
GPUCONV_VNAME(int3, "v3i4") GPUCONV_VNAME(int4, "v4i4") GPUCONV_VNAME(uint2, "v2u4")
GPUCONV_VNAME(uint4, "v4u4") GPUCONV_VNAME(uchar4, "v4u1") GPUCONV_VNAME(longlong2, "v2i8")
// A struct element type that names its NumPy dtype (static constexpr const char* numpy_dtype,
// as kernels/common.cuh's bf16_t and half_t do) is reported as "=<dtype name>".
template <class T, class = void> struct HasNumpyDtype : std::false_type {};
template <class T> struct HasNumpyDtype<T, std::void_t<decltype(T::numpy_dtype)>> : std::true_type {};
template <class T> inline void put_type(char* b) {
  char tmp[16];
  if constexpr (std::is_pointer<T>::value) {
    using P = typename std::remove_pointer<T>::type;
    if (std::is_const<P>::value) strcat(b, "const ");
    if (std::is_void<P>::value) strcat(b, "void");
    else put_type<typename std::remove_cv<P>::type>(b);
    strcat(b, "*");
  } else if constexpr (std::is_same<T, bool>::value) {
    strcat(b, "b1");
  } else if constexpr (std::is_floating_point<T>::value || std::is_integral<T>::value) {
    snprintf(tmp, sizeof tmp, "%c%zu",
             std::is_floating_point<T>::value ? 'f' : (std::is_signed<T>::value ? 'i' : 'u'), sizeof(T));
    strcat(b, tmp);
  } else if constexpr (VecName<T>::name != nullptr) {
    strcat(b, VecName<T>::name);
  } else if constexpr (HasNumpyDtype<T>::value) {
    strcat(b, "="); strcat(b, T::numpy_dtype);
  } else {
    snprintf(tmp, sizeof tmp, "?%zu", sizeof(T)); strcat(b, tmp);
  }
}
template <class... A> inline const char* signature(void (*)(A...)) {
  static char buf[1024];
  if (!buf[0]) { buf[0] = '\0'; ((strcat(buf, buf[0] ? "," : ""), put_type<A>(buf)), ...); }
  return buf[0] ? buf : "";
}
}  // namespace gpuconv_sim

// ---- device functions ----------------------------------------------------------------------
template <class A, class B> inline typename std::common_type<A, B>::type min(A a, B b) { return b < a ? b : a; }
template <class A, class B> inline typename std::common_type<A, B>::type max(A a, B b) { return a < b ? b : a; }
using std::isfinite; using std::isinf; using std::isnan;
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fmul_rn(float x, float y) { return x * y; }
inline double __dmul_rn(double x, double y) { return x * y; }  // never contracted: the build passes -ffp-contract=off
inline double __dadd_rn(double x, double y) { return x + y; }
inline float __fadd_rn(float x, float y) { return x + y; }
inline float __fmaf_rn(float x, float y, float z) { return fmaf(x, y, z); }
inline double __fma_rn(double x, double y, double z) { return fma(x, y, z); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline float __int2float_rn(int x) { return (float)x; }
inline int __float_as_int(float x) { return gpuconv_sim::from_bits<int>(gpuconv_sim::to_bits(x)); }
inline unsigned __float_as_uint(float x) { return gpuconv_sim::from_bits<unsigned>(gpuconv_sim::to_bits(x)); }
inline float __int_as_float(int x) { return gpuconv_sim::from_bits<float>(gpuconv_sim::to_bits(x)); }
inline float __uint_as_float(unsigned x) { return gpuconv_sim::from_bits<float>(gpuconv_sim::to_bits(x)); }
inline long long __double_as_longlong(double x) { return gpuconv_sim::from_bits<long long>(gpuconv_sim::to_bits(x)); }
inline double __longlong_as_double(long long x) { return gpuconv_sim::from_bits<double>(gpuconv_sim::to_bits(x)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <class T> inline T __ldg(const T* p) { return *p; }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __trap() { gpuconv_sim::thread_error("called __trap()"); }

// Atomics are plain read-modify-write: fibers never preempt one another.
template <class T, class U> inline T atomicAdd(T* p, U v) { T o = *p; *p = (T)(o + (T)v); return o; }
template <class T, class U> inline T atomicSub(T* p, U v) { T o = *p; *p = (T)(o - (T)v); return o; }
template <class T, class U> inline T atomicMax(T* p, U v) { T o = *p; if (o < (T)v) *p = (T)v; return o; }
template <class T, class U> inline T atomicMin(T* p, U v) { T o = *p; if ((T)v < o) *p = (T)v; return o; }
template <class T, class U> inline T atomicExch(T* p, U v) { T o = *p; *p = (T)v; return o; }
template <class T, class U> inline T atomicAnd(T* p, U v) { T o = *p; *p = o & (T)v; return o; }
template <class T, class U> inline T atomicOr(T* p, U v) { T o = *p; *p = o | (T)v; return o; }
template <class T, class U> inline T atomicXor(T* p, U v) { T o = *p; *p = o ^ (T)v; return o; }
template <class T, class U, class V> inline T atomicCAS(T* p, U cmp, V v) {
  T o = *p; if (o == (T)cmp) *p = (T)v; return o;
}

// Warp collectives: each lane parks its value in its exchange slot; the scheduler releases
// the lanes named in the mask once all of them have arrived and hands each its source's value.
template <class T> inline T __shfl_sync(unsigned m, T v, int src, int width = 32) {
  return gpuconv_sim::from_bits<T>(gpuconv_sim::warp_op(gpuconv_sim::W_IDX, m, gpuconv_sim::to_bits(v), src, width));
}
template <class T> inline T __shfl_up_sync(unsigned m, T v, unsigned d, int width = 32) {
  return gpuconv_sim::from_bits<T>(gpuconv_sim::warp_op(gpuconv_sim::W_UP, m, gpuconv_sim::to_bits(v), (int)d, width));
}
template <class T> inline T __shfl_down_sync(unsigned m, T v, unsigned d, int width = 32) {
  return gpuconv_sim::from_bits<T>(gpuconv_sim::warp_op(gpuconv_sim::W_DOWN, m, gpuconv_sim::to_bits(v), (int)d, width));
}
template <class T> inline T __shfl_xor_sync(unsigned m, T v, int lm, int width = 32) {
  return gpuconv_sim::from_bits<T>(gpuconv_sim::warp_op(gpuconv_sim::W_XOR, m, gpuconv_sim::to_bits(v), lm, width));
}
inline unsigned __ballot_sync(unsigned m, int p) {
  return (unsigned)gpuconv_sim::warp_op(gpuconv_sim::W_BALLOT, m, p != 0, 0, 32);
}
inline int __any_sync(unsigned m, int p) { return __ballot_sync(m, p) != 0; }
inline int __all_sync(unsigned m, int p) { return __ballot_sync(m, p) == (m & gpuconv_sim::warp_lanes()); }
inline void __syncwarp(unsigned m = 0xffffffffu) { gpuconv_sim::warp_op(gpuconv_sim::W_SYNC, m, 0, 0, 32); }
inline unsigned __activemask() { return gpuconv_sim::warp_live_lanes(); }
inline unsigned __lanemask_lt() { return (1u << gpuconv_sim::rt.cur->lane) - 1u; }

#include "cuda_sim_runtime.h"
