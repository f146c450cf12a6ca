"""
Ground commands in the MuJoCo tabletop and act on them over real DDS.

Starts the graph of launch/demo_sim.launch.py (simulator, grounding node, vla_policy_node), all
in this process (or each node in a process of its own, as ros2 launch runs them), and a probe
node here. For each scene it sends a command about one of the scene's objects, prints what was
grounded (IoU against the simulator's ground truth) and how the policy ended, then measures the
grounding rate at camera speed and writes an annotated strip PNG.
"""
import argparse
import json
import signal
import statistics
import threading
import time

import numpy as np
from PIL import Image as PILImage
import rclpy
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from sensor_msgs.msg import Image
from std_msgs.msg import Int32, String
from vision_msgs.msg import Detection2DArray

from clip_ros.nodes.common import COMMAND_QOS, RESULTS_QOS
from clip_ros.nodes.conversions import image_to_numpy
from clip_ros.nodes.overlay import draw_overlay
from clip_ros.perception.geometry import box_iou, Detection
from clip_ros.perception.names import BACKENDS
from clip_ros.tools.cli import count, number, writable
from clip_ros.tools.demo_graph import (
    build_graph, node_specs, OWN_PROCESS, SIM_TOPICS, start_processes, stop_processes)

PHRASINGS = ('pick up the {}', 'grab the {}', 'could you pick up the {} please', 'get me {}')
FINAL = ('succeeded', 'failed', 'aborted', 'rejected')
EXECUTORS = {'single': SingleThreadedExecutor, 'multi': MultiThreadedExecutor}
LAYOUTS = ('per-node', 'one')  # a process per node (as ros2 launch), or all in the demo's
READY_SEC = 180.0  # the nodes' start-up: model loading, graph export on first use
WATCH_SEC = 10.0  # the probe executor runs a subscription change between two callbacks


def box_of(d) -> tuple:
    """Return (x_min, y_min, x_max, y_max) of a Detection2D."""
    cx, cy = d.bbox.center.position.x, d.bbox.center.position.y
    return cx - d.bbox.size_x / 2, cy - d.bbox.size_y / 2, cx + d.bbox.size_x / 2, \
        cy + d.bbox.size_y / 2


class Probe:
    """A node that keeps the latest frames, results, truth and policy status by stamp."""

    def __init__(self, context):
        self.node = rclpy.create_node('demo_probe', context=context)
        # The probe spins alone on one thread: `watch` changes its subscriptions as a task of
        # that executor, because destroying one while another thread builds a wait set
        # breaks the executor (InvalidHandle).
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.lock = threading.Condition()
        self.frames, self.results, self.masks, self.status = {}, {}, {}, []
        self.truth = None
        self.arrivals = []  # (receipt time, stamp seconds) of every Detection2DArray
        sub = self.node.create_subscription
        sub(Detection2DArray, 'detections', self._on_detections, RESULTS_QOS)
        # Topics of every frame that the probe reads only at times (watch): frames and masks
        # (1.5 MB a frame) while a result is awaited, the truth after a reset.
        self.watched = {'pictures': [(Image, SIM_TOPICS['image'], self._on_frame),
                                     (Image, 'mask', self._on_mask)],
                        'truth': [(Detection2DArray, 'sim/ground_truth_2d', self._on_truth)]}
        self.subscriptions = {}
        sub(String, 'policy_status', self._on_status, RESULTS_QOS)
        self.command = self.node.create_publisher(String, 'command', COMMAND_QOS)
        self.reset = self.node.create_publisher(Int32, 'sim/reset', COMMAND_QOS)

    def watch(self, name: str, on: bool) -> None:
        """Subscribe (on) or drop the `watched` topics of `name`, on the probe's executor."""
        done = threading.Event()
        task = self.executor.create_task(self._watch, name, on)
        task.add_done_callback(lambda _: done.set())
        if not done.wait(WATCH_SEC):
            raise RuntimeError(f'the probe did not change its {name} subscriptions '
                               f'within {WATCH_SEC:.0f} s')
        task.result()  # raises what the change raised

    def _watch(self, name: str, on: bool) -> None:
        if on and name not in self.subscriptions:
            self.subscriptions[name] = [self.node.create_subscription(kind, topic, callback,
                                                                      RESULTS_QOS)
                                        for kind, topic, callback in self.watched[name]]
        elif not on:
            for subscription in self.subscriptions.pop(name, []):
                self.node.destroy_subscription(subscription)

    @staticmethod
    def key(header) -> int:
        return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec

    def _keep(self, table: dict, key: int, value) -> None:
        with self.lock:
            table[key] = value
            for old in sorted(table)[:-60]:  # bounded: only recent frames matter
                del table[old]
            self.lock.notify_all()

    def _on_frame(self, msg) -> None:
        self._keep(self.frames, self.key(msg.header), image_to_numpy(msg, copy=True))

    def _on_detections(self, msg) -> None:
        self.arrivals.append((time.time(), self.key(msg.header) / 1e9))
        self._keep(self.results, self.key(msg.header), msg)

    def _on_mask(self, msg) -> None:
        self._keep(self.masks, self.key(msg.header), image_to_numpy(msg, copy=True))

    def _on_truth(self, msg) -> None:
        with self.lock:
            self.truth = (self.key(msg.header), msg)
            self.lock.notify_all()

    def _on_status(self, msg) -> None:
        with self.lock:
            self.status.append(json.loads(msg.data))
            self.lock.notify_all()

    def wait(self, predicate, timeout: float):
        """Wait until predicate() (called under the lock) is truthy; return its value."""
        with self.lock:
            return self.lock.wait_for(predicate, timeout)


def specs(args) -> tuple:
    """Return the node_specs arguments of the graph: (sim, model, device, policy, grounding)."""
    sim = {'seed': args.seeds[0], 'rate': args.rate, 'width': args.width, 'height': args.height}
    grounding = {'backend': backend(args), **(OWN_PROCESS if args.processes != 'one' else {})}
    return sim, args.model, args.device, None, grounding


def backend(args) -> str:
    """Return the grounding backend: 'auto' is onnxruntime on the CPU, torch on CUDA."""
    if args.backend != 'auto':
        return args.backend
    from clip_ros.perception.registry import resolve_device
    return 'torch' if resolve_device(args.device).type == 'cuda' else 'onnxruntime'


def ready(probe: Probe, timeout: float, processes=()) -> str:
    """
    Wait until the simulator takes resets and grounding and policy take commands.

    Returns '' when they do, else why not: a node process that ended (at once, not after the
    timeout) or the timeout.
    """
    deadline = time.time() + timeout
    while time.time() < deadline:
        if probe.command.get_subscription_count() >= 2 and \
                probe.reset.get_subscription_count() >= 1:
            return ''
        ended = [p for p in processes if not p.is_alive()]
        if ended:
            return ', '.join(f'the {p.name} process ended (exit code {p.exitcode})'
                             for p in ended) + ' before the graph started; its log is above'
        time.sleep(0.2)
    return f'the graph did not start within {timeout:.0f} s (no node took commands)'


def ground(probe: Probe, seed: int, phrasing: str, timeout: float) -> dict | None:
    """Reset to `seed`, command one of its objects; return what was grounded and how it ended."""
    probe.watch('truth', True)
    start = time.time()
    probe.reset.publish(Int32(data=seed))
    truth = probe.wait(lambda: probe.truth and probe.truth[0] / 1e9 > start + 0.3 and probe.truth,
                       timeout)
    probe.watch('truth', False)
    if not truth:
        return None
    objects = {d.results[0].hypothesis.class_id: box_of(d) for d in truth[1].detections}
    target = sorted(objects)[seed % len(objects)]
    command = phrasing.format(target)
    probe.watch('pictures', True)
    sent = time.time()
    probe.command.publish(String(data=command))
    # The first result computed after the command, with its frame and mask.
    found = probe.wait(lambda: next(((probe.results[k], probe.frames[k], probe.masks[k])
                                     for k in sorted(probe.results) if k / 1e9 > sent + 0.2
                                     and k in probe.frames and k in probe.masks), None), timeout)
    probe.watch('pictures', False)
    if found is None:
        return None
    msg, frame, mask = found
    status = probe.wait(lambda: next((s for s in probe.status if s['command'] == command
                                      and s['state'] in FINAL), None), timeout)
    top = msg.detections[0] if msg.detections else None
    return {'command': command, 'target': target, 'frame': frame, 'mask': mask,
            'detections': msg.detections,
            'grounded': top.results[0].hypothesis.class_id if top else None,
            'score': top.results[0].hypothesis.score if top else 0.0,
            'iou': float(box_iou(box_of(top), objects[target])[0, 0]) if top else 0.0,
            'policy': status or {'state': 'timeout', 'phase': '', 'detail': ''}}


def rate(probe: Probe, seconds: float) -> tuple:
    """Return (results per second, p50 stamp-to-receipt latency in ms) over `seconds`."""
    since = time.time()
    time.sleep(seconds)
    window = [(t, s) for t, s in list(probe.arrivals) if t >= since]
    if len(window) < 2:
        return 0.0, float('nan')
    latency = statistics.median((t - s) * 1e3 for t, s in window)
    return (len(window) - 1) / (window[-1][0] - window[0][0]), latency


def panel(result: dict) -> np.ndarray:
    """Draw a result's detections over its frame."""
    dets = [Detection(i, d.results[0].hypothesis.class_id, d.results[0].hypothesis.score,
                      box_of(d), 0, (0.0, 0.0), 0.0) for i, d in enumerate(result['detections'])]
    return draw_overlay(result['frame'], dets, result['mask'], [result['target']])


def report(result: dict, seed: int) -> bool:
    """Print one command's outcome; return True when the right object was grounded."""
    policy = result['policy']
    ok = result['grounded'] is not None and result['iou'] >= 0.5
    print(f"seed {seed}: {result['command']!r} -> grounded {result['grounded']!r} "
          f"score {result['score']:.2f}, IoU {result['iou']:.2f} with the true "
          f"{result['target']} [{'ok' if ok else 'wrong'}]; policy {policy['state']} "
          f"{policy['phase']} {policy['detail']}".rstrip())
    return ok


def layout(args) -> str:
    """Describe how the graph ran: processes and executor."""
    if args.processes == 'one':
        return f'one process, {args.executor}-threaded executor'
    return 'a process per node'


def run(args) -> int:
    """Spin the graph, run the commands, print the results, write the strip."""
    # SIGTERM (timeout, kill) unwinds like Ctrl-C, so the node processes are stopped too.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    context = Context()
    rclpy.init(context=context)
    if args.processes == 'one':
        nodes, processes = build_graph(context, *specs(args)), []
    else:
        nodes, processes = [], start_processes(node_specs(*specs(args)))
    probe = Probe(context)
    # One executor thread: inference runs on the grounding node's worker, and more executor
    # threads only fight over the GIL (`--executor multi` measures the difference).
    executor = EXECUTORS[args.executor](context=context)
    for node in nodes:
        executor.add_node(node)
    spinners = [threading.Thread(target=spin, daemon=True)
                for spin in [probe.executor.spin] + ([executor.spin] if nodes else [])]
    for spinner in spinners:
        spinner.start()
    panels, grounded = [], 0
    try:
        reason = ready(probe, READY_SEC, processes)
        if reason:
            print(reason)
            return 1
        for i, seed in enumerate(args.seeds):
            result = ground(probe, seed, PHRASINGS[i % len(PHRASINGS)], args.timeout)
            if result is None:
                print(f'seed {seed}: no result within {args.timeout:.0f} s')
                continue
            grounded += report(result, seed)
            panels.append(panel(result))
        hz, latency = rate(probe, args.measure)
        print(f'grounded {grounded}/{len(args.seeds)} commands; grounding rate {hz:.1f} '
              f'frames/s at {args.rate:.0f} Hz camera input, stamp-to-result p50 '
              f'{latency:.0f} ms ({args.width}x{args.height}, model {args.model}, backend '
              f'{backend(args)}, {layout(args)})')
    finally:
        executor.shutdown()
        probe.executor.shutdown()
        for spinner in spinners:
            spinner.join(10.0)  # out of spin before the context goes
        for node in nodes + [probe.node]:
            node.destroy_node()
        rclpy.try_shutdown(context=context)
        stop_processes(processes)
    if panels:
        PILImage.fromarray(np.concatenate(panels, axis=1)).save(args.output)
        print(f'wrote {args.output}')
    # Fails only when nothing came back: a wrong grounding or a failed pick is a result.
    return 0 if panels else 1


def main(argv=None) -> int:
    """Parse arguments and run the demo."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--model', default='tabletop', choices=['tabletop', 'tiny'])
    parser.add_argument('--device', default='auto', help="'auto', 'cpu' or 'cuda'")
    parser.add_argument('--seeds', type=count(0, 2 ** 31 - 1), nargs='+',
                        default=[200001, 200002, 200003])
    parser.add_argument('--rate', type=number(0.0, low_open=True), default=30.0,
                        help='camera frames per second')
    parser.add_argument('--width', type=count(8, 4096), default=640)
    parser.add_argument('--height', type=count(8, 4096), default=480)
    parser.add_argument('--timeout', type=number(0.0, low_open=True), default=60.0,
                        help='seconds per command')
    parser.add_argument('--measure', type=number(0.0), default=5.0,
                        help='seconds of rate measurement')
    parser.add_argument('--output', default='out/demo_strip.png', help='annotated strip PNG')
    parser.add_argument('--processes', default='one', choices=LAYOUTS,
                        help="all nodes in the demo's process (the fastest here), or a "
                             'process per node, as ros2 launch runs them')
    parser.add_argument('--executor', default='single', choices=list(EXECUTORS),
                        help='rclpy executor of the graph with --processes one (multi: for '
                             'comparison)')
    parser.add_argument('--backend', default='auto', choices=('auto',) + BACKENDS,
                        help='grounding backend; auto: onnxruntime on the CPU (the fastest '
                             'for the bundled model there), torch on CUDA')
    args = parser.parse_args(argv)
    # The demo takes a minute: the strip's folder is made, and checked, before it starts.
    writable(parser, '--output', args.output, make_parent=True)
    try:
        return run(args)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the node processes are stopped by now
        print('interrupted')
        return 130


if __name__ == '__main__':
    raise SystemExit(main())
