import numpy as np
import pytest

from mfugap.cuda_source import OFFLINE_ARCHS
from mfugap.kernels import elementwise
from tests.fake_cupy import Recorder


@pytest.mark.parametrize("fused", [True, False])
def test_fused_and_unfused_share_model_flops_and_bytes(fused):
    w = elementwise.AffineChain(1003, 8, fused, sm_count=4)
    assert w.flops() == 2 * 8 * 1003
    assert w.min_bytes() == w.footprint_bytes() == 8 * 1003
    assert w.name == ("elementwise_fused" if fused else "elementwise_unfused")


def test_unfused_moves_steps_times_the_minimum():
    assert elementwise.moved_bytes(100, 8, fused=True) == 800
    assert elementwise.moved_bytes(100, 8, fused=False) == 8 * 800


def test_reference_applies_the_affine_map_steps_times():
    x = np.array([1.0, -1.0, 0.0])
    expected = x
    for _ in range(3):
        expected = 0.75 * expected + 0.125
    np.testing.assert_allclose(elementwise.reference(x, 3), expected, rtol=0)
    assert np.abs(elementwise.reference(np.linspace(-1, 1, 11), 50)).max() <= 1


@pytest.mark.parametrize("fused", [True, False])
def test_launch_issues_one_kernel_fused_or_one_per_step(fused, monkeypatch, fake_cupy):
    recorder = Recorder()
    monkeypatch.setattr(elementwise.SOURCE, "function", recorder)
    w = elementwise.AffineChain(1003, 5, fused, sm_count=4)
    w.buf = {"x": np.zeros(1003, np.float32), "y": np.zeros(1003, np.float32)}
    w.launch(stream="s")
    steps = [int(call[3][4]) for call in recorder.calls]
    assert steps == ([5] if fused else [1] * 5)
    sources = [call[3][1] for call in recorder.calls]
    assert sources[0] is w.buf["x"] and all(s is w.buf["y"] for s in sources[1:])
    assert all(call[4] == {"stream": "s"} for call in recorder.calls)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="steps"):
        elementwise.AffineChain(10, 0, True, sm_count=1)


@pytest.mark.parametrize("arch", OFFLINE_ARCHS)
def test_kernel_uses_16_byte_accesses(arch):
    ptx = elementwise.SOURCE.compile_offline(arch).ptx
    assert "ld.global.nc.v4.f32" in ptx or "ld.global.v4.f32" in ptx
    assert "st.global.v4.f32" in ptx and "fma.rn.f32" in ptx
