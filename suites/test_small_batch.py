"""Small batches: the same weights fed B rows at a time, and tiny kernels fed one launch at a time.

The GEMM sweep is C[B x N] = A[B x K] @ W[K x N] in bf16 for B = 1, 2, 4, ... 8192, at K = N = 4096 and
at an LLM MLP up-projection (K = 4096, N = 14336), through cuBLAS and, where kernels/mma_gemm.py is
present, the hand-written mma.sync rung. Intensity is 2BNK / 2(BK + KN + BN) ~ B FLOP/byte while
B << K, N: at B = 1 each weight is read for one multiply-add, the GEMM is memory-bound, and MFU falls
well under 1%: the roofline caps it at bandwidth x ~1 FLOP/byte over the bf16 peak (0.34% on an H100
SXM from its datasheet, a derived bound, not a measurement). Each label shows the intensity and the
waves, output tiles / SMs for a nominal 128 x 128 tile (cuBLAS picks its own tile, unknown to us): under
one wave, some SMs get no tile at all.

The launch-bound limit: 1000 tiny axpy kernels per step launched from Python, against the same 1000
replayed from a CUDA graph (kernels/launch_bound.py).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import pytest

from mfugap import metrics
from mfugap.kernels import cublas_gemm, launch_bound
from mfugap.plugin import quick_subset
from mfugap.workload import Workload

LESSON = """GPU-Util stays near 100% across the batch sweep while MFU falls from most of the tensor peak at
large B to well under 1% at B = 1, where even the roofline allows only bandwidth x ~1 FLOP/byte: a small
batch reads every weight for a handful of FLOPs (intensity ~B FLOP/byte) and leaves SMs without a tile
(waves < 1). Tiny kernels launched one by one from Python leave
the GPU idle between launches; a CUDA graph closes those gaps, so GPU-Util rises while MFU stays near
zero, because each kernel does almost no math."""

SHAPES = {"square": (4096, 4096), "mlp_up": (4096, 14336)}  # name -> (K, N) of the weight matrix
MAX_BATCH = 8192
QUICK_BATCHES = (1, 16, 256, 4096)
QUICK_MLP_BATCH = 1  # one decoding step: the case the MLP row is there for
NOMINAL_TILE = 128
MIN_SWEEP = 3  # batch sizes a sweep needs before its maximum and half-max mean anything
WAVES_KEY = f"waves@{NOMINAL_TILE}x{NOMINAL_TILE}"
CHAIN_N, CHAIN_COUNT = 4096, 1000

GEMMS: dict[str, Callable[..., Workload]] = {"cublas": cublas_gemm.CublasGemm}
with contextlib.suppress(ImportError):  # the hand-written tensor-core rung is optional beside cuBLAS
    from mfugap.kernels.mma_gemm import MmaGemm

    GEMMS["mma_sync"] = MmaGemm


def batch_sizes(quick: bool) -> tuple[int, ...]:
    """Powers of two 1 ... MAX_BATCH, or the quick subset."""
    return QUICK_BATCHES if quick else tuple(1 << i for i in range(MAX_BATCH.bit_length()))


def gemm_cases(quick: bool) -> list[tuple[str, int]]:
    """(shape, B): every batch size on the square shape, and on the MLP shape too unless quick."""
    mlp = (QUICK_MLP_BATCH,) if quick else batch_sizes(quick)
    return [("square", b) for b in batch_sizes(quick)] + [("mlp_up", b) for b in mlp]


def nominal_waves(m: int, n: int, sm_count: int, tile: int = NOMINAL_TILE) -> float:
    """Output tiles per SM for C[m x n] cut into tile x tile tiles: ceil(m/tile) * ceil(n/tile) / SMs."""
    if min(m, n, sm_count, tile) < 1:
        raise ValueError(f"waves need positive m, n, SMs and tile, got {m}, {n}, {sm_count}, {tile}")
    return math.ceil(m / tile) * math.ceil(n / tile) / sm_count


def with_shape_notes(gemm: Workload, sm_count: int | None) -> Workload:
    """The GEMM with its intensity (FLOP/byte) and nominal waves (None when the SM count is unknown)."""
    waves = round(nominal_waves(gemm.params["m"], gemm.params["n"], sm_count), 2) if sm_count else None
    intensity = metrics.intensity(gemm.flops(), gemm.min_bytes())
    return gemm.annotate(flop_per_byte=round(intensity, 1), **{WAVES_KEY: waves})


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Per GEMM and weight shape swept over at least MIN_SWEEP batch sizes: the largest MFU, the B it came
    at, and the first B reaching half of it with the B measured before it (half-max lies in between)."""
    names = {factory.name for factory in GEMMS.values()}
    sweeps: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        p = row["params"]
        if row["workload"] in names and row["mfu_pct"] is not None:
            sweeps.setdefault(f"{row['workload']} K={p['k']} N={p['n']}", []).append((p["m"], row["mfu_pct"]))
    return {key: _half_max(sorted(points)) for key, points in sorted(sweeps.items())
            if len(points) >= MIN_SWEEP}


def _half_max(points: list[tuple[int, float]]) -> dict:
    """(B, MFU %) sorted by B -> the maximum, the first B whose MFU is at least half of it, and the B
    measured before that one (None when the first B already reaches half)."""
    best_b, best = max(points, key=lambda p: p[1])
    i = next(i for i, (_, mfu) in enumerate(points) if mfu >= best / 2)
    return {"max MFU %": best, "at B": best_b, "half-max MFU from B": points[i][0],
            "below half at B": points[i - 1][0] if i else None}


@pytest.mark.parametrize("gemm_case", quick_subset(gemm_cases(quick=False), gemm_cases(quick=True)),
                         ids=lambda case: f"{case[0]}-B{case[1]}")
@pytest.mark.parametrize("gemm", list(GEMMS))
def test_bf16_gemm_batch(measure, gpu, gemm, gemm_case):
    """C[B x N] = A[B x K] @ W[K x N] in bf16, fp32 accumulation: 2*B*N*K FLOPs and 2*(B*K + K*N + B*N)
    bytes, so intensity ~B FLOP/byte for small B; waves = ceil(B/128) * ceil(N/128) / SMs (nominal).
    W rotates through copies adding up to 4x L2, so every step reads its weights from DRAM."""
    shape, batch = gemm_case
    k, n = SHAPES[shape]
    gemm = GEMMS[gemm](batch, n, k, "bf16", l2_bytes=gpu.device.l2_bytes)
    measure(with_shape_notes(gemm, gpu.device.sm_count))


@pytest.mark.parametrize("chain", [launch_bound.AxpyChainEager, launch_bound.AxpyChainGraph],
                         ids=["python-launches", "cuda-graph"])
def test_tiny_kernel_chain(measure, chain):
    """1000 launches of y = a*x + y over 4096 fp32 per step, one by one from Python or replayed as one
    CUDA graph: 2*n*count FLOPs and 12*n*count bytes (each kernel counted alone) for both."""
    measure(chain(n=CHAIN_N, count=CHAIN_COUNT))
