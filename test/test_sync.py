"""TimeMatcher: approximate stamp matching of detections with mask, depth and camera_info."""
import threading

import pytest

from clip_ros.policy.sync import StampBuffer, TimeMatcher

NAMES = ('detections', 'mask', 'depth', 'info')


def test_matches_within_tolerance():
    matcher = TimeMatcher(NAMES, tolerance=0.02)
    assert matcher.add('depth', 1.00, 'd1') is None
    assert matcher.add('info', 1.01, 'i1') is None
    assert matcher.add('mask', 1.0, 'm1') is None
    match = matcher.add('detections', 1.0, 'det1')
    assert match == {'stamp': 1.0, 'detections': 'det1', 'mask': 'm1', 'depth': 'd1',
                     'info': 'i1'}


def test_nearest_wins_and_far_is_rejected():
    matcher = TimeMatcher(('a', 'b'), tolerance=0.05)
    matcher.add('b', 0.90, 'far')
    assert matcher.add('a', 1.0, 'anchor') is None  # 0.1 s apart: no match
    matcher = TimeMatcher(('a', 'b'), tolerance=0.05)
    matcher.add('b', 1.04, 'near')
    matcher.add('b', 1.01, 'nearest')
    assert matcher.add('a', 1.0, 'anchor')['b'] == 'nearest'


def test_stale_anchors_are_dropped():
    matcher = TimeMatcher(('a', 'b'), tolerance=0.01, max_wait=0.5)
    for k in range(10):
        matcher.add('a', k * 0.1, k)
    assert matcher.dropped >= 3
    assert matcher.add('b', 0.9, 'b9')['a'] == 9


def test_a_frame_mask_waits_for_its_own_stamp():
    # Grounding at ~28 frames/s: the previous frame's mask (36 ms older) is within the
    # tolerance when the detections of the next frame arrive before their mask.
    matcher = TimeMatcher(NAMES, tolerance=0.05, exact=('mask',))
    matcher.add('depth', 1.000, 'd1')
    matcher.add('info', 1.000, 'i1')
    matcher.add('mask', 0.964, 'm0')  # the previous grounded frame
    assert matcher.add('detections', 1.000, 'det1') is None
    assert matcher.add('mask', 1.000, 'm1')['mask'] == 'm1'
    loose = TimeMatcher(NAMES, tolerance=0.05)  # without it the wrong mask is taken
    for name, stamp, msg in (('depth', 1.0, 'd1'), ('info', 1.0, 'i1'), ('mask', 0.964, 'm0')):
        loose.add(name, stamp, msg)
    assert loose.add('detections', 1.000, 'det1')['mask'] == 'm0'


def test_bad_arguments():
    with pytest.raises(ValueError, match='two distinct'):
        TimeMatcher(['a'])
    with pytest.raises(ValueError, match='exact streams'):
        TimeMatcher(('a', 'b'), exact=('a',))
    with pytest.raises(ValueError, match='unknown stream'):
        TimeMatcher(('a', 'b')).add('c', 0.0, None)


def test_stamp_buffer_gives_the_nearest_within_tolerance():
    buffer = StampBuffer(tolerance=0.05, size=3)
    for stamp in (1.0, 1.1, 1.2, 1.3):  # the first falls out of the three kept
        buffer.add(stamp, f'm{stamp}')
    assert len(buffer) == 3
    assert buffer.nearest(1.12) == 'm1.1' and buffer.nearest(1.29) == 'm1.3'
    assert buffer.nearest(1.0) is None and buffer.nearest(1.5) is None
    with pytest.raises(ValueError, match='tolerance'):
        StampBuffer(tolerance=-1)


def test_stamp_buffer_takes_the_newest_of_equal_stamps():
    # A driver that leaves its stamps at zero (or repeats one): the newest depth, not the
    # oldest still buffered, belongs with the frame being grounded now.
    buffer = StampBuffer(tolerance=0.05)
    for k in range(5):
        buffer.add(0.0, f'depth{k}')
    assert buffer.nearest(0.0) == 'depth4'
    buffer = StampBuffer(tolerance=0.05)
    for name in ('old', 'new'):
        buffer.add(1.0, name)
    assert buffer.nearest(1.01) == 'new'


def test_stamp_buffer_waits_for_a_message_still_on_its_way():
    buffer = StampBuffer(tolerance=0.05)
    assert buffer.wait_nearest(1.0, 5.0) is None  # a stream that never sent: no wait
    buffer.add(0.9, 'before')
    late = threading.Timer(0.05, buffer.add, (1.0, 'same instant'))
    late.start()
    assert buffer.wait_nearest(1.0, 30.0) == 'same instant'
    late.join()
    # Past the timeout the nearest within tolerance is taken, here none.
    assert buffer.wait_nearest(2.0, 0.01) is None
    assert buffer.wait_nearest(1.02, 0.0) == 'same instant'
    # One within tolerance is there (a driver stamping depth a little before colour): taken
    # without waiting for a later one, which would never be nearer than the tolerance allows.
    got = []
    waiter = threading.Thread(target=lambda: got.append(buffer.wait_nearest(1.03, 600.0)),
                              daemon=True)
    waiter.start()
    waiter.join(60.0)  # it returns at once; waiting out its 600 s would leave it alive
    assert not waiter.is_alive() and got == ['same instant']
