"""CLIP models through open_clip: load by architecture + tag or file, encode text and images."""
from dataclasses import dataclass, field
import os

import open_clip
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
import torch
import torch.nn.functional as F

# CLIPSeg lives in its own module; re-exported so one import gives the whole model API.
from clip_ros.core.clipseg import ClipSegModel, ClipSegRunner, load_clipseg
from clip_ros.core.registry import (
    clean_arch, clean_tag, clip_cache_locations, clip_weights, DEFAULT_CLIP, DEFAULT_CLIPSEG,
    find_cached_clip, is_weight_path, list_clip_architectures, list_clip_tags, ModelLoadError,
    ModelNotFoundError, prefetch_command, RANDOM_TAGS, resolve_device, resolve_dtype, TABLETOP,
    WEIGHT_SUFFIXES)
from clip_ros.core.tabletop import checkpoint_dir, load_tabletop_clip
from clip_ros.core.text_cache import TextCache
from clip_ros.core.tokenizer import tokenize

__all__ = [
    'ClipModel', 'ClipSegModel', 'ClipSegRunner', 'DEFAULT_CLIP', 'DEFAULT_CLIPSEG',
    'load_clip', 'load_clipseg', 'ModelLoadError', 'resolve_device', 'resolve_dtype',
    'TextCache', 'tokenize',
]

_PRECISION = {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16'}
# Random-init builds are seeded so tests and demos see the same weights every time.
RANDOM_SEED = 0


@dataclass(eq=False)
class ClipModel:
    """A loaded open_clip CLIP model with its preprocessing constants."""

    model: torch.nn.Module  # open_clip CLIP, eval mode
    name: str  # unique id incl. weights, e.g. 'ViT-B-16/openai'
    image_size: int  # square input size in pixels
    mean: tuple  # per-channel normalisation mean (RGB, 0..1)
    std: tuple  # per-channel normalisation std
    device: torch.device  # where the weights live
    dtype: torch.dtype  # weight dtype
    logit_scale: float  # exp of the learned temperature (about 100 for trained models)
    # Object names the model was trained to tell apart; re-scoring lets them compete with a query.
    vocabulary: tuple = ()
    text_cache: TextCache = field(default=None, repr=False)  # filled in __post_init__

    def __post_init__(self):
        if self.text_cache is None:
            self.text_cache = TextCache(self._encode_text, self.name)

    def encode_text(self, phrases) -> torch.Tensor:
        """Return L2-normalised float32 text embeddings [N, D], cached per phrase."""
        return self.text_cache.get(list(phrases) if not isinstance(phrases, str) else [phrases])

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Return L2-normalised float32 image embeddings [B, D] for normalised pixels [B,3,S,S]."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f'pixels must be [B, 3, S, S], got {list(pixels.shape)}')
        features = self.model.encode_image(pixels.to(self.device, self.dtype))
        return F.normalize(features.float(), dim=-1)

    @torch.no_grad()
    def _encode_text(self, phrases: list) -> torch.Tensor:
        features = self.model.encode_text(tokenize(phrases).to(self.device))
        return F.normalize(features.float(), dim=-1)


def load_clip(arch: str = DEFAULT_CLIP[0], pretrained: str = DEFAULT_CLIP[1], device='auto',
              dtype='auto', cache_dir=None) -> ClipModel:
    """
    Load a CLIP model from the local cache or a weights file; never downloads.

    Parameters
    ----------
    arch
        open_clip architecture ('ViT-B-16', ...), 'tiny' (small, for tests and demos) or
        'tabletop' (the bundled trained model).
    pretrained
        a known tag ('openai', ...), a weights file (.bin/.pt/.pth/.safetensors),
        or '' / 'random' for seeded random initialisation. For 'tabletop': a checkpoint
        directory, any other value means the bundled one.
    device
        'auto', 'cpu', 'cuda' or 'cuda:N'.
    dtype
        'auto', 'float32', 'float16' or 'bfloat16'.
    cache_dir
        cache root the prefetch command filled (default: open_clip's / the hub's).

    Returns
    -------
    The ClipModel in eval mode.

    Raises
    ------
    ValueError
        unknown architecture, tag, device or dtype (valid choices listed).
    ModelLoadError
        weights not cached, missing or unreadable (says how to fetch them).

    """
    arch = clean_arch(arch)
    if arch not in list_clip_architectures():
        raise ValueError(
            f"Unknown CLIP architecture '{arch}'; valid: {', '.join(list_clip_architectures())}")
    if arch == TABLETOP:
        return load_tabletop_clip(checkpoint_dir(pretrained), device, dtype)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    pretrained = (pretrained or '').strip()
    mean, std, quick_gelu, tag = OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, False, DEFAULT_CLIP[1]
    if clean_tag(pretrained) in RANDOM_TAGS:
        path, name = None, f'{arch}/random'
    elif is_weight_path(pretrained) and not open_clip.get_pretrained_cfg(arch, pretrained):
        path, name = _local_file(arch, pretrained, cache_dir), f'{arch}:{pretrained}'
    else:
        weights = clip_weights(arch, pretrained)
        path, name = _cached_tag(weights, cache_dir), f'{arch}/{weights.tag}'
        mean, std, quick_gelu, tag = weights.mean, weights.std, weights.quick_gelu, weights.tag
    fetch = prefetch_command(clip=(arch, tag), cache_dir=cache_dir)
    model = _create(arch, path, quick_gelu, (device, dtype), name, fetch)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return ClipModel(model=model, name=name, image_size=int(size),
                     mean=tuple(mean), std=tuple(std), device=device, dtype=dtype,
                     logit_scale=float(model.logit_scale.exp().item()))


def _local_file(arch: str, path: str, cache_dir) -> str:
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise ModelNotFoundError(
            f"CLIP {arch}: weights file '{path}' does not exist. Give an existing "
            f"{'/'.join(WEIGHT_SUFFIXES)} file or a known tag ({', '.join(list_clip_tags(arch))});"
            f' fetch a tag on a connected machine with: '
            f'{prefetch_command(clip=(arch, DEFAULT_CLIP[1]), cache_dir=cache_dir)}')
    return path


def _cached_tag(weights, cache_dir) -> str:
    path = find_cached_clip(weights, cache_dir)
    if path is None:
        places = '; '.join(clip_cache_locations(weights, cache_dir))
        command = prefetch_command(clip=(weights.arch, weights.tag), cache_dir=cache_dir)
        raise ModelLoadError(
            f'CLIP {weights.arch}/{weights.tag}: weights are not in the local cache (looked in: '
            f'{places}); models are never downloaded at load time. Fetch them on a connected '
            f"machine with: {command} (or the console script 'prefetch' with the same arguments)")
    return path


def _create(arch, path, quick_gelu, placement, name, fetch) -> torch.nn.Module:
    device, dtype = placement
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = open_clip.create_model(
                arch, pretrained=path, precision=_PRECISION[dtype], device=device,
                force_quick_gelu=quick_gelu, pretrained_text=False)
    except Exception as e:
        raise ModelLoadError(
            f"CLIP {name}: cannot load weights from '{path}' ({type(e).__name__}: {e}). The file "
            f'may be corrupt, truncated or for another architecture; fetch weights again with: '
            f'{fetch}') from e
    return model.eval()
