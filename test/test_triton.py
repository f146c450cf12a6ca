"""The 'triton' backend against a real server: parity with local inference, refusals, absence."""
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

from clip_ros.perception.backends import make_pipeline
from clip_ros.perception.loading import load_clip, load_clipseg
from clip_ros.perception.triton_client import (
    connect, server_ready, tls_options, triton_pipeline, TritonClipSegRunner, TritonShapeHead,
    TritonUnavailable)
from clip_ros.sim.synthetic import scene_image
from clip_ros.tools import serve
from node_harness import wait_for  # noqa: I100
from parity import assert_same_results, load_models, PHRASES, PROB_TOL  # noqa: I100, I201
from triton_harness import free_ports, serve_python, Server  # noqa: I100, I201

pytest.importorskip('onnxruntime')


@pytest.fixture(scope='module', params=['tiny', 'tabletop'])
def served(request, tmp_path_factory):
    serve_python()
    clip, clipseg = load_models(request.param)  # tabletop: with its shape head
    cache = tmp_path_factory.mktemp('onnx')
    bundle = serve.write_bundle(clip, clipseg, cache_dir=cache)
    server = Server(bundle, cache / 'server.log').start()
    remote, rclip, rseg = connect(server.url)
    options = {'min_area': 4}
    pipes = {'torch': make_pipeline(clip, clipseg, **options),
             'onnxruntime': make_pipeline(clip, clipseg, 'onnxruntime', cache_dir=cache,
                                          **options),
             'triton': triton_pipeline(remote, rclip, rseg, **options)}
    yield request.param, server, remote, pipes
    remote.close()
    server.stop()


def _frames():
    return [scene_image(seed=s, width=128, height=96, count=3)[0] for s in (0, 1, 2)]


def test_handles_come_from_the_server_without_weights(served):
    name, _, remote, pipes = served
    local, triton = pipes['torch'], pipes['triton']
    assert triton.backend == 'triton' and isinstance(triton.runner, TritonClipSegRunner)
    assert triton.clip.model is None and triton.runner.model.model is None
    for field in ('name', 'image_size', 'vocabulary', 'synonyms', 'abstain'):
        assert getattr(triton.clip, field) == getattr(local.clip, field), field
    for field in ('mean', 'std', 'logit_scale'):
        assert getattr(triton.clip, field) == pytest.approx(getattr(local.clip, field)), field
    assert remote.info['clipseg']['name'] == local.runner.model.name
    if local.clip.shape is None:  # tiny: no shape head, none served
        assert triton.clip.shape is None and remote.info['shape'] is None
    else:
        assert isinstance(triton.clip.shape, TritonShapeHead)
        assert triton.clip.shape.shapes == local.clip.shape.shapes
        assert triton.clip.shape.background == local.clip.shape.background


def test_the_served_shape_head_answers_as_the_local_one(served):
    _, _, _, pipes = served
    if pipes['torch'].clip.shape is None:  # tiny: grounding asks no head on either side
        assert pipes['triton'].clip.shape is None
        return
    rgb = _frames()[0]
    boxes = [(10, 10, 40, 50), (60, 20, 120, 90), (0, 0, 128, 96), (100, 80, 101, 81)]
    ref = pipes['torch'].clip.shape.probabilities(rgb, boxes)
    got = pipes['triton'].clip.shape.probabilities(rgb, boxes)
    assert got.shape == ref.shape == (4, len(ref[0]))
    assert np.abs(got - ref).max() <= PROB_TOL
    assert pipes['triton'].clip.shape.probabilities(rgb, []).shape == (0, len(ref[0]))


@pytest.mark.parametrize('threshold', [0.3, 0.5])
def test_results_equal_local_inference(served, threshold):
    _, _, _, pipes = served
    for rgb in _frames():
        got = pipes['triton'](rgb, PHRASES, threshold, with_heatmaps=True)
        for local in ('torch', 'onnxruntime'):
            assert_same_results(pipes[local](rgb, PHRASES, threshold, with_heatmaps=True), got)


def test_batch_and_crop_probabilities_equal_local(served):
    _, _, _, pipes = served
    requests = [(rgb, PHRASES[:k + 1], 0.3) for k, rgb in enumerate(_frames())]
    for ref, got in zip(pipes['onnxruntime'].batch(requests, with_heatmaps=True),
                        pipes['triton'].batch(requests, with_heatmaps=True)):
        assert_same_results(ref, got)
    rgb = _frames()[0]
    boxes = [(0, 0, 64, 48), (30, 20, 100, 90), (0, 0, 128, 96), (5, 60, 40, 96)]
    owners = [0, 1, 2, 0]
    ref = pipes['torch'].clip_probabilities(rgb, PHRASES, owners, boxes)
    got = pipes['triton'].clip_probabilities(rgb, PHRASES, owners, boxes)
    assert np.abs(np.subtract(ref, got)).max() <= PROB_TOL


# A robot that runs only the Triton client must never load torch or the model libraries.
NO_TORCH = """
import sys
import clip_ros.nodes.grounding_node  # noqa: the node's whole import graph
{body}
heavy = sorted(m for m in sys.modules
               if m.split('.')[0] in ('torch', 'torchvision', 'open_clip', 'transformers'))
assert not heavy, f'loaded on the Triton client path: {{heavy[:5]}}'
"""
GROUND = """
import pickle
import numpy as np
from clip_ros.perception.triton_client import connect, triton_pipeline
server, clip, clipseg = connect(sys.argv[1])
pipeline = triton_pipeline(server, clip, clipseg, min_area=4)
frames = np.load(sys.argv[2])
results = [pipeline(rgb, {phrases!r}, 0.3, with_heatmaps=True) for rgb in frames]
with open(sys.argv[3], 'wb') as f:
    pickle.dump(results, f)
"""


def test_node_imports_without_torch():
    run = subprocess.run([sys.executable, '-c', NO_TORCH.format(body='')], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr


def test_client_grounds_without_torch_and_equals_local(served, tmp_path):
    _, server, _, pipes = served
    frames = tmp_path / 'frames.npy'
    np.save(frames, np.stack(_frames()))
    out = tmp_path / 'results.pkl'
    script = NO_TORCH.format(body=GROUND.format(phrases=PHRASES))
    run = subprocess.run([sys.executable, '-c', script,
                          server.url, str(frames), str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    with open(out, 'rb') as f:
        results = pickle.load(f)
    for rgb, got in zip(_frames(), results):
        assert_same_results(pipes['torch'](rgb, PHRASES, 0.3, with_heatmaps=True), got)


def _refusal(remote, model, arrays, output, dtype=None):
    """Return the reason the server gives for a bad request (it must refuse it)."""
    if dtype is None:
        with pytest.raises(TritonUnavailable) as error:
            remote.infer(model, arrays, output)
        return str(error.value)
    import tritonclient.grpc as grpcclient
    (name, array), = arrays.items()
    item = grpcclient.InferInput(name, list(array.shape), dtype)
    item.set_data_from_numpy(array)
    with pytest.raises(grpcclient.InferenceServerException) as error:
        remote.client.infer(model, [item])
    return error.value.message()


def test_bad_requests_are_refused_with_a_reason(served):
    name, server, remote, pipes = served
    size = remote.info['clip']['image_size']
    seg = remote.info['clipseg']['image_size']
    assert 'unexpected shape' in _refusal(
        remote, 'clip_image', {'pixels': np.zeros((2, 3, size // 2, size // 2), np.float32)},
        'features')
    assert "expects 'FP32'" in _refusal(
        remote, 'clip_image', {'pixels': np.zeros((1, 3, size, size), np.float64)}, None, 'FP64')
    assert 'batch-size must be <= 64' in _refusal(
        remote, 'clip_image', {'pixels': np.zeros((65, 3, size, size), np.float32)}, 'features')
    assert 'tokens must be [N, 77], got [2, 5]' in _refusal(
        remote, 'clip_text', {'tokens': np.zeros((2, 5), np.int64)}, 'features')
    reason = _refusal(remote, 'clipseg', {'pixels': np.zeros((1, 3, seg, seg), np.float32),
                                          'conditionals': np.zeros((1, 2, 7), np.float32)},
                      'logits')
    assert 'conditionals must be [B, N >= 1, ' in reason
    ok, message, values = remote.health()
    assert not ok and 'conditionals must be' in message and int(values['failed_requests']) >= 4
    # The server is still up and answers a good request; the client's health clears.
    assert server.proc.poll() is None and server_ready(server.url)
    assert pipes['triton'](_frames()[0], PHRASES, 0.3).phrases == PHRASES
    assert remote.health()[0]


def test_absent_server_is_one_clear_error():
    serve_python()
    url = f'localhost:{free_ports(1)[0]}'
    assert not server_ready(url)
    with pytest.raises(TritonUnavailable) as error:
        connect(url, timeout=2.0)
    message = str(error.value)
    assert message.startswith(f'Triton server at {url} is not available (')
    assert '`serve`' in message and '\n' not in message


def test_serve_without_server_environment_says_how_to_make_it(tmp_path, capsys):
    assert serve.main(['--model', 'tiny', '--python', str(tmp_path / 'nothing')]) == 1
    assert 'scripts/setup.sh' in capsys.readouterr().err


def test_serve_command_line_keeps_localhost_and_passes_tls(tmp_path):
    args = serve.build_parser().parse_args(['--ssl-cert', 'a.pem', '--ssl-key', 'b.pem'])
    command = serve.server_command(args, tmp_path)
    assert command[1] == str(serve.SERVER_SCRIPT) and command[2] == str(tmp_path)
    assert command[command.index('--host') + 1] == '127.0.0.1'
    assert command[command.index('--ssl-cert') + 1] == 'a.pem'
    assert '--ssl-root' not in command


@pytest.mark.parametrize('flags', [['--ssl-root', 'ca.pem'], ['--ssl-key', 'b.pem'],
                                   ['--ssl-cert', 'a.pem'],
                                   ['--ssl-key', 'b.pem', '--ssl-root', 'ca.pem']])
def test_half_a_tls_set_up_is_refused_not_served_plain(flags, tmp_path, capsys):
    assert serve.main(['--model', 'tiny', '--python', sys.executable, *flags]) == 2
    err = capsys.readouterr().err
    assert 'TLS needs --ssl-cert and --ssl-key together' in err and flags[0] in err


def test_mutual_tls_server_answers_a_robot_with_its_certificate_only(tmp_path):
    serve_python()
    if shutil.which('openssl') is None:
        pytest.skip('no openssl to make a certificate')
    key, cert = tmp_path / 'server.key', tmp_path / 'server.crt'
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout',
                    str(key), '-out', str(cert), '-days', '1', '-subj', '/CN=localhost',
                    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'],
                   check=True, capture_output=True)
    bundle = serve.write_bundle(load_clip('tiny', '', device='cpu'),
                                load_clipseg('tiny', device='cpu'), cache_dir=tmp_path)
    # The self-signed certificate is its own CA: the robot presents it too.
    server = Server(bundle, tmp_path / 'server.log', '--ssl-cert', str(cert),
                    '--ssl-key', str(key), '--ssl-root', str(cert)).start(wait=False)
    try:
        robot = tls_options(str(cert), str(key), str(cert))
        assert wait_for(lambda: server_ready(server.url, **robot), timeout=240), \
            (tmp_path / 'server.log').read_text()[-2000:]
        remote, clip, _ = connect(server.url, **robot)
        assert clip.name == 'tiny/random'
        remote.close()
        assert not server_ready(server.url, **tls_options(str(cert)))  # no client certificate
        assert not server_ready(server.url)  # plain gRPC gets no answer
    finally:
        server.stop()


def test_tls_options_name_what_is_missing(tmp_path):
    pem = tmp_path / 'a.pem'
    pem.write_text('x')
    assert tls_options() == {'ssl': False, 'root_certificates': None, 'private_key': None,
                             'certificate_chain': None}
    assert tls_options(str(pem))['ssl'] is True
    with pytest.raises(ValueError, match='triton_key and triton_cert go together'):
        tls_options(str(pem), key=str(pem))
    with pytest.raises(ValueError, match='needs TLS: set triton_ca'):
        tls_options('', str(pem), str(pem))
    with pytest.raises(ValueError, match="triton_ca '/no/such.pem' is not a readable file"):
        tls_options('/no/such.pem')


def test_a_server_back_with_other_weights_is_refused_not_served_stale(tmp_path):
    # Cached text features, vocabulary and calibration belong to the models connected to: a
    # server restarted on a retrained bundle must not be answered with them.
    serve_python()
    import torch
    clip, clipseg = load_clip('tiny', '', device='cpu'), load_clipseg('tiny', device='cpu')
    first = serve.write_bundle(clip, clipseg, tmp_path / 'first', cache_dir=tmp_path)
    with torch.no_grad():
        clipseg.model.decoder.reduces[0].bias.add_(0.5)  # retrained, same name
    second = serve.write_bundle(clip, clipseg, tmp_path / 'second', cache_dir=tmp_path)
    server = Server(first, tmp_path / 'server.log').start()
    try:
        remote, rclip, rseg = connect(server.url)
        pipe = triton_pipeline(remote, rclip, rseg, min_area=4)
        rgb = _frames()[0]
        pipe(rgb, PHRASES, 0.3)
        server.kill()
        with pytest.raises(TritonUnavailable):
            pipe(rgb, PHRASES, 0.3)
        server.bundle = second
        server.start()
        with pytest.raises(TritonUnavailable, match='came back with other models'):
            pipe(rgb, PHRASES, 0.3)
        ok, message, _ = remote.health()
        assert not ok and 'reconfigure this node' in message
        remote.close()
        remote, rclip, rseg = connect(server.url)  # a new connection takes the new models
        triton_pipeline(remote, rclip, rseg, min_area=4)(rgb, PHRASES, 0.3)
        remote.close()
    finally:
        server.stop()


def test_an_installed_package_finds_its_server_script(tmp_path, monkeypatch):
    # A non-symlink install has no checkout around the package: the script is in share/.
    installed = tmp_path / 'install' / 'share' / 'clip_ros' / 'scripts' / 'triton_server.py'
    installed.parent.mkdir(parents=True)
    installed.write_text('# server\n')
    monkeypatch.setattr(serve, 'ROOT', tmp_path / 'site-packages')
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(tmp_path / 'install'))
    assert serve.server_script() == installed
    monkeypatch.setattr(serve, 'ROOT', serve.Path(serve.__file__).resolve().parents[2])
    assert serve.server_script() == serve.ROOT / 'scripts' / 'triton_server.py'
