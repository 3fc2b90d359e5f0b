"""Pipeline stalls on the CPU: duty-cycle arithmetic, host pacing and waiting, the flag wait's kernel,
release timer and record check, and the workloads' counts, validation and launch order (with fakes)."""
import itertools
import queue
import re
import threading
import time

import numpy as np
import pytest

from mfugap.cuda_source import OFFLINE_ARCHS
from mfugap.kernels import cublas_gemm, flag_wait, stalls
from mfugap.timing import time_back_to_back_s
from mfugap.verify import from_bf16_bits
from tests.fake_events import FakeEvents, FakeStream

# --- duty-cycle arithmetic ---------------------------------------------------------------------------


def test_loader_idle_is_kernel_time_times_inverse_duty_minus_one():
    # sleep = t_kernel * (1/duty - 1): a 2 ms GEMM at 25% leaves the GPU 6 ms idle in an 8 ms step
    assert stalls.loader_idle_s(2e-3, 0.25) == pytest.approx(6e-3)
    assert stalls.batch_period_s(2e-3, 0.25) == pytest.approx(8e-3)
    assert stalls.loader_idle_s(2e-3, 1.0) == 0.0


@pytest.mark.parametrize("duty", [0.75, 0.5, 0.25, 0.1])
def test_the_gpu_busy_share_of_a_loader_period_is_the_duty_cycle(duty):
    kernel_s = 1.5e-3
    period = stalls.batch_period_s(kernel_s, duty)
    assert kernel_s / period == pytest.approx(duty)
    assert period - kernel_s == pytest.approx(stalls.loader_idle_s(kernel_s, duty))


def test_a_full_duty_cycle_is_not_paced():
    assert stalls.batch_period_s(1.5e-3, 1.0) == 0.0


# --- host waiting and pacing ----------------------------------------------------------------------------


class FakeClock:
    """Host time that moves only when read (a tick per read, as spinning takes time) or slept."""

    def __init__(self, tick_s=1e-6):
        self.now, self.tick_s, self.sleeps = 0.0, tick_s, []

    def __call__(self):
        self.now += self.tick_s
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_wait_until_sleeps_most_of_the_way_and_spins_the_rest():
    clock = FakeClock()
    stalls.wait_until(0.010, clock, clock.sleep)
    assert 0.010 <= clock.now < 0.010 + 2 * clock.tick_s
    assert len(clock.sleeps) == 1 and clock.sleeps[0] == pytest.approx(0.010 - stalls.SPIN_S, abs=1e-5)


def test_wait_until_a_past_deadline_returns_at_once():
    clock = FakeClock()
    clock.now = 1.0
    stalls.wait_until(0.5, clock, clock.sleep)
    assert clock.sleeps == [] and clock.now == pytest.approx(1.0, abs=1e-5)


def test_pacer_releases_one_batch_per_period():
    clock = FakeClock()
    pacer = stalls.Pacer(0.010, clock, clock.sleep)
    pacer.take()  # the first batch is ready at once
    first = clock.now
    pacer.take()
    assert clock.now - first == pytest.approx(0.010, abs=1e-5)
    pacer.take()
    assert clock.now - first == pytest.approx(0.020, abs=1e-5)


def test_pacer_keeps_its_phase_for_a_consumer_late_by_under_a_period():
    clock = FakeClock()
    pacer = stalls.Pacer(0.010, clock, clock.sleep)
    pacer.take()
    start = clock.now
    clock.now += 0.015  # batch 2 was due at +10 ms: it waits in the buffer, batch 3 is still due at +20
    pacer.take()
    assert clock.now - start == pytest.approx(0.015, abs=1e-5)
    pacer.take()
    assert clock.now - start == pytest.approx(0.020, abs=1e-5)


def test_pacer_restarts_after_a_long_pause():
    clock = FakeClock()
    pacer = stalls.Pacer(0.010, clock, clock.sleep)
    pacer.take()
    clock.now += 1.0  # a check or warm-up in between: one batch is buffered, not a hundred
    pacer.take()
    resumed = clock.now
    pacer.take()
    assert clock.now - resumed == pytest.approx(0.010, abs=1e-5)


def test_an_unpaced_loader_never_reads_the_clock():
    def no_clock():
        raise AssertionError("read the clock")

    stalls.Pacer(0.0, no_clock, no_clock).take()


def test_back_to_back_timing_is_the_mean_launch_time():
    clock = FakeEvents(itertools.repeat(2.0))
    assert time_back_to_back_s(clock.launch, clock, reps=20) == pytest.approx(2e-3)


# --- the GEMM-step workloads -----------------------------------------------------------------------------


class FakeArray:
    def __init__(self, log, values):
        self.log, self.values = log, values

    def get(self, stream=None):
        return self.values.copy()

    def fill(self, value):
        self.log.append(("fill a", value))

    def set(self, host, stream=None):
        self.log.append(("copy a", host, stream))


class FakeGemm:
    """Stands in for CublasGemm: records calls; a launch takes scripted device time on `events`."""

    def __init__(self, log, events=None):
        self.log, self.events = log, events
        self.buf = {"a": FakeArray(log, np.arange(6, dtype=np.uint16).reshape(2, 3))}

    def setup(self, stream):
        self.log.append("gemm setup")

    def poison(self):
        self.log.append("gemm poison")

    def launch(self, stream):
        self.log.append("gemm")
        if self.events:
            self.events.launch()


class LoggingStream(FakeStream):
    def __init__(self, log):
        super().__init__()
        self.log = log

    def synchronize(self):
        self.log.append("synchronize")


def _with_fake_gemm(workload, log, events=None):
    workload.gemm = FakeGemm(log, events)
    return workload


@pytest.mark.parametrize("workload", [stalls.LoaderStarved(512, duty_pct=50), stalls.SyncStall(512, 1.0),
                                      stalls.InputCopy(512, "pinned")], ids=lambda w: w.name)
def test_model_work_is_the_gemms_whatever_the_stall(workload):
    gemm = cublas_gemm.CublasGemm(512, 512, 512, "bf16")
    assert workload.flops() == gemm.flops() == 2 * 512**3
    assert workload.min_bytes() == gemm.min_bytes() == 3 * 2 * 512**2
    assert workload.footprint_bytes() == gemm.footprint_bytes()
    assert workload.precision == "bf16"


def test_the_copy_is_overhead_not_model_bytes():
    w = stalls.InputCopy(8192, "pageable")
    assert w.copy_bytes() == 2 * 8192**2
    assert w.min_bytes() == 6 * 8192**2  # A, B, C once: the copy of A is not counted again


def test_labels_carry_the_stall():
    assert stalls.LoaderStarved(2048, duty_pct=25).label == "loader_starved size=2048 duty_pct=25"
    assert stalls.SyncStall(2048, host_ms=1.0).label == "sync_stall size=2048 host_ms=1.0"
    assert stalls.InputCopy(2048, "pinned").label == "input_copy size=2048 host_memory=pinned"


@pytest.mark.parametrize(("make", "message"), [
    (lambda: stalls.LoaderStarved(512, duty_pct=0), "duty cycle"),
    (lambda: stalls.LoaderStarved(512, duty_pct=120), "duty cycle"),
    (lambda: stalls.LoaderStarved(512, duty_pct=50, kernel_ms=0), "kernel time"),
    (lambda: stalls.SyncStall(512, host_ms=-1), "host work"),
    (lambda: stalls.InputCopy(512, "managed"), "host memory"),
    (lambda: stalls.InputCopy(0, "pinned"), "positive"),
    (lambda: flag_wait.FlagWait(delay_ms=0), "delay"),
    (lambda: flag_wait.FlagWait(delay_ms=5000), "delay"),
])
def test_constructors_reject_bad_input_in_one_line(make, message):
    with pytest.raises(ValueError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


def test_loader_paces_from_a_given_kernel_time():
    log = []
    w = _with_fake_gemm(stalls.LoaderStarved(512, duty_pct=25, kernel_ms=1.0), log)
    w.setup(LoggingStream(log))
    assert w.pacer.period_s == pytest.approx(4e-3)
    assert log == ["gemm setup"]  # nothing timed when the kernel time is given


def test_loader_times_the_gemm_once_in_setup(monkeypatch):
    log = []
    events = FakeEvents(itertools.repeat(3.0))
    monkeypatch.setattr(stalls, "CupyEvents", lambda stream: events)
    monkeypatch.setattr(stalls, "SETUP_WARMUP_S", 0.0)
    w = _with_fake_gemm(stalls.LoaderStarved(512, duty_pct=50), log, events)
    w.setup(LoggingStream(log))
    assert w.kernel_s == pytest.approx(3e-3)
    assert w.pacer.period_s == pytest.approx(6e-3)
    assert log.count("gemm") == 2 + stalls.SETUP_TIMED_LAUNCHES  # warm-up's minimum, then the timed ones


def test_loader_waits_for_its_batch_before_the_gemm():
    log = []
    w = _with_fake_gemm(stalls.LoaderStarved(512, duty_pct=50, kernel_ms=2.0), log)
    w.setup(LoggingStream(log))
    t0 = time.perf_counter()
    for _ in range(3):
        w.launch(None)
    assert time.perf_counter() - t0 >= 2 * 4e-3  # batches 2 and 3 each come a 4 ms period later
    assert log.count("gemm") == 3


def test_sync_stall_synchronizes_then_holds_the_host():
    log = []
    stream = LoggingStream(log)
    w = _with_fake_gemm(stalls.SyncStall(512, host_ms=2.0), log)
    t0 = time.perf_counter()
    w.launch(stream)
    assert time.perf_counter() - t0 >= 2e-3
    assert log == ["gemm", "synchronize"]


def test_input_copy_copies_then_multiplies_and_poisons_the_input():
    log = []
    stream = LoggingStream(log)
    w = _with_fake_gemm(stalls.InputCopy(2, "pageable"), log)
    w.setup(stream)
    w.poison()
    assert log[-2] == "gemm poison"
    fill, value = log[-1]
    assert fill == "fill a" and np.isnan(from_bf16_bits(np.array([value], dtype=np.uint16)))
    del log[:]
    w.launch(stream)
    (copy, host, copy_stream), gemm = log
    assert (copy, copy_stream, gemm) == ("copy a", stream, "gemm")
    np.testing.assert_array_equal(host, w.gemm.buf["a"].values)  # the batch holds A's values


# --- the flag wait: kernel source ------------------------------------------------------------------------


def _loop_bodies(ptx):
    """PTX between each label and a later branch back to it: the bodies of the kernel's loops."""
    bodies = []
    for branch in re.finditer(r"bra(?:\.uni)?\s+(\$L__\w+);", ptx):
        label = ptx.find(f"{branch.group(1)}:")
        if 0 <= label < branch.start():
            bodies.append(ptx[label:branch.start()])
    return bodies


@pytest.fixture(scope="module", params=OFFLINE_ARCHS)
def flag_wait_ptx(request):
    return flag_wait.SOURCE.compile_offline(request.param).ptx


def test_the_wait_loop_rereads_host_memory_and_the_timer(flag_wait_ptx):
    loops = _loop_bodies(flag_wait_ptx)
    assert loops, "the wait compiled without a loop"
    rereads = re.compile(r"ld\.(volatile|acquire\.sys|relaxed\.sys)\.global\.u64")
    assert any(rereads.search(body) and "%globaltimer" in body for body in loops), \
        "no loop both re-reads the flag with a volatile/acquire load and reads the global timer"


def test_the_wait_loop_compares_the_iteration_cap(flag_wait_ptx):
    # the cap is the fourth parameter; it is loaded once and must be compared inside the loop
    cap = re.search(r"ld\.param\.u64\s+(%rd\d+),\s*\[flag_wait_param_3\];", flag_wait_ptx).group(1)
    assert any(re.search(rf"setp\.\w+\.u64\s+%p\d+,\s*%rd\d+,\s*{re.escape(cap)};", body)
               for body in _loop_bodies(flag_wait_ptx))


def test_the_timeout_leaves_the_delay_slack_and_the_cap_outlasts_it():
    delay_ns = 5_000_000
    limit = flag_wait.timeout_ns(delay_ns)
    assert limit == delay_ns + flag_wait.TIMEOUT_SLACK_NS
    # more reads than a working timer allows (each crosses the bus), few enough to end if it stood still
    assert flag_wait.max_polls(limit) == limit // flag_wait.MIN_POLL_NS
    assert flag_wait.max_polls(limit) * 1_000 == 10 * limit  # at 1 µs a read, a frozen timer ends at 10x


def test_the_flag_wait_does_no_math():
    w = flag_wait.FlagWait(delay_ms=5.0)
    assert (w.flops(), w.min_bytes(), w.footprint_bytes(), w.precision) == (0, 32, 32, "none")
    assert w.delay_ns == 5_000_000 and w.label == "flag_wait delay_ms=5.0"


# --- the flag wait: record check ---------------------------------------------------------------------------

DELAY_NS = 5_000_000


def _record(outcome, waited_ns, polls, seen):
    return np.array([outcome, waited_ns, polls, seen], dtype=np.uint64)


def test_a_released_wait_passes_and_says_how_long_it_waited():
    verdict = flag_wait.check_record(_record(flag_wait.RELEASED, 5_100_000, 4000, 3), 3, DELAY_NS)
    assert verdict.ok and "5.100 ms" in verdict.detail and "4000 reads" in verdict.detail


@pytest.mark.parametrize(("record", "reason"), [
    (_record(flag_wait.NEVER_RAN, 0, 0, 0), "never ran"),
    (_record(flag_wait.TIMED_OUT, flag_wait.timeout_ns(DELAY_NS), 10**6, 2), "timed out"),
    (_record(flag_wait.RELEASED, 5_000_000, 100, 4), "flag value 4"),  # released by a later epoch
    (_record(flag_wait.RELEASED, 1_000, 0, 3), "already released"),
    (_record(flag_wait.RELEASED, flag_wait.timeout_ns(DELAY_NS), 100, 3), "after its timeout"),
])
def test_a_wait_that_was_not_released_by_its_host_fails(record, reason):
    verdict = flag_wait.check_record(record, 3, DELAY_NS)
    assert not verdict.ok and reason in verdict.detail


# --- the flag wait: release timer ---------------------------------------------------------------------------


class FakeTimer:
    """threading.Timer's interface; fires only when the test says so."""

    def __init__(self, interval, function, args=()):
        self.interval, self.function, self.args = interval, function, args
        self.started = self.cancelled = self.joined = False
        self.fired = 0

    def start(self):
        self.started = True

    def fire(self):
        if not self.cancelled:
            self.fired += 1
            self.function(*self.args)

    def join(self):
        self.joined = True

    def cancel(self):
        self.cancelled = True


def _releaser(flag, timers):
    """A Releaser whose timers are fakes, collected in `timers` as they are made."""

    def make(*args, **kwargs):
        timers.append(FakeTimer(*args, **kwargs))
        return timers[-1]

    return flag_wait.Releaser(flag, 0.005, timer=make)


def test_the_release_comes_once_after_the_delay_of_a_queued_wait():
    flag, timers = np.zeros(1, dtype=np.uint64), []
    releaser = _releaser(flag, timers)
    queued = []
    epoch = releaser.arm(lambda e: queued.append((e, len(timers))))
    assert epoch == 1 and queued == [(1, 0)]  # enqueued before its timer existed
    (timer,) = timers
    assert timer.started and timer.daemon and timer.interval == 0.005
    assert flag[0] == 0  # nothing released until the delay has passed
    timer.fire()
    assert flag[0] == 1 and timer.fired == 1


def test_a_later_wait_is_not_freed_by_the_earlier_release():
    flag, timers = np.zeros(1, dtype=np.uint64), []
    releaser = _releaser(flag, timers)
    releaser.arm(lambda e: None)
    timers[0].fire()
    assert releaser.arm(lambda e: None) == 2
    assert timers[0].joined  # the next wait was queued only after the previous release
    assert flag[0] < 2  # wait 2 finds its flag unreleased until its own timer fires
    timers[1].fire()
    assert flag[0] == 2


def test_finish_cancels_the_pending_release_and_frees_every_wait():
    flag, timers = np.zeros(1, dtype=np.uint64), []
    releaser = _releaser(flag, timers)
    releaser.arm(lambda e: None)
    releaser.finish()
    assert timers[0].cancelled and timers[0].joined
    assert flag[0] == flag_wait.RELEASE_ALL
    timers[0].fire()
    assert flag[0] == flag_wait.RELEASE_ALL  # a cancelled timer writes nothing


def test_a_real_timer_releases_after_the_delay():
    flag = np.zeros(1, dtype=np.uint64)
    releaser = flag_wait.Releaser(flag, 0.2)
    t0 = time.perf_counter()
    releaser.arm(lambda e: None)
    assert flag[0] == 0
    releaser.arm(lambda e: None)  # returns once the first release is written
    assert time.perf_counter() - t0 >= 0.2 and flag[0] == 1
    releaser.finish()  # cancels the second release: the flag frees every wait instead
    assert flag[0] == flag_wait.RELEASE_ALL


def test_back_to_back_waits_each_last_the_delay_on_an_emulated_stream():
    """A host thread plays the stream: it runs queued waits in order, each polling the flag for its
    epoch. The harness launches with no synchronization, yet every wait lasts about the delay."""
    flag, delay_s = np.zeros(1, dtype=np.uint64), 0.02
    queued, waited = queue.Queue(), []

    def stream():
        while (epoch := queued.get()) is not None:
            start = time.perf_counter()
            while flag[0] < epoch:
                time.sleep(1e-4)
            waited.append(time.perf_counter() - start)

    device = threading.Thread(target=stream)
    device.start()
    releaser = flag_wait.Releaser(flag, delay_s)
    for _ in range(4):
        releaser.arm(queued.put)
    releaser.arm(lambda epoch: queued.put(None))  # a last launch, so the fourth release is written
    device.join(timeout=5)
    releaser.finish()
    assert len(waited) == 4 and min(waited) >= delay_s / 2, waited
