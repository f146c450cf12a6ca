"""
Flood or soak a clip_ros node with camera frames and report throughput, latency and memory.

The node under test, a camera publisher and a results listener share one process over real
DDS. Frames are published at `--rate` by a dedicated thread; the node keeps only the newest
frame, so processed frames should follow the model's own speed while latency and memory stay
flat. Examples: `flood --rate 200 --duration 30` (flood), `flood --rate 30 --duration 600
--warmup 60` (soak).

`flood --cameras 1 2 4 --model tabletop --rate 30 --size 640x480` instead compares one
grounding_node serving N cameras with N separate nodes, each setup in its own processes
(see flood_cameras). `flood --batch-cost 1 2 4 --backend onnxruntime --size 640x480` measures,
in this process, what grounding frames in batches saves a frame (see batch_cost).
"""
import argparse
from dataclasses import asdict, dataclass
import threading
import time

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from vision_msgs.msg import Classification, Detection2DArray

from clip_ros.nodes.clip_classifier_node import ClipClassifierNode
from clip_ros.nodes.clipseg_node import ClipSegNode
from clip_ros.nodes.common import RESULTS_QOS
from clip_ros.nodes.conversions import numpy_to_image
from clip_ros.nodes.grounding_node import GroundingNode
from clip_ros.nodes.managed import resident_bytes
from clip_ros.perception.stats import percentiles
from clip_ros.tools.cli import count, frame_size, number

# node -> (class, result type and topic, parameters for the tiny models, task parameters)
NODES = {
    'grounding': (GroundingNode, Detection2DArray, 'detections',
                  {'clip_arch': 'tiny', 'clip_pretrained': 'random', 'clipseg_model': 'tiny'},
                  {'queries': ['red block', 'bowl']}),
    'classifier': (ClipClassifierNode, Classification, 'classification',
                   {'clip_arch': 'tiny', 'clip_pretrained': 'random'},
                   {'classes': ['cup', 'bowl', 'block']}),
    'clipseg': (ClipSegNode, Detection2DArray, 'detections', {'clipseg_model': 'tiny'},
                {'classes': ['cup', 'bowl', 'block']}),
}


@dataclass
class FloodResult:
    """What one run measured (rates in Hz, times in ms, memory in MB)."""

    node: str
    model: str
    rate: float  # asked
    duration: float  # s, asked
    published_rate: float
    received: int
    processed: int
    dropped: int
    processed_rate: float
    model_rate: float  # 1 / the model's standalone time per frame, measured before the flood
    busy_pct: float  # share of the run the worker spent processing: ~100 = model-bound
    inference_p50: float
    inference_p99: float
    latency_p50: float  # frame stamp to result received, first half of the run
    latency_p99: float
    latency_late_p50: float  # the same over the second half: a growing queue shows here
    max_pending: int  # frames waiting in the node (the slot holds at most one)
    rss_start: float  # after warm-up
    rss_end: float
    rss_growth_pct: float
    errors: str
    window: float = float('nan')  # s measured: from the counters' reset to their snapshot


class Listener:
    """Record (stamp age) of every result message."""

    def __init__(self):
        self.ages: list[tuple[float, float]] = []  # (receipt time, age)

    def __call__(self, msg) -> None:
        now = time.time()
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        self.ages.append((now, now - stamp))


def publish_loop(publisher, frames: list, rate: float, stop: threading.Event) -> list:
    """Publish `frames` round-robin at `rate` Hz, stamped with the wall time, until `stop`."""
    sent, period = [0], 1.0 / rate
    start = next_tick = time.monotonic()
    while not stop.is_set():
        msg = frames[sent[0] % len(frames)]
        stamp = time.time()
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(stamp), int(stamp % 1 * 1e9)
        publisher.publish(msg)
        sent[0] += 1
        next_tick += period
        delay = next_tick - time.monotonic()
        if delay > 0:
            stop.wait(delay)
    return [sent[0], time.monotonic() - start]


def model_rate(node, frames: list, runs: int = 20) -> float:
    """
    Return frames per second of the node's own processing of `frames`, without DDS.

    Runs on a fresh thread like the node's worker: torch's intra-op thread count is set per
    thread, and the main thread's can differ.
    """
    def measure():
        for frame in frames:
            node.process(frame)  # warm; the time per frame depends on what the model finds
        start = time.perf_counter()
        for i in range(runs):
            node.process(frames[i % len(frames)])
        result.append(runs / (time.perf_counter() - start))

    result = []
    thread = threading.Thread(target=measure)
    thread.start()
    thread.join()
    return result[0] if result else float('nan')


def make_node(name: str, context, model: str, device: str):
    """Build and start the node under test in `context`."""
    cls, _, _, tiny, task = NODES[name]
    values = dict(task, device=device, image_qos='sensor_data')
    if model == 'tiny':
        values.update(tiny)
    overrides = [Parameter(k, value=v) for k, v in values.items()]
    return cls(context=context, parameter_overrides=overrides)


def run_flood(name: str = 'grounding', rate: float = 200.0, duration: float = 5.0,
              warmup: float = 1.0, size: tuple = (320, 240), model: str = 'tiny',
              device: str = 'cpu', domain_id: int = 72, sample: float = 0.1) -> FloodResult:
    """Flood node `name` with `size` frames at `rate` Hz for `duration` s after `warmup` s."""
    context = Context()
    rclpy.init(context=context, domain_id=domain_id)
    executor = MultiThreadedExecutor(num_threads=4, context=context)
    node = make_node(name, context, model, device)
    camera = rclpy.create_node('flood_camera', context=context)
    listener = Listener()
    camera.create_subscription(NODES[name][1], NODES[name][2], listener, RESULTS_QOS)
    publisher = camera.create_publisher(Image, 'image', RESULTS_QOS)
    for n in (node, camera):
        executor.add_node(n)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    rng = np.random.default_rng(0)
    frames = [numpy_to_image(rng.integers(0, 256, (size[1], size[0], 3), np.uint8), 'rgb8')
              for _ in range(4)]
    stop = threading.Event()
    try:
        own_rate = model_rate(node, frames)
        deadline = time.monotonic() + 10.0
        while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        sent = []
        pub_thread = threading.Thread(
            target=lambda: sent.extend(publish_loop(publisher, frames, rate, stop)), daemon=True)
        pub_thread.start()
        time.sleep(warmup)
        return _measure(name, node, listener, own_rate, rate, duration, model, sample,
                        stop, pub_thread, sent)
    finally:
        stop.set()
        executor.shutdown(timeout_sec=5.0)
        node.destroy_node()
        camera.destroy_node()
        rclpy.try_shutdown(context=context)
        spinner.join(5.0)


def _measure(name, node, listener, own_rate, rate, duration, model, sample, stop, pub_thread,
             sent) -> FloodResult:
    """Sample the node while the flood runs; return the results."""
    rss_start, max_pending = resident_bytes(), 0
    node.stats.reset()
    counted, start = time.monotonic(), time.time()
    end = counted + duration
    while time.monotonic() < end:
        worker = node.worker
        max_pending = max(max_pending, worker.pending if worker is not None else 0)
        time.sleep(sample)
    snapshot = node.stats.snapshot()
    # The rates' denominator: the window the counts cover, which the last sleep overruns.
    window, stopped = time.monotonic() - counted, time.time()
    rss_end = resident_bytes()
    stop.set()
    pub_thread.join(5.0)
    middle = start + window / 2
    early = [age for t, age in listener.ages if start <= t < middle]
    late = [age for t, age in listener.ages if middle <= t < stopped]
    lat = percentiles(early)
    return FloodResult(
        node=name, model=model, rate=rate, duration=duration,
        published_rate=sent[0] / sent[1] if sent else float('nan'),
        received=snapshot.received, processed=snapshot.processed, dropped=snapshot.dropped,
        processed_rate=snapshot.processed / window, model_rate=own_rate,
        busy_pct=100.0 * snapshot.busy / window,
        inference_p50=snapshot.inference_ms[0], inference_p99=snapshot.inference_ms[1],
        latency_p50=lat[0] * 1e3, latency_p99=lat[1] * 1e3,
        latency_late_p50=percentiles(late)[0] * 1e3, max_pending=max_pending,
        rss_start=rss_start / 2**20, rss_end=rss_end / 2**20,
        rss_growth_pct=100.0 * (rss_end - rss_start) / rss_start, errors=snapshot.last_error,
        window=window)


TABLE = ('| node | model | input Hz (asked/sent) | s | received | processed | dropped | '
         'processed Hz | model Hz | busy % | inference p50/p99 ms | '
         'latency p50/p99 ms (late p50) | '
         'max queued | RSS MB start→end (growth) | errors |')


def table_row(r: FloodResult) -> str:
    """Format a result as a row of the table in doc/performance.md."""
    return (f'| {r.node} | {r.model} | {r.rate:g}/{r.published_rate:.0f} | {r.duration:g} | '
            f'{r.received} | {r.processed} | {r.dropped} | {r.processed_rate:.1f} | '
            f'{r.model_rate:.1f} | {r.busy_pct:.0f} | '
            f'{r.inference_p50:.0f}/{r.inference_p99:.0f} | '
            f'{r.latency_p50:.0f}/{r.latency_p99:.0f} ({r.latency_late_p50:.0f}) | '
            f'{r.max_pending} | {r.rss_start:.0f}→{r.rss_end:.0f} ({r.rss_growth_pct:+.1f}%) | '
            f'{r.errors or "none"} |')


def main(args=None) -> int:
    """Parse arguments, run one flood or soak and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--node', default='grounding', choices=sorted(NODES))
    parser.add_argument('--rate', type=number(0.0, low_open=True), default=200.0,
                        help='input frames per second')
    parser.add_argument('--duration', type=number(0.0, low_open=True), default=30.0,
                        help='measured seconds')
    parser.add_argument('--warmup', type=number(0.0), default=2.0,
                        help='seconds before measuring')
    parser.add_argument('--size', type=frame_size, default=(320, 240), help='frame WIDTHxHEIGHT')
    parser.add_argument('--model', default='tiny', choices=['tiny', 'default', 'tabletop'],
                        help="'tiny': random-init models, no weights; 'default': the nodes' own; "
                        "'tabletop' (--cameras only): the bundled trained model")
    parser.add_argument('--cameras', type=count(1), nargs='+', metavar='N',
                        help='grounding_node only: one node with N cameras against N nodes, '
                        'for each N, in separate processes')
    parser.add_argument('--batch-cost', type=count(1), nargs='+', metavar='N',
                        help="in this process instead: a frame's cost in batches of N frames, "
                        'with the bundled model on the CPU (what many cameras can save)')
    parser.add_argument('--device', default='cpu', help="'auto', 'cpu' or 'cuda'")
    parser.add_argument('--backend', default='torch', choices=['torch', 'onnxruntime', 'openvino'],
                        help='--cameras and --batch-cost only: the inference backend')
    parser.add_argument('--domain-id', type=count(0), default=72)
    parsed = parser.parse_args(rclpy.utilities.remove_ros_args(args)[1:] if args else None)
    size = parsed.size
    if parsed.batch_cost:
        from clip_ros.tools.batch_cost import run_batch_cost
        return run_batch_cost(sorted(set(parsed.batch_cost)), parsed.backend, size)
    if parsed.cameras:
        from clip_ros.tools.flood_cameras import run_cameras
        return run_cameras(parsed.cameras, parsed.model, parsed.device, parsed.rate,
                           parsed.duration, size, parsed.domain_id, parsed.backend)
    if parsed.backend != 'torch':
        parser.error('--backend is for --cameras and --batch-cost; the flood runs the node as '
                     'configured')
    if parsed.model == 'tabletop':
        parser.error("--model tabletop is for --cameras; the flood's node loads 'default'")
    result = run_flood(parsed.node, parsed.rate, parsed.duration, parsed.warmup, size,
                       parsed.model, parsed.device, parsed.domain_id)
    print(TABLE)
    print('|' + ' --- |' * (TABLE.count('|') - 1))
    print(table_row(result))
    print(asdict(result))
    return 1 if result.errors else 0


if __name__ == '__main__':
    raise SystemExit(main())
