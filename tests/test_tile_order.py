"""The grouped block order every CUDA C GEMM uses: its NumPy model's properties, and the C++ compiled on
the host against the model."""
import shutil
import subprocess

import numpy as np
import pytest

from mfugap.kernels import tile_order

# (tiles_m, tiles_n, group_m): one tile; ragged last groups; group_m above tiles_m; no grouping (1); the
# 8192^3 mma GEMM's 64 x 64 tiles
GRIDS = ((1, 1, 8), (3, 5, 8), (17, 4, 8), (10, 9, 8), (17, 4, 3), (5, 7, 1), (64, 64, 8))
WAVE = 132  # blocks resident at once: one per SM of an H100 SXM


def _order(tiles_m: int, tiles_n: int, group_m: int) -> tuple[np.ndarray, np.ndarray]:
    return tile_order.grouped_tile(np.arange(tiles_m * tiles_n), tiles_m, tiles_n, group_m)


@pytest.mark.parametrize(("tiles_m", "tiles_n", "group_m"), GRIDS)
def test_every_tile_of_c_is_computed_by_exactly_one_block(tiles_m, tiles_n, group_m):
    rows, cols = _order(tiles_m, tiles_n, group_m)
    assert rows.min() >= 0 and cols.min() >= 0
    assert (rows < tiles_m).all() and (cols < tiles_n).all()
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) == tiles_m * tiles_n


@pytest.mark.parametrize(("tiles_m", "tiles_n", "group_m"), GRIDS)
def test_blocks_walk_a_group_of_tile_rows_column_by_column(tiles_m, tiles_n, group_m):
    rows, cols = _order(tiles_m, tiles_n, group_m)
    for first in range(0, tiles_m, group_m):
        height = min(group_m, tiles_m - first)
        start = first * tiles_n  # every earlier group is full: group_m tile-rows of tiles_n tiles
        group = slice(start, start + height * tiles_n)
        np.testing.assert_array_equal(rows[group], first + np.tile(np.arange(height), tiles_n))
        np.testing.assert_array_equal(cols[group], np.repeat(np.arange(tiles_n), height))


def test_one_wave_reads_fewer_panels_than_row_major_order():
    """The point of the order: the blocks resident at once share panels of A (tile-rows) and B
    (tile-columns) in L2. At 8192^3 in 128 x 128 tiles an H100's first wave touches 8 + 17 panels,
    against 3 + 64 in row-major order."""
    rows, cols = _order(64, 64, 8)
    grouped = len(set(rows[:WAVE].tolist())) + len(set(cols[:WAVE].tolist()))
    row_major = np.arange(WAVE)
    assert grouped == 8 + 17
    assert grouped < len(set((row_major // 64).tolist())) + len(set((row_major % 64).tolist()))


_DRIVER = r"""
#include <cstdio>
int main() {
    const int grids[][3] = {GRIDS};
    for (const auto& g : grids) {
        for (int bid = 0; bid < g[0] * g[1]; ++bid) {
            int row, col;
            grouped_tile(bid, g[0], g[1], g[2], row, col);
            std::printf("%d %d ", row, col);
        }
        std::printf("\n");
    }
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="no host C++ compiler (g++) to run tile_order.CODE")
def test_cpp_grouped_tile_matches_the_numpy_model(tmp_path):
    grids = ", ".join("{" + ", ".join(map(str, grid)) + "}" for grid in GRIDS)
    src = tmp_path / "order.cpp"
    src.write_text(tile_order.CODE + _DRIVER.replace("GRIDS", grids))
    exe = tmp_path / "order"
    subprocess.run(["g++", "-std=c++17", "-Wall", "-Werror", "-o", str(exe), str(src)], check=True)
    lines = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines()
    assert len(lines) == len(GRIDS)
    for grid, line in zip(GRIDS, lines, strict=True):
        rows, cols = _order(*grid)
        np.testing.assert_array_equal(np.array(line.split(), dtype=int), np.stack([rows, cols], 1).ravel())
