"""
Write a MuJoCo sim scene as a Gazebo world (SDF), e.g. config/gazebo/tabletop.sdf.

    python -m clip_ros.tools.gazebo_world [--seed 0] [--size 640x480] [--out FILE | -]

The defaults (scene 0 at 640x480, sim_node's defaults) rewrite config/gazebo/tabletop.sdf when
run from the repository root.

The SDF copies the compiled MuJoCo model of `sample_scene(seed)` (what sim_node renders and
publishes for that seed and image size), in the simulator's world frame: origin at the table-top
centre, z up, the floor 0.75 m below. Each object becomes a static model '<colour>_<shape>' whose
pose is its MuJoCo body pose and whose visuals (and identical collisions) are its MuJoCo geoms,
named after them, with the same sizes, local poses and colours; the table and the floor likewise.
The camera model sits at the MuJoCo camera's pose, turned from MuJoCo's camera axes (x right, y
up, looking down -z) to a Gazebo camera link's (looking along +x, y left, z up). Its sensor has
the simulator's image size, the horizontal field of view of its vertical one and, as
<lens><intrinsics>, the simulator's K, so Gazebo publishes the camera_info sim_node publishes.

Objects are static because the MuJoCo ones are kinematic (mocap bodies, contacts off). The
lights approximate MuJoCo's (its key spot light and the camera headlight); renders are not
expected to match pixel for pixel. The end effector is MuJoCo-only and not in the world.
"""
import argparse
import math
import sys

import numpy as np

from clip_ros.sim.scene import sample_scene, scene_xml, SceneSpec
from clip_ros.sim.simulator import horizontal_fov, intrinsics, mujoco
from clip_ros.tools.cli import frame_size

SEED = 0                  # sim.launch.py's default scene
SIZE = (640, 480)         # sim_node's default image size
OUT = 'config/gazebo/tabletop.sdf'
# Gazebo camera link axes (x forward, y left, z up; the columns) in MuJoCo camera axes (x right,
# y up, z back).
MJCAM_TO_GZCAM = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])
UPDATE_RATE = 15          # sim_node's default rate (Hz)
_GEOM_TYPES = {
    int(mujoco.mjtGeom.mjGEOM_PLANE): 'plane',
    int(mujoco.mjtGeom.mjGEOM_SPHERE): 'sphere',
    int(mujoco.mjtGeom.mjGEOM_CYLINDER): 'cylinder',
    int(mujoco.mjtGeom.mjGEOM_BOX): 'box',
}


def _num(value: float, digits: int = 12) -> str:
    # 12 digits keep poses within 1e-12 of the MuJoCo model's; float noise below 1e-15 is 0.
    value = float(value)
    return '0' if abs(value) < 1e-15 else f'{value:.{digits}g}'


def _nums(values) -> str:
    return ' '.join(_num(v) for v in values)


def _colour(values) -> str:
    # MuJoCo keeps colours as float32 read from six-digit MJCF: six digits hold them.
    return ' '.join(_num(v, 6) for v in values)


def rpy(rot) -> tuple:
    """Return the SDF (roll, pitch, yaw) of rotation `rot`: R = Rz(yaw) Ry(pitch) Rx(roll)."""
    rot = np.asarray(rot, dtype=np.float64)
    pitch = math.atan2(-rot[2, 0], math.hypot(rot[0, 0], rot[1, 0]))
    if math.hypot(rot[0, 0], rot[1, 0]) < 1e-12:  # gimbal lock: put all of the turn in yaw
        return 0.0, pitch, math.atan2(-rot[0, 1], rot[1, 1])
    return math.atan2(rot[2, 1], rot[2, 2]), pitch, math.atan2(rot[1, 0], rot[0, 0])


def _quat_rot(quat) -> np.ndarray:
    rot = np.zeros(9)
    mujoco.mju_quat2Mat(rot, np.asarray(quat, dtype=np.float64))
    return rot.reshape(3, 3)


def _pose(position, rot) -> str:
    return f'<pose>{_nums(position)} {_nums(rpy(rot))}</pose>'


def compile_scene(scene: SceneSpec, width: int, height: int) -> tuple:
    """Return the compiled MuJoCo (model, data) of `scene`, as the simulator builds it."""
    model = mujoco.MjModel.from_xml_string(scene_xml(scene, width, height))
    data = mujoco.MjData(model)
    mujoco.mj_kinematics(model, data)
    mujoco.mj_camlight(model, data)
    return model, data


def _geometry(kind: str, size) -> str:
    if kind == 'box':
        return f'<box><size>{_nums(2 * np.asarray(size))}</size></box>'
    if kind == 'sphere':
        return f'<sphere><radius>{_num(size[0])}</radius></sphere>'
    if kind == 'cylinder':
        return (f'<cylinder><radius>{_num(size[0])}</radius>'
                f'<length>{_num(2 * size[1])}</length></cylinder>')
    return f'<plane><normal>0 0 1</normal><size>{_nums(2 * np.asarray(size[:2]))}</size></plane>'


def _material(rgba, specular: float) -> str:
    rgba = _colour(rgba)
    return (f'<material><ambient>{rgba}</ambient><diffuse>{rgba}</diffuse>'
            f'<specular>{_colour((specular,) * 3 + (1.0,))}</specular></material>')


def _geoms(model, geoms, rgba_of) -> list:
    lines = []
    for geom in geoms:
        name = model.geom(geom).name
        kind = _GEOM_TYPES[int(model.geom_type[geom])]
        pose = _pose(model.geom_pos[geom], _quat_rot(model.geom_quat[geom]))
        shape = f'<geometry>{_geometry(kind, model.geom_size[geom])}</geometry>'
        matid = int(model.geom_matid[geom])
        specular = float(model.mat_specular[matid]) if matid >= 0 else 0.0
        lines.append(f'        <visual name="{name}_visual">{pose}{shape}'
                     f'{_material(rgba_of(geom), specular)}</visual>')
        lines.append(f'        <collision name="{name}_collision">{pose}{shape}</collision>')
    return lines


def _model(name: str, position, rot, body_lines: list) -> list:
    return ([f'    <model name="{name}">', '      <static>true</static>',
             f'      {_pose(position, rot)}', '      <link name="link">']
            + body_lines + ['      </link>', '    </model>'])


def _camera(model, data, width: int, height: int) -> list:
    K = intrinsics(width, height)
    hfov = horizontal_fov(width, height)  # all 17 digits: fx from it within 1e-12 px
    rot = data.cam_xmat[0].reshape(3, 3) @ MJCAM_TO_GZCAM
    near, far = (model.vis.map.znear * model.stat.extent, model.vis.map.zfar * model.stat.extent)
    clip = f'<clip><near>{_num(near, 6)}</near><far>{_num(far, 6)}</far></clip>'  # float32
    return [
        '    <model name="camera">',
        '      <static>true</static>',
        f'      {_pose(data.cam_xpos[0], rot)}',
        '      <link name="link">',
        '        <sensor name="camera" type="rgbd_camera">',
        '          <gz_frame_id>camera_optical_frame</gz_frame_id>',
        '          <topic>camera</topic>',
        f'          <update_rate>{UPDATE_RATE}</update_rate>',
        '          <always_on>true</always_on>',
        '          <camera>',
        f'            <horizontal_fov>{_num(hfov, 17)}</horizontal_fov>',
        f'            <image><width>{width}</width><height>{height}</height>'
        '<format>R8G8B8</format></image>',
        f'            {clip}',
        f'            <depth_camera>{clip}</depth_camera>',
        '            <lens>',
        '              <type>gnomonical</type>',
        f'              <intrinsics><fx>{_num(K[0, 0], 17)}</fx><fy>{_num(K[1, 1], 17)}</fy>'
        f'<cx>{_num(K[0, 2], 17)}</cx><cy>{_num(K[1, 2], 17)}</cy><s>0</s></intrinsics>',
        '            </lens>',
        '          </camera>',
        '        </sensor>',
        '      </link>',
        '    </model>',
    ]


def _header(seed: int, width: int, height: int) -> str:
    K = intrinsics(width, height)
    return f"""<?xml version="1.0"?>
<!-- Tabletop world for Gazebo Harmonic (gz-sim 8): the MuJoCo sim's scene
       clip_ros scene: seed={seed} size={width}x{height}
     written by `python -m clip_ros.tools.gazebo_world --seed {seed} --size {width}x{height}
     --out FILE` (edit the generator, not this file); test/test_gazebo_world.py parses it with
     SDFormat and holds it equal to what sim_node publishes for that scene.
     World frame: the simulator's (origin at the table-top centre, z up). The camera link looks
     along its +x (Gazebo); images and camera_info carry camera_optical_frame (z forward, x
     right, y down), as sim_node's do. <lens><intrinsics> is sim_node's K (fx = fy =
     {K[0, 0]:.4f}, cx = {K[0, 2]:g}, cy = {K[1, 2]:g}, pixel centres at integers), so Gazebo
     publishes that camera_info; from <horizontal_fov> alone it would publish cx = {width / 2:g},
     cy = {height / 2:g} (its pixel-corner convention), and it renders the principal point at
     cx, cy in that convention: Gazebo's images sit half a pixel up and left of MuJoCo's.
     launch/gazebo_sim.launch.py bridges camera/image, camera/depth_image and camera/camera_info
     to the clip_ros topic names. -->
"""


def world_sdf(seed: int = SEED, width: int = SIZE[0], height: int = SIZE[1]) -> str:
    """
    Return the SDF world of scene `seed` seen by a `width` x `height` camera.

    Parameters
    ----------
    seed : int
        Scene seed, as sim_node's `seed` parameter.
    width, height : int
        Image size, as sim_node's `width` and `height`.

    Returns
    -------
    str
        SDF 1.9 text.

    """
    scene = sample_scene(seed)
    model, data = compile_scene(scene, width, height)
    world = [i for i in range(model.ngeom) if model.geom_bodyid[i] == 0]
    floor = [i for i in world if model.geom(i).name == 'floor']
    table = [i for i in world if i not in floor]
    light = model.light('key').id
    view = -data.cam_xmat[0].reshape(3, 3)[:, 2]
    lines = [
        '<sdf version="1.9">',
        '  <world name="tabletop">',
        '    <physics name="1ms" type="ignored">',
        '      <max_step_size>0.001</max_step_size>',
        '      <real_time_factor>1.0</real_time_factor>',
        '    </physics>',
        '    <plugin filename="gz-sim-physics-system" name="gz::sim::systems::Physics"/>',
        '    <plugin filename="gz-sim-user-commands-system" '
        'name="gz::sim::systems::UserCommands"/>',
        '    <plugin filename="gz-sim-scene-broadcaster-system" '
        'name="gz::sim::systems::SceneBroadcaster"/>',
        '    <plugin filename="gz-sim-sensors-system" name="gz::sim::systems::Sensors">',
        '      <render_engine>ogre2</render_engine>',
        '    </plugin>',
        '    <scene>',
        f'      <ambient>{_colour((scene.ambient,) * 3 + (1.0,))}</ambient>',
        f'      <background>{_colour(tuple(scene.floor_rgb) + (1.0,))}</background>',
        '      <grid>false</grid>',
        '    </scene>',
        '    <light type="spot" name="key">',
        f'      <pose>{_nums(model.light_pos[light])} 0 0 0</pose>',
        f'      <direction>{_nums(model.light_dir[light])}</direction>',
        f'      <diffuse>{_colour(tuple(model.light_diffuse[light]) + (1.0,))}</diffuse>',
        f'      <specular>{_colour(tuple(model.light_specular[light]) + (1.0,))}</specular>',
        '      <cast_shadows>true</cast_shadows>',
        '      <attenuation><range>20</range><constant>1</constant><linear>0</linear>'
        '<quadratic>0</quadratic></attenuation>',
        f'      <spot><inner_angle>0</inner_angle><outer_angle>'
        f'{_num(math.radians(float(model.light_cutoff[light])))}</outer_angle>'
        '<falloff>1</falloff></spot>',
        '    </light>',
        '    <light type="directional" name="headlight">',
        f'      <direction>{_nums(view)}</direction>',
        '      <diffuse>0.25 0.25 0.25 1</diffuse>',
        '      <specular>0 0 0 1</specular>',
        '      <cast_shadows>false</cast_shadows>',
        '    </light>',
    ]
    identity = np.eye(3)
    lines += _model('ground_plane', (0, 0, 0), identity,
                    _geoms(model, floor, lambda g: tuple(scene.floor_rgb) + (1.0,)))
    lines += _model('table', (0, 0, 0), identity,
                    _geoms(model, table, lambda g: model.mat_rgba[model.geom_matid[g]]))
    for index, obj in enumerate(scene.objects):
        body = model.body(f'obj{index}').id
        geoms = [i for i in range(model.ngeom) if model.geom_bodyid[i] == body]
        lines += _model(obj.name.replace(' ', '_'), data.xpos[body],
                        data.xmat[body].reshape(3, 3),
                        _geoms(model, geoms, lambda g: model.mat_rgba[model.geom_matid[g]]))
    lines += _camera(model, data, width, height)
    lines += ['  </world>', '</sdf>']
    return _header(seed, width, height) + '\n'.join(lines) + '\n'


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(prog='gazebo_world', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--seed', type=int, default=SEED, help='scene seed (default %(default)s)')
    parser.add_argument('--size', type=frame_size, default=SIZE,
                        help='camera image WxH pixels (default 640x480)')
    parser.add_argument('--out', default=OUT, help='SDF file to write, - for stdout '
                        '(default %(default)s, from the repository root)')
    return parser


def main(argv=None) -> int:
    """Write the world and say where it went."""
    args = build_parser().parse_args(argv)
    text = world_sdf(args.seed, *args.size)
    if args.out == '-':
        sys.stdout.write(text)
        return 0
    try:
        with open(args.out, 'w', encoding='utf-8') as f:
            f.write(text)
    except OSError as e:
        print(f'gazebo_world: {e}', file=sys.stderr)
        return 2
    width, height = args.size
    print(f'scene {args.seed} ({width}x{height} camera) -> {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
