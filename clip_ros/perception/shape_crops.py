"""
The shape head's crops and answers on numpy: no torch, so a Triton client can use them.

perception.shape_head runs the head in-process; perception.triton_client sends the same pixels
to the server's `shape` model. Both cut crops here, so their inputs are identical.
"""
import numpy as np
from PIL import Image

from clip_ros.perception import image_np

STORE_PAD, STORE_SIZE = 1.6, 64  # crops are cut at this pad and size, then the centre is read
MEAN, STD = 0.45, 0.25


def store_crop(rgb: np.ndarray, box) -> np.ndarray:
    """Return the uint8 [STORE_SIZE, STORE_SIZE, 3] square crop around a box (zeros outside)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0, 8.0) * STORE_PAD
    left, top = int(round((x0 + x1 - side) / 2)), int(round((y0 + y1 - side) / 2))
    side = int(round(side))
    height, width = rgb.shape[:2]
    canvas = np.zeros((side, side, 3), np.uint8)
    a, b = max(0, left), max(0, top)
    c, d = min(width, left + side), min(height, top + side)
    if c > a and d > b:
        canvas[b - top:d - top, a - left:c - left] = rgb[b:d, a:c]
    return np.asarray(Image.fromarray(canvas).resize((STORE_SIZE, STORE_SIZE), Image.BILINEAR))


def centre_pixels(crops: np.ndarray, pad: float, size: int) -> np.ndarray:
    """Return normalised float32 pixels [B, 3, size, size] of stored crops' centres at `pad`."""
    side = int(round(STORE_SIZE * pad / STORE_PAD))
    if not 1 <= side <= STORE_SIZE:  # a stored crop holds the object at most STORE_PAD wide
        raise ValueError(f'shape crop pad {pad} is outside (0, {STORE_PAD}]')
    start = (STORE_SIZE - side) // 2
    centres = np.asarray(crops)[:, start:start + side, start:start + side]
    pixels = image_np.resize(centres, size, antialias=False, axes=(1, 2)) / np.float32(255)
    return np.ascontiguousarray(((pixels - MEAN) / STD).transpose(0, 3, 1, 2), np.float32)


def shape_index(shapes, words: str):
    """Return the index in `shapes` of the shape a phrase (the model's words) names, or None."""
    last = words.split()[-1] if words.split() else ''
    return shapes.index(last) if last in shapes else None


def box_pixels(rgb: np.ndarray, boxes, pad: float, size: int) -> np.ndarray:
    """Return the head's input [K, 3, size, size] for the boxes of one frame (K >= 1)."""
    return centre_pixels(np.stack([store_crop(rgb, box) for box in boxes]), pad, size)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Return the row-wise softmax of float logits [K, C] as float32."""
    logits = np.asarray(logits, np.float64)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)
