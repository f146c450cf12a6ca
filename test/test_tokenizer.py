"""Offline tokeniser: ids equal open_clip's bundled BPE."""
import open_clip
import pytest
import torch

from clip_ros.perception.tokenizer import tokenize


def test_known_ids():
    tokens = tokenize(['a red block'])
    assert tokens.shape == (1, 77) and tokens.dtype == torch.long
    assert tokens[0, :5].tolist() == [49406, 320, 736, 4593, 49407]
    assert not tokens[0, 5:].any()


def test_equals_open_clip():
    phrases = ['a red block', 'The BLUE cup, left of the bowl!', '', 'grüne Tasse']
    assert torch.equal(tokenize(phrases), open_clip.tokenize(phrases))


def test_long_phrase_keeps_end_and_single_string():
    tokens = tokenize('word ' * 200)
    assert tokens.shape == (1, 77) and tokens[0, -1].item() == 49407
    assert tokenize(['a cup'], context_length=8).shape == (1, 8)
    assert tokenize([]).shape == (0, 77)


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        tokenize(['ok', 3])
    with pytest.raises(ValueError):
        tokenize(['ok'], context_length=1)
