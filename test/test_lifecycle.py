"""Lifecycle transitions, diagnostics, QoS hints, restarts and stable ids, over real DDS."""
import os

os.environ['ROS_DOMAIN_ID'] = '71'  # before rclpy: own domain, no cross-talk with other tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402


from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402, I100
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from vision_msgs.msg import Detection2DArray, LabelInfo  # noqa: E402

from clip_ros.nodes.clip_classifier_node import ClipClassifierNode  # noqa: E402
from clip_ros.nodes.clipseg_node import ClipSegNode  # noqa: E402
from clip_ros.nodes.conversions import numpy_to_image  # noqa: E402
from clip_ros.nodes.grounding_node import GroundingNode  # noqa: E402
from clip_ros.nodes.managed import ManagedNode, resident_bytes  # noqa: E402
from clip_ros.perception.geometry import Detection  # noqa: E402
from clip_ros.perception.grounding import GroundingResult  # noqa: E402
from clip_ros.perception.stats import ERROR, OK, WARN  # noqa: E402
from node_harness import Harness, LATCHED, request, rgb_image, wait_for  # noqa: E402

DOMAIN = 71
SUCCESS = TransitionCallbackReturn.SUCCESS
TINY = [Parameter('clip_arch', value='tiny'), Parameter('clip_pretrained', value='random'),
        Parameter('clipseg_model', value='tiny'), Parameter('device', value='cpu')]
GROUNDING = TINY + [Parameter('queries', value=['blue block']),
                    Parameter('thresholds', value=[0.0]), Parameter('min_area', value=16)]
MANAGED = [Parameter('autostart', value=False)]
BEST_EFFORT = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)


@pytest.fixture(scope='module')
def ros():
    harness = Harness(DOMAIN)
    harness.diagnostics = harness.subscribe(DiagnosticArray, '/diagnostics')
    yield harness
    harness.shutdown()


@pytest.fixture(autouse=True)
def own_nodes(ros):
    """Destroy the nodes a test added, so later tests do not share the executor with them."""
    count = len(ros.added_since(0))
    yield
    for node in ros.added_since(count):
        ros.remove(node)


def grounding(ros, namespace: str, extra=()) -> GroundingNode:
    return ros.add(GroundingNode(context=ros.context, namespace=namespace,
                                 parameter_overrides=GROUNDING + list(extra)))


def answers(ros, namespace: str, timeout: float = 20.0):
    """Return the detections for one new frame on `namespace`, or None."""
    pub = ros.publisher(Image, f'/{namespace}/image')
    inbox = ros.subscribe(Detection2DArray, f'/{namespace}/detections')
    wait_for(lambda: pub.get_subscription_count() > 0, timeout=5.0)
    return request(pub, rgb_image(ros.header(), 160, 120), inbox, timeout=timeout)


def status_of(ros, node, match=lambda s: True):
    """Return the newest /diagnostics status of `node` that satisfies `match`."""
    name = node.get_fully_qualified_name()
    found = ros.diagnostics.find(
        lambda m: any(s.name == name and match(s) for s in m.status))
    return None if found is None else next(s for s in found.status if s.name == name)


def test_transitions_load_subscribe_and_free(ros):
    node = grounding(ros, 'lc', MANAGED)
    assert node.lifecycle_state == 'unconfigured' and node._pipeline is None
    assert node.count_subscribers('/lc/image') == 0
    assert node.trigger_configure() == SUCCESS
    assert node.lifecycle_state == 'inactive' and node._pipeline is not None
    assert node.count_subscribers('/lc/image') == 0, 'inactive nodes take no frames'
    assert node.trigger_activate() == SUCCESS
    pipeline = node._pipeline
    assert answers(ros, 'lc') is not None
    assert node.trigger_deactivate() == SUCCESS
    assert wait_for(lambda: node.count_subscribers('/lc/image') == 0)
    assert node.trigger_activate() == SUCCESS
    assert node._pipeline is pipeline, 'activate must not reload the model'
    assert answers(ros, 'lc') is not None
    assert node.trigger_deactivate() == SUCCESS
    assert node._model == ('tiny/random + tiny', 'cpu')  # what the diagnostics name
    assert node.trigger_cleanup() == SUCCESS
    assert node.lifecycle_state == 'unconfigured' and node._pipeline is None
    assert node.worker is None and node._model == ('', ''), 'a freed model is not named'


def test_a_failed_activate_is_logged_and_leaves_the_node_inactive(ros):
    node = grounding(ros, 'bad_activate', MANAGED)
    assert node.trigger_configure() == SUCCESS
    subscribe = node.subscribe_inputs

    def half_subscribed():  # the image subscribed, then a failure (e.g. a middleware error)
        subscribe()
        raise RuntimeError('no more subscriptions')
    node.subscribe_inputs = half_subscribed
    assert node.trigger_activate() == TransitionCallbackReturn.FAILURE
    assert node.lifecycle_state == 'inactive' and not node.active
    assert node.stats.last_error == 'activate failed: no more subscriptions'
    assert wait_for(lambda: node.count_subscribers('/bad_activate/image') == 0)
    node.subscribe_inputs = subscribe  # the cause gone, activation works
    assert node.trigger_activate() == SUCCESS and answers(ros, 'bad_activate') is not None


@pytest.mark.parametrize('steps', [[], ['configure'], ['configure', 'activate']],
                         ids=['unconfigured', 'inactive', 'active'])
def test_shutdown_from_any_state(ros, steps):
    node = grounding(ros, 'sd_' + str(len(steps)), MANAGED)
    for step in steps:
        assert getattr(node, f'trigger_{step}')() == SUCCESS
    assert node.trigger_shutdown() == SUCCESS
    assert node.lifecycle_state == 'finalized'
    assert node._pipeline is None and node.worker is None


def test_lifecycle_services_drive_the_node(ros):
    grounding(ros, 'srv', MANAGED)
    change = ros.probe.create_client(ChangeState, '/srv/grounding_node/change_state')
    get = ros.probe.create_client(GetState, '/srv/grounding_node/get_state')
    assert change.wait_for_service(10.0) and get.wait_for_service(10.0)
    for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
        request_ = ChangeState.Request()
        request_.transition.id = transition
        assert change.call(request_, timeout_sec=30.0).success
    assert get.call(GetState.Request(), timeout_sec=10.0).current_state.label == 'active'
    assert answers(ros, 'srv') is not None


def test_autostart_is_the_plain_node(ros):
    node = grounding(ros, 'plain')
    assert node.lifecycle_state == 'active' and node.not_ready == ''
    assert answers(ros, 'plain') is not None


def test_cleanup_returns_memory(ros):
    """Cycle configure -> cleanup with a randomly initialised ViT-B-32 (about 600 MB)."""
    node = ros.add(ClipClassifierNode(context=ros.context, namespace='mem', parameter_overrides=[
        Parameter('clip_arch', value='ViT-B-32'), Parameter('clip_pretrained', value='random'),
        Parameter('device', value='cpu'), Parameter('classes', value=['cup', 'bowl']),
        Parameter('autostart', value=False)]))
    loaded, freed = [], []
    for _ in range(3):
        assert node.trigger_configure() == SUCCESS
        loaded.append(resident_bytes() - node.memory['configure'][0])
        assert node.trigger_cleanup() == SUCCESS
        freed.append(node.memory['cleanup'][0] - node.memory['configure'][0])
    mb = [round(v / 2**20) for v in loaded + freed]
    print(f'resident MB over the pre-configure level: loaded {mb[:3]}, after cleanup {mb[3:]}')
    assert min(loaded) > 300 * 2**20, 'the model should be resident while configured'
    assert max(freed) < 50 * 2**20, f'cleanup kept {mb[3:]} MB'


def test_failed_load_reports_error(ros, tmp_path):
    node = grounding(ros, 'bad', [Parameter('clip_pretrained', value=str(tmp_path / 'x.pt'))])
    assert node.lifecycle_state == 'unconfigured'
    status = wait_for(lambda: status_of(ros, node, lambda s: s.level == bytes([ERROR])))
    assert status is not None
    assert 'model failed to load' in status.message and 'x.pt' in status.message
    values = {kv.key: kv.value for kv in status.values}
    assert values['state'] == 'unconfigured'


def test_diagnostics_warn_when_silent_then_ok(ros):
    node = grounding(ros, 'diag', [Parameter('silent_input_sec', value=0.5),
                                   Parameter('diagnostics_period', value=0.2)])
    status = wait_for(lambda: status_of(ros, node, lambda s: s.level == bytes([WARN])))
    assert status is not None and 'no input frame' in status.message
    assert answers(ros, 'diag') is not None

    def processed_ok(status) -> bool:
        values = {kv.key: kv.value for kv in status.values}
        return status.level == bytes([OK]) and values['frames_processed'] != '0'

    status = wait_for(lambda: status_of(ros, node, processed_ok))
    assert status is not None, 'a frame within silent_input_sec must clear the warning'
    values = {kv.key: kv.value for kv in status.values}
    for key in ('model', 'device', 'input_rate_hz', 'processed_rate_hz', 'frames_dropped',
                'inference_p50_ms', 'inference_p99_ms', 'latency_p50_ms', 'latency_p99_ms',
                'last_error'):
        assert key in values, key
    assert values['device'] == 'cpu' and 'tiny' in values['model']
    assert int(values['frames_processed']) >= 1
    assert float(values['inference_p50_ms']) > 0.0


def test_diagnostics_warn_on_drops(ros):
    node = grounding(ros, 'drops', [Parameter('max_drop_ratio', value=0.2)])
    for _ in range(60):  # far faster than inference: most frames are replaced
        node.submit_frame(rgb_image(ros.header(), 64, 48))
    snapshot = node.diagnostics()
    assert snapshot.level == WARN
    assert any('dropped' in reason for reason in snapshot.reasons)


class FailingNode(ManagedNode):
    """A managed node whose model raises on every frame (as a model out of memory would)."""

    def __init__(self, **kwargs):
        super().__init__('failing_node', **kwargs)
        self.watch_parameters(lambda values: None, lambda names: None)
        self.start()

    def load_model(self) -> tuple:
        return 'failing', 'cpu'

    def release_model(self) -> None:
        pass

    def subscribe_inputs(self) -> None:
        pass  # frames come through submit_frame

    def process(self, msg) -> None:
        raise RuntimeError('CUDA out of memory')


def test_diagnostics_warn_while_every_frame_fails(ros):
    node = ros.add(FailingNode(context=ros.context, namespace='failing', parameter_overrides=[
        Parameter('diagnostics_period', value=0.2)]))
    assert node.active
    for n in range(1, 4):
        node.submit_frame(rgb_image(ros.header(), 64, 48))
        assert wait_for(lambda: node.worker.processed == n)

    def after_three(status) -> bool:
        return any(kv.key == 'frames_processed' and kv.value == '3' for kv in status.values)

    status = wait_for(lambda: status_of(ros, node, after_three))
    assert status is not None
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == bytes([WARN]), status.message
    assert '3 inference runs failed recently' in status.message
    assert values['inference_failures'] == '3' and values['frames_processed'] == '3'
    assert values['last_error'] == 'inference failed: RuntimeError: CUDA out of memory'


def test_incompatible_qos_is_reported(ros):
    node = grounding(ros, 'qos', [Parameter('image_qos', value='reliable')])
    pub = ros.publisher(Image, '/qos/image', BEST_EFFORT)  # best effort cannot feed reliable
    snapshot = wait_for(lambda: node._qos_hint.startswith('incompatible') and node.diagnostics(),
                        timeout=10.0)
    assert snapshot and snapshot.level == WARN
    hint = next(r for r in snapshot.reasons if 'QoS' in r)
    assert 'incompatible QoS (reliability)' in hint
    assert 'publishers offer [best_effort, volatile]' in hint
    assert 'subscribes with [reliable, volatile]' in hint
    pub.publish(rgb_image(ros.header(), 64, 48))
    assert node.stats.received == 0


def test_incompatible_qos_names_the_camera_it_is_on(ros):
    node = grounding(ros, 'qos2', [Parameter('image_qos', value='reliable'),
                                   Parameter('cameras', value=['cam_a', 'cam_b'])])
    ros.publisher(Image, '/qos2/cam_a/image')  # reliable: matches
    ros.publisher(Image, '/qos2/cam_b/image', BEST_EFFORT)
    hint = wait_for(lambda: node._qos_hint, timeout=10.0)
    assert hint and 'on /qos2/cam_b/image' in hint and 'cam_a' not in hint, hint


def test_paused_publisher_with_matching_qos_gets_no_qos_hint(ros):
    node = grounding(ros, 'pause', [Parameter('silent_input_sec', value=0.5),
                                    Parameter('diagnostics_period', value=0.2)])
    assert answers(ros, 'pause') is not None  # a reliable publisher feeds best effort, then stops

    def silent(status) -> bool:
        return status.level == bytes([WARN]) and 'no input frame' in status.message

    status = wait_for(lambda: status_of(ros, node, silent))
    assert status is not None, 'a paused input must be reported as silent'
    values = {kv.key: kv.value for kv in status.values}
    assert values['qos_hint'] == '' and 'QoS' not in status.message
    assert node.count_publishers('/pause/image') == 1


def test_incompatible_publisher_gets_a_qos_hint_from_the_graph(ros):
    node = grounding(ros, 'qos_graph', [Parameter('image_qos', value='reliable'),
                                        Parameter('silent_input_sec', value=0.5)])
    ros.publisher(Image, '/qos_graph/image', BEST_EFFORT)
    assert wait_for(lambda: node._qos_hint, timeout=10.0)
    node._qos_hint = ''  # as if the incompatible-QoS event had been missed: the graph tells
    snapshot = wait_for(lambda: node._qos_hint and node.diagnostics(), timeout=10.0)
    assert snapshot and snapshot.level == WARN
    hint = next(r for r in snapshot.reasons if 'QoS' in r)
    assert 'QoS mismatch (Best effort publisher and reliable subscription)' in hint, hint
    assert 'publishers offer [best_effort, volatile]' in hint


def test_camera_before_node_and_restart_while_publishing(ros):
    pub = ros.publisher(Image, '/cam/image')
    detections = ros.subscribe(Detection2DArray, '/cam/detections')
    timer = ros.probe.create_timer(0.05, lambda: pub.publish(rgb_image(ros.header(), 96, 72)))
    try:
        node = grounding(ros, 'cam')  # the camera already publishes
        assert wait_for(lambda: len(detections.messages) > 0)
        for step in ('deactivate', 'cleanup', 'configure', 'activate'):
            assert getattr(node, f'trigger_{step}')() == SUCCESS
        count = len(detections.messages)
        assert wait_for(lambda: len(detections.messages) > count + 2)
        labels = ros.subscribe(LabelInfo, '/cam/label_info', LATCHED)  # a late joiner
        info = wait_for(lambda: labels.find(lambda m: len(m.class_map) == 1))
        assert info is not None and info.class_map[0].class_name == 'blue block'
    finally:
        ros.probe.destroy_timer(timer)


def test_camera_after_node(ros):
    node = grounding(ros, 'late')
    assert node.active
    assert answers(ros, 'late') is not None  # publisher created now


def test_clipseg_label_info_for_a_late_subscriber_after_restart(ros):
    node = ros.add(ClipSegNode(context=ros.context, namespace='seg', parameter_overrides=[
        Parameter('clipseg_model', value='tiny'), Parameter('device', value='cpu'),
        Parameter('classes', value=['cup', 'bowl'])]))
    for step in ('deactivate', 'cleanup', 'configure', 'activate'):
        assert getattr(node, f'trigger_{step}')() == SUCCESS
    labels = ros.subscribe(LabelInfo, '/seg/label_info', LATCHED)
    info = wait_for(lambda: labels.find(lambda m: len(m.class_map) == 2))
    assert info is not None and [c.class_name for c in info.class_map] == ['cup', 'bowl']


class ColourPipeline:
    """Stand-in model: pure blue pixels are the blue block, pure red ones the red block."""

    COLOURS = {'blue block': (0, 0, 255), 'red block': (255, 0, 0)}

    def __init__(self):
        self.frames = 0

    def __call__(self, rgb, phrases, thresholds, with_heatmaps=True, depth=None):
        self.frames += 1
        found = []
        for phrase, colour in self.COLOURS.items():
            ys, xs = np.nonzero(np.all(rgb == colour, axis=2))
            if len(xs):
                box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
                found.append((phrase, box, ys, xs))
        if self.frames % 2:
            found.reverse()  # the score order flips, so detection indices change every frame
        label_image = np.zeros(rgb.shape[:2], np.uint16)
        detections = []
        for index, (phrase, box, ys, xs) in enumerate(found):
            label_image[ys, xs] = index + 1
            detections.append(Detection(index, phrase, 0.9, box, len(xs),
                                        (float(xs.mean()), float(ys.mean())), 0.9))
        return GroundingResult(list(phrases), detections, label_image, None)


def test_ids_follow_a_moving_block(ros):
    node = grounding(ros, 'ids', [Parameter('queries', value=['blue block', 'red block'])])
    node._pipeline = ColourPipeline()
    pub = ros.publisher(Image, '/ids/image')
    inbox = ros.subscribe(Detection2DArray, '/ids/detections')
    assert wait_for(lambda: pub.get_subscription_count() > 0)
    ids = {'blue block': set(), 'red block': set()}
    for step in range(12):  # the blue block slides 8 px a frame towards the red one
        rgb = np.full((120, 160, 3), 200, np.uint8)
        rgb[40:70, 10 + 8 * step:40 + 8 * step] = ColourPipeline.COLOURS['blue block']
        rgb[80:110, 120:150] = ColourPipeline.COLOURS['red block']
        header = ros.header()
        header.stamp.sec, header.stamp.nanosec = 2000, step * 50_000_000  # 20 Hz stamps
        result = request(pub, numpy_to_image(rgb, 'rgb8', header), inbox)
        assert result is not None and len(result.detections) == 2
        for detection in result.detections:
            ids[detection.results[0].hypothesis.class_id].add(detection.id)
    assert len(ids['blue block']) == 1 and len(ids['red block']) == 1
    assert ids['blue block'] != ids['red block']
