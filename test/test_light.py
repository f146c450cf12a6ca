"""Light correction: lamps are undone towards the model's reference, tables are left alone."""
import numpy as np
import pytest

from clip_ros.perception import tabletop_model as tabletop
from clip_ros.perception.grounding import GroundingPipeline
from clip_ros.perception.light import (
    AXIS, bright_level, CAST_MAX, CAST_MIN, DARK_MAX, LightCorrection, LightReference,
    lit_median)
from clip_ros.perception.registry import ModelLoadError
from clip_ros.sim.conditions import condition_frames, WARM
from clip_ros.tools import shift_eval

# Roughly the bundled model's reference: a warm-white lit table.
REFERENCE = LightReference((150.0, 135.0, 118.0), 148.0)


def cast(rgb: np.ndarray, reference: LightReference = REFERENCE) -> float:
    """Return a frame's log colour cast along the warm-blue axis against the reference."""
    log = np.log(np.asarray(reference.median_rgb) / lit_median(rgb))
    return float((log - log.mean()) @ AXIS)


def table_frame(table, objects=((230, 30, 30), (30, 200, 40), (240, 240, 240))) -> np.ndarray:
    """Return a 120x160 frame: a table colour with three small objects on it."""
    frame = np.empty((120, 160, 3), np.uint8)
    frame[:] = table
    for k, colour in enumerate(objects):
        frame[40:60, 20 + 45 * k: 45 + 45 * k] = colour
    return frame


def scaled(frame: np.ndarray, gains) -> np.ndarray:
    return np.clip(frame * np.asarray(gains, np.float32), 0, 255).astype(np.uint8)


def test_a_frame_like_the_reference_is_returned_unchanged():
    frame = table_frame((150, 135, 118))
    assert LightCorrection(REFERENCE)(frame) is frame


@pytest.mark.parametrize('tint', [WARM, (0.52, 0.7, 1.0)], ids=['warm', 'blue'])
def test_a_lamp_colour_is_undone(tint):
    lit = scaled(table_frame((150, 135, 118)), tint)
    assert abs(cast(lit)) >= CAST_MIN
    corrected = LightCorrection(REFERENCE)(lit)
    assert abs(cast(corrected)) < 0.05
    # The red object is red again, not orange or purple.
    red = corrected[50, 30].astype(int)
    assert red[0] > 150 and red[1] < 60 and red[2] < 60


@pytest.mark.parametrize('table', [(40, 160, 60), (150, 40, 160), (10, 10, 10)],
                         ids=['green', 'purple', 'black'])
def test_a_coloured_or_black_table_is_not_a_lamp(table):
    gains = LightCorrection(REFERENCE).gains(table_frame(table))
    # No cast is corrected (equal gains); a mid-dark table may be brightened, a black one never.
    assert np.allclose(gains, gains[0])
    if table == (10, 10, 10):
        assert np.allclose(gains, 1.0)


def test_an_orange_table_under_white_light_passes_for_a_warm_lamp():
    # On the lamps' axis a table colour cannot be told from a lamp: corrected as one.
    gains = LightCorrection(REFERENCE).gains(table_frame((200, 120, 60)))
    assert gains[0] < 1.0 < gains[2] and np.prod(gains) == pytest.approx(1.0, rel=1e-6)


def test_a_table_more_orange_than_any_lamp_is_left_to_the_table_step():
    # Beyond a 2500 K lamp's cast (-0.9 along the axis): a table colour, not a lamp.
    frame = table_frame((229, 83, 26))
    assert cast(frame) < -CAST_MAX
    assert np.allclose(LightCorrection(REFERENCE).gains(frame), 1.0)


def test_a_dim_frame_is_brightened_an_over_exposed_one_darkened():
    frame = table_frame((150, 135, 118))
    dim = scaled(frame, [0.4] * 3)
    gains = LightCorrection(REFERENCE).gains(dim)
    assert np.allclose(gains, gains[0]) and 2.0 < gains[0] <= np.exp(DARK_MAX) + 1e-9
    # Brought to the reference's brightness, colours kept.
    assert bright_level(LightCorrection(REFERENCE)(dim)) == pytest.approx(148.0, abs=2.0)
    assert np.allclose(LightCorrection(REFERENCE).gains(scaled(frame, [1.2] * 3)), 1.0)
    glare = scaled(frame, [1.6] * 3)
    gains = LightCorrection(REFERENCE).gains(glare)
    assert np.allclose(gains, 148.0 / bright_level(glare))
    # Very dark (but not black): brightened by at most DARK_MAX.
    assert LightCorrection(REFERENCE).gains(scaled(frame, [0.25] * 3))[0] == pytest.approx(
        np.exp(DARK_MAX))


def test_a_large_white_object_under_the_trained_light_is_no_glare():
    # A white object over 10% of the frame sets its 90th percentile; the table, lit as in
    # training, says the light is not too bright.
    frame = table_frame((150, 135, 118))
    frame[10:70, 10:80] = 242
    assert bright_level(frame) > 148.0 * np.exp(0.3)
    assert np.allclose(LightCorrection(REFERENCE).gains(frame), 1.0)
    assert LightCorrection(REFERENCE, table=False)(frame) is frame


def test_reference_blocks_round_trip_and_bad_ones_are_refused():
    assert LightReference.from_config(REFERENCE.to_config()) == REFERENCE
    assert LightReference.from_config({}) is None and LightReference.from_config(None) is None
    for bad in ({'median_rgb': [1, 2]}, {'median_rgb': [1, 2], 'bright_level': 5},
                {'median_rgb': [0, 2, 3], 'bright_level': 5},
                {'median_rgb': 'red', 'bright_level': 5}):
        with pytest.raises(ValueError, match='median_rgb'):
            LightReference.from_config(bad)
    with pytest.raises(ValueError, match='lit pixels'):
        LightReference.of_frames([np.zeros((8, 8, 3), np.uint8)])


def test_a_model_config_with_a_bad_reference_does_not_load(tmp_path):
    import json
    import shutil
    model = tmp_path / 'tabletop'
    shutil.copytree(tabletop.BUNDLED_DIR, model)
    config = json.loads((model / 'config.json').read_text())
    config['clip_ros']['light'] = {'median_rgb': [1, 2]}
    (model / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match='light'):
        tabletop.load_tabletop_clip(str(model), device='cpu')


def test_the_bundled_model_carries_its_reference():
    clip = tabletop.load_tabletop_clip(device='cpu')
    reference = LightReference.from_config(clip.light)
    red, green, blue = reference.median_rgb
    assert red > green > blue and 100 < reference.bright_level < 255


@pytest.fixture(scope='module')
def bundled():
    clip = tabletop.load_tabletop_clip(device='cpu')
    clipseg = tabletop.load_tabletop_clipseg(device='cpu')
    return {on: GroundingPipeline(clip, clipseg, light_correction=on) for on in (True, False)}


def glare_frame() -> np.ndarray:
    """Return the reference table with an orange object and a white one, lit 1.7 times."""
    frame = table_frame((150, 135, 118), objects=((200, 100, 0), (240, 240, 240)))
    frame[60:70, 20:45] = (130, 65, 0)  # the orange object's shaded side: not clipped below
    return scaled(frame, [1.7] * 3)


def test_clipped_highlights_of_a_coloured_object_get_its_hue_back():
    glare = glare_frame()
    assert tuple(glare[50, 30]) == (255, 170, 0) and tuple(glare[65, 30]) == (221, 110, 0)
    light = LightCorrection(REFERENCE, table=False)
    gain = light.gains(glare)[0]
    assert gain < 1.0
    out = light(glare).astype(float)
    # Darkened alike, the clipped top would turn yellow-olive (green 0.67 of red); rebuilt from
    # the side's ratios it is orange again (green half of red), as bright as the side allows.
    top = out[50, 30]
    assert top[1] / top[0] == pytest.approx(0.5, abs=0.02) and top[2] == 0
    assert top[1] == pytest.approx(170 * gain, abs=1) and top[0] > 255 * gain + 50
    uniform = np.clip(glare * gain + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(out[65, 30], uniform[65, 30])  # unclipped pixels: the gain alone
    # The clipped table and white object are no hue: darkened like every other pixel.
    for row, col in ((5, 5), (50, 70)):
        assert np.array_equal(out[row, col], uniform[row, col])


def test_a_clipped_object_without_unclipped_pixels_is_only_darkened():
    glare = glare_frame()
    glare[60:70, 20:45] = glare[50, 30]  # the side clipped too: nothing tells the hue
    light = LightCorrection(REFERENCE, table=False)
    uniform = np.clip(glare * light.gains(glare)[0] + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(light(glare), uniform)


def test_on_a_coloured_table_clipped_pixels_are_only_darkened():
    # A bright cyan table's pixels are as saturated as the objects on it: blobs would join them.
    glare = scaled(table_frame((60, 150, 190), objects=((200, 100, 0),)), [1.7] * 3)
    glare[60:70, 20:45] = (221, 110, 0)
    light = LightCorrection(REFERENCE, table=False)
    gains = light.gains(glare)
    assert gains.max() < 1.0
    uniform = np.clip(glare * gains + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(light(glare), uniform)


def accuracy(pipeline, scenes) -> float:
    records = shift_eval.evaluate_scenes(pipeline, scenes, [], 0.4, 64, 0)
    return float(np.mean([r['correct'] for r in records]))


def test_under_coloured_lamps_the_bundled_model_finds_the_objects(gl_context, bundled):
    from clip_ros.sim.simulator import Simulator
    with Simulator(0, 320, 240, show_gripper=False) as sim:
        plain, lamps = ([(seed, f.rgb, shift_eval.visible_objects(f),
                          [o.name for o in f.objects], '')
                         for seed, _, f in condition_frames(sim, 'val', condition, 4, 600)]
                        for condition in ('in_distribution', 'light_colour'))
    # Plain frames pass unchanged, so the two pipelines agree on them exactly.
    assert accuracy(bundled[True], plain) == accuracy(bundled[False], plain) >= 0.9
    assert accuracy(bundled[True], lamps) >= 0.85 > accuracy(bundled[False], lamps)


def test_a_still_view_is_measured_once():
    from clip_ros.perception import zoom
    lit = scaled(table_frame((150, 135, 118)), WARM)
    light = LightCorrection(REFERENCE)
    first = light(lit, zoom.thumbnail(lit))
    assert np.array_equal(first, LightCorrection(REFERENCE)(lit))
    # The next frame of the view, with sensor noise: the gains measured on the first.
    noise = np.random.default_rng(0).integers(-2, 3, lit.shape)
    noisy = np.clip(lit.astype(int) + noise, 0, 255).astype(np.uint8)
    again = light(noisy, zoom.thumbnail(noisy))
    assert (light.recent.hits, light.recent.misses) == (1, 1)
    gain = float(LightCorrection(REFERENCE).gains(lit).max())
    assert np.abs(again.astype(int) - first.astype(int)).max() <= 2 * gain + 1
    # A blue lamp is another view: measured anew.
    blue = scaled(table_frame((150, 135, 118)), (0.52, 0.7, 1.0))
    assert np.array_equal(light(blue, zoom.thumbnail(blue)), LightCorrection(REFERENCE)(blue))
    assert light.recent.misses == 2
    light.forget()
    light(lit, zoom.thumbnail(lit))
    assert (light.recent.hits, light.recent.misses) == (0, 1)


def test_the_pipeline_counts_the_frames_that_took_a_still_views_light(bundled):
    frame = scaled(table_frame((150, 135, 118)), WARM)
    pipeline = bundled[True]
    before = pipeline.memos()['light']
    for _ in range(3):
        pipeline(frame, ['red block'], with_heatmaps=False)
    hits, misses = pipeline.memos()['light']
    assert (hits - before[0], misses - before[1]) == (2, 1)
    assert 'light' not in bundled[False].memos()
