"""train_tabletop end to end at toy size: renders, trains, saves a loadable checkpoint."""
import json

import pytest
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


def test_a_budget_spent_before_training_saves_nothing(tmp_path, gl_context):
    out = tmp_path / 'model'
    # Rendering takes more than 0.2 minutes less the 15 s kept for saving: no time to train,
    # and no untrained weights may land where a model was asked for.
    args = train_tabletop.parse_args([
        '--out', str(out), '--scenes', '2', '--steps', '40', '--batch', '2',
        '--render-width', '160', '--render-height', '120', '--quiet', '--minutes', '0.2'])
    with pytest.raises(ValueError, match='spent on rendering'):
        train_tabletop.run(args)
    assert not out.exists()
    assert train_tabletop.main(['--out', str(out), '--scenes', '2', '--steps', '40',
                                '--render-width', '160', '--render-height', '120', '--quiet',
                                '--minutes', '0.2']) == 1


def test_the_temperature_stays_clamped_in_the_checkpoint(tmp_path, gl_context):
    import math
    from clip_ros.learning import tabletop_recipe
    args = train_tabletop.parse_args([
        '--out', str(tmp_path / 'm'), '--scenes', '3', '--steps', '2', '--batch', '2',
        '--render-width', '160', '--render-height', '120', '--quiet', '--minutes', '5'])
    model, config, _ = tabletop_recipe.initial_model(args, tabletop_recipe.DEFAULT_CONFIG)
    with torch.no_grad():
        model.clip.logit_scale.fill_(math.log(100.0) + 0.3)  # past open_clip's bound
    pool = tabletop_recipe._pool(args, tabletop_recipe.RANDOMISED, config['clip_ros'])
    history = tabletop_recipe.train(model, pool, config, args, 0.0)
    assert float(model.clip.logit_scale.detach().exp()) <= 100.0 + 1e-3
    assert history[-1]['temperature'] == pytest.approx(0.01, rel=0.01)  # the scale it used


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


def test_vocabulary_targets_and_terms():
    import random

    from clip_ros.learning.tabletop_recipe import (
        COLOUR_WORDS, DEFAULT_CONFIG, SHAPE_WORDS, TabletopStep, vocabulary_targets)
    vocabulary = ['blue ball', 'red block', 'red bowl']
    targets = vocabulary_targets(['red block', '', 'blue ball'], vocabulary, random.Random(0))
    assert len(targets['vocab_texts']) == 4  # every name, then the background text
    assert targets['vocab_labels'].tolist() == [1, 3, 0]
    assert targets['colour_labels'].tolist() == [COLOUR_WORDS.index('red'), -100,
                                                 COLOUR_WORDS.index('blue')]
    assert targets['shape_labels'].tolist() == [SHAPE_WORDS.index('block'), -100,
                                                SHAPE_WORDS.index('ball')]
    torch.manual_seed(0)
    model = tabletop.build(DEFAULT_CONFIG)
    image = torch.nn.functional.normalize(torch.randn(3, DEFAULT_CONFIG['projection_dim']), dim=-1)
    parts = TabletopStep.vocabulary_terms(model, image, targets, torch.tensor(10.0))
    assert set(parts) == {'names', 'words', 'compose'}
    assert all(torch.isfinite(v) and v > 0 for v in parts.values())
    sum(parts.values()).backward()
    assert model.clip.text_model.embeddings.token_embedding.weight.grad.abs().sum() > 0


def test_pool_reused_finetune_and_other_config_keys_kept(tmp_path, gl_context):
    out = tmp_path / 'model'
    out.mkdir()
    (out / tabletop.CONFIG_FILE).write_text(json.dumps(
        {'clip_ros': {'synonyms': {'cube': 'block'}, 'abstention': {'min_margin': 0.1}}}))
    base = ['--out', str(out), '--scenes', '4', '--steps', '2', '--batch', '2', '--quiet',
            '--render-width', '160', '--render-height', '120', '--minutes', '5',
            '--pool', str(tmp_path / 'pool.pt')]
    train_tabletop.run(train_tabletop.parse_args(base))
    assert (tmp_path / 'pool.pt').is_file()
    first = load_file(str(out / tabletop.WEIGHTS_FILE))
    summary = train_tabletop.run(train_tabletop.parse_args(
        base + ['--seed', '1', '--finetune', '--init', str(out)]))
    assert summary['scenes'] == 4 and summary['scene_mode'] == 'randomised'
    assert summary['finetune'] and summary['render_seconds'] < 5  # the pool, not a render
    tuned = load_file(str(out / tabletop.WEIGHTS_FILE))
    assert any(not torch.equal(first[k], tuned[k]) for k in first)
    block = json.loads((out / tabletop.CONFIG_FILE).read_text())['clip_ros']
    assert block['synonyms'] == {'cube': 'block'} and block['abstention'] == {'min_margin': 0.1}
    assert 'blue block' in block['vocabulary']
    other = base[:-1] + [str(tmp_path / 'pool.pt'), '--scenes', '3']
    assert train_tabletop.main(other) == 1  # a pool of other scenes is refused, not reused


def test_training_scenes_hold_no_held_out_combination(gl_context):
    from clip_ros.sim.dataset import HELD_OUT, render_scenes, split_exclude, split_seeds
    held = {f'{c} {s}' for c, s in HELD_OUT}
    seeds = split_seeds('train', 12)
    for _, objects, names in render_scenes(seeds, 96, 72, split_exclude('train'), 'randomised'):
        assert not set(names) & held
