"""Device timing: CUDA events around every launch, warm-up first, a window of a minimum length.

Each launch gets its own pair of events (as Triton's do_bench does), so the median is of single
launches, while the window's wall time runs from the first launch's start to the last one's end and so
includes every host gap. The host is kept at most `max_ahead` launches ahead of the device, so the host
clock that decides when the window is long enough tracks the device.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from mfugap.metrics import percentile

MAX_AHEAD = 8  # launches the host queues ahead of the device at most, by default


class EventClock(Protocol):
    """The four event operations timing needs; CupyEvents implements them on a CUDA stream."""

    def new(self) -> Any: ...
    def record(self, event: Any) -> None: ...
    def wait(self, event: Any) -> None: ...
    def elapsed_ms(self, start: Any, end: Any) -> float: ...


class CupyEvents:
    def __init__(self, stream: Any) -> None:
        import cupy

        self._cupy = cupy
        self.stream = stream

    def new(self) -> Any:
        return self._cupy.cuda.Event()

    def record(self, event: Any) -> None:
        event.record(self.stream)

    def wait(self, event: Any) -> None:
        event.synchronize()

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return self._cupy.cuda.get_elapsed_time(start, end)


@dataclass(frozen=True)
class WindowTiming:
    reps: int
    launch_ms: list[float]
    window_s: float  # device time from the first launch's start to the last launch's end

    @property
    def median_ms(self) -> float:
        return percentile(sorted(self.launch_ms), 50)

    @property
    def p10_ms(self) -> float:
        return percentile(sorted(self.launch_ms), 10)

    @property
    def p90_ms(self) -> float:
        return percentile(sorted(self.launch_ms), 90)


@dataclass(frozen=True)
class WarmUp:
    launches: int
    last_s: float  # device time of the last (warm) launch: what the window can expect per launch


def warm_up(launch: Callable[[], None], clock: EventClock, *, warmup_s: float, min_launches: int = 2,
            host_time: Callable[[], float] = time.perf_counter) -> WarmUp:
    """Launch until `warmup_s` has passed on the device: compilation, handles and clock ramp stay out."""
    t0 = host_time()
    launches = 0
    start, done = clock.new(), clock.new()
    while launches < min_launches or host_time() - t0 < warmup_s:
        clock.record(start)
        launch()
        clock.record(done)
        clock.wait(done)
        launches += 1
    return WarmUp(launches, clock.elapsed_ms(start, done) / 1e3)


def run_window(launch: Callable[[], None], clock: EventClock, *, min_window_s: float, min_reps: int,
               max_ahead: int = MAX_AHEAD,
               host_time: Callable[[], float] = time.perf_counter) -> WindowTiming:
    """Time launches back to back until the window is at least `min_window_s` and `min_reps` long."""
    if min_reps < 1:
        raise ValueError(f"need min_reps >= 1, got {min_reps}")
    pending: deque[tuple[Any, Any]] = deque()
    launch_ms: list[float] = []
    first = last = None
    t0 = host_time()
    reps = 0
    while True:
        start, end = clock.new(), clock.new()
        clock.record(start)
        launch()
        clock.record(end)
        first = first or start
        last = end
        pending.append((start, end))
        reps += 1
        if len(pending) > max_ahead:
            launch_ms.append(_settle(clock, *pending.popleft()))
        if reps >= min_reps and host_time() - t0 >= min_window_s:
            break
    launch_ms += [_settle(clock, s, e) for s, e in pending]
    return WindowTiming(reps=reps, launch_ms=launch_ms, window_s=clock.elapsed_ms(first, last) / 1e3)


def _settle(clock: EventClock, start: Any, end: Any) -> float:
    clock.wait(end)
    return clock.elapsed_ms(start, end)


def time_back_to_back_s(launch: Callable[[], None], clock: EventClock, reps: int) -> float:
    """Mean device time of `reps` launches queued back to back between two events: no host gaps."""
    start, end = clock.new(), clock.new()
    clock.record(start)
    for _ in range(reps):
        launch()
    clock.record(end)
    clock.wait(end)
    return clock.elapsed_ms(start, end) / 1e3 / reps
