"""Run nodes under test and a probe node in a private rclpy context, spun in a thread."""
from contextlib import contextmanager
import os
from pathlib import Path
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.exceptions import InvalidHandle
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header
import yaml

from clip_ros.nodes.conversions import numpy_to_image

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
TIMEOUT = 20.0


def wait_for(predicate, timeout: float = TIMEOUT, period: float = 0.02):
    """Poll `predicate` until it returns something truthy or `timeout` passes; return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(period)


class Inbox:
    """Thread-safe list of received messages."""

    def __init__(self):
        self._lock = threading.Lock()
        self._messages = []

    def __call__(self, msg) -> None:
        with self._lock:
            self._messages.append(msg)

    @property
    def messages(self) -> list:
        with self._lock:
            return list(self._messages)

    def find(self, match):
        """Return the newest message for which `match(msg)` holds, or None."""
        for msg in reversed(self.messages):
            if match(msg):
                return msg
        return None


class Harness:
    """A private context with one executor thread spinning in the background, as spin_node does."""

    def __init__(self, domain_id: int):
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.probe = rclpy.create_node('probe', context=self.context)
        self.executor.add_node(self.probe)
        self._nodes = [self.probe]
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()
        self._stamp = 0

    def _spin(self) -> None:
        while True:
            try:
                return self.executor.spin()
            except InvalidHandle as e:
                # remove() destroys a node while this thread may be putting its entities in a
                # wait set; rclpy then raises InvalidHandle for that node only: spin on. Raised
                # from our own code (a callback using a destroyed entity) it is an error.
                if any(f'{os.sep}clip_ros{os.sep}' in frame.filename
                       for frame in traceback.extract_tb(e.__traceback__)):
                    raise

    def add(self, node):
        """Spin `node` too and destroy it at shutdown."""
        self._nodes.append(node)
        self.executor.add_node(node)
        return node

    def remove(self, node) -> None:
        """Stop spinning `node` and destroy it now."""
        self._nodes.remove(node)
        self.executor.remove_node(node)
        # Destroyed on the executor's own thread, between callbacks: from this thread it
        # could vanish under a callback of its already running there (a diagnostics timer).
        done = self.executor.create_task(node.destroy_node)
        deadline = time.monotonic() + 10.0
        while not done.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        if done.done():
            done.result()  # destroy_node's own error, if any
        else:  # the executor is not spinning (shut down): nothing runs there
            node.destroy_node()

    def added_since(self, count: int) -> list:
        """Return the nodes added after the first `count` (the probe is the first)."""
        return self._nodes[count:]

    def subscribe(self, msg_type, topic: str, qos=RELIABLE) -> Inbox:
        """Collect the messages of `topic` in an Inbox."""
        inbox = Inbox()
        inbox.subscription = self.probe.create_subscription(msg_type, topic, inbox, qos)
        return inbox

    def publisher(self, msg_type, topic: str, qos=RELIABLE):
        """Return a probe publisher; a reliable one matches best-effort subscriptions too."""
        return self.probe.create_publisher(msg_type, topic, qos)

    def header(self, frame_id: str = 'camera') -> Header:
        """Return a header with a stamp no other frame of this harness has."""
        self._stamp += 1
        header = Header(frame_id=frame_id)
        header.stamp.sec, header.stamp.nanosec = 1000 + self._stamp, 123
        return header

    def shutdown(self) -> None:
        """Stop spinning, destroy every node and shut the context down."""
        self.executor.shutdown(timeout_sec=5.0)
        for node in reversed(self._nodes):
            node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(5.0)


def sim_graph(domain: int, scene: dict, policy: dict = None, subscriptions: dict = None):
    """
    Start demo_graph's simulator, grounding and policy nodes (bundled model, CPU) in a Harness.

    `scene` holds sim_node's seed, width, height and rate, `policy` vla_policy_node overrides;
    `subscriptions` maps attribute names to (type, topic[, qos]) inboxes created before the
    graph is awaited. The harness gets `ee` (ee_state) and `command` (a publisher both nodes
    that read commands have matched) and is ready once the simulator publishes.
    """
    from geometry_msgs.msg import PoseStamped
    from std_msgs.msg import String

    from clip_ros.nodes.common import COMMAND_QOS
    from clip_ros.tools.demo_graph import build_graph

    harness = Harness(domain)
    for node in build_graph(harness.context, scene, 'tabletop', 'cpu', policy or {}):
        harness.add(node)
    for name, (msg_type, topic, *qos) in (subscriptions or {}).items():
        setattr(harness, name, harness.subscribe(msg_type, topic, *qos))
    harness.ee = harness.subscribe(PoseStamped, 'ee_state')
    harness.command = harness.publisher(String, 'command', COMMAND_QOS)
    assert wait_for(lambda: harness.command.get_subscription_count() >= 2, 60)
    assert wait_for(lambda: harness.ee.messages, 60), 'the simulator publishes no ee_state'
    return harness


def rgb_image(header: Header, width: int = 640, height: int = 480, seed: int = 0) -> Image:
    """Return a random rgb8 Image with `header`."""
    rng = np.random.default_rng(seed)
    return numpy_to_image(rng.integers(0, 256, (height, width, 3), np.uint8), 'rgb8', header)


def request(publisher, msg, inbox: Inbox, timeout: float = TIMEOUT, resend: float = 3.0):
    """
    Publish `msg` until `inbox` holds a message with the same header; return that message.

    Best-effort image subscriptions may miss a frame while discovery settles, hence the resend;
    the node keeps only the newest frame, so a resend never builds a queue.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        publisher.publish(msg)
        found = wait_for(lambda: inbox.find(lambda m: m.header == msg.header),
                         min(resend, max(deadline - time.monotonic(), 0.0)))
        if found:
            return found
    return None


@contextmanager
def node_process(module: str, domain: int, ros_args: list):
    """Run `python -m <module> --ros-args <ros_args>` in `domain`; kill it if still running."""
    # Fatal signals dump every thread's Python stack: interrupt() aborts a hung process so.
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONFAULTHANDLER='1')
    proc = subprocess.Popen([sys.executable, '-m', module, '--ros-args', *ros_args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def interrupt(proc, repeat: float = None, timeout: float = 20.0) -> str:
    """
    Send SIGINT (again after `repeat` s); return the output of a clean, traceback-free exit.

    A process still running `timeout` s after the last SIGINT is aborted and fails the test
    with its output, which shows each thread's Python stack.
    """
    proc.send_signal(signal.SIGINT)
    if repeat is not None:
        time.sleep(repeat)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # the fault handler prints where each thread hangs
        try:
            output, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        raise AssertionError(f'still running {timeout:g} s after SIGINT:\n{output}') from None
    assert proc.returncode == 0, output
    assert 'Traceback' not in output, output
    return output


ROOT = Path(__file__).resolve().parents[1]


def shipped_params(node: str, **overrides) -> str:
    """Write config/<node>.yaml with `overrides` applied to a temp file; return its path."""
    params = yaml.safe_load((ROOT / 'config' / f'{node}.yaml').read_text())
    params[f'/**/{node}']['ros__parameters'].update(overrides)
    with tempfile.NamedTemporaryFile('w', suffix='.yaml', delete=False) as f:
        yaml.safe_dump(params, f)
    return f.name


def launch_test_description(stem: str, domain: int, arguments: dict, *extra):
    """
    Include launch/<stem>.launch.py with `arguments`, plus `extra` actions, in `domain`.

    Returns the LaunchDescription for a launch_testing generate_test_description.
    """
    from launch import LaunchDescription
    from launch.actions import IncludeLaunchDescription, SetEnvironmentVariable
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    import launch_testing.actions

    source = PythonLaunchDescriptionSource(str(ROOT / 'launch' / f'{stem}.launch.py'))
    include = IncludeLaunchDescription(source, launch_arguments=arguments.items())
    # Pytest may import other test modules that set ROS_DOMAIN_ID: pin the nodes' domain.
    return LaunchDescription([SetEnvironmentVariable('ROS_DOMAIN_ID', str(domain)), include,
                              *extra, launch_testing.actions.ReadyToTest()])


class LaunchHarness:
    """unittest mixin: a Harness in the class's DOMAIN for the tests of a launched graph."""

    DOMAIN = 0

    @classmethod
    def setUpClass(cls):
        cls.ros = Harness(cls.DOMAIN)

    @classmethod
    def tearDownClass(cls):
        cls.ros.shutdown()


def blue_block(header: Header, width: int, height: int) -> tuple:
    """
    Return (Detection2DArray, mono16 mask) of one 'blue block' as grounding_node publishes it.

    The block covers pixels 35..44 x 25..34 (mask value 1), score 0.9; the arm state that goes
    with the policy tests is at (0, 0.12, 0.45) in 'world'.
    """
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    labels = np.zeros((height, width), np.uint16)
    labels[25:35, 35:45] = 1
    detection = Detection2D(header=header, id='0')
    hypothesis = ObjectHypothesisWithPose()
    hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = 'blue block', 0.9
    detection.results.append(hypothesis)
    return (Detection2DArray(header=header, detections=[detection]),
            numpy_to_image(labels, 'mono16', header))


def arm_state(header: Header):
    """Return the policy tests' end-effector state: (0, 0.12, 0.45) in 'world' at the stamp."""
    from geometry_msgs.msg import PoseStamped

    ee = PoseStamped(header=Header(stamp=header.stamp, frame_id='world'))
    ee.pose.position.x, ee.pose.position.y, ee.pose.position.z = 0.0, 0.12, 0.45
    return ee
