"""Rung 2, coalesced + shared-memory tiling: a block stages 32 x 32 tiles of A and B in shared memory.

SGEMM_CUDA's kernels 2 and 3 in one step. threadIdx.x now walks columns, so a warp's global loads and
stores are 32 consecutive floats (one 128-byte line), and each element fetched from DRAM/L2 is reused
by 32 threads from shared memory. Loads outside the matrices read zeros, so any M, N, K works.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32

from mfugap.kernels.gemm.ladder import Dims, Rung, cdiv, load_or_zero

TILE = 32  # 32 x 32 threads per block, one element of C each; two 4 KiB tiles of shared memory


@cuda.jit
def smem_tiled(a, b, c):
    a_tile = cuda.shared.array((TILE, TILE), float32)
    b_tile = cuda.shared.array((TILE, TILE), float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    row = cuda.blockIdx.y * TILE + ty
    col = cuda.blockIdx.x * TILE + tx
    acc = np.float32(0)
    for k0 in range(0, a.shape[1], TILE):
        a_tile[ty, tx] = load_or_zero(a, row, k0 + tx)
        b_tile[ty, tx] = load_or_zero(b, k0 + ty, col)
        cuda.syncthreads()  # the whole tile is in shared memory before anyone reads it
        for kk in range(TILE):
            # a_tile: one address per warp (broadcast); b_tile: 32 consecutive words, no bank conflict
            acc += a_tile[ty, kk] * b_tile[kk, tx]
        cuda.syncthreads()  # everyone is done with the tile before the next one overwrites it
    if row < c.shape[0] and col < c.shape[1]:
        c[row, col] = acc


def launch_config(m: int, n: int) -> tuple[Dims, Dims]:
    return (cdiv(n, TILE), cdiv(m, TILE)), (TILE, TILE)


RUNG = Rung(2, "smem_tiled", "coalesced loads, 32x32 tiles reused from shared memory",
            smem_tiled, launch_config, tile=(TILE, TILE))
