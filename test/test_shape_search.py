"""Shape search: a blob of several same-colour objects is narrowed to the named shape."""
import numpy as np
import pytest

from clip_ros.perception import shape_search
from clip_ros.perception.geometry import box_iou
from clip_ros.perception.regions import region_from_mask


def disc_mask(h: int, w: int, centres, radius: float) -> np.ndarray:
    rows, cols = np.mgrid[:h, :w]
    return np.any([(rows - r) ** 2 + (cols - c) ** 2 <= radius ** 2 for r, c in centres], axis=0)


def region_of(mask: np.ndarray):
    return region_from_mask(mask, (10, 20), np.ones(mask.shape, np.float32))


def test_one_compact_object_is_not_searched_and_three_touching_ones_are():
    assert not shape_search.search_radius(region_of(disc_mask(60, 60, [(30, 30)], 20)))
    square = np.zeros((60, 60), bool)
    square[10:50, 10:50] = True
    assert not shape_search.search_radius(region_of(square))
    three = disc_mask(60, 130, [(30, 22), (30, 64), (30, 106)], 21)
    assert shape_search.search_radius(region_of(three))


def test_windows_are_object_sized_distinct_and_inside_the_blob():
    region = region_of(disc_mask(60, 130, [(30, 22), (30, 64), (30, 106)], 21))
    mask = region.mask  # cut to the discs: rows 9..51, columns 1..127 of the drawing
    _, radius = shape_search.excess(mask)
    parts = shape_search.windows(region, radius)
    assert 1 < len(parts) <= shape_search.MAX_WINDOWS
    boxes = set()
    for part in parts:
        assert part.shape == mask.shape and not (part & ~mask).any()  # only blob pixels
        rows, cols = np.flatnonzero(part.any(1)), np.flatnonzero(part.any(0))
        boxes.add((rows[0], rows[-1], cols[0], cols[-1]))
        assert cols[-1] - cols[0] < mask.shape[1] - 1  # narrower than the whole row of three
    assert len(boxes) == len(parts)
    # One of them is close to the middle disc alone.
    middle = np.array([[42, 0, 85, 43]], np.float32)
    found = [box_iou(np.array([c0, r0, c1 + 1, r1 + 1], np.float32), middle)[0, 0]
             for r0, r1, c0, c1 in boxes]
    assert max(found) >= 0.7


@pytest.fixture(scope='module')
def crowded_scene(gl_context):
    """Render a validation scene where a green ball touches a green cylinder and block."""
    from clip_ros.sim.conditions import condition_frames
    from clip_ros.sim.simulator import Simulator
    with Simulator(100001, 640, 480, show_gripper=False) as sim:
        (_, _, frame), = condition_frames(sim, 'val', 'same_colour_distractors', 1, 1)
    truth = {o.name: o.box for o in frame.objects if o.box is not None}
    return frame.rgb, truth


@pytest.fixture(scope='module')
def tabletop_models():
    from clip_ros.perception.loading import load_clip, load_clipseg
    return load_clip('tabletop', '', device='cpu'), load_clipseg('tabletop', device='cpu')


def test_the_bundled_model_finds_the_ball_among_its_same_colour_neighbours(
        crowded_scene, tabletop_models):
    from clip_ros.perception.grounding import GroundingPipeline
    rgb, truth = crowded_scene
    assert {'green ball', 'green cylinder', 'green block'} <= set(truth)
    found = {}
    for search in (False, True):
        # The search alone: the zoomed second look, in tiles, finds this ball by itself too.
        pipeline = GroundingPipeline(*tabletop_models, shape_search=search, zoom_in=False)
        result = pipeline(rgb, ['green ball'], 0.4, with_heatmaps=False)
        found[search] = [float(box_iou(np.array(d.box, np.float32)[None],
                                       np.array(truth['green ball'], np.float32)[None])[0, 0])
                         for d in result.detections]
    # Without the search the three objects are one blob, which is no ball: nothing found.
    assert not any(iou >= 0.5 for iou in found[False]), found
    assert found[True] and found[True][0] >= 0.5, found


def sure_head(shape: int):
    """Return a real ShapeHead whose every answer is `shape` (zero weights, one bias)."""
    import torch
    from clip_ros.perception.shape_head import ShapeHead, ShapeNet
    net = ShapeNet(5, width=4)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.zero_()
        net.head.bias[shape] = 10.0
    return ShapeHead(net, ('block', 'ball', 'cylinder', 'bowl'))


def test_a_cut_blob_stays_whole_only_where_the_head_is_sure_of_the_named_shape():
    rgb = np.zeros((120, 160, 3), np.uint8)
    blob = region_of(disc_mask(60, 130, [(30, 22), (30, 64)], 21))
    (whole, prob), = shape_search.sure_wholes(sure_head(0), rgb, [blob], 'red block')
    assert whole is blob and prob >= shape_search.SURE_WHOLE
    assert shape_search.sure_wholes(sure_head(1), rgb, [blob], 'red block') == []
    assert shape_search.sure_wholes(sure_head(0), rgb, [blob], 'red thing') == []  # no shape
    assert shape_search.sure_wholes(None, rgb, [blob], 'red block') == []  # no head
    assert shape_search.sure_wholes(sure_head(0), rgb, [], 'red block') == []


@pytest.fixture(scope='module')
def occluded_scene(gl_context):
    """Render a validation scene where an occluder cuts a blue cylinder's blob in two."""
    from clip_ros.sim.conditions import condition_frames
    from clip_ros.sim.simulator import Simulator
    with Simulator(100004, 640, 480, show_gripper=False) as sim:
        (_, _, frame), = condition_frames(sim, 'val', 'occlusion', 1, 4)
    return frame.rgb, {o.name: o.box for o in frame.objects if o.box is not None}


def test_the_bundled_model_keeps_an_occluded_cylinder_whole(occluded_scene, tabletop_models):
    from clip_ros.perception.grounding import GroundingPipeline
    rgb, truth = occluded_scene
    iou = {}
    for search in (False, True):
        pipeline = GroundingPipeline(*tabletop_models, shape_search=search)
        result = pipeline(rgb, ['blue cylinder'], 0.4, with_heatmaps=False)
        top = result.detections[0].box
        iou[search] = float(box_iou(np.array(top, np.float32)[None],
                                    np.array(truth['blue cylinder'], np.float32)[None])[0, 0])
    # The instance step cuts it in two at the occluder; the head is sure the whole is one.
    assert iou[False] < 0.5 <= iou[True], iou


def test_nudged_windows_move_and_grow_around_the_best_one_inside_the_blob():
    region = region_of(disc_mask(60, 130, [(30, 22), (30, 64), (30, 106)], 21))
    mask = region.mask
    part = np.zeros_like(mask)
    part[5:30, 40:70] = mask[5:30, 40:70]  # a window over the top of the middle disc
    window = region_from_mask(part, region.offset, np.ones(mask.shape, np.float32))
    nudged = shape_search._nudged(mask, window, region.offset, 10.0)
    boxes = set()
    for p in nudged:
        assert p.shape == mask.shape and not (p & ~mask).any()  # only blob pixels
        rows, cols = np.flatnonzero(p.any(1)), np.flatnonzero(p.any(0))
        boxes.add((rows[0], cols[0], rows[-1] + 1, cols[-1] + 1))
    assert len(boxes) == len(nudged) and (5, 40, 30, 70) not in boxes  # distinct, not itself
    # Moved down by half a step, the window reaches lower over the middle disc.
    assert any(r0 == 10 and c0 == 40 and c1 == 70 for r0, c0, r1, c1 in boxes), boxes


@pytest.fixture(scope='module')
def offset_ball_scene(gl_context):
    """Render a validation scene where the search grid's window sits above an orange ball."""
    from clip_ros.sim.conditions import condition_frames
    from clip_ros.sim.simulator import Simulator
    with Simulator(100030, 640, 480, show_gripper=False) as sim:
        (_, _, frame), = condition_frames(sim, 'val', 'same_colour_distractors', 1, 30)
    return frame.rgb, {o.name: o.box for o in frame.objects if o.box is not None}


def test_the_nudge_centres_the_found_window_on_the_ball(
        offset_ball_scene, tabletop_models, monkeypatch):
    from clip_ros.perception.grounding import GroundingPipeline
    rgb, truth = offset_ball_scene
    iou = {}
    for nudge in (False, True):
        if not nudge:
            monkeypatch.setattr(shape_search, 'NUDGES', (0.0,))
            monkeypatch.setattr(shape_search, 'GROWTH', (1.0,))
        else:
            monkeypatch.undo()
        pipeline = GroundingPipeline(*tabletop_models)  # a fresh memo: the blob is searched
        result = pipeline(rgb, ['orange ball'], 0.4, with_heatmaps=False)
        top = result.detections[0].box  # the search's window, narrowed from the blob
        iou[nudge] = float(box_iou(np.array(top, np.float32)[None],
                                   np.array(truth['orange ball'], np.float32)[None])[0, 0])
    assert iou[False] < 0.5 <= iou[True], iou


def test_a_still_blob_is_searched_once_and_keeps_its_answer(crowded_scene, tabletop_models):
    from clip_ros.perception.grounding import GroundingPipeline
    rgb, truth = crowded_scene
    pipeline = GroundingPipeline(*tabletop_models)
    first = pipeline(rgb, ['green ball'], 0.4, with_heatmaps=False)
    memo = pipeline.search_memo
    assert (memo.hits, memo.misses) == (0, 1)  # the three-object blob, searched
    again = pipeline(rgb, ['green ball'], 0.4, with_heatmaps=False)
    assert (memo.hits, memo.misses) == (1, 1)
    assert [(d.box, d.score) for d in again.detections] == [
        (d.box, d.score) for d in first.detections]
    # Moved two pixels (sensor jitter, a nudged camera): the answer follows the blob.
    moved = pipeline(np.roll(rgb, 2, axis=1), ['green ball'], 0.4, with_heatmaps=False)
    assert memo.hits == 2
    ball = np.array(truth['green ball'], np.float32) + np.array([2, 0, 2, 0], np.float32)
    assert box_iou(np.array(moved.detections[0].box, np.float32)[None], ball[None])[0, 0] >= 0.5
    # Another shape word over the same blob is a search of its own.
    pipeline(rgb, ['green block'], 0.4, with_heatmaps=False)
    assert memo.misses >= 2
    pipeline.forget()  # a new run: the blob is searched again
    pipeline(rgb, ['green ball'], 0.4, with_heatmaps=False)
    assert (pipeline.search_memo.hits, pipeline.search_memo.misses) == (0, 1)


def test_a_cluttered_frame_searches_only_the_surest_blobs(tabletop_models):
    from clip_ros.perception.grounding import GroundingPipeline
    rgb = np.full((480, 640, 3), 90, np.uint8)
    for y in range(0, 480, 40):  # 192 red squares, each a blob too large for one block
        for x in range(0, 640, 40):
            rgb[y:y + 24, x:x + 24] = (220, 30, 30)
    pipeline = GroundingPipeline(*tabletop_models)
    pipeline(rgb, ['red block'], 0.4, with_heatmaps=False)
    memo = pipeline.search_memo
    assert (memo.hits, memo.misses) == (0, shape_search.MAX_BLOBS)
    pipeline(rgb, ['red block'], 0.4, with_heatmaps=False)  # the same surest blobs again
    assert (memo.hits, memo.misses) == (shape_search.MAX_BLOBS, shape_search.MAX_BLOBS)
