"""Recorded NVML traces: what a real GPU's NVML answered while known work ran, replayable in tests.

`mfugap trace` records one on a GPU (idle, one spinning block, a bf16 GEMM) and writes it under
tests/data/traces/; tests/fake_nvml.py (FakeNvml.from_trace) replays one phase of it through the Sampler,
so the NVML-facing code is tested against a driver's real answers, not only hand-written ones.

Format (JSON; FORMAT and VERSION below). An NVML answer is stored as NVML returned it (MHz, mW, percent,
NVML's microsecond timestamps); a call that raised NVMLError is stored as {"error": <nvmlReturn code>}.

    {"format": "mfugap-nvml-trace", "version": 1, "recorded_utc": "2025-01-31T12:00:00+00:00",
     "mfugap": "0.1.0", "poll_s": 0.05,
     "device": {                            # identity: each a value or {"error": code}
        "name": str,                        # nvmlDeviceGetName
        "pci_device_id": int,               # nvmlDeviceGetPciInfo().pciDeviceId: device id << 16 | vendor
        "driver_version": str,              # nvmlSystemGetDriverVersion
        "cuda_driver_version": int,         # nvmlSystemGetCudaDriverVersion
        "mig_mode": [current, pending],     # nvmlDeviceGetMigMode (NOT_SUPPORTED: a GPU without MIG)
        "gpm_supported": bool,              # nvmlGpmQueryDeviceSupport().isSupportedDevice
        "sm_clock_max_mhz": int,            # nvmlDeviceGetMaxClockInfo(NVML_CLOCK_SM)
        "power_limit_mw": int},             # nvmlDeviceGetEnforcedPowerLimit
     "phases": [{                           # in the order they ran
        "name": str, "workload": str,       # what ran on the GPU
        "start": {"time": float, "perf": float},  # host time.time() and time.perf_counter() just before
        "end": {"time": float, "perf": float},    # the phase's work began, and after it had finished
        "start_poll": int, "end_poll": int, # indices into polls: the poll just before start, just after end
        "gpm": null                         # GPM not supported on this GPU
               | {"metrics": {"<NVML_GPM_METRIC_* id>": {"value": float, "nvmlReturn": int}}}
               | {"error": {"call": str, "code": int}}}],   # an NVML GPM call failed
     "polls": [{                            # in time order: every poll_s, and at each phase's start and end
        "time": float, "perf": float,       # host clocks when the poll began
        "util_samples": {"last": int,       # nvmlDeviceGetSamples(h, NVML_GPU_UTILIZATION_SAMPLES, last)
                         "value_type": int, "samples": [[timeStamp_us, sampleValue.uiVal], ...]}
                        | {"last": int, "error": code},   # NOT_FOUND: no sample newer than `last`
        "sm_clock_mhz": int,                # nvmlDeviceGetClockInfo(h, NVML_CLOCK_SM)
        "power_mw": int,                    # nvmlDeviceGetPowerUsage
        "clock_event_reasons": int,         # nvmlDeviceGetCurrentClocksEventReasons (bit mask)
        "utilization": [gpu, memory]}]}     # nvmlDeviceGetUtilizationRates

The calls mirror the Sampler's, so a phase replays through it: the start poll reads the whole util buffer
(last=0) as Sampler.start() does, later polls read what is newer than the newest sample seen, as its
drain does, and GPM is one sample before and one after the phase, as around the Sampler's window.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tabulate import tabulate

from mfugap import __version__
from mfugap.files import checkout_dir, write_new
from mfugap.results import gpu_slug
from mfugap.sampler import GPM_METRICS, gpm_request

if TYPE_CHECKING:
    from mfugap.device import DeviceInfo
    from mfugap.timing import EventClock
    from mfugap.workload import Workload

FORMAT = "mfugap-nvml-trace"
VERSION = 1
# NVML_GPM_METRIC_* 1..13, every percentage metric: a superset of the Sampler's GPM_METRICS, so a trace
# also answers for metrics the Sampler may read later (HMMA/DFMA/DMMA/IMMA tensor pipes, integer).
GPM_METRIC_IDS = tuple(range(1, 14))
DEVICE_KEYS = ("name", "pci_device_id", "driver_version", "cuda_driver_version", "mig_mode", "gpm_supported",
               "sm_clock_max_mhz", "power_limit_mw")
POLL_KEYS = ("sm_clock_mhz", "power_mw", "clock_event_reasons", "utilization")
IDLE_PHASE, SPIN_PHASE, GEMM_PHASE = "idle", "spin_one_block", "bf16_gemm"
WARMUP_S = 0.3  # compilation, cuBLAS handles and the clock ramp stay out of a phase
JOIN_TIMEOUT_S = 5.0  # longer than any healthy NVML call; a recorder still busy then is stuck


class TraceError(ValueError):
    """A trace that cannot be read, written or recorded. The message is one line."""


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Phase:
    """Work that keeps the GPU in one state. `run` returns when the phase is over and its GPU work has
    finished; `setup` and `teardown` run outside the phase's markers (allocation, compilation, warm-up)."""

    name: str
    run: Callable[[], None]
    workload: str = ""
    setup: Callable[[], None] = _nothing
    teardown: Callable[[], None] = _nothing


# ---- NVML answers ----

def is_error(answer: Any) -> bool:
    return isinstance(answer, dict) and "error" in answer


def answer_value(answer: Any, default: Any = None) -> Any:
    """The value of a recorded answer, or `default` where the call failed."""
    return default if is_error(answer) else answer


def _answer(nvml: Any, query: Callable[[], Any]) -> Any:
    try:
        return query()
    except nvml.NVMLError as err:
        return {"error": err.value}


class _CallFailed(Exception):
    def __init__(self, call: str, code: int):
        super().__init__(call, code)
        self.record = {"error": {"call": call, "code": code}}


def _call(nvml: Any, name: str, *args: Any) -> Any:
    """Call NVML function `name`; a failure names the call, since GPM takes several steps."""
    try:
        return getattr(nvml, name)(*args)
    except nvml.NVMLError as err:
        raise _CallFailed(name, err.value) from err


def _device(nvml: Any, handle: Any) -> dict:
    queries = {
        "name": lambda: nvml.nvmlDeviceGetName(handle),
        "pci_device_id": lambda: nvml.nvmlDeviceGetPciInfo(handle).pciDeviceId,
        "driver_version": nvml.nvmlSystemGetDriverVersion,
        "cuda_driver_version": nvml.nvmlSystemGetCudaDriverVersion,
        "mig_mode": lambda: list(nvml.nvmlDeviceGetMigMode(handle)),
        "gpm_supported": lambda: bool(nvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice),
        "sm_clock_max_mhz": lambda: nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM),
        "power_limit_mw": lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle),
    }
    return {key: _answer(nvml, query) for key, query in queries.items()}


def _now() -> dict:
    return {"time": time.time(), "perf": time.perf_counter()}


# ---- recording ----

class _Poller:
    """Every query the Sampler polls, asked together and appended to `polls`. Both the recorder thread
    and the phase markers poll; the lock keeps the polls in time order and `_newest` consistent."""

    def __init__(self, nvml: Any, handle: Any):
        self._nvml = nvml
        self._handle = handle
        # pynvml renamed ...ThrottleReasons to ...EventReasons; older releases have only the first
        self._reasons = (getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
                         or nvml.nvmlDeviceGetCurrentClocksThrottleReasons)
        self._lock = threading.Lock()
        self._newest = 0  # newest util sample timestamp seen: what the next read asks to go beyond
        self.polls: list[dict] = []

    def poll(self, *, whole_buffer: bool = False) -> int:
        """Poll once and return the poll's index; `whole_buffer` reads the util buffer from 0."""
        # a timeout, not a wait: with the thread stuck in an NVML call, the caller gets an error, not a hang
        if not self._lock.acquire(timeout=JOIN_TIMEOUT_S):
            raise RuntimeError(f"an NVML call of the trace recorder has not returned in {JOIN_TIMEOUT_S} s")
        try:
            self.polls.append(self._read(0 if whole_buffer else self._newest))
            return len(self.polls) - 1
        finally:
            self._lock.release()

    def _read(self, since: int) -> dict:
        nvml, handle = self._nvml, self._handle
        poll = {**_now(), "util_samples": self._samples(since)}
        poll["sm_clock_mhz"] = _answer(nvml, lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM))
        poll["power_mw"] = _answer(nvml, lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        poll["clock_event_reasons"] = _answer(nvml, lambda: self._reasons(handle))
        poll["utilization"] = _answer(nvml, lambda: _rates(nvml, handle))
        return poll

    def _samples(self, since: int) -> dict:
        nvml = self._nvml
        try:
            value_type, samples = nvml.nvmlDeviceGetSamples(self._handle, nvml.NVML_GPU_UTILIZATION_SAMPLES,
                                                            since)
        except nvml.NVMLError as err:
            return {"last": since, "error": err.value}
        pairs = [[sample.timeStamp, sample.sampleValue.uiVal] for sample in samples]
        self._newest = max([self._newest, *(ts for ts, _ in pairs)])
        return {"last": since, "value_type": value_type, "samples": pairs}


def _rates(nvml: Any, handle: Any) -> list[int]:
    rates = nvml.nvmlDeviceGetUtilizationRates(handle)
    return [rates.gpu, rates.memory]


@contextlib.contextmanager
def _polling(poller: _Poller, poll_s: float) -> Iterator[None]:
    """Poll every `poll_s` on a thread while the body runs; the thread is joined whatever happens."""
    stop = threading.Event()
    failures: list[Exception] = []

    def run() -> None:
        try:
            while not stop.wait(poll_s):
                poller.poll()
        except Exception as err:  # raised below: a dead recorder must not pass for a quiet GPU
            failures.append(err)

    thread = threading.Thread(target=run, name="mfugap-trace", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(JOIN_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError(f"trace recorder thread did not stop within {JOIN_TIMEOUT_S} s "
                               f"(NVML call hung?)")
    if failures:
        raise RuntimeError("trace recorder thread failed") from failures[0]


class _GpmPhase:
    """GPM metrics of one phase: one sample before it and one after, as the Sampler takes around its
    window. `record` ends as the trace's phase "gpm" object; every sample is freed in free()."""

    def __init__(self, nvml: Any, handle: Any):
        self._nvml = nvml
        self._handle = handle
        self._samples: list = []
        self.record: dict = {}

    def begin(self) -> None:
        try:
            self._take()
        except _CallFailed as failed:
            self.record = failed.record

    def finish(self) -> None:
        if self.record:  # the first sample failed: there is nothing to take a difference from
            return
        try:
            self.record = {"metrics": self._metrics(self._samples[0], self._take())}
        except _CallFailed as failed:
            self.record = failed.record

    def free(self) -> None:
        for sample in self._samples:
            # a failed free leaves nothing to do, and the numbers are already read
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlGpmSampleFree(sample)
        self._samples.clear()

    def _take(self) -> Any:
        sample = _call(self._nvml, "nvmlGpmSampleAlloc")
        self._samples.append(sample)
        _call(self._nvml, "nvmlGpmSampleGet", self._handle, sample)
        return sample

    def _metrics(self, first: Any, second: Any) -> dict:
        request = gpm_request(self._nvml, first, second, GPM_METRIC_IDS)
        _call(self._nvml, "nvmlGpmMetricsGet", request)
        answers = request.metrics[: len(GPM_METRIC_IDS)]
        return {str(metric_id): {"value": answer.value, "nvmlReturn": answer.nvmlReturn}
                for metric_id, answer in zip(GPM_METRIC_IDS, answers, strict=True)}


def _run_phase(nvml: Any, handle: Any, poller: _Poller, phase: Phase, gpm_supported: bool) -> dict:
    gpm = _GpmPhase(nvml, handle) if gpm_supported else None
    try:
        phase.setup()
        start_poll = poller.poll(whole_buffer=True)
        if gpm is not None:
            gpm.begin()
        start = _now()
        phase.run()
        end = _now()
        if gpm is not None:
            gpm.finish()
        end_poll = poller.poll()
    finally:
        if gpm is not None:
            gpm.free()
        phase.teardown()
    return {"name": phase.name, "workload": phase.workload, "start": start, "end": end,
            "start_poll": start_poll, "end_poll": end_poll, "gpm": gpm.record if gpm is not None else None}


def record(nvml: Any, handle: Any, phases: Sequence[Phase], poll_s: float = 0.05) -> dict:
    """Run `phases` one after another while a thread polls NVML every `poll_s`; return the trace.

    `nvml` is an initialized pynvml-like module, `handle` a whole GPU's. NVML errors are recorded as
    answers, never raised; an exception from a phase propagates once the thread is joined, the GPM
    samples freed and the phase torn down.
    """
    names = [phase.name for phase in phases]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"record needs phases with distinct names, got {names}")
    if not poll_s > 0:
        raise ValueError(f"poll_s must be positive, got {poll_s}")
    device = _device(nvml, handle)
    poller = _Poller(nvml, handle)
    recorded = []
    with _polling(poller, poll_s):
        for phase in phases:
            recorded.append(_run_phase(nvml, handle, poller, phase, device["gpm_supported"] is True))
    return {"format": FORMAT, "version": VERSION,
            "recorded_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "mfugap": __version__, "poll_s": poll_s, "device": device, "phases": recorded,
            "polls": poller.polls}


# ---- phases on a GPU (CuPy and the kernels are imported only here) ----

def idle_phase(seconds: float) -> Phase:
    return Phase(IDLE_PHASE, lambda: time.sleep(seconds), workload="nothing launched")


def workload_phase(name: str, workload: Workload, stream: Any, seconds: float,
                   clock: EventClock | None = None) -> Phase:
    """`workload` launched back to back on `stream` for `seconds`, through the harness: checked and
    warmed up before the phase starts, torn down after it ends. `clock` defaults to CUDA events."""
    from mfugap.measure import launcher, verify
    from mfugap.timing import CupyEvents, run_window, warm_up

    events = clock if clock is not None else CupyEvents(stream)
    launch = launcher(workload, stream)

    def setup() -> None:
        check = verify(workload, stream)
        if not check.ok:
            raise TraceError(f"phase {name}: {workload.label} failed its check: {check.detail}")
        warm_up(launch, events, warmup_s=WARMUP_S)

    def run() -> None:
        # run_window keeps the host a few launches ahead and returns when the last launch has finished
        run_window(launch, events, min_window_s=seconds, min_reps=1)

    return Phase(name, run, workload=workload.label, setup=setup, teardown=workload.teardown)


def gpu_phases(stream: Any, seconds: float) -> list[Phase]:
    """Idle, then one spinning block (busy for NVML, one SM for GPM), then a bf16 cuBLAS GEMM."""
    from mfugap.kernels import cublas_gemm, spin

    return [idle_phase(seconds),
            workload_phase(SPIN_PHASE, spin.Spin(blocks=1, ms=20.0), stream, seconds),
            workload_phase(GEMM_PHASE, cublas_gemm.CublasGemm(8192, 8192, 8192, "bf16"), stream, seconds)]


def open_gpu(index: int = 0) -> tuple[Any, DeviceInfo, Any]:
    """(nvml, device, stream) for CUDA device `index`. No catalog lookup: a GPU mfugap does not know yet
    is exactly what gets traced."""
    import cupy

    from mfugap.device import discover, init_nvml

    nvml = init_nvml()
    cupy.cuda.Device(index).use()
    return nvml, discover(index, nvml=nvml), cupy.cuda.Stream(non_blocking=True)


# ---- reading a trace ----

def find_phase(trace: dict, name: str) -> dict:
    for phase in trace["phases"]:
        if phase["name"] == name:
            return phase
    raise KeyError(f"no phase {name!r} in the trace; it has {[p['name'] for p in trace['phases']]}")


def phase_polls(trace: dict, name: str) -> list[dict]:
    """The polls from the phase's start poll to its end poll, both included."""
    phase = find_phase(trace, name)
    return trace["polls"][phase["start_poll"]: phase["end_poll"] + 1]


def util_samples(poll: dict) -> list[tuple[int, int]]:
    """The (timestamp_us, percent) samples one poll's nvmlDeviceGetSamples returned."""
    return [(ts, value) for ts, value in poll["util_samples"].get("samples", [])]


def phase_samples(trace: dict, name: str) -> list[tuple[int, int]]:
    """Util samples inside the phase, by the Sampler's rule: newer than the newest sample at its start,
    seen by its end, less the first one (its period began before the phase did)."""
    polls = phase_polls(trace, name)
    marker = max((ts for ts, _ in util_samples(polls[0])), default=0)
    new = {ts: value for poll in polls[1:] for ts, value in util_samples(poll) if ts > marker}
    return sorted(new.items())[1:]


def sample_period_s(trace: dict) -> float | None:
    """Median spacing of every distinct util sample timestamp in the trace: the driver's sample period."""
    stamps = sorted({ts for poll in trace["polls"] for ts, _ in util_samples(poll)})
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return statistics.median(gaps) / 1e6 if gaps else None


def _mean(values: list) -> float | None:
    return statistics.fmean(values) if values else None


def _polled(polls: list[dict], key: str) -> list:
    return [poll[key] for poll in polls if not is_error(poll[key])]


def _gpm_value(phase: dict, metric_id: int) -> float | None:
    metric = ((phase["gpm"] or {}).get("metrics") or {}).get(str(metric_id))
    return metric["value"] if metric is not None and metric["nvmlReturn"] == 0 else None  # 0: NVML_SUCCESS


def summarize(trace: dict) -> list[dict]:
    """One row per phase: its length, the util samples inside it and their mean, mean SM clock and power,
    and GPM SM utilization (None where GPM gave none)."""
    rows = []
    for phase in trace["phases"]:
        polls = phase_polls(trace, phase["name"])
        samples = phase_samples(trace, phase["name"])
        power = _mean(_polled(polls, "power_mw"))
        rows.append({"phase": phase["name"], "seconds": phase["end"]["perf"] - phase["start"]["perf"],
                     "util_samples": len(samples), "util_pct": _mean([value for _, value in samples]),
                     "sm_clock_mhz": _mean(_polled(polls, "sm_clock_mhz")),
                     "power_w": power / 1000 if power is not None else None,
                     "gpm_sm_util_pct": _gpm_value(phase, GPM_METRICS["sm_util_pct"])})
    return rows


def summary_text(trace: dict) -> str:
    headers = ["phase", "s", "util samples", "NVML util %", "SM clock MHz", "power W", "GPM SM util %"]
    table = tabulate([list(row.values()) for row in summarize(trace)], headers=headers, floatfmt=".1f",
                     missingval="-")
    period = sample_period_s(trace)
    period_text = f"{period:.3f} s" if period is not None else "unknown (fewer than two samples)"
    return f"{table}\nNVML util sample period (median): {period_text}; {len(trace['polls'])} polls"


# ---- validation, files ----

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _expect(condition: bool, problem: str) -> None:
    if not condition:
        raise TraceError(problem)


def _check_error(answer: Any, where: str) -> None:
    _expect(_is_int(answer.get("error")), f"{where}: an error answer needs an integer code")


def _check_clocks(clocks: Any, where: str) -> None:
    _expect(isinstance(clocks, dict) and _is_number(clocks.get("time")) and _is_number(clocks.get("perf")),
            f"{where} needs numbers time and perf")


def _check_samples(answer: Any, where: str) -> None:
    _expect(isinstance(answer, dict) and _is_int(answer.get("last")), f"{where} needs an integer last")
    if "error" in answer:
        _check_error(answer, where)
        return
    samples = answer.get("samples")
    _expect(_is_int(answer.get("value_type")) and isinstance(samples, list), f"{where}: samples missing")
    _expect(all(isinstance(s, list) and len(s) == 2 and all(map(_is_int, s)) for s in samples),
            f"{where}: each sample must be [timestamp_us, value]")


def _check_poll(poll: Any, where: str) -> None:
    _check_clocks(poll, where)
    _check_samples(poll.get("util_samples"), f"{where}.util_samples")
    for key in POLL_KEYS:
        _expect(key in poll, f"{where} has no {key}")
        answer = poll[key]
        if is_error(answer):
            _check_error(answer, f"{where}.{key}")
        elif key == "utilization":
            _expect(isinstance(answer, list) and len(answer) == 2 and all(map(_is_int, answer)),
                    f"{where}.utilization must be [gpu, memory]")
        else:
            _expect(_is_int(answer), f"{where}.{key} must be an integer or an error answer")


def _check_gpm(gpm: Any, where: str) -> None:
    if gpm is None:
        return
    _expect(isinstance(gpm, dict) and ("metrics" in gpm) != ("error" in gpm),
            f"{where} must be null, {{metrics: ...}} or {{error: ...}}")
    if "error" in gpm:
        error = gpm["error"]
        _expect(isinstance(error, dict) and isinstance(error.get("call"), str) and _is_int(error.get("code")),
                f"{where}.error needs a call name and an integer code")
        return
    metrics = gpm["metrics"]
    _expect(isinstance(metrics, dict) and all(key.isdigit() for key in metrics),
            f"{where}.metrics keys must be metric ids")
    _expect(all(isinstance(m, dict) and _is_number(m.get("value")) and _is_int(m.get("nvmlReturn"))
                for m in metrics.values()), f"{where}.metrics values need a number value and an nvmlReturn")


def _check_phase(phase: Any, where: str, n_polls: int) -> None:
    _expect(isinstance(phase, dict) and isinstance(phase.get("name"), str) and phase["name"],
            f"{where} needs a name")
    _expect(isinstance(phase.get("workload"), str), f"{where} needs a workload description")
    _check_clocks(phase.get("start"), f"{where}.start")
    _check_clocks(phase.get("end"), f"{where}.end")
    _expect(phase["start"]["perf"] <= phase["end"]["perf"], f"{where} ends before it starts")
    first, last = phase.get("start_poll"), phase.get("end_poll")
    _expect(_is_int(first) and _is_int(last) and 0 <= first < last < n_polls,
            f"{where}: start_poll and end_poll must be indices into polls, start_poll < end_poll")
    _check_gpm(phase.get("gpm"), f"{where}.gpm")


def validate(trace: Any) -> None:
    """Raise TraceError (one line, no file name) unless `trace` is a well-formed trace of this VERSION."""
    _expect(isinstance(trace, dict), "not a JSON object")
    _expect(trace.get("format") == FORMAT, f"format is {trace.get('format')!r}, not {FORMAT!r}")
    _expect(trace.get("version") == VERSION,
            f"version {trace.get('version')!r}; this mfugap reads version {VERSION}")
    _expect(_is_number(trace.get("poll_s")) and trace["poll_s"] > 0, "poll_s must be a positive number")
    device = trace.get("device")
    _expect(isinstance(device, dict) and all(key in device for key in DEVICE_KEYS),
            f"device needs {', '.join(DEVICE_KEYS)}")
    polls = trace.get("polls")
    _expect(isinstance(polls, list) and len(polls) >= 2, "polls must be a list of at least two polls")
    for i, poll in enumerate(polls):
        _check_poll(poll, f"polls[{i}]")
    _expect(all(a["perf"] <= b["perf"] for a, b in itertools.pairwise(polls)), "polls are not in time order")
    phases = trace.get("phases")
    _expect(isinstance(phases, list) and phases, "phases must be a non-empty list")
    for i, phase in enumerate(phases):
        _check_phase(phase, f"phases[{i}]", len(polls))
    names = [phase["name"] for phase in phases]
    _expect(len(set(names)) == len(names), f"phase names repeat: {names}")


def load(path: str | os.PathLike) -> dict:
    """Read and validate a trace file; TraceError names the file and the problem on one line."""
    path = Path(path)
    try:
        trace = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise TraceError(f"{path}: cannot read: {err.strerror or err}") from err
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
        raise TraceError(f"{path}: not JSON: {err}") from err
    try:
        validate(trace)
    except TraceError as err:
        raise TraceError(f"{path}: {err}") from None
    return trace


def to_text(trace: dict) -> str:
    """JSON with one poll per line: a committed trace reads well in a diff without tripling its size."""
    head = json.dumps({key: value for key, value in trace.items() if key != "polls"}, indent=1)
    polls = ",\n".join("  " + json.dumps(poll, separators=(",", ":")) for poll in trace["polls"])
    return head.removesuffix("\n}") + ',\n "polls": [\n' + polls + "\n ]\n}\n"


def write(trace: dict, path: str | os.PathLike) -> Path:
    """Write a valid trace to `path`, complete or not at all, never over an existing file."""
    path = Path(path)
    try:
        validate(trace)
    except TraceError as err:
        raise TraceError(f"{path}: not written: {err}") from None
    try:
        return write_new([path], to_text(trace))
    except FileExistsError:
        if path.exists():
            raise TraceError(f"{path}: exists; a trace is never overwritten") from None
        raise TraceError(f"{path}: not written: a file stands where a folder on its path should be") from None
    except OSError as err:  # a full disk, a read-only folder: said as it is
        raise TraceError(f"{path}: not written: {err.strerror or err}") from None


def traces_dir() -> Path:
    """tests/data/traces of the checkout mfugap runs from; ./tests/data/traces when installed elsewhere."""
    return checkout_dir("tests/data/traces")


def default_path(name: str, driver_version: str | None) -> Path:
    """traces_dir()/<gpu slug>-<driver>.json, e.g. nvidia-h100-80gb-hbm3-570.86.15.json."""
    slug = gpu_slug(f"{name}-{driver_version or 'unknown-driver'}")
    return traces_dir() / f"{slug}.json"
