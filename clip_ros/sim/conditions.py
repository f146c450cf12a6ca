"""
Named scene conditions: a split's seeded scenes drawn under ordinary changes, rendered by the sim.

Each name in CONDITIONS changes one thing about the scene of a seed (the camera and object
scale conditions draw the layout again: the objects' colours and shapes are the seed's, their
places on the table differ):

================================  =============================================================
in_distribution                   the seed's scene exactly as sample_scene draws it
light_colour                      every light tinted warm (orange) or blue
light_intensity                   dark (about half the frame's brightness: the scene lights at
                                  a third, the camera's headlight as usual) or bright (about
                                  twice)
table_colour                      a saturated, black or grey table, or a textured one (checker,
                                  fine checker, noise, gradient)
camera_far                        camera 1.3-1.6 m from the table centre (today 0.85-1.0)
camera_low                        camera elevation 20-32 degrees (today 45-60)
occlusion                         a taller block or cylinder hides 20-80 % of one object's
                                  pixels (measured on the instance masks); SceneSpec.focus
                                  names the hidden object
small_objects                     every object 0.5-0.7 times its usual size
many_objects                      7-10 objects (today 3-6)
same_colour_distractors           up to two objects of the first object's colour and two of
                                  its shape placed a few millimetres from it (all four in about
                                  a third of the scenes: the scene's 3-6 objects and the room
                                  beside it limit them); focus names it
================================  =============================================================

RANDOMISED ('randomised') is the training mode: a fifth of its scenes are the plain ones, the
others switch each of those factors on at random with wider, continuous ranges. Every draw is
seeded by (seed, condition), so a scene renders identically every time; the in_distribution
scene of a seed is today's scene of that seed. The split decides the held-out combinations
(never in 'train'); conditions never add them.

Usage::

    with Simulator(0, 640, 480, show_gripper=False) as sim:
        for seed, spec, frame in condition_frames(sim, 'test', 'occlusion', count=50):
            ...   # frame.rgb, frame.instances, frame.objects; spec.focus

or `load_condition(sim, seed, condition, exclude)` for one scene, then `sim.render(...)`.
"""
import colorsys
from dataclasses import replace
import math

import numpy as np

from clip_ros.sim.scene import (
    COLOURS, corners_in_view, footprint_clear, new_object, sample_scene, SceneSpec, TABLE_TEXTURES,
    Variation)
from clip_ros.sim.splits import split_exclude, split_seeds

CONDITIONS = ('in_distribution', 'light_colour', 'light_intensity', 'table_colour',
              'camera_far', 'camera_low', 'occlusion', 'small_objects', 'many_objects',
              'same_colour_distractors')
RANDOMISED = 'randomised'
PLAIN_SHARE = 0.2  # randomised scenes left exactly as drawn (today's distribution)
OCCLUDED_FRACTION = (0.2, 0.8)  # share of the hidden object's pixels behind the occluder
_VARIATIONS = {
    'camera_far': Variation(distance=(1.3, 1.6)),
    'camera_low': Variation(elevation_deg=(20.0, 32.0)),
    'small_objects': Variation(scale=(0.5, 0.7)),
    'many_objects': Variation(count=(7, 10)),
    'same_colour_distractors': Variation(neighbours=2),
}
WARM, BLUE = (1.0, 0.7, 0.42), (0.52, 0.7, 1.0)


def _check(condition: str) -> None:
    if condition not in CONDITIONS + (RANDOMISED,):
        raise ValueError(f'unknown condition {condition!r}; choose one of '
                         f'{", ".join(CONDITIONS + (RANDOMISED,))}')


def _rng(seed: int, condition: str) -> np.random.Generator:
    # Separate from the scene's own stream, so conditions never change what the seed draws.
    return np.random.default_rng([int(seed), 1 + (CONDITIONS + (RANDOMISED,)).index(condition)])


def _tint(rng, strength: float) -> tuple:
    base = WARM if rng.random() < 0.5 else BLUE
    return tuple(float(1.0 + strength * (v - 1.0)) for v in base)


def _table(spec: SceneSpec, rng, kind: str) -> SceneSpec:
    if kind == 'saturated':
        rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.8, 1.0), rng.uniform(0.55, 0.9))
    elif kind == 'black':
        rgb = (rng.uniform(0.02, 0.07),) * 3
    elif kind == 'grey':
        rgb = (rng.uniform(0.35, 0.65),) * 3
    elif kind == 'white':
        rgb = (rng.uniform(0.8, 0.95),) * 3
    else:  # a texture of two random, fairly distinct colours
        first = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.7), rng.uniform(0.3, 0.9))
        second = np.clip(np.array(first) * rng.uniform(0.4, 0.75), 0, 1)
        texture = TABLE_TEXTURES[int(rng.integers(len(TABLE_TEXTURES)))]
        return replace(spec, table_rgb=tuple(float(v) for v in first),
                       table_rgb2=tuple(float(v) for v in second), table_texture=texture)
    return replace(spec, table_rgb=tuple(float(v) for v in rgb), table_texture='')


def _light(spec: SceneSpec, rng, dark: bool) -> SceneSpec:
    if dark:
        return replace(spec, light_diffuse=spec.light_diffuse * rng.uniform(0.25, 0.45),
                       ambient=spec.ambient * rng.uniform(0.3, 0.5))
    return replace(spec, light_diffuse=rng.uniform(1.1, 1.5), ambient=rng.uniform(0.65, 0.85))


def _occlude(sim, spec: SceneSpec, rng, exclude) -> SceneSpec:
    """Add a block or cylinder in front of one object hiding 20-80 % of its pixels."""
    names = {o.name for o in spec.objects}
    free = [(c, s) for c in COLOURS for s in ('block', 'cylinder')
            if (c, s) not in exclude and f'{c} {s}' not in names]
    eye = np.asarray(spec.camera.eye[:2], float)
    slope = math.tan(math.radians(camera_elevation(spec)))
    low, high = OCCLUDED_FRACTION
    for t in rng.permutation(len(spec.objects)):
        target = spec.objects[int(t)]
        occluder = new_object(*free[int(rng.integers(len(free)))], rng)
        ahead = target.radius + occluder.radius + 0.006
        # Tall enough to cover the target's top along the line of sight (the camera looks
        # down), so the sideways offset alone decides the hidden share.
        tall = min(0.25, 2 * target.half_size[2] + slope * (ahead - 0.5 * target.radius))
        occluder.half_size = occluder.half_size[:2] + (max(occluder.half_size[2], tall / 2),)
        scene = replace(spec, objects=spec.objects + [occluder], focus=target.name)
        sim.load(scene)
        last = len(scene.objects) - 1
        sim.set_object_xy(last, (5.0, 5.0))  # out of sight: the target's whole visible area
        full = _pixels(sim, int(t))
        if full < 30:
            continue
        towards = (eye - target.xy) / np.linalg.norm(eye - target.xy)
        side = np.array([-towards[1], towards[0]])
        want = rng.uniform(low + 0.05, high - 0.05)
        best, best_gap = None, 1.0
        for lateral in np.linspace(-1.0, 1.0, 11) * (target.radius + occluder.radius):
            xy = np.asarray(target.xy) + ahead * towards + lateral * side
            if not (footprint_clear(spec.objects, occluder, xy, 0.003)
                    and corners_in_view(occluder, xy, spec.camera)):
                continue
            sim.set_object_xy(last, xy)
            fraction = 1.0 - _pixels(sim, int(t)) / full
            if low <= fraction <= high and abs(fraction - want) < best_gap:
                best, best_gap = xy, abs(fraction - want)
        if best is not None:
            occluder.xy = (float(best[0]), float(best[1]))
            return scene
    return spec  # nothing could be hidden (rare): the plain scene, no focus


def _pixels(sim, index: int) -> int:
    return int(sim.visible_pixels()[index])


def _randomised(seed: int, rng, exclude, sim) -> SceneSpec:
    if rng.random() < PLAIN_SHARE:
        return sample_scene(seed, exclude=exclude)
    variation = Variation(
        elevation_deg=(20.0, 70.0) if rng.random() < 0.5 else (45.0, 60.0),
        azimuth_deg=(-30.0, 30.0),
        distance=(0.75, 1.6) if rng.random() < 0.5 else (0.85, 1.0),
        count=(3, 10) if rng.random() < 0.4 else (3, 6),
        scale=(0.5, 1.25) if rng.random() < 0.4 else (1.0, 1.0),
        neighbours=2 if rng.random() < 0.3 else 0)
    spec = sample_scene(seed, exclude=exclude, variation=variation)
    if rng.random() < 0.5:
        spec = replace(spec, light_rgb=_tint(rng, rng.uniform(0.2, 1.2)))
    if rng.random() < 0.5:
        spec = replace(spec, light_diffuse=rng.uniform(0.1, 1.5), ambient=rng.uniform(0.1, 0.85))
    if rng.random() < 0.6:
        kinds = ('saturated', 'black', 'grey', 'white', 'texture')
        spec = _table(spec, rng, kinds[int(rng.integers(len(kinds)))])
    if sim is not None and len(spec.objects) > 1 and rng.random() < 0.3:
        spec = _occlude(sim, spec, rng, exclude)
    return spec


def condition_spec(seed: int, condition: str, exclude=(), sim=None) -> SceneSpec:
    """
    Return the scene of `seed` under `condition` (one of CONDITIONS, or RANDOMISED).

    Occlusion needs `sim` (a Simulator) to measure the hidden fraction on its masks; without
    one, RANDOMISED scenes get no occluder and 'occlusion' raises ValueError. With a sim the
    scene is left loaded in it.
    """
    _check(condition)
    rng = _rng(seed, condition)
    exclude = tuple(tuple(c) for c in exclude)
    if condition == RANDOMISED:
        spec = _randomised(seed, rng, exclude, sim)
    else:
        spec = sample_scene(seed, exclude=exclude,
                            variation=_VARIATIONS.get(condition, Variation()))
    if condition == 'light_colour':
        spec = replace(spec, light_rgb=_tint(rng, rng.uniform(0.8, 1.0)))
    elif condition == 'light_intensity':
        spec = _light(spec, rng, dark=rng.random() < 0.5)
    elif condition == 'table_colour':
        spec = _table(spec, rng, ('saturated', 'black', 'grey', 'texture')[int(rng.integers(4))])
    elif condition == 'occlusion':
        if sim is None:
            raise ValueError("the 'occlusion' condition needs a Simulator to measure masks")
        spec = _occlude(sim, spec, rng, exclude)
    elif condition == 'same_colour_distractors' and spec.objects:
        spec = replace(spec, focus=spec.objects[0].name)
    spec = replace(spec, condition=condition)
    if sim is not None:
        sim.load(spec)
    return spec


def load_condition(sim, seed: int, condition: str, exclude=()) -> SceneSpec:
    """Load the scene of `seed` under `condition` into `sim` (a Simulator); return its spec."""
    return condition_spec(seed, condition, exclude, sim)


def condition_frames(sim, split: str, condition: str, count: int, start: int = 0,
                     depth: bool = False):
    """
    Yield (seed, spec, Frame with instances) for scenes start..start+count-1 of `split`.

    The split's seeds and held-out rule come from clip_ros.sim.splits (test stays test).
    """
    exclude = split_exclude(split)
    for seed in split_seeds(split, count, start):
        spec = load_condition(sim, seed, condition, exclude)
        yield seed, spec, sim.render(depth=depth, instances=True)


def camera_distance(spec: SceneSpec) -> float:
    """Return the distance from the camera to its look-at point (m)."""
    return float(math.dist(spec.camera.eye, spec.camera.target))


def camera_elevation(spec: SceneSpec) -> float:
    """Return the camera's elevation above the table plane (degrees)."""
    offset = np.subtract(spec.camera.eye, spec.camera.target)
    return float(math.degrees(math.atan2(offset[2], math.hypot(offset[0], offset[1]))))
