"""clipseg_node over real DDS with the tiny random CLIPSeg (no weights needed)."""
import os
import threading

os.environ['ROS_DOMAIN_ID'] = '63'  # before rclpy: own domain, no cross-talk with other tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from vision_msgs.msg import Detection2DArray, LabelInfo  # noqa: E402

from clip_ros.nodes.clipseg_node import ClipSegNode  # noqa: E402
from clip_ros.nodes.conversions import image_to_numpy  # noqa: E402
from node_harness import (  # noqa: E402, I100
    Harness, LATCHED, request, rgb_image, TIMEOUT, wait_for)

DOMAIN = 63
TINY = [Parameter('clipseg_model', value='tiny'), Parameter('device', value='cpu')]
CLASSES = ['table', 'cup']


@pytest.fixture(scope='module')
def ros():
    harness = Harness(DOMAIN)
    harness.node = harness.add(ClipSegNode(
        context=harness.context,
        parameter_overrides=TINY + [Parameter('classes', value=CLASSES),
                                    Parameter('background_threshold', value=0.0)]))
    harness.image_pub = harness.publisher(Image, 'image')
    harness.masks = harness.subscribe(Image, 'mask')
    harness.detections = harness.subscribe(Detection2DArray, 'detections')
    assert wait_for(lambda: harness.image_pub.get_subscription_count() > 0)
    yield harness
    harness.shutdown()


def segment(ros):
    msg = rgb_image(ros.header())
    mask = request(ros.image_pub, msg, ros.masks)
    assert mask is not None, 'no mask for a good frame'
    detections = wait_for(lambda: ros.detections.find(lambda m: m.header == msg.header))
    assert detections is not None
    return msg, mask, detections


def test_mask_and_one_detection_per_class_present(ros):
    assert ros.node.not_ready == ''
    msg, mask, detections = segment(ros)
    assert mask.header == msg.header
    assert (mask.width, mask.height, mask.encoding) == (640, 480, 'mono16')
    labels = image_to_numpy(mask)
    present = sorted(int(v) for v in np.unique(labels) if v > 0)
    assert present, 'background_threshold 0 labels every pixel'
    assert max(present) <= len(CLASSES)
    assert [d.id for d in detections.detections] == [str(v - 1) for v in present]
    for detection in detections.detections:
        assert detection.results[0].hypothesis.class_id == CLASSES[int(detection.id)]
        assert detection.bbox.size_x <= 640 and detection.bbox.size_y <= 480


def test_label_info_for_late_subscriber(ros):
    labels = ros.subscribe(LabelInfo, 'label_info', LATCHED)
    info = wait_for(lambda: labels.find(lambda m: len(m.class_map) == 2))
    assert [(c.class_id, c.class_name) for c in info.class_map] == [(1, 'table'), (2, 'cup')]
    assert ros.node.set_parameters([Parameter('classes', value=['floor', 'cup', 'box'])])[0] \
        .successful
    info = wait_for(lambda: labels.find(lambda m: len(m.class_map) == 3))
    assert [c.class_name for c in info.class_map] == ['floor', 'cup', 'box']
    _, mask, _ = segment(ros)
    assert image_to_numpy(mask).max() <= 3
    assert ros.node.set_parameters([Parameter('classes', value=CLASSES)])[0].successful


def test_bad_parameters_are_refused(ros):
    result = ros.node.set_parameters([Parameter('background_threshold', value=1.5)])[0]
    assert not result.successful and result.reason
    assert not ros.node.set_parameters([Parameter('classes', value=7)])[0].successful
    assert ros.node.get_parameter('background_threshold').value == 0.0


@pytest.mark.parametrize('bad', [
    Image(width=4, height=4, encoding='yuv_magic', step=12, data=bytes(48)),
    Image(width=4, height=0, encoding='rgb8', step=12, data=b''),
    Image(width=4, height=4, encoding='rgb8', step=12, data=bytes(49)),
    Image(width=4, height=4, encoding='rgb8', step=8, data=bytes(32)),
], ids=['encoding', 'zero height', 'long data', 'short step'])
def test_bad_image_then_good_frame(ros, bad):
    bad.header = ros.header()
    before = ros.node.rejected
    ros.image_pub.publish(bad)
    assert wait_for(lambda: ros.node.rejected > before)
    segment(ros)


class GatedRunner:
    """The node's runner, holding one frame inside inference until `release` is set."""

    def __init__(self, runner):
        self.runner = runner
        self.entered, self.release = threading.Event(), threading.Event()

    def probabilities(self, rgb, classes):
        self.entered.set()
        assert self.release.wait(TIMEOUT)
        return self.runner.probabilities(rgb, classes)


def test_frame_in_flight_when_classes_change_is_not_published_with_the_old_ids(ros):
    node, gate = ros.node, GatedRunner(ros.node._runner)
    node._runner = gate
    try:
        stale = rgb_image(ros.header())
        # Resent until it arrives (best effort); copies of it wait in the newest-frame slot.
        assert wait_for(lambda: ros.image_pub.publish(stale) or gate.entered.wait(0.5)), \
            'the frame never reached the model'
        # label_info now says 1 = floor; a mask of the old classes would call cups floor.
        assert node.set_parameters([Parameter('classes', value=['floor'])])[0].successful
    finally:
        gate.release.set()
        node._runner = gate.runner
    _, mask, detections = segment(ros)
    assert image_to_numpy(mask).max() <= 1
    assert {d.results[0].hypothesis.class_id for d in detections.detections} <= {'floor'}
    # The frame segmented with the old classes is dropped; its copies use the new ones.
    for late in ros.detections.messages:
        if late.header == stale.header:
            assert {d.results[0].hypothesis.class_id for d in late.detections} <= {'floor'}
    for late in ros.masks.messages:
        if late.header == stale.header:
            assert image_to_numpy(late).max() <= 1, 'old class ids after label_info changed'
    assert node.set_parameters([Parameter('classes', value=CLASSES)])[0].successful
