"""
Perceive -> lift: from a command's phrases and their scored masks to the policy's 3D points.

One function for vla_policy_node and the simulator's episode runner, so the closed-loop
evaluation measures the code a robot runs. For each role of the command (the first target, the
destination) the candidates of its phrase are tried best score first; a candidate whose points
all lie within `min_height` of the table is a shadow or reflection and is skipped, and so is one
whose depth contradicts the shape its phrase names (perception.solid_shape: 'the purple block'
answered by a purple cylinder), unless grounding's shape head is sure of that shape
(SHAPE_TRUST: the visible top of a partly hidden block is no rectangle to depth, but still a
block to the head). A phrase whose every standing candidate has the wrong shape counts as
not found. The target is grasped at its box centre and a load is placed onto the
destination's top face.
"""
from dataclasses import dataclass, field
import math

import numpy as np
from scipy import ndimage

from clip_ros.perception.solid_shape import contradiction, measure, top_face
from clip_ros.policy.command import Command
from clip_ros.policy.lifting import (
    back_project, Extrinsic, lift_mask, lift_standing, LiftedTarget, place_point)
from clip_ros.policy.shape import shape_of

# A shape head this sure of the phrase's shape overrules depth. On val scenes (occlusion,
# same-colour neighbours, low camera, light intensity; 799 checks) depth refused 41 masks of
# the right object and 40 look-alikes: at >= 0.95 the head vouched for 11 of the former and
# none of the latter (the look-alikes' highest was 0.93).
SHAPE_TRUST = 0.95


@dataclass
class LiftConfig:
    """What counts as a usable detection and usable depth (metres, base frame)."""

    # Ignore candidates scoring below this. calibrate: with the shape head in the rule, any
    # floor above 0 loses more than 1 % of the bundled model's right top detections the rule
    # accepts (vla_policy_node's default too).
    min_score: float = 0.0
    depth_range: tuple = (0.05, 5.0)       # valid depth (near, far), exclusive
    table_z: float = 0.0                   # base-frame z of the table top
    min_height: float = 0.01               # a mask must reach this far above the table
    shape_band: float = 0.004              # top band of the shape check (solid_shape); 0: off


@dataclass
class Candidate:
    """One detection of a phrase: its score and its instance mask."""

    score: float
    mask: np.ndarray  # bool [H, W], the depth image's size
    shape_prob: float = math.nan  # grounding's shape head on it (Detection.shape_prob)


@dataclass
class DepthProbe:
    """One perception set's depth, to read heights anywhere on the table afterwards."""

    depth: np.ndarray   # float32 metres [H, W]
    K: np.ndarray       # 3x3 intrinsics
    extrinsic: Extrinsic
    depth_range: tuple
    stride: int = 2     # every other pixel: ample for a footprint, a quarter of the work

    def points(self, centre, radius: float) -> np.ndarray:
        """Return the base-frame valid points [N, 3] within `radius` of (x, y) `centre`."""
        depth = self.depth[::self.stride, ::self.stride]
        near, far = self.depth_range
        rows, cols = np.nonzero(np.isfinite(depth) & (depth > max(near, 0.0)) & (depth < far))
        points = self.extrinsic.apply(back_project(cols * self.stride, rows * self.stride,
                                                   depth[rows, cols], self.K))
        inside = np.linalg.norm(points[:, :2] - np.asarray(centre)[:2], axis=1) <= radius
        return points[inside]

    def heights(self, centre, radius: float) -> np.ndarray:
        """Return the base-frame z of the valid points within `radius` of (x, y) `centre`."""
        return self.points(centre, radius)[:, 2]


@dataclass
class Perception:
    """What one perception set gave the policy."""

    # role -> (phrase, score, LiftedTarget) for every role that was lifted
    lifted: dict = field(default_factory=dict)
    # role -> the point the policy uses: target = grasp point, destination = place point
    points: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)  # why a role was not lifted
    undetected: list = field(default_factory=list)  # roles whose phrase had no detection
    # role -> why its detections were refused although something stood there (wrong shape)
    refused: dict = field(default_factory=dict)
    # role -> every candidate of its phrase that stands above the table, lifted, best first
    # (the first is the one in `lifted`): what the look after acting reads
    seen: dict = field(default_factory=dict)
    probe: DepthProbe | None = None  # this set's depth, for the look after acting

    @property
    def error(self) -> str:
        """Return the reasons as one line ('' when every role was lifted)."""
        return '; '.join(self.errors)


def roles(command: Command) -> dict:
    """Return {role: phrase} of what the policy needs grounded (None when the role is absent)."""
    return {'target': command.targets[0] if command.targets else None,
            'destination': command.destination}


def policy_point(role: str, lifted: LiftedTarget) -> np.ndarray:
    """Return where the policy acts on a lifted object: grasp centre, or place point on top."""
    return place_point(lifted) if role == 'destination' else lifted.centre


def perceive(command: Command, candidates: dict, depth: np.ndarray, K, extrinsic,
             config: LiftConfig = None) -> Perception:
    """
    Lift the command's target and destination from one perception set.

    Parameters
    ----------
    command
        the parsed command (its first target and its destination are lifted).
    candidates
        {phrase: [Candidate, ...]} in any order; phrases without detections may be absent.
    depth, K, extrinsic
        float32 metres [H, W], 3x3 intrinsics, base_from_camera (see lifting.lift_mask).
    config
        score, depth and table limits.

    Returns
    -------
    Perception with the lifted roles, the policy's points and the reasons for the others.

    """
    config = config or LiftConfig()
    result = Perception(probe=DepthProbe(np.asarray(depth, np.float32), K,
                                         extrinsic or Extrinsic.identity(),
                                         config.depth_range))
    for role, phrase in roles(command).items():
        if not phrase:
            continue
        found = sorted((c for c in candidates.get(phrase, ()) if c.score >= config.min_score),
                       key=lambda c: -c.score)
        if not found:
            result.errors.append(f'{phrase!r} not detected')
            result.undetected.append(role)
            continue
        views, reasons = _standing(depth, [c.mask for c in found], K, extrinsic, config)
        shape = shape_of(phrase) if config.shape_band > 0 else ''
        chosen, wrong = None, []
        for k, lifted in views:  # best first; the shape is measured only until one fits
            why = _wrong_shape(shape, lifted, found[k].mask, depth, K, extrinsic, config)
            if not why or found[k].shape_prob >= SHAPE_TRUST:
                chosen = k, lifted
                break
            wrong.append(f'not a {shape}: {why}')
        # The look after acting reads every standing view, whatever its shape: a block in a
        # bowl no longer looks like either on its own.
        if views:
            result.seen[role] = [lifted for _, lifted in views]
        if chosen is None:
            result.errors.append(f"{phrase!r}: {'; '.join(dict.fromkeys(reasons + wrong))}")
            if wrong:  # something stood there, but not the shape asked for
                result.undetected.append(role)
                result.refused[role] = f"{phrase!r}: {'; '.join(dict.fromkeys(wrong))}"
            continue
        k, lifted = chosen
        result.lifted[role] = (phrase, found[k].score, lifted)
        result.points[role] = policy_point(role, lifted)
        result.seen[role] = [lifted] + [v for i, v in views if i != k]
    return result


def _wrong_shape(shape: str, lifted, mask, depth, K, extrinsic, config: LiftConfig) -> str:
    """Return why a lifted mask is not `shape` ('' when it may be, or no shape is named)."""
    if not shape:
        return ''
    face = top_face(depth, mask, K, extrinsic or Extrinsic.identity(), config.depth_range,
                    config.shape_band)
    return contradiction(shape, measure(lifted.points, config.table_z, config.shape_band,
                                        face and face.points),
                         rounded=face.rounded if face else math.nan)


def _standing(depth, masks: list, K, extrinsic, config: LiftConfig) -> tuple:
    """Return [(index, LiftedTarget)] of the masks standing above the table, and why not."""
    views, reasons, first = [], [], 0
    while first < len(masks):
        (k, lifted), skipped = lift_standing(depth, masks[first:], K, extrinsic,
                                             config.depth_range, config.table_z,
                                             config.min_height)
        reasons += skipped
        if lifted is None:
            break
        views.append((first + k, lifted))
        first += k + 1
    return views, reasons


def lift_instances(label_image: np.ndarray, count: int, depth: np.ndarray, K, extrinsic=None,
                   depth_range: tuple = (0.05, 5.0)) -> tuple:
    """
    Lift every instance of a label image (pixel = index + 1) with the policy's lift_mask.

    Returns
    -------
    ({index: LiftedTarget} for the instances with usable depth, {index: reason} for the rest).

    """
    lifted, reasons = {}, {}
    if label_image.shape != np.shape(depth):
        size = (f'depth size {np.shape(depth)[1]}x{np.shape(depth)[0]} differs from the '
                f'mask/image size {label_image.shape[1]}x{label_image.shape[0]}')
        return lifted, {index: size for index in range(count)}
    # Each instance is read in its own box only.
    windows = ndimage.find_objects(label_image, count) if count else []
    for index, window in enumerate(windows):
        try:
            if window is None:
                raise ValueError('the instance mask is empty')
            lifted[index] = lift_mask(depth, label_image[window] == index + 1, K, extrinsic,
                                      depth_range, window=window)
        except ValueError as e:
            reasons[index] = str(e)
    return lifted, reasons
