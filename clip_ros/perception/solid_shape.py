"""
Shape measured in depth: is what was found shaped like a block, a ball, a cylinder or a bowl.

The bundled model tells colours apart reliably but confuses shapes, most of all on colour x shape
combinations it never trained on and on objects half hidden behind another. Depth sees shape
directly, whatever the colour. From an object's points in a frame whose z is up from the table
(the robot's base frame, or one fitted to the table's plane in depth: table_frame) the check
measures:

- the top band: points within `band` of the highest ones (a flat top, a bowl's rim, a ball's cap);
- top_ratio: the top band's footprint area over the whole footprint's (about 1 for a flat top
  or a rim, about 0.3 for a ball);
- squareness: the top band's hull area over its smallest enclosing rectangle (1 for a block's
  top, pi/4 for a disc or a ring);
- slenderness: height above the table over the top band's diameter (about 0.45 for a bowl, 0.8
  or more for a cylinder);
- dip: how far the points around the top band's centre lie below the top (a bowl's inside,
  when the camera sees into it over the whole rim).

A shape is contradicted only by clear evidence of another shape; too few points, or measures
in the gap between shapes, never refuse it. Thresholds sit between the ranges measured on
ground-truth masks of 290 objects per condition in test-split simulator scenes (in
distribution, low and far cameras, occlusion, small objects).
"""
from dataclasses import dataclass, replace
import math

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from clip_ros.perception import shape_crops


SHAPES = ('block', 'ball', 'cylinder', 'bowl')
# Fewer points say nothing reliable about shape: a block 100 pixels across at 96x72 has a
# top band of 54 points whose hull is 0.67 of its rectangle (0.94 at 160x120, 1.0 at 640x480).
MIN_POINTS = 150
MIN_TOP_POINTS = 40
MIN_OUTLINE = 10    # fewest outline points a circle is fitted through
STEP = 0.015        # metres between neighbouring pixels: an edge between two surfaces
EDGE = 2            # pixels: a rim this near a nearer surface or the frame's edge is not seen
MIN_ELEVATION = 38  # degrees: the lowest view over the table an outline is read from
# roundness() below ROUND: a disc or a ring, not a block; above EDGED: corners, not a disc or a
# ring. On val occlusion scenes (whole and half-hidden objects) cylinders measured 0.009-0.022,
# bowls 0.045-0.065, blocks 0.106-0.164.
ROUND, EDGED = 0.08, 0.09
CELL = 0.005         # finest footprint grid (m): objects that do not touch fall apart


def named_shape(words: str):
    """Return the shape of SHAPES a phrase (the model's words) ends with, or None."""
    index = shape_crops.shape_index(SHAPES, words)
    return None if index is None else SHAPES[index]


@dataclass
class Rigid:
    """A rigid transform: p_out = rotation @ p_camera + translation (metres)."""

    rotation: np.ndarray     # [3, 3]
    translation: np.ndarray  # [3] metres

    def apply(self, points) -> np.ndarray:
        """Map camera-frame points [..., 3] into the frame."""
        return np.asarray(points, np.float64) @ self.rotation.T + self.translation


def back_project(u, v, z, K) -> np.ndarray:
    """Return camera optical-frame points [..., 3] of pixels (u, v) at depth z (K: pinhole)."""
    K = np.asarray(K, np.float64).reshape(3, 3)
    u, v, z = (np.asarray(a, np.float64) for a in (u, v, z))
    x = (u - K[0, 2]) * z / K[0, 0]
    y = (v - K[1, 2]) * z / K[1, 1]
    return np.stack(np.broadcast_arrays(x, y, z), axis=-1)


def table_frame(plane, K) -> Rigid:
    """
    Return the frame on the table's plane whose z is the height above it (camera side up).

    plane: the table's inverse depth a*u + b*v + c (perception.depth_surfaces.table_plane);
    K: the pinhole intrinsics [3, 3]. The plane n . p = d in the camera frame has
    n / d = (a fx, b fy, c + a cx + b cy).
    """
    a, b, c = (float(v) for v in plane)
    K = np.asarray(K, np.float64).reshape(3, 3)
    normal = np.array([a * K[0, 0], b * K[1, 1], c + a * K[0, 2] + b * K[1, 2]])
    distance = 1.0 / np.linalg.norm(normal)
    up = -normal * distance  # from the table towards the camera
    across = np.cross([0.0, 1.0, 0.0], up)
    if np.linalg.norm(across) < 1e-6:  # looking along the image's y axis: any other will do
        across = np.cross([1.0, 0.0, 0.0], up)
    across /= np.linalg.norm(across)
    return Rigid(np.stack([across, np.cross(up, across), up]), np.array([0.0, 0.0, distance]))


def shapes_left(evidence, rounded: float = math.nan) -> list:
    """Return the SHAPES that `evidence` does not contradict (all of them without evidence)."""
    return [shape for shape in SHAPES if not contradiction(shape, evidence, rounded=rounded)]


@dataclass(frozen=True)
class ShapeLimits:
    """Where one shape ends and another begins (metres and ratios)."""

    round_top: float = 0.6    # top_ratio below this: a ball's cap, not a flat top or a rim
    flat_top: float = 0.75    # top_ratio above this: a flat top or a rim, not a ball
    square: float = 0.93      # squareness above this: a block's top
    not_square: float = 0.86  # squareness below this: a disc or a ring, not a block's top
    concave: float = 0.015    # dip above this: a bowl's inside
    flat: float = 0.6         # slenderness below this: low and wide, a bowl
    tall: float = 0.8         # slenderness above this: not a bowl


@dataclass(frozen=True)
class ShapeEvidence:
    """Shape measures of one lifted object (see the module docstring)."""

    height: float
    top_ratio: float
    squareness: float
    slenderness: float
    dip: float
    points: int


def _hull(xy: np.ndarray) -> tuple:
    """Return (hull area, smallest enclosing rectangle area) of 2D points; (0, 0) if degenerate."""
    if len(xy) < 3:
        return 0.0, 0.0
    try:
        hull = ConvexHull(xy)
    except QhullError:
        return 0.0, 0.0
    corners = xy[hull.vertices]
    edges = np.roll(corners, -1, axis=0) - corners
    lengths = np.linalg.norm(edges, axis=1)
    edges, lengths = edges[lengths > 0], lengths[lengths > 0]
    if not len(edges):
        return 0.0, 0.0
    along = edges / lengths[:, None]  # one candidate rectangle per hull edge direction
    across = np.stack([-along[:, 1], along[:, 0]], axis=1)
    a, b = corners @ along.T, corners @ across.T  # [corners, edges]
    rect = (np.ptp(a, axis=0) * np.ptp(b, axis=0)).min()
    return float(hull.volume), float(rect)


def _main_blob(points: np.ndarray) -> np.ndarray:
    """Keep the points of the largest footprint blob: a mask that bleeds onto a neighbour."""
    if len(points) < MIN_POINTS:
        return points
    # Cells at least twice the points' spacing, so one object's points always touch.
    area, _ = _hull(points[:, :2])
    cell = max(CELL, 2.0 * math.sqrt(area / len(points)))
    cells = np.floor((points[:, :2] - points[:, :2].min(axis=0)) / cell).astype(int)
    grid = np.zeros(cells.max(axis=0) + 1, bool)
    grid[cells[:, 0], cells[:, 1]] = True
    labels, count = ndimage.label(grid, structure=np.ones((3, 3), bool))
    if count <= 1:
        return points
    owner = labels[cells[:, 0], cells[:, 1]]
    return points[owner == np.bincount(owner).argmax()]


@dataclass
class TopFace:
    """An object's top face, grown over the depth image (top_face)."""

    points: np.ndarray  # [N, 3] in the frame it was measured in
    rounded: float      # roundness() of its rim where the rim is seen (nan: too little of it)


def top_face(depth: np.ndarray, mask: np.ndarray, K, frame, depth_range: tuple,
             band: float = 0.004):
    """
    Return the TopFace of a mask, or None without usable depth.

    A segmentation mask rounds an object's corners off; the depth does not. The top face is
    every pixel within a few pixels of the mask whose height (z in `frame`, a Rigid whose z is
    up from the table) is within `band` of the mask's top and that connects (in the image) to
    the mask's own top pixels, together with those. Its rim counts where it is seen: not where
    the face meets a nearer surface by STEP (what stands in front of it) nor within EDGE
    pixels of the frame's edge.
    """
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return None
    height, width = mask.shape
    reach = max(3, int(0.1 * max(np.ptp(rows), np.ptp(cols))))  # what a mask's edge misses
    pad = max(reach, EDGE) + 1
    r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, height)
    c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, width)
    near, far = depth_range
    window = np.asarray(depth[r0:r1, c0:c1], np.float64)
    valid = np.isfinite(window) & (window > max(near, 0.0)) & (window < far)
    inside = mask[r0:r1, c0:c1] & valid
    if inside.sum() < MIN_TOP_POINTS:
        return None
    grid_r, grid_c = np.mgrid[r0:r1, c0:c1]
    points = frame.apply(back_project(grid_c, grid_r, np.where(valid, window, 1.0), K))
    z = np.where(valid, points[..., 2], -np.inf)
    top = float(np.percentile(z[inside], 98))
    level = valid & (np.abs(z - top) <= band)
    near_mask = ndimage.distance_transform_edt(~mask[r0:r1, c0:c1]) <= reach  # round growth
    labels, _ = ndimage.label(level & near_mask, structure=np.ones((3, 3), bool))
    own = inside & (z > top - band)
    seeds = np.unique(labels[own])
    face = np.isin(labels, seeds[seeds > 0]) | own
    # The outer rim only: a bowl's inner edge is a second circle, thick beside a small bowl's.
    filled = ndimage.binary_fill_holes(face)
    rim = filled & ~ndimage.binary_erosion(filled)
    nearest = ndimage.minimum_filter(np.where(valid, window, np.inf), size=2 * EDGE + 1)
    rim &= nearest >= window - STEP
    rim &= ((grid_r >= EDGE) & (grid_r < height - EDGE) & (grid_c >= EDGE)
            & (grid_c < width - EDGE))
    # Seen at a grazing angle the rim's pixels sample it too coarsely to tell a circle.
    sight = frame.translation - points[face].mean(axis=0)  # towards the camera
    low = sight[2] < np.sin(np.radians(MIN_ELEVATION)) * np.linalg.norm(sight)
    return TopFace(points[face], math.nan if low else roundness(points[rim][:, :2]))


def measure(points: np.ndarray, table_z: float = 0.0, band: float = 0.004, top_points=None):
    """
    Return ShapeEvidence of base-frame points [N, 3], or None when they are too few.

    top_points: the top face grown over the depth image (TopFace.points), if known; else the top
    band of `points`.
    """
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        return None
    # A mask bleeds onto the table around the object: those points would widen its footprint.
    points = _main_blob(points[points[:, 2] > table_z + band])
    if len(points) < MIN_POINTS:
        return None
    z, xy = points[:, 2], points[:, :2]
    top = float(np.percentile(z, 98))
    top_xy = xy[z > top - band]
    if top_points is not None and len(top_points) >= MIN_TOP_POINTS:
        top_xy = np.asarray(top_points, np.float64)[:, :2]
        xy = np.concatenate([xy, top_xy])
    if len(top_xy) < MIN_TOP_POINTS:
        return None
    top_area, top_rect = _hull(top_xy)
    all_area, _ = _hull(xy)
    if top_area <= 0 or all_area <= 0:
        return None
    centre = top_xy.mean(axis=0)
    radius = math.sqrt(all_area / math.pi)
    inner = np.linalg.norm(points[:, :2] - centre, axis=1) < 0.35 * radius
    dip = top - float(np.median(z[inner])) if inner.sum() >= 5 else 0.0
    diameter = 2 * math.sqrt(top_area / math.pi)
    height = top - table_z
    return ShapeEvidence(height=height, top_ratio=top_area / all_area,
                         squareness=top_area / top_rect if top_rect else 0.0,
                         slenderness=height / diameter, dip=dip, points=len(points))


def roundness(xy: np.ndarray) -> float:
    """
    Return how far outline points [N, 2] lie off the circle fitted through them (RMS / radius).

    A disc's rim, whole or a piece of it, lies on one circle (0.01-0.02 on simulator depth);
    a bowl's ring has two (about 0.05); a block's top has corners (0.1 or more). nan for fewer
    than MIN_OUTLINE points.
    """
    xy = np.asarray(xy, np.float64)
    if len(xy) < MIN_OUTLINE:
        return math.nan
    # Kasa's fit: x^2 + y^2 = 2 a x + 2 b y + c is linear in (a, b, c).
    solution = np.linalg.lstsq(np.column_stack([2 * xy, np.ones(len(xy))]),
                               (xy ** 2).sum(axis=1), rcond=None)[0]
    centre = solution[:2]
    radius = math.sqrt(max(solution[2] + centre @ centre, 0.0))
    if radius <= 0:
        return math.nan
    off = np.linalg.norm(xy - centre, axis=1) - radius
    return float(np.sqrt(np.mean(off ** 2)) / radius)


def contradiction(shape: str, evidence: ShapeEvidence, limits: ShapeLimits = None,
                  rounded: float = math.nan) -> str:
    """
    Return why `evidence` is not `shape` ('' when it may be, or nothing is known).

    rounded: the top face's outline roundness (TopFace.rounded). Where it is known, it tells
    a block's corners from a disc's or a ring's rim instead of squareness: a half-hidden top's
    hull is no rectangle's, but what is seen of its rim is still straight edges or a circle.
    """
    if evidence is None or shape not in SHAPES:
        return ''
    lim = limits or ShapeLimits()
    e = evidence
    if not math.isnan(rounded):
        if shape == 'block' and e.top_ratio > lim.flat_top and rounded < ROUND:
            return f'round-topped, not a block (outline {rounded:.3f} off a circle)'
        if shape in ('cylinder', 'bowl') and e.top_ratio > lim.flat_top and rounded > EDGED:
            return f'square-topped like a block (outline {rounded:.3f} off a circle)'
        lim = replace(lim, square=math.inf, not_square=-math.inf)
    # The inside shows only when the rim is seen all round (the top band spans the footprint);
    # from low down, a side face below the top's near edge would look like a dip.
    if shape != 'bowl' and e.top_ratio > lim.flat_top and e.dip > lim.concave:
        return f'hollow like a bowl ({e.dip * 100:.1f} cm deep)'
    if shape != 'ball' and e.top_ratio < lim.round_top:
        return f'round-topped like a ball (top {e.top_ratio:.2f} of its footprint)'
    if shape == 'ball' and e.top_ratio > lim.flat_top:
        return f'flat-topped, not a ball (top {e.top_ratio:.2f} of its footprint)'
    if shape in ('cylinder', 'bowl') and e.top_ratio > lim.flat_top and e.squareness > lim.square:
        return f'square-topped like a block (squareness {e.squareness:.2f})'
    if shape == 'block' and e.top_ratio > lim.flat_top and e.squareness < lim.not_square:
        return f'round-topped, not a block (squareness {e.squareness:.2f})'
    if shape == 'bowl' and e.slenderness > lim.tall:
        return f'too tall for a bowl (height {e.slenderness:.2f} of its width)'
    if shape == 'cylinder' and e.top_ratio > lim.flat_top and e.slenderness < lim.flat:
        return f'low and wide like a bowl (height {e.slenderness:.2f} of its width)'
    return ''
