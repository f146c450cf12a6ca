"""Bundled tabletop model: loads, grounds simulator scenes, clear errors for bad checkpoints."""
import json
import shutil

import pytest
import torch

from clip_ros.learning.tabletop_recipe import DEFAULT_CONFIG
from clip_ros.perception import tabletop_model as tabletop
from clip_ros.perception.grounding import GroundingPipeline
from clip_ros.perception.loading import load_clip, load_clipseg
from clip_ros.perception.loading import load_or_tabletop
from clip_ros.perception.registry import ModelLoadError, ModelNotFoundError
from clip_ros.sim.dataset import render_scenes

# Test-split scenes (never trained on); a fixed set so the figure is reproducible.
SCENES = range(200_000, 200_008)
MAX_FILE_BYTES = 20 * 1024 * 1024


@pytest.fixture(scope='module')
def clip():
    return load_clip('tabletop', device='cpu')


@pytest.fixture(scope='module')
def clipseg():
    return load_clipseg('tabletop', device='cpu')


@pytest.fixture()
def copy(tmp_path):
    """Return a writable copy of the bundled checkpoint."""
    target = tmp_path / 'tabletop'
    shutil.copytree(tabletop.BUNDLED_DIR, target)
    return target


def test_bundled_files_small_and_float16():
    from safetensors import safe_open
    files = [p for p in tabletop.BUNDLED_DIR.iterdir() if p.is_file()]
    assert {tabletop.CONFIG_FILE, tabletop.WEIGHTS_FILE} <= {p.name for p in files}
    assert all(p.stat().st_size <= MAX_FILE_BYTES for p in files)
    with safe_open(str(tabletop.BUNDLED_DIR / tabletop.WEIGHTS_FILE), 'pt') as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {'F16'}


def test_bundled_loads_through_registry(clip, clipseg):
    assert clip.name == clipseg.name == 'tabletop'
    assert not clipseg.model.training and not clip.model.training
    assert clipseg.image_size == DEFAULT_CONFIG['clip_ros']['image_size']
    assert 1.0 < clip.logit_scale <= 100.0
    count = tabletop.parameter_count(clipseg.model)
    assert 1_000_000 < count < 3_000_000


def test_clip_adapter_embeddings(clip):
    text = clip.encode_text(['red block', 'blue ball'])
    pixels = torch.zeros(2, 3, clip.image_size, clip.image_size)
    images = clip.encode_images(pixels)
    assert text.shape == images.shape == (2, text.shape[1])
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(2))


@pytest.fixture(scope='module')
def scene_summary(clip, clipseg, gl_context):
    from clip_ros.tools.evaluate import evaluate, summarise
    pipeline = GroundingPipeline(clip, clipseg)
    scenes = list(render_scenes(SCENES, 640, 480))
    summary, _ = summarise(evaluate(pipeline, zip(SCENES, scenes), 0.4, 64, progress=False))
    return summary


def test_grounds_simulator_scenes(scene_summary):
    # The bar for CI; the 200-scene evaluation measures 98% seen and held-out.
    assert scene_summary['queries'] >= 40
    assert scene_summary['accuracy'] >= 0.9, scene_summary
    assert scene_summary['mean_mask_iou'] >= 0.6, scene_summary


def test_vocabulary_names_every_simulator_object(clip):
    from clip_ros.sim.scene import COLOURS, SHAPES
    assert set(clip.vocabulary) == {f'{c} {s}' for c in COLOURS for s in SHAPES}


def test_checkpoint_round_trip(tmp_path, clipseg):
    out = tabletop.save(clipseg.model, DEFAULT_CONFIG, tmp_path / 'ckpt')
    again = load_clipseg(str(out), device='cpu')
    for a, b in zip(clipseg.model.state_dict().values(), again.model.state_dict().values()):
        torch.testing.assert_close(a.float(), b.float())
    assert load_clip('tabletop', str(out), device='cpu').name == f'tabletop:{out}'


def _assert_one_clear_error(error, *words):
    message = str(error.value)
    assert '\n' not in message and 'train_tabletop' in message
    for word in words:
        assert word in message


def test_missing_weights(copy):
    (copy / tabletop.WEIGHTS_FILE).unlink()
    with pytest.raises(ModelNotFoundError) as error:
        tabletop.load(copy, device='cpu')
    _assert_one_clear_error(error, str(copy / tabletop.WEIGHTS_FILE), 'do not exist')


def test_missing_directory(tmp_path):
    with pytest.raises(ModelLoadError) as error:
        load_clip('tabletop', str(tmp_path / 'nowhere'), device='cpu')
    _assert_one_clear_error(error, 'does not exist')


@pytest.mark.parametrize('damage', ['truncate', 'garbage', 'empty'])
def test_corrupt_weights(copy, damage):
    path = copy / tabletop.WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes({'truncate': data[:len(data) // 2], 'garbage': b'\x00\x01' * 1000,
                      'empty': b''}[damage])
    with pytest.raises(ModelLoadError) as error:
        tabletop.load(copy, device='cpu')
    _assert_one_clear_error(error, 'corrupt')


@pytest.mark.parametrize('edit, words', [
    (lambda c: c['vision_config'].update(hidden_size=64), 'do not match'),
    (lambda c: c.update(projection_dim='wide'), 'does not describe'),
    (lambda c: c.pop('clip_ros'), 'invalid'),
    (lambda c: c['clip_ros'].update(mean=[0.5]), 'invalid'),
])
def test_wrong_config(copy, edit, words):
    path = copy / tabletop.CONFIG_FILE
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as error:
        load_clipseg(str(copy), device='cpu') if 'clip_ros' in config else tabletop.load(copy)
    _assert_one_clear_error(error, words)


def test_unparsable_config(copy):
    (copy / tabletop.CONFIG_FILE).write_text('{"text_config": ')
    with pytest.raises(ModelLoadError) as error:
        tabletop.load(copy, device='cpu')
    _assert_one_clear_error(error, 'invalid')


def test_falls_back_without_pretrained_weights(tmp_path):
    clip, clipseg, note = load_or_tabletop(
        ('ViT-B-16', 'openai'), 'CIDAS/clipseg-rd64-refined', device='cpu',
        cache_dir=str(tmp_path))
    assert clip.name == clipseg.name == 'tabletop'
    assert 'tabletop' in note and 'not' in note


def test_a_missing_clipseg_directory_fails_even_when_the_clip_weights_are_not_cached(tmp_path):
    missing = tmp_path / 'nonexistent' / 'dir'
    with pytest.raises(ModelNotFoundError, match=str(missing)):
        load_or_tabletop(('ViT-B-16', 'openai'), str(missing), device='cpu',
                         cache_dir=str(tmp_path))


@pytest.mark.skipif(torch.cuda.is_available(), reason='warns only without CUDA')
@pytest.mark.parametrize('clip_spec, clipseg', [
    (('tiny', 'random'), 'tiny'),
    (('ViT-B-16', 'openai'), 'CIDAS/clipseg-rd64-refined'),  # not cached: the tabletop fallback
])
def test_cuda_without_a_gpu_warns_once_per_load(tmp_path, caplog, clip_spec, clipseg):
    caplog.set_level('WARNING', logger='clip_ros')
    clip, segmenter, _ = load_or_tabletop(clip_spec, clipseg, device='cuda',
                                          cache_dir=str(tmp_path))
    assert clip.device.type == segmenter.device.type == 'cpu'
    warnings = [r for r in caplog.records if 'CUDA is not available' in r.getMessage()]
    assert len(warnings) == 1
