"""
Messages as dicts for tools/bags.py, and numpy views of decoded bag messages (no ROS needed).

The builders give the fields that nodes/messages.py, nodes/sim_messages.py and
nodes/conversions.py set on real message objects, so a bag written here holds the bytes the
nodes publish (test_ground_bag compares them). Decoded messages are mcap-ros2-support's
objects: fields as attributes, uint8[] as bytes.
"""

import math

import numpy as np

from clip_ros.perception.compressed import (
    decode_colour, decode_depth, encode_colour, encode_depth)
from clip_ros.perception.geometry import SHAPE_HYPOTHESIS
from clip_ros.perception.pixels import ENCODINGS, message_pixels, to_rgb

MAX_FRAME_SIZE = 16384  # pixels per side of a compressed frame (checked before decoding)

COMPRESSED_FORMATS = ('jpeg', 'png')


def header(sec: int = 0, nanosec: int = 0, frame_id: str = '') -> dict:
    """Return a std_msgs/Header."""
    return {'stamp': {'sec': int(sec), 'nanosec': int(nanosec)}, 'frame_id': str(frame_id)}


def header_at(stamp_ns: int, frame_id: str = '') -> dict:
    """Return a Header stamped `stamp_ns` nanoseconds."""
    return header(stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000, frame_id)


def copy_header(decoded) -> dict:
    """Return a decoded message's header as a dict."""
    return header(decoded.stamp.sec, decoded.stamp.nanosec, decoded.frame_id)


def stamp_seconds(head: dict) -> float:
    """Return a header's stamp in seconds."""
    return head['stamp']['sec'] + head['stamp']['nanosec'] * 1e-9


def string_msg(text: str) -> dict:
    """Return a std_msgs/String."""
    return {'data': str(text)}


def image_msg(arr: np.ndarray, encoding: str, head: dict) -> dict:
    """Return a sensor_msgs/Image of `arr` (step = width * pixel bytes, little-endian)."""
    if encoding not in ENCODINGS:
        raise ValueError(f'unsupported encoding {encoding!r}; supported: {", ".join(ENCODINGS)}')
    base, channels = ENCODINGS[encoding]
    arr = np.asarray(arr)
    if arr.dtype != np.dtype(base):
        raise ValueError(f'{encoding} needs dtype {np.dtype(base)}; got {arr.dtype}')
    if channels == 1 and arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != (2 if channels == 1 else 3) or (channels > 1 and arr.shape[2] != channels):
        raise ValueError(f'{encoding} needs {"HxW" if channels == 1 else f"HxWx{channels}"}; '
                         f'got shape {arr.shape}')
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder('<'))
    return {'header': head, 'height': arr.shape[0], 'width': arr.shape[1],
            'encoding': encoding, 'is_bigendian': 0, 'step': arr.strides[0],
            'data': arr.tobytes()}


def compressed_image_msg(rgb: np.ndarray, image_format: str, head: dict,
                         quality: int = 90) -> dict:
    """Return a sensor_msgs/CompressedImage of an RGB frame as 'jpeg' or 'png'."""
    if image_format not in COMPRESSED_FORMATS:
        raise ValueError(f'format {image_format!r} is not one of {", ".join(COMPRESSED_FORMATS)}')
    return {'header': head, 'format': image_format,
            'data': encode_colour(rgb, image_format, quality)}


def compressed_depth_msg(depth: np.ndarray, encoding: str, head: dict) -> dict:
    """Return image_transport's compressedDepth CompressedImage (PNG) of 16UC1 or 32FC1 depth."""
    return {'header': head, 'format': f'{encoding}; compressedDepth png',
            'data': encode_depth(depth, encoding)}


def camera_info_msg(K, width: int, height: int, head: dict) -> dict:
    """Return the CameraInfo of an undistorted pinhole camera (as nodes/sim_messages.py)."""
    fx, fy, cx, cy = float(K[0][0]), float(K[1][1]), float(K[0][2]), float(K[1][2])
    return {'header': head, 'height': int(height), 'width': int(width),
            'distortion_model': 'plumb_bob', 'd': [0.0] * 5,
            'k': [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
            'r': [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            'p': [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]}


def _hypothesis(phrase: str, score: float, position=None) -> dict:
    pose = {} if position is None else {'pose': {'position': _xyz(position)}}
    return {'hypothesis': {'class_id': phrase, 'score': float(score)}, 'pose': pose}


def _xyz(values) -> dict:
    x, y, z = (float(v) for v in values)
    return {'x': x, 'y': y, 'z': z}


def detections_msg(detections, head: dict, ids=None) -> dict:
    """Return a vision_msgs/Detection2DArray (fields as nodes/messages.py detections_msg)."""
    ids = [None] * len(detections) if ids is None else ids
    out = []
    for detection, track_id in zip(detections, ids):
        cx, cy, w, h = detection.center_size
        results = [_hypothesis(detection.phrase, detection.score)]
        if math.isfinite(detection.shape_prob):
            results.append(_hypothesis(SHAPE_HYPOTHESIS, detection.shape_prob))
        out.append({
            'header': head, 'id': str(detection.index if track_id is None else track_id),
            'results': results,
            'bbox': {'center': {'position': {'x': float(cx), 'y': float(cy)}},
                     'size_x': float(w), 'size_y': float(h)}})
    return {'header': head, 'detections': out}


def detections_3d_msg(items, head: dict) -> dict:
    """
    Return a vision_msgs/Detection3DArray (fields as nodes/messages.py detections_3d_msg).

    `items` holds (detection, id, LiftedTarget): box centre = lifted.centre, size =
    lifted.size, in the header's frame; the hypothesis pose is the box centre.
    """
    out = []
    for detection, track_id, lifted in items:
        out.append({
            'header': head, 'id': str(track_id),
            'results': [_hypothesis(detection.phrase, detection.score, lifted.centre)],
            'bbox': {'center': {'position': _xyz(lifted.centre)}, 'size': _xyz(lifted.size)}})
    return {'header': head, 'detections': out}


def label_info_msg(phrases, threshold: float, head: dict) -> dict:
    """Return a vision_msgs/LabelInfo: class_id = phrase index + 1 (as nodes/messages.py)."""
    return {'header': head, 'threshold': float(threshold),
            'class_map': [{'class_id': i + 1, 'class_name': p} for i, p in enumerate(phrases)]}


def image_array(msg) -> np.ndarray:
    """Return a decoded sensor_msgs/Image as HxW or HxWxC (a view of its data when possible)."""
    return message_pixels(msg)


def depth_array(msg) -> tuple:
    """Return (depth [H, W], encoding) of a depth Image or a compressedDepth CompressedImage."""
    if hasattr(msg, 'format'):  # CompressedImage: '<encoding>; compressedDepth png'
        return decode_depth(msg.data, msg.format, MAX_FRAME_SIZE)
    return message_pixels(msg), msg.encoding


def image_rgb(msg, type_name: str) -> np.ndarray:
    """Return a decoded Image or CompressedImage as RGB uint8 HxWx3, or raise ValueError."""
    if type_name.endswith('CompressedImage'):
        return decode_colour(msg.data, msg.format, MAX_FRAME_SIZE)
    rgb = to_rgb(message_pixels(msg), msg.encoding)
    return rgb if rgb.flags.writeable else rgb.copy()  # torch wants writable arrays
