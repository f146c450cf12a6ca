"""
Throughput of grounding nodes on one Triton server against one in-process pipeline.

    python -m clip_ros.tools.triton_benchmark --model tabletop --frames 20 --json out.json

Starts a server (scripts/triton_server.py in .venv-serve) on free localhost ports, then for
each phrase count: the in-process onnxruntime and torch pipelines on the frames one after
another, and 1 and N client processes, each a real grounding_node (backend triton, ROS domain
97, localhost discovery) grounding the same frames through its pipeline at once. Prints a
table: frames/s in total, the ratio to the in-process onnxruntime pipeline, and each
client's resident memory (the robot side: no weights, and no torch).
"""
import argparse
import json
import multiprocessing
import os
from pathlib import Path
import signal
import socket
import subprocess
import sys
import time

import numpy as np

from clip_ros.tools import export as export_tool
from clip_ros.tools import serve

PHRASES = ['red block', 'blue ball', 'green cube', 'yellow cup', 'purple bowl']


def _frames(count: int, width: int, height: int) -> list:
    from clip_ros.sim.synthetic import scene_image
    return [scene_image(seed=s, width=width, height=height, count=5)[0] for s in range(count)]


def _rss_mb() -> float:
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
    return float('nan')


def _client(url, phrases, frames, barrier, results):
    """One robot: a grounding_node on the server; ground the frames when all are ready."""
    os.environ.update(ROS_DOMAIN_ID='97', ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
                      OMP_NUM_THREADS='1')
    import rclpy
    from rclpy.parameter import Parameter

    from clip_ros.nodes.grounding_node import GroundingNode
    rclpy.init()
    node = GroundingNode(parameter_overrides=[
        Parameter('backend', value='triton'), Parameter('triton_url', value=url),
        Parameter('queries', value=phrases), Parameter('device', value='cpu'),
        Parameter('triton_timeout', value=120.0)])
    pipeline = node._pipeline
    pipeline(frames[0], phrases, 0.4)  # text embeddings cached, as in a running node
    barrier.wait()
    start = time.perf_counter()
    for rgb in frames:
        pipeline(rgb, phrases, 0.4)
    heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'open_clip', 'transformers'})
    results.put((time.perf_counter() - start, len(frames), _rss_mb(), heavy))
    node.destroy_node()
    rclpy.shutdown()


def run_clients(url, phrases, frames, count) -> dict:
    """Run `count` client processes at once; return total frames/s and their RSS."""
    ctx = multiprocessing.get_context('spawn')
    barrier, results = ctx.Barrier(count + 1), ctx.Queue()
    procs = [ctx.Process(target=_client, args=(url, phrases, frames, barrier, results))
             for _ in range(count)]
    for proc in procs:
        proc.start()
    barrier.wait(timeout=600)
    start = time.perf_counter()
    done = [results.get(timeout=1200) for _ in procs]
    wall = time.perf_counter() - start
    for proc in procs:
        proc.join(60)
    return {'fps': sum(n for _, n, _, _ in done) / wall,
            'rss_mb': [round(r, 1) for _, _, r, _ in done],
            'heavy_modules': sorted({m for _, _, _, heavy in done for m in heavy})}


def local_fps(pipeline, phrases, frames) -> float:
    """Return frames/s of one in-process pipeline over the frames (after one warm-up)."""
    pipeline(frames[0], phrases, 0.4)
    start = time.perf_counter()
    for rgb in frames:
        pipeline(rgb, phrases, 0.4)
    return len(frames) / (time.perf_counter() - start)


def start_server(bundle: Path, log: Path, python: str):
    """Start the server on free localhost ports; return (process, url) once it answers."""
    from clip_ros.perception.triton_client import server_ready
    sockets = [socket.socket() for _ in range(3)]
    for s in sockets:
        s.bind(('127.0.0.1', 0))
    grpc, http, metrics = (s.getsockname()[1] for s in sockets)
    for s in sockets:
        s.close()
    proc = subprocess.Popen(
        [python, str(serve.SERVER_SCRIPT), str(bundle), '--grpc-port', str(grpc),
         '--http-port', str(http), '--metrics-port', str(metrics)],
        stdout=open(log, 'w'), stderr=subprocess.STDOUT, start_new_session=True)
    url = f'localhost:{grpc}'
    deadline = time.monotonic() + 300
    while not server_ready(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f'server did not start; see {log}')
        time.sleep(0.5)
    return proc, url


def main(argv=None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(prog='triton_benchmark', description=__doc__.split('\n')[1])
    parser.add_argument('--model', choices=('tabletop', 'tiny'), default='tabletop')
    parser.add_argument('--frames', type=int, default=20, help='frames per client')
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--phrases', type=int, nargs='+', default=[1, 5])
    parser.add_argument('--clients', type=int, nargs='+', default=[1, 4])
    parser.add_argument('--python', default=str(serve.DEFAULT_PYTHON))
    parser.add_argument('--json', type=Path, help='write the rows here too')
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    from clip_ros.perception.backends import make_pipeline
    clip, clipseg = export_tool.load_models(argparse.Namespace(model=args.model))
    bundle = serve.write_bundle(clip, clipseg)
    proc, url = start_server(bundle, Path('/tmp/clip_ros_triton_benchmark.log'), args.python)
    frames = _frames(args.frames, args.width, args.height)
    rows = []
    try:
        for count in args.phrases:
            phrases = PHRASES[:count]
            row = {'phrases': count,
                   'onnxruntime_fps': local_fps(make_pipeline(clip, clipseg, 'onnxruntime'),
                                                phrases, frames),
                   'torch_fps': local_fps(make_pipeline(clip, clipseg), phrases, frames)}
            for clients in args.clients:
                row[f'triton_{clients}'] = run_clients(url, phrases, frames, clients)
            rows.append(row)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    print(f'{args.model}, {args.width}x{args.height}, {args.frames} frames per client, '
          f'{os.cpu_count()} cores shared by the server and the clients')
    print('| phrases | in-process onnxruntime | in-process torch | '
          + ' | '.join(f'triton, {c} client{"s" if c > 1 else ""}' for c in args.clients)
          + ' | client RSS (MB) |')
    print('|' + '---|' * (4 + len(args.clients)))
    for row in rows:
        base = row['onnxruntime_fps']
        cells = [f"{row[f'triton_{c}']['fps']:.1f} f/s ({row[f'triton_{c}']['fps'] / base:.2f}x)"
                 for c in args.clients]
        rss = max(max(row[f'triton_{c}']['rss_mb']) for c in args.clients)
        print(f"| {row['phrases']} | {base:.1f} f/s | {row['torch_fps']:.1f} f/s | "
              + ' | '.join(cells) + f' | {rss:.0f} |')
    heavy = sorted({m for row in rows for c in args.clients
                    for m in row[f'triton_{c}']['heavy_modules']})
    print('clients loaded: ' + (', '.join(heavy) or 'no torch, open_clip or transformers'))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + '\n', encoding='utf-8')
    return 0 if np.isfinite([r['onnxruntime_fps'] for r in rows]).all() else 1


if __name__ == '__main__':
    sys.exit(main())
