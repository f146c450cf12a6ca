"""
Pixels of sensor_msgs/Image-shaped messages as numpy arrays, and colour conversion (no ROS).

Works on anything with the Image fields (height, width, step, encoding, is_bigendian, data):
rclpy messages in the nodes, decoded rosbag2 records in the bag tools.
"""
import numpy as np

# encoding: (numpy dtype, channels); single-channel images map to HxW arrays.
ENCODINGS = {
    'rgb8': (np.uint8, 3), 'bgr8': (np.uint8, 3), 'rgba8': (np.uint8, 4),
    'bgra8': (np.uint8, 4), 'mono8': (np.uint8, 1), 'mono16': (np.uint16, 1),
    'rgb16': (np.uint16, 3), 'bgr16': (np.uint16, 3), 'rgba16': (np.uint16, 4),
    'bgra16': (np.uint16, 4), '8UC1': (np.uint8, 1), '8UC3': (np.uint8, 3),
    '8UC4': (np.uint8, 4), '16UC1': (np.uint16, 1), '16SC1': (np.int16, 1),
    '32SC1': (np.int32, 1), '32FC1': (np.float32, 1), '64FC1': (np.float64, 1),
}
SUPPORTED_ENCODINGS = tuple(ENCODINGS)

# encoding: (channel order to reach RGB, right shift to reach 8 bits)
TO_RGB = {
    'rgb8': ((0, 1, 2), 0), 'bgr8': ((2, 1, 0), 0), 'rgba8': ((0, 1, 2), 0),
    'bgra8': ((2, 1, 0), 0), 'rgb16': ((0, 1, 2), 8), 'bgr16': ((2, 1, 0), 8),
    'rgba16': ((0, 1, 2), 8), 'bgra16': ((2, 1, 0), 8), 'mono8': ((0, 0, 0), 0),
    '8UC1': ((0, 0, 0), 0),
}


def unsupported(encoding: str) -> ValueError:
    """Return the error for an encoding this module cannot read."""
    return ValueError(f'unsupported encoding {encoding!r}; supported: '
                      f'{", ".join(SUPPORTED_ENCODINGS)} (others need cv_bridge)')


def as_uint8(data) -> np.ndarray:
    """View message bytes as uint8 without copying (array.array, bytes, memoryview)."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8)  # a plain list of ints: copy unavoidable


def message_pixels(msg, copy: bool = False) -> np.ndarray:
    """
    Return the pixels of ``msg`` as HxW (one channel) or HxWxC numpy array.

    Without ``copy`` the result is a view of ``msg.data`` (row padding skipped with strides,
    so it may be non-contiguous) and writing to it changes the message; while it lives,
    ``msg.data`` (an array.array) cannot be resized in place, only replaced. Big-endian
    multi-byte data is byte-swapped into a native-order copy.

    Raises
    ------
    ValueError
        unknown encoding, zero size, ``step`` too small, or
        ``data`` not exactly ``step * height`` bytes.

    """
    encoding = msg.encoding
    if encoding not in ENCODINGS:
        raise unsupported(encoding)
    base, channels = ENCODINGS[encoding]
    height, width, step = msg.height, msg.width, msg.step
    dtype = np.dtype(base).newbyteorder('>' if msg.is_bigendian else '<')
    pixel_bytes = dtype.itemsize * channels
    if height == 0 or width == 0:
        raise ValueError(f'image has zero size: {width}x{height} (width x height)')
    if step < width * pixel_bytes:
        raise ValueError(f'step {step} is smaller than width * bytes per pixel = '
                         f'{width} * {pixel_bytes} for {encoding}')
    data = as_uint8(msg.data)
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
    if encoding not in TO_RGB:
        if encoding in ENCODINGS:
            raise ValueError(f'{encoding} is not a colour image; colour encodings: '
                             f'{", ".join(TO_RGB)}')
        raise unsupported(encoding)
    order, shift = TO_RGB[encoding]
    base, channels = ENCODINGS[encoding]
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
