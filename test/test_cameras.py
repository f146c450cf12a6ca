"""One grounding_node serving several cameras: batched pipeline, per-camera topics over DDS."""
import os

os.environ['ROS_DOMAIN_ID'] = '83'  # before rclpy: own domain, no cross-talk with other tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from clip_ros.perception.grounding import GroundingPipeline  # noqa: E402
from clip_ros.perception.loading import load_clip, load_clipseg  # noqa: E402
from clip_ros.sim.synthetic import scene_image  # noqa: E402

DOMAIN = 83
SIZES = [(160, 120), (96, 64), (160, 120)]
PHRASES = [['red block', 'blue ball'], ['green bowl'], ['red block', 'yellow block']]


def assert_same(single, batched) -> None:
    """Assert two GroundingResults agree (up to float rounding of batched matmuls)."""
    assert batched.phrases == single.phrases
    np.testing.assert_allclose(batched.heatmaps, single.heatmaps, atol=1e-5)
    assert [(d.phrase, d.box, d.area) for d in batched.detections] == \
        [(d.phrase, d.box, d.area) for d in single.detections]
    np.testing.assert_allclose([d.score for d in batched.detections],
                               [d.score for d in single.detections], atol=1e-5)
    np.testing.assert_array_equal(batched.label_image, single.label_image)


@pytest.mark.parametrize('model, thresholds', [
    ('tiny', [0.5, 0.5, [0.4, 0.6]]), ('tabletop', [0.3, 0.5, [0.2, 0.4]])])
def test_batch_equals_one_frame_at_a_time(model, thresholds):
    clip = load_clip('tiny', '', device='cpu') if model == 'tiny' else load_clip(
        model, device='cpu')
    pipeline = GroundingPipeline(clip, load_clipseg(model, device='cpu'), min_area=16)
    frames = [scene_image(seed=seed, width=w, height=h, count=3)[0]
              for seed, (w, h) in enumerate(SIZES)]
    requests = list(zip(frames, PHRASES, thresholds))
    batched = pipeline.batch(requests)
    assert len(batched) == len(frames)
    found = 0
    for request, result in zip(requests, batched):
        assert_same(pipeline(*request), result)
        found += len(result.detections)
    assert found, 'the comparison needs detections to compare'
    # A frame alone in its batch is the single-frame call.
    assert_same(pipeline(*requests[1]), pipeline.batch(requests[1:2])[0])
