"""The top of the roofline: register-only peak loops beside cuBLAS, the vendor's best GEMM.

Four loops with no memory traffic (fp32, fp64 and fp16x2 FMA chains, a bf16 mma.sync loop) show how close
code can get to each datasheet peak; MFU against the clock-adjusted peak beside it says how much of any
shortfall is the clock. cuBLAS GEMMs in fp32, tf32, bf16 and fp16 are the reference a real kernel is held
to; the fp32 and tf32 rows also report MFU against the bf16 tensor peak, the rate the model could have had.
Our mma.sync GEMM (kernels/mma_gemm.py) runs the same shapes in bf16 and fp16, with two warp tilings;
the summary gives its TFLOP/s as a percentage of cuBLAS.
"""
from __future__ import annotations

import pytest

from mfugap.kernels import cublas_gemm, mma_gemm, peak
from mfugap.metrics import find_row, goal, percent_of
from mfugap.plugin import quick_subset

LESSON = """Even with no memory traffic at all, the top of the roofline sits below the datasheet: the
register-only loops reach each pipe's peak only at the SM clock the card holds under load (compare MFU
with the clock-adjusted figure), fp16 math on the FMA pipe tops out at a fraction of the fp16 tensor peak
(1/8 on Hopper, 1/4 on an A100, by NVIDIA's per-SM rates), and on Hopper an mma.sync loop stays below
what cuBLAS gets through wgmma. cuBLAS is the vendor's reference: a hand-written kernel is judged
against its row, not against the datasheet."""

CUBLAS_PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
ALSO_AGAINST_BF16 = ("fp32", "tf32")  # what the same GEMM would be worth on the bf16 tensor cores


@pytest.mark.parametrize("precision", quick_subset(sorted(peak.FMA_FORMATS), keep=["fp32"]))
def test_peak_fma(measure, gpu, precision):
    """Minsky FMA chains in registers, x -= e*y; y += e*x: FLOPs = threads x steps x 16 FMAs x 2 per lane.

    fp32 (FFMA) and fp64 (DFMA, the vector FP64 peak) against their own peaks; fp16 is HFMA2 on __half2
    (two lanes, 4 FLOPs an instruction) against the fp16 tensor peak, at most 512 / the tensor rate per
    SM of it (1/8 on Hopper, 1/4 on an A100), and against fp32.
    """
    measure(peak.FmaPeak(precision, gpu.device.sm_count))


def test_peak_bf16_mma(measure, gpu):
    """mma.sync m16n8k16 bf16 x bf16 + fp32 in registers: FLOPs = warps x steps x 8 sets x 2*16*8*16."""
    measure(peak.MmaPeak(gpu.device.sm_count))


def gemm_size(quick: bool) -> int:
    return 4096 if quick else 8192


@pytest.mark.parametrize("precision", quick_subset(CUBLAS_PRECISIONS, keep=["bf16"]))
def test_cublas_gemm(measure, quick, precision):
    """C = A @ B through cuBLAS at s = 4096 (quick) or 8192: 2*s^3 FLOPs, each matrix moved once."""
    s = gemm_size(quick)
    gemm = cublas_gemm.CublasGemm(s, s, s, precision)
    if precision in ALSO_AGAINST_BF16:
        gemm.alt_precisions = ("bf16",)
    measure(gemm)


@pytest.mark.parametrize("warp_tile", quick_subset(mma_gemm.WARP_TILES, keep=["64x32"]))
@pytest.mark.parametrize("precision", quick_subset(mma_gemm.PRECISIONS, keep=["bf16"]))
def test_mma_sync_gemm(measure, quick, precision, warp_tile):
    """The same C = A @ B through our mma.sync tensor-core kernel (2*s^3 FLOPs), read against cuBLAS,
    with each warp tile the kernel module offers (8 warps of 64 x 32, 4 of 64 x 64)."""
    s = gemm_size(quick)
    measure(mma_gemm.MmaGemm(s, s, s, precision, warp_tile=warp_tile))


def summarize(rows: list[dict]) -> dict:
    """Our tensor-core kernel's TFLOP/s as a percentage of cuBLAS at the same precision and size, and
    the kernel issue's targets: the fp32 FMA loop >= 95% of the clock-adjusted peak, the mma.sync GEMM
    (its better warp tiling) >= 50% of cuBLAS bf16 at 8192^3 (stretch: 70%)."""
    of_cublas = percent_of(rows, cublas_gemm.CublasGemm.name, "tflops", same=("precision", "m"))
    fma = find_row(rows, peak.FMA_FORMATS["fp32"].kernel)
    mma = [of_cublas[r["label"]] for r in rows if r["workload"] == mma_gemm.MmaGemm.name
           and r["precision"] == "bf16" and r["params"].get("m") == 8192 and r["label"] in of_cublas]
    return {"% of cuBLAS": of_cublas,
            "targets": {"fp32 FMA % of clock-adjusted peak": goal(fma and fma["mfu_clock_pct"], at_least=95),
                        "mma.sync bf16 8192^3 % of cuBLAS": goal(max(mma, default=None), at_least=50)}}
