"""Peak-compute kernels: FLOP and byte formulas, the exact host references, and the PTX of the loops."""
import re
from fractions import Fraction
from functools import cache

import numpy as np
import pytest

from mfugap.cuda_source import OFFLINE_ARCHS, CompileReport
from mfugap.kernels import peak
from mfugap.verify import from_bf16_bits
from tests.fake_cupy import Recorder, on_device

# ---- FLOPs and bytes, by construction


@pytest.mark.parametrize(("precision", "flops_per_fma", "out_bytes"),
                         [("fp32", 2, 4), ("fp64", 2, 8), ("fp16", 4, 4)])
def test_fma_counts(precision, flops_per_fma, out_bytes):
    threads = 3 * 256
    # threads x steps x (2 FMAs per oscillator step x 8 oscillators) x FLOPs per instruction
    assert peak.fma_flops(3, 64, precision) == threads * 64 * 16 * flops_per_fma
    assert peak.fma_min_bytes(3, precision) == threads * out_bytes
    w = peak.FmaPeak(precision, sm_count=132)
    assert w.params == {"blocks": 528, "steps": 1 << 15}
    assert w.flops() == 528 * 256 * (1 << 15) * 16 * flops_per_fma
    assert w.min_bytes() == w.footprint_bytes() == 528 * 256 * out_bytes
    assert w.precision == precision


def test_mma_counts():
    # warps x steps x 8 accumulator sets x 2*16*8*16
    assert peak.mma_flops(3, 8) == 3 * 8 * 8 * 8 * 4096
    assert peak.mma_min_bytes(3) == 3 * 256 * 16
    w = peak.MmaPeak(sm_count=132)
    assert (w.precision, w.alt_precisions, w.params) == ("bf16", (), {"blocks": 528, "steps": 8192})
    assert w.flops() == 528 * 8 * 8192 * 8 * 4096
    assert w.min_bytes() == w.footprint_bytes() == 528 * 256 * 16
    assert w.label == "peak_mma_bf16 blocks=528 steps=8192"


def test_fp16x2_is_held_to_the_tensor_peak_and_shown_against_fp32():
    assert peak.FmaPeak("fp16", 132).alt_precisions == ("fp32",)
    assert peak.FmaPeak("fp32", 132).alt_precisions == ()
    assert peak.FmaPeak("fp16", 132).label == "peak_fma_f16x2 blocks=528 steps=32768"


@pytest.mark.parametrize(("make", "match"), [
    (lambda: peak.FmaPeak("bf16", 132), "precision must be one of"),
    (lambda: peak.FmaPeak("fp32", 0), "sm_count >= 1"),
    (lambda: peak.FmaPeak("fp32", None), "sm_count >= 1"),
    (lambda: peak.FmaPeak("fp32", 132, steps=100), "multiple of 32"),
    (lambda: peak.FmaPeak("fp32", 132, steps=0), "multiple of 32"),
    (lambda: peak.FmaPeak("fp32", 132, steps=peak.MAX_FMA_STEPS + 32), "multiple of 32"),
    (lambda: peak.MmaPeak(132, steps=6), "multiple of 4"),
    (lambda: peak.MmaPeak(132, steps=peak.max_mma_steps() + 4), "multiple of 4"),
])
def test_constructors_reject_bad_input_in_one_line(make, match):
    with pytest.raises(ValueError, match=match) as err:
        make()
    assert "\n" not in str(err.value)


# ---- the FMA chains' host reference


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_minsky_steps_by_hand(dtype):
    x, y = np.array([1.0]), np.array([1.0])
    x1, y1 = peak.minsky_run(x, y, 1, dtype, e=0.5)
    assert (x1[0], y1[0]) == (0.5, 1.25)  # x = 1 - 0.5*1; y = 1 + 0.5*0.5
    x2, y2 = peak.minsky_run(x, y, 2, dtype, e=0.5)
    assert (x2[0], y2[0]) == (-0.125, 1.1875)


def test_fp16_steps_round_to_nearest_even_once_per_fma():
    x, y = np.array([1.0]), np.array([-(2.0**-7)])
    # x - e*y = 1 + 2^-11 exactly: a tie between 1 and 1 + 2^-10 in fp16, which keeps the even 1
    assert peak.minsky_run(x, y, 1, np.float16)[0][0] == 1.0
    assert peak.minsky_run(x, y, 1, np.float32)[0][0] == 1 + 2.0**-11


def _exact_fma_run(x: float, y: float, steps: int, dtype: type) -> tuple[float, float]:
    """Minsky steps in rational arithmetic, rounded once per FMA (exact sums fit float64's 53 bits here)."""
    def rnd(v: Fraction) -> Fraction:
        return Fraction(float(np.asarray(float(v)).astype(dtype)))

    e = Fraction(peak.E)
    fx, fy = rnd(Fraction(x)), rnd(Fraction(y))
    for _ in range(steps):
        fx = rnd(fx - e * fy)
        fy = rnd(fy + e * fx)
    return float(fx), float(fy)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_minsky_run_matches_rational_arithmetic(dtype):
    x0, y0 = peak.minsky_starts(1)
    k = [0, 77, 255]  # a few oscillators of the kernel's own start grid
    x, y = peak.minsky_run(x0.reshape(-1)[k], y0.reshape(-1)[k], 300, dtype)
    for i, j in enumerate(k):
        assert (x[i], y[i]) == _exact_fma_run(x0.reshape(-1)[j], y0.reshape(-1)[j], 300, dtype)


def test_minsky_combine_sums_left_to_right_in_the_kernel_precision():
    x, y = np.array([[1.0, 2.0]]), np.array([[3.0, 4.0]])
    assert peak.minsky_combine(x, y, np.float32)[0] == 10.0
    # ((2048 + 1) + 1) + 1 in fp16: each +1 is a tie that rounds back to 2048
    x, y = np.array([[2048.0, 1.0]]), np.array([[1.0, 1.0]])
    assert peak.minsky_combine(x, y, np.float16)[0] == 2048.0
    assert peak.minsky_combine(x, y, np.float32)[0] == 2051.0


def test_start_values_are_distinct_and_exact_in_fp16():
    for lanes in (1, 2):
        x, y = peak.minsky_starts(lanes)
        assert x.shape == y.shape == (32, peak.OSCILLATORS, lanes)
        assert len(np.unique(x)) == x.size and len(np.unique(y)) == y.size
        np.testing.assert_array_equal(x.astype(np.float16), x)
        np.testing.assert_array_equal(y.astype(np.float16), y)


@pytest.mark.parametrize("precision", sorted(peak.FMA_FORMATS))
def test_fma_reference_depends_on_every_step(precision):
    steps = 2 * peak.UNROLL
    fmt = peak.FMA_FORMATS[precision]
    ref = peak.fma_reference(precision, steps)
    assert ref.shape == (32, fmt.lanes) and ref.dtype == fmt.dtype
    assert len(np.unique(ref)) > 1  # lanes start apart and stay apart
    x, y = peak.minsky_run(*peak.minsky_starts(fmt.lanes), steps - 1, fmt.dtype)
    one_short = peak.minsky_combine(x, y, fmt.dtype)
    assert (one_short != ref).all(), "one step fewer must change every lane's result"


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_orbits_stay_bounded_up_to_the_largest_allowed_run(dtype):
    x, y = peak.minsky_starts(2)
    radius0 = np.hypot(x, y).max()
    chunk = peak.MAX_FMA_STEPS // 16
    for _ in range(16):
        x, y = peak.minsky_run(x, y, chunk, dtype)
        # an overflow would stay non-finite; a collapse would shrink the radius
        assert np.isfinite(x).all() and np.isfinite(y).all()
        radius = np.hypot(x.astype(np.float64), y.astype(np.float64))
        assert radius.min() > 0.5 and radius.max() < 1.1 * radius0


# ---- the mma loop's host reference


def test_fragment_coordinates_follow_the_ptx_layout():
    # PTX ISA, mma.m16n8k16 16-bit fragments: groupID = lane / 4, threadID_in_group = lane % 4
    assert [peak.a_coord(0, s) for s in range(8)] == [(0, 0), (0, 1), (8, 0), (8, 1),
                                                       (0, 8), (0, 9), (8, 8), (8, 9)]
    assert peak.a_coord(5, 0) == (1, 2) and peak.a_coord(31, 7) == (15, 15)
    assert [peak.b_coord(0, s) for s in range(4)] == [(0, 0), (1, 0), (8, 0), (9, 0)]
    assert peak.b_coord(5, 1) == (3, 1) and peak.b_coord(31, 3) == (15, 7)
    assert [peak.c_coord(0, s) for s in range(4)] == [(0, 0), (0, 1), (8, 0), (8, 1)]
    assert peak.c_coord(5, 2) == (9, 2) and peak.c_coord(31, 3) == (15, 7)


def test_fragments_cover_each_matrix_element_once():
    for coord, slots, shape in [(peak.a_coord, 8, (16, 16)), (peak.b_coord, 4, (16, 8)),
                                (peak.c_coord, 4, (16, 8))]:
        cells = {coord(lane, s) for lane in range(32) for s in range(slots)}
        assert len(cells) == 32 * slots == shape[0] * shape[1]


def test_operands_are_the_kernels_bf16_bit_patterns():
    a, b = peak.mma_operands()
    assert set(np.unique(a)) == set(np.unique(b)) == {1.0, 1.25, 1.5, 1.75}
    bits = 0x3F80 + 0x20 * np.arange(4, dtype=np.uint16)  # what bf16_operand() puts in the registers
    np.testing.assert_array_equal(from_bf16_bits(bits), [1.0, 1.25, 1.5, 1.75])
    # j = ((lane >> slot % 5) ^ slot) % 4: (6 >> 1) ^ 1 = 2; (2 >> 1) ^ 1 = 0; (7 >> 4) ^ 9 = 9
    assert [peak.bf16_operand(*ls) for ls in [(6, 1), (2, 1), (7, 9)]] == [1.5, 1.0, 1.25]
    d = a @ b
    assert len(np.unique(d)) > 32, "A @ B should differ across the output tile"
    assert (d * 16 == np.round(d * 16)).all() and d.max() < 49


def test_mma_reference_by_hand():
    # no steps: each output is the sum over the 8 sets of its start 4*s + i
    np.testing.assert_array_equal(peak.mma_reference(0), np.tile([112.0, 120.0, 128.0, 136.0], (32, 1)))
    a, b = peak.mma_operands()
    grown = peak.mma_reference(4) - peak.mma_reference(0)  # 8 sets x 4 steps x (A @ B)[row, col]
    assert grown[0, 0] == 32 * sum(a[0, k] * b[k, 0] for k in range(16))
    assert grown[31, 3] == 32 * sum(a[15, k] * b[k, 7] for k in range(16))
    assert peak.mma_reference(8).dtype == np.float32


def test_mma_step_limit_keeps_every_accumulator_exact():
    a, b = peak.mma_operands()
    largest = peak.mma_starts().max() + peak.max_mma_steps() * (a @ b).max()
    assert largest < peak.MMA_ACC_LIMIT <= largest + 2 * peak.MMA_UNROLL * (a @ b).max()
    assert peak.max_mma_steps() % peak.MMA_UNROLL == 0
    assert peak.MmaPeak(132).params["steps"] <= peak.max_mma_steps()


# ---- launch, poison and check on host arrays standing in for device buffers


@pytest.fixture
def kernels(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(peak.FMA_SOURCE, "function", recorder)
    monkeypatch.setattr(peak.MMA_SOURCE, "function", recorder)
    return recorder


SMALL = [lambda: peak.FmaPeak("fp16", 1, steps=64), lambda: peak.MmaPeak(1, steps=8)]


def _with_expected_output(w: peak._RegisterLoop) -> np.ndarray:
    out = np.tile(w._expected(), (w.params["blocks"] * peak.THREADS // 32, 1))
    w.buf["out"] = on_device(out.copy())
    return out


@pytest.mark.parametrize("precision", sorted(peak.FMA_FORMATS))
def test_fma_launch_fills_the_gpu_with_one_thread_per_output(precision, fake_cupy, kernels):
    w = peak.FmaPeak(precision, sm_count=2, steps=96)
    threads = 2 * peak.BLOCKS_PER_SM * peak.THREADS
    w.buf["out"] = on_device(np.zeros((threads, w.format.lanes), w.format.dtype))
    w.launch("stream")
    [(name, grid, block, args, kwargs)] = kernels.calls
    assert (name, grid, block, kwargs) == (w.format.kernel, (8,), (256,), {"stream": "stream"})
    out, e, trips = args
    assert out is w.buf["out"] and (e, trips) == (np.float32(peak.E), 3) and type(trips) is np.int32
    assert name in peak.FMA_SOURCE.kernels


def test_mma_launch_fills_the_gpu_with_one_thread_per_output(fake_cupy, kernels):
    w = peak.MmaPeak(sm_count=2, steps=12)
    w.buf["out"] = on_device(np.zeros((8 * peak.THREADS, 4), np.float32))
    w.launch("stream")
    [(name, grid, block, (out, trips), kwargs)] = kernels.calls
    assert (name, grid, block, trips, kwargs) == ("peak_mma_bf16", (8,), (256,), 3, {"stream": "stream"})
    assert out is w.buf["out"] and type(trips) is np.int32


@pytest.mark.parametrize("make", SMALL)
def test_poison_fills_every_output_with_nan(make):
    w = make()
    _with_expected_output(w)
    w.poison()
    assert np.isnan(w.buf["out"]).all()


@pytest.mark.parametrize("make", SMALL)
def test_check_is_exact_for_every_thread(make, fake_cupy):
    w = make()
    out = _with_expected_output(w)
    verdict = w.check()
    assert verdict.ok and verdict.rel_err == 0.0
    wrong = out.copy()
    wrong[-1, -1] = np.nextafter(wrong[-1, -1], np.inf)  # one ulp in the last thread
    w.buf["out"] = on_device(wrong)
    assert not w.check().ok
    wrong[-1, -1] = np.nan  # poison left in place by a thread that never wrote
    assert not w.check().ok


# ---- the compiled loops


SOURCES = {"fma": peak.FMA_SOURCE, "mma": peak.MMA_SOURCE}


@cache
def _compiled(source: str, arch: str) -> CompileReport:
    return SOURCES[source].compile_offline(arch)


def _kernel_ptx(ptx: str, name: str) -> str:
    entries = re.split(r"\.entry\s+", ptx)
    (body,) = [e for e in entries if e.startswith(f"{name}(")]
    return body


def _loop_and_rest(body: str) -> tuple[str, str]:
    """The one loop of a kernel (from its label to the branch back to it) and everything else."""
    loops = [m for m in re.finditer(r"bra(?:\.uni)?\s+(\$L__BB\w+);", body)
             if body.find(m.group(1) + ":") < m.start()]
    assert len(loops) == 1, "expected exactly one backward branch"
    start = body.find(loops[0].group(1) + ":")
    return body[start:loops[0].end()], body[:start] + body[loops[0].end():]


FMA_INSTRUCTIONS = {"peak_fma_f32": r"fma\.rn(?:\.ftz)?\.f32\s", "peak_fma_f64": r"fma\.rn\.f64\s",
                    "peak_fma_f16x2": r"fma\.rn\.f16x2\s"}
MEMORY = r"\b(?:ld|st)\.(?:global|shared|local)"


@pytest.mark.parametrize("arch", OFFLINE_ARCHS)
@pytest.mark.parametrize("kernel", sorted(FMA_INSTRUCTIONS))
def test_fma_loop_is_unrolled_register_only_math(kernel, arch):
    loop, rest = _loop_and_rest(_kernel_ptx(_compiled("fma", arch).ptx, kernel))
    fma = FMA_INSTRUCTIONS[kernel]
    assert len(re.findall(fma, loop)) == 2 * peak.OSCILLATORS * peak.UNROLL
    assert not re.findall(fma, rest), "FMAs outside the loop would count FLOPs the formula ignores"
    assert not re.search(MEMORY, loop)
    assert len(re.findall(r"\bst\.global", rest)) == 1  # one combined write per thread


@pytest.mark.parametrize("arch", OFFLINE_ARCHS)
def test_mma_loop_is_unrolled_register_only_math(arch):
    loop, rest = _loop_and_rest(_kernel_ptx(_compiled("mma", arch).ptx, "peak_mma_bf16"))
    mma = r"mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.bf16\.bf16\.f32\s"
    assert len(re.findall(mma, loop)) == peak.MMA_SETS * peak.MMA_UNROLL
    assert not re.findall(mma, rest)
    assert not re.search(MEMORY, loop)
    assert re.findall(r"\bst\.global\.v4\.f32", rest) and len(re.findall(r"\bst\.global", rest)) == 1


@pytest.mark.parametrize("arch", OFFLINE_ARCHS)
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_everything_stays_in_registers_at_the_planned_occupancy(source, arch):
    kernels = _compiled(source, arch).kernels
    for name in SOURCES[source].kernels:
        k = kernels[name]
        assert k.registers <= 65536 // (peak.THREADS * peak.BLOCKS_PER_SM), name
        assert (k.spill_stores, k.spill_loads, k.stack_bytes) == (0, 0, 0), name
