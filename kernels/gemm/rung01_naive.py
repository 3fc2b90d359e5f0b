"""Rung 1, naive: one thread per element of C, each reading a row of A and a column of B from DRAM/L2.

SGEMM_CUDA's kernel 1, thread mapping included. No data reuse beyond what the caches find, so the rung
is bound by memory transactions, not math: the floor of the ladder.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from mfugap.kernels.gemm.ladder import Dims, Rung, cdiv

BLOCK = 32  # 32 x 32 threads, each computing one element of C


@cuda.jit
def naive(a, b, c):
    # threadIdx.x (the fastest-varying index, the one a warp spans) walks ROWS of C, as in SGEMM_CUDA:
    # the 32 threads of a warp take 32 different rows and one column, so each A load and each C store of
    # a warp touches 32 addresses K*4 resp. N*4 bytes apart (32 transactions where one would do), and
    # each B load is one address for the whole warp (a broadcast: one useful word per transaction).
    row, col = cuda.grid(2)
    if row < c.shape[0] and col < c.shape[1]:
        acc = np.float32(0)  # a float32 zero: a Python 0.0 would make the sum (and every FMA) fp64
        for i in range(a.shape[1]):
            acc += a[row, i] * b[i, col]
        c[row, col] = acc


def launch_config(m: int, n: int) -> tuple[Dims, Dims]:
    return (cdiv(m, BLOCK), cdiv(n, BLOCK)), (BLOCK, BLOCK)


RUNG = Rung(1, "naive", "one thread per output, warps span rows: uncoalesced A loads and C stores",
            naive, launch_config, tile=(BLOCK, BLOCK))
