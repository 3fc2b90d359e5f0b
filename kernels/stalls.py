"""Pipeline stalls around one bf16 cuBLAS GEMM: the step's math is the same, the GPU's share of it is not.

Each workload composes kernels/cublas_gemm.CublasGemm (square, size^3, bf16) and adds one stall to the
step. Model FLOPs and minimum bytes are always the GEMM's (2*size^3 and 3 * 2 * size^2): the stall adds
time, never model work, so MFU over the window falls by exactly the GEMM's share of the step.

- LoaderStarved: a data loader that delivers a batch every `kernel_s / duty` seconds. The host runs
  ahead of the GPU (no synchronization), so loading batch n+1 overlaps the GEMM on batch n, and the GPU
  idles `kernel_s * (1/duty - 1)` per step: busy share = kernel_s / (kernel_s / duty) = duty.
- SyncStall: the step synchronizes after its GEMM, then does `host_ms` of host work; nothing is queued
  meanwhile, so step = kernel_s + sync latency + host_ms and none of the host work hides under the GEMM.
- InputCopy: the step copies its input batch (A, size^2 bf16) from host memory, then multiplies; the
  stream serializes them, so step = copy + GEMM. Pinned memory is copied by DMA at bus speed; pageable
  memory is first staged by the driver through a pinned buffer, which is slower (the rows say by how
  much). The copy is overhead, not model traffic, so the row's bytes stay the GEMM's.

A launch here is a whole step, stall included, so the harness's per-launch figures (kernel_ms_median,
kernel-only MFU) are per step too; the GEMM's own time is the one setup() measures.

The communication wait (a kernel spinning on a host flag) is kernels/flag_wait.py.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mfugap.kernels.cublas_gemm import CublasGemm
from mfugap.measure import launcher
from mfugap.timing import CupyEvents, time_back_to_back_s, warm_up
from mfugap.verify import BF16_NAN
from mfugap.workload import Check, Workload

SPIN_S = 5e-4  # the last stretch of a host wait spins: an OS sleep wakes tens of microseconds late
SETUP_WARMUP_S = 0.1  # cuBLAS heuristics and clock ramp before the kernel time is taken
SETUP_TIMED_LAUNCHES = 20
HOST_MEMORY = ("pinned", "pageable")


def wait_until(deadline_s: float, clock: Callable[[], float] = time.perf_counter,
               sleep: Callable[[float], None] = time.sleep) -> None:
    """Hold the host until `clock()` reaches `deadline_s`: sleep most of the way, spin the rest."""
    while (left := deadline_s - clock()) > 0:
        if left > SPIN_S:
            sleep(left - SPIN_S)


def loader_idle_s(kernel_s: float, duty: float) -> float:
    """GPU idle per step for a busy share of `duty`: t_kernel * (1/duty - 1). The host's wait per batch
    is longer, batch_period_s, because it overlaps the previous GEMM; what the GPU sees is this gap."""
    return kernel_s * (1 / duty - 1)


def batch_period_s(kernel_s: float, duty: float) -> float:
    """Loader time per batch, kernel_s + idle = kernel_s / duty. At duty 1 it is 0 (no pacing): the
    loader keeps ahead and the GPU sets the pace, rather than a schedule matched to a time taken once."""
    return 0.0 if duty >= 1 else kernel_s + loader_idle_s(kernel_s, duty)


class Pacer:
    """A loader with a one-batch buffer producing a batch every `period_s`: `take()` returns when the
    next batch is ready. A consumer late by less than a period finds its batch waiting and the schedule
    keeps its phase; one later than that (a check or warm-up in between) restarts the schedule."""

    def __init__(self, period_s: float, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.period_s = period_s
        self._clock = clock
        self._sleep = sleep
        self._due: float | None = None

    def take(self) -> None:
        if self.period_s <= 0:
            return
        now = self._clock()
        if self._due is None or self._due < now - self.period_s:
            self._due = now
        wait_until(self._due, self._clock, self._sleep)
        self._due += self.period_s


class GemmStep(Workload):
    """A step built around one size^3 bf16 cuBLAS GEMM; subclasses define `launch`: the GEMM plus a stall."""

    graphable = False  # each step does host work (a sleep, a sync, a copy from host memory)

    precision = "bf16"

    def __init__(self, size: int, **stall: Any) -> None:
        self.gemm = CublasGemm(size, size, size, "bf16")
        self.params = {"size": size, **stall}
        self.buf = {}

    def flops(self) -> int:
        return self.gemm.flops()

    def min_bytes(self) -> int:
        return self.gemm.min_bytes()

    def footprint_bytes(self) -> int:
        return self.gemm.footprint_bytes()

    def setup(self, stream: Any) -> None:
        self.gemm.setup(stream)

    def poison(self) -> None:
        self.gemm.poison()

    def check(self) -> Check:
        return self.gemm.check()

    def teardown(self) -> None:
        self.gemm.teardown()
        super().teardown()


class LoaderStarved(GemmStep):
    """The GEMM fed by a loader that keeps the GPU busy `duty_pct`% of the time.

    The loader's period is derived from the GEMM's device time: `kernel_ms` when given, else measured
    once in setup with events over back-to-back launches (setup may synchronize; launch never does).
    """

    name = "loader_starved"
    pacer: Pacer  # set in setup, once the kernel time is known

    def __init__(self, size: int, duty_pct: float, kernel_ms: float | None = None) -> None:
        if not 0 < duty_pct <= 100:
            raise ValueError(f"duty cycle must be in (0, 100] %, got {duty_pct}")
        if kernel_ms is not None and kernel_ms <= 0:
            raise ValueError(f"kernel time must be positive, got {kernel_ms} ms")
        super().__init__(size, duty_pct=duty_pct)
        self.kernel_s = None if kernel_ms is None else kernel_ms / 1e3

    def setup(self, stream: Any) -> None:
        super().setup(stream)
        if self.kernel_s is None:
            self.kernel_s = self._measure_kernel_s(stream)
        self.pacer = Pacer(batch_period_s(self.kernel_s, self.params["duty_pct"] / 100))

    def _measure_kernel_s(self, stream: Any) -> float:
        clock = CupyEvents(stream)
        gemm = launcher(self.gemm, stream)  # cuBLAS follows CuPy's current stream: make it `stream`
        warm_up(gemm, clock, warmup_s=SETUP_WARMUP_S)
        kernel_s = time_back_to_back_s(gemm, clock, SETUP_TIMED_LAUNCHES)
        if kernel_s <= 0:
            raise RuntimeError(f"events timed the GEMM at {kernel_s * 1e3:.3g} ms; no loader pace follows")
        return kernel_s

    def launch(self, stream: Any) -> None:
        self.pacer.take()  # the batch arrives, then the step runs on it
        self.gemm.launch(stream)


class SyncStall(GemmStep):
    """The GEMM, a stream synchronization, then `host_ms` of host work (spinning, as CPU work does)."""

    name = "sync_stall"

    def __init__(self, size: int, host_ms: float) -> None:
        if host_ms < 0:
            raise ValueError(f"host work must be >= 0 ms, got {host_ms}")
        super().__init__(size, host_ms=host_ms)

    def launch(self, stream: Any) -> None:
        self.gemm.launch(stream)
        stream.synchronize()  # the stall under study: the host waits, then the GPU waits for the host
        wait_until(time.perf_counter() + self.params["host_ms"] / 1e3)


class InputCopy(GemmStep):
    """Host-to-device copy of the input batch A (size^2 bf16) from pinned or pageable memory, then the GEMM.

    The host batch holds A's values, so the GEMM check still holds; poison() also fills A on the device
    with NaN, so only a copy that really landed makes the check pass.
    """

    name = "input_copy"

    def __init__(self, size: int, host_memory: str) -> None:
        if host_memory not in HOST_MEMORY:
            raise ValueError(f"host memory must be one of {HOST_MEMORY}, got {host_memory!r}")
        super().__init__(size, host_memory=host_memory)

    def copy_bytes(self) -> int:
        """Bytes copied per step: overhead in the step's time, not model traffic (not in min_bytes)."""
        return 2 * self.params["size"] ** 2

    def setup(self, stream: Any) -> None:
        super().setup(stream)
        values = self.gemm.buf["a"].get(stream=stream)  # a fresh NumPy array: pageable memory
        self.buf["host_a"] = values if self.params["host_memory"] == "pageable" else _pinned_copy(values)

    def poison(self) -> None:
        super().poison()
        self.gemm.buf["a"].fill(BF16_NAN)

    def launch(self, stream: Any) -> None:
        self.gemm.buf["a"].set(self.buf["host_a"], stream=stream)  # cudaMemcpyAsync, stream-ordered
        self.gemm.launch(stream)


def _pinned_copy(values: np.ndarray) -> np.ndarray:
    """`values` in page-locked host memory (CuPy's pinned pool); the array keeps the memory alive."""
    import cupy

    mem = cupy.cuda.alloc_pinned_memory(values.nbytes)
    pinned = np.frombuffer(mem, dtype=values.dtype, count=values.size).reshape(values.shape)
    pinned[...] = values
    return pinned


def selftest_cases() -> list[Workload]:
    """Small odd GEMMs: each stall around a step that must still compute the right product."""
    return [LoaderStarved(97, duty_pct=50), SyncStall(97, host_ms=0.1),
            InputCopy(97, "pinned"), InputCopy(97, "pageable")]
