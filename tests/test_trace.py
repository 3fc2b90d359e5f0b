"""NVML traces: recorded against the strict fake, validated, written, loaded, replayed through the Sampler.

The synthetic trace here is made by record() against tests/fake_nvml.py (a GPU named as synthetic, numbers
chosen to be told apart, not to look like any real card's). Real traces, committed under
tests/data/traces/ by a session with a GPU (`mfugap trace`), are checked by the tests at the bottom.
"""
import copy
import functools
import itertools
import json
import operator
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pynvml
import pytest

from mfugap import cli
from mfugap import trace as trace_module
from mfugap.device import NoGpuError, discover, init_nvml
from mfugap.sampler import EMPTY_BUFFER_NOTE, GPM_METRICS, GPM_MIN_INTERVAL_S, GPM_UNSUPPORTED_NOTE, Sampler
from mfugap.trace import (
    FORMAT,
    GEMM_PHASE,
    GPM_METRIC_IDS,
    IDLE_PHASE,
    SPIN_PHASE,
    VERSION,
    Phase,
    TraceError,
    default_path,
    gpu_phases,
    is_error,
    load,
    phase_polls,
    phase_samples,
    record,
    summarize,
    summary_text,
    validate,
    workload_phase,
    write,
)
from mfugap.workload import Check, Workload
from tests.fake_events import FakeEvents, FakeStream
from tests.fake_nvml import FakeGpu, FakeHandle, FakeNvml

TRACES_DIR = Path(__file__).resolve().parent / "data" / "traces"
REAL_TRACES = sorted(TRACES_DIR.glob("*.json"))
GPU = FakeHandle(0)
SYNTHETIC_NAME = "Synthetic GPU (fake NVML, not a real device)"
T0 = 1_700_000_000_000_000  # NVML timestamps are opaque microseconds; start far from zero on purpose
PERIOD_US = 100_000
POLL_S = 0.003
QUIET_GPM = {1: 2.0, 2: 1.0, 3: 0.5}
BUSY_GPM = {1: 100.0, 2: 50.0, 3: 25.0, 5: 12.5, 12: 6.25}
NOT_FOUND, NOT_SUPPORTED, UNKNOWN = (pynvml.NVML_ERROR_NOT_FOUND, pynvml.NVML_ERROR_NOT_SUPPORTED,
                                     pynvml.NVML_ERROR_UNKNOWN)
# what the Sampler's polled series hand out (FakeNvml.returned names) -> the trace's poll keys
SERIES = {"nvmlDeviceGetClockInfo": "sm_clock_mhz", "nvmlDeviceGetPowerUsage": "power_mw",
          "clock_event_reasons": "clock_event_reasons", "util_gpu": "utilization"}


def wait_for(condition, timeout_s=5.0):
    """Let the other thread work until `condition()` holds: no sleep-and-hope on a loaded machine."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the other thread"
        time.sleep(0.001)


class SyntheticDriver:
    """Stands in for the driver's sampling: every third poll adds one util sample valued by the running
    phase, so the recorder's reads see new samples and NOT_FOUND in turn."""

    def __init__(self, nvml: FakeNvml):
        self.nvml = nvml
        self.level = 0
        self.polls = 0
        self.produced = 0

    def tick(self) -> None:  # hooked on nvmlDeviceGetClockInfo: once per poll, under the poller's lock
        self.polls += 1
        if self.polls % 3 == 0:
            self.produced += 1
            self.nvml.add_samples((T0 + self.produced * PERIOD_US, self.level + self.produced % 4))


def synthetic_gpu(**gpu_fields) -> tuple[FakeNvml, SyntheticDriver]:
    fields = dict(name=SYNTHETIC_NAME, pci_device_id=0x0001FFFF, sm_clock_max_mhz=1100,
                  sm_clock_mhz=[1000, 1001, 1002], power_limit_mw=200_000, power_mw=[100_000, 100_500],
                  clock_event_reasons=[0, 0, pynvml.nvmlClocksEventReasonSwPowerCap], util_gpu=[11, 12],
                  util_mem=[1, 2])
    nvml = init_nvml(FakeNvml(FakeGpu(**{**fields, **gpu_fields}), driver_version="0.0.synthetic",
                              cuda_driver_version=1))
    driver = SyntheticDriver(nvml)
    nvml.hooks["nvmlDeviceGetClockInfo"] = driver.tick
    return nvml, driver


def synthetic_phase(driver: SyntheticDriver, name: str, level: int, gpm: dict, samples: int = 6) -> Phase:
    """A phase that lasts until the driver has produced `samples` util samples valued around `level`."""
    def run():
        driver.level = level
        driver.nvml.gpu.gpm_values = gpm
        target = driver.produced + samples
        wait_for(lambda: driver.produced >= target)

    return Phase(name, run, workload=f"synthetic, util around {level}")


def record_synthetic(nvml: FakeNvml, driver: SyntheticDriver) -> dict:
    phases = [synthetic_phase(driver, "quiet", 10, QUIET_GPM), synthetic_phase(driver, "busy", 90, BUSY_GPM)]
    return record(nvml, GPU, phases, poll_s=POLL_S)


@pytest.fixture(scope="module")
def synthetic() -> dict:
    return record_synthetic(*synthetic_gpu())


def trace_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "mfugap-trace"]


# ---- record ----

def test_record_fills_every_part_of_the_format(synthetic):
    validate(synthetic)
    assert json.loads(json.dumps(synthetic)) == synthetic  # plain JSON types only
    assert (synthetic["format"], synthetic["version"], synthetic["poll_s"]) == (FORMAT, VERSION, POLL_S)
    assert synthetic["device"] == {
        "name": SYNTHETIC_NAME, "pci_device_id": 0x0001FFFF, "driver_version": "0.0.synthetic",
        "cuda_driver_version": 1, "mig_mode": {"error": NOT_SUPPORTED}, "gpm_supported": True,
        "sm_clock_max_mhz": 1100, "power_limit_mw": 200_000}
    polls = synthetic["polls"]
    for poll in polls:
        assert poll["sm_clock_mhz"] in (1000, 1001, 1002) and poll["power_mw"] in (100_000, 100_500)
        assert poll["clock_event_reasons"] in (0, 0x4) and poll["utilization"] in ([11, 1], [12, 2])
    assert [p["name"] for p in synthetic["phases"]] == ["quiet", "busy"]
    assert synthetic["phases"][0]["end_poll"] < synthetic["phases"][1]["start_poll"]


@pytest.mark.parametrize("index", [0, 1])
def test_phase_markers_and_gpm_metrics(synthetic, index):
    phase, polls = synthetic["phases"][index], synthetic["polls"]
    first, last = polls[phase["start_poll"]], polls[phase["end_poll"]]
    assert first["perf"] <= phase["start"]["perf"] <= phase["end"]["perf"] <= last["perf"]
    assert first["time"] <= phase["start"]["time"] <= phase["end"]["time"] <= last["time"]
    assert phase["workload"].startswith("synthetic")
    values = (QUIET_GPM, BUSY_GPM)[index]
    assert phase["gpm"] == {"metrics": {
        str(i): {"value": values[i], "nvmlReturn": pynvml.NVML_SUCCESS} if i in values
        else {"value": 0.0, "nvmlReturn": NOT_SUPPORTED} for i in GPM_METRIC_IDS}}


def test_util_reads_follow_the_samplers_protocol(synthetic):
    """A phase's start poll reads the whole buffer (last=0), as Sampler.start(); every other read asks for
    what is newer than the newest sample seen, as its drain; nothing new is a recorded NOT_FOUND."""
    starts = {phase["start_poll"] for phase in synthetic["phases"]}
    newest = 0
    for i, poll in enumerate(synthetic["polls"]):
        answer = poll["util_samples"]
        assert answer["last"] == (0 if i in starts else newest)
        newest = max([newest, *(ts for ts, _ in answer.get("samples", []))])
    answers = [poll["util_samples"] for poll in synthetic["polls"]]
    assert any(a.get("error") == NOT_FOUND for a in answers)
    assert all(a["value_type"] == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT for a in answers if "samples" in a)
    assert newest > T0


def test_record_joins_its_thread_frees_gpm_and_tears_down_also_when_a_phase_fails():
    nvml, _ = synthetic_gpu()
    before = threading.active_count()
    record(nvml, GPU, [Phase("only", lambda: None)], poll_s=POLL_S)
    assert threading.active_count() == before and not trace_threads()
    done = []

    def fail():
        raise ValueError("workload failed")

    phases = [Phase("ok", lambda: None, teardown=lambda: done.append("ok")),
              Phase("bad", fail, teardown=lambda: done.append("bad")),
              Phase("never", lambda: None, setup=lambda: done.append("never"))]
    with pytest.raises(ValueError, match="workload failed"):
        record(nvml, GPU, phases, poll_s=POLL_S)
    assert done == ["ok", "bad"]
    assert threading.active_count() == before and not trace_threads()
    assert nvml.gpm_live == {}


@pytest.mark.parametrize("gpm_call", ["nvmlGpmSampleGet", "nvmlGpmMetricsGet"])
def test_nvml_errors_are_recorded_not_raised(gpm_call):
    nvml, driver = synthetic_gpu()
    for name in ("nvmlDeviceGetPowerUsage", "nvmlDeviceGetUtilizationRates"):
        nvml.errors[name] = NOT_SUPPORTED
    nvml.errors["nvmlDeviceGetSamples"] = UNKNOWN
    nvml.errors["nvmlSystemGetDriverVersion"] = UNKNOWN
    nvml.errors[gpm_call] = UNKNOWN
    trace = record(nvml, GPU, [synthetic_phase(driver, "only", 50, BUSY_GPM)], poll_s=POLL_S)
    validate(trace)
    assert trace["device"]["driver_version"] == {"error": UNKNOWN}
    polls = trace["polls"]
    assert all(p["power_mw"] == p["utilization"] == {"error": NOT_SUPPORTED} for p in polls)
    assert all(p["util_samples"] == {"last": 0, "error": UNKNOWN} for p in polls)
    assert all(not is_error(p["sm_clock_mhz"]) for p in polls)
    assert trace["phases"][0]["gpm"] == {"error": {"call": gpm_call, "code": UNKNOWN}}
    assert nvml.gpm_live == {}


def test_gpm_unsupported_is_recorded_as_null():
    nvml, driver = synthetic_gpu(gpm_supported=False)
    trace = record(nvml, GPU, [synthetic_phase(driver, "only", 50, {})], poll_s=POLL_S)
    assert trace["device"]["gpm_supported"] is False
    assert trace["phases"][0]["gpm"] is None
    assert "nvmlGpmSampleAlloc" not in nvml.calls


def test_a_failing_recorder_thread_is_raised_once_it_is_joined():
    nvml, _ = synthetic_gpu()
    broke = threading.Event()

    def break_in_the_thread():
        if threading.current_thread().name == "mfugap-trace":
            broke.set()
            raise ZeroDivisionError("recorder bug")

    nvml.hooks["nvmlDeviceGetPowerUsage"] = break_in_the_thread
    with pytest.raises(RuntimeError, match="recorder thread failed") as caught:
        record(nvml, GPU, [Phase("only", lambda: wait_for(broke.is_set))], poll_s=POLL_S)
    assert isinstance(caught.value.__cause__, ZeroDivisionError)
    assert not trace_threads()


def test_a_hung_nvml_call_is_an_error_not_a_hang(monkeypatch):
    monkeypatch.setattr(trace_module, "JOIN_TIMEOUT_S", 0.05)
    nvml, _ = synthetic_gpu()
    stuck, release = threading.Event(), threading.Event()

    def hang_in_the_thread():
        if threading.current_thread().name == "mfugap-trace":
            stuck.set()
            release.wait()

    nvml.hooks["nvmlDeviceGetPowerUsage"] = hang_in_the_thread
    try:
        with pytest.raises(RuntimeError, match=r"did not stop within 0\.05 s"):
            record(nvml, GPU, [Phase("only", lambda: wait_for(stuck.is_set))], poll_s=POLL_S)
        assert nvml.gpm_live == {}
    finally:
        release.set()
        for thread in trace_threads():
            thread.join()


def test_record_needs_distinct_phase_names_and_a_positive_poll():
    nvml, _ = synthetic_gpu()
    with pytest.raises(ValueError, match="distinct names"):
        record(nvml, GPU, [Phase("a", lambda: None), Phase("a", lambda: None)])
    with pytest.raises(ValueError, match="distinct names"):
        record(nvml, GPU, [])
    with pytest.raises(ValueError, match="poll_s"):
        record(nvml, GPU, [Phase("a", lambda: None)], poll_s=0)


# ---- phases through the harness contract ----

class Countdown(Workload):
    """Host stand-in for a kernel: each launch takes 1 ms on the fake device clock and is timestamped."""

    name = "countdown"
    precision = "fp32"

    def __init__(self, clock: FakeEvents, wrong: bool = False):
        self.params = {"n": 4}
        self.clock, self.wrong = clock, wrong
        self.buf = {}
        self.launched_at: list[float] = []
        self.torn_down_at: float | None = None

    def flops(self):
        return 0

    def min_bytes(self):
        return 0

    def footprint_bytes(self):
        return 0

    def setup(self, stream):
        self.buf["out"] = np.zeros(4)

    def poison(self):
        self.buf["out"][:] = np.nan

    def launch(self, stream):
        self.buf["out"][:] = 0.0 if self.wrong else np.arange(4)
        self.clock.launch()
        self.launched_at.append(time.perf_counter())

    def check(self):
        ok = np.array_equal(self.buf["out"], np.arange(4))
        return Check(ok=ok, detail="counts" if ok else "wrong counts")

    def teardown(self):
        super().teardown()
        self.torn_down_at = time.perf_counter()


def test_workload_phase_checks_and_warms_up_before_the_phase_and_tears_down_after(monkeypatch):
    monkeypatch.setattr(trace_module, "WARMUP_S", 0.005)
    clock, stream = FakeEvents(itertools.repeat(1.0)), FakeStream()
    workload = Countdown(clock)
    nvml, _ = synthetic_gpu()
    trace = record(nvml, GPU, [workload_phase("count", workload, stream, 0.02, clock=clock)], poll_s=POLL_S)
    phase = trace["phases"][0]
    start, end = phase["start"]["perf"], phase["end"]["perf"]
    before = [t for t in workload.launched_at if t < start]
    inside = [t for t in workload.launched_at if start <= t <= end]
    assert len(before) >= 3  # the checked launch and the warm-up's at least two
    assert len(inside) >= 1 and end - start >= 0.02
    assert len(before) + len(inside) == len(workload.launched_at)
    assert workload.torn_down_at > end
    # the check, and every launch after it, ran with the stream current, as in measure()
    assert stream.entered == len(workload.launched_at) and stream.depth == 0
    assert phase["workload"] == "countdown n=4"


def test_a_workload_that_fails_its_check_stops_the_recording(monkeypatch):
    clock = FakeEvents(itertools.repeat(1.0))
    workload = Countdown(clock, wrong=True)
    nvml, _ = synthetic_gpu()
    with pytest.raises(TraceError, match="phase count: countdown n=4 failed its check: wrong counts"):
        record(nvml, GPU, [workload_phase("count", workload, FakeStream(), 0.02, clock=clock)], poll_s=POLL_S)
    assert workload.torn_down_at is not None and not trace_threads()


def test_gpu_phases_are_idle_one_spinning_block_and_a_bf16_gemm(fake_cupy):
    phases = gpu_phases(FakeStream(), 1.5)
    assert [p.name for p in phases] == [IDLE_PHASE, SPIN_PHASE, GEMM_PHASE]
    assert [p.workload for p in phases] == ["nothing launched", "spin blocks=1 ms=20.0",
                                            "cuBLAS bf16 8192x8192x8192"]


def test_gpu_code_is_imported_only_when_recording():
    code = ("import sys, mfugap.trace; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cupy', 'numba') "
            "or m.startswith('mfugap.kernels')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# ---- files ----

def test_write_then_load_gives_the_trace_back_and_never_overwrites(tmp_path, synthetic):
    path = write(synthetic, tmp_path / "new" / "trace.json")
    assert load(path) == synthetic
    lines = path.read_text().splitlines()
    assert sum(line.startswith('  {"time":') for line in lines) == len(synthetic["polls"])  # one a line
    with pytest.raises(TraceError, match="exists; a trace is never overwritten"):
        write({**synthetic, "poll_s": 1.0}, path)
    assert load(path)["poll_s"] == POLL_S
    assert [p.name for p in path.parent.iterdir()] == ["trace.json"]  # no temporary file left


def test_an_invalid_trace_is_not_written(tmp_path, synthetic):
    with pytest.raises(TraceError, match="not written: phases must be a non-empty list"):
        write({**synthetic, "phases": []}, tmp_path / "t.json")
    assert list(tmp_path.iterdir()) == []


def _set(path, value):
    """A change to a trace: assign `value` at the key path."""
    def change(trace):
        target = trace
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


BROKEN = {
    "format": (_set(["format"], "other"), "format is 'other', not 'mfugap-nvml-trace'"),
    "version": (_set(["version"], 2), "version 2; this mfugap reads version 1"),
    "poll_s": (_set(["poll_s"], 0), "poll_s must be a positive number"),
    "device": (lambda t: t["device"].pop("name"), "device needs name, pci_device_id"),
    "sample": (_set(["polls", 1, "util_samples"], {"last": 0, "value_type": 1, "samples": [[1]]}),
               "polls[1].util_samples: each sample must be [timestamp_us, value]"),
    "samples": (_set(["polls", 1, "util_samples"], {"samples": []}),
                "polls[1].util_samples needs an integer last"),
    "power": (_set(["polls", 2, "power_mw"], "high"), "polls[2].power_mw must be an integer or an error"),
    "error": (_set(["polls", 2, "power_mw"], {"error": "bad"}), "polls[2].power_mw: an error answer needs"),
    "utilization": (_set(["polls", 0, "utilization"], [1]), "polls[0].utilization must be [gpu, memory]"),
    "missing": (lambda t: t["polls"][3].pop("sm_clock_mhz"), "polls[3] has no sm_clock_mhz"),
    "order": (lambda t: t["polls"].reverse(), "polls are not in time order"),
    "poll index": (lambda t: t["phases"][1].update(end_poll=len(t["polls"])),
                   "phases[1]: start_poll and end_poll must be indices"),
    "backwards": (lambda t: t["phases"][0].update(end=t["phases"][0]["start"], start=t["phases"][0]["end"]),
                  "phases[0] ends before it starts"),
    "name": (_set(["phases", 1, "name"], "quiet"), "phase names repeat"),
    "gpm": (_set(["phases", 0, "gpm"], {"metrics": {"2": {"value": "x", "nvmlReturn": 0}}}),
            "phases[0].gpm.metrics values need a number"),
    "gpm error": (_set(["phases", 0, "gpm"], {"error": {"code": 1}}), "phases[0].gpm.error needs a call"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_load_names_the_file_and_the_problem_on_one_line(tmp_path, synthetic, case):
    change, problem = BROKEN[case]
    broken = copy.deepcopy(synthetic)
    change(broken)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(TraceError) as caught:
        load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and problem in message, message
    assert "\n" not in message


@pytest.mark.parametrize(("text", "problem"), [
    (None, "cannot read: No such file or directory"),
    ("{not json", "not JSON: Expecting property name"),
    ("[1, 2]", "not a JSON object"),
])
def test_load_unreadable_files(tmp_path, text, problem):
    path = tmp_path / "trace.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(TraceError, match="^" + str(path) + ": " + problem):
        load(path)


def test_default_path_is_in_the_checkouts_traces_folder():
    path = default_path("NVIDIA Some GPU 80GB", "570.86.15")
    assert path == TRACES_DIR / "nvidia-some-gpu-80gb-570.86.15.json"
    assert default_path("GPU", None).name == "gpu-unknown-driver.json"


# ---- summary ----

def test_summary_per_phase(synthetic):
    rows = {row["phase"]: row for row in summarize(synthetic)}
    assert list(rows) == ["quiet", "busy"]
    for phase in synthetic["phases"]:
        row, polls = rows[phase["name"]], phase_polls(synthetic, phase["name"])
        samples = phase_samples(synthetic, phase["name"])
        assert row["seconds"] == pytest.approx(phase["end"]["perf"] - phase["start"]["perf"])
        assert row["util_samples"] == len(samples) >= 4
        assert row["util_pct"] == pytest.approx(statistics.fmean(v for _, v in samples))
        assert row["sm_clock_mhz"] == pytest.approx(statistics.fmean(p["sm_clock_mhz"] for p in polls))
        assert row["power_w"] == pytest.approx(statistics.fmean(p["power_mw"] for p in polls) / 1000)
    assert (rows["quiet"]["gpm_sm_util_pct"], rows["busy"]["gpm_sm_util_pct"]) == (QUIET_GPM[2], BUSY_GPM[2])
    text = summary_text(synthetic)
    assert "quiet" in text and "busy" in text and "GPM SM util %" in text
    assert f"NVML util sample period (median): 0.100 s; {len(synthetic['polls'])} polls" in text


# ---- replay through the Sampler ----

def replay(trace: dict, phase: str):
    """Run a Sampler over the replayed phase: the phase's samples arrive inside the window, every recorded
    poll of a series that never failed is served at least once, GPM samples are far enough apart."""
    nvml = init_nvml(FakeNvml.from_trace(trace, phase))
    polls = phase_polls(trace, phase)
    # a series stops at its first error (as the Sampler's do): wait only on those that never failed
    steady = [name for name, key in SERIES.items() if not any(is_error(p[key]) for p in polls)]
    with Sampler(nvml, GPU, poll_s=0.002) as sampler:
        nvml.play()
        wait_for(lambda: all(len(nvml.returned.get(name, [])) >= len(polls) for name in steady))
        time.sleep(GPM_MIN_INTERVAL_S + 0.01)
    return sampler.stats, nvml


def expected_window(trace: dict, name: str) -> list[int]:
    """The util values a Sampler over this phase should average, worked out from the raw polls: newer than
    the newest sample at the phase's start, seen by its end, less the first (it straddles the start)."""
    phase = next(p for p in trace["phases"] if p["name"] == name)
    polls = trace["polls"][phase["start_poll"]: phase["end_poll"] + 1]
    marker = max((ts for ts, _ in polls[0]["util_samples"].get("samples", [])), default=0)
    later = {ts: v for poll in polls[1:] for ts, v in poll["util_samples"].get("samples", []) if ts > marker}
    return [value for _, value in sorted(later.items())][1:]


def check_replay(trace: dict, name: str):
    """The Sampler's numbers over a replayed phase are the phase's recorded ones; returns its stats."""
    stats, nvml = replay(trace, name)
    inside = expected_window(trace, name)
    assert stats.util_samples == len(inside)
    assert stats.gpu_util_pct == (pytest.approx(statistics.fmean(inside)) if inside else None)
    assert [v for _, v in phase_samples(trace, name)] == inside
    phase = next(p for p in trace["phases"] if p["name"] == name)
    metrics = (phase["gpm"] or {}).get("metrics", {})
    assert stats.gpm == {key: metrics[str(i)]["value"] if metrics.get(str(i), {}).get("nvmlReturn") == 0
                         else None for key, i in GPM_METRICS.items()}
    polls = phase_polls(trace, name)
    for series, key in SERIES.items():
        served = nvml.returned.get(series, [])
        recorded = [p[key][0] if key == "utilization" else p[key] for p in polls]
        if not any(is_error(p[key]) for p in polls):
            assert len(served) >= len(polls)
            assert served == [recorded[i % len(recorded)] for i in range(len(served))], series
    def served_mean(series):
        values = nvml.returned.get(series)
        return statistics.fmean(values) if values else None

    power_mw = served_mean("nvmlDeviceGetPowerUsage")
    assert stats.sm_clock_mhz == served_mean("nvmlDeviceGetClockInfo")
    assert stats.power_w == (pytest.approx(power_mw / 1000) if power_mw is not None else None)
    assert stats.mem_util_pct == served_mean("util_mem")
    reasons = nvml.returned.get("clock_event_reasons", [])
    assert stats.clock_event_reasons == functools.reduce(operator.or_, reasons, 0)
    return stats


@pytest.mark.parametrize("name", ["quiet", "busy"])
def test_replayed_phase_gives_the_sampler_its_samples_gpm_clock_and_power(synthetic, name):
    stats = check_replay(synthetic, name)
    found = phase_polls(synthetic, name)[0]["util_samples"].get("samples")
    assert stats.util_samples >= 4
    # the first phase began before the synthetic driver's first sample, as right after a driver load
    assert stats.util_note == (None if found else EMPTY_BUFFER_NOTE)
    assert stats.gpm["sm_util_pct"] == (QUIET_GPM, BUSY_GPM)[name == "busy"][2]
    assert stats.gpm["fp64_util_pct"] is None  # NOT_SUPPORTED when recorded
    assert stats.gpm_note.startswith("GPM metrics not available:") and "fp64_util_pct" in stats.gpm_note
    assert stats.sm_clock_mhz >= 1000 and stats.power_w >= 100


def test_replay_serves_the_recorded_errors():
    nvml, driver = synthetic_gpu()
    nvml.errors["nvmlDeviceGetPowerUsage"] = NOT_SUPPORTED
    nvml.errors["nvmlDeviceGetSamples"] = UNKNOWN
    nvml.errors["nvmlGpmMetricsGet"] = UNKNOWN
    trace = record(nvml, GPU, [synthetic_phase(driver, "only", 50, BUSY_GPM)], poll_s=POLL_S)
    stats = check_replay(trace, "only")
    assert stats.power_w is None and stats.sm_clock_mhz is not None
    assert stats.gpu_util_pct is None and stats.util_note == "nvmlDeviceGetSamples failed: Unknown Error"
    assert stats.gpm_note == "GPM failed: Unknown Error"


def test_replay_of_a_gpu_without_gpm():
    nvml, driver = synthetic_gpu(gpm_supported=False)
    trace = record(nvml, GPU, [synthetic_phase(driver, "only", 50, {})], poll_s=POLL_S)
    stats = check_replay(trace, "only")
    assert stats.gpm_note == GPM_UNSUPPORTED_NOTE and stats.gpu_util_pct is not None


def test_round_trip_record_json_load_replay(tmp_path):
    trace = record_synthetic(*synthetic_gpu())
    loaded = load(write(trace, tmp_path / "synthetic.json"))
    stats = check_replay(loaded, "busy")
    assert stats.gpu_util_pct == pytest.approx(statistics.fmean(expected_window(trace, "busy")))
    assert stats.gpm["tensor_util_pct"] == BUSY_GPM[5]


def test_replay_starts_with_the_buffer_the_phase_found(synthetic):
    nvml = FakeNvml.from_trace(synthetic, "busy")
    start = synthetic["polls"][synthetic["phases"][1]["start_poll"]]
    assert nvml.gpu.util_samples == [tuple(s) for s in start["util_samples"]["samples"]]
    newest = max(ts for ts, _ in nvml.gpu.util_samples)
    assert nvml.pending_samples and all(ts > newest for ts, _ in nvml.pending_samples)
    assert (nvml.gpu.name, nvml.driver_version) == (SYNTHETIC_NAME, "0.0.synthetic")


# ---- CLI ----

def test_cli_trace_without_gpu_says_why_and_exits_3(monkeypatch, capsys):
    monkeypatch.setattr("mfugap.device.gpu_unavailable_reason",
                        lambda *a, **k: NoGpuError("no-driver", "NVIDIA driver not found"))
    assert cli.main(["trace"]) == cli.EXIT_NO_GPU
    assert capsys.readouterr().err == "mfugap trace: no GPU visible: NVIDIA driver not found\n"


def _fake_gpu_for_the_cli(monkeypatch, device=None):
    nvml, driver = synthetic_gpu()
    device = device or discover(0, nvml=nvml, cuda_props={"major": 9, "minor": 0, "multiProcessorCount": 2})
    monkeypatch.setattr("mfugap.device.gpu_unavailable_reason", lambda *a, **k: None)
    monkeypatch.setattr(trace_module, "open_gpu", lambda: (nvml, device, FakeStream()))
    phases = [synthetic_phase(driver, IDLE_PHASE, 10, QUIET_GPM),
              synthetic_phase(driver, SPIN_PHASE, 90, BUSY_GPM)]
    monkeypatch.setattr(trace_module, "gpu_phases", lambda stream, seconds: phases)


def test_cli_trace_records_prints_a_summary_and_never_overwrites(tmp_path, monkeypatch, capsys):
    _fake_gpu_for_the_cli(monkeypatch)
    out = tmp_path / "traces" / "synthetic.json"
    assert cli.main(["trace", "--out", str(out), "--seconds", "0.5"]) == cli.EXIT_OK
    captured = capsys.readouterr()
    trace = load(out)
    assert [p["name"] for p in trace["phases"]] == [IDLE_PHASE, SPIN_PHASE]
    assert SPIN_PHASE in captured.out and "sample period" in captured.out
    assert captured.out.rstrip().endswith(f"mfugap trace: wrote {out}")
    assert cli.main(["trace", "--out", str(out)]) == cli.EXIT_USAGE
    assert "exists and is never overwritten" in capsys.readouterr().err
    assert load(out) == trace


def test_cli_trace_refuses_an_out_under_a_file_before_recording(tmp_path, monkeypatch, capsys):
    _fake_gpu_for_the_cli(monkeypatch)
    (tmp_path / "afile").write_text("x")
    assert cli.main(["trace", "--out", str(tmp_path / "afile" / "t.json")]) == cli.EXIT_USAGE
    assert f"{tmp_path / 'afile'} is a file, not a folder" in capsys.readouterr().err


def test_cli_trace_keeps_the_summary_when_the_write_fails(tmp_path, monkeypatch, capsys):
    import errno

    def disk_full(candidates, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    _fake_gpu_for_the_cli(monkeypatch)
    monkeypatch.setattr(trace_module, "write_new", disk_full)
    assert cli.main(["trace", "--out", str(tmp_path / "t.json"), "--seconds", "0.5"]) == cli.EXIT_FAILED
    captured = capsys.readouterr()
    assert SPIN_PHASE in captured.out and "sample period" in captured.out  # what was seen is printed
    assert captured.err.splitlines()[-1] == (f"mfugap trace: {tmp_path / 't.json'}: not written: "
                                             "No space left on device")


def test_cli_trace_refuses_a_mig_instance(tmp_path, monkeypatch, capsys):
    mig = SimpleNamespace(is_mig=True, name="GPU MIG 1g.10gb", driver_version="1")
    _fake_gpu_for_the_cli(monkeypatch, mig)
    assert cli.main(["trace", "--out", str(tmp_path / "t.json")]) == cli.EXIT_USAGE
    assert "MIG instance" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seconds", ["0.1", "-1", "nan", "soon"])
def test_cli_trace_needs_phases_of_half_a_second_or_more(seconds, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["trace", "--seconds", seconds])
    assert exit_info.value.code == cli.EXIT_USAGE
    assert "needs a number of seconds >= 0.5" in capsys.readouterr().err


# ---- real traces (committed by a session with a GPU) ----

real_traces = pytest.mark.parametrize("path", REAL_TRACES or [pytest.param(None, marks=pytest.mark.skip(
    reason="no real GPU trace in tests/data/traces yet: run `mfugap trace` on a GPU and commit the file"))],
    ids=lambda path: path.name if path else "none")


@real_traces
def test_real_trace_spin_reads_busy_while_gpm_sees_one_sm(path):
    trace = load(path)
    stats = check_replay(trace, SPIN_PHASE)
    assert stats.util_samples > 0, stats.util_note
    assert stats.gpu_util_pct >= 90  # one block spinning back to back: a kernel runs in every sample period
    if trace["device"]["gpm_supported"] is True:
        assert stats.gpm["sm_util_pct"] < 10  # one SM of many
        gemm = {row["phase"]: row for row in summarize(trace)}[GEMM_PHASE]
        assert gemm["gpm_sm_util_pct"] > stats.gpm["sm_util_pct"]


@real_traces
def test_real_trace_replays_every_phase_through_the_sampler(path):
    trace = load(path)
    assert [p["name"] for p in trace["phases"]] == [IDLE_PHASE, SPIN_PHASE, GEMM_PHASE]
    for phase in trace["phases"]:
        stats = check_replay(trace, phase["name"])
        assert stats.util_note is None or "failed" not in stats.util_note, stats.util_note
        if trace["device"]["gpm_supported"] is True:  # which other metrics a GPU offers varies by model
            assert stats.gpm["sm_util_pct"] is not None, stats.gpm_note
