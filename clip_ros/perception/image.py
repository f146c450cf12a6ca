"""Turn uint8 RGB numpy images into normalised model input tensors (perception.image_np: numpy)."""
import numpy as np
import torch
import torch.nn.functional as F

from clip_ros.perception.image_np import box_slices, check_boxes, validate_rgb

__all__ = ['crops', 'limit_size', 'preprocess', 'to_image_size', 'validate_rgb']


def _to_device(rgb: np.ndarray, device, as_float: bool = True) -> torch.Tensor:
    """Upload uint8 HxWx3 and return [1, 3, H, W] on ``device``: float 0..255, or uint8."""
    # Negative or odd strides (e.g. a BGR->RGB view) are not accepted by from_numpy.
    t = torch.from_numpy(np.ascontiguousarray(rgb))
    device = torch.device(device)
    if device.type == 'cuda':
        # Copy uint8 (4x less than float) from pinned memory asynchronously.
        t = t.pin_memory().to(device, non_blocking=True)
    else:
        t = t.to(device)
    t = t.permute(2, 0, 1).unsqueeze(0)
    return t.float() if as_float else t


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    """Resize float [N, C, h, w] to ``size`` (int or (H, W)) bilinearly with antialiasing."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode='bilinear', antialias=True, align_corners=False)


def _normalise(x: torch.Tensor, mean, std, dtype) -> torch.Tensor:
    """Map 0..255 float [N, 3, S, S] to (x / 255 - mean) / std in ``dtype``."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return ((x / 255.0 - mean) / std).to(dtype)


def preprocess(rgb: np.ndarray, size: int, mean, std, device='cpu',
               dtype=torch.float32) -> torch.Tensor:
    """
    Convert an RGB image into a normalised model input.

    The image is stretched to ``size`` x ``size`` (no crop), as CLIPSeg expects.

    Parameters
    ----------
    rgb
        HxWx3 uint8 RGB image.
    size
        output side in pixels.
    mean
        per-channel mean in 0..1 units.
    std
        per-channel standard deviation in 0..1 units.
    device
        torch device (or name) for the result.
    dtype
        dtype of the result.

    Returns
    -------
    Tensor [1, 3, size, size] on ``device``.

    """
    validate_rgb(rgb)
    return _normalise(_resize(_to_device(rgb, device), size), mean, std, dtype)


def crops(rgb: np.ndarray, boxes_xyxy, size: int, mean, std, device='cpu',
          dtype=torch.float32, pad: float = 0.1) -> torch.Tensor:
    """
    Cut boxes out of an image as a batch of normalised model inputs.

    Parameters
    ----------
    rgb
        HxWx3 uint8 RGB image.
    boxes_xyxy
        [K, 4] (x_min, y_min, x_max, y_max) in pixels; x_max/y_max are the
        right/bottom edges (exclusive).
    size
        output side in pixels; each crop is stretched to size x size.
    mean
        per-channel mean in 0..1 units.
    std
        per-channel standard deviation in 0..1 units.
    device
        torch device (or name) for the result.
    dtype
        dtype of the result.
    pad
        context added on each side, as a fraction of the box width/height.

    Returns
    -------
    Tensor [K, 3, size, size]; [0, 3, size, size] when there are no boxes.

    """
    validate_rgb(rgb)
    boxes = check_boxes(boxes_xyxy)
    if len(boxes) == 0:
        return torch.empty((0, 3, size, size), dtype=dtype, device=torch.device(device))
    # uint8 [1, 3, H, W], uploaded once for all boxes; only the crops become float.
    image = _to_device(rgb, device, as_float=False)
    height, width = rgb.shape[:2]
    batch = []
    for box in boxes:
        rows, cols = box_slices(box, pad, height, width)
        batch.append(_resize(image[:, :, rows, cols].float(), size))
    return _normalise(torch.cat(batch), mean, std, dtype)


def limit_size(rgb: np.ndarray, max_size: int) -> tuple[np.ndarray, float]:
    """
    Downscale an image so that max(H, W) <= ``max_size``.

    Parameters
    ----------
    rgb
        HxWx3 uint8 RGB image.
    max_size
        largest allowed side; 0 disables the limit.

    Returns
    -------
    (image, scale): scale maps original pixel coordinates to the returned image
    (x_small = x * scale); the input itself and 1.0 when it already fits.

    """
    validate_rgb(rgb)
    if max_size < 0:
        raise ValueError(f'max_size must be >= 0 (0 disables the limit); got {max_size}')
    height, width = rgb.shape[:2]
    if max_size == 0 or max(height, width) <= max_size:
        return rgb, 1.0
    scale = max_size / max(height, width)
    out_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    small = _resize(_to_device(rgb, 'cpu'), out_size)
    small = small[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8)
    return small.numpy(), scale


def to_image_size(maps, size):
    """
    Resize float maps [N, h, w] to ``size`` = (H, W) bilinearly.

    Accepts a numpy array (returns float32 numpy) or a tensor (returns a tensor on its device).
    """
    is_numpy = isinstance(maps, np.ndarray)
    x = torch.from_numpy(np.asarray(maps, dtype=np.float32)) if is_numpy else maps
    if x.ndim != 3:
        raise ValueError(f'expected maps of shape [N, h, w]; got {tuple(x.shape)}')
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x.float().unsqueeze(0), size=size, mode='bilinear',
                          align_corners=False)[0]
    return x.numpy() if is_numpy else x
