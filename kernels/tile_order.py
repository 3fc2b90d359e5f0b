"""Which tile of C each block of a tiled GEMM computes: Triton's grouped ordering, shared by every CUDA C
GEMM (the ladder's rungs 4 and 5 and the mma.sync rung).

Blocks of a 1-D grid are taken in groups of `group_m` tile-rows and walked column by column inside a group,
so the blocks resident at once share a few panels of A and of B in L2 instead of sweeping all of B once
per tile-row. A short last group holds the tile-rows that are left.

`CODE` is C++ that compiles for the device and (without __CUDACC__) for the host, where
tests/test_tile_order.py runs it against `grouped_tile` below, its NumPy model.
"""
from __future__ import annotations

from typing import Any

import numpy as np

CODE = r"""
#ifdef __CUDACC__
#define TILE_ORDER_HD __host__ __device__ __forceinline__
#else
#define TILE_ORDER_HD inline
#endif

// Block bid's tile (tile_row, tile_col) of a tiles_m x tiles_n grid of C tiles.
TILE_ORDER_HD void grouped_tile(int bid, int tiles_m, int tiles_n, int group_m,
                                int& tile_row, int& tile_col) {
    const int per_group = group_m * tiles_n;
    const int first = bid / per_group * group_m;
    const int rows_in_group = tiles_m - first < group_m ? tiles_m - first : group_m;
    tile_row = first + bid % per_group % rows_in_group;
    tile_col = bid % per_group / rows_in_group;
}
"""


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def grouped_tile(bid: Any, tiles_m: int, tiles_n: int, group_m: int) -> tuple[Any, Any]:
    """CODE's grouped_tile on integer arrays: (tile_row, tile_col) of each block id. All values are
    non-negative, where Python's // and % agree with C++'s / and %."""
    per_group = group_m * tiles_n
    first = bid // per_group * group_m
    rows_in_group = np.minimum(tiles_m - first, group_m)
    return first + bid % per_group % rows_in_group, bid % per_group // rows_in_group
