"""
Light correction: undo a coloured or dim light before a model that was trained under one light.

The bundled tabletop model learned object colours under the simulator's near-white lamps; under
a warm or blue lamp its "red" and "orange" (or "white" and "blue") swap, and in a dim room its
maps fade. A model config may carry a reference of how its training frames look (key "light":
the median colour of their lit pixels and their 90th-percentile brightness, written by
`calibrate`); a frame is then corrected towards that reference with one gain per channel:

- colour cast: the median colour of the frame's lit pixels against the reference, in log space.
  Only the part along the warm-blue axis of natural light (black-body light from 3000 K to
  10000 K) is corrected, and only when it is clear (>= CAST_MIN), no stronger than a 2500 K
  lamp's (<= CAST_MAX) and the rest is small (<= OFF_AXIS_MAX): a green, purple or deep orange
  table is not a lamp, and it is left alone;
- darkness: the frame is brightened to the reference's 90th-percentile brightness when it is
  clearly darker (>= DARK_MIN, at most DARK_MAX), unless most of it is nearly black, which is a
  black table or a dark background rather than a dim lamp;
- glare: a clearly over-exposed frame (>= BRIGHT_MIN brighter) is darkened to the reference.
  The rest of the frame returns to the levels the model knows (on validation: 58 % -> 71 % of
  top detections right on over-exposed frames), and a coloured object's clipped highlights get
  its hue back from its unclipped pixels (an orange top clipped to yellow is orange again);
- table: then a table that is not the trained one's colour is recoloured to it
  (perception.surface).

The constants were chosen on validation-split scenes rendered under the shift conditions; a
model without a reference (pretrained CLIP/CLIPSeg) is left uncorrected. numpy and scipy only: the
Triton client runs it without torch.
"""
from dataclasses import dataclass
import math

import numpy as np
from scipy import ndimage

from clip_ros.perception import zoom
from clip_ros.perception.surface import channel_medians, SurfaceCorrection

LIT_LEVEL = 30.0      # a pixel is lit when its mean channel value (0-255) exceeds this
LIT_SHARE = 0.3       # the cast is measured only when this share of the frame is lit
CAST_MIN = 0.25       # smallest log cast along the warm-blue axis that is corrected
OFF_AXIS_MAX = 0.15   # largest log cast off that axis for which a cast is still corrected
CAST_MAX = 0.9        # largest: a 2500 K lamp's cast; beyond it, a table's colour (orange)
DARK_MIN = 0.3        # smallest log darkness (ln 1.35) that is brightened
DARK_MAX = 1.2        # most log brightening (ln 3.3)
BRIGHT_MIN = 0.3      # smallest log over-exposure (ln 1.35) that is darkened
BRIGHT_PERCENTILE = 90.0
# Over-exposure darkens only when the lit median (mostly the table) is this much brighter than
# the reference's too (log): a large white object alone sets the 90th percentile. On val every
# over-exposed frame is above 0.117 (a bright cyan table), a white object alone near 0.
GLARE_MEDIAN = 0.1
# Clipped highlights: pixels of a coloured object (brightest channel at least COLOURED_LEVEL,
# spread over channels above COLOURED_SATURATION of it) get their hue from the object's own
# unclipped pixels, at least MIN_REFERENCE of them; channel ratios below MIN_RATIO are not used.
COLOURED_LEVEL = 60
COLOURED_SATURATION = 0.4
MIN_REFERENCE = 20
MIN_RATIO = 0.2
STRIDE = 4            # statistics read every 4th row and column: 1/16 of the pixels, same figures
VIEWS = 4             # still views whose measurements are remembered (a few cameras)
# Black-body light at 3000 K and 10000 K in sRGB: the line natural lamps lie on.
_WARM, _COOL = np.log([255.0, 180.0, 107.0]), np.log([204.0, 219.0, 255.0])
_AXIS = (_WARM - _WARM.mean()) - (_COOL - _COOL.mean())
AXIS = _AXIS / np.linalg.norm(_AXIS)  # unit warm-minus-cool direction in zero-mean log RGB


def _levels(rgb: np.ndarray) -> np.ndarray:
    flat = rgb.reshape(-1, 3)  # the channel mean, a channel at a time (see channel_sum)
    return (flat[:, 0].astype(np.float32) + flat[:, 1] + flat[:, 2]) / np.float32(3)


def _sample(rgb: np.ndarray) -> np.ndarray:
    # Medians and percentiles of a frame do not need every pixel; a frame costs ~1 ms so.
    # Contiguous: every statistic below then reads it without another copy.
    return np.ascontiguousarray(rgb[::STRIDE, ::STRIDE]) if min(rgb.shape[:2]) >= 16 * STRIDE \
        else rgb


def lit_median(rgb: np.ndarray, levels: np.ndarray = None):
    """Return the median colour [3] of a frame's lit pixels, or None when too few are lit."""
    lit = (_levels(rgb) if levels is None else levels) > LIT_LEVEL
    if lit.sum() < LIT_SHARE * len(lit):
        return None
    return channel_medians(rgb.reshape(-1, 3)[lit])


def bright_level(rgb: np.ndarray, levels: np.ndarray = None) -> float:
    """Return a frame's 90th-percentile brightness (mean of the channels, 0-255)."""
    levels = _levels(rgb) if levels is None else levels
    return float(np.percentile(levels, BRIGHT_PERCENTILE))


@dataclass(frozen=True)
class LightReference:
    """How the frames a model was trained on look: what LightCorrection corrects towards."""

    median_rgb: tuple     # median colour of lit pixels, averaged over the frames
    bright_level: float   # 90th-percentile brightness, averaged over the frames

    @classmethod
    def of_frames(cls, frames) -> 'LightReference':
        """Measure the reference of RGB uint8 frames (a model's training renders)."""
        frames = [_sample(f) for f in frames]
        medians = [m for m in map(lit_median, frames) if m is not None]
        levels = [bright_level(f) for f in frames]
        if not medians:
            raise ValueError('no frame has enough lit pixels to measure a light reference')
        return cls(tuple(float(v) for v in np.mean(medians, axis=0)), float(np.mean(levels)))

    @classmethod
    def from_config(cls, block):
        """Return the reference of a model config's "light" block, or None when it has none."""
        if not block:
            return None
        try:
            rgb = tuple(float(v) for v in block['median_rgb'])
            level = float(block['bright_level'])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f'light must hold median_rgb (3 numbers) and bright_level, '
                             f'got {block!r}') from e
        if len(rgb) != 3 or min(rgb) <= 0 or level <= 0:
            raise ValueError(f'light needs 3 positive median_rgb values and a positive '
                             f'bright_level, got {block!r}')
        return cls(rgb, level)

    def to_config(self) -> dict:
        """Return the "light" block for a model config."""
        return {'median_rgb': [round(v, 3) for v in self.median_rgb],
                'bright_level': round(self.bright_level, 3)}


def correction_for(handle, enabled: bool = True):
    """Return the LightCorrection of a model handle's reference; None without one or when off."""
    reference = LightReference.from_config(getattr(handle, 'light', None))
    return LightCorrection(reference) if reference and enabled else None


class LightCorrection:
    """
    Per-frame channel gains that bring a frame's light towards a LightReference.

    Then, unless table=False, the table is recoloured to the reference's (perception.surface).
    """

    def __init__(self, reference: LightReference, table: bool = True):
        self.reference = reference
        self.table = SurfaceCorrection(reference.median_rgb) if table else None
        # (thumbnail, gains, lit median, table surface) of recent views: a still camera's
        # frames are measured once.
        self.recent = zoom.Recent(VIEWS, 'view')

    def forget(self) -> None:
        """Drop the remembered views' measurements."""
        self.recent = zoom.Recent(VIEWS, 'view')

    def gains(self, rgb: np.ndarray) -> np.ndarray:
        """Return the gains [3] for an RGB uint8 frame (ones when nothing is corrected)."""
        return self._measure(rgb)[0]

    def _measure(self, rgb: np.ndarray) -> tuple:
        """Return (gains [3], median colour [3] of the lit pixels or None)."""
        log_gain = np.zeros(3)
        rgb = _sample(rgb)
        levels = _levels(rgb)  # [N], shared by the three statistics
        median = lit_median(rgb, levels)
        if median is not None:
            cast = np.log(np.asarray(self.reference.median_rgb) / np.maximum(median, 1.0))
            cast -= cast.mean()  # brightness is handled below
            along = float(cast @ AXIS)
            if CAST_MIN <= abs(along) <= CAST_MAX and \
                    np.linalg.norm(cast - along * AXIS) <= OFF_AXIS_MAX:
                log_gain += along * AXIS
        dark = math.log(self.reference.bright_level / max(bright_level(rgb, levels), 1.0))
        if dark >= DARK_MIN and np.median(levels) >= LIT_LEVEL:
            log_gain += min(dark, DARK_MAX)
        elif dark <= -BRIGHT_MIN and median is not None and math.log(
                float(np.mean(median)) / max(float(np.mean(self.reference.median_rgb)), 1.0)
        ) >= GLARE_MEDIAN:
            log_gain += dark
        return np.exp(log_gain), median

    def __call__(self, rgb: np.ndarray, thumb: np.ndarray = None) -> np.ndarray:
        """
        Return the corrected frame (the same array when nothing is corrected).

        thumb, the frame's zoom.thumbnail when given, lets a frame of a still view (every cell
        within zoom.MAX_CHANGE) take the gains and table a recent frame of that view measured.
        """
        known = None if thumb is None else self.recent.find(
            lambda item: zoom.same_view(item[0], thumb))
        gains, median, surface = known[1:] if known else (*self._measure(rgb), None)
        out = self._light(rgb, gains, median)
        if self.table is not None:
            surface = surface if known else self.table.find(out)
            out = self.table.apply(out, surface)
        if thumb is not None and known is None:
            self.recent.add((thumb, gains, median, surface))
        return out

    def _light(self, rgb: np.ndarray, gains: np.ndarray, median) -> np.ndarray:
        if np.allclose(gains, 1.0):
            return rgb
        # One 256-entry table per channel: cheaper than float arithmetic on every pixel, and
        # np.take on a channel's own table half the time of indexing a [256, 3] one.
        tables = np.clip(np.arange(256)[None] * gains[:, None] + 0.5, 0, 255).astype(np.uint8)
        out = np.empty_like(rgb)
        for c in range(3):
            out[..., c] = np.take(tables[c], rgb[..., c])
        if gains.max() < 1.0:
            _restore_clipped(rgb, out, float(gains.max()), median)
        return out


def _restore_clipped(rgb: np.ndarray, out: np.ndarray, gain: float, table) -> None:
    """
    Give a glaring frame's clipped pixels of coloured objects back their object's hue.

    An orange top under glare is (255, 242, 0): red clipped, green not. Darkened like every
    other pixel it turns olive (147, 140, 0), read as yellow. The same object's unclipped
    pixels tell its channel ratios (orange: green about 0.5 of red), so the clipped red was at
    least 242 / 0.5: the pixel is rebuilt from its unclipped channels (clipped ones count as
    255, a lower bound) and darkened then. Only saturated pixels (the cream table, white
    objects and shadows are left as they were), only objects with enough unclipped pixels, and
    not on a saturated table (`table`: the lit pixels' median colour, mostly the table's).
    """
    if table is None or np.ptp(table) > COLOURED_SATURATION * np.max(table):
        return  # on a coloured table its pixels join the objects' blobs and lend them its hue
    # A channel at a time: a reduction over the last axis of 3 is several times slower.
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    top = np.maximum(np.maximum(red, green), blue)
    spread = top - np.minimum(np.minimum(red, green), blue)  # uint8: the channels' spread
    coloured = (top >= COLOURED_LEVEL) & (spread > COLOURED_SATURATION * top)
    clipped = coloured & (top == 255)
    if not clipped.any():
        return
    labels, _ = ndimage.label(coloured)
    boxes = ndimage.find_objects(labels)
    for label in np.unique(labels[clipped]):
        box = boxes[label - 1]  # the object's own rows and columns: a few pixels, not a frame
        blob = labels[box] == label
        pixels, bright = rgb[box], top[box]
        hit = blob & (bright == 255)
        reference = pixels[blob & (bright < 250)].astype(np.float32)
        if len(reference) < MIN_REFERENCE:
            continue
        ratios = np.median(reference / reference.max(axis=1, keepdims=True), axis=0)  # [3]
        known = ratios >= MIN_RATIO  # a channel near 0 says nothing of the others
        values = pixels[hit].astype(np.float32)  # [n, 3], clipped channels 255: a lower bound
        scale = (values[:, known] / ratios[known]).max(axis=1, keepdims=True)  # [n, 1]
        whole = np.where(values == 255, np.maximum(scale * ratios, 255.0), values)
        out[box][hit] = np.clip(whole * gain + 0.5, 0, 255).astype(np.uint8)
