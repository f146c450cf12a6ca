"""
Compressed camera frames: JPEG/PNG colour images and image_transport's compressedDepth.

The byte layouts are image_transport's: a CompressedImage `format` such as 'jpeg',
'bgr8; jpeg compressed bgr8' or 'png'; compressedDepth as '16UC1; compressedDepth png' (mono16
alike) or '32FC1; compressedDepth png' with a 12-byte header (int32 compression format, float32
depth quantisation a, b) before a 16-bit PNG. 16UC1 depth is stored as is; 32FC1 depth in metres
as inverse depth, v = a / z + b (0 = no depth; the decoder takes a and b from the header). Every
problem raises ValueError with the reason, and a frame's size is checked from its header before
any pixel is decoded.
"""
import io
import struct

import numpy as np
from PIL import Image, UnidentifiedImageError

KINDS = {'jpeg': ('jpeg', 'jpg'), 'png': ('png',)}
DEPTH_HEADER = struct.Struct('<iff')  # compression format (0 = PNG, 1 = RVL), quant a, quant b
DEPTH_PNG, DEPTH_RVL = 0, 1
# compressed_depth_image_transport's defaults (depth_quantization 100, depth_max 10 m):
# a = q (q + 1), b = 1 - a / depth_max, so 10 m maps to 1 and 0.31 m to the top of 16 bits.
DEPTH_QUANT_A = 100.0 * 101.0
DEPTH_QUANT_B = 1.0 - DEPTH_QUANT_A / 10.0


def colour_kind(fmt: str) -> str:
    """Return 'jpeg' or 'png' for a CompressedImage format string; raise ValueError."""
    text = str(fmt).lower()
    if 'compresseddepth' in text:
        raise ValueError(f'format {fmt!r} is a compressedDepth image, not a colour image')
    for kind, words in KINDS.items():
        if any(word in text for word in words):
            return kind
    raise ValueError(f"compressed format {fmt!r} is neither JPEG nor PNG (e.g. 'jpeg', "
                     f"'bgr8; jpeg compressed bgr8', 'png')")


def _open(data: bytes, kind: str, max_size: int) -> Image.Image:
    if not data:
        raise ValueError('empty compressed data')
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as e:  # a header claiming more pixels than PIL allows
        raise ValueError(f'compressed image exceeds max_image_size {max_size}: {e}') from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f'{kind} data cannot be read ({len(data)} bytes): {e}') from e
    if (image.format or '').lower() != kind:
        raise ValueError(f'the format says {kind} but the data is {image.format or "unknown"}')
    width, height = image.size
    if min(width, height) < 1:
        raise ValueError(f'empty image ({width}x{height})')
    if max(width, height) > max_size:
        # Checked from the header, so a huge frame is never decoded.
        raise ValueError(f'compressed image {width}x{height} exceeds max_image_size {max_size}')
    return image


def _load(image: Image.Image, kind: str) -> None:
    try:
        image.load()  # truncated or corrupt data fails here, not later in the model
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f'{kind} data is corrupt or truncated: {e}') from e


def decode_colour(data, fmt: str, max_size: int, device='cpu') -> np.ndarray:
    """
    Decode a compressed colour frame to RGB uint8 [H, W, 3].

    JPEG goes through torchvision's decoder on the GPU when `device` is CUDA, else PIL on the
    CPU; PNG always through PIL.
    """
    kind, data = colour_kind(fmt), bytes(data)
    image = _open(data, kind, max_size)
    if kind == 'jpeg' and str(device).startswith('cuda'):
        import torch  # only with a CUDA model, which has loaded torch already
        from torchvision.io import decode_jpeg, ImageReadMode
        try:
            pixels = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                 mode=ImageReadMode.RGB, device=device)
        except RuntimeError as e:
            raise ValueError(f'jpeg data is corrupt or truncated: {e}') from e
        return pixels.permute(1, 2, 0).cpu().numpy()
    _load(image, kind)
    if image.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'F'):
        # 16-bit grey (a depth or IR frame): converting would clip it, as the raw path's mono16
        # is refused too.
        raise ValueError(f'{kind} holds {image.mode} pixels (16-bit or float grey), not a '
                         f'colour image')
    return np.asarray(image.convert('RGB'))


def encode_colour(rgb: np.ndarray, kind: str = 'jpeg', quality: int = 90) -> bytes:
    """Return an RGB uint8 frame as JPEG or PNG bytes (the CompressedImage data)."""
    if kind not in KINDS:
        raise ValueError(f'kind must be one of {sorted(KINDS)}, got {kind!r}')
    out = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(out, format=kind.upper(), quality=quality)
    return out.getvalue()


def depth_encoding(fmt: str) -> str:
    """Return '16UC1' or '32FC1' of a compressedDepth format string; raise ValueError."""
    text = str(fmt)
    if 'compressedDepth' not in text:
        raise ValueError(f"format {fmt!r} is not compressedDepth (e.g. '16UC1; compressedDepth "
                         f"png')")
    encoding = text.split(';')[0].strip()
    # The encoder writes the image's own encoding: a mono16 image is 16-bit depth as well.
    encoding = '16UC1' if encoding == 'mono16' else encoding
    if encoding not in ('16UC1', '32FC1'):
        raise ValueError(f'compressedDepth encoding {encoding!r} is not 16UC1 or 32FC1')
    return encoding


def decode_depth(data, fmt: str, max_size: int) -> tuple:
    """Return (depth [H, W] uint16 for 16UC1 or float32 metres for 32FC1, its encoding)."""
    encoding, data = depth_encoding(fmt), bytes(data)
    if 'rvl' in str(fmt).lower().split(';')[-1].split():
        # ROS 2's codec names RVL in the format string ('16UC1; compressedDepth rvl'); its
        # header's format field stays 0 either way.
        raise ValueError('compressedDepth RVL is not supported; publish with png')
    if len(data) <= DEPTH_HEADER.size:
        raise ValueError(f'compressedDepth data of {len(data)} bytes has no image after its '
                         f'{DEPTH_HEADER.size}-byte header')
    compression, quant_a, quant_b = DEPTH_HEADER.unpack_from(data)
    if compression != DEPTH_PNG:
        name = 'RVL' if compression == DEPTH_RVL else f'format {compression}'
        raise ValueError(f'compressedDepth {name} is not supported; publish with png')
    image = _open(data[DEPTH_HEADER.size:], 'png', max_size)
    _load(image, 'png')
    values = np.asarray(image, dtype=np.uint16)
    if values.ndim != 2:
        raise ValueError(f'compressedDepth png must be one 16-bit channel, got {image.mode}')
    if encoding == '16UC1':
        return values, encoding
    with np.errstate(divide='ignore'):
        depth = quant_a / (values.astype(np.float32) - np.float32(quant_b))
    depth[values == 0] = np.nan
    return depth.astype(np.float32), encoding


def encode_depth(depth: np.ndarray, encoding: str) -> bytes:
    """Return compressedDepth bytes (header + 16-bit PNG) of 16UC1 or 32FC1 (metres) depth."""
    depth = np.asarray(depth)
    if encoding == '16UC1':
        values, quant_b = depth.astype(np.uint16), 0.0
    elif encoding == '32FC1':
        quant_b = DEPTH_QUANT_B
        valid = np.isfinite(depth) & (depth > 0)
        inverse = DEPTH_QUANT_A / np.where(valid, depth, 1.0) + quant_b
        values = np.where(valid, np.clip(inverse, 1, 65535), 0).round().astype(np.uint16)
    else:
        raise ValueError(f"encoding must be '16UC1' or '32FC1', got {encoding!r}")
    out = io.BytesIO()
    Image.fromarray(values).save(out, format='PNG')
    return DEPTH_HEADER.pack(DEPTH_PNG, DEPTH_QUANT_A, quant_b) + out.getvalue()
