"""A communication wait: a kernel spins on a flag in mapped pinned host memory until the host releases it.

This is how a rank sits in a collective while its slowest peer (the straggler) has not arrived: a kernel
is resident and polling, so NVML counts the whole wait as busy (~100% GPU-Util) while no model math is
done (MFU 0). Here the straggler is a `threading.Timer` that writes the flag `delay_ms` after the wait
was queued.

Each wait carries an epoch (1, 2, 3, ...) and ends when the flag holds that epoch or a later one. A
boolean flag reset by each launch would race: the reset for wait n+1 can land before wait n has read the
release meant for it, and wait n would then time out. With epochs nothing is ever reset, and a release
written for wait n cannot end wait n+1.

The wait always ends on the device on its own: after `timeout_ns` on the global timer (the delay plus a
second of slack for a late host thread), or after an iteration cap whatever the timer says (the rule of
kernels/spin.py). The kernel records how it ended, how long it waited and how many reads found the flag
not yet released; the check reads that record.

Model FLOPs 0; minimum bytes the 32-byte record (the flag is host memory, not DRAM traffic).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
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

// Thread 0 reads `flag` (mapped pinned host memory) until it holds `epoch` or later, `timeout_ns` pass
// on the global timer, or `max_polls` reads found it unreleased, whichever comes first.
// record: [0] outcome (1 released, 2 timed out; 0 is the poison: never ran), [1] ns waited,
// [2] reads that found the flag unreleased, [3] the last flag value read.
extern "C" __global__ void flag_wait(const volatile unsigned long long* flag, unsigned long long epoch,
                                     unsigned long long timeout_ns, unsigned long long max_polls,
                                     unsigned long long* record) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    const unsigned long long t0 = global_ns();
    unsigned long long now = t0, polls = 0, seen;
    // volatile: each read goes to host memory again, so the host's write is seen; a plain load could be
    // hoisted out of the loop and spin on a stale register forever (until the timeout).
    while ((seen = *flag) < epoch && now - t0 < timeout_ns && polls < max_polls) {
        ++polls;
        now = global_ns();
    }
    record[0] = seen >= epoch ? 1ull : 2ull;
    record[1] = global_ns() - t0;
    record[2] = polls;
    record[3] = seen;
}
""", kernels=("flag_wait",))

NEVER_RAN, RELEASED, TIMED_OUT = 0, 1, 2  # record[0], as the kernel writes it
RECORD_WORDS = 4
TIMEOUT_SLACK_NS = 1_000_000_000  # a host thread a second late is broken, not slow
MAX_DELAY_MS = 1000.0
RELEASE_ALL = np.iinfo(np.uint64).max  # ends any wait, whatever its epoch


# A read of mapped host memory crosses the bus (hundreds of ns at least), so limit / 100 ns reads outlast
# a working timer's limit, yet end within ~10x the limit if the global timer stood still. (The spin's
# cycle-based cap would allow hours of such reads.)
MIN_POLL_NS = 100


def timeout_ns(delay_ns: int) -> int:
    return delay_ns + TIMEOUT_SLACK_NS


def max_polls(limit_ns: int) -> int:
    return limit_ns // MIN_POLL_NS


def flops() -> int:
    """A wait does no model math."""
    return 0


def min_bytes() -> int:
    """The kernel writes its record once; the flag it reads is host memory."""
    return 8 * RECORD_WORDS


def check_record(record: np.ndarray, epoch: int, delay_ns: int) -> Check:
    """The wait for `epoch` was released by the host, before its timeout, after finding the flag unset."""
    outcome, waited, polls, seen = (int(v) for v in record[:RECORD_WORDS])
    waited_text = f"{waited / 1e6:.3f} ms for a {delay_ns / 1e6:g} ms delay"
    if outcome == NEVER_RAN:
        return Check(ok=False, detail="the wait kernel never ran: its record is still poisoned")
    if outcome == TIMED_OUT:
        return Check(ok=False, detail=f"wait {epoch} timed out after {waited_text}; the flag held {seen}")
    if outcome != RELEASED or seen != epoch:
        return Check(ok=False, detail=f"wait {epoch} ended with outcome {outcome} on flag value {seen}")
    if polls == 0:
        return Check(ok=False, detail=f"wait {epoch} found its flag already released: it waited for nothing")
    if waited >= timeout_ns(delay_ns):
        return Check(ok=False, detail=f"wait {epoch} was released after its timeout: {waited_text}")
    return Check(ok=True, detail=f"wait {epoch} released after {waited_text}, {polls} reads of the flag")


class Releaser:
    """The straggling peer: releases wait n by writing n to `flag[0]`, `delay_s` after it was queued.

    `flag` is the host view of the mapped word; `timer` makes a threading.Timer-like object (tests pass
    a fake). One release is pending at a time: the next wait is queued only once the previous release
    has been written, so each wait lasts the delay instead of all timers firing at once while the host
    runs ahead of the device.
    """

    def __init__(self, flag: np.ndarray, delay_s: float,
                 timer: Callable[..., Any] = threading.Timer) -> None:
        self.flag = flag
        self.delay_s = delay_s
        self.epoch = 0
        self._timer_factory = timer
        self._timer: Any = None

    def arm(self, enqueue: Callable[[int], None]) -> int:
        """Wait for the previous release, enqueue the next wait, then start its timer: the delay counts
        from the moment the wait is queued, so module loading and the launch call stay out of it."""
        if self._timer is not None:
            self._timer.join()
        self.epoch += 1
        enqueue(self.epoch)
        self._timer = self._timer_factory(self.delay_s, self._release, args=(self.epoch,))
        self._timer.daemon = True  # a hung harness must not keep the process alive for a timer
        self._timer.start()
        return self.epoch

    def _release(self, epoch: int) -> None:
        self.flag[0] = epoch  # one aligned 8-byte store: the device never sees half of it

    def finish(self) -> None:
        """Drop the pending timer and release every wait, so no kernel polls after the flag is freed."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer.join()
            self._timer = None
        self.flag[0] = RELEASE_ALL


class FlagWait(Workload):
    """One thread waits `delay_ms` per launch on a flag the host releases: busy by NVML's count, 0 FLOPs."""

    graphable = False  # the host must release each wait: a graph would replay waits nobody releases

    name = "flag_wait"
    precision = PRECISION_NONE

    def __init__(self, delay_ms: float = 5.0) -> None:
        if not 0 < delay_ms <= MAX_DELAY_MS:
            raise ValueError(f"flag wait delay must be in (0, {MAX_DELAY_MS:g}] ms, got {delay_ms}")
        self.params = {"delay_ms": delay_ms}
        self.delay_ns = int(delay_ms * 1e6)
        self.buf = {}

    def flops(self) -> int:
        return flops()

    def min_bytes(self) -> int:
        return min_bytes()

    def footprint_bytes(self) -> int:
        return self.min_bytes()

    def setup(self, stream: Any) -> None:
        import cupy
        from cupy_backends.cuda.api import runtime

        SOURCE.function("flag_wait")  # compile and load now, not inside the first timed wait
        # Mapped pinned memory: the device reads the host's word over the bus, no copy involved.
        mem = cupy.cuda.PinnedMemory(8, runtime.hostAllocMapped)
        flag = np.frombuffer(cupy.cuda.PinnedMemoryPointer(mem, 0), dtype=np.uint64, count=1)
        flag[0] = 0
        self.buf.update(stream=stream, flag_mem=mem, record=cupy.empty(RECORD_WORDS, dtype=cupy.uint64),
                        flag_dev=runtime.pointerGetAttributes(mem.ptr).devicePointer,
                        releaser=Releaser(flag, self.delay_ns / 1e9))

    def poison(self) -> None:
        self.buf["record"].fill(NEVER_RAN)

    def launch(self, stream: Any) -> None:
        self.buf["releaser"].arm(lambda epoch: self._enqueue(stream, epoch))

    def _enqueue(self, stream: Any, epoch: int) -> None:
        import cupy

        limit = timeout_ns(self.delay_ns)
        SOURCE.function("flag_wait")((1,), (1,), (cupy.uint64(self.buf["flag_dev"]), cupy.uint64(epoch),
                                                 cupy.uint64(limit), cupy.uint64(max_polls(limit)),
                                                 self.buf["record"]), stream=stream)

    def check(self) -> Check:
        return check_record(self.buf["record"].get(), self.buf["releaser"].epoch, self.delay_ns)

    def teardown(self) -> None:
        """Release any wait still in flight and let it end before the mapped flag is freed; the buffers
        are dropped even when the stream reports an error (measure() must not raise from here)."""
        try:
            if "releaser" in self.buf:
                self.buf["releaser"].finish()
                self.buf["stream"].synchronize()
        finally:
            super().teardown()


def selftest_cases() -> list[Workload]:
    return [FlagWait(delay_ms=2.0)]
