"""Train a ShapeHead on object crops whose colours are scrambled, so it learns shape only."""
import numpy as np
import torch
import torch.nn.functional as F

from clip_ros.perception.shape_crops import MEAN, STD, STORE_PAD, STORE_SIZE
from clip_ros.perception.shape_head import ShapeHead, ShapeNet


def augment(crops: np.ndarray, size: int, rng: np.random.Generator) -> torch.Tensor:
    """
    Return normalised training pixels [B, 3, size, size] from stored uint8 crops [B, S, S, 3].

    Each crop: a random pad (1.05-1.5, a detection's box is looser or tighter than the truth)
    and shift, its colour channels permuted and their gains jittered, sometimes partly grey,
    sometimes mirrored.
    """
    pixels = torch.as_tensor(crops).permute(0, 3, 1, 2).float() / 255
    out = torch.empty(len(pixels), 3, size, size)
    for i in range(len(pixels)):
        side = int(round(STORE_SIZE * rng.uniform(1.05, 1.5) / STORE_PAD))
        x, y = (int(np.clip(STORE_SIZE / 2 + rng.uniform(-0.1, 0.1) * side - side / 2,
                            0, STORE_SIZE - side)) for _ in range(2))
        crop = pixels[i:i + 1, :, y:y + side, x:x + side][:, torch.as_tensor(rng.permutation(3))]
        crop = crop * torch.as_tensor(rng.uniform(0.6, 1.4, (1, 3, 1, 1)), dtype=torch.float32)
        crop = crop + float(rng.uniform(-0.1, 0.1))
        if rng.random() < 0.3:
            grey = float(rng.uniform(0, 1))
            crop = grey * crop.mean(dim=1, keepdim=True) + (1 - grey) * crop
        if rng.random() < 0.5:
            crop = crop.flip(3)
        out[i] = F.interpolate(crop, size=(size, size), mode='bilinear', align_corners=False)[0]
    return (out.clamp(0, 1) - MEAN) / STD


def train_shape_head(crops: np.ndarray, labels: np.ndarray, shapes, steps: int = 1500,
                     seed: int = 0, width: int = 32, size: int = 48, batch: int = 64,
                     log=None, background: bool = False) -> ShapeHead:
    """
    Train a ShapeNet on stored crops [N, S, S, 3] with shape indices [N]; return the head.

    With `background`, label len(shapes) marks crops with no object (the extra class).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = ShapeNet(len(shapes) + bool(background), width)
    optimiser = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 3e-3, total_steps=steps)
    labels = torch.as_tensor(labels)
    for step in range(steps):
        pick = rng.integers(0, len(crops), batch)
        loss = F.cross_entropy(net(augment(crops[pick], size, rng)), labels[pick],
                               label_smoothing=0.05)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if log and (step % 250 == 0 or step == steps - 1):
            log(step, float(loss.detach()))
    return ShapeHead(net.eval(), shapes, size=size)
