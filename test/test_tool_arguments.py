"""Benchmark, training, demo and serving tools: a bad value or output exits 2 before any work."""
from pathlib import Path

import pytest

from clip_ros.perception import tabletop_model as tabletop
from clip_ros.sim.scene import sample_scene
from clip_ros.sim.splits import HELD_OUT, split_seeds, SPLIT_SIZE
from clip_ros.tools import (benchmark, demo, export, make_dataset, policy_demo, prefetch,
                            record_demos, serve, train_policy_head, train_shape)
from test_cli import exits_2  # noqa: I100, I201


class Stop(Exception):
    """Raised where a tool would start its work (load a model, render, run an episode)."""


def stop(*args, **kwargs):
    raise Stop


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    """Make every tool's first piece of real work raise Stop: arguments are all that run."""
    for module, name in ((benchmark, 'run'), (record_demos, 'load_perception'),
                         (train_policy_head, 'load_demonstrations'),
                         (train_shape, 'object_crops'), (policy_demo, 'run'),
                         (export, 'load_models'), (prefetch, 'fetch_clip'),
                         (prefetch, 'fetch_clipseg'), (demo, 'run'),
                         (make_dataset, 'generate')):
        monkeypatch.setattr(module, name, stop)


@pytest.mark.parametrize('main, args, reason', [
    (benchmark.main, ['--size', '0x0'], "argument --size: size must be at least 8x8, got '0x0'"),
    (benchmark.main, ['--phrases', '1', '11'], 'argument --phrases: must be at most 10, got 11'),
    (benchmark.main, ['--threshold', 'nan'],
     'argument --threshold: must be a finite number in [0, 1], got nan'),
    (benchmark.main, ['--repeats', '0'], 'argument --repeats: must be at least 1, got 0'),
    (benchmark.main, ['--json', '{missing}/bench.json'], '--json {missing}/bench.json: folder'),
    (record_demos.main, ['--out', '/proc/x/d.npz'], '--out /proc/x: cannot create that folder'),
    (record_demos.main, ['--out', '{file}/d.npz'], '--out {file}: cannot create that folder'),
    (record_demos.main, ['--episodes', '0'], 'argument --episodes: must be at least 1, got 0'),
    (record_demos.main, ['--width', '4'], 'argument --width: must be at least 8, got 4'),
    (record_demos.main, ['--seed', '100000', '--episodes', '1'],
     "past the train split's 0..99999"),
    (record_demos.main, ['--seed', '99000', '--episodes', '200'],
     '--seed 99000 with --episodes 200 may use scene seeds up to 100592, past the train split'),
    (train_policy_head.main, ['--lr', '0'],
     'argument --lr: must be a finite number above 0, got 0'),
    (train_policy_head.main, ['--lr', 'inf'], 'argument --lr: must be a finite number above 0'),
    (train_policy_head.main, ['--epochs', '0'], 'argument --epochs: must be at least 1, got 0'),
    (train_policy_head.main, ['--gripper-lookahead', '-1'],
     'argument --gripper-lookahead: must be at least 0, got -1'),
    (train_policy_head.main, ['--demos', '{missing}/demos.npz'],
     '--demos {missing}/demos.npz does not exist (record_demos writes one)'),
    (train_policy_head.main, ['--demos', '{file}', '--out', '{file}/head.pt'],
     '--out {file}: cannot create that folder'),
    (demo.main, ['--output', '{file}/strip.png'], '--output {file}: cannot create that folder'),
    (demo.main, ['--output', '{folder}'], '--output {folder} is a folder; give a file name'),
    (make_dataset.main, ['--out', '{file}/data'], '--out {file}/data: cannot create that folder'),
    (make_dataset.main, ['--out', '{file}'], '--out {file}: cannot create that folder'),
    (train_shape.parse_args, ['--steps', '0'], 'argument --steps: must be at least 1, got 0'),
    (train_shape.parse_args, ['--threads', '-1'], 'argument --threads: must be at least 0'),
    (train_shape.parse_args, ['--conditions', 'sideways'], '--conditions: unknown condition'),
    (train_shape.parse_args, ['--model', '{folder}'], 'is not a tabletop model directory'),
    (policy_demo.main, ['--timeout', '0'],
     'argument --timeout: must be a finite number above 0, got 0'),
    (policy_demo.main, ['--seed', '-1'], 'argument --seed: must be at least 0, got -1'),
    (policy_demo.main, ['--height', '5000'], 'argument --height: must be at most 4096'),
    (policy_demo.main, ['--policy', 'learned', '--head', '{missing}/head.pt'],
     '--head {missing}/head.pt does not exist'),
    (export.main, ['--cache-dir', '{file}/onnx'], '--cache-dir {file}/onnx: cannot create'),
    (export.main, ['--cache-dir', '{file}'], '--cache-dir {file}: cannot create that folder'),
    (serve.main, ['--grpc-port', '0'], 'argument --grpc-port: must be at least 1, got 0'),
    (serve.main, ['--metrics-port', '70000'], 'argument --metrics-port: must be at most 65535'),
    (serve.main, ['--max-batch', '0'], 'argument --max-batch: must be at least 1, got 0'),
    (serve.main, ['--delay-us', '-1'], 'argument --delay-us: must be at least 0, got -1'),
    (serve.main, ['--export-only', '--bundle', '{file}/bundle'],
     '--bundle {file}/bundle: cannot create that folder'),
    (prefetch.main, ['--cache-dir', '{file}/hub'], '--cache-dir {file}/hub: cannot create'),
    (prefetch.main, ['--only', 'clip', '--cache-dir', '{file}'], '--cache-dir {file}: cannot'),
])
def test_bad_arguments_exit_2_naming_the_option(capsys, tmp_path, main, args, reason):
    (tmp_path / 'file').write_text('')
    paths = {'missing': tmp_path / 'missing', 'file': tmp_path / 'file', 'folder': tmp_path}
    args = [a.format(**paths) for a in args]
    assert reason.format(**paths) in exits_2(capsys, main, args)
    assert not (tmp_path / 'missing').exists()


def test_train_shape_main_returns_2_with_the_reason(capsys):
    assert train_shape.main(['--scenes', '0']) == 2
    assert 'argument --scenes: must be at least 1, got 0' in capsys.readouterr().err


def test_benchmark_parses_sizes_and_counts(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(benchmark, 'run', lambda *args: calls.append(args) or stop())
    with pytest.raises(Stop):
        benchmark.main(['--size', '96x64', '--phrases', '1', '10', '--threshold', '0',
                        '--repeats', '1', '--instances-per-phrase', '1', '--threads', '0',
                        '--json', str(tmp_path / 'bench.json'),
                        '--cache-dir', str(tmp_path / 'onnx')])
    counts, repeats, width, height, threshold, per_phrase = calls[0][2:8]
    assert (counts, repeats, width, height) == ([1, 10], 1, 96, 64)
    assert (threshold, per_phrase) == (0.0, 1) and (tmp_path / 'onnx').is_dir()


def test_record_demos_makes_the_output_folder(tmp_path):
    out = tmp_path / 'new' / 'demos.npz'
    args = record_demos.parse_args(['--episodes', '1', '--seed', '0', '--width', '8',
                                    '--height', '8', '--out', str(out)])
    assert (args.episodes, args.seed, args.width, args.height) == (1, 0, 8, 8)
    assert out.parent.is_dir() and not out.exists()


def test_train_policy_head_makes_the_output_folder_as_record_demos_does(tmp_path):
    demos = tmp_path / 'demos.npz'
    demos.write_bytes(b'')
    out = tmp_path / 'new' / 'head.pt'
    train_policy_head.parse_args(['--demos', str(demos), '--out', str(out)])
    assert out.parent.is_dir() and not out.exists()


def test_demo_and_make_dataset_make_their_output_folders_before_any_work(tmp_path):
    with pytest.raises(Stop):
        demo.main(['--output', str(tmp_path / 'strips' / 'demo.png')])
    assert (tmp_path / 'strips').is_dir() and not (tmp_path / 'strips' / 'demo.png').exists()
    with pytest.raises(Stop):
        make_dataset.main(['--out', str(tmp_path / 'data'), '--count', '1'])
    assert (tmp_path / 'data').is_dir()


def test_record_demos_draws_train_scenes_without_held_out_combinations(tmp_path):
    args = record_demos.parse_args(['--out', str(tmp_path / 'demos.npz')])
    tasks = record_demos.demo_tasks(args.seed, args.episodes)
    train = split_seeds('train', SPLIT_SIZE)
    assert len(tasks) == args.episodes and all(task.seed in train for task in tasks)
    for task in tasks:
        assert not any((o.colour, o.shape) in HELD_OUT for o in sample_scene(task.seed).objects)


def test_train_policy_head_takes_its_defaults_and_small_values(tmp_path):
    demos = tmp_path / 'demos.npz'
    demos.write_bytes(b'')
    args = train_policy_head.parse_args(['--demos', str(demos), '--out', str(tmp_path / 'h.pt'),
                                         '--lr', '1e-4', '--gripper-lookahead', '0'])
    assert (args.lr, args.gripper_lookahead, args.epochs, args.batch_size) == (1e-4, 0, 100, 256)
    assert (args.hidden, args.seed) == (256, 0)


def test_train_shape_parses_a_dry_run():
    args = train_shape.parse_args(['--dry-run', '--steps', '1', '--scenes', '1',
                                   '--val-scenes', '1', '--conditions', 'in_distribution'])
    assert (args.steps, args.scenes, args.val_scenes, args.threads) == (1, 1, 1, 0)
    assert args.conditions == ['in_distribution'] and args.directory == Path(tabletop.BUNDLED_DIR)


def test_policy_demo_parses_then_runs(monkeypatch):
    calls = []
    monkeypatch.setattr(policy_demo, 'run', lambda args: calls.append(args) or stop())
    with pytest.raises(Stop):
        policy_demo.main(['--seed', '2147483647', '--width', '8', '--height', '4096',
                          '--timeout', '0.5', '--command', 'pick up the red ball'])
    args = calls[0]
    assert (args.seed, args.width, args.height, args.timeout) == (2 ** 31 - 1, 8, 4096, 0.5)


def test_export_and_serve_make_their_output_folders(tmp_path):
    with pytest.raises(Stop):
        export.main(['--model', 'tiny', '--cache-dir', str(tmp_path / 'onnx')])
    assert (tmp_path / 'onnx').is_dir()
    with pytest.raises(Stop):
        serve.main(['--model', 'tiny', '--export-only', '--cache-dir', str(tmp_path / 'graphs'),
                    '--bundle', str(tmp_path / 'bundle')])
    assert (tmp_path / 'graphs').is_dir() and (tmp_path / 'bundle').is_dir()
    args = serve.build_parser().parse_args(['--grpc-port', '65535', '--delay-us', '0',
                                            '--threads', '0', '--max-crops', '1'])
    command = serve.server_command(args, tmp_path)
    assert command[command.index('--grpc-port') + 1] == '65535'
    assert command[command.index('--http-port') + 1] == '8000'


def test_prefetch_with_a_new_cache_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prefetch, 'fetch_clip', lambda *args: f'fetched {args}')
    cache = tmp_path / 'cache'
    assert prefetch.main(['--only', 'clip', '--no-verify', '--cache-dir', str(cache)]) == 0
    assert cache.is_dir() and str(cache) in capsys.readouterr().out
