"""The STREAM family in fp32 (copy, scale, add, triad, dot): the memory-bound end of the roofline.

16-byte (float4) accesses in grid-stride loops, with a scalar loop for the remainder, so any n works.
Bytes are counted STREAM's way, 4 bytes per element of each array read or written once:
copy a = b (2 arrays, 0 FLOPs), scale a = s * b (2, 1), add a = b + c (3, 1), triad a = b + s * c
(3, 2: a multiply and an add, fused into one FMA), dot sum b * c (2 arrays read, 2 FLOPs).
The vendor reference beside them is a device-to-device cudaMemcpyAsync of one array into another.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mfugap.cuda_source import CudaSource
from mfugap.verify import TOLERANCE, check_close, sample_indices
from mfugap.workload import Check, Workload

SOURCE = CudaSource(r"""
// Each op maps (b[i], c[i], s) to a[i]; an op that does not read c never loads it, so copy and
// scale move two arrays, not three.
struct Copy  { static constexpr bool reads_c = false;
               __device__ static float f(float b, float, float) { return b; } };
struct Scale { static constexpr bool reads_c = false;
               __device__ static float f(float b, float, float s) { return s * b; } };
struct Add   { static constexpr bool reads_c = true;
               __device__ static float f(float b, float c, float) { return b + c; } };
struct Triad { static constexpr bool reads_c = true;
               __device__ static float f(float b, float c, float s) { return fmaf(s, c, b); } };

// Calls vec(i) for each float4 index i < n / 4 and then scalar(i) for the last n % 4 elements,
// spreading both over the whole grid.
template <class Vec, class Scalar>
__device__ __forceinline__ void grid_stride(long long n, Vec vec, Scalar scalar) {
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long n4 = n / 4;
    for (long long i = tid; i < n4; i += stride) vec(i);
    for (long long i = 4 * n4 + tid; i < n; i += stride) scalar(i);
}

template <class Op>
__device__ __forceinline__ void elementwise(float* __restrict__ a, const float* __restrict__ b,
                                            const float* __restrict__ c, float s, long long n) {
    const float4* b4 = reinterpret_cast<const float4*>(b);
    const float4* c4 = reinterpret_cast<const float4*>(c);
    float4* a4 = reinterpret_cast<float4*>(a);
    grid_stride(n, [&](long long i) {
        const float4 x = __ldg(b4 + i);
        float4 y = x;
        if constexpr (Op::reads_c) y = __ldg(c4 + i);
        a4[i] = make_float4(Op::f(x.x, y.x, s), Op::f(x.y, y.y, s), Op::f(x.z, y.z, s), Op::f(x.w, y.w, s));
    }, [&](long long i) {
        a[i] = Op::f(__ldg(b + i), Op::reads_c ? __ldg(c + i) : 0.0f, s);
    });
}

// One signature for all four, so the host launches them alike; c is ignored by copy and scale.
#define STREAM_KERNEL(name, Op)                                                                  \
    extern "C" __global__ void name(float* __restrict__ a, const float* __restrict__ b,         \
                                    const float* __restrict__ c, float s, long long n) {        \
        elementwise<Op>(a, b, c, s, n);                                                          \
    }
STREAM_KERNEL(copy_f32, Copy)
STREAM_KERNEL(scale_f32, Scale)
STREAM_KERNEL(add_f32, Add)
STREAM_KERNEL(triad_f32, Triad)

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Sum over the block, valid in thread 0; blockDim.x is a multiple of 32. Depth log2(blockDim.x):
// five shuffle levels within each warp, then the warps' sums (zeros past the last warp) in warp 0.
template <class T>
__device__ __forceinline__ T block_sum(T v) {
    __shared__ T warp_sums[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    v = warp_sum(v);
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp != 0) return v;
    return warp_sum(lane < blockDim.x / 32 ? warp_sums[lane] : T(0));
}

// Dot pass 1: each block writes the fp32 sum of its grid-stride share of b[i] * c[i].
extern "C" __global__ void dot_partial_f32(const float* __restrict__ b, const float* __restrict__ c,
                                           float* __restrict__ partial, long long n) {
    const float4* b4 = reinterpret_cast<const float4*>(b);
    const float4* c4 = reinterpret_cast<const float4*>(c);
    float acc = 0.0f;
    grid_stride(n, [&](long long i) {
        const float4 x = __ldg(b4 + i), y = __ldg(c4 + i);
        acc = fmaf(x.w, y.w, fmaf(x.z, y.z, fmaf(x.y, y.y, fmaf(x.x, y.x, acc))));
    }, [&](long long i) {
        acc = fmaf(__ldg(b + i), __ldg(c + i), acc);
    });
    acc = block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// Dot pass 2, one block: adds the per-block sums in double, so this pass adds no visible error and
// needs no zeroed accumulator (an atomicAdd would, before every launch).
extern "C" __global__ void dot_finish(const float* __restrict__ partial, int count,
                                      double* __restrict__ out) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) *out = acc;
}
""", kernels=("copy_f32", "scale_f32", "add_f32", "triad_f32", "dot_partial_f32", "dot_finish"))

SCALAR = 3.0
THREADS = 256
BLOCKS_PER_SM = 8  # 8 x 256 threads fill an SM's 2048 thread slots on Ampere and Hopper
CHECK_SAMPLES = 1 << 20
CHECK_TAIL = 64  # the last elements, where the scalar remainder loop runs
DOT_CHUNK = 1 << 24  # elements per host copy when the dot's float64 reference sums all n
FP32_UNIT_ROUNDOFF = 2.0**-24


@dataclass(frozen=True)
class Op:
    """One STREAM operation: the n-element fp32 arrays it reads and writes, and its math per element."""

    formula: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]  # empty for dot, whose result is one number
    flops_per_element: int
    reference: Callable[[np.ndarray, np.ndarray | None, float], Any]  # float64 in, float64 out


OPS: dict[str, Op] = {
    "copy": Op("a[i] = b[i]", ("b",), ("a",), 0, lambda b, c, s: b),
    "scale": Op("a[i] = s * b[i]", ("b",), ("a",), 1, lambda b, c, s: s * b),
    "add": Op("a[i] = b[i] + c[i]", ("b", "c"), ("a",), 1, lambda b, c, s: b + c),
    "triad": Op("a[i] = b[i] + s * c[i]", ("b", "c"), ("a",), 2, lambda b, c, s: b + s * c),
    "dot": Op("sum of b[i] * c[i]", ("b", "c"), (), 2, lambda b, c, s: np.dot(b, c)),
}


def flops(n: int, op: str = "triad") -> int:
    return OPS[op].flops_per_element * n


def min_bytes(n: int, op: str = "triad") -> int:
    """STREAM's count: 4 bytes per element of every array read or written, each once."""
    spec = OPS[op]
    return 4 * n * (len(spec.reads) + len(spec.writes))


def _float64(x: np.ndarray | None) -> np.ndarray | None:
    return None if x is None else np.asarray(x, dtype=np.float64)


def reference(b: np.ndarray, c: np.ndarray | None, s: float = SCALAR, op: str = "triad") -> Any:
    """The op in float64 (c may be None for copy and scale): an array, or a number for dot."""
    return OPS[op].reference(_float64(b), _float64(c), s)


def dot_tolerance(n: int, threads: int) -> float:
    """Bound on |computed - exact| / sum |b[i] c[i]| for dot_partial_f32 + dot_finish on `threads` threads.

    Each product passes through at most k fp32 roundings: its thread's sequential chain (4 FMAs per
    float4 step, one remainder element) and the log2(THREADS) levels of the block sum; the double
    pass adds one more, generously. Recursive summation then errs by at most gamma_k = k u / (1 - k u)
    relative to sum |b[i] c[i]|, u = 2^-24 (Higham, Accuracy and Stability of Numerical Algorithms,
    ch. 3). The bound is rigorous, hence loose: at n = 2^28 it cannot see a few skipped elements.
    """
    chain = 4 * -(-(n // 4) // threads) + 1  # ceil: the busiest thread's float4 steps
    k = chain + int(math.log2(THREADS)) + 1
    ku = k * FP32_UNIT_ROUNDOFF
    return ku / (1 - ku)


def default_n(l2_bytes: int | None, quick: bool) -> int:
    """Elements per array: 2^28 (1 GiB), or 2^26 quick; never under 4x L2 per array."""
    n = 1 << (26 if quick else 28)
    while 4 * n < 4 * (l2_bytes or 0):  # bytes per array vs 4x L2
        n *= 2
    return n


class StreamOp(Workload):
    """One STREAM operation (a key of OPS) over fp32 arrays of n elements."""

    precision = "fp32"

    def __init__(self, op: str, n: int, sm_count: int) -> None:
        if op not in OPS:
            raise ValueError(f"STREAM op must be one of {sorted(OPS)}, got {op!r}")
        if n < 1 or sm_count < 1:
            raise ValueError(f"STREAM {op} needs n >= 1 and sm_count >= 1, got {n} and {sm_count}")
        self.op = op
        self.spec = OPS[op]
        self.name = f"stream_{op}"
        self.params = {"n": n}
        self.grid = sm_count * BLOCKS_PER_SM
        self.buf = {}

    def flops(self) -> int:
        return flops(self.params["n"], self.op)

    def min_bytes(self) -> int:
        return min_bytes(self.params["n"], self.op)

    def footprint_bytes(self) -> int:
        partial_sums = 0 if self.spec.writes else 4 * self.grid + 8
        return self.min_bytes() + partial_sums

    def _outputs(self) -> tuple[str, ...]:
        return self.spec.writes or ("partial", "sum")

    def setup(self, stream: Any) -> None:
        import cupy

        n = self.params["n"]
        for name in self.spec.reads:
            self.buf[name] = cupy.random.random(n, dtype=cupy.float32) * 2 - 1
        for name in self.spec.writes:
            self.buf[name] = cupy.empty(n, dtype=cupy.float32)
        if not self.spec.writes:
            self.buf["partial"] = cupy.empty(self.grid, dtype=cupy.float32)
            self.buf["sum"] = cupy.empty(1, dtype=cupy.float64)

    def poison(self) -> None:
        for name in self._outputs():
            self.buf[name].fill(np.nan)

    def launch(self, stream: Any) -> None:
        import cupy

        n = cupy.int64(self.params["n"])
        b = self.buf["b"]
        if self.spec.writes:
            c = self.buf.get("c", b)  # copy and scale never read c; any valid pointer will do
            SOURCE.function(f"{self.op}_f32")((self.grid,), (THREADS,),
                                              (self.buf["a"], b, c, cupy.float32(SCALAR), n), stream=stream)
            return
        partial = self.buf["partial"]
        SOURCE.function("dot_partial_f32")((self.grid,), (THREADS,), (b, self.buf["c"], partial, n),
                                           stream=stream)
        SOURCE.function("dot_finish")((1,), (THREADS,), (partial, cupy.int32(self.grid), self.buf["sum"]),
                                      stream=stream)

    def check(self) -> Check:
        import cupy

        unwritten = sum(int(cupy.isnan(self.buf[name]).sum()) for name in self._outputs())
        if unwritten:
            return Check(ok=False, detail=f"{self.name} left {unwritten} output elements unwritten (NaN)")
        return self._check_sampled() if self.spec.writes else self._check_dot()

    def _check_sampled(self) -> Check:
        import cupy

        n = self.params["n"]
        idx = cupy.asarray(sample_indices(n, CHECK_SAMPLES, seed=n, tail=CHECK_TAIL))
        inputs = {name: self.buf[name][idx].get() for name in self.spec.reads}
        expected = reference(inputs["b"], inputs.get("c"), SCALAR, self.op)
        return check_close(self.buf["a"][idx].get(), expected, TOLERANCE["fp32"],
                           f"{self.spec.formula} vs float64 NumPy on 1M sampled elements and the tail")

    def _check_dot(self) -> Check:
        exact, magnitude = self._dot_float64()
        got = float(self.buf["sum"].get()[0])
        err = abs(got - exact) / magnitude
        tol = dot_tolerance(self.params["n"], self.grid * THREADS)
        ok = err <= tol
        return Check(ok=ok, rel_err=err, tolerance=tol,
                     detail=f"dot {got!r} vs float64 NumPy {exact!r}: error / sum|b*c| = {err:.3g}, "
                            f"{'within' if ok else 'exceeds'} the fp32 summation bound {tol:.2g}")

    def _dot_float64(self) -> tuple[float, float]:
        """sum b[i] c[i] and sum |b[i] c[i]| over all n elements in float64, copied over in chunks."""
        b, c = self.buf["b"], self.buf["c"]
        total = magnitude = 0.0
        for start in range(0, b.size, DOT_CHUNK):
            bh, ch = (x[start:start + DOT_CHUNK].get().astype(np.float64) for x in (b, c))
            total += reference(bh, ch, op="dot")
            magnitude += reference(np.abs(bh), np.abs(ch), op="dot")
        return total, magnitude


class Triad(StreamOp):
    """STREAM triad, a[i] = b[i] + s * c[i]; the name callers used before the other ops existed."""

    def __init__(self, n: int, sm_count: int) -> None:
        super().__init__("triad", n, sm_count)


class DeviceCopy(StreamOp):
    """The vendor's copy: cudaMemcpyAsync device to device of n fp32 elements, read + write, no math.

    Verified like the copy kernel it is the ceiling for.
    """

    NAME = "memcpy_d2d"

    def __init__(self, n: int) -> None:
        super().__init__("copy", n, sm_count=1)  # the runtime launches its own copy; no grid of ours
        self.name = self.NAME

    def launch(self, stream: Any) -> None:
        import cupy

        a, b = self.buf["a"], self.buf["b"]
        runtime = cupy.cuda.runtime
        runtime.memcpyAsync(a.data.ptr, b.data.ptr, a.nbytes, runtime.memcpyDeviceToDevice, stream.ptr)


SELFTEST_SMS = 2  # a small grid, so the grid-stride loops wrap many times


def selftest_cases() -> list[Workload]:
    """Every op at sizes where only the remainder loop runs, both loops run, and loops wrap the grid."""
    sizes = (1, 3, 1003, (1 << 20) + 5)
    return [*(StreamOp(op, n, SELFTEST_SMS) for op in OPS for n in sizes), DeviceCopy(1003)]
