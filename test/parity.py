"""Parity of one grounding backend with another: the tolerances every backend test holds."""
import numpy as np
import pytest

from clip_ros.perception.geometry import box_iou
from clip_ros.perception.loading import load_clip, load_clipseg
from clip_ros.perception.tabletop_model import load_tabletop_clip, load_tabletop_clipseg

# The same tolerances hold for ONNX Runtime, Triton (its server runs the same graphs under ONNX
# Runtime) and OpenVINO with its precision hint forced to f32 (its CPU default on this Xeon is
# bf16, which differs from torch by about 0.03).
MAP_TOL = 1e-4  # max abs difference of CLIPSeg probabilities, any pixel
PROB_TOL = 1e-4  # max abs difference of CLIP re-scoring probabilities and final scores
MIN_IOU = 0.99  # box IoU of matching detections
PHRASES = ['red block', 'blue ball', 'green cube']


def load_models(name: str) -> tuple:
    """Return (clip, clipseg) of the tiny random configuration or the bundled tabletop model."""
    if name == 'tiny':
        return load_clip('tiny', '', device='cpu'), load_clipseg('tiny', device='cpu')
    return load_tabletop_clip(device='cpu'), load_tabletop_clipseg(device='cpu')


def assert_same_results(ref, got) -> None:
    """Assert two GroundingResults agree within the tolerances above."""
    assert np.abs(ref.heatmaps - got.heatmaps).max() <= MAP_TOL
    assert [d.phrase for d in ref.detections] == [d.phrase for d in got.detections]
    for a, b in zip(ref.detections, got.detections):
        assert box_iou(a.box, b.box)[0, 0] >= MIN_IOU
        assert b.score == pytest.approx(a.score, abs=PROB_TOL)
    assert ref.rejected == got.rejected
