"""Numba-CUDA kernels run in the CUDA simulator unless a GPU is usable, so the same tests run on both.

NUMBA_ENABLE_CUDASIM is read once, when numba.cuda is first imported: it has to be set here, before any
test module imports a kernel. An explicit setting in the environment wins.
"""
import os

import pytest

from mfugap.device import gpu_unavailable_reason
from tests import fake_cupy as fake_cupy_module

if gpu_unavailable_reason() is not None:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")


@pytest.fixture
def fake_cupy(monkeypatch):
    """CuPy's few names that kernel modules' launch() and check() use, answered by NumPy on the host."""
    return fake_cupy_module.install(monkeypatch)
