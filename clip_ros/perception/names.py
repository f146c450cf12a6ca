"""Default model and backend names the nodes declare as parameters, importable without torch."""

DEFAULT_CLIP = ('ViT-B-16', 'openai')
DEFAULT_CLIPSEG = 'CIDAS/clipseg-rd64-refined'
# Bundled trained model (clip_ros/models/tabletop): both a CLIP architecture and a CLIPSeg name.
TABLETOP = 'tabletop'

BACKENDS = ('torch', 'onnxruntime', 'openvino')
DEFAULT_PROVIDERS = ('CPUExecutionProvider',)
OPENVINO_DEVICES = ('CPU', 'GPU', 'NPU')
# Hint -> the device capability it needs. 'auto' leaves the device's default (bf16 on Xeons
# with AMX, f16 on GPUs); f32 for parity with torch. 'mixed': CLIPSeg in f32, so its maps and
# the boxes they give stay torch's, and CLIP's towers at the device's default.
PRECISIONS = {'auto': None, 'f32': 'FP32', 'f16': 'FP16', 'bf16': 'BF16', 'mixed': None}
# What each model runs at under 'mixed' (the shape head's floor, 0.1, is calibrated in f32).
MIXED = {'clipseg': 'f32', 'clip': 'auto', 'shape': 'f32'}
DEFAULT_PRECISION = 'auto'
