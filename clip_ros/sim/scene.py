"""Seeded tabletop scene sampling and its MuJoCo MJCF description (no rendering here)."""
from dataclasses import dataclass, field
import math

import numpy as np

COLOURS = {
    'red': (0.85, 0.08, 0.08),
    'green': (0.10, 0.62, 0.15),
    'blue': (0.08, 0.22, 0.90),
    'yellow': (0.95, 0.85, 0.08),
    'purple': (0.50, 0.12, 0.68),
    'orange': (1.00, 0.45, 0.02),
    'white': (0.95, 0.95, 0.95),
    'black': (0.04, 0.04, 0.04),
}
SHAPES = ('block', 'ball', 'cylinder', 'bowl')
FOVY_DEG = 45.0          # vertical field of view of the camera, fixed so K depends on size only
TABLE_HALF = (0.5, 0.35)  # table top half extents (m); the world origin is the top's centre
TABLE_THICKNESS = 0.04
TABLE_HEIGHT = 0.75       # floor is this far below the table top
MIN_GAP = 0.03            # free space between object footprints (m)
VIEW_MARGIN = 0.85        # objects stay within this fraction of the half field of view
GRIPPER_GROUP = 2         # geom group of the end effector, hidden for dataset renders
GRIPPER_HOME = (0.0, 0.12, 0.45)
FINGER_OPEN = 0.05        # finger offset from the grasp point when open (m)


@dataclass
class ObjectSpec:
    """One object: colour, shape, size and pose on the table (world frame, z up)."""

    colour: str
    shape: str
    half_size: tuple    # (x, y, z) half extents of the bounding box (m)
    xy: tuple           # centre on the table (m)
    yaw: float          # rotation about z (rad)
    rgba: tuple

    @property
    def name(self) -> str:
        """Return '<colour> <shape>', e.g. 'blue block'."""
        return f'{self.colour} {self.shape}'

    @property
    def radius(self) -> float:
        """Return the radius of the footprint's bounding circle (m)."""
        return float(math.hypot(self.half_size[0], self.half_size[1]))


@dataclass
class CameraSpec:
    """Camera placement: eye and look-at target in the world frame (m)."""

    eye: tuple
    target: tuple


@dataclass
class SceneSpec:
    """Everything that a seed decides about a scene."""

    seed: int
    objects: list
    camera: CameraSpec
    table_rgb: tuple
    light_pos: tuple
    light_diffuse: float
    ambient: float
    floor_rgb: tuple = field(default=(0.25, 0.25, 0.27))
    light_rgb: tuple = (1.0, 1.0, 1.0)  # tint of every light (white by default)
    table_texture: str = ''             # '' (plain) or one of TABLE_TEXTURES
    table_rgb2: tuple = (0.0, 0.0, 0.0)  # second colour of a textured table
    condition: str = 'in_distribution'  # how the scene was drawn (clip_ros.sim.conditions)
    focus: str = ''                     # the object the condition is about (e.g. occluded)


TABLE_TEXTURES = ('checker', 'fine_checker', 'noise', 'gradient')


@dataclass(frozen=True)
class Variation:
    """
    Ranges a scene is drawn from; the defaults give today's distribution, seed for seed.

    Attributes
    ----------
    elevation_deg, azimuth_deg, distance : (low, high)
        Camera elevation above the table, azimuth about the -y side, distance to the look-at
        point (m).
    count : (low, high)
        Inclusive range of the object count (when no count is given).
    scale : (low, high)
        Factor on every object's size.
    neighbours : int
        Objects sharing the first object's colour (other shapes) and as many sharing its shape
        (other colours), each placed a few millimetres from it.

    """

    elevation_deg: tuple = (45.0, 60.0)
    azimuth_deg: tuple = (-15.0, 15.0)
    distance: tuple = (0.85, 1.0)
    count: tuple = (3, 6)
    scale: tuple = (1.0, 1.0)
    neighbours: int = 0


DEFAULT_VARIATION = Variation()


def look_at(eye, target) -> np.ndarray:
    """
    Return the MuJoCo camera rotation (columns x right, y up, z backwards) looking at `target`.

    Parameters
    ----------
    eye, target : array-like, shape (3,)
        Camera position and the point it looks at, world frame.

    Returns
    -------
    np.ndarray
        3x3 rotation, world from MuJoCo camera frame.

    """
    back = np.asarray(eye, float) - np.asarray(target, float)
    back /= np.linalg.norm(back)
    right = np.cross((0.0, 0.0, 1.0), back)
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(back, right), back], axis=1)


def _sample_camera(rng: np.random.Generator, variation: Variation) -> CameraSpec:
    target = np.array([rng.uniform(-0.03, 0.03), rng.uniform(-0.02, 0.04), 0.0])
    elevation = math.radians(rng.uniform(*variation.elevation_deg))
    azimuth = math.radians(-90.0 + rng.uniform(*variation.azimuth_deg))  # on the -y side
    distance = rng.uniform(*variation.distance)
    offset = distance * np.array([math.cos(elevation) * math.cos(azimuth),
                                  math.cos(elevation) * math.sin(azimuth),
                                  math.sin(elevation)])
    return CameraSpec(tuple(target + offset), tuple(target))


def _half_size(shape: str, rng: np.random.Generator) -> tuple:
    if shape == 'block':
        side = rng.uniform(0.022, 0.04)
        return (side * rng.uniform(0.85, 1.25), side * rng.uniform(0.85, 1.25),
                side * rng.uniform(0.8, 1.2))
    if shape == 'ball':
        radius = rng.uniform(0.022, 0.04)
        return (radius, radius, radius)
    if shape == 'cylinder':
        radius = rng.uniform(0.02, 0.035)
        return (radius, radius, rng.uniform(0.028, 0.05))
    radius = rng.uniform(0.05, 0.07)  # bowl
    return (radius, radius, rng.uniform(0.022, 0.032))


def _in_view(point, camera: CameraSpec) -> bool:
    rot = look_at(camera.eye, camera.target)
    local = rot.T @ (np.asarray(point, float) - np.asarray(camera.eye))
    depth = -local[2]
    # Square: inside the vertical field of view on both axes, so inside any landscape frame
    # (the simulator renders no portrait ones).
    limit = math.tan(math.radians(FOVY_DEG) / 2) * VIEW_MARGIN
    return depth > 0 and abs(local[0]) / depth < limit and abs(local[1]) / depth < limit


def corners_in_view(spec: ObjectSpec, xy, camera: CameraSpec) -> bool:
    """Return whether `spec`'s bounding box at `xy` lies inside the camera's view margin."""
    r, h = spec.radius, 2 * spec.half_size[2]
    return all(_in_view((xy[0] + dx, xy[1] + dy, z), camera)
               for dx in (-r, r) for dy in (-r, r) for z in (0.0, h))


def footprint_clear(objects: list, spec: ObjectSpec, xy, gap: float) -> bool:
    """Return whether `spec` at `xy` keeps `gap` (m) from every footprint in `objects`."""
    return all(math.hypot(xy[0] - o.xy[0], xy[1] - o.xy[1]) > o.radius + spec.radius + gap
               for o in objects)


def _place(objects: list, spec: ObjectSpec, rng, camera: CameraSpec, tries: int = 200):
    for _ in range(tries):
        xy = (rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.2))
        if footprint_clear(objects, spec, xy, MIN_GAP) and corners_in_view(spec, xy, camera):
            return xy
    return None


def _place_beside(objects: list, spec: ObjectSpec, anchor: ObjectSpec, rng,
                  camera: CameraSpec, tries: int = 60):
    # A few millimetres from `anchor`'s footprint: touching neighbours at low camera angles.
    for _ in range(tries):
        angle = rng.uniform(-math.pi, math.pi)
        reach = anchor.radius + spec.radius + rng.uniform(0.002, 0.012)
        xy = (anchor.xy[0] + reach * math.cos(angle), anchor.xy[1] + reach * math.sin(angle))
        if (abs(xy[0]) < 0.32 and abs(xy[1]) < 0.22 and footprint_clear(objects, spec, xy, 0.0015)
                and corners_in_view(spec, xy, camera)):
            return xy
    return None


def new_object(colour: str, shape: str, rng, scale: tuple = (1.0, 1.0)) -> ObjectSpec:
    """Draw one object's colour jitter, size (times a factor from `scale`) and yaw at (0, 0)."""
    jitter = rng.uniform(-0.03, 0.03, 3)
    rgba = tuple(float(v) for v in np.clip(np.array(COLOURS[colour]) + jitter, 0, 1)) + (1.0,)
    half = _half_size(shape, rng)
    yaw = float(rng.uniform(-math.pi, math.pi))
    if tuple(scale) != (1.0, 1.0):  # no extra draw for the default sizes
        factor = rng.uniform(*scale)
        half = tuple(v * factor for v in half)
    return ObjectSpec(colour, shape, half, (0.0, 0.0), yaw, rgba)


def _neighbour_order(combos: list, order, count: int) -> list:
    # The first combination, then up to `count` of its colour and `count` of its shape.
    first = combos[order[0]]
    same_colour = [i for i in order[1:] if combos[i][0] == first[0]][:count]
    same_shape = [i for i in order[1:] if combos[i][1] == first[1]][:count]
    chosen = [order[0]] + [i for pair in zip(same_colour, same_shape) for i in pair]
    chosen += same_colour[len(same_shape):] + same_shape[len(same_colour):]
    return chosen + [i for i in order if i not in chosen]


def sample_scene(seed: int, count: int | None = None, exclude=(),
                 variation: Variation = DEFAULT_VARIATION) -> SceneSpec:
    """
    Sample a scene from `seed`: 3-6 distinct objects, table colour, lighting and camera jitter.

    Parameters
    ----------
    seed : int
        Decides everything; the same seed always gives the same scene.
    count : int, optional
        Number of objects (1-12); by default drawn from `variation.count` (3..6).
    exclude : iterable of (colour, shape)
        Combinations never used (held-out combinations for training splits).
    variation : Variation
        Camera, count, size and neighbour ranges; the default draws today's scenes.

    Returns
    -------
    SceneSpec

    """
    rng = np.random.default_rng(seed)
    low, high = variation.count
    count = int(rng.integers(low, high + 1)) if count is None else int(count)
    if not 1 <= count <= 12:
        raise ValueError(f'object count must be within 1..12, got {count}')
    camera = _sample_camera(rng, variation)
    excluded = {tuple(c) for c in exclude}
    combos = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in excluded]
    order = rng.permutation(len(combos))
    neighbours = set()
    if variation.neighbours:
        order = _neighbour_order(combos, order, variation.neighbours)
        neighbours = set(order[1:1 + 2 * variation.neighbours])
    objects = []
    for index in order:
        if len(objects) == count:
            break
        spec = new_object(*combos[index], rng, variation.scale)
        if index in neighbours and objects:
            xy = _place_beside(objects, spec, objects[0], rng, camera)
        else:
            xy = _place(objects, spec, rng, camera)
        if xy is not None:
            spec.xy = (float(xy[0]), float(xy[1]))
            objects.append(spec)
    tone = rng.uniform(0.5, 0.72)
    table = (tone, tone * rng.uniform(0.86, 0.95), tone * rng.uniform(0.72, 0.85))
    light = (rng.uniform(-0.4, 0.4), rng.uniform(-0.5, 0.2), rng.uniform(1.4, 2.0))
    return SceneSpec(seed, objects, camera, table, light, float(rng.uniform(0.45, 0.75)),
                     float(rng.uniform(0.25, 0.4)))


def _fmt(values) -> str:
    return ' '.join(f'{float(v):.6g}' for v in values)


def quat_z(yaw: float) -> tuple:
    """Return the (w, x, y, z) quaternion of a rotation by `yaw` about z."""
    return (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))


def _bowl_geoms(name: str, half: tuple, material: str, segments: int = 16) -> list:
    outer, hz = half[0], half[2]
    inner = 0.55 * outer
    tilt = math.atan2(outer - inner, 2 * hz)
    wall = math.hypot(outer - inner, 2 * hz) / 2
    width = math.pi * outer / segments * 1.05
    geoms = [f'<geom name="{name}_base" type="cylinder" size="{inner + 0.004:.6g} 0.004" '
             f'pos="0 0 {-hz + 0.004:.6g}" material="{material}"/>']
    for k in range(segments):
        theta = 2 * math.pi * k / segments
        r = (inner + outer) / 2
        # yaw to the segment's angle, then tilt the top outwards about the tangent (local y)
        q = _quat_mul(quat_z(theta), (math.cos(tilt / 2), 0.0, math.sin(tilt / 2), 0.0))
        geoms.append(f'<geom name="{name}_wall{k}" type="box" size="0.0035 {width:.6g} '
                     f'{wall:.6g}" pos="{_fmt((r * math.cos(theta), r * math.sin(theta), 0))}" '
                     f'quat="{_fmt(q)}" material="{material}"/>')
    return geoms


def _quat_mul(a, b) -> tuple:
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return (w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2)


def _object_geoms(name: str, obj: ObjectSpec, material: str) -> list:
    hx, hy, hz = obj.half_size
    if obj.shape == 'block':
        return [f'<geom name="{name}" type="box" size="{_fmt((hx, hy, hz))}" '
                f'material="{material}"/>']
    if obj.shape == 'ball':
        return [f'<geom name="{name}" type="sphere" size="{hx:.6g}" material="{material}"/>']
    if obj.shape == 'cylinder':
        return [f'<geom name="{name}" type="cylinder" size="{hx:.6g} {hz:.6g}" '
                f'material="{material}"/>']
    return _bowl_geoms(name, obj.half_size, material)


def _objects_xml(scene: SceneSpec) -> tuple:
    materials, bodies = [], []
    for i, obj in enumerate(scene.objects):
        shiny = '0.5' if obj.shape == 'ball' else '0.2'
        materials.append(f'<material name="mat{i}" rgba="{_fmt(obj.rgba)}" specular="{shiny}" '
                         f'shininess="0.5"/>')
        pos = (obj.xy[0], obj.xy[1], obj.half_size[2])
        bodies.append(f'<body name="obj{i}" mocap="true" pos="{_fmt(pos)}" '
                      f'quat="{_fmt(quat_z(obj.yaw))}">'
                      + ''.join(_object_geoms(f'obj{i}', obj, f'mat{i}')) + '</body>')
    return '\n'.join(materials), '\n'.join(bodies)


def _table_xml(scene: SceneSpec) -> str:
    hx, hy = TABLE_HALF
    leg_h = (TABLE_HEIGHT - TABLE_THICKNESS) / 2
    legs = ''.join(
        f'<geom name="leg{i}" type="box" size="0.025 0.025 {leg_h:.6g}" '
        f'pos="{_fmt((sx * (hx - 0.05), sy * (hy - 0.05), -TABLE_THICKNESS - leg_h))}" '
        f'material="table"/>'
        for i, (sx, sy) in enumerate(((-1, -1), (-1, 1), (1, -1), (1, 1))))
    return (f'<geom name="table" type="box" size="{_fmt((hx, hy, TABLE_THICKNESS / 2))}" '
            f'pos="0 0 {-TABLE_THICKNESS / 2:.6g}" material="table"/>' + legs
            + f'<geom name="floor" type="plane" size="3 3 0.1" pos="0 0 {-TABLE_HEIGHT:.6g}" '
              'material="floor"/>')


def _gripper_xml() -> str:
    common = f'group="{GRIPPER_GROUP}" material="gripper"'
    return (f'<body name="gripper" mocap="true" pos="{_fmt(GRIPPER_HOME)}">'
            f'<geom name="finger_l" type="box" size="0.006 0.008 0.03" '
            f'pos="0 {FINGER_OPEN} 0.015" {common}/>'
            f'<geom name="finger_r" type="box" size="0.006 0.008 0.03" '
            f'pos="0 {-FINGER_OPEN} 0.015" {common}/>'
            f'<geom name="palm" type="box" size="0.014 0.064 0.01" pos="0 0 0.055" {common}/>'
            f'<geom name="rod" type="cylinder" size="0.012 0.15" pos="0 0 0.215" {common}/>'
            '</body>')


def _table_material(scene: SceneSpec) -> str:
    if not scene.table_texture:
        return f'<material name="table" rgba="{_fmt(scene.table_rgb)} 1" specular="0.1"/>'
    if scene.table_texture not in TABLE_TEXTURES:
        raise ValueError(f'unknown table texture {scene.table_texture!r}; '
                         f'choose one of {TABLE_TEXTURES}')
    colours = f'rgb1="{_fmt(scene.table_rgb)}" rgb2="{_fmt(scene.table_rgb2)}"'
    builtin, repeat = {'checker': ('checker', '6 4'), 'fine_checker': ('checker', '24 16'),
                       'noise': ('flat', '3 2'), 'gradient': ('gradient', '1 1')}[
                           scene.table_texture]
    marks = (f' mark="random" random="0.25" markrgb="{_fmt(scene.table_rgb2)}"'
             if scene.table_texture == 'noise' else '')
    return (f'<texture name="table" type="2d" builtin="{builtin}" {colours}{marks} '
            f'width="128" height="128"/>'
            f'<material name="table" texture="table" texrepeat="{repeat}" texuniform="false" '
            f'specular="0.1"/>')


def scene_xml(scene: SceneSpec, width: int, height: int) -> str:
    """
    Return the MJCF of `scene` with an offscreen buffer of `width` x `height`.

    Parameters
    ----------
    scene : SceneSpec
        What to build.
    width, height : int
        Largest image size the model will be rendered at.

    Returns
    -------
    str
        MJCF text; object bodies are 'obj<i>' in `scene.objects` order, the camera is 'camera'
        and the mocap end effector is 'gripper'.

    """
    materials, bodies = _objects_xml(scene)
    rot = look_at(scene.camera.eye, scene.camera.target)
    light_dir = -np.asarray(scene.light_pos) / np.linalg.norm(scene.light_pos)
    tint = np.asarray(scene.light_rgb, float)
    diffuse = scene.light_diffuse * tint
    return f"""<mujoco model="tabletop">
<compiler angle="radian"/>
<option><flag contact="disable"/></option>
<statistic extent="1" center="0 0 0"/>
<visual>
  <global offwidth="{width}" offheight="{height}" fovy="{FOVY_DEG}"/>
  <map znear="0.02" zfar="10"/>
  <quality shadowsize="1024" offsamples="0"/>
  <headlight ambient="{_fmt(scene.ambient * tint)}" diffuse="{_fmt(0.25 * tint)}"
             specular="0 0 0"/>
</visual>
<asset>
  <texture name="floor" type="2d" builtin="checker" rgb1="{_fmt(scene.floor_rgb)}"
           rgb2="{_fmt(np.array(scene.floor_rgb) * 0.8)}" width="64" height="64"/>
  <material name="floor" texture="floor" texrepeat="8 8"/>
  {_table_material(scene)}
  <material name="gripper" rgba="0.55 0.57 0.6 1" specular="0.6" shininess="0.6"/>
  {materials}
</asset>
<worldbody>
  <light name="key" pos="{_fmt(scene.light_pos)}" dir="{_fmt(light_dir)}" castshadow="true"
         diffuse="{_fmt(diffuse)}" specular="{_fmt(0.2 * tint)}" cutoff="70"/>
  {_table_xml(scene)}
  <camera name="camera" pos="{_fmt(scene.camera.eye)}"
          xyaxes="{_fmt(rot[:, 0])} {_fmt(rot[:, 1])}" fovy="{FOVY_DEG}"/>
  {bodies}
  {_gripper_xml()}
</worldbody>
</mujoco>
"""
