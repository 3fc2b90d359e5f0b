"""Every CUDA C source built the way CuPy builds it on a GPU, without one: CuPy's NVRTC path with the
options its RawModule adds (its CCCL and header folders, the CUDA runtime headers it finds, -ftz=true
and --device-as-default-execution-space), for sm_80 and sm_90, with no register spills.

tests/test_cuda_sources.py compiles the same sources with options of our own; this is the path the
kernels take on a GPU. It runs where CuPy imports (CI's cuda13 environment) and skips elsewhere.
"""
import io

import pytest

from mfugap.cuda_source import OFFLINE_ARCHS, parse_ptxas_log
from tests.test_cuda_sources import SOURCES

cupy = pytest.importorskip("cupy", reason="CuPy is not installed (CI's cuda13 environment has it)")
from cupy._core import core  # noqa: E402  (only once CuPy is known to import)
from cupy.cuda import compiler  # noqa: E402


@pytest.fixture
def target(monkeypatch, request) -> str:
    """CuPy asks the current device which architecture to build for; with none here, it is told."""
    arch = request.param
    chosen = (f"-arch={arch}", "cubin")
    monkeypatch.setattr(compiler, "_get_arch_for_options_for_nvrtc", lambda _=None: chosen)
    return arch


@pytest.mark.parametrize("target", OFFLINE_ARCHS, indirect=True)
@pytest.mark.parametrize("source", SOURCES, ids=lambda s: "+".join(s.kernels))
def test_cupy_builds_it_as_on_a_gpu_without_spills(source, target):
    # RawModule's options, then what CuPy's compile_with_cache adds (flush subnormals to zero)
    options = (*core.assemble_cupy_compiler_options((f"-std={source.std}", "-Xptxas=-v")), "-ftz=true")
    log = io.StringIO()
    compiler.compile_using_nvrtc(source.code, options=options, log_stream=log)
    kernels = parse_ptxas_log(log.getvalue())
    assert set(source.kernels) <= set(kernels), f"not all kernels built for {target}"
    for name in set(source.kernels) - set(source.may_spill):
        assert (kernels[name].spill_stores, kernels[name].spill_loads) == (0, 0), f"{name} spills on {target}"
