"""Three grounding nodes (robots) on one Triton server over DDS: parity, absence, a crash (DDS)."""
import os

os.environ['ROS_DOMAIN_ID'] = '95'  # before rclpy: own domain, no cross-talk with other tests
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
import pytest  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from clip_ros.nodes.grounding_node import GroundingNode  # noqa: E402
from clip_ros.perception.loading import load_clip, load_clipseg  # noqa: E402
from clip_ros.tools import serve  # noqa: E402
from node_harness import Harness, request, rgb_image, wait_for  # noqa: E402, I100
from triton_harness import serve_python, Server  # noqa: E402, I100, I201

pytest.importorskip('onnxruntime')

DOMAIN = 95
ROBOTS = ('robot1', 'robot2', 'robot3')
SCORE_TOL = 1e-4  # test_export's PROB_TOL
TINY = [Parameter('clip_arch', value='tiny'), Parameter('clip_pretrained', value='random'),
        Parameter('clipseg_model', value='tiny'), Parameter('device', value='cpu'),
        Parameter('queries', value=['red block', 'blue ball']),
        Parameter('thresholds', value=[0.3]), Parameter('min_area', value=4),
        Parameter('diagnostics_period', value=0.5)]


@pytest.fixture(scope='module')
def ros():
    harness = Harness(DOMAIN)
    yield harness
    harness.shutdown()


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    serve_python()
    cache = tmp_path_factory.mktemp('onnx')
    bundle = serve.write_bundle(load_clip('tiny', '', device='cpu'),
                                load_clipseg('tiny', device='cpu'), cache_dir=cache)
    server = Server(bundle, cache / 'server.log')  # started by the first test
    yield server
    server.stop()


def _robot(ros, namespace, server):
    return ros.add(GroundingNode(context=ros.context, namespace=namespace, parameter_overrides=[
        *TINY, Parameter('backend', value='triton'), Parameter('triton_url', value=server.url),
        Parameter('triton_timeout', value=5.0)]))


def _detections(ros, namespace, header):
    pub = ros.publisher(Image, f'/{namespace}/image')
    inbox = ros.subscribe(Detection2DArray, f'/{namespace}/detections')
    assert wait_for(lambda: pub.get_subscription_count() > 0)
    answer = request(pub, rgb_image(header, width=160, height=120, seed=3), inbox, timeout=60)
    assert answer is not None, f'{namespace}: no detections'
    return [(d.results[0].hypothesis.class_id, d.results[0].hypothesis.score,
             d.bbox.center.position.x, d.bbox.size_x) for d in answer.detections]


def _triton_status(inbox, namespace, level):
    name = f'/{namespace}/grounding_node/triton'
    return inbox.find(lambda msg: any(s.name == name and s.level == level for s in msg.status))


def test_robot_configures_once_an_absent_server_appears(ros, server):
    node = _robot(ros, ROBOTS[0], server)
    assert node.lifecycle_state == 'unconfigured'
    assert node.load_error.startswith(f'TritonUnavailable: Triton server at {server.url} is '
                                      'not available (')
    server.start(wait=False)
    assert wait_for(lambda: node.lifecycle_state == 'active', timeout=240), node.load_error
    assert node.load_error == ''


def test_three_robots_answer_like_local_inference(ros, server):
    server.wait_ready()
    robots = [_robot(ros, ns, server) if ns != ROBOTS[0] else None for ns in ROBOTS]
    assert all(r.lifecycle_state == 'active' for r in robots if r is not None)
    local = ros.add(GroundingNode(context=ros.context, namespace='local', parameter_overrides=[
        *TINY, Parameter('backend', value='onnxruntime')]))
    assert local.lifecycle_state == 'active', local.not_ready
    header = ros.header()
    expected = _detections(ros, 'local', header)
    assert expected, 'the local node found nothing to compare'
    for namespace in ROBOTS:
        got = _detections(ros, namespace, header)
        assert [g[0] for g in got] == [e[0] for e in expected], namespace
        for g, e in zip(got, expected):
            assert g[1] == pytest.approx(e[1], abs=SCORE_TOL)
            assert g[2:] == pytest.approx(e[2:], abs=0.5)


def test_server_killed_mid_run_then_back(ros, server):
    node = next(n for n in ros.added_since(1) if n.get_namespace() == f'/{ROBOTS[0]}')
    diagnostics = ros.subscribe(DiagnosticArray, '/diagnostics')
    pub = ros.publisher(Image, f'/{ROBOTS[0]}/image')
    detections = ros.subscribe(Detection2DArray, f'/{ROBOTS[0]}/detections')
    assert wait_for(lambda: _triton_status(diagnostics, ROBOTS[0], DiagnosticStatus.OK))
    server.kill()
    failed = node._triton.failed
    for seed in range(5):  # frames while the server is gone: each one fails, none queues
        pub.publish(rgb_image(ros.header(), width=160, height=120, seed=seed))
        assert wait_for(lambda: node._triton.failed > failed, timeout=30)
        failed = node._triton.failed
        assert node.worker.pending <= 1
    status = wait_for(lambda: _triton_status(diagnostics, ROBOTS[0], DiagnosticStatus.ERROR))
    assert status is not None
    triton = next(s for s in status.status if s.name.endswith('/triton'))
    assert 'Triton server unreachable or refusing: clipseg: ' in triton.message
    values = {kv.key: kv.value for kv in triton.values}
    assert int(values['failed_requests']) >= 5
    assert node.lifecycle_state == 'active'  # the node stayed up
    server.start()
    count = len(detections.messages)
    answer = request(pub, rgb_image(ros.header(), width=160, height=120, seed=3), detections,
                     timeout=60)
    assert answer is not None and len(detections.messages) > count
    assert wait_for(lambda: _triton_status(diagnostics, ROBOTS[0], DiagnosticStatus.OK)
                    and node._triton.health()[0])
