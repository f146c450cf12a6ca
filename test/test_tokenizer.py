"""Offline tokeniser: ids equal open_clip's bundled BPE."""
import random

import numpy as np
import open_clip
import pytest
import torch

from clip_ros.perception.tokenizer import token_ids, tokenize


def test_known_ids():
    tokens = tokenize(['a red block'])
    assert tokens.shape == (1, 77) and tokens.dtype == torch.long
    assert tokens[0, :5].tolist() == [49406, 320, 736, 4593, 49407]
    assert not tokens[0, 5:].any()


def test_equals_open_clip():
    phrases = ['a red block', 'The BLUE cup, left of the bowl!', '', 'grüne Tasse']
    assert torch.equal(tokenize(phrases), open_clip.tokenize(phrases))


def test_equals_open_clip_on_varied_text():
    # Punctuation, contractions, digits, accents, other scripts, HTML entities, mojibake that
    # ftfy repairs, whitespace runs and truncation: every rule of CLIP's cleaning and BPE.
    phrases = ["don't grab the robot's cup; it'll spill", 'H2O 1234 3.14', 'caf\u00e9 &amp; tea',
               '\u7ea2\u8272\u65b9\u5757', 'mojibake \u00e2\u20ac\u0153quote',
               '  tab\tand\nnewline ',
               'pick up the <start_of_text> block', 'x' * 300, 'turquoise-coloured cylinder']
    rng = random.Random(0)
    alphabet = "abcdefghijklmnop !?.,'0123456789\u00c4\u00d6\u00fc\u00df\u00e9\t\n"
    phrases += [''.join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
                for _ in range(200)]
    assert np.array_equal(token_ids(phrases), open_clip.tokenize(phrases).numpy())
    short = open_clip.tokenize(phrases[:20], context_length=8).numpy()
    assert np.array_equal(token_ids(phrases[:20], context_length=8), short)


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
