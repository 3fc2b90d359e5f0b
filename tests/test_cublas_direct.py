"""cuBLAS called directly through ctypes, so that short GEMMs can be captured into a CUDA graph (CuPy 14's
wrapper refuses cuBLAS during capture). Without libcublas (CI) the library tests skip; the lookup and the
routing run everywhere."""
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mfugap.kernels import cublas_gemm

MAPS = """\
7f00a0000000-7f00a0200000 r-xp 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libc.so.6
7f00b0000000-7f00b4000000 r-xp 00000000 08:01 456 /opt/py/site-packages/nvidia/cu13/lib/libcublasLt.so.13
7f00c0000000-7f00c1000000 r-xp 00000000 08:01 789 /opt/py/site-packages/nvidia/cu13/lib/libcublas.so.13
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
7ffd00030000-7ffd00031000 rw-p 00000000 00:00 0
"""


def test_the_loaded_library_is_found_by_its_file_name(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(MAPS)
    found = cublas_gemm.loaded_library("libcublas.so", maps)
    assert found == "/opt/py/site-packages/nvidia/cu13/lib/libcublas.so.13"
    assert cublas_gemm.loaded_library("libcublasLt.so", maps).endswith("libcublasLt.so.13")
    assert cublas_gemm.loaded_library("libcudart.so", maps) is None
    assert cublas_gemm.loaded_library("libcublas.so", tmp_path / "absent") is None


def _fake_stack(monkeypatch, calls: list, direct: object) -> None:
    cublas = SimpleNamespace(CUBLAS_OP_N=0, CUBLAS_GEMM_DEFAULT=-1,
                             gemmEx=lambda *args: calls.append(("cupy", args)))
    cupy = SimpleNamespace(cuda=SimpleNamespace(device=SimpleNamespace(get_cublas_handle=lambda: 0x77)))
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy_backends", SimpleNamespace())
    monkeypatch.setitem(sys.modules, "cupy_backends.cuda", SimpleNamespace())
    monkeypatch.setitem(sys.modules, "cupy_backends.cuda.libs", SimpleNamespace(cublas=cublas))
    monkeypatch.setattr(cublas_gemm, "direct_cublas", lambda: direct)


def _gemm() -> cublas_gemm.CublasGemm:
    def device(ptr):
        return SimpleNamespace(data=SimpleNamespace(ptr=ptr))

    g = cublas_gemm.CublasGemm(3, 8, 5, "bf16")
    g.buf = {"a": device(0xA0), "b_copies": [device(0xB0)], "c": device(0xC0), "dtype": 14, "compute": 68,
             "alpha": np.ones(1, np.float32), "beta": np.zeros(1, np.float32)}
    return g


def test_launch_calls_cublas_directly_on_the_given_stream(monkeypatch):
    calls: list = []
    direct = SimpleNamespace(gemm_ex=lambda *args: calls.append(("direct", args)))
    _fake_stack(monkeypatch, calls, direct)
    g = _gemm()
    g.launch(SimpleNamespace(ptr=0x5EA))
    (kind, (stream, handle, *args)), = calls
    assert (kind, stream, handle) == ("direct", 0x5EA, 0x77)
    # row-major C[3,8] = A[3,5] @ B[5,8] as column-major C^T = B^T @ A^T: m=N, n=M, B first, lda=N, ldb=K
    assert args[:5] == [0, 0, 8, 3, 5]
    assert args[6:13] == [0xB0, 14, 8, 0xA0, 14, 5, g.buf["beta"].ctypes.data]
    assert args[5] == g.buf["alpha"].ctypes.data
    assert args[13:] == [0xC0, 14, 8, 68, -1]


def test_launch_falls_back_to_cupys_wrapper_with_the_same_arguments(monkeypatch):
    calls: list = []
    g = _gemm()
    _fake_stack(monkeypatch, calls, direct=None)
    g.launch(SimpleNamespace(ptr=0x5EA))
    direct_calls: list = []
    _fake_stack(monkeypatch, direct_calls, SimpleNamespace(gemm_ex=lambda *a: direct_calls.append(a)))
    g.launch(SimpleNamespace(ptr=0x5EA))
    (kind, args), = calls
    assert kind == "cupy" and args == direct_calls[0][1:]


# ---- against a real libcublas, where one is installed (a GPU box; not CI) ----

def _real_cublas():
    try:
        from cupy_backends.cuda.libs import cublas  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"libcublas is not installed here, as on CI ({str(exc).splitlines()[0]})")
    cublas_gemm.direct_cublas.cache_clear()
    direct = cublas_gemm.direct_cublas()
    assert direct is not None, "CuPy's cuBLAS module imported, yet no libcublas is mapped"
    return direct


def test_the_real_library_takes_the_call_and_its_status_is_checked():
    """Without a GPU there is no handle: a NULL one must come back as NOT_INITIALIZED (status 1), which
    shows that the symbols exist, take their arguments, and that a failed status raises."""
    direct = _real_cublas()
    assert Path(direct.path).name.startswith("libcublas.so.")
    with pytest.raises(cublas_gemm.CublasError, match=r"^cublasSetStream returned cuBLAS status 1$"):
        direct.gemm_ex(0, 0, *[0] * 17)
    assert direct._gemm_ex(None, *[0] * 18) == 1


def _prototype(header: str, name: str) -> list[str]:
    match = re.search(rf"cublasStatus_t\s+CUBLASWINAPI\s+{name}\s*\(([^)]*)\)", header)
    assert match, f"no prototype of {name}"
    return [" ".join(p.split()) for p in match.group(1).split(",")]


@pytest.mark.parametrize(("name", "argtypes"), [("cublasGemmEx", cublas_gemm.GEMM_EX_ARGTYPES),
                                                ("cublasSetStream_v2", cublas_gemm.SET_STREAM_ARGTYPES)])
def test_argtypes_follow_the_header(name, argtypes):
    direct = _real_cublas()
    header = Path(direct.path).parent.parent / "include" / "cublas_api.h"
    if not header.is_file():
        pytest.skip(f"no cublas_api.h beside {direct.path}")
    params = _prototype(header.read_text(), name)
    assert len(params) == len(argtypes)
    for param, argtype in zip(params, argtypes, strict=True):
        # pointers, handles and streams are pointer-sized; everything else is an int or an enum
        pointer = "*" in param or param.split()[0] in ("cublasHandle_t", "cudaStream_t")
        assert (argtype is cublas_gemm.ctypes.c_void_p) == pointer, param
