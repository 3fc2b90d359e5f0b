"""Busy but useless: blocks that spin on the global timer for a bounded time and do no model math.

NVML counts a sample period as busy when any kernel runs, so one block on one SM reads ~100% GPU-Util
while GPM SM utilization is ~1/SMs and MFU is 0. The spin ends when the global timer says `ns` have
passed, or after `max_iters` iterations whatever the timer says, so it always terminates on the device
on its own, whatever happens on the host.

Each block also records the SM it ran on (%smid). A grid of one block per SM for a share of the SMs
(`one_per_sm`) relies on the block scheduler spreading blocks over idle SMs, as it does; the check makes
that premise a verified fact rather than an assumption behind the row's expected SM utilization.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mfugap.cuda_source import CudaSource
from mfugap.workload import PRECISION_NONE, Check, Workload

SOURCE = CudaSource(r"""
__device__ __forceinline__ unsigned long long global_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__device__ __forceinline__ unsigned sm_id() {
    unsigned id;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
    return id;
}

// One thread per block spins; out[3*block] = ns actually spun, out[3*block+1] = loop iterations,
// out[3*block+2] = the SM the block ran on.
extern "C" __global__ void spin(unsigned long long ns, unsigned long long max_iters,
                                unsigned long long* out) {
    if (threadIdx.x != 0) return;
    const unsigned long long t0 = global_ns();
    unsigned long long now = t0, iters = 0;
    while (now - t0 < ns && iters < max_iters) {
        now = global_ns();
        ++iters;
    }
    out[3 * blockIdx.x] = now - t0;
    out[3 * blockIdx.x + 1] = iters;
    out[3 * blockIdx.x + 2] = sm_id();
}
""", kernels=("spin",))

# An iteration takes at least one SM cycle (~0.5 ns at 2 GHz; each also waits on a timer read), so
# 4 iterations per ns outlast the requested time even if the timer stood still, and still end.
ITERS_PER_NS = 4
COUNTERS = 3  # per block: ns spun, iterations, SM id


def max_iters(ns: int) -> int:
    return ITERS_PER_NS * ns


def flops(blocks: int, ns: int) -> int:
    """A spin does no model math."""
    return 0


def min_bytes(blocks: int) -> int:
    """Each block writes its counters once."""
    return COUNTERS * 8 * blocks


def check_counters(counters: np.ndarray, ns: int, slack_ns: int, one_per_sm: bool = False) -> Check:
    """Every block spun at least `ns` (or hit the iteration bound) and stopped within `slack_ns` after;
    with `one_per_sm`, no two blocks shared an SM."""
    spun, iters, sms = (counters[i::COUNTERS] for i in range(COUNTERS))
    bound = max_iters(ns)
    short = ~((spun >= ns) | (iters >= bound))
    late = spun > ns + slack_ns
    if short.any() or late.any() or (iters == 0).any():
        worst = int(spun.max()) if late.any() else int(spun.min())
        return Check(ok=False,
                     detail=f"spin of {ns} ns: a block reported {worst} ns, {int(iters.min())} iterations")
    distinct = len(np.unique(sms))
    if one_per_sm and distinct < len(sms):
        return Check(ok=False, detail=f"{len(sms)} blocks ran on only {distinct} distinct SMs: the share of "
                                      "SMs busy is not the one the case stands for")
    return Check(ok=True, detail=f"{len(spun)} block(s) on {distinct} SM(s) spun "
                                 f"{int(spun.min())}-{int(spun.max())} ns for {ns} ns")


class Spin(Workload):
    """`blocks` single-thread blocks, each spinning `ms` milliseconds per launch; `one_per_sm`: each on
    an SM of its own (checked)."""

    name = "spin"
    precision = PRECISION_NONE

    def __init__(self, blocks: int = 1, ms: float = 20.0, one_per_sm: bool = False) -> None:
        if blocks < 1 or ms <= 0:
            raise ValueError(f"spin needs blocks >= 1 and ms > 0, got {blocks} and {ms}")
        self.params = {"blocks": blocks, "ms": ms}
        self.ns = int(ms * 1e6)
        self.one_per_sm = one_per_sm
        self.buf = {}

    def flops(self) -> int:
        return flops(self.params["blocks"], self.ns)

    def min_bytes(self) -> int:
        return min_bytes(self.params["blocks"])

    def footprint_bytes(self) -> int:
        return self.min_bytes()

    def setup(self, stream: Any) -> None:
        import cupy

        self.buf["out"] = cupy.empty(COUNTERS * self.params["blocks"], dtype=cupy.uint64)

    def poison(self) -> None:
        self.buf["out"].fill(0)

    def launch(self, stream: Any) -> None:
        import cupy

        SOURCE.function("spin")((self.params["blocks"],), (32,),
                                (cupy.uint64(self.ns), cupy.uint64(max_iters(self.ns)), self.buf["out"]),
                                stream=stream)

    def check(self) -> Check:
        # 5 ms of slack covers the timer's update granularity and a warp descheduled mid-spin
        return check_counters(self.buf["out"].get(), self.ns, slack_ns=5_000_000, one_per_sm=self.one_per_sm)


def selftest_cases() -> list[Workload]:
    return [Spin(blocks=3, ms=2.0, one_per_sm=True)]
