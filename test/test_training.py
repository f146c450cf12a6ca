"""Training-loop tests: short seeded runs lower the loss, repeat exactly and write curves."""
import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from clip_ros.learning.lora import lora_parameters
from clip_ros.learning.losses import create_loss
from clip_ros.learning.training import (
    as_batch, JointStep, lora_finetune, make_loader, retrieval_accuracy, train, TrainConfig)
from clip_ros.perception.loading import load_clip
from clip_ros.perception.tokenizer import tokenize
from clip_ros.sim.synthetic import COLOURS

NAMES = ('red', 'green', 'blue', 'yellow')
SIZE = 16


class TinyClip(nn.Module):
    """A CLIP-like toy: a conv image tower, caption-id embeddings and a dot-product mask head."""

    def __init__(self, classes: int = len(NAMES), dim: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16, dim)
        self.pixels = nn.Conv2d(16, dim, 1)
        self.text = nn.Embedding(classes, dim)

    def encode_image(self, images):
        return self.head(self.stem(images).mean(dim=(2, 3)))

    def encode_text(self, texts):
        return self.text(texts)

    def segment(self, images, texts):
        # [B, D, H, W] pixel embeddings against each pair's caption [B, D] -> [B, H, W]
        return torch.einsum('bdhw,bd->bhw', self.pixels(self.stem(images)), self.text(texts))


def squares(count: int, seed: int) -> TensorDataset:
    """Noisy images with one square of the caption's colour; the square is the mask."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % len(NAMES)
    images = torch.randn(count, 3, SIZE, SIZE, generator=gen) * 0.3
    masks = torch.zeros(count, SIZE, SIZE)
    for i, label in enumerate(labels.tolist()):
        x, y = torch.randint(0, SIZE - 6, (2,), generator=gen).tolist()
        colour = torch.tensor(COLOURS[NAMES[label]]) / 127.5 - 1
        images[i, :, y:y + 6, x:x + 6] += colour[:, None, None]
        masks[i, y:y + 6, x:x + 6] = 1
    # Captions are class ids, so a batch repeats captions: they count as positives.
    return TensorDataset(images, labels, labels, masks)


def run(tmp_path, name: str, loss: str = 'clip', step_fn=None, **overrides):
    torch.manual_seed(0)
    settings = {'seed': 3, 'batch_size': 16, 'epochs': 3, 'lr': 1e-2, 'progress': False,
                'out_dir': str(tmp_path / name)}
    settings.update(overrides)
    return train(TinyClip(), create_loss(loss), squares(64, 0), squares(32, 1),
                 TrainConfig(**settings), step_fn=step_fn)


def epoch_losses(history):
    return [e['train_loss'] for e in history['epochs']]


def test_contrastive_run_lowers_loss_and_repeats(tmp_path):
    history = run(tmp_path, 'a')
    assert len(history['steps']) == 3 * 4
    losses = epoch_losses(history)
    assert losses[-1] < 0.8 * losses[0]
    assert history['epochs'][-1]['val_accuracy'] > 0.5  # chance: 0.25 (4 captions)
    assert history['epochs'][-1]['val_loss'] < history['epochs'][0]['val_loss']
    temperatures = [s['temperature'] for s in history['steps']]
    assert temperatures[0] == pytest.approx(0.07) and len(set(temperatures)) > 1
    again = run(tmp_path, 'b')
    assert again['steps'] == history['steps'] and again['epochs'] == history['epochs']
    other = run(tmp_path, 'c', seed=4)
    assert other['steps'] != history['steps']
    png = tmp_path / 'a' / 'curves.png'
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    saved = json.loads((tmp_path / 'a' / 'history.json').read_text())
    assert saved['steps'] == history['steps'] and saved['config']['batch_size'] == 16


def test_triplet_and_max_steps(tmp_path):
    history = run(tmp_path, 't', loss='triplet', max_steps=10, batch_size=8)
    assert len(history['steps']) == 10
    assert [e['steps'] for e in history['epochs']] == [8, 2]
    assert history['steps'][-1]['loss'] < history['steps'][0]['loss']
    assert 'temperature' not in history['steps'][0]


def test_joint_training_logs_gradient_cosine(tmp_path):
    step = JointStep()
    history = run(tmp_path, 'j', step_fn=step, log_every=2)
    steps = history['steps']
    logged = [s for s in steps if 'grad_cosine' in s]
    assert [s['step'] for s in logged] == list(range(1, len(steps) + 1, 2))
    assert all(-1.0 <= s['grad_cosine'] <= 1.0 for s in logged)
    assert steps[-1]['loss_segmentation'] < steps[0]['loss_segmentation']
    assert steps[-1]['loss_contrastive'] < steps[0]['loss_contrastive']
    # The uncertainty weights are trained along with the model.
    assert steps[-1]['weight_contrastive'] != 1.0
    assert step.weighting.log_vars.detach().abs().sum() > 0
    assert (tmp_path / 'j' / 'curves.png').stat().st_size > 0
    with pytest.raises(ValueError, match='masks'):
        step(TinyClip(), create_loss('clip'), {'images': None, 'texts': None})


def test_lora_finetune_changes_only_adapters(tmp_path):
    clip = load_clip('tiny', 'random', device='cpu')
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(8, 3, clip.image_size, clip.image_size, generator=gen)
    captions = [f'a {name} block' for name in NAMES] * 2
    data = TensorDataset(pixels, tokenize(captions), torch.arange(8) % 4)
    before = {n: p.detach().clone() for n, p in clip.model.named_parameters()}
    clip.encode_text(['a red block'])
    config = TrainConfig(seed=0, batch_size=8, epochs=4, lr=5e-3, progress=False,
                         out_dir=str(tmp_path / 'lora'))
    history = lora_finetune(clip, data, data, config, r=2, alpha=4.0)
    assert history['steps'][-1]['loss'] < history['steps'][0]['loss']
    assert history['lora']['trainable'] == sum(p.numel() for p in lora_parameters(clip.model))
    assert len(history['lora']['layers']) == 16
    changed = {n for n, p in clip.model.named_parameters()
               if n in before and not torch.equal(p, before[n])}
    # Only the temperature moved among the original weights; adapters were trained.
    assert changed <= {'logit_scale'}
    assert all(p.detach().abs().sum() > 0 for p in lora_parameters(clip.model))
    assert len(clip.text_cache) == 0
    assert (tmp_path / 'lora' / 'curves.png').exists()


def test_lora_finetune_repeats_whatever_ran_before(tmp_path):
    # The adapters' initial weights come from the run's seed, not from the global generator.
    import copy
    clip = load_clip('tiny', 'random', device='cpu')
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(8, 3, clip.image_size, clip.image_size, generator=gen)
    data = TensorDataset(pixels, tokenize([f'a {name} block' for name in NAMES] * 2),
                         torch.arange(8) % 4)
    config = TrainConfig(seed=0, batch_size=8, epochs=2, lr=1e-2, progress=False)
    losses = []
    for prior in (1, 2):
        torch.manual_seed(prior)  # whatever drew random numbers before in the process
        history = lora_finetune(copy.deepcopy(clip.model), data, None, config, r=2, alpha=4.0)
        losses.append([row['loss'] for row in history['steps']])
    assert losses[0] == losses[1]


def test_helpers():
    batch = as_batch((torch.zeros(2, 3), torch.ones(2)), 'cpu')
    assert sorted(batch) == ['images', 'texts']
    features = torch.eye(3)
    assert retrieval_accuracy(features, features) == 1.0
    # Images 0 and 2 pick each other's text (cosines 0.995 and 0.707), which has the same
    # caption id: wrong by index, right by caption.
    texts = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 0.1]])
    assert retrieval_accuracy(features, texts) == pytest.approx(1 / 3)
    assert retrieval_accuracy(features, texts, labels=[5, 6, 5]) == 1.0
    with pytest.raises(ValueError, match='batch_size'):
        make_loader(squares(4, 0), 0)


def test_time_budget_stops_and_compresses_the_schedule(tmp_path):
    # A budget far shorter than the run: the loop stops early and says why, and the
    # learning rate follows elapsed time (already near its floor before the steps run out).
    # Far more steps than any machine runs in 0.5 s (the budget, not the epochs, ends it).
    history = run(tmp_path, 'budget', epochs=5000, time_budget=0.5, min_lr=0.1, warmup_steps=1)
    assert 0 < len(history['steps']) < 5000 * 4
    assert history['stopped'].startswith('time budget reached')
    rates = [s['lr'] for s in history['steps']]
    assert min(rates) >= 0.1 * 1e-2 - 1e-12 and rates[-1] < 0.5 * max(rates)
    full = run(tmp_path, 'full', epochs=2)
    assert full['stopped'] == '' and len(full['steps']) == 2 * 4
