// gpuconv host simulator: the block scheduler (included at the end of cuda_sim.h).
// Python calls gpuconv_sim_launch through ctypes; a nonzero status comes back with a message
// (gpuconv_sim_error) that the Python side raises as BarrierDivergence or SimulatorError.
#pragma once
extern "C" __attribute__((visibility("hidden"))) char __start_gpuconv_shared[], __stop_gpuconv_shared[];

namespace gpuconv_sim {
enum Status { OK = 0, DIVERGENCE = 1, SETUP = 2, TRAP = 3 };

unsigned warp_lanes() {
  unsigned first = rt.cur->warp * 32, cnt = rt.n - first;
  return cnt >= 32 ? 0xffffffffu : (1u << cnt) - 1u;
}
unsigned warp_live_lanes() {
  unsigned bits = 0, first = rt.cur->warp * 32;
  for (unsigned l = 0; l < 32 && first + l < rt.n; ++l)
    if (rt.fibers[first + l]->state != DONE) bits |= 1u << l;
  return bits;
}

static int append(size_t& at, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static int append_v(size_t& at, const char* fmt, va_list ap) {
  int w = at < sizeof rt.msg ? vsnprintf(rt.msg + at, sizeof rt.msg - at, fmt, ap) : 0;
  if (w > 0) at = at + w < sizeof rt.msg ? at + w : sizeof rt.msg - 1;
  return w;
}
static int append(size_t& at, const char* fmt, ...) {
  va_list ap; va_start(ap, fmt);
  int w = append_v(at, fmt, ap);
  va_end(ap);
  return w;
}

void thread_error(const char* fmt, ...) {
  size_t at = 0;
  append(at, "kernel %s, block (%u,%u,%u) thread (%u,%u,%u) ", rt.kernel, blockIdx.x, blockIdx.y, blockIdx.z,
         threadIdx.x, threadIdx.y, threadIdx.z);
  va_list ap; va_start(ap, fmt); append_v(at, fmt, ap); va_end(ap);
  rt.status = TRAP;
  switch_to_scheduler(rt.cur);
  abort();  // the scheduler never resumes a fiber that failed
}

void insn_error(const char* fmt, ...) {
  size_t at = 0;
  const Fiber* f = rt.insn_lane0;
  append(at, "kernel %s, block (%u,%u,%u), warp %u: %s (%s:%d): ", rt.kernel, blockIdx.x, blockIdx.y, blockIdx.z,
         rt.insn_warp, f->insn, f->insn_file, f->insn_line);
  va_list ap; va_start(ap, fmt); append_v(at, fmt, ap); va_end(ap);
  rt.status = TRAP;
}

static void proxy_var(char* p, size_t n);  // the async proxy tracks a variable registered mid-block
// The __shared__ variables outside the section (see shared_var), for the life of the module.
struct SharedVar { char* p; size_t n; };
static SharedVar* shared_vars;
static unsigned n_shared_vars, cap_shared_vars;

static bool in_range(const char* c, size_t n, const char* lo, const char* hi) { return c >= lo && c + n <= hi && c + n >= c; }

bool shared_range(const void* p, size_t n) {
  const char* c = (const char*)p;
  if (in_range(c, n, __start_gpuconv_shared, __stop_gpuconv_shared)) return true;
  if (in_range(c, n, (const char*)dyn_smem, (const char*)dyn_smem + rt.dyn_bytes)) return true;
  for (unsigned i = 0; i < n_shared_vars; ++i)
    if (in_range(c, n, shared_vars[i].p, shared_vars[i].p + shared_vars[i].n)) return true;
  return false;
}

bool shared_var(void* p, size_t n) {
  if (in_range((const char*)p, n, __start_gpuconv_shared, __stop_gpuconv_shared)) return true;
  if (n_shared_vars == cap_shared_vars) {
    unsigned cap = cap_shared_vars ? 2 * cap_shared_vars : 16;
    SharedVar* grown = (SharedVar*)realloc(shared_vars, cap * sizeof(SharedVar));
    if (!grown) thread_error("declares a __shared__ variable, and the simulator cannot allocate its registry");
    shared_vars = grown; cap_shared_vars = cap;
  }
  shared_vars[n_shared_vars++] = {(char*)p, n};
  memset(p, 0xFF, n);  // the first thread to reach the declaration: nobody has written it yet
  proxy_var((char*)p, n);
  return true;
}

// The window ranges of the running block (see shared_address), in first-use order.
struct WindowRange { const char* host; size_t n; unsigned base; };
static WindowRange window[32];
static unsigned n_window;
static unsigned long long window_serial = ~0ull;

// The shared array holding p: a registered variable, the dynamic buffer, or the static section.
static bool shared_array(const char* p, const char** host, size_t* n) {
  for (unsigned i = 0; i < n_shared_vars; ++i)
    if (in_range(p, 1, shared_vars[i].p, shared_vars[i].p + shared_vars[i].n)) {
      *host = shared_vars[i].p; *n = shared_vars[i].n; return true;
    }
  if (in_range(p, 1, (const char*)dyn_smem, (const char*)dyn_smem + rt.dyn_bytes)) {
    *host = (const char*)dyn_smem; *n = rt.dyn_bytes; return true;
  }
  if (in_range(p, 1, __start_gpuconv_shared, __stop_gpuconv_shared)) {
    *host = __start_gpuconv_shared; *n = (size_t)(__stop_gpuconv_shared - __start_gpuconv_shared); return true;
  }
  return false;
}

unsigned shared_address(const void* p) {
  const char* c = (const char*)p;
  if (window_serial != rt.block_serial) { n_window = 0; window_serial = rt.block_serial; }
  for (unsigned i = 0; i < n_window; ++i)
    if (in_range(c, 1, window[i].host, window[i].host + window[i].n)) return window[i].base + (unsigned)(c - window[i].host);
  const char* host; size_t n;
  if (!shared_array(c, &host, &n))
    thread_error("takes the shared address of %p, which is not in shared memory: pass a __shared__ array", p);
  size_t end = n_window ? window[n_window - 1].base + window[n_window - 1].n : 0;
  size_t base = (end + 1023) / 1024 * 1024 + ((uintptr_t)host & 1023);
  if (n_window == sizeof window / sizeof window[0] || base + n > (1u << 18))
    thread_error("addresses more shared arrays (%u, ending past byte %zu) than a block's 256 KiB shared window holds",
                 n_window + 1, base + n);
  window[n_window++] = {host, n, (unsigned)base};
  return (unsigned)base + (unsigned)(c - host);
}

void* shared_pointer(unsigned a, size_t n) {
  if (window_serial != rt.block_serial) return nullptr;
  for (unsigned i = 0; i < n_window; ++i)
    if (a >= window[i].base && a + n <= window[i].base + window[i].n) return (void*)(window[i].host + (a - window[i].base));
  return nullptr;
}

// ---- the async proxy (see async_proxy_unit in cuda_sim.h) -------------------------------------
// The block's shared memory as one tracked space: the static section, the registered variables and
// the dynamic buffer, each a range at an offset `at` into the per-byte state: the shadow (the
// contents as last compared) and the write interval of the byte's last write (0: not written in
// this block). A write interval is the changes one comparison found, made by the threads that ran
// since the comparison before (its members: one thread, or several, told apart no further). It is
// fenced once every member has executed fence.proxy.async after its part of it (whichever member
// wrote a byte, its writer did), in the barrier interval (the count of __syncthreads the block had
// passed) of the last of those fences; a byte reaches the async proxy once its write interval was
// fenced in an earlier barrier interval than the reader's.
// Memory is compared after each pass of the scheduler over a warp's ready lanes, before it releases
// the warp's instruction, collective or barrier. A thread gives control back at fence.proxy.async,
// so a pass holds each lane's run up to its fence, never past it: a lane that fenced in the pass has
// fenced its part of the pass's interval, and any earlier ones. A landed cp.async is its thread's
// at once. A member that wrote nothing owes its fence all the same (a lane that ran on to a
// barrier in the pass where the others stored and fenced): a conservative rule, never a missed fence.
struct ProxyRange { char* host; size_t n, at; };
struct ProxyInterval { uint32_t fenced, pending, members, count; };  // fenced: the barrier interval, or UNFENCED
struct ProxyMember { uint32_t thread, interval; bool fenced; };
#define GPUCONV_SIM_UNFENCED 0xFFFFFFFFu
static struct AsyncProxy {
  bool unit;           // the unit maps an instruction that reads through the async proxy
  bool on;             // this launch tracks
  ProxyRange ranges[64]; unsigned nranges;
  size_t bytes, cap;
  unsigned char* shadow; uint32_t* interval;  // per tracked byte
  ProxyInterval* intervals; uint32_t nintervals, cap_intervals;  // of this block (0 unused)
  ProxyMember* members; uint32_t nmembers, cap_members;          // ... their members, interval by interval
  uint32_t phase;      // __syncthreads passed by the block
  unsigned* ran; unsigned nran, cap_ran;  // the threads that ran since the last comparison
  uint32_t epoch;      // comparisons so far (a thread's ran_epoch: it is in `ran`)
  struct Kernel { void (*entry)(void**); bool uses; } kernels[256], *kernel;  // launched so far; this launch's
  unsigned nkernels;
} proxy;

bool async_proxy_unit() { return proxy.unit = true; }

// Whether this launch tracks: always a kernel's first launch (it learns whether the kernel executes
// an async-proxy instruction), later ones where it did; every launch once the table is full.
static void proxy_launch() {
  proxy.kernel = nullptr; proxy.on = false;
  if (!proxy.unit) return;
  for (unsigned i = 0; i < proxy.nkernels && !proxy.kernel; ++i)
    if (proxy.kernels[i].entry == rt.entry) proxy.kernel = &proxy.kernels[i];
  if (proxy.kernel) { proxy.on = proxy.kernel->uses; return; }
  if (proxy.nkernels < sizeof proxy.kernels / sizeof proxy.kernels[0]) {
    proxy.kernel = &proxy.kernels[proxy.nkernels++];
    *proxy.kernel = {rt.entry, false};
  }
  proxy.on = true;
}

// An async-proxy instruction ran: the kernel uses the proxy (tracked from its next launch on, if
// this one is not).
static void proxy_used() {
  if (proxy.kernel) proxy.kernel->uses = true;
}

template <class T> static bool proxy_grow(T*& p, uint32_t& cap, size_t need) {
  if (need <= cap) return true;
  size_t c = need > 2 * (size_t)cap ? need : 2 * (size_t)cap;
  if (c > UINT32_MAX) return false;
  T* grown = (T*)realloc(p, c * sizeof(T));
  if (!grown) return false;
  p = grown; cap = (uint32_t)c;
  return true;
}

static bool proxy_add_range(char* host, size_t n) {
  if (proxy.nranges == sizeof proxy.ranges / sizeof proxy.ranges[0]) return false;
  size_t need = proxy.bytes + n;
  if (need > proxy.cap) {
    size_t cap = need > 2 * proxy.cap ? need : 2 * proxy.cap;
    unsigned char* shadow = (unsigned char*)realloc(proxy.shadow, cap);
    if (shadow) proxy.shadow = shadow;
    uint32_t* interval = (uint32_t*)realloc(proxy.interval, cap * sizeof(uint32_t));
    if (interval) proxy.interval = interval;
    if (!shadow || !interval) return false;
    proxy.cap = cap;
  }
  proxy.ranges[proxy.nranges++] = {host, n, proxy.bytes};
  memset(proxy.shadow + proxy.bytes, 0xFF, n);  // as the block starts, or as shared_var poisons it
  memset(proxy.interval + proxy.bytes, 0, n * sizeof(uint32_t));
  proxy.bytes = need;
  return true;
}

// The tracked offset of [p, p + n) (one array's bytes), or SIZE_MAX where they are not tracked.
static size_t proxy_offset(const void* p, size_t n) {
  const char* c = (const char*)p;
  for (unsigned i = 0; i < proxy.nranges; ++i)
    if (in_range(c, n, proxy.ranges[i].host, proxy.ranges[i].host + proxy.ranges[i].n))
      return proxy.ranges[i].at + (size_t)(c - proxy.ranges[i].host);
  return SIZE_MAX;
}

// A new write interval of `count` members, each of which owes it a fence: on each member's list of
// open intervals (a member whose list cannot grow never fences it). 0 (no tracking from here on)
// when the tables cannot grow.
static uint32_t proxy_interval(const unsigned* threads, unsigned count) {
  if (!proxy_grow(proxy.intervals, proxy.cap_intervals, (size_t)proxy.nintervals + 1) ||
      !proxy_grow(proxy.members, proxy.cap_members, (size_t)proxy.nmembers + count)) {
    proxy.on = false;
    return 0;
  }
  const uint32_t id = proxy.nintervals++;
  proxy.intervals[id] = {GPUCONV_SIM_UNFENCED, count, proxy.nmembers, count};
  for (unsigned i = 0; i < count; ++i) {
    Fiber* f = rt.fibers[threads[i]];
    proxy.members[proxy.nmembers] = {threads[i], id, false};
    if (proxy_grow(f->open, f->cap_open, (size_t)f->nopen + 1)) f->open[f->nopen++] = proxy.nmembers;
    ++proxy.nmembers;
  }
  return id;
}

// Thread f's fence.proxy.async: its part of each of its open write intervals fenced; an interval of
// which it is the last member to fence is fenced in this barrier interval.
static void proxy_fence(Fiber* f) {
  for (uint32_t i = 0; i < f->nopen; ++i) {
    ProxyMember& m = proxy.members[f->open[i]];
    m.fenced = true;
    if (!--proxy.intervals[m.interval].pending) proxy.intervals[m.interval].fenced = proxy.phase;
  }
  f->nopen = 0; f->landed = 0;
}

// The first multiple of 64 bytes from i (below n - 63) where the bytes at a and b differ, or the
// end of those. The comparisons are most of the model's cost: glibc's memcmp, in 4 KiB pieces
// (ASan's would check the section's redzones: word by word there).
__attribute__((no_sanitize_address)) static size_t proxy_next_diff(const unsigned char* a, const unsigned char* b,
                                                                   size_t i, size_t n) {
#ifdef __SANITIZE_ADDRESS__
  for (; i + 64 <= n; i += 64) {
    uint64_t d = 0;
    for (int j = 0; j < 64; j += 8) {
      uint64_t x, y;
      __builtin_memcpy(&x, a + i + j, 8); __builtin_memcpy(&y, b + i + j, 8);
      d |= x ^ y;
    }
    if (d) return i;
  }
#else
  while (i + 64 <= n) {
    const size_t piece = (n - i) / 64 * 64 < 4096 ? (n - i) / 64 * 64 : 4096;
    if (!memcmp(a + i, b + i, piece)) { i += piece; continue; }
    for (const size_t end = i + piece; i < end; i += 64)
      if (memcmp(a + i, b + i, 64)) return i;
  }
#endif
  return i;
}

// Gives the bytes that changed since the last comparison a write interval of the threads that ran
// since, then fences those of them that gave control back at a fence (proxy_fence). Without ASan
// checks: the static section holds redzones between its arrays.
__attribute__((no_sanitize_address)) static void proxy_scan() {
  if (!proxy.nran) return;
  uint32_t id = 0;
  for (unsigned r = 0; r < proxy.nranges && proxy.on; ++r) {
    const unsigned char* m = (const unsigned char*)proxy.ranges[r].host;
    unsigned char* s = proxy.shadow + proxy.ranges[r].at;
    uint32_t* iv = proxy.interval + proxy.ranges[r].at;
    const size_t n = proxy.ranges[r].n;
    for (size_t i = 0; i < n && proxy.on;) {
      i = proxy_next_diff(m, s, i, n);
      const size_t end = i + 64 <= n ? i + 64 : n;
      for (; i < end; ++i) {
        if (m[i] == s[i]) continue;
        if (!id && !(id = proxy_interval(proxy.ran, proxy.nran))) break;
        s[i] = m[i]; iv[i] = id;
      }
    }
  }
  for (unsigned i = 0; i < proxy.nran; ++i) {  // (cleared also where tracking stopped: they count as passes)
    Fiber* f = rt.fibers[proxy.ran[i]];
    if (f->proxy_fenced && proxy.on) proxy_fence(f);
    f->proxy_fenced = false;
  }
  proxy.nran = 0; ++proxy.epoch;
}

// Thread f runs next: a member of the next write interval.
static void proxy_ran(Fiber* f) {
  if (f->ran_epoch == proxy.epoch + 1) return;
  if (!proxy_grow(proxy.ran, proxy.cap_ran, (size_t)proxy.nran + 1)) { proxy.on = false; return; }
  proxy.ran[proxy.nran++] = f->warp * 32 + f->lane;
  f->ran_epoch = proxy.epoch + 1;
}

// The n bytes at p were written by the calling thread (a landed cp.async: written even where the
// bytes equal what was there), in its interval of landed copies since its last fence.
static void proxy_store(const void* p, size_t n) {
  Fiber* f = rt.cur;
  const size_t at = proxy_offset(p, n);
  if (at == SIZE_MAX) return;
  if (!f->landed) {
    const unsigned me = f->warp * 32 + f->lane;
    if (!(f->landed = proxy_interval(&me, 1))) return;
  }
  memcpy(proxy.shadow + at, p, n);
  for (size_t i = 0; i < n; ++i) proxy.interval[at + i] = f->landed;
}

// fence.proxy.async by the calling thread: it gives control back (staying ready), its writes so far
// fenced by the comparison that ends the scheduler's pass (proxy_scan), and runs on in the next pass.
void fence_proxy_async() {
  proxy_used();
  if (!proxy.on) return;
  rt.cur->proxy_fenced = true;
  switch_to_scheduler(rt.cur);
}

const void* async_proxy_unpublished(const void* p, size_t n) {
  proxy_used();
  if (!proxy.on) return nullptr;
  const size_t at = proxy_offset(p, n);
  for (size_t i = 0; at != SIZE_MAX && i < n; ++i) {
    const uint32_t id = proxy.interval[at + i];
    if (id && proxy.intervals[id].fenced >= proxy.phase) return (const char*)p + i;  // UNFENCED is the largest
  }
  return nullptr;
}

void async_proxy_describe(const void* p, char* buf, size_t size) {
  const size_t at = proxy_offset(p, 1);
  const uint32_t id = at == SIZE_MAX ? 0 : proxy.interval[at];
  if (!id) { snprintf(buf, size, "is published"); return; }
  const ProxyInterval& v = proxy.intervals[id];
  const ProxyMember* m = proxy.members + v.members;
  const Fiber* w = rt.fibers[m[0].thread];
  size_t at2 = 0;
  auto put = [&](const char* fmt, auto... a) {
    int k = at2 < size ? snprintf(buf + at2, size - at2, fmt, a...) : 0;
    if (k > 0) at2 = at2 + k < size ? at2 + k : size - 1;
  };
  put("was last written through the generic proxy (a store or a landed cp.async) by ");
  if (v.count == 1) put("thread (%u,%u,%u)", w->tid.x, w->tid.y, w->tid.z);
  else put("one of threads (%u,%u,%u) ... [%u threads that ran between two of the simulator's comparisons, each of "
           "which must fence]", w->tid.x, w->tid.y, w->tid.z, v.count);
  if (v.fenced != GPUCONV_SIM_UNFENCED) {
    put(", whose fence.proxy.async after it no __syncthreads has ordered before this read (fence and read are in the "
        "same barrier interval)");
    return;
  }
  put(v.count == 1 ? ", which has executed" : ", of which thread");
  unsigned missing = 0;
  for (uint32_t i = 0; i < v.count && v.count > 1; ++i) {
    if (m[i].fenced) continue;
    const Fiber* u = rt.fibers[m[i].thread];
    if (missing++ < 6) put("%s (%u,%u,%u)", missing > 1 ? "," : "", u->tid.x, u->tid.y, u->tid.z);
  }
  if (v.count > 1) put("%s [%u] %s executed", missing > 6 ? " ..." : "", missing, missing == 1 ? "has" : "have");
  put(" no fence.proxy.async since");
}

static void proxy_var(char* p, size_t n) {
  if (proxy.on && !proxy_add_range(p, n)) proxy.on = false;
}

// The block's shared memory tracked afresh, as poisoned, every byte unwritten.
static void proxy_block_start() {
  proxy.nranges = 0; proxy.bytes = 0; proxy.phase = 0; proxy.nran = 0; proxy.epoch = 0; proxy.nintervals = 1;
  proxy.nmembers = 0;
  for (unsigned i = 0; i < rt.n; ++i) {
    Fiber* f = rt.fibers[i];
    f->nopen = 0; f->landed = 0; f->ran_epoch = 0; f->proxy_fenced = false;
  }
  bool ok = proxy_grow(proxy.intervals, proxy.cap_intervals, 1024) &&
            proxy_add_range(__start_gpuconv_shared, (size_t)(__stop_gpuconv_shared - __start_gpuconv_shared)) &&
            proxy_add_range((char*)dyn_smem, rt.dyn_bytes);
  for (unsigned i = 0; ok && i < n_shared_vars; ++i) ok = proxy_add_range(shared_vars[i].p, shared_vars[i].n);
  if (!ok) proxy.on = false;  // out of memory: no tracking (never a false report)
}

void defer_copy(void* dst, const void* src, unsigned bytes, unsigned src_bytes) {
  Fiber* f = rt.cur;
  if (!f->copies && !(f->copies = (DeferredCopy*)malloc(GPUCONV_SIM_COPIES_MAX * sizeof(DeferredCopy))))
    thread_error("issues a cp.async, and the simulator cannot allocate its queue");
  if (f->ncopies == GPUCONV_SIM_COPIES_MAX)
    thread_error("has more than %d cp.async copies in flight: wait (cp.async.wait_group) before issuing more",
                 GPUCONV_SIM_COPIES_MAX);
  f->copies[f->ncopies++] = {dst, src, bytes, src_bytes, f->groups};
}

void commit_copies() { ++rt.cur->groups; }

void complete_copies(unsigned keep) {
  Fiber* f = rt.cur;
  unsigned kept = 0;
  for (unsigned i = 0; i < f->ncopies; ++i) {
    DeferredCopy c = f->copies[i];
    if (c.group + keep < f->groups) {  // committed, and older than the `keep` newest groups
      if (c.src_bytes) memcpy(c.dst, c.src, c.src_bytes);
      memset((char*)c.dst + c.src_bytes, 0, c.bytes - c.src_bytes);
      if (proxy.on) proxy_store(c.dst, c.bytes);
    } else {
      f->copies[kept++] = c;
    }
  }
  f->ncopies = kept;
}

static void fiber_main(int index) {
#ifdef __SANITIZE_ADDRESS__
  __sanitizer_finish_switch_fiber(nullptr, &rt.main_bottom, &rt.main_size);
#endif
  Fiber* f = rt.fibers[index];
  for (;;) {  // parked between launches; the scheduler resumes it for the next thread
    rt.entry(rt.args);
    f->state = DONE;
    switch_to_scheduler(f);
  }
}

static void resume(Fiber* f) {
  if (f->fresh) {
#ifdef __SANITIZE_ADDRESS__
    __asan_unpoison_memory_region(f->stack, f->stack_size);  // stale frames of an abandoned run
#endif
    ctx_make(&f->ctx, f->stack, f->stack_size, fiber_main, (int)(f->warp * 32 + f->lane));
    f->fresh = false;
  }
  rt.cur = f; threadIdx = f->tid;
#ifdef __SANITIZE_ADDRESS__
  __sanitizer_start_switch_fiber(&rt.sched_fake, f->stack, f->stack_size);
#endif
  ctx_swap(&rt.sched, &f->ctx);
#ifdef __SANITIZE_ADDRESS__
  __sanitizer_finish_switch_fiber(rt.sched_fake, nullptr, nullptr);
#endif
}

static void free_fibers() {
  for (unsigned i = 0; i < rt.capacity; ++i) {
    munmap(rt.fibers[i]->map, rt.fibers[i]->map_size); free(rt.fibers[i]->copies); free(rt.fibers[i]->open);
    free(rt.fibers[i]);
  }
  free(rt.fibers); rt.fibers = nullptr; rt.capacity = 0;
}

static bool ensure_fibers(unsigned n, size_t stack_size) {
  long page = sysconf(_SC_PAGESIZE);
  stack_size = (stack_size + page - 1) / page * page;
  if (rt.capacity && rt.stack_size != stack_size) free_fibers();
  rt.stack_size = stack_size;
  if (n <= rt.capacity) return true;
  Fiber** grown = (Fiber**)realloc(rt.fibers, n * sizeof(Fiber*));
  if (!grown) return false;
  rt.fibers = grown;
  for (; rt.capacity < n; ++rt.capacity) {
    Fiber* f = (Fiber*)calloc(1, sizeof(Fiber));
    size_t size = stack_size + page;  // the lowest page stays PROT_NONE: an overflow faults
    char* map = (char*)mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (!f || map == MAP_FAILED) { free(f); return false; }
    mprotect(map, page, PROT_NONE);
    f->map = map; f->map_size = size; f->stack = map + page; f->stack_size = stack_size; f->fresh = true;
    rt.fibers[rt.capacity] = f;
  }
  return true;
}


// "(0,0,0) (1,0,0) ... [16 threads]" for the fibers whose state matches (and site, if given).
static void list_threads(size_t& at, int state, const Fiber* site) {
  unsigned count = 0;
  for (unsigned i = 0; i < rt.n; ++i) {
    const Fiber* f = rt.fibers[i];
    if (f->state != state || (site && (f->line != site->line || strcmp(f->file, site->file)))) continue;
    if (count++ < 6) append(at, "(%u,%u,%u) ", f->tid.x, f->tid.y, f->tid.z);
  }
  append(at, "%s[%u thread%s]", count > 6 ? "... " : "", count, count == 1 ? "" : "s");
}

static int fail_header(size_t& at, const char* what) {
  at = 0;
  append(at, "kernel %s, block (%u,%u,%u): %s: ", rt.kernel, blockIdx.x, blockIdx.y, blockIdx.z, what);
  return DIVERGENCE;
}

static int barrier_divergence(const Fiber* waiting) {
  size_t at; fail_header(at, "barrier divergence");
  append(at, "threads "); list_threads(at, AT_BARRIER, waiting);
  append(at, " wait at __syncthreads (%s:%d) while threads ", waiting->file, waiting->line);
  const Fiber* other = nullptr;
  for (unsigned i = 0; i < rt.n && !other; ++i)
    if (rt.fibers[i]->state == AT_BARRIER && (rt.fibers[i]->line != waiting->line || strcmp(rt.fibers[i]->file, waiting->file)))
      other = rt.fibers[i];
  if (other) { list_threads(at, AT_BARRIER, other); append(at, " wait at a different __syncthreads (%s:%d)", other->file, other->line); }
  else { list_threads(at, DONE, nullptr); append(at, " have returned"); }
  append(at, ". Every thread of a block must reach the same __syncthreads: guard the work, not the barrier.");
  return DIVERGENCE;
}

static int warp_divergence() {
  size_t at; fail_header(at, "warp divergence");
  append(at, "threads "); list_threads(at, AT_WARP, nullptr);
  append(at, " wait in a warp collective (__shfl*_sync/__syncwarp/__ballot_sync) whose mask names lanes that "
             "wait at __syncthreads or in another kind of collective: threads "); list_threads(at, AT_BARRIER, nullptr);
  append(at, " wait at __syncthreads. Every live lane in the mask must execute the same collective.");
  return DIVERGENCE;
}

// "0-30", "0-3,5,9-12": the lanes set in `bits`.
static void append_lanes(size_t& at, unsigned bits) {
  const char* sep = "";
  for (unsigned l = 0; l < 32; ++l) {
    if (!(bits >> l & 1)) continue;
    unsigned e = l;
    while (e + 1 < 32 && (bits >> (e + 1) & 1)) ++e;
    if (e == l) append(at, "%s%u", sep, l);
    else append(at, "%s%u-%u", sep, l, e);
    sep = ",";
    l = e;
  }
}

static bool same_instruction(const Fiber* a, const Fiber* b) {
  return b->state == AT_WARP && b->wop == W_INSN && b->insn_fn == a->insn_fn && b->insn_line == a->insn_line &&
         !strcmp(b->insn_file, a->insn_file);
}

// A warp with lanes waiting at a .sync.aligned instruction that the rest of the warp cannot reach:
// which lanes wait there, and what every other lane does instead.
static int instruction_divergence(unsigned first, unsigned cnt) {
  const Fiber* site = nullptr;
  for (unsigned l = 0; l < cnt && !site; ++l)
    if (rt.fibers[first + l]->state == AT_WARP && rt.fibers[first + l]->wop == W_INSN) site = rt.fibers[first + l];
  unsigned here = 0, done = 0, barrier = 0, collective = 0, other = 0;
  const Fiber *bar_site = nullptr, *other_site = nullptr;
  for (unsigned l = 0; l < cnt; ++l) {
    const Fiber* f = rt.fibers[first + l];
    if (same_instruction(site, f)) here |= 1u << l;
    else if (f->state == DONE) done |= 1u << l;
    else if (f->state == AT_BARRIER) { barrier |= 1u << l; if (!bar_site) bar_site = f; }
    else if (f->wop == W_INSN) { other |= 1u << l; if (!other_site) other_site = f; }
    else collective |= 1u << l;
  }
  size_t at; fail_header(at, "warp divergence");
  append(at, "warp %u lanes ", first / 32); append_lanes(at, here);
  append(at, " [%d of 32] wait at %s (%s:%d) while", __builtin_popcount(here), site->insn, site->insn_file, site->insn_line);
  const char* sep = "";
  if (cnt < 32) { append(at, " the warp has only %u threads (%u threads per block)", cnt, rt.n); sep = ";"; }
  // "lane 31 has exited" / "lanes 16-31 have exited"
  auto lanes = [&](unsigned bits, const char* one, const char* many) {
    append(at, "%s %s ", sep, __builtin_popcount(bits) == 1 ? "lane" : "lanes"); append_lanes(at, bits);
    append(at, " %s", __builtin_popcount(bits) == 1 ? one : many); sep = ";";
  };
  if (done) lanes(done, "has exited", "have exited");
  if (barrier) { lanes(barrier, "waits", "wait"); append(at, " at __syncthreads (%s:%d)", bar_site->file, bar_site->line); }
  if (other) {
    lanes(other, "waits", "wait");
    append(at, " at %s (%s:%d)", other_site->insn, other_site->insn_file, other_site->insn_line);
  }
  if (collective) { lanes(collective, "waits", "wait"); append(at, " in a warp collective"); }
  append(at, ". A .sync.aligned warp instruction (mma.sync, ldmatrix) is executed by all 32 lanes of a warp together, "
             "at the same place: keep it out of lane-dependent branches and early returns (guard its operands instead), "
             "and launch whole warps.");
  return DIVERGENCE;
}

// Runs the warp instruction that all 32 lanes of the warp at `first` wait at, then releases them.
// Returns the lanes released (0 while some lane is elsewhere), or -1 when the instruction failed.
static int release_instruction(unsigned first, unsigned cnt) {
  if (cnt < 32) return 0;
  const Fiber* a = rt.fibers[first];
  void* ops[32];
  for (unsigned l = 0; l < 32; ++l) {
    const Fiber* f = rt.fibers[first + l];
    if (!same_instruction(a, f)) return 0;
    ops[l] = f->insn_ops;
  }
  rt.insn_warp = first / 32; rt.insn_lane0 = a;
  a->insn_fn(ops);
  if (rt.status) return -1;
  for (unsigned l = 0; l < 32; ++l) rt.fibers[first + l]->state = READY;
  return 32;
}

// What lane l of the warp starting at `first` receives from its collective; `present` are
// the lanes taking part. A source that exited or takes no part is undefined on a GPU: the lane
// receives 0xFF poison (a NaN), so a reduction that reads such lanes shows it.
static void warp_result(unsigned first, unsigned cnt, unsigned l, unsigned present) {
  Fiber* f = rt.fibers[first + l];
  int w = f->width > 0 && f->width <= 32 ? f->width : 32, seg = (int)l & ~(w - 1), src = (int)l;
  if (f->wop == W_IDX) src = seg + (f->arg & (w - 1));
  else if (f->wop == W_UP) src = (int)l - f->arg >= seg ? (int)l - f->arg : (int)l;
  else if (f->wop == W_DOWN) src = (int)l + f->arg < seg + w ? (int)l + f->arg : (int)l;
  else if (f->wop == W_XOR) src = ((int)l ^ f->arg) < seg + w ? (int)l ^ f->arg : (int)l;
  if (f->wop == W_BALLOT) {
    unsigned bits = 0, m = f->mask & present;
    for (unsigned k = 0; k < cnt; ++k) bits |= (unsigned)((m >> k & 1) && rt.fibers[first + k]->value) << k;
    f->result = bits;
  } else if (src >= (int)cnt || !(present >> src & 1) || !(f->mask >> src & 1)) {
    f->result = ~(uint64_t)0;
  } else {
    f->result = rt.fibers[first + src]->value;
  }
}

static bool uniform_warp(unsigned first, unsigned cnt) {
  const Fiber* a = rt.fibers[first];
  unsigned exist = cnt == 32 ? 0xffffffffu : (1u << cnt) - 1u;
  if ((a->mask & exist) != exist) return false;
  for (unsigned l = 1; l < cnt; ++l)
    if (rt.fibers[first + l]->wop != a->wop || rt.fibers[first + l]->mask != a->mask) return false;
  return true;
}

// Releases the lanes of the warp at `first` (cnt lanes) whose warp collective has every lane of
// its mask present. Returns the number released, or -1 with rt.status set.
static int release_warp(unsigned first, unsigned cnt) {
  int released = 0;
  unsigned exist = cnt == 32 ? 0xffffffffu : (1u << cnt) - 1u, arrived = 0, go = 0;
  unsigned insn = 0;
  for (unsigned l = 0; l < cnt; ++l) {
    const Fiber* f = rt.fibers[first + l];
    arrived |= (f->state == AT_WARP) << l;
    insn |= (f->state == AT_WARP && f->wop == W_INSN) << l;
  }
  if (insn) {  // a warp instruction takes the whole warp; shuffles of other lanes may still go ahead
    int r = release_instruction(first, cnt);
    if (r < 0) return -1;
    if (r > 0) return r;
    arrived &= ~insn;
  }
  if (!arrived) return 0;
  if (arrived == exist && uniform_warp(first, cnt)) {  // the common case: the whole warp, one op
    for (unsigned l = 0; l < cnt; ++l) warp_result(first, cnt, l, exist);
    for (unsigned l = 0; l < cnt; ++l) rt.fibers[first + l]->state = READY;
    return (int)cnt;
  }
  for (unsigned l = 0; l < cnt; ++l) {
    Fiber* f = rt.fibers[first + l];
    if (!(arrived >> l & 1)) continue;
    if (!(f->mask >> l & 1)) {
      size_t at; fail_header(at, "bad warp mask");
      append(at, "thread (%u,%u,%u) (lane %u) calls a warp collective with mask 0x%08x, which leaves out its own lane",
             f->tid.x, f->tid.y, f->tid.z, l, f->mask);
      return rt.status = DIVERGENCE, -1;
    }
    // Released once every lane of the mask has exited or waits in the same kind of collective
    // (exited lanes do not block a collective on a GPU either); a lane there with another mask
    // is undefined behaviour, so it is reported.
    bool all_here = true;
    for (unsigned k = 0; k < cnt && all_here; ++k) {
      const Fiber* o = rt.fibers[first + k];
      if (!((f->mask & exist) >> k & 1) || o->state == DONE) continue;
      all_here = (arrived >> k & 1) && o->wop == f->wop;
      if (all_here && o->mask != f->mask) {
        size_t at; fail_header(at, "warp mask mismatch");
        append(at, "threads (%u,%u,%u) and (%u,%u,%u) of one warp meet in a warp collective with masks 0x%08x "
                   "and 0x%08x; all lanes of a mask must pass the same mask",
               f->tid.x, f->tid.y, f->tid.z, o->tid.x, o->tid.y, o->tid.z, f->mask, o->mask);
        return rt.status = DIVERGENCE, -1;
      }
    }
    if (all_here) go |= 1u << l;
  }
  for (unsigned l = 0; l < cnt; ++l)
    if (go >> l & 1) warp_result(first, cnt, l, arrived);
  for (unsigned l = 0; l < cnt; ++l)
    if (go >> l & 1) { rt.fibers[first + l]->state = READY; ++released; }
  return released;
}

// Runs a block to its end or to a divergence. Warp by warp (forward: warp 0 first; reverse: the
// last warp first, each warp's lanes last-first): a warp runs as far as it can on its own, its
// collectives released as soon as its lanes are there, until every lane waits at __syncthreads
// or has returned; then the next warp. So a warp reads shared memory that other warps have not
// written yet whenever no barrier orders the two (another warp's cp.async not yet waited for
// included): the races show as poison, not hidden behind a lockstep of all warps.
static int run_block() {
  const unsigned warps = (rt.n + 31) / 32;
  for (;;) {
    for (unsigned k = 0; k < warps; ++k) {
      const unsigned first = 32 * (rt.reverse ? warps - 1 - k : k), cnt = rt.n - first < 32 ? rt.n - first : 32;
      for (int r = 1; r > 0;) {
        int fenced = 0;  // lanes that gave control back at fence.proxy.async: they run on in the next pass
        for (unsigned l = 0; l < cnt; ++l) {
          Fiber* f = rt.fibers[first + (rt.reverse ? cnt - 1 - l : l)];
          if (f->state == READY) {
            if (proxy.on) proxy_ran(f);
            resume(f);
            if (rt.status) return rt.status;
            fenced += f->proxy_fenced;
          }
        }
        if (proxy.on || fenced) proxy_scan();  // before the warp's instruction or collective reads or releases
        r = release_warp(first, cnt);
        if (r < 0) return rt.status;
        r += fenced;
      }
    }
    unsigned done = 0, bar = 0, count = 0;
    const Fiber* site = nullptr;
    for (unsigned i = 0; i < rt.n; ++i) {
      const Fiber* f = rt.fibers[i];
      done += f->state == DONE;
      if (f->state == AT_BARRIER) { ++bar; count += f->pred; if (!site) site = f; }
    }
    if (done == rt.n) return rt.block_check && rt.block_check(nullptr, 0) ? rt.status : OK;
    for (unsigned first = 0; first < rt.n; first += 32)
      for (unsigned l = 0; l < 32 && first + l < rt.n; ++l)
        if (rt.fibers[first + l]->state == AT_WARP && rt.fibers[first + l]->wop == W_INSN)
          return instruction_divergence(first, rt.n - first < 32 ? rt.n - first : 32);
    if (bar + done < rt.n) return warp_divergence();
    if (done) return barrier_divergence(site);
    for (unsigned i = 0; i < rt.n; ++i)
      if (rt.fibers[i]->line != site->line || strcmp(rt.fibers[i]->file, site->file)) return barrier_divergence(site);
    if (rt.block_check && rt.block_check(site->file, site->line)) return rt.status;
    rt.bar_count = (int)count;
    if (proxy.on) proxy_scan();
    ++proxy.phase;
    for (unsigned i = 0; i < rt.n; ++i) rt.fibers[i]->state = READY;
  }
}

// Fills the static shared section (and the registered __shared__ variables outside it, see
// shared_var) with 0xFF; the section without ASan checks: with
// -fsanitize-sections=gpuconv_shared the section holds redzones between the arrays.
__attribute__((no_sanitize_address, noinline)) static void poison_static_shared() {
#ifdef __SANITIZE_ADDRESS__
  for (volatile char* p = __start_gpuconv_shared; p < __stop_gpuconv_shared; ++p) *p = (char)0xFF;
#else
  memset(__start_gpuconv_shared, 0xFF, (size_t)(__stop_gpuconv_shared - __start_gpuconv_shared));
#endif
  for (unsigned i = 0; i < n_shared_vars; ++i) memset(shared_vars[i].p, 0xFF, shared_vars[i].n);
}

static void death_report() {
  if (rt.in_launch)
    fprintf(stderr, "gpuconv hostsim: the error above happened in kernel %s, block (%u,%u,%u) thread (%u,%u,%u)\n",
            rt.kernel, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
}

#ifdef __SANITIZE_ADDRESS__
// ASan and UBSan each keep their own death callback (g++ links two runtimes): register in both.
static void register_death_callbacks() {
  static bool done;
  if (done) return;
  done = true;
  __sanitizer_set_death_callback(death_report);
  if (void* ubsan = dlopen("libubsan.so.1", RTLD_NOW | RTLD_NOLOAD)) {
    auto set = (void (*)(void (*)()))dlsym(ubsan, "__sanitizer_set_death_callback");
    if (set) set(death_report);
  }
}
#endif

static struct sigaction old_segv, old_bus;
static void on_fault(int sig, siginfo_t* info, void*) {
  char buf[512];
  const char* why = "";
  for (unsigned i = 0; i < rt.capacity; ++i) {
    const Fiber* f = rt.fibers[i];
    if ((char*)info->si_addr >= f->map && (char*)info->si_addr < f->stack)
      why = " (a fiber stack overflow: raise $GPUCONV_SIM_STACK, e.g. 256k, or pass stack_size= to the launch)";
  }
  int len = snprintf(buf, sizeof buf, "gpuconv hostsim: %s at address %p in kernel %s, block (%u,%u,%u) thread (%u,%u,%u)%s\n",
                     sig == SIGSEGV ? "SIGSEGV" : "SIGBUS", info->si_addr, rt.kernel, blockIdx.x, blockIdx.y, blockIdx.z,
                     threadIdx.x, threadIdx.y, threadIdx.z, why);
  if (write(2, buf, len > 0 ? (size_t)len : 0) < 0) {}
  sigaction(SIGSEGV, &old_segv, nullptr); sigaction(SIGBUS, &old_bus, nullptr);  // re-fault into the previous handler
}

// Names the thread when a kernel faults (a wild pointer, a fiber stack overflow) in an
// unsanitized build. The handler runs on an alternate stack: the faulting one may be full.
static void install_fault_handler() {
  static char altstack[1 << 16];
  stack_t cur;
  if (sigaltstack(nullptr, &cur) == 0 && (cur.ss_flags & SS_DISABLE)) {
    stack_t ss; ss.ss_sp = altstack; ss.ss_size = sizeof altstack; ss.ss_flags = 0;
    sigaltstack(&ss, nullptr);
  }
  struct sigaction sa; memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_fault; sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESETHAND;
  sigaction(SIGSEGV, &sa, &old_segv); sigaction(SIGBUS, &sa, &old_bus);
}
}  // namespace gpuconv_sim

extern "C" __attribute__((visibility("default"))) const char* gpuconv_sim_error() { return gpuconv_sim::rt.msg; }
extern "C" __attribute__((visibility("default"))) size_t gpuconv_sim_static_shared_bytes() {
  return (size_t)(__stop_gpuconv_shared - __start_gpuconv_shared) - sizeof gpuconv_sim::shared_anchor;
}
extern "C" __attribute__((visibility("default"))) int gpuconv_sim_launch(
    void (*entry)(void**), void** args, const char* kernel, const unsigned* grid, const unsigned* block,
    size_t dyn_bytes, int reverse, size_t stack_size) {
  using namespace gpuconv_sim;
  unsigned n = block[0] * block[1] * block[2];
  rt.msg[0] = '\0'; rt.status = OK; rt.kernel = kernel; rt.entry = entry; rt.args = args; rt.reverse = reverse;
  rt.dyn_bytes = dyn_bytes;
  dyn_smem = dyn_smem_buffer + (reverse ? GPUCONV_DYN_SMEM_SKEW : 0);
  if (dyn_bytes > GPUCONV_DYN_SMEM_MAX || !ensure_fibers(n, stack_size)) {
    snprintf(rt.msg, sizeof rt.msg, "kernel %s: cannot set up %u fibers of %zu bytes or %zu bytes of dynamic shared memory",
             kernel, n, stack_size, dyn_bytes);
    return SETUP;
  }
  rt.n = n;
  gridDim = dim3(grid[0], grid[1], grid[2]); blockDim = dim3(block[0], block[1], block[2]);
  for (unsigned i = 0; i < n; ++i) {
    Fiber* f = rt.fibers[i];
    f->tid = {i % block[0], i / block[0] % block[1], i / (block[0] * block[1])};
    f->lane = i % 32; f->warp = i / 32;
  }
#ifdef __SANITIZE_ADDRESS__
  // ASan reports its own faults; the death callback names the thread. Past the launch's
  // dynamic shared size the buffer is poisoned, so an overrun is reported, not silent.
  register_death_callbacks();
  __asan_poison_memory_region(dyn_smem_buffer, sizeof dyn_smem_buffer);
  __asan_unpoison_memory_region(dyn_smem, dyn_bytes);
#else
  install_fault_handler();
#endif
  // A unit that maps async-proxy reads tracks a kernel's first launch, and later ones where the
  // kernel used the proxy (see async_proxy_unit).
  proxy_launch();
  rt.in_launch = 1;
  // Blocks run one after another, in index order, or (reverse) in the opposite order: a kernel may
  // not depend on the order blocks run in (a GPU gives none), and one that finishes a reduction
  // in whichever block arrives last must work when that is block 0.
  for (unsigned zi = 0; zi < grid[2] && !rt.status; ++zi)
    for (unsigned yi = 0; yi < grid[1] && !rt.status; ++yi)
      for (unsigned xi = 0; xi < grid[0] && !rt.status; ++xi) {
        const unsigned x = reverse ? grid[0] - 1 - xi : xi, y = reverse ? grid[1] - 1 - yi : yi,
                       z = reverse ? grid[2] - 1 - zi : zi;
        blockIdx = {x, y, z};
        ++rt.block_serial;
        poison_static_shared();
        memset(dyn_smem, 0xFF, dyn_bytes);
        if (proxy.on) proxy_block_start();
        for (unsigned i = 0; i < n; ++i) {
          Fiber* f = rt.fibers[i];
          f->state = READY; f->ncopies = 0; f->groups = 0;  // copies left in flight by the last block are dropped
        }
        rt.status = run_block();
      }
  rt.in_launch = 0;
  proxy.on = false; proxy.kernel = nullptr;
#ifndef __SANITIZE_ADDRESS__
  sigaction(SIGSEGV, &old_segv, nullptr); sigaction(SIGBUS, &old_bus, nullptr);
#endif
  fflush(stdout);
  if (rt.status)  // fibers stopped mid-kernel restart from scratch at the next launch
    for (unsigned i = 0; i < n; ++i) if (rt.fibers[i]->state != DONE) rt.fibers[i]->fresh = true;
  return rt.status;
}
