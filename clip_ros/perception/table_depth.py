"""
Objects on a washed-out table, seen in depth: a look for phrases the frame left unfound.

Under a bright lamp a white object on the table is clipped to white like the table around it:
colour cannot cut it out (perception.table_split finds nothing, or only its shadow), and CLIP
and the shape head see a blank crop. Depth still sees it standing on the table. With a depth
image registered to the frame (and its intrinsics), a frame whose table is clipped white gives
each phrase left unfound the blobs standing above the table's plane, each judged on a view
drawn from depth: the frame's own colours, shaded by the surface's slope, on the table colour
the model knows. In that view the shape head sees a bowl's hollow and a ball's roundness again.

CLIP's shape words are weak (perception.classify composes colour from CLIP and shape from the
head for the same reason), so a blob's CLIP margin here is its colour's: the phrase against
the model's names of the same shape in other colours; the shape head answers for the shape.
CLIPSeg's map is not asked: on a washed-out table it covers the table or nothing. The
constants were chosen on validation-split scenes under the light-intensity condition.
"""
from collections import namedtuple

import numpy as np
from scipy import ndimage

from clip_ros.perception.regions import region_from_mask

# One frame's depth: float32 [H, W] metres along the optical axis (NaN or <= 0: none), and
# the pinhole intrinsics K (3x3) of the image it is registered to.
DepthView = namedtuple('DepthView', 'depth K')

CLIPPED = 250       # a channel this bright is clipped
WASHED_OUT = 0.2    # the table is washed out when this share of the frame is clipped
WHITE_SHARE = 0.25  # a blob is white when this share of its pixels is clipped in every channel
ABOVE = 0.01        # standing: nearer than the table plane by this share of its distance
FIT_ROUNDS = 3      # robust plane fit: refits without the outliers of the last one
FIT_SAMPLES = 4000  # table pixels the plane is fitted to
MIN_PIXELS = 60     # a blob smaller than this is noise or an edge
MAX_SHARE = 0.05    # a blob larger than this share of the frame is no object on the table
RING = 5            # pixels around a blob that tell what it stands on
ON_CLIPPED = 0.2    # ... at least this share of them clipped: it stands on the table
MIN_MARGIN = 0.0    # the phrase's colour beats the other colours of its shape
MIN_SHAPE = 0.5     # the shape head's probability of the phrase's shape in the drawn view
SMOOTH = 2.5       # pixels: the depth's smoothing (Gaussian sigma) before its slopes are taken
AMBIENT = 0.3       # the drawn view's light: ambient share, the rest from the surface's slope
LIGHT = np.array([0.3, -0.6, 0.0])  # added to the view direction: light from above the camera
NEUTRAL = (128, 128, 128)  # the view's table without a model light reference


def check_depth(view, shape: tuple):
    """Return `view` as a DepthView of float32 depth, or raise ValueError naming what is wrong."""
    if view is None:
        return None
    depth, K = view
    depth = np.asarray(depth, np.float32)
    K = np.asarray(K, np.float64)
    if depth.shape != tuple(shape):
        raise ValueError(f'depth {depth.shape} is not the frame size {tuple(shape)}')
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f'intrinsics must be a 3x3 pinhole matrix, got {K.tolist()}')
    return DepthView(depth, K)


def table_plane(depth: np.ndarray, table: np.ndarray):
    """
    Return the table's plane as inverse depth a*u + b*v + c (array [3]), or None.

    A plane's inverse depth is linear in pixel coordinates, so no intrinsics are needed. Fitted
    by least squares to the table pixels with depth, then refitted without the pixels far off
    it (objects and shadows that passed for table).
    """
    rows, cols = np.nonzero(table & np.isfinite(depth) & (depth > 0))
    if rows.size < 3 * MIN_PIXELS:
        return None
    pick = np.linspace(0, rows.size - 1, min(rows.size, FIT_SAMPLES)).astype(int)
    rows, cols = rows[pick], cols[pick]
    a = np.stack([cols, rows, np.ones_like(rows)], axis=1).astype(np.float64)
    b = 1.0 / depth[rows, cols].astype(np.float64)
    keep = np.ones(b.size, bool)
    for _ in range(FIT_ROUNDS):
        plane = np.linalg.lstsq(a[keep], b[keep], rcond=None)[0]
        error = np.abs(a @ plane - b)
        keep = error <= max(3.0 * float(np.median(error[keep])), 1e-6)
        if keep.sum() < 3 * MIN_PIXELS:
            return None
    return plane


def standing(depth: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """Return bool [H, W]: the pixels nearer than the table plane by ABOVE of its distance."""
    rows = np.arange(depth.shape[0], dtype=np.float32)[:, None]
    cols = np.arange(depth.shape[1], dtype=np.float32)[None, :]
    with np.errstate(invalid='ignore', divide='ignore'):
        inverse = np.where(depth > 0, 1.0 / depth, 0.0)
    table = (np.float32(plane[0]) * cols + np.float32(plane[1]) * rows) + np.float32(plane[2])
    return inverse > table * np.float32(1.0 + ABOVE)


def washed_out_blobs(rgb: np.ndarray, view: DepthView, prob=None) -> list:
    """
    Return Regions of the white blobs standing on a washed-out table, or [] when it is not.

    The table is washed out when at least WASHED_OUT of the frame is clipped (its brightest
    channel at least CLIPPED: a cream table reads (255, 255, 215)); the plane is fitted to those
    pixels. A blob counts when it is MIN_PIXELS to MAX_SHARE of the frame, stands on the clipped
    table (at least ON_CLIPPED of the ring around it is clipped: not the arm above the floor)
    and is white as the lamp clips it (a quarter of its pixels or more clipped in every
    channel): a coloured object keeps its colour, and colour has had its chance at it (an
    orange one clipped to yellow would pass for yellow here). prob: a map [H, W] for each
    blob's mean (zeros without).
    """
    high = [rgb[..., c] >= CLIPPED for c in range(3)]  # per channel: a reduction over the
    clipped = high[0] | high[1] | high[2]              # last axis of 3 is slow in numpy
    white = high[0] & high[1] & high[2]
    if clipped.mean() < WASHED_OUT:
        return []
    plane = table_plane(view.depth, clipped)
    if plane is None:
        return []
    up = ndimage.binary_opening(standing(view.depth, plane))
    labels, count = ndimage.label(up)
    prob = np.zeros(clipped.shape, np.float32) if prob is None else prob
    blobs = []
    for label, window in enumerate(ndimage.find_objects(labels), start=1):
        rows, cols = window
        r0, c0 = max(rows.start - RING, 0), max(cols.start - RING, 0)
        r1, c1 = rows.stop + RING, cols.stop + RING
        blob = labels[r0:r1, c0:c1] == label
        area = int(blob.sum())
        if not MIN_PIXELS <= area <= MAX_SHARE * clipped.size:
            continue
        ring = ndimage.binary_dilation(blob, iterations=RING) & ~(labels[r0:r1, c0:c1] > 0)
        if clipped[r0:r1, c0:c1][ring].mean() >= ON_CLIPPED and \
                white[r0:r1, c0:c1][blob].mean() >= WHITE_SHARE:
            blobs.append(region_from_mask(blob, (r0, c0), prob[r0:r1, c0:c1]))
    return blobs


def accepts(evidence) -> bool:
    """Tell whether a blob of the look in depth is the phrase: its colour and its shape."""
    return evidence.margin >= MIN_MARGIN and evidence.shape_prob >= MIN_SHAPE


def score(evidence) -> float:
    """Return a depth blob's detection score: CLIP's colour and the head's shape (no map)."""
    return float(np.sqrt(max(evidence.clip_prob, 0.0) * max(evidence.shape_prob, 0.0)))


def drawn_view(rgb: np.ndarray, view: DepthView, blobs: list, table_rgb=None) -> np.ndarray:
    """
    Return the frame as depth shows it: the blobs' pixels shaded by slope, the rest table.

    rgb: the frame as the camera gave it (a clipped white stays white, so it is drawn as a lit
    white surface); table_rgb: the table colour the model was trained on (NEUTRAL without).
    """
    out = np.empty_like(rgb)
    out[:] = np.asarray(NEUTRAL if table_rgb is None else table_rgb, np.float64).round()
    if not blobs:
        return out
    depth, K = view
    for blob in blobs:
        r0, c0 = blob.offset
        h, w = blob.mask.shape
        window = depth[r0:r0 + h, c0:c0 + w]
        inside = blob.mask & np.isfinite(window) & (window > 0)
        # Smoothed first (a depth camera's noise exceeds the step between pixels), within the
        # blob only: the step down to the table would tilt its rim.
        weight = ndimage.gaussian_filter(inside.astype(np.float64), SMOOTH)
        with np.errstate(invalid='ignore', divide='ignore'):
            smooth = ndimage.gaussian_filter(np.where(inside, window, 0.0), SMOOTH) / weight
        rows, cols = np.mgrid[r0:r0 + h, c0:c0 + w]
        points = np.stack([(cols - K[0, 2]) * smooth / K[0, 0],
                           (rows - K[1, 2]) * smooth / K[1, 1], smooth], axis=-1)
        normal = np.cross(np.gradient(points, axis=1), np.gradient(points, axis=0))
        light = -points / (np.linalg.norm(points, axis=-1, keepdims=True) + 1e-9) + LIGHT
        with np.errstate(invalid='ignore'):
            shade = np.abs((normal * light).sum(axis=-1)) / (
                np.linalg.norm(normal, axis=-1) * np.linalg.norm(light, axis=-1) + 1e-12)
        lit = AMBIENT + (1.0 - AMBIENT) * np.nan_to_num(shade[blob.mask], nan=1.0)
        out[r0:r0 + h, c0:c0 + w][blob.mask] = (
            rgb[r0:r0 + h, c0:c0 + w][blob.mask] * lit[:, None]).astype(np.uint8)
    return out


def colour_rivals(texts: list, query: str, shapes) -> list:
    """
    Return the indices of `texts` that rival `query` for a blob's colour, or None.

    The rivals are the other texts of as many words with the query's shape word ('red bowl'
    for 'white bowl'; not 'bowl', which names no colour); a query that names no shape of
    `shapes` gets None (its margin stays CLIP's whole one).
    """
    words = query.split()
    shape = [w for w in words if w in shapes]
    if not shape:
        return None
    return [k for k, text in enumerate(texts) if text != query
            and len(text.split()) == len(words) and shape[0] in text.split()]
