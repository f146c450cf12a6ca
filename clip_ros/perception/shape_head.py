"""
Shape head: which of a model's shapes (block, ball, cylinder, bowl) an object crop shows.

The bundled model's CLIP towers tell colours apart but do not compose colour with shape: a
purple cylinder answers "the purple block", most of all for colour x shape combinations it never
trained on. A small CNN looks at the crop alone. It is trained on crops of rendered objects with
their colour channels permuted and their gains jittered, so it learns shape and not colour, and
the held-out combinations are shapes it has seen in other colours. The grounding pipeline asks it
about every candidate of a phrase that names a shape (perception.grounding.Evidence.shape_prob);
the abstention rule refuses candidates it is sure are another shape. A head trained with a
background class (crops of table, floor and shadow with no object in them) also gives a low
probability of every shape to a candidate that is no object at all.

A model directory carries it as `shape.safetensors` with a config block 'clip_ros' "shape":
{"shapes": [...], "background": true, "width": 32, "input": 48, "pad": 1.25}. `train_shape`
writes both.
"""
from pathlib import Path

import numpy as np
import torch

from clip_ros.perception import shape_crops

WEIGHTS_FILE = 'shape.safetensors'


class ShapeNet(torch.nn.Module):
    """Five 3x3 conv layers, three poolings, global average, one linear layer."""

    def __init__(self, shapes: int, width: int = 32):
        super().__init__()
        w = width

        def block(a, b):
            return [torch.nn.Conv2d(a, b, 3, padding=1), torch.nn.BatchNorm2d(b),
                    torch.nn.ReLU()]
        self.body = torch.nn.Sequential(
            *block(3, w), *block(w, w), torch.nn.MaxPool2d(2),
            *block(w, 2 * w), torch.nn.MaxPool2d(2),
            *block(2 * w, 4 * w), torch.nn.MaxPool2d(2),
            *block(4 * w, 4 * w))
        self.head = torch.nn.Linear(4 * w, shapes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Return logits [B, shapes] for normalised pixels [B, 3, S, S]."""
        return self.head(self.body(pixels).mean(dim=(2, 3)))


def centre_pixels(crops: np.ndarray, pad: float, size: int) -> torch.Tensor:
    """Return normalised pixels [B, 3, size, size] of stored crops' centres at `pad`."""
    return torch.from_numpy(shape_crops.centre_pixels(crops, pad, size))


class ShapeHead:
    """A trained ShapeNet with its shapes and crop geometry."""

    def __init__(self, net: ShapeNet, shapes, pad: float = 1.25, size: int = 48,
                 device='cpu'):
        self.net = net.to(device).eval()
        self.shapes = tuple(shapes)
        # One output more than shapes: the last is the background class (no object).
        self.background = net.head.out_features == len(self.shapes) + 1
        if not self.background and net.head.out_features != len(self.shapes):
            raise ValueError(f'the net has {net.head.out_features} outputs for '
                             f'{len(self.shapes)} shapes')
        if not 0.0 < float(pad) <= shape_crops.STORE_PAD or int(size) < 1:
            raise ValueError(f'shape head pad must be in (0, {shape_crops.STORE_PAD}] and input '
                             f'at least 1, got pad {pad}, input {size}')
        self.pad, self.size, self.device = float(pad), int(size), device

    def shape_index(self, words: str):
        """Return the index of the shape a phrase (the model's words) names, or None."""
        return shape_crops.shape_index(self.shapes, words)

    def probabilities(self, rgb: np.ndarray, boxes) -> np.ndarray:
        """
        Return the softmax [K, outputs] of the crops around `boxes`.

        Column i is shapes[i]; a head with a background class has it as the last column.
        """
        if not len(boxes):
            return np.zeros((0, self.net.head.out_features), np.float32)
        return self.softmax(shape_crops.box_pixels(rgb, boxes, self.pad, self.size))

    def softmax(self, pixels: np.ndarray) -> np.ndarray:
        """Return the softmax [K, outputs] for the head's input pixels [K, 3, S, S]."""
        with torch.no_grad():
            logits = self.net(torch.from_numpy(pixels).to(self.device))
        return torch.softmax(logits.float(), dim=-1).cpu().numpy()

    def config(self) -> dict:
        """Return the config block that describes this head."""
        return {'shapes': list(self.shapes), 'background': self.background,
                'width': self.net.head.in_features // 4, 'input': self.size, 'pad': self.pad}

    def save(self, directory) -> Path:
        """Write the weights to directory/WEIGHTS_FILE and return the path."""
        from safetensors.torch import save_file
        path = Path(directory) / WEIGHTS_FILE
        save_file({k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()},
                  str(path))
        path.chmod(0o644)  # shipped with the package: readable by every user
        return path


def load_shape_head(directory, block, device='cpu'):
    """Return the ShapeHead a model directory's config block describes, or None without one."""
    if not block:
        return None
    from safetensors.torch import load_file
    try:
        shapes = [str(s) for s in block['shapes']]
        background = bool(block.get('background', False))
        net = ShapeNet(len(shapes) + background, int(block.get('width', 32)))
        net.load_state_dict(load_file(str(Path(directory) / WEIGHTS_FILE)))
        return ShapeHead(net, shapes, float(block.get('pad', 1.25)),
                         int(block.get('input', 48)), device)
    except (KeyError, TypeError, ValueError, RuntimeError, OSError) as e:
        raise ValueError(f"shape head: {e} (config 'shape' {block!r}, weights "
                         f"'{Path(directory) / WEIGHTS_FILE}')") from e
