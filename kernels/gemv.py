"""GEMV for batch-1 decoding: y = W x, W [rows x cols] bf16 row-major, x [cols] bf16, y [rows] fp32.

This is what a decoder does per layer for one token: rows are output features, cols input features.
bf16 is stored as uint16 bit patterns (as in cublas_gemm); products are accumulated in fp32 and y is
written in fp32. One warp per row with 16-byte loads of W (8 bf16 each); x is staged once per block
in shared memory; the warp's lanes are summed with shuffles. A scalar loop takes the last cols % 8
elements, so any cols works: rows are padded to a multiple of 8 elements so each starts 16-byte
aligned, and the padding (bf16 NaN, so a read of it shows) is never read.

Model FLOPs 2*rows*cols; minimum bytes 2*rows*cols (W) + 2*cols (x) + 4*rows (y). That is about
1 FLOP per byte, so the work is memory-bound by nature: at full bandwidth an H100 SXM (3.35 TB/s)
reaches ~3.4 TFLOP/s, under 1% of its bf16 tensor peak (~0.3%) and ~5% of its fp32 peak, which the
row reports beside it because the math runs as fp32 FMAs on the CUDA cores. Read such a row by its
MBU, not its MFU.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mfugap.cuda_source import CudaSource
from mfugap.verify import BF16_NAN, TOLERANCE, check_close, from_bf16_bits, sample_indices, to_bf16_bits
from mfugap.workload import Check, Workload, rotation_copies

SOURCE = CudaSource(r"""
// bf16 -> fp32 is exact: the bf16 bits are the top half of the fp32 word.
__device__ __forceinline__ float low_bf16(unsigned int v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float high_bf16(unsigned int v) { return __uint_as_float(v & 0xffff0000u); }

// Elements in memory order: the lower-addressed bf16 of each 32-bit word is its low half.
__device__ __forceinline__ float dot2(unsigned int w, unsigned int x, float acc) {
    return fmaf(high_bf16(w), high_bf16(x), fmaf(low_bf16(w), low_bf16(x), acc));
}

__device__ __forceinline__ float dot8(uint4 w, uint4 x, float acc) {
    return dot2(w.w, x.w, dot2(w.z, x.z, dot2(w.y, x.y, dot2(w.x, x.x, acc))));
}

constexpr int UNROLL = 4;  // 16-byte loads of W each lane keeps in flight, to cover DRAM latency

// One warp per row; blockDim.x / 32 rows per block. W rows start every ld elements (ld % 8 == 0);
// dynamic shared memory holds x: 16 * ceil(cols / 8) bytes.
extern "C" __global__ void gemv_bf16(const unsigned short* __restrict__ w,
                                     const unsigned short* __restrict__ x, float* __restrict__ y,
                                     int rows, int cols, long long ld) {
    extern __shared__ uint4 xs[];
    unsigned short* xs16 = reinterpret_cast<unsigned short*>(xs);
    const int chunks = cols / 8;  // full 8-element (16-byte) chunks per row
    const uint4* x4 = reinterpret_cast<const uint4*>(x);
    for (int i = threadIdx.x; i < chunks; i += blockDim.x) xs[i] = __ldg(x4 + i);
    for (int i = 8 * chunks + threadIdx.x; i < cols; i += blockDim.x) xs16[i] = __ldg(x + i);
    __syncthreads();

    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;  // no barrier follows
    const unsigned short* wr = w + row * ld;
    const uint4* w4 = reinterpret_cast<const uint4*>(wr);
    float acc = 0.0f;
    int i = lane;
    for (; i + 32 * (UNROLL - 1) < chunks; i += 32 * UNROLL) {
        uint4 v[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) v[u] = __ldg(w4 + i + 32 * u);  // all loads issued first
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) acc = dot8(v[u], xs[i + 32 * u], acc);
    }
    for (; i < chunks; i += 32) acc = dot8(__ldg(w4 + i), xs[i], acc);
    for (int c = 8 * chunks + lane; c < cols; c += 32) {
        acc = fmaf(low_bf16(__ldg(wr + c)), low_bf16(xs16[c]), acc);
    }
    for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
    if (lane == 0) y[row] = acc;
}
""", kernels=("gemv_bf16",))

# (rows, cols) of Llama-3-8B-sized layers: attention projection 4096 -> 4096, MLP down 14336 -> 4096
# (4096 rows of 14336), MLP up/gate 4096 -> 14336 (14336 rows of 4096).
SHAPES = ((4096, 4096), (4096, 14336), (14336, 4096))
THREADS = 256  # 8 warps, 8 rows per block
ROWS_PER_BLOCK = THREADS // 32
VECTOR = 8  # bf16 elements per 16-byte load
MAX_COLS = 24576  # x in shared memory within the 48 KiB a block gets without an opt-in attribute
CHECK_ROWS = 256


def flops(rows: int, cols: int) -> int:
    return 2 * rows * cols


def min_bytes(rows: int, cols: int) -> int:
    """W and x read once (bf16), y written once (fp32)."""
    return 2 * rows * cols + 2 * cols + 4 * rows


def padded_cols(cols: int) -> int:
    """Row pitch in elements: cols rounded up to whole 16-byte loads."""
    return -(-cols // VECTOR) * VECTOR


def shared_bytes(cols: int) -> int:
    return 2 * padded_cols(cols)


def blocks(rows: int) -> int:
    return -(-rows // ROWS_PER_BLOCK)


def weight_copies(rows: int, cols: int, l2_bytes: int | None) -> int:
    """Copies of W to rotate through so that consecutive launches never find W in L2."""
    return rotation_copies(2 * rows * padded_cols(cols), l2_bytes)


def reference(w_bits: np.ndarray, x_bits: np.ndarray) -> np.ndarray:
    """y = W x in float64 from bf16 bit patterns (W [rows, cols], x [cols])."""
    return from_bf16_bits(w_bits).astype(np.float64) @ from_bf16_bits(x_bits).astype(np.float64)


class Gemv(Workload):
    """y = W x for one bf16 weight matrix and one bf16 vector, fp32 accumulation and output."""

    name = "gemv_bf16"
    precision = "bf16"
    alt_precisions = ("fp32",)  # the math runs as fp32 FMAs on the CUDA cores, not on tensor cores

    def __init__(self, rows: int, cols: int, l2_bytes: int | None = None) -> None:
        if rows < 1 or not 1 <= cols <= MAX_COLS:
            raise ValueError(f"GEMV needs rows >= 1 and 1 <= cols <= {MAX_COLS}, got {rows}x{cols}")
        self.params = {"rows": rows, "cols": cols}
        self.ld = padded_cols(cols)
        self.copies = weight_copies(rows, cols, l2_bytes)
        self.launches = 0
        self.buf = {}

    def flops(self) -> int:
        return flops(**self.params)

    def min_bytes(self) -> int:
        return min_bytes(**self.params)

    def footprint_bytes(self) -> int:
        rows, cols = self.params["rows"], self.params["cols"]
        return 2 * self.copies * rows * self.ld + 2 * cols + 4 * rows

    def setup(self, stream: Any) -> None:
        import cupy

        rows, cols = self.params["rows"], self.params["cols"]
        w = to_bf16_bits(cupy.random.random((rows, cols), dtype=cupy.float32) * 2 - 1, cupy)
        weights = cupy.full((self.copies, rows, self.ld), BF16_NAN, dtype=cupy.uint16)
        weights[:, :, :cols] = w  # every copy holds the same W, so each launch checks against it
        self.buf["w"] = weights
        self.buf["x"] = to_bf16_bits(cupy.random.random(cols, dtype=cupy.float32) * 2 - 1, cupy)
        self.buf["y"] = cupy.empty(rows, dtype=cupy.float32)

    def poison(self) -> None:
        self.buf["y"].fill(np.nan)

    def launch(self, stream: Any) -> None:
        import cupy

        rows, cols = self.params["rows"], self.params["cols"]
        w = self.buf["w"][self.launches % self.copies]
        self.launches += 1
        SOURCE.function("gemv_bf16")((blocks(rows),), (THREADS,),
                                     (w, self.buf["x"], self.buf["y"], cupy.int32(rows), cupy.int32(cols),
                                      cupy.int64(self.ld)),
                                     shared_mem=shared_bytes(cols), stream=stream)

    def check(self) -> Check:
        import cupy

        y = self.buf["y"]
        bad = int(cupy.isnan(y).sum())
        if bad:
            return Check(ok=False, detail=f"{bad} of {y.size} GEMV outputs NaN: unwritten, or padding read")
        rows, cols = self.params["rows"], self.params["cols"]
        picked = cupy.asarray(sample_indices(rows, CHECK_ROWS, seed=rows, tail=1))
        expected = reference(self.buf["w"][0, picked, :cols].get(), self.buf["x"].get())
        # The kernel's fp32 summation order, emulated in NumPy, errs ~1.5e-7 norm-wise at cols = 14336:
        # the fp32 tolerance leaves a wide margin, yet one wrong element of a row exceeds it.
        return check_close(y[picked].get(), expected, TOLERANCE["fp32"],
                           f"{CHECK_ROWS} random rows and the last vs float64 NumPy on the same bf16 inputs")


def selftest_cases() -> list[Workload]:
    """Odd shapes (cols % 8 != 0: padded rows and the scalar remainder), a single element, and rows not
    filling the last block."""
    return [Gemv(1, 1), Gemv(67, 1003), Gemv(9, 4101), Gemv(4096, 4096)]
