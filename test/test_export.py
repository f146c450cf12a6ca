"""ONNX export and the onnxruntime and openvino backends against torch (tiny and tabletop)."""
import numpy as np
import pytest
import torch
from transformers import CLIPSegForImageSegmentation

from clip_ros.perception.backends import (
    BACKENDS, Engine, GraphShapeHead, make_clip, make_engine, make_pipeline, MIXED,
    OnnxClipSegRunner, OPENVINO_DEVICES, PRECISIONS)
from clip_ros.perception.clipseg import ClipSegRunner
from clip_ros.perception.export import clamp_softmax_inputs, export_clipseg, graph_dir
from clip_ros.perception.handles import ClipSegModel
from clip_ros.perception.loading import load_clipseg
from clip_ros.perception.registry import clipseg_config, IMAGENET_MEAN, IMAGENET_STD
from clip_ros.perception.tabletop_model import load_tabletop_clipseg
from clip_ros.sim.synthetic import scene_image
from clip_ros.tools import export as export_tool
from parity import (  # noqa: I100, I201
    assert_same_results, load_models, MAP_TOL, PHRASES, PROB_TOL)

pytest.importorskip('onnxruntime')

SEEDS = (0, 1, 2)
MIXED_SCORE_TOL = 0.02  # openvino 'mixed': CLIP at bf16 on this Xeon


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp('onnx')


def _openvino():
    return pytest.importorskip('openvino', reason='openvino is not installed')


@pytest.fixture(scope='module', params=[('tiny', 'onnxruntime'), ('tabletop', 'onnxruntime'),
                                        ('tiny', 'openvino'), ('tabletop', 'openvino')],
                ids='-'.join)
def pipelines(request, cache):
    name, backend = request.param
    extra = {'precision': 'f32'} if backend == 'openvino' and _openvino() else {}
    clip, clipseg = load_models(name)
    options = {'min_area': 4}
    return (make_pipeline(clip, clipseg, **options),
            make_pipeline(clip, clipseg, backend=backend, cache_dir=cache, **extra, **options))


def _frames():
    return [scene_image(seed=s, width=128, height=96, count=3)[0] for s in SEEDS]


def test_backends_are_what_was_asked(pipelines):
    torch_pipe, onnx_pipe = pipelines
    assert torch_pipe.backend == 'torch' and onnx_pipe.backend in ('onnxruntime', 'openvino')
    assert isinstance(onnx_pipe.runner, OnnxClipSegRunner)
    assert onnx_pipe.runner.engine.backend == onnx_pipe.backend
    assert not isinstance(torch_pipe.runner, OnnxClipSegRunner)


@pytest.mark.parametrize('threshold', [0.3, 0.5])
def test_maps_and_detections_match_torch(pipelines, threshold):
    torch_pipe, onnx_pipe = pipelines
    for rgb in _frames():
        assert_same_results(torch_pipe(rgb, PHRASES, threshold),
                            onnx_pipe(rgb, PHRASES, threshold))


def test_batch_matches_torch(pipelines):
    torch_pipe, onnx_pipe = pipelines
    requests = [(rgb, PHRASES[:k + 1], 0.3) for k, rgb in enumerate(_frames())]
    for ref, got in zip(torch_pipe.batch(requests), onnx_pipe.batch(requests)):
        assert_same_results(ref, got)


def test_shape_head_runs_its_graph_and_matches_torch(pipelines):
    torch_pipe, onnx_pipe = pipelines
    head = torch_pipe.clip.shape
    if head is None:
        assert onnx_pipe.clip.shape is None  # the tiny model has no shape head
        return
    graph = onnx_pipe.clip.shape
    assert isinstance(graph, GraphShapeHead) and graph.shapes == head.shapes
    rgb = _frames()[0]
    boxes = [(0, 0, 64, 48), (30, 20, 100, 90), (5, 60, 40, 96)]
    ref, got = head.probabilities(rgb, boxes), graph.probabilities(rgb, boxes)
    assert got.shape == ref.shape == (3, len(head.shapes) + head.background)
    assert np.abs(got - ref).max() <= PROB_TOL
    assert graph.probabilities(rgb, []).shape == (0, ref.shape[1])


def test_clip_probabilities_match_torch(pipelines):
    torch_pipe, onnx_pipe = pipelines
    rgb = _frames()[0]
    boxes = [(0, 0, 64, 48), (30, 20, 100, 90), (0, 0, 128, 96), (5, 60, 40, 96)]
    owners = [0, 1, 2, 0]
    ref = torch_pipe.clip_probabilities(rgb, PHRASES, owners, boxes)
    got = onnx_pipe.clip_probabilities(rgb, PHRASES, owners, boxes)
    assert np.abs(np.subtract(ref, got)).max() <= PROB_TOL


@pytest.mark.parametrize('count', [1, 2, 5])
def test_decoder_takes_any_number_of_phrases(pipelines, count):
    torch_pipe, onnx_pipe = pipelines
    phrases = ['a', 'red block', 'the blue ball', 'a green cube on a table', 'wall'][:count]
    ref = torch_pipe.runner.probabilities(_frames()[1], phrases)
    got = onnx_pipe.runner.probabilities(_frames()[1], phrases)
    assert got.shape == ref.shape == (count, 96, 128)
    assert np.abs(ref - got).max() <= MAP_TOL


def test_text_embeddings_match_torch(pipelines):
    torch_pipe, onnx_pipe = pipelines
    ref = torch_pipe.clip.encode_text(PHRASES)
    got = onnx_pipe.clip.encode_text(PHRASES)
    assert (got - ref).abs().max() <= 1e-4
    ref = torch_pipe.runner.encode_text(PHRASES)
    got = onnx_pipe.runner.encode_text(PHRASES)
    assert (got - ref).abs().max() <= 1e-4 * max(1.0, float(ref.abs().max()))


def test_cache_is_reused_and_rebuilt_when_weights_change(tmp_path):
    clipseg = load_clipseg('tiny', device='cpu')
    first = export_clipseg(clipseg, tmp_path)
    stamps = {name: p.stat().st_mtime_ns for name, p in first.items()}
    assert export_clipseg(clipseg, tmp_path) == first  # reused, not rewritten
    assert {name: p.stat().st_mtime_ns for name, p in first.items()} == stamps
    with torch.no_grad():
        clipseg.model.decoder.reduces[0].bias.add_(0.5)
    second = export_clipseg(clipseg, tmp_path)
    assert second['clipseg_decoder'].parent == graph_dir(clipseg, tmp_path)
    assert second['clipseg_decoder'].parent != first['clipseg_decoder'].parent
    assert all(p.is_file() for p in second.values())
    # The rebuilt graphs follow the changed weights.
    runner = OnnxClipSegRunner(clipseg, cache_dir=tmp_path)
    rgb = _frames()[0]
    ref = ClipSegRunner(clipseg).probabilities(rgb, PHRASES)
    assert np.abs(runner.probabilities(rgb, PHRASES) - ref).max() <= MAP_TOL


def test_a_lora_merged_model_exports_and_matches_torch(tmp_path):
    # Merged adapters leave no weight needing grad, where MultiheadAttention takes its fused
    # path (no ONNX symbolic): deployment of a fine-tuned model must still export.
    from clip_ros.learning.lora import apply_lora, DEFAULT_TARGETS, merge_lora
    from clip_ros.perception.loading import load_clip
    clip = load_clip('tiny', '', device='cpu')
    apply_lora(clip.model, DEFAULT_TARGETS, 4, 8.0)
    merge_lora(clip.model)
    assert not any(p.requires_grad for p in clip.model.parameters())
    graphs = make_clip(clip, make_engine('onnxruntime', threads=1), tmp_path)
    assert torch.backends.mha.get_fastpath_enabled(), 'the switch is put back'
    ref = clip.encode_text(PHRASES)
    assert (graphs.encode_text(PHRASES) - ref).abs().max() <= 1e-4


def test_another_input_size_gets_graphs_of_its_own(tmp_path):
    import dataclasses
    clipseg = load_clipseg('tiny', device='cpu')
    small = dataclasses.replace(clipseg, image_size=96)
    assert graph_dir(small, tmp_path) != graph_dir(clipseg, tmp_path)
    rgb = _frames()[0]
    OnnxClipSegRunner(clipseg, cache_dir=tmp_path).probabilities(rgb, PHRASES)  # cached first
    ref = ClipSegRunner(small).probabilities(rgb, PHRASES)
    got = OnnxClipSegRunner(small, cache_dir=tmp_path).probabilities(rgb, PHRASES)
    assert np.abs(got - ref).max() <= MAP_TOL


def test_softmax_inputs_are_clamped_without_changing_the_result(tmp_path):
    onnx = pytest.importorskip('onnx')
    import onnxruntime as ort
    from onnx import helper, TensorProto
    shape = [2, 3, 9]
    graph = helper.make_graph([helper.make_node('Softmax', ['x'], ['y'], axis=-1)], 'g',
                              [helper.make_tensor_value_info('x', TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info('y', TensorProto.FLOAT, shape)])
    path = tmp_path / 'softmax.onnx'
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)]), path)
    x = (np.random.default_rng(0).standard_normal(shape) * 100).astype(np.float32)
    x[0, 0, :4] = -np.inf  # a masked attention row keeps its zeros' effect

    def run():
        return ort.InferenceSession(str(path), providers=['CPUExecutionProvider']).run(
            None, {'x': x})[0]
    before = run()
    assert clamp_softmax_inputs(path) == 1
    after = run()
    assert np.abs(after - before).max() < 1e-30 and np.allclose(after.sum(-1), 1.0)


def test_exported_attention_softmaxes_see_clamped_scores(cache):
    onnx = pytest.importorskip('onnx')
    paths = export_clipseg(load_clipseg('tiny'), cache)
    for name in ('clipseg_visual', 'clipseg_decoder', 'clipseg_text'):
        graph = onnx.load(str(paths[name])).graph
        producers = {out: node.op_type for node in graph.node for out in node.output}
        softmaxes = [node for node in graph.node if node.op_type == 'Softmax']
        assert softmaxes, name
        assert all(producers[node.input[0]] == 'Max' for node in softmaxes), name


def test_unknown_backend_names_the_choices():
    clip, clipseg = load_models('tiny')
    with pytest.raises(ValueError) as error:
        make_pipeline(clip, clipseg, backend='tensorrt')
    assert all(name in str(error.value) for name in BACKENDS)


def test_unavailable_provider_is_refused(tmp_path):
    clip, clipseg = load_models('tiny')
    with pytest.raises(ValueError, match='CPUExecutionProvider'):
        make_pipeline(clip, clipseg, backend='onnxruntime', providers=['NoSuchProvider'],
                      cache_dir=tmp_path)


def test_export_command_prints_the_graphs(tmp_path, capsys):
    assert export_tool.main(['--model', 'tiny', '--cache-dir', str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = ['clipseg_visual', 'clipseg_decoder', 'clipseg_text', 'clip_image', 'clip_text']
    assert [line.split(':')[0] for line in lines] == names
    for line in lines:
        path = line.split(': ', 1)[1].rsplit(' (', 1)[0]
        assert path.startswith(str(tmp_path)) and path.endswith('.onnx')


def test_refined_decoder_matches_torch(tmp_path):
    """The rd64-refined layout (convolutions before the transposed ones) exports too."""
    config = clipseg_config('tiny')
    config.use_complex_transposed_convolution = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = CLIPSegForImageSegmentation(config).eval()
    handle = ClipSegModel(model=net, name='tiny-refined', image_size=64, mean=IMAGENET_MEAN,
                          std=IMAGENET_STD, device=torch.device('cpu'), dtype=torch.float32)
    rgb = _frames()[2]
    onnx_runner = OnnxClipSegRunner(handle, cache_dir=tmp_path)
    for count in (1, 5):
        phrases = (PHRASES + ['a', 'the wall'])[:count]
        ref = ClipSegRunner(handle).probabilities(rgb, phrases)
        assert np.abs(onnx_runner.probabilities(rgb, phrases) - ref).max() <= MAP_TOL


def test_providers_must_be_a_list(tmp_path):
    clip, clipseg = load_models('tiny')
    with pytest.raises(ValueError, match='list'):
        make_pipeline(clip, clipseg, backend='onnxruntime', providers='CPUExecutionProvider',
                      cache_dir=tmp_path)


def test_openvino_device_and_precision_are_checked(tmp_path):
    _openvino()
    clip, clipseg = load_models('tiny')
    for bad in ({'device': 'TPU'}, {'device': 'NPU.7'}, {'precision': 'int4'}):
        with pytest.raises(ValueError) as error:
            make_pipeline(clip, clipseg, backend='openvino', cache_dir=tmp_path, **bad)
        names = OPENVINO_DEVICES if 'device' in bad else PRECISIONS
        assert all(name in str(error.value) for name in names), error.value
    with pytest.raises(ValueError, match='openvino'):
        make_pipeline(clip, clipseg, backend='onnxruntime', device='CPU', cache_dir=tmp_path)


def test_openvino_default_precision_stays_close(tmp_path):
    """The device's own precision (bf16 on Xeons with AMX) moves a few edge pixels only."""
    _openvino()
    clipseg = load_tabletop_clipseg(device='cpu')
    rgb = _frames()[0]
    ref = ClipSegRunner(clipseg).probabilities(rgb, PHRASES)
    runner = OnnxClipSegRunner(clipseg, Engine('openvino'), tmp_path)
    error = np.abs(runner.probabilities(rgb, PHRASES) - ref)
    # Measured on bf16: max 0.12, mean 7e-5, 0.04 % of pixels above 0.05.
    assert error.mean() <= 1e-3 and np.mean(error > 0.05) <= 0.005


def test_mixed_precision_keeps_torch_boxes(cache):
    """Mixed precision on OpenVINO: CLIPSeg in f32 keeps torch's maps and boxes."""
    _openvino()
    clip, clipseg = load_models('tabletop')
    ref = make_pipeline(clip, clipseg, min_area=4)
    mixed = make_pipeline(clip, clipseg, backend='openvino', precision='mixed', cache_dir=cache,
                          min_area=4)
    assert mixed.runner.engine.precision == 'f32'
    # The shape head's calibrated floor needs f32 too, and the CLIP towers run as MIXED says.
    assert mixed.clip.shape.session.precision == 'f32'
    assert {s.precision for s in mixed.clip.sessions.values()} == {MIXED['clip']}
    found = 0
    for rgb in _frames():
        a, b = ref(rgb, PHRASES, 0.3), mixed(rgb, PHRASES, 0.3)
        assert np.abs(a.heatmaps - b.heatmaps).max() <= MAP_TOL
        assert [(d.phrase, d.box) for d in a.detections] == \
            [(d.phrase, d.box) for d in b.detections]
        # bf16 keeps 8 bits of mantissa: CLIP's probabilities move by a few thousandths.
        assert [d.score for d in b.detections] == pytest.approx(
            [d.score for d in a.detections], abs=MIXED_SCORE_TOL)
        found += len(a.detections)
    assert found, 'the comparison needs detections'
