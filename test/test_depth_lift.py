"""grounding_node's 3D output from a real camera's depth: rectified intrinsics, registration."""
import os

os.environ['ROS_DOMAIN_ID'] = '57'  # before rclpy: own domain, no cross-talk with other tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import rclpy  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import CameraInfo  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from clip_ros.nodes.conversions import numpy_to_image  # noqa: E402
from clip_ros.nodes.depth_lift import depth_parameters, DepthLift  # noqa: E402
from clip_ros.perception.geometry import Detection  # noqa: E402
from clip_ros.perception.grounding import GroundingResult  # noqa: E402

W, H, Z = 64, 48, 0.6
ROWS, COLS = slice(30, 40), slice(44, 56)  # the object's pixels, right of and below the centre
# The raw camera (K) and the rectified image's camera (P) differ, as after image_proc.
RAW = (52.0, 52.0, 33.0, 25.0)
RECTIFIED = (45.0, 45.0, 31.5, 23.5)


@pytest.fixture(scope='module')
def node():
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node('depth_lift_test', context=context)
    yield node
    node.destroy_node()
    rclpy.shutdown(context=context)


def camera_info(frame: str, width=W, height=H) -> CameraInfo:
    fx, fy, cx, cy = RAW
    px, py, pcx, pcy = RECTIFIED
    return CameraInfo(header=Header(frame_id=frame), width=width, height=height,
                      distortion_model='plumb_bob', d=[0.1, -0.05, 0.0, 0.0, 0.0],
                      k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
                      r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                      p=[px, 0.0, pcx, 0.0, 0.0, py, pcy, 0.0, 0.0, 0.0, 1.0, 0.0])


def lift(node, image_frame='camera_color_optical_frame', depth_frame=None, info=None):
    """Return DepthLift's (items, header) for one frame of a wall at Z metres."""
    depth_frame = image_frame if depth_frame is None else depth_frame
    values = {name: default for name, default, _ in depth_parameters()}
    lifter = DepthLift(node, values)
    lifter.depth.add(0.0, numpy_to_image(np.full((H, W), Z, np.float32), '32FC1',
                                         Header(frame_id=depth_frame)))
    lifter.info.add(0.0, info or camera_info(depth_frame))
    labels = np.zeros((H, W), np.uint16)
    labels[ROWS, COLS] = 1
    detection = Detection(0, 'blue block', 0.9, (44.0, 30.0, 56.0, 40.0), int(labels.sum()),
                          (49.5, 34.5), 0.8)
    result = GroundingResult(['blue block'], [detection], labels, None)
    return lifter._lift(Header(frame_id=image_frame), result, ['7'])


def test_rectified_depth_is_lifted_with_the_projection_matrix(node):
    items, header = lift(node)
    (ident, phrase, _, target), = items
    assert (ident, phrase, header.frame_id) == ('7', 'blue block', 'camera_color_optical_frame')
    fx, fy, cx, cy = RECTIFIED
    u, v = (COLS.start + COLS.stop - 1) / 2, (ROWS.start + ROWS.stop - 1) / 2
    assert target.position_camera == pytest.approx([(u - cx) * Z / fx, (v - cy) * Z / fy, Z])


def test_binned_and_cropped_depth_uses_intrinsics_of_its_own_pixels(node):
    # A 2x2-binned crop of a 256x192 sensor: camera_info keeps the full sensor's numbers.
    fx, fy, cx, cy = RECTIFIED
    info = camera_info('cam', 4 * W, 4 * H)
    info.binning_x = info.binning_y = 2
    info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = 10, 6, 2 * W, 2 * H
    info.p = [2 * fx, 0.0, 2 * cx + 10, 0.0, 0.0, 2 * fy, 2 * cy + 6, 0.0, 0.0, 0.0, 1.0, 0.0]
    (_, _, _, target), = lift(node, 'cam', info=info)[0]
    u, v = (COLS.start + COLS.stop - 1) / 2, (ROWS.start + ROWS.stop - 1) / 2
    assert target.position_camera == pytest.approx([(u - cx) * Z / fx, (v - cy) * Z / fy, Z])


def test_unregistered_depth_is_refused(node):
    # Same size, another camera: the mask's pixels are not the depth image's.
    with pytest.raises(ValueError, match='registered to the colour image'):
        lift(node, 'camera_color_optical_frame', 'camera_depth_optical_frame')
    # Registered depth with the depth camera's intrinsics.
    with pytest.raises(ValueError, match="camera_info frame 'camera_depth_optical_frame'"):
        lift(node, info=camera_info('camera_depth_optical_frame'))
    # A leading slash names the same frame.
    assert lift(node, '/camera_color_optical_frame', 'camera_color_optical_frame')[0]
