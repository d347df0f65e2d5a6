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
  for (unsigned i = 0; i < rt.capacity; ++i) { munmap(rt.fibers[i]->map, rt.fibers[i]->map_size); free(rt.fibers[i]); }
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

static int append(size_t& at, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static int append(size_t& at, const char* fmt, ...) {
  va_list ap; va_start(ap, fmt);
  int w = at < sizeof rt.msg ? vsnprintf(rt.msg + at, sizeof rt.msg - at, fmt, ap) : 0;
  va_end(ap);
  if (w > 0) at = at + w < sizeof rt.msg ? at + w : sizeof rt.msg - 1;
  return w;
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

// Releases the lanes whose warp collective has every lane of its mask present. Returns the
// number released, or -1 with rt.status set.
static int release_warps() {
  int released = 0;
  for (unsigned first = 0; first < rt.n; first += 32) {
    unsigned cnt = rt.n - first < 32 ? rt.n - first : 32;
    unsigned exist = cnt == 32 ? 0xffffffffu : (1u << cnt) - 1u, arrived = 0, go = 0;
    for (unsigned l = 0; l < cnt; ++l) arrived |= (rt.fibers[first + l]->state == AT_WARP) << l;
    if (!arrived) continue;
    if (arrived == exist && uniform_warp(first, cnt)) {  // the common case: the whole warp, one op
      for (unsigned l = 0; l < cnt; ++l) warp_result(first, cnt, l, exist);
      for (unsigned l = 0; l < cnt; ++l) rt.fibers[first + l]->state = READY;
      released += cnt;
      continue;
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
  }
  return released;
}

static int run_block() {
  for (;;) {
    for (unsigned k = 0; k < rt.n; ++k) {
      Fiber* f = rt.fibers[rt.reverse ? rt.n - 1 - k : k];
      if (f->state == READY) { resume(f); if (rt.status) return rt.status; }
    }
    int r = release_warps();
    if (r < 0) return rt.status;
    if (r > 0) continue;
    unsigned done = 0, bar = 0, count = 0;
    const Fiber* site = nullptr;
    for (unsigned i = 0; i < rt.n; ++i) {
      const Fiber* f = rt.fibers[i];
      done += f->state == DONE;
      if (f->state == AT_BARRIER) { ++bar; count += f->pred; if (!site) site = f; }
    }
    if (done == rt.n) return OK;
    if (bar + done < rt.n) return warp_divergence();
    if (done) return barrier_divergence(site);
    for (unsigned i = 0; i < rt.n; ++i)
      if (rt.fibers[i]->line != site->line || strcmp(rt.fibers[i]->file, site->file)) return barrier_divergence(site);
    rt.bar_count = (int)count;
    for (unsigned i = 0; i < rt.n; ++i) rt.fibers[i]->state = READY;
  }
}

// Fills the static shared section with 0xFF without ASan checks: with
// -fsanitize-sections=gpuconv_shared the section holds redzones between the arrays.
__attribute__((no_sanitize_address, noinline)) static void poison_static_shared() {
#ifdef __SANITIZE_ADDRESS__
  for (volatile char* p = __start_gpuconv_shared; p < __stop_gpuconv_shared; ++p) *p = (char)0xFF;
#else
  memset(__start_gpuconv_shared, 0xFF, (size_t)(__stop_gpuconv_shared - __start_gpuconv_shared));
#endif
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
  __asan_unpoison_memory_region(dyn_smem, sizeof dyn_smem);
  __asan_poison_memory_region(dyn_smem + dyn_bytes, sizeof dyn_smem - dyn_bytes);
#else
  install_fault_handler();
#endif
  rt.in_launch = 1;
  for (unsigned z = 0; z < grid[2] && !rt.status; ++z)
    for (unsigned y = 0; y < grid[1] && !rt.status; ++y)
      for (unsigned x = 0; x < grid[0] && !rt.status; ++x) {
        blockIdx = {x, y, z};
        poison_static_shared();
        memset(dyn_smem, 0xFF, dyn_bytes);
        for (unsigned i = 0; i < n; ++i) rt.fibers[i]->state = READY;
        rt.status = run_block();
      }
  rt.in_launch = 0;
#ifndef __SANITIZE_ADDRESS__
  sigaction(SIGSEGV, &old_segv, nullptr); sigaction(SIGBUS, &old_bus, nullptr);
#endif
  fflush(stdout);
  if (rt.status)  // fibers stopped mid-kernel restart from scratch at the next launch
    for (unsigned i = 0; i < n; ++i) if (rt.fibers[i]->state != DONE) rt.fibers[i]->fresh = true;
  return rt.status;
}
