"""With depth, a detection's mask is the surface it lies on: past the piece its map covers."""
import numpy as np
import pytest

from clip_ros.perception import depth_surfaces
from clip_ros.perception.geometry import box_iou
from clip_ros.perception.regions import region_from_mask

H, W = 240, 320
PLANE = np.array([0.0002, 0.004, 1.0])  # inverse depth a*u + b*v + c: nearer at the bottom
FRONT = (60, 90, 50, 80)   # rows, cols of a box 5 cm above the table
BEHIND = (40, 75, 65, 100)  # a box 3 cm above the table, partly behind the front one


def table(*boxes):
    """Return the depth of the tilted table with (rows, cols, height) boxes standing on it."""
    rows, cols = np.mgrid[0:H, 0:W]
    floor = (1.0 / (PLANE[0] * cols + PLANE[1] * rows + PLANE[2])).astype(np.float32)
    depth = floor.copy()
    for (r0, r1, c0, c1), height in boxes:  # a later box stands in front of an earlier one
        depth[r0:r1, c0:c1] = floor[r0:r1, c0:c1] - height
    return depth


def mask_of(r0, r1, c0, c1):
    mask = np.zeros((H, W), bool)
    mask[r0:r1, c0:c1] = True
    return mask


def region(mask):
    return region_from_mask(mask, (0, 0), np.ones((H, W), np.float32))


def two_boxes():
    """Return (depth, visible mask of the box behind, mask of the front box)."""
    depth = table((BEHIND, 0.03), (FRONT, 0.05))  # the front box is drawn over the other
    front = mask_of(*FRONT)
    return depth, mask_of(*BEHIND) & ~front, front


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def full(found):
    mask = np.zeros((H, W), bool)
    row, col = found.offset
    mask[row:row + found.mask.shape[0], col:col + found.mask.shape[1]] = found.mask
    return mask


def test_the_table_plane_holds_the_most_pixels():
    depth = table()
    assert depth_surfaces.table_plane(depth) == pytest.approx(PLANE, rel=1e-3)
    # A large box over the middle of the frame: the plane is still the table's, from the
    # window below it.
    covered = table(((30, 90, 40, 120), 0.05))
    assert depth_surfaces.table_plane(covered) == pytest.approx(PLANE, rel=1e-3)
    assert depth_surfaces.table_plane(np.full((H, W), np.nan, np.float32)) is None
    assert depth_surfaces.surfaces(np.zeros((H, W), np.float32)) is None


def test_a_box_behind_another_is_a_surface_of_its_own():
    depth, behind, front = two_boxes()
    labels, windows, _, _ = depth_surfaces.surfaces(depth)
    assert len(windows) == 2
    assert (labels[behind] > 0).mean() > 0.8 and (labels[front] > 0).mean() > 0.8
    assert len(set(labels[behind & (labels > 0)]) & set(labels[front & (labels > 0)])) == 0
    assert (labels[~(behind | front)] == 0).all()  # the table is no surface


def test_a_piece_of_the_hidden_box_grows_to_what_is_seen_of_it():
    depth, behind, front = two_boxes()
    cut = depth_surfaces.surfaces(depth)
    piece = region(mask_of(40, 50, 70, 95))  # the map covered the box's far edge only
    found = depth_surfaces.on_surface(cut, piece, np.ones((H, W), np.float32))
    assert iou(full(found), behind) > 0.85
    assert not (full(found) & front).any()  # never into the box in front of it


def test_the_maps_surest_pixels_choose_the_surface():
    depth, behind, front = two_boxes()
    cut = depth_surfaces.surfaces(depth)
    # Most of the mask lies on the box in front, but the map is surest on the one behind.
    mask = mask_of(60, 90, 55, 80) | mask_of(45, 60, 65, 95)
    prob = np.where(behind, 0.95, 0.5).astype(np.float32)
    assert (mask & front).sum() > (mask & behind).sum()
    found = depth_surfaces.on_surface(cut, region(mask), prob)
    assert iou(full(found), behind) > 0.85
    assert found.mean_prob == pytest.approx(0.95)


def test_a_mask_spilling_onto_the_table_is_cut_to_its_object():
    depth, _, front = two_boxes()
    spilled = region(mask_of(58, 96, 50, 84))  # the front box and its shadow on the table
    found = depth_surfaces.on_surface(depth_surfaces.surfaces(depth), spilled,
                                      np.ones((H, W), np.float32))
    assert iou(full(found), front) > 0.85
    assert box_iou(found.box, (50, 60, 80, 90))[0, 0] > 0.85


def test_a_mask_mostly_on_the_table_or_on_a_wall_stays_as_it_is():
    depth, _, _ = two_boxes()
    cut = depth_surfaces.surfaces(depth)
    on_table = region(mask_of(85, 110, 70, 100))  # a sliver of the front box, most on the table
    assert depth_surfaces.on_surface(cut, on_table, np.ones((H, W), np.float32)) is on_table
    wall = table(((0, 60, 0, 320), 0.2))  # a quarter of the frame, nearer: no object on it
    inside = region(mask_of(10, 20, 10, 20))
    ones = np.ones((H, W), np.float32)
    assert depth_surfaces.on_surface(depth_surfaces.surfaces(wall), inside, ones) is inside


@pytest.fixture(scope='module')
def pipeline():
    from clip_ros.perception import tabletop_model as tabletop
    from clip_ros.perception.grounding import GroundingPipeline
    return GroundingPipeline(tabletop.load_tabletop_clip(device='cpu'),
                             tabletop.load_tabletop_clipseg(device='cpu'))


@pytest.mark.parametrize('index, name', [(16, 'white block'), (34, 'green cylinder')])
def test_the_bundled_model_boxes_a_partly_hidden_object_whole_with_depth(
        gl_context, pipeline, index, name):
    """Val occlusion scenes: without depth the box covers a piece of the object behind."""
    from clip_ros.perception.table_depth import DepthView
    from clip_ros.sim.conditions import condition_frames
    from clip_ros.sim.simulator import Simulator
    with Simulator(0, 640, 480, show_gripper=False) as sim:
        _, spec, frame = next(condition_frames(sim, 'val', 'occlusion', 1, index, depth=True))
    assert spec.focus == name
    truth = next(o for o in frame.objects if o.name == name)
    plain = pipeline(frame.rgb, [name], with_heatmaps=False)
    seen = pipeline(frame.rgb, [name], with_heatmaps=False,
                    depth=DepthView(frame.depth, frame.K))
    assert box_iou(plain.detections[0].box, truth.box)[0, 0] < 0.5
    assert box_iou(seen.detections[0].box, truth.box)[0, 0] >= 0.75
    # Depth changes the mask, not what is found nor how sure.
    assert [(d.phrase, d.score) for d in seen.detections] == \
        [(d.phrase, d.score) for d in plain.detections]


def test_free_surfaces_are_the_objects_no_detection_lies_on():
    depth, behind, front = two_boxes()
    cut = depth_surfaces.surfaces(depth)
    ones = np.ones((H, W), np.float32)
    taken = depth_surfaces.surface_label(cut, region(front), ones)
    assert taken > 0
    free = depth_surfaces.free_surfaces(cut, {taken})
    assert list(free) != [taken] and len(free) == 1
    assert iou(full(next(iter(free.values()))), behind) > 0.85
    assert len(depth_surfaces.free_surfaces(cut, set())) == 2
    # A wall-sized surface and a speck are no objects.
    wall = table(((0, 60, 0, 320), 0.2), ((150, 155, 150, 155), 0.05))
    assert depth_surfaces.free_surfaces(depth_surfaces.surfaces(wall), set()) == {}


@pytest.mark.parametrize('index, name, absent', [(112, 'green cylinder', 'blue ball'),
                                                 (118, 'black bowl', 'black block')])
def test_depth_finds_a_hidden_object_colour_left_unfound(gl_context, pipeline, index, name,
                                                         absent):
    """Val occlusion scenes: the map misses the object behind; its surface in depth does not."""
    from clip_ros.perception.table_depth import DepthView
    from clip_ros.sim.conditions import condition_frames
    from clip_ros.sim.simulator import Simulator
    with Simulator(0, 640, 480, show_gripper=False) as sim:
        _, spec, frame = next(condition_frames(sim, 'val', 'occlusion', 1, index, depth=True))
    assert spec.focus == name and absent not in {o.name for o in frame.objects}
    truth = next(o for o in frame.objects if o.name == name)
    plain = pipeline(frame.rgb, [name, absent], with_heatmaps=False)
    assert not plain.detections and set(plain.rejected) == {name, absent}
    seen = pipeline(frame.rgb, [name, absent], with_heatmaps=False,
                    depth=DepthView(frame.depth, frame.K))
    assert [d.phrase for d in seen.detections] == [name]
    assert box_iou(seen.detections[0].box, truth.box)[0, 0] >= 0.5
    assert absent in seen.rejected  # a same-colour object of another shape is not it


def test_a_surface_clip_is_unsure_of_answers_no_absent_phrase(gl_context, pipeline):
    """Val occlusion 100037: a white block's surface gave 'green block' a colour margin 0.3."""
    from clip_ros.perception.table_depth import DepthView
    from clip_ros.sim.conditions import condition_frames
    from clip_ros.sim.simulator import Simulator
    with Simulator(0, 640, 480, show_gripper=False) as sim:
        _, _, frame = next(condition_frames(sim, 'val', 'occlusion', 1, 37, depth=True))
    assert 'green block' not in {o.name for o in frame.objects}
    seen = pipeline(frame.rgb, ['green block'], with_heatmaps=False,
                    depth=DepthView(frame.depth, frame.K))
    assert not seen.detections and 'green block' in seen.rejected


def test_the_table_frame_measures_height_above_the_table():
    """A camera 0.6 m from the table, looking down at it at 50 degrees from its normal."""
    from clip_ros.perception import solid_shape
    K = np.array([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]])
    tilt = np.radians(50)
    normal = np.array([0.0, -np.sin(tilt), np.cos(tilt)])  # n . p = d on the table
    d = 0.6
    a, b = normal[0] / (d * K[0, 0]), normal[1] / (d * K[1, 1])
    plane = np.array([a, b, normal[2] / d - a * K[0, 2] - b * K[1, 2]])
    frame = solid_shape.table_frame(plane, K)
    rows, cols = np.mgrid[0:H:20, 0:W:20]
    depth = 1.0 / (plane[0] * cols + plane[1] * rows + plane[2])
    on_table = frame.apply(solid_shape.back_project(cols, rows, depth, K))
    assert np.abs(on_table[..., 2]).max() < 1e-9
    assert np.allclose(frame.rotation @ frame.rotation.T, np.eye(3))
    # 5 cm above the table, towards the camera; distances along the table are kept.
    lifted = frame.apply(solid_shape.back_project(cols, rows, depth, K) - 0.05 * normal)
    assert lifted[..., 2] == pytest.approx(np.full(lifted.shape[:2], 0.05))
    assert np.linalg.norm(on_table[0, 0] - on_table[-1, -1]) == pytest.approx(np.linalg.norm(
        solid_shape.back_project(cols[0, 0], rows[0, 0], depth[0, 0], K)
        - solid_shape.back_project(cols[-1, -1], rows[-1, -1], depth[-1, -1], K)))


def test_an_isolated_surface_is_seen_without_what_stands_in_front_of_it():
    depth, behind, front = two_boxes()
    cut = depth_surfaces.surfaces(depth)
    rgb = np.full((H, W, 3), (120, 110, 100), np.uint8)  # the table
    rgb[behind] = (250, 250, 250)
    rgb[front] = (200, 20, 20)
    label = depth_surfaces.surface_label(cut, region(behind), np.ones((H, W), np.float32))
    surface = depth_surfaces.surface_region(cut, label)
    window, box = depth_surfaces.isolated(rgb, cut, surface)
    left, top = int(surface.box[0] - box[0]), int(surface.box[1] - box[1])
    seen = rgb.copy()
    seen[top:top + window.shape[0], left:left + window.shape[1]] = window
    assert window.shape[0] < H and window.shape[1] < W  # the window around it, not the frame
    assert (seen[behind] == (250, 250, 250)).all(axis=1).mean() > 0.85
    # The red box in front is painted out where it covers the hidden one's box.
    assert (seen[60:75, 65:80] == (120, 110, 100)).all()
    assert (rgb[front] == (200, 20, 20)).all()  # on a copy


def test_depth_tells_a_half_hidden_cylinder_from_a_half_hidden_block(gl_context, pipeline):
    """
    Val occlusion 100018 and 100083: a white cylinder's crescent, a white block's corner.

    The shape head, made for whole objects, takes neither for what it is; their outlines in
    depth do. Painted out around the surface, CLIP sees white, not the object in front.
    """
    from clip_ros.perception.table_depth import DepthView
    from clip_ros.sim.conditions import condition_frames
    from clip_ros.sim.simulator import Simulator
    with Simulator(0, 640, 480, show_gripper=False) as sim:
        cylinder = next(condition_frames(sim, 'val', 'occlusion', 1, 18, depth=True))
        block = next(condition_frames(sim, 'val', 'occlusion', 1, 83, depth=True))
    for (_, spec, frame), absent in [(cylinder, 'white block'), (block, 'white cylinder')]:
        assert absent not in {o.name for o in frame.objects}
        view = DepthView(frame.depth, frame.K)
        cut = depth_surfaces.surfaces(frame.depth)
        for obj in frame.objects:  # whole or hidden, each surface keeps its own shape
            label = np.bincount(cut.labels[frame.instances == obj.instance_id]).argmax()
            shapes = depth_surfaces.solid_shapes(cut, view, depth_surfaces.surface_region(
                cut, label)) if label else [obj.shape]
            assert obj.shape in shapes and (obj.name != spec.focus or shapes == [obj.shape])
        truth = next(o for o in frame.objects if o.name == spec.focus)
        assert not pipeline(frame.rgb, [spec.focus], with_heatmaps=False).detections
        seen = pipeline(frame.rgb, [spec.focus, absent], with_heatmaps=False, depth=view)
        assert [d.phrase for d in seen.detections] == [spec.focus], seen.rejected
        x0, y0, x1, y1 = seen.detections[0].box  # on the object (the block's side is cut off)
        inside = (min(x1, truth.box[2]) - max(x0, truth.box[0])) * (
            min(y1, truth.box[3]) - max(y0, truth.box[1])) / ((x1 - x0) * (y1 - y0))
        assert inside >= 0.9
        assert absent in seen.rejected
        # The same view again, with sensor noise: what depth gave is remembered, same answers.
        rng = np.random.default_rng(0)
        noisy_rgb = np.clip(frame.rgb + rng.integers(-1, 2, frame.rgb.shape), 0, 255)
        noisy = frame.depth + rng.normal(0, 0.0005, frame.depth.shape).astype(np.float32)
        hits = pipeline.still_views.hits
        again = pipeline(noisy_rgb.astype(np.uint8), [spec.focus, absent],
                         with_heatmaps=False, depth=DepthView(noisy, frame.K))
        assert pipeline.still_views.hits == hits + 1
        assert [(d.phrase, d.box) for d in again.detections] == \
            [(d.phrase, d.box) for d in seen.detections]
        assert again.rejected == seen.rejected


@pytest.mark.parametrize('index, name, neighbour', [(81, 'black cylinder', 'black block'),
                                                    (101, 'white ball', 'white cylinder')])
def test_depth_refuses_a_map_that_lies_on_a_neighbour_of_another_shape(
        gl_context, pipeline, index, name, neighbour):
    """Val occlusion scenes: colour finds the neighbour; its surface in depth is no `name`."""
    from clip_ros.perception.table_depth import DepthView
    from clip_ros.sim.conditions import condition_frames
    from clip_ros.sim.simulator import Simulator
    with Simulator(0, 640, 480, show_gripper=False) as sim:
        _, spec, frame = next(condition_frames(sim, 'val', 'occlusion', 1, index, depth=True))
    assert spec.focus == name
    boxes = {o.name: o.box for o in frame.objects}
    plain = pipeline(frame.rgb, [name], with_heatmaps=False)
    assert box_iou(plain.detections[0].box, boxes[neighbour])[0, 0] >= 0.35
    seen = pipeline(frame.rgb, [name], with_heatmaps=False,
                    depth=DepthView(frame.depth, frame.K))
    assert all(box_iou(d.box, boxes[neighbour])[0, 0] < 0.2 for d in seen.detections)
    # Where the one asked for is left whole enough to measure, it is found instead.
    assert not seen.detections or box_iou(seen.detections[0].box, boxes[name])[0, 0] >= 0.5


K = np.array([[300.0, 0.0, W / 2], [0.0, 300.0, H / 2], [0.0, 0.0, 1.0]])


def test_a_depth_thumbnail_averages_the_valid_pixels_of_each_cell():
    from clip_ros.perception import still_view
    depth = np.full((16, 24), 2.0, np.float32)
    depth[0, 0], depth[0, 1], depth[8:, 8:16] = 0.0, np.nan, 0.0  # a cell without depth
    thumb = still_view.depth_thumbnail(depth)
    assert thumb.shape == (2, 3) and thumb[0, 0] == 2.0 and thumb[1, 1] == 0.0
    assert still_view.depth_thumbnail(depth[:13, :21]).shape == (2, 3)  # partial cells too


def test_a_still_view_is_cut_and_measured_once():
    from clip_ros.perception import still_view, zoom
    from clip_ros.perception.table_depth import DepthView
    depth, behind, _ = two_boxes()
    grey = zoom.thumbnail(np.full((H, W, 3), 128, np.uint8))
    memo = still_view.ViewMemo()
    first = memo.view(grey, DepthView(depth, K))
    cut = first.cut(depth)
    free = first.free_surfaces(depth, set())
    assert cut is not None and len(free) == 2
    label = next(label for label, r in free.items() if iou(full(r), behind) > 0.85)
    shapes = first.solid_shapes(label, DepthView(depth, K), free[label])
    assert first.solids == {label: shapes}
    assert list(first.free_surfaces(depth, {label})) == [k for k in free if k != label]
    # Sensor noise and a pixel without depth: the same view, nothing cut or measured again.
    noisy = depth + np.random.default_rng(0).normal(0, 0.001, depth.shape).astype(np.float32)
    noisy[5, 5] = 0.0
    assert memo.view(grey, DepthView(noisy, K)) is first
    # The front box moved: another view.
    moved = table((BEHIND, 0.03), ((60, 90, 60, 90), 0.05))
    assert memo.view(grey, DepthView(moved, K)).cut(moved) is not cut
    # The same depth in other colours: the cut and shapes kept, CLIP's looks not.
    darker = memo.view(zoom.thumbnail(np.full((H, W, 3), 90, np.uint8)), DepthView(depth, K))
    assert darker is not first and darker.cut(depth) is cut and darker.solids is first.solids
    assert darker.looks is not first.looks
    # Another camera's intrinsics: another view.
    assert memo.view(grey, DepthView(depth, K * [[2.0], [2.0], [1.0]])) is not first
    assert (memo.hits, memo.misses) == (1, 4)
