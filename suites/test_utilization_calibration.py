"""What utilization counts: the same do-nothing spin on one SM, on a fifth of the SMs, and on all of them.

NVML GPU-Util is the share of time any kernel ran, so all three rows read ~100%. GPM SM_UTIL is the share
of SMs busy, so it follows the grid: ~1/SMs, ~20%, ~100%. None of them does model math: MFU is 0.
"""
from __future__ import annotations

import math

import pytest

from mfugap.kernels import spin

LESSON = """GPU-Util measures time, not capacity: a single block on one SM keeps it at ~100%, exactly
like a grid on every SM. GPM SM utilization is the counter that sees how much of the chip is working
(~1/SMs, ~20%, ~100% here); on GPUs without GPM the row says so instead of guessing. MFU is 0
throughout, because a spin does no model math."""

# Blocks per SM for the full grid: every SM gets work however the block scheduler spreads it.
FULL_GRID_BLOCKS_PER_SM = 4


def blocks_for(share: float | None, sm_count: int) -> int:
    """One block (share None), a share of the SMs (one single-thread block each), or a full grid."""
    if share is None:
        return 1
    if not 0 < share <= 1:
        raise ValueError(f"SM share must be in (0, 1], got {share}")
    if share == 1:
        return FULL_GRID_BLOCKS_PER_SM * sm_count
    return max(1, math.floor(share * sm_count))


def expected_sm_util_pct(blocks: int, sm_count: int) -> float:
    """SMs with a resident block over all SMs: what GPM SM_UTIL should read if blocks spread out."""
    return 100.0 * min(blocks, sm_count) / sm_count


@pytest.mark.parametrize("share", [None, 0.2, 1.0], ids=["one-block", "fifth-of-sms", "full-grid"])
def test_spin_occupies_a_share_of_the_sms(measure, gpu, share):
    """blocks = 1, floor(0.2 x SMs), or 4 x SMs single-thread blocks spinning 20 ms each: 0 FLOPs."""
    sms = gpu.device.sm_count
    blocks = blocks_for(share, sms)
    # one block per SM below a full grid: the check confirms no two shared an SM
    measure(spin.Spin(blocks=blocks, ms=20.0, one_per_sm=blocks <= sms).annotate(
        expected_sm_util_pct=round(expected_sm_util_pct(blocks, sms), 1)))



def summarize(rows: list[dict]) -> dict:
    """The lesson read off the rows: per spin, GPU-Util and GPM SM util beside the SM util its grid
    stands for (blocks on distinct SMs / SMs, noted on the row when it was measured)."""
    return {r["label"]: {"GPU-Util %": r["gpu_util_pct"], "SM util %": r["sm_util_pct"],
                         "expected SM util %": r["params"]["expected_sm_util_pct"]}
            for r in rows
            if r["workload"] == spin.Spin.name and r["params"].get("expected_sm_util_pct") is not None}
