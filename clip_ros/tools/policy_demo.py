"""
Run the demo_sim graph in one process: simulator, grounding node and vla_policy_node.

Publishes one command (default: pick up an object of the scene), waits for the policy's final
status and prints it with how high the target was lifted. The same wiring as
launch/demo_sim.launch.py, for machines without ros2 launch.
"""
import argparse
import json
import os
import sys
import time

import rclpy
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from std_msgs.msg import String

from clip_ros.nodes.common import COMMAND_QOS, RCLError, RESULTS_QOS
from clip_ros.nodes.managed import ManagedNode
from clip_ros.sim.scene import sample_scene
from clip_ros.tools.cli import count, number
from clip_ros.tools.demo_graph import build_graph

FINAL = ('succeeded', 'failed', 'aborted', 'rejected')


class NodeStartError(RuntimeError):
    """A node of the graph did not start (its lifecycle configure or activate failed)."""


def build(context, args) -> list:
    """Create the three nodes of the graph."""
    sim = {'seed': args.seed, 'width': args.width, 'height': args.height}
    return build_graph(context, sim, args.model, args.device,
                       {'policy': args.policy, 'head_path': args.head})


def not_started(nodes) -> str:
    """Return why the lifecycle nodes of `nodes` are not all active ('' when they are)."""
    # Configure failures (a bad head_path, missing weights) leave a lifecycle node unconfigured
    # instead of raising.
    return '; '.join(f'{node.get_name()}: {node.not_ready}' for node in nodes
                     if isinstance(node, ManagedNode) and node.not_ready)


def run(args) -> dict | None:
    """
    Spin the graph, send the command and return the final status (None on timeout).

    Raises NodeStartError when a node does not start.
    """
    context = Context()
    rclpy.init(context=context)
    try:
        return _spin(context, args)
    finally:
        rclpy.try_shutdown(context=context)


def _spin(context, args) -> dict | None:
    nodes = build(context, args)
    error = not_started(nodes)
    if error:
        for node in nodes:
            node.destroy_node()
        raise NodeStartError(error)
    probe = rclpy.create_node('policy_demo', context=context)
    final = []
    probe.create_subscription(String, 'policy_status', lambda m: final.append(
        json.loads(m.data)), RESULTS_QOS)
    command = probe.create_publisher(String, 'command', COMMAND_QOS)
    executor = SingleThreadedExecutor(context=context)
    for node in nodes + [probe]:
        executor.add_node(node)
    deadline, sent = time.monotonic() + args.timeout, False
    try:
        while time.monotonic() < deadline and not any(s['state'] in FINAL for s in final):
            if not sent and nodes[0].frames > 5 and command.get_subscription_count() >= 2:
                command.publish(String(data=args.command))
                sent = True
            executor.spin_once(timeout_sec=0.05)
    except (ExternalShutdownException, RCLError):
        # Ctrl-C shut the context down between our checks; any other RCLError is real.
        if context.ok():
            raise
    if not context.ok():
        for node in nodes + [probe]:
            node.destroy_node()
        return None
    holding = {}
    nodes[0].call_in_sim(lambda sim: holding.update(name=sim.holding))
    time.sleep(0.5)
    for node in nodes + [probe]:
        node.destroy_node()
    for status in final:
        print(f"[{status['state']}] {status['phase']} {status['detail']}")
    print(f"holding: {holding.get('name')}")
    return next((s for s in final if s['state'] in FINAL), None)


def main(argv=None) -> int:
    """Parse arguments and run the demo; return the exit code (1 when a node did not start)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--model', default='tabletop', choices=['tabletop', 'tiny'])
    parser.add_argument('--device', default='auto')
    parser.add_argument('--policy', default='geometric', choices=['geometric', 'learned'])
    parser.add_argument('--head', default='', help='policy head for --policy learned')
    parser.add_argument('--seed', type=count(0, 2 ** 31 - 1), default=3)
    parser.add_argument('--command', default='', help="default: 'pick up the <object>'")
    parser.add_argument('--width', type=count(8, 4096), default=320)
    parser.add_argument('--height', type=count(8, 4096), default=240)
    parser.add_argument('--timeout', type=number(0.0, low_open=True), default=60.0)
    args = parser.parse_args(argv)
    if args.head and not os.path.isfile(args.head):
        parser.error(f'--head {args.head} does not exist (train_policy_head writes one)')
    args.command = args.command or f'pick up the {sample_scene(args.seed).objects[0].name}'
    try:
        run(args)
    except NodeStartError as e:
        print(f'policy_demo: {e}', file=sys.stderr)
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    return 0


if __name__ == '__main__':
    sys.exit(main())
