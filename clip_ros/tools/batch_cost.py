"""
What batching saves a frame: grounding_node's pipeline on N frames at once, in this process.

`flood --batch-cost 1 2 4 --backend onnxruntime --size 640x480` grounds the flood's frames (its
two queries) with the bundled model as grounding_node builds it (default parameters, one
CPU thread), in batches of each size, and prints per frame: the time in all, in the exported
graphs (the model passes) and outside them (light and table correction, regions, refinement,
evidence, in Python and numpy). Its last column is what that allows the many-cameras
comparison: with every core busy in both setups, one node with N cameras gives at most
(a frame alone) / (a frame in a batch of N) times the frames/s of N separate nodes.
"""
import time
from types import SimpleNamespace

from clip_ros.perception.backends import use_cpu_threads
from clip_ros.sim.synthetic import scene_image
from clip_ros.tools.evaluate import load_models, node_pipeline

QUERIES = ['red block', 'blue bowl']  # the flood's


def bundled_pipeline(backend: str):
    """Return the bundled model's pipeline as grounding_node builds it on the CPU."""
    args = SimpleNamespace(clipseg='', model='tabletop', device='cpu', backend=backend,
                           rescore='on', abstain='on', light_correction='on',
                           shape_search='on', zoom='on')
    clip, clipseg, _ = load_models(args)
    return node_pipeline(clip, clipseg, args, threads=use_cpu_threads(0, clip, clipseg))


def graph_sessions(pipeline) -> list:
    """Return the exported-graph sessions the pipeline's models run (none on torch)."""
    found = []
    for owner in (pipeline.runner, pipeline.clip, getattr(pipeline.clip, 'shape', None)):
        values = list(vars(owner).values()) if owner is not None else []
        values += [v for held in values if isinstance(held, dict) for v in held.values()]
        found += [v for v in values if hasattr(v, 'seconds')]
    return found


def measure(pipeline, frames: list, size: int, rounds: int) -> tuple:
    """Return (ms a frame in all, ms a frame in the graphs) for batches of `size` frames."""
    sessions = graph_sessions(pipeline)
    batches = [[frames[(start + k) % len(frames)] for k in range(size)]
               for start in range(len(frames))]
    for batch in batches:  # warm-up: first passes, caches of the text tower
        pipeline.batch([(rgb, QUERIES, 0.4) for rgb in batch], with_heatmaps=False)
    before = sum(s.seconds for s in sessions)
    start, count = time.perf_counter(), 0
    for _ in range(rounds):
        for batch in batches:
            pipeline.batch([(rgb, QUERIES, 0.4) for rgb in batch], with_heatmaps=False)
            count += size
    total = (time.perf_counter() - start) / count * 1e3
    return total, (sum(s.seconds for s in sessions) - before) / count * 1e3


def run_batch_cost(sizes: list, backend: str, size: tuple, rounds: int = 5) -> int:
    """Print the table for each batch size; return 0."""
    pipeline = bundled_pipeline(backend)
    frames = [scene_image(seed, size[0], size[1])[0] for seed in range(4)]
    graphs = bool(graph_sessions(pipeline))
    print(f'| frames a batch | ms a frame | in the graphs | outside them | frames/s on one core '
          f'| one node / separate nodes at most |\n|{" --- |" * 6}')
    alone = None
    for n in sizes:
        total, inside = measure(pipeline, frames, n, rounds)
        alone = alone or (total if n == 1 else None)
        split = (f'{inside:.1f} | {total - inside:.1f}' if graphs else '– | –')
        bound = f'{alone / total:.2f}x' if alone else '–'
        print(f'| {n} | {total:.1f} | {split} | {1e3 / total:.1f} | {bound} |', flush=True)
    return 0
