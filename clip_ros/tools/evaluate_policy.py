"""
Evaluate the policies in closed loop: N random scenes and paraphrased commands per verb.

Verbs: pick, place, and absent (a pick naming a vocabulary object that is not in the scene:
success = no motion and a rejected "not found" status). Prints a success table (overall, per
verb, seen vs held-out colour x shape targets, 95 % Wilson intervals) for the geometric policy
and, given a trained head, the learned one; how often the policy's own report (succeeded after
its look again, or not) agrees with the simulator's judgement; per-stage latency. Writes the
figures and every episode to OUT/evaluation.json and the first episode of each policy as a PNG
strip and a GIF.
"""
import argparse
import json
import os
import time

import numpy as np

from clip_ros.perception.stats import wilson_interval
from clip_ros.policy.geometric import GeometricPolicy
from clip_ros.sim.dataset import HELD_OUT, SPLIT_SIZE, SPLITS
from clip_ros.sim.episodes import (
    EpisodeConfig, load_perception, PERCEPTION_CHOICES, run_episode, sample_absent_task,
    sample_task, save_strip, STAGES)
from clip_ros.sim.scene import COLOURS, SHAPES
from clip_ros.tools.cli import count, number, writable

VERBS = ('pick', 'place', 'absent')


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--episodes', type=count(1), default=20, help='episodes per verb')
    parser.add_argument('--verbs', nargs='+', default=list(VERBS), choices=VERBS,
                        help='absent: a pick naming an object that is not in the scene')
    parser.add_argument('--perception', choices=PERCEPTION_CHOICES, default='tabletop',
                        help="grounding models, or 'truth' for the sim's instance masks")
    parser.add_argument('--head', default='', help='policy head checkpoint to compare')
    parser.add_argument('--only-head', action='store_true',
                        help='run only the learned head (the geometric figures are known)')
    parser.add_argument('--seed', type=count(0), default=0,
                        help='offset of the scene seeds within the split')
    parser.add_argument('--split', choices=sorted(SPLITS), default='test',
                        help='scene split (the tabletop model and the demonstrations use '
                             'train, thresholds val)')
    parser.add_argument('--held-out-share', type=number(0.0, 1.0), default=0.5,
                        help='share of episodes whose target is a held-out colour x shape')
    parser.add_argument('--perceive-every', type=count(1), default=1,
                        help='ground every n-th control tick')
    parser.add_argument('--threshold', type=number(0.0, 1.0), default=0.4,
                        help='grounding threshold')
    parser.add_argument('--grounding-depth', choices=('on', 'off'), default='on',
                        help='ground with the rendered depth too, as grounding_node with '
                             'publish_3d in the demo graph')
    # The tabletop grounding model was trained on 640x480 renders; at 160x120 small objects
    # fall below its detection size.
    parser.add_argument('--width', type=count(8), default=640)
    parser.add_argument('--height', type=count(8), default=480)
    parser.add_argument('--device', default='auto')
    parser.add_argument('--out', default='eval', help='folder for the episode strip and GIF')
    args = parser.parse_args(argv)
    if args.head and not os.path.isfile(args.head):
        parser.error(f'--head {args.head} does not exist (train_policy_head writes one)')
    writable(parser, '--out', args.out, folder=True)
    return args


def make_tasks(args) -> list:
    """
    Return the task list: the verbs interleaved, held-out targets at the given share.

    Absent-object commands get scenes of their own, so the pick and place tasks are the same
    with or without them.
    """
    verbs = [v for v in args.verbs if v != 'absent']
    count = args.episodes * len(verbs)
    # Training scenes never show a held-out combination: neither may the train split's tasks.
    train = args.split == 'train'
    held = np.random.default_rng(args.seed).random(count) < (0.0 if train else args.held_out_share)
    first = SPLITS[args.split]
    # sample_task looks up to 200 seeds ahead for a fitting scene: stay inside the split.
    seeds = [first + (args.seed + 7919 * k) % (SPLIT_SIZE - 200)
             for k in range(count + args.episodes)]
    tasks = [sample_task(seed, verbs[k % len(verbs)], HELD_OUT, bool(held[k]), only_seen=train)
             for k, seed in enumerate(seeds[:count])]
    if 'absent' in args.verbs:
        names = [f'{colour} {shape}' for colour in COLOURS for shape in SHAPES]
        absent = [sample_absent_task(seed, names) for seed in seeds[count:]]
        per = len(verbs)
        tasks = [t for k in range(args.episodes)
                 for t in tasks[per * k:per * (k + 1)] + absent[k:k + 1]]
    return tasks


def share(results, key=lambda r: r.success) -> dict:
    """Return {k, n, rate, low, high} of `key` over episode results (95% Wilson interval)."""
    wins, n = sum(bool(key(r)) for r in results), len(results)
    low, high = wilson_interval(wins, n) if n else (0.0, 1.0)
    return {'k': wins, 'n': n, 'rate': wins / n if n else None, 'low': low, 'high': high}


def rate(results, key=lambda r: r.success) -> str:
    """Return 'k/n pct [95% Wilson interval]' for episode results, or '-'."""
    if not results:
        return '-'
    s = share(results, key)
    return (f"{s['k']}/{s['n']} {100 * s['rate']:3.0f}% "
            f"[{100 * s['low']:.0f}-{100 * s['high']:.0f}]")


def success_table(runs: dict, verbs) -> str:
    """Format {policy: [EpisodeResult]} as rows per policy and verb, columns by split."""
    header = (f"{'policy':<10} {'verb':<8} {'seen':>20} {'held-out':>20} {'all':>20} "
              f"{'report agrees':>20}")
    lines = [header, '-' * len(header)]
    for policy, results in runs.items():
        for verb in list(verbs) + ['overall']:
            rows = [r for r in results if verb == 'overall' or r.task.verb == verb]
            seen = [r for r in rows if not r.task.held_out]
            held = [r for r in rows if r.task.held_out]
            lines.append(f'{policy:<10} {verb:<8} {rate(seen):>20} {rate(held):>20} '
                         f'{rate(rows):>20} {rate(rows, lambda r: r.agrees):>20}')
    return '\n'.join(lines)


def summary(runs: dict, verbs) -> dict:
    """Return the figures and every episode as a JSON-ready dict."""
    out = {}
    for policy, results in runs.items():
        table = {}
        for verb in list(verbs) + ['overall']:
            rows = [r for r in results if verb == 'overall' or r.task.verb == verb]
            table[verb] = {
                'success': share(rows),
                'seen': share([r for r in rows if not r.task.held_out]),
                'held_out': share([r for r in rows if r.task.held_out]),
                'report_agrees': share(rows, lambda r: r.agrees),
                'moved': share(rows, lambda r: r.moved)}
        episodes = [{'seed': r.task.seed, 'verb': r.task.verb, 'command': r.task.command,
                     'target': r.task.target, 'destination': r.task.destination,
                     'held_out': r.task.held_out, 'distractor': r.task.distractor,
                     'success': r.success, 'status': r.status, 'detail': r.detail,
                     'agrees': r.agrees, 'moved': r.moved, 'sim_time': r.sim_time}
                    for r in results]
        out[policy] = {'verbs': table, 'episodes': episodes}
    return out


def latency_table(runs: dict) -> str:
    """Format per-stage latency (ms per call: mean and 95th percentile) per policy."""
    lines = [f"{'policy':<10} " + ' '.join(f'{s:>14}' for s in STAGES)]
    for policy, results in runs.items():
        cells = []
        for stage in STAGES:
            values = [v for r in results for v in r.latency.get(stage, [])]
            cells.append(f'{1e3 * np.mean(values):6.1f}/{1e3 * np.percentile(values, 95):6.1f}'
                         if values else '-')
        lines.append(f'{policy:<10} ' + ' '.join(f'{c:>14}' for c in cells))
    return '\n'.join(lines) + '\n(ms per call: mean/p95)'


def failures(runs: dict, limit: int = 12) -> str:
    """List failed episodes and those whose report disagrees with the simulator."""
    lines = []
    for policy, results in runs.items():
        for r in [r for r in results if not (r.success and r.agrees)][:limit]:
            mark = '' if r.agrees else ' [report disagrees]'
            lines.append(f'  {policy}: seed {r.task.seed} {r.task.verb} {r.task.command!r}: '
                         f'sim {"success" if r.success else "failure"}, {r.status} '
                         f'({r.detail}){mark}')
    return '\n'.join(lines)


def policies(args, clip) -> dict:
    """Return {name: factory} for the geometric policy and, with --head, the learned one."""
    made = {} if args.only_head and args.head else {'geometric': GeometricPolicy}
    if args.head:
        from clip_ros.perception.loading import load_clip
        from clip_ros.policy.learned import Embedder, LearnedPolicy, PolicyHead

        head = PolicyHead.load(args.head)
        arch = head.config.clip_arch
        if clip.name.split('/')[0] != arch:
            clip = load_clip(arch, head.config.clip_pretrained, args.device)
        embedder = Embedder(clip)
        made['learned'] = lambda: LearnedPolicy(head, embedder)
    return made


def evaluate(args, sim, perception, factories: dict, tasks: list) -> dict:
    """Run every task under every policy; save each policy's first episode."""
    runs = {}
    os.makedirs(args.out, exist_ok=True)
    for name, factory in factories.items():
        runs[name] = []
        start = time.monotonic()
        for k, task in enumerate(tasks):
            config = EpisodeConfig(perceive_every=args.perceive_every,
                                   snapshot_every=3 if k == 0 else 0,
                                   with_image=name != 'geometric')
            result = run_episode(sim, task, factory(), perception, config)
            runs[name].append(result)
            print(f'{name} {k + 1}/{len(tasks)} {task.verb} seed {task.seed} '
                  f'{task.command!r}: simulator {"success" if result.success else "failure"}'
                  f', policy {result.status} ({result.detail})', flush=True)
            if k == 0:
                base = os.path.join(args.out, f'{name}_episode')
                save_strip(result.frames, base + '.png')
                save_strip(result.frames, base + '.gif')
                print(f'{name}: {task.command!r} -> {result.status}; saved {base}.png/.gif')
        print(f'{name}: {len(tasks)} episodes in {time.monotonic() - start:.0f} s')
    return runs


def main(argv=None) -> int:
    """Run the evaluation and print the tables; exit status 2 on bad arguments."""
    from clip_ros.sim.simulator import Simulator

    args = parse_args(argv)
    perception, clip = load_perception(args.perception, args.device, args.threshold,
                                       depth=args.grounding_depth == 'on')
    tasks = make_tasks(args)
    with Simulator(args.seed, args.width, args.height) as sim:
        runs = evaluate(args, sim, perception, policies(args, clip), tasks)
    depth = ' with depth' if getattr(perception, 'depth', False) else ''
    print(f'\nperception: {perception.name}{depth}; {len(tasks)} episodes per policy; held-out '
          f'colour x shape: {", ".join(" ".join(c) for c in HELD_OUT)}\n')
    print(success_table(runs, args.verbs))
    print()
    print(latency_table(runs))
    lines = failures(runs)
    if lines:
        print('\nfailures and disagreements:\n' + lines)
    path = os.path.join(args.out, 'evaluation.json')
    with open(path, 'w') as f:
        json.dump({'perception': perception.name + depth, 'split': args.split, 'seed': args.seed,
                   'episodes_per_verb': args.episodes, 'size': [args.width, args.height],
                   'policies': summary(runs, args.verbs)}, f, indent=1)
    print(f'\nwrote {path}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
