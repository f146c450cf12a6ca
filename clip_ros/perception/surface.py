"""
Table correction: a model trained on one table sees that table, whatever the robot's looks like.

The bundled tabletop model learned on the simulator's beige table. On a saturated, black or
textured table its maps light up the table itself ("the green block" on a green table is the
table) and its crops carry the table's colour. A frame is corrected by finding the surface the
objects stand on and recolouring it to the trained table's colour (the light reference's median,
which the table dominates). It runs after the light correction's gains, so a lamp's cast is
already gone from the objects.

- The surface: the most common colour of the frame (chromaticity and brightness bins), grown to
  every pixel of that chromaticity within a brightness band. It must cover MIN_SHARE of the frame
  and HALF of its central window, where the objects stand; a floor around a distant table is
  not it.
- Left alone: a surface already the trained table's colour (within NEAR), or the trained table
  washed out by a bright lamp (the light correction's business).
- A coloured surface: each pixel is split into the table's colour plus white light (specular
  highlights), and the table's part is swapped for the trained colour. White and grey objects
  lie on the white axis and keep their colour; an object of the table's own colour turns into
  table, as it would to any eye.
- A black or grey surface: the pixels of its chromaticity and brightness band get one gain per
  channel up to the band's 95th percentile, bending towards white above it (white objects
  stay white unless they fill more than a twentieth of the band).

The constants were chosen on validation-split scenes under the table-colour condition (and
checked not to move the other conditions). numpy only, like the light correction.
"""
import math

import numpy as np

CHROMA_FLOOR = 30.0     # added to r+g+b so near-black pixels have a steady, grey chromaticity
CHROMA_BIN = 0.025      # histogram bin of chromaticity (r and g shares)
LEVEL_BIN = 0.35        # histogram bin of log brightness
CHROMA_TOL = 0.04       # a pixel of the surface's chromaticity, within this in r, g and b shares
LEVEL_BAND = (0.4, 2.5)  # ... and this band around the surface's median brightness
MIN_SHARE = 0.25        # the surface covers at least this share of the frame
HALF = 0.5              # ... and of the frame's central window
BORDER = 0.05           # ... and reaches the frame's edge (a large flat object does not)
NEAR = 0.03             # chromaticity this close to the trained table's: nothing to correct
WASHED = (0.06, 1.5)    # within 0.06 and 1.5x brighter: the trained table under a bright lamp
DARK = 0.4              # a surface darker than this share of the trained one is always corrected
NEUTRAL = 0.05          # a surface this close to grey is black or grey: corrected by gains
PLANE_TOL = 0.1         # largest residual (share of the pixel's norm) off table colour + white
TABLE_PART = 0.5        # the table's colour makes up at least this share of a corrected pixel
STRIDE = 4              # the surface is found on every 4th row and column
KNEE = 0.95             # quantile of a grey surface's band above which pixels bend to white


def channel_sum(pixels: np.ndarray) -> np.ndarray:
    """Return r + g + b of float pixels [..., 3], the values of pixels.sum(axis=-1)."""
    # A channel at a time: numpy reduces a 3-long last axis about ten times slower.
    return pixels[..., 0] + pixels[..., 1] + pixels[..., 2]


def channel_medians(pixels: np.ndarray) -> np.ndarray:
    """Return each channel's median [3] of uint8 pixels [N, 3], the values of np.median."""
    # From one histogram: exact for 8-bit values and several times faster than partitioning.
    counts = np.bincount((pixels + np.array([0, 256, 512], np.intp)).ravel(), minlength=768)
    below = np.cumsum(counts.reshape(3, 256), axis=1)
    n = len(pixels)
    return np.array([(np.searchsorted(row, (n - 1) // 2, side='right')
                      + np.searchsorted(row, n // 2, side='right')) / 2 for row in below])


def chromaticity(pixels: np.ndarray) -> np.ndarray:
    """Return the r, g, b shares [N, 3] of float pixels [N, 3], steady for near-black ones."""
    return pixels / (channel_sum(pixels)[..., None] + CHROMA_FLOOR)


class Surface:
    """The surface found in a frame: its colour, chromaticity and median brightness."""

    def __init__(self, colour: np.ndarray, chroma: np.ndarray, level: float):
        self.colour, self.chroma, self.level = colour, chroma, float(level)
        grey = np.full(3, colour.mean())
        self.neutral = bool(np.abs(chromaticity(colour) - chromaticity(grey)).max() < NEUTRAL)
        # Table colour and white: the plane a lit, glossy surface's pixels lie in.
        self._basis = np.stack([colour, np.full(3, 255.0)], axis=1).astype(np.float32)
        self._solve = np.linalg.pinv(self._basis)
        normal = np.cross(colour, np.ones(3))  # off the plane: one dot product a pixel
        self._normal = (normal / max(np.linalg.norm(normal), 1e-9)).astype(np.float32)

    def band(self, pixels: np.ndarray) -> np.ndarray:
        """Return which pixels [N, 3] have the surface's chromaticity and brightness band."""
        return _band(pixels, self.chroma, self.level)

    def members(self, pixels: np.ndarray, parts: np.ndarray = None) -> np.ndarray:
        """Return which float pixels [N, 3] belong to the surface (parts: theirs, if known)."""
        if self.neutral:
            return self.band(pixels)
        parts = self.parts(pixels) if parts is None else parts
        norm = np.sqrt(np.einsum('ij,ij->i', pixels, pixels))
        return ((np.abs(pixels @ self._normal) < PLANE_TOL * (norm + 20.0))
                & (parts[:, 0] * np.linalg.norm(self.colour) > TABLE_PART * norm)
                & (parts[:, 1] > -0.1))

    def parts(self, pixels: np.ndarray) -> np.ndarray:
        """Return how much table colour and white [N, 2] each float pixel [N, 3] is."""
        return pixels @ self._solve.T


def _band(pixels: np.ndarray, chroma: np.ndarray, level: float) -> np.ndarray:
    """Return which pixels [N, 3] have chromaticity `chroma` and brightness near `level`."""
    total = channel_sum(pixels)
    scale = total + CHROMA_FLOOR  # |p/scale - chroma| < tol, without dividing each pixel
    low, high = (3 * bound * level for bound in LEVEL_BAND)
    inside = (total > low) & (total < high)
    for c in range(3):
        inside &= np.abs(pixels[:, c] - chroma[c] * scale) < CHROMA_TOL * scale
    return inside


def _sample(rgb: np.ndarray) -> np.ndarray:
    """Return every STRIDE-th row and column of a frame (all of a small one)."""
    return rgb[::STRIDE, ::STRIDE] if min(rgb.shape[:2]) >= 16 * STRIDE else rgb


def find_surface(rgb: np.ndarray, keep=None):
    """
    Return the Surface the objects of an RGB uint8 frame stand on, or None.

    keep(surface) -> bool, when given, is asked before the (dearer) check under the objects.
    """
    sample = _sample(rgb)
    flat = sample.reshape(-1, 3)
    pixels = flat.astype(np.float32)
    chroma, level = chromaticity(pixels), channel_sum(pixels) / np.float32(3)
    bins = np.minimum(chroma[:, :2] / CHROMA_BIN, 63).astype(np.int64)
    key = (bins[:, 0] * 64 + bins[:, 1]) * 64 + np.minimum(
        np.log1p(level) / LEVEL_BIN, 63).astype(np.int64)
    mode = key == np.argmax(np.bincount(key))
    mode_chroma, mode_level = np.median(chroma[mode], axis=0), float(np.median(level[mode]))
    band = _band(pixels, mode_chroma, mode_level)
    if band.mean() < MIN_SHARE:
        return None
    surface = Surface(channel_medians(flat[band]).astype(np.float32), mode_chroma, mode_level)
    if keep is not None and not keep(surface):
        return None
    height, width = sample.shape[:2]
    members = surface.members(pixels).reshape(height, width)
    centre = members[height // 3: 2 * height // 3, width // 4: 3 * width // 4]
    edge = np.concatenate([members[0], members[-1], members[:, 0], members[:, -1]])
    return surface if centre.size and centre.mean() >= HALF and edge.mean() >= BORDER else None


def channel_quantile(pixels: np.ndarray, q: float) -> np.ndarray:
    """Return each channel's q-quantile [3] of uint8 pixels [N > 0, 3] (numpy's inverted_cdf)."""
    counts = np.bincount((pixels + np.array([0, 256, 512], np.intp)).ravel(), minlength=768)
    below = np.cumsum(counts.reshape(3, 256), axis=1)
    rank = min(max(math.ceil(q * len(pixels)) - 1, 0), len(pixels) - 1)
    return np.array([np.searchsorted(row, rank, side='right') for row in below], np.float32)


def neutral_tables(colour: np.ndarray, knee: np.ndarray, table: np.ndarray) -> np.ndarray:
    """
    Return per-channel look-up tables [3, 256] that take a grey surface's colour to the table's.

    colour: the surface's median colour; knee: the KNEE quantile of the pixels in its
    chromaticity and brightness band (lamp hot spots, and objects of its chromaticity that fit
    the band, included). Up to the knee each channel gets one gain; above it the channel bends
    linearly to 255 at 255, so a white object on a grey table stays white instead of taking the
    trained table's beige (with the gain alone, a white bowl on a grey table was lost), while
    the table's bright spots below the knee keep the table's colour. When white objects fill
    more than 1 - KNEE of the band, the knee is theirs and they take the table's colour again.
    """
    gains = (table + 5.0) / (colour + 5.0)
    knee = np.maximum(knee, colour)
    levels = np.arange(256, dtype=np.float32)[:, None]
    top = np.minimum(knee * gains, 255.0)
    above = top + (levels - knee) * (255.0 - top) / np.maximum(255.0 - knee, 1e-3)
    tables = np.where(levels <= knee, levels * gains, above)
    return np.clip(tables + 0.5, 0, 255).astype(np.uint8).T


class SurfaceCorrection:
    """Recolour the surface under the objects to the trained table's colour."""

    def __init__(self, table_rgb):
        self.table = np.asarray(table_rgb, np.float32)

    def needed(self, surface: Surface) -> bool:
        """Return whether a found surface differs from the trained table enough to recolour."""
        distance = np.abs(chromaticity(surface.colour) - chromaticity(self.table)).max()
        brightness = surface.colour.mean() / self.table.mean()
        if brightness < DARK:
            return True
        return not (distance < NEAR or (distance < WASHED[0] and brightness > WASHED[1]))

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """Return the corrected frame (the same array when nothing is corrected)."""
        return self.apply(rgb, self.find(rgb))

    def find(self, rgb: np.ndarray):
        """Return the Surface of a frame to recolour, or None."""
        return find_surface(rgb, keep=self.needed)

    def apply(self, rgb: np.ndarray, surface) -> np.ndarray:
        """Return the frame with `surface` (find()'s answer) recoloured; `rgb` when None."""
        if surface is None:
            return rgb
        flat = rgb.reshape(-1, 3)
        every = flat.astype(np.float32)
        # Every pixel is recoloured and the surface's are kept (np.where): the same values as
        # gathering the surface's pixels first, without the gather and scatter (half the time).
        if surface.neutral:
            sample = _sample(rgb).reshape(-1, 3)
            inside = sample[surface.members(sample.astype(np.float32))]
            knee = channel_quantile(inside, KNEE) if len(inside) else surface.colour
            tables = neutral_tables(surface.colour, knee, self.table)
            new = np.stack([np.take(tables[c], flat[:, c]) for c in range(3)], axis=1)
            members = surface.members(every)
        else:
            parts = surface.parts(every)
            members = surface.members(every, parts)
            new = np.clip(parts[:, :1] * self.table + parts[:, 1:] * 255.0 + 0.5, 0, 255)
            new = new.astype(np.uint8)
        return np.where(members[:, None], new, flat).reshape(rgb.shape)
