"""
Calibrate a grounding model's abstention rule on validation-split scenes (never test).

Renders validation scenes (under the named scene conditions, clip_ros.sim.conditions), asks
for every visible object (present queries) and for vocabulary names that are not in the scene
(absent queries, drawn as the shift benchmark draws them: a scene colour with another shape,
held-out combinations, others), and records every candidate instance the pipeline finds with
its evidence (perception.grounding.Evidence) with the rule off. It then sweeps the rule's
thresholds (CLIP margin, CLIPSeg peak, the shape head's probability when the model has one) and
picks, among the rules that reject at least --absent-target of the absent queries while
rejecting at most --present-limit of the present ones, the rule that meets both targets under
the most scene conditions, then the absent target under the most (the targets hold per
condition, and the rule tuned to the pooled figures alone let 12 % of absent objects through
under a low camera), then the one wrongly rejecting the fewest present queries;
when no rule reaches both, the rule that wrongly rejects the fewest present queries among
those whose (absent rejected - present rejected) is within one standard error of the largest:
differences inside the sampling noise do not justify refusing more objects that are there, each
a robot's task lost, while an absent object let through still meets the policy's shape check
and look again. The values go into the model's config.json 'clip_ros' block, key "abstain"
(other keys kept), with the figures they gave.

First it measures how the model's training frames look (--light-scenes plain train-split
scenes; perception.light.LightReference) and writes that as key "light", so the pipeline
light-corrects frames, the calibration's included.
"""
import argparse
from collections import defaultdict
import json
import logging
import math
from pathlib import Path
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from clip_ros.learning.training import pick_threads
from clip_ros.perception import tabletop_model as tabletop
from clip_ros.perception.geometry import box_iou
from clip_ros.perception.grounding import AbstainRule, GroundingPipeline
from clip_ros.perception.registry import ModelLoadError
from clip_ros.perception.stats import proportion
from clip_ros.tools.cli import count, number
from clip_ros.tools.shift_eval import (
    ABSENT_KINDS, BOX_IOU, condition_names, HELD_OUT_NAMES, NODE_DEFAULTS, scene_queries,
    visible_objects)

SPLIT = 'val'
ABSENT_TARGET = 0.95   # share of absent-object queries rejected
PRESENT_LIMIT = 0.03   # share of present-object queries wrongly rejected
PEAKS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
# min_shape values swept (with a head)
SHAPE_LEVELS = (0.0, 0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
MARGIN_RANGE = (-15.0, 15.0)  # logit units; the sweep steps through the observed margins


def val_scenes(conditions: list, count: int, start: int, width: int, height: int):
    """Yield (condition, seed, rgb, visible SceneObjects, every name) of validation scenes."""
    from clip_ros.sim.conditions import condition_frames
    from clip_ros.sim.simulator import Simulator  # needs OpenGL
    with Simulator(0, width, height, show_gripper=False) as sim:
        for condition in conditions:
            for seed, _, frame in condition_frames(sim, SPLIT, condition, count, start):
                yield condition, seed, frame.rgb, visible_objects(frame), \
                    [o.name for o in frame.objects]


def light_reference(count: int, width: int, height: int):
    """Return the LightReference of `count` plain train-split renders (the model's light)."""
    from clip_ros.perception.light import LightReference
    from clip_ros.sim.conditions import condition_frames
    from clip_ros.sim.simulator import Simulator  # needs OpenGL
    with Simulator(0, width, height, show_gripper=False) as sim:
        return LightReference.of_frames(
            [f.rgb for _, _, f in condition_frames(sim, 'train', 'in_distribution', count)])


def collect(pipeline, scenes, vocabulary, threshold: float, min_pixels: int, absent: int,
            progress=None) -> list:
    """
    Return one record per distinct query with every candidate's evidence (rule off).

    A candidate is [margin, peak, score, correct, shape]: correct when its box has IoU >= BOX_IOU
    with an object of the asked name; shape the shape head's probability (1.0 without one).
    """
    records = []
    for condition, seed, rgb, objects, names in (progress(scenes) if progress else scenes):
        for query in scene_queries(objects, names, vocabulary, seed, min_pixels, absent):
            frame = pipeline.candidates([(rgb, [query.phrase], threshold)])[0]
            truth = np.array([t.box for t in query.targets]).reshape(-1, 4)
            candidates = []
            for region, evidence in zip(frame.regions, frame.evidence):
                correct = bool(len(truth) and box_iou(region.box, truth).max() >= BOX_IOU)
                score = math.sqrt(evidence.clip_prob * evidence.seg_mean) \
                    if not math.isnan(evidence.clip_prob) else evidence.seg_mean
                shape = 1.0 if math.isnan(evidence.shape_prob) else evidence.shape_prob
                candidates.append([_finite(evidence.margin), evidence.seg_peak, score, correct,
                                   round(shape, 4)])
            records.append({'condition': condition, 'seed': int(seed), 'phrase': query.phrase,
                            'present': query.present, 'absent_kind': query.absent_kind,
                            'held_out': query.name in HELD_OUT_NAMES,
                            'language': frame.rejected.get(query.phrase, ''),
                            'candidates': candidates})
    return records


def _finite(margin: float) -> float:
    """Clip a margin into MARGIN_RANGE (inf: nothing competed)."""
    return float(min(max(margin, MARGIN_RANGE[0]), MARGIN_RANGE[1]))


def _shape(candidate) -> float:
    return candidate[4] if len(candidate) > 4 else 1.0  # no shape evidence passes


def accepted(record: dict, rule: AbstainRule) -> list:
    """Return the record's candidates the rule accepts."""
    return [c for c in record['candidates'] if c[0] >= rule.min_margin
            and c[1] >= rule.min_peak and _shape(c) >= rule.min_shape]


def sweep(records: list, peaks=PEAKS, shapes=None,
          targets=(ABSENT_TARGET, PRESENT_LIMIT)) -> list:
    """
    Return one row per (min_peak, min_shape, min_margin) with the rejection rates.

    A query is rejected when none of its candidates passes; for each peak and shape level the
    margins step through every value a query's best passing candidate has, so no threshold is
    missed. shapes: the min_shape levels (default SHAPE_LEVELS when any candidate has shape
    evidence below 1, else only 0). Each row also counts the scene conditions under which the
    rule meets both `targets` (absent rejected at least, present rejected at most) and those
    under which it meets the absent one.
    """
    if not records:
        return []
    present = np.array([r['present'] for r in records], dtype=bool)
    conditions = np.array([r.get('condition', '') for r in records])
    groups = [(present & (conditions == c), ~present & (conditions == c))
              for c in np.unique(conditions)]
    if shapes is None:
        evidence = any(_shape(c) < 1.0 for r in records for c in r['candidates'])
        shapes = SHAPE_LEVELS if evidence else (0.0,)
    rows = []
    for peak, shape in ((p, s) for p in peaks for s in shapes):
        best = np.array([max((c[0] for c in r['candidates']
                              if c[1] >= peak and _shape(c) >= shape), default=-np.inf)
                         for r in records])  # a query passes iff best >= min_margin
        margins = np.unique(np.concatenate([[MARGIN_RANGE[0]], best[np.isfinite(best)]]))
        present_rejected, absent_rejected = (_rejected(best, present, margins),
                                             _rejected(best, ~present, margins))
        # A condition without queries of a kind has nothing to miss: that target holds there.
        absent_ok = [_rejected(best, a, margins, 1.0) >= targets[0] for _, a in groups]
        absent_met = sum(absent_ok)
        met = sum(ok & (_rejected(best, p, margins, 0.0) <= targets[1])
                  for ok, (p, _) in zip(absent_ok, groups))
        for k, margin in enumerate(margins):
            rows.append({'min_peak': float(peak), 'min_shape': float(shape),
                         'min_margin': float(margin),
                         'present_rejected': float(present_rejected[k]),
                         'absent_rejected': float(absent_rejected[k]),
                         'present_queries': int(present.sum()),
                         'absent_queries': int((~present).sum()),
                         'conditions_met': int(met[k]),
                         'conditions_absent_met': int(absent_met[k])})
    return rows


def _rejected(best: np.ndarray, which: np.ndarray, margins: np.ndarray,
              empty: float = 0.0) -> np.ndarray:
    """Return, per margin, the share of the queries `which` selects rejected (`empty`: none)."""
    values = np.sort(best[which])
    if not len(values):
        return np.full(len(margins), empty)
    return np.searchsorted(values, margins, side='left') / len(values)  # best < margin


def choose(rows: list, absent_target: float, present_limit: float) -> tuple:
    """
    Return (row, met): the best row meeting both targets, else the trade-off (see above).

    The rows' per-condition counts are those of the targets `sweep` was given: pass it the same.
    """
    def fewest_refused(row):  # then the most absent rejected, then the loosest rule
        return (row['present_rejected'], -row['absent_rejected'], row['min_margin'],
                row['min_peak'], row.get('min_shape', 0.0))

    def most_conditions(row):
        return (-row.get('conditions_met', 0),
                -row.get('conditions_absent_met', 0)) + fewest_refused(row)

    def gap(row):
        return row['absent_rejected'] - row['present_rejected']

    met = [r for r in rows if r['absent_rejected'] >= absent_target
           and r['present_rejected'] <= present_limit]
    if met:
        return min(met, key=most_conditions), True
    best = max(rows, key=lambda r: (gap(r), -r['min_margin'], -r['min_peak'],
                                    -r.get('min_shape', 0.0)))
    a, p = best['absent_rejected'], best['present_rejected']
    noise = math.sqrt(a * (1 - a) / max(best['absent_queries'], 1)
                      + p * (1 - p) / max(best['present_queries'], 1))
    return min((r for r in rows if gap(r) >= gap(best) - noise), key=fewest_refused), False


def figures(records: list, rule: AbstainRule) -> dict:
    """Return the rule's rates (Wilson intervals) overall, per absent kind and per condition."""
    def rates(rows: list) -> dict:
        present = [r for r in rows if r['present']]
        absent = [r for r in rows if not r['present']]
        tops = [max(accepted(r, rule), key=lambda c: c[2], default=None) for r in present]
        return {
            'present_queries': len(present), 'absent_queries': len(absent),
            'absent_rejected': proportion(sum(not accepted(r, rule) for r in absent),
                                          len(absent)),
            'present_rejected': proportion(sum(not accepted(r, rule) for r in present),
                                           len(present)),
            'top_correct': proportion(sum(bool(t and t[3]) for t in tops), len(present)),
        }
    out = rates(records)
    out['held_out_present_rejected'] = rates(
        [r for r in records if r['present'] and r['held_out']])['present_rejected']
    out['absent_rejected_by_kind'] = {
        kind: rates([r for r in records if r['absent_kind'] == kind])['absent_rejected']
        for kind in ABSENT_KINDS}
    groups = defaultdict(list)
    for r in records:
        groups[r.get('condition', '')].append(r)
    out['per_condition'] = {name: rates(rows) for name, rows in groups.items()}
    return out


def min_score_floor(records: list, rule: AbstainRule, keep: float = 0.99) -> float:
    """Return a policy min_score (step 0.05) that keeps `keep` of the right top detections."""
    scores = sorted(max(accepted(r, rule), key=lambda c: c[2])[2] for r in records
                    if r['present'] and accepted(r, rule)
                    and max(accepted(r, rule), key=lambda c: c[2])[3])
    if not scores:
        return 0.0
    return math.floor(scores[int((1.0 - keep) * len(scores))] * 20) / 20


def write_config(directory: Path, key: str, block: dict) -> Path:
    """Merge `block` into config.json's 'clip_ros' block as `key` (other keys kept)."""
    path = directory / tabletop.CONFIG_FILE
    config = json.loads(path.read_text(encoding='utf-8'))  # read now: others may rewrite it
    config.setdefault('clip_ros', {})[key] = block
    path.write_text(json.dumps(config, indent=2) + '\n', encoding='utf-8')
    return path


def write_png(rows: list, chosen: dict, targets: tuple, path: Path, title: str) -> None:
    """Plot absent rejected against present wrongly rejected per peak, at the chosen shape."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    rows = [r for r in rows if r.get('min_shape', 0.0) == chosen.get('min_shape', 0.0)]
    for peak in sorted({r['min_peak'] for r in rows}):
        line = sorted((r for r in rows if r['min_peak'] == peak),
                      key=lambda r: r['min_margin'])
        axis.plot([r['present_rejected'] for r in line], [r['absent_rejected'] for r in line],
                  lw=1, label=f'min_peak {peak:g}')
    axis.axvline(targets[1], color='grey', ls=':')
    axis.axhline(targets[0], color='grey', ls=':')
    axis.plot(chosen['present_rejected'], chosen['absent_rejected'], 'ko',
              label=f"chosen: margin {chosen['min_margin']:.2f}, peak {chosen['min_peak']:g}, "
                    f"shape {chosen.get('min_shape', 0.0):g}")
    axis.set_xlabel('present-object queries wrongly rejected')
    axis.set_ylabel('absent-object queries rejected')
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.01)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7, loc='lower right')
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def format_report(report: dict) -> str:
    """Return the chosen rule and its figures as printable text."""
    f = report['figures']

    def pct(p):
        return f"{p['rate']:.1%} [{p['low']:.1%}-{p['high']:.1%}] ({p['k']}/{p['n']})"

    rule = report['rule']
    verdict = 'targets met' if report['targets_met'] else 'targets not reachable: best trade-off'
    lines = [f"rule: min_margin {rule['min_margin']:.3f}, min_peak {rule['min_peak']:g}, "
             f"min_shape {rule.get('min_shape', 0.0):g} ({verdict})",
             f"absent rejected          {pct(f['absent_rejected'])}",
             f"present wrongly rejected {pct(f['present_rejected'])}",
             f"  held-out present       {pct(f['held_out_present_rejected'])}",
             f"present top correct      {pct(f['top_correct'])}"]
    lines += [f'absent {kind:<17} {pct(p)}' for kind, p in f['absent_rejected_by_kind'].items()]
    lines.append(f"{'condition':<24} {'absent rej':>10} {'present rej':>11} {'top ok':>7}")
    for name, c in f['per_condition'].items():
        lines.append(f"{name:<24} {c['absent_rejected']['rate']:>10.1%} "
                     f"{c['present_rejected']['rate']:>11.1%} {c['top_correct']['rate']:>7.1%}")
    lines.append('policy min_score keeping 99% of right top detections: '
                 f"{report['policy_min_score']:g}")
    return '\n'.join(lines)


def command_line(args) -> str:
    """Return the calibrate command that reproduces this run's evidence."""
    return (f"calibrate --model {args.model} --conditions {' '.join(args.conditions)} "
            f'--scenes {args.scenes} --start {args.start} --absent {args.absent} '
            f'--width {args.width} --height {args.height} --threshold {args.threshold:g}')


def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog='calibrate', description=__doc__.split('\n')[1])
    parser.add_argument('--model', default=tabletop.NAME,
                        help="'tabletop' (bundled) or a tabletop checkpoint directory")
    parser.add_argument('--conditions', nargs='+', default=['all'],
                        help="scene conditions ('all' or names; see clip_ros.sim.conditions)")
    parser.add_argument('--scenes', type=count(1), default=40,
                        help='validation scenes per condition')
    parser.add_argument('--start', type=count(0), default=0, help='first scene of the val split')
    parser.add_argument('--absent', type=count(0), default=6, help='absent names asked per scene')
    parser.add_argument('--width', type=count(8), default=640, help='render width (pixels)')
    parser.add_argument('--height', type=count(8), default=480, help='render height (pixels)')
    parser.add_argument('--threshold', type=number(0.0, 1.0), default=NODE_DEFAULTS['threshold'],
                        help='CLIPSeg threshold (grounding_node default)')
    parser.add_argument('--min-pixels', type=count(1), default=NODE_DEFAULTS['min_area'],
                        help='skip objects with fewer visible pixels')
    parser.add_argument('--absent-target', type=number(0.0, 1.0), default=ABSENT_TARGET,
                        help='share of absent-object queries to reject')
    parser.add_argument('--present-limit', type=number(0.0, 1.0), default=PRESENT_LIMIT,
                        help='largest share of present-object queries wrongly rejected')
    parser.add_argument('--light-scenes', type=count(0), default=40,
                        help='train scenes the light reference is measured on (0: keep the '
                             "config's reference, or none)")
    parser.add_argument('--device', default='cpu', help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument('--threads', type=count(0), default=0,
                        help='torch CPU threads; 0: 2 on an idle machine, else 1')
    parser.add_argument('--dry-run', action='store_true',
                        help='print and save the figures, leave config.json unchanged')
    parser.add_argument('--json', default='calibration.json', help='JSON output path')
    parser.add_argument('--png', default='calibration.png', help='PNG curve output path')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    return parser.parse_args(argv)


def run(args) -> dict:
    """Collect the evidence, choose the rule, write config.json, JSON and PNG."""
    torch.set_num_threads(pick_threads(args.threads))
    conditions = condition_names(args.conditions)
    path = None if args.model == tabletop.NAME else args.model
    directory = Path(path).expanduser() if path else tabletop.BUNDLED_DIR
    clip = tabletop.load_tabletop_clip(path, device=args.device)
    clipseg = tabletop.load_tabletop_clipseg(path, device=args.device)
    light = None
    if args.light_scenes > 0:
        light = light_reference(args.light_scenes, args.width, args.height).to_config()
        clip.light = light  # the calibration sees the frames as the node will
    pipeline = GroundingPipeline(
        clip, clipseg, distractors=NODE_DEFAULTS['distractors'], min_area=args.min_pixels,
        max_detections=NODE_DEFAULTS['max_detections'], abstain=AbstainRule.off())
    start = time.monotonic()
    scenes = val_scenes(conditions, args.scenes, args.start, args.width, args.height)
    progress = None if args.quiet else (
        lambda items: tqdm(items, total=len(conditions) * args.scenes, desc='calibrate'))
    records = collect(pipeline, scenes, list(clip.vocabulary), args.threshold,
                      args.min_pixels, args.absent, progress)
    rows = sweep(records, targets=(args.absent_target, args.present_limit))
    chosen, met = choose(rows, args.absent_target, args.present_limit)
    # Rounded down, so the candidate at the threshold stays accepted.
    rule = AbstainRule(min_margin=math.floor(chosen['min_margin'] * 1000) / 1000,
                       min_peak=chosen['min_peak'], min_shape=chosen['min_shape'])
    report = {'model': clipseg.name, 'split': SPLIT, 'conditions': conditions, 'light': light,
              'scenes_per_condition': args.scenes, 'start': args.start,
              'image_size': [args.width, args.height], 'threshold': args.threshold,
              'targets': {'absent_rejected': args.absent_target,
                          'present_rejected': args.present_limit},
              'targets_met': met, 'rule': rule.as_dict(), 'figures': figures(records, rule),
              'policy_min_score': min_score_floor(records, rule),
              'seconds': round(time.monotonic() - start, 1),
              'curve': [r for r in rows if r['min_shape'] == chosen['min_shape']],
              'records': records}
    if not args.dry_run:
        if light:
            write_config(directory, 'light', light)
        f = report['figures']
        write_config(directory, 'abstain', {
            **rule.as_dict(),
            'calibration': {
                'split': SPLIT, 'conditions': conditions, 'scenes': len(conditions) * args.scenes,
                'present_queries': f['present_queries'], 'absent_queries': f['absent_queries'],
                'absent_rejected': round(f['absent_rejected']['rate'], 4),
                'present_rejected': round(f['present_rejected']['rate'], 4),
                'targets_met': met, 'command': command_line(args)}})
    Path(args.json).write_text(json.dumps(report, indent=1) + '\n', encoding='utf-8')
    write_png(rows, chosen, (args.absent_target, args.present_limit), Path(args.png),
              f'{clipseg.name}: abstention on {SPLIT} ({len(records)} queries)')
    return report


def main(argv=None) -> int:
    """Console entry point: print the chosen rule; exit 2 on a load error or bad argument."""
    logging.basicConfig(level=logging.WARNING, format='%(name)s: %(message)s')
    args = parse_args(argv)
    try:
        report = run(args)
    except (ModelLoadError, ValueError) as e:
        print(f'calibrate: {e}', file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


if __name__ == '__main__':
    sys.exit(main())
