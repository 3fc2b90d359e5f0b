"""Host stand-ins for CuPy, answered by NumPy: a few names for launch() and check() (`install`), or enough
of the array API for a workload's whole setup, launch and check (`install_numpy`)."""
import functools
import sys
from types import ModuleType, SimpleNamespace

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


def _on_device(fn):
    """`fn` with NumPy array results viewed as HostArrays, as CuPy returns device arrays."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        out = fn(*args, **kwargs)
        return on_device(out) if isinstance(out, np.ndarray) else out
    return call


class NumpyCupy(ModuleType):
    """`cupy` as NumPy: arrays live in host memory and answer .get(); kernels come from elsewhere."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__("cupy")
        rng = np.random.default_rng(seed)
        self.random = SimpleNamespace(
            random=_on_device(lambda size=None, dtype=np.float64: rng.random(size, dtype=dtype)),
            randint=_on_device(lambda low, high=None, size=None, dtype=np.int64:
                               rng.integers(low, high, size, dtype=dtype)))
        self.cuda = SimpleNamespace(runtime=SimpleNamespace())

    def __getattr__(self, name: str):
        attr = getattr(np, name)
        return _on_device(attr) if callable(attr) and not isinstance(attr, type) else attr


def install_numpy(monkeypatch, seed: int = 0) -> NumpyCupy:
    """Put a NumPy-backed `cupy` in sys.modules for one test."""
    fake = NumpyCupy(seed)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    return fake


class ExternalStream:
    """cupy.cuda.ExternalStream: a stream made elsewhere, current inside `with`."""

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr

    def __enter__(self) -> "ExternalStream":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def install_for_streams(monkeypatch, record=None) -> NumpyCupy:
    """A NumPy-backed `cupy` that also wraps external streams (ExternalStream; no Stream.from_external)
    and makes events whose record() runs `record(stream)`: enough for work on a green-context stream."""
    fake = install_numpy(monkeypatch)
    event = SimpleNamespace(record=record or (lambda stream: None), synchronize=lambda: None)
    fake.cuda = SimpleNamespace(Event=lambda: event, Stream=SimpleNamespace(), ExternalStream=ExternalStream)
    return fake
