"""
Shift benchmark: grounding on test-split scenes rendered under named scene conditions.

A query is one (scene, phrase) pair, asked once however many command templates parse to the
phrase. Present queries name a visible object: the top detection is right when its box has
IoU >= 0.5 with an object of that name (mask IoU against that object; 0 when nothing is found),
and no detection at all is a wrong rejection. Absent queries name a vocabulary object that is
not in the scene (same colour as a scene object with another shape, held-out combinations, and
others): they count as rejected when the phrase gets no detection. Rates come with 95 % Wilson
intervals, mean mask IoU with a Student-t interval.

With the scenes' depth, each query also goes through the policy's perceive -> lift
(policy.perceive, the code vla_policy_node runs, with its shape check of shape words against
depth): 'acted' says whether the robot would act on a detection, and on which. The
'robot_*' figures are those of that decision: an absent object counts as refused when the
robot would not act, a present one as right when it would act on the object asked for.
"""
from collections import Counter
from dataclasses import dataclass
import random

import numpy as np

from clip_ros.perception.geometry import box_iou, mask_iou, SceneObject
from clip_ros.perception.grounding import DEFAULT_DISTRACTORS
from clip_ros.perception.stats import mean_interval, proportion
from clip_ros.perception.table_depth import DepthView
from clip_ros.policy.command import parse_command
from clip_ros.policy.perceive import Candidate, LiftConfig, perceive
from clip_ros.sim.conditions import condition_frames, CONDITIONS
from clip_ros.sim.dataset import HELD_OUT
from clip_ros.sim.scene import COLOURS, SHAPES

TEMPLATES = ('the {}', 'pick up the {}')
BOX_IOU = 0.5
HELD_OUT_NAMES = tuple(f'{colour} {shape}' for colour, shape in HELD_OUT)
ABSENT_KINDS = ('same_colour', 'held_out', 'other')
SIM_NAMES = [f'{colour} {shape}' for colour in COLOURS for shape in SHAPES]
DEFAULT_SCENES = 40     # per condition: about 150 present and 150 absent queries
ABSENT_PER_SCENE = 4    # absent names asked per scene
# grounding_node's defaults (config/grounding_node.yaml; test_evaluate holds them equal).
NODE_DEFAULTS = {'threshold': 0.4, 'distractors': list(DEFAULT_DISTRACTORS), 'min_area': 64,
                 'max_detections': 20, 'rescore': True, 'abstain': True,
                 'light_correction': True}
# vla_policy_node's defaults (config/vla_policy_node.yaml; test_evaluate holds them equal).
ROBOT_LIFT = LiftConfig()


@dataclass
class Query:
    """One distinct question about one scene."""

    phrase: str          # what the grounding node looks for (parse_command's first target)
    name: str            # the object name asked for, '<colour> <shape>'
    targets: list        # SceneObjects of that name (empty for an absent query)
    absent_kind: str = ''  # '' for a present query, else one of ABSENT_KINDS

    @property
    def present(self) -> bool:
        """Return whether the object asked for is in the scene."""
        return not self.absent_kind


def target_phrase(text: str) -> str:
    """Return what the grounding node looks for in a command (its first target)."""
    targets = parse_command(text).targets
    return targets[0] if targets else text


def command_phrases(name: str) -> list:
    """Return the distinct phrases the command templates about `name` parse to."""
    return list(dict.fromkeys(target_phrase(t.format(name)) for t in TEMPLATES))


def absent_names(scene_names, vocabulary, count: int, seed: int) -> list:
    """
    Return up to `count` (name, kind) pairs of vocabulary names not in the scene.

    Kinds are taken in turn, each shuffled with the scene's seed: 'same_colour' (a scene
    object's colour with another shape), 'held_out' (a held-out combination) and 'other'.
    """
    scene_names = set(scene_names)
    colours = {name.split()[0] for name in scene_names}
    pools = {kind: [] for kind in ABSENT_KINDS}
    for name in vocabulary:
        if name in scene_names:
            continue
        kind = ('held_out' if name in HELD_OUT_NAMES
                else 'same_colour' if name.split()[0] in colours else 'other')
        pools[kind].append(name)
    rng = random.Random(seed)
    for names in pools.values():
        rng.shuffle(names)
    picked = []
    while len(picked) < count and any(pools.values()):
        for kind in ABSENT_KINDS:
            if pools[kind] and len(picked) < count:
                picked.append((pools[kind].pop(), kind))
    return picked


def scene_queries(objects: list, scene_names: list, vocabulary, seed: int, min_pixels: int,
                  absent_per_scene: int) -> list:
    """
    Return the distinct Queries of one scene.

    Parameters
    ----------
    objects
        visible SceneObjects (name, box, mask).
    scene_names
        every object name in the scene, visible or not (never asked as absent).
    vocabulary
        the names absent queries are drawn from.
    seed
        the scene's seed (draws the absent names).
    min_pixels
        objects with fewer visible pixels are not asked for (nothing can find them).
    absent_per_scene
        how many absent names to ask per scene.

    """
    queries, phrases = [], set()
    asked = [obj for obj in objects if obj.mask.sum() >= min_pixels]
    for name in dict.fromkeys(obj.name for obj in asked):
        targets = [obj for obj in asked if obj.name == name]
        for phrase in command_phrases(name):
            if phrase not in phrases:
                phrases.add(phrase)
                queries.append(Query(phrase, name, targets))
    for name, kind in absent_names(scene_names, vocabulary, absent_per_scene, seed):
        for phrase in command_phrases(name):
            if phrase not in phrases:
                phrases.add(phrase)
                queries.append(Query(phrase, name, [], kind))
    return queries


def ground_query(pipeline, rgb, query: Query, threshold: float, view=None,
                 lift: LiftConfig = None, depth: DepthView = None) -> dict:
    """
    Ground one query's phrase and score its top detection against the truth.

    view: (depth, K, extrinsic) of the frame, to also record what the robot would act on;
    depth: the depth grounding sees too (grounding_node with `publish_3d`), or None.
    """
    result = pipeline(rgb, [query.phrase], thresholds=threshold, with_heatmaps=False,
                      depth=depth)
    detections = [d for d in result.detections if d.phrase == query.phrase]
    record = {'phrase': query.phrase, 'name': query.name, 'present': query.present,
              'held_out': query.name in HELD_OUT_NAMES, 'absent_kind': query.absent_kind,
              'found': bool(detections), 'score': 0.0, 'correct': False, 'box_iou': 0.0,
              'mask_iou': 0.0, 'reason': getattr(result, 'rejected', {}).get(query.phrase, '')}
    if view is not None:
        record.update(_acted(result, detections, query, view, lift))
    if not detections:
        return record
    top = detections[0]
    record['score'] = float(top.score)
    if query.targets:
        ious = box_iou(top.box, np.array([t.box for t in query.targets]))[0]
        best = int(np.argmax(ious))
        mask = (result.label_image == top.index + 1)[None]
        record.update(correct=bool(ious[best] >= BOX_IOU), box_iou=float(ious[best]),
                      mask_iou=float(mask_iou(mask, query.targets[best].mask[None])[0, 0]))
    return record


def _acted(result, detections, query: Query, view, lift: LiftConfig) -> dict:
    """Return what perceive -> lift makes of the detections: acted on, right, and why not."""
    depth, K, extrinsic = view
    command = parse_command(f'pick up the {query.phrase}')
    candidates = {command.targets[0]: [
        Candidate(d.score, result.label_image == d.index + 1, d.shape_prob)
        for d in detections]} if command.targets else {}
    found = perceive(command, candidates, depth, K, extrinsic, lift)
    if 'target' not in found.lifted:
        return {'acted': False, 'acted_correct': False, 'acted_reason': found.error}
    _, score, lifted = found.lifted['target']
    # The detection lifted: its score, and under a tie (two crops alike) the lifted pixel.
    tied = [d for d in detections if d.score == score]
    u, v = (int(round(c)) for c in lifted.pixel)
    top = next((d for d in tied if result.label_image[v, u] == d.index + 1), tied[0])
    right = bool(query.targets) and box_iou(top.box, np.array(
        [t.box for t in query.targets]))[0].max() >= BOX_IOU
    return {'acted': True, 'acted_correct': bool(right), 'acted_reason': ''}


def evaluate_scenes(pipeline, scenes, vocabulary, threshold: float, min_pixels: int,
                    absent_per_scene: int, progress=None, lift: LiftConfig = None,
                    with_depth: bool = False, depth_noise: float = 0.0) -> list:
    """
    Return one record per distinct query of each scene.

    scenes yields (seed, rgb, visible SceneObjects, every object name, focus name or ''), as
    condition_scenes does, plus (depth, K, extrinsic) as a sixth item when rendered with
    depth; progress wraps it. A record's 'focus' marks a present query about the object the
    condition is about. with_depth: grounding sees the depth too (as ground_query), with
    Gaussian noise of depth_noise metres (seeded by the scene) as a depth camera has.
    """
    records = []
    for seed, rgb, objects, names, focus, *view in (progress(scenes) if progress else scenes):
        depth = None
        if with_depth and view:
            depth = view[0][0] + np.random.default_rng(seed).normal(
                0.0, depth_noise, view[0][0].shape).astype(np.float32) if depth_noise \
                else view[0][0]
            depth = DepthView(depth, view[0][1])
        for query in scene_queries(objects, names, vocabulary, seed, min_pixels,
                                   absent_per_scene):
            records.append({'seed': int(seed), 'focus': bool(focus) and query.name == focus,
                            **ground_query(pipeline, rgb, query, threshold,
                                           view[0] if view else None, lift, depth)})
    return records


def summarise_condition(records: list) -> dict:
    """Return the figures of one condition's records (counts, rates with intervals)."""
    present = [r for r in records if r['present']]
    absent = [r for r in records if not r['present']]

    def share(rows, key, want=True):
        return proportion(sum(bool(r[key]) == want for r in rows), len(rows))

    robot = {}
    if records and 'acted' in records[0]:
        robot = {'robot_accuracy': share(present, 'acted_correct'),
                 'robot_absent_refused': share(absent, 'acted', want=False),
                 'robot_present_refused': share(present, 'acted', want=False)}
    return {
        **robot,
        'scenes': len({r['seed'] for r in records}),
        'present_queries': len(present),
        'absent_queries': len(absent),
        'accuracy': share(present, 'correct'),
        'seen_accuracy': share([r for r in present if not r['held_out']], 'correct'),
        'held_out_accuracy': share([r for r in present if r['held_out']], 'correct'),
        'mask_iou': mean_interval(r['mask_iou'] for r in present),
        'focus_accuracy': share([r for r in present if r['focus']], 'correct'),
        'absent_rejected': share(absent, 'found', want=False),
        'absent_rejected_by_kind': {
            kind: share([r for r in absent if r['absent_kind'] == kind], 'found', want=False)
            for kind in ABSENT_KINDS},
        'present_rejected': share(present, 'found', want=False),
        # Why phrases got no detection: the pipeline's reason up to its colon.
        'reasons': {kind: dict(Counter(r['reason'].split(':')[0] or '(none given)'
                                       for r in rows if not r['found']))
                    for kind, rows in (('present', present), ('absent', absent))},
    }


def visible_objects(frame) -> list:
    """Return the SceneObjects (name, box, mask) of a rendered Frame's visible objects."""
    return [SceneObject(o.name, o.box, frame.instances == o.instance_id)
            for o in frame.objects if o.box is not None and o.visible_pixels > 0]


def condition_names(values) -> list:
    """Return the condition names of command-line values ('all', or names split at commas)."""
    names = [n for v in values for n in str(v).split(',') if n.strip()]
    names = list(dict.fromkeys(n.strip() for n in names))
    names = list(CONDITIONS) if names == ['all'] else names
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown or not names:
        raise ValueError(f"unknown condition(s) {unknown or values}; choose 'all' or from "
                         f"{', '.join(CONDITIONS)}")
    return names


def condition_scenes(condition: str, seeds, width: int, height: int, depth: bool = False):
    """
    Yield (seed, rgb, visible SceneObjects, every object name, focus) per test-split seed.

    seeds is a contiguous range of the test split; focus names the object the condition is
    about (the occluded one, the one with same-colour neighbours) or is ''. With depth, a
    sixth item (depth metres, K, Extrinsic base_from_camera) is added.
    """
    from clip_ros.sim.dataset import SPLITS
    from clip_ros.sim.simulator import Simulator  # needs OpenGL
    if not len(seeds):
        return
    from clip_ros.policy.lifting import Extrinsic
    with Simulator(seeds[0], width, height, show_gripper=False) as sim:
        for seed, spec, frame in condition_frames(sim, 'test', condition, len(seeds),
                                                  seeds[0] - SPLITS['test'], depth=depth):
            scene = (seed, frame.rgb, visible_objects(frame), [o.name for o in frame.objects],
                     spec.focus)
            yield scene + (((frame.depth, frame.K, Extrinsic(*sim.camera_pose())),)
                           if depth else ())
