"""Retrain the bundled `tabletop` model on simulator renders (one command, CPU, < 30 min)."""
import argparse
import json
import logging
import sys

from clip_ros.learning.losses import list_losses
from clip_ros.learning.tabletop_recipe import run
from clip_ros.perception import tabletop_model as tabletop
from clip_ros.perception.registry import ModelLoadError
from clip_ros.sim.conditions import RANDOMISED


def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog='train_tabletop', description=__doc__.strip())
    parser.add_argument('--out', default='',
                        help='checkpoint directory to write (default: the bundled model; with '
                             '--lora: out/tabletop_lora)')
    parser.add_argument('--curves', default='',
                        help='loss-curve PNG (default: <out>/training_curves.png)')
    parser.add_argument('--scenes', type=int, default=1500, help='training scenes to render')
    parser.add_argument('--steps', type=int, default=2400, help='optimiser steps')
    parser.add_argument('--minutes', type=float, default=27.0,
                        help='wall-time budget of the whole command; training ends early, with '
                             'its learning-rate schedule compressed, when it would overrun')
    parser.add_argument('--batch', type=int, default=16, help='scenes per step')
    parser.add_argument('--lr', type=float, default=2e-3, help='peak learning rate')
    parser.add_argument('--seed', type=int, default=0, help='initialisation and sampling seed')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch CPU threads (0: 2 on an idle machine, else 1); on shared, '
                             'busy cores two threads wait on each other and run several times '
                             'slower than one')
    parser.add_argument('--render-width', type=int, default=640, help='render width (pixels)')
    parser.add_argument('--render-height', type=int, default=480, help='render height (pixels)')
    parser.add_argument('--scene-mode', choices=(RANDOMISED, 'in_distribution'),
                        default=RANDOMISED,
                        help='how training scenes are drawn: randomised light, table, camera, '
                             'sizes, occluders and crowds (clip_ros.sim.conditions), or the '
                             'plain in-distribution scenes')
    parser.add_argument('--pool', default='',
                        help='file of rendered training scenes: loaded when it exists (same '
                             'scenes, mode and sizes), else rendered and written there, so '
                             'several seeds render once')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')
    parser.add_argument('--loss', choices=list_losses(), default='clip',
                        help='contrastive loss of the crops against their names')
    parser.add_argument('--lora', type=int, default=0, metavar='RANK',
                        help='fine-tune --init with LoRA adapters of this rank instead of '
                             'training from scratch (0: off)')
    parser.add_argument('--finetune', action='store_true',
                        help='train every weight of --init on from where it stands instead of '
                             'from scratch (a few hundred steps adapt it to new scenes)')
    parser.add_argument('--init', default='',
                        help='checkpoint directory --lora and --finetune start from (default: '
                             'the bundled model)')
    args = parser.parse_args(argv)
    if args.lora < 0:
        parser.error('--lora must be >= 0')
    if args.lora and args.finetune:
        parser.error('choose one of --lora and --finetune')
    args.out = args.out or ('out/tabletop_lora' if args.lora else str(tabletop.BUNDLED_DIR))
    return args


def main(argv=None) -> int:
    """Console entry point."""
    logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')
    args = parse_args(argv)
    try:
        summary = run(args)
    except (ModelLoadError, OSError, ValueError) as e:
        print(f'train_tabletop: {e}', file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
