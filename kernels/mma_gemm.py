"""Tensor-core GEMM rung: C = A @ B in bf16 or fp16 through `mma.sync` m16n8k16 with fp32 accumulation.

What it demonstrates: the step from CUDA-core FMAs (the fp32 ladder) to the tensor cores with the tools an
Ampere-era kernel has: warp-wide `mma.sync.aligned.m16n8k16` tiles, operands staged in shared memory by
`cp.async` (16-byte copies that bypass the registers and L1) in a multi-stage pipeline, and fragments read
with `ldmatrix` (`.trans` for B, which is row-major K x N while the mma wants its "col" layout). It is the
rung below cuBLAS on Hopper, which uses `wgmma` and the bulk tensor copy engine instead; the distance to
cuBLAS is the lesson. Target on an H100: >= 50% of cuBLAS bf16 at 8192^3.

Tile (`Tile()`): a 256-thread block owns a 128 x 128 tile of C and walks K in 32-deep steps. Its 8 warps
stand 2 x 4, each computing 64 x 32 of C as 4 x 4 m16n8k16 mmas (64 fp32 accumulators per thread), so a
k16 step reads 4 A fragments and 2 x 2 B fragments (6 ldmatrix.x4) for 16 mmas. Three stages of A and B
tiles (3 x (8 + 8) KiB = 48 KiB, exactly the static shared-memory limit, so no opt-in attribute) keep two
tiles in flight while one is computed, with one barrier per step. `__launch_bounds__(256, 2)` caps
registers at 128 so two blocks share an SM (16 warps to hide latency; 96 KiB of shared memory). Blocks are
ordered in groups of 8 tile-rows along M (Triton's grouped ordering, kernels/tile_order.py) so blocks
running at once share A and B panels in L2. Shared-memory rows are XOR-swizzled at 16-byte granularity
instead of padded (padding would exceed 48 KiB): each 8-lane phase of an ldmatrix and of the cp.async
stores hits 8 distinct bank groups.

Shapes: any M; N and K multiples of 8, so every 16-byte chunk of a row lies wholly inside or outside the
matrix. Chunks outside are zero-filled by cp.async with src-size 0, and stores outside C are skipped.
Row-major A[M,K], B[K,N], C[M,N] in the input precision (bf16 as uint16 bit patterns), the same bytes
cuBLAS moves, so the two rows compare fairly.

The tile sizes live here in Python and reach the CUDA source as `#define`s; the index mapping is written
once in C++ (`LAYOUT_CODE`, host-compilable) and mirrored by the NumPy model below, which the CPU tests
check for coverage and bank conflicts and compare against the C++ compiled on the host.

NOT YET RUN ON A GPU: compiled offline for sm_80 and sm_90 and checked on the CPU only (layout model,
end-to-end NumPy emulation of ldmatrix/mma semantics, PTX contents, registers and spills, and the real
source run on the host with its PTX emulated, tests/host_cuda.py). The GPU tests in tests/test_mma_gemm.py
must pass before any timing of this rung is trusted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mfugap.cuda_source import CudaSource
from mfugap.kernels import tile_order
from mfugap.kernels.dense_gemm import DenseGemm

CHUNK_ELEMS = 8  # one 16-byte chunk: the unit of cp.async, of an ldmatrix row and of the swizzle
BANK_GROUPS = 8  # 32 banks x 4 bytes = 128 bytes = 8 chunks; conflict-free means 8 distinct per phase
STATIC_SMEM_LIMIT = 48 * 1024  # a block's static shared memory; more needs a dynamic opt-in
PRECISIONS = {"bf16": "bf16", "fp16": "f16"}  # our name -> PTX type name


@dataclass(frozen=True)
class Tile:
    """Block tile bm x bn x bk, warps_m x warps_n warps, `stages` shared-memory stages."""

    bm: int = 128
    bn: int = 128
    bk: int = 32
    warps_m: int = 2
    warps_n: int = 4
    stages: int = 3
    group_m: int = 8  # tile-rows per group in the block ordering (L2 reuse)
    min_blocks: int = 2  # __launch_bounds__ minimum blocks per SM: caps registers at 65536 / (2 x 256)

    @property
    def threads(self) -> int:
        return 32 * self.warps_m * self.warps_n

    @property
    def warp_rows(self) -> int:
        return self.bm // self.warps_m

    @property
    def warp_cols(self) -> int:
        return self.bn // self.warps_n

    @property
    def mma_m(self) -> int:
        """m16 mma tiles per warp along M."""
        return self.warp_rows // 16

    @property
    def mma_n(self) -> int:
        """n8 mma tiles per warp along N."""
        return self.warp_cols // 8

    @property
    def a_row_chunks(self) -> int:
        return self.bk // CHUNK_ELEMS

    @property
    def b_row_chunks(self) -> int:
        return self.bn // CHUNK_ELEMS

    @property
    def a_loads(self) -> int:
        """16-byte cp.async copies per thread per A tile."""
        return self.bm * self.a_row_chunks // self.threads

    @property
    def b_loads(self) -> int:
        return self.bk * self.b_row_chunks // self.threads

    @property
    def smem_bytes(self) -> int:
        return self.stages * (self.bm * self.bk + self.bk * self.bn) * 2

    def validate(self) -> None:
        if self.bm % (16 * self.warps_m) or self.bn % (16 * self.warps_n):
            raise ValueError(f"warp tiles of {self.bm}x{self.bn} over {self.warps_m}x{self.warps_n} warps "
                             "must be multiples of 16 (m16 mmas; ldmatrix.x4.trans feeds two n8 mmas)")
        if self.bk % 16:
            raise ValueError(f"bk={self.bk} must be a multiple of the mma's k16")
        for chunks in (self.a_row_chunks, self.b_row_chunks):
            if chunks not in (2, 4) and chunks % BANK_GROUPS:
                raise ValueError(f"{chunks} chunks per shared-memory row cannot be swizzled (2, 4 or 8k)")
        if (self.bm * self.a_row_chunks) % self.threads or (self.bk * self.b_row_chunks) % self.threads:
            raise ValueError(f"{self.threads} threads cannot share the tile copies evenly")
        if self.stages < 2 or self.smem_bytes > STATIC_SMEM_LIMIT:
            raise ValueError(f"{self.stages} stages need {self.smem_bytes} bytes of shared memory; "
                             f"at least 2 stages and at most {STATIC_SMEM_LIMIT} bytes (static)")

    def defines(self) -> str:
        """The tile as C preprocessor constants: the only way tile sizes reach the CUDA source."""
        self.validate()
        names = ("bm", "bn", "bk", "warps_m", "warps_n", "stages", "group_m", "min_blocks", "threads",
                 "warp_rows", "warp_cols", "mma_m", "mma_n", "a_row_chunks", "b_row_chunks", "a_loads",
                 "b_loads")
        return "".join(f"#define MG_{name.upper()} {getattr(self, name)}\n" for name in names)


# The index mapping, in C++ that compiles for the device and (without __CUDACC__) for the host, where
# tests/test_mma_gemm.py runs it against the NumPy model below. Units are 16-byte chunks throughout.
LAYOUT_CODE = r"""
#ifdef __CUDACC__
#define MG_HD __host__ __device__ __forceinline__
#else
#define MG_HD inline
#endif

// Shared-memory chunk index of (row, chunk) in a tile with row_chunks chunks per row. A bank line is
// 8 chunks (128 bytes); XOR-ing the chunk with the row's position among the rows that would otherwise
// land on the same banks gives any 8 consecutive rows at one chunk (an ldmatrix phase) 8 bank groups.
MG_HD int smem_chunk(int row, int chunk, int row_chunks) {
    const int rows_per_line = row_chunks >= 8 ? 1 : 8 / row_chunks;
    const int span = row_chunks >= 8 ? 8 : row_chunks;
    return row * row_chunks + (chunk ^ ((row / rows_per_line) % span));
}

// Copy i of thread tid: consecutive threads take consecutive chunks of a row, so global reads coalesce.
MG_HD int load_row(int tid, int i, int row_chunks) { return (tid + i * MG_THREADS) / row_chunks; }
MG_HD int load_chunk(int tid, int i, int row_chunks) { return (tid + i * MG_THREADS) % row_chunks; }

// ldmatrix.x4: lanes 8j..8j+7 address the rows of matrix j. Matrices 0-3 are (rows 0-7, chunk 0),
// (rows 8-15, chunk 0), (rows 0-7, chunk 1), (rows 8-15, chunk 1) of a 16 x 16 block: for A that is
// the m16n8k16 fragment order a0..a3; for B (.trans) it is b0, b1 of one n8 tile, then of the next.
MG_HD int lane_row(int lane) { return lane % 16; }
MG_HD int lane_chunk(int lane) { return lane / 16; }

MG_HD int warp_row0(int warp) { return (warp / MG_WARPS_N) * MG_WARP_ROWS; }
MG_HD int warp_col0(int warp) { return (warp % MG_WARPS_N) * MG_WARP_COLS; }

// Accumulator r (0..3) of mma tile (mi, ni): the PTX ISA's m16n8 .f32 C fragment, row = groupID
// (+8 for c2, c3), col = 2 * threadID_in_group + (0, 1), placed at the warp's offset in the block tile.
MG_HD int acc_row(int warp, int lane, int mi, int r) {
    return warp_row0(warp) + 16 * mi + lane / 4 + 8 * (r / 2);
}
MG_HD int acc_col(int warp, int lane, int ni, int r) {
    return warp_col0(warp) + 8 * ni + 2 * (lane % 4) + r % 2;
}
"""

KERNEL_CODE = r"""
typedef unsigned short elem_t;  // bf16 or fp16 bits; the mma and the epilogue's cvt give them meaning

__device__ __forceinline__ unsigned smem_addr(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared without passing through registers; src-size 0 reads nothing and writes zeros,
// which is how chunks outside the matrix become the zeros that add nothing to the dot products.
__device__ __forceinline__ void cp_async_16(unsigned dst, const void* src, bool inside) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(dst), "l"(__cvta_generic_to_global(src)), "r"(inside ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int PENDING> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" :: "n"(PENDING) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(unsigned (&d)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3]) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&d)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3]) : "r"(addr));
}

// One precision = the PTX type in the mma and in the fp32 -> 16-bit conversion of the epilogue.
// cvt packs its first source into the upper half, so `hi` goes first: the lower column lands at the
// lower address.
#define MG_PRECISION(NAME, PTX_TYPE)                                                                   \
struct NAME {                                                                                          \
    static __device__ __forceinline__ void mma(float (&c)[4], const unsigned (&a)[4],                  \
                                               const unsigned (&b)[2]) {                               \
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." PTX_TYPE "." PTX_TYPE ".f32 "             \
                     "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"             \
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                 \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));             \
    }                                                                                                  \
    static __device__ __forceinline__ unsigned pack(float lo, float hi) {                              \
        unsigned d;                                                                                    \
        asm("cvt.rn." PTX_TYPE "x2.f32 %0, %1, %2;\n" : "=r"(d) : "f"(hi), "f"(lo));                  \
        return d;                                                                                      \
    }                                                                                                  \
};
MG_PRECISION(Bf16, "bf16")
MG_PRECISION(Fp16, "f16")

// One tile of a row-major matrix g (rows x cols, leading dimension ld) from (row0, col0) into a stage.
template <int ROW_CHUNKS, int LOADS>
__device__ __forceinline__ void load_tile(uint4* stage, const elem_t* g, int ld, int rows, int cols,
                                          int row0, int col0, int tid) {
    #pragma unroll
    for (int i = 0; i < LOADS; ++i) {
        const int r = load_row(tid, i, ROW_CHUNKS), ch = load_chunk(tid, i, ROW_CHUNKS);
        const int gr = row0 + r, gc = col0 + 8 * ch;
        const bool inside = gr < rows && gc < cols;
        // outside, point at the matrix itself: nothing is read, but the address stays a valid one
        const elem_t* src = inside ? g + (long long)gr * ld + gc : g;
        cp_async_16(smem_addr(stage + smem_chunk(r, ch, ROW_CHUNKS)), src, inside);
    }
}

__device__ __forceinline__ void load_stage(uint4* a_stage, uint4* b_stage, const elem_t* a, const elem_t* b,
                                           int m, int n, int k, int row0, int col0, int k0, int tid) {
    load_tile<MG_A_ROW_CHUNKS, MG_A_LOADS>(a_stage, a, k, m, k, row0, k0, tid);
    load_tile<MG_B_ROW_CHUNKS, MG_B_LOADS>(b_stage, b, n, k, n, k0, col0, tid);
}

// All mmas of one stage for this warp: per k16 step, MG_MMA_M A fragments (one ldmatrix.x4 each) and
// MG_MMA_N B fragments (two per ldmatrix.x4.trans), then MG_MMA_M x MG_MMA_N mmas.
template <class P>
__device__ __forceinline__ void mma_stage(float (&acc)[MG_MMA_M][MG_MMA_N][4], const uint4* a_stage,
                                          const uint4* b_stage, int warp, int lane) {
    #pragma unroll
    for (int ks = 0; ks < MG_BK / 16; ++ks) {
        unsigned af[MG_MMA_M][4], bf[MG_MMA_N][2];
        #pragma unroll
        for (int mi = 0; mi < MG_MMA_M; ++mi) {
            const int row = warp_row0(warp) + 16 * mi + lane_row(lane), chunk = 2 * ks + lane_chunk(lane);
            ldmatrix_x4(af[mi], smem_addr(a_stage + smem_chunk(row, chunk, MG_A_ROW_CHUNKS)));
        }
        #pragma unroll
        for (int p = 0; p < MG_MMA_N / 2; ++p) {
            const int row = 16 * ks + lane_row(lane);
            const int chunk = (warp_col0(warp) + 16 * p) / 8 + lane_chunk(lane);
            unsigned d[4];
            ldmatrix_x4_trans(d, smem_addr(b_stage + smem_chunk(row, chunk, MG_B_ROW_CHUNKS)));
            bf[2 * p][0] = d[0];
            bf[2 * p][1] = d[1];
            bf[2 * p + 1][0] = d[2];
            bf[2 * p + 1][1] = d[3];
        }
        #pragma unroll
        for (int mi = 0; mi < MG_MMA_M; ++mi) {
            #pragma unroll
            for (int ni = 0; ni < MG_MMA_N; ++ni) P::mma(acc[mi][ni], af[mi], bf[ni]);
        }
    }
}

template <class P>
__device__ __forceinline__ void gemm(const elem_t* __restrict__ a, const elem_t* __restrict__ b,
                                     elem_t* __restrict__ c, int m, int n, int k) {
    __shared__ __align__(128) uint4 a_tiles[MG_STAGES][MG_BM * MG_A_ROW_CHUNKS];
    __shared__ __align__(128) uint4 b_tiles[MG_STAGES][MG_BK * MG_B_ROW_CHUNKS];
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int tiles_m = (m + MG_BM - 1) / MG_BM, tiles_n = (n + MG_BN - 1) / MG_BN;
    int tile_row, tile_col;
    grouped_tile(blockIdx.x, tiles_m, tiles_n, MG_GROUP_M, tile_row, tile_col);
    const int row0 = tile_row * MG_BM, col0 = tile_col * MG_BN;
    const int k_tiles = (k + MG_BK - 1) / MG_BK;
    float acc[MG_MMA_M][MG_MMA_N][4] = {};

    // Prologue: tiles 0 .. STAGES-2 in flight, one commit group each (empty past the end of K, so that
    // group t always holds tile t and the wait below can count).
    #pragma unroll
    for (int s = 0; s < MG_STAGES - 1; ++s) {
        if (s < k_tiles) load_stage(a_tiles[s], b_tiles[s], a, b, m, n, k, row0, col0, s * MG_BK, tid);
        cp_async_commit();
    }
    for (int kt = 0; kt < k_tiles; ++kt) {
        // STAGES-1+kt groups committed; leaving STAGES-2 pending means groups 0..kt, tile kt, have landed
        cp_async_wait<MG_STAGES - 2>();
        // ... for every thread's copies, and every warp is done with the stage computed at kt-1,
        // which is the one refilled next
        __syncthreads();
        const int next = kt + MG_STAGES - 1;
        if (next < k_tiles) {
            load_stage(a_tiles[next % MG_STAGES], b_tiles[next % MG_STAGES], a, b, m, n, k, row0, col0,
                       next * MG_BK, tid);
        }
        cp_async_commit();
        mma_stage<P>(acc, a_tiles[kt % MG_STAGES], b_tiles[kt % MG_STAGES], warp, lane);
    }

    // Epilogue: registers straight to global, two adjacent columns (4 bytes) per store. N % 8 == 0 and
    // even columns mean a pair is wholly inside or outside C.
    #pragma unroll
    for (int mi = 0; mi < MG_MMA_M; ++mi) {
        #pragma unroll
        for (int ni = 0; ni < MG_MMA_N; ++ni) {
            #pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = row0 + acc_row(warp, lane, mi, 2 * h);
                const int col = col0 + acc_col(warp, lane, ni, 2 * h);
                if (row < m && col < n) {
                    *reinterpret_cast<unsigned*>(c + (long long)row * n + col) =
                        P::pack(acc[mi][ni][2 * h], acc[mi][ni][2 * h + 1]);
                }
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(MG_THREADS, MG_MIN_BLOCKS)
mma_gemm_bf16(const elem_t* a, const elem_t* b, elem_t* c, int m, int n, int k) {
    gemm<Bf16>(a, b, c, m, n, k);
}

extern "C" __global__ void __launch_bounds__(MG_THREADS, MG_MIN_BLOCKS)
mma_gemm_fp16(const elem_t* a, const elem_t* b, elem_t* c, int m, int n, int k) {
    gemm<Fp16>(a, b, c, m, n, k);
}
"""

def build(tile: Tile) -> CudaSource:
    """The kernels with `tile` compiled in."""
    kernels = tuple(f"mma_gemm_{p}" for p in PRECISIONS)
    return CudaSource(tile.defines() + tile_order.CODE + LAYOUT_CODE + KERNEL_CODE, kernels=kernels,
                      min_compute_capability=(8, 0),  # mma.sync bf16, cp.async
                      variant=f"warps {tile.warp_rows}x{tile.warp_cols}")


TILE = Tile()
SOURCE = build(TILE)
# The same block tile split into 4 warps of 64 x 64 (CUTLASS's usual Ampere warp tile): twice the mmas per
# ldmatrix and 128 accumulators per thread (240 registers, two blocks per SM) against TILE's 16 warps per
# SM. Measured beside TILE, because which one an H100 prefers is a question for the GPU, not the page.
WIDE_TILE = Tile(warps_m=2, warps_n=2)
WARP_TILES = {"64x32": (TILE, SOURCE), "64x64": (WIDE_TILE, build(WIDE_TILE))}


# NumPy model of LAYOUT_CODE, function for function (integer arrays in, integer arrays out; all indices
# are non-negative, where Python's // and % agree with C++'s / and %). The tests check its properties and
# compare it with the C++ compiled on the host.

def smem_chunk(row: Any, chunk: Any, row_chunks: int) -> Any:
    rows_per_line = 1 if row_chunks >= BANK_GROUPS else BANK_GROUPS // row_chunks
    span = min(row_chunks, BANK_GROUPS)
    return row * row_chunks + (chunk ^ ((row // rows_per_line) % span))


def load_row(tile: Tile, tid: Any, i: Any, row_chunks: int) -> Any:
    return (tid + i * tile.threads) // row_chunks


def load_chunk(tile: Tile, tid: Any, i: Any, row_chunks: int) -> Any:
    return (tid + i * tile.threads) % row_chunks


def lane_row(lane: Any) -> Any:
    return lane % 16


def lane_chunk(lane: Any) -> Any:
    return lane // 16


def warp_row0(tile: Tile, warp: Any) -> Any:
    return (warp // tile.warps_n) * tile.warp_rows


def warp_col0(tile: Tile, warp: Any) -> Any:
    return (warp % tile.warps_n) * tile.warp_cols


def acc_row(tile: Tile, warp: Any, lane: Any, mi: Any, r: Any) -> Any:
    return warp_row0(tile, warp) + 16 * mi + lane // 4 + 8 * (r // 2)


def acc_col(tile: Tile, warp: Any, lane: Any, ni: Any, r: Any) -> Any:
    return warp_col0(tile, warp) + 8 * ni + 2 * (lane % 4) + r % 2


def grid(tile: Tile, m: int, n: int) -> int:
    """Blocks to launch: one per tile of C, in tile_order's grouped order."""
    return tile_order.cdiv(m, tile.bm) * tile_order.cdiv(n, tile.bn)


class MmaGemm(DenseGemm):
    """C = A @ B on the tensor cores through this module's mma.sync kernel, bf16 or fp16, with the warp
    tile `warp_tile` (a key of WARP_TILES; the default's rows keep the plain label)."""

    name = "gemm_mma_sync"
    precisions = tuple(PRECISIONS)
    min_compute_capability = SOURCE.min_compute_capability

    def __init__(self, m: int, n: int, k: int, precision: str = "bf16", l2_bytes: int | None = None,
                 warp_tile: str = "64x32") -> None:
        super().__init__(m, n, k, precision, l2_bytes)
        if n % CHUNK_ELEMS or k % CHUNK_ELEMS:
            raise ValueError(f"mma.sync GEMM needs N and K multiples of 8 (16-byte rows), got N={n} K={k}")
        if warp_tile not in WARP_TILES:
            raise ValueError(f"warp tile must be one of {sorted(WARP_TILES)}, got {warp_tile!r}")
        self.tile, self.source = WARP_TILES[warp_tile]
        self.kind = "mma.sync" if self.tile is TILE else f"mma.sync warps {warp_tile}"

    def launch(self, stream: Any) -> None:
        m, n, k = self.params.values()
        args = (self.buf["a"], self.next_weights(), self.buf["c"], np.int32(m), np.int32(n), np.int32(k))
        kernel = self.source.function(f"mma_gemm_{self.precision}")
        kernel((grid(self.tile, m, n),), (self.tile.threads,), args, stream=stream)


def selftest_cases() -> list[MmaGemm]:
    """Ragged tiles in M, N and K, and a batch-1 row, in both precisions; the wide warp tile on the
    smaller two (it shares all code but the constants)."""
    shapes = ((67, 40, 136), (300, 264, 520), (1, 256, 384))
    return [*(MmaGemm(*shape, precision) for precision in PRECISIONS for shape in shapes),
            *(MmaGemm(*shape, precision, warp_tile="64x64") for precision in PRECISIONS
              for shape in (shapes[0], shapes[2]))]
