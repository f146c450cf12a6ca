"""
Mask geometry: connected components, boxes, areas, centroids.

Coordinates follow the pixel-edge convention: pixel (row r, column c) covers [c, c + 1) x
[r, r + 1), so a box's x_max is the last column + 1 (width = x_max - x_min) and a centroid is the
mean pixel centre, which puts a full-image region's centroid at the centre of its box.
"""
from dataclasses import dataclass
import math

import numpy as np
from scipy import ndimage

# 3x3 structuring elements for scipy.ndimage.label, by pixel connectivity.
_STRUCTURES = {
    4: ndimage.generate_binary_structure(2, 1),
    8: ndimage.generate_binary_structure(2, 2),
}


# class_id of a Detection2D's second hypothesis: the shape head's probability (shape_prob).
SHAPE_HYPOTHESIS = 'shape'


@dataclass
class SceneObject:
    """One object of a generated scene with its ground truth (image pixels)."""

    name: str         # '<colour> <shape>', e.g. 'blue block'
    box: tuple        # (x_min, y_min, x_max, y_max), max exclusive
    mask: np.ndarray  # bool [H, W]


@dataclass
class Region:
    """One connected group of foreground pixels."""

    box: tuple        # (x_min, y_min, x_max, y_max) float pixels, max exclusive
    area: int         # foreground pixel count
    centroid: tuple   # (x, y) mean pixel centre
    mean_prob: float  # mean probability over the pixels (1.0 when no map was given)
    mask: np.ndarray  # bool [h, w]: the region's pixels inside its box
    offset: tuple     # (row, col) of the mask's top-left pixel in the full image


@dataclass
class Detection:
    """One grounded object instance (or class region) in original-image pixels."""

    index: int         # position in its result list; label-image pixels hold index + 1
    phrase: str        # query phrase or class name that produced it
    score: float       # final confidence in [0, 1]
    box: tuple         # (x_min, y_min, x_max, y_max) float pixels, max exclusive
    area: int          # pixel count
    centroid: tuple    # (x, y) mean pixel centre
    mean_prob: float   # mean segmentation probability over its pixels
    # The shape head's probability that it is the shape its phrase names, or any object for a
    # phrase without a shape word (nan: no shape head).
    shape_prob: float = math.nan

    @property
    def center_size(self) -> tuple:
        """Return the box as (cx, cy, w, h)."""
        return center_size(self.box)


def center_size(box) -> tuple:
    """Convert (x_min, y_min, x_max, y_max) into (cx, cy, w, h)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return ((x0 + x1) / 2.0, (y0 + y1) / 2.0, x1 - x0, y1 - y0)


def slices_to_box(slices) -> tuple:
    """Turn a (rows, cols) slice pair from scipy.ndimage.find_objects into a float box."""
    rows, cols = slices
    return (float(cols.start), float(rows.start), float(cols.stop), float(rows.stop))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the IoU matrix [K, T] of xyxy boxes `a` [K, 4] and `b` [T, 4]."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the IoU matrix [K, T] of bool masks `a` [K, h, w] and `b` [T, h, w]."""
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T  # [K, T]
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def region_iou(a: Region, b: Region) -> float:
    """Return the intersection over union of two Regions' pixels (masks at their offsets)."""
    (ar, ac), (br, bc) = a.offset, b.offset
    (ah, aw), (bh, bw) = a.mask.shape, b.mask.shape
    top, left = max(ar, br), max(ac, bc)
    bottom, right = min(ar + ah, br + bh), min(ac + aw, bc + bw)
    if bottom <= top or right <= left:
        return 0.0
    inter = np.count_nonzero(a.mask[top - ar:bottom - ar, left - ac:right - ac]
                             & b.mask[top - br:bottom - br, left - bc:right - bc])
    return inter / (a.area + b.area - inter)


def _check_mask(mask, prob) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f'mask must be 2-D [H, W], got shape {mask.shape}')
    if prob is not None and np.shape(prob) != mask.shape:
        raise ValueError(f'prob shape {np.shape(prob)} must match mask shape {mask.shape}')
    return mask.astype(bool, copy=False)


def connected_components(mask, prob=None, min_area: int = 1,
                         connectivity: int = 8) -> list:
    """
    Split a binary mask into connected regions.

    Parameters
    ----------
    mask : bool-like [H, W]
        Foreground mask.
    prob : float [H, W], optional
        Map averaged over each region's pixels into Region.mean_prob.
    min_area : int
        Regions with fewer pixels are dropped.
    connectivity : int
        4 or 8 (8 lets diagonal neighbours join a region).

    Returns
    -------
    list of Region in scipy label order (top-to-bottom, then left-to-right by first pixel).

    """
    if connectivity not in _STRUCTURES:
        raise ValueError(f'connectivity must be 4 or 8, got {connectivity!r}')
    mask = _check_mask(mask, prob)
    prob = None if prob is None else np.asarray(prob)
    # Label only the window that holds foreground: objects cover a small share of a frame,
    # and scipy's labelling holds the GIL that other cameras' workers wait for.
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return []
    top, left = int(rows[0]), int(cols[0])
    window = (slice(top, int(rows[-1]) + 1), slice(left, int(cols[-1]) + 1))
    labels, count = ndimage.label(mask[window], structure=_STRUCTURES[connectivity])
    if prob is not None:
        prob = prob[window]
    # bincount and per-box windows: ndimage's labelled statistics sort every pixel (slow).
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    objects = ndimage.find_objects(labels)
    regions = []
    for label in np.flatnonzero(areas[1:] >= max(int(min_area), 1)) + 1:
        rows, cols = objects[label - 1]
        own = labels[rows, cols] == label
        ys, xs = np.nonzero(own)
        at = (slice(rows.start + top, rows.stop + top), slice(cols.start + left, cols.stop + left))
        regions.append(Region(
            box=slices_to_box(at), area=int(areas[label]),
            centroid=(at[1].start + float(xs.mean()) + 0.5, at[0].start + float(ys.mean()) + 0.5),
            mean_prob=float(prob[rows, cols][own].mean()) if prob is not None else 1.0,
            mask=own, offset=(at[0].start, at[1].start)))
    return regions


def paint(label_image: np.ndarray, region: Region, value: int) -> None:
    """Write `value` into `label_image` at the region's still-unlabelled (0) pixels, in place."""
    r0, c0 = region.offset
    h, w = region.mask.shape
    window = label_image[r0:r0 + h, c0:c0 + w]
    window[region.mask & (window == 0)] = value
