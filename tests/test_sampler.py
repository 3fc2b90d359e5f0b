"""The NVML window sampler, against the strict pynvml fake: short windows, small poll periods."""
import math
import re
import statistics
import threading
import time

import pynvml
import pytest

from mfugap import sampler as sampler_module
from mfugap.device import init_nvml
from mfugap.sampler import (
    EMPTY_BUFFER_NOTE,
    GPM_METRICS,
    GPM_UNSUPPORTED_NOTE,
    MIG_UTIL_NOTE,
    POLLED_UTIL_NOTE,
    Sampler,
)
from mfugap.schema import ROW_FIELDS
from tests.fake_nvml import FakeGpu, FakeHandle, FakeMig, FakeNvml

T0 = 1_700_000_000_000_000  # NVML timestamps are opaque microseconds; start far from zero on purpose
PERIOD_US = 166_667  # a 1/6 s driver sample period
GPU = FakeHandle(0)
ALL_GPM = {2: 61.5, 3: 40.25, 5: 88.0, 10: 12.5, 11: 0.0, 12: 3.75, 13: 1.0}


def make_nvml(**gpu_fields) -> FakeNvml:
    return init_nvml(FakeNvml(FakeGpu(**gpu_fields)))


def window(nvml, handle=GPU, body=None, **kwargs):
    """Run one short window; `body` runs inside it."""
    kwargs.setdefault("poll_s", 0.002)
    with Sampler(nvml, handle, **kwargs) as sampler:
        if body is not None:
            body()
    return sampler.stats


def wait_for(condition, timeout_s=2.0):
    """Let the sampler thread poll until `condition()` holds: no sleep-and-hope on a loaded machine."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the sampler thread did not poll in time"
        time.sleep(0.001)


def test_gpm_ids_are_pynvml_constants():
    assert GPM_METRICS == {
        "sm_util_pct": pynvml.NVML_GPM_METRIC_SM_UTIL,
        "sm_occupancy_pct": pynvml.NVML_GPM_METRIC_SM_OCCUPANCY,
        "tensor_util_pct": pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
        "dram_util_pct": pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL,
        "fp64_util_pct": pynvml.NVML_GPM_METRIC_FP64_UTIL,
        "fp32_util_pct": pynvml.NVML_GPM_METRIC_FP32_UTIL,
        "fp16_util_pct": pynvml.NVML_GPM_METRIC_FP16_UTIL,
    }


# ---- GPU-Util window selection ----

def test_util_keeps_only_samples_inside_the_window():
    nvml = make_nvml(util_samples=[(T0, 5), (T0 + PERIOD_US, 7), (T0 + 2 * PERIOD_US, 9)])
    inside = [(T0 + 3 * PERIOD_US, 99), (T0 + 4 * PERIOD_US, 40), (T0 + 5 * PERIOD_US, 61)]
    stats = window(nvml, body=lambda: nvml.add_samples(*inside), gpm=False)
    # 5, 7, 9 predate the window; 99 straddles its start; 40 and 61 are inside
    assert stats.gpu_util_pct == 50.5
    assert stats.util_samples == 2
    assert stats.util_note is None
    assert stats.util_period_s == pytest.approx(PERIOD_US / 1e6)


def test_util_on_the_host_clock_drops_a_straddling_sample_published_late():
    """NVML timestamps are CPU microseconds. A driver that publishes a sample after start() though its
    period began before it (idle then) would have the marker logic keep that sample; read against the
    host clock, only samples whose whole period follows start() count."""
    now = time.time_ns() // 1000
    nvml = make_nvml(util_samples=[(now - 3 * PERIOD_US, 0), (now - 2 * PERIOD_US, 0)])

    def publish():
        t = time.time_ns() // 1000  # after start()
        nvml.add_samples((t - PERIOD_US, 0),  # its period ended before the window: late
                         (t + 10_000, 0),  # began before start(): straddles it
                         (t + PERIOD_US + 20_000, 100), (t + 2 * PERIOD_US + 20_000, 90))

    stats = window(nvml, body=publish, gpm=False)
    assert (stats.gpu_util_pct, stats.util_samples) == (95.0, 2)


def test_util_samples_are_drained_before_the_nvml_ring_wraps(monkeypatch):
    monkeypatch.setattr(sampler_module, "DRAIN_EVERY_S", 0.0)
    nvml = make_nvml(util_samples=[(T0, 1)])
    produced = []

    def driver_tick():  # one new sample per poll; the ring keeps only the newest 3
        produced.append(10 * len(produced) + 10)
        nvml.add_samples((T0 + len(produced) * PERIOD_US, produced[-1]))
        del nvml.gpu.util_samples[:-3]

    nvml.hooks["nvmlDeviceGetClockInfo"] = driver_tick
    stats = window(nvml, body=lambda: wait_for(lambda: len(produced) >= 5), gpm=False)
    assert len(produced) == stats.polls >= 5
    assert stats.util_samples == len(produced) - 1
    assert stats.gpu_util_pct == statistics.fmean(produced[1:])


def test_util_with_empty_buffer_at_start():
    nvml = make_nvml()
    inside = [(T0, 100), (T0 + PERIOD_US, 30), (T0 + 2 * PERIOD_US, 50)]
    stats = window(nvml, body=lambda: nvml.add_samples(*inside), gpm=False)
    assert stats.gpu_util_pct == 40.0
    assert stats.util_samples == 2
    assert stats.util_note == EMPTY_BUFFER_NOTE


def test_util_none_when_no_sample_falls_inside():
    nvml = make_nvml(util_samples=[(T0 + k * PERIOD_US, 100) for k in range(3)])
    stats = window(nvml, body=lambda: nvml.add_samples((T0 + 3 * PERIOD_US, 100)), gpm=False)
    assert stats.gpu_util_pct is None
    assert stats.util_samples == 0
    assert re.fullmatch(r"no NVML utilization sample fell inside the \d\.\d\d s window "
                        r"\(sample period ~0\.17 s\)", stats.util_note)


def test_util_falls_back_to_polling_without_sample_buffer():
    nvml = make_nvml(util_gpu=[80, 100, 90])
    nvml.errors["nvmlDeviceGetSamples"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    stats = window(nvml, body=lambda: wait_for(lambda: len(nvml.returned.get("util_gpu", [])) >= 3),
                   gpm=False)
    polled = nvml.returned["util_gpu"]
    assert stats.gpu_util_pct == statistics.fmean(polled)
    assert stats.util_samples == len(polled) == stats.polls
    assert stats.util_note == POLLED_UTIL_NOTE


def test_util_none_when_sample_buffer_breaks():
    nvml = make_nvml(util_samples=[(T0, 50)])
    nvml.errors["nvmlDeviceGetSamples"] = pynvml.NVML_ERROR_UNKNOWN
    stats = window(nvml, gpm=False)
    assert stats.gpu_util_pct is None
    assert stats.util_note == "nvmlDeviceGetSamples failed: Unknown Error"


def test_mig_instance_has_no_util_and_never_asks():
    mig = FakeMig(gpu_instance_id=9)
    nvml = make_nvml(mig_mode=(1, 1), mig_slots=[mig], gpm_values=ALL_GPM, sm_clock_mhz=1410)
    stats = window(nvml, FakeHandle(0, 0), body=lambda: time.sleep(0.11), is_mig=True,
                   parent_handle=GPU, gpu_instance_id=9)
    assert stats.gpu_util_pct is None
    assert stats.util_samples == 0
    assert stats.util_note == MIG_UTIL_NOTE
    assert stats.mem_util_pct is None
    assert "nvmlDeviceGetSamples" not in nvml.calls
    assert "nvmlDeviceGetUtilizationRates" not in nvml.calls
    assert stats.sm_clock_mhz == 1410  # board values come from the parent GPU
    assert stats.gpm["sm_util_pct"] == 61.5
    assert "nvmlGpmMigSampleGet" in nvml.calls and "nvmlGpmSampleGet" not in nvml.calls


# ---- GPM ----

def test_gpm_unsupported_gives_none_with_note():
    nvml = make_nvml(gpm_supported=False)
    stats = window(nvml)
    assert stats.gpm == dict.fromkeys(GPM_METRICS)
    assert stats.gpm_note == GPM_UNSUPPORTED_NOTE
    assert "nvmlGpmSampleAlloc" not in nvml.calls


def test_gpm_values_pass_through_and_failed_metric_is_none():
    values = {i: v for i, v in ALL_GPM.items() if i != pynvml.NVML_GPM_METRIC_FP64_UTIL}
    nvml = make_nvml(gpm_values=values)
    stats = window(nvml, body=lambda: time.sleep(0.11))
    assert stats.gpm == {"sm_util_pct": 61.5, "sm_occupancy_pct": 40.25, "tensor_util_pct": 88.0,
                         "dram_util_pct": 12.5, "fp64_util_pct": None, "fp32_util_pct": 3.75,
                         "fp16_util_pct": 1.0}
    assert stats.gpm_note == "GPM metrics not available: fp64_util_pct"
    assert nvml.gpm_live == {}


@pytest.mark.parametrize("failing", ["nvmlGpmMetricsGet", "nvmlGpmSampleGet"])
def test_gpm_samples_freed_on_error(failing):
    nvml = make_nvml(gpm_values=ALL_GPM)
    nvml.errors[failing] = pynvml.NVML_ERROR_UNKNOWN
    stats = window(nvml, body=lambda: time.sleep(0.11))
    assert stats.gpm == dict.fromkeys(GPM_METRICS)
    assert stats.gpm_note == "GPM failed: Unknown Error"
    assert nvml.calls.count("nvmlGpmSampleFree") == nvml.calls.count("nvmlGpmSampleAlloc") >= 1
    assert nvml.gpm_live == {}


def test_gpm_short_window_gives_note():
    nvml = make_nvml(gpm_values=ALL_GPM)
    stats = window(nvml)
    assert stats.gpm == dict.fromkeys(GPM_METRICS)
    assert stats.gpm_note.startswith("window too short for GPM")
    assert nvml.gpm_live == {}


# ---- polled values ----

def test_clock_power_means_and_reason_bits():
    nvml = make_nvml(sm_clock_mhz=[1500, 1700, 1980], power_mw=[300_000, 450_000],
                     clock_event_reasons=[0, pynvml.nvmlClocksEventReasonSwPowerCap,
                                          pynvml.nvmlClocksEventReasonHwThermalSlowdown],
                     util_mem=[20, 35])
    stats = window(nvml, body=lambda: wait_for(lambda: len(nvml.returned.get("util_mem", [])) >= 4),
                   gpm=False)
    clocks = nvml.returned["nvmlDeviceGetClockInfo"]
    assert len(clocks) == stats.polls >= 4
    assert stats.sm_clock_mhz == pytest.approx(statistics.fmean(clocks))
    assert stats.power_w == pytest.approx(statistics.fmean(nvml.returned["nvmlDeviceGetPowerUsage"]) / 1000)
    assert stats.clock_event_reasons == 0x4 | 0x40
    assert stats.mem_util_pct == pytest.approx(statistics.fmean(nvml.returned["util_mem"]))
    assert math.isfinite(stats.overhead_pct) and stats.overhead_pct >= 0


def test_power_is_the_energy_used_over_the_window_where_the_counter_exists():
    """350 W polled (a trailing 1 s average on Ampere and newer) but 140 J in a ~0.2 s window: the
    counter's figure is the window's."""
    start_mj = 5_000_000
    nvml = make_nvml(power_mw=350_000, energy_mj=[start_mj, start_mj + 140_000])
    stats = window(nvml, body=lambda: time.sleep(0.2), gpm=False)
    assert nvml.returned["nvmlDeviceGetTotalEnergyConsumption"] == [start_mj, start_mj + 140_000]
    assert stats.power_w == pytest.approx(140.0 / stats.duration_s, rel=0.05)
    assert stats.power_w > 500


@pytest.mark.parametrize("missing", ["error", "hidden", "unsupported"])
def test_without_an_energy_counter_power_is_the_polled_mean(missing):
    nvml = make_nvml(power_mw=[300_000, 450_000], energy_mj=None if missing == "unsupported" else 1)
    if missing == "error":
        nvml.errors["nvmlDeviceGetTotalEnergyConsumption"] = pynvml.NVML_ERROR_NO_PERMISSION
    elif missing == "hidden":  # a pynvml older than the call
        nvml.hidden.add("nvmlDeviceGetTotalEnergyConsumption")
    polled = nvml.returned.setdefault("nvmlDeviceGetPowerUsage", [])
    stats = window(nvml, body=lambda: wait_for(lambda: len(polled) >= 2), gpm=False)
    assert stats.power_w == pytest.approx(statistics.fmean(nvml.returned["nvmlDeviceGetPowerUsage"]) / 1000)


@pytest.mark.parametrize(("pids", "expected"), [
    ([], 0),  # NVML lists nothing (some containers): nothing is known to be shared
    (["own"], 0),
    (["own", 4242], 1),
    ([77001], 0),  # a container's PID namespace: NVML's PID for this process is the host's
    ([77001, 77002, 77003], 2),
])
def test_other_processes_are_all_entries_but_this_one(pids, expected):
    import os

    from tests.fake_nvml import FakeProcess

    nvml = make_nvml(processes=[FakeProcess(os.getpid() if pid == "own" else pid) for pid in pids])
    assert window(nvml, gpm=False).other_processes == expected
    assert nvml.calls.count("nvmlDeviceGetComputeRunningProcesses") == 2  # at start and at stop


def test_a_process_that_comes_during_the_window_counts_and_unlistable_is_none():
    from tests.fake_nvml import FakeProcess

    nvml = make_nvml(processes=[FakeProcess(1)])
    stats = window(nvml, body=lambda: nvml.gpu.processes.append(FakeProcess(2)), gpm=False)
    assert stats.other_processes == 1
    nvml = make_nvml()
    nvml.errors["nvmlDeviceGetComputeRunningProcesses"] = pynvml.NVML_ERROR_NO_PERMISSION
    assert window(nvml, gpm=False).other_processes is None

    def too_new():  # pynvml's process struct newer than the driver's
        raise pynvml.NVMLLibraryMismatchError("Unversioned function called and the pyNVML version does not "
                                              "match the NVML lib version")

    nvml = make_nvml()
    nvml.hooks["nvmlDeviceGetComputeRunningProcesses"] = too_new
    assert window(nvml, gpm=False).other_processes is None


def test_older_pynvml_throttle_reasons_fallback():
    nvml = make_nvml(clock_event_reasons=pynvml.nvmlClocksThrottleReasonHwSlowdown)
    nvml.hidden.add("nvmlDeviceGetCurrentClocksEventReasons")
    stats = window(nvml, gpm=False)
    assert stats.clock_event_reasons == 0x8
    assert "nvmlDeviceGetCurrentClocksThrottleReasons" in nvml.calls


def test_unsupported_polled_query_is_none_and_asked_once():
    nvml = make_nvml()
    nvml.errors["nvmlDeviceGetPowerUsage"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    stats = window(nvml, body=lambda: wait_for(lambda: nvml.calls.count("nvmlDeviceGetClockInfo") >= 3),
                   gpm=False)
    assert stats.power_w is None
    assert stats.polls > 1
    assert nvml.calls.count("nvmlDeviceGetPowerUsage") == 1


def test_unsupported_clock_event_reasons_are_none_not_zero():
    nvml = make_nvml(clock_event_reasons=0x4)
    nvml.errors["nvmlDeviceGetCurrentClocksEventReasons"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    assert window(nvml, gpm=False).clock_event_reasons is None  # "no throttling" is not known
    assert window(make_nvml(clock_event_reasons=0), gpm=False).clock_event_reasons == 0


# ---- the thread ----

def test_no_thread_leak_also_when_the_body_raises():
    nvml = make_nvml()
    before = threading.active_count()
    window(nvml, gpm=False)
    assert threading.active_count() == before
    sampler = Sampler(nvml, GPU, poll_s=0.002, gpm=False)
    with pytest.raises(ValueError), sampler:
        raise ValueError("workload failed")
    assert threading.active_count() == before
    assert sampler.stats is not None


def test_stuck_thread_is_an_error(monkeypatch):
    monkeypatch.setattr(sampler_module, "JOIN_TIMEOUT_S", 0.05)
    nvml = make_nvml(gpm_values=ALL_GPM)
    release = threading.Event()
    nvml.hooks["nvmlDeviceGetClockInfo"] = release.wait
    sampler = Sampler(nvml, GPU, poll_s=0.002)
    sampler.start()
    try:
        with pytest.raises(RuntimeError, match="did not stop"):
            sampler.stop()
        assert nvml.gpm_live == {}
    finally:
        release.set()
        sampler._thread.join()


def test_thread_failure_surfaces_in_stop():
    nvml = make_nvml()
    nvml.hooks["nvmlDeviceGetPowerUsage"] = lambda: 1 / 0
    sampler = Sampler(nvml, GPU, poll_s=0.002, gpm=False)
    sampler.start()
    with pytest.raises(RuntimeError, match="sampler thread failed") as caught:
        sampler.stop()
    assert isinstance(caught.value.__cause__, ZeroDivisionError)


def test_one_window_per_sampler():
    sampler = Sampler(make_nvml(), GPU, poll_s=0.002, gpm=False)
    with pytest.raises(RuntimeError):
        sampler.stop()
    with sampler:
        pass
    assert sampler.stop() is sampler.stats
    with pytest.raises(RuntimeError):
        sampler.start()


def test_row_fields():
    stats = window(make_nvml(), gpm=False)
    fields = stats.as_row_fields()
    assert list(fields) == [
        "gpu_util_pct", "util_samples", "util_note", "mem_util_pct", "sm_util_pct", "sm_occupancy_pct",
        "tensor_util_pct", "dram_util_pct", "fp32_util_pct", "fp16_util_pct", "fp64_util_pct", "gpm_note",
        "sm_clock_mhz", "power_w", "clock_event_reasons", "other_processes", "sampler_overhead_pct",
    ]
    assert set(fields) <= set(ROW_FIELDS)
    assert fields["sampler_overhead_pct"] == stats.overhead_pct
