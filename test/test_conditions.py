"""Named scene conditions: each changes the render or scene as named; seeded; test stays test."""
import numpy as np
import pytest

from clip_ros.sim.conditions import (
    camera_distance, camera_elevation, condition_frames, condition_spec, CONDITIONS,
    load_condition, RANDOMISED)
from clip_ros.sim.dataset import HELD_OUT, split_seeds
from clip_ros.sim.scene import sample_scene
from clip_ros.sim.simulator import Simulator

SEEDS = list(split_seeds('test', 4))


@pytest.fixture(scope='module')
def sim(gl_context):
    simulator = Simulator(0, 160, 120, show_gripper=False)
    yield simulator
    simulator.close_renderer()


def _render(sim, seed, condition):
    spec = load_condition(sim, seed, condition)
    return spec, sim.render(depth=False, instances=True)


def _table_pixels(frame):
    # Pixels of the table top: background of the instance mask in the image's lower middle.
    h, w = frame.instances.shape
    window = (slice(h // 2, None), slice(w // 4, 3 * w // 4))
    return frame.rgb[window][frame.instances[window] == 0].reshape(-1, 3).astype(float)


def test_in_distribution_is_todays_scene():
    for seed in SEEDS:
        assert condition_spec(seed, 'in_distribution').objects == sample_scene(seed).objects


def test_conditions_are_seeded(sim):
    for condition in CONDITIONS + (RANDOMISED,):
        first = _render(sim, SEEDS[0], condition)[1]
        _render(sim, SEEDS[1], condition)
        again = _render(sim, SEEDS[0], condition)[1]
        assert np.array_equal(first.rgb, again.rgb), condition
        assert np.array_equal(first.instances, again.instances), condition


def test_unknown_condition_is_refused():
    with pytest.raises(ValueError, match='unknown condition'):
        condition_spec(0, 'fog')
    with pytest.raises(ValueError, match='needs a Simulator'):
        condition_spec(0, 'occlusion')


def test_light_colour_tints_the_image(sim):
    for seed in SEEDS:
        base = _render(sim, seed, 'in_distribution')[1].rgb.reshape(-1, 3).mean(0)
        tinted = _render(sim, seed, 'light_colour')[1].rgb.reshape(-1, 3).mean(0)
        # red against blue balance moves by > 15 grey levels one way or the other
        assert abs((tinted[0] - tinted[2]) - (base[0] - base[2])) > 15, (seed, base, tinted)


def test_light_intensity_darkens_or_brightens(sim):
    shifts = []
    for seed in SEEDS:
        base = _render(sim, seed, 'in_distribution')[1].rgb.mean()
        shifts.append(_render(sim, seed, 'light_intensity')[1].rgb.mean() - base)
    assert all(abs(s) > 10 for s in shifts), shifts


def test_table_colour_changes_the_table(sim):
    for seed in SEEDS:
        spec, frame = _render(sim, seed, 'table_colour')
        base = _table_pixels(_render(sim, seed, 'in_distribution')[1]).mean(0)
        table = _table_pixels(frame)
        assert np.abs(table.mean(0) - base).max() > 20 or table.std(0).max() > 20, spec


def test_camera_far_and_low_leave_todays_range():
    for seed in SEEDS:
        assert camera_distance(condition_spec(seed, 'camera_far')) > 1.25
        assert camera_elevation(condition_spec(seed, 'camera_low')) < 33
        assert 0.84 < camera_distance(condition_spec(seed, 'in_distribution')) < 1.01
        assert camera_elevation(condition_spec(seed, 'in_distribution')) > 44


def test_far_camera_objects_look_smaller_but_stay_in_view(sim):
    for seed in SEEDS:
        near = _render(sim, seed, 'in_distribution')[1]
        far = _render(sim, seed, 'camera_far')[1]
        assert all(o.visible_pixels > 0 for o in far.objects)
        assert np.median([o.visible_pixels for o in far.objects]) < 0.8 * np.median(
            [o.visible_pixels for o in near.objects])


def test_occlusion_hides_20_to_80_percent_of_the_focus(sim):
    for seed in SEEDS:
        spec, frame = _render(sim, seed, 'occlusion')
        names = [o.name for o in spec.objects]
        assert spec.focus in names and len(names) == len(sample_scene(seed).objects) + 1
        index = names.index(spec.focus)
        sim.load(sample_scene(seed))  # the same scene without the occluder
        alone = sim.visible_pixels()[index]
        hidden = 1 - frame.objects[index].visible_pixels / alone
        assert 0.2 <= hidden <= 0.8, (seed, spec.focus, hidden)


def test_small_and_many_objects():
    for seed in SEEDS:
        small = condition_spec(seed, 'small_objects').objects
        usual = sample_scene(seed).objects
        assert max(o.radius for o in small) < 0.75 * max(o.radius for o in usual)
        assert len(condition_spec(seed, 'many_objects').objects) >= 7


def test_same_colour_distractors_sit_beside_the_focus():
    for seed in SEEDS:
        spec = condition_spec(seed, 'same_colour_distractors')
        focus = spec.objects[0]
        assert spec.focus == focus.name
        colour = [o for o in spec.objects[1:] if o.colour == focus.colour]
        shape = [o for o in spec.objects[1:] if o.shape == focus.shape]
        assert colour and shape, spec.objects
        for other in colour + shape:
            gap = np.hypot(*np.subtract(other.xy, focus.xy)) - other.radius - focus.radius
            assert gap < 0.015


def test_train_split_never_holds_held_out_combinations(sim):
    held = {tuple(c) for c in HELD_OUT}
    for condition in ('occlusion', 'same_colour_distractors', RANDOMISED):
        for _, spec, frame in condition_frames(sim, 'train', condition, 6):
            assert not {(o.colour, o.shape) for o in spec.objects} & held
            assert frame.instances.max() <= len(spec.objects)


def test_test_split_conditions_use_test_seeds(sim):
    seeds = [seed for seed, _, _ in condition_frames(sim, 'test', 'light_colour', 3)]
    assert seeds == SEEDS[:3]
