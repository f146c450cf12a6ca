"""sim_node over real DDS: camera topics with identical stamps, ground truth, reset."""
import os

os.environ['ROS_DOMAIN_ID'] = '64'  # before rclpy: own domain, no cross-talk with other tests

from geometry_msgs.msg import PoseStamped  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Float64, Int32  # noqa: E402
from vision_msgs.msg import Detection2DArray, Detection3DArray  # noqa: E402

from clip_ros.nodes.conversions import image_to_numpy  # noqa: E402
from clip_ros.nodes.sim_node import SimNode  # noqa: E402
from node_harness import Harness, interrupt, node_process, wait_for  # noqa: E402, I100, I201

DOMAIN = 64
SIZE = (160, 120)


@pytest.fixture(scope='module')
def ros(gl_context):
    harness = Harness(DOMAIN)
    harness.node = harness.add(SimNode(context=harness.context, parameter_overrides=[
        Parameter('seed', value=3), Parameter('rate', value=30.0),
        Parameter('width', value=SIZE[0]), Parameter('height', value=SIZE[1])]))
    harness.images = harness.subscribe(Image, 'camera/image_raw')
    harness.depths = harness.subscribe(Image, 'camera/depth/image_raw')
    harness.infos = harness.subscribe(CameraInfo, 'camera/camera_info')
    harness.truth = harness.subscribe(Detection3DArray, 'sim/ground_truth')
    harness.truth_2d = harness.subscribe(Detection2DArray, 'sim/ground_truth_2d')
    harness.reset_pub = harness.publisher(Int32, 'sim/reset')
    # The simulator starts in the node's render thread: it either publishes or says why not.
    started = wait_for(lambda: harness.node.error or harness.node.frames > 0)
    error = harness.node.error
    if not started or error:
        harness.shutdown()
        pytest.fail(error or 'the simulator published no frame', pytrace=False)
    yield harness
    harness.shutdown()


def matching_set(ros):
    """Return (image, depth, info, truth) sharing one stamp, or None."""
    for image in reversed(ros.images.messages):
        found = [inbox.find(lambda m: m.header.stamp == image.header.stamp)
                 for inbox in (ros.depths, ros.infos, ros.truth)]
        if all(found):
            return (image, *found)
    return None


def test_camera_topics_share_stamps_and_sizes(ros):
    found = wait_for(lambda: matching_set(ros))
    assert found, 'no image, depth, camera_info and ground truth with one stamp'
    image, depth, info, truth = found
    assert (image.encoding, depth.encoding) == ('rgb8', '32FC1')
    assert image_to_numpy(image).shape == (SIZE[1], SIZE[0], 3)
    metres = image_to_numpy(depth)
    assert metres.shape == (SIZE[1], SIZE[0]) and 0.2 < float(np.median(metres)) < 3.0
    assert (info.width, info.height) == SIZE
    assert info.k[2] == pytest.approx((SIZE[0] - 1) / 2) and info.p[0] == info.k[0]
    assert image.header.frame_id == info.header.frame_id == 'camera_optical_frame'
    names = [d.results[0].hypothesis.class_id for d in truth.detections]
    assert 3 <= len(names) <= 6 and all(len(name.split()) == 2 for name in names)
    assert all(d.results[0].pose.pose.position.z > 0.3 for d in truth.detections)


def test_reset_changes_scene(ros):
    first = wait_for(lambda: ros.truth_2d.messages)
    before = sorted(d.results[0].hypothesis.class_id for d in first[-1].detections)
    assert wait_for(lambda: ros.reset_pub.get_subscription_count() > 0)
    ros.reset_pub.publish(Int32(data=4))

    def after_reset():
        latest = ros.truth_2d.messages[-1]
        names = sorted(d.results[0].hypothesis.class_id for d in latest.detections)
        return names if names != before else None

    assert wait_for(after_reset), 'ground truth did not change after sim/reset'


def test_still_scene_is_not_rendered_again(ros):
    # A still scene republishes its last render with new stamps; a moved gripper renders anew.
    assert wait_for(lambda: ros.truth.messages)  # ground truth wanted: the key holds that
    node = ros.node
    renders, frames = node.renders, node.frames
    assert wait_for(lambda: node.frames >= frames + 10)
    assert node.renders <= renders + 1  # the truth subscription may have arrived meanwhile
    still = ros.images.messages[-5:]
    assert len({(m.header.stamp.sec, m.header.stamp.nanosec) for m in still}) == len(still)
    assert all(np.array_equal(image_to_numpy(m), image_to_numpy(still[0])) for m in still)
    latest = ros.truth.messages[-1]
    assert all(d.header.stamp == latest.header.stamp for d in latest.detections)

    goal = ros.publisher(PoseStamped, 'ee_goal')
    assert wait_for(lambda: goal.get_subscription_count() > 0)
    before = image_to_numpy(ros.images.messages[-1]).copy()
    renders = node.renders
    msg = PoseStamped()
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = 0.05, 0.05, 0.15
    goal.publish(msg)
    assert wait_for(lambda: node.renders >= renders + 3), 'a moving gripper was not rendered'
    assert wait_for(lambda: not np.array_equal(image_to_numpy(ros.images.messages[-1]), before))


def test_a_goal_that_is_not_finite_is_refused(ros):
    states = ros.subscribe(PoseStamped, 'ee_state')
    goal = ros.publisher(PoseStamped, 'ee_goal')
    assert wait_for(lambda: goal.get_subscription_count() > 0)
    msg = PoseStamped()
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = float('nan'), 0.05, 0.15
    goal.publish(msg)
    assert wait_for(lambda: ros.node.rejected_goals == 1)
    count = len(states.messages)
    assert wait_for(lambda: len(states.messages) >= count + 3)
    position = states.messages[-1].pose.position
    assert np.isfinite([position.x, position.y, position.z]).all()


def test_a_goal_out_of_reach_stops_at_the_arms_limits(ros):
    states = ros.subscribe(PoseStamped, 'ee_state')
    goal = ros.publisher(PoseStamped, 'ee_goal')
    assert wait_for(lambda: goal.get_subscription_count() > 0)
    msg = PoseStamped()
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = 0.05, 1e200, -0.5
    goal.publish(msg)  # beyond the scene and through the table
    assert wait_for(lambda: ros.node.clamped_goals == 1)

    def there():
        p = states.messages[-1].pose.position if states.messages else None
        return p is not None and np.allclose([p.x, p.y, p.z], [0.05, 0.6, 0.0], atol=1e-6)
    assert wait_for(there, 20), states.messages[-1].pose.position


def test_a_gripper_command_that_is_not_finite_is_refused(ros):
    states = ros.subscribe(Float64, 'gripper_state')
    grip = ros.publisher(Float64, 'gripper_command')
    assert wait_for(lambda: grip.get_subscription_count() > 0)

    def reported(value):
        return wait_for(lambda: states.messages and states.messages[-1].data == value)
    grip.publish(Float64(data=1.0))
    assert reported(1.0)
    grip.publish(Float64(data=float('nan')))  # compares as 'open': it would drop the load
    assert wait_for(lambda: ros.node.rejected_gripper == 1)
    count = len(states.messages)
    assert wait_for(lambda: len(states.messages) >= count + 3)
    assert states.messages[-1].data == 1.0, 'the gripper stays closed'
    grip.publish(Float64(data=0.0))  # the next command is followed
    assert reported(0.0)


@pytest.mark.parametrize('repeat', [None, 0.1], ids=['sigint', 'sigint_twice'])
def test_node_as_process_exits_cleanly_on_sigint(ros, repeat):
    # Ctrl-C under launch reaches the node twice: from the terminal's process group and
    # forwarded by launch. A render thread cut off mid-frame crashed the process (SIGSEGV).
    args = ['-r', '__ns:=/proc', '-p', f'width:={SIZE[0]}', '-p', f'height:={SIZE[1]}',
            '-p', 'rate:=30.0']
    with node_process('clip_ros.nodes.sim_node', DOMAIN, args) as proc:
        images = ros.subscribe(Image, '/proc/camera/image_raw')
        assert wait_for(lambda: images.messages, timeout=60.0), 'no image from the process'
        interrupt(proc, repeat)
