"""Objects on a washed-out table are found in depth when colour cannot cut them out."""
import math

import numpy as np
import pytest

from clip_ros.perception import table_depth
from clip_ros.perception.geometry import box_iou
from clip_ros.perception.grounding import Evidence

H, W = 120, 160
K = np.array([[150.0, 0.0, (W - 1) / 2], [0.0, 150.0, (H - 1) / 2], [0.0, 0.0, 1.0]])


def tilted_table(bump=(40, 70, 60, 90), height=0.05):
    """
    Return (depth, its plane's inverse-depth coefficients) of a table seen from above.

    bump: (row0, row1, col0, col1) of a box standing `height` metres nearer the camera.
    """
    rows, cols = np.mgrid[0:H, 0:W]
    plane = np.array([0.0002, 0.004, 1.0])  # inverse depth a*u + b*v + c: nearer at the bottom
    depth = (1.0 / (plane[0] * cols + plane[1] * rows + plane[2])).astype(np.float32)
    r0, r1, c0, c1 = bump
    depth[r0:r1, c0:c1] -= height
    return depth, plane


def test_the_plane_is_fitted_past_the_objects_on_it():
    depth, plane = tilted_table()
    table = np.ones((H, W), bool)  # the object's pixels are fitted too, and dropped as outliers
    assert table_depth.table_plane(depth, table) == pytest.approx(plane, rel=1e-3)
    assert table_depth.table_plane(depth, np.zeros((H, W), bool)) is None  # nothing to fit


def test_a_white_box_on_a_clipped_table_is_the_one_blob():
    depth, _ = tilted_table()
    rgb = np.full((H, W, 3), 255, np.uint8)  # table and box both clipped white
    blobs = table_depth.washed_out_blobs(rgb, table_depth.DepthView(depth, K))
    assert len(blobs) == 1
    assert box_iou(blobs[0].box, (60, 40, 90, 70))[0, 0] > 0.9
    # The same scene under ordinary light is not washed out: no look in depth.
    assert table_depth.washed_out_blobs(np.full((H, W, 3), 180, np.uint8),
                                        table_depth.DepthView(depth, K)) == []


def test_what_stands_off_the_clipped_table_is_no_object_on_it():
    depth, _ = tilted_table()
    rgb = np.full((H, W, 3), 255, np.uint8)
    rgb[20:110, 40:110] = 60  # the white box stands on a dark floor patch, not on the table
    rgb[40:70, 60:90] = 255
    assert table_depth.washed_out_blobs(rgb, table_depth.DepthView(depth, K)) == []


def test_a_coloured_object_is_left_to_colour():
    depth, _ = tilted_table()
    rgb = np.full((H, W, 3), (255, 255, 215), np.uint8)  # a cream table, clipped in red and green
    view = table_depth.DepthView(depth, K)
    rgb[40:70, 60:90] = 255  # white: lost in the table
    assert len(table_depth.washed_out_blobs(rgb, view)) == 1
    rgb[40:70, 60:90] = (255, 240, 0)  # orange clipped to yellow: colour finds it, or nothing
    assert table_depth.washed_out_blobs(rgb, view) == []


def test_the_drawn_view_shades_the_blob_and_paints_the_rest_table():
    depth, _ = tilted_table()
    rgb = np.full((H, W, 3), 255, np.uint8)
    view = table_depth.DepthView(depth, K)
    blobs = table_depth.washed_out_blobs(rgb, view)
    drawn = table_depth.drawn_view(rgb, view, blobs, (150, 140, 125))
    assert (drawn[0, 0] == (150, 140, 125)).all() and (drawn[100, 10] == (150, 140, 125)).all()
    inside = drawn[45:65, 65:85].reshape(-1, 3)
    assert (inside[:, 0] == inside[:, 1]).all()  # white stays neutral, only shaded
    assert inside.min() >= table_depth.AMBIENT * 255 - 1 and inside.max() < 255


def test_bad_depth_is_refused_with_the_reason():
    depth, _ = tilted_table()
    with pytest.raises(ValueError, match='not the frame size'):
        table_depth.check_depth((depth, K), (H + 1, W))
    with pytest.raises(ValueError, match='3x3 pinhole'):
        table_depth.check_depth((depth, np.eye(2)), (H, W))
    assert table_depth.check_depth(None, (H, W)) is None


def test_colour_rivals_are_the_other_colours_of_the_shape():
    texts = ['white bowl', 'red bowl', 'bowl', 'white ball', 'a table surface', 'blue bowl']
    rivals = table_depth.colour_rivals(texts, 'white bowl', ('block', 'ball', 'bowl'))
    assert [texts[k] for k in rivals] == ['red bowl', 'blue bowl']
    assert table_depth.colour_rivals(texts, 'white one', ('block', 'ball', 'bowl')) is None


def test_a_blob_needs_its_colour_and_its_shape():
    def evidence(margin, shape):
        return Evidence(margin=margin, clip_prob=0.9, seg_mean=0.0, seg_peak=0.0,
                        shape_prob=shape)
    assert table_depth.accepts(evidence(12.4, 0.88))
    assert not table_depth.accepts(evidence(-5.2, 0.84))  # another colour
    assert not table_depth.accepts(evidence(11.7, 0.01))  # another shape
    assert not table_depth.accepts(evidence(11.7, math.nan))
    assert table_depth.score(evidence(12.4, 0.81)) == pytest.approx(math.sqrt(0.9 * 0.81))


@pytest.fixture(scope='module')
def bright_scene(gl_context):
    """Val light_intensity scene 100004: white bowl and white cylinder on the clipped table."""
    from clip_ros.sim.conditions import condition_frames
    from clip_ros.sim.simulator import Simulator
    with Simulator(0, 640, 480, show_gripper=False) as sim:
        _, _, frame = next(condition_frames(sim, 'val', 'light_intensity', 1, 4, depth=True))
    return frame


@pytest.fixture(scope='module')
def pipeline():
    from clip_ros.perception import tabletop_model as tabletop
    from clip_ros.perception.grounding import GroundingPipeline
    return GroundingPipeline(tabletop.load_tabletop_clip(device='cpu'),
                             tabletop.load_tabletop_clipseg(device='cpu'))


def test_the_bundled_model_finds_white_objects_on_a_clipped_table_in_depth(
        bright_scene, pipeline):
    frame = bright_scene
    view = table_depth.DepthView(frame.depth, frame.K)
    for name in ('white bowl', 'white cylinder'):
        truth = next(o.box for o in frame.objects if o.name == name)
        # Their pixels are the table's: colour alone finds nothing.
        assert not pipeline(frame.rgb, [name], with_heatmaps=False).detections
        found = pipeline(frame.rgb, [name], with_heatmaps=False, depth=view)
        assert found.detections, found.rejected
        assert box_iou(found.detections[0].box, truth)[0, 0] >= 0.8, name
        assert (found.label_image > 0).sum() > 0.8 * found.detections[0].area
    # Absent objects stay not found: a white ball (the bowl and cylinder are no balls), a
    # red bowl (the bowl is white).
    for name in ('white ball', 'red bowl'):
        absent = pipeline(frame.rgb, [name], with_heatmaps=False, depth=view)
        assert not absent.detections and absent.rejected[name].startswith('not found')


def test_depth_changes_no_answer_on_a_table_that_is_not_washed_out(gl_context, pipeline):
    from clip_ros.sim.conditions import condition_frames
    from clip_ros.sim.simulator import Simulator
    with Simulator(0, 640, 480, show_gripper=False) as sim:
        _, _, frame = next(condition_frames(sim, 'val', 'in_distribution', 1, 4, depth=True))
    names = sorted({o.name for o in frame.objects})[:2] + ['white bowl']
    plain = pipeline(frame.rgb, names, with_heatmaps=False)
    seen = pipeline(frame.rgb, names, with_heatmaps=False,
                    depth=table_depth.DepthView(frame.depth, frame.K))
    # No look in depth: the same phrases found, as sure (depth only cuts their masks to the
    # surfaces they lie on, perception.depth_surfaces).
    assert [(d.phrase, d.score) for d in seen.detections] == \
        [(d.phrase, d.score) for d in plain.detections]
    assert seen.rejected == plain.rejected
