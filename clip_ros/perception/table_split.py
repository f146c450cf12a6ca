"""
Objects on a washed-out table: a candidate that is the table itself is cut into what lies on it.

Under a bright lamp the table reads as white, and CLIPSeg's map of a white or pale object can
cover the whole table with the object inside it: one table-sized candidate, which CLIP rightly
refuses, and the object is 'not found'. Inside such a candidate the table is its commonest
colour and, darker, its shadows (the same chromaticity); a blob that differs in chromaticity or
is brighter than the table is something standing on it. Each such blob becomes a candidate of
the same phrase. With depth, the blobs standing on the table are taken instead
(perception.table_depth).

Its map says nothing about the blob (it covers the table too), so the blob must earn its place
from the other evidence: CLIP must prefer the phrase to every rival (margin >= MIN_MARGIN) and
the shape head must find the phrase's shape in it (>= MIN_SHAPE). Without a shape head (open
models) nothing is cut. The blob is not refined afterwards: refinement grows over the pixels of
the object's colours, which here are the table's. The constants were chosen on validation-split
scenes under the light-intensity condition.
"""
import numpy as np
from scipy import ndimage

from clip_ros.perception.regions import region_from_mask

BIG = 0.08           # a candidate over this share of the frame may be the table
ON_TABLE = 0.5       # ... when at least this share of its pixels is table or shadow
CHROMA_TOL = 0.012   # table: chromaticity within this of the candidate's median (r, g, b)
LEVEL = (0.3, 1.08)  # ... and brightness between these shares of it (shadows, shading)
MIN_PIXELS = 60      # a blob smaller than this is an edge or a speck
MAX_SHARE = 0.3      # a blob larger than this share of the candidate is no object on it
MIN_MARGIN = 0.0     # CLIP prefers the phrase (Evidence.margin at least this)
MIN_SHAPE = 0.2      # the shape head's probability of the phrase's shape at least this


def is_table_sized(region, frame_pixels: int) -> bool:
    """Tell whether a candidate is large enough to be the table rather than an object."""
    return region.area >= BIG * frame_pixels


def table_pixels(rgb: np.ndarray, region):
    """
    Return bool [h, w] of `region`'s window: its table-coloured pixels, or None when no table.

    The table is the candidate's median colour and its shadows; when less than ON_TABLE of the
    candidate's pixels are of that colour, no colour dominates it and it is no table.
    """
    r0, c0 = region.offset
    h, w = region.mask.shape
    pixels = rgb[r0:r0 + h, c0:c0 + w].reshape(-1, 3).astype(np.float32)
    inside = region.mask.reshape(-1)
    table = np.median(pixels[inside], axis=0)
    chroma = pixels / (pixels.sum(axis=1, keepdims=True) + 30.0)  # + 30: steady near black
    level = pixels.sum(axis=1) / max(float(table.sum()), 1.0)
    is_table = ((np.abs(chroma - table / (table.sum() + 30.0)).max(axis=1) < CHROMA_TOL)
                & (level > LEVEL[0]) & (level < LEVEL[1])).reshape(h, w)
    if (is_table & region.mask).sum() < ON_TABLE * region.area:
        return None
    return is_table


def table_blobs(region, table: np.ndarray, prob: np.ndarray) -> list:
    """
    Return Regions of what differs in colour from the table inside `region`.

    table: table_pixels of the region; prob: the phrase's map [H, W] (for each blob's mean).
    """
    r0, c0 = region.offset
    h, w = region.mask.shape
    # One opening: the one-pixel seams at the table's own edges and texture are no object.
    labels, count = ndimage.label(ndimage.binary_opening(region.mask & ~table))
    window = prob[r0:r0 + h, c0:c0 + w]
    blobs = []
    for label in range(1, count + 1):
        blob = labels == label
        if MIN_PIXELS <= blob.sum() <= MAX_SHARE * region.area:
            blobs.append(region_from_mask(blob, (r0, c0), window))
    return blobs


def accepts(evidence) -> bool:
    """Tell whether a blob's evidence is enough: CLIP and the shape head both name it."""
    return evidence.margin >= MIN_MARGIN and evidence.shape_prob >= MIN_SHAPE
