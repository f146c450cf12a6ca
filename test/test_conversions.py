"""Tests for sensor_msgs/Image <-> numpy conversion."""
import array
import sys
import types

import numpy as np
import pytest
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from clip_ros.nodes.conversions import (
    image_to_numpy, numpy_to_image, SUPPORTED_ENCODINGS, to_rgb)

DTYPES = {
    'rgb8': (np.uint8, 3), 'bgr8': (np.uint8, 3), 'rgba8': (np.uint8, 4),
    'bgra8': (np.uint8, 4), 'mono8': (np.uint8, 1), 'mono16': (np.uint16, 1),
    'rgb16': (np.uint16, 3), 'bgr16': (np.uint16, 3), 'rgba16': (np.uint16, 4),
    'bgra16': (np.uint16, 4), '8UC1': (np.uint8, 1), '8UC3': (np.uint8, 3),
    '8UC4': (np.uint8, 4), '16UC1': (np.uint16, 1), '16SC1': (np.int16, 1),
    '32SC1': (np.int32, 1), '32FC1': (np.float32, 1), '64FC1': (np.float64, 1),
}


def _random(encoding, height=5, width=7, seed=0):
    dtype, channels = DTYPES[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == 'f':
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def _padded_msg(arr, encoding, pad=3, big_endian=False):
    """Build a message by hand with ``pad`` junk bytes after every row."""
    order = '>' if big_endian else '<'
    rows = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder(order))
    rows = rows.reshape(arr.shape[0], -1).view(np.uint8)
    junk = np.full((arr.shape[0], pad), 0xAB, np.uint8)
    data = np.concatenate([rows, junk], axis=1)
    msg = Image(height=arr.shape[0], width=arr.shape[1], encoding=encoding,
                is_bigendian=int(big_endian), step=data.shape[1])
    msg.data = array.array('B', data.tobytes())
    return msg


def test_supported_encodings_listed():
    assert set(SUPPORTED_ENCODINGS) == set(DTYPES)


@pytest.mark.parametrize('encoding', sorted(DTYPES))
def test_round_trip(encoding):
    arr = _random(encoding)
    header = Header(frame_id='camera')
    msg = numpy_to_image(arr, encoding, header)
    pixel_bytes = arr.dtype.itemsize * DTYPES[encoding][1]
    assert (msg.height, msg.width, msg.step) == (5, 7, 7 * pixel_bytes)
    assert msg.is_bigendian == 0 and msg.encoding == encoding
    assert msg.header.frame_id == 'camera'
    out = image_to_numpy(msg)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize('encoding', sorted(DTYPES))
@pytest.mark.parametrize('big_endian', [False, True])
def test_padded_rows(encoding, big_endian):
    arr = _random(encoding, seed=1)
    msg = _padded_msg(arr, encoding, pad=5, big_endian=big_endian)
    out = image_to_numpy(msg)
    assert out.dtype.isnative and out.dtype == arr.dtype
    np.testing.assert_array_equal(out, arr)


def test_zero_copy_view_and_copy_option():
    arr = _random('rgb8')
    msg = _padded_msg(arr, 'rgb8', pad=4)
    view = image_to_numpy(msg)
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8))
    assert not np.shares_memory(image_to_numpy(msg, copy=True),
                                np.frombuffer(msg.data, np.uint8))
    view[0, 0] = (1, 2, 3)
    assert list(msg.data[:3]) == [1, 2, 3]


def test_zero_copy_for_deserialised_message():
    from rclpy.serialization import deserialize_message, serialize_message
    sent = numpy_to_image(_random('32FC1'), '32FC1')
    msg = deserialize_message(serialize_message(sent), Image)
    out = image_to_numpy(msg)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))
    np.testing.assert_array_equal(out, image_to_numpy(sent))


def test_big_endian_values():
    msg = Image(height=1, width=2, encoding='16UC1', is_bigendian=1, step=4,
                data=[0x01, 0x02, 0xFF, 0x00])
    np.testing.assert_array_equal(image_to_numpy(msg), [[0x0102, 0xFF00]])
    value = np.array([[1.5, -2.25]], np.float32)
    msg = Image(height=1, width=2, encoding='32FC1', is_bigendian=1, step=8,
                data=list(value.astype('>f4').tobytes()))
    np.testing.assert_array_equal(image_to_numpy(msg), value)


def test_accepts_bytes_like_data():
    msg = Image(height=1, width=2, encoding='mono8', step=2)
    msg._data = b'\x07\x09'  # data as bytes, bypassing the setter
    np.testing.assert_array_equal(image_to_numpy(msg), [[7, 9]])


def test_single_channel_accepts_hxwx1():
    arr = _random('mono16')
    msg = numpy_to_image(arr[:, :, None], 'mono16')
    np.testing.assert_array_equal(image_to_numpy(msg), arr)


def test_non_contiguous_and_big_endian_input():
    arr = _random('rgb8', 6, 8)[::2, ::-1]
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(arr, 'rgb8')), arr)
    depth = _random('16UC1').astype('>u2')
    msg = numpy_to_image(depth, '16UC1')
    assert msg.is_bigendian == 0
    np.testing.assert_array_equal(image_to_numpy(msg), depth)


def _msg(**kwargs):
    fields = {'height': 2, 'width': 3, 'encoding': 'rgb8', 'step': 9, 'data': [0] * 18}
    fields.update(kwargs)
    return Image(**fields)


@pytest.mark.parametrize('msg,reason', [
    (_msg(width=0, step=0, data=[]), 'zero size'),
    (_msg(height=0, data=[]), 'zero size'),
    (_msg(data=[0] * 17), 'expected step \\* height'),
    (_msg(data=[0] * 19), 'expected step \\* height'),
    (_msg(step=8, data=[0] * 16), 'smaller than width'),
    (_msg(encoding='yuv422'), 'unsupported encoding .yuv422.; supported: rgb8'),
    (_msg(encoding=''), 'unsupported encoding'),
])
def test_image_to_numpy_rejects(msg, reason, monkeypatch):
    monkeypatch.setitem(sys.modules, 'cv_bridge', None)  # as if not installed
    with pytest.raises(ValueError, match=reason):
        image_to_numpy(msg)


@pytest.mark.parametrize('arr,encoding,reason', [
    (np.zeros((2, 3, 3), np.float32), 'rgb8', 'needs dtype uint8'),
    (np.zeros((2, 3), np.uint8), 'rgb8', 'HxWx3'),
    (np.zeros((2, 3, 4), np.uint8), 'rgb8', 'HxWx3'),
    (np.zeros((2, 3, 3), np.uint16), 'mono16', 'HxW array'),
    (np.zeros((0, 3, 3), np.uint8), 'rgb8', 'zero size'),
    ([[1, 2]], 'mono8', 'numpy array'),
    (np.zeros((2, 3), np.uint8), 'nv12', 'unsupported encoding'),
])
def test_numpy_to_image_rejects(arr, encoding, reason, monkeypatch):
    monkeypatch.setitem(sys.modules, 'cv_bridge', None)
    with pytest.raises(ValueError, match=reason):
        numpy_to_image(arr, encoding)


def test_cv_bridge_fallback(monkeypatch):
    class FakeBridge:

        def imgmsg_to_cv2(self, msg, desired_encoding):
            if msg.encoding == 'bad':
                raise RuntimeError('boom')
            return np.frombuffer(msg.data, np.uint8).reshape(msg.height, -1)

        def cv2_to_imgmsg(self, arr, encoding):
            return Image(height=arr.shape[0], width=arr.shape[1] // 2, encoding=encoding,
                         step=arr.shape[1], data=arr.tobytes())

    monkeypatch.setitem(sys.modules, 'cv_bridge', types.SimpleNamespace(CvBridge=FakeBridge))
    arr = np.arange(8, dtype=np.uint8).reshape(2, 4)
    msg = numpy_to_image(arr, 'yuv422', Header(frame_id='f'))
    assert msg.encoding == 'yuv422' and msg.header.frame_id == 'f'
    np.testing.assert_array_equal(image_to_numpy(msg), arr)
    msg.encoding = 'bad'
    with pytest.raises(ValueError, match='cv_bridge cannot convert') as info:
        image_to_numpy(msg)
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.parametrize('encoding,order,shift', [
    ('rgb8', [0, 1, 2], 0), ('bgr8', [2, 1, 0], 0), ('rgba8', [0, 1, 2], 0),
    ('bgra8', [2, 1, 0], 0), ('rgb16', [0, 1, 2], 8), ('bgra16', [2, 1, 0], 8),
    ('mono8', [0, 0, 0], 0), ('8UC1', [0, 0, 0], 0),
])
def test_to_rgb(encoding, order, shift):
    arr = _random(encoding)
    rgb = to_rgb(arr, encoding)
    chans = arr[:, :, None] if arr.ndim == 2 else arr
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, (chans[:, :, order] >> shift).astype(np.uint8))
    if encoding != 'rgb8':
        assert rgb.flags.c_contiguous


def test_to_rgb_from_message():
    bgr = _random('bgr8')
    rgb = to_rgb(image_to_numpy(_padded_msg(bgr, 'bgr8')), 'bgr8')
    np.testing.assert_array_equal(rgb, bgr[:, :, ::-1])


@pytest.mark.parametrize('encoding,arr,reason', [
    ('mono16', np.zeros((2, 2), np.uint16), 'not a colour image'),
    ('16UC1', np.zeros((2, 2), np.uint16), 'not a colour image'),
    ('32FC1', np.zeros((2, 2), np.float32), 'not a colour image'),
    ('yuv422', np.zeros((2, 2), np.uint8), 'unsupported encoding'),
    ('rgb8', np.zeros((2, 2, 4), np.uint8), 'HxWx3 uint8'),
    ('bgr8', np.zeros((2, 2, 3), np.float32), 'HxWx3 uint8'),
])
def test_to_rgb_rejects(encoding, arr, reason):
    with pytest.raises(ValueError, match=reason):
        to_rgb(arr, encoding)
