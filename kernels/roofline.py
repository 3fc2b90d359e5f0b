"""Roofline sweep (mixbench-style): one kernel per precision whose FLOPs per byte are a runtime knob.

Intensities are the powers of two from 1/4 to 1024 FLOP/byte (`INTENSITIES`), each hit exactly:

- fp32, `roofline_fp32`: y[i] = f^k(x[i]) with f(x) = fmaf(x, a, b), float4 loads and stores in a
  grid-stride loop, the four components of a float4 being four independent FMA chains per thread.
  An element moves 8 bytes (x read, y written) and costs 2k FLOPs, so intensity = k / 4 and
  k = 4 x intensity: 1 FMA per element at 1/4 FLOP/B up to 4096 at 1024.
- bf16, `roofline_bf16`: tiles of 512 bytes, one 16-byte load per lane of a warp. The lane's four
  words are an m16n8k16 A fragment; words 0-1 and 2-3 are the B fragments of two independent
  accumulator chains, D0 += A.B0 and D1 += A.B1 (`mma.sync ... row.col.f32.bf16.bf16.f32`, no shared
  memory). Every `group`-th tile runs `mmas` mmas (mmas / 2 per chain) and stores D0, D1 rounded to
  bf16 (8 values = 16 bytes per lane); the other tiles are copied through. Each tile moves 1024 bytes
  (read + write), so intensity = 4096 x mmas / (1024 x group) = 4 x mmas / group: mmas = 2 and
  group = 32 .. 1 from 1/4 to 8 FLOP/B, then group = 1 and mmas = intensity / 4 up to 256 at 1024.

Both loops take their count at run time with `#pragma unroll` blocks, one compiled kernel for all
points. The PTX/SASS of the fp32 loop is 4 x FMA_UNROLL FMAs plus a counter add, a compare and a
branch, ~2% of issue slots on Hopper (one warp-FMA per cycle per SM partition), and the remainder
below FMA_UNROLL is peeled into straight-line FMAs; a compile-time count per point would save only
that ~2% at the cost of 13 instantiations, and a full unroll of 4096 x 4 FMAs would overflow the
instruction cache. The mma loop spends 3 such instructions per 2 x MMA_UNROLL mmas, which are bound
by the tensor pipe, not by issue slots.

Both host models are exact, so checks demand bit equality: fp32 inputs lie in [0.5, 1], where
x*a + b with a = 1 - 2^-12 and b = 2^-13 is exact in float64 and stays in [0.5, 1] (fixed point 0.5),
so float64 rounded to float32 after each step is fmaf bit for bit; bf16 inputs are multiples of 1/8
in [-2, 2], so every fp32 partial sum of the mma chains (|D| <= 128 x 16 x 4, multiples of 2^-6) is
exact and only the final bf16 rounding (to nearest even) remains, which NumPy reproduces.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np

from mfugap.cuda_source import CudaSource
from mfugap.kernels.stream import BLOCKS_PER_SM, THREADS, default_n
from mfugap.verify import BF16_NAN, check_close, from_bf16_bits, sample_indices, to_bf16_bits
from mfugap.workload import Check, Workload

INTENSITIES = tuple(2.0**e for e in range(-2, 11))  # FLOP per byte: 1/4, 1/2, ..., 1024

FMA_A = 1 - 2**-12  # |a| < 1: the recurrence contracts towards b / (1 - a) = 0.5 and stays bounded
FMA_B = 2**-13
FMA_UNROLL = 32  # FMAs per chain in one unrolled block of the fp32 loop
MMA_UNROLL = 8  # mma pairs in one unrolled block of the bf16 loop

MMA_FLOPS = 2 * 16 * 8 * 16  # one m16n8k16
LANES = 32
TILE_BYTES = LANES * 16  # one 16-byte load per lane
MIN_MMAS = 2  # one per accumulator chain: D0 and D1 together fill the lane's 16-byte bf16 store
BF16_STEPS = 8  # bf16 inputs are multiples of 1/BF16_STEPS in [-2, 2]: few mantissa bits, exact sums
REGS_PER_SM = 65536  # sm_80 and sm_90

# __launch_bounds__(THREADS, BLOCKS_PER_SM) caps registers at 32 so 8 blocks of 256 fill the SM: the grid
# is exactly that many blocks per SM, and a block that did not fit would run as a second, mostly idle wave.
_CONSTANTS = f"""
constexpr int THREADS = {THREADS};
constexpr int BLOCKS_PER_SM = {BLOCKS_PER_SM};
constexpr int FMA_UNROLL = {FMA_UNROLL};
constexpr int MMA_UNROLL = {MMA_UNROLL};
"""

FP32_SOURCE = CudaSource(_CONSTANTS + r"""
__device__ __forceinline__ float4 fma4(float4 v, float a, float b) {
    return make_float4(fmaf(v.x, a, b), fmaf(v.y, a, b), fmaf(v.z, a, b), fmaf(v.w, a, b));
}

// y[i] = f^fmas(x[i]), f(x) = x * a + b; n4 float4s.
extern "C" __global__ void __launch_bounds__(THREADS, BLOCKS_PER_SM)
roofline_fp32(const float4* __restrict__ x, float4* __restrict__ y, long long n4, int fmas, float a,
              float b) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += stride) {
        float4 v = x[i];
#pragma unroll FMA_UNROLL
        for (int k = 0; k < fmas; ++k) v = fma4(v, a, b);
        y[i] = v;
    }
}
""", kernels=("roofline_fp32",))

# A source of its own: mma.sync and cvt to bf16 need sm_80, and the fp32 kernel should build without them.
BF16_SOURCE = CudaSource(_CONSTANTS + r"""
// d += A . B with the A fragment in a's four words and the B fragment in b0, b1.
__device__ __forceinline__ void mma_bf16(float (&d)[4], uint4 a, unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1));
}

// Two floats rounded to nearest-even bf16 in one word, lo in the low half (cvt puts its first
// source in the high half).
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// `pairs` steps of the two chains D0 += A.B0, D1 += A.B1 on one lane's 16 loaded bytes t.
__device__ __forceinline__ uint4 mma_tile(uint4 t, int pairs) {
    float d0[4] = {0.f, 0.f, 0.f, 0.f}, d1[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll MMA_UNROLL
    for (int k = 0; k < pairs; ++k) {
        mma_bf16(d0, t, t.x, t.y);
        mma_bf16(d1, t, t.z, t.w);
    }
    return make_uint4(pack_bf16(d0[0], d0[1]), pack_bf16(d0[2], d0[3]), pack_bf16(d1[0], d1[1]),
                      pack_bf16(d1[2], d1[3]));
}

// Warp w handles tiles w, w + warps, ...; a tile is 32 uint4s, one per lane. Tile t runs the mmas
// when t % group == 0 (group a power of two: a mask, not a 64-bit division) and is copied otherwise.
// t is the same for the whole warp, so mma.sync always runs converged.
extern "C" __global__ void __launch_bounds__(THREADS, BLOCKS_PER_SM)
roofline_bf16(const uint4* __restrict__ in, uint4* __restrict__ out, long long tiles, int pairs,
              long long group) {
    const int lane = threadIdx.x % 32;
    const long long warps = (long long)gridDim.x * (blockDim.x / 32);
    for (long long t = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32; t < tiles; t += warps) {
        const uint4 v = in[32 * t + lane];
        out[32 * t + lane] = (t & (group - 1)) == 0 ? mma_tile(v, pairs) : v;
    }
}
""", kernels=("roofline_bf16",), min_compute_capability=(8, 0))


def _checked(intensity: float) -> float:
    if intensity not in INTENSITIES:
        raise ValueError(f"roofline intensity must be a power of two from 1/4 to 1024 FLOP/byte, "
                         f"got {intensity}")
    return intensity


def fp32_fmas(intensity: float) -> int:
    """FMAs per element: 2 FLOPs each over the element's 8 bytes, so intensity = fmas / 4."""
    return int(4 * _checked(intensity))


def fp32_flops(n: int, fmas: int) -> int:
    return 2 * fmas * n


def fp32_min_bytes(n: int) -> int:
    return 2 * 4 * n  # x read once, y written once


def bf16_schedule(intensity: float) -> tuple[int, int]:
    """(mmas per math tile, tiles per math tile) with 4 x mmas / group == intensity."""
    mmas = max(MIN_MMAS, int(_checked(intensity) / 4))
    return mmas, int(4 * mmas / intensity)


def bf16_flops(tiles: int, mmas: int, group: int) -> int:
    return MMA_FLOPS * mmas * (tiles // group)


def bf16_min_bytes(tiles: int) -> int:
    return 2 * TILE_BYTES * tiles  # every tile read once and written once


def default_input_bytes(l2_bytes: int | None, quick: bool) -> int:
    """The STREAM suite's array size (1 GiB, 256 MiB quick, never under 4x L2), for either precision."""
    return 4 * default_n(l2_bytes, quick)


def fp32_model(x: np.ndarray, fmas: int) -> np.ndarray:
    """x after `fmas` steps of fmaf(x, FMA_A, FMA_B): float64 steps, each rounded once to float32,
    which is fmaf bit for bit for x in [0.5, 1] (the float64 product and sum are exact there)."""
    v = np.asarray(x, dtype=np.float32)
    for _ in range(fmas):
        v = (v.astype(np.float64) * FMA_A + FMA_B).astype(np.float32)
    return v


def _fragment_maps() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(row, col) of each lane's fragment elements for m16n8k16 (PTX ISA, "Matrix Fragments for
    mma.m16n8k16 with floating point type"): element i sits in word i // 2, half i % 2."""
    lane = np.arange(LANES)[:, None]
    group, tig = lane // 4, lane % 4
    a = np.arange(8)[None, :]  # A, 16 x 16: a0..a7
    c = np.arange(4)[None, :]  # B, 16 x 8 (row = k, col = n): b0..b3; C/D, 16 x 8: c0..c3
    return {
        "a": (np.broadcast_to(group + 8 * (a // 2 % 2), (LANES, 8)), 2 * tig + a % 2 + 8 * (a // 4)),
        "b": (2 * tig + c % 2 + 8 * (c // 2), np.broadcast_to(group, (LANES, 4))),
        "d": (np.broadcast_to(group + 8 * (c // 2), (LANES, 4)), 2 * tig + c % 2),
    }


FRAGMENTS = _fragment_maps()


def bf16_tile_model(words: np.ndarray, pairs: int) -> np.ndarray:
    """Output words of math tiles: `words` is (tiles, 32 lanes, 4) uint32 as loaded, lane by lane."""
    e = from_bf16_bits(np.ascontiguousarray(words, dtype=np.uint32).view(np.uint16)).astype(np.float64)
    a = np.zeros((len(e), 16, 16))
    a[:, FRAGMENTS["a"][0], FRAGMENTS["a"][1]] = e
    d = np.empty_like(e)
    for chain, halves in enumerate((slice(0, 4), slice(4, 8))):  # B0 = words 0-1, B1 = words 2-3
        b = np.zeros((len(e), 16, 8))
        b[:, FRAGMENTS["b"][0], FRAGMENTS["b"][1]] = e[:, :, halves]
        d[:, :, 4 * chain:4 * chain + 4] = (pairs * (a @ b))[:, FRAGMENTS["d"][0], FRAGMENTS["d"][1]]
    return to_bf16_bits(d.astype(np.float32)).view(np.uint32)


def bf16_model(words: np.ndarray, tile_ids: np.ndarray, mmas: int, group: int) -> np.ndarray:
    """Expected output words of tiles `tile_ids` (words as loaded): math tiles modelled, others copied."""
    out = np.array(words, dtype=np.uint32)
    math = np.asarray(tile_ids) % group == 0
    out[math] = bf16_tile_model(out[math], mmas // 2)
    return out


CHECK_SAMPLES = 1 << 14  # fp32 elements, each modelled through up to 4096 steps on the host
CHECK_TILES = 1 << 10
EXACT = 0.0  # both host models reproduce every rounding: any difference is a wrong kernel


class _RooflinePoint(Workload):
    """One point of a sweep: shared launch, poison and sizing; subclasses say what the kernel does."""

    source: CudaSource  # holding the kernel named like the workload
    poison_value: Any

    def __init__(self, sm_count: int) -> None:
        self.grid = max(1, sm_count * BLOCKS_PER_SM)
        self.buf = {}

    @property
    def label(self) -> str:
        return f"{self.name} {self.params['intensity']:g} FLOP/B"

    def footprint_bytes(self) -> int:
        return self.min_bytes()

    def poison(self) -> None:
        self.buf["y"].fill(self.poison_value)

    def launch(self, stream: Any) -> None:
        self.source.function(self.name)((self.grid,), (THREADS,), self._args(), stream=stream)

    @abstractmethod
    def _args(self) -> tuple:
        """The kernel's arguments after the launch configuration."""


class Fp32Roofline(_RooflinePoint):
    """`input_bytes` of fp32 through 4 x intensity dependent FMAs per element."""

    name = "roofline_fp32"
    precision = "fp32"
    source = FP32_SOURCE
    poison_value = np.nan

    def __init__(self, intensity: float, input_bytes: int, sm_count: int) -> None:
        super().__init__(sm_count)
        fmas = fp32_fmas(intensity)
        if input_bytes < 16 or input_bytes % 16:
            raise ValueError(f"fp32 roofline needs input_bytes a positive multiple of 16 (float4), "
                             f"got {input_bytes}")
        self.params = {"intensity": intensity, "fmas": fmas, "n": input_bytes // 4}

    def flops(self) -> int:
        return fp32_flops(self.params["n"], self.params["fmas"])

    def min_bytes(self) -> int:
        return fp32_min_bytes(self.params["n"])

    def setup(self, stream: Any) -> None:
        import cupy

        x = cupy.random.random(self.params["n"], dtype=cupy.float32)
        x *= 0.5
        x += 0.5  # [0.5, 1] (the top can round up to 1.0): where fp32_model is exact
        self.buf["x"] = x
        self.buf["y"] = cupy.empty_like(x)

    def _args(self) -> tuple:
        import cupy

        x, y = self.buf["x"], self.buf["y"]
        return (x, y, cupy.int64(x.size // 4), cupy.int32(self.params["fmas"]), cupy.float32(FMA_A),
                cupy.float32(FMA_B))

    def check(self) -> Check:
        import cupy

        x, y = self.buf["x"], self.buf["y"]
        unwritten = int(cupy.isnan(y).sum())
        if unwritten:
            return Check(ok=False, detail=f"{self.name} left {unwritten} of {y.size} elements unwritten")
        idx = cupy.asarray(sample_indices(y.size, CHECK_SAMPLES, seed=y.size))
        return check_close(y[idx].get(), fp32_model(x[idx].get(), self.params["fmas"]), EXACT,
                           f"{len(idx)} sampled elements vs the float32 FMA recurrence, bit for bit")


class Bf16Roofline(_RooflinePoint):
    """`input_bytes` of bf16 in 512-byte tiles, every `group`-th tile through `mmas` tensor-core mmas."""

    name = "roofline_bf16"
    precision = "bf16"
    source = BF16_SOURCE
    min_compute_capability = BF16_SOURCE.min_compute_capability
    poison_value = BF16_NAN

    def __init__(self, intensity: float, input_bytes: int, sm_count: int) -> None:
        super().__init__(sm_count)
        mmas, group = bf16_schedule(intensity)
        if input_bytes < TILE_BYTES * group or input_bytes % (TILE_BYTES * group):
            raise ValueError(f"bf16 roofline at {intensity:g} FLOP/byte needs input_bytes a positive "
                             f"multiple of {TILE_BYTES * group} ({group} tiles of {TILE_BYTES} bytes), "
                             f"got {input_bytes}")
        self.params = {"intensity": intensity, "mmas": mmas, "group": group,
                       "tiles": input_bytes // TILE_BYTES}

    def flops(self) -> int:
        return bf16_flops(self.params["tiles"], self.params["mmas"], self.params["group"])

    def min_bytes(self) -> int:
        return bf16_min_bytes(self.params["tiles"])

    def setup(self, stream: Any) -> None:
        import cupy

        k = cupy.random.randint(-2 * BF16_STEPS, 2 * BF16_STEPS + 1, self.params["tiles"] * TILE_BYTES // 2,
                                dtype=cupy.int32)
        v = k.astype(cupy.float32)
        v /= BF16_STEPS  # k / 8 in [-2, 2]: exact in bf16
        self.buf["x"] = to_bf16_bits(v, cupy)
        self.buf["y"] = cupy.empty_like(self.buf["x"])

    def _args(self) -> tuple:
        import cupy

        p = self.params
        return (self.buf["x"], self.buf["y"], cupy.int64(p["tiles"]), cupy.int32(p["mmas"] // 2),
                cupy.int64(p["group"]))

    def _tiles(self, name: str) -> Any:
        return self.buf[name].view(np.uint32).reshape(self.params["tiles"], LANES, 4)

    def check(self) -> Check:
        import cupy

        bad = int(((self.buf["y"] & 0x7FFF) >= 0x7F80).sum())  # exponent all ones: the NaN poison
        if bad:
            return Check(ok=False, detail=f"{self.name} left {bad} of {self.buf['y'].size} values NaN or Inf")
        p = self.params
        idx = sample_indices(p["tiles"], CHECK_TILES, seed=p["tiles"], tail=p["group"])  # both kinds of tile
        picked = cupy.asarray(idx)
        out, ref = self._tiles("y")[picked].get(), bf16_model(self._tiles("x")[picked].get(), idx, p["mmas"],
                                                              p["group"])
        return check_close(from_bf16_bits(out.view(np.uint16)), from_bf16_bits(ref.view(np.uint16)), EXACT,
                           f"{len(idx)} sampled tiles vs the bf16 mma model, bit for bit")


MIN_RIDGE_ROWS = 3  # a bend needs a point on each side of it and one more to tell it from a line


def ridge_point(rows: list[dict]) -> dict | None:
    """The measured roofline of one precision's sweep, from its ok rows; None with too few of them.

    plateau_tflops is the best achieved TFLOP/s; bandwidth_gbps the best tflops x 1e3 / intensity, which
    is a memory-bound point's (every point lies under intensity x bandwidth, and only memory-bound
    points reach that line); ridge_flop_per_byte = plateau / bandwidth, where the two lines meet.
    datasheet_ridge_flop_per_byte is peak / datasheet bandwidth from the same rows, when they carry it.
    """
    precisions = sorted({str(r.get("precision")) for r in rows})
    if len(precisions) > 1:
        raise ValueError(f"ridge_point takes the rows of one precision, got {precisions}")
    ok = [r for r in rows if r.get("status") == "ok" and r.get("tflops") is not None
          and (r.get("intensity_flop_per_byte") or 0) > 0]
    if len(ok) < MIN_RIDGE_ROWS:
        return None
    top = max(ok, key=lambda r: r["tflops"])
    steep = max(ok, key=lambda r: r["tflops"] / r["intensity_flop_per_byte"])
    bandwidth = steep["tflops"] * 1e3 / steep["intensity_flop_per_byte"]
    if bandwidth <= 0:
        return None
    return {
        "ridge_flop_per_byte": top["tflops"] * 1e3 / bandwidth,
        "datasheet_ridge_flop_per_byte": _datasheet_ridge(ok),
        "plateau_tflops": top["tflops"],
        "plateau_at_flop_per_byte": top["intensity_flop_per_byte"],
        "bandwidth_gbps": bandwidth,
        "bandwidth_at_flop_per_byte": steep["intensity_flop_per_byte"],
        "rows": len(ok),
    }


def _datasheet_ridge(rows: list[dict]) -> float | None:
    """peak_tflops over the datasheet bandwidth, recovered from a row as gbps / (mbu_pct / 100)."""
    for r in rows:
        if r.get("peak_tflops") and r.get("gbps") and r.get("mbu_pct"):
            return r["peak_tflops"] * 1e3 / (r["gbps"] * 100 / r["mbu_pct"])
    return None


SELFTEST_SMS = 2  # a small grid, so the grid-stride loops wrap several times


def selftest_cases() -> list[Workload]:
    """Each sweep's ends and its bend at small sizes: the peeled remainder alone (1 FMA, 1 mma pair),
    exactly one unrolled block, and many blocks."""
    return [*(Fp32Roofline(i, 16 * 10_007, SELFTEST_SMS) for i in (0.25, 8, 1024)),
            *(Bf16Roofline(i, TILE_BYTES * 32 * 5, SELFTEST_SMS) for i in (0.25, 64, 1024))]
