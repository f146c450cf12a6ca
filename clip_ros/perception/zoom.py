"""
Zoomed second look for phrases the whole frame left "not found".

CLIPSeg sees the frame shrunk to its input size, where a partly hidden object is a sliver of a
few map cells: its map lights up the occluder instead, or nothing. Four overlapping tiles,
each `TILE` of the frame's width and height, go through the model again at their own size
(about 1.7 times the pixels per object); their maps, pasted back and merged by maximum, replace
the frame's map of such a phrase, and its candidates are found and judged again by the
abstention rule. The zoomed maps also light up objects of the phrase's colour or shape alone,
so a candidate of theirs must in addition be the phrase's shape to the shape head (or an
object at all, for a phrase without a shape); without a shape head there is no second look.
"""
import threading

import numpy as np

TILE = 0.6  # tile side as a share of the frame's; 0.6 leaves a fifth of the frame as overlap
# Chosen on val 100000-100039, all conditions: the zoomed candidates on the right object had
# 0.49-1.0 (one 0.49, the rest above 0.56), those of absent objects mostly below 0.32.
MIN_SHAPE = 0.45


def tiles(height: int, width: int, share: float = TILE) -> list:
    """Return the (row, col, height, width) of the 2x2 overlapping tiles of a frame."""
    th, tw = max(1, round(height * share)), max(1, round(width * share))
    return [(row, col, th, tw) for row in (0, height - th) for col in (0, width - tw)]


def merge(maps: list, boxes: list, height: int, width: int) -> np.ndarray:
    """
    Paste tile maps back into one frame map per phrase: the maximum where tiles overlap.

    `maps` holds one float32 [N, th, tw] per tile of `boxes`; returns float32 [N, H, W].
    """
    count = maps[0].shape[0] if maps else 0
    merged = np.zeros((count, height, width), np.float32)
    for tile_maps, (row, col, th, tw) in zip(maps, boxes):
        window = merged[:, row:row + th, col:col + tw]
        np.maximum(window, tile_maps, out=window)
    return merged


def accepts(evidence) -> bool:
    """Tell whether a candidate of the zoomed maps is sure enough of its shape (NaN: no)."""
    return evidence.shape_prob >= MIN_SHAPE


BLOCK = 8          # thumbnail cell (pixels) for telling a still frame
MAX_CHANGE = 6.0   # largest cell mean difference (0-255) still taken for the same view
SIZE = 16          # zoomed maps remembered (a few phrases x a few cameras; 1.2 MB at 640x480)


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """Return the mean colour of each BLOCK x BLOCK cell (float32 [h, w, 3]; edge cells less)."""
    height, width = rgb.shape[:2]
    if height % BLOCK == 0 and width % BLOCK == 0 and rgb.dtype == np.uint8:
        # Whole cells (640x480 and the like): integer sums of rows, then of columns, are
        # exact and three times quicker than reduceat.
        rows = rgb.reshape(height // BLOCK, BLOCK, -1).sum(axis=1, dtype=np.uint16)
        cells = rows.reshape(height // BLOCK, width // BLOCK, BLOCK, -1).sum(2, dtype=np.uint32)
        return np.divide(cells, BLOCK * BLOCK, dtype=np.float32)
    rows, cols = np.arange(0, height, BLOCK), np.arange(0, width, BLOCK)
    # Every pixel counts, the last partial row and column of cells too: a change there is one.
    sums = np.add.reduceat(np.add.reduceat(rgb.astype(np.float32), rows, 0), cols, 1)
    counts = np.outer(np.diff(np.r_[rows, height]), np.diff(np.r_[cols, width]))
    return sums / counts[..., None].astype(np.float32)


def same_view(a: np.ndarray, b: np.ndarray, limit: float = MAX_CHANGE) -> bool:
    """Tell whether two thumbnails show the same view: every cell within `limit`."""
    return a.shape == b.shape and float(np.abs(a - b).max()) <= limit


class Recent:
    """
    The last `size` items of recent frames (newest last), shared by the threads that ground.

    Each memo of a still view keeps its items here: find() the newest one that matches the
    frame (counted as a hit or a miss), add() the frame's own in place of the oldest.
    """

    def __init__(self, size: int, what: str = 'item'):
        if size < 1:
            raise ValueError(f'a memo holds at least one {what}, got size {size}')
        self.size = size
        self.hits = self.misses = 0
        self._items = []
        self._lock = threading.Lock()

    def find(self, match, count: bool = True):
        """Return the newest item for which match(item) is true, or None (counted unless not)."""
        with self._lock:
            found = next((item for item in reversed(self._items) if match(item)), None)
            if count and found is None:
                self.misses += 1
            elif count:
                self.hits += 1
        return found

    def add(self, item) -> None:
        """Keep `item`, dropping the oldest beyond `size`."""
        with self._lock:
            self._items.append(item)
            del self._items[:-self.size]


class ZoomMemo(Recent):
    """
    The zoomed maps of recent frames, per phrase: a still camera looks twice only once.

    A frame whose every thumbnail cell is within MAX_CHANGE of a remembered frame's (sensor
    noise averages out over a cell; an arm or object that moves changes cells by far more)
    takes that frame's zoomed map of the phrase instead of four more CLIPSeg passes; its
    regions and evidence are still worked out on the new frame.
    """

    def __init__(self, size: int = SIZE):
        super().__init__(size, 'view')

    def recall(self, words: str, thumb: np.ndarray, size: tuple):
        """Return the remembered zoomed map of `words` for a `size` (h, w) view like `thumb`."""
        # Frames of other sizes can share a thumbnail's shape: their maps cannot be swapped.
        found = self.find(lambda item: item[0] == words and item[2].shape == tuple(size)
                          and same_view(item[1], thumb))
        return None if found is None else found[2]

    def remember(self, words: str, thumb: np.ndarray, zoomed: np.ndarray) -> None:
        """Keep the zoomed map of `words` for the view `thumb`, in place of the oldest."""
        zoomed = zoomed.copy()  # not a view that keeps the other phrases' maps alive
        zoomed.setflags(write=False)  # handed to every thread that recalls it
        self.add((words, thumb, zoomed))
