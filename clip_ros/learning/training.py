"""
A small, seeded training loop for CLIP-like models: contrastive, LoRA and joint training.

A model provides ``encode_image(images) -> [B, D]`` and ``encode_text(texts) -> [B, D]``
(texts: whatever the model encodes, e.g. token ids [B, 77]); joint training also needs
``segment(images, texts) -> logits [B, H, W]`` (one mask per pair's text). Batches are dicts
with 'images', 'texts', optional 'labels' (caption id per pair; equal ids are duplicates,
counted as positives) and 'masks' [B, H, W], or tuples in that order.

train() records one row per optimiser step (loss, learning rate, temperature, what the step
function adds) and one per epoch (mean train loss/accuracy, validation loss and
image -> text retrieval accuracy among the batch's captions); with ``out_dir`` it writes
history.json and curves.png there.
"""
from contextlib import contextmanager
from dataclasses import asdict, dataclass
import json
import logging
import math
import os
import random
import time

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from clip_ros.learning.lora import apply_lora, DEFAULT_TARGETS
from clip_ros.learning.losses import ClipLoss, gradient_cosine, UncertaintyWeighting
from clip_ros.perception.registry import resolve_device

__all__ = [
    'as_batch', 'ContrastiveStep', 'evaluate', 'JointStep', 'lora_finetune', 'make_loader',
    'plot_history', 'retrieval_accuracy', 'save_history', 'seed_everything', 'train',
    'TrainConfig',
]

BATCH_KEYS = ('images', 'texts', 'labels', 'masks')
_log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Training settings; every run with the same settings and seed gives the same history."""

    seed: int = 0  # seeds random, numpy and torch (and the loader's shuffling)
    batch_size: int = 32  # used when train() is given datasets rather than loaders
    epochs: int = 1  # passes over the training data
    max_steps: int = 0  # stop after this many optimiser steps (0: no limit)
    lr: float = 1e-3  # peak learning rate (AdamW)
    weight_decay: float = 0.01  # on weight matrices only, not biases/norms/temperature
    warmup_steps: int = 0  # linear warm-up, then cosine decay to min_lr
    min_lr: float = 0.0  # floor of the cosine decay, as a share of lr
    # Wall-clock budget in seconds (0: none): the schedule follows whichever of steps and time
    # is further along, and training stops when the time is spent.
    time_budget: float = 0.0
    grad_clip: float = 0.0  # max gradient norm (0: off)
    log_every: int = 1  # steps between costly diagnostics (gradient cosine)
    device: str = 'cpu'  # 'auto', 'cpu', 'cuda' or 'cuda:N'
    deterministic: bool = True  # deterministic algorithms while training
    progress: bool = True  # tqdm progress bars
    out_dir: str = ''  # where history.json and curves.png go ('' : not written)


def seed_everything(seed: int):
    """Seed Python's, numpy's and torch's generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def make_loader(dataset, batch_size: int, shuffle: bool = True, seed: int = 0) -> DataLoader:
    """Return a single-process DataLoader whose shuffling depends only on `seed`."""
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def as_batch(batch, device) -> dict:
    """Return a batch as a dict of BATCH_KEYS with its tensors on `device`."""
    if not isinstance(batch, dict):
        if len(batch) > len(BATCH_KEYS):
            raise ValueError(f'a tuple batch holds at most {BATCH_KEYS}, got {len(batch)} items')
        batch = dict(zip(BATCH_KEYS, batch))
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def retrieval_accuracy(image_features, text_features, labels=None) -> float:
    """Return the share of images whose most similar batch caption is a correct one."""
    image = F.normalize(image_features.float(), dim=-1)
    sim = image @ F.normalize(text_features.float(), dim=-1).T
    best = sim.argmax(dim=1)
    if labels is None:
        return (best == torch.arange(len(best), device=best.device)).float().mean().item()
    labels = torch.as_tensor(labels, device=best.device)
    return (labels[best] == labels).float().mean().item()


class ContrastiveStep(nn.Module):
    """Encode both sides and apply the pair loss (ClipLoss, TripletLoss, ...)."""

    def forward(self, model, loss_fn, batch: dict, log: bool = False) -> dict:
        image = model.encode_image(batch['images'])
        text = model.encode_text(batch['texts'])
        labels = batch.get('labels')
        return {'loss': loss_fn(image, text, labels=labels),
                'accuracy': retrieval_accuracy(image, text, labels)}


class JointStep(nn.Module):
    """
    Contrastive plus segmentation loss, weighted by learned uncertainty (Kendall et al., 2018).

    On logging steps it also records the cosine between the two losses' gradients over the
    parameters both reach (the shared encoders): near 1 the tasks agree, below 0 they conflict.

    Parameters
    ----------
    seg_loss
        loss of segmentation logits against masks; default binary cross-entropy.

    """

    def __init__(self, seg_loss=None):
        super().__init__()
        self.weighting = UncertaintyWeighting(2)
        self.seg_loss = seg_loss or nn.BCEWithLogitsLoss()

    def forward(self, model, loss_fn, batch: dict, log: bool = False) -> dict:
        if 'masks' not in batch:
            raise ValueError(f'joint training needs masks; batch has {sorted(batch)}')
        image = model.encode_image(batch['images'])
        text = model.encode_text(batch['texts'])
        labels = batch.get('labels')
        contrastive = loss_fn(image, text, labels=labels)
        logits = model.segment(batch['images'], batch['texts'])
        masks = batch['masks'].to(logits.dtype).reshape(logits.shape)
        segmentation = self.seg_loss(logits, masks)
        weights = self.weighting.weights().detach()
        out = {'loss': self.weighting([contrastive, segmentation]),
               'accuracy': retrieval_accuracy(image, text, labels),
               'loss_contrastive': contrastive.item(), 'loss_segmentation': segmentation.item(),
               'weight_contrastive': weights[0].item(), 'weight_segmentation': weights[1].item()}
        if log and torch.is_grad_enabled():
            out['grad_cosine'] = gradient_cosine(contrastive, segmentation, model.parameters(),
                                                 shared_only=True)
        return out


def _parameters(modules) -> list:
    seen, params = set(), []
    for module in modules:
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def _optimiser(params, config: TrainConfig, total_steps: int, start: float):
    # As CLIP: no decay on biases, norms and the temperature (0-d/1-d tensors).
    groups = [{'params': [p for p in params if p.ndim >= 2],
               'weight_decay': config.weight_decay},
              {'params': [p for p in params if p.ndim < 2], 'weight_decay': 0.0}]
    optimiser = torch.optim.AdamW([g for g in groups if g['params']], lr=config.lr)

    def factor(step):
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        if config.time_budget > 0:
            progress = max(progress, (time.monotonic() - start) / config.time_budget)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return config.min_lr + (1 - config.min_lr) * cosine
    return optimiser, torch.optim.lr_scheduler.LambdaLR(optimiser, factor)


def _scalars(out: dict) -> dict:
    return {k: float(v) for k, v in out.items() if k != 'loss'}


def _clamp_temperatures(modules):
    for module in modules:
        for sub in module.modules():
            if isinstance(sub, ClipLoss):
                sub.clamp_()


@torch.no_grad()
def evaluate(model, loss_fn, loader, step_fn=None, device='cpu') -> dict:
    """Return mean 'loss' and 'accuracy' (image -> text among batch captions) over a loader."""
    step_fn = step_fn or ContrastiveStep()
    was_training = model.training
    model.eval()
    totals, count = {'loss': 0.0, 'accuracy': 0.0}, 0
    for batch in loader:
        batch = as_batch(batch, device)
        out = step_fn(model, loss_fn, batch, log=False)
        size = len(batch['images'])
        totals['loss'] += float(out['loss']) * size
        totals['accuracy'] += float(out['accuracy']) * size
        count += size
    model.train(was_training)
    return {k: v / max(count, 1) for k, v in totals.items()}


@dataclass
class _Run:
    """What one train() call steps with."""

    model: nn.Module
    loss_fn: nn.Module
    step_fn: nn.Module
    modules: list
    params: list
    optimiser: torch.optim.Optimizer
    scheduler: object
    config: TrainConfig
    device: torch.device
    total_steps: int
    history: dict
    start: float  # time.monotonic() when training began

    def out_of_time(self) -> bool:
        """Tell whether the time budget is spent (logged once when it is)."""
        spent = self.config.time_budget > 0 and (
            time.monotonic() - self.start >= self.config.time_budget)
        if spent and not self.history.get('stopped'):
            self.history['stopped'] = f'time budget reached at step {len(self.history["steps"])}'
            _log.warning(self.history['stopped'])
        return spent


@contextmanager
def _deterministic(enabled: bool):
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2:]


def _loader(data, config: TrainConfig, shuffle: bool):
    if data is None or isinstance(data, DataLoader):
        return data
    return make_loader(data, config.batch_size, shuffle, config.seed)


def _optimiser_step(run: _Run, loss: torch.Tensor) -> float:
    lr = run.optimiser.param_groups[0]['lr']
    run.optimiser.zero_grad(set_to_none=True)
    loss.backward()
    if run.config.grad_clip > 0:
        nn.utils.clip_grad_norm_(run.params, run.config.grad_clip)
    run.optimiser.step()
    run.scheduler.step()
    _clamp_temperatures(run.modules)
    return lr


def _train_epoch(run: _Run, epoch: int, loader) -> dict:
    run.model.train()
    steps, config = run.history['steps'], run.config
    first = len(steps)
    bar = tqdm(loader, desc=f'epoch {epoch}/{config.epochs}', disable=not config.progress,
               dynamic_ncols=True)
    for batch in bar:
        if len(steps) >= run.total_steps or run.out_of_time():
            break
        step = len(steps) + 1
        out = run.step_fn(run.model, run.loss_fn, as_batch(batch, run.device),
                          log=(step - 1) % max(1, config.log_every) == 0)
        row = {'step': step, 'epoch': epoch, 'loss': float(out['loss'].detach())}
        if isinstance(run.loss_fn, ClipLoss):
            row['temperature'] = run.loss_fn.temperature  # the one this step used
        row['lr'] = _optimiser_step(run, out['loss'])
        row.update(_scalars(out))
        steps.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
    bar.close()
    rows = steps[first:]
    record = {'epoch': epoch, 'steps': len(rows)}
    for key in ('loss', 'accuracy'):
        values = [r[key] for r in rows if key in r]
        if values:
            record[f'train_{key}'] = float(np.mean(values))
    return record


def train(model, loss_fn, train_loader, val_loader=None, config: TrainConfig = None,
          step_fn=None) -> dict:
    """
    Train `model` (and the loss's and step's own parameters, e.g. the temperature) in place.

    Parameters
    ----------
    model
        a module with encode_image/encode_text (and segment for JointStep).
    loss_fn
        a pair loss, e.g. create_loss('clip').
    train_loader, val_loader
        DataLoaders, or datasets batched with config.batch_size; val_loader may be None.
    config
        TrainConfig (defaults if None).
    step_fn
        ``step_fn(model, loss_fn, batch, log) -> {'loss': tensor, ...scalars}``; default
        ContrastiveStep(); JointStep() for contrastive + segmentation.

    Returns
    -------
    History {'steps': [per-step rows], 'epochs': [per-epoch rows], 'config': dict, 'seconds':
    wall time, 'stopped': why training ended before its steps ('' when it did not)}.

    """
    config = config or TrainConfig()
    device = resolve_device(config.device)
    seed_everything(config.seed)
    train_loader = _loader(train_loader, config, shuffle=True)
    val_loader = _loader(val_loader, config, shuffle=False)
    step_fn = step_fn or ContrastiveStep()
    modules = [m for m in (model, loss_fn, step_fn) if isinstance(m, nn.Module)]
    for module in modules:
        module.to(device)
    params = _parameters(modules)
    if not params:
        raise ValueError('nothing to train: no parameter requires grad')
    total = len(train_loader) * config.epochs
    total = min(total, config.max_steps) if config.max_steps > 0 else total
    start = time.monotonic()
    optimiser, scheduler = _optimiser(params, config, total, start)
    history = {'steps': [], 'epochs': [], 'config': asdict(config), 'stopped': ''}
    run = _Run(model, loss_fn, step_fn, modules, params, optimiser, scheduler, config, device,
               total, history, start)
    was_training = model.training
    with _deterministic(config.deterministic):
        for epoch in range(1, config.epochs + 1):
            if len(history['steps']) >= total or run.out_of_time():
                break
            record = _train_epoch(run, epoch, train_loader)
            if val_loader is not None:
                metrics = evaluate(model, loss_fn, val_loader, step_fn, device)
                record.update({f'val_{k}': v for k, v in metrics.items()})
            history['epochs'].append(record)
    model.train(was_training)
    history['seconds'] = round(time.monotonic() - start, 3)
    if config.out_dir:
        save_history(history, config.out_dir)
    return history


def save_history(history: dict, out_dir: str) -> tuple:
    """Write history.json and curves.png into out_dir; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, 'history.json')
    with open(json_path, 'w', encoding='utf-8') as f:
        json.dump(history, f, indent=1)
    png_path = os.path.join(out_dir, 'curves.png')
    plot_history(history, png_path)
    return json_path, png_path


def _series(rows: list, key: str) -> tuple:
    points = [(r['step'] if 'step' in r else r['epoch'], r[key]) for r in rows if key in r]
    return tuple(zip(*points)) if points else ((), ())


def plot_history(history: dict, path: str):
    """Plot loss, accuracy and diagnostics (temperature, gradient cosine) curves to a PNG."""
    steps, epochs = history['steps'], history['epochs']
    diagnostics = [k for k in ('temperature', 'grad_cosine', 'weight_contrastive',
                               'weight_segmentation') if any(k in r for r in steps)]
    figure = Figure(figsize=(5 * (2 + bool(diagnostics)), 3.6), layout='constrained')
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2 + bool(diagnostics))
    values = []
    for key in ('loss', 'loss_contrastive', 'loss_segmentation'):
        xs, ys = _series(steps, key)
        axes[0].plot(xs, ys, label=key)
        values.extend(ys)
    # Log scale unless a loss reaches 0 (triplet) or below (uncertainty-weighted total).
    axes[0].set(title='training loss', xlabel='step',
                yscale='log' if values and min(values) > 0 else 'linear')
    # Epoch rows are drawn at the step that ended the epoch.
    ends = np.cumsum([r.get('steps', 0) for r in epochs])
    axes[1].plot(*_series(steps, 'accuracy'), alpha=0.4, label='train (batch)')
    for key in ('train_accuracy', 'val_accuracy'):
        xs = [end for end, r in zip(ends, epochs) if key in r]
        axes[1].plot(xs, [r[key] for r in epochs if key in r], 'o-', label=key)
    axes[1].set(title='image -> text accuracy', xlabel='step', ylim=(-0.02, 1.02))
    for key in diagnostics:
        axes[2].plot(*_series(steps, key), label=key)
    if diagnostics:
        axes[2].set(title='diagnostics', xlabel='step')
    for axis in axes:
        axis.legend(fontsize='small')
    figure.savefig(path, dpi=80)


def lora_finetune(clip, train_data, val_data=None, config: TrainConfig = None, r: int = 4,
                  alpha: float = 8.0, targets=DEFAULT_TARGETS, loss_fn=None) -> dict:
    """
    Fine-tune a CLIP with LoRA adapters on the contrastive loss; the base stays frozen.

    Parameters
    ----------
    clip
        a ClipModel (from load_clip) or its open_clip module; adapted in place. Batches hold
        pixels and token ids (tokenize).
    train_data, val_data, config
        as for train().
    r, alpha, targets
        as for apply_lora().
    loss_fn
        default ClipLoss starting at the model's own temperature.

    Returns
    -------
    train()'s history plus 'lora': adapted layers, r, alpha and parameter counts. Fold the
    adapters with merge_lora(model) for deployment.

    """
    model = getattr(clip, 'model', clip)
    config = config or TrainConfig()
    seed_everything(config.seed)  # the adapters' initial weights are part of the run
    layers = apply_lora(model, targets, r, alpha)
    if loss_fn is None:
        loss_fn = ClipLoss(temperature=float(torch.exp(-model.logit_scale.detach())))
    history = train(model, loss_fn, train_data, val_data, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    history['lora'] = {'layers': layers, 'r': r, 'alpha': alpha, 'trainable': trainable,
                       'total': sum(p.numel() for p in model.parameters())}
    if isinstance(loss_fn, ClipLoss):
        # The model carries the learned temperature, as a trained CLIP does.
        with torch.no_grad():
            model.logit_scale.copy_(loss_fn.logit_scale.log())
    if hasattr(clip, 'text_cache'):
        clip.logit_scale = float(model.logit_scale.exp())
        clip.text_cache.clear()  # cached embeddings came from the weights before fine-tuning
    if config and config.out_dir:
        save_history(history, config.out_dir)
    return history


def pick_threads(requested: int) -> int:
    """Return the torch thread count: `requested`, or 2 on an idle machine and 1 on a busy one."""
    if requested > 0:
        return requested
    return 2 if os.getloadavg()[0] < 1.0 and (os.cpu_count() or 1) >= 2 else 1
