"""How many CPU threads inference uses: one for small models, the library's choice for large."""
import pytest
import torch

from clip_ros.perception.backends import cpu_threads, SMALL_MODEL, use_cpu_threads
from clip_ros.perception.handles import ModelHandle
from clip_ros.perception.loading import load_clip, load_clipseg


def _handle(module, device='cpu'):
    return ModelHandle(module, 'test', 8, (0.5,) * 3, (0.5,) * 3, torch.device(device),
                       torch.float32)


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_bundled_and_tiny_models_run_on_one_thread():
    assert cpu_threads(0, load_clip('tabletop', device='cpu'),
                       load_clipseg('tabletop', device='cpu')) == 1
    assert cpu_threads(0, load_clip('tiny', '', device='cpu'),
                       load_clipseg('tiny', device='cpu')) == 1


def test_a_large_model_keeps_the_library_default():
    large = _handle(torch.nn.Linear(SMALL_MODEL // 1000 + 1, 1000))  # just over the bound
    small = _handle(torch.nn.Linear(10, 10))
    assert cpu_threads(0, large) == 0
    assert cpu_threads(0, small, large) == 0  # one large model decides
    assert cpu_threads(0, small) == 1


def test_a_model_without_local_weights_keeps_the_library_default():
    assert cpu_threads(0) == 0
    assert cpu_threads(0, _handle(None)) == 0  # e.g. a Triton client's handle


def test_an_explicit_count_is_kept_and_applied(restore_threads):
    assert cpu_threads(3, _handle(torch.nn.Linear(10, 10))) == 3
    assert use_cpu_threads(2, _handle(torch.nn.Linear(10, 10))) == 2
    assert torch.get_num_threads() == 2
    assert use_cpu_threads(1, _handle(torch.nn.Linear(10, 10))) == 1
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize('bad', [-1, 1.5, '2', True])
def test_a_bad_count_is_refused(bad):
    with pytest.raises(ValueError, match='threads must be 0'):
        cpu_threads(bad)
