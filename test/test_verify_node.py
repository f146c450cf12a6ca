"""
vla_policy_node over DDS against the MuJoCo simulator: its final status agrees with the sim.

The test is the robot and the camera: it renders the simulator, publishes the target's and
destination's ground-truth instance masks as grounding_node's detections and mask, with depth,
camera_info, the camera pose and the end-effector state, and executes the node's goals and
gripper commands in the simulator. A place that lands where the policy aimed must end
`succeeded`; one that the simulator shifts beside the destination at the release (the load
slips sideways) must end `failed`, saying where the load lies; a command naming an object that
is not in the scene is rejected "not found" without motion.
"""
import json
import os
import time

os.environ['ROS_DOMAIN_ID'] = '87'  # before rclpy: own domain, no cross-talk with other tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from geometry_msgs.msg import PoseStamped  # noqa: E402, I100
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Float64, Header, String  # noqa: E402
from vision_msgs.msg import (  # noqa: E402
    Detection2D, Detection2DArray, ObjectHypothesisWithPose)

from clip_ros.nodes.conversions import numpy_to_image  # noqa: E402
from clip_ros.nodes.sim_messages import camera_info_msg  # noqa: E402
from clip_ros.nodes.vla_policy_node import VlaPolicyNode  # noqa: E402
from clip_ros.policy.lifting import matrix_to_quat  # noqa: E402
from clip_ros.sim.episodes import sample_task  # noqa: E402
from clip_ros.sim.scene import GRIPPER_HOME  # noqa: E402
from node_harness import Harness, LATCHED, wait_for  # noqa: E402, I100, I201

DOMAIN = 87
W, H = 320, 240
FINAL = ('succeeded', 'failed', 'aborted', 'rejected')


def pose(position, header: Header, quat=(0.0, 0.0, 0.0, 1.0)) -> PoseStamped:
    """Return a PoseStamped at `position` with orientation `quat` (x, y, z, w)."""
    msg = PoseStamped(header=header)
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in position)
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in quat)
    return msg


def truth_detections(frame, names: list, phrases: list, header: Header) -> tuple:
    """Return (Detection2DArray, mono16 mask): each phrase's visible object, as the node gets."""
    labels, detections = np.zeros((H, W), np.uint16), []
    for phrase in phrases:
        if phrase not in names or not (frame.instances == names.index(phrase) + 1).any():
            continue
        labels[frame.instances == names.index(phrase) + 1] = len(detections) + 1
        detection = Detection2D(header=header, id=str(len(detections)))
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = phrase, 0.9
        detection.results.append(hypothesis)
        detections.append(detection)
    return (Detection2DArray(header=header, detections=detections),
            numpy_to_image(labels, 'mono16', header))


class SimRobot:
    """The simulator behind the node's topics, stepped from the test's thread."""

    def __init__(self, harness: Harness, sim):
        self.harness, self.sim = harness, sim
        self.pubs = {name: harness.publisher(kind, name) for kind, name in (
            (String, 'command'), (Detection2DArray, 'detections'), (Image, 'mask'),
            (Image, 'depth'), (CameraInfo, 'camera_info'), (PoseStamped, 'ee_state'),
            (Float64, 'gripper_state'))}
        self.camera_pose = harness.publisher(PoseStamped, 'camera_pose', LATCHED)
        self.status = harness.subscribe(String, 'policy_status')
        self.goals = harness.subscribe(PoseStamped, 'ee_goal')
        self.gripper = harness.subscribe(Float64, 'gripper_command')

    def run(self, seed: int, text: str, phrases: list, slip=None, timeout: float = 60.0):
        """
        Reset to `seed`, send `text` and play the robot until the node ends the command.

        `slip`: an xy offset by which the load moves while the gripper opens. Returns (final
        status dict, goals the node sent).
        """
        sim, stamp = self.sim, [0]
        sim.reset(seed)
        sim.move_to(GRIPPER_HOME, instant=True)
        rot, origin = sim.camera_pose()
        self.camera_pose.publish(pose(origin, Header(frame_id='world'), matrix_to_quat(rot)))
        goals, grips, statuses = (len(x.messages) for x in (self.goals, self.gripper,
                                                            self.status))
        closed, sent, status = False, False, None
        deadline = time.monotonic() + timeout
        while status is None and time.monotonic() < deadline:
            new_goals = self.goals.messages[goals:]
            if new_goals:
                p = new_goals[-1].pose.position
                sim.move_to((p.x, p.y, p.z))
            new_grips = self.gripper.messages[grips:]
            if new_grips and (new_grips[-1].data >= 0.5) != closed:
                closed = new_grips[-1].data >= 0.5
                if not closed and slip is not None and sim.holding is not None:
                    sim.move_to(sim.gripper_position + (*slip, 0.0), instant=True)
                (sim.close if closed else sim.open)()
            sim.step(1 / 15)
            self._publish(stamp, phrases)
            if not sent and self.pubs['command'].get_subscription_count() > 0:
                self.pubs['command'].publish(String(data=text))
                sent = True
            status = next((s for s in (json.loads(m.data) for m in
                                       self.status.messages[statuses:])
                           if s['command'] == text and s['state'] in FINAL), None)
            time.sleep(1 / 15)
        return status, self.goals.messages[goals:]

    def _publish(self, stamp: list, phrases: list) -> None:
        stamp[0] += 1
        header = Header(frame_id='camera_optical_frame')
        header.stamp.sec, header.stamp.nanosec = 2000 + stamp[0] // 15, (stamp[0] % 15) * 60000000
        frame = self.sim.render(depth=True, instances=True)
        detections, mask = truth_detections(frame, self.sim.object_names, phrases, header)
        self.pubs['ee_state'].publish(pose(self.sim.gripper_position,
                                           Header(stamp=header.stamp, frame_id='world')))
        self.pubs['detections'].publish(detections)
        self.pubs['mask'].publish(mask)
        self.pubs['depth'].publish(numpy_to_image(frame.depth, '32FC1', header))
        self.pubs['camera_info'].publish(camera_info_msg(frame.K, W, H, header))


@pytest.fixture(scope='module')
def robot(gl_context):
    from clip_ros.sim.simulator import Simulator

    harness = Harness(DOMAIN)
    sim = Simulator(0, W, H)
    harness.add(VlaPolicyNode(context=harness.context, parameter_overrides=[
        Parameter('rate', value=15.0), Parameter('acquire_timeout', value=2.0)]))
    rig = SimRobot(harness, sim)
    assert wait_for(lambda: rig.pubs['command'].get_subscription_count() > 0)
    yield rig
    harness.shutdown()
    sim.close_renderer()


PLACE = sample_task(13, 'place')


def test_place_succeeds_when_the_simulator_agrees(robot):
    task = PLACE
    status, goals = robot.run(task.seed, task.command, [task.target, task.destination])
    assert status is not None and status['state'] == 'succeeded', status
    assert f'{task.target} on {task.destination}' in status['detail']
    assert robot.sim.resting_on(task.target) == [task.destination]


def test_load_that_slips_beside_the_destination_is_reported_failed(robot):
    task = PLACE
    status, goals = robot.run(task.seed, task.command, [task.target, task.destination],
                              slip=(0.12, 0.0))
    assert robot.sim.holding is None and robot.sim.resting_on(task.target) != [task.destination]
    assert status is not None and status['state'] == 'failed', status
    assert status['phase'] == 'verify' and f'beside {task.destination}' in status['detail']


def test_pick_status_agrees_with_the_lift(robot):
    task = sample_task(11, 'pick')
    status, _ = robot.run(task.seed, task.command, [task.target])
    assert status is not None and status['state'] == 'succeeded', status
    assert robot.sim.holding == task.target and robot.sim.lift_height(task.target) >= 0.05


def test_absent_object_is_rejected_without_motion(robot):
    task = sample_task(11, 'pick')
    robot.sim.reset(task.seed)
    absent = next(f'{c} ball' for c in ('purple', 'orange', 'white', 'red', 'green')
                  if f'{c} ball' not in robot.sim.object_names)
    status, goals = robot.run(task.seed, f'pick up the {absent}', [absent])
    assert status is not None and status['state'] == 'rejected', status
    assert status['detail'].startswith(f'not found: {absent}') and not goals
    assert np.allclose(robot.sim.gripper_position, GRIPPER_HOME)
