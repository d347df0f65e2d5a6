// convert.cu: the element conversions of kernels/common.cuh (and, last, its index split), one
// element per thread and step, so that tests/test_precision_kernels.py can hold them to ml_dtypes
// and NumPy bit for bit on the simulator (and on a GPU when one is present). Built by the kernel
// registry like kernels/*.cu (GPUCONV_KERNELS_DIR pointed at a copy of common.cuh beside this
// file), for any storage type: the conversions themselves do not depend on the build.

extern "C" __global__ void float_to_bf16_bits(const float* x, unsigned short* y, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) y[i] = float_to_bf16(x[i]).bits;
}

extern "C" __global__ void bf16_bits_to_float(const unsigned short* x, float* y, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) {
        bf16_t v;
        v.bits = x[i];
        y[i] = bf16_to_float(v);
    }
}

extern "C" __global__ void float_to_half_bits(const float* x, unsigned short* y, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) y[i] = float_to_half(x[i]).bits;
}

extern "C" __global__ void half_bits_to_float(const unsigned short* x, float* y, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) {
        half_t v;
        v.bits = x[i];
        y[i] = half_to_float(v);
    }
}

extern "C" __global__ void float_to_tf32(const float* x, float* y, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) y[i] = tf32_round(x[i]);
}

// to_acc / from_acc of this build: a storage_t round trip through acc_t.
extern "C" __global__ void storage_round_trip(const storage_t* x, acc_t* wide, storage_t* back, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) {
        wide[i] = to_acc(x[i]);
        back[i] = from_acc(wide[i]);
    }
}

// common.cuh's index split: q = a / b and r = a % b, for every a >= 0 and b >= 1 (a 32-bit
// division below 2^31, a 64-bit one above).
extern "C" __global__ void index_divmod(const long long* a, const int* b, long long* q, int* r, long long n) {
    for (index_t i = global_thread_index(); i < n; i += global_thread_count()) q[i] = divmod_index(a[i], b[i], &r[i]);
}

// common.cuh's FastDiv: q = n / d by the multiply-high, add and shift of (m, s) (the launcher's
// gpuconv.kernels.fast_divisor), one (n, d) pair per element.
extern "C" __global__ void fast_div(const int* n, const unsigned* m, const unsigned* s, int* q, long long count) {
    for (index_t i = global_thread_index(); i < count; i += global_thread_count()) q[i] = FastDiv{m[i], s[i]}.div(n[i]);
}
