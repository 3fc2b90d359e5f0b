"""A fake CUDA event clock: launches take scripted device time; the host clock follows the device."""
from __future__ import annotations

from collections.abc import Callable, Iterator


class FakeEvent:
    def __init__(self) -> None:
        self.t: float | None = None


class FakeEvents:
    """Each launch() adds the next scripted duration to the device clock; events stamp that clock.

    run_window creates two events between one launch and the next: each creation costs half of
    `gap_ms` of idle device time, standing in for host work between launches.
    """

    def __init__(self, durations_ms: Iterator[float], gap_ms: float = 0.0) -> None:
        self.durations = durations_ms
        self.gap_ms = gap_ms
        self.device_ms = 0.0
        self.outstanding: list[FakeEvent] = []  # recorded, in stream order, not yet known complete
        self.max_outstanding = 0
        self.created = 0
        self.captured: list[float] | None = None
        self.replaying = False

    def launch(self) -> None:
        if self.captured is not None:  # inside a capture: the work is recorded, not run
            self.captured.append(next(self.durations))
        elif not self.replaying:  # a replay's time is the recorded work's
            self.device_ms += next(self.durations)

    def capture(self, launch: Callable[[], None], count: int) -> Callable[[], None]:
        """What a CUDA graph of `count` launches does: replaying it runs their recorded work back to back
        (the launches' effects on host arrays happen again, in the recorded time)."""
        self.captured = []
        for _ in range(count):
            launch()
        work, self.captured = sum(self.captured), None

        def replay() -> None:
            self.replaying = True
            try:
                for _ in range(count):
                    launch()
            finally:
                self.replaying = False
            self.device_ms += work
        return replay

    def host_time(self) -> float:
        return self.device_ms / 1e3

    def new(self) -> FakeEvent:
        self.created += 1
        self.device_ms += self.gap_ms / 2
        return FakeEvent()

    def record(self, event: FakeEvent) -> None:
        event.t = self.device_ms
        self.outstanding.append(event)
        self.max_outstanding = max(self.max_outstanding, len(self.outstanding))

    def wait(self, event: FakeEvent) -> None:
        assert event.t is not None, "waited on an event that was never recorded"
        # a stream completes in order: waiting on one event completes every event recorded before it
        if event in self.outstanding:
            del self.outstanding[: self.outstanding.index(event) + 1]

    def elapsed_ms(self, start: FakeEvent, end: FakeEvent) -> float:
        return end.t - start.t


class FakeStream:
    """Enough of a CuPy stream for the harness: a context manager that can be synchronized."""

    def __init__(self) -> None:
        self.entered = 0
        self.depth = 0  # > 0 while the stream is current

    def __enter__(self) -> FakeStream:
        self.entered += 1
        self.depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1

    def synchronize(self) -> None:
        return None
