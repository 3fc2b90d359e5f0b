"""The launch-bound limit: `count` tiny fp32 kernels, y = a * x + y over n floats, in one launch().

`AxpyChainEager` launches the `count` kernels one by one from Python, so the GPU waits for the host
between them; `AxpyChainGraph` captures the same `count` launches into a CUDA graph once, in setup,
and replays it, so the driver feeds them back to back. Both do the same work per launch():
the first kernel reads a pristine y0 (y = a * x + y0) and the other count - 1 update y in place, so
every launch() ends with y = y0 + count * a * x whatever y held before (the poison included).

Counts per launch(), each kernel counted as if it ran alone (STREAM's way; at a few thousand floats
the arrays sit in L2, so these bytes are a model of the traffic, not DRAM traffic):
model FLOPs count * 2n (one FMA per element), minimum bytes count * 12n (x and y read, y written).

Inputs are random nonzero multiples of 2^-10 in [-1, 1] and a = 2^-e with e = ceil(log2(count)), so
count * a <= 1: every y_k = y0 + k a x lies in [-2, 2] on a grid of 2^-(10 + e), which fp32's 24-bit
significand holds exactly for e <= 13 (count <= 8192). The fp32 chain is then exact and the check
sees error 0; `tolerance` bounds the error for any count, so the check stays sound beyond that.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from mfugap.cuda_source import CudaSource
from mfugap.verify import check_close
from mfugap.workload import Check, Workload

SOURCE = CudaSource(r"""
// One step of the chain: y_out[i] = a * x[i] + y_in[i], one fused multiply-add (one rounding).
// y_in and y_out alias on every step but the first, so neither is __restrict__.
extern "C" __global__ void axpy_f32(float a, const float* __restrict__ x, const float* y_in,
                                    float* y_out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y_out[i] = fmaf(a, x[i], y_in[i]);
}
""", kernels=("axpy_f32",))

THREADS = 256
GRID_STEP = 2.0**-10  # inputs are multiples of this, so a * x and every partial sum stay exact in fp32
FP32_UNIT_ROUNDOFF = float(np.finfo(np.float32).eps) / 2  # 2^-24, round to nearest


def flops(n: int, count: int) -> int:
    return 2 * n * count


def min_bytes(n: int, count: int) -> int:
    return 12 * n * count


def step_scale(count: int) -> float:
    """a = 2^-ceil(log2(count)): a power of two (exact products) with count * a <= 1 (bounded y)."""
    return 2.0 ** -math.ceil(math.log2(count))


def blocks(n: int) -> int:
    return -(-n // THREADS)


def random_inputs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y0 in fp32: random nonzero multiples of GRID_STEP in [-1, 1]."""
    rng = np.random.default_rng(seed)
    steps = round(1 / GRID_STEP)

    def draw() -> np.ndarray:
        magnitude = rng.integers(1, steps + 1, size=n) * GRID_STEP
        return (magnitude * rng.choice((-1.0, 1.0), size=n)).astype(np.float32)

    return draw(), draw()


def reference(y0: np.ndarray, x: np.ndarray, a: float, count: int) -> np.ndarray:
    """The chain in float64, step by step: `count` applications of y = a * x + y, starting from y0."""
    y = np.asarray(y0, dtype=np.float64)
    x64 = np.asarray(x, dtype=np.float64)
    for _ in range(count):
        y = a * x64 + y
    return y


def tolerance(y0: np.ndarray, x: np.ndarray, a: float, count: int) -> float:
    """Norm-wise bound on ||fp32 chain - exact|| / ||exact|| after `count` fp32 FMAs per element.

    Step k rounds once: y^_k = (a x + y^_{k-1})(1 + d_k), |d_k| <= u = 2^-24, so the absolute error
    grows by at most u |y^_k| per step, and after `count` steps it is at most gamma * max_k |y_k|
    with gamma = count u / (1 - count u) (Higham, ch. 3). max_k |y_k| <= |y0| + count |a x| elementwise.
    One step too few or too many moves y by a x, relative ~1/count, against a bound ~count u: the check
    catches a single lost or repeated launch up to count = 2048 (2^11), the suite's 1000 included.
    """
    y0_64, x64 = np.asarray(y0, dtype=np.float64), np.asarray(x, dtype=np.float64)
    ku = count * FP32_UNIT_ROUNDOFF
    largest = np.abs(y0_64) + count * abs(a) * np.abs(x64)
    return ku / (1 - ku) * float(np.linalg.norm(largest) / np.linalg.norm(reference(y0_64, x64, a, count)))


class AxpyChainEager(Workload):
    """`count` launches of a tiny axpy kernel (n floats, ceil(n / 256) blocks) from Python per launch()."""

    graphable = False  # the lesson is launching from Python; the graph variant brings its own graph

    name = "axpy_chain_eager"
    precision = "fp32"

    def __init__(self, n: int = 4096, count: int = 1000) -> None:
        if n < 1 or count < 1:
            raise ValueError(f"an axpy chain needs n >= 1 and count >= 1, got n={n} and count={count}")
        self.params = {"n": n, "count": count}
        self.a = step_scale(count)
        self.buf = {}

    def flops(self) -> int:
        return flops(**self.params)

    def min_bytes(self) -> int:
        return min_bytes(**self.params)

    def footprint_bytes(self) -> int:
        return 12 * self.params["n"]  # x, y0 and y

    def setup(self, stream: Any) -> None:
        import cupy

        x, y0 = random_inputs(self.params["n"], seed=self.params["count"])
        self.buf.update(x=cupy.asarray(x), y0=cupy.asarray(y0))
        self.buf["y"] = cupy.empty_like(self.buf["y0"])

    def poison(self) -> None:
        self.buf["y"].fill(np.nan)

    def launch(self, stream: Any) -> None:
        self._enqueue(stream)

    def _enqueue(self, stream: Any) -> None:
        """y = a * x + y0, then count - 1 times y = a * x + y: one kernel launch each."""
        kernel = SOURCE.function("axpy_f32")
        n, count = self.params["n"], self.params["count"]
        x, y0, y = self.buf["x"], self.buf["y0"], self.buf["y"]
        grid, block = (blocks(n),), (THREADS,)
        a, n32 = np.float32(self.a), np.int32(n)
        kernel(grid, block, (a, x, y0, y, n32), stream=stream)
        in_place = (a, x, y, y, n32)  # built once: the loop should cost what a launch costs, no more
        for _ in range(count - 1):
            kernel(grid, block, in_place, stream=stream)

    def check(self) -> Check:
        x, y0 = self.buf["x"].get(), self.buf["y0"].get()
        count = self.params["count"]
        return check_close(self.buf["y"].get(), reference(y0, x, self.a, count),
                           tolerance(y0, x, self.a, count),
                           f"y after {count} fp32 FMA steps vs the float64 chain")


class AxpyChainGraph(AxpyChainEager):
    """The same `count` launches, captured into a CUDA graph in setup; launch() replays the graph."""

    name = "axpy_chain_graph"

    def setup(self, stream: Any) -> None:
        super().setup(stream)
        SOURCE.function("axpy_f32")  # compile and load the module before capture, not inside it
        stream.begin_capture()  # the harness's stream is non-blocking: capture refuses the legacy one
        try:
            self._enqueue(stream)
        finally:
            graph = stream.end_capture()  # also ends a failed capture, leaving the stream usable
        self.buf["graph"] = graph

    def launch(self, stream: Any) -> None:
        self.buf["graph"].launch(stream)


def selftest_cases() -> list[AxpyChainEager]:
    return [chain(n=1003, count=7) for chain in (AxpyChainEager, AxpyChainGraph)]
