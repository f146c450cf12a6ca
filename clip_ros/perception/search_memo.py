"""
Remember shape-search answers across frames: a blob that has not changed keeps its answer.

A search scores up to shape_search.MAX_WINDOWS crops with the shape head (about 35 ms a blob
on one CPU thread), and a camera over a still table shows the same blobs frame after frame.
A blob asked about the same shape whose mask overlaps a remembered blob's by MIN_IOU and whose
mean colour is within MAX_COLOUR takes the remembered answer: the whole blob's probability and
the found window, cut from the new blob (when that keeps MIN_IOU of its pixels). Anything else
(a moved, grown or recoloured blob) is searched afresh and remembered in place of the oldest
entry.
"""
from dataclasses import dataclass
import threading

import numpy as np

from clip_ros.perception.geometry import region_iou
from clip_ros.perception.regions import region_from_mask
from clip_ros.perception.shape_search import window_part

MIN_IOU = 0.9      # sensor noise moves a blob's edge by a pixel or two between frames
MAX_COLOUR = 8.0   # mean RGB difference (0-255) still taken for the same blob
SIZE = 32          # blobs remembered (a few phrases x a few cameras)


@dataclass
class _Entry:
    shape: int
    region: object     # the blob searched (Region)
    colour: np.ndarray  # its mean RGB
    whole: float       # the head's probability of `shape` for the whole blob
    window: tuple      # (top, left, bottom, right) frame pixels of the found window, or None
    area: int          # that window's pixel count
    prob: float        # the head's probability of `shape` for that window


class SearchMemo:
    """The answers of recent searches, shared by the threads that ground frames."""

    def __init__(self, size: int = SIZE):
        if size < 1:
            raise ValueError(f'a search memo holds at least one blob, got size {size}')
        self.size = size
        self.hits = self.misses = 0
        self._entries = []  # oldest first
        self._lock = threading.Lock()

    def recall(self, shape: int, region, rgb: np.ndarray, prob_window: np.ndarray):
        """
        Return (whole, (Region, probability) or None) remembered for this blob, or None.

        prob_window is the region's window of its phrase's probability map (for the cut
        window's mean probability).
        """
        colour = mean_colour(rgb, region)
        with self._lock:
            entry = next((e for e in reversed(self._entries) if e.shape == shape
                          and np.abs(e.colour - colour).max() <= MAX_COLOUR
                          and region_iou(e.region, region) >= MIN_IOU), None)
        if entry is None:
            return self._count(None)
        if entry.window is None:
            return self._count((entry.whole, None))
        top, left, bottom, right = entry.window
        row, col = region.offset
        top, left, bottom, right = max(top - row, 0), max(left - col, 0), bottom - row, right - col
        part = window_part(region.mask, top, left, bottom - top, right - left,
                           MIN_IOU * entry.area, set())
        if part is None:  # the window left the blob
            return self._count(None)
        return self._count((entry.whole,
                            (region_from_mask(part, region.offset, prob_window), entry.prob)))

    def _count(self, answer):
        with self._lock:
            if answer is None:
                self.misses += 1
            else:
                self.hits += 1
        return answer

    def remember(self, shape: int, region, rgb: np.ndarray, whole: float, found) -> None:
        """Keep a search's answer: `found` is search()'s (Region, probability) or None."""
        window, area, prob = None, 0, float('nan')
        if found is not None:
            top, left = found[0].offset
            h, w = found[0].mask.shape
            window, area, prob = (top, left, top + h, left + w), found[0].area, found[1]
        entry = _Entry(shape, region, mean_colour(rgb, region), whole, window, area, prob)
        with self._lock:
            self._entries.append(entry)
            del self._entries[:-self.size]


def mean_colour(rgb: np.ndarray, region) -> np.ndarray:
    """Return the mean RGB (float) of a region's pixels."""
    row, col = region.offset
    h, w = region.mask.shape
    return rgb[row:row + h, col:col + w][region.mask].mean(axis=0)
