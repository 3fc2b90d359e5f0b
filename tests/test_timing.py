import itertools

import pytest

from mfugap.timing import run_window, warm_up
from tests.fake_events import FakeEvents


def test_window_reaches_min_duration_and_reps():
    clock = FakeEvents(itertools.repeat(1.0))  # 1 ms launches
    timing = run_window(clock.launch, clock, min_window_s=0.5, min_reps=10, host_time=clock.host_time)
    assert timing.reps == 500
    assert len(timing.launch_ms) == timing.reps
    assert timing.window_s == pytest.approx(0.5)
    assert timing.median_ms == pytest.approx(1.0)


def test_min_reps_wins_over_a_short_window():
    clock = FakeEvents(itertools.repeat(100.0))
    timing = run_window(clock.launch, clock, min_window_s=0.01, min_reps=7, host_time=clock.host_time)
    assert timing.reps == 7
    assert timing.window_s == pytest.approx(0.7)


def test_statistics_are_of_single_launches_and_window_includes_gaps():
    durations = itertools.cycle([1.0, 2.0, 3.0, 4.0, 100.0])
    clock = FakeEvents(durations, gap_ms=0.5)
    timing = run_window(clock.launch, clock, min_window_s=0.0, min_reps=5, host_time=clock.host_time)
    assert sorted(timing.launch_ms) == [1.0, 2.0, 3.0, 4.0, 100.0]
    assert timing.median_ms == 3.0
    assert timing.p90_ms == pytest.approx(4.0 + 0.6 * 96.0)
    # the four gaps between the five launches count in the window, not in any launch
    assert timing.window_s == pytest.approx((110.0 + 4 * 0.5) / 1e3)


def test_host_never_runs_far_ahead_of_the_device():
    clock = FakeEvents(itertools.repeat(1.0))
    run_window(clock.launch, clock, min_window_s=0.2, min_reps=1, max_ahead=4, host_time=clock.host_time)
    # each launch holds two events; at most max_ahead + 1 launches are unsettled at once
    assert clock.max_outstanding <= 2 * 5
    assert not clock.outstanding


def test_bad_rep_bounds_raise():
    clock = FakeEvents(itertools.repeat(1.0))
    with pytest.raises(ValueError, match="min_reps"):
        run_window(clock.launch, clock, min_window_s=1.0, min_reps=0)


def test_warm_up_runs_for_its_time_and_at_least_twice():
    clock = FakeEvents(itertools.repeat(10.0))
    assert warm_up(clock.launch, clock, warmup_s=0.1, host_time=clock.host_time).launches == 10
    clock = FakeEvents(itertools.repeat(1000.0))
    assert warm_up(clock.launch, clock, warmup_s=0.1, host_time=clock.host_time).launches == 2


def test_warm_up_reports_its_last_launch_not_the_cold_first():
    clock = FakeEvents(iter([500.0, 20.0, 21.0]))  # the first launch compiles
    warm = warm_up(clock.launch, clock, warmup_s=0.0, min_launches=3, host_time=clock.host_time)
    assert warm.launches == 3 and warm.last_s == pytest.approx(0.021)
