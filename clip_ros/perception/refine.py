"""
Sharper boxes and masks for small objects: the frame's own colours redraw a coarse region.

A CLIPSeg map is coarse (the bundled model's is 128x128 for the whole frame, 5x3.75 frame
pixels a cell at 640x480), so an object a few cells wide gets a box that is too large (a
blurred map spreads over the table and the shadow) or too small (the threshold cuts the blur's
rim): right object, box IoU under 0.5. `refine` redraws such a region at frame resolution. Its
most probable pixels that are not of the table's colours give the object's colours and the rim
of a window around it the background's (a few k-means centres each, so shading and texture are
covered); every window pixel goes to the nearer set, and the connected piece that holds the
most probable pixels is the object. Large regions are left alone: their boxes are already
good, and their windows would reach same-colour neighbours, which the colours alone cannot
tell apart (so a window that shape search cut from a same-colour blob is not redrawn either).

`grow` serves the other failure of a coarse map: a partly hidden object whose map covers only
part of what is visible of it (right object, box IoU under 0.5). The region grows into the
connected pixels of its own colours around it; since a same-colour neighbour is reached the
same way, the caller keeps the grown region only when the shape head finds it at least as much
the named shape as before (GroundingPipeline).
"""
import numpy as np
from scipy import ndimage

from clip_ros.perception.geometry import box_iou, Region
from clip_ros.perception.regions import region_from_mask

MAX_CELLS = 8.0     # refine regions at most this many (wider) map cells across (chosen on val)
MARGIN = 0.5        # the window reaches this share of the region's longer side beyond it
CORE_SHARE = 0.3    # the most probable share of the region's pixels gives the object colours
CENTRES = 3         # k-means centres of the object's and of the background's colours
# A coarse map can peak beside a small object, so its most probable pixels hold table; those
# within CORE_APART (RGB distance) of a background colour leave the core, unless fewer than
# OWN_SHARE of it would stay (an object of the table's colours). Chosen on val scenes.
CORE_APART = 20.0
OWN_SHARE = 0.25
MIN_RATIO, MAX_RATIO = 0.3, 3.0  # a redrawn region's area within these times the old one's
MIN_OVERLAP = 0.3   # ... and its box at least this IoU with the old box (chosen on val scenes)


def _squared(pixels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Return squared distances [C, N] of float pixels [N, 3] to centres [C, 3]."""
    # Channel by channel: numpy reduces a short last axis slowly, and this sums in the same
    # order as ((pixels[:, None] - centres[None]) ** 2).sum(-1), so the result is the same.
    red, green, blue = pixels[:, 0], pixels[:, 1], pixels[:, 2]
    return np.stack([(red - r) ** 2 + (green - g) ** 2 + (blue - b) ** 2
                     for r, g, b in centres])


def _centres(pixels: np.ndarray, count: int, iterations: int = 8) -> np.ndarray:
    """Return up to `count` k-means centres of float pixels [N, 3] (deterministic start)."""
    if len(pixels) <= count:
        return pixels
    centres = pixels[np.linspace(0, len(pixels) - 1, count).astype(int)].copy()
    last = None
    for _ in range(iterations):
        nearest = _squared(pixels, centres).argmin(0)
        if last is not None and np.array_equal(nearest, last):
            break  # converged: the same members give the same centres
        last = nearest
        for j in range(count):
            members = pixels[nearest == j]
            if len(members):
                centres[j] = members.mean(0)
    return centres


def _distance(pixels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Return each pixel's squared distance to its nearest centre."""
    return _squared(pixels, centres).min(0)


def _window(rgb: np.ndarray, region: Region, margin: float) -> tuple:
    """
    Return the frame around a region: (float pixels, region mask, rim, (top, left, bottom, right)).

    The window reaches `margin` of the region's longer side (and 2 pixels) beyond it, cut at
    the frame's edges; the rim is its 2-pixel border outside the region.
    """
    x0, y0, x1, y1 = region.box
    height, width = rgb.shape[:2]
    reach = int(margin * max(x1 - x0, y1 - y0)) + 2
    top, left = max(0, int(y0) - reach), max(0, int(x0) - reach)
    bottom, right = min(height, int(y1) + reach), min(width, int(x1) + reach)
    window = rgb[top:bottom, left:right].astype(np.float32)
    inside = np.zeros(window.shape[:2], bool)
    r0, c0 = region.offset[0] - top, region.offset[1] - left
    inside[r0:r0 + region.mask.shape[0], c0:c0 + region.mask.shape[1]] = region.mask
    rim = np.zeros_like(inside)
    rim[:2], rim[-2:], rim[:, :2], rim[:, -2:] = True, True, True, True
    return window, inside, rim & ~inside, (top, left, bottom, right)


def refine(rgb: np.ndarray, region: Region, prob: np.ndarray, cell: tuple) -> Region:
    """
    Return the region redrawn from the frame's colours, or `region` itself when left alone.

    `prob` is the phrase's map at frame size; `cell` the (width, height) of one map cell in
    frame pixels. Regions wider or taller than MAX_CELLS of the cell's longer side (40 pixels
    for a 128x128 map of a 640x480 frame), and redraws whose area is not
    within MIN_RATIO..MAX_RATIO of the old one (the colours did not separate) or whose box
    moved off the old one (box IoU under MIN_OVERLAP: a neighbour or a shadow of the object's
    colours joined it), keep the old region.
    """
    x0, y0, x1, y1 = region.box
    if max(x1 - x0, y1 - y0) > MAX_CELLS * max(cell):  # frame pixels, the same both ways
        return region
    window, inside, rim, (top, left, bottom, right) = _window(rgb, region, MARGIN)
    probs = prob[top:bottom, left:right]
    core = inside & (probs >= np.quantile(probs[inside], 1.0 - CORE_SHARE))
    if core.sum() < 4 or rim.sum() < 8:
        return region
    pixels = window.reshape(-1, 3)
    background = _centres(window[rim], CENTRES)
    own = core & (_distance(pixels, background) > CORE_APART ** 2).reshape(core.shape)
    if own.sum() >= max(4, OWN_SHARE * core.sum()):
        core = own
    near_object = (_distance(pixels, _centres(window[core], CENTRES))
                   < _distance(pixels, background))
    labels, count = ndimage.label(near_object.reshape(inside.shape))
    if not count:
        return region
    held = ndimage.sum(core, labels, range(1, count + 1))
    mask = labels == 1 + int(np.argmax(held))
    if not MIN_RATIO * region.area <= mask.sum() <= MAX_RATIO * region.area:
        return region
    redrawn = region_from_mask(mask, (top, left), probs)
    if box_iou(redrawn.box, region.box)[0, 0] < MIN_OVERLAP:
        return region
    return redrawn


# grow (chosen on val scenes): the window reaches GROW_MARGIN of the region's longer side beyond
# it; a pixel joins when nearer the region's colours than the window rim's and within
# GROW_DISTANCE (RGB) of them; the grown region holds MIN_GROWTH..MAX_GROWTH times the pixels.
GROW_MARGIN = 0.5
GROW_DISTANCE = 30.0
MIN_GROWTH, MAX_GROWTH = 1.15, 2.5


def grow(rgb: np.ndarray, region: Region, prob: np.ndarray) -> Region:
    """
    Return the region grown into the connected pixels of its colours, or `region` itself.

    `prob` is the phrase's map at frame size (the grown region's mean_prob is over it).
    The region's colours are a few k-means centres of its pixels that are not of the table's
    (the window rim's) colours; a region made mostly of table colours, too small a region or
    window, or growth outside MIN_GROWTH..MAX_GROWTH keeps the region as it is.
    """
    window, inside, rim, (top, left, bottom, right) = _window(rgb, region, GROW_MARGIN)
    if inside.sum() < 16 or rim.sum() < 8:
        return region
    pixels = window.reshape(-1, 3)
    to_table = _distance(pixels, _centres(window[rim], CENTRES)).reshape(inside.shape)
    own = inside & (to_table > CORE_APART ** 2)
    if own.sum() < max(16, OWN_SHARE * inside.sum()):
        return region
    to_own = _distance(pixels, _centres(window[own], CENTRES)).reshape(inside.shape)
    joins = (to_own < to_table) & (to_own < GROW_DISTANCE ** 2) & ~inside
    if joins.sum() < (MIN_GROWTH - 1.0) * region.area:
        return region
    labels, count = ndimage.label(joins | inside)
    held = np.zeros(count + 1, bool)
    held[labels[inside]] = True  # the pieces that touch the region
    mask = held[labels]
    if not MIN_GROWTH * region.area <= mask.sum() <= MAX_GROWTH * region.area:
        return region
    return region_from_mask(mask, (top, left), prob[top:bottom, left:right])
