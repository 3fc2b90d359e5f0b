"""Background NVML sampler over one measurement window: GPU-Util, clocks, power, throttling, GPM.

    with Sampler(nvml, info.handle, is_mig=info.is_mig, parent_handle=info.parent_handle,
                 gpu_instance_id=info.gpu_instance_id) as sampler:
        run_the_workload()
    row.update(sampler.stats.as_row_fields())

GPU-Util comes from NVML's own sample buffer (nvmlDeviceGetSamples), not from polling: each sample covers
one driver period (1/6 s to 1 s), and only samples whose period lies inside the window describe it. The
window is found from NVML timestamps: the newest sample that exists at start() is the marker, the first
sample after it straddles the start and is dropped, the rest are inside. NVML documents the timestamps as
CPU time in microseconds; where they read as this host's wall clock, a sample must also have begun its
period after start(), which drops a straddling sample the driver published late. GPM (Hopper and newer)
is read as the difference of two samples, one at start and one at stop.
"""
from __future__ import annotations

import contextlib
import itertools
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

# NVML_GPM_METRIC_* ids (tests check them against pynvml); literal here so the module imports without it.
GPM_METRICS: dict[str, int] = {
    "sm_util_pct": 2,  # SM_UTIL
    "sm_occupancy_pct": 3,  # SM_OCCUPANCY
    "tensor_util_pct": 5,  # ANY_TENSOR_UTIL
    "dram_util_pct": 10,  # DRAM_BW_UTIL
    "fp64_util_pct": 11,  # FP64_UTIL
    "fp32_util_pct": 12,  # FP32_UTIL
    "fp16_util_pct": 13,  # FP16_UTIL
}

DRAIN_EVERY_S = 0.5  # NVML keeps a short ring of util samples: read it long before it wraps
WALL_CLOCK_SLACK_US = 60_000_000  # timestamps this close to time.time() are taken as that clock
GPM_MIN_INTERVAL_S = 0.1  # NVML needs GPM samples more than 100 ms apart
JOIN_TIMEOUT_S = 5.0  # longer than any healthy NVML call; a thread still alive then is stuck

MIG_UTIL_NOTE = "NVML GPU utilization is not supported on MIG instances"
POLLED_UTIL_NOTE = "polled nvmlDeviceGetUtilizationRates (sample buffer not supported)"
EMPTY_BUFFER_NOTE = "NVML sample buffer was empty when the window started"
GPM_UNSUPPORTED_NOTE = "GPM not supported on this GPU (Hopper or newer needed)"


@dataclass
class WindowStats:
    duration_s: float
    gpu_util_pct: float | None
    util_samples: int
    util_note: str | None
    mem_util_pct: float | None
    sm_clock_mhz: float | None  # mean over polls
    power_w: float | None  # energy used / window time; the mean over polls where no energy counter
    clock_event_reasons: int | None  # OR of every mask polled; None when the query is unsupported
    other_processes: int | None  # compute processes besides this one, the most seen at start or stop
    gpm: dict[str, float | None]  # every GPM_METRICS key
    gpm_note: str | None
    polls: int
    overhead_pct: float  # sampler thread CPU time / window wall time, x100
    util_period_s: float | None  # median spacing of NVML util samples

    def as_row_fields(self) -> dict:
        """The result-row fields this window fills (see schema.ROW_FIELDS)."""
        return {
            "gpu_util_pct": self.gpu_util_pct,
            "util_samples": self.util_samples,
            "util_note": self.util_note,
            "mem_util_pct": self.mem_util_pct,
            "sm_util_pct": self.gpm["sm_util_pct"],
            "sm_occupancy_pct": self.gpm["sm_occupancy_pct"],
            "tensor_util_pct": self.gpm["tensor_util_pct"],
            "dram_util_pct": self.gpm["dram_util_pct"],
            "fp32_util_pct": self.gpm["fp32_util_pct"],
            "fp16_util_pct": self.gpm["fp16_util_pct"],
            "fp64_util_pct": self.gpm["fp64_util_pct"],
            "gpm_note": self.gpm_note,
            "sm_clock_mhz": self.sm_clock_mhz,
            "power_w": self.power_w,
            "clock_event_reasons": self.clock_event_reasons,
            "other_processes": self.other_processes,
            "sampler_overhead_pct": self.overhead_pct,
        }


def gpm_request(nvml: Any, first: Any, second: Any, metric_ids: Iterable[int]) -> Any:
    """The c_nvmlGpmMetricsGet_t asking for `metric_ids` between two GPM samples (metrics[i] answers
    the i-th id), ready for nvmlGpmMetricsGet."""
    ids = list(metric_ids)
    request = nvml.c_nvmlGpmMetricsGet_t()
    request.version = nvml.NVML_GPM_METRICS_GET_VERSION
    request.numMetrics = len(ids)
    request.sample1 = first
    request.sample2 = second
    for i, metric_id in enumerate(ids):
        request.metrics[i].metricId = metric_id
    return request


def _mean(values: list) -> float | None:
    return statistics.fmean(values) if values else None


def _first_known(*values: float | None) -> float | None:
    return next((value for value in values if value is not None), None)


def _join_notes(notes: list[str]) -> str | None:
    return "; ".join(notes) if notes else None


class _Series:
    """One NVML query, polled through the window or read at its start and stop. Its first failure ends
    it: NOT_SUPPORTED stays so. `more_errors` count as failures too."""

    def __init__(self, nvml: Any, read: Callable[[], Any], more_errors: tuple[type[Exception], ...] = ()):
        self._error_types = (nvml.NVMLError, *more_errors)
        self._read = read
        self.values: list = []
        self.error: str | None = None

    def poll(self) -> None:
        if self.error is None:
            try:
                self.values.append(self._read())
            except self._error_types as err:
                self.error = str(err)


def _energy_power_w(energy: _Series | None) -> float | None:
    """The mean power of exactly the window, from the board's energy counter read at start() and stop()
    as (mJ, time.monotonic()); None unless both readings were taken. nvmlDeviceGetPowerUsage, polled
    instead where there is no counter, is on Ampere and newer itself a trailing 1 s average, which mixes
    the second before a window (verification, warm-up) into it."""
    if energy is None or len(energy.values) != 2:
        return None
    (first_mj, first_s), (last_mj, last_s) = energy.values
    return (last_mj - first_mj) / 1e3 / (last_s - first_s) if last_s > first_s else None


def _most(series: _Series) -> int | None:
    return max(series.values) if series.values and series.error is None else None


class _UtilResult(NamedTuple):
    pct: float | None
    samples: int
    note: str | None
    period_s: float | None


class _UtilWindow:
    """NVML GPU-Util samples of one window, picked by NVML timestamps only."""

    def __init__(self, nvml: Any, handle: Any):
        self._nvml = nvml
        self._handle = handle
        self.mode = "buffer"  # "poll": no sample buffer on this GPU; "failed": the buffer query broke
        self.marker = 0
        self._start_us = 0  # time.time() at begin(), in microseconds
        self._last_ts = 0
        self._seen: dict[int, int] = {}  # timestamp (us) -> percent, every sample read
        self._notes: list[str] = []

    def _read(self, since: int) -> list | None:
        """New samples after `since`; None when there are none or the buffer cannot be read."""
        nvml = self._nvml
        try:
            _, samples = nvml.nvmlDeviceGetSamples(self._handle, nvml.NVML_GPU_UTILIZATION_SAMPLES, since)
        except nvml.NVMLError as err:
            if err.value == nvml.NVML_ERROR_NOT_SUPPORTED and since == 0:
                self.mode = "poll"
            elif err.value != nvml.NVML_ERROR_NOT_FOUND:  # NOT_FOUND: nothing new, not an error
                self.mode = "failed"
                self._notes.append(f"nvmlDeviceGetSamples failed: {err}")
            return None
        for sample in samples:
            self._seen[sample.timeStamp] = sample.sampleValue.uiVal
            self._last_ts = max(self._last_ts, sample.timeStamp)
        return samples

    def begin(self) -> None:
        self._start_us = time.time_ns() // 1000
        if self._read(0) is None and self.mode == "buffer":
            self._notes.append(EMPTY_BUFFER_NOTE)
        self.marker = self._last_ts

    def drain(self) -> None:
        if self.mode == "buffer":
            self._read(self._last_ts)

    def period_s(self) -> float | None:
        stamps = sorted(self._seen)
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        return statistics.median(gaps) / 1e6 if gaps else None

    def result(self, duration_s: float, rates: _Series) -> _UtilResult:
        if self.mode == "poll":
            polled = [gpu for gpu, _ in rates.values]
            failed = [f"nvmlDeviceGetUtilizationRates failed: {rates.error}"] if rates.error else []
            return _UtilResult(_mean(polled), len(polled), _join_notes([POLLED_UTIL_NOTE, *failed]), None)
        period = self.period_s()
        if self.mode == "failed":
            return _UtilResult(None, 0, _join_notes(self._notes), period)
        # the first sample after the marker began before the window: drop it
        inside = [(ts, value) for ts, value in sorted(self._seen.items()) if ts > self.marker][1:]
        if period is not None and abs(self._last_ts - time.time_ns() // 1000) < WALL_CLOCK_SLACK_US:
            inside = [(ts, value) for ts, value in inside if ts - period * 1e6 >= self._start_us]
        values = [value for _, value in inside]
        notes = list(self._notes)
        if not inside:
            period_text = f"~{period:.2f} s" if period is not None else "unknown"
            notes.append(f"no NVML utilization sample fell inside the {duration_s:.2f} s window "
                         f"(sample period {period_text})")
        return _UtilResult(_mean(values), len(values), _join_notes(notes), period)


class _GpmWindow:
    """Two GPM samples around the window, turned into the GPM_METRICS percentages."""

    def __init__(self, nvml: Any, handle: Any, *, enabled: bool, is_mig: bool, parent_handle: Any,
                 gpu_instance_id: int | None):
        self._nvml = nvml
        self._handle = handle
        self._enabled = enabled
        self._is_mig = is_mig
        self._parent = parent_handle
        self._gpu_instance_id = gpu_instance_id
        self._samples: list = []  # every allocated sample, freed in _free()
        self._first = None
        self._first_at = 0.0
        self.note: str | None = None

    def begin(self) -> None:
        if not self._enabled:
            self.note = "GPM sampling disabled"
            return
        if self._is_mig and (self._parent is None or self._gpu_instance_id is None):
            self.note = "GPM on a MIG instance needs parent_handle and gpu_instance_id"
            return
        try:
            # on MIG the parent GPU answers the support query and takes the per-instance sample
            support_handle = self._parent if self._is_mig else self._handle
            if not self._nvml.nvmlGpmQueryDeviceSupport(support_handle).isSupportedDevice:
                self.note = GPM_UNSUPPORTED_NOTE
                return
            self._first = self._take()
            self._first_at = time.monotonic()
        except self._nvml.NVMLError as err:
            self.note = self._error_note(err)
            self._free()

    def finish(self) -> tuple[dict[str, float | None], str | None]:
        """Take the second sample and compute the metrics; every sample is freed whatever happens."""
        values: dict[str, float | None] = dict.fromkeys(GPM_METRICS)
        try:
            if self._first is None:
                return values, self.note
            elapsed = time.monotonic() - self._first_at
            if elapsed <= GPM_MIN_INTERVAL_S:
                return values, (f"window too short for GPM: samples {elapsed:.3f} s apart, "
                                f"more than {GPM_MIN_INTERVAL_S} s needed")
            values = self._metrics(self._first, self._take())
            missing = [key for key, value in values.items() if value is None]
            return values, (f"GPM metrics not available: {', '.join(missing)}" if missing else None)
        except self._nvml.NVMLError as err:
            return dict.fromkeys(GPM_METRICS), self._error_note(err)
        finally:
            self._free()

    def _take(self) -> Any:
        nvml = self._nvml
        sample = nvml.nvmlGpmSampleAlloc()
        self._samples.append(sample)
        if self._is_mig:
            nvml.nvmlGpmMigSampleGet(self._parent, self._gpu_instance_id, sample)
        else:
            nvml.nvmlGpmSampleGet(self._handle, sample)
        return sample

    def _metrics(self, first: Any, second: Any) -> dict[str, float | None]:
        nvml = self._nvml
        request = gpm_request(nvml, first, second, GPM_METRICS.values())
        nvml.nvmlGpmMetricsGet(request)
        return {
            key: request.metrics[i].value if request.metrics[i].nvmlReturn == nvml.NVML_SUCCESS else None
            for i, key in enumerate(GPM_METRICS)
        }

    def _error_note(self, err: Exception) -> str:
        if getattr(err, "value", None) == self._nvml.NVML_ERROR_NOT_SUPPORTED:
            return GPM_UNSUPPORTED_NOTE
        return f"GPM failed: {err}"

    def _free(self) -> None:
        for sample in self._samples:
            # a failed free leaves nothing to do, and the numbers are already read
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlGpmSampleFree(sample)
        self._samples.clear()
        self._first = None


class Sampler:
    """Samples one GPU (or MIG instance) from start() to stop() on a daemon thread.

    One window per Sampler. `nvml` is an initialized pynvml-like module (see device.init_nvml), `handle`
    the NVML handle the process measures (DeviceInfo.handle). On MIG, GPU-Util is not available; clocks,
    power and throttle reasons come from `parent_handle`, and GPM from nvmlGpmMigSampleGet.
    """

    def __init__(self, nvml: Any, handle: Any, *, poll_s: float = 0.05, is_mig: bool = False,
                 parent_handle: Any = None, gpu_instance_id: int | None = None, gpm: bool = True):
        self._poll_s = poll_s
        # clocks, power and throttle reasons belong to the physical GPU
        board = parent_handle if is_mig and parent_handle is not None else handle
        # pynvml renamed ...ThrottleReasons to ...EventReasons; older releases have only the first
        reasons = (getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
                   or nvml.nvmlDeviceGetCurrentClocksThrottleReasons)
        self._clock = _Series(nvml, lambda: nvml.nvmlDeviceGetClockInfo(board, nvml.NVML_CLOCK_SM))
        self._power = _Series(nvml, lambda: nvml.nvmlDeviceGetPowerUsage(board) / 1000.0)
        self._reasons = _Series(nvml, lambda: reasons(board))
        self._series = [self._clock, self._power, self._reasons]
        energy = getattr(nvml, "nvmlDeviceGetTotalEnergyConsumption", None)  # Volta and newer
        self._energy = _Series(nvml, lambda: (energy(board), time.monotonic())) if energy else None
        # Compute processes besides this one. It holds a context on the GPU and so is one of NVML's
        # entries whether or not its PID matches (a container's own PID namespace gets host PIDs): all
        # entries but one. A pynvml newer than the driver cannot read the list.
        self._processes = _Series(
            nvml, lambda: max(0, len(nvml.nvmlDeviceGetComputeRunningProcesses(handle)) - 1),
            more_errors=(nvml.NVMLLibraryMismatchError,))
        self._at_ends = [s for s in (self._energy, self._processes) if s is not None]  # start() and stop()
        # MIG instances have no GPU-Util: never ask, so nothing can be mistaken for 0 %
        self._util = None if is_mig else _UtilWindow(nvml, handle)
        self._rates = None if is_mig else _Series(nvml, lambda: _read_rates(nvml, handle))
        if self._rates is not None:
            self._series.append(self._rates)
        self._gpm = _GpmWindow(nvml, handle, enabled=gpm, is_mig=is_mig, parent_handle=parent_handle,
                               gpu_instance_id=gpu_instance_id)
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_error: Exception | None = None
        self._thread_cpu_s = 0.0
        self._polls = 0
        self._started_at = 0.0
        self.stats: WindowStats | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("a Sampler measures one window; make a new one")
        if self._util is not None:
            self._util.begin()
        self._gpm.begin()
        for series in self._at_ends:
            series.poll()
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="mfugap-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> WindowStats:
        if self._thread is None:
            raise RuntimeError("Sampler.stop() called before start()")
        if self.stats is not None:
            return self.stats
        self._stop_event.set()
        self._thread.join(JOIN_TIMEOUT_S)
        duration_s = time.monotonic() - self._started_at
        for series in self._at_ends:
            series.poll()
        gpm, gpm_note = self._gpm.finish()  # before any raise below: GPM samples must be freed
        if self._thread.is_alive():
            raise RuntimeError(f"sampler thread did not stop within {JOIN_TIMEOUT_S} s (NVML call hung?)")
        if self._thread_error is not None:
            raise RuntimeError("sampler thread failed") from self._thread_error
        if self._util is not None:
            self._util.drain()
        self.stats = self._stats(duration_s, gpm, gpm_note)
        return self.stats

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        cpu_start = time.thread_time()
        next_drain = time.monotonic() + DRAIN_EVERY_S
        try:
            while True:  # poll first: even a window stopped at once gets one reading
                for series in self._series:
                    series.poll()
                self._polls += 1
                if self._util is not None and time.monotonic() >= next_drain:
                    self._util.drain()
                    next_drain = time.monotonic() + DRAIN_EVERY_S
                if self._stop_event.wait(self._poll_s):
                    return
        except Exception as err:  # re-raised by stop(): a dead sampler must not pass for a quiet GPU
            self._thread_error = err
        finally:
            self._thread_cpu_s = time.thread_time() - cpu_start

    def _stats(self, duration_s: float, gpm: dict[str, float | None], gpm_note: str | None) -> WindowStats:
        if self._util is None or self._rates is None:
            util = _UtilResult(None, 0, MIG_UTIL_NOTE, None)
            mem_util = None
        else:
            util = self._util.result(duration_s, self._rates)
            mem_util = _mean([memory for _, memory in self._rates.values])
        reasons = None
        for mask in self._reasons.values:
            reasons = (reasons or 0) | mask
        return WindowStats(
            duration_s=duration_s,
            gpu_util_pct=util.pct,
            util_samples=util.samples,
            util_note=util.note,
            mem_util_pct=mem_util,
            sm_clock_mhz=_mean(self._clock.values),
            power_w=_first_known(_energy_power_w(self._energy), _mean(self._power.values)),
            clock_event_reasons=reasons,
            other_processes=_most(self._processes),
            gpm=gpm,
            gpm_note=gpm_note,
            polls=self._polls,
            overhead_pct=100.0 * self._thread_cpu_s / max(duration_s, 1e-9),
            util_period_s=util.period_s,
        )


def _read_rates(nvml: Any, handle: Any) -> tuple[int, int]:
    rates = nvml.nvmlDeviceGetUtilizationRates(handle)
    return rates.gpu, rates.memory
