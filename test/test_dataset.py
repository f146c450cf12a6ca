"""Dataset generation: files, shapes, determinism per seed, splits and held-out combinations."""
import json

import numpy as np
import pytest

from clip_ros.sim.dataset import (
    generate, HELD_OUT, scene_caption, SceneDataset, split_exclude, split_seeds)
from clip_ros.sim.scene import sample_scene
from clip_ros.tools.make_dataset import main


@pytest.fixture(scope='module')
def train_root(tmp_path_factory, gl_context):
    root = tmp_path_factory.mktemp('data')
    assert main(['--out', str(root), '--split', 'train', '--count', '3', '--size', '96x64',
                 '--depth']) == 0
    return root


def test_files_and_shapes(train_root):
    index = json.loads((train_root / 'train' / 'dataset.json').read_text())
    assert index['split'] == 'train' and (index['width'], index['height']) == (96, 64)
    assert [scene['seed'] for scene in index['scenes']] == [0, 1, 2]
    data = SceneDataset(train_root, 'train')
    assert len(data) == 3
    item = data[1]
    assert item['rgb'].shape == (64, 96, 3) and item['rgb'].dtype == np.uint8
    assert item['masks'].shape == (64, 96) and item['masks'].dtype == np.uint8
    assert item['depth'].shape == (64, 96) and item['depth'].dtype == np.float32
    meta = item['meta']
    assert meta['seed'] == 1 and len(meta['objects']) == item['masks'].max() >= 3
    boxes = 0
    for obj in meta['objects']:
        assert obj['captions'][0] == f'the {obj["name"]}'
        assert obj['visible_pixels'] == int((item['masks'] == obj['instance_id']).sum())
        if obj['box'] is not None:
            x0, y0, x1, y1 = obj['box']
            assert (item['masks'][y0:y1, x0:x1] == obj['instance_id']).any()
            boxes += 1
        else:
            assert obj['visible_pixels'] == 0
    assert boxes >= 3, 'too few visible objects to check their boxes'


def test_regenerating_a_seed_is_identical(train_root, tmp_path):
    generate(tmp_path, 'train', 1, 96, 64, start=2, depth=True)
    again = SceneDataset(tmp_path, 'train')[0]
    first = SceneDataset(train_root, 'train')[2]
    assert np.array_equal(again['rgb'], first['rgb'])
    assert np.array_equal(again['masks'], first['masks'])
    assert again['meta'] == first['meta']


def test_chunks_rendered_into_one_folder_add_up(tmp_path, gl_context):
    generate(tmp_path, 'val', 2, 64, 48)
    generate(tmp_path, 'val', 2, 64, 48, start=1)  # overlaps one scene, adds one
    dataset = SceneDataset(tmp_path, 'val')
    assert [scene['seed'] for scene in dataset.index['scenes']] == list(split_seeds('val', 3))
    assert len(dataset) == 3 and 'depth' not in dataset[0]
    with pytest.raises(ValueError, match=r'width 64 not 96.*choose another --out'):
        generate(tmp_path, 'val', 1, 96, 48, start=3)
    assert len(SceneDataset(tmp_path, 'val')) == 3  # the refused chunk changed nothing


def test_splits_disjoint_and_held_out_only_outside_train():
    train, val, test = (set(split_seeds(s, 1000)) for s in ('train', 'val', 'test'))
    assert not (train & val or train & test or val & test)
    seen = {'train': set(), 'val': set()}
    for split in seen:
        for seed in split_seeds(split, 60):
            spec = sample_scene(seed, exclude=split_exclude(split))
            seen[split] |= {(o.colour, o.shape) for o in spec.objects}
    assert not seen['train'] & set(HELD_OUT)
    assert set(HELD_OUT) <= seen['val']
    with pytest.raises(ValueError, match='train'):
        split_seeds('validation', 1)


def test_missing_index_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match='make_dataset'):
        SceneDataset(tmp_path, 'val')


def test_scene_caption():
    assert scene_caption(['red ball']) == 'a red ball on a table'
    assert scene_caption(['red ball', 'blue block', 'green bowl']) == (
        'a red ball, a blue block and a green bowl on a table')


def test_condition_dataset_records_condition_and_focus(tmp_path, gl_context):
    assert main(['--out', str(tmp_path), '--split', 'val', '--count', '2', '--size', '96x64',
                 '--condition', 'occlusion']) == 0
    index = json.loads((tmp_path / 'val' / 'dataset.json').read_text())
    assert index['condition'] == 'occlusion'
    for scene in index['scenes']:
        assert scene['focus'] in scene['objects']
