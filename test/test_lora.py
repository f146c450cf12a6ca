"""LoRA tests: zero update at start, only adapters train, merging keeps outputs, counts."""
import pytest
import torch
from torch import nn

from clip_ros.learning.lora import (
    apply_lora, count_parameters, DEFAULT_TARGETS, lora_parameters, LoRALinear,
    LoRAParametrization, merge_lora)
from clip_ros.perception.loading import load_clip
from clip_ros.perception.tokenizer import tokenize


@pytest.fixture(scope='module')
def tiny_clip():
    return load_clip('tiny', 'random', device='cpu')


def encode(model, pixels, tokens):
    with torch.no_grad():
        return model.encode_image(pixels), model.encode_text(tokens)


def randomise_adapters(model):
    # B starts at zero; give it values so merging has something to fold.
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_(0, 0.05)


def test_linear_zero_update_and_merge():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    x = torch.randn(3, 6)
    expected = base(x).detach()
    lora = LoRALinear(base, r=2, alpha=4.0)
    assert lora.scaling == 2.0
    assert torch.equal(lora.lora_B, torch.zeros(5, 2)) and lora.lora_A.abs().sum() > 0
    torch.testing.assert_close(lora(x), expected)
    assert [n for n, p in lora.named_parameters() if p.requires_grad] == ['lora_A', 'lora_B']
    randomise_adapters(lora)
    adapted = lora(x).detach()
    assert not torch.allclose(adapted, expected)
    # W x + (alpha / r) B A x
    manual = expected + 2.0 * x @ (lora.lora_B @ lora.lora_A).T
    torch.testing.assert_close(adapted, manual)
    torch.testing.assert_close(lora.merged()(x), adapted, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match='rank'):
        LoRALinear(nn.Linear(2, 2), r=0)


def test_open_clip_adapters(tiny_clip):
    model = tiny_clip.model
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, tiny_clip.image_size, tiny_clip.image_size)
    tokens = tokenize(['a red block', 'a blue ball'])
    base_image, base_text = encode(model, pixels, tokens)
    _, total_before = count_parameters(model)

    torch.manual_seed(1)
    names = apply_lora(model, DEFAULT_TARGETS, r=2, alpha=4.0)
    # 2 towers x 2 blocks x (in_proj, out_proj, c_fc, c_proj)
    assert len(names) == 16
    assert 'visual.transformer.resblocks.0.attn.in_proj' in names
    assert isinstance(model.transformer.resblocks[0].mlp.c_fc, LoRALinear)
    attn = model.visual.transformer.resblocks[1].attn
    kinds = [type(p) for p in attn.parametrizations.in_proj_weight]
    assert kinds == [LoRAParametrization]
    assert type(attn.out_proj.parametrizations.weight[0]) is LoRAParametrization

    # B = 0: the adapted model computes exactly what the base did.
    image, text = encode(model, pixels, tokens)
    torch.testing.assert_close(image, base_image)
    torch.testing.assert_close(text, base_text)

    # Only A and B train; r * (in + out) parameters per layer (width 64, MLP 256).
    trainable, total = count_parameters(model)
    assert {n.rpartition('.')[2] for n, p in model.named_parameters() if p.requires_grad} == \
        {'lora_A', 'lora_B'}
    per_block = 2 * (64 + 3 * 64) + 2 * (64 + 64) + 2 * (64 + 256) + 2 * (256 + 64)
    assert trainable == 4 * per_block == sum(p.numel() for p in lora_parameters(model))
    assert total == total_before + trainable

    randomise_adapters(model)
    adapted_image, adapted_text = encode(model, pixels, tokens)
    assert not torch.allclose(adapted_image, base_image)
    merge_lora(model)
    assert not lora_parameters(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert count_parameters(model)[1] == total_before
    merged_image, merged_text = encode(model, pixels, tokens)
    torch.testing.assert_close(merged_image, adapted_image, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(merged_text, adapted_text, atol=1e-5, rtol=1e-4)


def test_no_match_lists_layers():
    with pytest.raises(ValueError, match=r'adaptable layers include: 0, 1'):
        apply_lora(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), targets=['*q_proj'])
