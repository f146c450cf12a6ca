"""
Crop classification: every visible object's box, cut from rendered scenes, among the model's names.

`evaluate_crops --conditions in_distribution light_colour --scenes 40` renders test-split scenes
(`--split val` for choosing) under each condition, cuts each visible object's ground-truth box
(what a detector hands on) and classifies the crop among the model's names the way
clip_classifier_node does (`a photo of a {}.`; light correction off, as it should be for
crops), once with CLIP alone and once composed (perception.classify: CLIP's colour x the shape
head's shape, for a model that has one). Prints seen and held-out combinations' top-1
accuracy with 95 % Wilson intervals per condition; `--json` writes the figures.
"""
import argparse
import json

import numpy as np
import torch

from clip_ros.perception import tabletop_model as tabletop
from clip_ros.perception.classify import ZeroShotClassifier
from clip_ros.perception.light import correction_for
from clip_ros.perception.loading import load_clip
from clip_ros.perception.registry import ModelLoadError
from clip_ros.perception.stats import proportion
from clip_ros.tools.cli import count, writable
from clip_ros.tools.shift_eval import condition_names, HELD_OUT_NAMES, visible_objects

MIN_SIDE = 4  # pixels: a box narrower than this is no crop


def crops(split: str, condition: str, scenes: int, start: int = 0) -> list:
    """Return (name, RGB crop of its box) of every visible object of the scenes."""
    from clip_ros.sim.conditions import condition_frames
    from clip_ros.sim.simulator import Simulator  # needs OpenGL
    found = []
    with Simulator(0, 640, 480, show_gripper=False) as sim:
        for _, _, frame in condition_frames(sim, split, condition, scenes, start):
            for obj in visible_objects(frame):
                x0, y0, x1, y1 = (int(round(v)) for v in obj.box)
                if min(x1 - x0, y1 - y0) >= MIN_SIDE:
                    found.append((obj.name, np.ascontiguousarray(frame.rgb[y0:y1, x0:x1])))
    return found


def accuracy(clip, items: list, compose: bool, light: bool = True) -> dict:
    """Return {'seen', 'held_out'} proportions of crops whose top class is their name."""
    names = list(clip.vocabulary)
    classifier = ZeroShotClassifier(clip, names, compose=compose)
    correct = correction_for(clip, light)
    right = {'seen': [], 'held_out': []}
    for name, rgb in items:
        probs = classifier(correct(rgb) if correct is not None else rgb)
        kind = 'held_out' if name in HELD_OUT_NAMES else 'seen'
        right[kind].append(names[int(np.argmax(probs))] == name)
    return {kind: proportion(sum(v), len(v)) for kind, v in right.items()}


def main(argv=None) -> int:
    """Classify the crops of each condition and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--model', default='tabletop',
                        help="'tabletop' (bundled) or a tabletop checkpoint directory")
    parser.add_argument('--conditions', nargs='+', default=['in_distribution'], metavar='NAME',
                        help="scene conditions ('all' or names)")
    parser.add_argument('--split', default='test', choices=('val', 'test'))
    parser.add_argument('--scenes', type=count(1), default=40, help='scenes per condition')
    parser.add_argument('--seed', '--start', dest='start', type=count(0), default=0,
                        help='first scene of the split')
    # Off: light correction reads a whole scene's statistics; on a crop it takes the object's
    # own colour for a lamp's (val in_distribution: composed 97 % -> 25 % with it on).
    parser.add_argument('--light-correction', choices=('on', 'off'), default='off')
    parser.add_argument('--json', default='', help='write the figures here')
    args = parser.parse_args(argv)
    try:
        conditions = condition_names(args.conditions)
    except ValueError as e:
        parser.error(str(e))
    writable(parser, '--json', args.json)
    torch.set_num_threads(1)
    # As evaluate loads it: the bundled model by name, a checkpoint folder by path.
    path = '' if args.model == tabletop.NAME else args.model
    try:
        clip = load_clip(tabletop.NAME, path, device='cpu')
    except (ModelLoadError, ValueError) as e:
        parser.error(f'--model {args.model}: {e}')
    if not clip.vocabulary:
        parser.error(f'model {args.model!r} has no vocabulary of names to classify among')
    figures = {}
    print('| condition | crops (seen / held-out) | CLIP seen | CLIP held-out | composed seen | '
          'composed held-out |')
    print('|---|---|---|---|---|---|')
    for condition in conditions:
        items = crops(args.split, condition, args.scenes, args.start)
        light = args.light_correction == 'on'
        rows = {mode: accuracy(clip, items, mode == 'composed', light)
                for mode in ('clip', 'composed')}
        figures[condition] = rows
        cells = [f"{r[k]['rate']:.1%} ({r[k]['low']:.0%}–{r[k]['high']:.0%})"
                 for r in rows.values() for k in ('seen', 'held_out')]
        counts = f"{rows['clip']['seen']['n']} / {rows['clip']['held_out']['n']}"
        print(f'| {condition} | {counts} | ' + ' | '.join(cells) + ' |', flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'model': args.model, 'split': args.split, 'scenes': args.scenes,
                       'start': args.start, 'light_correction': args.light_correction,
                       'conditions': figures}, f, indent=1)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
