"""The demo's probe turns its frame subscriptions on and off while frames stream in."""
import os
import sys
import threading
import time

os.environ['ROS_DOMAIN_ID'] = '53'  # before rclpy: own domain, no cross-talk with other tests

import rclpy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from clip_ros.nodes.common import RESULTS_QOS  # noqa: E402
from clip_ros.tools.demo import Probe  # noqa: E402
from clip_ros.tools.demo_graph import SIM_TOPICS  # noqa: E402


def test_watch_toggles_under_traffic_keep_the_probe_spinning():
    # Destroying a subscription from another thread while the executor built its wait set
    # killed the executor thread (InvalidHandle): the demo then never saw a result.
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=53)
    probe = Probe(context)
    camera = rclpy.create_node('probe_test_camera', context=context)
    # A busy graph on the same executor: many entities widen the window the fault needed.
    graph = rclpy.create_node('probe_test_graph', context=context)
    for i in range(100):
        graph.create_subscription(Image, f'other_{i}', lambda _: None, RESULTS_QOS)
    probe.executor.add_node(graph)
    frames = camera.create_publisher(Image, SIM_TOPICS['image'], RESULTS_QOS)
    stop = threading.Event()

    def stream():
        msg = Image(height=8, width=8, encoding='rgb8', step=24, data=bytes(192))
        while not stop.is_set():
            msg.header.stamp.nanosec = (msg.header.stamp.nanosec + 1000) % 1_000_000_000
            frames.publish(msg)

    spinner = threading.Thread(target=probe.executor.spin, daemon=True)
    spinner.start()
    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: the fault needed a switch mid-build
    try:
        for _ in range(400):
            probe.watch('pictures', True)
            probe.watch('pictures', False)
        assert spinner.is_alive()
        probe.watch('pictures', True)
        deadline = time.time() + 10
        while time.time() < deadline and not probe.frames:
            time.sleep(0.05)
        assert probe.frames, 'no frame reached the probe after the toggles'
        assert spinner.is_alive()
    finally:
        sys.setswitchinterval(switch)
        stop.set()
        streamer.join()
        probe.executor.shutdown()
        spinner.join(10)  # out of spin before the context goes
        camera.destroy_node()
        graph.destroy_node()
        probe.node.destroy_node()
        rclpy.shutdown(context=context)


def _exit_at_once():
    sys.exit(3)


def test_a_node_process_that_ends_at_start_is_reported_at_once():
    # A crash at start-up used to leave the demo polling for the whole start-up timeout.
    import multiprocessing
    from clip_ros.tools.demo import ready
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=53)
    probe = Probe(context)
    process = multiprocessing.get_context('spawn').Process(target=_exit_at_once,
                                                           name='grounding_node')
    process.start()
    process.join(30)
    try:
        # The process's reason, not the timeout's: nothing else ends the wait early.
        assert ready(probe, 600.0, [process]) == (
            'the grounding_node process ended (exit code 3) before the graph started; its log '
            'is above')
    finally:
        probe.executor.shutdown()
        probe.node.destroy_node()
        rclpy.shutdown(context=context)
