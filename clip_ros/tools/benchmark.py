"""
Time one grounding step: the transformers reference path against the clip_ros pipeline backends.

Both paths run in the same process on the same frame and weights (random-initialised at the
default sizes, so no download is needed; the arithmetic equals the pretrained models'):

- reference: processor-style PIL resize and normalisation, the frame repeated once per prompt
  through CLIPSegForImageSegmentation's forward (which encodes the prompts every call), then the
  same thresholding, and CLIP re-scoring with open_clip's PIL transform crop by crop;
  both paths re-score the same number of components (``--instances-per-phrase``);
- ours: GroundingPipeline (one CLIPSeg vision pass, cached text, batched tensor crops) on each
  backend: torch, onnxruntime and openvino (the device's default precision, bf16 on Xeons with
  AMX; 'openvino-f32' forces f32, 'openvino-mixed' runs CLIPSeg in f32 and CLIP at the
  default). Each backend's detections are compared with torch's.
"""
import argparse
from functools import partial
import json
import time

import numpy as np
from PIL import Image
import torch
import torch.nn.functional as F

from clip_ros.perception.backends import make_pipeline
from clip_ros.perception.clipseg import load_clipseg
from clip_ros.perception.compressed import decode_colour, encode_colour
from clip_ros.perception.geometry import connected_components
from clip_ros.perception.grounding import DEFAULT_DISTRACTORS
from clip_ros.perception.loading import load_clip
from clip_ros.perception.stats import percentiles
from clip_ros.perception.tokenizer import tokenize
from clip_ros.sim.synthetic import scene_image
from clip_ros.tools import cli

PHRASES = ('blue block', 'red ball', 'green bowl', 'yellow block', 'purple ball',
           'orange bowl', 'white block', 'black ball', 'red block', 'blue ball')


def reference_maps(seg, rgb: np.ndarray, phrases: list) -> np.ndarray:
    """Return CLIPSeg probability maps [N, H, W] the transformers way (frame per prompt)."""
    height, width = rgb.shape[:2]
    size = seg.image_size
    x = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR), np.float32) / 255
    x = (x - np.array(seg.mean, np.float32)) / np.array(seg.std, np.float32)
    pixels = torch.from_numpy(x.transpose(2, 0, 1).copy())[None].repeat(len(phrases), 1, 1, 1)
    with torch.inference_mode():
        logits = seg.model(input_ids=tokenize(phrases).to(seg.device),
                           pixel_values=pixels.to(seg.device, seg.dtype)).logits.float()
        logits = logits.reshape(len(phrases), 1, *logits.shape[-2:])
        probs = F.interpolate(torch.sigmoid(logits), size=(height, width), mode='bilinear')
    return probs[:, 0].cpu().numpy()


def reference_step(clip, seg, rgb: np.ndarray, phrases: list, threshold: float,
                   cap: int) -> int:
    """Run the reference path once; return the number of instances it scored."""
    probs = reference_maps(seg, rgb, phrases)
    regions = [r for prob in probs for r in connected_components(prob > threshold, prob, 64)]
    # The same cap as the pipeline's max_candidates: the surest components only.
    boxes = [r.box for r in sorted(regions, key=lambda r: -r.mean_prob)[:cap]]
    if not boxes:
        return 0
    import open_clip
    transform = open_clip.image_transform(clip.image_size, is_train=False, mean=clip.mean,
                                          std=clip.std)
    frame = Image.fromarray(rgb)
    crops = torch.stack([transform(frame.crop(tuple(int(v) for v in b))) for b in boxes])
    texts = list(phrases) + list(DEFAULT_DISTRACTORS)
    with torch.inference_mode():
        text = F.normalize(clip.model.encode_text(tokenize(texts).to(clip.device)), dim=-1)
        image = F.normalize(clip.model.encode_image(crops.to(clip.device, clip.dtype)), dim=-1)
        (clip.logit_scale * image @ text.T).softmax(dim=-1)
    return len(boxes)


def time_all(steps: dict, repeats: int) -> dict:
    """
    Return {name: (median, p90) ms} of each step() after one warm-up call each.

    The steps take turns (one call of each per round), so load from other processes on a
    shared machine falls on all of them alike and their ratios stay comparable. The
    percentiles interpolate between the timed calls (see p50_p90).
    """
    times = {name: [] for name in steps}
    for name, step in steps.items():
        step()
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()  # no warm-up kernel left queued into the first timed call
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if torch.cuda.is_initialized():
                torch.cuda.synchronize()  # the reference leaves its last kernels queued
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: p50_p90(t) for name, t in times.items()}


def p50_p90(times: list) -> tuple:
    """
    Return the (median, p90) of `times`, interpolated linearly between the sorted values.

    With few calls the 90th percentile lies between the two slowest, not at the slowest:
    with 10 or 20 repeats the slowest call alone is the 95th or the 97.5th percentile.
    """
    return percentiles(times, (50, 90))


# Benchmark backend name -> make_pipeline keywords.
BACKENDS = {'torch': {}, 'onnxruntime': {'backend': 'onnxruntime'},
            'openvino': {'backend': 'openvino'},
            'openvino-f32': {'backend': 'openvino', 'precision': 'f32'},
            'openvino-mixed': {'backend': 'openvino', 'precision': 'mixed'},
            'torch-eager': {'static_shapes': False}}  # on CUDA: without buckets and graphs
DEFAULT_BACKENDS = ('torch', 'onnxruntime', 'openvino')


def _iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 1.0


# Parity tolerances of the final scores, as test/test_export.py holds them: f32 graphs match
# torch to rounding; 'mixed' keeps CLIPSeg (maps, boxes) in f32 and runs CLIP at bf16, whose
# 8-bit mantissa moves CLIP probabilities by up to a few thousandths. bf16 CLIPSeg ('openvino'
# on AMX Xeons) can move boxes, so it is held to boxes as well and often misses.
# With half-precision weights (--dtype float16 on CUDA) torch itself rounds to an 11-bit
# mantissa, and padding to shape buckets changes the kernels: every backend is held to the
# tolerance test/test_static_shapes.py holds fp16 to against fp32.
SCORE_TOL = {'mixed': 0.02, 'bf16': 0.02, 'f32': 1e-4, 'f16': 0.02}
BACKEND_TOL = {'openvino': 'bf16', 'openvino-mixed': 'mixed'}  # every other backend: f32


def score_tol(name: str, half: bool = False) -> float:
    """Return the score tolerance of backend `name` against torch (`half`: fp16/bf16 torch)."""
    tol = SCORE_TOL[BACKEND_TOL.get(name, 'f32')]
    return max(tol, SCORE_TOL['f16']) if half else tol


def agreement(ref, got, tol: float = SCORE_TOL['f32']) -> dict:
    """
    Compare two GroundingResults: the same detections, matched one to one, and their scores.

    Detections match when their phrase is equal and their boxes overlap (IoU >= 0.99), in any
    order: two detections whose scores lie closer than rounding may swap places. `parity`:
    every detection matched and every matched score within `tol`.
    """
    unused = list(got.detections)
    diffs = []
    for a in ref.detections:
        match = next((b for b in unused if b.phrase == a.phrase and _iou(a.box, b.box) >= 0.99),
                     None)
        if match is None:
            break
        unused.remove(match)
        diffs.append(abs(a.score - match.score))
    same = len(diffs) == len(ref.detections) and not unused
    worst = max(diffs, default=0.0)
    return {'same_detections': bool(same), 'max_score_diff': worst, 'score_tol': tol,
            'parity': bool(same and worst <= tol)}


def run(clip_arch: str, clipseg_name: str, counts: list, repeats: int, width: int,
        height: int, threshold: float, per_phrase: int, backends=DEFAULT_BACKENDS,
        cache_dir=None, device='cpu', dtype='float32', threads: int = 0) -> list:
    """Time the reference and each backend for each phrase count; return one row per count."""
    clip = load_clip(clip_arch, 'random', device=device, dtype=dtype)
    seg = load_clipseg(clipseg_name, device=device, dtype=dtype)
    # ONNX Runtime and OpenVINO get torch's thread count, so every path has the same cores.
    pipelines = {name: make_pipeline(
        clip, seg, cache_dir=cache_dir, **BACKENDS[name],
        **({'threads': threads} if 'backend' in BACKENDS[name] else {}))
                 for name in dict.fromkeys(['torch', *backends])}
    rgb, _ = scene_image(seed=0, width=width, height=height)
    half = any(m.dtype in (torch.float16, torch.bfloat16) for m in (clip, seg))
    rows = []
    for count in counts:
        phrases = list(PHRASES[:count])
        cap = per_phrase * count
        found = reference_step(clip, seg, rgb, phrases, threshold, cap)
        steps = {'reference': lambda: reference_step(clip, seg, rgb, phrases, threshold, cap),
                 'clipseg_reference': lambda: reference_maps(seg, rgb, phrases)}
        results = {}
        for name, pipeline in pipelines.items():
            pipeline.max_candidates = pipeline.max_detections = cap
            results[name] = pipeline(rgb, phrases, threshold, with_heatmaps=False)
            steps[name] = partial(pipeline, rgb, phrases, threshold, with_heatmaps=False)
            steps[f'clipseg_{name}'] = partial(pipeline.runner.probabilities, rgb, phrases)
        timed = time_all(steps, repeats)
        ref = timed['reference']
        row = {'phrases': count, 'instances': found, 'reference_ms': ref[0],
               'reference_p90_ms': ref[1], 'clipseg_reference_ms': timed['clipseg_reference'][0],
               'backends': {}}
        for name, result in results.items():
            ours = timed[name]
            row['backends'][name] = {
                'ms': ours[0], 'p90_ms': ours[1], 'ratio': ref[0] / ours[0],
                'clipseg_ms': timed[f'clipseg_{name}'][0], 'detections': len(result.detections),
                **agreement(results['torch'], result, score_tol(name, half))}
        torch_row = row['backends']['torch']
        best = min(row['backends'], key=lambda n: row['backends'][n]['ms'])
        # The fastest backend whose detections are torch's within its parity tolerance.
        kept = min((n for n, b in row['backends'].items() if b['parity']),
                   key=lambda n: row['backends'][n]['ms'])
        row.update(ours_ms=torch_row['ms'], ours_p90_ms=torch_row['p90_ms'],
                   ratio=torch_row['ratio'], clipseg_ours_ms=torch_row['clipseg_ms'],
                   clipseg_ratio=row['clipseg_reference_ms'] / torch_row['clipseg_ms'],
                   best_backend=best, best_ratio=row['backends'][best]['ratio'],
                   best_parity_backend=kept,
                   best_parity_ratio=row['backends'][kept]['ratio'])
        rows.append(row)
    return rows


def print_table(rows: list, title: str) -> None:
    """Print rows as a Markdown table: p50 ms per path, each backend's ratio to the reference."""
    names = list(rows[0]['backends']) if rows else []
    print(title)
    print('| phrases | instances | reference ms | '
          + ' | '.join(f'{n} ms (ratio)' for n in names)
          + " | CLIPSeg stage: reference / torch ms | detections as torch's within tolerance |"
          + ' fastest within parity |')
    print('|---|---|---|' + '---|' * len(names) + '---|---|---|')
    for r in rows:
        cells = [f"{b['ms']:.0f} ({b['ratio']:.2f}x)" for b in r['backends'].values()]
        same = ', '.join(
            f"{n} {'yes' if b['parity'] else 'NO'} (score diff {b['max_score_diff']:.0e}"
            f"{'' if b['same_detections'] else ', other boxes'}; tol {b['score_tol']:.0e})"
            for n, b in r['backends'].items() if n != 'torch')
        print(f"| {r['phrases']} | {r['instances']} | {r['reference_ms']:.0f} | "
              + ' | '.join(cells)
              + f" | {r['clipseg_reference_ms']:.0f} / {r['clipseg_ours_ms']:.0f} | "
              f'{same or "-"} | {r["best_parity_backend"]} '
              f'({r["best_parity_ratio"]:.2f}x) |')


def decode_rows(rgb: np.ndarray, repeats: int) -> list:
    """Time decoding `rgb` sent raw, as JPEG (quality 90) and as PNG; bytes on the wire."""
    rows = [{'transport': 'raw rgb8', 'bytes': int(rgb.nbytes), 'decode_ms': 0.0}]
    for kind in ('jpeg', 'png'):
        data = encode_colour(rgb, kind)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            decode_colour(data, kind, 16384)
            times.append((time.perf_counter() - start) * 1000)
        rows.append({'transport': f'compressed {kind}', 'bytes': len(data),
                     'decode_ms': float(np.median(times))})
    return rows


def print_decode_table(rows: list) -> None:
    """Print the compressed-input rows as a Markdown table."""
    print('| input | bytes per frame | share of raw | decode ms (p50, CPU) |')
    print('|---|---|---|---|')
    for r in rows:
        print(f"| {r['transport']} | {r['bytes']:,} | {r['bytes'] / rows[0]['bytes']:.1%} | "
              f"{r['decode_ms']:.1f} |")


def main(argv=None) -> int:
    """Parse arguments, run the benchmark, print the table and optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--clip-arch', default='ViT-B-16', help="open_clip architecture or 'tiny'")
    parser.add_argument('--clipseg', default='random',
                        help="'random' (rd64 size) or 'tiny' CLIPSeg configuration")
    parser.add_argument('--phrases', type=cli.count(1, len(PHRASES)), nargs='+', default=[1, 5])
    parser.add_argument('--repeats', type=cli.count(1), default=5)
    parser.add_argument('--size', type=cli.frame_size, default=(640, 480),
                        help='frame WIDTHxHEIGHT')
    parser.add_argument('--threshold', type=cli.number(0.0, 1.0), default=0.5)
    parser.add_argument('--instances-per-phrase', type=cli.count(1), default=2,
                        help='components CLIP re-scores per phrase in both paths (random maps '
                             'are noisy; a trained model finds the object and a look-alike)')
    parser.add_argument('--threads', type=cli.count(0), default=0,
                        help='torch threads (0: default)')
    parser.add_argument('--backends', nargs='+', default=list(DEFAULT_BACKENDS),
                        choices=list(BACKENDS), help='pipeline backends to time (torch always)')
    parser.add_argument('--cache-dir', help='ONNX graph cache (default: ~/.cache/clip_ros/onnx)')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda' (the GPU path)")
    parser.add_argument('--dtype', default='float32', help='float32, or float16 on CUDA')
    parser.add_argument('--json', help='also write the rows to this JSON file')
    args = parser.parse_args(argv)
    cli.writable(parser, '--cache-dir', args.cache_dir, folder=True)
    cli.writable(parser, '--json', args.json)
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = args.size
    rows = run(args.clip_arch, args.clipseg, args.phrases, args.repeats, width, height,
               args.threshold, args.instances_per_phrase, args.backends, args.cache_dir,
               args.device, args.dtype, torch.get_num_threads())
    where = (torch.cuda.get_device_name() if args.device.startswith('cuda')
             else f'cpu, {torch.get_num_threads()} threads')
    print_table(rows, f'{width}x{height} frame, CLIPSeg {args.clipseg}, CLIP {args.clip_arch}, '
                      f'{where}, {args.dtype}, torch {torch.__version__}')
    if args.device.startswith('cuda'):
        peak = torch.cuda.max_memory_allocated() / 2**20
        print(f'GPU memory: {peak:.0f} MiB peak allocated by torch')
        rows[-1]['gpu_peak_mib'] = peak
    decoding = decode_rows(scene_image(0, width, height)[0], max(args.repeats, 20))
    print()
    print_decode_table(decoding)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'grounding': rows, 'decoding': decoding}, f, indent=2)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
