"""Tracker: ids follow moving objects, survive short gaps and expire after the timeout."""
import numpy as np
import pytest

from clip_ros.perception.geometry import box_iou, mask_iou
from clip_ros.perception.tracking import shift_mask, Tracker

H, W = 240, 320


def scene(objects) -> tuple:
    """Render [(label, x, y, w, h)] into (labels, boxes, label image); index order = list order."""
    label_image = np.zeros((H, W), np.uint16)
    labels, boxes = [], []
    for index, (label, x, y, w, h) in enumerate(objects):
        label_image[y:y + h, x:x + w] = index + 1
        labels.append(label)
        boxes.append((x, y, x + w, y + h))
    return labels, np.array(boxes, float).reshape(-1, 4), label_image


def test_box_and_mask_iou():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    np.testing.assert_allclose(box_iou(a, b), [[1 / 3, 0.0, 1.0]])
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2], masks[1, :, :2] = True, True
    np.testing.assert_allclose(mask_iou(masks, masks), [[1.0, 1 / 3], [1 / 3, 1.0]])
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)


def test_shift_mask_moves_and_clips():
    mask = np.zeros((5, 5), bool)
    mask[1, 1] = True
    assert shift_mask(mask, 2, 3)[3, 4]
    assert shift_mask(mask, -2, 0).sum() == 0
    assert shift_mask(mask, 0, 9).sum() == 0


@pytest.mark.parametrize('use_masks', [True, False])
def test_moving_block_keeps_its_id_while_order_changes(use_masks):
    tracker = Tracker(iou_threshold=0.3, lost_timeout=0.5)
    ids = []
    for step in range(60):  # 2 s at 30 Hz; the blue block slides 6 px a frame
        blue = ('blue block', 10 + 4 * step, 100 + step, 40, 30)
        red = ('red block', 250, 20, 30, 30)
        other_blue = ('blue block', 20, 10, 30, 30)
        objects = [blue, red, other_blue] if step % 2 else [other_blue, red, blue]
        labels, boxes, label_image = scene(objects)
        got = tracker.update(labels, boxes, step / 30.0, label_image if use_masks else None)
        ids.append(dict(zip([o[1:3] == blue[1:3] and 'moving' or o[0] for o in objects], got)))
    assert {frame['moving'] for frame in ids} == {ids[0]['moving']}
    assert {frame['red block'] for frame in ids} == {ids[0]['red block']}
    assert {frame['blue block'] for frame in ids} == {ids[0]['blue block']}
    assert len({ids[0]['moving'], ids[0]['red block'], ids[0]['blue block']}) == 3


def test_fast_object_is_followed_by_its_velocity():
    tracker = Tracker(iou_threshold=0.3, lost_timeout=1.0)
    ids = set()
    for step in range(15):  # then 20 px a frame for a 30 px box: IoU 0.2 without prediction
        x = 5 + 12 * step if step < 2 else 17 + 20 * (step - 1)
        labels, boxes, label_image = scene([('cup', x, 50, 30, 30)])
        ids.update(tracker.update(labels, boxes, step * 0.1, label_image))
    assert ids == {1}


def test_short_gap_keeps_id_long_gap_gets_new_id():
    tracker = Tracker(lost_timeout=0.5)
    labels, boxes, label_image = scene([('bowl', 100, 100, 50, 50)])
    first = tracker.update(labels, boxes, 0.0, label_image)
    assert tracker.update([], np.zeros((0, 4)), 0.2) == []
    assert tracker.update(labels, boxes, 0.4, label_image) == first
    assert tracker.update(labels, boxes, 1.2, label_image) != first
    assert len(tracker.tracks) == 1


def test_labels_are_not_mixed_and_ids_not_reused():
    tracker = Tracker()
    labels, boxes, _ = scene([('cup', 10, 10, 40, 40)])
    cup = tracker.update(labels, boxes, 0.0)
    bowl = tracker.update(['bowl'], boxes, 0.1)
    assert bowl != cup
    tracker.reset()
    assert tracker.update(labels, boxes, 0.0) == [1]


def test_time_jumping_back_starts_afresh():
    tracker = Tracker(lost_timeout=0.5)
    labels, boxes, _ = scene([('cup', 10, 10, 40, 40)])
    assert tracker.update(labels, boxes, 100.0) == [1]
    # The stale track (last seen at 100 s) is dropped, not matched: the cup gets a new id.
    assert tracker.update(labels, boxes, 10.0) == [2]
    assert len(tracker.tracks) == 1 and tracker.tracks[0].last_seen == 10.0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match='iou_threshold'):
        Tracker(iou_threshold=0.0)
    with pytest.raises(ValueError, match='labels'):
        Tracker().update(['a'], np.zeros((2, 4)), 0.0)


def test_a_thin_object_between_the_sampled_pixels_keeps_its_id():
    # 2 px wide, in columns 1-2: the tracker's every-4th-pixel mask of it is empty.
    tracker = Tracker()
    label = np.zeros((120, 160), np.uint16)
    label[20:60, 1:3] = 1
    ids = [tracker.update(['pen'], [[1, 20, 3, 60]], 0.1 * k, label)[0] for k in range(5)]
    assert ids == [1] * 5
