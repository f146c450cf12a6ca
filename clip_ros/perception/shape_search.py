"""
Shape search: find the named object inside a blob that holds several objects of its colour.

(And its converse, `sure_wholes`: keep a blob whole that the instance step cut in parts.)

CLIPSeg's maps of the bundled model follow colour, not shape, so same-colour objects that
touch come back as one blob ("the green cylinder" boxes the green cylinder, ball and block
together). When such a blob is larger than one compact object, windows of about one object's
size are slid over it, each cut to the blob's pixels inside, and the shape head scores them.
When the head finds the whole blob unlikely to be the named shape and one window surely is,
that window becomes the candidate, moved and grown a little where the head is clearly surer of
a neighbouring window (the grid is coarse); otherwise the blob stays as it is (a window of one
tall block is as much a block as the whole, so a likely whole is never searched).
"""
import numpy as np
from scipy import ndimage

from clip_ros.perception.regions import region_from_mask

MIN_EXCESS = 1.8   # search a blob whose area exceeds this many inscribed discs
# Window sides in inscribed radii: the blob's inscribed disc can span two objects, so sides
# go down to about one object's diameter at half that radius.
SIDES = (1.2, 1.6, 2.0, 2.8, 3.6)
MAX_WINDOWS = 48   # windows scored per blob, at most
# Blobs searched per frame, the map's surest first: a cluttered frame (192 same-colour squares)
# took 24 s unbounded; on val scenes no query needed more than 3 outside textured tables.
MAX_BLOBS = 8
MIN_FILL = 0.35    # blob pixels fill at least this share of a window
# Chosen on validation scenes: a window of one tall block or partly hidden object also looks
# like a block, so the whole must be unlikely the shape and the window must be sure of it.
MAX_WHOLE = 0.4    # search only a blob the head finds less likely the shape than this
MIN_PROB = 0.75    # the best window shows the shape at least this surely ...
MIN_GAIN = 0.25    # ... and this much more surely than the whole blob
SURE_WHOLE = 0.75  # a blob cut in parts stays a candidate whole when it is the shape this surely
# The grid steps one inscribed radius, so the best window may sit off the object: it is then
# moved by half a step each way and grown, and the surest of those windows replaces it when
# the head is clearly surer (overlapping windows of one object differ by a few hundredths).
NUDGES = (-0.5, 0.0, 0.5)  # moves, in inscribed radii
GROWTH = (1.0, 1.3)        # growth factors of the window's sides
NUDGE_GAIN = 0.05          # chosen on validation scenes


def excess(mask: np.ndarray) -> tuple:
    """Return (area over the inscribed disc's area, inscribed radius) of a bool mask."""
    radius = float(ndimage.distance_transform_edt(np.pad(mask, 1)).max())
    return float(np.count_nonzero(mask)) / max(np.pi * radius * radius, 1.0), radius


def windows(region, radius: float) -> list:
    """Return the distinct masks (bool, region-sized) of object-sized windows over a region."""
    mask = region.mask
    h, w = mask.shape
    step = max(1, int(round(radius)))
    seen, found = set(), []
    for side_h in SIDES:
        for side_w in SIDES[:3]:
            wh, ww = int(round(side_h * radius)), int(round(side_w * radius))
            if wh >= h and ww >= w:
                continue  # the whole blob
            least = MIN_FILL * min(wh, h) * min(ww, w)
            for top in range(0, max(h - wh, 0) + 1, step):
                for left in range(0, max(w - ww, 0) + 1, step):
                    part = window_part(mask, top, left, wh, ww, least, seen)
                    if part is not None:
                        found.append(part)
    if len(found) > MAX_WINDOWS:  # keep an even spread
        found = [found[int(i)] for i in np.linspace(0, len(found) - 1, MAX_WINDOWS)]
    return found


def sure_wholes(head, rgb: np.ndarray, cut: list, words: str) -> list:
    """
    Return (blob, the head's probability of the named shape) for the blobs to keep whole.

    `cut` holds the regions the instance step cut in parts.

    An occluder in front of one object leaves two blobs of it joined by a neck, which the
    instance step cuts like two touching objects; where the shape head is SURE_WHOLE sure the
    whole blob is the shape the words name, the whole competes with its parts for the
    detection. Without a head or a shape word: none.
    """
    shape = None if head is None else head.shape_index(words)
    if shape is None or not cut:
        return []
    probs = head.probabilities(rgb, [r.box for r in cut])[:, shape]
    return [(region, float(p)) for region, p in zip(cut, probs) if p >= SURE_WHOLE]


def search_radius(region) -> float:
    """Return the inscribed radius of a region larger than one compact object, else 0."""
    ratio, radius = excess(region.mask)
    return radius if ratio >= MIN_EXCESS and radius >= 2 else 0.0


def search(head, rgb: np.ndarray, region, shape: int, whole: float, window_prob,
           radius: float):
    """
    Return (Region, probability) of the window that shows `shape` best, or None.

    `whole` is the head's probability of `shape` for the whole region; window_prob is the
    region's probability map window (for the parts' mean probability); radius its
    search_radius. None when the region gives no window that beats the whole by MIN_GAIN at
    MIN_PROB or above. The best window is then nudged (one more head batch): moved by NUDGES
    radii and grown by GROWTH, the surest variant replaces it when NUDGE_GAIN surer.
    """
    if whole >= MAX_WHOLE:
        return None
    parts = windows(region, radius)
    if not parts:
        return None
    regions = [region_from_mask(p, region.offset, window_prob) for p in parts]
    probs = head.probabilities(rgb, [r.box for r in regions])[:, shape]
    best = int(np.argmax(probs))
    if probs[best] < max(MIN_PROB, whole + MIN_GAIN):
        return None
    found, prob = regions[best], float(probs[best])
    nudged = [region_from_mask(p, region.offset, window_prob)
              for p in _nudged(region.mask, found, region.offset, radius)]
    if nudged:
        probs = head.probabilities(rgb, [r.box for r in nudged])[:, shape]
        best = int(np.argmax(probs))
        if probs[best] >= prob + NUDGE_GAIN:
            found, prob = nudged[best], float(probs[best])
    return found, prob


def _nudged(mask: np.ndarray, window, offset: tuple, radius: float) -> list:
    """Return blob masks of windows around `window` (a Region in the blob), moved and grown."""
    top, left = window.offset[0] - offset[0], window.offset[1] - offset[1]
    h, w = window.mask.shape
    found, seen = [], {(top, left, top + h, left + w)}
    for growth in GROWTH:
        wh, ww = int(round(h * growth)), int(round(w * growth))
        for dy in NUDGES:
            for dx in NUDGES:
                t = max(0, top + (h - wh) // 2 + int(round(dy * radius)))
                lf = max(0, left + (w - ww) // 2 + int(round(dx * radius)))
                part = window_part(mask, t, lf, wh, ww, MIN_FILL * wh * ww, seen)
                if part is not None:
                    found.append(part)
    return found


def window_part(mask: np.ndarray, top: int, left: int, height: int, width: int, least: float,
                seen: set):
    """
    Return the mask's pixels inside a window, or None (fewer than `least`, or a box in `seen`).

    Boxes are (top, left, bottom, right) of the pixels, exclusive; a new one joins `seen`.
    """
    part = np.zeros_like(mask)
    part[top:top + height, left:left + width] = mask[top:top + height, left:left + width]
    if np.count_nonzero(part) < least:
        return None
    rows, cols = np.flatnonzero(part.any(1)), np.flatnonzero(part.any(0))
    key = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
    if key in seen:
        return None
    seen.add(key)
    return part
