"""Draw detections over an RGB frame for the debug image (numpy + PIL, no ROS)."""
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Fixed palette (Tableau 10) indexed by phrase position, so colours never change per frame.
PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
], dtype=np.uint8)


def phrase_colour(phrase_index: int) -> tuple:
    """Return the RGB colour for a phrase position."""
    return tuple(int(c) for c in PALETTE[phrase_index % len(PALETTE)])


def draw_overlay(rgb: np.ndarray, detections: Sequence, label_image: np.ndarray | None,
                 phrases: Sequence[str], alpha: float = 0.4) -> np.ndarray:
    """Tint each detection's mask, draw its box and 'phrase score' label; return uint8 HxWx3."""
    out = rgb.astype(np.float32)
    colours = [phrase_colour(_phrase_index(phrases, d.phrase)) for d in detections]
    if label_image is not None:
        for detection, colour in zip(detections, colours):
            region = label_image == detection.index + 1
            out[region] = (1.0 - alpha) * out[region] + alpha * np.asarray(colour, np.float32)
    image = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for detection, colour in zip(detections, colours):
        x0, y0, x1, y1 = (float(v) for v in detection.box)
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=2)
        text = f'{detection.phrase} {detection.score:.2f}'
        left, top, right, bottom = draw.textbbox((x0, y0), text, font=font)
        ty = max(0.0, y0 - (bottom - top) - 2)
        draw.rectangle((x0, ty, x0 + right - left + 4, ty + bottom - top + 2), fill=colour)
        draw.text((x0 + 2, ty), text, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def _phrase_index(phrases: Sequence[str], phrase: str) -> int:
    return list(phrases).index(phrase) if phrase in phrases else len(phrases)
