"""
ONNX graphs of the passes the grounding pipeline runs, cached per model, input size and weights.

Five graphs, and a sixth for a model with a shape head, all float32 on CPU at export time:

- clipseg_visual: pixels [B, 3, S, S] -> the hidden states at CLIPSeg's extract_layers.
- clipseg_decoder: one image's activations [1, T, W] each + conditionals [N, D] -> logits
  [N, s, s], N dynamic (the same broadcasting as ClipSegRunner.decode).
- clipseg_text: token ids [N, L] -> CLIPSeg conditional embeddings [N, D].
- clip_image: crop pixels [B, 3, s, s] -> CLIP image features [B, D] (not normalised).
- clip_text: token ids [N, L] -> CLIP text features [N, D] (not normalised).
- shape: centre pixels of shape crops [B, 3, s, s] -> shape head logits [B, C]
  (perception.shape_head; the last column is "no object" for a head with a background class).

Graphs live under <cache>/<model name>-<input size>px-<weights hash>-g<GRAPH_VERSION>/; a
model whose weights or input size change, or graphs written by an earlier version of this
module, get a new directory, so stale graphs are never served.

Every Softmax gets its input clamped to [max - SOFTMAX_FLOOR, max] first. ONNX Runtime's CPU
exp slows down about 6x on the far tail of attention scores (5.2 ms against 0.8 ms for one
[5, 2, 257, 257] Softmax of scale-30 scores); those terms are below e^-80 of the largest, so the
probabilities change by less than 1e-34.
"""
import copy
import hashlib
import json
import os
from pathlib import Path
import re
import threading
import warnings

import torch

from clip_ros.perception.tokenizer import tokenize

CACHE_ENV = 'CLIP_ROS_ONNX_CACHE'
DEFAULT_CACHE = Path('~/.cache/clip_ros/onnx')
OPSET = 17
CLIPSEG_GRAPHS = ('clipseg_visual', 'clipseg_decoder', 'clipseg_text')
CLIP_GRAPHS = ('clip_image', 'clip_text')
MANIFEST = 'manifest.json'
GRAPH_VERSION = 2  # bump when the exported graphs change for the same weights
SOFTMAX_FLOOR = 80.0  # e^-80 ~ 1.8e-35: still a normal float32, unlike the terms it replaces


def cache_root(cache_dir=None) -> Path:
    """Return the graph cache root: cache_dir, else $CLIP_ROS_ONNX_CACHE, else ~/.cache/..."""
    return Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def weights_hash(module: torch.nn.Module) -> str:
    """Return a sha256 hex digest of a module's parameters and buffers (names, shapes, bytes)."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f'{key}:{tensor.dtype}:{tuple(tensor.shape)};'.encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def graph_dir(handle, cache_dir=None) -> Path:
    """
    Return the directory of a loaded model's graphs: <root>/<safe name>-<size>px-<hash[:16]>.

    The graphs are traced at the handle's input size, so another size gets graphs of its own.
    """
    return _named_dir(f'{handle.name}-{int(handle.image_size)}px', handle.model, cache_dir)


def _named_dir(name: str, module: torch.nn.Module, cache_dir=None) -> Path:
    safe = re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('_') or 'model'
    return cache_root(cache_dir) / f'{safe}-{weights_hash(module)[:16]}-g{GRAPH_VERSION}'


class _ClipSegVisual(torch.nn.Module):
    """CLIPSeg vision pass: pixels -> hidden states at extract_layers."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, pixels):
        outputs = self.net.clip.vision_model(
            pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=True)
        return tuple(outputs.hidden_states[i + 1] for i in self.net.extract_layers)


class _ClipSegDecoder(torch.nn.Module):
    """CLIPSeg decoder: activations of one image + N conditionals -> logits."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, *inputs):
        *activations, cond = inputs
        if not 0 <= self.net.config.conditional_layer < len(activations):
            activations = [a.expand(cond.shape[0], -1, -1) for a in activations]
        logits = self.net.decoder(activations, cond).logits
        return logits.reshape(cond.shape[0], logits.shape[-2], logits.shape[-1])


class _ClipSegText(torch.nn.Module):
    """CLIPSeg text tower: token ids -> conditional embeddings."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, tokens):
        return self.net.clip.get_text_features(input_ids=tokens).pooler_output


class _ClipImage(torch.nn.Module):
    """CLIP image tower: crop pixels -> features."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixels):
        return self.model.encode_image(pixels)


class _ClipText(torch.nn.Module):
    """CLIP text tower: token ids -> features."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens):
        return self.model.encode_text(tokens)


def _cpu_float(module: torch.nn.Module) -> torch.nn.Module:
    """Return a float32 CPU copy of the module in eval mode (the original is left alone)."""
    first = next(module.parameters(), None)
    if first is not None and (first.device.type != 'cpu' or first.dtype != torch.float32):
        module = copy.deepcopy(module).to('cpu', torch.float32)
    return module.eval()


def _export(module, args, path: Path, inputs: list, outputs: list, dynamic: dict) -> None:
    tmp = path.with_name(f'{path.name}.{os.getpid()}.{threading.get_ident()}.tmp')
    # MultiheadAttention's fused fast path has no ONNX symbolic. It is taken whenever no weight
    # needs grad (a frozen or LoRA-merged model, even under enable_grad): switch it off.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # tracer warnings about python ints in transformers
            torch.onnx.export(module, args, str(tmp), input_names=inputs, output_names=outputs,
                              dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    clamp_softmax_inputs(tmp)
    os.replace(tmp, path)  # a crash mid-export never leaves a half-written graph in the cache


def clamp_softmax_inputs(path: Path) -> int:
    """
    Rewrite every Softmax of the ONNX file at `path` to see max(x, max(x) - SOFTMAX_FLOOR).

    Returns the number of Softmax nodes rewritten (the file is saved in place).
    """
    import onnx
    from onnx import helper, numpy_helper
    import numpy as np

    model = onnx.load(str(path))
    graph = model.graph
    nodes, count = [], 0
    for node in graph.node:
        if node.op_type == 'Softmax':
            axis = next((a.i for a in node.attribute if a.name == 'axis'), -1)
            base = f'{node.name or node.output[0]}/clamp'
            floor = f'{base}/floor'
            graph.initializer.append(numpy_helper.from_array(
                np.array(-SOFTMAX_FLOOR, np.float32), floor))
            nodes += [helper.make_node('ReduceMax', [node.input[0]], [f'{base}/max'],
                                       name=f'{base}/ReduceMax', axes=[axis], keepdims=1),
                      helper.make_node('Add', [f'{base}/max', floor], [f'{base}/low'],
                                       name=f'{base}/Add'),
                      helper.make_node('Max', [node.input[0], f'{base}/low'], [f'{base}/out'],
                                       name=f'{base}/Max')]
            node.input[0] = f'{base}/out'
            count += 1
        nodes.append(node)
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.save(model, str(path))
    return count


def _probe_tokens(count: int = 2) -> torch.Tensor:
    return tokenize(['a photo', 'a red block on the table'][:count])


def export_clipseg(handle, cache_dir=None, force: bool = False) -> dict:
    """
    Write (or reuse) the CLIPSeg graphs of a loaded ClipSegModel.

    Returns
    -------
    {graph name: Path} for clipseg_visual, clipseg_decoder and clipseg_text.

    """
    directory = graph_dir(handle, cache_dir)
    paths = {name: directory / f'{name}.onnx' for name in CLIPSEG_GRAPHS}
    if not force and all(p.is_file() for p in paths.values()):
        return paths
    directory.mkdir(parents=True, exist_ok=True)
    net = _cpu_float(handle.model)
    size = int(handle.image_size)
    pixels = torch.zeros(2, 3, size, size)
    visual = _ClipSegVisual(net)
    layers = [f'hidden_{i}' for i in net.extract_layers]
    _export(visual, (pixels,), paths['clipseg_visual'], ['pixels'], layers,
            {'pixels': {0: 'batch'}, **{name: {0: 'batch'} for name in layers}})
    with torch.no_grad():
        activations = [a[:1] for a in visual(pixels)]
        cond = _ClipSegText(net)(_probe_tokens())
    # Trace with 2 conditionals so N stays symbolic; activations keep their batch of 1.
    _export(_ClipSegDecoder(net), (*activations, cond), paths['clipseg_decoder'],
            [*layers, 'conditionals'], ['logits'],
            {'conditionals': {0: 'phrases'}, 'logits': {0: 'phrases'}})
    _export(_ClipSegText(net), (_probe_tokens(),), paths['clipseg_text'], ['tokens'],
            ['embeddings'], {'tokens': {0: 'phrases'}, 'embeddings': {0: 'phrases'}})
    _write_manifest(directory, handle, 'clipseg', {'layers': layers})
    return paths


def export_clip(handle, cache_dir=None, force: bool = False) -> dict:
    """
    Write (or reuse) the CLIP graphs of a loaded ClipModel.

    Returns
    -------
    {graph name: Path} for clip_image and clip_text.

    """
    directory = graph_dir(handle, cache_dir)
    paths = {name: directory / f'{name}.onnx' for name in CLIP_GRAPHS}
    if not force and all(p.is_file() for p in paths.values()):
        return paths
    directory.mkdir(parents=True, exist_ok=True)
    model = _cpu_float(handle.model)
    size = int(handle.image_size)
    _export(_ClipImage(model), (torch.zeros(2, 3, size, size),), paths['clip_image'],
            ['pixels'], ['features'], {'pixels': {0: 'crops'}, 'features': {0: 'crops'}})
    _export(_ClipText(model), (_probe_tokens(),), paths['clip_text'], ['tokens'],
            ['features'], {'tokens': {0: 'phrases'}, 'features': {0: 'phrases'}})
    _write_manifest(directory, handle, 'clip', {})
    return paths


def export_shape(clip, cache_dir=None, force: bool = False) -> dict:
    """
    Write (or reuse) the graph of a ClipModel's shape head (clip.shape).

    Returns
    -------
    {'shape': Path}, or {} for a model without a shape head.

    """
    head = getattr(clip, 'shape', None)
    if head is None:
        return {}
    directory = _named_dir(f'{clip.name}-shape-{int(head.size)}px', head.net, cache_dir)
    path = directory / 'shape.onnx'
    if force or not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        _export(_cpu_float(head.net), (torch.zeros(2, 3, head.size, head.size),), path,
                ['pixels'], ['logits'], {'pixels': {0: 'crops'}, 'logits': {0: 'crops'}})
        _write_manifest(directory, clip, 'shape', {'image_size': head.size, **head.config()})
    return {'shape': path}


def _write_manifest(directory: Path, handle, kind: str, extra: dict) -> None:
    manifest = {'name': handle.name, 'kind': kind, 'image_size': int(handle.image_size),
                'opset': OPSET, 'graph_version': GRAPH_VERSION, 'softmax_floor': SOFTMAX_FLOOR,
                'torch': torch.__version__, **extra}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1) + '\n', encoding='utf-8')


def export_models(clip, clipseg, cache_dir=None, force: bool = False) -> dict:
    """Export both models' graphs; return {graph name: Path} for all five (six: shape head)."""
    return {**export_clipseg(clipseg, cache_dir, force), **export_clip(clip, cache_dir, force),
            **export_shape(clip, cache_dir, force)}
