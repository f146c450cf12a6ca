"""CLIPSeg loading and the shared-vision runner against transformers' own forward."""
import numpy as np
import pytest
import torch

from clip_ros.perception.clipseg import ClipSegRunner, load_clipseg
from clip_ros.perception.registry import ModelLoadError
from clip_ros.perception.tokenizer import tokenize


@pytest.fixture(scope='module')
def tiny():
    return load_clipseg('tiny', device='cpu')


def _pixels(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, model.image_size, model.image_size, generator=generator)


def test_tiny_loads_deterministic():
    first = load_clipseg('tiny', device='cpu')
    second = load_clipseg('tiny', device='cpu')
    for a, b in zip(first.model.parameters(), second.model.parameters()):
        assert torch.equal(a, b)
    assert not first.model.training
    assert first.mean == (0.485, 0.456, 0.406)
    assert first.std == (0.229, 0.224, 0.225)


@pytest.mark.parametrize('phrases', [['a red block'], ['a red block', 'the cup', 'blue bowl']])
def test_runner_matches_transformers_forward(tiny, phrases):
    runner = ClipSegRunner(tiny)
    pixels = _pixels(tiny)
    ours = runner.decode(runner.visual(pixels), runner.encode_text(phrases))
    repeated = pixels.repeat(len(phrases), 1, 1, 1)
    with torch.no_grad():
        by_ids = tiny.model(input_ids=tokenize(phrases), pixel_values=repeated).logits
        by_cond = tiny.model(conditional_embeddings=runner.encode_text(phrases),
                             pixel_values=repeated).logits
    assert ours.shape == (len(phrases), tiny.image_size, tiny.image_size)
    torch.testing.assert_close(ours, by_ids.reshape(ours.shape), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours, by_cond.reshape(ours.shape), atol=1e-5, rtol=0)


@pytest.mark.parametrize('eos_token_id', [49407, 2])
def test_text_embedding_pools_eos_independent_of_padding(tiny, eos_token_id, monkeypatch):
    # Released CLIPSeg configs may carry the legacy eos id 2 (argmax pooling) or 49407.
    monkeypatch.setattr(tiny.model.clip.text_model, 'eos_token_id', eos_token_id)
    full = tokenize(['a red block', 'cup'])
    short = full[:, :8]  # start, ids, end, zeros
    text = tiny.model.clip
    with torch.no_grad():
        long_out = text.text_model(input_ids=full)
        short_out = text.text_model(input_ids=short)
    torch.testing.assert_close(long_out.pooler_output, short_out.pooler_output,
                               atol=1e-5, rtol=0)
    # The pooled row is the end-of-text position (index 4 and 2).
    torch.testing.assert_close(long_out.pooler_output[0], long_out.last_hidden_state[0, 4])
    torch.testing.assert_close(long_out.pooler_output[1], long_out.last_hidden_state[1, 2])


def test_probabilities_resized_to_original(tiny):
    runner = ClipSegRunner(tiny)
    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    probs = runner.probabilities(rgb, ['a red block', 'a cup'])
    assert probs.shape == (2, 37, 53) and probs.dtype == np.float32
    assert 0.0 <= probs.min() and probs.max() <= 1.0
    assert runner.probabilities(rgb, []).shape == (0, 37, 53)
    runner.probabilities(rgb, ['a cup'])
    assert runner.text_cache.misses == 2 and runner.text_cache.hits == 1


def test_missing_hub_weights_fail_without_a_download(tmp_path, network_attempts):
    with pytest.raises(ModelLoadError) as info:
        load_clipseg('CIDAS/clipseg-rd64-refined', device='cpu', cache_dir=str(tmp_path))
    assert network_attempts == [], 'loading must never download'
    message = str(info.value)
    assert 'CIDAS/clipseg-rd64-refined' in message and str(tmp_path) in message
    assert 'prefetch --clipseg CIDAS/clipseg-rd64-refined' in message


def test_missing_directory_and_unknown_name(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_clipseg(str(tmp_path / 'absent'), device='cpu')
    with pytest.raises(ModelLoadError) as info:
        load_clipseg('no-such-model', device='cpu')
    assert 'tiny' in str(info.value)


def test_local_directory_round_trip_and_corrupt(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path / 'seg')
    loaded = load_clipseg(str(tmp_path / 'seg'), device='cpu')
    for a, b in zip(tiny.model.parameters(), loaded.model.parameters()):
        assert torch.equal(a, b)
    for weights in (tmp_path / 'seg').glob('*.safetensors'):
        weights.write_bytes(b'not a safetensors file')
    with pytest.raises(ModelLoadError) as info:
        load_clipseg(str(tmp_path / 'seg'), device='cpu')
    assert info.value.__cause__ is not None
