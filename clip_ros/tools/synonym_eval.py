"""
Synonym and unknown-word queries on simulator scenes: grounding as typed and after the Lexicon.

For each visible object '<colour> <shape>' of each scene, every synonym of its shape or colour
in the model's table ('cube' for block, 'violet' for purple) makes a command 'pick up the
<colour> <synonym>'. Its phrase (parse_command) is grounded as typed and as the model's Lexicon
maps it; the top detection is right when its box has IoU >= 0.5 with an object of that name.
Words outside the model's words ('turquoise <shape>') are asked too: how often the phrase as
typed returns a detection, and how often the Lexicon names the unknown word.

    python -m clip_ros.tools.synonym_eval --split val --scenes 40
"""
import argparse
from collections import defaultdict
import json
import statistics
import sys

import numpy as np
import torch

from clip_ros.perception.backends import make_pipeline
from clip_ros.perception.geometry import box_iou
from clip_ros.perception.grounding import DEFAULT_DISTRACTORS
from clip_ros.perception.vocabulary import Lexicon
from clip_ros.policy.command import parse_command
from clip_ros.sim.dataset import render_scenes, split_seeds

UNKNOWN_WORDS = ('turquoise', 'grey', 'pink')
THRESHOLD = 0.4  # grounding_node's default
MIN_PIXELS = 64


def ground(pipeline, rgb, phrase: str, targets: list) -> dict:
    """Return whether the top detection of `phrase` is on a target, its score, and if found."""
    result = pipeline(rgb, [phrase], thresholds=THRESHOLD, with_heatmaps=False)
    detections = [d for d in result.detections if d.phrase == phrase]
    if not detections:
        return {'correct': False, 'score': 0.0, 'found': False}
    top = detections[0]
    ious = box_iou(top.box, np.array([t.box for t in targets]))[0] if targets else [0.0]
    return {'correct': bool(max(ious) >= 0.5), 'score': float(top.score), 'found': True}


def scene_records(pipeline, lexicon: Lexicon, seed: int, rgb, objects: list) -> list:
    """Return one record per synonym, canonical and unknown-word query about a scene."""
    by_word = defaultdict(list)
    for word, target in lexicon.synonyms.items():
        by_word[target].append(' '.join(word))
    records = []
    asked = [o for o in objects if o.mask.sum() >= MIN_PIXELS]
    for name in dict.fromkeys(o.name for o in asked):
        targets = [o for o in asked if o.name == name]
        colour, shape = name.split()
        texts = [(name, 'canonical')]
        texts += [(f'{colour} {s}', s) for s in by_word[(shape,)]]
        texts += [(f'{c} {shape}', c) for c in by_word[(colour,)]]
        texts += [(f'{u} {shape}', 'unknown') for u in UNKNOWN_WORDS]
        for text, word in texts:
            phrase = parse_command(f'pick up the {text}').targets[0]
            mapped, reason = lexicon.canonical(phrase)
            typed = ground(pipeline, rgb, phrase, targets)
            after = typed if reason or mapped == phrase else ground(pipeline, rgb, mapped, targets)
            records.append({'seed': seed, 'name': name, 'word': word, 'phrase': phrase,
                            'mapped': mapped, 'reason': reason, 'typed': typed,
                            'after': None if reason else after})
    return records


def summarise(records: list) -> dict:
    """Return per-word and overall figures: accuracy and median score, typed and mapped."""
    def figures(rows):
        return {'queries': len(rows),
                'typed_accuracy': float(np.mean([r['typed']['correct'] for r in rows])),
                'mapped_accuracy': float(np.mean([r['after']['correct'] for r in rows])),
                'typed_median_score': statistics.median(r['typed']['score'] for r in rows),
                'mapped_median_score': statistics.median(r['after']['score'] for r in rows)}

    synonyms = [r for r in records if r['word'] not in ('canonical', 'unknown')]
    unknown = [r for r in records if r['word'] == 'unknown']
    words = sorted({r['word'] for r in synonyms})
    summary = {'per_word': {w: figures([r for r in synonyms if r['word'] == w]) for w in words}}
    if synonyms:
        summary['synonyms'] = figures(synonyms)
    canonical = [r for r in records if r['word'] == 'canonical']
    if canonical:
        summary['canonical'] = figures(canonical)
    if unknown:
        summary['unknown'] = {
            'queries': len(unknown),
            'typed_found': float(np.mean([r['typed']['found'] for r in unknown])),
            'named_unknown': float(np.mean([bool(r['reason']) for r in unknown]))}
    return summary


def format_table(summary: dict) -> str:
    """Return the summary as a text table."""
    lines = [f"{'word':<14}{'queries':>8}{'as typed':>10}{'mapped':>8}{'median score':>16}"]
    rows = list(summary['per_word'].items())
    rows += [(k.upper(), summary[k]) for k in ('synonyms', 'canonical') if k in summary]
    for word, f in rows:
        lines.append(f"{word:<14}{f['queries']:>8}{f['typed_accuracy']:>10.1%}"
                     f"{f['mapped_accuracy']:>8.1%}"
                     f"{f['typed_median_score']:>10.2f} -> {f['mapped_median_score']:.2f}")
    if 'unknown' in summary:
        u = summary['unknown']
        lines.append(f"unknown words ({', '.join(UNKNOWN_WORDS)}): {u['queries']} queries; as "
                     f"typed {u['typed_found']:.1%} return a detection, the Lexicon names the "
                     f"unknown word in {u['named_unknown']:.1%}")
    return '\n'.join(lines)


def run(split: str, scenes: int, start: int = 0, width: int = 640, height: int = 480,
        model: str = '') -> tuple:
    """Evaluate `scenes` scenes of `split`; return (records, summary)."""
    from clip_ros.perception.loading import load_clip, load_clipseg
    clip = load_clip('tabletop', model, device='cpu')
    clipseg = load_clipseg(model or 'tabletop', device='cpu')
    pipeline = make_pipeline(clip, clipseg, distractors=list(DEFAULT_DISTRACTORS),
                             min_area=MIN_PIXELS, max_detections=20, rescore=True)
    lexicon = Lexicon(clip.vocabulary, clip.synonyms)
    seeds = split_seeds(split, scenes, start)
    records = []
    for seed, (rgb, objects, _) in zip(seeds, render_scenes(seeds, width, height)):
        records += scene_records(pipeline, lexicon, seed, rgb, objects)
    return records, summarise(records)


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--split', default='val', choices=('val', 'test'))
    parser.add_argument('--scenes', type=int, default=40)
    parser.add_argument('--start', type=int, default=0)
    parser.add_argument('--model', default='', help='tabletop checkpoint directory (default: '
                        'the bundled model)')
    parser.add_argument('--json', help='write records and summary here')
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    records, summary = run(args.split, args.scenes, args.start, model=args.model)
    print(f'{args.split} scenes {args.start}..{args.start + args.scenes - 1}')
    print(format_table(summary))
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as f:
            json.dump({'summary': summary, 'records': records}, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
