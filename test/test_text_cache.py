"""Text embedding cache: hits, misses, model switches, eviction."""
import pytest
import torch

from clip_ros.perception.text_cache import TextCache


class CountingEncoder:

    def __init__(self, offset=0.0):
        self.calls = []
        self.offset = offset

    def __call__(self, phrases):
        self.calls.append(list(phrases))
        return torch.tensor([[len(p) + self.offset, 1.0] for p in phrases])


def test_only_new_phrases_are_encoded():
    encode = CountingEncoder()
    cache = TextCache(encode, 'model-a')
    first = cache.get(['cup', 'red block'])
    assert (cache.hits, cache.misses) == (0, 2)
    second = cache.get(['red block', 'bowl', 'cup', 'bowl'])
    assert encode.calls == [['cup', 'red block'], ['bowl']]
    assert (cache.hits, cache.misses) == (3, 3)
    assert torch.equal(second[0], first[1]) and torch.equal(second[2], first[0])
    assert second.shape == (4, 2) and len(cache) == 3


def test_model_change_recomputes():
    cache = TextCache(CountingEncoder(), 'model-a')
    cache.get(['cup'])
    other = CountingEncoder(offset=10.0)
    cache.set_model(other, 'model-b')
    assert cache.get(['cup'])[0, 0].item() == 13.0
    assert other.calls == [['cup']] and cache.misses == 2


def test_eviction_and_errors():
    encode = CountingEncoder()
    cache = TextCache(encode, 'm', max_entries=2)
    assert cache.get(['a', 'bb', 'ccc']).shape == (3, 2)
    assert len(cache) == 2
    cache.get(['ccc'])
    assert cache.hits == 1
    cache.clear()
    assert len(cache) == 0 and cache.hits == cache.misses == 0
    with pytest.raises(ValueError):
        cache.get([])
    with pytest.raises(ValueError):
        TextCache(encode, 'm', max_entries=0)
    with pytest.raises(ValueError):
        TextCache(lambda p: torch.zeros(1, 2), 'm').get(['a', 'b'])
