"""One grounding_node serving several cameras: batched pipeline, per-camera topics over DDS."""
import os
import time

os.environ['ROS_DOMAIN_ID'] = '83'  # before rclpy: own domain, no cross-talk with other tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from clip_ros.nodes.grounding_node import GroundingNode  # noqa: E402
from clip_ros.perception.grounding import GroundingPipeline  # noqa: E402
from clip_ros.perception.loading import load_clip, load_clipseg  # noqa: E402
from clip_ros.perception.stats import ERROR, OK, WARN  # noqa: E402
from clip_ros.sim.synthetic import scene_image  # noqa: E402
from node_harness import Harness, request, rgb_image, wait_for  # noqa: E402, I100

DOMAIN = 83
SIZES = [(160, 120), (96, 64), (160, 120)]
PHRASES = [['red block', 'blue ball'], ['green bowl'], ['red block', 'yellow block']]
TINY = [Parameter('clip_arch', value='tiny'), Parameter('clip_pretrained', value='random'),
        Parameter('clipseg_model', value='tiny'), Parameter('device', value='cpu')]
CAMERAS = ['cam_a', 'cam_b', 'cam_c']  # cam_c stays silent
# Threshold 0 makes every pixel foreground, so each frame yields a detection.
OVERRIDES = TINY + [Parameter('queries', value=['red block']),
                    Parameter('thresholds', value=[0.0]), Parameter('min_area', value=16),
                    Parameter('cameras', value=CAMERAS), Parameter('silent_input_sec', value=0.5),
                    # One worker that waits for the other cameras: frames share batches.
                    Parameter('workers', value=1), Parameter('batch_window', value=0.2)]


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
    # The synthetic table is warmer than the simulator's, so light correction would take it for
    # a warm lamp (perception.light); this compares batching, on the frames as they are.
    pipeline = GroundingPipeline(clip, load_clipseg(model, device='cpu'), min_area=16,
                                 light_correction=False)
    frames = [scene_image(seed=seed, width=w, height=h, count=3)[0]
              for seed, (w, h) in enumerate(SIZES)]
    requests = list(zip(frames, PHRASES, thresholds))
    batched = pipeline.batch(requests)
    assert len(batched) == len(frames)
    found = 0
    for one, result in zip(requests, batched):
        assert_same(pipeline(*one), result)
        found += len(result.detections)
    assert found, 'the comparison needs detections to compare'
    # A frame alone in its batch is the single-frame call.
    assert_same(pipeline(*requests[1]), pipeline.batch(requests[1:2])[0])


@pytest.fixture(scope='module')
def ros():
    harness = Harness(DOMAIN)
    harness.node = harness.add(GroundingNode(context=harness.context,
                                             parameter_overrides=OVERRIDES))
    harness.images = {c: harness.publisher(Image, f'{c}/image') for c in CAMERAS}
    harness.detections = {c: harness.subscribe(Detection2DArray, f'{c}/detections')
                          for c in CAMERAS}
    harness.masks = {c: harness.subscribe(Image, f'{c}/mask') for c in CAMERAS}
    assert wait_for(lambda: all(p.get_subscription_count() for p in harness.images.values()))
    yield harness
    harness.shutdown()


def test_each_camera_answers_on_its_own_topics(ros):
    assert ros.node.not_ready == ''
    assert ros.node.get_publishers_info_by_topic('detections') == []  # no single-camera output
    sent = {}
    for camera in ('cam_a', 'cam_b'):
        msg = rgb_image(ros.header(frame_id=camera), 160, 120)
        result = request(ros.images[camera], msg, ros.detections[camera])
        assert result is not None, f'no detections for {camera}'
        assert result.header == msg.header and result.detections
        assert wait_for(lambda: ros.masks[camera].find(lambda m: m.header == msg.header))
        sent[camera] = msg.header
    # Each camera's results carry only its own frames' stamps.
    for camera, inbox in ros.detections.items():
        assert all(m.header.frame_id == camera for m in inbox.messages), camera
    assert not ros.detections['cam_c'].messages


def test_frames_of_several_cameras_share_a_batch(ros):
    worker = ros.node.worker
    shared = worker.processed - worker.batches  # frames that rode in another camera's batch
    for seed in range(10):
        msgs = {c: rgb_image(ros.header(frame_id=c), 160, 120, seed=seed)
                for c in ('cam_a', 'cam_b')}
        for camera, msg in msgs.items():
            ros.images[camera].publish(msg)
        wait_for(lambda: all(ros.detections[c].find(lambda m, c=c: m.header == msgs[c].header)
                             for c in msgs), 3.0)
        if worker.processed - worker.batches > shared:
            return
    pytest.fail('frames of two cameras never shared a batch')


def camera_statuses(node) -> dict:
    """Return {camera: DiagnosticStatus} of the node's per-camera diagnostics."""
    return {s.name.rsplit('/', 1)[-1]: s
            for s in node.extra_diagnostics(node.health_limits(), None)
            if not s.name.endswith(('/phrases', '/memos'))}  # not cameras


def test_a_silent_camera_stalls_no_other(ros):
    # One DiagnosticStatus per camera: silent cam_c warns once silent_input_sec has passed.
    assert sorted(camera_statuses(ros.node)) == CAMERAS
    assert wait_for(lambda: camera_statuses(ros.node)['cam_c'].level == bytes([WARN]), 5.0)
    # cam_c never sends: cam_a keeps getting answers frame after frame, without waiting on it.
    for seed in range(3):
        msg = rgb_image(ros.header(frame_id='cam_a'), 160, 120, seed=seed)
        assert request(ros.images['cam_a'], msg, ros.detections['cam_a']) is not None
    statuses = camera_statuses(ros.node)
    assert statuses['cam_a'].level == bytes([OK]), statuses['cam_a'].message
    assert 'no input frame' in statuses['cam_c'].message
    values = {v.key: v.value for v in statuses['cam_a'].values}
    assert int(values['frames_processed']) >= 3


def test_a_refused_frame_is_charged_to_its_own_camera(ros):
    before = {c: int({v.key: v.value for v in s.values}['inputs_rejected'])
              for c, s in camera_statuses(ros.node).items()}
    bad = Image(header=ros.header(frame_id='cam_b'), width=4, height=4, encoding='yuv422',
                step=8, data=bytes(32))
    ros.images['cam_b'].publish(bad)
    assert wait_for(lambda: int({v.key: v.value for v in camera_statuses(ros.node)[
        'cam_b'].values}['inputs_rejected']) > before['cam_b'], 5.0)
    statuses = camera_statuses(ros.node)
    values = {v.key: v.value for v in statuses['cam_b'].values}
    assert values['last_rejected'].startswith('camera cam_b: rejected image')
    assert statuses['cam_b'].level == bytes([WARN]), statuses['cam_b'].message
    # cam_a's own count is untouched, and it still answers.
    after_a = {v.key: v.value for v in camera_statuses(ros.node)['cam_a'].values}
    assert int(after_a['inputs_rejected']) == before['cam_a']
    msg = rgb_image(ros.header(frame_id='cam_a'), 160, 120)
    assert request(ros.images['cam_a'], msg, ros.detections['cam_a']) is not None


class FailingCameras(GroundingNode):
    """A grounding node whose model raises on every batch, as one out of GPU memory does."""

    def _ground(self, items: list) -> None:
        raise RuntimeError('CUDA out of memory')


def test_a_failed_batch_is_charged_to_each_camera_it_held(ros):
    cameras = ['fail_a', 'fail_b']
    overrides = [p for p in OVERRIDES if p.name != 'cameras']
    node = ros.add(FailingCameras(context=ros.context, parameter_overrides=overrides + [
        Parameter('cameras', value=cameras)]))
    assert node.not_ready == ''
    pubs = {c: ros.publisher(Image, f'{c}/image') for c in cameras}
    assert wait_for(lambda: all(p.get_subscription_count() for p in pubs.values()))
    for camera in cameras:
        pubs[camera].publish(rgb_image(ros.header(frame_id=camera), 96, 64))

    def failures() -> dict:
        return {c: int({v.key: v.value for v in s.values}['inference_failures'])
                for c, s in camera_statuses(node).items()}

    assert wait_for(lambda: all(failures().values()), 10.0), failures()
    for camera, status in camera_statuses(node).items():
        assert status.level == bytes([WARN]), status.message
        assert 'inference runs failed recently' in status.message
        values = {v.key: v.value for v in status.values}
        assert values['last_error'] == 'inference failed: RuntimeError: CUDA out of memory'
    assert node.stats.snapshot().failed >= 1  # the node's own entry counts it too


@pytest.mark.parametrize('cameras, reason', [
    (['cam_a', 'cam_b', 'cam_a/'], 'given twice'), ([], 'empty list'),
    # `-p cameras:=front`: one string, not one camera per letter.
    ('front', "cameras must be a list of strings, got 'front'"),
    (3, 'cameras must be a list of strings, got 3')])
def test_bad_cameras_refused_at_configure(ros, cameras, reason):
    node = ros.add(GroundingNode(context=ros.context, parameter_overrides=TINY + [
        Parameter('queries', value=['red block']), Parameter('cameras', value=cameras)]))
    assert node.lifecycle_state == 'unconfigured'
    assert reason in node.load_error, node.load_error
    assert node.diagnostics().level == ERROR


def test_an_absolute_camera_is_named_once_in_the_diagnostics(ros):
    node = ros.add(GroundingNode(context=ros.context, namespace='abs', parameter_overrides=TINY + [
        Parameter('queries', value=['red block']),
        Parameter('cameras', value=['/abs_front', 'abs_back/'])]))
    assert node.not_ready == ''
    names = [s.name for s in node.extra_diagnostics(node.health_limits(), None)]
    assert names[-2:] == ['/abs/grounding_node/abs_front', '/abs/grounding_node/abs_back'], names


def test_parallel_workers_answer_every_camera_in_order(ros):
    cameras = ['par_a', 'par_b', 'par_c', 'par_d']
    overrides = [p for p in OVERRIDES if p.name not in ('cameras', 'workers', 'batch_window')]
    node = ros.add(GroundingNode(context=ros.context, parameter_overrides=overrides + [
        Parameter('cameras', value=cameras), Parameter('workers', value=2)]))
    assert node.not_ready == ''
    assert node.worker.workers == 2
    pubs = {c: ros.publisher(Image, f'{c}/image') for c in cameras}
    inboxes = {c: ros.subscribe(Detection2DArray, f'{c}/detections') for c in cameras}
    assert wait_for(lambda: all(p.get_subscription_count() for p in pubs.values()))
    sent = {c: [] for c in cameras}
    for seed in range(8):
        for camera in cameras:
            msg = rgb_image(ros.header(frame_id=camera), 96, 64, seed=seed)
            sent[camera].append(msg.header.stamp)
            pubs[camera].publish(msg)
        time.sleep(0.02)
    last = {c: sent[c][-1] for c in cameras}
    assert wait_for(lambda: all(inboxes[c].find(lambda m, c=c: m.header.stamp == last[c])
                                for c in cameras), 30.0), 'a camera lost its newest frame'
    for camera in cameras:
        stamps = [(m.header.stamp.sec, m.header.stamp.nanosec) for m in inboxes[camera].messages]
        assert stamps == sorted(stamps), f'{camera} published out of order'
        assert all(m.header.frame_id == camera for m in inboxes[camera].messages)


def test_workers_default_to_one_per_camera_up_to_the_cores(ros):
    node = ros.add(GroundingNode(context=ros.context, parameter_overrides=[
        p for p in OVERRIDES if p.name not in ('workers', 'batch_window')]))
    assert node.not_ready == ''
    # The tiny model runs on one thread, so each core can take a worker.
    assert node.worker.workers == min(len(CAMERAS), os.cpu_count())
