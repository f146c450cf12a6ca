"""
Evaluate grounding on held-out simulator scenes: accuracy, mask IoU, per-combination table.

Each visible object of each test scene is asked for as 'the <colour> <shape>' and 'pick up the
<colour> <shape>'; the command goes through parse_command as in the grounding node, and the
GroundingPipeline's top detection is correct when its box has IoU >= 0.5 with the object's box.
Mask IoU compares that detection's pixels with the object's mask (0 when nothing is found).
"""
import argparse
from collections import defaultdict
import json
import logging
from pathlib import Path
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from clip_ros.learning.training import pick_threads
from clip_ros.perception import tabletop_model as tabletop
from clip_ros.perception.geometry import box_iou, mask_iou
from clip_ros.perception.grounding import GroundingPipeline
from clip_ros.perception.registry import ModelLoadError
from clip_ros.policy.command import parse_command
from clip_ros.sim.dataset import HELD_OUT, render_scenes, split_seeds

TEMPLATES = ('the {}', 'pick up the {}')
TARGETS = {'seen_accuracy': 0.97, 'held_out_accuracy': 0.90, 'mean_mask_iou': 0.6}
BOX_IOU = 0.5
HELD_OUT_NAMES = tuple(f'{colour} {shape}' for colour, shape in HELD_OUT)


def target_phrase(text: str) -> str:
    """Return what the grounding node looks for in a command (its first target)."""
    targets = parse_command(text).targets
    return targets[0] if targets else text


def ground(pipeline, rgb, obj, phrase: str, threshold: float) -> dict:
    """Ground one phrase; score the top detection against the object's box and mask."""
    result = pipeline(rgb, [phrase], thresholds=threshold, with_heatmaps=False)
    if not result.detections:
        return {'correct': False, 'box_iou': 0.0, 'mask_iou': 0.0, 'found': False}
    top = result.detections[0]
    iou = float(box_iou(top.box, obj.box)[0, 0])
    return {'correct': iou >= BOX_IOU, 'box_iou': iou, 'found': True,
            'mask_iou': float(mask_iou((result.label_image == top.index + 1)[None],
                                       obj.mask[None])[0, 0])}


def evaluate(pipeline, scenes, threshold: float, min_pixels: int, progress=True) -> list:
    """Return one record per (scene, object, template)."""
    records = []
    for seed, (rgb, objects, _) in tqdm(scenes, desc='evaluate', disable=not progress):
        for obj in objects:
            if obj.mask.sum() < min_pixels:
                continue  # hidden behind others: no method can find it
            done = {}
            for template in TEMPLATES:
                phrase = target_phrase(template.format(obj.name))
                if phrase not in done:
                    done[phrase] = ground(pipeline, rgb, obj, phrase, threshold)
                records.append({'seed': seed, 'name': obj.name, 'template': template,
                                'phrase': phrase, 'held_out': obj.name in HELD_OUT_NAMES,
                                **done[phrase]})
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
        'per_template': {t: _mean(r['correct'] for r in records if r['template'] == t)
                         for t in TEMPLATES},
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


def load_pipeline(args) -> tuple:
    """Return (GroundingPipeline, model title) for the command-line model choice."""
    if args.clipseg:
        from clip_ros.perception.loading import load_clip, load_clipseg
        clip = load_clip(args.clip_arch, args.clip_pretrained, device=args.device)
        clipseg = load_clipseg(args.clipseg, device=args.device)
        title = f'{clipseg.name} + {clip.name}'
    else:
        path = None if args.model == tabletop.NAME else args.model
        clip = tabletop.load_tabletop_clip(path, device=args.device)
        clipseg = tabletop.load_tabletop_clipseg(path, device=args.device)
        title = clipseg.name
    return GroundingPipeline(clip, clipseg, rescore=args.rescore == 'on'), title


def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog='evaluate', description=__doc__.split('\n')[1])
    parser.add_argument('--model', default=tabletop.NAME,
                        help="'tabletop' (bundled) or a tabletop checkpoint directory")
    parser.add_argument('--clipseg', default='',
                        help='evaluate this CLIPSeg (hub id or directory) instead of --model')
    parser.add_argument('--clip-arch', default='ViT-B-16', help='CLIP with --clipseg')
    parser.add_argument('--clip-pretrained', default='openai', help='CLIP tag with --clipseg')
    parser.add_argument('--scenes', type=int, default=200, help='test-split scenes')
    parser.add_argument('--start', type=int, default=0, help='first scene of the test split')
    parser.add_argument('--width', type=int, default=640, help='render width (pixels)')
    parser.add_argument('--height', type=int, default=480, help='render height (pixels)')
    parser.add_argument('--threshold', type=float, default=0.4, help='pipeline threshold')
    parser.add_argument('--rescore', choices=('on', 'off'), default='on',
                        help='CLIP crop re-scoring in the pipeline')
    parser.add_argument('--min-pixels', type=int, default=64,
                        help='skip objects with fewer visible pixels (the min_area default)')
    parser.add_argument('--device', default='cpu', help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument('--threads', type=int, default=0,
                        help='torch CPU threads; 0: 2 on an idle machine, else 1')
    parser.add_argument('--json', default='evaluation.json', help='JSON output path')
    parser.add_argument('--png', default='evaluation.png', help='PNG output path')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    return parser.parse_args(argv)


def run(args) -> dict:
    """Evaluate; write the JSON and PNG; return the report."""
    torch.set_num_threads(pick_threads(args.threads))
    pipeline, title = load_pipeline(args)
    seeds = split_seeds('test', args.scenes, args.start)
    scenes = zip(seeds, render_scenes(seeds, args.width, args.height))
    start = time.monotonic()
    records = evaluate(pipeline, scenes, args.threshold, args.min_pixels, not args.quiet)
    summary, table = summarise(records)
    summary['seconds'] = round(time.monotonic() - start, 1)
    report = {'model': title, 'split': 'test', 'seeds': [seeds[0], seeds[-1]],
              'image_size': [args.width, args.height], 'threshold': args.threshold,
              'rescore': args.rescore, 'held_out_combinations': list(HELD_OUT_NAMES),
              'targets': TARGETS, 'summary': summary, 'per_combination': table,
              'records': records}
    Path(args.json).write_text(json.dumps(report, indent=1) + '\n', encoding='utf-8')
    write_png(summary, table, Path(args.png), title)
    return report


def main(argv=None) -> int:
    """Console entry point: print the table; exit 1 below target, 2 on a load error."""
    logging.basicConfig(level=logging.WARNING, format='%(name)s: %(message)s')
    args = parse_args(argv)
    try:
        report = run(args)
    except (ModelLoadError, ValueError) as e:
        print(f'evaluate: {e}', file=sys.stderr)
        return 2
    print(format_table(report['summary'], report['per_combination']))
    print(f'wrote {args.json} and {args.png}')
    return 0 if report['summary']['passed'] else 1


if __name__ == '__main__':
    sys.exit(main())
