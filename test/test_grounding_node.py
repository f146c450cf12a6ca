"""grounding_node over real DDS with the tiny random models (no weights needed)."""
import array
import os
import threading
import time

os.environ['ROS_DOMAIN_ID'] = '61'  # before rclpy: own domain, no cross-talk with other tests

import pytest  # noqa: E402


from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from vision_msgs.msg import Detection2DArray, LabelInfo  # noqa: E402

from clip_ros.nodes.grounding_node import (  # noqa: E402
    GroundingNode, MAX_PHRASES, query_thresholds)
from clip_ros.perception.stats import ERROR, WARN  # noqa: E402
from node_harness import (  # noqa: E402, I100
    Harness, interrupt, LATCHED, node_process, request, rgb_image, TIMEOUT, wait_for)

DOMAIN = 61
TINY = [Parameter('clip_arch', value='tiny'), Parameter('clip_pretrained', value='random'),
        Parameter('clipseg_model', value='tiny'), Parameter('device', value='cpu')]
# Threshold 0 makes every pixel foreground, so each phrase yields at least one detection.
OVERRIDES = TINY + [Parameter('queries', value=['red block']),
                    Parameter('thresholds', value=[0.0]), Parameter('min_area', value=16)]


@pytest.fixture(scope='module')
def ros():
    harness = Harness(DOMAIN)
    node = harness.add(GroundingNode(context=harness.context, parameter_overrides=OVERRIDES))
    harness.node = node
    harness.image_pub = harness.publisher(Image, 'image')
    harness.command_pub = harness.publisher(String, 'command')
    harness.detections = harness.subscribe(Detection2DArray, 'detections')
    harness.masks = harness.subscribe(Image, 'mask')
    assert wait_for(lambda: harness.image_pub.get_subscription_count() > 0
                    and harness.command_pub.get_subscription_count() > 0)
    yield harness
    harness.shutdown()


def frame(ros, **kwargs) -> Image:
    return rgb_image(ros.header(), **kwargs)


def assert_answered(ros) -> Detection2DArray:
    """Publish a good frame and return its detections."""
    msg = frame(ros)
    result = request(ros.image_pub, msg, ros.detections)
    assert result is not None, 'no detections for a good frame'
    return result


def test_model_loaded(ros):
    assert ros.node.not_ready == ''
    assert ros.node.phrases == ['red block']


def test_detections_follow_the_image(ros):
    msg = frame(ros)
    msg.header.frame_id = 'camera_optical'
    result = request(ros.image_pub, msg, ros.detections)
    assert result is not None
    assert result.header == msg.header
    assert result.detections, 'threshold 0 must give a detection'
    assert len({d.id for d in result.detections}) == len(result.detections)
    for detection in result.detections:
        assert detection.header == msg.header
        assert int(detection.id) >= 1  # track id
        hypothesis = detection.results[0].hypothesis
        assert hypothesis.class_id == 'red block'
        assert 0.0 <= hypothesis.score <= 1.0
        box = detection.bbox
        assert 0.0 <= box.center.position.x - box.size_x / 2 <= box.center.position.x
        assert box.center.position.x + box.size_x / 2 <= 640.0
        assert 0.0 <= box.center.position.y - box.size_y / 2
        assert box.center.position.y + box.size_y / 2 <= 480.0
    mask = wait_for(lambda: ros.masks.find(lambda m: m.header == msg.header))
    assert mask is not None
    assert (mask.width, mask.height, mask.encoding) == (640, 480, 'mono16')


def test_command_sets_phrases_and_label_info(ros):
    ros.command_pub.publish(String(data='please pick up the blue cup and put it in the bowl'))
    assert wait_for(lambda: ros.node.phrases == ['blue cup', 'bowl'])
    # A late transient-local subscriber still gets the current map.
    labels = ros.subscribe(LabelInfo, 'label_info', LATCHED)
    info = wait_for(lambda: labels.find(lambda m: len(m.class_map) == 2))
    assert info is not None
    assert [(c.class_id, c.class_name) for c in info.class_map] == [(1, 'blue cup'), (2, 'bowl')]
    result = assert_answered(ros)
    assert {d.results[0].hypothesis.class_id for d in result.detections} <= {'blue cup', 'bowl'}


@pytest.mark.parametrize('text', ['', '   \n\t', 'please pick it up', '...'])
def test_command_naming_nothing_is_ignored(ros, text):
    before, phrases = ros.node.rejected, ros.node.phrases
    ros.command_pub.publish(String(data=text))
    assert wait_for(lambda: ros.node.rejected > before)
    assert ros.node.phrases == phrases
    assert_answered(ros)


def test_long_command_is_grounded(ros):
    text = 'pick up the green ball. ' * 420  # 10,080 characters
    assert ros.node.phrases != ['green ball']
    ros.command_pub.publish(String(data=text))
    assert wait_for(lambda: ros.node.phrases == ['green ball'])
    assert_answered(ros)


def test_a_command_naming_too_many_things_is_refused(ros):
    names = [f'the {c} {s}' for c in ('red', 'blue', 'green', 'yellow', 'white', 'black',
                                      'orange', 'purple', 'pink', 'brown')
             for s in ('block', 'ball', 'cup', 'bowl')]
    assert len(names) > MAX_PHRASES
    ros.command_pub.publish(String(data='find the green ball'))
    assert wait_for(lambda: ros.node.phrases == ['green ball'])
    before = ros.node.rejected
    ros.command_pub.publish(String(data='find ' + ', '.join(names)))
    assert wait_for(lambda: ros.node.rejected > before)
    assert ros.node.phrases == ['green ball']
    assert_answered(ros)
    with pytest.raises(ValueError, match=f'at most {MAX_PHRASES}'):
        query_thresholds(names, [0.4])


def test_non_ascii_command_is_handled(ros):
    before = ros.node.rejected
    text = 'greif den roten W\u00fcrfel \U0001f7e5 \u8d64\u3044\u7bb1'
    ros.command_pub.publish(String(data=text))
    assert wait_for(lambda: ros.node.rejected > before or 'den roten' in ' '.join(ros.node.phrases)
                    or any('\u8d64' in p for p in ros.node.phrases))
    assert_answered(ros)
    ros.command_pub.publish(String(data='find the red block'))
    assert wait_for(lambda: ros.node.phrases == ['red block'])


def bad_images():
    def image(width=640, height=480, encoding='rgb8', step=None, size=None):
        step = width * 3 if step is None else step
        size = step * height if size is None else size
        return Image(width=width, height=height, encoding=encoding, step=step,
                     data=bytes(size))
    return {
        'unsupported encoding': image(encoding='yuv_magic'),
        'zero width': image(width=0, step=0, size=0),
        'zero height': image(height=0, size=0),
        'short data': image(size=640 * 3 * 480 - 1),
        'long data': image(size=640 * 3 * 480 + 7),
        'step below width': image(step=640 * 3 - 3),
        'huge header': image(width=8000, height=8000, step=24000, size=16),
    }


@pytest.mark.parametrize('name', list(bad_images()))
def test_bad_image_is_rejected_then_good_frame_answered(ros, name):
    msg = bad_images()[name]
    msg.header = ros.header()
    before = ros.node.rejected
    ros.image_pub.publish(msg)
    assert wait_for(lambda: ros.node.rejected > before), f'{name} not rejected'
    assert ros.detections.find(lambda m: m.header == msg.header) is None
    assert_answered(ros)


def test_refused_frames_show_in_the_diagnostics(ros):
    before = ros.node.rejected
    msg = bad_images()['unsupported encoding']
    msg.header = ros.header()
    ros.image_pub.publish(msg)
    assert wait_for(lambda: ros.node.rejected > before)
    snapshot = ros.node.diagnostics()
    assert snapshot.level == WARN and snapshot.window_rejected >= 1, snapshot
    assert any('inputs refused recently' in r and 'yuv_magic' in r for r in snapshot.reasons)


def test_huge_image_is_rejected_without_inference(ros):
    # 8000x8000 rgb8 (192 MB) goes straight into the worker: DDS would be the bottleneck.
    msg = Image(width=8000, height=8000, encoding='rgb8', step=24000,
                data=bytes(8000 * 8000 * 3), header=ros.header())
    before = ros.node.rejected
    ros.node.submit_frame(msg)
    assert wait_for(lambda: ros.node.rejected > before)
    assert_answered(ros)


def test_threshold_outside_unit_interval_is_refused(ros):
    for value in ([1.5], [-0.1], [0.2, 0.3, 0.4]):
        result = ros.node.set_parameters([Parameter('thresholds', value=value)])[0]
        assert not result.successful
        assert 'thresholds' in result.reason
    assert '[0, 1]' in ros.node.set_parameters(
        [Parameter('thresholds', value=[1.5])])[0].reason
    assert ros.node.get_parameter('thresholds').value == [0.0]
    assert not ros.node.set_parameters([Parameter('queries', value=5)])[0].successful
    assert not ros.node.set_parameters([Parameter('device', value='cuda')])[0].successful
    assert not ros.node.set_parameters([Parameter('min_area', value=0)])[0].successful
    # At threshold 0.5 the tiny model's map of the noise frame splits into dozens of blobs:
    # more candidate instances than either limit, so the limit decides how many come out.
    ros.command_pub.publish(String(data='find the red block'))
    assert wait_for(lambda: ros.node.phrases == ['red block'])
    try:
        for limit in (3, 20):
            results = ros.node.set_parameters([Parameter('thresholds', value=[0.5]),
                                               Parameter('max_detections', value=limit)])
            assert all(r.successful for r in results), [r.reason for r in results]
            assert len(assert_answered(ros).detections) == limit
    finally:
        ros.node.set_parameters([Parameter('thresholds', value=[0.0]),
                                 Parameter('max_detections', value=20)])


class PipelineSpy:
    """Record whether the node asked for heatmaps."""

    def __init__(self, pipeline):
        self.pipeline, self.calls = pipeline, []

    def __call__(self, rgb, phrases, thresholds, with_heatmaps=True, depth=None):
        self.calls.append(with_heatmaps)
        return self.pipeline(rgb, phrases, thresholds, with_heatmaps=with_heatmaps, depth=depth)


def test_heatmap_and_debug_only_when_subscribed(ros):
    spy = PipelineSpy(ros.node._pipeline)
    ros.node._pipeline = spy
    try:
        assert_answered(ros)
        assert spy.calls and not spy.calls[-1]
        heatmaps = ros.subscribe(Image, 'heatmap')
        debug = ros.subscribe(Image, 'debug_image')
        assert wait_for(lambda: ros.node.count_subscribers('heatmap') > 0
                        and ros.node.count_subscribers('debug_image') > 0)
        msg = frame(ros)
        assert request(ros.image_pub, msg, heatmaps) is not None
        assert spy.calls[-1]
        heatmap = heatmaps.find(lambda m: m.header == msg.header)
        assert (heatmap.width, heatmap.height, heatmap.encoding) == (640, 480, '32FC1')
        overlay = wait_for(lambda: debug.find(lambda m: m.header == msg.header))
        assert (overlay.width, overlay.height, overlay.encoding) == (640, 480, 'rgb8')
    finally:
        ros.node._pipeline = spy.pipeline
        ros.probe.destroy_subscription(heatmaps.subscription)
        ros.probe.destroy_subscription(debug.subscription)


class GatedPipeline:
    """The node's pipeline, holding one frame inside grounding until `release` is set."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.entered, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.pipeline, name)  # canonical, lexicon: the node reads them too

    def __call__(self, *args, **kwargs):
        self.entered.set()
        assert self.release.wait(TIMEOUT)
        return self.pipeline(*args, **kwargs)


def test_frame_in_flight_when_phrases_change_is_not_published_with_the_old_ids(ros):
    node, gate = ros.node, GatedPipeline(ros.node._pipeline)
    labels = ros.subscribe(LabelInfo, 'label_info', LATCHED)
    node._pipeline = gate
    try:
        stale = frame(ros)
        assert wait_for(lambda: ros.image_pub.publish(stale) or gate.entered.wait(0.5)), \
            'the frame never reached the model'
        # label_info now says 1 = green bowl; a mask of 'red block' would call it green bowl.
        ros.command_pub.publish(String(data='find the green bowl'))
        assert wait_for(lambda: labels.find(
            lambda m: [c.class_name for c in m.class_map] == ['green bowl']))
    finally:
        gate.release.set()
        node._pipeline = gate.pipeline
    result = assert_answered(ros)
    assert {d.results[0].hypothesis.class_id for d in result.detections} == {'green bowl'}
    # The frame grounded with 'red block' is dropped; its copies are grounded with the new ones.
    for late in ros.detections.messages:
        if late.header == stale.header:
            assert {d.results[0].hypothesis.class_id for d in late.detections} == {'green bowl'}
    ros.command_pub.publish(String(data='find the red block'))
    assert wait_for(lambda: ros.node.phrases == ['red block'])


def test_no_phrases_skips_frames(ros):
    node = ros.add(GroundingNode(context=ros.context, namespace='empty',
                                 parameter_overrides=TINY + [Parameter('queries', value=[])]))
    assert node.phrases == []
    pub = ros.publisher(Image, 'empty/image')
    detections = ros.subscribe(Detection2DArray, 'empty/detections')
    assert wait_for(lambda: pub.get_subscription_count() > 0)
    wait_for(lambda: pub.publish(frame(ros)) or node.worker.processed > 0)
    assert node.worker.processed > 0
    # Detections would arrive within this second; none may.
    assert not wait_for(lambda: detections.messages, timeout=1.0), detections.messages


def test_missing_model_keeps_node_alive(ros, tmp_path):
    overrides = [Parameter('clip_pretrained', value=str(tmp_path / 'missing.safetensors')),
                 Parameter('clipseg_model', value='tiny'), Parameter('device', value='cpu'),
                 Parameter('queries', value=['cup'])]
    node = ros.add(GroundingNode(context=ros.context, namespace='broken',
                                 parameter_overrides=overrides))
    assert node.lifecycle_state == 'unconfigured'
    assert 'missing.safetensors' in node.not_ready
    diagnostics = node.diagnostics()
    assert diagnostics.level == ERROR
    assert 'model failed to load' in diagnostics.reasons[0]
    assert node.count_subscribers('broken/image') == 0 and node.worker is None


def test_node_as_process_answers_and_stops_on_sigint(ros):
    args = ['-r', '__ns:=/proc', '-p', 'clip_arch:=tiny', '-p', 'clip_pretrained:=random',
            '-p', 'clipseg_model:=tiny', '-p', 'device:=cpu', '-p', 'thresholds:=[0.0]',
            '-p', "queries:=['red block']",
            # Across processes Fast DDS drops best-effort frames this large (fragments overflow
            # the default socket buffers), so this test asks for a reliable subscription.
            '-p', 'image_qos:=reliable']
    with node_process('clip_ros.nodes.grounding_node', DOMAIN, args) as proc:
        pub = ros.publisher(Image, '/proc/image')
        detections = ros.subscribe(Detection2DArray, '/proc/detections')
        assert wait_for(lambda: pub.get_subscription_count() > 0, timeout=60.0)
        result = request(pub, frame(ros), detections, timeout=TIMEOUT)
        assert result is not None and result.detections
        interrupt(proc)


def test_burst_keeps_only_the_newest_frame(ros):
    worker = ros.node.worker
    received, processed, dropped = worker.received, worker.processed, worker.dropped
    frames = [frame(ros) for _ in range(6)]
    for msg in frames:
        ros.node.submit_frame(msg)  # faster than inference: the slot keeps only the newest
    assert wait_for(lambda: ros.detections.find(lambda m: m.header == frames[-1].header))
    assert worker.received == received + 6
    assert worker.dropped > dropped
    assert worker.processed - processed < 6


def test_double_arrays_from_the_parameter_services_are_accepted():
    # `ros2 param set` and SetParameters deliver double arrays as array.array('d').
    pairs, default = query_thresholds(['cup'], array.array('d', [0.25]))
    assert pairs == {'cup': 0.25} and default == 0.25


def test_each_distinct_rejection_reason_is_logged(ros):
    # One throttle key per family used to hide a second reason: a yuv422 frame right after an
    # rgb8 frame with short data, a command 'pick up' right after '?!.,'.
    from rcl_interfaces.msg import Log
    rosout = ros.subscribe(Log, '/rosout')
    node = ros.add(GroundingNode(context=ros.context, namespace='reasons',
                                 parameter_overrides=OVERRIDES))
    image_pub = ros.publisher(Image, '/reasons/image')
    command_pub = ros.publisher(String, '/reasons/command')
    assert wait_for(lambda: image_pub.get_subscription_count() > 0
                    and command_pub.get_subscription_count() > 0)

    def logged(*words):
        return wait_for(lambda: rosout.find(
            lambda m: m.name.endswith('grounding_node') and all(w in m.msg for w in words)))

    short = Image(width=32, height=32, encoding='rgb8', step=96, data=bytes(96 * 32 - 1))
    for msg in (short, Image(width=32, height=32, encoding='yuv422', step=64, data=bytes(2048)),
                Image(width=32, height=32, encoding='', step=96, data=bytes(96 * 32))):
        before = node.rejected
        msg.header = ros.header()
        node.submit_frame(msg)  # the worker processes one frame at a time: none replaced
        assert wait_for(lambda: node.rejected > before)
    assert logged('rejected image', f'{96 * 32 - 1} bytes')
    assert logged('rejected image', "'yuv422'")
    assert logged('rejected image', "unsupported encoding ''")
    for text in ('?!.,', 'pick up', 'pick up'):
        before = node.rejected
        command_pub.publish(String(data=text))
        assert wait_for(lambda: node.rejected > before)
    assert logged("'?!.,'", 'names nothing') and logged("'pick up'", 'names nothing')
    # The repeat is throttled (counted in `rejected`), not logged a second time.
    time.sleep(0.5)
    assert len([m for m in rosout.messages if "'pick up'" in m.msg]) == 1


def test_phrase_without_detection_is_reported_once(ros):
    # Threshold 1.0 switches 'blue ball' off: no detection, reported 'not found' on
    # grounding_status (latched), once in the log and in /diagnostics while frames keep coming.
    import json

    from diagnostic_msgs.msg import DiagnosticArray
    from rcl_interfaces.msg import Log
    rosout = ros.subscribe(Log, '/rosout')
    diagnostics = ros.subscribe(DiagnosticArray, '/diagnostics')
    ros.add(GroundingNode(context=ros.context, namespace='absent', parameter_overrides=(
        OVERRIDES + [Parameter('queries', value=['red block', 'blue ball']),
                     Parameter('thresholds', value=[0.0, 1.0])])))
    image_pub = ros.publisher(Image, '/absent/image')
    detections = ros.subscribe(Detection2DArray, '/absent/detections')
    assert wait_for(lambda: image_pub.get_subscription_count() > 0)
    for _ in range(3):
        result = request(image_pub, frame(ros), detections)
        assert result is not None and result.detections
        assert {d.results[0].hypothesis.class_id for d in result.detections} == {'red block'}
    status = ros.subscribe(String, '/absent/grounding_status', LATCHED)  # a late subscriber
    message = wait_for(lambda: status.find(lambda m: 'blue ball' in m.data))
    assert message is not None
    assert json.loads(message.data) == {
        'phrases': ['red block', 'blue ball'], 'found': ['red block'],
        'rejected': {'blue ball': 'not found: blue ball'}, 'stamp': json.loads(
            message.data)['stamp']}

    def phrases_status(msg):
        return next((s for s in msg.status if s.name == '/absent/grounding_node/phrases'), None)

    entry = wait_for(lambda: diagnostics.find(
        lambda m: getattr(phrases_status(m), 'message', '') == 'not found: blue ball'))
    assert entry is not None, [phrases_status(m) for m in diagnostics.messages[-2:]]
    phrases = phrases_status(entry)
    assert {v.key: v.value for v in phrases.values} == {
        'red block': 'found', 'blue ball': 'not found: blue ball'}
    lines = [m for m in rosout.messages
             if m.name.endswith('grounding_node') and 'not found: blue ball' in m.msg]
    assert len(lines) == 1 and "no detection published for 'blue ball'" in lines[0].msg
    # Beside the phrases, how often frames took a still view's answers: the tiny models have
    # no light reference nor shape head, and these frames no depth, so nothing was looked up.
    memos = next(s for s in entry.status if s.name == '/absent/grounding_node/memos')
    assert memos.message == 'no still view looked up yet'
    assert {v.key: v.value for v in memos.values} == {
        f'{name}_{kind}': '0' for name in ('shape_search', 'zoomed_maps', 'zoomed_looks',
                                           'depth_views') for kind in ('hits', 'misses')}
