"""Fit the policy head to recorded demonstrations (behaviour cloning) and plot the loss."""
import argparse
import json
import os

from clip_ros.learning.behaviour_cloning import fit_head, plot_bc_history
from clip_ros.learning.behaviour_cloning import load_demonstrations
from clip_ros.learning.training import TrainConfig
from clip_ros.policy.learned import HeadConfig
from clip_ros.tools.cli import count, number, writable


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--demos', default='demos/demos.npz', help='from record_demos')
    parser.add_argument('--out', default='demos/policy_head.pt', help='head checkpoint')
    parser.add_argument('--epochs', type=count(1), default=100)
    parser.add_argument('--batch-size', type=count(1), default=256)
    parser.add_argument('--lr', type=number(0.0, low_open=True), default=2e-3)
    parser.add_argument('--hidden', type=count(1), default=256)
    parser.add_argument('--seed', type=count(0), default=0)
    parser.add_argument('--gripper-lookahead', type=count(0), default=1,
                        help='label each tick with the gripper command this many ticks later')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    args = parser.parse_args(argv)
    if not os.path.isfile(args.demos):
        parser.error(f'--demos {args.demos} does not exist (record_demos writes one)')
    # The head, <out>_history.json and <out>_loss.png go to one folder, written after training:
    # made now if missing, as record_demos makes the folder of its demonstrations.
    writable(parser, '--out', args.out, make_parent=True)
    return args


def main(argv=None) -> None:
    """Train, save the head, history.json and the loss curve next to it."""
    args = parse_args(argv)
    arrays, meta = load_demonstrations(args.demos)
    arch = meta.get('clip_arch', HeadConfig.clip_arch)
    head_config = HeadConfig(int(arrays['image_emb'].shape[1]), arch,
                             'random' if arch == 'tiny' else '', hidden=args.hidden)
    config = TrainConfig(seed=args.seed, batch_size=args.batch_size, epochs=args.epochs,
                         lr=args.lr, warmup_steps=20, device=args.device,
                         progress=not args.no_progress)
    head, history = fit_head(arrays, head_config, config,
                             gripper_lookahead=args.gripper_lookahead)
    head.cpu().save(args.out)
    base = os.path.splitext(args.out)[0]
    with open(base + '_history.json', 'w', encoding='utf-8') as f:
        json.dump(history, f, indent=1)
    plot_bc_history(history, base + '_loss.png')
    last = history['epochs'][-1]
    print(f"saved {args.out}; last epoch train loss {last.get('train_loss', float('nan')):.4f}"
          f", val loss {last.get('val_loss', float('nan')):.4f}; curve {base}_loss.png")


if __name__ == '__main__':
    main()
