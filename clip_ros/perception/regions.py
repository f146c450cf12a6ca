"""
Instances from a probability map: one region per object, not per connected blob.

Thresholding a CLIPSeg map and taking connected components gives one region per blob, and a
blob is not an object: two touching objects that both match a phrase (same colour, or one in
front of the other) come back as one blob, and a small or distant object can break into
pieces that are each too small to keep. `instances` fixes both, cheaply and from the map alone:

- fragments: a piece too small to keep (under min_area) near a larger one is joined to it
  rather than dropped, so a broken-up distant object keeps its pieces;
- touching objects: each region is cut between separate peaks of height = distance to the
  region's border times the probability, where the neck between two peaks is lower than
  split_ratio of the lower one; every pixel goes to its nearest peak core, and each part must
  be a blob of its own (not a thin arm, which is what an occluder leaves of one object). A
  convex blob has a single peak of distance, so a saturated convex blob is never cut; where
  the map is not saturated, a dip of probability between two peaks counts as a neck too.

Coordinates and Region fields follow perception.geometry.
"""
import numpy as np
from scipy import ndimage

from clip_ros.perception.geometry import connected_components, Region

SPLIT_RATIO = 0.7      # cut where the neck is lower than this share of the lower peak
MIN_PEAK = 3.0         # pixels: each part is at least this far from its border somewhere
MIN_PEAK_SHARE = 0.15  # ... and at least this share of the region's highest peak
LEVELS = np.arange(0.1, 0.75, 0.05)  # cut levels tried, as shares of the highest peak
MIN_PART_SHARE = 0.15  # every part holds at least this share of the region's pixels
MIN_COMPACTNESS = 0.34  # ... and is a blob, not an arm (see compactness)
COARSE_AREA = 2500     # regions above this many pixels are cut at half resolution
FRAGMENT_SHARE = 0.35  # a fragment has at most this share of its neighbour's area
FRAGMENT_GAP = 0.6     # ... and lies within this many fragment radii (at least GAP_PX) of it
GAP_PX = 3
MAX_PIECES = 64      # components considered for joining (largest first)
MAX_PARTS = 6        # a region is cut into at most this many parts (its highest peaks)
# Maps with more pieces are noise, not objects: plain blobs, no joins or cuts (each costs
# distance transforms: seconds on a noisy map).
MAX_REFINED = 16
_EIGHT = ndimage.generate_binary_structure(2, 2)


def instances(prob: np.ndarray, limit: float, min_area: int = 1,
              split_ratio: float = SPLIT_RATIO, merge: bool = True,
              alternatives: bool = False, cut: list | None = None) -> list:
    """
    Return the object instances of one probability map as Regions.

    Parameters
    ----------
    prob : float [H, W]
        Probability map (e.g. CLIPSeg's for one phrase).
    limit : float
        Foreground is prob > limit.
    min_area : int
        Instances with fewer pixels are dropped (after fragments joined their neighbours).
    split_ratio : float
        Cut a region between two peaks whose neck is under this share of the lower peak's
        height; 0 never cuts.
    merge : bool
        Join fragments to their near, larger neighbours.
    alternatives : bool
        Return a cut region whole as well as its parts, for a scorer to choose between them
        (`distinct` then keeps the better of overlapping candidates).
    cut : list or None
        When a list, every region that was cut in parts is appended to it (whole).

    Returns
    -------
    list of Region, mean_prob over each instance's pixels.

    """
    prob = np.asarray(prob, dtype=np.float32)
    # Specks far under min_area are noise, not fragments worth joining.
    pieces = connected_components(prob > limit, prob, max(1, min_area // 8) if merge else min_area)
    if len(pieces) > MAX_REFINED:
        return [region for region in pieces if region.area >= min_area]
    if merge and len(pieces) > 1:
        pieces = join_fragments(sorted(pieces, key=lambda r: -r.area)[:MAX_PIECES], prob,
                                min_area)
    found = []
    for region in pieces:
        if region.area < min_area:
            continue
        parts = split_region(region, prob, min_area, split_ratio) if split_ratio > 0 else []
        found += ([region] + parts if alternatives else parts) if parts else [region]
        if parts and cut is not None:
            cut.append(region)
    return found


def _window(region: Region, prob: np.ndarray) -> np.ndarray:
    r0, c0 = region.offset
    h, w = region.mask.shape
    return prob[r0:r0 + h, c0:c0 + w]


def region_from_mask(mask: np.ndarray, offset: tuple, prob_window: np.ndarray) -> Region:
    """Build a Region from a bool mask inside a window at `offset` (cropped to its pixels)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    sub = mask[r0:r1, c0:c1]
    ys, xs = np.nonzero(sub)
    top, left = offset[0] + r0, offset[1] + c0
    return Region(box=(float(left), float(top), float(left + c1 - c0), float(top + r1 - r0)),
                  area=int(ys.size), centroid=(left + xs.mean() + 0.5, top + ys.mean() + 0.5),
                  mean_prob=float(prob_window[r0:r1, c0:c1][sub].mean()), mask=sub,
                  offset=(int(top), int(left)))


def split_region(region: Region, prob: np.ndarray, min_area: int = 1,
                 split_ratio: float = SPLIT_RATIO) -> list:
    """
    Cut one region between separate peaks of distance-to-border times probability.

    At each cut level L (a share of the highest peak) the pixels higher than L fall into cores;
    a core counts when its own peak reaches L / split_ratio (so the neck that separates it lies
    under split_ratio of it), MIN_PEAK and MIN_PEAK_SHARE of the highest peak. The level with
    the most counted cores wins (the lowest among equals); every pixel of the region then goes
    to its nearest counted core. Returns the parts (each at least min_area pixels), or [] when
    the region stays whole.
    """
    if region.area < 2 * max(min_area, 1):
        return []
    mask, window = region.mask, _window(region, prob)
    # Maps come upsampled from a coarse decoder: big regions lose nothing at half resolution.
    step = 2 if region.area > COARSE_AREA else 1
    pad = GAP_PX + 1
    small = np.pad(mask[::step, ::step], pad)
    if ndimage.label(small, structure=_EIGHT)[1] > 1:
        # Joined fragments: closed, so the cracks between them do not read as necks.
        small = ndimage.binary_closing(small, _EIGHT, max(1, GAP_PX // step))
    height = ndimage.distance_transform_edt(small)[pad:-pad, pad:-pad] * step
    height *= np.clip(window[::step, ::step], 0.0, 1.0)
    top = float(height.max())
    floor = max(MIN_PEAK, MIN_PEAK_SHARE * top)
    if top < 2 * floor:
        return []
    best, best_count = None, 1
    for share in LEVELS:
        level = share * top
        cores, count = ndimage.label(height > level, structure=_EIGHT)
        if count < 2:
            continue
        peaks = np.zeros(count + 1)
        np.maximum.at(peaks, cores.ravel(), height.ravel())
        keep = np.flatnonzero((peaks * split_ratio >= level) & (peaks >= floor))
        if len(keep) > best_count:
            best, best_count = (cores, keep, peaks), len(keep)
    if best is None:
        return []
    cores, keep, peaks = best
    # A noisy map has dozens of cores; touching objects are a few. Trying every core would cost
    # one distance transform per core and part (seconds on a noisy 640x480 map).
    keep = np.sort(keep[np.argsort(-peaks[keep], kind='stable')[:MAX_PARTS]])
    least = max(min_area, MIN_PART_SHARE * region.area)
    while len(keep) > 1:
        parts = _nearest_parts(region, window, cores, keep, step)
        # An object is a blob; a thin arm is what is left beside an occluder of one object.
        fit = [min(p.area / least, compactness(p.mask) / max(MIN_COMPACTNESS, 1e-6))
               for p in parts]
        if min(fit) >= 1.0:
            return parts
        keep = np.delete(keep, int(np.argmin(fit)))  # cannot stand alone: re-assign its pixels
    return []


def compactness(mask: np.ndarray) -> float:
    """Return the inscribed radius over the square root of the area (disc 0.56, 2:1 bar 0.35)."""
    area = int(np.count_nonzero(mask))
    if not area:
        return 0.0
    return float(ndimage.distance_transform_edt(np.pad(mask, 1)).max() / np.sqrt(area))


def _nearest_parts(region: Region, window, cores, keep, step: int) -> list:
    """Return the region's pixels grouped by their nearest core among `keep`."""
    lookup = np.zeros(int(cores.max()) + 1, np.int32)
    lookup[keep] = np.arange(1, len(keep) + 1)
    seeds = lookup[cores]
    _, (rows, cols) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    nearest = seeds[rows, cols]
    mask = region.mask
    if step > 1:
        nearest = np.repeat(np.repeat(nearest, step, 0), step, 1)[:mask.shape[0], :mask.shape[1]]
    return [region_from_mask(mask & (nearest == k), region.offset, window)
            for k in range(1, len(keep) + 1) if (mask & (nearest == k)).any()]


def join_fragments(regions: list, prob: np.ndarray, min_area: int) -> list:
    """
    Join the pieces of a map that belong together.

    A piece under min_area (too small to keep on its own) with at most FRAGMENT_SHARE of
    another's area joins it when it lies within max(GAP_PX, FRAGMENT_GAP * its radius) of it;
    pieces of similar size stay apart (they are as likely two objects), and pieces big enough
    to keep stay candidates of their own. A joined region keeps the union of their pixels (the
    gap stays background).
    """
    parent = list(range(len(regions)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for k, a in enumerate(regions):
        for j in range(k + 1, len(regions)):
            b = regions[j]
            small, big = (a, b) if a.area <= b.area else (b, a)
            if small.area >= min_area or small.area > FRAGMENT_SHARE * big.area or \
                    root(k) == root(j):
                continue
            if _gap(a, b) <= max(GAP_PX, FRAGMENT_GAP * np.sqrt(small.area / np.pi)):
                parent[root(j)] = root(k)
    groups = {}
    for k, region in enumerate(regions):
        groups.setdefault(root(k), []).append(region)
    if len(groups) == len(regions):
        return regions
    return [_union(members, prob) if len(members) > 1 else members[0]
            for members in groups.values()]


def _gap(a: Region, b: Region) -> float:
    """Return the smallest pixel distance between two regions (0 when they touch)."""
    ax0, ay0, ax1, ay1 = (int(v) for v in a.box)
    bx0, by0, bx1, by1 = (int(v) for v in b.box)
    box_gap = max(bx0 - ax1, ax0 - bx1, by0 - ay1, ay0 - by1, 0)
    if box_gap > 32:
        return float(box_gap)  # far apart: the boxes say enough
    top, left = min(ay0, by0), min(ax0, bx0)
    outside_b = np.ones((max(ay1, by1) - top, max(ax1, bx1) - left), bool)
    r, c = b.offset[0] - top, b.offset[1] - left
    outside_b[r:r + b.mask.shape[0], c:c + b.mask.shape[1]] &= ~b.mask
    to_b = ndimage.distance_transform_edt(outside_b)
    r, c = a.offset[0] - top, a.offset[1] - left
    return float(max(to_b[r:r + a.mask.shape[0], c:c + a.mask.shape[1]][a.mask].min() - 1.0, 0.0))


def _union(members: list, prob: np.ndarray) -> Region:
    """Return one Region holding the pixels of several."""
    top = min(m.offset[0] for m in members)
    left = min(m.offset[1] for m in members)
    bottom = max(m.offset[0] + m.mask.shape[0] for m in members)
    right = max(m.offset[1] + m.mask.shape[1] for m in members)
    mask = np.zeros((bottom - top, right - left), bool)
    for m in members:
        r, c = m.offset[0] - top, m.offset[1] - left
        mask[r:r + m.mask.shape[0], c:c + m.mask.shape[1]] |= m.mask
    return region_from_mask(mask, (top, left), prob[top:bottom, left:right])


def overlap(a: Region, b: Region) -> int:
    """Return how many pixels two regions share."""
    top, left = max(a.offset[0], b.offset[0]), max(a.offset[1], b.offset[1])
    bottom = min(a.offset[0] + a.mask.shape[0], b.offset[0] + b.mask.shape[0])
    right = min(a.offset[1] + a.mask.shape[1], b.offset[1] + b.mask.shape[1])
    if bottom <= top or right <= left:
        return 0
    wa = a.mask[top - a.offset[0]:bottom - a.offset[0], left - a.offset[1]:right - a.offset[1]]
    wb = b.mask[top - b.offset[0]:bottom - b.offset[0], left - b.offset[1]:right - b.offset[1]]
    return int(np.count_nonzero(wa & wb))


def distinct(regions: list, owners: list, order, share: float = 0.5) -> list:
    """
    Return the candidates of `order` (indices, best first) that are not another's duplicate.

    A candidate is dropped when more than `share` of the smaller of it and a candidate kept
    before it (same owner, i.e. phrase) are the same pixels: of a region and its parts
    (`instances(..., alternatives=True)`) only the better-scored reading survives.
    """
    kept = []
    for k in order:
        if all(owners[j] != owners[k] or overlap(regions[j], regions[k])
               <= share * min(regions[j].area, regions[k].area) for j in kept):
            kept.append(k)
    return kept
