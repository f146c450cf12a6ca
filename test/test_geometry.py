"""Connected components, boxes, areas and centroids on hand-made masks."""
import numpy as np
import pytest

from clip_ros.perception.geometry import center_size, connected_components, Detection, paint


def _two_blobs():
    mask = np.zeros((10, 12), bool)
    mask[1:4, 2:6] = True     # 3 rows x 4 cols = 12 px
    mask[6:9, 8:10] = True    # 3 rows x 2 cols = 6 px
    return mask


def test_components_count_boxes_areas_centroids():
    regions = connected_components(_two_blobs())
    assert len(regions) == 2
    first, second = regions
    assert first.box == (2.0, 1.0, 6.0, 4.0)
    assert first.area == 12
    assert first.centroid == pytest.approx((4.0, 2.5))
    assert second.box == (8.0, 6.0, 10.0, 9.0)
    assert second.area == 6
    assert second.centroid == pytest.approx((9.0, 7.5))
    assert first.mask.shape == (3, 4) and first.mask.all()
    assert first.offset == (1, 2)


def test_min_area_drops_small_components():
    regions = connected_components(_two_blobs(), min_area=7)
    assert [r.area for r in regions] == [12]
    assert connected_components(_two_blobs(), min_area=13) == []


def test_empty_mask_has_no_components():
    assert connected_components(np.zeros((5, 5), bool)) == []


def test_connectivity_diagonal_pixels():
    mask = np.eye(4, dtype=bool)
    assert len(connected_components(mask, connectivity=8)) == 1
    assert len(connected_components(mask, connectivity=4)) == 4
    with pytest.raises(ValueError, match='4 or 8'):
        connected_components(mask, connectivity=6)


def test_full_mask_box_is_image_and_centroid_its_centre():
    (region,) = connected_components(np.ones((6, 8), bool))
    assert region.box == (0.0, 0.0, 8.0, 6.0)
    assert region.centroid == pytest.approx((4.0, 3.0))
    assert center_size(region.box) == pytest.approx((4.0, 3.0, 8.0, 6.0))


def test_mean_prob_and_non_convex_mask():
    mask = np.zeros((5, 5), bool)
    mask[0, :] = True
    mask[:, 0] = True     # an L: 9 px, box is the full 5x5
    prob = np.where(mask, 0.8, 0.1).astype(np.float32)
    prob[0, 0] = 0.0
    (region,) = connected_components(mask, prob)
    assert region.area == 9
    assert region.box == (0.0, 0.0, 5.0, 5.0)
    assert region.mean_prob == pytest.approx(0.8 * 8 / 9)
    assert region.mask.sum() == 9 and not region.mask[1:, 1:].any()


def test_shape_errors():
    with pytest.raises(ValueError, match='2-D'):
        connected_components(np.zeros((2, 2, 3), bool))
    with pytest.raises(ValueError, match='must match'):
        connected_components(np.zeros((4, 4), bool), np.zeros((4, 5), np.float32))


def test_paint_keeps_existing_labels():
    mask = _two_blobs()
    label = np.zeros(mask.shape, np.uint16)
    label[1, 2] = 7
    first, second = connected_components(mask)
    paint(label, first, 1)
    paint(label, second, 2)
    assert label[1, 2] == 7
    assert (label == 1).sum() == 11 and (label == 2).sum() == 6
    assert label[~mask].max() == 0


def test_detection_center_size():
    det = Detection(0, 'cup', 0.5, (10.0, 20.0, 30.0, 60.0), 800, (20.0, 40.0), 0.5)
    assert det.center_size == (20.0, 40.0, 20.0, 40.0)
