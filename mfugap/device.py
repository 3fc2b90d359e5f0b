"""Device discovery: which GPU (or MIG slice) this process measures, and what it looks like.

NVML describes the physical GPU (name, PCI id, clocks, power, MIG layout, other processes); CUDA (through
CuPy, or a `cuda_props` dict in tests) describes what this process sees (compute capability, SMs, L2).
Every optional NVML query that fails yields None for its field: discovery must work on GPUs and drivers
that support only part of NVML. `nvml` parameters accept any pynvml-like module, so tests can pass a fake.
"""
from __future__ import annotations

import os
import re
import threading
import weakref
from dataclasses import dataclass, field, fields
from typing import Any

KINDS = ("nvml-missing", "no-driver", "no-device", "no-cupy")

# gpu_unavailable_reason(cupy_module=_IMPORT) means "import cupy"; None means "CuPy is not installed".
_IMPORT = object()

# init_nvml is idempotent per module object: nvmlInit is refcounted, so repeated calls would each need a
# matching nvmlShutdown that nobody makes.
_initialized: weakref.WeakSet = weakref.WeakSet()
_init_lock = threading.Lock()


class NoGpuError(RuntimeError):
    """No GPU run can happen here; `kind` says which layer is missing, the message what to do."""

    def __init__(self, kind: str, message: str):
        if kind not in KINDS:
            raise ValueError(f"unknown NoGpuError kind {kind!r}")
        super().__init__(message)
        self.kind = kind


@dataclass
class MigInstance:
    index: int | None  # slot in nvmlDeviceGetMigDeviceHandleByIndex (None if found only by UUID)
    uuid: str
    name: str | None
    sm_count: int | None
    gpu_instance_id: int | None
    compute_instance_id: int | None
    handle: Any = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "handle"}


@dataclass
class DeviceInfo:
    index: int  # CUDA device index in this process (CUDA_VISIBLE_DEVICES applied)
    name: str  # NVML name of the physical GPU (on MIG too: the slice is in mig_profile)
    pci_device_id: int | None  # NVML pciDeviceId >> 16, e.g. 0x2330
    uuid: str  # GPU-... or, on a MIG instance, MIG-...
    compute_capability: tuple[int, int] | None
    sm_count: int | None  # SMs visible to this process (the slice's on MIG)
    memory_total_bytes: int | None
    l2_bytes: int | None
    driver_version: str | None
    cuda_driver_version: int | None
    cuda_runtime_version: int | None
    sm_clock_max_mhz: int | None
    sm_clock_mhz: int | None
    power_limit_w: float | None
    mig_mode: bool | None  # None: the GPU has no MIG
    mig_instances: list[MigInstance]
    is_mig: bool
    mig_profile: str | None
    other_processes: list[dict]  # pid, name, used_bytes; empty when NVML cannot list them
    handle: Any = field(default=None, repr=False, compare=False)  # the handle to sample
    parent_handle: Any = field(default=None, repr=False, compare=False)  # physical GPU, MIG only
    gpu_instance_id: int | None = None  # MIG only: for nvmlGpmMigSampleGet

    def to_json(self) -> dict:
        skip = ("handle", "parent_handle")
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        cc = self.compute_capability
        out["compute_capability"] = f"{cc[0]}.{cc[1]}" if cc else None
        out["pci_device_id"] = f"0x{self.pci_device_id:04x}" if self.pci_device_id is not None else None
        out["mig_instances"] = [m.to_json() for m in self.mig_instances]
        out["other_processes"] = [dict(p) for p in self.other_processes]
        return out


def init_nvml(nvml: Any = None) -> Any:
    """Return an initialized pynvml-like module (pynvml itself when None); NoGpuError says why not."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError as err:
            message = "nvidia-ml-py is not installed: pip install nvidia-ml-py"
            raise NoGpuError("nvml-missing", message) from err
    with _init_lock:
        if nvml in _initialized:
            return nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as err:
            raise _init_error(nvml, err) from err
        _initialized.add(nvml)
    return nvml


def _init_error(nvml: Any, err: Exception) -> NoGpuError:
    code = getattr(err, "value", None)
    if code == nvml.NVML_ERROR_LIBRARY_NOT_FOUND:
        return NoGpuError("no-driver", "NVIDIA driver not found (libnvidia-ml.so could not be loaded)")
    if code == nvml.NVML_ERROR_DRIVER_NOT_LOADED:
        return NoGpuError("no-driver", "NVIDIA driver is installed but not loaded (NVML: Driver Not Loaded)")
    return NoGpuError("no-driver", f"NVML failed to initialize: {err}")


def gpu_unavailable_reason(nvml: Any = None, cupy_module: Any = _IMPORT) -> NoGpuError | None:
    """Why a GPU run cannot happen here, or None when one can. Never raises, never prints.

    `cupy_module`: left out, `import cupy` is tried; None stands for "CuPy is not installed"; any other
    object is used as the cupy module (tests pass fakes with `cuda.runtime.getDeviceCount`).
    """
    try:
        nvml_module, reason = _nvml_reason(nvml)
        return reason or _cuda_reason(nvml_module, cupy_module)
    except Exception as err:  # a health check answers with a reason; it must not take the caller down
        return NoGpuError("no-device", f"GPU check failed: {type(err).__name__}: {err}")


def _nvml_reason(nvml: Any) -> tuple[Any, NoGpuError | None]:
    try:
        nvml = init_nvml(nvml)
    except NoGpuError as err:
        return None, err
    try:
        count = nvml.nvmlDeviceGetCount()
    except nvml.NVMLError as err:
        return nvml, NoGpuError("no-device", f"NVML could not count GPUs: {err}")
    return nvml, (NoGpuError("no-device", "NVML found no GPU") if count == 0 else None)


def _cuda_reason(nvml: Any, cupy_module: Any) -> NoGpuError | None:
    if cupy_module is _IMPORT:
        try:
            import cupy as cupy_module
        except ModuleNotFoundError as err:
            if err.name != "cupy":
                return NoGpuError("no-cupy", f"CuPy failed to import: {err}")
            cupy_module = None
        except Exception as err:  # CuPy installed but broken (e.g. its CUDA libraries are missing)
            return NoGpuError("no-cupy", f"CuPy failed to import: {err}")
    if cupy_module is None:
        return NoGpuError("no-cupy", f'CuPy is not installed: pip install -e ".[{_cupy_extra(nvml)}]"')
    try:
        count = cupy_module.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDARuntimeError and friends: no device, driver too old, ...
        return NoGpuError("no-device", f"CUDA sees no device: {err}")
    if count == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        return NoGpuError("no-device", f"CUDA sees no device{hint}")
    return None


def _cupy_extra(nvml: Any) -> str:
    """The pyproject extra whose CuPy wheel matches the driver: cuda13 from a CUDA 13 driver on."""
    version = _optional(nvml, lambda: nvml.nvmlSystemGetCudaDriverVersion())
    return "cuda13" if version is not None and version >= 13000 else "cuda12"


def parse_mig_profile(name: str | None) -> str | None:
    """'NVIDIA H100 80GB HBM3 MIG 1g.10gb' -> '1g.10gb'; None for a name without a MIG profile."""
    match = re.search(r"\bMIG\s+(\S+)\s*$", name or "")
    return match.group(1) if match else None


def discover(index: int = 0, nvml: Any = None, cuda_props: dict | None = None) -> DeviceInfo:
    """Describe CUDA device `index` of this process.

    `cuda_props` is shaped like CuPy's `cupy.cuda.runtime.getDeviceProperties(index)`: keys "major",
    "minor", "multiProcessorCount", "l2CacheSize", "totalGlobalMem", plus our own optional key
    "cudaRuntimeVersion" (e.g. 12080). When None it comes from CuPy if importable, else NVML fills what it
    can (compute capability; SM count only where nvmlDeviceGetAttributes works, i.e. on MIG).
    The NVML device is the one whose UUID CUDA reports (key "uuid", 16 bytes), a MIG instance included;
    without it, the CUDA_VISIBLE_DEVICES entry or index (a MIG UUID there: that MIG instance).
    """
    nvml = init_nvml(nvml)
    cuda = cuda_props if cuda_props is not None else _cupy_props(index)
    gpu, mig = _handles_by_uuid(nvml, _cuda_uuid(cuda)) or _resolve_handles(nvml, index)
    mig_mode = _mig_mode(nvml, gpu)
    instances = _mig_instances(nvml, gpu) if mig_mode else []
    selected = _selected_instance(nvml, mig, instances) if mig is not None else None
    measured = mig if mig is not None else gpu
    pci = _optional(nvml, lambda: nvml.nvmlDeviceGetPciInfo(gpu))
    power_mw = _optional(nvml, lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(gpu))
    return DeviceInfo(
        index=index,
        name=nvml.nvmlDeviceGetName(gpu),
        pci_device_id=pci.pciDeviceId >> 16 if pci is not None else None,
        uuid=nvml.nvmlDeviceGetUUID(measured),
        compute_capability=_compute_capability(nvml, gpu, cuda),
        sm_count=_sm_count(nvml, gpu, cuda, selected),
        memory_total_bytes=_memory_total(nvml, measured, cuda),
        l2_bytes=cuda.get("l2CacheSize") if cuda else None,
        driver_version=_optional(nvml, lambda: nvml.nvmlSystemGetDriverVersion()),
        cuda_driver_version=_optional(nvml, lambda: nvml.nvmlSystemGetCudaDriverVersion()),
        cuda_runtime_version=cuda.get("cudaRuntimeVersion") if cuda else None,
        sm_clock_max_mhz=_optional(nvml, lambda: nvml.nvmlDeviceGetMaxClockInfo(gpu, nvml.NVML_CLOCK_SM)),
        sm_clock_mhz=_optional(nvml, lambda: nvml.nvmlDeviceGetClockInfo(gpu, nvml.NVML_CLOCK_SM)),
        power_limit_w=power_mw / 1000.0 if power_mw is not None else None,
        mig_mode=mig_mode,
        mig_instances=instances,
        is_mig=selected is not None,
        mig_profile=parse_mig_profile(selected.name) if selected else None,
        other_processes=_other_processes(nvml, measured),
        handle=measured,
        parent_handle=gpu if selected else None,
        gpu_instance_id=selected.gpu_instance_id if selected else None,
    )


def _optional(nvml: Any, query: Any) -> Any:
    """Run one optional NVML query; NOT_SUPPORTED, NO_PERMISSION and the like give None."""
    try:
        return query()
    except nvml.NVMLError:
        return None


def _visible_entry(index: int) -> str | None:
    """The CUDA_VISIBLE_DEVICES entry behind CUDA device `index`, or None when the variable is unset."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if not 0 <= index < len(entries):
        raise NoGpuError("no-device", f"CUDA_VISIBLE_DEVICES={visible!r} has no device {index}")
    return entries[index]


def _cuda_uuid(cuda: dict | None) -> str | None:
    """The CUDA device's UUID in NVML's spelling without its GPU-/MIG- prefix; None where CUDA gave none,
    or CuPy's bytes came back short (a C char array converted up to its first zero byte)."""
    raw = (cuda or {}).get("uuid")
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != 16:
        return None
    h = bytes(raw).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _handles_by_uuid(nvml: Any, uuid: str | None) -> tuple[Any, Any] | None:
    """(physical GPU handle, MIG handle or None) of the device with this UUID; None where NVML has none.
    This is what CUDA runs on, whatever CUDA_VISIBLE_DEVICES says: a MIG instance CUDA picked by itself
    (MIG enabled, the variable unset), or GPUs that CUDA orders fastest first and NVML by PCI bus."""
    if uuid is None:
        return None
    for prefix in ("GPU-", "MIG-"):
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(prefix + uuid)
        except nvml.NVMLError:
            continue
        if prefix == "GPU-":
            return handle, None
        return nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle), handle
    return None


def _resolve_handles(nvml: Any, index: int) -> tuple[Any, Any]:
    """(physical GPU handle, MIG handle or None) for CUDA device `index`.

    A numeric CUDA_VISIBLE_DEVICES entry is taken as an NVML index, which matches CUDA's numbering when
    CUDA_DEVICE_ORDER=PCI_BUS_ID or the GPUs are all alike.
    """
    entry = _visible_entry(index)
    try:
        if entry is None:
            return nvml.nvmlDeviceGetHandleByIndex(index), None
        if entry.startswith("MIG-"):
            mig = nvml.nvmlDeviceGetHandleByUUID(entry)
            return nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig), mig
        if entry.startswith("GPU-"):
            return nvml.nvmlDeviceGetHandleByUUID(entry), None
        return nvml.nvmlDeviceGetHandleByIndex(int(entry)), None
    except nvml.NVMLError as err:
        raise NoGpuError("no-device", f"NVML has no device {entry or index}: {err}") from err
    except ValueError as err:  # a CUDA_VISIBLE_DEVICES entry that is neither a UUID nor an index
        raise NoGpuError("no-device", f"cannot read CUDA_VISIBLE_DEVICES entry {entry!r}") from err


def _mig_mode(nvml: Any, gpu: Any) -> bool | None:
    current = _optional(nvml, lambda: nvml.nvmlDeviceGetMigMode(gpu))
    return current[0] == nvml.NVML_DEVICE_MIG_ENABLE if current is not None else None


def _mig_instances(nvml: Any, gpu: Any) -> list[MigInstance]:
    count = _optional(nvml, lambda: nvml.nvmlDeviceGetMaxMigDeviceCount(gpu)) or 0
    instances = []
    for slot in range(count):
        # NOT_FOUND marks an empty slot; any other failure also leaves nothing to describe there
        mig = _optional(nvml, lambda slot=slot: nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, slot))
        if mig is not None:
            instances.append(_describe_mig(nvml, mig, slot))
    return instances


def _describe_mig(nvml: Any, mig: Any, slot: int | None) -> MigInstance:
    attrs = _optional(nvml, lambda: nvml.nvmlDeviceGetAttributes(mig))
    return MigInstance(
        index=slot,
        uuid=nvml.nvmlDeviceGetUUID(mig),
        name=_optional(nvml, lambda: nvml.nvmlDeviceGetName(mig)),
        # nvmlDeviceGetAttributes has no instance ids (only counts and sizes): they have their own calls
        sm_count=attrs.multiprocessorCount if attrs is not None else None,
        gpu_instance_id=_optional(nvml, lambda: nvml.nvmlDeviceGetGpuInstanceId(mig)),
        compute_instance_id=_optional(nvml, lambda: nvml.nvmlDeviceGetComputeInstanceId(mig)),
        handle=mig,
    )


def _selected_instance(nvml: Any, mig: Any, instances: list[MigInstance]) -> MigInstance:
    uuid = nvml.nvmlDeviceGetUUID(mig)
    found = next((m for m in instances if m.uuid == uuid), None)
    return found if found is not None else _describe_mig(nvml, mig, None)


def _cupy_props(index: int) -> dict | None:
    try:
        import cupy

        props = dict(cupy.cuda.runtime.getDeviceProperties(index))
        props["cudaRuntimeVersion"] = cupy.cuda.runtime.runtimeGetVersion()
    except Exception:  # no CuPy, or CUDA unusable: NVML still describes the GPU
        return None
    return props


def _compute_capability(nvml: Any, gpu: Any, cuda: dict | None) -> tuple[int, int] | None:
    if cuda and "major" in cuda and "minor" in cuda:
        return int(cuda["major"]), int(cuda["minor"])
    cc = _optional(nvml, lambda: nvml.nvmlDeviceGetCudaComputeCapability(gpu))
    return (int(cc[0]), int(cc[1])) if cc is not None else None


def _sm_count(nvml: Any, gpu: Any, cuda: dict | None, selected: MigInstance | None) -> int | None:
    if selected is not None and selected.sm_count is not None:
        return selected.sm_count
    if cuda and cuda.get("multiProcessorCount"):
        return int(cuda["multiProcessorCount"])
    # nvmlDeviceGetNumGpuCores counts CUDA cores, not SMs; nvmlDeviceGetAttributes works only on MIG
    # handles, so a full GPU without CUDA properties usually ends up None here.
    attrs = _optional(nvml, lambda: nvml.nvmlDeviceGetAttributes(gpu))
    return attrs.multiprocessorCount if attrs is not None else None


def _memory_total(nvml: Any, measured: Any, cuda: dict | None) -> int | None:
    if cuda and cuda.get("totalGlobalMem"):
        return int(cuda["totalGlobalMem"])
    memory = _optional(nvml, lambda: nvml.nvmlDeviceGetMemoryInfo(measured))
    return memory.total if memory is not None else None


def _other_processes(nvml: Any, handle: Any) -> list[dict]:
    try:
        procs = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except (nvml.NVMLError, nvml.NVMLLibraryMismatchError):  # mismatch: pynvml newer than the driver
        return []
    own = os.getpid()
    return [
        {"pid": p.pid, "name": _optional(nvml, lambda p=p: nvml.nvmlSystemGetProcessName(p.pid)),
         "used_bytes": p.usedGpuMemory}
        for p in procs
        if p.pid != own
    ]

