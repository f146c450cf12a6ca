"""
Evaluate grounding on test-split simulator scenes: accuracy, mask IoU, absent-object rejection.

Models load and the pipeline is built as grounding_node builds them (same loaders, make_pipeline
with the node's defaults); each command goes through parse_command as in the node. A query is
one (scene, phrase) pair: 'the blue block' and 'pick up the blue block' parse to one phrase and
are asked once. The top detection is correct when its box has IoU >= 0.5 with the object's box;
mask IoU compares its pixels with the object's mask (0 when nothing is found).

Without --conditions: every visible object of each scene, with a per-combination table.
With --conditions: the shift benchmark (tools/shift_eval.py): scenes rendered under named
conditions, present and absent-object queries, rates with 95 % Wilson intervals.
"""
import argparse
from collections import defaultdict
import hashlib
import json
import logging
from pathlib import Path
import subprocess
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from clip_ros.learning.training import pick_threads
from clip_ros.perception import tabletop_model as tabletop
from clip_ros.perception.backends import BACKENDS, make_pipeline
from clip_ros.perception.grounding import AbstainRule
from clip_ros.perception.registry import ModelLoadError
from clip_ros.sim.dataset import render_scenes, split_seeds
from clip_ros.tools import shift_eval, shift_report
from clip_ros.tools.cli import count, number, writable
from clip_ros.tools.shift_eval import ground_query, HELD_OUT_NAMES, NODE_DEFAULTS, scene_queries

TARGETS = {'seen_accuracy': 0.97, 'held_out_accuracy': 0.90, 'mean_mask_iou': 0.6}


def evaluate(pipeline, scenes, threshold: float, min_pixels: int, progress=True) -> list:
    """Return one record per distinct (scene, phrase) query about a visible object."""
    records = []
    for seed, (rgb, objects, names) in tqdm(scenes, desc='evaluate', disable=not progress):
        for query in scene_queries(objects, names, (), seed, min_pixels, 0):
            records.append({'seed': seed, **ground_query(pipeline, rgb, query, threshold)})
    return records


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float('nan')


def summarise(records: list) -> tuple:
    """Return (summary figures incl. per template, per-combination table rows)."""
    seen = [r for r in records if not r['held_out']]
    held = [r for r in records if r['held_out']]
    summary = {
        'queries': len(records),
        'seen_accuracy': _mean(r['correct'] for r in seen),
        'held_out_accuracy': _mean(r['correct'] for r in held),
        'accuracy': _mean(r['correct'] for r in records),
        'mean_mask_iou': _mean(r['mask_iou'] for r in records),
        'seen_mask_iou': _mean(r['mask_iou'] for r in seen),
        'held_out_mask_iou': _mean(r['mask_iou'] for r in held),
    }
    summary['passed'] = all(summary[k] >= v for k, v in TARGETS.items())
    groups = defaultdict(list)
    for r in records:
        groups[r['name']].append(r)
    table = [{'combination': name, 'held_out': name in HELD_OUT_NAMES, 'queries': len(rows),
              'accuracy': _mean(r['correct'] for r in rows),
              'mask_iou': _mean(r['mask_iou'] for r in rows)}
             for name, rows in sorted(groups.items())]
    return summary, table


def format_table(summary: dict, table: list) -> str:
    """Return the per-combination table and the summary as printable text."""
    lines = [f"{'combination':<18} {'split':<9} {'queries':>7} {'accuracy':>9} {'mask IoU':>9}"]
    for row in table:
        split = 'held-out' if row['held_out'] else 'seen'
        lines.append(f"{row['combination']:<18} {split:<9} {row['queries']:>7} "
                     f"{row['accuracy']:>9.1%} {row['mask_iou']:>9.3f}")
    lines.append('')
    for key, target in TARGETS.items():
        value = summary[key]
        text = f'{value:.3f}' if 'iou' in key else f'{value:.1%}'
        mark = 'ok' if value >= target else 'BELOW TARGET'
        lines.append(f'{key:<18} {text:>9}  (target >= {target:g}) {mark}')
    lines.append(f"{'queries':<18} {summary['queries']:>9}")
    return '\n'.join(lines)


def write_png(summary: dict, table: list, path: Path, title: str) -> None:
    """Bar-plot accuracy and mask IoU per combination; held-out combinations hatched."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(max(8, 0.4 * len(table) + 2), 4.5))
    x = np.arange(len(table))
    for offset, key, colour in ((-0.2, 'accuracy', 'tab:blue'), (0.2, 'mask_iou', 'tab:orange')):
        bars = axis.bar(x + offset, [row[key] for row in table], 0.4, color=colour,
                        label=key.replace('_', ' '))
        for bar, row in zip(bars, table):
            bar.set_hatch('//' if row['held_out'] else '')
    axis.set_xticks(x, [row['combination'] + (' *' if row['held_out'] else '') for row in table],
                    rotation=70, fontsize=8)
    axis.set_ylim(0, 1.05)
    axis.axhline(TARGETS['seen_accuracy'], color='grey', lw=0.8, ls='--')
    axis.set_title(f"{title}: seen {summary['seen_accuracy']:.1%}, held-out (*) "
                   f"{summary['held_out_accuracy']:.1%}, mask IoU {summary['mean_mask_iou']:.3f}",
                   fontsize=10)
    axis.legend(loc='lower right')
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def load_models(args) -> tuple:
    """Return (ClipModel, ClipSegModel, title) with the loaders grounding_node uses."""
    from clip_ros.perception.loading import load_clip, load_clipseg
    if args.clipseg:
        clip = load_clip(args.clip_arch, args.clip_pretrained, device=args.device)
        clipseg = load_clipseg(args.clipseg, device=args.device)
        return clip, clipseg, f'{clipseg.name} + {clip.name}'
    path = '' if args.model == tabletop.NAME else args.model
    clip = load_clip(tabletop.NAME, path, device=args.device)
    clipseg = load_clipseg(path or tabletop.NAME, device=args.device)
    return clip, clipseg, clipseg.name


def node_pipeline(clip, clipseg, args, threads: int = 0):
    """Return the GroundingPipeline grounding_node builds with its default parameters."""
    return make_pipeline(clip, clipseg, backend=args.backend, threads=threads,
                         distractors=NODE_DEFAULTS['distractors'],
                         min_area=NODE_DEFAULTS['min_area'],
                         max_detections=NODE_DEFAULTS['max_detections'],
                         rescore=args.rescore == 'on',
                         max_candidates=max(64, NODE_DEFAULTS['max_detections']),
                         abstain=None if args.abstain == 'on' else AbstainRule.off(),
                         light_correction=args.light_correction == 'on',
                         shape_search=args.shape_search == 'on',
                         zoom_in=args.zoom == 'on')


def provenance(args) -> dict:
    """Return the source commit (and whether the tree differs from it) and the weights' hash."""
    root = Path(__file__).resolve().parents[2]
    info = {}
    try:
        def git(*cmd):
            return subprocess.run(['git', '-C', str(root), *cmd], capture_output=True,
                                  text=True, timeout=10, check=True).stdout.strip()
        info['commit'] = git('rev-parse', '--short', 'HEAD')
        info['uncommitted_changes'] = bool(git('status', '--porcelain', '--', 'clip_ros'))
    except (OSError, subprocess.SubprocessError):
        info['commit'] = None  # an installed copy without its git history
    if not args.clipseg:
        folder = tabletop.BUNDLED_DIR if args.model == tabletop.NAME else Path(args.model)
        weights = Path(folder) / tabletop.WEIGHTS_FILE
        if weights.is_file():
            info['weights_sha256'] = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    return info


def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog='evaluate', description=__doc__.split('\n')[1])
    parser.add_argument('--model', default=tabletop.NAME,
                        help="'tabletop' (bundled) or a tabletop checkpoint directory")
    parser.add_argument('--clipseg', default='',
                        help='evaluate this CLIPSeg (hub id or directory) instead of --model')
    parser.add_argument('--clip-arch', default='ViT-B-16', help='CLIP with --clipseg')
    parser.add_argument('--clip-pretrained', default='openai', help='CLIP tag with --clipseg')
    parser.add_argument('--conditions', nargs='+', default=None, metavar='NAME',
                        help="shift benchmark under these scene conditions ('all' or names, "
                             'space- or comma-separated)')
    parser.add_argument('--scenes', type=count(1), default=None,
                        help='test-split scenes (per condition with --conditions; default 200, '
                             f'with --conditions {shift_eval.DEFAULT_SCENES})')
    parser.add_argument('--seed', '--start', dest='start', type=count(0), default=0,
                        help='first scene of the test split (scene seed = 200000 + this)')
    parser.add_argument('--absent', type=count(0), default=shift_eval.ABSENT_PER_SCENE,
                        help='absent-object names asked per scene (with --conditions)')
    parser.add_argument('--width', type=count(8), default=640, help='render width (pixels)')
    parser.add_argument('--height', type=count(8), default=480, help='render height (pixels)')
    parser.add_argument('--threshold', type=number(0.0, 1.0), default=NODE_DEFAULTS['threshold'],
                        help="pipeline threshold (grounding_node's default)")
    parser.add_argument('--rescore', choices=('on', 'off'), default='on',
                        help='CLIP crop re-scoring in the pipeline')
    parser.add_argument('--abstain', choices=('on', 'off'), default='on',
                        help="the model's calibrated abstention rule (off: every candidate "
                             'counts, as grounding_node with abstain: false)')
    parser.add_argument('--light-correction', choices=('on', 'off'), default='on',
                        help="correct frames towards the model's light (off: as "
                             'grounding_node with light_correction: false)')
    parser.add_argument('--shape-search', choices=('on', 'off'), default='on',
                        help='look inside same-colour blobs for the named shape (off: the '
                             'blob as the map gives it)')
    parser.add_argument('--zoom', choices=('on', 'off'), default='on',
                        help='a second look at zoomed tiles for a phrase the frame left '
                             'unfound (off: one look)')
    parser.add_argument('--depth', choices=('on', 'off'), default='off',
                        help='with --conditions: grounding also sees each scene depth image, as '
                             'grounding_node does with publish_3d (white objects on a '
                             'washed-out table)')
    parser.add_argument('--depth-noise', type=number(0.0, 1.0), default=0.0, metavar='METRES',
                        help='with --depth on: Gaussian noise (sigma, metres) added to the depth '
                             'grounding sees, as a depth camera has (0.003: a few mm at 1 m)')
    parser.add_argument('--backend', choices=BACKENDS, default='torch', help='inference backend')
    parser.add_argument('--min-pixels', type=count(1), default=NODE_DEFAULTS['min_area'],
                        help='skip objects with fewer visible pixels (the min_area default)')
    parser.add_argument('--device', default='cpu', help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument('--threads', type=count(0), default=0,
                        help='torch CPU threads; 0: 2 on an idle machine, else 1')
    parser.add_argument('--out', default='',
                        help='output folder for <name>.json and <name>.png (--conditions: '
                             'default out/evaluate, name shift)')
    parser.add_argument('--json', default='evaluation.json', help='JSON output path')
    parser.add_argument('--png', default='evaluation.png', help='PNG output path')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    if args.conditions is not None:
        try:
            args.conditions = shift_eval.condition_names(args.conditions)
        except ValueError as e:
            parser.error(str(e))  # exits with status 2 and the usage
    if args.scenes is None:
        args.scenes = 200 if args.conditions is None else shift_eval.DEFAULT_SCENES
    # Checked now, not after the renders: where the figures go must be writable.
    if args.out or args.conditions is not None:
        writable(parser, '--out', args.out or 'out/evaluate', folder=True)
    else:
        writable(parser, '--json', args.json)
        writable(parser, '--png', args.png)
    return args


def output_paths(args, name: str) -> tuple:
    """Return the (JSON, PNG) paths: in --out as <name>.json/.png, else --json and --png."""
    if args.out or args.conditions is not None:
        folder = Path(args.out or 'out/evaluate')
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f'{name}.json', folder / f'{name}.png'
    return Path(args.json), Path(args.png)


def run(args) -> dict:
    """Evaluate; write the JSON and PNG; return the report."""
    torch.set_num_threads(pick_threads(args.threads))
    clip, clipseg, title = load_models(args)
    pipeline = node_pipeline(clip, clipseg, args)
    seeds = split_seeds('test', args.scenes, args.start)
    scenes = zip(seeds, render_scenes(seeds, args.width, args.height))
    start = time.monotonic()
    records = evaluate(pipeline, scenes, args.threshold, args.min_pixels, not args.quiet)
    summary, table = summarise(records)
    summary['seconds'] = round(time.monotonic() - start, 1)
    report = {'model': title, **provenance(args), 'split': 'test',
              'seeds': [seeds[0], seeds[-1]], 'image_size': [args.width, args.height],
              'threshold': args.threshold, 'rescore': args.rescore,
              'held_out_combinations': list(HELD_OUT_NAMES), 'targets': TARGETS,
              'summary': summary, 'per_combination': table, 'records': records}
    json_path, png_path = output_paths(args, 'evaluation')
    json_path.write_text(json.dumps(report, indent=1) + '\n', encoding='utf-8')
    write_png(summary, table, png_path, title)
    report['paths'] = [str(json_path), str(png_path)]
    return report


def run_conditions(args) -> dict:
    """Run the shift benchmark over args.conditions; write shift.json and shift.png."""
    torch.set_num_threads(pick_threads(args.threads))
    clip, clipseg, title = load_models(args)
    pipeline = node_pipeline(clip, clipseg, args)
    vocabulary = list(clip.vocabulary) or shift_eval.SIM_NAMES
    seeds = split_seeds('test', args.scenes, args.start)
    figures, records, seconds = {}, {}, {}
    for condition in args.conditions:
        start = time.monotonic()
        scenes = shift_eval.condition_scenes(condition, seeds, args.width, args.height,
                                             depth=True)
        progress = None if args.quiet else (
            lambda it, c=condition: tqdm(it, desc=c, total=len(seeds)))
        records[condition] = shift_eval.evaluate_scenes(
            pipeline, scenes, vocabulary, args.threshold, args.min_pixels, args.absent, progress,
            shift_eval.ROBOT_LIFT, args.depth == 'on', args.depth_noise)
        figures[condition] = shift_eval.summarise_condition(records[condition])
        seconds[condition] = round(time.monotonic() - start, 1)
    info = provenance(args)
    report = {'model': title, **info, 'split': 'test',
              'seeds': [seeds[0], seeds[-1]], 'image_size': [args.width, args.height],
              'threshold': args.threshold, 'rescore': args.rescore, 'backend': args.backend,
              'abstain': args.abstain, 'abstain_rule': dict(clip.abstain),
              'light_correction': args.light_correction, 'light': dict(clip.light),
              'shape_search': args.shape_search, 'zoom': args.zoom, 'depth': args.depth,
              'depth_noise': args.depth_noise,
              'min_pixels': args.min_pixels, 'absent_per_scene': args.absent,
              'held_out_combinations': list(HELD_OUT_NAMES), 'targets': shift_report.TARGETS,
              'conditions': figures, 'missed_targets': shift_report.missed_targets(figures),
              'seconds': seconds, 'records': records}
    json_path, png_path = output_paths(args, 'shift')
    json_path.write_text(json.dumps(report, indent=1) + '\n', encoding='utf-8')
    commit = info.get('commit')
    shift_report.write_chart(figures, png_path, f'{title} @ {commit}' if commit else title)
    json_path.with_suffix('.md').write_text(shift_report.markdown_table(figures) + '\n',
                                            encoding='utf-8')
    report['paths'] = [str(json_path), str(png_path), str(json_path.with_suffix('.md'))]
    return report


def main(argv=None) -> int:
    """Console entry point: print the figures; exit 1 below target, 2 on bad input."""
    logging.basicConfig(level=logging.WARNING, format='%(name)s: %(message)s')
    args = parse_args(argv)
    try:
        report = run(args) if args.conditions is None else run_conditions(args)
    except (ModelLoadError, ValueError) as e:
        print(f'evaluate: {e}', file=sys.stderr)
        return 2
    if args.conditions is None:
        print(format_table(report['summary'], report['per_combination']))
        passed = report['summary']['passed']
    else:
        print(shift_report.format_conditions(report['conditions']))
        for line in report['missed_targets']:
            print(f'BELOW TARGET {line}')
        passed = not report['missed_targets']
    print(f"wrote {', '.join(report['paths'])}")
    return 0 if passed else 1


if __name__ == '__main__':
    sys.exit(main())
