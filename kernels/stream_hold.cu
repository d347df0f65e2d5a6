// stream_hold.cu: the device half of gpuconv.syncguard.no_sync, which proves that a block of
// host code never waits for the GPU.
//
//   stream_hold(release, timed_out, max_ns)   one thread (grid 1, block 1) spins until the host
//       writes a nonzero *release (mapped pinned memory), or until max_ns nanoseconds have passed;
//       it then writes *timed_out = 1 if the host never released it, else 0.
//
// While it spins, every later launch on the stream queues behind it. Host code that only enqueues
// work runs on; host code that synchronizes (a readback, .item(), float(), bool(), a blocking
// copy, a stream or device synchronize) waits for a stream that cannot move, which the host side
// detects. max_ns bounds the hold, so a host that dies or forgets to release never wedges the GPU.
// On the simulator there is no clock: each spin counts as 1000 ns.
//
// Resources per kernel and build (ptxas of CUDA 13.0 for sm_90, the registry's NVRTC options;
// tests/test_nvrtc.py holds every figure to ptxas's report): registers / static shared memory
// in bytes / bytes spilled (stores + loads); "-": no such build (TF32: conv2d, conv2d_tc, gemm_tc).
//   ptxas 13.0   f32          f64          bf16         f16          tf32
//   stream_hold  10/0/0       10/0/0       10/0/0       10/0/0       -

__device__ inline unsigned long long hold_clock_ns(long long spins) {
#ifdef __CUDA_ARCH__
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));  // ns since an epoch, every SM alike
    (void)spins;
    return t;
#else
    return (unsigned long long)spins * 1000ull;
#endif
}

extern "C" __global__ void stream_hold(const volatile int* release, int* timed_out, long long max_ns) {
    const unsigned long long start = hold_clock_ns(0);
    long long spins = 0;
    int released = *release;
    while (!released && (long long)(hold_clock_ns(++spins) - start) < max_ns) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700  // __nanosleep is sm_70+ (a P100 spins without it)
        __nanosleep(1000);  // stay off the memory system while waiting
#endif
        released = *release;
    }
    *timed_out = released ? 0 : 1;
}
