"""train_tabletop end to end at toy size: renders, trains, saves a loadable checkpoint."""
import json

from safetensors.torch import load_file
import torch

from clip_ros.perception import tabletop_model as tabletop
from clip_ros.tools import train_tabletop


def test_short_run_saves_a_loadable_model(tmp_path, gl_context):
    args = train_tabletop.parse_args([
        '--out', str(tmp_path / 'model'), '--scenes', '6', '--steps', '12', '--batch', '3',
        '--render-width', '160', '--render-height', '120', '--quiet', '--minutes', '5'])
    summary = train_tabletop.run(args)
    assert summary['steps'] == 12
    saved = json.loads((tmp_path / 'model' / 'training.json').read_text())
    assert saved['scenes'] == 6
    assert (tmp_path / 'model' / 'training_curves.png').stat().st_size > 1000
    clip = tabletop.load_tabletop_clip(tmp_path / 'model', device='cpu')
    assert clip.vocabulary and 'blue block' in clip.vocabulary
    assert clip.encode_text(['blue block']).shape[0] == 1


def test_lora_fine_tune_changes_only_attention(tmp_path, gl_context):
    args = train_tabletop.parse_args([
        '--out', str(tmp_path / 'lora'), '--scenes', '4', '--steps', '3', '--batch', '2',
        '--render-width', '160', '--render-height', '120', '--quiet', '--minutes', '5',
        '--lora', '2', '--loss', 'triplet'])
    summary = train_tabletop.run(args)
    assert summary['steps'] == 3 and summary['loss'] == 'triplet'
    assert summary['lora_layers'] > 0
    tuned = load_file(str(tmp_path / 'lora' / tabletop.WEIGHTS_FILE))
    bundled = load_file(str(tabletop.BUNDLED_DIR / tabletop.WEIGHTS_FILE))
    assert tuned.keys() == bundled.keys()  # merged: a plain checkpoint, no adapter tensors
    changed = {k for k in tuned if not torch.equal(tuned[k], bundled[k])}
    assert changed and all('self_attn' in k for k in changed), sorted(changed)[:5]
    clip = tabletop.load_tabletop_clip(tmp_path / 'lora', device='cpu')
    assert 'blue block' in clip.vocabulary
