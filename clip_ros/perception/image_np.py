"""
Model inputs and map resizing on numpy alone: the Triton client's path, which holds no torch.

The resizes follow torch's F.interpolate(mode='bilinear', align_corners=False), with and without
antialias, tap for tap, so a client feeds the server what the in-process pipeline feeds its
models (the tests hold them within float rounding of perception.image).
"""
from functools import lru_cache
import math

import numpy as np


def validate_rgb(arr) -> np.ndarray:
    """
    Check that ``arr`` is a non-empty HxWx3 uint8 RGB image.

    Returns
    -------
    The same array.

    Raises
    ------
    ValueError
        naming what is wrong (type, dtype, ndim, channels, zero size).

    """
    if not isinstance(arr, np.ndarray):
        raise ValueError(f'expected a numpy array (HxWx3 uint8 RGB); got {type(arr).__name__}')
    if arr.dtype != np.uint8:
        raise ValueError(f'expected dtype uint8 for an RGB image; got {arr.dtype}')
    if arr.ndim != 3:
        raise ValueError(f'expected an HxWx3 RGB image; got {arr.ndim} dimensions {arr.shape}')
    if arr.shape[2] != 3:
        raise ValueError(
            f'expected 3 channels (RGB); got {arr.shape[2]} (convert RGBA/BGR/mono first)')
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f'image has zero size: {arr.shape[0]}x{arr.shape[1]}')
    return arr


def box_slices(box, pad: float, height: int, width: int) -> tuple[slice, slice]:
    """Pad a continuous (x_min, y_min, x_max, y_max) box; clamp; keep at least one pixel."""
    x0, y0, x1, y1 = (float(v) for v in box)
    px, py = (x1 - x0) * pad, (y1 - y0) * pad
    x0 = min(max(math.floor(x0 - px), 0), width - 1)
    y0 = min(max(math.floor(y0 - py), 0), height - 1)
    x1 = max(min(math.ceil(x1 + px), width), x0 + 1)
    y1 = max(min(math.ceil(y1 + py), height), y0 + 1)
    return slice(y0, y1), slice(x0, x1)


def check_boxes(boxes_xyxy) -> np.ndarray:
    """Return boxes as float64 [K, 4]; ValueError for a wrong shape, NaN or inverted boxes."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f'boxes must have shape [K, 4] (x_min, y_min, x_max, y_max); '
                         f'got {boxes.shape}')
    if not np.isfinite(boxes).all():
        raise ValueError('boxes contain NaN or infinite coordinates')
    if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        raise ValueError('boxes must satisfy x_max >= x_min and y_max >= y_min')
    return boxes


@lru_cache(maxsize=64)
def _taps(size_in: int, size_out: int, antialias: bool) -> tuple:
    """Return (source index [out, K], weight float32 [out, K]) of one axis' bilinear resize."""
    scale = size_in / size_out
    out = np.arange(size_out, dtype=np.float64)
    if not antialias:
        # torch's area_pixel_compute_source_index: half-pixel centres, clamped at 0.
        source = np.maximum(scale * (out + 0.5) - 0.5, 0.0)
        first = source.astype(np.int64)
        second = np.minimum(first + 1, size_in - 1)
        frac = source - first
        return (np.stack([first, second], 1),
                np.stack([1.0 - frac, frac], 1).astype(np.float32))
    # torch's antialiased kernel: a triangle stretched by the downscale factor, renormalised.
    support = scale if scale >= 1.0 else 1.0
    stretch = 1.0 / scale if scale >= 1.0 else 1.0
    centre = scale * (out + 0.5)
    start = np.maximum((centre - support + 0.5).astype(np.int64), 0)  # truncation, as in C
    stop = np.minimum((centre + support + 0.5).astype(np.int64), size_in)
    width = int((stop - start).max())
    index = start[:, None] + np.arange(width)[None]
    weight = np.maximum(1.0 - np.abs((index - centre[:, None] + 0.5) * stretch), 0.0)
    weight[index >= stop[:, None]] = 0.0
    total = weight.sum(1, keepdims=True)
    weight = np.divide(weight, total, out=np.zeros_like(weight), where=total != 0)
    return np.minimum(index, size_in - 1), weight.astype(np.float32)


def resize_axis(x: np.ndarray, axis: int, size: int, antialias: bool) -> np.ndarray:
    """Resize ``x`` (uint8 or float32) along ``axis`` to ``size`` bilinearly: float32."""
    if x.shape[axis] == size:
        return x.astype(np.float32, copy=False)
    index, weight = _taps(x.shape[axis], int(size), bool(antialias))
    shape = [1] * x.ndim
    shape[axis] = int(size)
    # One gather per tap (2 to 5 of them) beats one [.., size, taps, ..] gather and a sum;
    # gathering uint8 before the multiply moves a quarter of the bytes.
    out = np.multiply(np.take(x, index[:, 0], axis=axis), weight[:, 0].reshape(shape),
                      dtype=np.float32)
    for k in range(1, index.shape[1]):
        out += np.take(x, index[:, k], axis=axis) * weight[:, k].reshape(shape)
    return out


def resize(x: np.ndarray, size, antialias: bool, axes=(0, 1)) -> np.ndarray:
    """Resize ``x`` (uint8 or float32) to ``size`` = (rows, cols) along ``axes``: float32."""
    rows, cols = (size, size) if isinstance(size, int) else size
    steps = [(axes[1], cols), (axes[0], rows)]
    # Gathering columns is the dearer pass: run it over as few rows as there will be.
    if rows < x.shape[axes[0]]:
        steps.reverse()
    for axis, length in steps:
        x = resize_axis(x, axis, length, antialias)
    return x


def _normalise(hwc: np.ndarray, mean, std) -> np.ndarray:
    """Map 0..255 float [H, W, 3] to (x / 255 - mean) / std as float32 [3, H, W]."""
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    return np.ascontiguousarray(((hwc / np.float32(255.0) - mean) / std).transpose(2, 0, 1))


def preprocess(rgb: np.ndarray, size: int, mean, std) -> np.ndarray:
    """Stretch an RGB uint8 image to size x size and normalise: float32 [1, 3, size, size]."""
    validate_rgb(rgb)
    return _normalise(resize(rgb, size, True), mean, std)[None]


def crops(rgb: np.ndarray, boxes_xyxy, size: int, mean, std, pad: float = 0.1) -> np.ndarray:
    """Return the padded boxes of an image as normalised float32 [K, 3, size, size]."""
    validate_rgb(rgb)
    boxes = check_boxes(boxes_xyxy)
    height, width = rgb.shape[:2]
    batch = np.empty((len(boxes), 3, size, size), np.float32)
    for k, box in enumerate(boxes):
        rows, cols = box_slices(box, pad, height, width)
        batch[k] = _normalise(resize(rgb[rows, cols], size, True), mean, std)
    return batch


def to_image_size(maps: np.ndarray, size) -> np.ndarray:
    """Resize float maps [N, h, w] to ``size`` = (H, W) bilinearly, without antialias."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f'expected maps of shape [N, h, w]; got {tuple(maps.shape)}')
    return resize(maps, tuple(int(s) for s in size), False, axes=(1, 2)).astype(np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Return the logistic function of float32 logits, without overflow warnings."""
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)
