"""
Ctrl-C ends every node cleanly while it is busy: exit code 0, no traceback, within seconds.

rclpy's signal thread wakes the executors first and shuts the context down after; a spin caught
in between used to hang (a node without timers) or die with RCLError ('failed to initialize
wait set: the given context is not valid'). The process cases start copies of each node
together, keep them busy and interrupt them one after another while the others stay busy; the
spin cases replay the race exactly.

Not at once: when several processes leave the graph together, Fast DDS 3.2 (the middleware of
these wheels) now and then deadlocks in participant deletion. About one run in 40 with five
sim_node copies here: the main thread waits in rcl_node_fini →
DomainParticipant::set_listener for a discovery callback about a leaving peer, and that
callback waits for a lock (gdb stacks). The process hangs in the middleware whatever the node
does; under ros2 launch it is ended by SIGTERM/SIGKILL after its timeouts.
"""
from contextlib import ExitStack
import os
import threading
import time

os.environ['ROS_DOMAIN_ID'] = '78'  # before rclpy: own domain, no cross-talk with other tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402


from geometry_msgs.msg import PoseStamped  # noqa: E402, I100
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
import rclpy  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Float64, String  # noqa: E402
from vision_msgs.msg import Classification, Detection2DArray  # noqa: E402

from clip_ros.nodes.common import RCLError, spin_until_shutdown, SPIN_WAKE_SEC  # noqa: E402
from clip_ros.nodes.conversions import numpy_to_image  # noqa: E402
from clip_ros.nodes.sim_messages import camera_info_msg  # noqa: E402
from clip_ros.policy.lifting import matrix_to_quat  # noqa: E402
from node_harness import (  # noqa: E402, I100
    arm_state, blue_block, Harness, interrupt, node_process, rgb_image, wait_for)

DOMAIN = 78
# Processes of one node, started together and interrupted together (model loading is slow).
COPIES = {'grounding_node': 3, 'clip_classifier_node': 3, 'clipseg_node': 3, 'sim_node': 5,
          'vla_policy_node': 5}
EXIT_SEC = 10.0  # from SIGINT to exit, with the other copies busy on 2 cores
TINY = ['-p', 'clip_arch:=tiny', '-p', 'clip_pretrained:=random', '-p', 'clipseg_model:=tiny',
        '-p', 'device:=cpu', '-p', 'image_qos:=reliable']
W, H = 80, 60
K = np.array([[80.0, 0.0, 39.5], [0.0, 80.0, 29.5], [0.0, 0.0, 1.0]])
# Camera 0.7 m above the base origin looking straight down (as in the policy node tests).
EXTRINSIC = [0.0, 0.0, 0.7] + matrix_to_quat(np.diag([1.0, -1.0, -1.0]))


@pytest.fixture(scope='module')
def ros():
    harness = Harness(DOMAIN)
    yield harness
    harness.shutdown()


class Feed:
    """Publish inputs to every namespace from the probe's timer; collect one output topic."""

    def __init__(self, ros, namespaces, period: float, send, output):
        self.ros, self.namespaces, self.send = ros, namespaces, send
        self.publishers = {}
        self.inboxes = {ns: ros.subscribe(output[0], f'/{ns}/{output[1]}')
                        for ns in namespaces}
        self.timer = ros.probe.create_timer(period, self._tick)

    def publisher(self, ns: str, kind, topic: str):
        key = (ns, topic)
        if key not in self.publishers:
            self.publishers[key] = self.ros.publisher(kind, f'/{ns}/{topic}')
        return self.publishers[key]

    def _tick(self) -> None:
        for ns in self.namespaces:
            self.send(self, ns)

    def busy(self) -> bool:
        """Return whether every node answered at least twice."""
        return all(len(inbox.messages) >= 2 for inbox in self.inboxes.values())

    def stop(self) -> None:
        self.ros.probe.destroy_timer(self.timer)


def send_image(feed: Feed, ns: str) -> None:
    feed.publisher(ns, Image, 'image').publish(rgb_image(feed.ros.header(), 96, 72))


def send_goal(feed: Feed, ns: str) -> None:
    goal = PoseStamped()
    goal.header.frame_id = 'world'
    goal.pose.position.x, goal.pose.position.z = 0.1 * np.sin(time.monotonic()), 0.3
    feed.publisher(ns, PoseStamped, 'ee_goal').publish(goal)
    feed.publisher(ns, Float64, 'gripper_command').publish(Float64(data=0.0))


def send_scene(feed: Feed, ns: str) -> None:
    """Publish one matched set with a 'blue block', the arm state, and the command once."""
    header = feed.ros.header('camera_optical_frame')
    detections, mask = blue_block(header, W, H)
    feed.publisher(ns, PoseStamped, 'ee_state').publish(arm_state(header))
    feed.publisher(ns, Detection2DArray, 'detections').publish(detections)
    feed.publisher(ns, Image, 'mask').publish(mask)
    feed.publisher(ns, Image, 'depth').publish(
        numpy_to_image(np.full((H, W), 0.6, np.float32), '32FC1', header))
    feed.publisher(ns, CameraInfo, 'camera_info').publish(camera_info_msg(K, W, H, header))
    command = feed.publisher(ns, String, 'command')
    if not feed.inboxes[ns].messages and command.get_subscription_count():
        command.publish(String(data='pick up the blue block'))


CASES = {
    'grounding_node': (TINY + ['-p', 'thresholds:=[0.0]', '-p', "queries:=['red block']"],
                       send_image, (Detection2DArray, 'detections'), 0.05),
    'clip_classifier_node': (TINY + ['-p', "classes:=['cup', 'block']"],
                             send_image, (Classification, 'classification'), 0.05),
    'clipseg_node': (TINY + ['-p', "classes:=['cup', 'block']"],
                     send_image, (Image, 'mask'), 0.05),
    'sim_node': (['-p', 'rate:=60.0', '-p', 'width:=160', '-p', 'height:=120'],
                 send_goal, (Image, 'camera/image_raw'), 0.02),
    'vla_policy_node': (['-p', 'rate:=50.0', '-p', f'extrinsic:={EXTRINSIC}',
                         '-p', 'acquire_timeout:=60.0', '-p', 'lost_timeout:=60.0'],
                        send_scene, (PoseStamped, 'ee_goal'), 0.05),
}


def restart(ros, ns: str, node: str) -> None:
    """Deactivate and activate the node over its lifecycle services."""
    client = ros.probe.create_client(ChangeState, f'/{ns}/{node}/change_state')
    try:
        assert client.wait_for_service(10.0)
        for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_ACTIVATE):
            request = ChangeState.Request()
            request.transition.id = transition
            assert client.call(request, timeout_sec=20.0).success
    finally:
        ros.probe.destroy_client(client)


@pytest.mark.parametrize('node', list(CASES))
def test_busy_node_exits_cleanly_on_sigint(ros, node, request):
    if node == 'sim_node':
        request.getfixturevalue('gl_context')  # skips without offscreen OpenGL
    args, send, output, period = CASES[node]
    namespaces = [f'int_{node}_{i}' for i in range(COPIES[node])]
    with ExitStack() as stack:
        procs = [stack.enter_context(node_process(f'clip_ros.nodes.{node}', DOMAIN,
                                                  ['-r', f'__ns:=/{ns}', *args]))
                 for ns in namespaces]
        feed = Feed(ros, namespaces, period, send, output)
        try:
            busy = wait_for(lambda: feed.busy() or any(p.poll() is not None for p in procs),
                            timeout=90.0)
            assert busy and all(p.poll() is None for p in procs), \
                f'{node} did not start: ' + next(
                    (p.communicate()[0] for p in procs if p.poll() is not None), '')
            if node == 'vla_policy_node':
                # As seen on a robot: Ctrl-C after a pick and a deactivate/activate.
                restart(ros, namespaces[0], node)
                time.sleep(0.5)

            def stop(proc) -> float:
                start = time.monotonic()
                interrupt(proc, timeout=EXIT_SEC)
                return time.monotonic() - start
            seconds = [stop(proc) for proc in procs]
        finally:
            feed.stop()
    assert max(seconds) < EXIT_SEC, seconds


@pytest.fixture
def private():
    """Yield (context, node, executor) of a private context, for spin_until_shutdown."""
    context = Context()
    rclpy.init(context=context, domain_id=DOMAIN)
    node = rclpy.create_node('spin_probe', context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    yield context, node, executor
    node.destroy_node()
    executor.shutdown(timeout_sec=1.0)
    rclpy.try_shutdown(context=context)


def spin_in_thread(context, executor) -> tuple:
    errors = []

    def run():
        try:
            spin_until_shutdown(executor, context)
        except Exception as e:  # noqa: B902 - handed to the test
            errors.append(e)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_spin_ends_when_the_context_goes_down_without_a_wake(private):
    # rclpy's signal thread: guard conditions triggered, the executor back in its wait set,
    # then rcl_shutdown, which wakes nobody. A node with only a subscription has no timer.
    context, node, executor = private
    node.create_subscription(String, 'nothing', lambda msg: None, 10)
    thread, errors = spin_in_thread(context, executor)
    time.sleep(0.3)
    assert thread.is_alive()
    context.handle.shutdown()
    thread.join(SPIN_WAKE_SEC + 2.0)
    assert not thread.is_alive(), 'the spin did not notice the shut-down context'
    assert not errors


def test_spin_ends_quietly_when_a_callback_meets_the_shutdown(private):
    context, node, executor = private
    pub = node.create_publisher(String, 'out', 10)

    def tick():
        context.handle.shutdown()  # SIGINT lands while the callback runs
        pub.publish(String(data='late'))  # RCLError: the publisher's context is invalid
    node.create_timer(0.05, tick)
    thread, errors = spin_in_thread(context, executor)
    thread.join(5.0)
    assert not thread.is_alive() and not errors, errors


def test_spin_raises_an_rclerror_of_a_valid_context(private):
    context, node, executor = private

    def tick():
        raise RCLError('a real failure')
    node.create_timer(0.05, tick)
    thread, errors = spin_in_thread(context, executor)
    thread.join(5.0)
    assert not thread.is_alive()
    assert len(errors) == 1 and 'a real failure' in str(errors[0])
