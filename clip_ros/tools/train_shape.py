"""
Train a tabletop model's shape head (perception.shape_head) and write it into the model.

Renders train-split scenes in the randomised mode (light, table, camera, scale, crowding,
occlusion) with the gripper at a random place, cuts a crop around every visible object and as
many background crops (object-sized boxes of table, floor, gripper and shadow with no object in
them: the head's "no object" class), trains the head on them with colours scrambled, reports its
accuracy on ground-truth crops of validation scenes under each scene condition (seen and
held-out colour x shape combinations apart, and the background crops it calls no object), and
writes `shape.safetensors` and the config block 'clip_ros' "shape" into the model directory.
"""
import argparse
import json
import logging
from pathlib import Path
import sys
import time

import numpy as np
import torch

from clip_ros.learning.shape_training import train_shape_head
from clip_ros.learning.training import pick_threads
from clip_ros.perception import tabletop_model as tabletop
from clip_ros.perception.shape_crops import store_crop
from clip_ros.perception.shape_head import centre_pixels
from clip_ros.sim.scene import GRIPPER_HOME
from clip_ros.tools.calibrate import write_config
from clip_ros.tools.cli import count, writable
from clip_ros.tools.shift_eval import condition_names, HELD_OUT_NAMES, visible_objects

SHAPES = ('block', 'ball', 'cylinder', 'bowl')
MIN_PIXELS = 30
BACKGROUND_OBJECT_SHARE = 0.05  # a background box holds at most this share of object pixels
GRIPPER_AWAY = (20.0, 20.0, 5.0)  # far outside every camera's view and light
GRIPPER_CHANGE = 30  # summed RGB change that marks the gripper's body or shadow
HOME_SHARE = 1 / 3
VAL_START = 500  # val scenes 100500..: never the ones calibrate uses (100000..)


def object_crops(split: str, condition: str, count: int, start: int = 0) -> tuple:
    """
    Return crops of rendered scenes: (object crops [N, S, S, 3], their names, background crops).

    The gripper hangs at a random place over each scene (a third of the time near its home
    pose, out of view with its shadow on the table), as it does while a robot works: its body
    and its shadow are background. Each scene gives one background crop per object crop
    (fewer where no box fits): a box the size of one of its objects, anywhere in the frame,
    over almost no object pixels; and up to two crops of the gripper's own pixels (its body
    or its shadow), whose dark, straight-edged patches a head trained only on random boxes
    takes for a black block or cylinder.
    """
    from clip_ros.sim.conditions import load_condition
    from clip_ros.sim.simulator import Simulator  # needs OpenGL
    from clip_ros.sim.splits import split_exclude, split_seeds
    crops, names, background = [], [], []
    rng = np.random.default_rng(start)
    with Simulator(0, 640, 480, show_gripper=True) as sim:
        for seed in split_seeds(split, count, start):
            load_condition(sim, seed, condition, split_exclude(split))
            sim.move_to(gripper_place(rng), instant=True)
            frame = sim.render(depth=False, instances=True)
            boxes = []
            for obj in visible_objects(frame):
                if obj.mask.sum() >= MIN_PIXELS and obj.name.split()[-1] in SHAPES:
                    crops.append(store_crop(frame.rgb, obj.box))
                    names.append(obj.name)
                    boxes.append(obj.box)
            background += [store_crop(frame.rgb, box)
                           for box in empty_boxes(frame.instances > 0, boxes, rng)]
            sim.move_to(GRIPPER_AWAY, instant=True)
            changed = gripper_pixels(frame.rgb, sim.render(depth=False).rgb)
            background += [store_crop(frame.rgb, box) for box in
                           gripper_boxes(changed, frame.instances > 0, boxes, rng)]
    return np.stack(crops), names, np.stack(background)


def gripper_place(rng) -> tuple:
    """Return a random gripper position: over the table, or near home a third of the time."""
    if rng.random() < HOME_SHARE:  # where a robot waits between commands: its shadow is seen most
        return tuple(np.add(GRIPPER_HOME, rng.uniform(-0.05, 0.05, 3)))
    return rng.uniform(-0.3, 0.3), rng.uniform(-0.25, 0.25), rng.uniform(0.08, 0.45)


def empty_boxes(objects: np.ndarray, sizes: list, rng, tries: int = 20) -> list:
    """Return one box per box of `sizes`: same size, placed where `objects` (bool) is empty."""
    height, width = objects.shape
    found = []
    for x0, y0, x1, y1 in sizes:
        w, h = (max(8.0, v * rng.uniform(0.7, 1.4)) for v in (x1 - x0, y1 - y0))
        for _ in range(tries):
            left, top = rng.uniform(0, max(1.0, width - w)), rng.uniform(0, max(1.0, height - h))
            window = objects[int(top):int(top + h) + 1, int(left):int(left + w) + 1]
            if window.size and window.mean() <= BACKGROUND_OBJECT_SHARE:
                found.append((left, top, left + w, top + h))
                break
    return found


def gripper_pixels(with_gripper: np.ndarray, without: np.ndarray) -> np.ndarray:
    """Return where two renders of one scene differ: the gripper's body and its shadow."""
    change = np.abs(with_gripper.astype(np.int16) - without.astype(np.int16)).sum(axis=2)
    return change > GRIPPER_CHANGE


def gripper_boxes(changed: np.ndarray, objects: np.ndarray, sizes: list, rng) -> list:
    """
    Return up to two boxes tight around gripper pixels (`changed`) with almost no object.

    One box bounds all of them; the other bounds those inside an object-sized window (a size
    of `sizes`) centred on one of them at random, as a part of a shadow would be segmented.
    """
    keep = changed & ~objects
    if keep.sum() < MIN_PIXELS or not sizes:
        return []
    ys, xs = np.nonzero(keep)
    found = []
    for part in (False, True):
        inside = np.ones(len(xs), bool)
        if part:
            x0, y0, x1, y1 = sizes[rng.integers(len(sizes))]
            pick = rng.integers(len(xs))
            inside = ((np.abs(xs - xs[pick]) <= (x1 - x0) / 2)
                      & (np.abs(ys - ys[pick]) <= (y1 - y0) / 2))
        if inside.sum() < MIN_PIXELS:
            continue
        box = (xs[inside].min(), ys[inside].min(), xs[inside].max() + 1, ys[inside].max() + 1)
        window = objects[box[1]:box[3], box[0]:box[2]]
        if window.mean() <= BACKGROUND_OBJECT_SHARE:
            found.append(tuple(float(v) for v in box))
    return found


def accuracy(head, crops: np.ndarray, names: list, background: np.ndarray) -> dict:
    """Return the head's top-1 accuracy on stored crops, seen and held-out apart."""
    with torch.no_grad():
        logits = head.net(centre_pixels(crops, head.pad, head.size))
        empty = head.net(centre_pixels(background, head.pad, head.size))
    right = logits.argmax(dim=1).numpy() == [head.shapes.index(n.split()[-1]) for n in names]
    held = np.array([n in HELD_OUT_NAMES for n in names])
    # Background crops: how many the head calls no object (a head without that class: none).
    called_empty = empty.argmax(dim=1).numpy() == len(head.shapes)
    return {'crops': len(names), 'seen': float(right[~held].mean()),
            'held_out': float(right[held].mean()) if held.any() else None,
            'background_crops': len(background), 'background': float(called_empty.mean())}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog='train_shape', description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default=tabletop.NAME,
                        help="'tabletop' (bundled) or a tabletop checkpoint directory")
    parser.add_argument('--scenes', type=count(1), default=700, help='randomised train scenes')
    parser.add_argument('--steps', type=count(1), default=2000, help='training steps (batch 64)')
    parser.add_argument('--seed', type=count(0), default=0)
    parser.add_argument('--val-scenes', type=count(1), default=30,
                        help='validation scenes per condition')
    parser.add_argument('--conditions', nargs='+', default=['all'],
                        help="validation conditions ('all' or names)")
    parser.add_argument('--threads', type=count(0), default=0,
                        help='torch CPU threads; 0: 2 on an idle machine, else 1')
    parser.add_argument('--dry-run', action='store_true', help='report, write nothing')
    args = parser.parse_args(argv)
    try:
        args.conditions = condition_names(args.conditions)
    except ValueError as e:
        parser.error(f'--conditions: {e}')
    args.directory = Path(tabletop.checkpoint_dir(args.model) or tabletop.BUNDLED_DIR)
    if not tabletop.is_tabletop_dir(args.directory):
        parser.error(f"--model '{args.directory}' is not a tabletop model directory "
                     "(no config.json with 'clip_ros')")
    if not args.dry_run:  # the head and its config block are written there after training
        writable(parser, '--model', args.directory, folder=True)
    return args


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as e:  # main returns its status: 2 for a bad argument
        return e.code
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    log = logging.getLogger('train_shape')
    conditions, directory = args.conditions, args.directory
    torch.set_num_threads(pick_threads(args.threads))
    start = time.time()
    crops, names, background = object_crops('train', 'randomised', args.scenes)
    log.info('%d object and %d background crops of %d train scenes (%.0f s)', len(names),
             len(background), args.scenes, time.time() - start)
    labels = np.array([SHAPES.index(n.split()[-1]) for n in names]
                      + [len(SHAPES)] * len(background))  # the last class: no object
    head = train_shape_head(np.concatenate([crops, background]), labels, SHAPES,
                            steps=args.steps, seed=args.seed, background=True,
                            log=lambda step, loss: log.info('step %d loss %.3f', step, loss))
    minutes = (time.time() - start) / 60
    report = {}
    for condition in conditions:
        report[condition] = accuracy(head, *object_crops('val', condition, args.val_scenes,
                                                         VAL_START))
        row = report[condition]
        log.info('%-24s seen %.1f %%  held-out %s  (%d crops)  background %.1f %% (%d)',
                 condition, 100 * row['seen'],
                 'n/a' if row['held_out'] is None else f"{100 * row['held_out']:.1f} %",
                 row['crops'], 100 * row['background'], row['background_crops'])
    if args.dry_run:
        print(json.dumps(report, indent=2))
        return 0
    head.save(directory)
    block = {**head.config(), 'training': {
        'scenes': args.scenes, 'crops': len(names), 'background_crops': len(background),
        'steps': args.steps, 'seed': args.seed,
        'minutes': round(minutes, 1),
        'command': 'train_shape ' + ' '.join(argv if argv is not None else sys.argv[1:])},
        'validation': {'start': VAL_START, 'scenes': args.val_scenes, 'accuracy': report}}
    write_config(directory, 'shape', block)
    log.info('wrote %s and the "shape" block of %s', directory / 'shape.safetensors',
             directory / tabletop.CONFIG_FILE)
    return 0


if __name__ == '__main__':
    sys.exit(main())
