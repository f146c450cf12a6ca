"""Procedural tabletop images: coloured blocks, balls and bowls on a table, from a seed."""
import numpy as np

from clip_ros.perception.geometry import SceneObject
from clip_ros.sim.scene import COLOURS as SIM_COLOURS

# The simulator's colours, as 8-bit RGB, so procedural and rendered scenes name the same hues.
COLOURS = {name: tuple(int(round(255 * v)) for v in rgb) for name, rgb in SIM_COLOURS.items()}
SHAPES = ('block', 'ball', 'bowl')
TABLE_RGB = (150, 115, 80)


def _shape_mask(shape: str, box: tuple, height: int, width: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[0:height, 0:width]
    if shape == 'block':
        return (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
    cx, cy, r = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, (x1 - x0) / 2
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2
    if shape == 'ball':
        return disc
    # bowl: a ring seen from above
    return disc & ((xx - cx) ** 2 + (yy - cy) ** 2 >= (0.6 * r) ** 2)


def scene_image(seed: int = 0, width: int = 640, height: int = 480, count: int = 4):
    """
    Draw `count` non-overlapping objects of distinct colours on a table.

    Returns
    -------
    (rgb uint8 HxWx3, list of SceneObject)

    """
    rng = np.random.default_rng(seed)
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[:] = TABLE_RGB
    rgb = np.clip(rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    cell_w = width // count
    objects = []
    for i, colour in enumerate(colours):
        shape = SHAPES[rng.integers(len(SHAPES))]
        side = int(rng.integers(min(cell_w, height) // 4, min(cell_w, height) // 2))
        x0 = i * cell_w + int(rng.integers(0, cell_w - side))
        y0 = int(rng.integers(0, height - side))
        box = (x0, y0, x0 + side, y0 + side)
        mask = _shape_mask(shape, box, height, width)
        rgb[mask] = COLOURS[colour]
        objects.append(SceneObject(f'{colour} {shape}', box, mask))
    return rgb, objects
