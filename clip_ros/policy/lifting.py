"""
Lift a 2D instance mask to a 3D point: median valid depth, pinhole back-projection, extrinsic.

Frames: the camera optical frame (x right, y down, z forward) and the robot base frame,
related by a static extrinsic ``base_from_camera`` (rotation R, translation t: p_base = R p_cam
+ t). Every check raises ValueError with the reason, so a caller can report it and stay still.
"""
from dataclasses import dataclass, field
import math

import numpy as np

from clip_ros.perception import solid_shape
from clip_ros.perception.solid_shape import Rigid

DEPTH_ENCODINGS = ('32FC1', '16UC1', 'mono16')  # metres, millimetres (scaled), millimetres
# Fewest of a mask's pixels with depth for a 3D estimate: below a tenth, what a real sensor
# leaves is mostly edge (flying) pixels between the object and its background, or the table
# seen through a transparent object, not the object's surface.
MIN_VALID_SHARE = 0.1


@dataclass
class Extrinsic(Rigid):
    """A rigid transform base_from_camera: p_base = rotation @ p_camera + translation."""

    @classmethod
    def identity(cls) -> 'Extrinsic':
        """Return the transform for a base frame that is the camera optical frame."""
        return cls(np.eye(3), np.zeros(3))

    @classmethod
    def from_xyz_quat(cls, values) -> 'Extrinsic':
        """
        Build from [x, y, z, qx, qy, qz, qw] (ROS order), e.g. a launch parameter.

        Raises
        ------
        ValueError
            Not 7 finite numbers, or a zero quaternion.

        """
        values = np.asarray(values, dtype=np.float64).ravel()
        if values.shape != (7,) or not np.all(np.isfinite(values)):
            raise ValueError(f'extrinsic must be 7 finite numbers [x, y, z, qx, qy, qz, qw], '
                             f'got {values.tolist()}')
        return cls(quat_to_matrix(values[3:]), values[:3].copy())

    def to_xyz_quat(self) -> list:
        """Return [x, y, z, qx, qy, qz, qw]."""
        return [float(v) for v in self.translation] + matrix_to_quat(self.rotation)


def quat_to_matrix(quat) -> np.ndarray:
    """Return the 3x3 rotation of a quaternion (x, y, z, w); ValueError when zero or not finite."""
    x, y, z, w = (float(v) for v in quat)
    if not all(math.isfinite(v) for v in (x, y, z, w)):
        # An infinite component passes the norm check and normalises to a NaN rotation.
        raise ValueError(f'quaternion (x, y, z, w) must be finite, got {[x, y, z, w]}')
    norm = math.sqrt(x * x + y * y + z * z + w * w)
    if not norm > 1e-9:
        raise ValueError('quaternion (x, y, z, w) must be non-zero')
    x, y, z, w = x / norm, y / norm, z / norm, w / norm
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def matrix_to_quat(rot) -> list:
    """Return the quaternion [x, y, z, w] of a 3x3 rotation (w >= 0)."""
    m = np.asarray(rot, np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2 * math.sqrt(trace + 1)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, s / 4]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2 * math.sqrt(max(1 + m[i, i] - m[j, j] - m[k, k], 1e-12))
        q = [0.0] * 4
        q[i], q[j], q[k] = s / 4, (m[j, i] + m[i, j]) / s, (m[k, i] + m[i, k]) / s
        q[3] = (m[k, j] - m[j, k]) / s
    q = np.asarray(q) * (1 if q[3] >= 0 else -1)
    return [float(v) for v in q / np.linalg.norm(q)]


def check_camera_size(width: int, height: int, depth: np.ndarray) -> None:
    """Raise ValueError when camera_info's size is not the depth image's (wrong intrinsics)."""
    if (width, height) != (depth.shape[1], depth.shape[0]):
        raise ValueError(f'depth size {depth.shape[1]}x{depth.shape[0]} differs from '
                         f'camera_info {width}x{height}')


def check_intrinsics(K, size=None) -> np.ndarray:
    """
    Return K as float64 [3, 3]; raise ValueError when it is missing or not a pinhole.

    With the image's `size` (width, height), the principal point must also lie within one
    image size of the image: further out (cx = 1e308) every lifted point is far off or infinite.
    """
    if K is None:
        raise ValueError('no camera_info yet: intrinsics unknown')
    K = np.asarray(K, dtype=np.float64).reshape(-1)
    if K.size != 9:
        raise ValueError(f'intrinsics must have 9 values, got {K.size}')
    K = K.reshape(3, 3)
    if not (np.all(np.isfinite(K)) and K[0, 0] > 0 and K[1, 1] > 0):
        raise ValueError(f'invalid intrinsics: fx={K[0, 0]}, fy={K[1, 1]} (all-zero '
                         'camera_info means an uncalibrated camera)')
    if size is not None:
        width, height = size
        if not (-width <= K[0, 2] <= 2 * width and -height <= K[1, 2] <= 2 * height):
            raise ValueError(f'invalid intrinsics: principal point ({K[0, 2]:g}, {K[1, 2]:g}) '
                             f'is far outside the {width}x{height} image')
    return K


def table_view(rotation) -> tuple:
    """
    Return the camera's (right, forward) on the table: unit base-frame xy of base_from_camera.

    Right is the image's x axis, forward the optical axis, both laid flat on the base's xy
    plane; a camera looking straight down takes the image's up as forward.
    """
    R = np.asarray(rotation, np.float64)
    right, forward = R[:2, 0], R[:2, 2]
    if np.linalg.norm(forward) < 0.1:  # looking down: away from the camera is the image's up
        forward = -R[:2, 1]
    right, forward = (v / max(float(np.linalg.norm(v)), 1e-9) for v in (right, forward))
    return (float(right[0]), float(right[1])), (float(forward[0]), float(forward[1]))


def camera_intrinsics(info) -> tuple:
    """
    Return (K [3, 3], (width, height)) of the image a sensor_msgs/CameraInfo describes.

    Depth images are rectified (image_proc, depth_image_proc) or undistorted at the source
    (RealSense, ZED, Orbbec), so the pinhole is P's left 3x3, as image_geometry and
    depth_image_proc read it; K describes the raw, distorted image and is used only when P is
    unset (all zero). The distortion D is not applied. Binning and a region of interest shift
    and scale the intrinsics and the size to the pixels the image has (as image_geometry does).
    Checked with check_intrinsics; ValueError when unusable.
    """
    P = np.asarray(info.p, np.float64).reshape(-1)
    if P.size == 12 and P[0] > 0 and P[5] > 0:
        K = P.reshape(3, 4)[:, :3].copy()
    else:
        K = check_intrinsics(info.k).copy()
    width, height = int(info.width), int(info.height)
    roi = info.roi
    if roi.width > 0 and roi.height > 0:  # zero: the full image
        width, height = int(roi.width), int(roi.height)
        K[0, 2] -= roi.x_offset
        K[1, 2] -= roi.y_offset
    bin_x, bin_y = max(int(info.binning_x), 1), max(int(info.binning_y), 1)  # 0 and 1: none
    K[0] /= bin_x
    K[1] /= bin_y
    size = (width // bin_x, height // bin_y)
    return check_intrinsics(K, size), size


def check_frames(image_frame: str, depth_frame: str, info_frame: str) -> None:
    """
    Raise ValueError when depth is not registered to the image, or camera_info is another's.

    A mask's pixels are the colour image's: depth of another camera (unregistered depth, which
    may have the same size) puts every point somewhere else. Empty frame ids are not compared.
    """
    image, depth, info = (f.lstrip('/') for f in (image_frame, depth_frame, info_frame))
    if image and depth and image != depth:
        raise ValueError(f'depth frame {depth!r} is not the image frame {image!r}: depth must '
                         'be registered to the colour image (e.g. RealSense align_depth, '
                         'Orbbec depth_registration)')
    if depth and info and depth != info:
        raise ValueError(f'camera_info frame {info!r} is not the depth frame {depth!r}: use '
                         "the depth image's own camera_info")


def depth_to_metres(depth: np.ndarray, encoding: str, depth_scale: float = 0.001) -> np.ndarray:
    """
    Return a depth image as float32 metres.

    Parameters
    ----------
    depth : [H, W]
        As decoded from the image message.
    encoding : str
        One of DEPTH_ENCODINGS: '32FC1' is metres; '16UC1'/'mono16' are integer units.
    depth_scale : float
        Metres per integer unit (0.001 for millimetres).

    """
    if encoding not in DEPTH_ENCODINGS:
        raise ValueError(f'depth encoding {encoding!r} is not one of {", ".join(DEPTH_ENCODINGS)}')
    depth = np.asarray(depth)
    if depth.ndim != 2 or depth.size == 0:
        raise ValueError(f'depth must be a non-empty [H, W] image, got shape {depth.shape}')
    if encoding == '32FC1':
        return depth.astype(np.float32, copy=False)
    if not depth_scale > 0:
        raise ValueError(f'depth_scale must be > 0 metres per unit, got {depth_scale}')
    return depth.astype(np.float32) * np.float32(depth_scale)


def back_project(u, v, z, K) -> np.ndarray:
    """Return camera optical-frame points [..., 3] of pixels (u, v) at depth z (metres)."""
    return solid_shape.back_project(u, v, z, check_intrinsics(K))


@dataclass
class LiftedTarget:
    """A mask lifted to 3D."""

    position_camera: np.ndarray  # [3] camera optical frame, metres
    position: np.ndarray         # [3] base frame, metres
    size: np.ndarray             # [3] extent of the valid masked points, base frame axes
    depth: float                 # the median depth used (m)
    pixel: tuple                 # (u, v) the median pixel that was back-projected
    valid_pixels: int            # masked pixels with usable depth
    top: float = 0.0             # base-frame z of the highest valid points (95th percentile)
    centre: np.ndarray | None = None  # [3] middle of the points' 5..95th percentile box, base
    # [N, 3] the valid points near the median one, base frame (what the box and shape read)
    points: np.ndarray | None = field(default=None, repr=False)


def _valid_depth(depth: np.ndarray, mask: np.ndarray, depth_range: tuple) -> np.ndarray:
    if depth.shape != mask.shape:
        raise ValueError(f'depth size {depth.shape[1]}x{depth.shape[0]} differs from the '
                         f'mask/image size {mask.shape[1]}x{mask.shape[0]}')
    if not mask.any():
        raise ValueError('the instance mask is empty')
    near, far = depth_range
    valid = mask & np.isfinite(depth) & (depth > max(near, 0.0)) & (depth < far)
    if not valid.any():
        values = depth[mask]
        reason = ('all NaN' if np.isnan(values).all() else 'all zero' if (values == 0).all()
                  else f'none within {near}..{far} m')
        raise ValueError(f'no valid depth inside the mask ({reason})')
    return valid


def lift_mask(depth: np.ndarray, mask: np.ndarray, K, extrinsic: Extrinsic = None,
              depth_range: tuple = (0.05, 10.0), min_valid: float = MIN_VALID_SHARE,
              object_radius: float = 0.1, floor: float = -math.inf,
              window: tuple = None) -> LiftedTarget:
    """
    Lift an instance mask to 3D with the median valid depth inside it.

    Parameters
    ----------
    depth : float32 [H, W]
        Metres (see depth_to_metres); NaN, zero and out-of-range values are ignored.
    mask : bool [H, W]
        The instance's pixels; must have the depth image's size.
    K : [3, 3]
        Pinhole intrinsics of the depth image (None: raises 'no camera_info').
    extrinsic : Extrinsic
        base_from_camera; identity when None.
    depth_range : (near, far)
        Valid depth interval (m), exclusive.
    min_valid : float
        Fewest valid pixels accepted, as a share of the mask's pixels.
    object_radius : float
        The box (size, top, centre) only counts points this close to the median point (m).
    floor : float
        ... and above this base-frame z, when any is (the table top: a mask that takes in
        the table behind an object, or its shadow, must not move its centre there).
    window : (row slice, column slice), optional
        The mask's box in the depth image; `mask` is then the box's pixels only (bool
        [h, w]), so a frame of several instances is not read once per instance.

    Returns
    -------
    LiftedTarget: the back-projection of the median valid pixel (u, v) at the median valid
    depth, in both frames; also the box of the valid points (5th..95th percentile) in the
    base frame: its centre (an object seen from above and in front shows its top and front
    faces, so the box centre is nearer its true centre than the median visible point) and top.

    Raises
    ------
    ValueError
        Missing/invalid intrinsics, size mismatch, empty mask, or no/too little valid depth.

    """
    depth, mask = np.asarray(depth, np.float32), np.asarray(mask, bool)
    K = check_intrinsics(K, (depth.shape[1], depth.shape[0]) if depth.ndim == 2 else None)
    top, left = (window[0].start or 0, window[1].start or 0) if window else (0, 0)
    valid = _valid_depth(depth[window] if window else depth, mask, depth_range)
    rows, cols = np.nonzero(valid)
    rows, cols = rows + top, cols + left
    area = int(np.count_nonzero(mask))
    if rows.size < min_valid * area:
        raise ValueError(f'only {rows.size} of {area} masked pixels have valid depth '
                         f'(need {min_valid:.0%})')
    z = float(np.median(depth[rows, cols]))
    u, v = float(np.median(cols)), float(np.median(rows))
    extrinsic = extrinsic or Extrinsic.identity()
    camera = back_project(u, v, z, K)
    points = extrinsic.apply(back_project(cols, rows, depth[rows, cols], K))  # [N, 3]
    position = extrinsic.apply(camera)
    # A mask that bleeds onto the background must not stretch the object's box.
    near = points[np.linalg.norm(points - position, axis=1) <= object_radius]
    near = near if len(near) else points
    standing = near[near[:, 2] > floor]
    low, high = np.percentile(standing if len(standing) else near, [5, 95], axis=0)
    return LiftedTarget(camera, position, high - low, z, (u, v), int(rows.size),
                        float(high[2]), (low + high) / 2, near)


def lift_standing(depth: np.ndarray, masks, K, extrinsic: Extrinsic = None,
                  depth_range: tuple = (0.05, 10.0), table_z: float = 0.0,
                  min_height: float = 0.01) -> tuple:
    """
    Lift the first of `masks` that stands above the table.

    A detection whose points all lie within `min_height` of the table top is a shadow or a
    reflection, not an object, so it is skipped in favour of the next-best mask.

    Parameters
    ----------
    depth, K, extrinsic, depth_range
        As for lift_mask.
    masks : list of bool [H, W]
        Candidate masks, best first.
    table_z : float
        Base-frame z of the table top.
    min_height : float
        How far above the table a mask's top must reach (0 accepts flat masks).

    Returns
    -------
    (index into masks, LiftedTarget) or (None, None), and the reasons masks were skipped.

    """
    reasons = []
    for index, mask in enumerate(masks):
        try:
            lifted = lift_mask(depth, mask, K, extrinsic, depth_range,
                               floor=table_z + max(min_height, 0.0))
        except ValueError as e:
            reasons.append(str(e))
            continue
        if min_height <= 0 or lifted.top > table_z + min_height:
            return (index, lifted), reasons
        reasons.append(f'flat on the table (top {lifted.top - table_z:+.3f} m)')
    return (None, None), reasons


def place_point(lifted: LiftedTarget) -> np.ndarray:
    """Return where a load goes onto a lifted destination: its centre at its top face."""
    return np.append(lifted.centre[:2], lifted.top)
