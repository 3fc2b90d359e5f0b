"""Roofline sweep on the CPU: FLOP/byte per point, both kernels' PTX, the exact host models, the ridge."""
import re
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest

from mfugap.cuda_source import OFFLINE_ARCHS
from mfugap.kernels import roofline
from mfugap.suites import test_roofline as suite
from mfugap.verify import BF16_NAN, from_bf16_bits, to_bf16_bits
from tests import fake_cupy

GiB = 1 << 30


def test_sweep_is_the_powers_of_two_from_a_quarter_to_1024():
    assert tuple(2.0**e for e in range(-2, 11)) == roofline.INTENSITIES


@pytest.mark.parametrize("intensity", roofline.INTENSITIES)
def test_fp32_point_moves_8_bytes_per_element_and_does_4_x_intensity_fmas(intensity):
    w = roofline.Fp32Roofline(intensity, GiB, sm_count=132)
    n, fmas = w.params["n"], w.params["fmas"]
    assert (n, fmas) == (GiB // 4, 4 * intensity)
    assert (w.flops(), w.min_bytes()) == (2 * fmas * n, 8 * n)
    assert w.flops() / w.min_bytes() == intensity
    assert w.footprint_bytes() == w.min_bytes() and w.precision == "fp32"


@pytest.mark.parametrize("intensity", roofline.INTENSITIES)
def test_bf16_point_moves_1024_bytes_per_tile_and_4096_flops_per_mma(intensity):
    w = roofline.Bf16Roofline(intensity, GiB, sm_count=132)
    tiles, mmas, group = w.params["tiles"], w.params["mmas"], w.params["group"]
    assert tiles == GiB // 512 and tiles % group == 0
    assert mmas % 2 == 0 and group & (group - 1) == 0  # two chains; the kernel masks with group - 1
    assert (w.flops(), w.min_bytes()) == (2 * 16 * 8 * 16 * mmas * (tiles // group), 1024 * tiles)
    assert w.flops() / w.min_bytes() == intensity and w.precision == "bf16"


def test_schedules_at_the_ends_and_the_bend():
    assert [roofline.fp32_fmas(i) for i in (0.25, 1, 1024)] == [1, 4, 4096]
    assert [roofline.bf16_schedule(i) for i in (0.25, 4, 8, 16, 1024)] == [
        (2, 32), (2, 2), (2, 1), (4, 1), (256, 1)]


@pytest.mark.parametrize("intensity", [0, 0.125, 3, 2048, -1])
def test_off_sweep_intensities_are_refused(intensity):
    for point in (roofline.Fp32Roofline, roofline.Bf16Roofline):
        with pytest.raises(ValueError, match="power of two from 1/4 to 1024") as exc:
            point(intensity, GiB, 132)
        assert "\n" not in str(exc.value)


def test_sizes_must_fill_whole_float4s_and_tile_groups():
    with pytest.raises(ValueError, match="multiple of 16") as exc:
        roofline.Fp32Roofline(1, 1000, 132)
    assert "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="multiple of 16"):
        roofline.Fp32Roofline(1, 0, 132)
    assert roofline.Bf16Roofline(8, 512, 132).params["tiles"] == 1  # group 1: any whole tile
    with pytest.raises(ValueError, match="multiple of 16384 \\(32 tiles") as exc:
        roofline.Bf16Roofline(0.25, 512 * 31, 132)
    assert "\n" not in str(exc.value)


def test_labels_and_default_size():
    assert roofline.Fp32Roofline(0.25, GiB, 132).label == "roofline_fp32 0.25 FLOP/B"
    assert roofline.Bf16Roofline(1024, GiB, 132).label == "roofline_bf16 1024 FLOP/B"
    assert roofline.default_input_bytes(50 << 20, quick=False) == GiB
    assert roofline.default_input_bytes(50 << 20, quick=True) == GiB // 4


# --- fp32 host model -------------------------------------------------------------------------------------

def test_fp32_model_by_hand():
    x = np.array([1.0, 0.5], dtype=np.float32)
    np.testing.assert_array_equal(roofline.fp32_model(x, 0), x)
    # 1 * (1 - 2^-12) + 2^-13 = 1 - 2^-13; 0.5 is the fixed point b / (1 - a)
    np.testing.assert_array_equal(roofline.fp32_model(x, 1), [1 - 2**-13, 0.5])
    # exactly 1 - 2^-12 + 2^-25, half an ulp above 1 - 2^-12 (even mantissa): ties to even, down
    np.testing.assert_array_equal(roofline.fp32_model(x, 2), [1 - 2**-12, 0.5])
    assert roofline.fp32_model(x, 3).dtype == np.float32


def test_fp32_step_is_exact_in_float64_on_the_input_range():
    """The premise of the model: x*a + b has no float64 rounding for float32 x in [0.5, 1], so the one
    float32 rounding per step is the one fmaf does."""
    x = np.random.default_rng(1).uniform(0.5, 1.0, 300).astype(np.float32)
    x[:2] = (0.5, 1.0)
    for _ in range(40):
        wide = x.astype(np.float64) * roofline.FMA_A + roofline.FMA_B
        exact = [Fraction(float(v)) * Fraction(roofline.FMA_A) + Fraction(roofline.FMA_B) for v in x]
        assert [Fraction(float(w)) for w in wide] == exact
        x = wide.astype(np.float32)


def test_fp32_values_stay_in_range_and_depend_on_every_fma():
    x = np.random.default_rng(2).uniform(0.5, 1.0, 2000).astype(np.float32)
    y = roofline.fp32_model(x, 4096)
    assert (y >= 0.5).all() and (y < 1).all()
    assert (roofline.fp32_model(x, 4095) != y).mean() > 0.9  # one FMA fewer shows in the bits


# --- bf16 host model -------------------------------------------------------------------------------------

def _tile(values: dict[tuple[int, int, int], float]) -> np.ndarray:
    """One tile of words (1, 32, 4) from {(lane, word, half): value}, all else 0."""
    halves = np.zeros((1, 32, 8), dtype=np.float32)
    for (lane, word, half), v in values.items():
        halves[0, lane, 2 * word + half] = v
    return to_bf16_bits(halves).view(np.uint32)


def _half(words: np.ndarray, lane: int, word: int, half: int) -> float:
    return float(from_bf16_bits(words.view(np.uint16))[0, lane, 2 * word + half])


def test_bf16_model_of_ones():
    ones = _tile({(lane, w, h): 1.0 for lane in range(32) for w in range(4) for h in range(2)})
    out = roofline.bf16_tile_model(ones, pairs=3)  # every D entry: 3 x sum over k = 16 of 1 x 1
    assert (out == 0x42404240).all()  # 48.0 in both halves


def test_bf16_model_places_fragments_as_ptx_says():
    # lane 5 (group 1, thread 1), word 1 high half: A[9, 3] = 2, and B0[k=11, n=1] = 2
    # lane 9 (group 2, thread 1), word 0 high half: A[2, 3] = 3, and B0[k=3, n=2] = 3
    tile = _tile({(5, 1, 1): 2.0, (9, 0, 1): 3.0})
    out = roofline.bf16_tile_model(tile, pairs=1)
    # D0[9, 2] = A[9, 3] B0[3, 2] = 6 sits in lane 5's c2 (word 1, low); D0[2, 2] = 9 in lane 9's c0
    assert out[0, 5, 1] == 0x40C0 and out[0, 9, 0] == 0x4110  # bf16 6.0 and 9.0 in the low halves
    assert np.count_nonzero(out) == 2  # B1 (words 2-3) is all zero, so D1 is too


def test_bf16_vectorized_model_matches_an_element_by_element_reading_of_the_layouts():
    rng = np.random.default_rng(3)
    words = to_bf16_bits(rng.integers(-16, 17, (3, 32, 8)).astype(np.float32) / 8).view(np.uint32)
    e = from_bf16_bits(words.view(np.uint16)).astype(np.float64)
    a, b = np.zeros((3, 16, 16)), np.zeros((3, 2, 16, 8))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for i in range(8):  # a_i: row g (+8 for i in 2, 3, 6, 7), col 2t + i%2 (+8 for i >= 4)
            a[:, g + 8 * (i // 2 % 2), 2 * t + i % 2 + 8 * (i // 4)] = e[:, lane, i]
        for chain in range(2):
            for i in range(4):  # b_i: k = 2t + i%2 (+8 for i >= 2), n = g
                b[:, chain, 2 * t + i % 2 + 8 * (i // 2), g] = e[:, lane, 4 * chain + i]
    d = 5 * np.einsum("smk,sckn->scmn", a, b)
    expected = np.empty((3, 32, 8))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for chain in range(2):
            for i in range(4):  # c_i: row g (+8 for i >= 2), col 2t + i%2
                expected[:, lane, 4 * chain + i] = d[:, chain, g + 8 * (i // 2), 2 * t + i % 2]
    out = roofline.bf16_tile_model(words, pairs=5)
    np.testing.assert_array_equal(out.view(np.uint16), to_bf16_bits(expected.astype(np.float32)))


def test_bf16_extremes_stay_exact_in_fp32():
    """All-2 inputs at the top of the sweep (128 pairs): 128 x 16 x 4 = 8192, the largest |D|."""
    twos = _tile({(lane, w, h): 2.0 for lane in range(32) for w in range(4) for h in range(2)})
    assert (roofline.bf16_tile_model(twos, pairs=128) == 0x46004600).all()  # 8192.0
    assert 128 * 16 * 4 * roofline.BF16_STEPS**2 < 2**24  # in units of 1/64: fits fp32's significand


def test_bf16_model_copies_all_but_every_group_th_tile():
    words = np.random.default_rng(4).integers(0, 1 << 16, (6, 32, 4), dtype=np.uint32) & 0x3F803F80
    ids = np.array([0, 1, 2, 3, 4, 64])
    out = roofline.bf16_model(words, ids, mmas=2, group=4)
    math = np.array([True, False, False, False, True, True])
    np.testing.assert_array_equal(out[~math], words[~math])
    np.testing.assert_array_equal(out[math], roofline.bf16_tile_model(words[math], pairs=1))


# --- setup, launch and check on the host, the kernels emulated by the models ---------------------------

@pytest.fixture
def host(monkeypatch):
    """CuPy answered by NumPy, and the sources' `function` recording launches instead of running them."""
    fake = fake_cupy.install(monkeypatch)
    rng = np.random.default_rng(5)
    fake.random = SimpleNamespace(
        random=lambda n, dtype: fake_cupy.on_device(rng.random(n, dtype=dtype)),
        randint=lambda low, high, n, dtype: fake_cupy.on_device(rng.integers(low, high, n, dtype=dtype)))
    fake.empty_like = lambda x: fake_cupy.on_device(np.empty_like(x))
    fake.ascontiguousarray = lambda x, dtype: fake_cupy.on_device(np.ascontiguousarray(x, dtype=dtype))
    fake.uint16, fake.uint32 = np.uint16, np.uint32
    recorder = fake_cupy.Recorder()
    for source in (roofline.FP32_SOURCE, roofline.BF16_SOURCE):
        monkeypatch.setattr(source, "function", recorder)
    return recorder


def _launched(host, w):
    w.setup("stream")
    w.poison()
    w.launch("stream")
    [(name, grid, block, args, kwargs)] = host.calls
    assert name in w.source.kernels
    assert (name, grid, block, kwargs) == (w.name, (2 * roofline.BLOCKS_PER_SM,), (roofline.THREADS,),
                                           {"stream": "stream"})
    return args


def test_fp32_point_on_the_host(host):
    w = roofline.Fp32Roofline(8, 16 * 1001, sm_count=2)
    x, y, n4, fmas, a, b = _launched(host, w)
    assert x is w.buf["x"] and y is w.buf["y"] and np.isnan(y).all()
    assert (n4, fmas, a, b) == (1001, 32, roofline.FMA_A, roofline.FMA_B)
    assert (type(n4), type(fmas), type(a)) == (np.int64, np.int32, np.float32)
    assert x.dtype == np.float32 and (x >= 0.5).all() and (x <= 1).all()
    y[:] = roofline.fp32_model(x, fmas - 1)  # a kernel one FMA short
    assert not w.check().ok
    y[:] = roofline.fp32_model(x, fmas)
    verdict = w.check()
    assert verdict.ok and verdict.rel_err == 0.0 and "bit for bit" in verdict.detail
    y[-4:] = np.nan  # the last float4 never stored
    assert "left 4 of 4004 elements unwritten" in w.check().detail


def test_bf16_point_on_the_host(host):
    w = roofline.Bf16Roofline(0.5, 512 * 16 * 3, sm_count=2)
    x, y, tiles, pairs, group = _launched(host, w)
    assert x is w.buf["x"] and y is w.buf["y"] and (y == BF16_NAN).all()
    assert (tiles, pairs, group) == (48, 1, 16) and {type(tiles), type(pairs)} == {np.int64, np.int32}
    assert set(np.unique(from_bf16_bits(x) * 8)) == set(range(-16, 17))

    def run(pairs_done: int) -> None:
        words = np.asarray(x).view(np.uint32).reshape(tiles, 32, 4)
        y.view(np.uint32)[:] = roofline.bf16_model(words, np.arange(tiles), 2 * pairs_done, group).ravel()

    run(pairs + 1)  # a kernel running one mma pair too many
    assert not w.check().ok
    run(pairs)
    verdict = w.check()
    assert verdict.ok and verdict.rel_err == 0.0
    y[-8:] = BF16_NAN  # one lane of the last tile never stored
    assert "left 8 of" in w.check().detail


def test_selftest_cases_cover_remainders_one_block_and_many():
    fp32 = [w.params["fmas"] for w in roofline.selftest_cases() if w.precision == "fp32"]
    pairs = [w.params["mmas"] // 2 for w in roofline.selftest_cases() if w.precision == "bf16"]
    assert fp32 == [1, roofline.FMA_UNROLL, 4096] and pairs == [1, roofline.MMA_UNROLL, 128]


# --- PTX -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=OFFLINE_ARCHS)
def compiled(request):
    """kernel name -> (PTX of its source, its ptxas report) for one architecture."""
    reports = [s.compile_offline(request.param) for s in (roofline.FP32_SOURCE, roofline.BF16_SOURCE)]
    return {name: (r.ptx, k) for r in reports for name, k in r.kernels.items()}


_LABEL = re.compile(r"^(\$L__BB\d+_\d+):", re.M)


def loops(ptx: str) -> list[str]:
    """The body of every PTX loop: from a label to the last branch back to it."""
    bodies = []
    for label in _LABEL.finditer(ptx):
        back = list(re.finditer(rf"bra(?:\.uni)?\s+{re.escape(label.group(1))};", ptx[label.end():]))
        if back:
            bodies.append(ptx[label.end():label.end() + back[-1].start()])
    return bodies


def test_fp32_loop_is_unrolled_fmas_inside_a_16_byte_grid_stride_loop(compiled):
    bodies = loops(compiled["roofline_fp32"][0])
    assert any(b.count("fma.rn.f32") == 4 * roofline.FMA_UNROLL and "ld.global" not in b for b in bodies)
    assert any("ld.global.nc.v4.f32" in b and "st.global.v4.f32" in b and "fma.rn.f32" in b for b in bodies)


def test_bf16_loop_is_unrolled_mmas_inside_a_16_byte_grid_stride_loop(compiled):
    mma = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"
    bodies = loops(compiled["roofline_bf16"][0])
    assert any(b.count(mma) == 2 * roofline.MMA_UNROLL and "ld.global" not in b for b in bodies)
    assert any(all(s in b for s in ("ld.global.nc.v4.u32", "st.global.v4.u32", mma, "cvt.rn.bf16x2.f32"))
               for b in bodies)


def test_eight_blocks_of_256_fit_an_sm(compiled):
    cap = roofline.REGS_PER_SM // (roofline.THREADS * roofline.BLOCKS_PER_SM)
    assert set(compiled) == {"roofline_fp32", "roofline_bf16"}
    for name, (_, report) in compiled.items():
        assert report.registers <= cap, f"{name} needs more than {cap} registers"


def test_loops_finds_backward_branches_only():
    ptx = "$L__BB0_1:\n\tfma\n\t@%p bra \t$L__BB0_1;\n\tbra.uni \t$L__BB0_3;\n$L__BB0_3:\n\tret;"
    assert loops(ptx) == ["\n\tfma\n\t@%p "]


# --- ridge point -----------------------------------------------------------------------------------------

def _rows(peak: float, gbps: float, precision: str = "fp32", intensities=roofline.INTENSITIES) -> list[dict]:
    """A perfect roofline: tflops = min(peak, intensity x GB/s / 1e3) at every point."""
    return [{"precision": precision, "status": "ok", "intensity_flop_per_byte": i,
             "tflops": min(peak, i * gbps / 1e3)} for i in intensities]


def test_ridge_of_a_perfect_roofline():
    r = roofline.ridge_point(_rows(peak=64.0, gbps=4000.0))
    assert r["plateau_tflops"] == 64.0 and r["bandwidth_gbps"] == pytest.approx(4000.0)
    assert r["ridge_flop_per_byte"] == pytest.approx(16.0)
    assert r["plateau_at_flop_per_byte"] == 16.0 and r["bandwidth_at_flop_per_byte"] == 0.25
    assert r["rows"] == 13 and r["datasheet_ridge_flop_per_byte"] is None


def test_ridge_takes_the_best_of_noisy_points_and_ignores_rows_that_are_not_ok():
    rows = _rows(peak=60.0, gbps=3000.0)[::-1]  # order does not matter
    rows[0]["tflops"] = 55.0  # 1024 FLOP/B fell short; the plateau is the best point, 60
    rows[-1]["tflops"] = 0.6  # 1/4 FLOP/B at 2400 GB/s; 1/2 still shows 3000
    rows += [{"precision": "fp32", "status": "failed", "intensity_flop_per_byte": 1.0, "tflops": 999.0},
             {"precision": "fp32", "status": "ok", "intensity_flop_per_byte": 2.0, "tflops": None},
             {"precision": "fp32", "status": "ok", "intensity_flop_per_byte": None, "tflops": 1.0}]
    r = roofline.ridge_point(rows)
    assert (r["plateau_tflops"], r["bandwidth_gbps"], r["rows"]) == (60.0, pytest.approx(3000.0), 13)
    assert r["ridge_flop_per_byte"] == pytest.approx(20.0)


def test_ridge_needs_three_ok_rows():
    assert roofline.ridge_point([]) is None
    assert roofline.ridge_point(_rows(60.0, 3000.0, intensities=(1.0, 1024.0))) is None
    failed = [{**r, "status": "failed"} for r in _rows(60.0, 3000.0)]
    assert roofline.ridge_point(failed + _rows(60.0, 3000.0, intensities=(1.0, 1024.0))) is None
    assert roofline.ridge_point(_rows(60.0, 3000.0, intensities=(1.0, 64.0, 1024.0))) is not None


def test_ridge_refuses_mixed_precisions_and_reads_the_datasheet_ridge():
    with pytest.raises(ValueError, match="one precision"):
        roofline.ridge_point(_rows(60.0, 3000.0) + _rows(900.0, 3000.0, "bf16"))
    rows = [{**r, "peak_tflops": 67.0, "gbps": 1675.0, "mbu_pct": 50.0} for r in _rows(60.0, 3000.0)]
    assert roofline.ridge_point(rows)["datasheet_ridge_flop_per_byte"] == pytest.approx(67e3 / 3350)


def test_suite_summarizes_each_precision_and_says_its_lesson():
    rows = _rows(60.0, 3000.0) + _rows(600.0, 3000.0, "bf16")
    summary = suite.summarize(rows)
    assert set(summary) == {"fp32", "bf16"}
    assert summary["bf16"]["ridge_flop_per_byte"] == pytest.approx(200.0)
    assert summary["fp32"] == roofline.ridge_point(_rows(60.0, 3000.0))
    assert 2 <= " ".join(suite.LESSON.split()).count(". ") + 1 <= 3  # sentences, as the report prints it
