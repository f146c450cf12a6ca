"""The torch-free image preparation (Triton clients) equals perception.image's torch path."""
import numpy as np
import pytest

from clip_ros.perception import image, image_np

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
# float32 rounding of the resize sums, in normalised units (pixels span about -2..2).
TOL = 2e-4
SIZES = [(480, 640), (240, 320), (100, 90), (352, 352), (720, 1280), (5, 700), (1, 1)]


def _image(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(height * 7 + width).integers(0, 256, (height, width, 3),
                                                              dtype=np.uint8)


@pytest.mark.parametrize('height,width', SIZES)
def test_preprocess_equals_torch(height, width):
    rgb = _image(height, width)
    ours = image_np.preprocess(rgb, 352, MEAN, STD)
    assert ours.shape == (1, 3, 352, 352) and ours.dtype == np.float32
    assert np.abs(ours - image.preprocess(rgb, 352, MEAN, STD).numpy()).max() <= TOL


@pytest.mark.parametrize('height,width', SIZES)
def test_crops_equal_torch(height, width):
    rgb = _image(height, width)
    boxes = [(0, 0, width, height), (width / 2, height / 2, width / 2, height / 2),
             (width * 0.1, height * 0.2, width * 0.6, height * 0.9)]
    ours = image_np.crops(rgb, boxes, 224, MEAN, STD, pad=0.1)
    assert ours.shape == (3, 3, 224, 224) and ours.dtype == np.float32
    assert np.abs(ours - image.crops(rgb, boxes, 224, MEAN, STD, pad=0.1).numpy()).max() <= TOL
    assert image_np.crops(rgb, [], 224, MEAN, STD).shape == (0, 3, 224, 224)


@pytest.mark.parametrize('height,width', SIZES)
def test_maps_resize_equals_torch(height, width):
    maps = np.random.default_rng(1).random((3, 88, 88)).astype(np.float32)
    ours = image_np.to_image_size(maps, (height, width))
    assert ours.shape == (3, height, width) and ours.dtype == np.float32
    assert np.abs(ours - image.to_image_size(maps, (height, width))).max() <= 1e-5


def test_resize_keeps_a_constant_and_averages_a_checkerboard():
    flat = np.full((97, 131, 3), 77.0, np.float32)
    assert np.allclose(image_np.resize(flat, 40, True), 77.0, atol=1e-4)
    board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.float32)[..., None]
    small = image_np.resize(board, 16, True)
    assert np.abs(small - 127.5).max() < 1.0  # antialias averages; plain bilinear would alias


def test_sigmoid_matches_the_logistic_function_without_overflow():
    x = np.array([-1000.0, -5.0, 0.0, 3.0, 1000.0], np.float32)
    with np.errstate(all='raise'):
        got = image_np.sigmoid(x)
    assert np.allclose(got, [0.0, 0.0066929, 0.5, 0.9525741, 1.0], atol=1e-6)


@pytest.mark.parametrize('call', [
    lambda: image_np.preprocess(np.zeros((4, 4), np.uint8), 8, MEAN, STD),
    lambda: image_np.crops(np.zeros((4, 4, 3), np.uint8), [(3, 0, 1, 2)], 8, MEAN, STD),
    lambda: image_np.to_image_size(np.zeros((4, 4), np.float32), (8, 8)),
])
def test_bad_input_is_refused(call):
    with pytest.raises(ValueError):
        call()
