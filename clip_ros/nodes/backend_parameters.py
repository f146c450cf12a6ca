"""The `backend` parameters every perception node declares, and the options they give."""
import os

from clip_ros.nodes.common import describe
from clip_ros.perception.names import DEFAULT_PRECISION, DEFAULT_PROVIDERS


def backend_parameters() -> tuple:
    """Return (name, default, descriptor) for backend, onnx_providers and the OpenVINO ones."""
    ro = {'read_only': True}
    return (
        ('backend', 'torch', describe(
            "'torch', 'onnxruntime' or 'openvino' (graphs exported on first use, cached per "
            'model and weights under <cache_dir>/onnx or ~/.cache/clip_ros/onnx)', **ro)),
        ('onnx_providers', list(DEFAULT_PROVIDERS), describe(
            'ONNX Runtime execution providers in order of preference (backend onnxruntime)',
            **ro)),
        ('openvino_device', 'CPU', describe('OpenVINO device: CPU, GPU or NPU', **ro)),
        ('openvino_precision', DEFAULT_PRECISION, describe(
            "OpenVINO precision hint: 'auto' (the device's default; bf16 on Xeons with AMX), "
            "'f32', 'f16', 'bf16' or 'mixed' (CLIPSeg in f32: torch's boxes; CLIP at the "
            "device's default)", **ro)),
        ('threads', 0, describe(
            'CPU threads for inference (torch, and each ONNX Runtime / OpenVINO session); 0 '
            'picks 1 for small models (the bundled tabletop model: 31.9 frames/s on one thread, '
            "20.6 on two) and the library's default for larger ones. torch's count is "
            'process-wide', **ro)),
    )


def backend_options(values: dict) -> dict:
    """
    Return make_pipeline's backend, providers, device, precision and cache_dir keywords.

    `threads` is left out: it depends on the loaded models (use_cpu_threads).
    """
    backend = values['backend']
    cache = os.path.join(values['cache_dir'], 'onnx') if values['cache_dir'] else None
    openvino = backend == 'openvino'
    return {'backend': backend,
            'providers': list(values['onnx_providers']) if backend == 'onnxruntime' else None,
            'device': values['openvino_device'] if openvino else None,
            'precision': values['openvino_precision'] if openvino else None,
            'cache_dir': cache if backend != 'torch' else None}
