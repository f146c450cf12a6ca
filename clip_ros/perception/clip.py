"""CLIP models through open_clip: load by architecture + tag or file, encode text and images."""
import os

import open_clip
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
import torch

from clip_ros.perception.handles import ClipModel
from clip_ros.perception.registry import (
    clean_arch, clean_tag, clip_cache_locations, clip_weights, DEFAULT_CLIP,
    find_cached_clip, is_weight_path, list_clip_architectures, list_clip_tags, ModelLoadError,
    ModelNotFoundError, prefetch_command, RANDOM_TAGS, resolve_placement, TABLETOP,
    WEIGHT_SUFFIXES)
from clip_ros.perception.tabletop_model import checkpoint_dir, load_tabletop_clip

_PRECISION = {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16'}
# Random-init builds are seeded so tests and demos see the same weights every time.
RANDOM_SEED = 0


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
    device, dtype = resolve_placement(device, dtype)
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
