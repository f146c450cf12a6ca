"""CLIP loading through open_clip, device/dtype resolution and the registries."""
import logging
import os

import open_clip
import pytest
from safetensors.torch import save_file
import torch

from clip_ros.perception import registry
from clip_ros.perception.loading import load_clip, load_clipseg
from clip_ros.perception.registry import ModelLoadError


@pytest.fixture(scope='module')
def tiny():
    return load_clip('tiny', 'random', device='cpu')


@pytest.fixture
def package_log():
    # Our own handler on the package logger: launch's logging set-up cannot hide it from us.
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger('clip_ros')
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_resolve_device_falls_back_to_cpu(package_log):
    assert registry.resolve_device('auto').type == 'cpu'
    assert registry.resolve_device('CPU').type == 'cpu'
    assert registry.resolve_device('cuda:1') == torch.device('cpu')
    assert any('CUDA is not available' in r.getMessage() for r in package_log)
    with pytest.raises(ValueError, match='auto, cpu, cuda'):
        registry.resolve_device('gpu')


def test_resolve_dtype():
    cpu, cuda = torch.device('cpu'), torch.device('cuda')
    assert registry.resolve_dtype('auto', cpu) == torch.float32
    assert registry.resolve_dtype('auto', cuda) == torch.float16
    assert registry.resolve_dtype('float16', cpu) == torch.float32
    assert registry.resolve_dtype('bfloat16', cpu) == torch.bfloat16
    with pytest.raises(ValueError, match='float32'):
        registry.resolve_dtype('int8', cpu)


def test_tiny_loads_deterministic(tiny):
    again = load_clip('tiny', '', device='cpu')
    for a, b in zip(tiny.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)
    assert (tiny.name, tiny.image_size, tiny.dtype) == ('tiny/random', 64, torch.float32)
    assert tiny.mean == open_clip.OPENAI_DATASET_MEAN and not tiny.model.training


def test_encode_text_and_images(tiny):
    text = tiny.encode_text(['a red block', 'a cup'])
    assert text.shape == (2, 32) and text.dtype == torch.float32
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    tiny.encode_text(['a cup'])
    assert tiny.text_cache.hits >= 1
    images = tiny.encode_images(torch.randn(3, 3, 64, 64))
    assert images.shape == (3, 32) and images.dtype == torch.float32
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(3))
    with pytest.raises(ValueError):
        tiny.encode_images(torch.randn(3, 64, 64))


def test_registry_normalises_and_lists():
    weights = registry.clip_weights('ViT-B/16', 'OpenAI')
    assert (weights.arch, weights.tag, weights.quick_gelu) == ('ViT-B-16', 'openai', True)
    assert weights.mean == open_clip.OPENAI_DATASET_MEAN
    assert 'tiny' in registry.list_clip_architectures()
    assert 'laion2b_s34b_b88k' in registry.list_clip_tags('ViT-B-16')
    with pytest.raises(ValueError, match='openai'):
        load_clip('ViT-B-16', 'no-such-tag', device='cpu')
    with pytest.raises(ValueError, match='ViT-B-16'):
        load_clip('ViT-Z-1', 'openai', device='cpu')


def test_missing_tag_fails_without_a_download_naming_the_prefetch_command(
        tmp_path, network_attempts):
    with pytest.raises(ModelLoadError) as info:
        load_clip('ViT-B-16', 'openai', device='cpu', cache_dir=str(tmp_path))
    assert network_attempts == [], 'loading must never download'
    message = str(info.value)
    assert 'ViT-B-16/openai' in message and str(tmp_path) in message
    assert '--clip-arch ViT-B-16 --clip-pretrained openai' in message


@pytest.mark.parametrize('suffix', ['.pt', '.safetensors'])
def test_local_file_round_trip(tiny, tmp_path, suffix):
    path = tmp_path / f'tiny{suffix}'
    state = {k: v.contiguous() for k, v in tiny.model.state_dict().items()}
    save_file(state, path) if suffix == '.safetensors' else torch.save(state, path)
    loaded = load_clip('tiny', str(path), device='cpu')
    assert loaded.name == f'tiny:{path}'
    for a, b in zip(tiny.model.parameters(), loaded.model.parameters()):
        assert torch.equal(a, b)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_clip('tiny', str(tmp_path / 'absent.pt'), device='cpu')
    assert isinstance(info.value, ModelLoadError) and 'openai' in str(info.value)
    corrupt = tmp_path / 'corrupt.safetensors'
    corrupt.write_bytes(b'\x00garbage')
    with pytest.raises(ModelLoadError) as info:
        load_clip('tiny', str(corrupt), device='cpu')
    assert info.value.__cause__ is not None


def test_cache_hit_needs_no_network(tiny, tmp_path):
    snapshot = tmp_path / 'models--test--tiny-clip' / 'snapshots' / 'abc123'
    snapshot.mkdir(parents=True)
    (tmp_path / 'models--test--tiny-clip' / 'refs').mkdir()
    (tmp_path / 'models--test--tiny-clip' / 'refs' / 'main').write_text('abc123')
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()},
              snapshot / 'open_clip_model.safetensors')
    weights = registry.ClipWeights('tiny', 'test', 'https://example.com/tiny.pt',
                                   'test/tiny-clip/', (0.5,) * 3, (0.5,) * 3, False)
    found = registry.find_cached_clip(weights, str(tmp_path))
    assert found == str(snapshot / 'open_clip_model.safetensors')
    url_only = registry.ClipWeights('tiny', 'test', 'https://example.com/tiny.pt', '',
                                    (0.5,) * 3, (0.5,) * 3, False)
    assert registry.find_cached_clip(url_only, str(tmp_path)) is None
    (tmp_path / 'tiny.pt').write_bytes(b'x')
    assert registry.find_cached_clip(url_only, str(tmp_path)) == os.path.join(tmp_path, 'tiny.pt')


def test_default_size_random_models():
    clip = load_clip('ViT-B-16', 'random', device='cpu')
    assert clip.image_size == 224 and clip.encode_text(['a cup']).shape == (1, 512)
    clipseg = load_clipseg('random', device='cpu')
    assert clipseg.image_size == 352 and clipseg.model.config.reduce_dim == 64
