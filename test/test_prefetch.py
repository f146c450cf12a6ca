"""Prefetch command: clear failure offline, without a download; verification of local weights."""
import pytest
from safetensors.torch import save_file

from clip_ros.perception.clipseg import load_clipseg
from clip_ros.perception.loading import load_clip
from clip_ros.tools import prefetch


def test_offline_exits_non_zero_without_a_download(tmp_path, monkeypatch, capsys,
                                                   network_attempts):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    code = prefetch.main(['--cache-dir', str(tmp_path)])
    assert network_attempts == [], 'HF_HUB_OFFLINE is set: nothing may be fetched'
    assert code != 0
    err = capsys.readouterr().err
    assert 'CLIP ViT-B-16/openai' in err and 'HF_HUB_OFFLINE is set' in err
    assert 'machine with internet access' in err


def test_offline_clipseg_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    assert prefetch.main(['--only', 'clipseg', '--cache-dir', str(tmp_path)]) == 1
    assert "CLIPSeg 'CIDAS/clipseg-rd64-refined'" in capsys.readouterr().err


def test_verifies_local_weights(tmp_path, capsys):
    clip = load_clip('tiny', 'random', device='cpu')
    weights = tmp_path / 'tiny.safetensors'
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, weights)
    load_clipseg('tiny', device='cpu').model.save_pretrained(tmp_path / 'seg')
    code = prefetch.main(['--clip-arch', 'tiny', '--clip-pretrained', str(weights),
                          '--clipseg', str(tmp_path / 'seg')])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f'verified CLIP tiny:{weights}' in out and 'verified CLIPSeg' in out


def test_bad_local_file_and_tag(tmp_path, capsys):
    corrupt = tmp_path / 'bad.pt'
    corrupt.write_bytes(b'not a checkpoint')
    assert prefetch.main(['--only', 'clip', '--clip-arch', 'tiny',
                          '--clip-pretrained', str(corrupt)]) == 1
    assert 'cannot load weights' in capsys.readouterr().err
    missing = tmp_path / 'missing.pt'
    assert prefetch.main(['--only', 'clip', '--clip-pretrained', str(missing),
                          '--no-verify']) == 1
    assert f'local file {missing} does not exist' in capsys.readouterr().err
    assert prefetch.main(['--only', 'clip', '--clip-pretrained', 'nope']) == 1
    assert 'valid tags' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prefetch.main(['--only', 'both'])
