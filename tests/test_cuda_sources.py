"""Every CUDA C kernel compiles with NVRTC for sm_80 and sm_90 without a GPU, and does not spill; and for
the oldest GPU its declared compute capability allows, but not for one older."""
import importlib
import pkgutil

import pytest

import mfugap.kernels
from mfugap import catalog
from mfugap.cuda_source import OFFLINE_ARCHS, parse_ptxas_log, registered

for info in pkgutil.walk_packages(mfugap.kernels.__path__, prefix="mfugap.kernels."):
    importlib.import_module(info.name)  # packages too: the GEMM ladder's CUDA C rungs

SOURCES = registered()


def _compiled(source, arch, cache={}):  # noqa: B006 - a per-session cache of slow compiles
    key = (id(source), arch)
    if key not in cache:
        cache[key] = source.compile_offline(arch)
    return cache[key]


def test_kernel_modules_register_their_sources():
    names = {k for s in SOURCES for k in s.kernels}
    assert {"triad_f32", "spin"} <= names


@pytest.mark.parametrize("arch", OFFLINE_ARCHS)
@pytest.mark.parametrize("source", SOURCES, ids=lambda s: "+".join(s.kernels))
def test_compiles_without_spills(source, arch):
    report = _compiled(source, arch)
    assert set(source.kernels) <= set(report.kernels), "a declared kernel is missing from the build"
    for name, k in report.kernels.items():
        assert k.registers > 0
        if name not in source.may_spill:
            assert (k.spill_stores, k.spill_loads) == (0, 0), f"{name} spills on {arch}"


def _supported_archs() -> list[tuple[int, int]]:
    """The architectures this NVRTC compiles for, oldest first (CUDA 13 dropped everything before 7.5)."""
    from cuda.bindings import nvrtc

    status, archs = nvrtc.nvrtcGetSupportedArchs()
    assert status == nvrtc.nvrtcResult.NVRTC_SUCCESS
    return sorted(divmod(a, 10) for a in archs)


OLDEST_GPU = min(spec.compute_capability for spec in catalog.catalog())  # V100, 7.0


def _sm(cc: tuple[int, int]) -> str:
    return f"sm_{cc[0]}{cc[1]}"


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: "+".join(s.kernels))
def test_builds_for_the_oldest_gpu_its_requirement_allows(source):
    """A source without a requirement builds for every GPU in the catalog NVRTC still supports, so the
    harness never has to skip it; one with a requirement builds at it."""
    oldest = max(source.min_compute_capability, OLDEST_GPU, _supported_archs()[0])
    assert set(source.kernels) <= set(_compiled(source, _sm(oldest)).kernels)


@pytest.mark.parametrize("source", [s for s in SOURCES if s.min_compute_capability > OLDEST_GPU],
                         ids=lambda s: "+".join(s.kernels))
def test_a_declared_requirement_is_real(source):
    """One supported architecture below the requirement the source does not build: the cases that use
    it are skipped on such GPUs for a reason, not by caution."""
    below = [cc for cc in _supported_archs() if OLDEST_GPU <= cc < source.min_compute_capability]
    assert below, "no older architecture to try"
    with pytest.raises(RuntimeError, match="NVRTC failed"):
        source.compile_offline(_sm(below[-1]))


@pytest.mark.parametrize("arch", OFFLINE_ARCHS)
def test_triad_uses_16_byte_accesses(arch):
    from mfugap.kernels.stream import SOURCE

    ptx = _compiled(SOURCE, arch).ptx
    assert "ld.global.nc.v4.f32" in ptx or "ld.global.v4.f32" in ptx
    assert "st.global.v4.f32" in ptx


def test_spin_is_bounded_by_the_global_timer_and_an_iteration_cap():
    from mfugap.kernels.spin import SOURCE

    ptx = _compiled(SOURCE, "sm_90").ptx
    assert "%globaltimer" in ptx
    # the iteration cap is the kernel's second parameter and must be compared in the loop
    assert "spin_param_1" in ptx


def test_ptxas_log_parsing():
    log = """ptxas info    : Compiling entry function 'k' for 'sm_90'
ptxas info    : Function properties for k
ptxas         .     8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers
ptxas info    : Compiling entry function 'j' for 'sm_90'
ptxas info    : Function properties for j
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers"""
    r = parse_ptxas_log(log)
    assert (r["k"].registers, r["k"].spill_stores, r["k"].spill_loads, r["k"].stack_bytes) == (40, 4, 12, 8)
    assert r["j"].registers == 8
    with pytest.raises(ValueError, match="lacks"):
        parse_ptxas_log("ptxas info    : Compiling entry function 'x' for 'sm_90'\nnothing")


def test_kernel_functions_are_looked_up_once_per_device(monkeypatch):
    from types import SimpleNamespace

    from mfugap import cuda_source

    monkeypatch.setattr(cuda_source, "_REGISTRY", [])  # the throwaway source must not join the real ones
    device = {"id": 0}
    fake_cupy = SimpleNamespace(cuda=SimpleNamespace(runtime=SimpleNamespace(getDevice=lambda: device["id"])))
    monkeypatch.setitem(__import__("sys").modules, "cupy", fake_cupy)
    lookups = []
    source = cuda_source.CudaSource("", kernels=("k",))
    source.__dict__["_module"] = SimpleNamespace(get_function=lambda name: lookups.append(name) or object())
    first = source.function("k")
    assert source.function("k") is first and lookups == ["k"]
    device["id"] = 1
    assert source.function("k") is not first and lookups == ["k", "k"]
    with pytest.raises(KeyError, match="not one of"):
        source.function("other")
