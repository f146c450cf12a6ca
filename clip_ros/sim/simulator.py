"""
Headless MuJoCo tabletop: seeded scenes, RGB/depth/instance renders, ground truth, end effector.

Rendering needs an offscreen OpenGL backend: EGL (default, Mesa or NVIDIA) or OSMesa. Set
MUJOCO_GL=egl|osmesa to choose; without it EGL is tried first, then OSMesa.
"""
from dataclasses import dataclass
import importlib
import importlib.util
import math
import os
import sys

import numpy as np

from clip_ros.sim.scene import (  # noqa: F401 - COLOURS, SHAPES re-exported
    COLOURS, FINGER_OPEN, FOVY_DEG, GRIPPER_GROUP, GRIPPER_HOME, sample_scene, scene_xml,
    SceneSpec, SHAPES, TABLE_HALF, TABLE_HEIGHT)

_GL_BACKEND = os.environ.setdefault('MUJOCO_GL', 'egl')  # mujoco binds it when first imported
try:
    import mujoco  # noqa: E402, I100
except (ImportError, OSError, AttributeError):
    # Without the backend's library (no libEGL or libOSMesa) PyOpenGL fails inside `import
    # mujoco`. Import it without a backend: the physics needs none, and create_gl_context
    # tries each backend itself and names what is missing.
    os.environ['MUJOCO_GL'] = 'disable'
    import mujoco  # noqa: E402, I100
    os.environ['MUJOCO_GL'] = _GL_BACKEND

# MuJoCo's camera looks down its -z with y up; the ROS optical frame has z forward, y down.
_MJCAM_TO_OPTICAL = np.diag([1.0, -1.0, -1.0])
SPEED = 0.5           # end effector speed (m/s)


@dataclass
class ObjectTruth:
    """Ground truth of one object in one frame (simulation only)."""

    instance_id: int        # pixel value in the instance mask (index in the scene + 1)
    name: str               # '<colour> <shape>'
    colour: str
    shape: str
    size: tuple             # bounding-box extents (x, y, z) in metres
    position_world: tuple   # centre, world/base frame (table-top centre, z up), metres
    quat_world: tuple       # (w, x, y, z), world/base frame
    position_camera: tuple  # centre in the camera optical frame (x right, y down, z forward)
    quat_camera: tuple      # (w, x, y, z), camera optical frame
    box: tuple | None       # (x_min, y_min, x_max, y_max) pixels, max exclusive; None if unseen
    visible_pixels: int


@dataclass
class Frame:
    """One render: images plus the camera model they came from."""

    rgb: np.ndarray                 # uint8 [H, W, 3]
    depth: np.ndarray | None        # float32 [H, W], metres along the optical axis
    instances: np.ndarray | None    # uint8 [H, W], ObjectTruth.instance_id, 0 = background
    objects: list | None            # ObjectTruth per object when instances were rendered
    K: np.ndarray                   # 3x3 intrinsics


class NoOffscreenGLError(RuntimeError):
    """No offscreen OpenGL backend for MuJoCo on this machine (neither EGL nor OSMesa)."""


def _drop_opengl_modules() -> None:
    # PyOpenGL binds one platform per process; forget the failed one before trying another.
    for name in [n for n in sys.modules if n == 'OpenGL' or n.startswith('OpenGL.')]:
        del sys.modules[name]


def _load_triton_first() -> None:
    # Mesa's EGL/OSMesa drivers bring their own LLVM; triton (which torch and transformers
    # import on first use of torch._dynamo) bundles another, and loading it after a GL context
    # exists crashes the process. Loaded first, both coexist (a simulator and the grounding
    # models share the demo's process).
    if importlib.util.find_spec('triton') is not None:
        importlib.import_module('triton')


def create_gl_context(width: int, height: int):
    """
    Create an offscreen OpenGL context: MUJOCO_GL's backend, then OSMesa if EGL fails.

    Raises
    ------
    NoOffscreenGLError
        A RuntimeError naming both backends' errors and the packages that provide them.

    """
    _load_triton_first()
    errors = []
    backends = [os.environ['MUJOCO_GL'].lower()]
    if backends[0] == 'egl':
        backends.append('osmesa')
    for backend in backends:
        try:
            if backend == 'egl':
                from mujoco.egl import GLContext
            elif backend == 'osmesa':
                from mujoco.osmesa import GLContext
            else:
                from mujoco.glfw import GLContext
            return GLContext(width, height)
        except (ImportError, OSError, RuntimeError, AttributeError) as e:
            errors.append(f'{backend}: {e}')
            if os.environ.get('PYOPENGL_PLATFORM') == backend:
                del os.environ['PYOPENGL_PLATFORM']
                _drop_opengl_modules()
    raise NoOffscreenGLError(
        'no offscreen OpenGL for MuJoCo (' + '; '.join(errors) + '). Install EGL (Debian: '
        'libegl1, Mesa or the NVIDIA driver) and use MUJOCO_GL=egl, or install libosmesa6 '
        'and use MUJOCO_GL=osmesa')


def intrinsics(width: int, height: int, fovy_deg: float = FOVY_DEG) -> np.ndarray:
    """
    Return the pinhole K of a camera with vertical field of view `fovy_deg` and square pixels.

    Pixel centres sit at integer coordinates (ROS/OpenCV), so the principal point of the
    centred OpenGL frustum is ((W - 1) / 2, (H - 1) / 2).

    Returns
    -------
    np.ndarray
        float64 [3, 3].

    """
    focal = height / 2 / math.tan(math.radians(fovy_deg) / 2)
    return np.array([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2],
                     [0.0, 0.0, 1.0]])


def horizontal_fov(width: int, height: int, fovy_deg: float = FOVY_DEG) -> float:
    """Return the horizontal field of view (rad), as Gazebo's camera <horizontal_fov> wants."""
    return 2 * math.atan(width / height * math.tan(math.radians(fovy_deg) / 2))


def _mat_to_quat(mat: np.ndarray) -> tuple:
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, np.ascontiguousarray(mat, dtype=np.float64).ravel())
    return tuple(float(v) for v in quat)


def boxes_from_instances(instances: np.ndarray, count: int) -> tuple:
    """
    Return pixel boxes and pixel counts of instance ids 1..count in an instance mask.

    Returns
    -------
    (list of (x_min, y_min, x_max, y_max) or None, np.ndarray int64 [count])
        Boxes have exclusive maxima; None where an instance has no pixels.

    """
    counts = np.bincount(instances.ravel(), minlength=count + 1)[1:count + 1]
    boxes = []
    for instance_id in range(1, count + 1):
        if counts[instance_id - 1] == 0:
            boxes.append(None)
            continue
        rows = np.flatnonzero((instances == instance_id).any(axis=1))
        cols = np.flatnonzero((instances == instance_id).any(axis=0))
        boxes.append((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))
    return boxes, counts


class _Renderer:
    """Offscreen renderer for one camera; one GL context, re-bound to each new model."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self._gl = create_gl_context(width, height)
        self._rect = mujoco.MjrRect(0, 0, width, height)
        self._context = None
        self.option = mujoco.MjvOption()
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED

    def bind(self, model: mujoco.MjModel, camera: str) -> None:
        """Upload `model` to the GL context and render from its camera named `camera`."""
        self._gl.make_current()
        if self._context is not None:
            self._context.free()
        self._scene = mujoco.MjvScene(model, maxgeom=max(100, 2 * model.ngeom))
        self._context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
        self._context.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR
        self._camera.fixedcamid = model.camera(camera).id
        self._near = model.vis.map.znear * model.stat.extent
        self._far = model.vis.map.zfar * model.stat.extent

    def render(self, model, data, depth: bool, geom_instance: np.ndarray | None):
        """Return (rgb, depth or None, instances or None), rows top to bottom."""
        self._gl.make_current()
        mujoco.mjv_updateScene(model, data, self.option, None, self._camera,
                               mujoco.mjtCatBit.mjCAT_ALL, self._scene)
        mujoco.mjr_render(self._rect, self._scene, self._context)
        rgb = np.empty((self.height, self.width, 3), np.uint8)
        zbuf = np.empty((self.height, self.width), np.float32) if depth else None
        mujoco.mjr_readPixels(rgb, zbuf, self._rect, self._context)
        instances = None if geom_instance is None else self._instances(geom_instance)
        metres = None if zbuf is None else self._metres(np.flipud(zbuf))
        return np.flipud(rgb), metres, instances

    def instances_only(self, model, data, geom_instance: np.ndarray) -> np.ndarray:
        """Return the instance mask alone (one pass, no colour image)."""
        self._gl.make_current()
        mujoco.mjv_updateScene(model, data, self.option, None, self._camera,
                               mujoco.mjtCatBit.mjCAT_ALL, self._scene)
        return self._instances(geom_instance)

    def _metres(self, zbuf: np.ndarray) -> np.ndarray:
        # Reverse-Z buffer (1 at near, 0 at far) back to distance along the optical axis:
        # window z = n (f / z - 1) / (f - n)  =>  z = n f / (z_w (f - n) + n).
        near, far = np.float64(self._near), np.float64(self._far)
        return (near * far / (zbuf.astype(np.float64) * (far - near) + near)).astype(np.float32)

    def _instances(self, geom_instance: np.ndarray) -> np.ndarray:
        flags = self._scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = True
        try:
            mujoco.mjr_render(self._rect, self._scene, self._context)
            ids = np.empty((self.height, self.width, 3), np.uint8)
            mujoco.mjr_readPixels(ids, None, self._rect, self._context)
        finally:
            flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = False
        # pixel colour encodes segid + 1 (0 = background); map segid -> geom -> instance
        lut = np.zeros(self._scene.ngeom + 1, np.uint8)
        for geom in self._scene.geoms[:self._scene.ngeom]:
            if geom.segid >= 0 and geom.objtype == mujoco.mjtObj.mjOBJ_GEOM:
                lut[geom.segid + 1] = geom_instance[geom.objid]
        segid = ids[..., 0].astype(np.int64) | (ids[..., 1].astype(np.int64) << 8)
        return np.flipud(lut[np.clip(segid, 0, len(lut) - 1)])

    def close(self) -> None:
        """Free the GL resources."""
        if self._context is not None:
            self._gl.make_current()
            self._context.free()
            self._context = None
        if self._gl is not None:
            self._gl.free()
            self._gl = None


class Simulator:
    """
    A seeded tabletop scene with a fixed camera and a kinematic mocap end effector.

    Parameters
    ----------
    seed : int
        Scene seed; `reset(seed)` builds another.
    width, height : int
        Render size in pixels (e.g. 640x480, 224x224, 160x120).
    object_count : int, optional
        Objects per scene; by default each seed draws 3..6.
    exclude : iterable of (colour, shape)
        Combinations never placed (held-out combinations).
    show_gripper : bool
        Whether renders show the end effector.

    """

    def __init__(self, seed: int = 0, width: int = 640, height: int = 480,
                 object_count: int | None = None, exclude=(), show_gripper: bool = True):
        if width < 8 or height < 8:
            raise ValueError(f'image size must be at least 8x8, got {width}x{height}')
        if height > width:
            # Scenes keep their objects inside the vertical field of view (sim/scene.py): a
            # taller than wide image would cut them at its sides.
            raise ValueError(f'image size {width}x{height} is taller than wide; the simulator '
                             'renders landscape frames (width >= height)')
        self.width, self.height = int(width), int(height)
        self.object_count = object_count
        self.exclude = tuple(tuple(c) for c in exclude)
        self._renderer = _Renderer(self.width, self.height)
        self._renderer.option.geomgroup[GRIPPER_GROUP] = int(show_gripper)
        self.K = intrinsics(self.width, self.height)
        self.loads = 0
        self.reset(seed)

    def reset(self, seed: int | None = None, object_count: int | None = None) -> SceneSpec:
        """Build the scene of `seed` (default: the current one again); return its spec."""
        if object_count is not None:
            self.object_count = object_count
        self.seed = self.seed if seed is None else int(seed)
        return self.load(sample_scene(self.seed, self.object_count, self.exclude))

    def load(self, spec: SceneSpec) -> SceneSpec:
        """Build the scene `spec` (e.g. one drawn under a clip_ros.sim.conditions condition)."""
        self.seed, self.spec = spec.seed, spec
        self.loads += 1  # tells scenes apart in state_key
        self.model = mujoco.MjModel.from_xml_string(
            scene_xml(self.spec, self.width, self.height))
        self.data = mujoco.MjData(self.model)
        self._bodies = [self.model.body(f'obj{i}').id for i in range(len(self.spec.objects))]
        self._mocap = [int(self.model.body_mocapid[b]) for b in self._bodies]
        self._gripper = int(self.model.body_mocapid[self.model.body('gripper').id])
        self._fingers = (self.model.geom('finger_l').id, self.model.geom('finger_r').id)
        self._geom_instance = np.zeros(self.model.ngeom, np.uint8)
        for index, body in enumerate(self._bodies):
            self._geom_instance[self.model.geom_bodyid == body] = index + 1
        self._target = np.array(GRIPPER_HOME)
        self._held, self._offset = None, np.zeros(3)
        self._update()
        self._renderer.bind(self.model, 'camera')
        return self.spec

    def _update(self) -> None:
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_camlight(self.model, self.data)

    def state_key(self) -> tuple:
        """
        Return what a render depends on: the scene and every geom's pose.

        Equal keys give identical renders (the scene is kinematic and noise-free), so a
        camera loop may republish its last frame instead of rendering it again.
        """
        return (self.loads, self.data.geom_xpos.tobytes(), self.data.geom_xmat.tobytes())

    @property
    def object_names(self) -> list:
        """Return the object names ('<colour> <shape>') in instance-id order."""
        return [obj.name for obj in self.spec.objects]

    def camera_pose(self) -> tuple:
        """Return (R, t): world/base from camera optical frame, R 3x3 and t [3] (m)."""
        rot = self.data.cam_xmat[0].reshape(3, 3) @ _MJCAM_TO_OPTICAL
        return rot, self.data.cam_xpos[0].copy()

    def render(self, depth: bool = True, instances: bool = False) -> Frame:
        """
        Render the camera view.

        Parameters
        ----------
        depth : bool
            Also return metric depth (free: read from the same pass).
        instances : bool
            Also render the instance mask (a second pass) and the per-object ground truth.

        Returns
        -------
        Frame

        """
        rgb, metres, ids = self._renderer.render(
            self.model, self.data, depth, self._geom_instance if instances else None)
        objects = None if ids is None else self.ground_truth(ids)
        return Frame(rgb, metres, ids, objects, self.K.copy())

    def visible_pixels(self) -> np.ndarray:
        """Return each object's visible pixel count (one instance pass, no colour image)."""
        ids = self._renderer.instances_only(self.model, self.data, self._geom_instance)
        return boxes_from_instances(ids, len(self.spec.objects))[1]

    def ground_truth(self, instances: np.ndarray) -> list:
        """Return an ObjectTruth per object; boxes and pixel counts come from `instances`."""
        boxes, counts = boxes_from_instances(instances, len(self.spec.objects))
        rot, origin = self.camera_pose()
        truths = []
        for index, obj in enumerate(self.spec.objects):
            pos = self.data.xpos[self._bodies[index]].copy()
            world_rot = self.data.xmat[self._bodies[index]].reshape(3, 3)
            truths.append(ObjectTruth(
                index + 1, obj.name, obj.colour, obj.shape,
                tuple(2 * v for v in obj.half_size), tuple(pos.tolist()),
                tuple(self.data.xquat[self._bodies[index]].tolist()),
                tuple((rot.T @ (pos - origin)).tolist()), _mat_to_quat(rot.T @ world_rot),
                boxes[index], int(counts[index])))
        return truths

    # End effector: a kinematic mocap gripper; a closed gripper carries the object it grasped.

    @property
    def gripper_position(self) -> np.ndarray:
        """Return the grasp point (between the fingertips), world frame (m)."""
        return self.data.mocap_pos[self._gripper].copy()

    @property
    def holding(self) -> str | None:
        """Return the name of the carried object, or None."""
        return None if self._held is None else self.spec.objects[self._held].name

    def move_to(self, xyz, instant: bool = False) -> None:
        """Set the grasp point's goal (world frame, m); `step` moves there unless `instant`."""
        self._target = np.asarray(xyz, dtype=np.float64).reshape(3).copy()
        if instant:
            self._set_gripper(self._target)

    def step(self, dt: float = 1 / 15) -> bool:
        """Advance the end effector by `dt` seconds at SPEED; return whether it is at its goal."""
        here = self.gripper_position
        delta = self._target - here
        distance = float(np.linalg.norm(delta))
        reach = SPEED * dt
        self._set_gripper(self._target if distance <= reach else here + delta * reach / distance)
        return distance <= reach

    def close(self) -> str | None:
        """
        Grasp the object between the fingers; return its name, or None when they close empty.

        The grasp point must lie over the object's footprint and within its height: fingers
        closing beside or above an object do not touch it. Of several, the nearest centre.
        """
        if self._held is None:
            grip = self.gripper_position
            between = [i for i in range(len(self._bodies)) if self._between_fingers(i, grip)]
            if between:
                self._held = min(between, key=lambda i: float(
                    np.linalg.norm(self.data.xpos[self._bodies[i]] - grip)))
                self._offset = self.data.xpos[self._bodies[self._held]] - grip
                half = self.spec.objects[self._held].half_size
                self._set_fingers(min(half[0], half[1]) + 0.006)
        return self.holding

    def _between_fingers(self, index: int, grip) -> bool:
        centre = self.data.xpos[self._bodies[index]]
        half = self.spec.objects[index].half_size[2]
        return self._covers(index, grip[:2]) and abs(grip[2] - centre[2]) <= half

    def open(self) -> str | None:  # noqa: A003 - the gripper verb, paired with close()
        """Release the carried object onto what is below it; return its name or None."""
        name, index = self.holding, self._held
        if index is not None:
            self._held = None
            pos = self.data.mocap_pos[self._mocap[index]]
            pos[2] = self._support(index, pos[:2])[0] + self.spec.objects[index].half_size[2]
            self._set_fingers(FINGER_OPEN)
        return name

    def set_object_xy(self, index: int, xy) -> None:
        """Move object `index` (scene order) to `xy` on the table (world frame, m)."""
        self.data.mocap_pos[self._mocap[index]][:2] = xy
        self._update()

    def object_position(self, name: str) -> np.ndarray:
        """Return the centre of object `name`, world frame (m)."""
        return self.data.xpos[self._bodies[self._index(name)]].copy()

    def lift_height(self, name: str) -> float:
        """Return how far the bottom of object `name` is above the table top (m)."""
        index = self._index(name)
        return float(self.data.xpos[self._bodies[index]][2]
                     - self.spec.objects[index].half_size[2])

    def _index(self, name: str) -> int:
        try:
            return self.object_names.index(name)
        except ValueError as e:
            raise ValueError(f'no object {name!r}; objects: {self.object_names}') from e

    def resting_on(self, name: str) -> list:
        """
        Return what each object called `name` rests on: an object name, or None (table, held).

        A released object drops straight down onto the highest support under its centre: a
        bowl (inside, on its inner bottom) or another object's top (a block, ball or
        cylinder), when its centre lies over that object's footprint (a block's square, the
        circle of the others); else it lands on the table.
        """
        self._index(name)  # raises for unknown names
        supports = []
        for index in [i for i, n in enumerate(self.object_names) if n == name]:
            centre = self.data.xpos[self._bodies[index]]
            height, support = self._support(index, centre[:2])
            bottom = centre[2] - self.spec.objects[index].half_size[2]
            resting = index != self._held and support is not None
            supports.append(self.spec.objects[support].name
                            if resting and abs(bottom - height) < 1e-6 else None)
        return supports

    def _support(self, index: int, xy) -> tuple:
        # (height, object index or None) of what lies under xy: the table (0), the top of an
        # object, or a bowl's inner bottom; past the table's edge, the floor.
        on_table = abs(xy[0]) <= TABLE_HALF[0] and abs(xy[1]) <= TABLE_HALF[1]
        height, support = (0.0 if on_table else -TABLE_HEIGHT), None
        for other, body in enumerate(self._bodies):
            obj = self.spec.objects[other]
            centre = self.data.xpos[body]
            if other != index and self._covers(other, xy):
                bottom = centre[2] - obj.half_size[2]
                top = bottom + (0.008 if obj.shape == 'bowl' else 2 * obj.half_size[2])
                if top > height:
                    height, support = top, other
        return height, support

    def _covers(self, index: int, xy) -> bool:
        # Whether xy lies over an object's footprint: its square (a block, turned by its yaw)
        # or its circle; a centre beyond a round object's rim falls past it.
        body = self._bodies[index]
        obj = self.spec.objects[index]
        offset = np.asarray(xy, np.float64) - self.data.xpos[body][:2]
        if obj.shape != 'block':
            return bool(np.linalg.norm(offset) < obj.half_size[0])
        axes = self.data.xmat[body].reshape(3, 3)[:2, :2]  # columns: the block's x and y
        local = np.abs(axes.T @ offset)
        return bool(local[0] < obj.half_size[0] and local[1] < obj.half_size[1])

    def _set_gripper(self, xyz) -> None:
        self.data.mocap_pos[self._gripper] = xyz
        if self._held is not None:
            self.data.mocap_pos[self._mocap[self._held]] = np.asarray(xyz) + self._offset
        self._update()

    def _set_fingers(self, half_width: float) -> None:
        self.model.geom_pos[self._fingers[0], 1] = half_width
        self.model.geom_pos[self._fingers[1], 1] = -half_width
        self._update()

    def close_renderer(self) -> None:
        """Release the GL context; the sim cannot render afterwards."""
        self._renderer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close_renderer()
