"""
Static shapes for the GPU path: the passes padded to shape buckets and replayed as CUDA graphs.

A CUDA graph replays one fixed set of kernels on fixed buffers, so every input shape needs its
own capture. The pipeline's varying sizes are bucketed: the decoder's phrase count and the CLIP
crop batch (and the frame batch of the vision pass) are padded up to the next bucket (1, 2, 4,
8, ... by default) and the padded rows are dropped from the outputs. The rows of these passes
never mix (each phrase, crop or frame is its own row through the network), so padding leaves
the real rows' results unchanged; test_static_shapes.py checks that on the CPU.

On CUDA each (pass, bucket) is captured once with torch.cuda.CUDAGraph and then replayed; on
the CPU, or where a capture fails, the same padded pass runs eagerly.
"""
from dataclasses import dataclass, field, fields
import logging

import torch

from clip_ros.perception.clipseg import ClipSegRunner
from clip_ros.perception.handles import ClipModel

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
_log = logging.getLogger(__name__)


def bucket(count: int, buckets=DEFAULT_BUCKETS) -> int:
    """Return the smallest bucket >= count; past the largest, the next multiple of it."""
    if count < 1:
        raise ValueError(f'count must be >= 1, got {count}')
    for size in buckets:
        if size >= count:
            return size
    largest = buckets[-1]
    return -(-count // largest) * largest


def pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """Return tensor with dim 0 padded to `rows` by repeating its first row (real values)."""
    missing = rows - tensor.shape[0]
    if missing <= 0:
        return tensor
    # A copy of a real row, not zeros: no padded row can overflow fp16 or divide by zero.
    return torch.cat([tensor, tensor[:1].expand(missing, *tensor.shape[1:])])


class GraphCache:
    """Run fn on fixed-shape inputs, captured as one CUDA graph per key when enabled."""

    def __init__(self, enabled: bool):
        self.enabled = bool(enabled)
        self.graphs = {}  # key -> (graph, static inputs, static outputs), or None: eager
        self.captured = 0

    def __call__(self, key, fn, *inputs) -> list:
        """Return fn(*inputs) as a list: a replay of the key's graph, or run eagerly."""
        if not self.enabled:
            return _as_list(fn(*inputs))
        key = (key, *(tuple(x.shape) for x in inputs), *(x.dtype for x in inputs))
        if key not in self.graphs:
            self.graphs[key] = self._capture(key, fn, inputs)
        entry = self.graphs[key]
        if entry is None:
            return _as_list(fn(*inputs))
        graph, static_inputs, static_outputs = entry
        for buffer, value in zip(static_inputs, inputs):
            buffer.copy_(value)
        graph.replay()
        # The next replay overwrites the static outputs: hand out copies.
        return [out.clone() for out in static_outputs]

    def _capture(self, key, fn, inputs):
        static_inputs = [x.clone() for x in inputs]
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up runs outside the graph (allocator, autotuning)
                    fn(*static_inputs)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outputs = fn(*static_inputs)
        except RuntimeError as e:  # an op that cannot be captured: stay eager for this key
            _log.warning('CUDA graph capture of %s failed (%s); running it eagerly', key, e)
            return None
        self.captured += 1
        return graph, static_inputs, _as_list(outputs)


def _as_list(outputs) -> list:
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _on_cuda(handle) -> bool:
    return torch.device(handle.device).type == 'cuda'


class StaticClipSegRunner(ClipSegRunner):
    """ClipSegRunner with the frame batch and the phrase count padded to buckets."""

    def __init__(self, model, buckets=DEFAULT_BUCKETS, cuda_graphs=None):
        super().__init__(model)
        self.buckets = tuple(buckets)
        self.graphs = GraphCache(_on_cuda(model) if cuda_graphs is None else cuda_graphs)

    def visual(self, pixels: torch.Tensor) -> list:
        """Run the vision tower on [B, 3, S, S] padded to a bucket; return [B, T, W] per layer."""
        if pixels.ndim != 4 or pixels.shape[0] < 1 or pixels.shape[1] != 3:
            raise ValueError(f'pixels must be [B, 3, S, S], got {list(pixels.shape)}')
        count = pixels.shape[0]
        padded = pad_rows(pixels.to(self.model.device, self.model.dtype),
                          bucket(count, self.buckets))
        return [a[:count] for a in self.graphs('visual', super().visual, padded)]

    def decode(self, activations: list, cond: torch.Tensor) -> torch.Tensor:
        """Return logits [N, s, s]; the decoder runs on N padded to a bucket."""
        count = cond.shape[0]
        cond = pad_rows(cond.to(self.model.device, self.model.dtype), bucket(count, self.buckets))
        logits = self.graphs('decode', lambda c, *a: super(StaticClipSegRunner, self).decode(
            list(a), c), cond, *activations)
        return logits[0][:count]


@dataclass(eq=False)
class StaticClipModel(ClipModel):
    """ClipModel whose image tower runs crop batches padded to a bucket."""

    buckets: tuple = DEFAULT_BUCKETS
    graphs: GraphCache = field(default=None, repr=False)

    @classmethod
    def from_model(cls, clip: ClipModel, buckets=DEFAULT_BUCKETS, cuda_graphs=None):
        """Wrap a loaded ClipModel (the weights and the text cache are shared)."""
        values = {f.name: getattr(clip, f.name) for f in fields(ClipModel)}
        enabled = _on_cuda(clip) if cuda_graphs is None else cuda_graphs
        return cls(**values, buckets=tuple(buckets), graphs=GraphCache(enabled))

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Return L2-normalised float32 image embeddings [B, D]; B padded to a bucket inside."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f'pixels must be [B, 3, S, S], got {list(pixels.shape)}')
        count = pixels.shape[0]
        padded = pad_rows(pixels.to(self.device, self.dtype), bucket(count, self.buckets))
        return self.graphs('image', super().encode_images, padded)[0][:count]


def make_static(clip: ClipModel, clipseg, buckets=DEFAULT_BUCKETS, cuda_graphs=None) -> tuple:
    """Return (StaticClipModel, StaticClipSegRunner); CUDA graphs default on for CUDA models."""
    return (StaticClipModel.from_model(clip, buckets, cuda_graphs),
            StaticClipSegRunner(clipseg, buckets, cuda_graphs))
