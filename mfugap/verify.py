"""Verification helpers shared by kernel families: relative error against a float64 reference.

Error is norm-wise, ||out - ref|| / ||ref||, as in the device method: fp32 lands far under 1e-3,
tf32 near 3e-4, bf16 between 1e-3 and 1e-2. NaN (the poison left in unwritten outputs) never passes.
"""
from __future__ import annotations

import numpy as np

from mfugap.workload import Check

BF16_NAN = 0x7FC0  # a quiet-NaN bf16 bit pattern: the poison for bf16 outputs
TOLERANCE = {"fp64": 1e-12, "fp32": 1e-5, "tf32": 2e-3, "fp16": 5e-3, "bf16": 1e-2}


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    out64 = np.asarray(out, dtype=np.float64)
    ref64 = np.asarray(ref, dtype=np.float64)
    if out64.shape != ref64.shape:
        raise ValueError(f"shape {out64.shape} does not match reference {ref64.shape}")
    if not np.isfinite(out64).all():
        return float("inf")
    denom = np.linalg.norm(ref64)
    diff = np.linalg.norm(out64 - ref64)
    return float(diff / denom) if denom > 0 else float(diff)


def check_close(out: np.ndarray, ref: np.ndarray, tolerance: float, what: str) -> Check:
    err = rel_err(out, ref)
    ok = err <= tolerance
    verdict = "within" if ok else "exceeds"
    return Check(ok=ok, rel_err=err, tolerance=tolerance,
                 detail=f"{what}: relative error {err:.3g} {verdict} {tolerance:.0e}")


def sample_indices(n: int, count: int, seed: int, tail: int = 0) -> np.ndarray:
    """Sorted random indices into range(n), plus the last `tail` indices (where remainder loops run)."""
    rng = np.random.default_rng(seed)
    picked = rng.choice(n, size=min(count, n), replace=False)
    return np.unique(np.concatenate([picked, np.arange(max(0, n - tail), n)]))


def to_bf16_bits(x: np.ndarray, xp: object = np) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even; works for NumPy and CuPy."""
    bits = xp.ascontiguousarray(x, dtype=xp.float32).view(xp.uint32)
    rounding = xp.uint32(0x7FFF) + ((bits >> 16) & xp.uint32(1))
    return ((bits + rounding) >> 16).astype(xp.uint16)


def from_bf16_bits(bits: np.ndarray, xp: object = np) -> np.ndarray:
    """bfloat16 bit patterns -> float32, exactly."""
    return (xp.asarray(bits).astype(xp.uint32) << 16).view(xp.float32)
