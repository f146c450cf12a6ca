"""Render a tabletop grounding dataset split from the MuJoCo sim: make_dataset --out DIR ..."""
import argparse
import sys
import time

from tqdm import tqdm

from clip_ros.sim.conditions import CONDITIONS, RANDOMISED
from clip_ros.sim.dataset import generate, SPLIT_SIZE, SPLITS
from clip_ros.tools.cli import frame_size, writable


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(prog='make_dataset', description=__doc__)
    parser.add_argument('--out', required=True, help='dataset root; the split gets a sub-folder')
    parser.add_argument('--split', choices=sorted(SPLITS), default='train')
    parser.add_argument('--count', type=int, default=1000, help='number of scenes')
    parser.add_argument('--start', type=int, default=0,
                        help=f'first scene index within the split (0..{SPLIT_SIZE - 1})')
    parser.add_argument('--size', type=frame_size, default=(224, 224), help='WxH pixels')
    parser.add_argument('--depth', action='store_true', help='also save depth.npy (metres)')
    parser.add_argument('--condition', choices=CONDITIONS + (RANDOMISED,),
                        default='in_distribution',
                        help='scene condition (clip_ros.sim.conditions): light, table, camera, '
                             'occlusion, sizes, crowds, or the randomised training mode')
    return parser


def main(argv=None) -> int:
    """Generate one split and print where its index went."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Made and checked now, so a root that cannot be written stops before any scene renders.
    writable(parser, '--out', args.out, folder=True)
    width, height = args.size
    started = time.monotonic()
    try:
        path = generate(args.out, args.split, args.count, width, height, args.start, args.depth,
                        progress=lambda seeds: tqdm(seeds, desc=args.split, unit='scene'),
                        condition=args.condition)
    except (ValueError, RuntimeError) as e:
        print(f'make_dataset: {e}', file=sys.stderr)
        return 2
    seconds = time.monotonic() - started
    print(f'{args.count} {args.split} scenes ({width}x{height}) in {seconds:.1f} s -> {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
