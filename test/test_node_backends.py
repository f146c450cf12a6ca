"""clip_classifier_node and clipseg_node on onnxruntime and openvino answer like torch (DDS)."""
import os

os.environ['ROS_DOMAIN_ID'] = '92'  # before rclpy: own domain, no cross-talk with other tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
import torch  # noqa: E402
from vision_msgs.msg import Classification, Detection2DArray  # noqa: E402

from clip_ros.nodes.clip_classifier_node import ClipClassifierNode  # noqa: E402
from clip_ros.nodes.clipseg_node import ClipSegNode  # noqa: E402
from clip_ros.nodes.conversions import image_to_numpy  # noqa: E402
from clip_ros.nodes.grounding_node import GroundingNode  # noqa: E402
from node_harness import Harness, request, rgb_image, wait_for  # noqa: E402, I100

pytest.importorskip('onnxruntime')
pytest.importorskip('openvino')

DOMAIN = 92
CLASSES = ['cup', 'bowl', 'red block']
# openvino with its precision forced to f32: the parity tolerances of test_export hold.
BACKENDS = {'torch': [], 'onnxruntime': [],
            'openvino': [Parameter('openvino_precision', value='f32')]}
PROB_TOL = 1e-4
CLASSIFIER = [Parameter('clip_arch', value='tiny'), Parameter('clip_pretrained', value='random'),
              Parameter('classes', value=CLASSES)]
GROUNDING = [Parameter('clip_arch', value='tiny'), Parameter('clip_pretrained', value='random'),
             Parameter('clipseg_model', value='tiny'), Parameter('queries', value=['cup'])]
CLIPSEG = [Parameter('clipseg_model', value='tiny'), Parameter('classes', value=CLASSES),
           Parameter('background_threshold', value=0.0)]


@pytest.fixture(scope='module')
def ros():
    harness = Harness(DOMAIN)
    yield harness
    harness.shutdown()


def _start(ros, node_class, namespace, parameters):
    return ros.add(node_class(context=ros.context, namespace=namespace,
                              parameter_overrides=parameters + [
                                  Parameter('device', value='cpu')]))


def _answer(ros, namespace, msg_type, topic, header):
    pub = ros.publisher(Image, f'/{namespace}/image')
    inbox = ros.subscribe(msg_type, f'/{namespace}/{topic}')
    assert wait_for(lambda: pub.get_subscription_count() > 0)
    msg = rgb_image(header, width=160, height=120, seed=3)
    answer = request(pub, msg, inbox, timeout=60)
    assert answer is not None, f'{namespace}: no {topic}'
    return answer


def test_classifier_backends_answer_like_torch(ros, tmp_path):
    header = ros.header()
    scores = {}
    for backend, extra in BACKENDS.items():
        namespace = f'cls_{backend}'
        node = _start(ros, ClipClassifierNode, namespace, CLASSIFIER + extra + [
            Parameter('backend', value=backend), Parameter('cache_dir', value=str(tmp_path))])
        assert node.lifecycle_state == 'active', node.not_ready
        result = _answer(ros, namespace, Classification, 'classification', header)
        scores[backend] = {r.class_id: r.score for r in result.results}
    assert (tmp_path / 'onnx').is_dir()  # the graphs went under cache_dir
    for backend in ('onnxruntime', 'openvino'):
        assert scores[backend].keys() == scores['torch'].keys() == set(CLASSES)
        for name, score in scores['torch'].items():
            assert scores[backend][name] == pytest.approx(score, abs=PROB_TOL), backend


def test_clipseg_backends_answer_like_torch(ros, tmp_path):
    header = ros.header()
    masks, regions = {}, {}
    for backend, extra in BACKENDS.items():
        namespace = f'seg_{backend}'
        node = _start(ros, ClipSegNode, namespace, CLIPSEG + extra + [
            Parameter('backend', value=backend), Parameter('cache_dir', value=str(tmp_path))])
        assert node.lifecycle_state == 'active', node.not_ready
        detections = ros.subscribe(Detection2DArray, f'/{namespace}/detections')
        masks[backend] = image_to_numpy(_answer(ros, namespace, Image, 'mask', header))
        found = wait_for(lambda: detections.find(lambda m: m.header == header))
        assert found is not None
        regions[backend] = sorted((d.results[0].hypothesis.class_id, d.bbox.size_x)
                                  for d in found.detections)
    for backend in ('onnxruntime', 'openvino'):
        # Labels are an argmax over maps equal within 1e-4: a near-tie may flip a pixel or two.
        assert np.mean(masks[backend] != masks['torch']) <= 1e-3, backend
        assert [c for c, _ in regions[backend]] == [c for c, _ in regions['torch']], backend


@pytest.mark.parametrize('node_class, parameters', [(ClipClassifierNode, CLASSIFIER),
                                                    (ClipSegNode, CLIPSEG)],
                         ids=['classifier', 'clipseg'])
@pytest.mark.parametrize('bad, choices', [
    ({'backend': 'tvm'}, 'valid backends: torch, onnxruntime, openvino'),
    ({'backend': 'openvino', 'openvino_device': 'NPU'}, 'valid devices: CPU, GPU, NPU'),
    ({'backend': 'openvino', 'openvino_precision': 'int3'}, 'valid: auto, f32, f16, bf16'),
    ({'backend': 'onnxruntime', 'onnx_providers': ['TpuExecutionProvider']},
     'available: '),
    ({'threads': -1}, 'threads must be 0 (automatic) or a positive count'),
], ids=['backend', 'device', 'precision', 'provider', 'threads'])
def test_bad_backend_leaves_the_node_up_unconfigured(ros, node_class, parameters, bad, choices):
    namespace = f'bad_{node_class.__name__}_{len(ros.added_since(0))}'
    node = _start(ros, node_class, namespace,
                  parameters + [Parameter(k, value=v) for k, v in bad.items()])
    assert node.lifecycle_state == 'unconfigured'
    assert choices in node.not_ready, node.not_ready


@pytest.mark.parametrize('node_class, parameters', [(ClipClassifierNode, CLASSIFIER),
                                                    (ClipSegNode, CLIPSEG),
                                                    (GroundingNode, GROUNDING)],
                         ids=['classifier', 'clipseg', 'grounding'])
def test_threads_reach_torch(ros, node_class, parameters):
    """0 gives the tiny model one thread; a count is applied as given (process-wide)."""
    before = torch.get_num_threads()
    try:
        for threads, want in ((3, 3), (0, 1)):
            namespace = f'threads_{node_class.__name__}_{threads}'
            node = _start(ros, node_class, namespace,
                          parameters + [Parameter('threads', value=threads)])
            assert node.lifecycle_state == 'active', node.not_ready
            assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)
