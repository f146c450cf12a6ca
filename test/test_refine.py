"""Small regions redrawn from the frame's colours (perception.refine)."""
import numpy as np

from clip_ros.perception.geometry import box_iou
from clip_ros.perception.refine import grow, MAX_CELLS, MAX_GROWTH, refine
from clip_ros.perception.regions import region_from_mask

H, W = 120, 160
DISC = (70.0, 50.0, 91.0, 71.0)  # the red disc's box: centre (80, 60), radius 10


def _scene():
    """Return a red disc with a darker rim (shading) and its shadow on a grey table, and a map."""
    ys, xs = np.mgrid[:H, :W]
    rgb = np.full((H, W, 3), 150, np.uint8)
    rgb[(xs - 86) ** 2 + (ys - 66) ** 2 <= 100] = (90, 90, 90)  # shadow, down and right
    radius = np.hypot(xs - 80, ys - 60)
    rgb[radius <= 10] = (200, 30, 30)
    rgb[(radius > 7) & (radius <= 10)] = (150, 20, 20)
    prob = np.exp(-radius ** 2 / (2 * 9.0 ** 2)).astype(np.float32)  # a blurred, coarse map
    return rgb, prob


def _region(prob, box):
    x0, y0, x1, y1 = box
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    mask[:] = True
    return region_from_mask(mask, (y0, x0), prob[y0:y1, x0:x1])


def test_a_blurred_region_shrinks_to_the_object():
    rgb, prob = _scene()
    coarse = _region(prob, (66, 46, 98, 78))  # table and shadow around the disc: 3x its area
    assert box_iou(coarse.box, DISC)[0, 0] < 0.5
    sharp = refine(rgb, coarse, prob, (5.0, 5.0))  # 32 px = 6.4 cells: small enough
    assert box_iou(sharp.box, DISC)[0, 0] >= 0.9
    assert sharp.mask.sum() == sharp.area and 250 <= sharp.area <= 330  # pi * 10^2 = 314
    assert 0 < sharp.mean_prob <= 1


def test_a_cut_region_grows_to_the_object():
    rgb, prob = _scene()
    cut = _region(prob, (74, 54, 86, 66))  # the threshold kept the disc's middle only
    assert box_iou(cut.box, DISC)[0, 0] < 0.5
    assert box_iou(refine(rgb, cut, prob, (5.0, 5.0)).box, DISC)[0, 0] >= 0.9


def test_the_size_limit_is_in_frame_pixels_whatever_the_cells_aspect():
    rgb, prob = _scene()
    tall = _region(prob, (68, 40, 92, 80))  # 24 x 40 px: 40 px is 8 cells of 5 px
    # At 640x480 a cell of a square map is 5 px wide and 3.75 px tall: 10.7 cells tall.
    assert box_iou(refine(rgb, tall, prob, (5.0, 3.75)).box, DISC)[0, 0] >= 0.9


def test_large_regions_and_inseparable_colours_are_left_alone():
    rgb, prob = _scene()
    coarse = _region(prob, (66, 46, 98, 78))
    cell = 32 / (MAX_CELLS + 1)  # the same region, now more than MAX_CELLS cells across
    assert refine(rgb, coarse, prob, (cell, cell)) is coarse
    grey = np.full((H, W, 3), 150, np.uint8)  # nothing to tell object from table
    assert refine(grey, coarse, prob, (5.0, 5.0)) is coarse


BLOCK = (60.0, 40.0, 100.0, 80.0)  # a block seen from above: lit top half, shaded side half


def _block_scene():
    """Return a green block (two shades) on a grey table and a flat map over it."""
    rgb = np.full((H, W, 3), (170, 160, 150), np.uint8)
    rgb[40:60, 60:100] = (100, 200, 100)
    rgb[60:80, 60:100] = (70, 160, 70)
    return rgb, np.full((H, W), 0.5, np.float32)


def test_a_region_that_covers_part_of_its_object_grows_over_it():
    rgb, prob = _block_scene()
    part = _region(prob, (60, 40, 100, 64))  # the map stopped just past the lit top
    assert box_iou(part.box, BLOCK)[0, 0] < 0.65
    grown = grow(rgb, part, prob)
    assert box_iou(grown.box, BLOCK)[0, 0] >= 0.95
    assert grown.mask.sum() == grown.area == 1600 and grown.mean_prob == 0.5


def test_growth_over_the_table_or_past_the_limit_is_refused():
    rgb, prob = _block_scene()
    whole = _region(prob, (60, 40, 100, 80))
    assert grow(rgb, whole, prob) is whole  # nothing left to grow into
    table = _region(prob, (10, 10, 40, 40))
    assert grow(rgb, table, prob) is table  # a region of the table's colours
    rgb[:] = (100, 200, 100)
    rgb[:4], rgb[-4:], rgb[:, :4], rgb[:, -4:] = (170, 160, 150), 0, 0, 0
    speck = _region(prob, (70, 50, 80, 60))  # a green field: growth far past MAX_GROWTH
    assert grow(rgb, speck, prob) is speck
    assert MAX_GROWTH < 3.0


def test_the_bundled_model_boxes_a_distant_object_it_found(gl_context):
    # Val camera_far scene 100507: the thresholded map of "orange cylinder" boxes the right
    # object at IoU 0.40 (the map is 128x128 for the frame; the cylinder 21x32 pixels).
    from clip_ros.perception import tabletop_model as tabletop
    from clip_ros.perception.grounding import GroundingPipeline
    from clip_ros.sim.conditions import condition_frames
    from clip_ros.sim.simulator import Simulator
    with Simulator(0, 640, 480, show_gripper=False) as sim:
        _, _, frame = next(condition_frames(sim, 'val', 'camera_far', 1, 507))
    truth = next(o.box for o in frame.objects if o.name == 'orange cylinder')
    models = (tabletop.load_tabletop_clip(device='cpu'),
              tabletop.load_tabletop_clipseg(device='cpu'))
    ious = {}
    for refined in (False, True):
        found = GroundingPipeline(*models, refine_masks=refined)(frame.rgb, ['orange cylinder'])
        ious[refined] = box_iou(found.detections[0].box, truth)[0, 0]
    assert ious[False] < 0.5 and ious[True] >= 0.9


def _val_scene(condition: str, index: int, name: str):
    """Render val scene 100000 + index under a condition; return (rgb, the object's box)."""
    from clip_ros.sim.conditions import condition_frames
    from clip_ros.sim.simulator import Simulator
    with Simulator(0, 640, 480, show_gripper=False) as sim:
        _, _, frame = next(condition_frames(sim, 'val', condition, 1, index))
    return frame.rgb, next(o.box for o in frame.objects if o.name == name)


def _top_iou(rgb, phrase, truth, **options) -> float:
    from clip_ros.perception import tabletop_model as tabletop
    from clip_ros.perception.grounding import GroundingPipeline
    models = (tabletop.load_tabletop_clip(device='cpu'),
              tabletop.load_tabletop_clipseg(device='cpu'))
    found = GroundingPipeline(*models, **options)(rgb, [phrase], with_heatmaps=False)
    return float(box_iou(found.detections[0].box, truth)[0, 0])


def test_the_bundled_model_boxes_a_distant_ball_taller_than_eight_map_rows(gl_context):
    # Val camera_far 100019: the map of "green ball" covers the ball and its shadow, 20 x 31
    # pixels, 8.3 map rows of 3.75 px but 6.2 cells of the 5 px the limit is measured in.
    rgb, truth = _val_scene('camera_far', 19, 'green ball')
    assert _top_iou(rgb, 'green ball', truth, refine_masks=False) < 0.5
    assert _top_iou(rgb, 'green ball', truth) >= 0.7


def test_table_pixels_among_the_most_probable_ones_are_not_object_colours(
        gl_context, monkeypatch):
    # Val small_objects 100033: the map of "green cylinder" peaks partly beside it, over table;
    # taking those pixels for the object's colours, the redraw filled its whole window.
    from clip_ros.perception import refine as refine_module
    rgb, truth = _val_scene('small_objects', 33, 'green cylinder')
    assert _top_iou(rgb, 'green cylinder', truth) >= 0.9
    monkeypatch.setattr(refine_module, 'CORE_APART', 0.0)
    assert _top_iou(rgb, 'green cylinder', truth) < 0.5


def test_the_bundled_model_grows_a_partly_hidden_bowl_not_into_a_same_colour_neighbour(
        gl_context):
    # Val occlusion 100024: an orange block hides part of the green bowl and the map of "green
    # bowl" covers only its rim's far half (box IoU 0.46); grown over the bowl, 1.0.
    rgb, truth = _val_scene('occlusion', 24, 'green bowl')
    assert _top_iou(rgb, 'green bowl', truth, refine_masks=False) < 0.5
    assert _top_iou(rgb, 'green bowl', truth) >= 0.9
    # Val same_colour_distractors 100006: the green ball touches other green objects. Growth
    # alone runs into them; the shape head finds that less of a ball and keeps the ball's box.
    from clip_ros.perception import tabletop_model as tabletop
    from clip_ros.perception.grounding import GroundingPipeline
    rgb, truth = _val_scene('same_colour_distractors', 6, 'green ball')
    models = (tabletop.load_tabletop_clip(device='cpu'),
              tabletop.load_tabletop_clipseg(device='cpu'))
    pipeline = GroundingPipeline(*models)
    found = pipeline(rgb, ['green ball'], with_heatmaps=True)
    seen = pipeline.light(rgb) if pipeline.light else rgb  # the frame the pipeline grew on
    assert box_iou(found.detections[0].box, truth)[0, 0] >= 0.5
    mask = found.label_image == 1
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    region = region_from_mask(mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1],
                              (rows[0], cols[0]), found.heatmaps[0][rows[0]:, cols[0]:])
    assert box_iou(grow(seen, region, found.heatmaps[0]).box, truth)[0, 0] < 0.5
