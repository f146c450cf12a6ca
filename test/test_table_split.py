"""A table-sized candidate is cut into the objects standing on the washed-out table."""
import math

import numpy as np
import pytest

from clip_ros.perception import table_split
from clip_ros.perception.geometry import box_iou
from clip_ros.perception.grounding import Evidence
from clip_ros.perception.regions import region_from_mask

CREAM = (255, 248, 222)  # a beige table under a bright lamp


def table_frame():
    """Return a cream table with a grey-white cylinder, its shadow, and the region over both."""
    rgb = np.zeros((120, 160, 3), np.uint8)
    rgb[:] = CREAM
    rgb[40:70, 60:80] = (226, 230, 228)  # the object: neutral where the table is yellowish
    rgb[55:75, 45:60] = (150, 146, 130)  # its shadow: the table's chromaticity, darker
    mask = np.zeros((120, 160), bool)
    mask[10:110, 10:150] = True  # the phrase's map covers the whole table
    return rgb, region_from_mask(mask, (0, 0), np.full((120, 160), 0.9, np.float32))


def test_the_object_on_the_table_is_cut_out_and_its_shadow_is_not():
    rgb, region = table_frame()
    assert table_split.is_table_sized(region, rgb.shape[0] * rgb.shape[1])
    table = table_split.table_pixels(rgb, region)
    blobs = table_split.table_blobs(region, table, np.full(rgb.shape[:2], 0.9, np.float32))
    assert len(blobs) == 1
    assert box_iou(blobs[0].box, (60, 40, 80, 70))[0, 0] > 0.8
    assert blobs[0].mean_prob == pytest.approx(0.9)


def test_a_region_no_colour_dominates_is_left_whole():
    rgb, region = table_frame()
    rgb[10:60, 10:150] = (40, 90, 200)  # half blue, half red: no table in it
    rgb[60:110, 10:150] = (200, 40, 40)
    assert table_split.table_pixels(rgb, region) is None


def test_specks_and_table_sized_blobs_are_no_objects():
    rgb, region = table_frame()
    rgb[40:70, 60:80] = CREAM
    rgb[20:26, 20:26] = (226, 230, 228)  # 36 pixels: a speck
    rgb[20:100, 90:150] = (226, 230, 228)  # 4800 of the region's 14000: more than an object
    table = table_split.table_pixels(rgb, region)
    assert table_split.table_blobs(region, table, np.zeros(rgb.shape[:2], np.float32)) == []


def test_a_blob_needs_clip_and_the_shape_head_to_name_it():
    def evidence(margin, shape):
        return Evidence(margin=margin, clip_prob=0.5, seg_mean=0.9, seg_peak=1.0,
                        shape_prob=shape)
    assert table_split.accepts(evidence(2.3, 0.58))
    assert not table_split.accepts(evidence(-9.1, 0.07))  # another name fits it better
    assert not table_split.accepts(evidence(2.3, 0.1))  # not the phrase's shape
    assert not table_split.accepts(evidence(2.3, math.nan))  # no shape head: nothing cut


def test_the_bundled_model_finds_a_white_ball_on_a_bright_table(gl_context):
    # Val light_intensity scene 100025: "white ball"'s map covers the whole washed-out table
    # (53,000 pixels, CLIP margin -12); the ball on it is the blob the cut gives.
    from clip_ros.perception import tabletop_model as tabletop
    from clip_ros.perception.grounding import GroundingPipeline
    from clip_ros.sim.conditions import condition_frames
    from clip_ros.sim.simulator import Simulator
    with Simulator(0, 640, 480, show_gripper=False) as sim:
        _, _, frame = next(condition_frames(sim, 'val', 'light_intensity', 1, 25))
    truth = next(o.box for o in frame.objects if o.name == 'white ball')
    pipeline = GroundingPipeline(tabletop.load_tabletop_clip(device='cpu'),
                                 tabletop.load_tabletop_clipseg(device='cpu'))
    found = pipeline(frame.rgb, ['white ball'], with_heatmaps=False)
    assert found.detections and box_iou(found.detections[0].box, truth)[0, 0] >= 0.5
    # The scene has no white cylinder: the ball is not taken for one.
    absent = pipeline(frame.rgb, ['white cylinder'], with_heatmaps=False)
    assert not absent.detections and 'white cylinder' in absent.rejected
