import pytest

from mfugap.suites import test_utilization_calibration as calibration


@pytest.mark.parametrize(("share", "sms", "blocks"), [
    (None, 132, 1), (0.2, 132, 26), (0.2, 4, 1), (1.0, 132, 528), (0.5, 7, 3)])
def test_blocks_for_each_share(share, sms, blocks):
    assert calibration.blocks_for(share, sms) == blocks


def test_share_out_of_range_is_refused():
    with pytest.raises(ValueError, match="share"):
        calibration.blocks_for(1.5, 132)


def test_expected_sm_utilization():
    assert calibration.expected_sm_util_pct(1, 132) == pytest.approx(100 / 132)
    assert calibration.expected_sm_util_pct(26, 132) == pytest.approx(100 * 26 / 132)
    assert calibration.expected_sm_util_pct(528, 132) == 100.0

