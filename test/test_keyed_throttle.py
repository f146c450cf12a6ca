"""KeyedThrottle: one clock per distinct reason, and warning and error throttles share a logger."""
import os
import time

os.environ['ROS_DOMAIN_ID'] = '68'

import pytest  # noqa: E402
import rclpy  # noqa: E402

from clip_ros.nodes.frame_worker import KeyedThrottle  # noqa: E402


@pytest.fixture
def logger():
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node('throttle_test', context=context)
    yield node.get_logger()
    node.destroy_node()
    rclpy.shutdown(context=context)


def test_warning_then_error_on_one_logger(logger):
    # rclpy raises when one call site logs at two severities; each level needs its own line.
    warn = KeyedThrottle(logger, 'warning', period=60.0)
    error = KeyedThrottle(logger, 'error', period=60.0)
    assert warn('bad_image', 'rejected image')
    assert error('not_ready', 'model not loaded')
    assert warn('other', 'another reason')


def test_one_clock_per_key(logger):
    warn = KeyedThrottle(logger, 'warning', period=60.0)
    assert warn('a', 'first')
    assert not warn('a', 'first')
    assert warn('b', 'first')


class Lines:
    """A logger that keeps what it is given (to read the text KeyedThrottle emits)."""

    def __init__(self):
        self.lines = []

    def warning(self, message):
        self.lines.append(message)


def test_each_distinct_reason_of_one_key_logs():
    warn = KeyedThrottle(Lines(), 'warning', period=60.0)
    assert warn('bad_image', 'rejected image: data has 40 bytes; expected 48')
    assert warn('bad_image', "rejected image: unsupported encoding 'yuv422'")
    assert warn('bad_image', "rejected image: unsupported encoding ''")
    assert not warn('bad_image', "rejected image: unsupported encoding 'yuv422'")
    assert warn('vague_command', "command '?!.,' names nothing to ground")
    assert warn('vague_command', "command 'pick up' names nothing to ground")
    assert not warn('vague_command', "command 'pick up' names nothing to ground")
    assert warn.suppressed == 2


def test_repeats_are_counted_on_the_next_line():
    lines = Lines()
    warn = KeyedThrottle(lines, 'warning', period=0.2)
    assert warn('k', 'same')
    assert not warn('k', 'same') and not warn('k', 'same')
    time.sleep(0.25)
    assert warn('k', 'same')
    assert lines.lines == ['same', 'same (2 repeats suppressed)']


def test_explicit_reason_groups_messages():
    warn = KeyedThrottle(Lines(), 'warning', period=60.0)
    assert warn('k', 'frame 1 late', reason='late frame')
    assert not warn('k', 'frame 2 late', reason='late frame')


def test_huge_payload_makes_a_bounded_key_and_line():
    lines = Lines()
    warn = KeyedThrottle(lines, 'warning', period=60.0)
    payload = 'x' * 1_000_000
    assert warn('k', payload + 'a')
    assert not warn('k', payload + 'b'), 'reasons equal in their first 200 characters are one'
    assert all(len(slot[1]) <= KeyedThrottle.MAX_REASON_CHARS for slot in warn._last)
    assert len(lines.lines[0]) < KeyedThrottle.MAX_MESSAGE_CHARS + 100
    assert '1000001 characters' in lines.lines[0]


def test_a_flood_of_distinct_reasons_is_capped_and_counted():
    lines = Lines()
    warn = KeyedThrottle(lines, 'warning', period=0.3, max_reasons=10)
    logged = sum(warn('cmd', f'command {i} names nothing') for i in range(5000))
    assert logged == 10 and warn.suppressed == 4990
    assert len(warn._last) == 10, 'suppressed reasons keep no clock'
    time.sleep(0.35)
    assert warn('cmd', 'command 0 names nothing')
    assert lines.lines[-1] == 'command 0 names nothing (4990 more with other reasons suppressed)'


def test_expired_reason_clocks_are_forgotten():
    warn = KeyedThrottle(Lines(), 'warning', period=0.001, max_reasons=100000)
    for i in range(3 * KeyedThrottle.MAX_SLOTS):
        warn('k', f'reason {i}')
        time.sleep(0.00001)
    assert len(warn._last) <= KeyedThrottle.MAX_SLOTS + 1


def test_unknown_level_is_refused(logger):
    with pytest.raises(ValueError, match='level'):
        KeyedThrottle(logger, 'loud')
