"""Publish a MuJoCo tabletop camera (RGB, depth, camera_info) and simulation-only ground truth."""
import math
import queue
import threading
import time

from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from geometry_msgs.msg import PoseStamped  # noqa: I100 - ROS messages after rclpy
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float64, Header, Int32
from vision_msgs.msg import Detection2DArray, Detection3DArray

from clip_ros.nodes.common import (
    COMMAND_QOS, declare_all, describe, LATCHED_QOS, parameter_values, RESULTS_QOS,
    spin_node, watch_parameters)
from clip_ros.nodes.conversions import numpy_to_image
from clip_ros.nodes.sim_messages import (
    camera_info_msg, finger_joint_state_msg, finger_opening, ground_truth_2d_msg,
    ground_truth_3d_msg)
from clip_ros.policy.lifting import matrix_to_quat

# Reliable publishers match both reliable and best-effort (sensor_data) subscribers.
CAMERA_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
RCLError = _rclpy.RCLError
MAX_SEED = 2**31 - 1  # sim/reset carries an Int32; scene seeds are non-negative
# What the simulated arm reaches (world frame, m): the table top and above it, a little wider
# than the policy's default workspace. Goals outside are clamped, as an arm stops at its limits.
REACH_MIN, REACH_MAX = (-0.8, -0.6, 0.0), (0.8, 0.6, 1.0)


class SimNode(Node):
    """
    Render the simulator at `rate` Hz in its own thread (it owns the GL context).

    Other code drives the end effector through `call_in_sim(fn)`, which runs `fn(sim)` in that
    thread before the next frame.
    """

    def __init__(self, **kwargs):
        super().__init__('sim_node', **kwargs)
        declare_all(self, (
            ('seed', 0, describe(
                'scene seed; a set (or an Int32 on sim/reset, which sets it) loads that '
                'scene before the next frame', int_range=(0, MAX_SEED))),
            ('rate', 15.0, describe('frames per second', read_only=True,
                                    float_range=(0.1, 120.0))),
            ('width', 640, describe('image width (px)', read_only=True, int_range=(8, 4096))),
            ('height', 480, describe('image height (px)', read_only=True, int_range=(8, 4096))),
            ('object_count', 0, describe('objects per scene; 0 draws 3..6 per seed',
                                         read_only=True, int_range=(0, 12))),
            ('frame_id', 'camera_optical_frame', describe('camera optical frame id',
                                                          read_only=True)),
            ('show_gripper', True, describe('render the end effector', read_only=True)),
            ('base_frame', 'world', describe('frame of the end-effector state, goals and '
                                             'camera pose (table-top centre, z up)',
                                             read_only=True)),
        ))
        self._values = parameter_values(self)
        # Range and type are all there is to check; the other parameters are read-only.
        watch_parameters(self, lambda values: None, self._apply_parameters)
        self._image_pub = self.create_publisher(Image, 'camera/image_raw', CAMERA_QOS)
        self._depth_pub = self.create_publisher(Image, 'camera/depth/image_raw', CAMERA_QOS)
        self._info_pub = self.create_publisher(CameraInfo, 'camera/camera_info', CAMERA_QOS)
        self._truth_pub = self.create_publisher(Detection3DArray, 'sim/ground_truth', 10)
        self._truth_2d_pub = self.create_publisher(Detection2DArray, 'sim/ground_truth_2d', 10)
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self.error = ''
        self.frames = 0
        # Renders cost most of a core at 30 Hz; a still scene republishes its last frame with
        # a new stamp, as a camera in front of a still scene would send the same image.
        self.renders = 0
        self._rendered = None  # (Simulator.state_key(), with ground truth) of _messages
        self._messages = []
        self.create_subscription(Int32, 'sim/reset', self._on_reset, COMMAND_QOS)
        # End-effector interface: goals and gripper in, state and camera extrinsic out.
        self._ee_pub = self.create_publisher(PoseStamped, 'ee_state', RESULTS_QOS)
        self._gripper_pub = self.create_publisher(Float64, 'gripper_state', RESULTS_QOS)
        # The measured finger opening, as a gripper driver reports it: the grasp sensor.
        self._fingers_pub = self.create_publisher(JointState, 'gripper/joint_states',
                                                  RESULTS_QOS)
        self._camera_pose_pub = self.create_publisher(PoseStamped, 'sim/camera_pose',
                                                      LATCHED_QOS)
        self._gripper_closed = False
        self._fingers_closed = False  # the last gripper command the render thread ran
        self._camera_pose = None
        self.rejected_goals = 0  # ee_goal messages refused (not finite)
        self.rejected_gripper = 0  # gripper_command messages refused (not finite)
        self.clamped_goals = 0  # ee_goal messages outside the arm's reach, clamped to it
        self.create_subscription(PoseStamped, 'ee_goal', self._on_goal, RESULTS_QOS)
        self.create_subscription(Float64, 'gripper_command', self._on_gripper, RESULTS_QOS)
        # Not a daemon: interpreter exit waits for it to free the GL context, as MuJoCo's EGL
        # atexit hook terminates the display under a still-rendering thread (SIGSEGV).
        self._thread = threading.Thread(target=self._run, name='sim_node')
        self._thread.start()

    def call_in_sim(self, fn) -> None:
        """Run `fn(sim)` in the render thread before the next frame (the sim is not shareable)."""
        self._requests.put(fn)

    def _on_goal(self, msg: PoseStamped) -> None:
        goal = (msg.pose.position.x, msg.pose.position.y, msg.pose.position.z)
        if not all(math.isfinite(v) for v in goal):
            # One NaN goal would leave the gripper at NaN for good.
            self.rejected_goals += 1
            self.get_logger().warning(f'ee_goal {goal} refused: coordinates must be finite',
                                      throttle_duration_sec=5.0)
            return
        reached = tuple(min(max(v, low), high) for v, low, high in zip(goal, REACH_MIN, REACH_MAX))
        if reached != goal:
            # Through the table or out of the scene otherwise: the arm stops at its limits.
            self.clamped_goals += 1
            self.get_logger().warning(
                f"ee_goal {goal} is outside the arm's reach {REACH_MIN}..{REACH_MAX}: moving to "
                f'{reached}', throttle_duration_sec=5.0)
        self.call_in_sim(lambda sim: sim.move_to(reached))

    def _on_gripper(self, msg: Float64) -> None:
        if not math.isfinite(msg.data):
            # NaN compares as 'open': a closed gripper would drop what it holds.
            self.rejected_gripper += 1
            self.get_logger().warning(f'gripper_command {msg.data} refused: need a finite value, '
                                      f'0 open .. 1 closed', throttle_duration_sec=5.0)
            return
        closed = msg.data >= 0.5
        if closed != self._gripper_closed:
            self._gripper_closed = closed
            self.call_in_sim(lambda sim: self._grip(sim, closed))

    def _grip(self, sim, closed: bool) -> None:
        if closed:
            sim.close()
        else:
            sim.open()
        self._fingers_closed = closed

    def _on_reset(self, msg: Int32) -> None:
        # Through the parameter, so `seed` always names the scene on show.
        result = self.set_parameters([Parameter('seed', value=int(msg.data))])[0]
        if not result.successful:
            self.get_logger().warning(f'sim/reset {msg.data} refused: {result.reason}')

    def _apply_parameters(self, names: set) -> None:
        self._values = values = parameter_values(self)
        if 'seed' in names:
            seed = values['seed']
            self.get_logger().info(f'reset to seed {seed}')
            self.call_in_sim(lambda sim: sim.reset(seed))

    def _run(self) -> None:
        from clip_ros.sim.simulator import Simulator  # loads MuJoCo and OpenGL in this thread

        values = self._values
        try:
            sim = Simulator(values['seed'], values['width'], values['height'],
                            values['object_count'] or None, show_gripper=values['show_gripper'])
        except (RuntimeError, ValueError) as e:
            self.error = f'simulator not started: {e}'
            self.get_logger().error(self.error)
            return
        self.get_logger().info(f'scene {sim.seed}: {", ".join(sim.object_names)}')
        try:
            self._loop(sim, 1.0 / values['rate'])
        except RCLError:
            # SIGINT shuts the context down before destroy_node stops this loop.
            if self.context.ok():
                raise
        except Exception as e:  # noqa: B902 - the render thread must say why it stopped
            self._stopped_by(e)
        finally:
            sim.close_renderer()  # in this thread: it owns the GL context

    def _stopped_by(self, error) -> None:
        self.error = f'simulator stopped: {type(error).__name__}: {error}'
        self.get_logger().error(self.error)

    def _loop(self, sim, period: float) -> None:
        due = time.monotonic()
        # A signal shuts the context down without destroy_node (e.g. a second Ctrl-C aborts it).
        while self.context.ok() and not self._stop.wait(max(0.0, due - time.monotonic())):
            due = max(due + period, time.monotonic())  # a slow frame delays, never bursts
            while not self._requests.empty():
                self._requests.get()(sim)
            sim.step(period)
            self._publish(sim)

    def _publish(self, sim) -> None:
        truth = (self._truth_pub.get_subscription_count()
                 + self._truth_2d_pub.get_subscription_count()) > 0
        key = (sim.state_key(), truth)
        if key != self._rendered:  # a scene that has not moved is not rendered again
            self._messages = self._render(sim, truth)
            self._rendered = key
            self.renders += 1
        header = Header(frame_id=self._values['frame_id'], stamp=self.get_clock().now().to_msg())
        for publisher, msg in self._messages:
            msg.header = header
            for detection in getattr(msg, 'detections', ()):  # ground truth: each one too
                detection.header = header
            publisher.publish(msg)
        self._publish_robot(sim, header)
        self.frames += 1

    def _render(self, sim, truth: bool) -> list:
        """Render the camera view; return [(publisher, message)] (headers set on publish)."""
        frame = sim.render(depth=True, instances=truth)
        header = Header()
        messages = [(self._image_pub, numpy_to_image(frame.rgb, 'rgb8', header)),
                    (self._depth_pub, numpy_to_image(frame.depth, '32FC1', header)),
                    (self._info_pub, camera_info_msg(frame.K, sim.width, sim.height, header))]
        if truth:
            messages += [(self._truth_pub, ground_truth_3d_msg(frame.objects, header)),
                         (self._truth_2d_pub, ground_truth_2d_msg(frame.objects, header))]
        return messages

    def _publish_robot(self, sim, header: Header) -> None:
        base = Header(frame_id=self._values['base_frame'], stamp=header.stamp)
        ee = PoseStamped(header=base)
        ee.pose.position.x, ee.pose.position.y, ee.pose.position.z = (
            float(v) for v in sim.gripper_position)
        ee.pose.orientation.w = 1.0
        self._ee_pub.publish(ee)
        self._gripper_pub.publish(Float64(data=1.0 if sim.holding or self._gripper_closed
                                          else 0.0))
        self._fingers_pub.publish(finger_joint_state_msg(
            finger_opening(sim, self._fingers_closed), base))
        rot, origin = sim.camera_pose()
        pose = (tuple(origin.tolist()), tuple(matrix_to_quat(rot)))
        if pose != self._camera_pose:  # latched: sent at start and after each reset
            self._camera_pose = pose
            msg = PoseStamped(header=base)
            msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = pose[0]
            q = msg.pose.orientation
            q.x, q.y, q.z, q.w = pose[1]
            self._camera_pose_pub.publish(msg)

    def destroy_node(self):
        """Stop the render thread, then destroy the node."""
        self._stop.set()
        self._thread.join(5.0)
        return super().destroy_node()


def main(args=None):
    """Run the simulator node until shutdown."""
    spin_node(SimNode, args)


if __name__ == '__main__':
    main()
