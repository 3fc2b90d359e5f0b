"""The fp32 GEMM ladder against cuBLAS: the same math, the same GPU-Util, a climbing MFU.

Each rung of kernels/gemm/ (naive, shared-memory tiled and register-blocked in Numba-CUDA, vectorized
and warp-tiled in CUDA C) computes C = A @ B in fp32 at a square size, then cuBLAS fp32 does the same:
the ceiling the ladder climbs towards. Every row reports MFU against the fp32 CUDA-core peak and, beside
it, against the bf16 tensor peak the same GEMM could have used.
"""
from __future__ import annotations

import pytest

from mfugap.kernels import cublas_gemm
from mfugap.metrics import goal, percent_of
from mfugap.plugin import quick_subset

ladder = pytest.importorskip("mfugap.kernels.gemm.ladder", reason="the fp32 ladder needs numba-cuda: "
                             'pip install -e ".[cuda12]"')

LESSON = """Every rung keeps GPU-Util near 100%: a kernel runs the whole window, however poorly it uses
the chip. MFU climbs rung by rung as the kernel wastes fewer memory transactions and reuses each loaded
value more, with cuBLAS fp32 as the ceiling; against the bf16 tensor peak even cuBLAS fp32 is a small
fraction."""


# The ladder's problem is 4096^3 (2048^3 with --quick); the full run repeats it at 8192^3, the size the
# tensor-core GEMMs of the compute_bound suite run at.
SIZES = quick_subset(["default", "large"], keep=["default"])


def size(quick: bool, which: str) -> int:
    return 8192 if which == "large" else 2048 if quick else 4096


@pytest.mark.parametrize("which", SIZES)
@pytest.mark.parametrize("rung", ladder.rungs(), ids=lambda r: f"{r.number:02d}_{r.name}")
def test_gemm_rung(measure, quick, rung, which):
    """C = A @ B in fp32, A[s,s], B[s,s], s = 4096 and 8192 (quick: 2048): 2*s^3 FLOPs, 3*4*s^2 bytes."""
    s = size(quick, which)
    measure(rung.workload(s, s, s))


@pytest.mark.parametrize("which", SIZES)
def test_cublas_fp32_ceiling(measure, quick, which):
    """The same C = A @ B through cuBLAS fp32 (2*s^3 FLOPs), MFU also against the bf16 tensor peak."""
    s = size(quick, which)
    reference = cublas_gemm.CublasGemm(s, s, s, "fp32")
    reference.alt_precisions = ("bf16",)
    measure(reference)


def summarize(rows: list[dict]) -> dict:
    """Each rung's TFLOP/s as a percentage of cuBLAS fp32 at the same size (SGEMM_CUDA's ladder table),
    what each rung demonstrates, and the kernel issue's target: a register-blocked rung (3 and up)
    >= 60% of cuBLAS fp32 at 4096^3."""
    of_cublas = percent_of(rows, cublas_gemm.CublasGemm.name, "tflops", same=("m",))
    blocked = {f"gemm_{r.name}" for r in ladder.rungs() if r.number >= 3}
    best = [of_cublas[r["label"]] for r in rows
            if r["workload"] in blocked and r["params"].get("m") == 4096 and r["label"] in of_cublas]
    return {"% of cuBLAS fp32": of_cublas,
            "rungs": {f"{r.number} {r.name}": r.description for r in ladder.rungs()},
            "targets": {"best register-blocked rung 4096^3 % of cuBLAS": goal(max(best, default=None),
                                                                            at_least=60)}}
