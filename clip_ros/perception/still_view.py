"""
What depth gave for a still view, kept for the frames that show that view again.

With depth, every frame is cut into surfaces (perception.depth_surfaces), the surfaces under
accepted candidates are measured for their shape, and a phrase left unfound has every free
surface shown to CLIP and the shape head alone: about 90 ms a frame on one CPU thread, the same
answers frame after frame for a camera over a still table. A frame whose depth thumbnail (mean
valid depth of each BLOCK x BLOCK cell) is within MAX_DEPTH_CHANGE of a remembered view's in
every cell, with the same intrinsics, takes that view's cut and measured shapes; when its
colour thumbnail is also within zoom.MAX_CHANGE, the surfaces' looks too. Sensor noise averages
out over a cell; an arm or object that moves changes cells by far more.
"""
import threading

import numpy as np

from clip_ros.perception import depth_surfaces, zoom

BLOCK = zoom.BLOCK
MAX_DEPTH_CHANGE = 0.003  # metres: largest cell mean difference still taken for the same view
SIZE = 8  # views remembered (a few cameras; 1.6 MB each at 640x480)


def depth_thumbnail(depth: np.ndarray) -> np.ndarray:
    """Return the mean valid depth of each BLOCK x BLOCK cell (0 where a cell has none)."""
    valid = np.isfinite(depth) & (depth > 0)
    # Mean of the valid pixels: a pixel whose reading comes and goes moves the cell little.
    sums = _cell_sums(np.where(valid, depth, np.float32(0)))
    return sums / np.maximum(_cell_sums(valid.astype(np.float32)), np.float32(1))


def _cell_sums(values: np.ndarray) -> np.ndarray:
    height, width = values.shape
    if height % BLOCK == 0 and width % BLOCK == 0:  # whole cells: reshaped sums are quicker
        rows = values.reshape(height // BLOCK, BLOCK, width).sum(axis=1)
        return rows.reshape(height // BLOCK, width // BLOCK, BLOCK).sum(axis=2)
    rows, cols = np.arange(0, height, BLOCK), np.arange(0, width, BLOCK)
    return np.add.reduceat(np.add.reduceat(values, rows, 0), cols, 1)


class View:
    """One remembered view: its cut, the shapes left per surface, the looks per surface."""

    def __init__(self, depth_thumb, rgb_thumb, K):
        self.depth_thumb, self.rgb_thumb, self.K = depth_thumb, rgb_thumb, K
        self._cut, self._has_cut = None, False  # surfaces() may answer None: no table
        self._objects = None  # the object-sized surfaces {label: Region}
        self.solids = {}  # surface label -> shapes left
        self.looks = {}  # (label, words) -> (texts, CLIP logits [1, T], head probabilities)
        # Two workers grounding frames of one view cut it once: the labels the shapes and
        # looks are kept under are one cut's.
        self._cutting = threading.Lock()

    def cut(self, depth: np.ndarray):
        """Return the view's Cut (depth_surfaces.surfaces of the first frame that needs it)."""
        with self._cutting:
            if not self._has_cut:
                self._cut, self._has_cut = depth_surfaces.surfaces(depth), True
        return self._cut

    def free_surfaces(self, depth: np.ndarray, taken) -> dict:
        """Return depth_surfaces.free_surfaces of the view's cut (its surfaces found once)."""
        if self._objects is None:
            self._objects = depth_surfaces.free_surfaces(self.cut(depth), set())
        return {label: r for label, r in self._objects.items() if label not in taken}

    def solid_shapes(self, label: int, view, region) -> list:
        """Return depth_surfaces.solid_shapes of surface `label` (`region`), measured once."""
        if label not in self.solids:
            self.solids[label] = depth_surfaces.solid_shapes(self.cut(view.depth), view, region)
        return self.solids[label]


class ViewMemo(zoom.Recent):
    """The views of recent frames with depth, shared by the threads that ground frames."""

    def __init__(self, size: int = SIZE):
        super().__init__(size, 'view')

    def view(self, rgb_thumb: np.ndarray, depth_view) -> View:
        """Return the remembered View of a frame (its zoom.thumbnail and depth), or a new one."""
        depth_thumb = depth_thumbnail(depth_view.depth)
        K = np.asarray(depth_view.K, np.float64)

        def same_depth(v: View) -> bool:
            return np.array_equal(v.K, K) and zoom.same_view(v.depth_thumb, depth_thumb,
                                                             MAX_DEPTH_CHANGE)

        same = self.find(lambda v: same_depth(v) and zoom.same_view(v.rgb_thumb, rgb_thumb))
        if same is not None:
            return same
        same = self.find(same_depth, count=False)
        view = View(depth_thumb, rgb_thumb, K)
        if same is not None and same._has_cut:
            # The same depth in other colours (a lamp switched on) keeps the cut and shapes.
            view._cut, view._has_cut, view.solids = same._cut, True, same.solids
            view._objects = same._objects
        self.add(view)
        return view
