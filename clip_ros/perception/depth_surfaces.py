"""
Detections cut to the surface they lie on, where depth is registered to the frame.

A partly hidden object's map often covers only a piece of it (the lit top of a block beside
the cylinder in front of it), a black object's only its highlight, and a same-colour
neighbour can join its region: colour cannot tell where one object ends and the next begins.
Depth can. What stands above the table's plane falls apart at depth steps into surfaces: the
object in front ends where the one behind it begins, and shadows lie on the table. A
detection takes the surface that holds most of its pixels as its mask and box (which object
is found does not change). The constants were chosen on validation-split scenes.
"""
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from clip_ros.perception import shape_crops, solid_shape, table_depth
from clip_ros.perception.regions import region_from_mask

STEP = solid_shape.STEP  # metres between neighbouring pixels: an edge between two surfaces
CORE_SHARE = 0.3   # the detection's most probable pixels (this share) choose its surface
MIN_ON = 0.5       # the surface holds at least this share of them
MAX_SHARE = 0.05   # a surface larger than this share of the frame is no object (wall, floor)
# A surface no detection lies on is the unfound phrase only when CLIP's colour margin for it
# reaches this (and the shape head agrees, table_depth.accepts). On val the surfaces that were
# the phrase had 3.3 or more, apart from an orange cylinder on an orange-tinted table (0.4);
# a white block answered an absent 'green block' with 0.3.
MIN_MARGIN = 2.0
ON_PLANE = 0.005   # a pixel this near the plane (share of its inverse depth) is table
RING, MIN_RING = 3, 20  # pixels around a surface that tell the plane is its table, fewest of them
ON_TABLE = 0.005   # metres: their median height above the plane
NOISE = 0.0015     # metres: the table's depth noise (robust sigma) above which nothing is measured
FOOT = 0.006       # metres: a surface's points lower than this (+ BAND) are table, not object
BAND = 0.004       # metres: the top band of a surface's shape measures (perception.solid_shape)
STRIDE = 4         # the plane is fitted to every STRIDE-th row and column
# Windows (row and column shares of the frame) the table's plane is fitted in: the one whose
# plane holds the most pixels wins (a low camera sees floor beyond the table mid-frame).
WINDOWS = ((0.25, 0.75, 0.25, 0.75), (0.5, 1.0, 0.25, 0.75), (0.67, 1.0, 0.0, 1.0))


def table_plane(depth: np.ndarray):
    """Return the table's plane as inverse depth a*u + b*v + c (array [3]), or None."""
    # Fitted and counted on every STRIDE-th row and column: the same plane, a 16th the work.
    sample = depth[::STRIDE, ::STRIDE]
    height, width = sample.shape
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :]
    with np.errstate(invalid='ignore', divide='ignore'):
        inverse = np.where(sample > 0, 1.0 / sample, np.nan)
    best, held = None, -1
    for top, bottom, left, right in WINDOWS:
        window = np.zeros(sample.shape, bool)
        window[int(top * height):int(bottom * height), int(left * width):int(right * width)] = 1
        plane = table_depth.table_plane(sample, window)
        if plane is None:
            continue
        table = (np.float32(plane[0]) * cols + np.float32(plane[1]) * rows) + np.float32(plane[2])
        with np.errstate(invalid='ignore'):
            count = int((np.abs(inverse - table) <= ON_PLANE * np.abs(table)).sum())
        if count > held:
            best, held = plane, count
    return None if best is None else best / np.array([STRIDE, STRIDE, 1.0])


class Cut(NamedTuple):
    """The table's surfaces in depth (surfaces())."""

    labels: np.ndarray    # int [H, W]: 0 on the table, the floor, behind a step, without depth
    windows: list         # the labels' bounding slices (scipy.ndimage.find_objects)
    standing: np.ndarray  # bool [H, W]: above the table, not behind a step, before the opening
    plane: np.ndarray     # the table's plane (table_plane)


def surfaces(depth: np.ndarray):
    """Return the Cut of the table's surfaces, or None when no table plane fits."""
    plane = table_plane(depth)
    if plane is None:
        return None
    # Only the far side of a step is cut: an object in front keeps its outline.
    behind = np.zeros(depth.shape, bool)
    with np.errstate(invalid='ignore'):
        down = np.diff(depth, axis=0)  # > 0: the pixel below is farther
        across = np.diff(depth, axis=1)
    behind[1:] |= down > STEP
    behind[:-1] |= down < -STEP
    behind[:, 1:] |= across > STEP
    behind[:, :-1] |= across < -STEP
    standing = table_depth.standing(depth, plane) & ~behind
    labels, _ = ndimage.label(ndimage.binary_opening(standing))
    return Cut(labels, ndimage.find_objects(labels), standing, plane)


def on_surface(cut, region, prob: np.ndarray):
    """
    Return `region` as the surface its surest pixels lie on, or `region` itself.

    cut is surfaces()'s answer; prob the phrase's map at frame size. The region stays as it
    is when no surface holds MIN_ON of its surest pixels (the CORE_SHARE most probable by the
    map) or the surface is larger than MAX_SHARE of the frame. The surface gets back the rim
    the opening took from it.
    """
    label = surface_label(cut, region, prob)
    if label == 0:
        return region
    surface = surface_region(cut, label, prob)
    return region if surface.area > MAX_SHARE * cut.labels.size else surface


def surface_label(cut, region, prob: np.ndarray) -> int:
    """Return the label of the surface holding MIN_ON of `region`'s surest pixels, or 0."""
    labels = cut.labels
    row, col = region.offset
    h, w = region.mask.shape
    under = labels[row:row + h, col:col + w][region.mask]
    # The map's surest pixels choose: a mask spilling onto the object in front of its own
    # may have more pixels there, but not its most probable ones.
    sure = prob[row:row + h, col:col + w][region.mask]
    core = under[sure >= np.quantile(sure, 1.0 - CORE_SHARE)]
    counts = np.bincount(core.ravel())
    counts[0] = 0
    label = int(counts.argmax())
    return label if counts[label] >= MIN_ON * core.size else 0


def surface_region(cut, label: int, prob=None):
    """Return surface `label` as a Region, with the rim the opening took given back."""
    labels, windows, standing, _ = cut
    rows, cols = windows[label - 1]
    top, left = max(rows.start - 1, 0), max(cols.start - 1, 0)
    window = slice(top, rows.stop + 1), slice(left, cols.stop + 1)
    surface = ndimage.binary_dilation(labels[window] == label) & standing[window]
    prob = np.zeros(surface.shape, np.float32) if prob is None else prob[window]
    return region_from_mask(surface, (top, left), prob)


def free_surfaces(cut, taken) -> dict:
    """
    Return the object-sized surfaces ({label: Region}) whose labels are not in `taken`.

    What depth separates but no phrase was found on: where a phrase colour left unfound (a
    partly hidden object, one between same-colour neighbours) may still be.
    """
    size = cut.labels.size
    regions = {label: surface_region(cut, label)
               for label, window in enumerate(cut.windows, start=1)
               if window is not None and label not in taken}
    return {label: r for label, r in regions.items()
            if table_depth.MIN_PIXELS <= r.area <= MAX_SHARE * size}


def isolated(rgb: np.ndarray, cut, region) -> tuple:
    """
    Return (window, box): the frame around `region` with all but the table painted table-coloured.

    A half-hidden object's crop is mostly the object in front of it: CLIP names that one's
    colour and the shape head its shape. Painted out, the crop shows the visible piece alone.
    The window (a copy) holds the widest crop cut around the region's box
    (shape_crops.STORE_PAD); box is the region's box in the window's pixels.
    """
    labels, standing = cut.labels, cut.standing
    x0, y0, x1, y1 = (float(v) for v in region.box)
    half = max(x1 - x0, y1 - y0, 8.0) * shape_crops.STORE_PAD / 2 + 2  # + rounding
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    top, left = max(int(cy - half), 0), max(int(cx - half), 0)
    window = slice(top, int(cy + half) + 1), slice(left, int(cx + half) + 1)
    own = np.zeros(labels[window].shape, bool)
    row, col = region.offset  # the box lies inside the window
    h, w = region.mask.shape
    own[row - top:row - top + h, col - left:col - left + w] = region.mask
    table = (labels[window] == 0) & ~standing[window] & ~own
    out = rgb[window].copy()
    if table.any():
        out[~own] = np.median(out[table], axis=0).astype(np.uint8)
    return out, (x0 - left, y0 - top, x1 - left, y1 - top)


def solid_shapes(cut, view, region) -> list:
    """
    Return the shapes (solid_shape.SHAPES) depth does not contradict for a surface.

    Measured in a frame on the table's plane (solid_shape.table_frame), from the surface's
    points and its top face's outline. All shapes when depth says too little.
    """
    frame = solid_shape.table_frame(cut.plane, view.K)
    mask = np.zeros(cut.labels.shape, bool)
    row, col = region.offset
    h, w = region.mask.shape
    mask[row:row + h, col:col + w] = region.mask
    # Seen at a grazing angle a top face's depth steps apart between neighbouring pixels, so
    # a surface is a band of it: too low a view measures nothing.
    ray = solid_shape.back_project(col + w / 2, row + h / 2, 1.0, view.K)
    lowest = np.sin(np.radians(solid_shape.MIN_ELEVATION))
    if abs(frame.rotation[2] @ ray) < lowest * np.linalg.norm(ray):
        return list(solid_shape.SHAPES)
    # The plane must be the table the surface stands on: the table around it lies on it (a
    # far camera's plane can be fitted across the table's edge, and then nothing is measured).
    top, left = max(row - RING - 1, 0), max(col - RING - 1, 0)
    window = slice(top, row + h + RING + 1), slice(left, col + w + RING + 1)
    ring = (ndimage.binary_dilation(mask[window], iterations=RING) & ~mask[window]
            & (cut.labels[window] == 0) & ~cut.standing[window] & (view.depth[window] > 0))
    rows, cols = np.nonzero(ring)
    rows, cols = rows + top, cols + left
    below = frame.apply(solid_shape.back_project(cols, rows, view.depth[rows, cols], view.K))
    if len(rows) < MIN_RING or np.median(np.abs(below[:, 2])) > ON_TABLE:
        return list(solid_shape.SHAPES)
    # Depth as noisy as the top band is wide tells no shape (a real sensor's, 3 mm at a metre).
    spread = 1.4826 * np.median(np.abs(below[:, 2] - np.median(below[:, 2])))
    if spread > NOISE:
        return list(solid_shape.SHAPES)
    rows, cols = np.nonzero(mask)
    points = frame.apply(solid_shape.back_project(cols, rows, view.depth[rows, cols], view.K))
    face = solid_shape.top_face(view.depth, mask, view.K, frame, (0.0, np.inf), BAND)
    if face is None:
        return list(solid_shape.SHAPES)
    return solid_shape.shapes_left(solid_shape.measure(points, FOOT, BAND, face.points),
                                   face.rounded)
