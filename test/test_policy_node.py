"""vla_policy_node over DDS: bad inputs and unknown verbs never move; a lost target aborts."""
import json
import os

os.environ['ROS_DOMAIN_ID'] = '66'  # before rclpy: own domain, no cross-talk with other tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip('vision_msgs')
pytest.importorskip('visualization_msgs')

from geometry_msgs.msg import PoseStamped  # noqa: E402, I100
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Float64, String  # noqa: E402
from vision_msgs.msg import Detection2D, Detection2DArray, Detection3DArray  # noqa: E402
from vision_msgs.msg import ObjectHypothesisWithPose  # noqa: E402

from clip_ros.core.lifting import matrix_to_quat  # noqa: E402
from clip_ros.nodes.conversions import numpy_to_image  # noqa: E402
from clip_ros.nodes.policy_node import VlaPolicyNode  # noqa: E402
from clip_ros.nodes.sim_messages import camera_info_msg  # noqa: E402
from node_harness import Harness, wait_for  # noqa: E402, I100, I201

DOMAIN = 66
W, H = 80, 60
K = np.array([[80.0, 0.0, 39.5], [0.0, 80.0, 29.5], [0.0, 0.0, 1.0]])
# Camera 0.7 m above the base origin looking straight down.
EXTRINSIC = [0.0, 0.0, 0.7] + matrix_to_quat(np.diag([1.0, -1.0, -1.0]))


@pytest.fixture(scope='module')
def ros():
    harness = Harness(DOMAIN)
    harness.node = harness.add(VlaPolicyNode(context=harness.context, parameter_overrides=[
        Parameter('rate', value=20.0), Parameter('extrinsic', value=EXTRINSIC),
        Parameter('lost_timeout', value=0.5), Parameter('acquire_timeout', value=1.0)]))
    harness.status = harness.subscribe(String, 'policy_status')
    harness.goals = harness.subscribe(PoseStamped, 'ee_goal')
    harness.targets = harness.subscribe(Detection3DArray, 'targets_3d')
    harness.pubs = {name: harness.publisher(kind, name) for kind, name in (
        (String, 'command'), (Detection2DArray, 'detections'), (Image, 'mask'),
        (Image, 'depth'), (CameraInfo, 'camera_info'), (PoseStamped, 'ee_state'),
        (Float64, 'gripper_state'))}
    assert wait_for(lambda: harness.pubs['command'].get_subscription_count() > 0)
    yield harness
    harness.shutdown()


def send_frame(ros, depth_fill=0.6, info=True, depth_size=(W, H)):
    """Publish one matched set: a 'blue block' detection, its mask, depth and camera_info."""
    header = ros.header('camera_optical_frame')
    labels = np.zeros((H, W), np.uint16)
    labels[25:35, 35:45] = 1
    det = Detection2D(header=header, id='0')
    hyp = ObjectHypothesisWithPose()
    hyp.hypothesis.class_id, hyp.hypothesis.score = 'blue block', 0.9
    det.results.append(hyp)
    depth = np.full((depth_size[1], depth_size[0]), depth_fill, np.float32)
    ee = PoseStamped(header=header)
    ee.header.frame_id = 'world'
    ee.pose.position.x, ee.pose.position.y, ee.pose.position.z = 0.0, 0.12, 0.45
    ros.pubs['ee_state'].publish(ee)
    ros.pubs['detections'].publish(Detection2DArray(header=header, detections=[det]))
    ros.pubs['mask'].publish(numpy_to_image(labels, 'mono16', header))
    ros.pubs['depth'].publish(numpy_to_image(depth, '32FC1', header))
    if info:
        ros.pubs['camera_info'].publish(camera_info_msg(K, W, H, header))


def run_command(ros, text, frames=30, final=('aborted', 'rejected', 'succeeded'), settle=5.0,
                **frame):
    """Send `text`, then frames at about 20 Hz; return (final status dict, goals sent)."""
    goals = len(ros.goals.messages)
    count = len(ros.status.messages)
    ros.pubs['command'].publish(String(data=text))

    def finished():
        for msg in ros.status.messages[count:]:
            status = json.loads(msg.data)
            if status['command'] == text and status['state'] in final:
                return status
        return None
    for _ in range(frames):
        if finished():
            break
        send_frame(ros, **frame)
        wait_for(finished, timeout=0.05)
    return wait_for(finished, timeout=settle), len(ros.goals.messages) - goals


def test_unknown_verb_is_rejected_without_motion(ros):
    status, goals = run_command(ros, 'juggle the blue block', frames=5)
    assert status['state'] == 'rejected' and 'no motion' in status['detail']
    assert goals == 0


@pytest.mark.parametrize('frame, reason', [
    ({'depth_fill': np.nan}, 'all NaN'), ({'depth_fill': 0.0}, 'all zero'),
    ({'depth_size': (40, 30)}, 'differs'), ({'info': False}, 'camera_info')])
def test_bad_depth_or_no_camera_info_never_moves(ros, frame, reason):
    status, goals = run_command(ros, 'pick up the blue block', **frame)
    assert status is not None and status['state'] == 'aborted', status
    assert reason in status['detail'], status
    assert goals == 0


def test_valid_target_moves_then_lost_target_aborts(ros):
    seen = len(ros.status.messages)
    status, goals = run_command(ros, 'pick up the blue block', frames=8, final=('never',),
                                settle=0.0)
    assert goals > 0, 'valid inputs should move the arm'
    lifted = wait_for(lambda: ros.targets.messages)
    position = lifted[-1].detections[0].results[0].pose.pose.position
    assert (position.x, position.y, position.z) == pytest.approx((0.0, 0.0, 0.1), abs=0.01)

    def aborted():
        return next((json.loads(m.data) for m in ros.status.messages[seen:]
                     if json.loads(m.data)['state'] == 'aborted'), None)
    status = wait_for(aborted, timeout=5.0)  # no more frames: the target is lost
    assert status and 'target lost' in status['detail'], status
