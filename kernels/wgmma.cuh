// wgmma.cuh: Hopper's warpgroup tensor-core instructions (wgmma.mma_async, sm_90a) and the shared-
// memory matrix descriptors they read their operands through. As in mma.cuh, each instruction has
// ONE GPU form (inline PTX) and ONE simulator form (C++ over the lanes of a warp, on
// gpuconv/hostsim's warp_instruction), chosen by __CUDA_ARCH__. The registry adds this header after
// mma.cuh to the units that list it (gpuconv.kernels.UNIT_HEADERS); it includes nothing itself.
// wgmma exists only in the arch-specific sm_90a target: GPUCONV_WGMMA is 1 there and in the
// simulator (but its sm_75 build), 0 in every other build (compute_75, compute_80, compute_90,
// sm_100 ...), where this header
// declares only the descriptors and the kernels that need it trap (the launchers never send them
// there).
//
// Semantics are the PTX ISA's (version 9.x: "Asynchronous Warpgroup Level Matrix Multiply-
// Accumulate Operation using wgmma.mma_async", its "Matrix Descriptor" and "Shared Memory Matrix
// Layout" sections, and the "Register Fragments" of wgmma .m64nNk16/k8), cross-read with CUTLASS's
// GmmaDescriptor (cute/arch/mma_sm90_desc.hpp) for the canonical layouts:
//
// - A warpgroup is 4 consecutive warps (warp index / 4). wgmma.mma_async.sync.aligned
//   .m64nNk16.f32.{bf16,f16} computes D[64][N] (+)= A[64][16] B[16][N] (.m64nNk8.f32.tf32: K = 8,
//   the same 32 bytes of K; both operands K-major, and rounded to TF32 first, by the launcher or in
//   the stages, since the instruction reads only their TF32 bits): warp w % 4 of the group holds
//   rows 16 (w % 4) .. +15 of D, and lane l (g = l >> 2, t = l % 4) holds, for each 8-column block
//   j, d[4j] = D[g][8j+2t], d[4j+1] = D[g][8j+2t+1], d[4j+2] = D[g+8][8j+2t], d[4j+3] =
//   D[g+8][8j+2t+1] of the warp's 16 rows: mma.m16n8's C fragment, once per block j.
// - A and B come from shared memory through 64-bit descriptors: bits 0-13 the start address, 16-29
//   the leading-dimension byte offset (LBO), 32-45 the stride-dimension byte offset (SBO), all three
//   in 16-byte units; bits 62-63 the swizzle: 0 none (interleaved 8x16-byte core matrices), 1 128-
//   byte, 2 64-byte, 3 32-byte. Bits 49-51 (the base offset) stay 0: every swizzle atom starts on a
//   multiple of its repeat (8 rows x the swizzle width; kernels align their stages to 1024 bytes).
// - A swizzle of width W bytes XORs address bits 4.. (the 16-byte chunk within a W-byte row) with
//   bits 7.. (the 128-byte line: for W = 128 the row within the 8-row atom, for W = 64 that row
//   halved, for W = 32 quartered), log2(W / 16) bits of each, on the shared address itself:
//   mma.cuh's swizzle_offset for W = 64 and 128, CUTLASS's Swizzle<2,4,3> and <3,4,3>.
// - Layouts of an operand, 16-bit here (tf32: the same bytes, 4 elements per 16; K-major only),
//   its rows being M (A) or N (B), its columns K, with "T" 16 bytes (8
//   elements) and W the swizzle width (CUTLASS's canonical forms):
//     K-major (transpose flag 0; K contiguous): row r at (r / 8) SBO + (r % 8) W, its 32 bytes of K
//       contiguous from there (W >= 32); unswizzled, row r at (r / 8) SBO + 16 (r % 8), byte b of K
//       at (b / 16) LBO + b % 16 from it.
//     MN-major (transpose flag 1; M or N contiguous): K row k at (k / 8) SBO + (k % 8) W, element e
//       of it at (2e / W) LBO + 2e % W; unswizzled, k at (k / 8) LBO + 16 (k % 8), element e at
//       (2e / 16) SBO + 2e % 16. (So LBO steps along K in the unswizzled forms, along M/N in the
//       swizzled MN-major one; a swizzled K-major operand never reads it.)
// - Asynchrony: mma_async reads its descriptors' shared memory and reads and writes the
//   accumulator registers at any time until the wgmma.wait_group that retires its commit group;
//   between them, neither may be touched. wgmma.fence orders earlier register accesses before the
//   next mma_async. Shared memory written by ordinary stores or cp.async (the generic proxy) must
//   be made visible to the async proxy by fence.proxy.async before the barrier that publishes it.
//
// The simulator's forms. Each warp queues its own 16 rows of each mma_async (identical results:
// D's rows depend on A's same rows and all of B) and performs them, in issue order, at the
// wait_group that retires their group: shared memory is read then, and the accumulators change
// only then, so a stage refilled before the wait, or an accumulator read before it, gives wrong
// results in the tests. Sums as mma.cuh: for each output the 16 products (exact in float32) summed
// in order k = 0..15 (0..7 for tf32), each addition rounded, then C added: a k16 step of wgmma and one of
// mma.sync give the same bits. The simulator reports an mma_async without a wgmma.fence since
// the warp's last wait_group, descriptors that differ between lanes, an address outside the
// block's shared arrays, a swizzled operand whose swizzle pattern does not start on its boundary
// (or a nonzero base offset), more than 8 operations in flight per warp, accumulators written
// between an mma_async and the wait_group that retires it, a wgmma instruction in a warpgroup the
// block does not hold whole, warps of one warpgroup that have executed other wgmma instructions
// (call sites, descriptors) than the rest by a __syncthreads or the block's end, and an mma_async
// that reads shared memory whose last generic-proxy write (a store, a landed cp.async) no
// fence.proxy.async by its writer followed by a __syncthreads has published to the async proxy
// (gpuconv/hostsim's model of the two proxies, checked at the warpgroup's issue; fence_proxy_async
// is the fence).

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL) || GPUCONV_MMA_SM75
#define GPUCONV_WGMMA 0
#else
#define GPUCONV_WGMMA 1
#endif

#ifndef __CUDA_ARCH__
// The simulator's shared address (a window offset; see gpuconv/hostsim/cuda_sim.h).
inline unsigned smem_address(const void* p) { return gpuconv_sim::shared_address(p); }
#endif

// The swizzle field of a descriptor for a swizzle of W bytes (0: none).
template <int W>
__device__ constexpr unsigned long long wgmma_swizzle_bits() {
    return W == 128 ? 1ull : W == 64 ? 2ull : W == 32 ? 3ull : 0ull;
}

// The descriptor of an operand at `smem` (a shared array), LBO and SBO in bytes, swizzle W bytes.
template <int W>
__device__ inline unsigned long long wgmma_descriptor(const void* smem, unsigned lbo, unsigned sbo) {
    static_assert(W == 0 || W == 32 || W == 64 || W == 128, "wgmma swizzles are 32, 64 and 128 bytes (0: none)");
    return (unsigned long long)((smem_address(smem) >> 4) & 0x3FFF) | (unsigned long long)((lbo >> 4) & 0x3FFF) << 16 |
           (unsigned long long)((sbo >> 4) & 0x3FFF) << 32 | wgmma_swizzle_bits<W>() << 62;
}

#if GPUCONV_WGMMA
#ifndef __CUDA_ARCH__
namespace wgmma_sim {
// One queued mma_async of a warp: its descriptors, flags and the 32 lanes' accumulators.
struct Op {
    unsigned long long da, db;
    int n, k, bytes, tnsp_a, tnsp_b;  // N, K (16, or 8 for tf32), bytes per element (2 or 4)
    float (*to_float)(unsigned);
    float* d[32];
    unsigned group;
    unsigned long long held;  // the accumulators' bits as the operation left them queued (see accumulators)
};
struct WarpQueue {
    unsigned long long serial;  // the block it belongs to (gpuconv_sim::block_serial)
    Op ops[8];
    unsigned nops, groups;      // queued operations; groups committed so far
    bool fenced;                // a wgmma.fence since the last wait_group
    unsigned count;             // wgmma instructions executed in this block (fence, mma_async, commit, wait)
    unsigned long long trace;   // ... folded with their call sites and operands (see step)
    unsigned issued;            // (the warpgroup's first warp) the instruction count of its last checked issue
};
static WarpQueue queues[32];

// This unit reads shared memory through the async proxy: the simulator tracks generic-proxy writes.
static const bool unit_uses_async_proxy __attribute__((unused)) = gpuconv_sim::async_proxy_unit();

inline WarpQueue& queue(unsigned warp = gpuconv_sim::rt.insn_warp) {
    WarpQueue& q = queues[warp % 32];
    if (q.serial != gpuconv_sim::block_serial()) q = WarpQueue{gpuconv_sim::block_serial(), {}, 0, 0, false, 0, 0, 0};
    return q;
}

// The warps of each warpgroup have executed the same wgmma instructions (block_check, run once
// every thread waits at a __syncthreads or has returned): each is .sync.aligned over the
// warpgroup, its 4 warps executing it together, at one place, with the same operands. A warp
// that skips one, or passes another descriptor than the other 3, is reported here, by the
// barrier or the block's end that follows it.
inline int check_warpgroups(const char* file, int line) {
    using gpuconv_sim::rt;
    static const WarpQueue none = {};
    const unsigned warps = (rt.n + 31) / 32;
    for (unsigned g = 0; 4 * g < warps; ++g) {
        const WarpQueue* w[4];
        bool differ = false;
        for (unsigned i = 0; i < 4; ++i) {
            const unsigned k = 4 * g + i;
            w[i] = k < warps && queues[k % 32].serial == gpuconv_sim::block_serial() ? &queues[k % 32] : &none;
            differ |= w[i]->count != w[0]->count || w[i]->trace != w[0]->trace;
        }
        if (!differ) continue;
        char by[256];
        if (file) snprintf(by, sizeof by, "__syncthreads (%s:%d)", file, line);
        else snprintf(by, sizeof by, "the end of the block");
        snprintf(rt.msg, sizeof rt.msg,
                 "kernel %s, block (%u,%u,%u): warpgroup divergence: by %s, the 4 warps of warpgroup %u (warps %u-%u) "
                 "have executed different wgmma instructions (warp %u: %u, warp %u: %u, warp %u: %u, warp %u: %u "
                 "instructions; the same counts: other call sites or operands). A wgmma instruction is executed by "
                 "all 4 warps of a warpgroup together, at the same place, with the same descriptors: keep it out of "
                 "warp-dependent branches and launch whole warpgroups (multiples of 128 threads).",
                 rt.kernel, blockIdx.x, blockIdx.y, blockIdx.z, by, g, 4 * g, 4 * g + 3, 4 * g, w[0]->count, 4 * g + 1,
                 w[1]->count, 4 * g + 2, w[2]->count, 4 * g + 3, w[3]->count);
        return rt.status = gpuconv_sim::DIVERGENCE;
    }
    return 0;
}

// One wgmma instruction of the warp, folded into its trace with its call site and operands a, b.
// A warp of a warpgroup the block does not hold whole is reported at once.
inline bool step(WarpQueue& q, unsigned long long a, unsigned long long b = 0) {
    using gpuconv_sim::rt;
    const unsigned warp = rt.insn_warp, threads = 128 * (warp / 4 + 1);
    if (rt.n < threads) {
        gpuconv_sim::insn_error("warp %u belongs to warpgroup %u, which needs %u threads, and the block has %u: a wgmma "
                                "instruction is executed by all 4 warps of a warpgroup together: launch whole "
                                "warpgroups (multiples of 128 threads)", warp, warp / 4, threads, rt.n);
        return false;
    }
    rt.block_check = check_warpgroups;
    const unsigned long long site = (unsigned long long)(uintptr_t)rt.insn_lane0->insn_file * 31 + rt.insn_lane0->insn_line;
    for (unsigned long long v : {(unsigned long long)(uintptr_t)rt.insn_lane0->insn, site, a, b}) {
        q.trace = (q.trace ^ v) * 0x9E3779B97F4A7C15ull;
        q.trace ^= q.trace >> 29;
    }
    ++q.count;
    return true;
}

// The shared address of element (row, k) of an operand of `bytes`-byte elements (rows: M of A, N of
// B) under descriptor `desc`, K-major or MN-major (16-bit only), as the layouts at the top say.
inline unsigned element_address(unsigned long long desc, bool mn_major, int bytes, int row, int k) {
    const unsigned start = (unsigned)(desc & 0x3FFF) << 4, lbo = (unsigned)(desc >> 16 & 0x3FFF) << 4;
    const unsigned sbo = (unsigned)(desc >> 32 & 0x3FFF) << 4, mode = (unsigned)(desc >> 62);
    const unsigned w = mode == 1 ? 128 : mode == 2 ? 64 : mode == 3 ? 32 : 0;
    unsigned a;
    if (!mn_major) {
        const unsigned b = bytes * k;
        a = w ? start + row / 8 * sbo + row % 8 * w + b : start + row / 8 * sbo + 16 * (row % 8) + b / 16 * lbo + b % 16;
    } else {
        const unsigned e = bytes * row;
        a = w ? start + k / 8 * sbo + k % 8 * w + e / w * lbo + e % w : start + k / 8 * lbo + 16 * (k % 8) + e / 16 * sbo + e % 16;
    }
    if (w) a ^= ((a >> 7) & (w / 16 - 1)) << 4;
    return a;
}

// A swizzle of W bytes repeats every 8 W bytes, and its XOR reads absolute address bits; the PTX ISA
// has each pattern start on a multiple of 8 W where the descriptor's base offset (bits 49-51) is 0,
// the only value the kernels write and the simulator reads. The operand's row 0 lies in its
// pattern's first row (the start W-aligned, or moved on by less: a k16 step, or columns of an
// MN-major row), so the pattern begins at the start rounded down to 8 W.
inline bool pattern_aligned(unsigned long long desc, const char* which) {
    const unsigned start = (unsigned)(desc & 0x3FFF) << 4, base = (unsigned)(desc >> 49 & 7), mode = (unsigned)(desc >> 62);
    const unsigned w = mode == 1 ? 128 : mode == 2 ? 64 : mode == 3 ? 32 : 0;
    if (w && base) {
        gpuconv_sim::insn_error("operand %s's descriptor 0x%016llx has base offset %u: the simulator reads swizzle "
                                "patterns that start on their %u-byte boundary (base offset 0): align the operand's "
                                "stage instead", which, desc, base, 8 * w);
        return false;
    }
    if (w && start % (8 * w) >= w) {
        gpuconv_sim::insn_error("operand %s (descriptor 0x%016llx, %u-byte swizzle) starts at shared address %u, in a "
                                "swizzle pattern that does not begin on a %u-byte boundary, which base offset 0 "
                                "requires: start the operand's swizzle atoms on such boundaries (__align__(1024) "
                                "stages)", which, desc, w, start, 8 * w);
        return false;
    }
    return true;
}

inline bool load_operand(unsigned long long desc, bool mn_major, int rows, int row0, const Op& op, float out[][16],
                         const char* which) {
    for (int r = 0; r < rows; ++r)
        for (int k = 0; k < op.k; ++k) {
            const unsigned a = element_address(desc, mn_major, op.bytes, row0 + r, k);
            const void* p = gpuconv_sim::shared_pointer(a, (size_t)op.bytes);
            if (!p) {
                gpuconv_sim::insn_error("operand %s, element (%d, %d): shared address %u (descriptor 0x%016llx) is not in "
                                        "a shared array of this block: check the descriptor's start, LBO and SBO",
                                        which, row0 + r, k, a, desc);
                return false;
            }
            out[r][k] = op.to_float(op.bytes == 2 ? *(const unsigned short*)p : *(const unsigned*)p);
        }
    return true;
}

// Whether every byte of rows row0 .. row0 + rows - 1 of an mma_async's operand has reached the async
// proxy: its last generic-proxy write (a store, a landed cp.async) followed by fence.proxy.async in
// the writing thread and a __syncthreads after that fence (hostsim's async-proxy model,
// gpuconv_sim::async_proxy_unpublished). Checked at the issue, from which the hardware may read;
// addresses outside the block's arrays are left to the wait (perform).
inline bool operand_published(unsigned long long desc, bool mn_major, int rows, int row0, const Op& op,
                              const char* which) {
    for (int r = 0; r < rows; ++r)
        for (int k = 0; k < op.k; ++k) {
            const unsigned a = element_address(desc, mn_major, op.bytes, row0 + r, k);
            const void* p = gpuconv_sim::shared_pointer(a, (size_t)op.bytes);
            const void* late = p ? gpuconv_sim::async_proxy_unpublished(p, (size_t)op.bytes) : nullptr;
            if (!late) continue;
            char why[512];
            gpuconv_sim::async_proxy_describe(late, why, sizeof why);
            gpuconv_sim::insn_error("operand %s, element (%d, %d): shared address %u %s, so the async proxy, through "
                                    "which wgmma reads its operands, need not see the write: missing "
                                    "fence.proxy.async.shared::cta (fence_proxy_async) by the writing thread after its "
                                    "writes, then a __syncthreads, before the wgmma",
                                    which, row0 + r, k, a + (unsigned)((const char*)late - (const char*)p), why);
            return false;
        }
    return true;
}

// Performs a queued operation for warp `warp` (its 16 rows of D).
inline bool perform(const Op& op, unsigned warp) {
    const int q = (int)(warp % 4);
    float A[16][16], B[256][16];
    if (!load_operand(op.da, op.tnsp_a, 16, 16 * q, op, A, "A") || !load_operand(op.db, op.tnsp_b, op.n, 0, op, B, "B"))
        return false;
    for (int l = 0; l < 32; ++l) {
        const int g = l >> 2, t = l & 3;
        for (int j = 0; j < op.n / 8; ++j)
            for (int r = 0; r < 4; ++r) {
                const int i = g + 8 * (r >> 1), c = 8 * j + 2 * t + (r & 1);
                float s = 0.0f;
                for (int k = 0; k < op.k; ++k) s += A[i][k] * B[c][k];
                op.d[l][4 * j + r] = s + op.d[l][4 * j + r];
            }
    }
    return true;
}

// The bits of an operation's accumulators (32 lanes x N / 2), hashed. They are the operation's
// from its issue to the wait that retires it: an ordinary write to them then is undefined on a GPU
// (and in the simulator would change what it adds to), so the wait compares them with what they
// were at the issue, or after the last queued operation on the same registers.
inline unsigned long long accumulators(const Op& op) {
    unsigned long long h = 0;
    for (int l = 0; l < 32; ++l)
        for (int i = 0; i < op.n / 2; ++i) h = (h ^ __float_as_uint(op.d[l][i])) * 0x9E3779B97F4A7C15ull, h ^= h >> 29;
    return h;
}

// One lane's operands of an mma_async.
struct MmaLane { unsigned long long da, db; float* d; };

// The widening of one operand element (its bits), by the instruction's type name: bf16, f16, or
// tf32 (a float32 of which only the TF32 bits count: the 13 low mantissa bits are cleared, so a
// kernel that forgets to round its operands gets the truncated products).
constexpr float (*operand_format(const char* type))(unsigned) {
    return type[0] == 'b' ? mma_sim::bf16_bits : type[1] == '1' ? mma_sim::f16_bits : mma_sim::tf32_bits;
}

template <int N, int K, int TA, int TB, float (*TO_FLOAT)(unsigned)>
void mma_lanes(void* const* ops) {
    WarpQueue& q = queue();
    const MmaLane* l0 = (const MmaLane*)ops[0];
    for (int l = 1; l < 32; ++l) {
        const MmaLane* p = (const MmaLane*)ops[l];
        if (p->da != l0->da || p->db != l0->db) {
            gpuconv_sim::insn_error("lane %d passes descriptors 0x%016llx, 0x%016llx where lane 0 passes 0x%016llx, "
                                    "0x%016llx: a warpgroup's operands are one matrix, the same descriptors in every lane",
                                    l, p->da, p->db, l0->da, l0->db);
            return;
        }
    }
    if (!step(q, l0->da, l0->db ^ (unsigned long long)(TA << 1 | TB) << 46)) return;  // bits 46-48 are unused
    if (!pattern_aligned(l0->da, "A") || !pattern_aligned(l0->db, "B")) return;
    if (!q.fenced) {
        gpuconv_sim::insn_error("no wgmma.fence since the warp's last wgmma.wait_group: fence before the first "
                                "mma_async of a batch (the accumulators were touched by other instructions)");
        return;
    }
    if (q.nops == sizeof q.ops / sizeof q.ops[0]) {
        gpuconv_sim::insn_error("more than %d mma_async in flight: wgmma.wait_group before issuing more",
                                (int)(sizeof q.ops / sizeof q.ops[0]));
        return;
    }
    Op& op = q.ops[q.nops];
    op = Op{l0->da, l0->db, N, K, K == 16 ? 2 : 4, TA, TB, TO_FLOAT, {}, q.groups, 0};
    // The hardware issues it once for the 4 warps; the simulator's schedule runs them one after
    // another (a warp may run on past its issue before the next warp gets there): the warpgroup's
    // first warp to issue an instruction checks the operands of all 64 rows.
    WarpQueue& first = queue(gpuconv_sim::rt.insn_warp / 4 * 4);
    if (q.count > first.issued) {
        first.issued = q.count;
        if (!operand_published(op.da, TA, 64, 0, op, "A") || !operand_published(op.db, TB, N, 0, op, "B")) return;
    }
    ++q.nops;
    for (int l = 0; l < 32; ++l) op.d[l] = ((const MmaLane*)ops[l])->d;
    op.held = accumulators(op);
}

inline void fence_lanes(void* const*) {
    WarpQueue& q = queue();
    if (step(q, 0)) q.fenced = true;
}
inline void commit_lanes(void* const*) {
    WarpQueue& q = queue();
    if (step(q, 0)) ++q.groups;
}

template <int KEEP>
void wait_lanes(void* const*) {
    WarpQueue& q = queue();
    if (!step(q, KEEP)) return;
    unsigned kept = 0;
    for (unsigned i = 0; i < q.nops; ++i) {
        if (q.ops[i].group + KEEP < q.groups) {  // committed, and older than the KEEP newest groups
            if (accumulators(q.ops[i]) != q.ops[i].held) {
                gpuconv_sim::insn_error("the accumulators of an mma_async of commit group %u were written before this "
                                        "wait retired it (the mma reads and writes them until then): touch them only "
                                        "after the wgmma.wait_group that retires their group, then wgmma.fence",
                                        q.ops[i].group);
                return;
            }
            if (!perform(q.ops[i], gpuconv_sim::rt.insn_warp)) return;
            for (unsigned j = i + 1; j < q.nops; ++j)  // later operations on the same registers start from here
                if (q.ops[j].d[0] == q.ops[i].d[0]) q.ops[j].held = accumulators(q.ops[j]);
        } else {
            q.ops[kept++] = q.ops[i];
        }
    }
    q.nops = kept;
    q.fenced = false;
}

}  // namespace wgmma_sim
#endif

// ------------------------------------------------------------------------------------------
// wgmma.fence.sync.aligned: earlier accesses to the accumulators before the next mma_async.
__device__ inline void wgmma_fence(GPUCONV_SITE_FIRST) {
#ifdef __CUDA_ARCH__
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#else
    int op;
    gpuconv_sim::warp_instruction("wgmma.fence.sync.aligned", wgmma_sim::fence_lanes, &op, site_file, site_line);
#endif
}

// wgmma.commit_group.sync.aligned: closes the group of the mma_async issued since the last commit.
__device__ inline void wgmma_commit(GPUCONV_SITE_FIRST) {
#ifdef __CUDA_ARCH__
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#else
    int op;
    gpuconv_sim::warp_instruction("wgmma.commit_group.sync.aligned", wgmma_sim::commit_lanes, &op, site_file, site_line);
#endif
}

// wgmma.wait_group.sync.aligned N: until at most N of the warpgroup's groups are in flight.
template <int N>
__device__ inline void wgmma_wait(GPUCONV_SITE_FIRST) {
#ifdef __CUDA_ARCH__
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
#else
    int op;
    gpuconv_sim::warp_instruction("wgmma.wait_group.sync.aligned", wgmma_sim::wait_lanes<N>, &op, site_file, site_line);
#endif
}

// Pins the accumulators in their registers at this point of the program: the compiler may not
// move their reads or writes (copies between loop instances, say) across it, which would make
// ptxas serialize the wgmmas (its C7514 performance warning). No instruction; CUTLASS's
// warpgroup_fence_operand.
template <int N>
__device__ inline void wgmma_fence_operands(float (&d)[N]) {
#ifdef __CUDA_ARCH__
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
#else
    (void)d;
#endif
}

// `v` as a value the compiler cannot see through (an empty asm that may change it): it stays in
// a register from here on instead of being recomputed from what it was made of. No instruction.
__device__ inline unsigned long long wgmma_opaque(unsigned long long v) {
#ifdef __CUDA_ARCH__
    asm volatile("" : "+l"(v));
#endif
    return v;
}

// fence.proxy.async.shared::cta: this thread's generic-proxy writes to shared memory (stores,
// completed cp.async) become visible to the async proxy (wgmma's operand reads), to another
// thread's wgmma once a barrier orders the two. The simulator tracks which writes each thread has
// fenced, and mma_async reports a read of one that no fence and barrier published (operand_published).
__device__ inline void fence_proxy_async() {
#ifdef __CUDA_ARCH__
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#else
    gpuconv_sim::fence_proxy_async();
#endif
}

// The accumulator operands of the GPU forms, as inline PTX wants them: every register named, each
// list extending the one before.
#ifdef __CUDA_ARCH__
#define GPUCONV_WGMMA_REGS32                                                                                  \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                                  \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define GPUCONV_WGMMA_OUTS32                                                                                  \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),           \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),     \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),   \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define GPUCONV_WGMMA_REGS64                                                                                  \
    GPUCONV_WGMMA_REGS32 ", "                                                                                 \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "                        \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define GPUCONV_WGMMA_OUTS64                                                                                  \
    GPUCONV_WGMMA_OUTS32,                                                                                     \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),   \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),   \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),   \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define GPUCONV_WGMMA_REGS128                                                                                 \
    GPUCONV_WGMMA_REGS64 ", "                                                                                 \
    "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "                        \
    "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "                        \
    "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "            \
    "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define GPUCONV_WGMMA_OUTS128                                                                                 \
    GPUCONV_WGMMA_OUTS64,                                                                                     \
    "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),   \
    "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),   \
    "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),   \
    "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),   \
    "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),\
    "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),\
    "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),\
    "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
#endif

// wgmma.mma_async.sync.aligned.m64nNk16.f32.<T>.<T> and .m64nNk8.f32.tf32.tf32, N = 64, 128 or 256
// (N / 2 accumulators a thread): d += A B (scale-d 1), A and B from the descriptors. TA/TB are the
// 16-bit types' transpose flags (1: MN-major); tf32 operands are K-major only, and its instruction
// takes no flags. The GPU forms list every accumulator register (written out: inline PTX has no
// loops: GPUCONV_WGMMA_REGS<ACC>, ACC = N / 2), then the operands numbered on from ACC, given as
// text: the two descriptors (DESC), the scale-d predicate's source (SCALE) and the 16-bit types'
// two flags.
#define GPUCONV_WGMMA_INSN(N, K, TYPE) "wgmma.mma_async.sync.aligned.m64n" #N "k" #K ".f32." TYPE "." TYPE
#ifdef __CUDA_ARCH__
#define GPUCONV_WGMMA_FORM(NAME, N, ACC, K, TYPE, CHECK, DESC, SCALE, FLAGS, ...)                           \
    template <int TA, int TB>                                                                                 \
    __device__ inline void NAME(float d[N / 2], unsigned long long da, unsigned long long db) {               \
        static_assert(CHECK, "tf32 operands are K-major only");                                               \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " SCALE ", 0;\n" GPUCONV_WGMMA_INSN(N, K, TYPE)         \
                     " {" GPUCONV_WGMMA_REGS##ACC "}, " DESC ", p, 1, 1" FLAGS ";\n}\n"                        \
                     : GPUCONV_WGMMA_OUTS##ACC                                                                \
                     : "l"(da), "l"(db), "r"(1)__VA_ARGS__);                                                  \
    }
#else
#define GPUCONV_WGMMA_FORM(NAME, N, ACC, K, TYPE, CHECK, DESC, SCALE, FLAGS, ...)                           \
    template <int TA, int TB>                                                                                 \
    inline void NAME(float d[N / 2], unsigned long long da, unsigned long long db GPUCONV_SITE) {             \
        static_assert(CHECK, "tf32 operands are K-major only");                                               \
        wgmma_sim::MmaLane op = {da, db, d};                                                                  \
        gpuconv_sim::warp_instruction(GPUCONV_WGMMA_INSN(N, K, TYPE),                                         \
                                      wgmma_sim::mma_lanes<N, K, TA, TB, wgmma_sim::operand_format(TYPE)>, &op, \
                                      site_file, site_line);                                                  \
    }
#endif
// The 16-bit types (k16, the flags as operands) and tf32 (k8, K-major, no flags).
#define GPUCONV_WGMMA_16(NAME, N, ACC, TYPE, DESC, SCALE, FLAGS) \
    GPUCONV_WGMMA_FORM(NAME, N, ACC, 16, TYPE, true, DESC, SCALE, ", " FLAGS, , "n"(TA), "n"(TB))
#define GPUCONV_WGMMA_TF32(NAME, N, ACC, DESC, SCALE) \
    GPUCONV_WGMMA_FORM(NAME, N, ACC, 8, "tf32", TA == 0 && TB == 0, DESC, SCALE, "", )
GPUCONV_WGMMA_16(wgmma_m64n64k16_bf16, 64, 32, "bf16", "%32, %33", "%34", "%35, %36")
GPUCONV_WGMMA_16(wgmma_m64n64k16_f16, 64, 32, "f16", "%32, %33", "%34", "%35, %36")
GPUCONV_WGMMA_16(wgmma_m64n128k16_bf16, 128, 64, "bf16", "%64, %65", "%66", "%67, %68")
GPUCONV_WGMMA_16(wgmma_m64n128k16_f16, 128, 64, "f16", "%64, %65", "%66", "%67, %68")
GPUCONV_WGMMA_16(wgmma_m64n256k16_bf16, 256, 128, "bf16", "%128, %129", "%130", "%131, %132")
GPUCONV_WGMMA_16(wgmma_m64n256k16_f16, 256, 128, "f16", "%128, %129", "%130", "%131, %132")
GPUCONV_WGMMA_TF32(wgmma_m64n64k8_tf32, 64, 32, "%32, %33", "%34")
GPUCONV_WGMMA_TF32(wgmma_m64n128k8_tf32, 128, 64, "%64, %65", "%66")
GPUCONV_WGMMA_TF32(wgmma_m64n256k8_tf32, 256, 128, "%128, %129", "%130")
#undef GPUCONV_WGMMA_16
#undef GPUCONV_WGMMA_TF32
#ifdef __CUDA_ARCH__
#undef GPUCONV_WGMMA_REGS32
#undef GPUCONV_WGMMA_OUTS32
#undef GPUCONV_WGMMA_REGS64
#undef GPUCONV_WGMMA_OUTS64
#undef GPUCONV_WGMMA_REGS128
#undef GPUCONV_WGMMA_OUTS128
#endif
#undef GPUCONV_WGMMA_FORM
#undef GPUCONV_WGMMA_INSN

// The warpgroup mma of a storage type, N = 64, 128 or 256 columns: bf16, fp16, and float (the TF32
// build: K-major operands only, which the kernel rounds to TF32 in shared memory before the mma
// reads them, as the precision rule rounds them).
template <class T, int N> struct WarpgroupOp;
#define GPUCONV_WARPGROUP_OP(T, N, FN)                                                                        \
    template <> struct WarpgroupOp<T, N> {                                                                    \
        template <int TA, int TB>                                                                             \
        __device__ static void mma(float d[N / 2], unsigned long long da, unsigned long long db GPUCONV_SITE) { \
            FN<TA, TB>(d, da, db GPUCONV_SITE_FWD);                                                           \
        }                                                                                                     \
    };
GPUCONV_WARPGROUP_OP(bf16_t, 64, wgmma_m64n64k16_bf16)
GPUCONV_WARPGROUP_OP(half_t, 64, wgmma_m64n64k16_f16)
GPUCONV_WARPGROUP_OP(bf16_t, 128, wgmma_m64n128k16_bf16)
GPUCONV_WARPGROUP_OP(half_t, 128, wgmma_m64n128k16_f16)
GPUCONV_WARPGROUP_OP(bf16_t, 256, wgmma_m64n256k16_bf16)
GPUCONV_WARPGROUP_OP(half_t, 256, wgmma_m64n256k16_f16)
GPUCONV_WARPGROUP_OP(float, 64, wgmma_m64n64k8_tf32)  // operands rounded to TF32 in shared memory first
GPUCONV_WARPGROUP_OP(float, 128, wgmma_m64n128k8_tf32)
GPUCONV_WARPGROUP_OP(float, 256, wgmma_m64n256k8_tf32)
#undef GPUCONV_WARPGROUP_OP
#endif  // GPUCONV_WGMMA
