"""
Inference backends for the grounding pipeline: torch (default) or ONNX Runtime.

make_pipeline builds a GroundingPipeline whose CLIPSeg runner and CLIP model run either the
torch modules or the exported ONNX graphs (perception.export); everything between the passes
(thresholds, components, re-scoring softmax) is the same code for both.
"""
from dataclasses import dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F

from clip_ros.perception.clipseg import ClipSegRunner
from clip_ros.perception.export import export_clip, export_clipseg
from clip_ros.perception.grounding import GroundingPipeline
from clip_ros.perception.handles import ClipModel
from clip_ros.perception.tokenizer import tokenize

BACKENDS = ('torch', 'onnxruntime')
DEFAULT_PROVIDERS = ('CPUExecutionProvider',)


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise ValueError(f"backend 'onnxruntime' is not available (onnxruntime is not installed: "
                         f'{e}); valid backends: {", ".join(BACKENDS)}') from e
    return onnxruntime


def check_providers(providers=None) -> list:
    """Return the ONNX Runtime providers to use; ValueError names the available ones."""
    ort = _onnxruntime()
    if isinstance(providers, str):
        raise ValueError(f'providers must be a list of names, got the single string {providers!r}')
    providers = list(providers or DEFAULT_PROVIDERS)
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        raise ValueError(f'ONNX Runtime providers {missing} are not available here; '
                         f'available: {", ".join(available)}')
    return providers


class _Session:
    """One ONNX Runtime session fed with torch tensors and returning float32 CPU tensors."""

    def __init__(self, path, providers):
        ort = _onnxruntime()
        self.path = str(path)
        self.session = ort.InferenceSession(self.path, providers=list(providers))
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, *tensors) -> list:
        feed = {name: t.detach().cpu().numpy() for name, t in zip(self.inputs, tensors)}
        return [torch.from_numpy(np.asarray(o)) for o in self.session.run(None, feed)]


class OnnxClipSegRunner(ClipSegRunner):
    """ClipSegRunner whose vision pass, decoder and text tower run exported ONNX graphs."""

    def __init__(self, model, providers=DEFAULT_PROVIDERS, cache_dir=None):
        paths = export_clipseg(model, cache_dir)
        self.providers = list(providers)
        self.sessions = {name: _Session(path, providers) for name, path in paths.items()}
        self.graph_paths = paths
        super().__init__(model)

    def visual(self, pixels: torch.Tensor) -> list:
        """Run the vision graph on [B, 3, S, S]; return hidden states [B, T, W] per layer."""
        if pixels.ndim != 4 or pixels.shape[0] < 1 or pixels.shape[1] != 3:
            raise ValueError(f'pixels must be [B, 3, S, S], got {list(pixels.shape)}')
        return self.sessions['clipseg_visual'](pixels.float())

    def decode(self, activations: list, cond: torch.Tensor) -> torch.Tensor:
        """Return logits [N, s, s] for N conditional embeddings over one image's activations."""
        return self.sessions['clipseg_decoder'](*activations, cond.float())[0]

    def _encode_text(self, phrases: list) -> torch.Tensor:
        return self.sessions['clipseg_text'](tokenize(phrases))[0]


@dataclass(eq=False)
class OnnxClipModel(ClipModel):
    """ClipModel whose image and text towers run exported ONNX graphs (float32, CPU tensors)."""

    sessions: dict = field(default=None, repr=False)  # graph name -> _Session

    @classmethod
    def from_model(cls, clip: ClipModel, providers=DEFAULT_PROVIDERS, cache_dir=None):
        """Export (or reuse) the graphs of a loaded ClipModel and open them."""
        paths = export_clip(clip, cache_dir)
        values = {f.name: getattr(clip, f.name) for f in fields(ClipModel)}
        values['text_cache'] = None  # a cache of its own, filled by the ONNX text tower
        return cls(**values, sessions={name: _Session(path, providers)
                                       for name, path in paths.items()})

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Return L2-normalised float32 image embeddings [B, D] for normalised pixels [B,3,S,S]."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f'pixels must be [B, 3, S, S], got {list(pixels.shape)}')
        return F.normalize(self.sessions['clip_image'](pixels.float())[0], dim=-1)

    def _encode_text(self, phrases: list) -> torch.Tensor:
        return F.normalize(self.sessions['clip_text'](tokenize(phrases))[0], dim=-1)


def make_pipeline(clip, clipseg, backend: str = 'torch', providers=None, cache_dir=None,
                  **options) -> GroundingPipeline:
    """
    Build a GroundingPipeline on the chosen backend.

    Parameters
    ----------
    clip, clipseg
        loaded ClipModel and ClipSegModel (perception.loading).
    backend
        'torch' (the modules as loaded) or 'onnxruntime' (graphs exported on first use and
        cached per model name and weights hash, perception.export).
    providers
        ONNX Runtime execution providers in order of preference (default
        CPUExecutionProvider); each must be available in the installed onnxruntime.
    cache_dir
        graph cache root (default $CLIP_ROS_ONNX_CACHE or ~/.cache/clip_ros/onnx).
    options
        GroundingPipeline's keyword arguments (min_area, distractors, ...).

    Raises
    ------
    ValueError
        unknown or unavailable backend or provider (the message names the valid choices).

    """
    if backend not in BACKENDS:
        raise ValueError(f'unknown backend {backend!r}; valid backends: {", ".join(BACKENDS)}')
    pipeline = GroundingPipeline(clip, clipseg, **options)
    if backend == 'onnxruntime':
        providers = check_providers(providers)
        pipeline.runner = OnnxClipSegRunner(clipseg, providers, cache_dir)
        pipeline.clip = OnnxClipModel.from_model(clip, providers, cache_dir)
    elif providers:
        raise ValueError(f"providers apply to backend 'onnxruntime' only, not {backend!r}")
    pipeline.backend = backend
    return pipeline


__all__ = ['BACKENDS', 'check_providers', 'DEFAULT_PROVIDERS', 'make_pipeline',
           'OnnxClipModel', 'OnnxClipSegRunner']
