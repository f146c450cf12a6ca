"""
Loaded models: one handle type for every network the perception stack runs.

A handle carries the network with what is needed to feed it (input size, normalisation, device,
dtype); ClipModel adds CLIP's text encoding with its per-phrase cache. torch is imported only
when a handle with weights runs, so a Triton client (perception.triton_client) never loads it.
"""
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from clip_ros.perception.text_cache import TextCache

if TYPE_CHECKING:
    import torch


@dataclass(eq=False)
class ModelHandle:
    """A loaded network in eval mode with its preprocessing constants."""

    model: 'torch.nn.Module'  # eval mode; None for a Triton client
    name: str  # unique id incl. weights, e.g. 'ViT-B-16/openai', 'CIDAS/clipseg-rd64-refined'
    image_size: int  # square input size in pixels
    mean: tuple  # per-channel normalisation mean (RGB, 0..1)
    std: tuple  # per-channel normalisation std
    device: 'torch.device'  # where the weights live
    dtype: 'torch.dtype'  # weight dtype
    # How the training frames look (model config 'clip_ros' "light", written by `calibrate`);
    # see perception.light. Empty: frames are not light-corrected.
    light: dict = field(default_factory=dict)


# CLIPSeg needs nothing beyond the common fields; ClipSegRunner does its text encoding.
ClipSegModel = ModelHandle


@dataclass(eq=False)
class ClipModel(ModelHandle):
    """A loaded CLIP (open_clip, or the tabletop model's towers) that encodes text and crops."""

    logit_scale: float = 100.0  # exp of the learned temperature (about 100 for trained models)
    # Object names the model was trained to tell apart; re-scoring lets them compete with a query.
    vocabulary: tuple = ()
    # Word -> vocabulary word(s) (model config 'clip_ros' "synonyms"); see perception.vocabulary.
    synonyms: dict = field(default_factory=dict)
    # Abstention thresholds (model config 'clip_ros' "abstain", written by `calibrate`); see
    # perception.grounding.AbstainRule. Empty: every candidate is accepted.
    abstain: dict = field(default_factory=dict)
    # Shape head (perception.shape_head.ShapeHead; model config 'clip_ros' "shape"), or None.
    shape: object = field(default=None, repr=False)
    text_cache: TextCache = field(default=None, repr=False)  # filled in __post_init__

    def __post_init__(self):
        if self.text_cache is None:
            self.text_cache = TextCache(self._encode_text, self.name)

    def encode_text(self, phrases) -> 'torch.Tensor':
        """Return L2-normalised float32 text embeddings [N, D], cached per phrase."""
        return self.text_cache.get(list(phrases) if not isinstance(phrases, str) else [phrases])

    def encode_images(self, pixels: 'torch.Tensor') -> 'torch.Tensor':
        """Return L2-normalised float32 image embeddings [B, D] for normalised pixels [B,3,S,S]."""
        import torch
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f'pixels must be [B, 3, S, S], got {list(pixels.shape)}')
        with torch.no_grad():
            features = self.model.encode_image(pixels.to(self.device, self.dtype))
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def crop_features(self, items: list, pad: float) -> np.ndarray:
        """
        Return float32 [K, D] embeddings of the boxes of several frames, in one image pass.

        items: (rgb uint8 [H, W, 3], boxes [k, 4] x_min, y_min, x_max, y_max) per frame; each
        box is padded by `pad` of its size on every side (perception.image.crops).
        """
        import torch

        from clip_ros.perception.image import crops
        pixels = [crops(rgb, boxes, self.image_size, self.mean, self.std, self.device,
                        self.dtype, pad=pad) for rgb, boxes in items]
        with torch.inference_mode():
            return self.encode_images(torch.cat(pixels)).float().cpu().numpy()

    def text_features(self, texts: list) -> np.ndarray:
        """Return encode_text as float32 numpy [N, D] (cached per phrase)."""
        return self.encode_text(texts).float().cpu().numpy()

    def _encode_text(self, phrases: list) -> 'torch.Tensor':
        import torch
        import torch.nn.functional as F

        from clip_ros.perception.tokenizer import tokenize
        with torch.no_grad():
            features = self.model.encode_text(tokenize(phrases).to(self.device))
        return F.normalize(features.float(), dim=-1)
