"""The harness on the CPU: a NumPy workload, fake events and a fake sampler stand in for the GPU."""
import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from mfugap import catalog
from mfugap.measure import WindowConfig, measure
from mfugap.schema import ROW_FIELDS
from mfugap.verify import TOLERANCE, check_close
from mfugap.workload import Check, Workload
from tests.fake_events import FakeEvents, FakeStream

TINY = WindowConfig(window_s=0.02, warmup_s=0.0, min_reps=3)
H100 = catalog.resolve("NVIDIA H100 80GB HBM3")


class Axpy(Workload):
    """y = 2x + y on the host; each launch costs 1 ms on the fake device clock."""

    name = "axpy"
    precision = "fp32"

    def __init__(self, n, clock, bug=False, fail_in_setup=False):
        self.params = {"n": n}
        self.clock, self.bug, self.fail_in_setup = clock, bug, fail_in_setup
        self.buf = {}
        self.torn_down = False

    def flops(self):
        return 2 * self.params["n"]

    def min_bytes(self):
        return 12 * self.params["n"]

    def footprint_bytes(self):
        return self.min_bytes()

    def setup(self, stream):
        if self.fail_in_setup:
            raise MemoryError("out of memory allocating 12 bytes\nsecond line")
        rng = np.random.default_rng(1)
        self.buf = {"x": rng.random(self.params["n"]), "y0": rng.random(self.params["n"])}

    def poison(self):
        self.buf["y"] = np.full(self.params["n"], np.nan)

    def launch(self, stream):
        y = 2 * self.buf["x"] + self.buf["y0"]
        self.buf["y"][: len(y) - self.bug] = y[: len(y) - self.bug]  # the bug leaves one element unwritten
        self.clock.launch()

    def check(self):
        if np.isnan(self.buf["y"]).any():
            return Check(ok=False, detail="unwritten elements")
        return check_close(self.buf["y"], 2 * self.buf["x"] + self.buf["y0"], TOLERANCE["fp32"], "axpy")

    def teardown(self):
        super().teardown()
        self.torn_down = True


class FakeSampler:
    def __init__(self, fields):
        self.stats = SimpleNamespace(as_row_fields=lambda: dict(fields))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


SAMPLED = {"gpu_util_pct": 100.0, "util_samples": 12, "util_note": None, "mem_util_pct": 40.0,
           "sm_util_pct": 95.0, "sm_occupancy_pct": 50.0, "tensor_util_pct": 0.0, "dram_util_pct": 90.0,
           "fp32_util_pct": 3.0, "fp16_util_pct": 0.0, "fp64_util_pct": 0.0, "gpm_note": None,
           "sm_clock_mhz": 1980.0, "power_w": 500.0, "clock_event_reasons": 0x4, "other_processes": 0,
           "sampler_overhead_pct": 0.1}


class FakeContext:
    def __init__(self, clock, free=80 << 30, other_processes=0):
        self.clock = clock
        self.spec = H100
        self.device = SimpleNamespace(compute_capability=(9, 0), sm_count=132, is_mig=False)
        self.sampled = {**SAMPLED, "other_processes": other_processes}
        self.stream = FakeStream()
        self.free = free
        self.capture_error = None
        self.sticky_error = None  # what GpuContext.broken() reports after a faulting kernel

    def free_bytes(self):
        return self.free

    def broken(self):
        return self.sticky_error

    def events(self):
        return self.clock

    def capture(self, launch, count):
        if self.capture_error:
            raise self.capture_error
        return self.clock.capture(launch, count)

    def sampler(self):
        return FakeSampler(self.sampled)

    def gpu_json(self):
        return {"name": "Fake GPU (tests.test_measure, not a real device)", "sm_count": 132,
                "peaks_tflops": H100.peaks_tflops, "mem_bw_gbps": H100.mem_bw_gbps}


def _clock():
    return FakeEvents(itertools.repeat(1.0))


def test_a_correct_workload_gets_every_number():
    clock = _clock()
    w = Axpy(1001, clock)
    row = measure(w, FakeContext(clock), TINY, suite="demo")
    assert set(row) == set(ROW_FIELDS)
    assert row["status"] == "ok" and row["reason"] is None
    assert row["suite"] == "demo" and row["label"] == "axpy n=1001"
    assert row["flops"] == 2002 and row["bytes"] == 12012
    assert row["kernel_ms_median"] == pytest.approx(1.0)
    assert row["tflops"] == pytest.approx(2002 * row["reps"] / row["window_s"] / 1e12)
    assert row["mfu_pct"] == pytest.approx(100 * row["tflops"] / H100.peaks_tflops["fp32"])
    assert row["mbu_pct"] == pytest.approx(100 * row["gbps"] / H100.mem_bw_gbps)
    expected_clock_peak = catalog.clock_adjusted_peak_tflops((9, 0), 132, 1980.0, "fp32")
    assert row["peak_clock_tflops"] == pytest.approx(expected_clock_peak)
    assert row["gap_pts"] == pytest.approx(100.0 - row["mfu_pct"])
    assert row["flags"] == ["throttle:sw_power_cap"]
    assert row["max_rel_err"] == 0.0 and w.torn_down


def test_a_wrong_kernel_records_no_numbers():
    clock = _clock()
    w = Axpy(1001, clock, bug=True)
    row = measure(w, FakeContext(clock), TINY, suite="demo")
    assert row["status"] == "failed" and "unwritten" in row["reason"]
    assert row["tflops"] is None and row["mfu_pct"] is None and row["gpu_util_pct"] is None
    assert clock.created == 0, "a failed case must not be timed"
    assert w.torn_down


def test_a_case_that_does_not_fit_is_skipped_with_the_reason():
    clock = _clock()
    row = measure(Axpy(1 << 30, clock), FakeContext(clock, free=1 << 30), TINY, suite="demo")
    assert row["status"] == "skipped"
    assert row["reason"] == "needs 12.0 GiB, 1.0 GiB free"


class AmpereAxpy(Axpy):
    min_compute_capability = (8, 0)


@pytest.mark.parametrize(("gpu", "runs"), [((7, 5), False), ((8, 0), True), ((9, 0), True), (None, True)])
def test_a_case_too_new_for_the_gpu_is_skipped_before_anything_runs(gpu, runs):
    clock = _clock()
    ctx = FakeContext(clock)
    ctx.device.compute_capability = gpu  # None: discovery could not tell, so the case is tried
    w = AmpereAxpy(1001, clock)
    row = measure(w, ctx, TINY, suite="demo")
    if runs:
        assert row["status"] == "ok"
        return
    assert row["status"] == "skipped"
    assert row["reason"] == "needs compute capability 8.0 or newer; this GPU is 7.5"
    assert not w.torn_down and clock.created == 0, "nothing was set up, verified or timed"


def test_an_exception_becomes_a_one_line_error_row():
    clock = _clock()
    w = Axpy(10, clock, fail_in_setup=True)
    row = measure(w, FakeContext(clock), TINY, suite="demo")
    assert row["status"] == "error"
    assert row["reason"] == "MemoryError: out of memory allocating 12 bytes"
    assert w.torn_down


@pytest.mark.parametrize(("seen", "flagged"), [(1, True), (0, False), (None, False)])
def test_other_processes_seen_in_the_window_are_flagged(seen, flagged):
    clock = _clock()
    row = measure(Axpy(100, clock), FakeContext(clock, other_processes=seen), TINY, suite="d")
    assert row["other_processes"] == seen
    assert ("other_processes" in row["flags"]) == flagged


def test_a_clean_up_that_fails_turns_the_row_into_an_error_without_numbers():
    """A sticky CUDA error may surface only at teardown's last synchronize: measure() still returns a
    row, an error one, and keeps none of the numbers that error may have tainted."""
    class FailsAtTeardown(Axpy):
        def teardown(self):
            super().teardown()
            raise RuntimeError("cudaErrorIllegalAddress: an illegal memory access\nmore")

    clock = _clock()
    workload = FailsAtTeardown(100, clock)
    row = measure(workload, FakeContext(clock), TINY, suite="d")
    assert workload.torn_down
    assert (row["status"], row["reason"]) == ("error", "RuntimeError: cudaErrorIllegalAddress: an illegal "
                                                         "memory access")
    assert row["tflops"] is None and row["kernel_ms_median"] is None and row["label"] == "axpy n=100"


def test_a_partition_scales_peaks_with_its_sms_and_keeps_bandwidth():
    from dataclasses import dataclass

    from mfugap.measure import GpuContext

    @dataclass
    class Device:
        sm_count: int = 132
        compute_capability: tuple = (9, 0)

    whole = GpuContext(Device(), H100, nvml=None, stream="whole")
    part = whole.partition(16, stream="green")
    assert part.stream == "green" and part.device.sm_count == 16 and whole.device.sm_count == 132
    assert part.spec.peaks_tflops["bf16"] == pytest.approx(989.4 * 16 / 132)
    assert part.spec.whole_gpu_peaks_tflops["bf16"] == pytest.approx(989.4)  # the card's, kept beside
    assert part.spec.mem_bw_gbps == H100.mem_bw_gbps
    assert "emulated slice" in part.spec.source and part.name == whole.name
    with pytest.raises(ValueError, match=r"1\.\.132"):
        whole.partition(133, stream=None)


def test_verification_runs_with_the_stream_current():
    class Watched(Axpy):
        def setup(self, stream):
            self.seen = [stream.depth]
            super().setup(stream)

        def poison(self):
            self.seen.append(ctx.stream.depth)
            super().poison()

        def check(self):
            self.seen.append(ctx.stream.depth)
            return super().check()

    clock = _clock()
    ctx = FakeContext(clock)
    w = Watched(10, clock)
    measure(w, ctx, TINY, suite="demo")
    assert w.seen == [1, 1, 1] and ctx.stream.depth == 0


def test_notes_reach_the_row_without_changing_the_shape():
    clock = _clock()
    w = Axpy(100, clock).annotate(waves=0.5)
    row = measure(w, FakeContext(clock), TINY, suite="demo")
    assert row["params"] == {"n": 100, "waves": 0.5}
    assert row["label"] == "axpy n=100 waves=0.5"
    assert w.params == {"n": 100} and Axpy(1, clock).notes == {}


def test_every_launch_runs_with_the_stream_current():
    class Watched(Axpy):
        def launch(self, stream):
            self.seen.append(stream.depth)
            super().launch(stream)

    clock = _clock()
    ctx = FakeContext(clock)
    w = Watched(10, clock)
    w.seen = []
    row = measure(w, ctx, TINY, suite="demo")
    assert row["status"] == "ok" and len(w.seen) > row["reps"]
    assert all(depth == 1 for depth in w.seen)


def _short_clock():
    return FakeEvents(itertools.repeat(0.01))  # 10 us launches: shorter than Python's launch overhead


def test_short_launches_are_replayed_from_a_cuda_graph():
    clock = _short_clock()
    row = measure(Axpy(100, clock), FakeContext(clock), TINY, suite="demo")
    per = row["launches_per_call"]
    assert per == 1000  # GRAPH_TARGET_MS / 0.01 ms, capped at MAX_GRAPH_LAUNCHES
    assert row["reps"] % per == 0 and row["reps"] >= TINY.min_reps * per
    assert row["kernel_ms_median"] == pytest.approx(0.01)  # per launch, not per graph
    assert row["tflops"] == pytest.approx(200 * row["reps"] / row["window_s"] / 1e12)
    assert row["timing_note"] is None and "python_launch_bound" not in row["flags"]


def test_a_graph_that_replays_other_work_is_caught_before_timing():
    """The launch works eagerly, but what the capture recorded does not write the output: the replay,
    checked on poisoned outputs, fails the case and no numbers are recorded."""
    class CapturesNothing(Axpy):
        def launch(self, stream):
            if self.clock.replaying:
                self.clock.launch()
            else:
                super().launch(stream)

    clock = _short_clock()
    row = measure(CapturesNothing(100, clock), FakeContext(clock), TINY, suite="demo")
    assert row["status"] == "failed"
    assert row["reason"] == "the CUDA graph's replay: unwritten elements"
    assert row["tflops"] is None and row["launches_per_call"] is None


def test_long_or_ungraphable_launches_stay_one_by_one():
    clock = _clock()  # 1 ms launches
    assert measure(Axpy(100, clock), FakeContext(clock), TINY, suite="d")["launches_per_call"] == 1

    class HostWork(Axpy):
        graphable = False

    clock = _short_clock()
    assert measure(HostWork(100, clock), FakeContext(clock), TINY, suite="d")["launches_per_call"] == 1


def test_a_failed_capture_falls_back_and_says_so():
    clock = _short_clock()
    ctx = FakeContext(clock)
    ctx.capture_error = RuntimeError("cudaErrorStreamCaptureUnsupported\nmore")
    row = measure(Axpy(100, clock), ctx, TINY, suite="demo")
    assert row["status"] == "ok" and row["launches_per_call"] == 1
    assert row["timing_note"] == ("CUDA graph capture failed (RuntimeError: "
                                  "cudaErrorStreamCaptureUnsupported): launched one by one from Python")
    assert "python_launch_bound" in row["flags"]


def test_long_launches_get_fewer_reps_but_never_fewer_than_a_median_needs():
    config = WindowConfig(window_s=2.0, min_reps=10, max_window_s=8.0)
    assert config.reps_for(0.001) == 10 and config.reps_for(0.8) == 10  # 10 x 0.8 s fits in 8 s
    assert config.reps_for(2.0) == 4
    assert config.reps_for(60.0) == 3
    assert config.ahead_for(0.001) == 8 and config.ahead_for(0.5) == 4 and config.ahead_for(3.0) == 1
    quick = WindowConfig.quick()
    assert quick.reps_for(1.0) == 3 and quick.max_window_s < WindowConfig().max_window_s


def test_a_two_second_kernel_is_timed_four_times_not_ten():
    clock = FakeEvents(itertools.repeat(2000.0))
    config = WindowConfig(window_s=0.0, warmup_s=0.0, min_reps=10, max_window_s=8.0)
    row = measure(Axpy(11, clock), FakeContext(clock), config, suite="demo")
    assert row["status"] == "ok"
    assert row["reps"] == 4 and row["kernel_ms_median"] == pytest.approx(2000.0)
    # verification, one warm-up launch (verification already loaded the module), four timed: 12 s
    assert clock.device_ms == pytest.approx(6 * 2000.0)
    # two events a launch: at most the running launch and one queued behind it
    assert clock.max_outstanding <= 4, "the host queued more than one long launch ahead of the device"


def test_a_sticky_cuda_error_marks_the_context_broken(monkeypatch):
    import sys

    from mfugap.measure import GpuContext

    class CUDARuntimeError(RuntimeError):
        pass

    errors = []

    def synchronize():
        if errors:
            raise CUDARuntimeError(errors[0])

    runtime = SimpleNamespace(CUDARuntimeError=CUDARuntimeError, deviceSynchronize=synchronize)
    monkeypatch.setitem(sys.modules, "cupy", SimpleNamespace(cuda=SimpleNamespace(runtime=runtime)))
    ctx = GpuContext(device=None, spec=H100, nvml=None, stream=None)
    assert ctx.broken() is None
    errors.append("cudaErrorIllegalAddress: an illegal memory access was encountered")
    assert ctx.broken() == errors[0]


def test_a_reason_is_the_exceptions_type_and_first_line():
    from mfugap.measure import one_line

    assert one_line(RuntimeError("cudaErrorIllegalAddress\nstack")) == "RuntimeError: cudaErrorIllegalAddress"
    assert one_line(MemoryError()) == "MemoryError"  # no message: no dangling colon, no IndexError


def test_selftest_names_an_exception_without_a_message():
    from mfugap import selftest

    class Silent(Axpy):
        def setup(self, stream):
            raise RuntimeError()

    line = selftest.run_case(Silent(4, _clock()), FakeStream())
    assert (line.status, line.detail) == ("failed", "RuntimeError")
