"""The fp32 GEMM ladder (kernels/gemm/): registry, shape arithmetic, and every rung against float64 NumPy.

The kernels run in the CUDA simulator here (tests/conftest.py), or on the GPU where one is usable, on
small shapes: odd sizes with partial tiles in M, N and K, a matrix smaller than one tile, and exactly one
tile. The simulator runs one Python thread per CUDA thread, so rung 3 is also built with a small block
tile, which crosses block and K-step boundaries at a size the simulator gets through quickly.
"""
import dataclasses
import importlib
import json
import os
import pkgutil
import subprocess
import sys

import numpy as np
import pytest

import mfugap.kernels.gemm
from mfugap.cuda_source import OFFLINE_ARCHS
from mfugap.kernels.gemm import ladder
from mfugap.kernels.gemm import rung03_register_blocked as rung03
from mfugap.verify import TOLERANCE, rel_err

SMALL_TILE = rung03.BlockTile(bm=32, bn=32, bk=4, tm=4, tn=4)  # 64 threads, 4x4 outputs each
RUNGS = [*ladder.rungs(), rung03.build(SMALL_TILE)]
NUMBA_RUNGS = [r for r in RUNGS if r.in_numba]
CUDA_C_RUNGS = [r for r in ladder.rungs() if not r.in_numba]  # run on the host: tests/test_host_cuda.py
CASES = [(rung, shape) for rung in NUMBA_RUNGS for shape in ((37, 45, 29), (5, 7, 3), (*rung.tile, 32))]


def _case_id(case: tuple) -> str:
    rung, shape = case
    return f"{rung.number:02d}_{rung.name}_{rung.tile[0]}x{rung.tile[1]}-{'x'.join(map(str, shape))}"


@pytest.mark.parametrize(("rung", "shape"), CASES, ids=[_case_id(c) for c in CASES])
def test_rung_matches_float64_numpy(rung, shape):
    verdict = ladder.run_small(rung, *shape)
    assert verdict.ok, verdict.detail


def test_unwritten_outputs_fail_the_check():
    one_block = dataclasses.replace(RUNGS[0], launch_config=lambda m, n: ((1, 1), (32, 32)))
    verdict = ladder.run_small(one_block, 37, 45, 3)
    assert not verdict.ok and verdict.rel_err == float("inf")


def test_registry_numbers_rungs_from_1_without_gaps():
    found = ladder.rungs()
    assert len(found) >= 3
    assert [r.number for r in found] == list(range(1, len(found) + 1))
    assert len({r.name for r in found}) == len(found)
    assert all(r.description and "\n" not in r.description for r in found)


def test_each_rung_file_is_named_after_its_rung():
    package = mfugap.kernels.gemm
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("rung"):
            rung = importlib.import_module(f"{package.__name__}.{info.name}").RUNG
            assert info.name == f"rung{rung.number:02d}_{rung.name}"


@pytest.mark.parametrize("rung", RUNGS, ids=lambda r: f"{r.name}_{r.tile[0]}x{r.tile[1]}")
@pytest.mark.parametrize(("m", "n"), [(4096, 4096), (37, 45), (1, 300)])
def test_launch_gives_one_block_per_tile_of_c(rung, m, n):
    grid, block = rung.launch_config(m, n)
    assert np.prod(grid) == ladder.cdiv(m, rung.tile[0]) * ladder.cdiv(n, rung.tile[1])
    assert np.prod(block) <= 1024


def test_register_blocked_tile_must_split_evenly():
    assert rung03.BlockTile().threads == 256
    with pytest.raises(ValueError, match="must divide"):
        rung03.build(rung03.BlockTile(tn=6))
    with pytest.raises(ValueError, match="evenly"):
        rung03.build(rung03.BlockTile(bm=32, bn=32, bk=1, tm=2, tn=2))


def test_workload_counts_gemm_flops_and_fp32_bytes():
    g = ladder.NumbaGemm(RUNGS[0], 64, 48, 80)
    assert g.flops() == 2 * 64 * 48 * 80
    assert g.min_bytes() == g.footprint_bytes() == 4 * (64 * 80 + 80 * 48 + 64 * 48)
    assert (g.name, g.precision, g.alt_precisions) == ("gemm_naive", "fp32", ("bf16",))
    assert g.label == "rung 1 naive fp32 64x48x80"
    with pytest.raises(ValueError, match="positive"):
        ladder.NumbaGemm(RUNGS[0], 0, 8, 8)


def test_fp32_tolerance_holds_for_k_4096_in_order_sums():
    """The suite checks K = 4096 against TOLERANCE["fp32"]; in-order fp32 sums stay well inside it."""
    rng = np.random.default_rng(0)
    a = rng.random((8, 4096), dtype=np.float32) * 2 - 1
    b = rng.random((4096, 256), dtype=np.float32) * 2 - 1
    acc = np.zeros((8, 256), dtype=np.float32)
    for k in range(4096):
        acc += a[:, k, None] * b[k]  # rounded to fp32 at every step, as a rung's accumulator is
    assert rel_err(acc, a.astype(np.float64) @ b.astype(np.float64)) < TOLERANCE["fp32"] / 4


OFFLINE = f"""
import json
from mfugap.kernels.gemm import ladder
out = {{}}
for rung in filter(lambda r: r.in_numba, ladder.rungs()):
    for arch in {OFFLINE_ARCHS!r}:
        report = ladder.compile_offline(rung, arch)
        (kernel,) = report.kernels.values()
        out[f"{{rung.name}} {{arch}}"] = dict(
            spills=kernel.spill_stores + kernel.spill_loads, registers=kernel.registers,
            local=".local" in report.ptx, f64=".f64" in report.ptx,
            fma=report.ptx.count("fma.rn.f32"), ld_shared=report.ptx.count("ld.shared"))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def offline() -> dict:
    """Every rung compiled for sm_80 and sm_90 by NVVM and ptxas, no GPU needed. In a subprocess: this
    session's numba.cuda may be the simulator, which has no compiler."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    done = subprocess.run([sys.executable, "-c", OFFLINE], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_numpy_without_row_stack_gets_back_the_alias_numba_cuda_needs(monkeypatch):
    monkeypatch.delattr(np, "row_stack", raising=False)  # as in NumPy 2.5
    ladder.restore_row_stack()
    assert np.row_stack is np.vstack


def test_rungs_compile_to_fp32_math_in_registers(offline):
    assert len(offline) == len([r for r in ladder.rungs() if r.in_numba]) * len(OFFLINE_ARCHS)
    for key, k in offline.items():
        assert k["spills"] == 0 and not k["local"], f"{key} uses local memory: {k}"
        assert not k["f64"] and k["fma"] > 0, f"{key} is not pure fp32 FMA math: {k}"


def test_register_blocking_does_4_fmas_per_shared_load(offline):
    # rung 2 reads two shared words per FMA; rung 3 reuses each word loaded into a register 8 times
    for arch in OFFLINE_ARCHS:
        tiled, blocked = offline[f"smem_tiled {arch}"], offline[f"register_blocked {arch}"]
        assert tiled["fma"] / tiled["ld_shared"] == 0.5
        assert blocked["fma"] / blocked["ld_shared"] >= 4


def test_ladder_summary_explains_every_rung_and_reads_it_against_cublas():
    from mfugap.suites import test_gemm_ladder as suite

    rows = [{"workload": "cublas_gemm", "label": "cuBLAS fp32 64x64x64", "params": {"m": 64},
             "tflops": 40.0},
            {"workload": "gemm_naive", "label": "rung 1 naive fp32 64x64x64", "params": {"m": 64},
             "tflops": 2.0}]
    summary = suite.summarize(rows)
    assert summary["% of cuBLAS fp32"] == {"rung 1 naive fp32 64x64x64": 5.0}
    assert list(summary["rungs"]) == [f"{r.number} {r.name}" for r in ladder.rungs()]
    assert all(summary["rungs"].values())


@pytest.mark.parametrize("rung", CUDA_C_RUNGS, ids=lambda r: r.name)
def test_cuda_c_rungs_take_whole_vectors_and_say_so(rung):
    assert rung.multiple == ladder.VECTOR == 4
    assert all(n % 4 == 0 and k % 4 == 0 for _, n, k in rung.odd_shapes())
    assert [m for m, _, _ in rung.odd_shapes()] == [m for m, _, _ in ladder.SMALL_ODD_SHAPES]
    with pytest.raises(ValueError, match="multiples of 4"):
        rung.workload(64, 45, 64)
    g = rung.workload(64, 48, 80)
    assert isinstance(g, ladder.CudaGemm) and g.label == f"rung {rung.number} {rung.name} fp32 64x48x80"
    assert isinstance(RUNGS[0].workload(5, 7, 3), ladder.NumbaGemm)


@pytest.mark.parametrize("arch", OFFLINE_ARCHS)
def test_cuda_c_rungs_use_16_byte_accesses_and_reuse_more_each_rung(arch):
    """Rung 4: 4 shared loads feed an 8 x 8 outer product (16 FMAs each); rung 5: 6 feed 8 x 16 (21+)."""
    fmas_per_load = {}
    for rung in CUDA_C_RUNGS:
        ptx = rung.source.compile_offline(arch).ptx
        assert ptx.count("ld.global.nc.v4.f32") >= 2 and ptx.count("st.global.v4.f32") >= 2, rung.name
        assert ptx.count("ld.shared.v4.f32") >= 4 and "ld.shared.f32" not in ptx, rung.name
        fmas_per_load[rung.number] = ptx.count("fma.rn.f32") / ptx.count("ld.shared.v4.f32")
    assert fmas_per_load[4] == 16
    assert fmas_per_load[5] > 21
