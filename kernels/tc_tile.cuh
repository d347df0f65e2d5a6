// tc_tile.cuh: the tile machinery of the tensor-core GEMMs (kernels/gemm_tc.cu, the dense GEMM,
// and kernels/conv2d_tc.cu, the implicit-GEMM convolutions): stage geometry, the dense operand
// loader, the ldmatrix fragment readers, the cp.async pipeline and the epilogue walk. The
// registry adds it after common.cuh and mma.cuh to the units that list it
// (gpuconv.kernels.UNIT_HEADERS); it includes nothing itself.
//
//   C[M, N] = A[M, K] B[K, N], float32 accumulators, one CTA per BM x BN tile of C.
//
// - The CTA shape is a template parameter, TcShape<BM, BN, WM, WN, WG, STAGES>: WM x WN warps,
//   each computing a (BM / WM) x (BN / WN) block as MI x NI mma tiles of 16x8. TcTile64 (64x64, 4
//   warps of 32x32, 32 float accumulators per thread), TcTile128 (128x128, 8 warps of 64x32, 64
//   per thread), TcTile128w (128x128, 4 warps of 64x64, 128 per thread), TcTileWg (128x128, 2
//   warpgroups of 64x128 on wgmma, 64 per thread), TcTileWg256 (128x256, 2 warpgroups of
//   64x256, 128 per thread), TcTileWgN64 (256x64, 2 warpgroups of 2 x 64x64, 64 per thread)
//   and TcTileWgM64 (64x128, 1 warpgroup, 64 per thread) are the shapes in use; every loader, fragment reader and the pipeline
//   take the shape.
// - K is walked in k-tiles of TC_KBYTES = 64 bytes (32 bf16/fp16 or 16 TF32 elements): 2 mma
//   steps of 32 bytes each.
// - An operand loader is an object with
//       void load(unsigned char* stage, int kt, int vec) const;
//       void land(unsigned char* stage) const;
//   load() issues this thread's share of the copies of k-tile kt into one shared-memory stage,
//   zero-filling every byte outside the operand; the main loop calls it before it multiplies the
//   k-tile in hand and land() after (a no-op for cp.async copies, AsyncLoader; the transposing
//   loaders of the TF32 weight gradient store there what load() fetched into registers). A
//   stage is either K-contiguous ("mk": BM or BN rows of 64 bytes of K) or K-strided ("km": 32
//   rows of K, the M or N columns in 128-byte blocks of 64 16-bit elements, one block after the
//   other; 16-bit elements only), swizzled (stage_offset below). The main loop only sees stages.
// - Fragment readers turn a stage into a warp's mma fragments with ldmatrix: FragA (A, mk),
//   FragA_km (A, km: .trans), FragB_nt (B, mk), FragB_nn (B, km: .trans). .trans moves 16-bit
//   elements, so the km layouts exist in the bf16/fp16 builds only.
// - tc_gemm_mainloop keeps 2 k-tiles loading ahead; tc_gemm_epilogue hands each
//   accumulator with its (row, column) to an epilogue functor.
// - The multiply of a staged k-tile (TcMultiply) runs on the shape's engine: mma.sync per warp
//   (fragments by ldmatrix), or, for a TcShape with WG set, Hopper's wgmma per warpgroup, reading
//   the same stages through shared-memory descriptors (FragX::wg_desc: the mk stages' 64-byte and
//   the km stages' 128-byte swizzles are wgmma's 64B and 128B modes as they are) and keeping one
//   k-tile of wgmmas in flight, hence a fourth stage. Loaders, stage layouts and epilogue are
//   the same for both engines.

#define TC_KBYTES 64        // bytes of K per k-tile: one 64-byte row per M (or N) row of an mk stage
#define TC_STAGES 3         // shared-memory stages: 2 k-tiles in flight while a third is multiplied
#define TC_KM_ROWS 32       // rows of K in a km stage (64 bytes of 16-bit elements)

// A CTA tile: BM x BN outputs, WM x WN warps; WG: multiplied by warpgroups (wgmma) instead of
// warps (mma.sync); STAGES shared-memory stages.
template <int BM_, int BN_, int WM_, int WN_, bool WG_ = false, int STAGES_ = TC_STAGES>
struct TcShape {
    static constexpr int BM = BM_, BN = BN_, WM = WM_, WN = WN_, STAGES = STAGES_;
    static constexpr bool WG = WG_;
    static constexpr int THREADS = 32 * WM * WN;
    static constexpr int MI = BM / WM / 16;              // 16-row mma tiles per warp
    static constexpr int NI = BN / WN / 8;               // 8-column mma tiles per warp (even)
    static constexpr int A_STAGE = BM * TC_KBYTES;        // bytes of one A stage, either layout
    static constexpr int B_STAGE = BN * TC_KBYTES;        // bytes of one B stage, either layout
    static constexpr int SHARED = STAGES * (A_STAGE + B_STAGE);
    __device__ static int warp_m() { return (int)threadIdx.x / 32 / WN; }
    __device__ static int warp_n() { return (int)threadIdx.x / 32 % WN; }
    // The first row of this warp's mma tile i (16 rows): the warps' BM / WM-row blocks one after
    // the other (mma.sync), or, for warpgroups, wgmma's D layout: group g's MI blocks of 64 rows
    // one after the other, warp q = w % 4 of the group holding rows 16 q .. 16 q + 15 of each:
    // 64 MI g + 64 i + 16 q, written as 16 w plus the rest (which vanishes for MI = 1: the compiler
    // does not see that the two forms agree there, and the longer one cost tcwg's loop registers).
    __device__ static int warp_row(int i) {
        return WG ? 16 * warp_m() + 64 * (MI - 1) * (warp_m() / 4) + 64 * i : BM / WM * warp_m() + 16 * i;
    }
};
typedef TcShape<64, 64, 2, 2> TcTile64;     // 128 threads; 24 KiB of stages
typedef TcShape<128, 128, 2, 4> TcTile128;  // 256 threads; 48 KiB of stages (the static limit)
typedef TcShape<128, 128, 2, 2> TcTile128w; // 128 threads, warp tiles of 64x64; 48 KiB of stages
// 2 warpgroups of 64x128 (wgmma m64n128k16); its 8 warps hold D as 16x128 blocks, rows 16 w. A
// fourth stage for the k-tile whose wgmmas are still in flight: 64 KiB, dynamic shared memory.
typedef TcShape<128, 128, 8, 1, true, 4> TcTileWg;  // 256 threads
// The same 2 warpgroups on 64x256 blocks (m64n256k16, 128 accumulators per thread): twice the
// multiply-adds per staged A row; 96 KiB of stages.
typedef TcShape<128, 256, 8, 1, true, 4> TcTileWg256;  // 256 threads
// And on 64 columns (m64n64k16), each warpgroup 2 blocks of 64x64 (2 x 32 accumulators per thread,
// 4 wgmmas a k-tile per group): the narrow GEMMs, whose output channels (the forward's K, the data
// gradient's C) are 64 or fewer and which the 128-column tiles would half waste, with as many
// multiply-adds per staged B row as tcwg has; 80 KiB of stages.
typedef TcShape<256, 64, 8, 1, true, 4> TcTileWgN64;  // 256 threads
// One warpgroup of 64x128 (m64n128k16, 64 accumulators per thread): the GEMMs of 64 rows or fewer,
// the weight gradient's (rows = output channels) of the 64-channel layers; 48 KiB of stages, static
// arrays (their __align__(1024) laid out by the compiler).
typedef TcShape<64, 128, 4, 1, true, 4> TcTileWgM64;  // 128 threads
#define TC_STATIC_SHARED_MAX 49152  // bytes of static shared memory a kernel may declare
#define TC_DYNAMIC_ALIGN 1024       // dynamic stages start on such a boundary; launches pass this many bytes more

// The dynamic stages from the first TC_DYNAMIC_ALIGN-byte boundary of the shared address space
// at or after `p`: wgmma's 128-byte swizzle atoms (8 rows of 128 bytes, the descriptors' base
// offset 0) and the swizzles of stage_offset read absolute shared-address bits, and CUDA does not
// promise the __align__ of an extern shared array; the launch passes the slack.
__device__ inline unsigned char* tc_aligned_dynamic(unsigned char* p) {
    return p + ((TC_DYNAMIC_ALIGN - (smem_address(p) & (TC_DYNAMIC_ALIGN - 1))) & (TC_DYNAMIC_ALIGN - 1));
}

// Declares a kernel body's stages As (S::STAGES A stages) and Bs (S::STAGES B stages), 1024-byte
// aligned (wgmma's swizzle atoms): two static arrays up to 48 KiB in all, one dynamic array beyond
// (the launcher passes S::SHARED + TC_DYNAMIC_ALIGN bytes and raises the kernel's limit; the unused
// static arrays are a token 16 bytes each). The dynamic array is declared with the 16 bytes CUDA
// promises: declared __align__(1024), the compiler takes the promise as given and folds
// tc_aligned_dynamic's rounding away (tests/test_nvrtc.py checks that it stays in the PTX).
// Declared in the body, two arrays: as one array, or returned by a helper, the stages cost ptxas
// a register more in the 128x128 forward, which then spilled.
#define TC_DECLARE_STAGES(S, As, Bs)                                                                   \
    constexpr bool tc_dynamic = S::SHARED > TC_STATIC_SHARED_MAX;                                     \
    __shared__ __align__(1024) unsigned char tc_static_a[tc_dynamic ? 16 : S::STAGES * S::A_STAGE];  \
    __shared__ __align__(1024) unsigned char tc_static_b[tc_dynamic ? 16 : S::STAGES * S::B_STAGE];  \
    extern __shared__ __align__(16) unsigned char tc_dynamic_stages[];                               \
    unsigned char* const As = tc_dynamic ? tc_aligned_dynamic(tc_dynamic_stages) : tc_static_a;      \
    unsigned char* const Bs = tc_dynamic ? As + S::STAGES * S::A_STAGE : tc_static_b

// Byte offset of (row, byte) in a stage whose rows hold ROW_BYTES bytes: mk stages (64-byte rows)
// and km stages of 64 columns (128-byte rows) are swizzled as they are; wider km stages are cut
// into 128-byte column blocks of TC_KM_ROWS rows each, stored one after the other.
template <int ROW_BYTES>
__device__ inline int stage_offset(int row, int byte) {
    if (ROW_BYTES <= 128) return swizzle_offset<(ROW_BYTES <= 128 ? ROW_BYTES : 128)>(row, byte);
    return (byte >> 7) * (TC_KM_ROWS * 128) + swizzle_offset<128>(row, byte & 127);
}

// ------------------------------------------------------------------------------------------
// What a TF32 build does to this thread's pieces of a landed stage (tc_prepare_stages): ROUND
// them in place for the tensor cores (tf32_operand: the precision rule's rounding, as they read
// it), or CHECK that they hold TF32 values already (operands the launcher rounded: Prerounded).
// CHECK is the simulator's alone: a value with any of its 13 low bits set ends the launch with an
// error; on a GPU it is nothing.
enum class Tf32Pass { ROUND, CHECK };

#ifndef __CUDA_ARCH__
inline void check_tf32(float v) {
    const unsigned u = __float_as_uint(v);
    if (u & 0x1fffu)
        gpuconv_sim::thread_error("multiplies the float32 0x%08x as a TF32 operand the launcher rounded, but its "
                                  "13 low bits are set: a tile that skips the rounding was given an operand no "
                                  "rounding pass wrote (conv2d_tc_round_tf32)", u);
}
#endif

template <Tf32Pass PASS>
__device__ inline void round_piece_tf32(unsigned char* p) {
    if (PASS == Tf32Pass::CHECK) {
#ifndef __CUDA_ARCH__
        for (int i = 0; i < 4; ++i) check_tf32(((const float*)p)[i]);
#endif
        return;
    }
    float4 v = *(float4*)p;
    v.x = tf32_operand(v.x), v.y = tf32_operand(v.y), v.z = tf32_operand(v.z), v.w = tf32_operand(v.w);
    *(float4*)p = v;
}

// Loading: one copy of VEC bytes, src_bytes of them from global memory, the rest zeros.
template <int VEC>
__device__ inline void copy_piece(unsigned char* dst, const unsigned char* src, int src_bytes) {
    cp_async_ca<VEC>(dst, src, src_bytes);
}
template <>
__device__ inline void copy_piece<16>(unsigned char* dst, const unsigned char* src, int src_bytes) {
    cp_async_cg(dst, src, src_bytes);  // the tile is read once per block: keep it out of L1
}
template <>
__device__ inline void copy_piece<2>(unsigned char* dst, const unsigned char* src, int src_bytes) {
    // 16-bit rows of odd length are only 2-byte aligned, below cp.async's smallest copy: a plain
    // load and store, visible to the block after the barrier that precedes the tile's use.
    *(unsigned short*)dst = src_bytes ? *(const unsigned short*)src : (unsigned short)0;
}

// The stage offsets of a thread's pieces: its first at (row0, byte) of a stage with ROW_BYTES-byte
// rows, the others STEP rows apart. STEP being a multiple of 8 keeps the swizzle's phase (a
// function of the row's bits 0-2; stage_offset), piece q lies q * STEP rows further: one offset
// computed before the main loop, then an immediate add per piece (the swizzle recomputed per
// k-tile took some 10 instructions a piece). The simulator checks each against stage_offset.
template <int ROW_BYTES, int STEP>
struct PieceOffsets {
    static_assert(STEP % 8 == 0, "pieces 8 rows apart share the swizzle's phase");
    static constexpr int ROW_PITCH = ROW_BYTES < 128 ? ROW_BYTES : 128;  // km stages: 128-byte column blocks
    int first, row0, byte;
    __device__ PieceOffsets(int row0_, int byte_)
        : first(stage_offset<ROW_BYTES>(row0_, byte_)), row0(row0_), byte(byte_) {}
    __device__ int operator()(int q) const {
        const int off = first + q * STEP * ROW_PITCH;
#ifndef __CUDA_ARCH__
        if (off != stage_offset<ROW_BYTES>(row0 + q * STEP, byte)) __trap();
#endif
        return off;
    }
};

// An operand tile of a dense row-major matrix: ROWS rows of ROW_BYTES bytes per stage, copied by
// THREADS threads. Row r, byte b of k-tile kt come from global row (kt * kt_rows + r) and byte
// (kt * kt_bytes + b) counted from `base`, the tile's first element: an mk stage (A, B [N][K];
// 64-byte rows) steps along its rows (kt_bytes = TC_KBYTES), a km stage (B [K][N], dY of the
// weight gradient; wider rows) down them (kt_rows = 32 rows of K): compile-time constants.
// Outside rows_valid rows or row_bytes bytes the stage is zero-filled (cp.async src-size), so
// edges need no other guard. Byte counts are ints (the launchers check the sizes).
// A loader whose copies are cp.async: they land by themselves (cp_async_wait), nothing to store.
struct AsyncLoader {
    __device__ void land(unsigned char*) const {}
};

template <int ROWS, int ROW_BYTES, int THREADS>
struct DenseTileLoader : AsyncLoader {
    static constexpr int kt_rows = ROW_BYTES == TC_KBYTES ? 0 : TC_KM_ROWS;
    static constexpr int kt_bytes = ROW_BYTES == TC_KBYTES ? TC_KBYTES : 0;
    // The 16-byte copies: each thread's pieces of a stage are fixed, row r0 and byte b, then rows
    // ROW_STEP apart (COUNT of them), in the same swizzle phase.
    static constexpr int PER_ROW = ROW_BYTES / 16, COUNT = ROWS * PER_ROW / THREADS, ROW_STEP = THREADS / PER_ROW;
    const unsigned char* base;
    long long pitch;      // bytes between consecutive rows in global memory
    int rows_valid;       // rows from `base` on that lie in the matrix
    int row_bytes;        // bytes of a row from `base` on that lie in the matrix
    // copy16's position, carried from k-tile to k-tile (the main loop loads them in order): the
    // row of this thread's first piece of the next k-tile (a km stage's; an mk stage's rows stay,
    // so which of them lie in the matrix is known once: bit q of `valid`), the bytes of its row
    // left from the piece on, and its address.
    mutable int row, left;
    int valid;
    mutable const unsigned char* src;
    mutable int kt;       // the next k-tile (checked on the simulator only)

    __device__ DenseTileLoader(const unsigned char* base_, long long pitch_, int rows_valid_, int row_bytes_)
        : base(base_), pitch(pitch_), rows_valid(rows_valid_), row_bytes(row_bytes_), kt(0) {
        const int r0 = (int)threadIdx.x / PER_ROW, b = (int)threadIdx.x % PER_ROW * 16;
        row = r0;
        valid = 0;
        for (int q = 0; q < COUNT; ++q) valid |= (r0 + q * ROW_STEP < rows_valid_) << q;
        left = row_bytes_ - b;
        src = base_ + r0 * pitch_ + b;
    }

    __device__ void load(unsigned char* stage, int kt, int vec) const {
        switch (vec) {
            case 16: copy16(stage, kt); break;
            case 8: copy<8>(stage, kt); break;
            case 4: copy<4>(stage, kt); break;
            default: copy<2>(stage, kt); break;
        }
    }

    // This thread's 16-byte pieces of a landed stage rounded to TF32 in place, or checked (the TF32
    // build's wgmma and StageRounded or Prerounded mma.sync; 16-byte copies only, each piece a
    // thread's own).
    template <Tf32Pass PASS>
    __device__ void round_tf32(unsigned char* stage) const {
        const PieceOffsets<ROW_BYTES, ROW_STEP> at((int)threadIdx.x / PER_ROW, (int)threadIdx.x % PER_ROW * 16);
#pragma unroll
        for (int q = 0; q < COUNT; ++q) round_piece_tf32<PASS>(stage + at(q));
    }

    // The 16-byte copies, those of every convolution operand and of aligned GEMMs: one address,
    // one row test and one byte count per k-tile serve all of a thread's pieces, unrolled, from
    // the carried position. The general loop below recomputes row, byte and a 64-bit address per
    // piece (about 55 instructions a piece on sm_90, where the HMMAs it feeds need 3-4 issue slots
    // each).
    __device__ void copy16(unsigned char* stage, int kt_loaded) const {
        static_assert(ROWS * PER_ROW % THREADS == 0 && THREADS % PER_ROW == 0,
                      "whole rows of 16-byte pieces per thread");
#ifndef __CUDA_ARCH__
        if (kt_loaded != kt++) __trap();  // the carried position needs the order
#else
        (void)kt_loaded;
#endif
        const PieceOffsets<ROW_BYTES, ROW_STEP> at((int)threadIdx.x / PER_ROW, (int)threadIdx.x % PER_ROW * 16);
#ifndef __CUDA_ARCH__
        if (left % 16) __trap();  // whole pieces: the launchers take this loop only for rows of 16-byte multiples
#endif
        const bool any = left > 0;  // so a piece is all in or all out: a predicated copy, no partial-size arithmetic
#pragma unroll
        for (int q = 0; q < COUNT; ++q) {
            const bool ok = any && (kt_rows ? row + q * ROW_STEP < rows_valid : valid >> q & 1);
            copy_piece<16>(stage + at(q), ok ? src + q * ROW_STEP * pitch : base, ok ? 16 : 0);
        }
        row += kt_rows;
        left -= kt_bytes;
        src += kt_bytes + kt_rows * pitch;
    }

    template <int VEC>
    __device__ void copy(unsigned char* stage, int kt) const {
        constexpr int PER_ROW = ROW_BYTES / VEC, PIECES = ROWS * PER_ROW;
        const int row0 = kt * kt_rows;
        const long long byte0 = (long long)kt * kt_bytes;
        // Not unrolled: unrolled, ptxas kept the addresses of every piece of the four widths live
        // across the k-loop (255 registers on sm_90); rolled up, the kernel needs about 60.
#pragma unroll 1
        for (int q = 0; q < (PIECES + THREADS - 1) / THREADS; ++q) {
            const int p = threadIdx.x + q * THREADS;
            if (PIECES % THREADS == 0 || p < PIECES) {
                const int r = p / PER_ROW, b = (p % PER_ROW) * VEC;
                const long long left = row0 + r < rows_valid ? row_bytes - (byte0 + b) : 0;
                const int n = left <= 0 ? 0 : (left < VEC ? (int)left : VEC);
                const unsigned char* src = n ? base + (row0 + r) * pitch + byte0 + b : base;
                copy_piece<VEC>(stage + stage_offset<ROW_BYTES>(r, b), src, n);
            }
        }
    }
};

// The warpgroup of the calling thread (4 consecutive warps: wgmma's unit).
__device__ inline int warpgroup() { return (int)threadIdx.x / 128; }

// ------------------------------------------------------------------------------------------
// Fragments. A warp's lane l supplies the row address of matrix j = l / 8, row l % 8 of each
// ldmatrix.x4 (mma.cuh's table). Warp (wm, wn) covers rows (BM / WM) * wm and columns
// (BN / WN) * wn of the CTA tile; ks is the mma step (32 bytes of K) within the stage.
//
// A lane's swizzled address is computed once, before the main loop (lane_offset: its address
// for mma tile 0 at step 0), and every other tile and step derives from it by one add and one
// xor, because the swizzle's phase is a function of row bits that the tiles do not change:
//   mk stages (64-byte rows, phase = bits 1-2 of the row): tile i is 16 rows further, +1024
//     bytes, the same phase; step ks adds 32 bytes to a byte column below 32, which is bit 5,
//     flipped by the xor too: offset = (lane ^ 32 ks) + 1024 i.
//   km stages (128-byte row blocks, phase = bits 0-2 of the row of K): step ks is 16 rows of K
//     further, +2048 bytes; tile i adds 32 i bytes to a column whose bits 5-6 are otherwise
//     clear (the warp's first column is a multiple of 32 MI bytes, MI a power of two up to 4):
//     offset = (lane ^ 32 i) + 2048 ks.
// Recomputed per k-tile, the swizzles took about 60 of the forward's 270 instructions a k-tile.
// The simulator checks each derived offset against stage_offset.
__device__ inline int tc_checked_offset(int fast, int reference) {
#ifndef __CUDA_ARCH__
    if (fast != reference) __trap();  // a tile shape outside the derivation above
#else
    (void)reference;
#endif
    return fast;
}

template <int COUNT>
__device__ constexpr bool tc_xor_tiles() { return COUNT == 1 || COUNT == 2 || COUNT == 4; }

// A stage [BM rows][64 bytes of K]: one x4 per 16x(32 bytes) fragment: matrices (rows 0-7,
// bytes 0-15), (rows 8-15, bytes 0-15), (rows 0-7, bytes 16-31), (rows 8-15, bytes 16-31).
template <class S>
struct FragA {
    static constexpr int WG_TRANS = 0;  // as a wgmma operand: K-major, 64-byte swizzle, 8-row atoms 512 bytes apart
    static constexpr int WG_KS_BYTES = 32;  // a k16 step further along the stage
    static constexpr int WG_BLOCK_BYTES = 64 * TC_KBYTES;  // the next 64-row block
    // The warpgroup's first 64-row block (its blocks: S::MI of them, one after the other).
    __device__ static unsigned long long wg_desc(const unsigned char* stage, int ks) {
        return wgmma_descriptor<TC_KBYTES>(stage + WG_BLOCK_BYTES * S::MI * warpgroup() + WG_KS_BYTES * ks, 16,
                                           8 * TC_KBYTES);
    }
    __device__ static int row(int i) {
        const int lane = threadIdx.x % 32;
        return S::warp_row(i) + 8 * (lane / 8 & 1) + lane % 8;
    }
    __device__ static int byte(int ks) { return 32 * ks + 16 * ((int)threadIdx.x % 32 / 16); }
    __device__ static int lane_offset() { return stage_offset<TC_KBYTES>(row(0), byte(0)); }

    template <class Op>
    __device__ static void load(const unsigned char* stage, int ks, int lane, unsigned a[S::MI][4]) {
#pragma unroll
        for (int i = 0; i < S::MI; ++i) {
            const int off = tc_checked_offset((lane ^ 32 * ks) + 16 * TC_KBYTES * i,
                                              stage_offset<TC_KBYTES>(row(i), byte(ks)));
            ldmatrix_x4(a[i], stage + off);
            Op::prepare(a[i], 4);
        }
    }
};

// A stage [32 rows of K][BM columns of M] (A given K-strided, 16-bit): .trans reads the 8x8
// blocks column-major, so matrix (k 0-7, m 0-7) stored row by row arrives as the A fragment of
// (m 0-7, k 0-7): matrices (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15).
template <class S>
struct FragA_km {
    // As a wgmma operand: M-major, 128-byte swizzle, each 64-column block of the warpgroup one
    // column block of the stage; 8 rows of K 1024 bytes on, a k16 step 16 rows.
    static constexpr int WG_TRANS = 1;
    static constexpr int WG_KS_BYTES = 16 * 128;
    static constexpr int WG_BLOCK_BYTES = TC_KM_ROWS * 128;  // the next 64 columns
    __device__ static unsigned long long wg_desc(const unsigned char* stage, int ks) {
        return wgmma_descriptor<128>(stage + WG_BLOCK_BYTES * S::MI * warpgroup() + WG_KS_BYTES * ks,
                                     TC_KM_ROWS * 128, 8 * 128);
    }
    __device__ static int krow(int ks) { const int lane = threadIdx.x % 32; return 16 * ks + 8 * (lane / 16) + lane % 8; }
    __device__ static int col(int i) { return S::warp_row(i) + 8 * ((int)threadIdx.x % 32 / 8 & 1); }
    __device__ static int lane_offset() { return stage_offset<2 * S::BM>(krow(0), 2 * col(0)); }

    template <class Op>
    __device__ static void load(const unsigned char* stage, int ks, int lane, unsigned a[S::MI][4]) {
        static_assert(tc_xor_tiles<S::MI>(), "the km offsets derive tiles by xor (see above)");
#pragma unroll
        for (int i = 0; i < S::MI; ++i) {
            const int off = tc_checked_offset((lane ^ 32 * i) + 16 * 128 * ks, stage_offset<2 * S::BM>(krow(ks), 2 * col(i)));
            ldmatrix_x4_trans(a[i], stage + off);
        }
    }
};

// B stage [BN rows of N][64 bytes of K] (B given as [N][K]): one x4 per two 8-column B
// fragments: matrices (n 0-7, bytes 0-15), (n 0-7, bytes 16-31), (n 8-15, ...), (n 8-15, ...).
template <class S>
struct FragB_nt {
    static constexpr int WG_TRANS = 0;  // as a wgmma operand: K-major, 64-byte swizzle, all BN rows
    static constexpr int WG_KS_BYTES = 32;
    __device__ static unsigned long long wg_desc(const unsigned char* stage, int ks) {
        return wgmma_descriptor<TC_KBYTES>(stage + WG_KS_BYTES * ks, 16, 8 * TC_KBYTES);
    }
    __device__ static int row(int p) {
        const int lane = threadIdx.x % 32;
        return S::BN / S::WN * S::warp_n() + 16 * p + 8 * (lane / 16) + lane % 8;
    }
    __device__ static int byte(int ks) { return 32 * ks + 16 * ((int)threadIdx.x % 32 / 8 & 1); }
    __device__ static int lane_offset() { return stage_offset<TC_KBYTES>(row(0), byte(0)); }

    template <class Op>
    __device__ static void load(const unsigned char* stage, int ks, int lane, unsigned b[S::NI][2]) {
#pragma unroll
        for (int p = 0; p < S::NI / 2; ++p) {
            const int off = tc_checked_offset((lane ^ 32 * ks) + 16 * TC_KBYTES * p,
                                              stage_offset<TC_KBYTES>(row(p), byte(ks)));
            unsigned r[4];
            ldmatrix_x4(r, stage + off);
            Op::prepare(r, 4);
            b[2 * p][0] = r[0]; b[2 * p][1] = r[1]; b[2 * p + 1][0] = r[2]; b[2 * p + 1][1] = r[3];
        }
    }
};

// B stage [32 rows of K][BN columns of N] (B given as [K][N], 16-bit): .trans reads the 8x8
// blocks column-major: matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), ...
template <class S>
struct FragB_nn {
    // As a wgmma operand: N-major, 128-byte swizzle, BN columns in column blocks TC_KM_ROWS rows
    // long (LBO), 8 rows of K 1024 bytes on.
    static constexpr int WG_TRANS = 1;
    static constexpr int WG_KS_BYTES = 16 * 128;
    __device__ static unsigned long long wg_desc(const unsigned char* stage, int ks) {
        return wgmma_descriptor<128>(stage + WG_KS_BYTES * ks, TC_KM_ROWS * 128, 8 * 128);
    }
    __device__ static int krow(int ks) {
        const int lane = threadIdx.x % 32;
        return 16 * ks + 8 * (lane / 8 & 1) + lane % 8;
    }
    __device__ static int col(int p) { return S::BN / S::WN * S::warp_n() + 16 * p + 8 * ((int)threadIdx.x % 32 / 16); }
    __device__ static int lane_offset() { return stage_offset<2 * S::BN>(krow(0), 2 * col(0)); }

    template <class Op>
    __device__ static void load(const unsigned char* stage, int ks, int lane, unsigned b[S::NI][2]) {
        static_assert(tc_xor_tiles<S::NI / 2>(), "the km offsets derive tiles by xor (see above)");
#pragma unroll
        for (int p = 0; p < S::NI / 2; ++p) {
            const int off = tc_checked_offset((lane ^ 32 * p) + 16 * 128 * ks, stage_offset<2 * S::BN>(krow(ks), 2 * col(p)));
            unsigned r[4];
            ldmatrix_x4_trans(r, stage + off);
            b[2 * p][0] = r[0]; b[2 * p][1] = r[1]; b[2 * p + 1][0] = r[2]; b[2 * p + 1][1] = r[3];
        }
    }
};

// A landed k-tile's operands in the TF32 build, as Op takes them (the barrier after this
// publishes what it wrote): rounded to TF32 in shared memory, each thread its own copies, where
// Op::ROUNDS_STAGES (StageRounded: tf32_operand); checked on the simulator where Op::PREROUNDED
// (the launcher rounded them); nothing else. Nothing in the 16-bit builds.
template <class Op, class LA, class LB>
__device__ inline void tc_prepare_stages(const LA& la, const LB& lb, unsigned char* A, unsigned char* B) {
#if GPUCONV_TF32
    constexpr Tf32Pass PASS = Op::PREROUNDED ? Tf32Pass::CHECK : Tf32Pass::ROUND;
#ifdef __CUDA_ARCH__
    if (!Op::ROUNDS_STAGES) return;
#else
    if (!Op::ROUNDS_STAGES && !Op::PREROUNDED) return;
#endif
    la.template round_tf32<PASS>(A);
    lb.template round_tf32<PASS>(B);
#else
    (void)la, (void)lb, (void)A, (void)B;
#endif
}

// ------------------------------------------------------------------------------------------
// The multiply of one staged k-tile, TcMultiply<S, Op, FragA, FragB>, on the engine of the shape:
// - mma.sync (S::WG false): each warp reads its fragments with ldmatrix (FragA, FragB) and issues
//   MI x NI mmas per 32 bytes of K. Synchronous: the stages are free once every warp is past it.
// - wgmma (S::WG true; GPUCONV_WGMMA builds): each warpgroup multiplies its MI blocks of 64 x BN
//   straight from the stages, through the descriptors FragA/FragB::wg_desc give (the stage layouts
//   are wgmma's 64- and 128-byte swizzles as they are), MI m64nBNk16 per 32 bytes of K, and waits
//   for them before the next barrier lets the stage be refilled. Its publish() is the proxy fence
//   that makes the stage's generic-proxy writes (cp.async) visible to wgmma, before the barrier.
template <class S, class Op, class FragA, class FragB, bool WG = S::WG>
struct TcMultiply {
    static constexpr int IN_FLIGHT = 0;  // k-tiles whose stage is still read after their round
    const unsigned char *As, *Bs;  // stage 0 of each operand
    int lane_a, lane_b;  // this lane's swizzled fragment offsets (see above)
    __device__ TcMultiply(const unsigned char* As_, const unsigned char* Bs_)
        : As(As_), Bs(Bs_), lane_a(FragA::lane_offset()), lane_b(FragB::lane_offset()) {}
    template <class LA, class LB>
    __device__ static void prepare(const LA& la, const LB& lb, unsigned char* A, unsigned char* B) {
        tc_prepare_stages<Op>(la, lb, A, B);
    }
    __device__ static void publish() {}
    __device__ static void finish(float (*)[S::NI][4]) {}
    // Multiplies the k-tile in stage `s`.
    __device__ void operator()(int s, float acc[S::MI][S::NI][4]) const {
        const unsigned char* A = As + s * S::A_STAGE;
        const unsigned char* B = Bs + s * S::B_STAGE;
#pragma unroll
        for (int ks = 0; ks < TC_KBYTES / 32; ++ks) {
            unsigned a[S::MI][4], b[S::NI][2];
            FragA::template load<Op>(A, ks, lane_a, a);
            FragB::template load<Op>(B, ks, lane_b, b);
#pragma unroll
            for (int i = 0; i < S::MI; ++i)
#pragma unroll
                for (int n = 0; n < S::NI; ++n) Op::mma(acc[i][n], a[i], b[n]);
        }
    }
};

#if GPUCONV_WGMMA
template <class S, class Op, class FragA, class FragB>
struct TcMultiply<S, Op, FragA, FragB, true> {
    static_assert(S::WN == 1 && S::WM % 4 == 0 && (S::BN == 64 || S::BN == 128 || S::BN == 256) && S::MI <= 2,
                  "a warpgroup's 4 warps hold 16 rows each of its MI m64n64, m64n128 or m64n256 blocks");
    static_assert(S::BM == 16 * S::MI * S::WM, "the warpgroups' blocks cover the tile's rows, each once");
    // Each round leaves its wgmmas running into the next (their accumulators are only touched
    // by the next round's wgmmas, which the hardware orders), so the stage they read stays busy
    // one round longer: the pipeline keeps a stage for it.
    static constexpr int IN_FLIGHT = 1;
    // wgmma reads shared memory as it is: the stages are rounded (before the proxy fence and the
    // barrier publish them) unless the launcher rounded the operands (Prerounded).
    static_assert(!Op::ROUNDS_FRAGMENTS, "wgmma reads its operands from shared memory: no fragments to round");
    template <class LA, class LB>
    __device__ static void prepare(const LA& la, const LB& lb, unsigned char* A, unsigned char* B) {
        tc_prepare_stages<Op>(la, lb, A, B);
    }
    __device__ static void publish() { fence_proxy_async(); }
    // Block i's accumulators as the wgmma's list (each block's mma tiles are its column blocks).
    __device__ static float (&regs(float acc[S::MI][S::NI][4], int i))[S::NI * 4] {
        return *reinterpret_cast<float (*)[S::NI * 4]>(&acc[i][0][0]);
    }
    // The last round's wgmmas done; the operand fence keeps the epilogue's reads of the
    // accumulators after the wait (unpinned, the compiler may hoist them above it: wrong sums, and
    // ptxas serializes every wgmma of the kernel to stay correct, its C7514).
    __device__ static void finish(float acc[S::MI][S::NI][4]) {
        wgmma_wait<0>();
#pragma unroll
        for (int i = 0; i < S::MI; ++i) wgmma_fence_operands(regs(acc, i));
    }
    // The descriptors of stage 0 at k16 step 0, built once: every stage and step is the same
    // descriptor with a further start address, whose field (bits 0-13, in 16-byte units) takes the
    // offset without carrying out, shared memory staying below the 256 KiB it can name; the upper
    // word (SBO, swizzle) is a constant. About 30 instructions a k-tile fewer than building each
    // from its stage's address. The simulator checks each against the descriptor built afresh.
    // Built opaque (wgmma_opaque): left to itself, ptxas rebuilt both from the stages' addresses in
    // every k-tile (about 15 instructions) rather than keep them in two registers.
    const unsigned char *As, *Bs;
    unsigned long long da0, db0;
    __device__ TcMultiply(const unsigned char* As_, const unsigned char* Bs_)
        : As(As_), Bs(Bs_), da0(wgmma_opaque(FragA::wg_desc(As_, 0))), db0(wgmma_opaque(FragB::wg_desc(Bs_, 0))) {}
    // Block i (BLOCK bytes on each: A's blocks; B has one) of stage s at k16 step ks.
    template <class Frag, int STAGE, int BLOCK = 0>
    __device__ static unsigned long long desc(unsigned long long d0, const unsigned char* stage0, int s, int ks,
                                              int i = 0) {
        static_assert(STAGE % 16 == 0 && Frag::WG_KS_BYTES % 16 == 0 && BLOCK % 16 == 0, "16-byte units");
        const int block = i * BLOCK;
        // in 16-byte units term by term: the stage's part is one multiply per k-tile, the rest
        // immediates
        const unsigned lo = (unsigned)d0 + (unsigned)s * (STAGE >> 4) + (unsigned)((ks * Frag::WG_KS_BYTES + block) >> 4);
        const unsigned long long d = (d0 >> 32 << 32) | lo;
#ifndef __CUDA_ARCH__
        if (d != Frag::wg_desc(stage0 + s * STAGE + block, ks)) __trap();
#else
        (void)stage0;
#endif
        return d;
    }
    __device__ void operator()(int s, float acc[S::MI][S::NI][4]) const {
#pragma unroll
        for (int i = 0; i < S::MI; ++i) wgmma_fence_operands(regs(acc, i));
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < TC_KBYTES / 32; ++ks)
#pragma unroll
            for (int i = 0; i < S::MI; ++i)
                WarpgroupOp<typename Op::storage, S::BN>::template mma<FragA::WG_TRANS, FragB::WG_TRANS>(
                    regs(acc, i), desc<FragA, S::A_STAGE, FragA::WG_BLOCK_BYTES>(da0, As, s, ks, i),
                    desc<FragB, S::B_STAGE>(db0, Bs, s, ks));
        wgmma_commit();
        wgmma_wait<IN_FLIGHT>();  // the previous round's wgmmas are done: its stage may be refilled
#pragma unroll
        for (int i = 0; i < S::MI; ++i) wgmma_fence_operands(regs(acc, i));
    }
};
#endif

// The pipeline: S::STAGES stages, D = STAGES - 1 - IN_FLIGHT k-tiles loaded ahead of the one
// being multiplied (2 in both engines: 3 stages for mma.sync, 4 for wgmma, whose previous k-tile
// is still being read). Groups are committed every round, empty or not, so that "all but the
// newest D - 1 groups" is always k-tile kt. Per k-tile kt:
//   wait_group  -> this thread's copies of tile kt have landed;
//   publish, __syncthreads -> everyone's have (visible to wgmma's async proxy too), and every warp
//                    is done with the stage of tile kt - 1 - IN_FLIGHT, which is refilled next:
//                    it is (kt + D) % STAGES;
//   issue tile kt + D, then multiply tile kt while it streams in, then land tile kt + D (stores
//                    from registers, before the barrier of k-tile kt + 1, so before the one of
//                    kt + D that publishes the stage).
// On sm_75 (mma.cuh: no cp.async) the copies of tile kt + D complete as they are issued, so a warp
// waits for their global loads before it multiplies tile kt: only the other warps hide that
// latency there (a loader that stages its loads in registers across the mmas, as the TF32
// weight gradient's do, would overlap them; not measured on a T4).
template <class S, class Op, class FragA, class FragB, class LoaderA, class LoaderB>
__device__ void tc_gemm_mainloop(const LoaderA& la, const LoaderB& lb, int ktiles, int vec_a, int vec_b,
                                 unsigned char* As, unsigned char* Bs, float acc[S::MI][S::NI][4]) {
    typedef TcMultiply<S, Op, FragA, FragB> Multiply;
    constexpr int D = S::STAGES - 1 - Multiply::IN_FLIGHT;
    static_assert(D >= 1, "a stage for the k-tile being multiplied and one loading");
#pragma unroll
    for (int s = 0; s < D; ++s) {
        if (s < ktiles) {
            la.load(As + s * S::A_STAGE, s, vec_a);
            lb.load(Bs + s * S::B_STAGE, s, vec_b);
            la.land(As + s * S::A_STAGE);
            lb.land(Bs + s * S::B_STAGE);
        }
        cp_async_commit();
    }
    const Multiply multiply(As, Bs);
    int read = 0, write = D;  // kt % STAGES and (kt + D) % STAGES, carried
    for (int kt = 0; kt < ktiles; ++kt) {
        cp_async_wait<D - 1>();
        multiply.prepare(la, lb, As + read * S::A_STAGE, Bs + read * S::B_STAGE);
        multiply.publish();
        __syncthreads();
        const bool more = kt + D < ktiles;
        if (more) {
            la.load(As + write * S::A_STAGE, kt + D, vec_a);
            lb.load(Bs + write * S::B_STAGE, kt + D, vec_b);
        }
        cp_async_commit();
        multiply(read, acc);
        if (more) {  // register-staged loads stored behind the mmas (nothing for cp.async ones)
            la.land(As + write * S::A_STAGE);
            lb.land(Bs + write * S::B_STAGE);
        }
        read = read == S::STAGES - 1 ? 0 : read + 1;
        write = write == S::STAGES - 1 ? 0 : write + 1;
    }
    multiply.finish(acc);
}

// The epilogue: accumulator elements 2h and 2h + 1 of mma tile (i, n) are C[g + 8h][2t] and
// C[g + 8h][2t + 1] of that tile (mma.cuh's C layout): a pair of neighbours in a row, handed to
// the functor together (store(row, col, v0, v1), col even) so that it can write both at once; the
// functor guards its own edges.
template <class S, class Epilogue>
__device__ void tc_gemm_epilogue(const Epilogue& store, int m0, int n0, const float acc[S::MI][S::NI][4]) {
    const int lane = threadIdx.x % 32;
    const int row0 = m0 + lane / 4;
    const int col0 = n0 + S::BN / S::WN * S::warp_n() + 2 * (lane % 4);
#pragma unroll
    for (int i = 0; i < S::MI; ++i)
#pragma unroll
        for (int n = 0; n < S::NI; ++n)
#pragma unroll
            for (int h = 0; h < 2; ++h)
                store(row0 + S::warp_row(i) + 8 * h, col0 + 8 * n, acc[i][n][2 * h], acc[i][n][2 * h + 1]);
}

// Writes out[at], out[at + 1] (at even: both in one aligned word of two elements) or, at the last
// column or an odd `at`, the elements that exist one by one.
template <class T>
__device__ inline void store_pair(T* out, index_t at, bool both, T v0, T v1) {
    struct __align__(2 * sizeof(T)) Pair { T a, b; };
    if (both && at % 2 == 0) {
        *(Pair*)(out + at) = Pair{v0, v1};
    } else {
        out[at] = v0;
        if (both) out[at + 1] = v1;
    }
}

// Where GEMM row m lies in a row-major output: row m itself (DenseRows), or another mapping with
// the same operator (conv2d_tc.cu's PhaseRows: the data gradient's strided phases).
struct DenseRows {
    __device__ index_t operator()(int row) const { return row; }
};

// The epilogue of a row-major [rows][cols] output of T (storage_t: each value rounded once; float:
// the sums as they are, split-K partials), GEMM row m at output row at(m): the bias (when not
// null, one per column) added in float32, then ReLU (when relu); elements outside rows x cols not
// written.
template <class T, class Rows = DenseRows>
struct RowMajorStore {
    T* out;
    const storage_t* bias;
    int rows, cols, relu;
    Rows at;
    __device__ T value(int col, float v) const {
        if (bias) v += to_acc(bias[col]);
        return storage_from(relu ? relu_value(v) : v, (T*)0);
    }
    __device__ void operator()(int row, int col, float v0, float v1) const {
        if (row >= rows || col >= cols) return;
        const bool both = col + 1 < cols;
        store_pair(out, at(row) * cols + col, both, value(col, v0), both ? value(col + 1, v1) : T());
    }
};
