"""Numba-CUDA kernels run in the CUDA simulator unless a GPU is usable, so the same tests run on both.

NUMBA_ENABLE_CUDASIM is read once, when numba.cuda is first imported: it has to be set here, before any
test module imports a kernel. An explicit setting in the environment wins.
"""
import os

from mfugap.device import gpu_unavailable_reason

if gpu_unavailable_reason() is not None:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
