"""The contract between a kernel family and the harness.

A workload says what it computes and how much work that is; the harness (mfugap.measure) does
everything else: memory check, verification, warm-up, timing, sampling, metrics. A workload never
times itself, and never synchronizes inside `launch` unless the synchronization is the scenario being
measured (the pipeline-stall steps; those set `graphable = False`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

PRECISION_NONE = "none"  # the workload does no model math (a spin); its MFU is 0 by definition


@dataclass(frozen=True)
class Check:
    """Outcome of verifying one launch against a reference."""

    ok: bool
    detail: str
    rel_err: float | None = None
    tolerance: float | None = None


class Workload(ABC):
    """One measurable case: a kernel (or library call) at one shape.

    Subclasses set `name`, `precision`, `params` and implement the methods below. `flops` and
    `min_bytes` are counted from the shape by construction, never measured or estimated.
    """

    name: str
    precision: str
    params: dict[str, Any]
    buf: dict[str, Any]  # device buffers, filled by setup and dropped by teardown
    alt_precisions: tuple[str, ...] = ()  # other peaks to report MFU against (fp32 rungs vs bf16)
    notes: Mapping[str, Any] = MappingProxyType({})  # facts a suite adds to the row; see annotate()
    # The harness may replay short launches from a CUDA graph, so Python's launch overhead stays out of
    # the timing. False where launch() does host work between GPU work (sleeps, syncs, timers) or where
    # launching from Python one by one is the point.
    graphable: bool = True
    # The oldest GPU architecture (major, minor) the case runs on: what its PTX or library call needs.
    # On an older GPU the harness skips the case and says so, instead of failing to compile it there.
    min_compute_capability: tuple[int, int] = (0, 0)

    def unavailable(self, compute_capability: tuple[int, int] | None) -> str | None:
        """Why the case cannot run here, or None: a GPU older than `min_compute_capability` (an unknown
        capability is tried). The harness skips such a case with the reason instead of failing it."""
        need = self.min_compute_capability
        if compute_capability is None or tuple(compute_capability) >= tuple(need):
            return None
        return (f"needs compute capability {need[0]}.{need[1]} or newer; this GPU is "
                f"{compute_capability[0]}.{compute_capability[1]}")

    def annotate(self, **notes: Any) -> Workload:
        """Add facts about this case (waves, a slice, an expected value) to its row's params and label.
        They describe the case; they never change what it computes."""
        self.notes = {**self.notes, **notes}
        return self

    @property
    def row_label(self) -> str:
        return " ".join([self.label, *(f"{k}={v}" for k, v in self.notes.items())])

    @property
    def label(self) -> str:
        shape = " ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name} {shape}".strip()

    @abstractmethod
    def flops(self) -> int:
        """Model FLOPs of one launch (an FMA counts 2)."""

    @abstractmethod
    def min_bytes(self) -> int:
        """Fewest DRAM bytes one launch must move: each input read once, each output written once."""

    @abstractmethod
    def footprint_bytes(self) -> int:
        """Device memory the workload allocates; the harness skips the case when it does not fit."""

    @abstractmethod
    def setup(self, stream: Any) -> None:
        """Allocate inputs (random, never zeros) and outputs on the device."""

    @abstractmethod
    def poison(self) -> None:
        """Fill outputs with a value no correct launch leaves behind (NaN), so unwritten elements show."""

    @abstractmethod
    def launch(self, stream: Any) -> None:
        """Enqueue one run on `stream`; no synchronization. The harness makes `stream` CuPy's current
        stream around every call (and around setup, poison and check), so CuPy work lands on it too."""

    @abstractmethod
    def check(self) -> Check:
        """Compare the outputs of the last launch (already synchronized) with a host reference."""

    def teardown(self) -> None:
        """Drop device buffers so the next case gets the memory back."""
        self.buf = {}


ROTATE_L2 = 4  # rotated copies add up to 4x L2, so consecutive launches never find their input cached


def rotation_copies(nbytes: int, l2_bytes: int | None) -> int:
    """Copies of an `nbytes` input to cycle through so that each launch reads it from DRAM, as a real
    workload that streams fresh weights would (1 when the L2 size is unknown or the input is large)."""
    return max(1, -(-ROTATE_L2 * (l2_bytes or 0) // nbytes))
