"""base_from_camera from tf2: the transform at the frame's stamp, else a recent latest one."""
from builtin_interfaces.msg import Time as TimeMsg
from geometry_msgs.msg import TransformStamped
import pytest
import rclpy.time

from clip_ros.nodes.transforms import lookup_extrinsic


class MovingCamera:
    """
    A tf2 buffer's lookup_transform for a camera moving along x at 0.5 m/s up to t=2 s.

    Stamped as tf2 stamps its answers: the time asked, or the latest transform's for Time().
    """

    latest = 2.0

    def __init__(self):
        self.asked = []

    def lookup_transform(self, target, source, time):
        seconds = time.nanoseconds * 1e-9 or self.latest  # Time() asks for the latest
        self.asked.append(seconds)
        if seconds > self.latest:
            raise RuntimeError('Lookup would require extrapolation into the future')
        t = TransformStamped()
        t.header.stamp = rclpy.time.Time(seconds=seconds).to_msg()
        t.transform.translation.x = 0.5 * seconds
        t.transform.rotation.w = 1.0
        return t


def test_the_transform_at_the_frames_stamp_is_used():
    buffer = MovingCamera()
    extrinsic = lookup_extrinsic(buffer, 'base_link', 'camera', TimeMsg(sec=1))
    assert extrinsic.translation[0] == pytest.approx(0.5)  # where it was at 1 s, not 2 s
    assert buffer.asked == [1.0]


def test_without_a_transform_at_the_stamp_yet_the_latest_is_used():
    buffer = MovingCamera()
    frame = TimeMsg(sec=2, nanosec=200_000_000)  # 0.2 s after the latest transform
    extrinsic = lookup_extrinsic(buffer, 'base_link', 'camera', frame)
    assert extrinsic.translation[0] == pytest.approx(1.0) and buffer.asked == [2.2, 2.0]
    # No stamp (or a zero one): the latest at once.
    assert lookup_extrinsic(buffer, 'base_link', 'camera').translation[0] == pytest.approx(1.0)
    assert lookup_extrinsic(buffer, 'base_link', 'camera', TimeMsg()).translation[0] == \
        pytest.approx(1.0)


def test_an_unknown_transform_names_both_frames():
    class Empty:

        def lookup_transform(self, target, source, time):
            raise LookupError('"base_link" passed to lookupTransform does not exist')

    with pytest.raises(ValueError, match='no transform base_link <- camera'):
        lookup_extrinsic(Empty(), 'base_link', 'camera', TimeMsg(sec=1))
    assert rclpy.time.Time().nanoseconds == 0


def test_a_stalled_transform_is_not_taken_for_the_frames():
    # tf stopped at 2 s while the camera kept moving: where it was then is not where it is.
    with pytest.raises(ValueError, match=r'latest transform is 1\.00 s older than the frame'):
        lookup_extrinsic(MovingCamera(), 'base_link', 'camera', TimeMsg(sec=3))

    # A frame older than the buffer's history: the latest is far newer than the frame.
    class Forgotten(MovingCamera):

        def lookup_transform(self, target, source, time):
            if time.nanoseconds and time.nanoseconds * 1e-9 < 1.0:
                raise RuntimeError('Lookup would require extrapolation into the past')
            return super().lookup_transform(target, source, time)

    with pytest.raises(ValueError, match=r'1\.50 s newer than the frame'):
        lookup_extrinsic(Forgotten(), 'base_link', 'camera', TimeMsg(nanosec=500_000_000))
