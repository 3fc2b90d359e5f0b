"""The mma.sync GEMM rung on the CPU: its index model, an emulation of the kernel built on the PTX ISA's
ldmatrix and mma semantics, the C++ layout compiled on the host against the model, the NVRTC build, and
the workload through a host stand-in for CuPy. The tests marked gpu run the kernel itself."""
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache

import numpy as np
import pytest

from mfugap.cuda_source import OFFLINE_ARCHS
from mfugap.kernels import dense_gemm, tile_order
from mfugap.kernels import mma_gemm as mg
from mfugap.kernels.dense_gemm import host_values, nonfinite
from mfugap.kernels.mma_gemm import TILE, Tile
from mfugap.measure import verify
from mfugap.verify import TOLERANCE, from_bf16_bits, to_bf16_bits
from tests.fake_cupy import HostArray

# The kernel's tile and three others that reach the other swizzle cases (2, 8 and 32 chunks per row) and
# other warp shapes, so the model stays right when the tile is retuned on a GPU.
TILES = [TILE,
         Tile(bm=64, bn=64, bk=16, warps_m=2, warps_n=2, stages=4, min_blocks=4),
         Tile(bm=128, bn=64, bk=64, warps_m=4, warps_n=2, stages=2),
         Tile(bm=128, bn=256, bk=32, warps_m=2, warps_n=4, stages=2, min_blocks=1)]
TILE_IDS = [f"{t.bm}x{t.bn}x{t.bk}-w{t.warps_m}x{t.warps_n}-s{t.stages}" for t in TILES]
LANES = np.arange(32)


def _index_grid(*sizes: int) -> list[np.ndarray]:
    """Every index tuple of an array of these sizes, each axis raveled in C order (the C++ loop order)."""
    return [axis.ravel() for axis in np.meshgrid(*(np.arange(s) for s in sizes), indexing="ij")]


def _operands(tile: Tile) -> list[tuple[str, int, int, int]]:
    """(name, tile rows, chunks per row, copies per thread) of A and B."""
    return [("A", tile.bm, tile.a_row_chunks, tile.a_loads), ("B", tile.bk, tile.b_row_chunks, tile.b_loads)]


def _bank_groups(chunks: np.ndarray) -> np.ndarray:
    """Bank group (16-byte column of the 128-byte bank line) of chunk indices from a 128-aligned base."""
    return chunks % mg.BANK_GROUPS


def _assert_phases_conflict_free(chunks: np.ndarray, what: str) -> None:
    """chunks: 16-byte accesses of consecutive lanes; each 8-lane phase must hit 8 distinct bank groups."""
    for phase in _bank_groups(chunks).reshape(-1, 8):
        assert len(set(phase.tolist())) == 8, f"{what}: bank groups {phase.tolist()} conflict"


def _ldmatrix_chunks(tile: Tile, warp: int, ks: int, i: int, operand: str) -> np.ndarray:
    """The 32 lanes' shared-memory chunks of the kernel's ldmatrix for A tile mi=i or B pair p=i."""
    if operand == "A":
        rows = mg.warp_row0(tile, warp) + 16 * i + mg.lane_row(LANES)
        return mg.smem_chunk(rows, 2 * ks + mg.lane_chunk(LANES), tile.a_row_chunks)
    chunk = (mg.warp_col0(tile, warp) + 16 * i) // 8 + mg.lane_chunk(LANES)
    return mg.smem_chunk(16 * ks + mg.lane_row(LANES), chunk, tile.b_row_chunks)


def _ldmatrix_calls(tile: Tile) -> Iterator[tuple[str, int, int, int]]:
    """(operand, warp, k-step, mi or p) of every ldmatrix the kernel issues per stage."""
    warps = tile.warps_m * tile.warps_n
    for warp in range(warps):
        for ks in range(tile.bk // 16):
            for mi in range(tile.mma_m):
                yield "A", warp, ks, mi
            for p in range(tile.mma_n // 2):
                yield "B", warp, ks, p


# --- the index model -------------------------------------------------------------------------------

@pytest.mark.parametrize("tile", TILES, ids=TILE_IDS)
def test_tile_copies_cover_every_chunk_exactly_once(tile):
    for name, rows, row_chunks, loads in _operands(tile):
        tid, i = _index_grid(tile.threads, loads)
        r, ch = mg.load_row(tile, tid, i, row_chunks), mg.load_chunk(tile, tid, i, row_chunks)
        covered = np.zeros((rows, row_chunks), dtype=int)
        np.add.at(covered, (r, ch), 1)
        assert (covered == 1).all(), f"{name}: chunks copied {covered.min()}..{covered.max()} times"


@pytest.mark.parametrize("tile", TILES, ids=TILE_IDS)
def test_swizzle_is_a_permutation_of_aligned_chunks_inside_the_stage(tile):
    for name, rows, row_chunks, _ in _operands(tile):
        r, ch = _index_grid(rows, row_chunks)
        slots = mg.smem_chunk(r, ch, row_chunks)
        assert sorted(slots.tolist()) == list(range(rows * row_chunks)), f"{name}: slots collide or escape"
        # chunk units: every address is a multiple of 16 bytes; stages keep the 128-byte bank alignment
        assert (rows * row_chunks * 16) % 128 == 0
    assert tile.smem_bytes <= mg.STATIC_SMEM_LIMIT


@pytest.mark.parametrize("tile", TILES, ids=TILE_IDS)
def test_cp_async_stores_are_conflict_free(tile):
    for name, _, row_chunks, loads in _operands(tile):
        for i in range(loads):
            tid = np.arange(tile.threads)
            r, ch = mg.load_row(tile, tid, i, row_chunks), mg.load_chunk(tile, tid, i, row_chunks)
            chunks = mg.smem_chunk(r, ch, row_chunks)
            _assert_phases_conflict_free(chunks, f"{name} copy {i}")


@pytest.mark.parametrize("tile", TILES, ids=TILE_IDS)
def test_ldmatrix_phases_are_conflict_free(tile):
    for operand, warp, ks, i in _ldmatrix_calls(tile):
        _assert_phases_conflict_free(_ldmatrix_chunks(tile, warp, ks, i, operand),
                                     f"{operand} ldmatrix warp {warp} k-step {ks} tile {i}")


@pytest.mark.parametrize("tile", TILES, ids=TILE_IDS)
def test_ldmatrix_lanes_address_one_16x16_block_row_by_row(tile):
    """Lanes 8j..8j+7 give rows 0-7 / 8-15 of chunk 0 / 1 (matrix j), so the x4 registers come out in the
    fragment order the mma takes (a0..a3 for A; b0, b1 of two n8 tiles for B)."""
    np.testing.assert_array_equal(mg.lane_row(LANES), np.tile(np.arange(16), 2))
    np.testing.assert_array_equal(mg.lane_chunk(LANES), np.repeat([0, 1], 16))
    for operand, warp, ks, i in _ldmatrix_calls(tile):
        chunks = _ldmatrix_chunks(tile, warp, ks, i, operand)
        assert len(set(chunks.tolist())) == 32, f"{operand} warp {warp}: two lanes address the same row"


@pytest.mark.parametrize("tile", TILES, ids=TILE_IDS)
def test_accumulators_cover_the_block_tile_exactly_once(tile):
    warp, lane, mi, ni, r = _index_grid(tile.warps_m * tile.warps_n, 32, tile.mma_m, tile.mma_n, 4)
    covered = np.zeros((tile.bm, tile.bn), dtype=int)
    np.add.at(covered, (mg.acc_row(tile, warp, lane, mi, r), mg.acc_col(tile, warp, lane, ni, r)), 1)
    assert (covered == 1).all()


def test_accumulator_layout_is_the_ptx_isa_c_fragment():
    g, t = LANES // 4, LANES % 4  # groupID, threadID_in_group
    for r in range(4):
        np.testing.assert_array_equal(mg.acc_row(TILE, 0, LANES, 0, r), g + 8 * (r >= 2))
        np.testing.assert_array_equal(mg.acc_col(TILE, 0, LANES, 0, r), 2 * t + r % 2)


@pytest.mark.parametrize("stages", [2, 3, 4])
@pytest.mark.parametrize("k_tiles", range(1, 8))
def test_pipeline_reads_landed_tiles_and_refills_only_finished_stages(stages, k_tiles):
    """The kernel's loop, step by step: commit groups, `cp.async.wait_group stages-2`, one barrier."""
    groups = [s if s < k_tiles else None for s in range(stages - 1)]  # prologue: group g holds tile g
    holds = {s: s for s in range(min(stages - 1, k_tiles))}  # stage -> tile it was last filled with
    for kt in range(k_tiles):
        landed = len(groups) - (stages - 2)  # all but the newest stages-2 groups are complete
        assert groups.index(kt) < landed, "reading a tile whose copies may still be in flight"
        in_flight = [t for t in groups[landed:] if t is not None]
        nxt = kt + stages - 1
        if nxt < k_tiles:  # after the barrier every warp has finished iteration kt-1
            in_flight.append(nxt)
            holds[nxt % stages] = nxt
        groups.append(nxt if nxt < k_tiles else None)
        assert holds[kt % stages] == kt
        assert all(t % stages != kt % stages for t in in_flight), "a copy lands in the stage being read"


# --- an emulation of the whole kernel on the PTX ISA's instruction semantics ------------------------

def _ldmatrix_x4(smem: np.ndarray, chunks: np.ndarray, trans: bool) -> np.ndarray:
    """ldmatrix.sync.aligned.m8n8.x4[.trans].b16: lane l gives row l % 8 of matrix l // 8; lane t receives
    elements (t // 4, 2 * (t % 4) + {0, 1}) of each matrix (of its transpose with .trans).
    Returns [lane, register, half] with half 0 the low 16 bits."""
    mats = smem[chunks].reshape(4, 8, 8)
    if trans:
        mats = mats.transpose(0, 2, 1)
    regs = mats[:, (LANES // 4)[:, None], 2 * (LANES % 4)[:, None] + np.arange(2)]  # [matrix, lane, half]
    return regs.transpose(1, 0, 2)


def _mma_m16n8k16(acc: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """mma.sync.aligned.m16n8k16.row.col.f32: fragments by the PTX ISA's layout tables (a0..a7 in four
    registers, b0..b3 in two, c0..c3), acc [lane, 4] updated in place."""
    g, t = LANES // 4, LANES % 4
    a_mat, b_mat = np.full((16, 16), np.nan), np.full((16, 8), np.nan)
    for i in range(8):
        a_mat[g + 8 * ((i // 2) % 2), 2 * t + i % 2 + 8 * (i // 4)] = a[:, i // 2, i % 2]
    for i in range(4):
        b_mat[2 * t + i % 2 + 8 * (i // 2), g] = b[:, i // 2, i % 2]
    d = a_mat @ b_mat
    for i in range(4):
        acc[:, i] += d[g + 8 * (i // 2), 2 * t + i % 2]


def _fill_stage(tile: Tile, g: np.ndarray, rows: int, row_chunks: int, loads: int, row0: int,
                col0: int) -> np.ndarray:
    """load_tile: every thread's cp.async copies, zero-filled outside g; unwritten chunks stay NaN."""
    smem = np.full((rows * row_chunks, mg.CHUNK_ELEMS), np.nan)
    tid, i = _index_grid(tile.threads, loads)
    r, ch = mg.load_row(tile, tid, i, row_chunks), mg.load_chunk(tile, tid, i, row_chunks)
    gr, gc = row0 + r, col0 + mg.CHUNK_ELEMS * ch
    inside = (gr < g.shape[0]) & (gc < g.shape[1])
    cols = np.minimum(gc[:, None] + np.arange(mg.CHUNK_ELEMS), g.shape[1] - 1)
    data = g[np.minimum(gr, g.shape[0] - 1)[:, None], cols]
    smem[mg.smem_chunk(r, ch, row_chunks)] = np.where(inside[:, None], data, 0.0)
    return smem


def _mma_stage(tile: Tile, acc: np.ndarray, a_smem: np.ndarray, b_smem: np.ndarray) -> None:
    """mma_stage for every warp: the same ldmatrix addresses and register hand-over as the kernel."""
    for warp in range(tile.warps_m * tile.warps_n):
        for ks in range(tile.bk // 16):
            af = [_ldmatrix_x4(a_smem, _ldmatrix_chunks(tile, warp, ks, mi, "A"), trans=False)
                  for mi in range(tile.mma_m)]
            bf = []
            for p in range(tile.mma_n // 2):
                d = _ldmatrix_x4(b_smem, _ldmatrix_chunks(tile, warp, ks, p, "B"), trans=True)
                bf += [d[:, 0:2], d[:, 2:4]]  # bf[2p] = {d0, d1}, bf[2p + 1] = {d2, d3}
            for mi in range(tile.mma_m):
                for ni in range(tile.mma_n):
                    _mma_m16n8k16(acc[warp, :, mi, ni], af[mi], bf[ni])


def _store(tile: Tile, c: np.ndarray, acc: np.ndarray, row0: int, col0: int) -> None:
    """The epilogue: pairs (c0, c1) and (c2, c3), stored when the pair's first element is inside C."""
    warp, lane, mi, ni, h = _index_grid(tile.warps_m * tile.warps_n, 32, tile.mma_m, tile.mma_n, 2)
    row = row0 + mg.acc_row(tile, warp, lane, mi, 2 * h)
    col = col0 + mg.acc_col(tile, warp, lane, ni, 2 * h)
    inside = (row < c.shape[0]) & (col < c.shape[1])
    for half in range(2):
        c[row[inside], col[inside] + half] = acc[warp, lane, mi, ni, 2 * h + half][inside]


def emulate(tile: Tile, a: np.ndarray, b: np.ndarray, c: np.ndarray, blocks: int) -> None:
    """The kernel over `blocks` blocks, in float64, writing C's elements where the kernel stores them."""
    (m, k), n = a.shape, b.shape[1]
    tiles_m, tiles_n = tile_order.cdiv(m, tile.bm), tile_order.cdiv(n, tile.bn)
    for bid in range(blocks):
        tile_row, tile_col = tile_order.grouped_tile(bid, tiles_m, tiles_n, tile.group_m)
        row0, col0 = tile_row * tile.bm, tile_col * tile.bn
        acc = np.zeros((tile.warps_m * tile.warps_n, 32, tile.mma_m, tile.mma_n, 4))
        for kt in range(tile_order.cdiv(k, tile.bk)):
            a_smem = _fill_stage(tile, a, tile.bm, tile.a_row_chunks, tile.a_loads, row0, kt * tile.bk)
            b_smem = _fill_stage(tile, b, tile.bk, tile.b_row_chunks, tile.b_loads, kt * tile.bk, col0)
            _mma_stage(tile, acc, a_smem, b_smem)
        _store(tile, c, acc, row0, col0)


def _small_ints(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Integers in [-4, 4]: every product and sum is exact, so the emulation must match bit for bit."""
    return np.random.default_rng(seed).integers(-4, 5, size=shape).astype(np.float64)


@pytest.mark.parametrize(("tile", "shape"), [
    (TILE, (1, 8, 8)),  # one row, one chunk: almost everything is zero-fill
    (TILE, (130, 136, 40)),  # ragged in M, N and K (K not a multiple of bk)
    (TILE, (9 * 128 + 1, 8, 16)),  # 10 tile-rows: two groups of the block ordering, the second short
    (TILES[1], (70, 72, 48)),
    (TILES[2], (129, 64, 136)),
    (TILES[3], (40, 264, 32)),
], ids=["1x8x8", "130x136x40", "1153x8x16", "small-tile", "bk64-tile", "wide-tile"])
def test_emulated_kernel_computes_a_times_b(tile, shape):
    m, n, k = shape
    a, b = _small_ints((m, k), 1), _small_ints((k, n), 2)
    c = np.full((m, n), np.nan)
    emulate(tile, a, b, c, blocks=mg.grid(tile, m, n))
    np.testing.assert_array_equal(c, a @ b)


# --- the C++ layout compiled on the host, against the model -----------------------------------------

_DRIVER = r"""
#include <cstdio>
static void table(const char* name) { std::printf("\n%s", name); }
static void put(int v) { std::printf(" %d", v); }
int main() {
    table("a_smem");
    for (int r = 0; r < MG_BM; ++r)
        for (int c = 0; c < MG_A_ROW_CHUNKS; ++c) put(smem_chunk(r, c, MG_A_ROW_CHUNKS));
    table("b_smem");
    for (int r = 0; r < MG_BK; ++r)
        for (int c = 0; c < MG_B_ROW_CHUNKS; ++c) put(smem_chunk(r, c, MG_B_ROW_CHUNKS));
    table("a_load");
    for (int t = 0; t < MG_THREADS; ++t) for (int i = 0; i < MG_A_LOADS; ++i) {
        put(load_row(t, i, MG_A_ROW_CHUNKS)); put(load_chunk(t, i, MG_A_ROW_CHUNKS));
    }
    table("b_load");
    for (int t = 0; t < MG_THREADS; ++t) for (int i = 0; i < MG_B_LOADS; ++i) {
        put(load_row(t, i, MG_B_ROW_CHUNKS)); put(load_chunk(t, i, MG_B_ROW_CHUNKS));
    }
    table("lane");
    for (int l = 0; l < 32; ++l) { put(lane_row(l)); put(lane_chunk(l)); }
    table("acc");
    for (int w = 0; w < MG_WARPS_M * MG_WARPS_N; ++w) for (int l = 0; l < 32; ++l)
        for (int mi = 0; mi < MG_MMA_M; ++mi) for (int ni = 0; ni < MG_MMA_N; ++ni)
            for (int r = 0; r < 4; ++r) { put(acc_row(w, l, mi, r)); put(acc_col(w, l, ni, r)); }
    std::printf("\n");
}
"""


def _pairs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.stack([x, y], axis=-1).ravel()


def _model_tables(tile: Tile) -> dict[str, np.ndarray]:
    """What the driver prints, computed by the NumPy model in the driver's loop order."""
    tables = {}
    for name, rows, row_chunks, loads in _operands(tile):
        r, ch = _index_grid(rows, row_chunks)
        tables[f"{name.lower()}_smem"] = mg.smem_chunk(r, ch, row_chunks)
        tid, i = _index_grid(tile.threads, loads)
        tables[f"{name.lower()}_load"] = _pairs(mg.load_row(tile, tid, i, row_chunks),
                                                mg.load_chunk(tile, tid, i, row_chunks))
    tables["lane"] = _pairs(mg.lane_row(LANES), mg.lane_chunk(LANES))
    warp, lane, mi, ni, r = _index_grid(tile.warps_m * tile.warps_n, 32, tile.mma_m, tile.mma_n, 4)
    tables["acc"] = _pairs(mg.acc_row(tile, warp, lane, mi, r), mg.acc_col(tile, warp, lane, ni, r))
    return tables


def _host_tables(tile: Tile, workdir) -> dict[str, np.ndarray]:
    src = workdir / "layout.cpp"
    src.write_text(tile.defines() + mg.LAYOUT_CODE + _DRIVER)
    exe = workdir / "layout"
    subprocess.run(["g++", "-std=c++17", "-Wall", "-Werror", "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    rows = (line.split() for line in out.split("\n") if line)
    return {name: np.array(values, dtype=int) for name, *values in rows}


@pytest.mark.skipif(shutil.which("g++") is None, reason="no host C++ compiler (g++) to run LAYOUT_CODE")
@pytest.mark.parametrize("tile", TILES, ids=TILE_IDS)
def test_cpp_layout_matches_the_numpy_model(tile, tmp_path):
    host, model = _host_tables(tile, tmp_path), _model_tables(tile)
    assert host.keys() == model.keys()
    for name in model:
        np.testing.assert_array_equal(host[name], model[name], err_msg=name)


# --- the tile and its constants ---------------------------------------------------------------------

def test_default_tile():
    assert (TILE.bm, TILE.bn, TILE.bk, TILE.threads, TILE.stages) == (128, 128, 32, 256, 3)
    assert (TILE.warp_rows, TILE.warp_cols, TILE.mma_m, TILE.mma_n) == (64, 32, 4, 4)
    assert (TILE.a_loads, TILE.b_loads) == (2, 2)
    assert TILE.smem_bytes == 3 * (128 * 32 + 32 * 128) * 2 == mg.STATIC_SMEM_LIMIT


def test_source_takes_its_constants_from_the_tile():
    code = mg.SOURCE.code
    assert code.startswith(TILE.defines())
    assert f"#define MG_BM {TILE.bm}\n" in code and f"#define MG_STAGES {TILE.stages}\n" in code


@pytest.mark.parametrize(("tile", "match"), [
    (Tile(bm=96, warps_m=4, warps_n=2), "multiples of 16"),
    (Tile(bk=24), "k16"),
    (Tile(bn=48, warps_n=3), "swizzled"),
    (Tile(bm=32, warps_m=2, bn=256, warps_n=8, bk=16), "evenly"),
    (Tile(stages=4), "shared memory"),
    (Tile(stages=1), "at least 2"),
])
def test_tile_validation(tile, match):
    with pytest.raises(ValueError, match=match):
        tile.defines()


# --- the NVRTC build ---------------------------------------------------------------------------------

@cache
def _compiled(arch: str, warp_tile: str = "64x32"):
    return mg.WARP_TILES[warp_tile][1].compile_offline(arch)


@pytest.mark.parametrize("warp_tile", sorted(mg.WARP_TILES))
@pytest.mark.parametrize("arch", OFFLINE_ARCHS)
def test_builds_without_spills_within_the_launch_bounds(arch, warp_tile):
    tile, source = mg.WARP_TILES[warp_tile]
    report = _compiled(arch, warp_tile)
    for name in source.kernels:
        k = report.kernels[name]
        assert (k.spill_stores, k.spill_loads, k.stack_bytes) == (0, 0, 0), f"{name} uses local memory"
        # __launch_bounds__(threads, min_blocks): min_blocks blocks must fit the 64K-register file
        assert 0 < k.registers <= min(255, 65536 // (tile.threads * tile.min_blocks))


def test_the_wide_warp_tile_is_the_same_block_tile_in_four_warps():
    wide, _ = mg.WARP_TILES["64x64"]
    assert (wide.bm, wide.bn, wide.bk, wide.stages, wide.smem_bytes) == (TILE.bm, TILE.bn, TILE.bk,
                                                                         TILE.stages, TILE.smem_bytes)
    assert (wide.threads, wide.warp_rows, wide.warp_cols, wide.mma_m, wide.mma_n) == (128, 64, 64, 4, 8)
    g = mg.MmaGemm(256, 256, 64, "bf16", warp_tile="64x64")
    assert g.label == "mma.sync warps 64x64 bf16 256x256x64" and g.source is not mg.SOURCE
    assert mg.MmaGemm(256, 256, 64).label == "mma.sync bf16 256x256x64"
    with pytest.raises(ValueError, match="warp tile"):
        mg.MmaGemm(256, 256, 64, warp_tile="32x32")


@pytest.mark.parametrize("arch", OFFLINE_ARCHS)
def test_ptx_has_the_tensor_core_pipeline(arch):
    ptx = _compiled(arch).ptx
    for ptx_type in mg.PRECISIONS.values():
        assert f"mma.sync.aligned.m16n8k16.row.col.f32.{ptx_type}.{ptx_type}.f32" in ptx
        assert f"cvt.rn.{ptx_type}x2.f32" in ptx
    assert "ldmatrix.sync.aligned.m8n8.x4.shared.b16" in ptx
    assert "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16" in ptx
    assert re.search(r"cp\.async\.cg\.shared\.global \[%r\d+\], \[%rd\d+\], 16, %r\d+;", ptx)  # src-size form
    assert f"cp.async.wait_group {TILE.stages - 2};" in ptx and "cp.async.commit_group;" in ptx
    assert "ld.local" not in ptx and "st.local" not in ptx


@pytest.mark.parametrize("arch", OFFLINE_ARCHS)
def test_static_shared_memory_is_the_tiles_stages(arch):
    ptx = _compiled(arch).ptx
    for name in mg.SOURCE.kernels:
        # the kernels' shared arrays are named after their template instantiation, Bf16 or Fp16
        tag = {"mma_gemm_bf16": "Bf16", "mma_gemm_fp16": "Fp16"}[name]
        sizes = re.findall(rf"\.shared \.align 128 \.b8 \w*{tag}\w*\[(\d+)\]", ptx)
        assert sum(map(int, sizes)) == TILE.smem_bytes, name


# --- the workload, with a host stand-in for CuPy -----------------------------------------------------

def _host_workload(shape: tuple[int, int, int], precision: str) -> mg.MmaGemm:
    """What setup() makes, on the host: random inputs in [-1, 1), C allocated, a stream to poison on."""
    w = mg.MmaGemm(*shape, precision=precision)
    m, n, k = shape
    rng = np.random.default_rng(k)

    def rand(rows: int, cols: int) -> np.ndarray:
        x = rng.random((rows, cols), dtype=np.float32) * 2 - 1
        return to_bf16_bits(x) if precision == "bf16" else x.astype(np.float16)

    a, b = rand(m, k), rand(k, n)
    w.buf = {"a": a.view(HostArray), "b": b.view(HostArray), "b_copies": b[None].view(HostArray),
             "c": np.empty((m, n), a.dtype).view(HostArray)}
    return w


def _emulating_launcher(precision: str, blocks_run=None):
    """Stands in for SOURCE.function: runs the emulation on the launch's arguments, rounds like the
    epilogue's cvt.rn, and writes C; `blocks_run` limits the blocks (a kernel that misses tiles)."""
    def function(name: str):
        assert name == f"mma_gemm_{precision}"

        def launch(grid, block, args, stream):
            a, b, c, m, n, _ = args
            assert block == (TILE.threads,) and grid == (mg.grid(TILE, int(m), int(n)),)
            out = np.full(c.shape, np.nan)
            emulate(TILE, host_values(a, precision), host_values(b, precision), out, blocks_run or grid[0])
            out32 = out.astype(np.float32)
            written = ~np.isnan(out)
            bits = to_bf16_bits(out32) if precision == "bf16" else out32.astype(np.float16).view(np.uint16)
            c.view(np.uint16)[written] = bits[written]
        return launch
    return function


@pytest.mark.parametrize("precision", sorted(mg.PRECISIONS))
def test_check_accepts_the_emulated_kernel(precision, monkeypatch):
    w = _host_workload((130, 136, 40), precision)
    monkeypatch.setattr(mg.SOURCE, "function", _emulating_launcher(precision))
    w.poison()
    assert nonfinite(w.buf["c"], precision) == 130 * 136
    w.launch(stream=None)
    verdict = w.check()
    assert verdict.ok, verdict.detail
    assert verdict.rel_err < TOLERANCE[precision] / 4


@pytest.mark.parametrize("precision", sorted(mg.PRECISIONS))
def test_check_catches_a_block_that_never_ran(precision, monkeypatch):
    w = _host_workload((130, 136, 40), precision)
    monkeypatch.setattr(mg.SOURCE, "function", _emulating_launcher(precision, blocks_run=3))
    w.poison()
    w.launch(stream=None)
    verdict = w.check()
    assert not verdict.ok and "NaN or Inf" in verdict.detail


def test_check_catches_swapped_column_pairs():
    w = _host_workload((64, 32, 64), "bf16")
    a, b = (from_bf16_bits(w.buf[x]).astype(np.float64) for x in "ab")
    c = to_bf16_bits((a @ b).astype(np.float32))
    w.buf["c"][:] = c.reshape(64, 16, 2)[:, :, ::-1].reshape(64, 32)  # cvt halves the wrong way round
    assert not w.check().ok


def test_poison_is_each_precisions_nan():
    for precision in mg.PRECISIONS:
        w = _host_workload((3, 8, 8), precision)
        w.poison()
        assert np.isnan(host_values(w.buf["c"], precision)).all()


# --- counts, identity, validation -------------------------------------------------------------------

def test_counts_are_the_gemms():
    g = mg.MmaGemm(8192, 8192, 8192)
    assert g.flops() == 2 * 8192**3
    assert g.min_bytes() == g.footprint_bytes() == 2 * 3 * 8192**2
    odd = mg.MmaGemm(67, 40, 136, "fp16")
    assert odd.flops() == 2 * 67 * 40 * 136
    assert odd.min_bytes() == dense_gemm.min_bytes(67, 40, 136, "fp16")
    assert odd.min_bytes() == 2 * (67 * 136 + 136 * 40 + 67 * 40)


def test_identity_and_grid():
    g = mg.MmaGemm(300, 264, 520, "fp16")
    assert (g.name, g.precision, g.label) == ("gemm_mma_sync", "fp16", "mma.sync fp16 300x264x520")
    assert mg.grid(TILE, 300, 264) == 3 * 3 and mg.grid(TILE, 8192, 8192) == 64 * 64


@pytest.mark.parametrize(("args", "match"), [
    ((8, 8, 8, "fp32"), "precision"),
    ((0, 8, 8), "positive"),
    ((8, 8, -8), "positive"),
    ((8, 12, 8), "multiples of 8"),
    ((8, 8, 20), "multiples of 8"),
])
def test_constructor_rejects_bad_input_in_one_line(args, match):
    with pytest.raises(ValueError, match=match) as err:
        mg.MmaGemm(*args)
    assert "\n" not in str(err.value)


def test_m_may_be_anything():
    assert mg.MmaGemm(1, 8, 8).params == {"m": 1, "n": 8, "k": 8}
    assert mg.MmaGemm(8191, 8, 8).params["m"] == 8191


# --- on a GPU ---------------------------------------------------------------------------------------

GPU_SHAPES = [(1, 8, 8), (67, 40, 136), (128, 128, 128), (300, 264, 520), (1153, 1000, 1032),
              (2048, 2048, 2048)]


@pytest.fixture(scope="module")
def ctx():
    from mfugap.measure import GpuContext

    context = GpuContext.open()
    reason = mg.MmaGemm(8, 8, 8).unavailable(context.device.compute_capability)
    if reason:
        pytest.skip(reason)
    return context


def _run_once(w: mg.MmaGemm, ctx) -> np.ndarray:
    with ctx.stream:  # CuPy's poison must be ordered before the launch on the non-blocking stream
        w.poison()
        w.launch(ctx.stream)
        ctx.stream.synchronize()
        return w.buf["c"].get()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", sorted(mg.PRECISIONS))
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gpu_kernel_is_correct_and_repeatable(ctx, precision, shape):
    w = mg.MmaGemm(*shape, precision)
    try:
        verdict = verify(w, ctx.stream)  # setup, poison, launch and check, ordered on the stream
        assert verdict.ok, verdict.detail
        first = w.buf["c"].get()
        # a result that moves between runs on the same inputs is a race (pipeline or barrier)
        np.testing.assert_array_equal(_run_once(w, ctx).view(np.uint16), first.view(np.uint16))
    finally:
        w.teardown()


@pytest.mark.gpu
def test_gpu_row_is_measured(ctx):
    from mfugap.measure import WindowConfig, measure

    row = measure(mg.MmaGemm(4096, 4096, 4096), ctx, WindowConfig(window_s=1.0, warmup_s=0.1, min_reps=3),
                  suite="gpu-test")
    assert row["status"] == "ok", row["reason"]
    assert row["mfu_pct"] > 0
