"""A host stand-in for the few CuPy names kernel modules use in launch() and check(), answered by NumPy."""
import sys
from types import SimpleNamespace

import numpy as np


class HostArray(np.ndarray):
    """A NumPy array that answers .get() like a CuPy one, so check() runs on the host."""

    def get(self) -> np.ndarray:
        return np.asarray(self)


def on_device(x: np.ndarray) -> HostArray:
    return np.asarray(x).view(HostArray)


class Recorder:
    """Stands in for SOURCE.function: records every launch as (kernel, grid, block, args, kwargs)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, name: str):
        return lambda grid, block, args, **kwargs: self.calls.append((name, grid, block, args, kwargs))


def install(monkeypatch) -> SimpleNamespace:
    """Put the stand-in in sys.modules["cupy"] for one test."""
    runtime = SimpleNamespace(memcpyDeviceToDevice=3, copies=[])
    runtime.memcpyAsync = lambda *args: runtime.copies.append(args)
    fake = SimpleNamespace(isnan=np.isnan, asarray=np.asarray, int32=np.int32, int64=np.int64,
                           float32=np.float32, cuda=SimpleNamespace(runtime=runtime))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    return fake
