"""The search memo: a blob that has not changed keeps its shape-search answer."""
import numpy as np
import pytest

from clip_ros.perception.geometry import region_iou
from clip_ros.perception.regions import region_from_mask
from clip_ros.perception.search_memo import SearchMemo


def blob(top: int, left: int, h: int = 40, w: int = 90):
    """Return a Region: a filled h x w rectangle at (top, left)."""
    return region_from_mask(np.ones((h, w), bool), (top, left), np.full((h, w), 0.8, np.float32))


def window(region, cols: slice):
    """Return (Region, probability) of the region's pixels in `cols` (a found window)."""
    part = np.zeros_like(region.mask)
    part[:, cols] = True
    return region_from_mask(part, region.offset, np.full(part.shape, 0.8, np.float32)), 0.9


def frame(colour=(0, 160, 0)):
    rgb = np.full((240, 320, 3), 200, np.uint8)
    rgb[50:150, 50:200] = colour
    return rgb


def test_region_iou_counts_shared_pixels_across_offsets():
    assert region_iou(blob(60, 60), blob(60, 60)) == 1.0
    assert region_iou(blob(60, 60), blob(60, 69)) == (81 * 40) / (99 * 40)
    assert region_iou(blob(60, 60), blob(120, 60)) == 0.0


def test_a_remembered_window_is_cut_from_the_blob_of_the_next_frame():
    memo, rgb, old = SearchMemo(), frame(), blob(60, 60)
    found = window(old, slice(30, 60))  # columns 90..119 of the frame
    memo.remember(0, old, rgb, 0.1, found)
    whole, (region, prob) = memo.recall(0, blob(61, 62), rgb, np.full((40, 90), 0.5))
    assert (whole, prob) == (0.1, 0.9)
    # The window's frame pixels, inside the moved blob: rows 61..99, columns 90..119.
    assert region.box == (90.0, 61.0, 120.0, 100.0) and region.mean_prob == 0.5
    assert (memo.hits, memo.misses) == (1, 0)


def test_a_search_that_found_nothing_is_remembered_as_nothing():
    memo, rgb = SearchMemo(), frame()
    memo.remember(2, blob(60, 60), rgb, 0.3, None)
    assert memo.recall(2, blob(60, 60), rgb, np.ones((40, 90))) == (0.3, None)


def test_a_moved_recoloured_or_differently_named_blob_is_searched_again():
    memo, rgb, old = SearchMemo(), frame(), blob(60, 60)
    memo.remember(0, old, rgb, 0.1, window(old, slice(0, 30)))
    prob = np.ones((40, 90))
    assert memo.recall(0, blob(60, 75), rgb, prob) is None       # IoU 0.71
    assert memo.recall(0, old, frame((0, 100, 0)), prob) is None  # another colour
    assert memo.recall(1, old, rgb, prob) is None                 # another shape
    # The remembered window (columns 60..64) left the blob, which now starts at column 64.
    memo.remember(3, old, rgb, 0.1, window(old, slice(0, 5)))
    assert memo.recall(3, blob(60, 64, w=86), rgb, np.ones((40, 86))) is None
    assert (memo.hits, memo.misses) == (0, 4)


def test_the_memo_keeps_only_the_newest_blobs():
    memo, rgb = SearchMemo(size=2), frame()
    for top in (0, 60, 120):
        memo.remember(0, blob(top, 60), rgb, top / 1000, None)
    prob = np.ones((40, 90))
    assert memo.recall(0, blob(0, 60), rgb, prob) is None
    assert memo.recall(0, blob(120, 60), rgb, prob) == (0.12, None)


def test_a_memo_of_no_blobs_is_refused():
    # size 0 never evicted (entries[:-0] keeps them all): it would grow without bound.
    with pytest.raises(ValueError, match='at least one blob'):
        SearchMemo(0)
