"""The roofline, measured: one kernel per precision swept from 1/4 to 1024 FLOP per byte in powers of two.

fp32 runs 4 x intensity dependent FMAs per element on CUDA cores; bf16 runs mma.sync m16n8k16 on tensor
cores over 512-byte tiles (kernels/roofline.py has the exact mapping). Attainable TFLOP/s is
min(peak, intensity x bandwidth); `summarize` reads the measured plateau, bandwidth and ridge point
(plateau / bandwidth, FLOP/byte) from each precision's rows, beside the datasheet ridge.
"""
from __future__ import annotations

import pytest

from mfugap.kernels import roofline
from mfugap.plugin import quick_subset

LESSON = """GPU-Util reads ~100% at every point of the sweep, while MFU rises in step with intensity up to
the ridge point and only then levels off: below it the GPU is fully busy waiting on DRAM. The measured
ridge (plateau TFLOP/s over the best GB/s) sits beside the datasheet one (peak / bandwidth: ~20 FLOP/B
fp32 and ~300 bf16 on an H100 SXM); expect bf16's lower, since mma.sync without Hopper's wgmma plateaus
below the tensor peak."""

INTENSITY_IDS = [f"{i:g}" for i in roofline.INTENSITIES]


QUICK_INTENSITIES = roofline.INTENSITIES[::4]  # every 16x, still from 1/4 to 1024
SWEEP = quick_subset(roofline.INTENSITIES, QUICK_INTENSITIES)


def _measure_point(measure, gpu, quick: bool, point: type, intensity: float) -> None:
    nbytes = roofline.default_input_bytes(gpu.device.l2_bytes, quick)
    measure(point(intensity, nbytes, gpu.device.sm_count))


@pytest.mark.parametrize("intensity", SWEEP, ids=INTENSITY_IDS)
def test_fp32_roofline(measure, gpu, quick, intensity):
    """y[i] = f^k(x[i]), f(x) = x*a + b (one FMA), k = 4 x intensity: 2k FLOPs per 8 bytes (x read,
    y written)."""
    _measure_point(measure, gpu, quick, roofline.Fp32Roofline, intensity)


@pytest.mark.parametrize("intensity", SWEEP, ids=INTENSITY_IDS)
def test_bf16_roofline(measure, gpu, quick, intensity):
    """Every group-th 512-byte tile through `mmas` m16n8k16 mmas, 2*16*8*16 FLOPs each; 1024 bytes per tile
    (read + write), so intensity = 4096 x mmas / (1024 x group)."""
    _measure_point(measure, gpu, quick, roofline.Bf16Roofline, intensity)


def summarize(rows: list[dict]) -> dict:
    """{precision: ridge_point(that precision's rows)} for the suite's rows."""
    precisions = sorted({r["precision"] for r in rows})
    return {p: roofline.ridge_point([r for r in rows if r["precision"] == p]) for p in precisions}
