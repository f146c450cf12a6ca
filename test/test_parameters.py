"""
Every mutable parameter of every node, set over its parameter services as `ros2 param set` does.

For each node the test lists the declared parameters and their descriptors over DDS; every one
that is not read-only must have an effect check here (a valid new value changes what the node
publishes) and a refused value (rejected with a reason, the old value kept). A new mutable
parameter without both fails test_every_mutable_parameter_is_covered.
"""
import json
import math
import os
import threading
import time

os.environ['ROS_DOMAIN_ID'] = '79'  # before rclpy: own domain, no cross-talk with other tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402, I100 - ROS messages together
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.parameter import Parameter, parameter_value_to_python  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, JointState  # noqa: E402
from std_msgs.msg import Float64, Header, Int32, String  # noqa: E402
from vision_msgs.msg import (  # noqa: E402
    Classification, Detection2D, Detection2DArray, Detection3DArray, LabelInfo,
    ObjectHypothesisWithPose)

from clip_ros.nodes.clip_classifier_node import ClipClassifierNode  # noqa: E402, I100
from clip_ros.nodes.clipseg_node import ClipSegNode  # noqa: E402
from clip_ros.nodes.conversions import image_to_numpy, numpy_to_image  # noqa: E402
from clip_ros.nodes.grounding_node import GroundingNode  # noqa: E402
from clip_ros.nodes.sim_messages import camera_info_msg  # noqa: E402
from clip_ros.nodes.sim_node import SimNode  # noqa: E402
from clip_ros.nodes.vla_policy_node import VlaPolicyNode  # noqa: E402
from clip_ros.perception.classify import ZeroShotClassifier  # noqa: E402
from clip_ros.policy.lifting import matrix_to_quat  # noqa: E402
from node_harness import (  # noqa: E402, I100, I201
    Harness, LATCHED, request, rgb_image, TIMEOUT, wait_for)

DOMAIN = 79
TINY_CLIP = [Parameter('clip_arch', value='tiny'), Parameter('clip_pretrained', value='random'),
             Parameter('device', value='cpu')]
TINY_CLIPSEG = [Parameter('clipseg_model', value='tiny'), Parameter('device', value='cpu')]

# A value each node must refuse, per mutable parameter; the old value must stay.
INVALID = {
    'grounding': {
        'queries': 5, 'thresholds': [1.5], 'distractors': 7, 'min_area': 0,
        'max_detections': 0, 'rescore': 'yes', 'abstain': 'yes', 'light_correction': 'yes',
        'zoom_in': 'yes', 'max_image_size': 8,
        'silent_input_sec': 0.0, 'max_drop_ratio': 1.5},
    'classifier': {
        'classes': 3.0, 'templates': ['no placeholder'], 'top_k': -1, 'max_image_size': 8,
        'light_correction': 'yes', 'compose': 'yes',
        'silent_input_sec': 0.0, 'max_drop_ratio': 1.5},
    'clipseg': {
        'classes': 7, 'background_threshold': 1.5, 'max_image_size': 8, 'light_correction': 2,
        'silent_input_sec': 0.0, 'max_drop_ratio': -0.5},
    'policy': {
        'base_frame': ' ', 'extrinsic': [0.0] * 7, 'grasp_orientation': [0.0, 0.0, 0.0, 0.0],
        'depth_scale': 0.0, 'min_depth': 6.0,
        'max_depth': 0.04, 'sync_tolerance': -1.0, 'min_score': 1.5, 'table_z': math.nan,
        'min_height': 2.0, 'shape_band': -0.1, 'near_distance': 3.0, 'max_speed': 0.0,
        'workspace_min': [0.6, 0.0, 0.0], 'workspace_max': [0.55, 0.45],
        'lost_timeout': 0.0, 'acquire_timeout': 0.0, 'time_limit': 0.5,
        'ee_timeout': 0.0, 'empty_grip_opening': -0.1,
        'silent_input_sec': 0.0, 'max_drop_ratio': 2.0},
    'sim': {'seed': -1},
}
for _node in INVALID:  # rclpy's own, on every node
    INVALID[_node]['use_sim_time'] = 'yes'

EFFECTS = {node: {} for node in INVALID}  # node -> {parameter: check(rig, name)}


def effect(node: str, *names):
    """Register `check(rig, name)` as the effect test of parameters `names` of `node`."""
    def register(check):
        for name in names:
            EFFECTS[node][name] = check
        return check
    return register


class Remote:
    """A node under test seen only through its parameter services, as `ros2 param` sees it."""

    def __init__(self, harness: Harness, node):
        self.node = node
        self.client = AsyncParameterClient(harness.probe, node.get_fully_qualified_name())
        assert self.client.wait_for_services(timeout_sec=TIMEOUT)

    @staticmethod
    def call(future):
        assert wait_for(future.done), 'no answer from the parameter service'
        return future.result()

    def descriptors(self) -> dict:
        """Return {name: ParameterDescriptor} of every declared parameter."""
        names = self.call(self.client.list_parameters()).result.names
        found = self.call(self.client.describe_parameters(names)).descriptors
        return {d.name: d for d in found}

    def get(self, name: str):
        return parameter_value_to_python(self.call(self.client.get_parameters([name])).values[0])

    def put(self, name: str, value):
        """Set one parameter; return its SetParametersResult."""
        response = self.call(self.client.set_parameters([Parameter(name, value=value)]))
        return response.results[0]


class changed:
    """Context manager: set parameters over DDS (asserting success), restore them after."""

    def __init__(self, rig, **values):
        self.remote, self.values = rig.remote, values

    def __enter__(self):
        self.old = {name: self.remote.get(name) for name in self.values}
        for name, value in self.values.items():
            result = self.remote.put(name, value)
            assert result.successful, f'{name}={value!r} refused: {result.reason}'

    def __exit__(self, *exc):
        # Restore in reverse, so limits that depend on each other pass the checks each time.
        for name in reversed(list(self.old)):
            result = self.remote.put(name, self.old[name])
            assert result.successful, f'restoring {name}: {result.reason}'


@pytest.fixture(scope='module')
def harness():
    harness = Harness(DOMAIN)
    harness.diagnostics = harness.subscribe(DiagnosticArray, '/diagnostics')
    # Kept to the end: destroying an entity while the executor spins can kill the spin thread.
    harness.clock = harness.publisher(Clock, '/clock')
    yield harness
    harness.shutdown()


class Rig:
    """A node in its own namespace, its Remote, and the probe's publishers and inboxes."""

    def __init__(self, harness: Harness, node, namespace: str):
        self.harness, self.node, self.ns = harness, harness.add(node), namespace
        self.remote = Remote(harness, node)
        self.pubs, self.inboxes = {}, {}

    def publisher(self, kind, topic: str):
        self.pubs[topic] = self.harness.publisher(kind, f'{self.ns}/{topic}')
        return self.pubs[topic]

    def subscribe(self, kind, topic: str, qos=None):
        args = (qos,) if qos is not None else ()
        self.inboxes[topic] = self.harness.subscribe(kind, f'{self.ns}/{topic}', *args)
        return self.inboxes[topic]

    def connected(self) -> bool:
        return all(p.get_subscription_count() > 0 for p in self.pubs.values())

    def stamps(self, since: int) -> list:
        """Return when the node stamped its /diagnostics (s), from message number `since` on."""
        name = self.node.get_fully_qualified_name()
        return [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
                for m in self.harness.diagnostics.messages[since:]
                if any(status.name == name for status in m.status)]

    def stamp_count(self) -> int:
        return len(self.harness.diagnostics.messages)


def perception_rig(harness, node_class, namespace, overrides, outputs):
    rig = Rig(harness, node_class(context=harness.context, namespace=namespace,
                                  parameter_overrides=overrides), namespace)
    rig.publisher(Image, 'image')
    for kind, topic in outputs:
        rig.subscribe(kind, topic, LATCHED if kind is LabelInfo else None)
    rig.frame = lambda: rgb_image(harness.header())
    assert wait_for(rig.connected)
    return rig


@pytest.fixture(scope='module')
def grounding(harness):
    # Threshold 0 makes every pixel foreground: each phrase gives at least one detection.
    return perception_rig(harness, GroundingNode, '/grounding', [
        *TINY_CLIP, Parameter('clipseg_model', value='tiny'),
        Parameter('queries', value=['red block']), Parameter('thresholds', value=[0.0]),
        Parameter('min_area', value=16)],
        [(Detection2DArray, 'detections'), (LabelInfo, 'label_info')])


@pytest.fixture(scope='module')
def classifier(harness):
    return perception_rig(harness, ClipClassifierNode, '/classifier', [
        *TINY_CLIP, Parameter('classes', value=['cup', 'bowl', 'red block'])],
        [(Classification, 'classification')])


@pytest.fixture(scope='module')
def clipseg(harness):
    return perception_rig(harness, ClipSegNode, '/clipseg', [
        *TINY_CLIPSEG, Parameter('classes', value=['table', 'cup']),
        Parameter('background_threshold', value=0.0)],
        [(Image, 'mask'), (LabelInfo, 'label_info')])


# Policy: a camera 0.7 m above the base origin looking straight down at an 80x60 image.
W, H = 80, 60
K = np.array([[80.0, 0.0, 39.5], [0.0, 80.0, 29.5], [0.0, 0.0, 1.0]])
DOWN = matrix_to_quat(np.diag([1.0, -1.0, -1.0]))
EE = (0.0, 0.12, 0.45)
RATE = 20.0
PICK = 'pick up the blue block'


@pytest.fixture(scope='module')
def policy(harness):
    rig = Rig(harness, VlaPolicyNode(context=harness.context, namespace='/policy',
                                     parameter_overrides=[
                                         Parameter('rate', value=RATE),
                                         Parameter('extrinsic', value=[0.0, 0.0, 0.7] + DOWN),
                                         Parameter('acquire_timeout', value=1.0),
                                         Parameter('lost_timeout', value=0.5)]), '/policy')
    for kind, topic in ((String, 'command'), (Detection2DArray, 'detections'), (Image, 'mask'),
                        (Image, 'depth'), (CameraInfo, 'camera_info'),
                        (PoseStamped, 'ee_state'), (Float64, 'gripper_state'),
                        (JointState, 'gripper/joint_states')):
        rig.publisher(kind, topic)
    for kind, topic in ((String, 'policy_status'), (PoseStamped, 'ee_goal'),
                        (Detection3DArray, 'targets_3d')):
        rig.subscribe(kind, topic)
    rig.frame = lambda: perception_set(rig)
    assert wait_for(rig.connected)
    return rig


@pytest.fixture(scope='module')
def sim(harness):
    # Parameters are listed without OpenGL; the seed's effect needs the renderer (gl_context).
    rig = Rig(harness, SimNode(context=harness.context, namespace='/sim', parameter_overrides=[
        Parameter('seed', value=3), Parameter('rate', value=30.0), Parameter('width', value=160),
        Parameter('height', value=120)]), '/sim')
    truth = rig.subscribe(Detection2DArray, 'sim/ground_truth_2d')
    rig.publisher(Int32, 'sim/reset')
    rig.stamp_count = lambda: len(truth.messages)
    rig.stamps = lambda since: [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
                                for m in truth.messages[since:]]
    return rig


@pytest.fixture
def rig(request):
    """Return the rig of the test's `node` parameter (fixtures are built on first use)."""
    return request.getfixturevalue(request.node.callspec.params['node'])


# use_sim_time (rclpy's, on every node): the stamps of what the node publishes follow /clock --


SIM_START = 1000.0


def sim_time(rig, name):
    """With use_sim_time the node's stamps follow /clock (from 1000 s), then the system clock."""
    clock, stop = rig.harness.clock, threading.Event()

    def publish_clock():
        start = time.monotonic()
        while not stop.wait(0.02):
            now = SIM_START + time.monotonic() - start
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = int(now), int(now % 1 * 1e9)
            clock.publish(msg)
    thread = threading.Thread(target=publish_clock, daemon=True)
    thread.start()
    try:
        with changed(rig, use_sim_time=True):
            since = rig.stamp_count()
            assert wait_for(lambda: [t for t in rig.stamps(since)
                                     if SIM_START <= t < SIM_START + 100]), 'no /clock stamps'
        since = rig.stamp_count()
        assert wait_for(lambda: [t for t in rig.stamps(since) if t > 1e9]), 'no system stamps'
    finally:
        stop.set()
        thread.join()


for _node in INVALID:
    effect(_node, 'use_sim_time')(sim_time)


# Diagnostics (ManagedNode): every managed node has both parameters --------------------------


def diagnostics_after(rig, since: int, predicate) -> str | None:
    """Wait for a /diagnostics message of the rig's node after `since` whose message passes."""
    name = rig.node.get_fully_qualified_name()

    def found():
        for msg in rig.harness.diagnostics.messages[since:]:
            for status in msg.status:
                if status.name == name and predicate(status.message):
                    return status.message
        return None
    return wait_for(found)


def burst(rig, count: int = 200) -> None:
    """Hand the node `count` frames at once: the newest-frame slot drops nearly all."""
    frame = rig.frame()
    for _ in range(count):
        rig.node.submit_frame(frame)


for managed in ('grounding', 'classifier', 'clipseg', 'policy'):
    @effect(managed, 'silent_input_sec')
    def silent_input(rig, name):
        silent = 'no input frame'
        since = len(rig.harness.diagnostics.messages)
        with changed(rig, silent_input_sec=3600.0):
            assert diagnostics_after(rig, since, lambda m: silent not in m)
            since = len(rig.harness.diagnostics.messages)
            rig.remote.put(name, 0.1)
            assert diagnostics_after(rig, since, lambda m: silent in m), 'no silence WARN'

    @effect(managed, 'max_drop_ratio')
    def drop_ratio(rig, name):
        dropped = 'of input frames dropped'
        with changed(rig, max_drop_ratio=1.0):
            burst(rig)
            since = len(rig.harness.diagnostics.messages)
            assert diagnostics_after(rig, since, lambda m: dropped not in m)
            rig.remote.put(name, 0.0)
            since = len(rig.harness.diagnostics.messages)
            assert diagnostics_after(rig, since, lambda m: dropped in m), 'no drop WARN'


# A light reference far warmer than the noise frame, as `calibrate` would write into a model's
# config (the tiny models have none): light correction then changes every frame the model sees.
WARM_LIGHT = {'median_rgb': [250.0, 120.0, 40.0], 'bright_level': 250.0}


def light_effect(handle_of, output):
    """Return the effect check of light_correction on a node whose model handle_of returns."""
    def same(a, b):
        return a.shape == b.shape and np.allclose(a, b, atol=1e-4)

    def check(rig, name):
        handle = handle_of(rig.node)
        handle.light = dict(WARM_LIGHT)
        try:
            with changed(rig, light_correction=False):  # applied with the reference, unused
                plain = output(rig)
            assert not same(output(rig), plain), 'light correction on: the output moves'
        finally:
            handle.light = {}
        with changed(rig, light_correction=False):  # applied again: no reference any more
            pass
        assert same(output(rig), plain)
    return check


# grounding_node -----------------------------------------------------------------------------


def ground(rig, **image) -> Detection2DArray:
    """Publish the same noise frame (new header) and return its detections."""
    msg = rgb_image(rig.harness.header(), **image)
    result = request(rig.pubs['image'], msg, rig.inboxes['detections'])
    assert result is not None, 'no detections for a good frame'
    return result


def scores(detections: Detection2DArray) -> list:
    return sorted(d.results[0].hypothesis.score for d in detections.detections)


@effect('grounding', 'queries')
def grounding_queries(rig, name):
    assert {d.results[0].hypothesis.class_id for d in ground(rig).detections} == {'red block'}
    with changed(rig, queries=['green ball']):
        found = {d.results[0].hypothesis.class_id for d in ground(rig).detections}
        assert found == {'green ball'}


@effect('grounding', 'thresholds')
def grounding_thresholds(rig, name):
    labels = rig.inboxes['label_info']
    with changed(rig, thresholds=[0.75]):
        assert wait_for(lambda: labels.find(lambda m: abs(m.threshold - 0.75) < 1e-6))
    assert wait_for(lambda: labels.messages and labels.messages[-1].threshold == 0.0)


@effect('grounding', 'distractors', 'rescore')
def grounding_rescoring(rig, name):
    before = scores(ground(rig))
    value = ['a cat', 'the sky'] if name == 'distractors' else False
    with changed(rig, **{name: value}):
        assert scores(ground(rig)) != pytest.approx(before, abs=1e-6)
    assert scores(ground(rig)) == pytest.approx(before, abs=1e-4)


@effect('grounding', 'abstain')
def grounding_abstain(rig, name):
    # The tiny model has no calibration: give it an impossible one, as `calibrate` would write
    # into a model's config, so the rule refuses every candidate while it is on.
    clip = rig.node._clip
    clip.abstain = {'min_margin': math.inf}
    try:
        with changed(rig, abstain=False):
            assert ground(rig).detections, 'abstain off: the candidates are kept'
        with changed(rig, min_area=1):  # a pipeline parameter: rebuilt with the model's rule
            assert ground(rig).detections == []
    finally:
        clip.abstain = None
    with changed(rig, min_area=1):
        assert ground(rig).detections


@effect('grounding', 'zoom_in')
def grounding_zoom_in(rig, name):
    # The tiny CLIP has no shape head, so it never looks twice: give it one sure of 'block'.
    # A threshold between the frame's highest map value and the zoomed tiles' leaves the
    # phrase unfound by the first look and found by the second.
    import torch
    from clip_ros.perception import zoom
    from clip_ros.perception.shape_head import ShapeHead, ShapeNet
    net = ShapeNet(5, width=4)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.zero_()
        net.head.bias[0] = 10.0
    rgb = image_to_numpy(rgb_image(rig.harness.header()), copy=True)  # the frame ground() sends
    runner = rig.node._pipeline.runner
    whole = float(runner.probabilities_batch([rgb], [['red block']])[0].max())
    boxes = zoom.tiles(*rgb.shape[:2])
    tiles = runner.probabilities_batch([rgb[r:r + h, c:c + w] for r, c, h, w in boxes],
                                       [['red block']] * len(boxes))
    zoomed = max(float(t.max()) for t in tiles)
    assert zoomed > whole, (zoomed, whole)
    rig.node._clip.shape = ShapeHead(net, ('block', 'ball', 'cylinder', 'bowl'))
    try:
        with changed(rig, min_area=1, thresholds=[(whole + zoomed) / 2]):
            assert ground(rig).detections, 'the second look finds the phrase'
            with changed(rig, zoom_in=False):
                assert ground(rig).detections == []
    finally:
        rig.node._clip.shape = None


@effect('grounding', 'min_area')
def grounding_min_area(rig, name):
    assert ground(rig).detections
    with changed(rig, min_area=640 * 480 + 1):
        assert ground(rig).detections == []


@effect('grounding', 'max_detections')
def grounding_max_detections(rig, name):
    with changed(rig, queries=['red block', 'green ball']):
        assert len(ground(rig).detections) >= 2
        with changed(rig, max_detections=1):
            assert len(ground(rig).detections) == 1
        with changed(rig, max_detections=1000):  # above the 64 re-scored by default
            assert len(ground(rig).detections) >= 2


def rejects_large_frames(rig, answer):
    """max_image_size 320 rejects a 640x480 frame; a 160x120 frame still gets `answer`."""
    with changed(rig, max_image_size=320):
        before = rig.node.rejected
        rig.pubs['image'].publish(rgb_image(rig.harness.header()))
        assert wait_for(lambda: rig.node.rejected > before), 'a 640x480 frame was not rejected'
        assert answer(rig, width=160, height=120)


effect('grounding', 'max_image_size')(lambda rig, name: rejects_large_frames(rig, ground))
effect('grounding', 'light_correction')(light_effect(
    lambda node: node._clip, lambda rig: np.array(scores(ground(rig)))))


# clip_classifier_node -----------------------------------------------------------------------


def classify(rig, **image) -> Classification:
    msg = rgb_image(rig.harness.header(), **image)
    result = request(rig.pubs['image'], msg, rig.inboxes['classification'])
    assert result is not None, 'no classification for a good frame'
    return result


def by_class(result: Classification) -> dict:
    return {r.class_id: r.score for r in result.results}


@effect('classifier', 'classes')
def classifier_classes(rig, name):
    with changed(rig, classes=['x', 'y']):
        assert set(by_class(classify(rig))) == {'x', 'y'}
    assert set(by_class(classify(rig))) == {'cup', 'bowl', 'red block'}


@effect('classifier', 'templates')
def classifier_templates(rig, name):
    before = by_class(classify(rig))
    with changed(rig, templates=['a blurry photo of the {} on a table.']):
        after = by_class(classify(rig))
    assert set(after) == set(before) and after != pytest.approx(before, abs=1e-6)


@effect('classifier', 'top_k')
def classifier_top_k(rig, name):
    with changed(rig, top_k=1):
        assert len(classify(rig).results) == 1
    assert len(classify(rig).results) == 3


@effect('classifier', 'compose')
def classifier_compose(rig, name):
    # The tiny model has no shape head: the bundled one, in its own namespace, shows the effect.
    classes = ['red cube', 'blue ball', 'a green bowl']  # a synonym and a filler compose too
    tabletop = perception_rig(rig.harness, ClipClassifierNode, '/classifier_tabletop', [
        Parameter('clip_arch', value='tabletop'), Parameter('clip_pretrained', value=''),
        Parameter('device', value='cpu'), Parameter('light_correction', value=False),
        Parameter('classes', value=classes)], [(Classification, 'classification')])
    rgb = image_to_numpy(rgb_image(Header()))

    def published_and_expected(compose):
        expected = ZeroShotClassifier(tabletop.node._clip, classes, compose=compose)(rgb)
        got = by_class(classify(tabletop))
        return [got[c] for c in classes], expected

    got, expected = published_and_expected(True)
    assert tabletop.node._classifier.composed
    assert got == pytest.approx(expected.tolist(), abs=1e-4)
    with changed(tabletop, compose=False):
        plain, expected_plain = published_and_expected(False)
        assert not tabletop.node._classifier.composed
        assert plain == pytest.approx(expected_plain.tolist(), abs=1e-4)
    assert plain != pytest.approx(got, abs=1e-3)


effect('classifier', 'max_image_size')(lambda rig, name: rejects_large_frames(rig, classify))
effect('classifier', 'light_correction')(light_effect(
    lambda node: node._clip, lambda rig: np.array(sorted(by_class(classify(rig)).items()))[:, 1]
    .astype(float)))


# clipseg_node -------------------------------------------------------------------------------


def segment(rig, **image) -> np.ndarray:
    msg = rgb_image(rig.harness.header(), **image)
    result = request(rig.pubs['image'], msg, rig.inboxes['mask'])
    assert result is not None, 'no mask for a good frame'
    return image_to_numpy(result)


@effect('clipseg', 'classes')
def clipseg_classes(rig, name):
    labels = rig.inboxes['label_info']
    with changed(rig, classes=['floor', 'cup', 'box']):
        info = wait_for(lambda: labels.find(lambda m: len(m.class_map) == 3))
        assert [c.class_name for c in info.class_map] == ['floor', 'cup', 'box']
        assert 0 < segment(rig).max() <= 3
    assert wait_for(lambda: [c.class_name for c in labels.messages[-1].class_map]
                    == ['table', 'cup'])


@effect('clipseg', 'background_threshold')
def clipseg_background(rig, name):
    labels = rig.inboxes['label_info']
    assert segment(rig).max() > 0, 'threshold 0 labels every pixel'
    with changed(rig, background_threshold=1.0):
        assert segment(rig).max() == 0, 'no probability reaches 1: all background'
        assert wait_for(lambda: labels.messages[-1].threshold == 1.0)


effect('clipseg', 'max_image_size')(
    lambda rig, name: rejects_large_frames(rig, lambda r, **image: segment(r, **image).size))
effect('clipseg', 'light_correction')(light_effect(
    lambda node: node._clipseg, lambda rig: segment(rig).astype(float)))


# vla_policy_node ----------------------------------------------------------------------------


def perception_set(rig, depth_m=0.6, encoding='32FC1', offset=0.0, score=0.9, disc=False):
    """Return one matched set: a 'blue block' detection, its mask, depth and camera_info."""
    header = rig.harness.header('camera_optical_frame')
    later = Header(frame_id=header.frame_id)  # depth and camera_info `offset` s after
    nanosec = header.stamp.nanosec + int(offset * 1e9)
    later.stamp.sec, later.stamp.nanosec = header.stamp.sec, nanosec
    labels = np.zeros((H, W), np.uint16)
    labels[25:35, 35:45] = 1
    if disc:  # a round top of 250 points: enough for the shape check, which a block fails
        rows, cols = np.ogrid[:H, :W]
        labels[(rows - 30) ** 2 + (cols - 40) ** 2 <= 81] = 1
    det = Detection2D(header=header, id='0')
    hyp = ObjectHypothesisWithPose()
    hyp.hypothesis.class_id, hyp.hypothesis.score = 'blue block', score
    det.results.append(hyp)
    if encoding == '16UC1':
        depth = np.full((H, W), depth_m, np.uint16)
    else:
        depth = np.full((H, W), depth_m, np.float32)
    return {'detections': Detection2DArray(header=header, detections=[det]),
            'mask': numpy_to_image(labels, 'mono16', header),
            'depth': numpy_to_image(depth, encoding, later),
            'camera_info': camera_info_msg(K, W, H, later), 'stamp': header.stamp}


def send(rig, match: dict, ee: bool = True) -> None:
    if ee:
        send_ee(rig, match['stamp'])
    for topic in ('detections', 'mask', 'depth', 'camera_info'):
        rig.pubs[topic].publish(match[topic])


def start(rig, text: str = PICK) -> int:
    """End the running command, publish `text`; return the count of status messages before it."""
    # An unknown verb is rejected at once: no status of an older command can follow it.
    halt = len(rig.inboxes['policy_status'].messages)
    rig.pubs['command'].publish(String(data='halt'))
    assert wait_for(lambda: any(s['command'] == 'halt' for s in statuses(rig, halt)))
    since = len(rig.inboxes['policy_status'].messages)
    rig.pubs['command'].publish(String(data=text))
    return since


def send_ee(rig, stamp) -> None:
    # In the policy's base_frame, as an arm driver publishes it.
    ee = PoseStamped(header=Header(stamp=stamp, frame_id=getattr(rig, 'ee_frame', 'world')))
    ee.pose.position.x, ee.pose.position.y, ee.pose.position.z = EE
    ee.pose.orientation.w = 1.0
    rig.pubs['ee_state'].publish(ee)


def stream(rig, seconds: float, until=None, ee: bool = True, **frame) -> list:
    """
    Send matched sets at about 20 Hz for `seconds` (or until `until()`); return their stamps.

    `ee`: with an ee_state each.
    """
    stamps, end = [], time.monotonic() + seconds
    while time.monotonic() < end and not (until and until()):
        match = perception_set(rig, **frame)
        send(rig, match, ee)
        stamps.append(match['stamp'])
        time.sleep(0.05)
    return stamps


def statuses(rig, since: int) -> list:
    return [json.loads(m.data) for m in rig.inboxes['policy_status'].messages[since:]]


def ended(rig, since: int, timeout: float = TIMEOUT) -> dict | None:
    """Wait for the command started at `since` to end; return its final status."""
    return wait_for(lambda: next((s for s in statuses(rig, since)
                                  if s['state'] in ('aborted', 'rejected', 'succeeded')), None),
                    timeout)


def lifted(rig, **frame) -> Detection3DArray:
    """Start a pick, stream sets until one is lifted; return the targets_3d of that set."""
    targets = rig.inboxes['targets_3d']
    count = len(targets.messages)
    start(rig)
    stamps = stream(rig, 5.0, until=lambda: len(targets.messages) > count, **frame)
    found = wait_for(lambda: next((m for m in targets.messages[count:]
                                   if m.header.stamp in stamps), None))
    assert found is not None, 'no target lifted'
    return found


def target_z(rig, **frame) -> float:
    return lifted(rig, **frame).detections[0].results[0].pose.pose.position.z


def aborted_because(rig, reason: str, state: str = 'aborted', **frame) -> dict:
    """Start a pick and stream sets until it ends in `state`; assert it gives `reason`."""
    since = start(rig)
    stream(rig, 5.0, until=lambda: any(s['state'] == state for s in statuses(rig, since)),
           **frame)
    status = ended(rig, since)
    assert status and status['state'] == state and reason in status['detail'], status
    return status


def next_goal(rig, count: int = 3):
    """Return the `count`-th goal from now (the policy moves while sets keep coming)."""
    goals = rig.inboxes['ee_goal']
    since = len(goals.messages)
    stream(rig, 5.0, until=lambda: len(goals.messages) >= since + count)
    assert len(goals.messages) >= since + count, 'no goals'
    return goals.messages[since + count - 1]


def position(msg) -> np.ndarray:
    p = msg.pose.position
    return np.array([p.x, p.y, p.z])


@effect('policy', 'base_frame')
def policy_base_frame(rig, name):
    with changed(rig, base_frame='table'):
        rig.ee_frame = 'table'
        try:
            assert lifted(rig).header.frame_id == 'table'
            assert next_goal(rig).header.frame_id == 'table'
        finally:
            rig.ee_frame = 'world'
    assert lifted(rig).header.frame_id == 'world'


@effect('policy', 'grasp_orientation')
def policy_grasp_orientation(rig, name):
    q = next_goal(rig).pose.orientation
    assert (q.x, q.y, q.z, q.w) == (0.0, 0.0, 0.0, 1.0)
    with changed(rig, grasp_orientation=[2.0, 0.0, 0.0, 0.0]):  # normalised: fingers down
        q = next_goal(rig).pose.orientation
        assert (q.x, q.y, q.z, q.w) == (1.0, 0.0, 0.0, 0.0)


@effect('policy', 'extrinsic')
def policy_extrinsic(rig, name):
    assert target_z(rig) == pytest.approx(0.1, abs=0.01)
    with changed(rig, extrinsic=[0.0, 0.0, 0.9] + DOWN):  # the camera 0.2 m higher
        assert target_z(rig) == pytest.approx(0.3, abs=0.01)


@effect('policy', 'depth_scale')
def policy_depth_scale(rig, name):
    assert target_z(rig, depth_m=600, encoding='16UC1') == pytest.approx(0.1, abs=0.01)
    with changed(rig, depth_scale=0.0005):  # 600 units now mean 0.3 m
        assert target_z(rig, depth_m=600, encoding='16UC1') == pytest.approx(0.4, abs=0.01)


@effect('policy', 'min_depth', 'max_depth')
def policy_depth_range(rig, name):
    value = {'min_depth': 0.7, 'max_depth': 0.5}[name]  # the block lies 0.6 m away
    with changed(rig, **{name: value}):
        aborted_because(rig, 'no valid depth')
    assert target_z(rig) == pytest.approx(0.1, abs=0.01)


@effect('policy', 'min_score')
def policy_min_score(rig, name):
    with changed(rig, min_score=0.95):  # the detection scores 0.9: as if grounding found none
        aborted_because(rig, 'not found: blue block', state='rejected')
    assert lifted(rig)


@effect('policy', 'table_z', 'min_height')
def policy_table(rig, name):
    value = {'table_z': 0.095, 'min_height': 0.2}[name]  # the block's top is at 0.1 m
    with changed(rig, **{name: value}):
        aborted_because(rig, 'flat on the table')
    assert lifted(rig)


@effect('policy', 'shape_band')
def policy_shape_band(rig, name):
    # A 'blue block' detection with a round top: passed over, so the block is not found, and
    # the rejection says what the look refused.
    status = aborted_because(rig, 'not found: blue block', state='rejected', disc=True)
    assert "seen but refused: 'blue block': not a block" in status['detail'], status
    with changed(rig, shape_band=0.0):  # no shape check: the round 'block' is lifted
        assert lifted(rig, disc=True)


@effect('policy', 'sync_tolerance')
def policy_sync_tolerance(rig, name):
    targets = rig.inboxes['targets_3d']
    assert lifted(rig, offset=0.03), 'default tolerance 0.05 s matches a 30 ms gap'
    apart = perception_set(rig, offset=0.03)  # depth and camera_info 30 ms after detections
    with changed(rig, sync_tolerance=0.01):
        count = len(targets.messages)
        start(rig)
        send(rig, apart)
        lifted(rig)  # an aligned set after it is lifted ...
        assert not [m for m in targets.messages[count:] if m.header.stamp == apart['stamp']]


@effect('policy', 'max_speed')
def policy_max_speed(rig, name):
    for speed in (0.3, 0.1):
        with changed(rig, max_speed=speed):
            lifted(rig)
            step = np.linalg.norm(position(next_goal(rig)) - EE)
            assert step == pytest.approx(speed / RATE, rel=1e-3)


@effect('policy', 'workspace_min')
def policy_workspace_min(rig, name):
    with changed(rig, workspace_min=[0.05, -0.45, 0.0]):  # the block lies at x = 0
        aborted_because(rig, 'outside the workspace')


@effect('policy', 'workspace_max')
def policy_workspace_max(rig, name):
    with changed(rig, workspace_max=[0.55, 0.45, 0.3]):  # the arm is at z = 0.45
        lifted(rig)
        assert position(next_goal(rig))[2] <= 0.3 + 1e-6


@effect('policy', 'lost_timeout')
def policy_lost_timeout(rig, name):
    with changed(rig, lost_timeout=0.3):
        since = start(rig)
        stream(rig, 0.5)
        status = ended(rig, since)  # no more frames: the target is lost
        assert status and 'target lost' in status['detail'] and '(> 0.3 s)' in status['detail']


@effect('policy', 'acquire_timeout')
def policy_acquire_timeout(rig, name):
    with changed(rig, acquire_timeout=0.3):
        status = ended(rig, start(rig))  # no frames at all
        assert status and 'not found within 0.3 s' in status['detail'], status


@effect('policy', 'time_limit')
def policy_time_limit(rig, name):
    with changed(rig, time_limit=1.0):
        since = start(rig)
        stream(rig, 3.0, until=lambda: any(s['state'] == 'aborted'
                                           for s in statuses(rig, since)))
        status = ended(rig, since)
        assert status and 'time limit of 1 s exceeded' in status['detail'], status


@effect('policy', 'ee_timeout')
def policy_ee_timeout(rig, name):
    # The camera still sees the target, but the arm stopped reporting where it is.
    with changed(rig, ee_timeout=0.2):
        since = start(rig)
        goals = rig.inboxes['ee_goal']
        count = len(goals.messages)
        stream(rig, 5.0, until=lambda: len(goals.messages) > count)
        stream(rig, 5.0, until=lambda: any(s['state'] == 'aborted'
                                           for s in statuses(rig, since)), ee=False)
        status = ended(rig, since)
        assert status and 'end-effector state lost' in status['detail'] \
            and '(> ee_timeout 0.2 s)' in status['detail'], status


@effect('policy', 'near_distance')
def policy_near_distance(rig, name):
    # The arm starts 0.37 m from the block: within 1 m the estimate freezes at once, so the
    # block may leave the view without aborting, and goals keep coming.
    with changed(rig, near_distance=1.0):
        since = start(rig)
        stream(rig, 0.5)
        for _ in range(20):  # 1 s, twice lost_timeout, without a frame; the arm still reports
            send_ee(rig, rig.harness.header().stamp)
            time.sleep(0.05)
        goals = rig.inboxes['ee_goal']
        count = len(goals.messages)
        assert wait_for(lambda: send_ee(rig, rig.harness.header().stamp)
                        or len(goals.messages) > count + 2), 'the arm stopped'
        assert not [s for s in statuses(rig, since) if s['state'] == 'aborted'], \
            statuses(rig, since)


@effect('policy', 'empty_grip_opening')
def policy_empty_grip_opening(rig, name):
    # A closed gripper whose fingers stopped 3 cm apart holds an object, unless 3 cm is empty.
    grasp = f'{rig.node.get_fully_qualified_name()}/grasp'

    def reading(limit: float) -> str | None:
        since = len(rig.harness.diagnostics.messages)
        shown = f'opening 0.0300 m, empty at or below {limit:g} m'

        def found():
            rig.pubs['gripper_state'].publish(Float64(data=1.0))
            rig.pubs['gripper/joint_states'].publish(JointState(
                name=['finger_left_joint', 'finger_right_joint'], position=[0.015, 0.015]))
            return next((s.message for m in rig.harness.diagnostics.messages[since:]
                         for s in m.status if s.name == grasp and shown in s.message),
                        None)
        return wait_for(found)

    assert reading(0.005).startswith('holding')
    with changed(rig, empty_grip_opening=0.04):
        assert reading(0.04).startswith('not holding')
    assert reading(0.005).startswith('holding')
    rig.pubs['gripper_state'].publish(Float64(data=0.0))  # open again for the other checks


# sim_node -------------------------------------------------------------------------------


def scene_names(msg) -> list:
    return sorted(d.results[0].hypothesis.class_id for d in msg.detections)


@effect('sim', 'seed')
def sim_seed(rig, name):
    truth = rig.inboxes['sim/ground_truth_2d']
    assert wait_for(lambda: rig.node.error or rig.node.frames > 0) and not rig.node.error, \
        rig.node.error or 'the simulator published no frame'
    first = scene_names(wait_for(lambda: truth.messages)[-1])
    with changed(rig, seed=4):
        assert wait_for(lambda: scene_names(truth.messages[-1]) != first), \
            'ground truth did not change after setting seed'
    assert wait_for(lambda: scene_names(truth.messages[-1]) == first), 'seed 3 again'
    # sim/reset goes through the parameter, so `seed` names the scene on show.
    assert wait_for(lambda: rig.pubs['sim/reset'].get_subscription_count() > 0)
    rig.pubs['sim/reset'].publish(Int32(data=4))
    assert wait_for(lambda: rig.remote.get('seed') == 4)
    assert wait_for(lambda: scene_names(truth.messages[-1]) != first)
    rig.pubs['sim/reset'].publish(Int32(data=-1))  # refused: the scene stays
    time.sleep(0.5)
    assert rig.remote.get('seed') == 4 and rig.node.error == ''


@pytest.mark.parametrize('name, infinite, finite', [
    ('workspace_min', [-math.inf, -0.45, 0.0], [-0.6, -0.45, 0.0]),
    ('workspace_max', [0.55, 0.45, math.inf], [0.55, 0.45, 0.7])])
def test_an_infinite_workspace_corner_is_refused(policy, name, infinite, finite):
    # It would pass 'min below max' and switch the workspace limit off.
    before = policy.remote.get(name)
    result = policy.remote.put(name, infinite)
    assert not result.successful and 'finite' in result.reason, result.reason
    assert list(policy.remote.get(name)) == list(before)
    with changed(policy, **{name: finite}):
        pass  # the next valid set is taken (and restored)


def test_bad_start_up_values_wait_for_a_set_that_fixes_them(harness):
    node = harness.add(VlaPolicyNode(context=harness.context, namespace='/startup',
                                     parameter_overrides=[Parameter('min_depth', value=6.0)]))
    assert node.lifecycle_state == 'unconfigured'
    assert 'min_depth (6) must be below max_depth (5)' in node.load_error
    remote = Remote(harness, node)
    result = remote.put('min_score', 0.5)  # still inconsistent: refused with the same reason
    assert not result.successful and 'min_depth' in result.reason
    assert remote.put('max_depth', 10.0).successful
    assert wait_for(lambda: node.lifecycle_state == 'active') and node.load_error == ''


MANAGED = {'grounding': (GroundingNode, TINY_CLIP + TINY_CLIPSEG),
           'classifier': (ClipClassifierNode, TINY_CLIP),
           'clipseg': (ClipSegNode, TINY_CLIPSEG), 'policy': (VlaPolicyNode, [])}


@pytest.mark.parametrize('node', list(MANAGED))
def test_every_refused_value_given_at_start_up_leaves_the_node_up_saying_why(harness, node):
    # rclpy refuses a value outside a descriptor's range or of the wrong type already when the
    # parameter is declared: the node must not die of it (a launch would respawn it forever).
    node_class, base = MANAGED[node]
    for k, (name, value) in enumerate(INVALID[node].items()):
        if name == 'use_sim_time':
            continue  # rclpy's own, declared before any of ours
        instance = node_class(context=harness.context, namespace=f'/bad_{node}_{k}',
                              parameter_overrides=base + [Parameter(name, value=value)])
        try:
            assert instance.lifecycle_state == 'unconfigured', name
            assert instance.load_error.startswith('ValueError: invalid parameters:'), (
                name, instance.load_error)
            assert name in instance.load_error, (name, instance.load_error)
        finally:
            instance.destroy_node()


# Coverage and refusals -----------------------------------------------------------------------


@pytest.mark.parametrize('node', list(INVALID))
def test_every_mutable_parameter_is_covered(rig, node):
    descriptors = rig.remote.descriptors()
    mutable = {name for name, d in descriptors.items() if not d.read_only}
    assert mutable, f'{node}: no mutable parameters listed'
    assert mutable == set(EFFECTS[node]), (
        f'{node}: mutable parameters without an effect check: {mutable - set(EFFECTS[node])}; '
        f'checked but not mutable: {set(EFFECTS[node]) - mutable}')
    assert mutable == set(INVALID[node]), (
        f'{node}: mutable parameters without a refused value: {mutable - set(INVALID[node])}; '
        f'refused values for: {set(INVALID[node]) - mutable}')
    for name in set(descriptors) - mutable:  # read-only really is
        result = rig.remote.put(name, rig.remote.get(name))
        assert not result.successful and 'read-only' in result.reason, (name, result.reason)


@pytest.mark.parametrize('node, name', [(n, p) for n in INVALID for p in INVALID[n]])
def test_bad_value_is_refused_with_its_reason(rig, node, name):
    before = rig.remote.get(name)
    result = rig.remote.put(name, INVALID[node][name])
    assert not result.successful, f'{node} took {name}={INVALID[node][name]!r}'
    # The reason names the parameter and its valid values (rclpy names the expected type).
    assert name in result.reason or 'Wrong parameter type' in result.reason, result.reason
    after = rig.remote.get(name)
    assert after == before or list(after) == list(before), f'{name} changed to {after!r}'


@pytest.mark.parametrize('node, name', [(n, p) for n in EFFECTS for p in EFFECTS[n]])
def test_set_takes_effect(request, rig, node, name):
    if node == 'sim':
        request.getfixturevalue('gl_context')  # the one reason a simulator test may skip
    EFFECTS[node][name](rig, name)
