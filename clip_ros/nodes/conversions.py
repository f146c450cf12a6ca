"""Convert sensor_msgs/Image to and from numpy arrays, zero-copy where possible."""
import array

import numpy as np
from sensor_msgs.msg import Image

from clip_ros.perception.pixels import (  # noqa: F401 - to_rgb, SUPPORTED_ENCODINGS re-exported
    as_uint8, ENCODINGS, message_pixels, SUPPORTED_ENCODINGS, to_rgb, unsupported)


def _cv_bridge():
    """Return a CvBridge when cv_bridge is installed, else None."""
    try:
        import cv_bridge
    except ImportError:
        return None
    return cv_bridge.CvBridge()


def image_to_numpy(msg: Image, copy: bool = False) -> np.ndarray:
    """
    Return the pixels of ``msg`` as HxW (one channel) or HxWxC numpy array.

    The encodings of perception/pixels.py are read directly (a view of ``msg.data`` unless
    ``copy``; see message_pixels); others go through cv_bridge when it is installed.

    Raises
    ------
    ValueError
        unknown encoding (and no cv_bridge), zero size, ``step`` too small, or
        ``data`` not exactly ``step * height`` bytes.

    """
    if msg.encoding not in ENCODINGS:
        return _bridge_to_numpy(msg)
    return message_pixels(msg, copy)


def _bridge_to_numpy(msg: Image) -> np.ndarray:
    bridge = _cv_bridge()
    if bridge is None:
        raise unsupported(msg.encoding)
    try:
        return bridge.imgmsg_to_cv2(msg, desired_encoding='passthrough')
    except Exception as e:  # CvBridgeError and OpenCV errors alike
        raise ValueError(f'cv_bridge cannot convert encoding {msg.encoding!r}: {e}') from e


def numpy_to_image(arr: np.ndarray, encoding: str, header=None) -> Image:
    """
    Build a sensor_msgs/Image from an array (one copy into the message).

    Parameters
    ----------
    arr
        HxW or HxWx1 for one-channel encodings, HxWxC otherwise, with the encoding's
        dtype (uint8 for rgb8, float32 for 32FC1, ...).
    encoding
        one of SUPPORTED_ENCODINGS (others go through cv_bridge if installed).
    header
        std_msgs/Header to copy into the message; default header when None.

    Returns
    -------
    Image with step = width * bytes per pixel and little-endian data (is_bigendian=0).

    """
    if encoding not in ENCODINGS:
        msg = _bridge_to_image(arr, encoding)
    else:
        msg = _build_image(_check_array(arr, encoding), encoding)
    if header is not None:
        msg.header = header
    return msg


def _check_array(arr, encoding: str) -> np.ndarray:
    base, channels = ENCODINGS[encoding]
    if not isinstance(arr, np.ndarray):
        raise ValueError(f'expected a numpy array; got {type(arr).__name__}')
    if arr.dtype.newbyteorder('=') != np.dtype(base):
        raise ValueError(f'{encoding} needs dtype {np.dtype(base)}; got {arr.dtype}')
    if channels == 1 and arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    expected = (2,) if channels == 1 else (3,)
    if arr.ndim not in expected or (channels > 1 and arr.shape[2] != channels):
        want = 'HxW' if channels == 1 else f'HxWx{channels}'
        raise ValueError(f'{encoding} needs an {want} array; got shape {arr.shape}')
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f'image has zero size: shape {arr.shape}')
    return arr


def _build_image(arr: np.ndarray, encoding: str) -> Image:
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder('<'))
    msg = Image(height=arr.shape[0], width=arr.shape[1], encoding=encoding, is_bigendian=0,
                step=arr.strides[0])
    # An array.array skips the setter's per-element check; frombytes is one memcpy.
    data = array.array('B')
    data.frombytes(memoryview(arr.reshape(-1)).cast('B'))
    msg.data = data
    return msg


def _bridge_to_image(arr, encoding: str) -> Image:
    bridge = _cv_bridge()
    if bridge is None:
        raise unsupported(encoding)
    try:
        return bridge.cv2_to_imgmsg(arr, encoding=encoding)
    except Exception as e:  # CvBridgeError and OpenCV errors alike
        raise ValueError(f'cv_bridge cannot build a {encoding!r} image: {e}') from e
