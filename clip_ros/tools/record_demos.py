"""Record demonstrations of the geometric policy in the MuJoCo sim for behaviour cloning."""
import argparse
import time

from clip_ros.learning.behaviour_cloning import record_demonstrations, save_demonstrations
from clip_ros.policy.learned import Embedder
from clip_ros.sim.dataset import HELD_OUT, SPLIT_SIZE, SPLITS
from clip_ros.sim.episodes import (
    EpisodeConfig, load_perception, PERCEPTION_CHOICES, sample_task)
from clip_ros.tools.cli import count, writable

# Demonstrations are training data: their scenes come from the train split, far past the
# scenes train_tabletop and train_shape render by default, so the frozen CLIP sees scenes new to
# it, as it does at evaluation. sample_task looks up to LOOKAHEAD seeds past each episode's first.
START = 50_000
STRIDE, LOOKAHEAD = 7, 200


def demo_tasks(first: int, episodes: int) -> list:
    """
    Return the demonstration tasks: pick and place in turn, from seed `first` on.

    No scene shows a held-out colour x shape combination (not as target, not as destination,
    not anywhere in the scene).
    """
    return [sample_task(first + STRIDE * k, ('pick', 'place')[k % 2], HELD_OUT, False,
                        tries=LOOKAHEAD, only_seen=True) for k in range(episodes)]


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--episodes', type=count(1), default=200, help='episodes (pick and place)')
    parser.add_argument('--out', default='demos/demos.npz', help='output .npz')
    parser.add_argument('--perception', choices=PERCEPTION_CHOICES, default='truth',
                        help="how targets are grounded ('truth': sim instance masks)")
    parser.add_argument('--clip', default='tabletop', choices=('tabletop', 'tiny'),
                        help="frozen CLIP for the embeddings: 'tabletop' (the bundled trained "
                             "model) or 'tiny' (random weights: the head then sees noise)")
    parser.add_argument('--seed', type=count(0), default=START,
                        help='first scene seed, in the train split (val and test scenes are '
                             'never demonstrated)')
    # The size evaluate_policy renders at, so the head sees the same image embeddings.
    parser.add_argument('--width', type=count(8), default=640)
    parser.add_argument('--height', type=count(8), default=480)
    parser.add_argument('--device', default='auto')
    args = parser.parse_args(argv)
    last = args.seed + STRIDE * (args.episodes - 1) + LOOKAHEAD
    if args.seed < SPLITS['train'] or last > SPLITS['train'] + SPLIT_SIZE:
        parser.error(f'--seed {args.seed} with --episodes {args.episodes} may use scene seeds '
                     f"up to {last - 1}, past the train split's {SPLITS['train']}.."
                     f"{SPLITS['train'] + SPLIT_SIZE - 1}")
    # The episodes take minutes: the .npz must be writable first (its folder is made if missing).
    writable(parser, '--out', args.out, make_parent=True)
    return args


def main(argv=None) -> None:
    """Record, then print what was kept."""
    from clip_ros.perception.loading import load_clip
    from clip_ros.sim.simulator import Simulator

    args = parse_args(argv)
    perception, clip = load_perception(args.perception, args.device, clip=args.clip)
    if args.clip != clip.name.split('/')[0]:
        clip = load_clip(args.clip, 'random' if args.clip == 'tiny' else '', args.device)
    tasks = demo_tasks(args.seed, args.episodes)
    start = time.monotonic()
    with Simulator(args.seed, args.width, args.height) as sim:
        arrays, stats = record_demonstrations(sim, tasks, perception, Embedder(clip),
                                              episode_config=EpisodeConfig())
    meta = {'clip': clip.name, 'clip_arch': args.clip, 'perception': args.perception,
            'size': [args.width, args.height], **stats}
    save_demonstrations(args.out, arrays, meta)
    print(f"kept {stats['kept']}/{stats['episodes']} successful episodes, {stats['rows']} "
          f'steps, in {time.monotonic() - start:.0f} s -> {args.out}')


if __name__ == '__main__':
    main()
