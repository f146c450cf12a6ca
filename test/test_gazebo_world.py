"""
The Gazebo world config/gazebo/tabletop.sdf, read by SDFormat's own parser, is the MuJoCo scene.

SDFormat (Debian: libsdformat-dev; scripts/setup.sh installs it) has no Python binding here:
test/fixtures/sdformat_dump.cc is compiled against it once per run, loads the world with
sdf::Root::Load and prints the models, visuals, collisions and the camera sensor, poses resolved
by SDFormat, as JSON. Without SDFormat, pkg-config or a C++ compiler those tests skip with the
reason; the simulator comparisons need MuJoCo's offscreen OpenGL (the gl_context probe).

What a Gazebo run and a MuJoCo (sim_node) run of the same scene share, checked here:
- the camera_info: Gazebo publishes K and P from the SDF's <lens><intrinsics> (gz-sensors,
  CameraSensor::PopulateInfo); they equal sim_node's, and <horizontal_fov> gives the same focal
  length. From the field of view alone Gazebo would publish the principal point (W / 2, H / 2),
  the image centre with pixel corners at integers, where sim_node publishes ((W - 1) / 2,
  (H - 1) / 2), pixel centres at integers (ROS, OpenCV). Gazebo renders the principal point
  where its convention puts cx, cy, so its images sit half a pixel up and left of MuJoCo's:
  the one real difference;
- the camera pose: Gazebo's camera link (x forward, y left, z up) turned to the optical frame
  (z forward, x right, y down) is the simulator's camera pose, what sim_node publishes on
  sim/camera_pose, in the simulator's world frame (table-top centre, z up);
- the objects: one static model '<colour>_<shape>' per scene object at its MuJoCo body pose,
  whose visuals (and identical collisions) are its MuJoCo geoms: type, size, local pose, colour;
  the table and floor likewise.
Lighting and materials only approximate MuJoCo's, and the end effector is MuJoCo-only.
"""
import ast
import json
import math
from pathlib import Path
import re
import shutil
import subprocess

import numpy as np
import pytest
import yaml

from clip_ros.policy.lifting import matrix_to_quat
from clip_ros.sim.scene import sample_scene
from clip_ros.sim.simulator import FOVY_DEG, Simulator
from clip_ros.tools.gazebo_world import world_sdf

ROOT = Path(__file__).resolve().parents[1]
WORLD = ROOT / 'config' / 'gazebo' / 'tabletop.sdf'
DUMP_SOURCE = Path(__file__).resolve().parent / 'fixtures' / 'sdformat_dump.cc'
INSTALL_HINT = 'Debian: apt-get install libsdformat-dev, or bash scripts/setup.sh'
# Optical frame axes (x right, y down, z forward) in Gazebo camera link axes (x forward, y left,
# z up): the columns are the optical axes.
GZ_TO_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
# SDF 1.9 has no element for Gazebo Harmonic's image frame id; SDFormat keeps it with a warning.
EXPECTED_WARNINGS = ('XML Element[gz_frame_id], child of element[sensor], not defined in SDF',)
TOL = 1e-9


def _scene_of_world() -> tuple:
    """Return (seed, width, height) that the world's header says it was written from."""
    found = re.search(r'clip_ros scene: seed=(\d+) size=(\d+)x(\d+)', WORLD.read_text())
    assert found, f'{WORLD} names no clip_ros scene: regenerate it (clip_ros.tools.gazebo_world)'
    return tuple(int(v) for v in found.groups())


SEED, WIDTH, HEIGHT = _scene_of_world()


def _sdformat_package() -> str:
    """Return the pkg-config name of the newest SDFormat installed; skip when there is none."""
    if shutil.which('pkg-config') is None:
        pytest.skip(f'SDFormat not checked: pkg-config not found ({INSTALL_HINT})')
    listed = subprocess.run(['pkg-config', '--list-all'], capture_output=True, text=True,
                            check=False).stdout
    versions = [int(v) for v in re.findall(r'^sdformat(\d+)\s', listed, re.MULTILINE)]
    if not versions:
        pytest.skip(f'SDFormat (libsdformat) is not installed ({INSTALL_HINT})')
    return f'sdformat{max(versions)}'


@pytest.fixture(scope='module')
def parsed(tmp_path_factory) -> dict:
    """Compile the SDFormat dumper once, run it on the world and return its JSON."""
    package = _sdformat_package()
    compiler = shutil.which('c++') or shutil.which('g++')
    if compiler is None:
        pytest.skip(f'SDFormat not checked: no C++ compiler to build its loader ({INSTALL_HINT})')
    flags = subprocess.run(['pkg-config', '--cflags', '--libs', package], capture_output=True,
                           text=True, check=True).stdout.split()
    binary = tmp_path_factory.mktemp('sdformat') / 'sdformat_dump'
    build = subprocess.run([compiler, '-O1', '-o', str(binary), str(DUMP_SOURCE), *flags],
                           capture_output=True, text=True, check=False, timeout=300)
    assert build.returncode == 0, f'building the {package} loader failed:\n{build.stderr}'
    run = subprocess.run([str(binary), str(WORLD)], capture_output=True, text=True, check=False,
                         timeout=60)
    assert run.returncode == 0, f'sdformat_dump failed:\n{run.stderr}'
    return json.loads(run.stdout)


@pytest.fixture(scope='module')
def sim(gl_context):
    """Build the simulator as sim_node does for the world's scene (default parameters)."""
    simulator = Simulator(SEED, WIDTH, HEIGHT, None, show_gripper=True)
    yield simulator
    simulator.close_renderer()


def _rot(quat) -> np.ndarray:
    """Return the rotation matrix of quaternion (w, x, y, z)."""
    w, x, y, z = np.asarray(quat, np.float64) / np.linalg.norm(quat)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _transform(pose) -> np.ndarray:
    """Return the 4x4 transform of an SDFormat pose [x, y, z, qw, qx, qy, qz]."""
    matrix = np.eye(4)
    matrix[:3, :3] = _rot(pose[3:])
    matrix[:3, 3] = pose[:3]
    return matrix


def _models(parsed: dict) -> dict:
    (world,) = parsed['worlds']
    return {model['name']: model for model in world['models']}


def _visuals(model: dict) -> dict:
    """Return {MuJoCo geom name: (visual, collision)} of a one-link model, poses in the model."""
    (link,) = model['links']
    link_pose = _transform(link['pose'])
    collisions = {c['name'].removesuffix('_collision'): c for c in link['collisions']}
    out = {}
    for visual in link['visuals']:
        name = visual['name'].removesuffix('_visual')
        collision = collisions[name]
        assert collision['geometry'] == visual['geometry'], name
        assert np.allclose(collision['pose'], visual['pose'], atol=TOL), name
        out[name] = (visual, link_pose @ _transform(visual['pose']))
    assert set(collisions) == set(out), model['name']
    return out


def _check_geom(sim, geom: int, visual: dict, pose: np.ndarray) -> None:
    """Assert a SDFormat visual (pose in its model frame) is MuJoCo geom `geom` of its body."""
    model, name = sim.model, sim.model.geom(geom).name
    kind = {0: 'plane', 2: 'sphere', 5: 'cylinder', 6: 'box'}[int(model.geom_type[geom])]
    geometry = visual['geometry']
    assert geometry['type'] == kind, name
    size = model.geom_size[geom]
    if kind == 'box':
        np.testing.assert_allclose(geometry['size'], 2 * size, atol=TOL, err_msg=name)
    elif kind == 'sphere':
        assert geometry['radius'] == pytest.approx(size[0], abs=TOL), name
    elif kind == 'cylinder':
        assert geometry['radius'] == pytest.approx(size[0], abs=TOL), name
        assert geometry['length'] == pytest.approx(2 * size[1], abs=TOL), name
    else:
        np.testing.assert_allclose(geometry['size'], 2 * size[:2], atol=TOL, err_msg=name)
        assert geometry['normal'] == [0, 0, 1], name
    np.testing.assert_allclose(pose[:3, 3], model.geom_pos[geom], atol=TOL, err_msg=name)
    np.testing.assert_allclose(pose[:3, :3], _rot(model.geom_quat[geom]), atol=TOL,
                               err_msg=name)


def test_world_file_is_generated():
    """The committed world is the generator's output for the scene its header names."""
    assert WORLD.read_text() == world_sdf(SEED, WIDTH, HEIGHT), (
        f'{WORLD.relative_to(ROOT)} is out of date: regenerate it with `python -m '
        f'clip_ros.tools.gazebo_world --seed {SEED} --size {WIDTH}x{HEIGHT} '
        f'--out {WORLD.relative_to(ROOT)}`')


def test_sdformat_parses_world(parsed):
    """Load the world with SDFormat: no error, and only Gazebo's frame id element warned of."""
    assert parsed['errors'] == [], '\n'.join(parsed['errors'])
    assert parsed['sdf_version'] == '1.9'
    unexpected = [w for w in parsed['warnings'] if not any(e in w for e in EXPECTED_WARNINGS)]
    assert unexpected == [], '\n'.join(unexpected)
    names = [obj.name.replace(' ', '_') for obj in sample_scene(SEED).objects]
    assert list(_models(parsed)) == ['ground_plane', 'table', *names, 'camera']


def _camera_sensor(parsed: dict) -> tuple:
    """Return (sensor, world from Gazebo camera link transform of the sensor)."""
    model = _models(parsed)['camera']
    assert model['static']
    (link,) = model['links']
    (sensor,) = link['sensors']
    world = _transform(model['pose']) @ _transform(link['pose']) @ _transform(sensor['pose'])
    return sensor, world


def _gazebo_camera_info(camera: dict) -> tuple:
    """
    Return (K, P) as Gazebo Harmonic publishes them for an SDF camera (row-major lists).

    gz-sensors' CameraSensor takes <lens><intrinsics> when given; else it derives them from
    the render's projection: fx = fy = W / (2 tan(hfov / 2)), principal point (W / 2, H / 2).
    P is built from the same numbers (no <lens><projection> in SDF 1.9), baseline 0.
    """
    if camera['has_lens_intrinsics']:
        fx, fy, cx, cy, skew = camera['lens_intrinsics']
    else:
        fx = fy = camera['width'] / (2 * math.tan(camera['horizontal_fov'] / 2))
        cx, cy, skew = camera['width'] / 2, camera['height'] / 2, 0.0
    assert skew == 0.0
    return ([fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
            [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0])


def test_camera_intrinsics_equal_sim_node(parsed, sim):
    """Gazebo's camera_info K and P equal sim_node's; the field of view is MuJoCo's."""
    from std_msgs.msg import Header

    from clip_ros.nodes.sim_messages import camera_info_msg

    sensor, _ = _camera_sensor(parsed)
    camera = sensor['camera']
    assert sensor['type'] == 'rgbd_camera' and camera['format'] == 'RGB_INT8'
    assert (camera['width'], camera['height']) == (sim.width, sim.height)
    info = camera_info_msg(sim.K, sim.width, sim.height, Header())
    k, p = _gazebo_camera_info(camera)
    np.testing.assert_allclose(k, list(info.k), atol=TOL)
    np.testing.assert_allclose(p, list(info.p), atol=TOL)
    assert camera['has_lens_intrinsics'], 'without <lens><intrinsics> cx, cy differ by 0.5 px'
    # The render: the horizontal field of view gives MuJoCo's focal length and vertical fov.
    hfov, width, height = camera['horizontal_fov'], camera['width'], camera['height']
    focal = width / (2 * math.tan(hfov / 2))
    assert focal == pytest.approx(sim.K[0, 0], abs=TOL)
    assert focal == pytest.approx(sim.K[1, 1], abs=TOL)  # square pixels
    vfov = 2 * math.atan(math.tan(hfov / 2) * height / width)
    assert math.degrees(vfov) == pytest.approx(FOVY_DEG, abs=TOL)
    # Gazebo's own centre (pixel corners at integers) is half a pixel from sim_node's.
    assert (width / 2 - sim.K[0, 2], height / 2 - sim.K[1, 2]) == (0.5, 0.5)
    near, far = sim.model.vis.map.znear, sim.model.vis.map.zfar
    assert (camera['near'], camera['far']) == pytest.approx(
        (near * sim.model.stat.extent, far * sim.model.stat.extent), abs=1e-6)


def test_camera_pose_equals_sim_node(parsed, sim):
    """The Gazebo camera, turned to the optical frame, is sim_node's sim/camera_pose."""
    sensor, world_from_link = _camera_sensor(parsed)
    assert sensor['gz_frame_id'] == 'camera_optical_frame'  # sim_node's frame_id
    rot, origin = sim.camera_pose()
    optical = world_from_link[:3, :3] @ GZ_TO_OPTICAL
    np.testing.assert_allclose(world_from_link[:3, 3], origin, atol=TOL)
    np.testing.assert_allclose(optical, rot, atol=TOL)
    # As published: sim/camera_pose carries (x, y, z, w) with w >= 0.
    np.testing.assert_allclose(matrix_to_quat(optical), matrix_to_quat(rot), atol=TOL)
    # Explicitly: the link looks along +x, which is the optical +z (forward).
    np.testing.assert_allclose(world_from_link[:3, 0], rot[:, 2], atol=TOL)


def test_objects_equal_sim_scene(parsed, sim):
    """One static model per object: its MuJoCo body pose, geoms, sizes and colour."""
    models = _models(parsed)
    for index, obj in enumerate(sim.spec.objects):
        name = obj.name.replace(' ', '_')
        model = models[name]
        assert model['static'], name
        body = sim.model.body(f'obj{index}').id
        pose = _transform(model['pose'])
        np.testing.assert_allclose(pose[:3, 3], sim.object_position(obj.name), atol=TOL,
                                   err_msg=name)
        np.testing.assert_allclose(pose[:3, :3], sim.data.xmat[body].reshape(3, 3), atol=TOL,
                                   err_msg=name)
        geoms = [g for g in range(sim.model.ngeom) if sim.model.geom_bodyid[g] == body]
        visuals = _visuals(model)
        assert sorted(visuals) == sorted(sim.model.geom(g).name for g in geoms), name
        for geom in geoms:
            visual, local = visuals[sim.model.geom(geom).name]
            _check_geom(sim, geom, visual, local)
            np.testing.assert_allclose(visual['diffuse'], obj.rgba, atol=1e-6, err_msg=name)
            np.testing.assert_allclose(visual['ambient'], obj.rgba, atol=1e-6, err_msg=name)
        # The size the ground truth reports (bounding box), for the one-geom shapes: from the
        # scene spec, which the MJCF carries to six significant digits.
        geometry = next(iter(visuals.values()))[0]['geometry']
        size = 2 * np.asarray(obj.half_size)
        if obj.shape == 'block':
            np.testing.assert_allclose(geometry['size'], size, atol=1e-6, err_msg=name)
        elif obj.shape == 'ball':
            assert 2 * geometry['radius'] == pytest.approx(size[0], abs=1e-6), name
        elif obj.shape == 'cylinder':
            assert (2 * geometry['radius'], geometry['length']) == pytest.approx(
                (size[0], size[2]), abs=1e-6), name


def test_table_and_floor_equal_sim_scene(parsed, sim):
    """The table top, its legs and the floor are MuJoCo's world geoms, in the world frame."""
    models = _models(parsed)
    world_geoms = {sim.model.geom(g).name: g for g in range(sim.model.ngeom)
                   if sim.model.geom_bodyid[g] == 0}
    for model_name, names in (('table', ['table', 'leg0', 'leg1', 'leg2', 'leg3']),
                              ('ground_plane', ['floor'])):
        model = models[model_name]
        assert model['static'], model_name
        visuals = _visuals(model)
        assert sorted(visuals) == sorted(names), model_name
        for name in names:
            visual, local = visuals[name]
            _check_geom(sim, world_geoms[name], visual, _transform(model['pose']) @ local)
    table_rgb = sim.spec.table_rgb
    for name in ('table', 'leg0'):
        np.testing.assert_allclose(_visuals(models['table'])[name][0]['diffuse'][:3], table_rgb,
                                   atol=1e-6)
    assert set(world_geoms) == {'table', 'leg0', 'leg1', 'leg2', 'leg3', 'floor'}


def test_launch_bridges_the_world_camera(parsed):
    """gazebo_sim.launch.py loads this world and bridges its camera to sim_node's topics."""
    source = (ROOT / 'launch' / 'gazebo_sim.launch.py').read_text()
    tree = ast.parse(source)  # read, not imported: no ROS launch needed
    (bridged,) = [ast.literal_eval(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Assign)
                  and [getattr(t, 'id', None) for t in node.targets] == ['BRIDGED']]
    sensor, _ = _camera_sensor(parsed)
    topic = '/' + sensor['topic'].strip('/')  # an RGB-D camera's topics hang under <topic>
    assert {gz: ros for gz, ros, _, _ in bridged} == {
        f'{topic}/image': 'camera/image_raw', f'{topic}/depth_image': 'camera/depth/image_raw',
        f'{topic}/camera_info': 'camera/camera_info', '/clock': '/clock'}
    assert "'config', 'gazebo', 'tabletop.sdf'" in source  # the default world
    config = yaml.safe_load((ROOT / 'config' / 'sim_node.yaml').read_text())
    assert sensor['update_rate'] == config['/**/sim_node']['ros__parameters']['rate']
