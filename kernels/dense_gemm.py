"""What every GEMM workload shares: row-major C = A @ B, its counts, inputs, poison and check.

A[M,K], B[K,N], C[M,N] in the workload's precision with fp32 accumulation; bf16 is stored as uint16 bit
patterns, so no bf16 dtype support is needed from the array library. 2*M*N*K model FLOPs; each matrix
touched once. A GEMM kernel module subclasses DenseGemm and writes `launch` (and its label).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mfugap.verify import BF16_NAN, TOLERANCE, check_close, from_bf16_bits, sample_indices, to_bf16_bits
from mfugap.workload import Check, Workload, rotation_copies

ELEMENT_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2}  # tf32 math reads and writes fp32
NONFINITE_EXPONENT = {"bf16": 0x7F80}  # bf16 bits with the exponent all ones: Inf or NaN
CHECK_ROWS = 32  # rows of C compared with a float64 host product: 2*32*N*K FLOPs on the CPU


def flops(m: int, n: int, k: int) -> int:
    return 2 * m * n * k


def min_bytes(m: int, n: int, k: int, precision: str) -> int:
    return ELEMENT_BYTES[precision] * (m * k + k * n + m * n)


def host_values(x: np.ndarray, precision: str) -> np.ndarray:
    """Stored values (bf16 bits or floats) as float64."""
    return from_bf16_bits(x).astype(np.float64) if precision == "bf16" else x.astype(np.float64)


def nonfinite(c: Any, precision: str) -> int:
    """Elements of C (a CuPy or NumPy array) that are NaN or Inf: the poison left unwritten, or an
    overflow. Written with operators only, so it runs where the array lives."""
    if precision == "bf16":
        return int(((c & 0x7FFF) >= NONFINITE_EXPONENT["bf16"]).sum())
    return int(((c != c) | (abs(c) == np.inf)).sum())  # NaN is the one value unequal to itself


def check_product(a: Any, b: Any, c: Any, precision: str) -> Check:
    """Device arrays C == A @ B? Every element finite, then CHECK_ROWS rows (random, and the last one,
    which sits in a ragged bottom tile) against a float64 NumPy product of the same inputs."""
    bad = nonfinite(c, precision)
    if bad:
        return Check(ok=False, detail=f"{bad} output elements are NaN or Inf (unwritten or overflowed)")
    m = c.shape[0]
    rows = sample_indices(m, CHECK_ROWS - 1, seed=m, tail=1)
    out = host_values(c[rows].get(), precision)
    ref = host_values(a[rows].get(), precision) @ host_values(b.get(), precision)
    return check_close(out, ref, TOLERANCE[precision],
                       f"{len(rows)} rows (random and the last) vs float64 NumPy on the same inputs")


class DenseGemm(Workload):
    """C = A @ B at one shape. `l2_bytes` given: launches cycle through copies of B (the weights) adding
    up to 4x L2, so a small-batch GEMM reads its weights from DRAM as decoding does, not from a warm L2."""

    precisions: tuple[str, ...] = tuple(ELEMENT_BYTES)
    kind = "GEMM"  # first word of the label

    def __init__(self, m: int, n: int, k: int, precision: str = "bf16", l2_bytes: int | None = None) -> None:
        if precision not in self.precisions:
            raise ValueError(f"{self.kind} precision must be one of {list(self.precisions)}, "
                             f"got {precision!r}")
        if min(m, n, k) < 1:
            raise ValueError(f"GEMM dimensions must be positive, got {m}x{n}x{k}")
        self.precision = precision
        self.params = {"m": m, "n": n, "k": k}
        self.copies = rotation_copies(ELEMENT_BYTES[precision] * k * n, l2_bytes)
        self.launches = 0
        self.buf = {}

    @property
    def label(self) -> str:
        m, n, k = self.params.values()
        return f"{self.kind} {self.precision} {m}x{n}x{k}"

    def flops(self) -> int:
        return flops(**self.params)

    def min_bytes(self) -> int:
        return min_bytes(**self.params, precision=self.precision)

    def footprint_bytes(self) -> int:
        n, k = self.params["n"], self.params["k"]
        return self.min_bytes() + (self.copies - 1) * ELEMENT_BYTES[self.precision] * k * n

    def _random(self, rows: int, cols: int) -> Any:
        import cupy

        x = cupy.random.random((rows, cols), dtype=cupy.float32) * 2 - 1
        if self.precision == "bf16":
            return to_bf16_bits(x, cupy)
        return x.astype(cupy.float16) if self.precision == "fp16" else x

    def setup(self, stream: Any) -> None:
        import cupy

        m, n, k = self.params.values()
        self.buf["a"] = self._random(m, k)
        b = self._random(k, n)
        # identical copies: whichever one a launch used, the check compares against the same B
        self.buf["b_copies"] = cupy.broadcast_to(b, (self.copies, k, n)).copy()
        self.buf["b"] = self.buf["b_copies"][0]  # a view, so B is held `copies` times, as counted
        self.buf["c"] = cupy.empty((m, n), dtype=self.buf["a"].dtype)

    def poison(self) -> None:
        self.buf["c"].fill(BF16_NAN if self.precision == "bf16" else np.nan)

    def next_weights(self) -> Any:
        """The copy of B this launch reads (the same array every time when nothing rotates)."""
        b = self.buf["b_copies"][self.launches % self.copies]
        self.launches += 1
        return b

    def check(self) -> Check:
        return check_product(self.buf["a"], self.buf["b"], self.buf["c"], self.precision)
