"""Batch-1 bf16 GEMV on the CPU: counts from the definition, layout helpers, reference, launch and check
through the host stand-in for CuPy, and the PTX."""
import re

import numpy as np
import pytest

from mfugap.cuda_source import OFFLINE_ARCHS
from mfugap.kernels import gemv
from mfugap.verify import BF16_NAN, from_bf16_bits, to_bf16_bits
from tests.fake_cupy import Recorder, on_device

H100_L2 = 50 * 2**20
ODD = (37, 1003)  # cols % 8 == 3: the scalar remainder loop runs and rows need padding


@pytest.fixture
def kernels(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(gemv.SOURCE, "function", recorder)
    return recorder


def _workload_with_buffers(rows: int, cols: int, copies_l2: int | None = None) -> gemv.Gemv:
    """A workload whose buffers hold what setup() makes and a correct launch leaves, in fp32 on the host."""
    g = gemv.Gemv(rows, cols, copies_l2)
    rng = np.random.default_rng(rows)
    w = to_bf16_bits(rng.random((rows, cols), dtype=np.float32) * 2 - 1)
    x = to_bf16_bits(rng.random(cols, dtype=np.float32) * 2 - 1)
    weights = np.full((g.copies, rows, g.ld), BF16_NAN, dtype=np.uint16)
    weights[:, :, :cols] = w
    y = from_bf16_bits(w) @ from_bf16_bits(x)  # float32 accumulation
    g.buf = {"w": on_device(weights), "x": on_device(x), "y": on_device(y.astype(np.float32))}
    return g


# --- counts and layout ---------------------------------------------------------------------------

@pytest.mark.parametrize(("rows", "cols"), [*gemv.SHAPES, ODD, (1, 1)])
def test_counts_follow_the_definition(rows, cols):
    assert gemv.flops(rows, cols) == 2 * rows * cols
    bytes_w, bytes_x, bytes_y = 2 * rows * cols, 2 * cols, 4 * rows
    assert gemv.min_bytes(rows, cols) == bytes_w + bytes_x + bytes_y
    g = gemv.Gemv(rows, cols)
    assert (g.flops(), g.min_bytes()) == (2 * rows * cols, bytes_w + bytes_x + bytes_y)


def test_shapes_are_the_issues_layers():
    assert gemv.SHAPES == ((4096, 4096), (4096, 14336), (14336, 4096))


def test_workload_identity():
    g = gemv.Gemv(4096, 14336)
    assert (g.precision, g.alt_precisions) == ("bf16", ("fp32",))
    assert g.label == "gemv_bf16 rows=4096 cols=14336"


@pytest.mark.parametrize(("cols", "ld"), [(1, 8), (8, 8), (1003, 1008), (4096, 4096), (14337, 14344)])
def test_rows_are_padded_to_whole_16_byte_loads(cols, ld):
    assert gemv.padded_cols(cols) == ld
    assert gemv.shared_bytes(cols) == 2 * ld


def test_x_fits_the_default_shared_memory_of_a_block():
    assert gemv.shared_bytes(gemv.MAX_COLS) <= 48 * 1024


@pytest.mark.parametrize(("rows", "blocks"), [(1, 1), (8, 1), (9, 2), (4096, 512), (14336, 1792)])
def test_one_warp_per_row(rows, blocks):
    assert gemv.blocks(rows) == blocks


@pytest.mark.parametrize(("rows", "cols", "l2", "copies"), [
    (4096, 4096, H100_L2, 7),  # 32 MiB each: 7 copies pass 4 x 50 MiB
    (4096, 14336, H100_L2, 2), (14336, 4096, H100_L2, 2),  # 112 MiB each
    (4096, 4096, None, 1), (4096, 4096, 0, 1)])
def test_weights_rotate_through_4x_l2(rows, cols, l2, copies):
    assert gemv.weight_copies(rows, cols, l2) == copies
    g = gemv.Gemv(rows, cols, l2)
    assert g.copies == copies
    assert g.footprint_bytes() == copies * 2 * rows * gemv.padded_cols(cols) + 2 * cols + 4 * rows


@pytest.mark.parametrize(("rows", "cols"), [(0, 8), (8, 0), (8, gemv.MAX_COLS + 1)])
def test_rejects_bad_shapes(rows, cols):
    with pytest.raises(ValueError, match="GEMV needs rows >= 1 and 1 <= cols"):
        gemv.Gemv(rows, cols)


# --- reference -----------------------------------------------------------------------------------

def test_reference_by_hand():
    w = np.array([[1.0, 2.0, -0.5], [0.25, 0.0, 4.0]], dtype=np.float32)  # exact in bf16
    x = np.array([2.0, -1.0, 8.0], dtype=np.float32)
    got = gemv.reference(to_bf16_bits(w), to_bf16_bits(x))
    np.testing.assert_array_equal(got, [1 * 2 - 2 * 1 - 0.5 * 8, 0.25 * 2 + 4 * 8])
    assert got.dtype == np.float64


# --- launch and check ----------------------------------------------------------------------------

@pytest.mark.usefixtures("fake_cupy")
def test_launch_rotates_through_the_weight_copies(kernels):
    rows, cols = ODD
    g = _workload_with_buffers(rows, cols, copies_l2=3 * 2 * rows * gemv.padded_cols(cols) // 4)
    assert g.copies == 3
    for _ in range(4):
        g.launch("stream")
    used = [call[3][0] for call in kernels.calls]
    for k, w in zip([0, 1, 2, 0], used, strict=True):
        assert np.shares_memory(w, g.buf["w"][k]) and w.shape == (rows, g.ld)
    name, grid, block, (_, x, y, r, c, ld), kwargs = kernels.calls[0]
    assert (name, grid, block) == ("gemv_bf16", (gemv.blocks(rows),), (gemv.THREADS,))
    assert x is g.buf["x"] and y is g.buf["y"] and (r, c, ld) == (rows, cols, gemv.padded_cols(cols))
    assert (type(r), type(c), type(ld)) == (np.int32, np.int32, np.int64)
    assert kwargs == {"shared_mem": gemv.shared_bytes(cols), "stream": "stream"}


def test_poison_fills_y_with_nan():
    g = _workload_with_buffers(*ODD)
    g.poison()
    assert np.isnan(g.buf["y"]).all()


@pytest.mark.usefixtures("fake_cupy")
@pytest.mark.parametrize(("rows", "cols"), [ODD, (300, 64)])
def test_check_accepts_a_correct_result(rows, cols):
    verdict = _workload_with_buffers(rows, cols).check()
    assert verdict.ok, verdict.detail


@pytest.mark.usefixtures("fake_cupy")
def test_check_catches_an_unwritten_row():
    g = _workload_with_buffers(*ODD)
    g.buf["y"][5] = np.nan
    verdict = g.check()
    assert not verdict.ok and "NaN" in verdict.detail


@pytest.mark.usefixtures("fake_cupy")
def test_check_catches_a_wrong_last_row():
    g = _workload_with_buffers(300, 64)  # more rows than the sample: the last row is always compared
    g.buf["y"][-1] += 1.0
    assert not g.check().ok


# --- PTX -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", OFFLINE_ARCHS)
def test_gemv_loads_8_bf16_at_a_time_and_reduces_with_shuffles(arch):
    ptx = gemv.SOURCE.compile_offline(arch).ptx
    assert re.search(r"ld\.global(\.nc)?\.v4\.(u32|b32)", ptx)  # W, 16 bytes per load
    assert re.search(r"ld\.shared\.v4\.(u32|b32)", ptx)  # x from shared memory, 16 bytes per load
    assert "shfl.sync.bfly" in ptx


def test_selftest_covers_padded_rows_and_a_partial_last_block():
    shapes = [(g.params["rows"], g.params["cols"]) for g in gemv.selftest_cases()]
    assert any(cols % gemv.VECTOR for _, cols in shapes)
    assert any(rows % gemv.ROWS_PER_BLOCK for rows, _ in shapes)
