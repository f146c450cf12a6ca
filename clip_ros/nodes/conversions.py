"""Convert sensor_msgs/Image to and from numpy arrays, zero-copy where possible."""
import array

import numpy as np
from sensor_msgs.msg import Image

# encoding: (numpy dtype, channels); single-channel images map to HxW arrays.
_ENCODINGS = {
    'rgb8': (np.uint8, 3), 'bgr8': (np.uint8, 3), 'rgba8': (np.uint8, 4),
    'bgra8': (np.uint8, 4), 'mono8': (np.uint8, 1), 'mono16': (np.uint16, 1),
    'rgb16': (np.uint16, 3), 'bgr16': (np.uint16, 3), 'rgba16': (np.uint16, 4),
    'bgra16': (np.uint16, 4), '8UC1': (np.uint8, 1), '8UC3': (np.uint8, 3),
    '8UC4': (np.uint8, 4), '16UC1': (np.uint16, 1), '16SC1': (np.int16, 1),
    '32SC1': (np.int32, 1), '32FC1': (np.float32, 1), '64FC1': (np.float64, 1),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)

# encoding: (channel order to reach RGB, right shift to reach 8 bits)
_TO_RGB = {
    'rgb8': ((0, 1, 2), 0), 'bgr8': ((2, 1, 0), 0), 'rgba8': ((0, 1, 2), 0),
    'bgra8': ((2, 1, 0), 0), 'rgb16': ((0, 1, 2), 8), 'bgr16': ((2, 1, 0), 8),
    'rgba16': ((0, 1, 2), 8), 'bgra16': ((2, 1, 0), 8), 'mono8': ((0, 0, 0), 0),
    '8UC1': ((0, 0, 0), 0),
}


def _cv_bridge():
    """Return a CvBridge when cv_bridge is installed, else None."""
    try:
        import cv_bridge
    except ImportError:
        return None
    return cv_bridge.CvBridge()


def _unsupported(encoding: str) -> ValueError:
    return ValueError(f'unsupported encoding {encoding!r}; supported: '
                      f'{", ".join(SUPPORTED_ENCODINGS)} (others need cv_bridge)')


def _as_uint8(data) -> np.ndarray:
    """View message bytes as uint8 without copying (array.array, bytes, memoryview)."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8)  # a plain list of ints: copy unavoidable


def image_to_numpy(msg: Image, copy: bool = False) -> np.ndarray:
    """
    Return the pixels of ``msg`` as HxW (one channel) or HxWxC numpy array.

    Without ``copy`` the result is a view of ``msg.data`` (row padding skipped with strides,
    so it may be non-contiguous) and writing to it changes the message; while it lives,
    ``msg.data`` (an array.array) cannot be resized in place, only replaced. Big-endian
    multi-byte data is byte-swapped into a native-order copy.

    Raises
    ------
    ValueError
        unknown encoding (and no cv_bridge), zero size, ``step`` too small, or
        ``data`` not exactly ``step * height`` bytes.

    """
    encoding = msg.encoding
    if encoding not in _ENCODINGS:
        return _bridge_to_numpy(msg)
    base, channels = _ENCODINGS[encoding]
    height, width, step = msg.height, msg.width, msg.step
    dtype = np.dtype(base).newbyteorder('>' if msg.is_bigendian else '<')
    pixel_bytes = dtype.itemsize * channels
    if height == 0 or width == 0:
        raise ValueError(f'image has zero size: {width}x{height} (width x height)')
    if step < width * pixel_bytes:
        raise ValueError(f'step {step} is smaller than width * bytes per pixel = '
                         f'{width} * {pixel_bytes} for {encoding}')
    data = _as_uint8(msg.data)
    if data.size != step * height:
        raise ValueError(f'data has {data.size} bytes; expected step * height = '
                         f'{step} * {height} = {step * height}')
    arr = np.ndarray((height, width, channels), dtype=dtype, buffer=data,
                     strides=(step, pixel_bytes, dtype.itemsize))
    if channels == 1:
        arr = arr[:, :, 0]
    if not dtype.isnative:
        return arr.astype(dtype.newbyteorder('='))
    return arr.copy() if copy else arr


def _bridge_to_numpy(msg: Image) -> np.ndarray:
    bridge = _cv_bridge()
    if bridge is None:
        raise _unsupported(msg.encoding)
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
    if encoding not in _ENCODINGS:
        msg = _bridge_to_image(arr, encoding)
    else:
        msg = _build_image(_check_array(arr, encoding), encoding)
    if header is not None:
        msg.header = header
    return msg


def _check_array(arr, encoding: str) -> np.ndarray:
    base, channels = _ENCODINGS[encoding]
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
        raise _unsupported(encoding)
    try:
        return bridge.cv2_to_imgmsg(arr, encoding=encoding)
    except Exception as e:  # CvBridgeError and OpenCV errors alike
        raise ValueError(f'cv_bridge cannot build a {encoding!r} image: {e}') from e


def to_rgb(arr: np.ndarray, encoding: str) -> np.ndarray:
    """
    Convert an image array in ``encoding`` to HxWx3 uint8 RGB.

    rgb8 input is returned as is (possibly a strided view); other colour and mono encodings
    give a new contiguous array; 16-bit colour keeps the high byte.

    Raises
    ------
    ValueError
        for depth/float encodings (not a colour image) and unknown encodings.

    """
    if encoding not in _TO_RGB:
        if encoding in _ENCODINGS:
            raise ValueError(f'{encoding} is not a colour image; colour encodings: '
                             f'{", ".join(_TO_RGB)}')
        raise _unsupported(encoding)
    order, shift = _TO_RGB[encoding]
    base, channels = _ENCODINGS[encoding]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype != base or arr.ndim != 3 or arr.shape[2] != channels:
        raise ValueError(f'{encoding} needs an HxWx{channels} {np.dtype(base)} array; '
                         f'got shape {arr.shape} dtype {arr.dtype}')
    if encoding == 'rgb8':
        return arr
    rgb = np.empty(arr.shape[:2] + (3,), np.uint8)
    for out_channel, in_channel in enumerate(order):
        rgb[:, :, out_channel] = arr[:, :, in_channel] >> shift
    return rgb
