"""
The bundled `tabletop` model: a small CLIPSeg whose CLIP also serves crop re-scoring.

One transformers CLIPSegForImageSegmentation holds both parts. Its decoder segments a phrase
(used as the ClipSegModel); its CLIP towers, trained contrastively on object crops, are wrapped
by TabletopClip so the same weights act as an open_clip-style ClipModel.
Files in a checkpoint directory: config.json (CLIPSeg sizes plus a 'clip_ros' block) and
model.safetensors (float16). Text goes through clip_ros.perception.tokenizer (open_clip's BPE ids).
"""
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from clip_ros.perception.handles import ClipModel, ClipSegModel
from clip_ros.perception.light import LightReference
from clip_ros.perception.registry import (
    ModelLoadError, ModelNotFoundError, MODELS_DIR, resolve_placement, TABLETOP)
from clip_ros.perception.shape_head import load_shape_head
from clip_ros.perception.vocabulary import Lexicon

NAME = TABLETOP
BUNDLED_DIR = MODELS_DIR / NAME
CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
RETRAIN = 'ros2 run clip_ros train_tabletop'
_log = logging.getLogger(__name__)


class TabletopClip(torch.nn.Module):
    """Expose a CLIPSeg model's CLIP towers with open_clip's encode_image/encode_text."""

    def __init__(self, clipseg: torch.nn.Module):
        super().__init__()
        self.clip = clipseg.clip
        self.logit_scale = self.clip.logit_scale

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Return projected image features [B, D] (not normalised)."""
        out = self.clip.vision_model(pixel_values=pixels, interpolate_pos_encoding=True)
        return self.clip.visual_projection(out.pooler_output)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Return projected text features [N, D] (not normalised) for CLIP token ids."""
        out = self.clip.text_model(input_ids=tokens)
        return self.clip.text_projection(out.pooler_output)


def build(config: dict) -> torch.nn.Module:
    """
    Build a randomly initialised tabletop CLIPSeg.

    Parameters
    ----------
    config
        CLIPSeg sizes as in a checkpoint's config.json (the 'clip_ros' block is ignored here).

    Returns
    -------
    transformers CLIPSegForImageSegmentation in train mode.

    """
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation
    config = {k: v for k, v in config.items() if k != 'clip_ros'}
    return CLIPSegForImageSegmentation(CLIPSegConfig(**config))


def save(model: torch.nn.Module, config: dict, out_dir) -> Path:
    """Write config.json and float16 model.safetensors into `out_dir`; return the directory."""
    from safetensors.torch import save_file
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous().cpu()
             for k, v in model.state_dict().items() if v.is_floating_point()}
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={'format': 'pt'})
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + '\n', encoding='utf-8')
    return out_dir


def parameter_count(model: torch.nn.Module) -> int:
    """Return the number of parameters."""
    return sum(p.numel() for p in model.parameters())


def _reason(error: Exception) -> str:
    """Return an exception as one short line: 'Type: message'."""
    text = ' '.join(str(error).split())
    return f'{type(error).__name__}: {text[:300]}'


def _read_config(directory: Path) -> dict:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ModelNotFoundError(
            f"tabletop model: '{path}' does not exist. Reinstall clip_ros or retrain the "
            f'bundled model with: {RETRAIN}')
    try:
        config = json.loads(path.read_text(encoding='utf-8'))
        extra = config['clip_ros']
        sizes = (int(extra['image_size']), int(extra['crop_size']))
        if len(extra['mean']) != 3 or len(extra['std']) != 3 or min(sizes) < 1:
            raise ValueError('mean/std need 3 values and sizes must be positive')
        vocabulary = extra.get('vocabulary', [])
        if not isinstance(vocabulary, list) or not all(isinstance(v, str) for v in vocabulary):
            raise ValueError('vocabulary must be a list of strings')
        synonyms = extra.get('synonyms', {})
        if not isinstance(synonyms, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in synonyms.items()):
            raise ValueError('synonyms must map words to vocabulary words (strings)')
        Lexicon(vocabulary, synonyms)  # a synonym onto a word the model lacks is a ValueError
        if not isinstance(extra.get('abstain', {}), dict):
            raise ValueError('abstain must map threshold names to numbers')
        LightReference.from_config(extra.get('light'))
        if not isinstance(extra.get('shape', {}), dict):
            raise ValueError('shape must be a mapping (shapes, width, input, pad)')
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(
            f"tabletop model: config '{path}' is invalid ({_reason(e)}); it needs "
            f"CLIPSeg sizes and a 'clip_ros' block with image_size, crop_size, mean and std. "
            f'Retrain with: {RETRAIN}') from e
    return config


def _read_weights(directory: Path, config: dict, dtype) -> torch.nn.Module:
    from safetensors.torch import load_file
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise ModelNotFoundError(
            f"tabletop model: weights '{path}' do not exist. Reinstall clip_ros or retrain "
            f'with: {RETRAIN}')
    try:
        model = build(config)
    except Exception as e:  # transformers' config validation raises its own error types
        raise ModelLoadError(
            f"tabletop model: config '{directory / CONFIG_FILE}' does not describe a CLIPSeg "
            f'model ({_reason(e)}). Retrain with: {RETRAIN}') from e
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ModelLoadError(
            f"tabletop model: weights '{path}' are unreadable or corrupt ({_reason(e)}). "
            f'Reinstall clip_ros or retrain with: {RETRAIN}') from e
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        _check_keys(model, state)
    except (RuntimeError, ValueError) as e:
        raise ModelLoadError(
            f"tabletop model: weights '{path}' do not match config '{directory / CONFIG_FILE}' "
            f'({_reason(e)}). Retrain with: {RETRAIN}') from e
    return model.to(dtype).eval()


def _check_keys(model: torch.nn.Module, state: dict) -> None:
    expected = {k for k, v in model.state_dict().items() if v.is_floating_point()}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f'missing tensors {missing[:3]}, unexpected tensors {unexpected[:3]}')


def load(path=None, device='auto', dtype='auto') -> tuple:
    """
    Load a tabletop checkpoint directory.

    Parameters
    ----------
    path
        directory with config.json and model.safetensors (default: the bundled model).
    device
        'auto', 'cpu', 'cuda' or 'cuda:N'.
    dtype
        'auto', 'float32', 'float16' or 'bfloat16'.

    Returns
    -------
    (CLIPSegForImageSegmentation in eval mode on device, config dict, torch.device, torch.dtype).

    Raises
    ------
    ModelLoadError
        a missing, corrupt or mismatched file, with one message saying which and how to fix it.

    """
    device, dtype = resolve_placement(device, dtype)
    directory = Path(path).expanduser() if path else BUNDLED_DIR
    config = _read_config(directory)
    return _read_weights(directory, config, dtype).to(device), config, device, dtype


def model_name(path=None) -> str:
    """Return the model id used in caches: 'tabletop' or 'tabletop:<dir>'."""
    return NAME if not path else f'{NAME}:{Path(path).expanduser()}'


def load_tabletop_clipseg(path=None, device='auto', dtype='auto'):
    """Load a tabletop checkpoint as a ClipSegModel (see load for the arguments)."""
    model, config, device, dtype = load(path, device, dtype)
    extra = config['clip_ros']
    return ClipSegModel(model=model, name=model_name(path), image_size=int(extra['image_size']),
                        mean=tuple(extra['mean']), std=tuple(extra['std']), device=device,
                        dtype=dtype, light=dict(extra.get('light', {})))


def load_tabletop_clip(path=None, device='auto', dtype='auto'):
    """Load a tabletop checkpoint's CLIP towers as a ClipModel (see load for the arguments)."""
    model, config, device, dtype = load(path, device, dtype)
    extra = config['clip_ros']
    clip = TabletopClip(model).eval()
    directory = Path(path).expanduser() if path else BUNDLED_DIR
    try:
        shape = load_shape_head(directory, extra.get('shape'), device)
    except ValueError as e:
        raise ModelLoadError(f'tabletop model: {e}. Retrain the head with: train_shape '
                             f'--model {directory}') from e
    return ClipModel(model=clip, name=model_name(path), image_size=int(extra['crop_size']),
                     mean=tuple(extra['mean']), std=tuple(extra['std']), device=device,
                     dtype=dtype, logit_scale=float(clip.logit_scale.float().exp().item()),
                     vocabulary=tuple(extra.get('vocabulary', ())),
                     synonyms=dict(extra.get('synonyms', {})),
                     abstain=dict(extra.get('abstain', {})),
                     light=dict(extra.get('light', {})), shape=shape)


def checkpoint_dir(value):
    """Return a checkpoint directory for a path-like value, None (bundled) for a name or tag."""
    value = str(value or '').strip()
    if value == NAME or not value or ('/' not in value and not Path(value).exists()):
        return None
    return value


def is_tabletop_dir(path) -> bool:
    """Tell whether `path` is a directory holding a tabletop config (with a 'clip_ros' block)."""
    config = Path(str(path)).expanduser() / CONFIG_FILE
    try:
        return config.is_file() and 'clip_ros' in json.loads(config.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return False


def text_features(model, tokens: torch.Tensor) -> torch.Tensor:
    """Return CLIPSeg conditional (projected text) embeddings [N, D] for token ids."""
    return model.clip.text_projection(model.clip.text_model(input_ids=tokens).pooler_output)


def image_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """Return L2-normalised projected image embeddings [B, D] for crops [B,3,s,s]."""
    out = model.clip.vision_model(pixel_values=pixels, interpolate_pos_encoding=True)
    return F.normalize(model.clip.visual_projection(out.pooler_output), dim=-1)
