"""Tests for numpy -> tensor image preprocessing."""
import numpy as np
from PIL import Image
import pytest
import torch

from clip_ros.perception.image import crops, limit_size, preprocess, to_image_size, validate_rgb

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _reference(rgb: np.ndarray) -> np.ndarray:
    """Normalise without resizing, in numpy: [3, H, W]."""
    x = rgb.astype(np.float64) / 255.0
    return ((x - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize('arr,reason', [
    ([[1, 2, 3]], 'numpy array'),
    (np.zeros((4, 4, 3), np.float32), 'uint8'),
    (np.zeros((4, 4), np.uint8), 'dimensions'),
    (np.zeros((4, 4, 4), np.uint8), '3 channels'),
    (np.zeros((0, 4, 3), np.uint8), 'zero size'),
])
def test_validate_rgb_rejects(arr, reason):
    with pytest.raises(ValueError, match=reason):
        validate_rgb(arr)


def test_validate_rgb_returns_input(rgb):
    assert validate_rgb(rgb) is rgb


def test_preprocess_same_size_matches_numpy(rgb):
    square = rgb[:48, :48]
    out = preprocess(square, 48, MEAN, STD, 'cpu', torch.float32)
    assert out.shape == (1, 3, 48, 48) and out.dtype == torch.float32
    np.testing.assert_allclose(out[0].numpy(), _reference(square), atol=1e-5)


def test_preprocess_resize_matches_pil(rgb):
    out = preprocess(rgb, 32, MEAN, STD)
    pil = np.asarray(Image.fromarray(rgb).resize((32, 32), Image.BILINEAR))
    # torch antialiased bilinear follows PIL's filter; PIL rounds to uint8.
    np.testing.assert_allclose(out[0].numpy(), _reference(pil), atol=1.5 / 255 / min(STD))


def test_preprocess_constant_image_and_dtype():
    rgb = np.full((30, 50, 3), (255, 0, 128), np.uint8)
    out = preprocess(rgb, 16, MEAN, STD, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.shape == (1, 3, 16, 16)
    expected = _reference(rgb[:1, :1])[:, 0, 0]
    np.testing.assert_allclose(out[0, :, 0, 0].float().numpy(), expected, rtol=1e-2)


def test_preprocess_antialias_averages_checkerboard():
    board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    rgb = np.repeat(board[..., None], 3, axis=2)
    out = preprocess(rgb, 8, (0, 0, 0), (1, 1, 1))
    np.testing.assert_allclose(out.numpy(), 0.5, atol=0.02)


def test_preprocess_accepts_negative_strides(rgb):
    bgr_view = rgb[..., ::-1]
    out = preprocess(bgr_view, 32, MEAN, STD)
    assert torch.equal(out, preprocess(np.ascontiguousarray(bgr_view), 32, MEAN, STD))


def test_crops_cut_the_boxes():
    rgb = np.zeros((40, 80, 3), np.uint8)
    rgb[10:30, 20:60] = (255, 0, 0)
    rgb[0:5, 70:80] = (0, 0, 255)
    out = crops(rgb, [(20, 10, 60, 30), (70.0, 0.0, 80.0, 5.0)], 8, (0, 0, 0), (1, 1, 1),
                pad=0.0)
    assert out.shape == (2, 3, 8, 8)
    red, blue = np.zeros((3, 8, 8)), np.zeros((3, 8, 8))
    red[0], blue[2] = 1, 1
    np.testing.assert_allclose(out[0].numpy(), red, atol=1e-6)
    np.testing.assert_allclose(out[1].numpy(), blue, atol=1e-6)


def test_crops_whole_image_equals_preprocess(rgb):
    out = crops(rgb, np.array([[0, 0, 64, 48]]), 24, MEAN, STD, pad=0.5)
    assert torch.allclose(out, preprocess(rgb, 24, MEAN, STD), atol=1e-6)


def test_crops_padding_adds_context():
    rgb = np.zeros((100, 100, 3), np.uint8)
    rgb[40:60, 40:60] = 255
    out = crops(rgb, [(40, 40, 60, 60)], 40, (0, 0, 0), (1, 1, 1), pad=0.5)
    # Box grows by 10 px per side -> 40 px crop, white in the middle 20 px only.
    assert out[0, 0, 20, 20] == 1.0 and out[0, 0, 2, 2] == 0.0


def test_crops_clamp_boxes_outside_image(rgb):
    out = crops(rgb, [(-50, -50, -10, -10), (500, 500, 600, 600), (3, 3, 3, 3)], 4, MEAN, STD)
    assert out.shape == (3, 3, 4, 4) and torch.isfinite(out).all()
    np.testing.assert_allclose(out[0, :, 0, 0].numpy(), _reference(rgb[:1, :1])[:, 0, 0],
                               atol=1e-5)


@pytest.mark.parametrize('boxes', [[], np.zeros((0, 4))])
def test_crops_empty(rgb, boxes):
    out = crops(rgb, boxes, 16, MEAN, STD, dtype=torch.float16)
    assert out.shape == (0, 3, 16, 16) and out.dtype == torch.float16


@pytest.mark.parametrize('boxes,reason', [
    ([[1, 2, 3]], 'shape'),
    ([[0, 0, float('nan'), 4]], 'NaN'),
    ([[5, 0, 1, 4]], 'x_max >= x_min'),
])
def test_crops_reject_bad_boxes(rgb, boxes, reason):
    with pytest.raises(ValueError, match=reason):
        crops(rgb, boxes, 8, MEAN, STD)


def test_limit_size_untouched(rgb):
    out, scale = limit_size(rgb, 64)
    assert out is rgb and scale == 1.0
    assert limit_size(rgb, 0)[0] is rgb


def test_limit_size_downscales():
    rgb = np.full((300, 1000, 3), 200, np.uint8)
    out, scale = limit_size(rgb, 500)
    assert out.shape == (150, 500, 3) and out.dtype == np.uint8
    assert scale == 0.5 and (out == 200).all()


def test_limit_size_averages_and_rejects_negative():
    board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    out, scale = limit_size(np.repeat(board[..., None], 3, axis=2), 16)
    assert scale == 0.25 and np.abs(out.astype(int) - 128).max() <= 2
    with pytest.raises(ValueError, match='max_size'):
        limit_size(board[..., None].repeat(3, 2), -1)


def test_to_image_size():
    maps = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    out = to_image_size(maps, (8, 12))
    assert isinstance(out, np.ndarray) and out.shape == (2, 8, 12) and out.dtype == np.float32
    np.testing.assert_array_equal(to_image_size(maps, (4, 4)), maps)  # same size: unchanged
    # Bilinear with pixel centres aligned: upsampled, the corners keep the corner values.
    assert out[:, 0, 0].tolist() == maps[:, 0, 0].tolist()
    assert out[:, -1, -1].tolist() == maps[:, -1, -1].tolist()
    np.testing.assert_allclose(to_image_size(np.ones((1, 3, 3)), (7, 5)), 1.0, rtol=1e-6)
    t = to_image_size(torch.from_numpy(maps), (2, 2))
    assert isinstance(t, torch.Tensor) and t.shape == (2, 2, 2)
    with pytest.raises(ValueError, match='N, h, w'):
        to_image_size(np.zeros((4, 4)), (8, 8))
