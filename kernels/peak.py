"""The top of the roofline: register-resident math loops with no memory traffic inside the loop.

FMA chains (fp32 `fmaf`, fp64 `fma`, fp16x2 `__hfma2`). Each thread runs OSCILLATORS independent Minsky
oscillators (HAKMEM item 149), two dependent FMAs per step:
    x <- x - e*y;  y <- y + e*x        with e = 2^-4
The orbit is a closed ellipse, so the values neither overflow nor settle on a constant however many steps
run: the result depends on every step and nothing can be folded. Because e is a power of two every product
is exact, so each FMA is one rounding of an exact sum, which NumPy reproduces bit for bit (fp32 and fp64
in their own dtype; fp16 in float64, where the sum of two fp16 values is exact, rounded to fp16 after each
operation): the check is exact. Starting values differ per lane and per oscillator and are exact in fp16,
and stay far from subnormals (CuPy compiles with -ftz=true). The multiplier's plain mantissa does not change
the issue rate but lowers power draw: read the recorded SM clock beside the result.

Tensor cores (`mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`, inline PTX). Each warp holds one A
(16x16) and one B (16x8) fragment of bf16 values in {1, 1.25, 1.5, 1.75} and MMA_SETS independent fp32
accumulators. Every mma adds the same A @ B, multiples of 1/16 below 16 x 1.75^2 = 49, so while the
accumulators stay under 2^20 every partial sum is exact in fp32 and the result is known in closed form.

Per-SM rates that bound them (FLOP per clock per SM, an FMA counting 2; hardware-reference.md section 2):
fp32 FFMA 256 on Hopper (128 on GA100); fp64 DFMA 128 (64): the vector FP64 peak, catalog "fp64", not
"fp64_tc"; bf16 mma 4096 (2048): the dense bf16 tensor peak. HFMA2 (4 FLOP per instruction) is assumed
to run at 512 on Hopper and GA100, from NVIDIA's non-tensor FP16 figures: H100 SXM 133.8 TFLOP/s =
132 x 512 x 1.98 GHz, 2x its fp32; A100 78 = 108 x 512 x 1.41 GHz, 4x its fp32. (ptxas issues part of
them as HFMA2.MMA, which runs on the MMA pipe, so the row's GPM tensor activity may read above 0; the GPU
run shows which rate the mix reaches.) The catalog has no non-tensor fp16 peak,
and MFU's denominator is the dense peak of the math done, for fp16 the tensor figure a model would use:
so the HFMA2 row is precision "fp16" and reads at most 512/4096 = 12.5% MFU at equal clocks (~13.5%
against H100's datasheet, whose tensor figures assume 1830 MHz), which is the lesson: fp16 math off the
tensor cores cannot do better. `alt_precisions = ("fp32",)` adds MFU against the FP32 vector peak, where
a full-rate loop reads ~200% on Hopper (~400% on A100): the FMA pipe's fp16 rate relative to fp32.
On Hopper mma.sync reaches the tensor cores only through the pre-wgmma path, which published
microbenchmarks (arXiv 2402.13499) find well short of the peak; only wgmma (sm_90a) gets the full rate.
"""
from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mfugap.cuda_source import CudaSource
from mfugap.verify import check_close
from mfugap.workload import Check, Workload

THREADS = 256
BLOCKS_PER_SM = 4  # 1024 threads per SM: 8 warps per sub-partition; launch bounds hold registers to 64
WARP = 32
OSCILLATORS = 8  # independent FMA chains per thread: with 8 warps per sub-partition, far over the latency
UNROLL = 32  # Minsky steps per trip of the outer loop: 512 FMAs to 3 loop instructions
MMA_SETS = 8  # independent accumulator sets per warp, sharing the A and B fragments
MMA_UNROLL = 4  # mma steps per trip of the outer loop
MMA_FLOPS = 2 * 16 * 8 * 16  # one m16n8k16 per warp
EXACT = 0.0  # the host reproduces every rounding, so any difference is an error
E = 2.0**-4  # the Minsky step; a power of two keeps every product exact
MAX_FMA_STEPS = 1 << 16  # tests run the host simulation this far and find every orbit bounded
MMA_ACC_LIMIT = 2.0**20  # below this, multiples of 1/16 fit fp32's 24-bit significand exactly

_CONSTANTS = f"""
#define THREADS {THREADS}
#define BLOCKS_PER_SM {BLOCKS_PER_SM}
#define OSCILLATORS {OSCILLATORS}
#define UNROLL {UNROLL}
#define MMA_SETS {MMA_SETS}
#define MMA_UNROLL {MMA_UNROLL}
"""

# The FMA loops build for every GPU in the catalog; the mma loop needs sm_80, so it has a source of its own
# and an older GPU still measures its FMA peaks.
FMA_SOURCE = CudaSource(_CONSTANTS + r"""
#include <cuda_fp16.h>

__device__ __forceinline__ float fma_(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fma_(double a, double b, double c) { return fma(a, b, c); }
__device__ __forceinline__ __half2 fma_(__half2 a, __half2 b, __half2 c) { return __hfma2(a, b, c); }

// One register's worth of values: fp16x2 packs two oscillators (lo, hi), the others take lo only.
template <typename T> __device__ __forceinline__ T pack(float lo, float hi);
template <> __device__ __forceinline__ float pack<float>(float lo, float) { return lo; }
template <> __device__ __forceinline__ double pack<double>(float lo, float) { return lo; }
template <> __device__ __forceinline__ __half2 pack<__half2>(float lo, float hi) {
    return __floats2half2_rn(lo, hi);
}

// Start of scalar oscillator k < 512: x = 1 + k/512, y = 1 - k/1024, exact in fp16. Products only, so the
// compiler has no add to contract into an FMA outside the loop.
__device__ __forceinline__ float start_x(int k) { return (512 + k) * (1.0f / 512); }
__device__ __forceinline__ float start_y(int k) { return (1024 - k) * (1.0f / 1024); }

template <typename T, int LANES>
__device__ __forceinline__ void minsky(T* out, float e, int trips) {
    const int lane = threadIdx.x & 31;
    T x[OSCILLATORS], y[OSCILLATORS];
#pragma unroll
    for (int i = 0; i < OSCILLATORS; ++i) {
        const int k = (lane * OSCILLATORS + i) * LANES;
        x[i] = pack<T>(start_x(k), start_x(k + LANES - 1));
        y[i] = pack<T>(start_y(k), start_y(k + LANES - 1));
    }
    const T pe = pack<T>(e, e), ne = pack<T>(-e, -e);
#pragma unroll 1
    for (int t = 0; t < trips; ++t) {
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
#pragma unroll
            for (int i = 0; i < OSCILLATORS; ++i) {
                x[i] = fma_(ne, y[i], x[i]);
                y[i] = fma_(pe, x[i], y[i]);
            }
        }
    }
    T acc = x[0] + y[0];  // combined in this order; the host sums the same way
#pragma unroll
    for (int i = 1; i < OSCILLATORS; ++i) {
        acc = acc + x[i];
        acc = acc + y[i];
    }
    out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

extern "C" __global__ void __launch_bounds__(THREADS, BLOCKS_PER_SM)
peak_fma_f32(float* out, float e, int trips) { minsky<float, 1>(out, e, trips); }

extern "C" __global__ void __launch_bounds__(THREADS, BLOCKS_PER_SM)
peak_fma_f64(double* out, float e, int trips) { minsky<double, 1>(out, e, trips); }

extern "C" __global__ void __launch_bounds__(THREADS, BLOCKS_PER_SM)
peak_fma_f16x2(__half2* out, float e, int trips) { minsky<__half2, 2>(out, e, trips); }
""", kernels=("peak_fma_f32", "peak_fma_f64", "peak_fma_f16x2"))

MMA_SOURCE = CudaSource(_CONSTANTS + r"""
// bf16 value number `slot` of this lane (A: 0..7, B: 8..11): 1 + j/4, bits 0x3F80 + 0x20*j, j mixing lane
// bits so that A @ B differs from element to element and no two fragment registers are equal.
__device__ __forceinline__ unsigned bf16_operand(int lane, int slot) {
    return 0x3F80u + 0x20u * (((lane >> (slot % 5)) ^ slot) & 3);
}

// Elements slot (low half) and slot + 1 (high half) in one 32-bit register, as mma expects them.
__device__ __forceinline__ unsigned bf16_pair(int lane, int slot) {
    return bf16_operand(lane, slot) | (bf16_operand(lane, slot + 1) << 16);
}

extern "C" __global__ void __launch_bounds__(THREADS, BLOCKS_PER_SM)
peak_mma_bf16(float4* out, int trips) {
    const int lane = threadIdx.x & 31;
    const unsigned a0 = bf16_pair(lane, 0), a1 = bf16_pair(lane, 2);
    const unsigned a2 = bf16_pair(lane, 4), a3 = bf16_pair(lane, 6);
    const unsigned b0 = bf16_pair(lane, 8), b1 = bf16_pair(lane, 10);
    float c[MMA_SETS][4];
#pragma unroll
    for (int s = 0; s < MMA_SETS; ++s) {
#pragma unroll
        for (int i = 0; i < 4; ++i) c[s][i] = 4 * s + i;
    }
#pragma unroll 1
    for (int t = 0; t < trips; ++t) {
#pragma unroll
        for (int u = 0; u < MMA_UNROLL; ++u) {
#pragma unroll
            for (int s = 0; s < MMA_SETS; ++s) {
                asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                             "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                             : "+f"(c[s][0]), "+f"(c[s][1]), "+f"(c[s][2]), "+f"(c[s][3])
                             : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
            }
        }
    }
    float4 acc = make_float4(c[0][0], c[0][1], c[0][2], c[0][3]);  // summed set by set, as on the host
#pragma unroll
    for (int s = 1; s < MMA_SETS; ++s) {
        acc.x += c[s][0];
        acc.y += c[s][1];
        acc.z += c[s][2];
        acc.w += c[s][3];
    }
    out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}
""", kernels=("peak_mma_bf16",), min_compute_capability=(8, 0))


@dataclass(frozen=True)
class FmaFormat:
    """One FMA chain kernel: its NumPy value type and how many values one register instruction carries."""

    kernel: str
    dtype: type
    lanes: int  # 2 for fp16x2: one HFMA2 is two FMAs

    @property
    def flops_per_fma(self) -> int:
        return 2 * self.lanes

    @property
    def out_bytes(self) -> int:
        """Bytes each thread writes: one combined register."""
        return np.dtype(self.dtype).itemsize * self.lanes


FMA_FORMATS = {
    "fp32": FmaFormat("peak_fma_f32", np.float32, 1),
    "fp64": FmaFormat("peak_fma_f64", np.float64, 1),
    "fp16": FmaFormat("peak_fma_f16x2", np.float16, 2),
}


def blocks(sm_count: int) -> int:
    """Enough resident blocks to fill every SM at once, so no SM idles through a tail."""
    return sm_count * BLOCKS_PER_SM


def fma_flops(n_blocks: int, steps: int, precision: str) -> int:
    """threads x steps x (2 FMAs per oscillator step x OSCILLATORS) x FLOPs per FMA instruction."""
    return n_blocks * THREADS * steps * 2 * OSCILLATORS * FMA_FORMATS[precision].flops_per_fma


def fma_min_bytes(n_blocks: int, precision: str) -> int:
    """Each thread writes its combined register once; nothing is read."""
    return n_blocks * THREADS * FMA_FORMATS[precision].out_bytes


def mma_flops(n_blocks: int, steps: int) -> int:
    """warps x steps x MMA_SETS x 2*16*8*16."""
    return n_blocks * (THREADS // WARP) * steps * MMA_SETS * MMA_FLOPS


def mma_min_bytes(n_blocks: int) -> int:
    """Each thread writes its four combined accumulators (a float4) once; nothing is read."""
    return n_blocks * THREADS * 4 * 4


def minsky_starts(lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """Start (x, y) of every oscillator, shape (WARP, OSCILLATORS, lanes), as the kernel sets them."""
    k = np.arange(WARP * OSCILLATORS * lanes, dtype=np.float64).reshape(WARP, OSCILLATORS, lanes)
    return (512 + k) / 512, (1024 - k) / 1024


def _rounder(dtype: type) -> Callable[[Any], np.ndarray]:
    """Round a working value to `dtype` and back to the working type (float64 for fp16, else dtype)."""
    work = np.float64 if dtype is np.float16 else dtype
    return lambda v: np.asarray(v).astype(dtype).astype(work)


def minsky_run(x: np.ndarray, y: np.ndarray, steps: int, dtype: type,
               e: float = E) -> tuple[np.ndarray, np.ndarray]:
    """`steps` Minsky steps, each FMA rounded once to `dtype` as the GPU rounds it (e a power of two)."""
    rnd = _rounder(dtype)
    x, y = rnd(x), rnd(y)
    pe, ne = rnd(e), rnd(-e)
    for _ in range(steps):
        x = rnd(x + ne * y)
        y = rnd(y + pe * x)
    return x, y


def minsky_combine(x: np.ndarray, y: np.ndarray, dtype: type) -> np.ndarray:
    """x0 + y0 + x1 + y1 + ... over the oscillator axis, left to right, rounded like the kernel's adds."""
    rnd = _rounder(dtype)
    acc = rnd(x[:, 0] + y[:, 0])
    for i in range(1, x.shape[1]):
        acc = rnd(acc + x[:, i])
        acc = rnd(acc + y[:, i])
    return acc.astype(dtype)


def fma_reference(precision: str, steps: int) -> np.ndarray:
    """Exact output of lane 0..31 of every warp, shape (WARP, lanes)."""
    fmt = FMA_FORMATS[precision]
    x, y = minsky_run(*minsky_starts(fmt.lanes), steps, fmt.dtype)
    return minsky_combine(x, y, fmt.dtype)


# Fragment layouts of mma.m16n8k16 with 16-bit inputs (PTX ISA "Matrix Fragments for mma.m16n8k16";
# CUTLASS SM80_16x8x16 traits): lane = 4*group + quad; registers hold consecutive slots, low half first.
def a_coord(lane: int, slot: int) -> tuple[int, int]:
    """(row, col) of A element `slot` (0..7) held by `lane`."""
    group, quad = divmod(lane, 4)
    return group + 8 * ((slot >> 1) & 1), 2 * quad + (slot & 1) + 8 * (slot >> 2)


def b_coord(lane: int, slot: int) -> tuple[int, int]:
    """(row, col) of B element `slot` (0..3) held by `lane`."""
    group, quad = divmod(lane, 4)
    return 2 * quad + (slot & 1) + 8 * (slot >> 1), group


def c_coord(lane: int, slot: int) -> tuple[int, int]:
    """(row, col) of accumulator element `slot` (0..3) held by `lane`."""
    group, quad = divmod(lane, 4)
    return group + 8 * (slot >> 1), 2 * quad + (slot & 1)


def bf16_operand(lane: int, slot: int) -> float:
    """The kernel's bf16 value number `slot` (A: 0..7, B: 8..11) of `lane`, as bf16_operand computes it."""
    return 1 + (((lane >> (slot % 5)) ^ slot) & 3) / 4


def mma_operands() -> tuple[np.ndarray, np.ndarray]:
    """The A (16x16) and B (16x8) matrices the warp's fragments spell out."""
    a, b = np.full((16, 16), np.nan), np.full((16, 8), np.nan)
    for lane in range(WARP):
        for slot in range(8):
            a[a_coord(lane, slot)] = bf16_operand(lane, slot)
        for slot in range(4):
            b[b_coord(lane, slot)] = bf16_operand(lane, 8 + slot)
    return a, b


def mma_starts() -> np.ndarray:
    """Start of every accumulator, shape (MMA_SETS, 4): set s, element i starts at 4*s + i."""
    return np.arange(MMA_SETS * 4, dtype=np.float64).reshape(MMA_SETS, 4)


def mma_reference(steps: int) -> np.ndarray:
    """Exact output of lane 0..31 of every warp, shape (WARP, 4): accumulators summed set by set in fp32."""
    a, b = mma_operands()
    d = a @ b
    per_lane = np.array([[d[c_coord(lane, slot)] for slot in range(4)] for lane in range(WARP)])
    sets = (mma_starts()[:, None, :] + steps * per_lane[None]).astype(np.float32)  # exact: checked bound
    acc = sets[0]
    for s in range(1, MMA_SETS):
        acc = acc + sets[s]  # float32 + float32: one IEEE rounding, as the kernel's fadd
    return acc


def max_mma_steps() -> int:
    """Most steps (a multiple of MMA_UNROLL) with start + steps * max(A @ B) < MMA_ACC_LIMIT: all exact."""
    a, b = mma_operands()
    steps = math.ceil((MMA_ACC_LIMIT - mma_starts().max()) / (a @ b).max()) - 1
    return steps - steps % MMA_UNROLL


class _RegisterLoop(Workload):
    """A full-GPU grid of a register-only loop: `steps` per thread, one combined write per thread."""

    def __init__(self, sm_count: int, steps: int, unroll: int, max_steps: int) -> None:
        if sm_count is None or sm_count < 1:  # None: discovery could not read the SM count
            raise ValueError(f"{self.name} needs sm_count >= 1, got {sm_count}")
        if steps < unroll or steps % unroll or steps > max_steps:
            raise ValueError(f"{self.name} steps must be a multiple of {unroll} in [{unroll}, {max_steps}], "
                             f"got {steps}")
        self.params = {"blocks": blocks(sm_count), "steps": steps}
        self.trips = steps // unroll
        self.buf = {}

    def footprint_bytes(self) -> int:
        return self.min_bytes()

    def poison(self) -> None:
        self.buf["out"].fill(np.nan)

    @abstractmethod
    def _expected(self) -> np.ndarray:
        """What each lane of every warp writes, shape (WARP, values per thread)."""

    def check(self) -> Check:
        out = self.buf["out"].get()
        by_lane = out.reshape(-1, WARP, out.shape[-1])
        ref = np.broadcast_to(self._expected(), by_lane.shape)
        return check_close(by_lane, ref, EXACT, f"{by_lane.shape[0]} warps vs the exact host reference")


class FmaPeak(_RegisterLoop):
    """OSCILLATORS Minsky FMA chains per thread in fp32, fp64 or fp16x2 (precision "fp16")."""

    def __init__(self, precision: str, sm_count: int, steps: int = 1 << 15) -> None:
        if precision not in FMA_FORMATS:
            raise ValueError(f"peak FMA precision must be one of {sorted(FMA_FORMATS)}, got {precision!r}")
        self.precision = precision
        self.format = FMA_FORMATS[precision]
        self.name = self.format.kernel
        # fp16x2 is bounded by the FMA pipe (2x fp32 on Hopper), not by the fp16 tensor peak: show both
        self.alt_precisions = ("fp32",) if precision == "fp16" else ()
        super().__init__(sm_count, steps, UNROLL, MAX_FMA_STEPS)

    def flops(self) -> int:
        return fma_flops(self.params["blocks"], self.params["steps"], self.precision)

    def min_bytes(self) -> int:
        return fma_min_bytes(self.params["blocks"], self.precision)

    def setup(self, stream: Any) -> None:
        import cupy

        self.buf["out"] = cupy.empty((self.params["blocks"] * THREADS, self.format.lanes),
                                     dtype=self.format.dtype)

    def launch(self, stream: Any) -> None:
        import cupy

        FMA_SOURCE.function(self.format.kernel)((self.params["blocks"],), (THREADS,),
                                                (self.buf["out"], cupy.float32(E), cupy.int32(self.trips)),
                                                stream=stream)

    def _expected(self) -> np.ndarray:
        return fma_reference(self.precision, self.params["steps"])


class MmaPeak(_RegisterLoop):
    """MMA_SETS chains of bf16 mma.sync m16n8k16 with fp32 accumulation per warp."""

    name = "peak_mma_bf16"
    precision = "bf16"
    min_compute_capability = MMA_SOURCE.min_compute_capability

    def __init__(self, sm_count: int, steps: int = 1 << 13) -> None:
        super().__init__(sm_count, steps, MMA_UNROLL, max_mma_steps())

    def flops(self) -> int:
        return mma_flops(self.params["blocks"], self.params["steps"])

    def min_bytes(self) -> int:
        return mma_min_bytes(self.params["blocks"])

    def setup(self, stream: Any) -> None:
        import cupy

        self.buf["out"] = cupy.empty((self.params["blocks"] * THREADS, 4), dtype=cupy.float32)

    def launch(self, stream: Any) -> None:
        import cupy

        MMA_SOURCE.function("peak_mma_bf16")((self.params["blocks"],), (THREADS,),
                                             (self.buf["out"], cupy.int32(self.trips)), stream=stream)

    def _expected(self) -> np.ndarray:
        return mma_reference(self.params["steps"])


def selftest_cases() -> list[Workload]:
    """A few loop trips of every peak kernel on a two-SM grid: the same exact checks, seconds not minutes."""
    return [*(FmaPeak(p, sm_count=2, steps=2 * UNROLL) for p in sorted(FMA_FORMATS)),
            MmaPeak(sm_count=2, steps=2 * MMA_UNROLL)]
