"""
Many cameras, one model: one grounding_node with N `cameras` against N separate nodes.

Each setup runs as separate processes (`python -m clip_ros.nodes.grounding_node`), so their
resident memory is measured honestly; this process publishes every camera's frames at `rate`
Hz (stamped with the wall time) and receives every camera's detections. After each camera's
first result (the model is warm), it counts results for `duration` seconds: frames/s per
camera, latency (frame stamp to detections received) p50/p99 over all cameras, and the peak
resident memory of the node processes together: their summed proportional set size (Pss),
so pages they share (the libraries of torch, ROS, Python) count once, not once per node.
It also reports the node processes' CPU time per result and how busy the machine's cores were
in the window (this process's publishing included): a setup that leaves cores idle is limited
by waiting, one that fills them by its CPU cost per frame.
"""
from dataclasses import dataclass
import os
import subprocess
import sys
import threading
import time

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray

from clip_ros.nodes.common import RESULTS_QOS
from clip_ros.nodes.conversions import numpy_to_image
from clip_ros.perception.stats import percentiles
from clip_ros.sim.synthetic import scene_image

MODELS = {'tiny': ['clip_arch:=tiny', 'clip_pretrained:=random', 'clipseg_model:=tiny'],
          'tabletop': ['clip_arch:=tabletop', 'clipseg_model:=tabletop'], 'default': []}
QUERIES = 'queries:=[red block, blue bowl]'
START_TIMEOUT = 300.0


@dataclass
class CamerasResult:
    """One setup's figures (rates in Hz, times in ms, memory in MB)."""

    cameras: int
    setup: str  # 'one node' or 'N nodes'
    per_camera: float  # mean results/s per camera
    total: float
    latency_p50: float
    latency_p99: float
    rss: float  # peak of the node processes' resident memory together (summed Pss)
    cpu_per_frame: float  # ms of the node processes' CPU time per result
    busy: float  # the machine's cores busy in the window, in cores (all processes)


def _proc_kb(path: str, key: str) -> int:
    """Return the kB value of the line starting with `key` in a /proc file."""
    with open(path) as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


def rss_mb(pids: list) -> float:
    """
    Return the resident memory of the processes `pids` together in MB: their summed Pss.

    A page shared by k processes counts 1/k in each, so N nodes that map the same libraries
    count those pages once, as the machine holds them (summed VmRSS would count them N
    times). Without smaps_rollup (Linux before 4.14) a process counts its VmRSS; a process
    that is gone counts 0.
    """
    total = 0
    for pid in pids:
        try:
            total += _proc_kb(f'/proc/{pid}/smaps_rollup', 'Pss:')
        except (OSError, StopIteration):
            try:
                total += _proc_kb(f'/proc/{pid}/status', 'VmRSS:')
            except (OSError, StopIteration):
                pass
    return total / 1024


def cpu_seconds(pids: list) -> float:
    """Return the CPU time (user + system, all threads) the processes `pids` used so far."""
    tick, total = os.sysconf('SC_CLK_TCK'), 0
    for pid in pids:
        try:
            with open(f'/proc/{pid}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue  # gone: its time is lost, not guessed
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def busy_seconds() -> float:
    """Return the machine's busy CPU time so far, summed over cores (/proc/stat, not idle)."""
    with open('/proc/stat') as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf('SC_CLK_TCK')  # less idle, iowait


def node_commands(count: int, one_node: bool, model: str, device: str,
                  backend: str = 'torch') -> list:
    """Return the command lines of the grounding_node processes of one setup."""
    base = [sys.executable, '-m', 'clip_ros.nodes.grounding_node', '--ros-args',
            '-p', f'device:={device}', '-p', QUERIES, '-p', 'image_qos:=reliable',
            '-p', f'backend:={backend}']
    for value in MODELS[model]:
        base += ['-p', value]
    names = [f'cam{k}' for k in range(count)]
    if one_node:
        return [base + ['-p', f'cameras:=[{", ".join(names)}]']]
    return [base + ['-r', f'__ns:=/{name}'] for name in names]


class Driver:
    """Publish every camera's frames and record the age of every result, per camera."""

    def __init__(self, count: int, domain: int, size: tuple):
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node('flood_cameras', context=self.context)
        self.names = [f'cam{k}' for k in range(count)]
        self.ages = {name: [] for name in self.names}  # (receipt time, age)
        self.pubs = [self.node.create_publisher(Image, f'/{name}/image', RESULTS_QOS)
                     for name in self.names]
        for name in self.names:
            self.node.create_subscription(Detection2DArray, f'/{name}/detections',
                                          lambda msg, name=name: self._on_result(name, msg),
                                          RESULTS_QOS)
        self.frames = [numpy_to_image(scene_image(seed, size[0], size[1])[0], 'rgb8')
                       for seed in range(4)]
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.executor.spin, daemon=True)]

    def _on_result(self, name: str, msg) -> None:
        now = time.time()
        self.ages[name].append((now, now - msg.header.stamp.sec - msg.header.stamp.nanosec
                                * 1e-9))

    def publish(self, rate: float) -> None:
        """Publish one frame per camera every 1/rate s (cameras slightly staggered)."""
        tick, sent = time.monotonic(), 0
        while not self.stop.is_set():
            for pub in self.pubs:
                msg = self.frames[sent % len(self.frames)]
                stamp = time.time()
                msg.header.stamp.sec, msg.header.stamp.nanosec = int(stamp), int(stamp % 1 * 1e9)
                pub.publish(msg)
            sent += 1
            tick += 1.0 / rate
            self.stop.wait(max(tick - time.monotonic(), 0.0))

    def start(self, rate: float) -> None:
        """Start spinning and publishing."""
        self.threads.append(threading.Thread(target=self.publish, args=(rate,), daemon=True))
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        """Stop publishing and spinning; destroy the node."""
        self.stop.set()
        for thread in self.threads[1:]:
            thread.join(5.0)  # the publisher thread, before its publishers go
        self.executor.shutdown(timeout_sec=5.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def run_setup(count: int, one_node: bool, model: str, device: str, rate: float,
              duration: float, size: tuple, domain: int, backend: str = 'torch') -> CamerasResult:
    """Run one setup: start the node processes, flood them, measure, stop them."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for cmd in node_commands(count, one_node, model, device, backend)]
    driver = Driver(count, domain, size)
    try:
        driver.start(rate)
        deadline = time.monotonic() + START_TIMEOUT
        while not all(driver.ages.values()):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f'{count} cameras ({"one node" if one_node else "nodes"}): '
                                   'no results from every camera')
            time.sleep(0.2)
        time.sleep(2.0)  # past the first frames
        pids = [p.pid for p in procs]
        start, peak = time.time(), 0.0
        cpu0, busy0 = cpu_seconds(pids), busy_seconds()
        while time.time() < start + duration:
            peak = max(peak, rss_mb(pids))
            time.sleep(0.5)
        end = time.time()
        cpu, busy = cpu_seconds(pids) - cpu0, busy_seconds() - busy0
    finally:
        driver.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    window = {name: [age for t, age in ages if start <= t < end]
              for name, ages in driver.ages.items()}
    rates = [len(ages) / (end - start) for ages in window.values()]
    p50, p99 = percentiles([age for ages in window.values() for age in ages])
    results = sum(len(ages) for ages in window.values())
    return CamerasResult(count, 'one node' if one_node else f'{count} nodes',
                         sum(rates) / count, sum(rates), p50 * 1e3, p99 * 1e3, peak,
                         1e3 * cpu / max(results, 1), busy / (end - start))


TABLE = ('| cameras | setup | frames/s per camera | total frames/s | latency p50/p99 ms | '
         'resident MB | node CPU ms/frame | cores busy |')


def table_row(r: CamerasResult) -> str:
    """Format a result as a row of the table in doc/performance.md."""
    return (f'| {r.cameras} | {r.setup} | {r.per_camera:.1f} | {r.total:.1f} | '
            f'{r.latency_p50:.0f}/{r.latency_p99:.0f} | {r.rss:.0f} | {r.cpu_per_frame:.0f} | '
            f'{r.busy:.2f} |')


def run_cameras(counts: list, model: str, device: str, rate: float, duration: float,
                size: tuple, domain: int, backend: str = 'torch') -> int:
    """Run every camera count both ways, print the table and the ratios; return 0."""
    results = []
    print(TABLE)
    print('|' + ' --- |' * (TABLE.count('|') - 1), flush=True)
    for count in counts:
        pair = [run_setup(count, True, model, device, rate, duration, size, domain, backend)]
        if count > 1:  # one camera: both setups are the same single node
            pair.append(run_setup(count, False, model, device, rate, duration, size, domain,
                                  backend))
        for result in pair:
            print(table_row(result), flush=True)
        results.append(pair)
    for pair in results:
        if len(pair) == 2:
            one, many = pair
            print(f'{one.cameras} cameras: one node / {many.setup}: '
                  f'{one.total / many.total:.2f}x total frames/s, '
                  f'{100 * one.rss / many.rss:.0f} % resident memory')
    return 0
