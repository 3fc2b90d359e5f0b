"""Shape arithmetic and host-side checks of the kernel families (the GPU parts run in tests marked gpu)."""
import numpy as np
import pytest

from mfugap.kernels import cublas_gemm, dense_gemm, spin, stream
from mfugap.verify import BF16_NAN, to_bf16_bits


def test_triad_counts_stream_bytes_and_two_flops_per_element():
    assert stream.flops(1000) == 2000
    assert stream.min_bytes(1000) == 12000  # reads b and c, writes a
    t = stream.Triad(1003, sm_count=132)
    assert (t.flops(), t.min_bytes(), t.footprint_bytes()) == (2006, 12036, 12036)
    assert t.grid == 132 * stream.BLOCKS_PER_SM


def test_triad_reference_in_float64():
    b = np.array([1.0, 2.0], dtype=np.float32)
    c = np.array([0.5, -1.0], dtype=np.float32)
    np.testing.assert_array_equal(stream.reference(b, c, 3.0), [2.5, -1.0])


@pytest.mark.parametrize(("l2", "quick", "expected"), [
    (50 << 20, False, 1 << 28), (50 << 20, True, 1 << 26), (60 << 20, True, 1 << 26),
    (126 << 20, True, 1 << 27), (None, True, 1 << 26)])
def test_triad_arrays_stay_at_least_4x_l2(l2, quick, expected):
    n = stream.default_n(l2, quick)
    assert n == expected
    assert 4 * n >= 4 * (l2 or 0)


def test_gemm_counts():
    assert dense_gemm.flops(8192, 8192, 8192) == 2 * 8192**3
    assert dense_gemm.min_bytes(8192, 8192, 8192, "bf16") == 2 * 3 * 8192**2
    assert dense_gemm.min_bytes(4, 5, 6, "fp32") == 4 * (4 * 6 + 6 * 5 + 4 * 5)
    g = cublas_gemm.CublasGemm(64, 48, 80, "tf32")
    assert g.flops() == 2 * 64 * 48 * 80 and g.label == "cuBLAS tf32 64x48x80"


def test_gemm_rejects_bad_input():
    with pytest.raises(ValueError, match="precision"):
        cublas_gemm.CublasGemm(8, 8, 8, "fp8")
    with pytest.raises(ValueError, match="positive"):
        cublas_gemm.CublasGemm(0, 8, 8)


def test_gemm_host_values_decode_bf16():
    x = np.array([[1.5, -0.25]], dtype=np.float32)
    np.testing.assert_array_equal(dense_gemm.host_values(to_bf16_bits(x), "bf16"), x.astype(np.float64))
    np.testing.assert_array_equal(dense_gemm.host_values(x, "fp32"), x.astype(np.float64))


def test_spin_does_no_math_and_is_bounded():
    s = spin.Spin(blocks=3, ms=20.0)
    assert s.flops() == 0 and s.min_bytes() == 3 * 3 * 8 and s.precision == "none"
    assert spin.max_iters(s.ns) == 4 * 20_000_000
    with pytest.raises(ValueError):
        spin.Spin(blocks=0)


def _counters(*blocks: tuple[int, int, int]) -> np.ndarray:
    """(ns spun, iterations, SM id) per block, laid out as the kernel writes them."""
    return np.array([value for block in blocks for value in block], dtype=np.uint64)


def test_spin_check_accepts_only_bounded_spins():
    ns = 1_000_000
    assert spin.check_counters(_counters((ns + 10, 500, 0), (ns + 2000, 700, 1)), ns, slack_ns=5000).ok
    assert not spin.check_counters(_counters((ns - 1, 500, 0), (ns, 700, 1)), ns, slack_ns=5000).ok
    late = _counters((ns + 10_000, 500, 0))
    assert not spin.check_counters(late, ns, slack_ns=5000).ok
    unwritten = np.zeros(3, dtype=np.uint64)
    assert not spin.check_counters(unwritten, ns, slack_ns=5000).ok
    # a stuck timer: the iteration cap ended the spin early, which is the bound working
    capped = _counters((0, spin.max_iters(ns), 4))
    assert spin.check_counters(capped, ns, slack_ns=5000).ok


def test_spin_one_per_sm_needs_distinct_sms():
    ns = 1_000_000
    spread = _counters((ns, 9, 0), (ns, 9, 2), (ns, 9, 4))
    doubled = _counters((ns, 9, 0), (ns, 9, 2), (ns, 9, 0))
    assert spin.check_counters(spread, ns, slack_ns=5000, one_per_sm=True).ok
    assert spin.check_counters(doubled, ns, slack_ns=5000).ok  # a full grid may share SMs
    verdict = spin.check_counters(doubled, ns, slack_ns=5000, one_per_sm=True)
    assert not verdict.ok and verdict.detail.startswith("3 blocks ran on only 2 distinct SMs")


def test_small_gemm_weights_rotate_through_copies_beyond_l2():
    l2 = 50 << 20
    g = cublas_gemm.CublasGemm(1, 4096, 4096, "bf16", l2_bytes=l2)
    weights = 2 * 4096 * 4096
    assert g.copies == -(-4 * l2 // weights) == 7
    assert g.footprint_bytes() == g.min_bytes() + 6 * weights
    big = cublas_gemm.CublasGemm(8192, 16384, 16384, "bf16", l2_bytes=l2)  # 512 MiB of weights
    assert big.copies == 1 and big.footprint_bytes() == big.min_bytes()
    assert cublas_gemm.CublasGemm(1, 4096, 4096, "bf16").copies == 1  # L2 unknown: no rotation
    g.buf["b_copies"] = list(range(g.copies))
    assert [g.next_weights() for _ in range(9)] == [0, 1, 2, 3, 4, 5, 6, 0, 1]


def test_gemm_nonfinite_counts_poison_in_every_storage():
    from mfugap.verify import to_bf16_bits

    c = np.array([[1.0, np.nan], [np.inf, -2.0]], dtype=np.float32)
    assert dense_gemm.nonfinite(c, "fp32") == 2
    assert dense_gemm.nonfinite(c.astype(np.float16), "fp16") == 2
    bits = to_bf16_bits(c)
    assert dense_gemm.nonfinite(bits, "bf16") == 2
    bits[0, 1] = BF16_NAN
    assert dense_gemm.nonfinite(bits, "bf16") == 2
