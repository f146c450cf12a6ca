"""KeyedThrottle: one clock per reason, and warning and error throttles can share a logger."""
import os

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
    assert not warn('a', 'again, suppressed')
    assert warn('b', 'a different reason still logs')


def test_unknown_level_is_refused(logger):
    with pytest.raises(ValueError, match='level'):
        KeyedThrottle(logger, 'loud')
