"""A strict fake of the pynvml calls mfugap makes, for tests on machines without a GPU.

It reuses pynvml's own error classes, constants and ctypes structs, so code under test sees the same
objects as with a driver. Strict on purpose: it has only the functions mfugap calls (an unknown name is an
AttributeError), each under its pynvml name, every call but nvmlInit needs nvmlInit first, and GPU-only
queries on a MIG handle raise NOT_SUPPORTED as the driver does. tests check that every `nvml*` / `NVML*` /
`c_nvml*` name here exists in pynvml with a compatible signature.

Per test: `FakeNvml(FakeGpu(...))` (several GPUs, or none), then
- `errors[name] = code`: every call of `name` raises `pynvml.NVMLError(code)`;
- `hooks[name] = fn`: `fn()` runs at each call of `name`, before the answer (to block, or to add samples);
- `hidden = {name}`: hide a function, as an older pynvml would lack it;
- `calls`: names in call order; `returned[name]`: values handed out by polled queries.
A polled value (sm_clock_mhz, power_mw, energy_mj, clock_event_reasons, util_gpu, util_mem) may be a
list, read in a cycle; a `pynvml.NVMLError` in the list is raised when its turn comes. `util_samples` is a
list of (timestamp_us, percent) that a test may append to while a sampler runs.

Replay: `FakeNvml.from_trace(trace, phase)` answers as the GPU of a recorded trace (mfugap.trace) did during
one phase; `play()`, called inside the Sampler's window, lets the phase's util samples arrive.
"""
from __future__ import annotations

import ctypes
import functools
import itertools
from dataclasses import dataclass, field

import pynvml

from mfugap import trace as traces

GIB = 1 << 30


@dataclass
class FakeMig:
    uuid: str = "MIG-5c89e5a1-1111-5e1f-9b4a-2f7c1e0a0001"
    name: str = "NVIDIA H100 80GB HBM3 MIG 1g.10gb"
    sm_count: int = 16
    gpu_instance_id: int = 9
    compute_instance_id: int = 0
    memory_total: int = 10 * GIB


@dataclass
class FakeProcess:
    pid: int
    used_bytes: int | None = GIB
    name: str | None = "python"  # None: nvmlSystemGetProcessName raises NOT_FOUND (process gone)


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    pci_device_id: int = 0x233010DE  # NVML's form: device id << 16 | vendor id
    uuid: str = "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6"
    memory_total: int = 80 * GIB
    compute_capability: tuple[int, int] = (9, 0)
    sm_clock_max_mhz: int = 1980
    sm_clock_mhz: int | list[int] = 1755
    power_limit_mw: int = 700_000
    power_mw: int | list[int] = 350_000
    energy_mj: int | list[int] | None = None  # total energy counter, read in a cycle; None: NOT_SUPPORTED
    clock_event_reasons: int | list[int] = 0
    util_gpu: int | list[int] = 100
    util_mem: int | list[int] = 30
    mig_mode: tuple[int, int] | None = None  # (current, pending); None: GPU without MIG (NOT_SUPPORTED)
    mig_slots: list[FakeMig | None] = field(default_factory=list)  # None: empty slot (NOT_FOUND)
    processes: list[FakeProcess] = field(default_factory=list)
    util_samples: list[tuple[int, int]] = field(default_factory=list)
    gpm_supported: bool = True
    gpm_values: dict[int, float] = field(default_factory=dict)  # metric id -> value; absent: NOT_SUPPORTED


@dataclass(frozen=True)
class FakeHandle:
    gpu: int
    slot: int | None = None  # MIG slot; None for the physical GPU


def _nvml_call(method):
    """Record the call, require nvmlInit, then run the test's hook and injected error, then answer."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self, *args):
        self.calls.append(name)
        if name != "nvmlInit" and not self.initialized:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        hook = self.hooks.get(name)
        if hook is not None:
            hook()
        code = self.errors.get(name)
        if code is not None:
            raise pynvml.NVMLError(code)
        return method(self, *args)

    return wrapper


def _fail(code: int):
    raise pynvml.NVMLError(code)


# ---- replay helpers (see FakeNvml.from_trace) ----

def _replayed(answer):
    """A recorded answer as a polled value: a failed call becomes the error to raise in its turn."""
    return pynvml.NVMLError(answer["error"]) if traces.is_error(answer) else answer


def _distinct(polls: list[dict]) -> list[tuple[int, int]]:
    """Every util sample the polls read, once each, oldest first."""
    return sorted(dict.fromkeys(s for poll in polls for s in traces.util_samples(poll)))


def _gpm_values(gpm: dict | None) -> dict[int, float]:
    """The metrics NVML computed; a failed one is left out, so the fake answers NOT_SUPPORTED for it."""
    metrics = (gpm or {}).get("metrics", {})
    return {int(key): m["value"] for key, m in metrics.items() if m["nvmlReturn"] == pynvml.NVML_SUCCESS}


def _replayed_errors(device: dict, polls: list[dict], gpm: dict | None) -> dict[str, int]:
    """Calls that failed whole while recording, to fail on every call in the replay."""
    errors = {}
    buffer_codes = [poll["util_samples"]["error"] for poll in polls if "error" in poll["util_samples"]]
    # NOT_FOUND only says nothing was new; any other code means the buffer could not be read
    failed = [code for code in buffer_codes if code != pynvml.NVML_ERROR_NOT_FOUND]
    if failed:
        errors["nvmlDeviceGetSamples"] = failed[0]
    if traces.is_error(device["gpm_supported"]):
        errors["nvmlGpmQueryDeviceSupport"] = device["gpm_supported"]["error"]
    if gpm is not None and "error" in gpm:
        errors[gpm["error"]["call"]] = gpm["error"]["code"]
    return errors


class FakeNvml:
    NVMLError = pynvml.NVMLError
    NVMLLibraryMismatchError = pynvml.NVMLLibraryMismatchError
    NVML_SUCCESS = pynvml.NVML_SUCCESS
    NVML_ERROR_NOT_FOUND = pynvml.NVML_ERROR_NOT_FOUND
    NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_LIBRARY_NOT_FOUND = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    NVML_ERROR_DRIVER_NOT_LOADED = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
    NVML_DEVICE_MIG_ENABLE = pynvml.NVML_DEVICE_MIG_ENABLE
    NVML_GPU_UTILIZATION_SAMPLES = pynvml.NVML_GPU_UTILIZATION_SAMPLES
    NVML_GPM_METRICS_GET_VERSION = pynvml.NVML_GPM_METRICS_GET_VERSION
    c_nvmlGpmMetricsGet_t = pynvml.c_nvmlGpmMetricsGet_t

    def __init__(self, *gpus: FakeGpu, driver_version: str = "570.86.15", cuda_driver_version: int = 12080):
        self.gpus = list(gpus)
        self.driver_version = driver_version
        self.cuda_driver_version = cuda_driver_version
        self.initialized = False
        self.calls: list[str] = []
        self.errors: dict[str, int] = {}
        self.hooks: dict[str, object] = {}
        self.hidden: set[str] = set()
        self.returned: dict[str, list] = {}
        self.gpm_live: dict[int, object] = {}  # address -> allocated GPM sample struct
        self.gpm_filled: dict[int, int] = {}  # address -> GPU index the sample was taken on
        self.pending_samples: list[tuple[int, int]] = []  # util samples play() adds (replay)
        self._cycles: dict[tuple[str, int], itertools.cycle] = {}

    @classmethod
    def from_trace(cls, trace: dict, phase: str) -> FakeNvml:
        """One GPU answering as the traced GPU did during `phase`: the polled queries serve the phase's
        polls in a cycle (recorded errors included), the util buffer holds what NVML's held when the phase
        started, pending_samples what the phase added, and GPM answers with the phase's metrics."""
        device, gpm = trace["device"], traces.find_phase(trace, phase)["gpm"]
        polls = traces.phase_polls(trace, phase)
        utilization = [_replayed(poll["utilization"]) for poll in polls]
        mig_mode = traces.answer_value(device["mig_mode"])
        gpu = FakeGpu(
            name=traces.answer_value(device["name"], "unknown"),
            pci_device_id=traces.answer_value(device["pci_device_id"], 0),
            mig_mode=tuple(mig_mode) if mig_mode is not None else None,
            sm_clock_max_mhz=traces.answer_value(device["sm_clock_max_mhz"], 0),
            power_limit_mw=traces.answer_value(device["power_limit_mw"], 0),
            sm_clock_mhz=[_replayed(poll["sm_clock_mhz"]) for poll in polls],
            power_mw=[_replayed(poll["power_mw"]) for poll in polls],
            clock_event_reasons=[_replayed(poll["clock_event_reasons"]) for poll in polls],
            # an error answer raises from util_gpu, before util_mem is read
            util_gpu=[u if isinstance(u, pynvml.NVMLError) else u[0] for u in utilization],
            util_mem=[0 if isinstance(u, pynvml.NVMLError) else u[1] for u in utilization],
            util_samples=traces.util_samples(polls[0]),
            gpm_supported=traces.answer_value(device["gpm_supported"]) is True,
            gpm_values=_gpm_values(gpm),
        )
        fake = cls(gpu, driver_version=traces.answer_value(device["driver_version"], "unknown"),
                   cuda_driver_version=traces.answer_value(device["cuda_driver_version"], 0))
        fake.pending_samples = [s for s in _distinct(polls[1:]) if s not in gpu.util_samples]
        fake.errors.update(_replayed_errors(device, polls, gpm))
        return fake

    def play(self) -> None:
        """The replayed phase runs: NVML's buffer gains the samples the phase produced."""
        self.add_samples(*self.pending_samples)
        self.pending_samples = []

    def __getattribute__(self, name):
        if name in object.__getattribute__(self, "hidden"):
            raise AttributeError(name)
        return object.__getattribute__(self, name)

    @property
    def gpu(self) -> FakeGpu:
        return self.gpus[0]

    # ---- helpers (not NVML names) ----
    def _gpu_of(self, handle: FakeHandle) -> FakeGpu:
        if not isinstance(handle, FakeHandle) or not 0 <= handle.gpu < len(self.gpus):
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self.gpus[handle.gpu]

    def _mig_of(self, handle: FakeHandle) -> FakeMig:
        return self._gpu_of(handle).mig_slots[handle.slot]

    def _physical(self, handle: FakeHandle) -> FakeGpu:
        """GPU-only queries: a MIG handle gets NOT_SUPPORTED, as from the driver."""
        if handle.slot is not None:
            _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self._gpu_of(handle)

    def _poll(self, name: str, handle: FakeHandle, value):
        if isinstance(value, list):
            value = next(self._cycles.setdefault((name, handle.gpu), itertools.cycle(value)))
        if isinstance(value, pynvml.NVMLError):
            _fail(value.value)
        self.returned.setdefault(name, []).append(value)
        return value

    def add_samples(self, *samples: tuple[int, int], gpu: int = 0) -> None:
        self.gpus[gpu].util_samples.extend(samples)

    # ---- init and system ----
    @_nvml_call
    def nvmlInit(self):
        self.initialized = True

    @_nvml_call
    def nvmlSystemGetDriverVersion(self):
        return self.driver_version

    @_nvml_call
    def nvmlSystemGetCudaDriverVersion(self):
        return self.cuda_driver_version

    @_nvml_call
    def nvmlSystemGetProcessName(self, pid):
        for gpu in self.gpus:
            for proc in gpu.processes:
                if proc.pid == pid and proc.name is not None:
                    return proc.name
        _fail(pynvml.NVML_ERROR_NOT_FOUND)

    # ---- handles ----
    @_nvml_call
    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    @_nvml_call
    def nvmlDeviceGetHandleByIndex(self, index):
        if not 0 <= index < len(self.gpus):
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return FakeHandle(index)

    @_nvml_call
    def nvmlDeviceGetHandleByUUID(self, uuid):
        for i, gpu in enumerate(self.gpus):
            if gpu.uuid == uuid:
                return FakeHandle(i)
            for slot, mig in enumerate(gpu.mig_slots):
                if mig is not None and mig.uuid == uuid and gpu.mig_mode and gpu.mig_mode[0]:
                    return FakeHandle(i, slot)
        _fail(pynvml.NVML_ERROR_NOT_FOUND)

    @_nvml_call
    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, mig_handle):
        if mig_handle.slot is None:
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return FakeHandle(mig_handle.gpu)

    # ---- identity ----
    @_nvml_call
    def nvmlDeviceGetName(self, handle):
        return self._mig_of(handle).name if handle.slot is not None else self._gpu_of(handle).name

    @_nvml_call
    def nvmlDeviceGetUUID(self, handle):
        return self._mig_of(handle).uuid if handle.slot is not None else self._gpu_of(handle).uuid

    @_nvml_call
    def nvmlDeviceGetPciInfo(self, handle):
        info = pynvml.nvmlPciInfo_t()
        info.pciDeviceId = self._physical(handle).pci_device_id
        return info

    @_nvml_call
    def nvmlDeviceGetMemoryInfo(self, handle):
        memory = pynvml.c_nvmlMemory_t()
        if handle.slot is not None:
            memory.total = self._mig_of(handle).memory_total
        else:
            memory.total = self._gpu_of(handle).memory_total
        return memory

    @_nvml_call
    def nvmlDeviceGetCudaComputeCapability(self, handle):
        return self._gpu_of(handle).compute_capability

    @_nvml_call
    def nvmlDeviceGetAttributes(self, handle):
        # the driver answers this only for MIG handles
        attrs = pynvml.c_nvmlDeviceAttributes()
        if handle.slot is None:
            _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        mig = self._mig_of(handle)
        attrs.multiprocessorCount = mig.sm_count
        attrs.memorySizeMB = mig.memory_total >> 20
        return attrs

    # ---- MIG ----
    @_nvml_call
    def nvmlDeviceGetMigMode(self, handle):
        gpu = self._physical(handle)
        if gpu.mig_mode is None:
            _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return list(gpu.mig_mode)

    @_nvml_call
    def nvmlDeviceGetMaxMigDeviceCount(self, handle):
        return len(self._physical(handle).mig_slots)

    @_nvml_call
    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle, index):
        gpu = self._physical(handle)
        if not gpu.mig_mode or not gpu.mig_mode[0]:
            _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if not 0 <= index < len(gpu.mig_slots):
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if gpu.mig_slots[index] is None:
            _fail(pynvml.NVML_ERROR_NOT_FOUND)
        return FakeHandle(handle.gpu, index)

    @_nvml_call
    def nvmlDeviceGetGpuInstanceId(self, handle):
        if handle.slot is None:
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._mig_of(handle).gpu_instance_id

    @_nvml_call
    def nvmlDeviceGetComputeInstanceId(self, handle):
        if handle.slot is None:
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._mig_of(handle).compute_instance_id

    # ---- processes ----
    @_nvml_call
    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        procs = self._gpu_of(handle).processes
        return [
            pynvml.nvmlFriendlyObject({"pid": p.pid, "usedGpuMemory": p.used_bytes,
                                       "gpuInstanceId": 0xFFFFFFFF, "computeInstanceId": 0xFFFFFFFF})
            for p in procs
        ]

    # ---- clocks, power, utilization ----
    @_nvml_call
    def nvmlDeviceGetMaxClockInfo(self, handle, clock_type):
        assert clock_type == pynvml.NVML_CLOCK_SM
        return self._physical(handle).sm_clock_max_mhz

    @_nvml_call
    def nvmlDeviceGetClockInfo(self, handle, clock_type):
        assert clock_type == pynvml.NVML_CLOCK_SM
        return self._poll("nvmlDeviceGetClockInfo", handle, self._physical(handle).sm_clock_mhz)

    @_nvml_call
    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return self._physical(handle).power_limit_mw

    @_nvml_call
    def nvmlDeviceGetPowerUsage(self, handle):
        return self._poll("nvmlDeviceGetPowerUsage", handle, self._physical(handle).power_mw)

    @_nvml_call
    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        energy = self._physical(handle).energy_mj
        if energy is None:
            _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self._poll("nvmlDeviceGetTotalEnergyConsumption", handle, energy)

    @_nvml_call
    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        reasons = self._physical(handle).clock_event_reasons
        return self._poll("clock_event_reasons", handle, reasons)

    @_nvml_call
    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle):
        reasons = self._physical(handle).clock_event_reasons
        return self._poll("clock_event_reasons", handle, reasons)

    @_nvml_call
    def nvmlDeviceGetUtilizationRates(self, handle):
        gpu = self._physical(handle)
        rates = pynvml.c_nvmlUtilization_t()
        rates.gpu = self._poll("util_gpu", handle, gpu.util_gpu)
        rates.memory = self._poll("util_mem", handle, gpu.util_mem)
        return rates

    @_nvml_call
    def nvmlDeviceGetSamples(self, handle, sampling_type, last_seen_timestamp):
        assert sampling_type == pynvml.NVML_GPU_UTILIZATION_SAMPLES
        newer = [s for s in list(self._physical(handle).util_samples) if s[0] > last_seen_timestamp]
        if not newer:
            _fail(pynvml.NVML_ERROR_NOT_FOUND)
        out = []
        for timestamp, value in newer:
            sample = pynvml.c_nvmlSample_t()
            sample.timeStamp = timestamp
            sample.sampleValue.uiVal = value
            out.append(sample)
        return pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, out

    # ---- GPM ----
    @_nvml_call
    def nvmlGpmQueryDeviceSupport(self, handle):
        support = pynvml.c_nvmlGpmSupport_t()
        support.version = pynvml.NVML_GPM_SUPPORT_VERSION
        support.isSupportedDevice = int(self._physical(handle).gpm_supported)
        return support

    @_nvml_call
    def nvmlGpmSampleAlloc(self):
        struct = pynvml.struct_c_nvmlGpmSample_t()
        self.gpm_live[ctypes.addressof(struct)] = struct
        return pynvml.c_nvmlGpmSample_t(struct)

    @_nvml_call
    def nvmlGpmSampleFree(self, sample):
        address = self._address(sample)
        if self.gpm_live.pop(address, None) is None:
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self.gpm_filled.pop(address, None)

    @_nvml_call
    def nvmlGpmSampleGet(self, handle, sample):
        gpu = self._physical(handle)
        if not gpu.gpm_supported:
            _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self._fill(sample, handle)

    @_nvml_call
    def nvmlGpmMigSampleGet(self, handle, gpu_instance_id, sample):
        gpu = self._physical(handle)
        if not any(m is not None and m.gpu_instance_id == gpu_instance_id for m in gpu.mig_slots):
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._fill(sample, handle)

    @_nvml_call
    def nvmlGpmMetricsGet(self, metrics_get):
        if not isinstance(metrics_get, pynvml.c_nvmlGpmMetricsGet_t):
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if metrics_get.version != pynvml.NVML_GPM_METRICS_GET_VERSION:
            _fail(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        first, second = self._address(metrics_get.sample1), self._address(metrics_get.sample2)
        if first == second or first not in self.gpm_filled or second not in self.gpm_filled:
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        values = self.gpus[self.gpm_filled[first]].gpm_values
        for i in range(metrics_get.numMetrics):
            metric = metrics_get.metrics[i]
            if metric.metricId in values:
                metric.value = values[metric.metricId]
                metric.nvmlReturn = pynvml.NVML_SUCCESS
            else:
                metric.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
        return metrics_get

    def _address(self, sample) -> int:
        return ctypes.cast(sample, ctypes.c_void_p).value

    def _fill(self, sample, handle: FakeHandle):
        address = self._address(sample)
        if address not in self.gpm_live:
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self.gpm_filled[address] = handle.gpu
        return sample
