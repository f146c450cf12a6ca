"""MuJoCo tabletop: deterministic renders, metric depth, true intrinsics, masks, end effector."""
import numpy as np
import pytest

from clip_ros.sim.scene import COLOURS, sample_scene, SHAPES
from clip_ros.sim.simulator import intrinsics, Simulator


@pytest.fixture(scope='module')
def sim(gl_context):
    simulator = Simulator(seed=7, width=160, height=120)
    yield simulator
    simulator.close_renderer()


def test_same_seed_same_render(sim):
    sim.reset(11)
    first = sim.render(instances=True)
    sim.reset(12)
    other = sim.render()
    sim.reset(11)
    again = sim.render(instances=True)
    assert np.array_equal(first.rgb, again.rgb)
    assert np.array_equal(first.depth, again.depth)
    assert np.array_equal(first.instances, again.instances)
    assert not np.array_equal(first.rgb, other.rgb)


def test_scene_spec_valid_and_seeded():
    for seed in range(30):
        spec = sample_scene(seed)
        names = [obj.name for obj in spec.objects]
        assert 3 <= len(names) <= 6 and len(set(names)) == len(names)
        assert all(o.colour in COLOURS and o.shape in SHAPES for o in spec.objects)
        assert sample_scene(seed) == spec
    held = [('green', 'block'), ('white', 'bowl')]
    for seed in range(30):
        assert not {(o.colour, o.shape) for o in sample_scene(seed, exclude=held).objects} & set(
            held)


def test_every_object_visible_with_box(sim):
    for seed in range(5):
        sim.reset(seed)
        frame = sim.render(instances=True)
        assert frame.rgb.shape == (120, 160, 3) and frame.rgb.dtype == np.uint8
        assert frame.depth.shape == (120, 160) and frame.depth.dtype == np.float32
        assert len(frame.objects) == len(sim.spec.objects) >= 3
        for obj in frame.objects:
            assert obj.visible_pixels > 10, obj.name
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 120
            assert obj.visible_pixels == int((frame.instances == obj.instance_id).sum())


def test_depth_and_intrinsics_agree_with_ground_truth(sim):
    sim.reset(3)
    frame = sim.render(instances=True)
    assert len(frame.objects) >= 3
    balls = 0
    for obj in frame.objects:
        x, y, z = obj.position_camera
        u, v = frame.K[0, 0] * x / z + frame.K[0, 2], frame.K[1, 1] * y / z + frame.K[1, 2]
        x0, y0, x1, y1 = obj.box
        assert x0 - 1 <= u <= x1 and y0 - 1 <= v <= y1, obj.name
        if obj.shape == 'ball':  # front surface of a sphere: centre depth minus about a radius
            depth = frame.depth[int(round(v)), int(round(u))]
            assert z - obj.size[0] / 2 - 0.01 < depth < z, obj.name
            balls += 1
    assert balls, 'scene 3 must show a ball for the depth check'
    # the table top (world z = 0) seen through the image centre, from the camera pose
    rot, origin = sim.camera_pose()
    ray = rot @ np.linalg.solve(frame.K, [79.5, 59.5, 1.0])
    depth_along_axis = -origin[2] / ray[2]
    assert frame.instances[60, 80] == 0, 'the image centre of scene 3 must see the table'
    assert frame.depth[60, 80] == pytest.approx(depth_along_axis, abs=0.01)


def test_intrinsics_from_fovy():
    K = intrinsics(640, 480, 45.0)
    assert K[0, 0] == K[1, 1] == pytest.approx(240 / np.tan(np.radians(22.5)))
    assert (K[0, 2], K[1, 2]) == (319.5, 239.5)


def test_pick_lift_place(sim):
    sim.reset(5)
    name = sim.object_names[0]
    start = sim.object_position(name)
    assert sim.lift_height(name) == pytest.approx(0.0, abs=1e-6)
    sim.move_to(start + [0, 0, 0.2], instant=True)
    assert sim.close() is None  # out of reach
    sim.move_to(start)
    for _ in range(30):
        if sim.step():
            break
    assert np.allclose(sim.gripper_position, start)
    assert sim.close() == name and sim.holding == name
    sim.move_to(start + [0, 0, 0.15])
    while not sim.step():
        pass
    assert sim.lift_height(name) == pytest.approx(0.15, abs=1e-6)
    sim.move_to([0.0, -0.25, 0.1], instant=True)
    assert sim.open() == name and sim.holding is None
    assert sim.lift_height(name) == pytest.approx(0.0, abs=1e-6)
    assert np.allclose(sim.object_position(name)[:2], [0.0, -0.25])


@pytest.mark.parametrize('shape', ['cylinder', 'block', 'bowl'])
def test_released_object_rests_on_what_is_under_its_centre(sim, shape):
    for seed in range(200):
        spec = sample_scene(seed)
        shapes = [o.shape for o in spec.objects]
        if shape in shapes and any(s != shape and s != 'bowl' for s in shapes):
            break
    sim.reset(seed)
    names = sim.object_names
    base = names[shapes.index(shape)]
    load = next(n for n, s in zip(names, shapes) if s not in (shape, 'bowl'))
    sim.move_to(sim.object_position(load), instant=True)
    assert sim.close() == load and sim.resting_on(load) == [None]  # held
    under = sim.object_position(base)
    index = names.index(base)
    radius = sim.spec.objects[index].radius
    sim.move_to(under + [0.6 * radius, 0, 0.2], instant=True)  # centre over the footprint
    sim.open()
    assert sim.resting_on(load) == [base]
    bottom = sim.object_position(load)[2] - sim.spec.objects[names.index(load)].half_size[2]
    top = under[2] + (-1 if shape == 'bowl' else 1) * sim.spec.objects[index].half_size[2]
    assert bottom == pytest.approx(top + (0.008 if shape == 'bowl' else 0.0), abs=1e-6)
    sim.move_to(sim.object_position(load), instant=True)
    sim.close()
    sim.move_to(under + [radius + 0.01, 0, 0.2], instant=True)  # beside it: the table
    sim.open()
    assert sim.resting_on(load) == [None] and sim.lift_height(load) == pytest.approx(0.0)
    # Past a round object's rim, or a block's side, though inside the bounding circle.
    half = sim.spec.objects[index].half_size[0]
    yaw = sim.spec.objects[index].yaw if shape == 'block' else 0.0
    side = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    sim.move_to(sim.object_position(load), instant=True)
    sim.close()
    sim.move_to(under + 1.2 * half * side + [0, 0, 0.2], instant=True)
    sim.open()
    assert sim.resting_on(load) == [None]
    if shape == 'block':  # the same distance towards a corner is still over the block
        corner = np.array([np.cos(yaw + np.pi / 4), np.sin(yaw + np.pi / 4), 0.0])
        sim.move_to(sim.object_position(load), instant=True)
        sim.close()
        sim.move_to(under + 1.2 * half * corner + [0, 0, 0.2], instant=True)
        sim.open()
        assert sim.resting_on(load) == [base]


@pytest.mark.parametrize('size', [(4, 4), (90, 160)], ids=['too small', 'portrait'])
def test_sizes_it_cannot_render_are_refused(size):
    # Portrait: scenes keep objects in the vertical field of view, which is wider than a
    # portrait frame's horizontal one; the sides would cut objects.
    with pytest.raises(ValueError, match='at least 8x8|taller than wide'):
        Simulator(0, *size)


def test_fingers_closing_beside_or_above_an_object_grasp_nothing(sim):
    seed = next(s for s in range(300) if any(
        o.shape == 'ball' and o.half_size[0] < 0.03 for o in sample_scene(s).objects))
    sim.reset(seed)
    ball = next(o for o in sim.spec.objects if o.shape == 'ball' and o.half_size[0] < 0.03)
    centre, radius = sim.object_position(ball.name), ball.half_size[0]
    # The fingers close along y: 5 cm along x they pass 2 cm or more from the ball's side.
    sim.move_to(centre + [0.05, 0.0, 0.0], instant=True)
    assert sim.close() is None and sim.holding is None
    sim.open()
    sim.move_to(centre + [0.0, 0.0, radius + 0.03], instant=True)  # 3 cm above its top
    assert sim.close() is None
    sim.open()
    sim.move_to(centre + [0.5 * radius, 0.0, 0.5 * radius], instant=True)
    assert sim.close() == ball.name


def test_object_released_past_the_table_edge_falls_to_the_floor(sim):
    from clip_ros.sim.scene import TABLE_HALF, TABLE_HEIGHT

    sim.reset(5)
    name = sim.object_names[0]
    half = sim.spec.objects[0].half_size[2]
    sim.move_to(sim.object_position(name), instant=True)
    assert sim.close() == name
    sim.move_to([TABLE_HALF[0] + 0.1, 0.0, 0.2], instant=True)
    sim.open()
    assert sim.object_position(name)[2] == pytest.approx(-TABLE_HEIGHT + half, abs=1e-6)
    assert sim.lift_height(name) < 0 and sim.resting_on(name) == [None]
    sim.move_to(sim.object_position(name), instant=True)
    assert sim.close() == name
    sim.move_to([TABLE_HALF[0] - 0.1, 0.0, 0.2], instant=True)  # back over the table
    sim.open()
    assert sim.lift_height(name) == pytest.approx(0.0, abs=1e-6)
