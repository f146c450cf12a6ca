"""CLIPSeg through transformers: loading, and one vision pass shared by all phrases."""
import os

import huggingface_hub
import numpy as np
import torch
import torch.nn.functional as F

from clip_ros.perception.handles import ClipSegModel
from clip_ros.perception.image import preprocess, validate_rgb
from clip_ros.perception.registry import (
    clipseg_config, CLIPSEG_SIZE, clipseg_spec, DEFAULT_CLIPSEG, IMAGENET_MEAN, IMAGENET_STD,
    list_clipseg_models, ModelLoadError, ModelNotFoundError, prefetch_command,
    resolve_placement, TABLETOP)
from clip_ros.perception.tabletop_model import (
    checkpoint_dir, is_tabletop_dir, load_tabletop_clipseg)
from clip_ros.perception.text_cache import TextCache
from clip_ros.perception.tokenizer import tokenize

# Random-init builds are seeded so tests and benchmarks see the same weights every time.
RANDOM_SEED = 0


def load_clipseg(name: str = DEFAULT_CLIPSEG, device='auto', dtype='auto',
                 cache_dir=None) -> ClipSegModel:
    """
    Load CLIPSeg from the local hub cache, a local directory or a bundled config.

    Parameters
    ----------
    name
        hub id ('CIDAS/clipseg-rd64-refined', ...), a local directory saved with
        save_pretrained, 'tiny' (small random init), 'random' (rd64 size, random init) or
        'tabletop' (the bundled trained model; also a directory written by train_tabletop).
    device
        'auto', 'cpu', 'cuda' or 'cuda:N'.
    dtype
        'auto', 'float32', 'float16' or 'bfloat16'.
    cache_dir
        hub cache root the prefetch command filled (default: the hub's).

    Returns
    -------
    The ClipSegModel in eval mode. Never downloads.

    Raises
    ------
    ValueError
        unknown name, device or dtype (valid choices listed).
    ModelLoadError
        weights not cached, missing or unreadable (says how to fetch them).

    """
    name = (name or '').strip()
    if name == TABLETOP or is_tabletop_dir(name):
        return load_tabletop_clipseg(checkpoint_dir(name), device, dtype)
    device, dtype = resolve_placement(device, dtype)
    spec = clipseg_spec(name)
    if spec is not None and spec.config:
        model = _random_clipseg(spec.config)
    else:
        model = _pretrained_clipseg(name, dtype, cache_dir)
    size = spec.image_size if spec is not None else CLIPSEG_SIZE
    return ClipSegModel(model=model.to(device, dtype).eval(), name=name, image_size=size,
                        mean=IMAGENET_MEAN, std=IMAGENET_STD, device=device, dtype=dtype)


def check_clipseg_path(name: str) -> None:
    """Raise ModelNotFoundError when `name` is a local path that holds no CLIPSeg model."""
    name = (name or '').strip()
    if name == TABLETOP or is_tabletop_dir(name) or clipseg_spec(name) is not None or \
            not _is_path(name):
        return  # the bundled model, a known name or a hub id
    if not os.path.isfile(os.path.join(os.path.expanduser(name), 'config.json')):
        raise ModelNotFoundError(
            f"CLIPSeg '{name}' is neither a known name ({', '.join(list_clipseg_models())}) "
            f'nor a directory with config.json and weights (as written by save_pretrained)')


def _random_clipseg(config: str) -> torch.nn.Module:
    from transformers import CLIPSegForImageSegmentation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return CLIPSegForImageSegmentation(clipseg_config(config))


def _is_path(name: str) -> bool:
    return name.startswith(('/', '.', '~')) or os.path.exists(name) or name.count('/') != 1


def _pretrained_clipseg(name: str, dtype, cache_dir) -> torch.nn.Module:
    from transformers import CLIPSegForImageSegmentation
    fetch = prefetch_command(clipseg=name, cache_dir=cache_dir)
    if _is_path(name):
        check_clipseg_path(name)
        source = os.path.expanduser(name)
    else:
        source = name
        cached = huggingface_hub.try_to_load_from_cache(name, 'config.json', cache_dir=cache_dir)
        if not isinstance(cached, str):
            root = cache_dir or huggingface_hub.constants.HF_HUB_CACHE
            raise ModelLoadError(
                f"CLIPSeg '{name}': weights are not in the local hub cache (looked in {root}); "
                f'models are never downloaded at load time. Fetch them on a connected machine '
                f"with: {fetch} (or the console script 'prefetch' with the same arguments)")
    try:
        return CLIPSegForImageSegmentation.from_pretrained(
            source, cache_dir=cache_dir, local_files_only=True, dtype=dtype)
    except Exception as e:
        raise ModelLoadError(
            f"CLIPSeg '{name}': cannot load weights from {source} ({type(e).__name__}: {e}). "
            f'They may be incomplete or corrupt; fetch them again with: {fetch}') from e


class ClipSegRunner:
    """
    Segment several phrases in one image with a single CLIPSeg vision pass.

    transformers' forward repeats the frame once per prompt; here the vision tower runs once
    and only the light decoder sees one row per phrase.

    """

    def __init__(self, model: ClipSegModel):
        self.model = model
        self.text_cache = TextCache(self._encode_text, model.name)

    def encode_text(self, phrases) -> torch.Tensor:
        """Return CLIPSeg conditional embeddings [N, projection_dim], cached per phrase."""
        return self.text_cache.get(list(phrases) if not isinstance(phrases, str) else [phrases])

    @torch.no_grad()
    def visual(self, pixels: torch.Tensor) -> list:
        """Run the vision tower once on [B, 3, S, S]; return hidden states [B, T, W] per layer."""
        if pixels.ndim != 4 or pixels.shape[0] < 1 or pixels.shape[1] != 3:
            raise ValueError(f'pixels must be [B, 3, S, S], got {list(pixels.shape)}')
        net = self.model.model
        outputs = net.clip.vision_model(
            pixel_values=pixels.to(self.model.device, self.model.dtype),
            output_hidden_states=True, interpolate_pos_encoding=True)
        # hidden_states[0] is the embedding output, so layer i is at i + 1.
        return [outputs.hidden_states[i + 1] for i in net.extract_layers]

    @torch.no_grad()
    def decode(self, activations: list, cond: torch.Tensor) -> torch.Tensor:
        """Return logits [N, s, s] for N conditional embeddings over one image's activations."""
        net = self.model.model
        cond = cond.to(self.model.device, self.model.dtype)
        if not 0 <= net.config.conditional_layer < len(activations):
            # Without FiLM nothing broadcasts the batch-1 stream to N rows.
            activations = [a.expand(cond.shape[0], -1, -1) for a in activations]
        # Batch-1 activations broadcast against the N-row FiLM output inside the decoder.
        logits = net.decoder(activations, cond).logits
        return logits.reshape(cond.shape[0], *logits.shape[-2:])

    def probabilities(self, rgb: np.ndarray, phrases) -> np.ndarray:
        """Return sigmoid maps float32 [N, H, W] resized to the original image size."""
        return self.probabilities_batch([rgb], [phrases])[0]

    @torch.inference_mode()
    def probabilities_batch(self, images: list, phrase_lists: list) -> list:
        """
        Return the maps of several images: one vision pass over the batch, a decoder per image.

        `images` are RGB uint8 [H, W, 3] of any sizes, `phrase_lists` one phrase list per
        image; returns one float32 [N, H, W] per image, as `probabilities` gives it.
        """
        sizes = [validate_rgb(rgb).shape[:2] for rgb in images]
        busy = [b for b, phrases in enumerate(phrase_lists) if len(phrases)]
        maps = [np.zeros((0, h, w), np.float32) for h, w in sizes]
        if not busy:
            return maps
        m = self.model
        pixels = torch.cat([preprocess(images[b], m.image_size, m.mean, m.std, m.device,
                                       m.dtype) for b in busy])  # [B, 3, S, S]
        activations = self.visual(pixels)
        for row, b in enumerate(busy):
            logits = self.decode([a[row:row + 1] for a in activations],
                                 self.encode_text(phrase_lists[b]))
            probs = torch.sigmoid(logits.float())[:, None]  # [N, 1, s, s]
            probs = F.interpolate(probs, size=sizes[b], mode='bilinear', align_corners=False)
            maps[b] = probs[:, 0].cpu().numpy().astype(np.float32, copy=False)
        return maps

    @torch.no_grad()
    def _encode_text(self, phrases: list) -> torch.Tensor:
        tokens = tokenize(phrases).to(self.model.device)
        return self.model.model.clip.get_text_features(input_ids=tokens).pooler_output
