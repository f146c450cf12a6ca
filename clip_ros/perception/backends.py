"""
Inference backends for the grounding pipeline: torch (default), ONNX Runtime or OpenVINO.

make_pipeline builds a GroundingPipeline whose CLIPSeg runner and CLIP model run either the
torch modules or the exported ONNX graphs (perception.export) under ONNX Runtime or OpenVINO;
everything between the passes (thresholds, components, re-scoring softmax) is the same code
for all. make_clip and make_runner give the nodes that run one model the same choice.
"""
import copy
from dataclasses import dataclass, field, fields, replace
import importlib
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F

from clip_ros.perception.clipseg import ClipSegRunner
from clip_ros.perception.export import export_clip, export_clipseg, export_shape
from clip_ros.perception.grounding import GroundingPipeline
from clip_ros.perception.handles import ClipModel
from clip_ros.perception.names import (  # noqa: F401 - re-exported
    BACKENDS, DEFAULT_PRECISION, DEFAULT_PROVIDERS, MIXED, OPENVINO_DEVICES, PRECISIONS)
from clip_ros.perception.shape_crops import softmax
from clip_ros.perception.shape_head import ShapeHead
from clip_ros.perception.static_shapes import make_static
from clip_ros.perception.tokenizer import tokenize

# Up to this many weights a pass takes a few milliseconds and splitting it across cores costs
# more than it gains. Measured on 2 cores: the bundled model grounds 31.9 frames/s on one torch
# thread and 20.6 on two; default-size CLIPSeg + ViT-B/16 take 1224 ms on one and 582 on two.
SMALL_MODEL = 20_000_000


def _library(backend: str):
    """Import the runtime of `backend` ('onnxruntime' or 'openvino'); ValueError when absent."""
    try:
        return importlib.import_module(backend)
    except ImportError as e:
        raise ValueError(f"backend '{backend}' is not available ({backend} is not installed: "
                         f'{e}); valid backends: {", ".join(BACKENDS)}') from e


def check_providers(providers=None) -> list:
    """Return the ONNX Runtime providers to use; ValueError names the available ones."""
    ort = _library('onnxruntime')
    if isinstance(providers, str):
        raise ValueError(f'providers must be a list of names, got the single string {providers!r}')
    providers = list(providers or DEFAULT_PROVIDERS)
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        raise ValueError(f'ONNX Runtime providers {missing} are not available here; '
                         f'available: {", ".join(available)}')
    return providers


def check_openvino(device: str = 'CPU', precision: str = DEFAULT_PRECISION) -> tuple:
    """
    Return (device, precision) for OpenVINO; ValueError names the valid and available choices.

    device is CPU, GPU or NPU (or an indexed one such as GPU.1) and must be present here;
    precision is 'auto' (the device's default) or one the device lists among its
    OPTIMIZATION_CAPABILITIES (f32, f16, bf16).
    """
    ov = _library('openvino')
    device = (device or 'CPU').strip().upper()
    available = ov.Core().available_devices  # e.g. ['CPU', 'GPU.0', 'GPU.1']
    if device.split('.')[0] not in OPENVINO_DEVICES or not any(
            device == d or device == d.split('.')[0] for d in available):
        raise ValueError(f'OpenVINO device {device!r} is not available; valid devices: '
                         f'{", ".join(OPENVINO_DEVICES)} (present here: {", ".join(available)})')
    precision = (precision or DEFAULT_PRECISION).strip().lower()
    if precision not in PRECISIONS:
        raise ValueError(f'unknown OpenVINO precision {precision!r}; valid: '
                         f'{", ".join(PRECISIONS)}')
    if PRECISIONS[precision]:
        supported = ov.Core().get_property(device, 'OPTIMIZATION_CAPABILITIES')
        if PRECISIONS[precision] not in supported:
            valid = [k for k, v in PRECISIONS.items() if v is None or v in supported]
            raise ValueError(f'OpenVINO device {device} does not run {precision}; valid '
                             f'precisions there: {", ".join(valid)}')
    return device, precision


@dataclass(frozen=True)
class Engine:
    """How exported graphs run: ONNX Runtime with providers, or OpenVINO on a device."""

    backend: str = 'onnxruntime'
    providers: tuple = DEFAULT_PROVIDERS  # onnxruntime
    device: str = 'CPU'  # openvino
    precision: str = DEFAULT_PRECISION  # openvino
    threads: int = 0  # CPU threads per session; 0: the library's default (all cores)

    def session(self, path):
        """Open the graph at path; the session maps torch tensors to a list of tensors."""
        if self.backend == 'openvino':
            return _OpenVinoSession(path, self.device, self.precision, self.threads)
        return _Session(path, self.providers, self.threads)


def make_engine(backend: str, providers=None, device=None, precision=None,
                threads: int = 0) -> Engine:
    """
    Check a backend's options and return its Engine (None for 'torch').

    ValueError names the valid choices for an unknown backend, an unavailable provider or
    device, an unknown precision, or options given to a backend that does not take them.
    """
    if backend not in BACKENDS:
        raise ValueError(f'unknown backend {backend!r}; valid backends: {", ".join(BACKENDS)}')
    if providers and backend != 'onnxruntime':
        raise ValueError(f"providers apply to backend 'onnxruntime' only, not {backend!r}")
    if (device or precision) and backend != 'openvino':
        raise ValueError(f"device and precision apply to backend 'openvino' only, "
                         f'not {backend!r}')
    if backend == 'onnxruntime':
        return Engine('onnxruntime', providers=tuple(check_providers(providers)),
                      threads=threads)
    if backend == 'openvino':
        device, precision = check_openvino(device, precision)
        return Engine('openvino', device=device, precision=precision, threads=threads)
    return None


def cpu_threads(requested: int, *handles) -> int:
    """
    Return the CPU threads inference should use (0: the library's default).

    `requested` > 0 is kept; 0 picks 1 when every model in `handles` is on the CPU with at most
    SMALL_MODEL weights (the bundled tabletop model, the tiny test models), else 0. A model
    without local weights (a Triton client's) leaves the choice to the library.
    """
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise ValueError(f'threads must be 0 (automatic) or a positive count, got {requested!r}')
    if requested:
        return requested
    modules = [getattr(h, 'model', None) for h in handles]
    if not modules or not all(isinstance(m, torch.nn.Module) for m in modules):
        return 0
    small = all(sum(p.numel() for p in m.parameters()) <= SMALL_MODEL for m in modules)
    on_cpu = all(torch.device(h.device).type == 'cpu' for h in handles)
    return 1 if small and on_cpu else 0


def use_cpu_threads(requested: int, *handles) -> int:
    """Apply cpu_threads to torch (its thread count is process-wide); return the count."""
    threads = cpu_threads(requested, *handles)
    if threads:
        torch.set_num_threads(threads)
    return threads


class _Session:
    """One ONNX Runtime session fed with torch tensors and returning float32 CPU tensors."""

    def __init__(self, path, providers, threads: int = 0):
        ort = _library('onnxruntime')
        self.path = str(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(self.path, options, providers=list(providers))
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.seconds = 0.0  # spent in the graph, for the benchmarks' split of a frame's time

    def __call__(self, *tensors) -> list:
        feed = {name: t.detach().cpu().numpy() for name, t in zip(self.inputs, tensors)}
        start = time.perf_counter()
        outputs = self.session.run(None, feed)
        self.seconds += time.perf_counter() - start
        return [torch.from_numpy(np.asarray(o)) for o in outputs]


class _OpenVinoSession:
    """One OpenVINO compiled graph fed with torch tensors and returning float32 CPU tensors."""

    def __init__(self, path, device: str, precision: str, threads: int = 0):
        ov = _library('openvino')
        self.path, self.precision = str(path), precision
        config = {'PERFORMANCE_HINT': 'LATENCY'}
        if threads and device == 'CPU':
            config['INFERENCE_NUM_THREADS'] = int(threads)
        if PRECISIONS[precision]:
            config['INFERENCE_PRECISION_HINT'] = precision
        self.compiled = ov.Core().compile_model(self.path, device, config)
        self.request = self.compiled.create_infer_request()
        self.lock = threading.Lock()  # one infer request: one caller at a time
        self.seconds = 0.0  # spent in the graph, for the benchmarks' split of a frame's time

    def __call__(self, *tensors) -> list:
        inputs = [np.ascontiguousarray(t.detach().cpu().numpy()) for t in tensors]
        with self.lock:
            start = time.perf_counter()
            results = self.request.infer(inputs)
            self.seconds += time.perf_counter() - start
            # The request reuses its output buffers: copy before the next call overwrites them.
            return [torch.from_numpy(np.array(results[o], np.float32))
                    for o in self.compiled.outputs]


class OnnxClipSegRunner(ClipSegRunner):
    """ClipSegRunner whose vision pass, decoder and text tower run exported ONNX graphs."""

    def __init__(self, model, engine: Engine = None, cache_dir=None):
        engine = engine or Engine()
        paths = export_clipseg(model, cache_dir)
        self.engine = engine
        self.sessions = {name: engine.session(path) for name, path in paths.items()}
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

    sessions: dict = field(default=None, repr=False)  # graph name -> session

    @classmethod
    def from_model(cls, clip: ClipModel, engine: Engine = None, cache_dir=None):
        """Export (or reuse) the graphs of a loaded ClipModel and open them."""
        engine = engine or Engine()
        paths = export_clip(clip, cache_dir)
        values = {f.name: getattr(clip, f.name) for f in fields(ClipModel)}
        values['text_cache'] = None  # a cache of its own, filled by the exported text tower
        if clip.shape is not None:  # under 'mixed' precision the head keeps its own (f32)
            values['shape'] = GraphShapeHead(clip, engine, cache_dir)
        towers = _for(engine, 'clip')
        return cls(**values, sessions={name: towers.session(path) for name, path in paths.items()})

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Return L2-normalised float32 image embeddings [B, D] for normalised pixels [B,3,S,S]."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f'pixels must be [B, 3, S, S], got {list(pixels.shape)}')
        return F.normalize(self.sessions['clip_image'](pixels.float())[0], dim=-1)

    def _encode_text(self, phrases: list) -> torch.Tensor:
        return F.normalize(self.sessions['clip_text'](tokenize(phrases))[0], dim=-1)


class GraphShapeHead(ShapeHead):
    """
    A ShapeHead whose CNN runs the exported 'shape' graph.

    On the CPU a graph runtime runs this small CNN about 3x faster than torch (0.7 against
    2.3 ms a crop on one thread): per-op overhead, not arithmetic, dominates at its size.
    """

    def __init__(self, clip: ClipModel, engine: Engine, cache_dir=None):
        head = clip.shape
        # A CPU copy: the torch head (on CUDA, say) stays where it is for torch pipelines.
        super().__init__(copy.deepcopy(head.net).cpu(), head.shapes, head.pad, head.size,
                         device='cpu')
        self.session = _for(engine, 'shape').session(export_shape(clip, cache_dir)['shape'])

    def softmax(self, pixels: np.ndarray) -> np.ndarray:
        """Return the softmax [K, outputs] for the head's input pixels [K, 3, S, S]."""
        return softmax(self.session(torch.from_numpy(pixels))[0].numpy())


def _for(engine: Engine, model: str) -> Engine:
    """Return the engine one model runs on: 'mixed' precision splits into MIXED's per model."""
    return replace(engine, precision=MIXED[model]) if engine.precision == 'mixed' else engine


def make_clip(clip: ClipModel, engine: Engine = None, cache_dir=None) -> ClipModel:
    """Return the ClipModel as loaded (engine None: torch) or on the engine's graphs."""
    return clip if engine is None else OnnxClipModel.from_model(clip, engine, cache_dir)


def make_runner(clipseg, engine: Engine = None, cache_dir=None) -> ClipSegRunner:
    """Return a ClipSegRunner on torch (engine None) or on the engine's graphs."""
    return ClipSegRunner(clipseg) if engine is None else OnnxClipSegRunner(
        clipseg, _for(engine, 'clipseg'), cache_dir)


def make_pipeline(clip, clipseg, backend: str = 'torch', providers=None, cache_dir=None,
                  device=None, precision=None, static_shapes=None, threads: int = 0,
                  **options) -> GroundingPipeline:
    """
    Build a GroundingPipeline on the chosen backend.

    Parameters
    ----------
    clip, clipseg
        loaded ClipModel and ClipSegModel (perception.loading).
    backend
        'torch' (the modules as loaded), 'onnxruntime' or 'openvino' (graphs exported on first
        use and cached per model name and weights hash, perception.export).
    providers
        ONNX Runtime execution providers in order of preference (default
        CPUExecutionProvider); each must be available in the installed onnxruntime.
    cache_dir
        graph cache root (default $CLIP_ROS_ONNX_CACHE or ~/.cache/clip_ros/onnx).
    device, precision
        OpenVINO device (CPU, GPU, NPU; default CPU) and precision hint ('auto' = the
        device's default, 'f32', 'f16', 'bf16'; 'mixed' = CLIPSeg in f32, CLIP at the
        device's default).
    static_shapes
        backend torch: pad the phrase count, crop batch and frame batch to shape buckets and
        replay the passes as CUDA graphs (perception.static_shapes); None (default) turns it
        on when the models are on CUDA; True on the CPU pads without graphs.
    threads
        CPU threads of each ONNX Runtime / OpenVINO session (0: the library's default).
    options
        GroundingPipeline's keyword arguments (min_area, distractors, ...).

    Raises
    ------
    ValueError
        unknown or unavailable backend, provider, device or precision (the message names the
        valid choices).

    """
    engine = make_engine(backend, providers, device, precision, threads)
    if static_shapes and engine is not None:
        raise ValueError(f"static_shapes applies to backend 'torch' only, not {backend!r}")
    pipeline = GroundingPipeline(clip, clipseg, **options)
    if engine is not None:
        pipeline.runner = make_runner(clipseg, engine, cache_dir)
        pipeline.clip = make_clip(clip, engine, cache_dir)
    elif static_shapes or (static_shapes is None and torch.device(clip.device).type == 'cuda'
                           and torch.device(clipseg.device).type == 'cuda'):
        pipeline.clip, pipeline.runner = make_static(clip, clipseg)
    pipeline.backend = backend
    return pipeline


__all__ = ['BACKENDS', 'check_openvino', 'check_providers', 'cpu_threads', 'DEFAULT_PRECISION',
           'DEFAULT_PROVIDERS', 'Engine', 'GraphShapeHead', 'make_clip', 'make_engine',
           'make_pipeline', 'make_runner', 'OnnxClipModel', 'OnnxClipSegRunner',
           'OPENVINO_DEVICES', 'PRECISIONS', 'SMALL_MODEL', 'use_cpu_threads']
