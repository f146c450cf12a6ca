"""Model registries (architectures, pretrained tags), devices, dtypes and load errors."""
from dataclasses import dataclass
import json
import logging
import os
from pathlib import Path

import huggingface_hub
import open_clip
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
import torch

from clip_ros.perception.names import DEFAULT_CLIP, DEFAULT_CLIPSEG, TABLETOP  # noqa: F401

# Pretrained values that mean "random initialisation, no weights".
RANDOM_TAGS = ('', 'random')
WEIGHT_SUFFIXES = ('.bin', '.pt', '.pth', '.safetensors')
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIPSEG_SIZE = 352
DEVICES = ('auto', 'cpu', 'cuda', 'cuda:N')
DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}

MODELS_DIR = Path(__file__).resolve().parent.parent / 'models'
# Bundled architecture configs (e.g. 'tiny') join open_clip's architecture registry.
open_clip.add_model_config(MODELS_DIR / 'clip')

_log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """Weights are missing or unreadable; the message says what, where, and how to fetch them."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """A local weights path does not exist."""


@dataclass(frozen=True)
class ClipWeights:
    """Where one pretrained CLIP tag lives and how its images are normalised."""

    arch: str  # open_clip architecture name, e.g. 'ViT-B-16'
    tag: str  # normalised pretrained tag, e.g. 'openai'
    url: str  # direct download URL ('' when only on the hub)
    hf_hub: str  # 'org/repo/' or 'org/repo/file' ('' when only by URL)
    mean: tuple  # per-channel normalisation mean (RGB, 0..1)
    std: tuple  # per-channel normalisation std
    quick_gelu: bool  # trained with QuickGELU activations


@dataclass(frozen=True)
class ClipSegSpec:
    """One known CLIPSeg model: hub weights or a bundled random-init config."""

    hf_hub: str  # hub repository id ('' for random-init configs)
    config: str  # bundled config name for random init ('' for hub weights)
    image_size: int  # processor input size (square)
    mean: tuple  # per-channel normalisation mean (ImageNet)
    std: tuple  # per-channel normalisation std


def _segcfg(hf_hub='', config='', image_size=CLIPSEG_SIZE):
    return ClipSegSpec(hf_hub, config, image_size, IMAGENET_MEAN, IMAGENET_STD)


# 'random' is the default (rd64) size with random weights, for benchmarks without downloads.
_CLIPSEG = {
    'CIDAS/clipseg-rd64-refined': _segcfg(hf_hub='CIDAS/clipseg-rd64-refined'),
    'CIDAS/clipseg-rd64': _segcfg(hf_hub='CIDAS/clipseg-rd64'),
    'CIDAS/clipseg-rd16': _segcfg(hf_hub='CIDAS/clipseg-rd16'),
    'tiny': _segcfg(config='tiny', image_size=64),
    'random': _segcfg(config='default'),
}


def clean_tag(tag: str) -> str:
    """Normalise a pretrained tag as open_clip does ('LAION2B-s34b' -> 'laion2b_s34b')."""
    return tag.strip().lower().replace('-', '_')


def clean_arch(arch: str) -> str:
    """Normalise an architecture name ('ViT-B/16' -> 'ViT-B-16')."""
    return arch.strip().replace('/', '-')


def list_clip_architectures() -> list:
    """Return open_clip's architecture names, bundled ones included."""
    return open_clip.list_models() + [TABLETOP]


def list_clip_tags(arch: str) -> list:
    """Return the pretrained tags known for an architecture, plus 'random'."""
    return open_clip.list_pretrained_tags_by_model(clean_arch(arch)) + ['random']


def is_weight_path(pretrained: str) -> bool:
    """Tell whether a pretrained value names a file rather than a tag."""
    return pretrained.endswith(WEIGHT_SUFFIXES) or os.sep in pretrained


def clip_weights(arch: str, tag: str) -> ClipWeights:
    """Look up a known pretrained tag; raise ValueError naming the valid ones."""
    arch = clean_arch(arch)
    if arch not in list_clip_architectures():
        raise ValueError(
            f"Unknown CLIP architecture '{arch}'; valid: {', '.join(list_clip_architectures())}")
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        raise ValueError(
            f"Unknown pretrained tag '{tag}' for {arch}; valid tags: "
            f"{', '.join(list_clip_tags(arch))}, or a weights file ({', '.join(WEIGHT_SUFFIXES)})")
    return ClipWeights(arch, clean_tag(tag), cfg.get('url', ''), cfg.get('hf_hub', ''),
                       tuple(cfg['mean']), tuple(cfg['std']), bool(cfg.get('quick_gelu', False)))


def hub_files(hf_hub: str) -> tuple:
    """Split an open_clip hub spec into (repo id, candidate file names, safetensors first)."""
    repo_id, filename = os.path.split(hf_hub)
    filename = filename or HF_WEIGHTS_NAME
    if filename == HF_WEIGHTS_NAME:
        return repo_id, (HF_SAFE_WEIGHTS_NAME, filename)
    if filename.endswith(('.bin', '.pth')):
        return repo_id, (filename[:-4] + '.safetensors', filename)
    return repo_id, (filename,)


def url_cache_path(url: str, cache_dir=None) -> str:
    """Return where open_clip stores a URL download."""
    return os.path.join(cache_dir or os.path.expanduser('~/.cache/clip'), os.path.basename(url))


def clip_cache_locations(weights: ClipWeights, cache_dir=None) -> list:
    """List the places (hub cache entries, files) a tag's weights may be cached, in order."""
    places = []
    if weights.hf_hub:
        repo_id, files = hub_files(weights.hf_hub)
        hub_root = cache_dir or huggingface_hub.constants.HF_HUB_CACHE
        places += [f'hf-hub:{repo_id}/{name} in {hub_root}' for name in files]
    if weights.url:
        places.append(url_cache_path(weights.url, cache_dir))
    return places


def find_cached_clip(weights: ClipWeights, cache_dir=None):
    """Return the local path of a tag's cached weights, or None; never touches the network."""
    if weights.hf_hub:
        repo_id, files = hub_files(weights.hf_hub)
        for name in files:
            path = huggingface_hub.try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(path, str):
                return path
    if weights.url and os.path.isfile(url_cache_path(weights.url, cache_dir)):
        return url_cache_path(weights.url, cache_dir)
    return None


def list_clipseg_models() -> list:
    """Return the known CLIPSeg names (a local directory also works)."""
    return list(_CLIPSEG) + [TABLETOP]


def clipseg_spec(name: str):
    """Return the spec of a known CLIPSeg name, or None for unknown names."""
    return _CLIPSEG.get(name.strip())


def clipseg_config(config: str):
    """Build a transformers CLIPSegConfig from a bundled config name ('default' = rd64 sizes)."""
    from transformers import CLIPSegConfig
    if config == 'default':
        return CLIPSegConfig()
    with open(MODELS_DIR / 'clipseg' / f'{config}.json', encoding='utf-8') as f:
        return CLIPSegConfig(**json.load(f))


def prefetch_command(clip=None, clipseg=None, cache_dir=None) -> str:
    """Return the prefetch command line that downloads the given weights."""
    args = ['ros2 run clip_ros prefetch']
    if clip is not None:
        args.append(f'--clip-arch {clip[0]} --clip-pretrained {clip[1]}')
    if clipseg is not None:
        args.append(f'--clipseg {clipseg}')
    if clip is None or clipseg is None:
        args.append('--only clip' if clip is not None else '--only clipseg')
    if cache_dir:
        args.append(f'--cache-dir {cache_dir}')
    return ' '.join(args)


def resolve_device(device: str = 'auto') -> torch.device:
    """
    Pick a torch device; 'cuda' without a GPU falls back to CPU with a warning.

    Parameters
    ----------
    device
        'auto' (cuda when available), 'cpu', 'cuda' or 'cuda:N'.

    Returns
    -------
    The torch.device to run on.

    """
    name = str(device).strip().lower()
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name == 'cpu':
        return torch.device('cpu')
    if name != 'cuda' and not (name.startswith('cuda:') and name[5:].isdigit()):
        raise ValueError(f"Unknown device '{device}'; valid: {', '.join(DEVICES)}")
    if not torch.cuda.is_available():
        _log.warning("Device '%s' requested but CUDA is not available; using CPU", device)
        return torch.device('cpu')
    index = int(name[5:]) if ':' in name else 0
    if index >= torch.cuda.device_count():
        last = torch.cuda.device_count() - 1
        raise ValueError(f"Device '{device}' does not exist; valid: cpu, cuda:0..cuda:{last}")
    return torch.device(name)


def resolve_placement(device: str = 'auto', dtype: str = 'auto') -> tuple:
    """Return (torch.device, torch.dtype) for the device and dtype parameters of every loader."""
    device = resolve_device(device)
    return device, resolve_dtype(dtype, device)


def resolve_dtype(dtype: str, device) -> torch.dtype:
    """
    Pick a torch dtype; 'auto' is float16 on CUDA and float32 on CPU.

    float16 on CPU falls back to float32 with a warning (slow and poorly supported there).

    """
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        dtype = str(dtype).removeprefix('torch.')  # one resolved before: passed on as is
    name = str(dtype).strip().lower()
    device = torch.device(device)
    if name == 'auto':
        return torch.float16 if device.type == 'cuda' else torch.float32
    if name not in DTYPES:
        raise ValueError(f"Unknown dtype '{dtype}'; valid: auto, {', '.join(DTYPES)}")
    if name == 'float16' and device.type == 'cpu':
        _log.warning('float16 is not supported well on CPU; using float32')
        return torch.float32
    return DTYPES[name]
