"""Shape buckets and padding of the GPU path give the unpadded results (CPU; CUDA parts skip)."""
from hypothesis import given, strategies as st
import numpy as np
import pytest
import torch

from clip_ros.perception.backends import make_pipeline
from clip_ros.perception.loading import load_clip, load_clipseg
from clip_ros.perception.static_shapes import (
    bucket, DEFAULT_BUCKETS, GraphCache, pad_rows, StaticClipModel, StaticClipSegRunner)
from clip_ros.perception.tabletop_model import load_tabletop_clip, load_tabletop_clipseg
from clip_ros.sim.synthetic import scene_image

PAD_TOL = 1e-5  # padded vs unpadded: batched matmuls may block differently, nothing more
PHRASES = ['red block', 'blue ball', 'green cube', 'yellow bowl', 'the table']
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device here')


def _load(name, device='cpu', dtype='float32'):
    if name == 'tiny':
        return (load_clip('tiny', '', device=device, dtype=dtype),
                load_clipseg('tiny', device=device, dtype=dtype))
    return (load_tabletop_clip(device=device, dtype=dtype),
            load_tabletop_clipseg(device=device, dtype=dtype))


def _frames(count=3):
    return [scene_image(seed=s, width=128, height=96, count=4)[0] for s in range(count)]


def _assert_same(ref, got, map_tol=PAD_TOL, score_tol=PAD_TOL):
    assert np.abs(ref.heatmaps - got.heatmaps).max() <= map_tol
    assert [d.phrase for d in ref.detections] == [d.phrase for d in got.detections]
    assert [d.box for d in ref.detections] == [d.box for d in got.detections]
    for a, b in zip(ref.detections, got.detections):
        assert b.score == pytest.approx(a.score, abs=score_tol)


@given(st.integers(1, 300))
def test_bucket_is_the_smallest_that_holds_the_count(count):
    size = bucket(count)
    assert size >= count
    if count <= DEFAULT_BUCKETS[-1]:
        assert size in DEFAULT_BUCKETS
        smaller = [b for b in DEFAULT_BUCKETS if b < size]
        assert not smaller or smaller[-1] < count
    else:
        assert size % DEFAULT_BUCKETS[-1] == 0 and size - count < DEFAULT_BUCKETS[-1]


def test_bucket_refuses_nothing_to_run():
    with pytest.raises(ValueError):
        bucket(0)


def test_pad_rows_repeats_a_real_row():
    x = torch.arange(6.0).reshape(3, 2)
    padded = pad_rows(x, 4)
    assert padded.shape == (4, 2) and torch.equal(padded[:3], x) and torch.equal(padded[3], x[0])
    assert pad_rows(x, 3) is x


@pytest.fixture(scope='module', params=['tiny', 'tabletop'])
def models(request):
    return _load(request.param)


@pytest.mark.parametrize('count', [1, 3, 5])
def test_padded_phrases_give_the_unpadded_maps(models, count):
    clip, clipseg = models
    plain = make_pipeline(clip, clipseg, min_area=4)
    static = make_pipeline(clip, clipseg, min_area=4, static_shapes=True)
    assert isinstance(static.runner, StaticClipSegRunner)
    assert isinstance(static.clip, StaticClipModel)
    assert not static.runner.graphs.enabled and not static.clip.graphs.enabled  # CPU: no graphs
    for rgb in _frames():
        _assert_same(plain(rgb, PHRASES[:count], 0.3), static(rgb, PHRASES[:count], 0.3))


def test_padded_batches_give_the_unpadded_results(models):
    clip, clipseg = models
    plain = make_pipeline(clip, clipseg, min_area=4)
    static = make_pipeline(clip, clipseg, min_area=4, static_shapes=True)
    # 3 frames (bucket 4) with 1, 2 and 3 phrases (buckets 1, 2, 4).
    requests = [(rgb, PHRASES[:k + 1], 0.3) for k, rgb in enumerate(_frames())]
    for ref, got in zip(plain.batch(requests), static.batch(requests)):
        _assert_same(ref, got)


@pytest.mark.parametrize('count', [1, 3, 5, 9])
def test_padded_crop_batch_gives_the_unpadded_embeddings(models, count):
    clip, _ = models
    static = StaticClipModel.from_model(clip)
    pixels = torch.randn(count, 3, clip.image_size, clip.image_size,
                         generator=torch.Generator().manual_seed(count))
    with torch.inference_mode():
        ref, got = clip.encode_images(pixels), static.encode_images(pixels)
    assert got.shape == ref.shape == (count, ref.shape[1])
    assert (got - ref).abs().max() <= PAD_TOL
    with pytest.raises(ValueError):
        static.encode_images(pixels[:0])  # the pipeline never asks for no crops


def test_graph_cache_off_runs_eagerly():
    cache = GraphCache(False)
    assert cache('k', lambda x: x * 2, torch.ones(2))[0].tolist() == [2.0, 2.0]
    assert cache.graphs == {} and cache.captured == 0


def test_static_shapes_are_for_torch_only(tmp_path):
    clip, clipseg = _load('tiny')
    with pytest.raises(ValueError, match='torch'):
        make_pipeline(clip, clipseg, backend='onnxruntime', static_shapes=True,
                      cache_dir=tmp_path)


@CUDA
def test_cuda_graphs_replay_the_eager_results():
    clip, clipseg = _load('tabletop', 'cuda', 'float32')
    eager = make_pipeline(clip, clipseg, min_area=4, static_shapes=False)
    graphed = make_pipeline(clip, clipseg, min_area=4)  # on CUDA: static shapes by default
    assert graphed.runner.graphs.enabled and graphed.clip.graphs.enabled
    for count in (1, 3, 5):
        for rgb in _frames():
            _assert_same(eager(rgb, PHRASES[:count], 0.3), graphed(rgb, PHRASES[:count], 0.3),
                         map_tol=1e-4, score_tol=1e-4)
    assert graphed.runner.graphs.captured >= 2 and graphed.clip.graphs.captured >= 1


@CUDA
def test_fp16_stays_close_to_fp32():
    """fp16 weights on CUDA: maps within 0.02 of fp32 and the same detections."""
    fp32 = make_pipeline(*_load('tabletop', 'cuda', 'float32'), min_area=4)
    fp16 = make_pipeline(*_load('tabletop', 'cuda', 'float16'), min_area=4)
    for rgb in _frames():
        ref, got = fp32(rgb, PHRASES[:3], 0.3), fp16(rgb, PHRASES[:3], 0.3)
        assert np.abs(ref.heatmaps - got.heatmaps).max() <= 0.02
        assert [d.phrase for d in ref.detections] == [d.phrase for d in got.detections]
        for a, b in zip(ref.detections, got.detections):
            assert b.score == pytest.approx(a.score, abs=0.02)
