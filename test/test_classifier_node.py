"""clip_classifier_node over real DDS with the tiny random CLIP (no weights needed)."""
import os
import threading

os.environ['ROS_DOMAIN_ID'] = '62'  # before rclpy: own domain, no cross-talk with other tests

import pytest  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from vision_msgs.msg import Classification  # noqa: E402

from clip_ros.nodes.clip_classifier_node import ClipClassifierNode  # noqa: E402
from node_harness import (  # noqa: E402, I100
    Harness, request, rgb_image, TIMEOUT, wait_for)

DOMAIN = 62
TINY = [Parameter('clip_arch', value='tiny'), Parameter('clip_pretrained', value='random'),
        Parameter('device', value='cpu')]
CLASSES = ['cup', 'bowl', 'red block']


@pytest.fixture(scope='module')
def ros():
    harness = Harness(DOMAIN)
    harness.node = harness.add(ClipClassifierNode(
        context=harness.context,
        parameter_overrides=TINY + [Parameter('classes', value=CLASSES)]))
    harness.image_pub = harness.publisher(Image, 'image')
    harness.results = harness.subscribe(Classification, 'classification')
    assert wait_for(lambda: harness.image_pub.get_subscription_count() > 0)
    yield harness
    harness.shutdown()


def classify(ros) -> Classification:
    msg = rgb_image(ros.header())
    result = request(ros.image_pub, msg, ros.results)
    assert result is not None, 'no classification for a good frame'
    assert result.header == msg.header
    return result


def test_one_hypothesis_per_class_sorted(ros):
    assert ros.node.not_ready == ''
    result = classify(ros)
    assert sorted(r.class_id for r in result.results) == sorted(CLASSES)
    scores = [r.score for r in result.results]
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0, abs=1e-4)


def test_classes_and_top_k_change_at_run_time(ros):
    assert ros.node.set_parameters([Parameter('classes', value=['a', 'b', 'c', 'd']),
                                    Parameter('top_k', value=2)])[0].successful
    result = classify(ros)
    assert len(result.results) == 2
    assert {r.class_id for r in result.results} <= {'a', 'b', 'c', 'd'}
    assert ros.node.set_parameters([Parameter('classes', value=CLASSES),
                                    Parameter('top_k', value=0)])[0].successful
    assert len(classify(ros).results) == 3


def test_bad_parameters_are_refused(ros):
    result = ros.node.set_parameters([Parameter('templates', value=['no placeholder'])])[0]
    assert not result.successful and '{}' in result.reason
    # More than one field, a named one, a lone brace: refused before they land, with why.
    for template in ('a {} next to a {}', 'a {kind} {}', 'a {} {'):
        result = ros.node.set_parameters([Parameter('templates', value=[template])])[0]
        assert not result.successful and repr(template) in result.reason, result.reason
    assert ros.node.get_parameter('templates').value != ['a {} next to a {}']
    assert not ros.node.set_parameters([Parameter('classes', value=3.0)])[0].successful
    assert not ros.node.set_parameters([Parameter('top_k', value=-1)])[0].successful
    assert not ros.node.set_parameters([Parameter('clip_arch', value='RN50')])[0].successful
    assert len(classify(ros).results) == 3


@pytest.mark.parametrize('bad', [
    Image(width=4, height=4, encoding='yuv_magic', step=12, data=bytes(48)),
    Image(width=0, height=4, encoding='rgb8', step=0, data=b''),
    Image(width=4, height=4, encoding='rgb8', step=12, data=bytes(47)),
    Image(width=9000, height=10, encoding='mono8', step=9000, data=bytes(10)),
], ids=['encoding', 'zero width', 'short data', 'too wide'])
def test_bad_image_then_good_frame(ros, bad):
    bad.header = ros.header()
    before = ros.node.rejected
    ros.image_pub.publish(bad)
    assert wait_for(lambda: ros.node.rejected > before)
    classify(ros)


def test_no_classes_skips_frames(ros):
    node = ros.add(ClipClassifierNode(context=ros.context, namespace='empty',
                                      parameter_overrides=TINY))
    pub = ros.publisher(Image, 'empty/image')
    results = ros.subscribe(Classification, 'empty/classification')
    assert wait_for(lambda: pub.get_subscription_count() > 0)
    wait_for(lambda: pub.publish(rgb_image(ros.header())) or node.worker.processed > 0)
    assert node.worker.processed > 0
    # A classification would arrive within this second; none may.
    assert not wait_for(lambda: results.messages, timeout=1.0), results.messages


class GatedImages:
    """Hold one frame in the model's image encoder until `release` is set (restored on exit)."""

    def __init__(self, clip):
        self.clip, self.encode = clip, clip.encode_images
        self.entered, self.release = threading.Event(), threading.Event()

    def __enter__(self):
        self.clip.encode_images = self
        return self

    def __exit__(self, *exc):
        self.release.set()
        del self.clip.encode_images

    def __call__(self, pixels):
        self.entered.set()
        assert self.release.wait(TIMEOUT)
        return self.encode(pixels)


def test_frame_in_flight_keeps_the_settings_it_started_with(ros):
    node, stale = ros.node, rgb_image(ros.header())
    with GatedImages(node._clip) as gate:
        # Resent until it arrives (best effort); copies of it wait in the newest-frame slot.
        assert wait_for(lambda: ros.image_pub.publish(stale) or gate.entered.wait(0.5)), \
            'the frame never reached the model'
        assert node.set_parameters_atomically([
            Parameter('classes', value=['a', 'b', 'c', 'd']), Parameter('top_k', value=1)]
        ).successful
    first = wait_for(lambda: [m for m in ros.results.messages if m.header == stale.header])
    # Scored with the old classes, so cut with the old top_k (0: every class), not the new.
    assert first and sorted(r.class_id for r in first[0].results) == sorted(CLASSES)
    result = classify(ros)
    assert len(result.results) == 1 and result.results[0].class_id in ('a', 'b', 'c', 'd')
    assert node.set_parameters_atomically([Parameter('classes', value=CLASSES),
                                           Parameter('top_k', value=0)]).successful
