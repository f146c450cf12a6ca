"""FrameStats counts, rates and percentiles, and the diagnostic level decision."""
import math

import numpy as np
import pytest

from clip_ros.perception.stats import (
    assess, ERROR, FrameStats, HealthLimits, mean_interval, OK, percentiles, proportion, WARN,
    wilson_interval)


class Clock:
    """A settable clock."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_percentiles():
    assert all(math.isnan(v) for v in percentiles([]))
    p50, p99 = percentiles(list(range(101)))
    assert (p50, p99) == pytest.approx((50.0, 99.0))


def test_rates_counts_and_latencies():
    clock = Clock()
    stats = FrameStats(window=10.0, clock=clock)
    for i in range(100):  # 10 Hz in, every other frame dropped, 5 Hz out
        clock.now = i * 0.1
        stats.on_input(dropped=bool(i % 2))
        if i % 2 == 0:
            stats.on_processed(inference=0.05, latency=0.08)
    snap = stats.snapshot()
    assert snap.input_rate == pytest.approx(10.0, rel=0.05)
    assert snap.processed_rate == pytest.approx(5.0, rel=0.05)
    assert (snap.received, snap.processed, snap.dropped) == (100, 50, 50)
    assert snap.drop_ratio == pytest.approx(0.5, abs=0.02)
    assert snap.inference_ms == pytest.approx((50.0, 50.0))
    assert snap.latency_ms == pytest.approx((80.0, 80.0))
    assert snap.since_input == pytest.approx(0.0)
    assert snap.busy == pytest.approx(50 * 0.05)
    clock.now += 30.0  # the window empties, the totals stay
    snap = stats.snapshot()
    assert (snap.input_rate, snap.window_frames, snap.received) == (0.0, 0, 100)
    assert snap.since_input == pytest.approx(30.0)
    stats.reset()
    clock.now += 2.0
    assert stats.snapshot().received == 0 and stats.snapshot().since_input == 2.0


def test_level_ok_when_frames_flow():
    clock = Clock()
    stats = FrameStats(clock=clock)
    for i in range(30):
        clock.now = i * 0.1
        stats.on_input()
        stats.on_processed(0.01, 0.02)
    snap = assess(stats.snapshot(), HealthLimits(), active=True)
    assert (snap.level, snap.reasons) == (OK, [])


def test_level_warn_while_inputs_were_refused_recently():
    clock = Clock()
    stats = FrameStats(window=10.0, clock=clock)
    for i in range(30):  # frames flow, and every frame is refused
        clock.now = i * 0.1
        stats.on_input()
        stats.on_processed(0.01, 0.02)
        stats.on_rejected('rejected image: 16UC1 is not a colour image')
    snap = assess(stats.snapshot(), HealthLimits(), active=True)
    assert snap.level == WARN and (snap.rejected, snap.window_rejected) == (30, 30)
    assert snap.reasons == ['30 inputs refused recently (last: rejected image: 16UC1 is not '
                            'a colour image)']
    assert assess(stats.snapshot(), HealthLimits(), active=False).level == OK
    for i in range(30):  # good frames only for longer than the window
        clock.now = 3.0 + i * 0.5
        stats.on_input()
        stats.on_processed(0.01, 0.02)
    snap = assess(stats.snapshot(), HealthLimits(), active=True)
    assert (snap.level, snap.rejected, snap.window_rejected) == (OK, 30, 0)


def test_level_warn_on_silent_input_only_while_active():
    clock = Clock()
    stats = FrameStats(clock=clock)
    assert assess(stats.snapshot(), HealthLimits(), active=True).level == OK
    clock.now = 6.0
    assert assess(stats.snapshot(), HealthLimits(), active=True).level == WARN
    assert ('no input frame for 6.0 s since activation'
            in assess(stats.snapshot(), HealthLimits(), True).reasons)
    assert assess(stats.snapshot(), HealthLimits(), active=False).level == OK
    clock.now = 0.0
    stats.on_input()
    clock.now = 6.0
    snap = assess(stats.snapshot(), HealthLimits(silent_after=5.0), active=True)
    assert snap.level == WARN and 'no input frame for 6.0 s' in snap.reasons


def test_level_warn_on_high_drop_ratio():
    clock = Clock()
    stats = FrameStats(clock=clock)
    for i in range(100):
        clock.now = i * 0.01
        stats.on_input(dropped=i % 50 != 0)
    snap = assess(stats.snapshot(), HealthLimits(max_drop_ratio=0.9), active=True)
    assert snap.level == WARN and '98% of input frames dropped' in snap.reasons
    few = FrameStats(clock=clock)
    few.on_input(dropped=True)
    assert assess(few.snapshot(), HealthLimits(), active=True).level == OK


def test_level_error_on_load_failure_and_warn_on_qos_hint():
    stats = FrameStats()
    snap = assess(stats.snapshot(), HealthLimits(), active=False, load_error='no weights')
    assert snap.level == ERROR and 'model failed to load: no weights' in snap.reasons
    snap = assess(stats.snapshot(), HealthLimits(), active=False, qos_hint='check QoS')
    assert snap.level == WARN and snap.reasons == ['check QoS']


def test_level_warn_while_inference_fails():
    clock = Clock()
    stats = FrameStats(window=10.0, clock=clock)
    for i in range(30):  # frames flow, and every inference raises
        clock.now = i * 0.1
        stats.on_input()
        stats.on_processed(0.01, 0.02)
        stats.on_failed('inference failed: RuntimeError: CUDA out of memory')
    snap = assess(stats.snapshot(), HealthLimits(), active=True)
    assert snap.level == WARN and (snap.failed, snap.window_failed) == (30, 30)
    assert snap.reasons == ['30 inference runs failed recently (last: inference failed: '
                            'RuntimeError: CUDA out of memory)']
    clock.now = 20.0  # the failures are older than the window
    stats.on_input()
    snap = assess(stats.snapshot(), HealthLimits(), active=True)
    assert (snap.level, snap.failed, snap.window_failed) == (OK, 30, 0)


def test_last_error_is_kept():
    stats = FrameStats()
    stats.on_error('inference failed: boom')
    assert stats.snapshot().last_error == 'inference failed: boom'


def test_wilson_interval():
    low, high = wilson_interval(19, 20)
    assert (round(low, 3), round(high, 3)) == (0.764, 0.991)  # the textbook 95% interval
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_proportion_and_mean_interval():
    assert proportion(19, 20) == pytest.approx(
        {'k': 19, 'n': 20, 'rate': 0.95, 'low': 0.764, 'high': 0.991}, abs=5e-4)
    empty = proportion(0, 0)
    assert empty['n'] == 0 and math.isnan(empty['rate']) and (empty['low'], empty['high']) == (
        0.0, 1.0)
    figure = mean_interval([0.5, 0.7, 0.9])
    half = 4.303 * 0.2 / math.sqrt(3)  # t(0.975, 2 dof) x sample standard deviation 0.2
    assert figure == pytest.approx({'n': 3, 'mean': 0.7, 'low': 0.7 - half, 'high': 0.7 + half},
                                   abs=1e-3)
    one = mean_interval([0.4])
    assert one['mean'] == 0.4 and math.isnan(one['low']) and math.isnan(one['high'])
    # Many values: the t interval is the normal one.
    many = mean_interval(np.linspace(0, 1, 1001))
    assert many['high'] - many['mean'] == pytest.approx(1.96 * np.linspace(0, 1, 1001).std(
        ddof=1) / math.sqrt(1001), rel=2e-3)
    assert mean_interval([])['n'] == 0 and math.isnan(mean_interval([])['mean'])
