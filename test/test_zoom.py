"""The zoomed second look: tiles that cover the frame, their maps pasted back by maximum."""
import numpy as np

from clip_ros.perception import zoom


def test_four_tiles_cover_the_frame_and_overlap():
    boxes = zoom.tiles(480, 640)
    assert len(boxes) == 4 and all((th, tw) == (288, 384) for _, _, th, tw in boxes)
    covered = np.zeros((480, 640), int)
    for row, col, th, tw in boxes:
        assert row >= 0 and col >= 0 and row + th <= 480 and col + tw <= 640
        covered[row:row + th, col:col + tw] += 1
    assert covered.min() == 1
    # The middle fifth is in every tile: an object there is whole in all four.
    assert (covered[240, 128:512] >= 2).all() and covered[240, 320] == 4


def test_tile_maps_go_back_where_they_came_from_by_maximum():
    boxes = zoom.tiles(10, 20)
    maps = []
    for index, (_, _, th, tw) in enumerate(boxes):
        tile = np.zeros((2, th, tw), np.float32)
        tile[0] = 0.1 * (index + 1)  # the first phrase: each tile's own level
        maps.append(tile)
    maps[3][1, -1, -1] = 0.9  # the second phrase: one pixel, in the last tile's corner
    merged = zoom.merge(maps, boxes, 10, 20)
    assert merged.shape == (2, 10, 20) and merged.dtype == np.float32
    assert merged[0, 0, 0] == np.float32(0.1) and merged[0, 9, 19] == np.float32(0.4)
    assert merged[0, 5, 10] == np.float32(0.4)  # all four overlap there: the highest
    assert merged[1, 9, 19] == np.float32(0.9) and merged[1].sum() == np.float32(0.9)


def test_the_bundled_model_finds_a_partly_hidden_cylinder_on_a_second_look(gl_context):
    # Val occlusion scene 100013: a yellow cylinder mostly behind a blue one. In the whole
    # frame its map is a sliver the rule refuses; in the zoomed tiles it is the cylinder.
    from clip_ros.perception import tabletop_model as tabletop
    from clip_ros.perception.geometry import box_iou
    from clip_ros.perception.grounding import GroundingPipeline
    from clip_ros.sim.conditions import condition_frames
    from clip_ros.sim.simulator import Simulator
    with Simulator(0, 640, 480, show_gripper=False) as sim:
        _, spec, frame = next(condition_frames(sim, 'val', 'occlusion', 1, 13))
    assert spec.focus == 'yellow cylinder'
    truth = next(o.box for o in frame.objects if o.name == 'yellow cylinder')
    models = (tabletop.load_tabletop_clip(device='cpu'),
              tabletop.load_tabletop_clipseg(device='cpu'))
    once = GroundingPipeline(*models, zoom_in=False)(frame.rgb, ['yellow cylinder'])
    assert not once.detections and 'yellow cylinder' in once.rejected
    pipeline = GroundingPipeline(*models)
    found = pipeline(frame.rgb, ['yellow cylinder'], with_heatmaps=False)
    assert found.detections and box_iou(found.detections[0].box, truth)[0, 0] >= 0.5
    # The zoomed maps of the absent "yellow ball" light up a yellow candidate that passes the
    # calibrated rule; the shape head gives it 0.07 for a ball, so it stays not found.
    absent = pipeline(frame.rgb, ['yellow ball'], with_heatmaps=False)
    assert not absent.detections and absent.rejected == {'yellow ball': 'not found: yellow ball'}
    # The same view again: the remembered zoomed maps and their judged candidates, the same
    # answers.
    hits, looks = pipeline.zoom_memo.hits, pipeline.zoom_looks.hits
    again = pipeline(frame.rgb, ['yellow cylinder'], with_heatmaps=False)
    assert (pipeline.zoom_memo.hits, pipeline.zoom_looks.hits) == (hits + 1, looks + 1)
    assert [(d.box, d.score) for d in again.detections] == \
        [(d.box, d.score) for d in found.detections]
    # Frames batched together (one node, many cameras) look twice as they would alone: a found
    # phrase beside an unfound one, and the unfound one in a frame of its own.
    requests = [(frame.rgb, ['blue cylinder', 'yellow cylinder'], 0.4),
                (frame.rgb, ['yellow ball'], 0.4)]
    mixed, alone = GroundingPipeline(*models).batch(requests, with_heatmaps=False)
    assert [(d.phrase, d.box) for d in mixed.detections if d.phrase == 'yellow cylinder'] == \
        [(d.phrase, d.box) for d in found.detections]
    assert 'blue cylinder' in {d.phrase for d in mixed.detections}
    assert not alone.detections and alone.rejected == absent.rejected
    # The second look never costs a found phrase its place: with room for two candidates, the
    # zoomed maps' bright candidates once pushed out one of the two found phrases.
    phrases = ['yellow cylinder', 'green block', 'orange block', 'blue cylinder', 'red block',
               'purple bowl']
    results = [GroundingPipeline(*models, max_candidates=2, max_detections=2, zoom_in=zoom_in)(
        frame.rgb, phrases, with_heatmaps=False) for zoom_in in (False, True)]
    first, second = ({d.phrase for d in r.detections} for r in results)
    assert len(first) == 2 and first <= second, (first, second)


def test_a_change_in_the_last_partial_cells_is_seen():
    # 50x61: the last two rows and five columns are cells of their own, not left out.
    rgb = np.zeros((50, 61, 3), np.uint8)
    thumb = zoom.thumbnail(rgb)
    assert thumb.shape == (7, 8, 3)
    rgb[48:, 56:] = 200
    assert zoom.thumbnail(rgb)[-1, -1].tolist() == [200.0, 200.0, 200.0]
    memo = zoom.ZoomMemo()
    memo.remember('red block', thumb, np.zeros((50, 61), np.float32))
    assert memo.recall('red block', zoom.thumbnail(rgb), (50, 61)) is None


def test_a_frame_smaller_than_a_cell_is_one_cell():
    rgb = np.zeros((5, 3, 3), np.uint8)
    rgb[..., 0] = 30
    assert zoom.thumbnail(rgb).tolist() == [[[30.0, 0.0, 0.0]]]
    memo = zoom.ZoomMemo()
    memo.remember('red block', zoom.thumbnail(rgb), np.zeros((5, 3), np.float32))
    assert memo.recall('red block', zoom.thumbnail(rgb), (5, 3)) is not None
    # A frame of another size with the same one-cell thumbnail: its map cannot be reused.
    other = np.zeros((4, 4, 3), np.uint8)
    other[..., 0] = 30
    assert memo.recall('red block', zoom.thumbnail(other), (4, 4)) is None


def test_a_still_view_takes_its_remembered_zoomed_map_and_a_changed_one_does_not():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 200, (48, 64, 3), np.uint8)
    memo = zoom.ZoomMemo(size=2)
    zoomed = np.full((48, 64), 0.7, np.float32)
    memo.remember('red block', zoom.thumbnail(rgb), zoomed)
    noisy = np.clip(rgb + rng.integers(-3, 4, rgb.shape), 0, 255).astype(np.uint8)
    recalled = memo.recall('red block', zoom.thumbnail(noisy), (48, 64))  # sensor noise
    assert np.array_equal(recalled, zoomed) and not recalled.flags.writeable
    assert memo.recall('blue bowl', zoom.thumbnail(noisy), (48, 64)) is None  # another phrase
    moved = rgb.copy()
    moved[8:16, 8:16] = 255  # something moved into one cell
    assert memo.recall('red block', zoom.thumbnail(moved), (48, 64)) is None
    assert memo.recall('red block', zoom.thumbnail(rgb), (48, 65)) is None  # another size
    assert (memo.hits, memo.misses) == (1, 3)
    memo.remember('blue bowl', zoom.thumbnail(rgb), zoomed)
    memo.remember('green ball', zoom.thumbnail(rgb), zoomed)  # the oldest goes
    assert memo.recall('red block', zoom.thumbnail(rgb), (48, 64)) is None


def test_frames_of_other_sizes_never_share_a_zoomed_map():
    # Tiny grey frames have one-cell thumbnails of one colour: the map of one size once went
    # into a frame of another and the pipeline raised.
    from clip_ros.perception import tabletop_model as tabletop
    from clip_ros.perception.grounding import GroundingPipeline
    pipeline = GroundingPipeline(tabletop.load_tabletop_clip(device='cpu'),
                                 tabletop.load_tabletop_clipseg(device='cpu'))
    for height, width in ((2, 2), (7, 5), (9, 12), (7, 5)):
        result = pipeline(np.full((height, width, 3), 128, np.uint8), ['red block'])
        assert not result.detections and result.heatmaps.shape == (1, height, width)
    assert pipeline.zoom_memo.hits == 1  # the second 7x5 frame


def test_a_phrase_switched_off_takes_no_second_look():
    from clip_ros.perception import tabletop_model as tabletop
    from clip_ros.perception.grounding import GroundingPipeline
    pipeline = GroundingPipeline(tabletop.load_tabletop_clip(device='cpu'),
                                 tabletop.load_tabletop_clipseg(device='cpu'))
    rgb = np.full((48, 64, 3), 128, np.uint8)
    pipeline(rgb, ['red block', 'blue bowl'], thresholds=[1.0, 0.4])
    assert pipeline.zoom_memo.misses == 1  # 'blue bowl' only
