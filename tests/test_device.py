"""Device discovery and the no-GPU checks, against the strict pynvml fake (no GPU needed)."""
import inspect
import json
import os
import sys
from types import SimpleNamespace

import pynvml
import pytest

from mfugap.device import (
    DeviceInfo,
    NoGpuError,
    discover,
    gpu_unavailable_reason,
    init_nvml,
    parse_mig_profile,
)
from tests.fake_nvml import GIB, FakeGpu, FakeHandle, FakeMig, FakeNvml, FakeProcess

H100_PROPS = {
    "major": 9,
    "minor": 0,
    "multiProcessorCount": 132,
    "l2CacheSize": 50 * (1 << 20),
    "totalGlobalMem": 79 * GIB,
    "cudaRuntimeVersion": 12080,
}
MIG_1G = FakeMig(uuid="MIG-aaaaaaaa-1111-5e1f-9b4a-2f7c1e0a0001", name="NVIDIA H100 80GB HBM3 MIG 1g.10gb",
                 sm_count=16, gpu_instance_id=9, compute_instance_id=0, memory_total=10 * GIB)
MIG_2G = FakeMig(uuid="MIG-bbbbbbbb-2222-5e1f-9b4a-2f7c1e0a0002", name="NVIDIA H100 80GB HBM3 MIG 2g.20gb",
                 sm_count=32, gpu_instance_id=5, compute_instance_id=1, memory_total=20 * GIB)


@pytest.fixture(autouse=True)
def no_cuda_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.fixture
def no_cupy(monkeypatch):
    """Make `import cupy` fail, so a GPU box with CuPy runs these tests the same way."""
    monkeypatch.setitem(sys.modules, "cupy", None)


def mig_gpu() -> FakeGpu:
    return FakeGpu(mig_mode=(1, 1), mig_slots=[MIG_1G, None, MIG_2G, None])


def cupy_with(count=None, error=None):
    def get_device_count():
        if error is not None:
            raise error
        return count

    return SimpleNamespace(cuda=SimpleNamespace(runtime=SimpleNamespace(getDeviceCount=get_device_count)))


# ---- the fake itself ----

def test_fake_offers_only_real_pynvml_names_with_compatible_signatures():
    names = [n for n in dir(FakeNvml) if n.startswith(("nvml", "NVML", "c_nvml"))]
    assert "nvmlDeviceGetSamples" in names and "NVMLError" in names
    for name in names:
        assert hasattr(pynvml, name), f"{name} is not in pynvml"
        ours, real = getattr(FakeNvml, name), getattr(pynvml, name)
        if not inspect.isfunction(ours):
            assert ours is real or ours == real, name
            continue
        real_params = inspect.signature(real).parameters.values()
        required = sum(p.default is inspect.Parameter.empty for p in real_params)
        ours_count = len(inspect.signature(ours).parameters) - 1  # self
        assert required <= ours_count <= len(real_params), f"{name}: signature differs from pynvml"


def test_fake_is_strict():
    fake = FakeNvml(FakeGpu())
    with pytest.raises(AttributeError):
        _ = fake.nvmlDeviceGetNumGpuCores
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()
    fake.nvmlInit()
    fake.hidden.add("nvmlDeviceGetCount")
    with pytest.raises(AttributeError):
        fake.nvmlDeviceGetCount()


# ---- init and the no-GPU reasons ----

def test_init_nvml_is_idempotent():
    fake = FakeNvml(FakeGpu())
    assert init_nvml(fake) is fake
    assert init_nvml(fake) is fake
    assert fake.calls.count("nvmlInit") == 1


@pytest.mark.parametrize(("code", "text"), [
    (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "libnvidia-ml.so could not be loaded"),
    (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "not loaded"),
    (pynvml.NVML_ERROR_UNKNOWN, "NVML failed to initialize"),
])
def test_init_nvml_maps_driver_errors(code, text):
    fake = FakeNvml(FakeGpu())
    fake.errors["nvmlInit"] = code
    with pytest.raises(NoGpuError) as caught:
        init_nvml(fake)
    assert caught.value.kind == "no-driver"
    assert text in str(caught.value)


def test_init_nvml_without_pynvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(NoGpuError) as caught:
        init_nvml()
    assert caught.value.kind == "nvml-missing"
    assert "nvidia-ml-py is not installed" in str(caught.value)


def test_no_gpu_error_rejects_unknown_kind():
    with pytest.raises(ValueError):
        NoGpuError("tired", "no")


def _reason(nvml=None, **kwargs):
    reason = gpu_unavailable_reason(nvml, **kwargs)
    return (reason.kind, str(reason)) if reason is not None else None


def test_reason_nvml_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert _reason(cupy_module=cupy_with(1))[0] == "nvml-missing"


def test_reason_driver_missing():
    fake = FakeNvml(FakeGpu())
    fake.errors["nvmlInit"] = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    assert _reason(fake, cupy_module=cupy_with(1)) == (
        "no-driver", "NVIDIA driver not found (libnvidia-ml.so could not be loaded)")


def test_reason_no_device():
    assert _reason(FakeNvml(), cupy_module=cupy_with(1)) == ("no-device", "NVML found no GPU")


@pytest.mark.parametrize(("cuda_driver", "extra"), [(12080, "cuda12"), (13000, "cuda13")])
def test_reason_cupy_missing_names_the_matching_extra(cuda_driver, extra):
    fake = FakeNvml(FakeGpu(), cuda_driver_version=cuda_driver)
    expected = f'CuPy is not installed: pip install -e ".[{extra}]"'
    assert _reason(fake, cupy_module=None) == ("no-cupy", expected)


def test_reason_cupy_import_fails(no_cupy):
    kind, message = _reason(FakeNvml(FakeGpu()))
    assert kind == "no-cupy"
    assert message.startswith("CuPy is not installed")


def test_reason_cuda_sees_no_device(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert _reason(FakeNvml(FakeGpu()), cupy_module=cupy_with(0)) == (
        "no-device", "CUDA sees no device (CUDA_VISIBLE_DEVICES='')")
    broken = cupy_with(error=RuntimeError("cudaErrorNoDevice"))
    expected = ("no-device", "CUDA sees no device: cudaErrorNoDevice")
    assert _reason(FakeNvml(FakeGpu()), cupy_module=broken) == expected


def test_reason_none_when_all_good():
    assert gpu_unavailable_reason(FakeNvml(FakeGpu()), cupy_module=cupy_with(1)) is None


def test_reason_never_raises(capsys):
    fake = FakeNvml(FakeGpu())
    fake.hooks["nvmlDeviceGetCount"] = lambda: 1 / 0
    kind, message = _reason(fake, cupy_module=cupy_with(1))
    assert kind == "no-device"
    assert "ZeroDivisionError" in message
    assert capsys.readouterr() == ("", "")


# ---- discovery ----

def test_discover_plain_gpu():
    gpu = FakeGpu(processes=[FakeProcess(os.getpid()), FakeProcess(4242, used_bytes=3 * GIB, name="trainer"),
                             FakeProcess(4343, used_bytes=None, name=None)])
    fake = FakeNvml(gpu)
    info = discover(0, nvml=fake, cuda_props=H100_PROPS)
    assert info.name == "NVIDIA H100 80GB HBM3"
    assert info.pci_device_id == 0x2330
    assert info.uuid == gpu.uuid
    assert info.compute_capability == (9, 0)
    assert info.sm_count == 132
    assert info.memory_total_bytes == 79 * GIB
    assert info.l2_bytes == 50 * (1 << 20)
    assert info.driver_version == "570.86.15"
    assert info.cuda_driver_version == 12080
    assert info.cuda_runtime_version == 12080
    assert info.sm_clock_max_mhz == 1980
    assert info.sm_clock_mhz == 1755
    assert info.power_limit_w == 700.0
    assert info.mig_mode is None and info.mig_instances == [] and not info.is_mig
    assert info.mig_profile is None and info.parent_handle is None and info.gpu_instance_id is None
    assert info.other_processes == [
        {"pid": 4242, "name": "trainer", "used_bytes": 3 * GIB},
        {"pid": 4343, "name": None, "used_bytes": None},
    ]
    assert info.handle == FakeHandle(0)
    assert "handle" not in repr(info)


def test_discover_mig_enabled_skips_empty_slots():
    info = discover(0, nvml=FakeNvml(mig_gpu()), cuda_props=H100_PROPS)
    assert info.mig_mode is True
    assert [(m.index, m.uuid, m.name, m.sm_count, m.gpu_instance_id, m.compute_instance_id)
            for m in info.mig_instances] == [
        (0, MIG_1G.uuid, MIG_1G.name, 16, 9, 0),
        (2, MIG_2G.uuid, MIG_2G.name, 32, 5, 1),
    ]
    assert not info.is_mig  # CUDA_VISIBLE_DEVICES names no MIG instance


def test_discover_mig_disabled_lists_no_instances():
    info = discover(0, nvml=FakeNvml(FakeGpu(mig_mode=(0, 0), mig_slots=[None] * 7)), cuda_props=H100_PROPS)
    assert info.mig_mode is False
    assert info.mig_instances == []


def test_discover_mig_instance_from_cuda_visible_devices(monkeypatch, no_cupy):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", MIG_2G.uuid)
    info = discover(0, nvml=FakeNvml(mig_gpu()))
    assert info.is_mig
    assert info.uuid == MIG_2G.uuid
    assert info.name == "NVIDIA H100 80GB HBM3"  # the physical GPU: the catalog knows it by this name
    assert info.mig_profile == "2g.20gb"
    assert info.sm_count == 32
    assert info.memory_total_bytes == 20 * GIB
    assert info.handle == FakeHandle(0, 2)
    assert info.parent_handle == FakeHandle(0)
    assert info.gpu_instance_id == 5
    assert info.pci_device_id == 0x2330 and info.sm_clock_max_mhz == 1980  # board queries use the parent


def test_discover_follows_cuda_visible_devices_to_another_gpu(monkeypatch):
    second = FakeGpu(name="NVIDIA A100-SXM4-80GB", pci_device_id=0x20B210DE,
                     uuid="GPU-22222222-d72c-4106-c12f-20bd9faed9f6")
    fake = FakeNvml(FakeGpu(), second)
    for visible in (second.uuid, "1", f"{second.uuid},0"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        info = discover(0, nvml=fake, cuda_props=H100_PROPS)
        assert (info.name, info.pci_device_id) == ("NVIDIA A100-SXM4-80GB", 0x20B2)
        assert info.handle == FakeHandle(1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(NoGpuError) as caught:
        discover(1, nvml=fake, cuda_props=H100_PROPS)
    assert caught.value.kind == "no-device"


def _uuid_bytes(nvml_uuid: str) -> bytes:
    """CUDA's cudaDeviceProp.uuid (16 bytes) for an NVML UUID string."""
    return bytes.fromhex(nvml_uuid.split("-", 1)[1].replace("-", ""))


def test_discover_finds_the_gpu_cuda_runs_on_by_its_uuid():
    """CUDA orders GPUs fastest first, NVML by PCI bus: CUDA's device 0 may be NVML's device 1."""
    second = FakeGpu(name="NVIDIA A100-SXM4-80GB", pci_device_id=0x20B210DE,
                     uuid="GPU-22222222-d72c-4106-c12f-20bd9faed9f6")
    info = discover(0, nvml=FakeNvml(FakeGpu(), second),
                    cuda_props={**H100_PROPS, "uuid": _uuid_bytes(second.uuid)})
    assert (info.name, info.uuid, info.handle) == ("NVIDIA A100-SXM4-80GB", second.uuid, FakeHandle(1))


def test_discover_finds_the_mig_instance_cuda_picked_without_cuda_visible_devices():
    """MIG enabled and CUDA_VISIBLE_DEVICES unset: CUDA runs on a MIG instance by itself. Its UUID names
    the slice, so the peaks are the slice's, not the whole card's."""
    info = discover(0, nvml=FakeNvml(mig_gpu()),
                    cuda_props={**H100_PROPS, "multiProcessorCount": 16, "uuid": _uuid_bytes(MIG_1G.uuid)})
    assert info.is_mig and info.mig_profile == "1g.10gb" and info.uuid == MIG_1G.uuid
    assert info.handle == FakeHandle(0, 0) and info.parent_handle == FakeHandle(0)
    assert info.sm_count == 16


@pytest.mark.parametrize("uuid", [b"\x22" * 15, "GPU-22222222", None, b"\x99" * 16])
def test_discover_without_a_usable_cuda_uuid_falls_back_to_the_index(uuid):
    """Short bytes (CuPy cut them at a zero byte), a wrong type, none, or one NVML does not know."""
    second = FakeGpu(name="NVIDIA A100-SXM4-80GB", uuid="GPU-22222222-d72c-4106-c12f-20bd9faed9f6")
    info = discover(0, nvml=FakeNvml(FakeGpu(), second), cuda_props={**H100_PROPS, "uuid": uuid})
    assert info.handle == FakeHandle(0) and info.name == "NVIDIA H100 80GB HBM3"


def test_discover_unsupported_optional_fields_are_none(no_cupy):
    fake = FakeNvml(FakeGpu(processes=[FakeProcess(4242)]))
    for name, code in [
        ("nvmlDeviceGetPciInfo", pynvml.NVML_ERROR_NOT_SUPPORTED),
        ("nvmlDeviceGetEnforcedPowerLimit", pynvml.NVML_ERROR_NOT_SUPPORTED),
        ("nvmlDeviceGetMaxClockInfo", pynvml.NVML_ERROR_NO_PERMISSION),
        ("nvmlDeviceGetClockInfo", pynvml.NVML_ERROR_NOT_SUPPORTED),
        ("nvmlSystemGetDriverVersion", pynvml.NVML_ERROR_UNKNOWN),
        ("nvmlSystemGetCudaDriverVersion", pynvml.NVML_ERROR_NOT_SUPPORTED),
        ("nvmlDeviceGetCudaComputeCapability", pynvml.NVML_ERROR_NOT_SUPPORTED),
        ("nvmlDeviceGetMemoryInfo", pynvml.NVML_ERROR_NO_PERMISSION),
        ("nvmlDeviceGetComputeRunningProcesses", pynvml.NVML_ERROR_NO_PERMISSION),
    ]:
        fake.errors[name] = code
    info = discover(0, nvml=fake)
    for name in ("pci_device_id", "power_limit_w", "sm_clock_max_mhz", "sm_clock_mhz", "driver_version",
                 "cuda_driver_version", "compute_capability", "memory_total_bytes", "sm_count", "l2_bytes",
                 "cuda_runtime_version", "mig_mode"):
        assert getattr(info, name) is None, name
    assert info.other_processes == []
    out = info.to_json()
    assert out["pci_device_id"] is None and out["compute_capability"] is None
    json.dumps(out)


def test_discover_without_cupy_falls_back_to_nvml(no_cupy):
    info = discover(0, nvml=FakeNvml(FakeGpu(compute_capability=(10, 0), memory_total=180 * GIB)))
    assert info.compute_capability == (10, 0)
    assert info.memory_total_bytes == 180 * GIB
    assert info.sm_count is None  # no SM count from NVML on a full GPU
    assert info.l2_bytes is None and info.cuda_runtime_version is None


def test_discover_tolerates_pynvml_newer_than_driver():
    fake = FakeNvml(FakeGpu(processes=[FakeProcess(4242)]))

    def mismatch():
        raise pynvml.NVMLLibraryMismatchError("nvmlDeviceGetComputeRunningProcesses_v3 missing")

    fake.hooks["nvmlDeviceGetComputeRunningProcesses"] = mismatch
    assert discover(0, nvml=fake, cuda_props=H100_PROPS).other_processes == []


def test_discover_missing_device_is_no_gpu_error():
    with pytest.raises(NoGpuError) as caught:
        discover(3, nvml=FakeNvml(FakeGpu()), cuda_props=H100_PROPS)
    assert caught.value.kind == "no-device"


def test_to_json_is_json_safe(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", MIG_1G.uuid)
    info = discover(0, nvml=FakeNvml(mig_gpu()), cuda_props=H100_PROPS)
    out = info.to_json()
    assert out["compute_capability"] == "9.0"
    assert out["pci_device_id"] == "0x2330"
    assert out["mig_profile"] == "1g.10gb"
    assert "handle" not in out and "parent_handle" not in out
    assert all("handle" not in m for m in out["mig_instances"])
    assert json.loads(json.dumps(out)) == out
    assert set(out) == {f for f in DeviceInfo.__dataclass_fields__ if f not in ("handle", "parent_handle")}


@pytest.mark.parametrize(("name", "profile"), [
    ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", "1g.10gb"),
    ("NVIDIA A100-SXM4-40GB MIG 1c.2g.10gb", "1c.2g.10gb"),
    ("NVIDIA H200 MIG 1g.18gb+me", "1g.18gb+me"),
    ("NVIDIA H100 80GB HBM3", None),
    (None, None),
])
def test_parse_mig_profile(name, profile):
    assert parse_mig_profile(name) == profile
