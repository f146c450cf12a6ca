"""Command-line tools: a bad value or an output that cannot be written exits 2 before any work."""
import argparse
import json

import pytest

from clip_ros.tools import (calibrate, cli, demo, evaluate, evaluate_crops, evaluate_policy,
                            flood, ground_bag, record_sim_bag)


def test_types_take_good_values_and_say_why_not_for_bad_ones():
    assert cli.count(1)('3') == 3 and cli.number(0.0, 1.0)('0.5') == 0.5
    assert cli.frame_size('640x480') == (640, 480)
    for parse, text, reason in (
            (cli.count(1), '0', 'must be at least 1, got 0'),
            (cli.count(0), 'two', "expected a whole number, got 'two'"),
            (cli.number(0.0, 1.0), 'nan', 'must be a finite number in [0, 1], got nan'),
            (cli.number(0.0, low_open=True), '0', 'must be a finite number above 0, got 0'),
            (cli.frame_size, '640x', "size must look like 640x480, got '640x'"),
            (cli.frame_size, '4x4', "size must be at least 8x8, got '4x4'")):
        with pytest.raises(argparse.ArgumentTypeError, match=reason.replace('[', r'\[')):
            parse(text)


def exits_2(capsys, main, args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize('args, reason', [
    (['--scenes', '0'], 'argument --scenes: must be at least 1, got 0'),
    (['--threshold', '1.5'], 'must be a finite number in [0, 1], got 1.5'),
    (['--width', '0'], 'argument --width: must be at least 8, got 0'),
    (['--json', '{missing}/x.json'], 'does not exist or is not writable'),
    (['--conditions', 'in_distribution', '--out', '{file}/sub'], 'cannot create that folder'),
])
def test_evaluate_refuses_before_rendering(capsys, tmp_path, args, reason):
    (tmp_path / 'file').write_text('')
    args = [a.format(missing=tmp_path / 'missing', file=tmp_path / 'file') for a in args]
    assert reason in exits_2(capsys, evaluate.parse_args, args)


@pytest.mark.parametrize('args, reason', [
    (['--episodes', '-1'], 'argument --episodes: must be at least 1, got -1'),
    (['--seed', '-1'], 'argument --seed: must be at least 0, got -1'),
    (['--head', '{missing}/head.pt'], 'does not exist (train_policy_head writes one)'),
])
def test_evaluate_policy_refuses_before_rendering(capsys, tmp_path, args, reason):
    args = [a.format(missing=tmp_path / 'missing') for a in args]
    assert reason in exits_2(capsys, evaluate_policy.main, args)


def test_evaluate_crops_takes_a_checkpoint_folder_like_evaluate(capsys, tmp_path, gl_context):
    from clip_ros.perception.tabletop_model import BUNDLED_DIR
    report = tmp_path / 'crops.json'
    assert evaluate_crops.main(['--model', str(BUNDLED_DIR), '--scenes', '1', '--split', 'val',
                                '--json', str(report)]) == 0
    assert json.loads(report.read_text())['conditions']['in_distribution']
    err = exits_2(capsys, evaluate_crops.main, ['--model', str(tmp_path / 'none')])
    assert f'--model {tmp_path / "none"}:' in err and 'does not exist' in err


@pytest.mark.parametrize('args, reason', [
    (['--size', '0x0'], 'size must be at least 8x8'),
    (['--duration', '0'], 'argument --duration: must be a finite number above 0, got 0'),
    (['--rate', '-5'], 'argument --rate: must be a finite number above 0, got -5'),
    (['--cameras', '0'], 'argument --cameras: must be at least 1, got 0'),
])
def test_flood_refuses_values_it_cannot_run(capsys, args, reason):
    assert reason in exits_2(capsys, flood.main, ['flood', *args])


@pytest.mark.parametrize('main, args, reason', [
    (calibrate.parse_args, ['--scenes', '0'], 'argument --scenes: must be at least 1, got 0'),
    (calibrate.parse_args, ['--present-limit', '2'], 'must be a finite number in [0, 1], got 2'),
    (demo.main, ['--seeds', '3000000000'], 'must be at most 2147483647, got 3000000000'),
    (demo.main, ['--rate', '0'], 'argument --rate: must be a finite number above 0, got 0'),
    (record_sim_bag.main, ['{tmp}/x.mcap', '--seed', '-1'], 'must be at least 0, got -1'),
    (record_sim_bag.main, ['{tmp}/x.mcap', '--width', '20000'], 'must be at most 4096'),
    (record_sim_bag.main, ['{tmp}/missing/x.mcap'], 'does not exist or is not writable'),
    (record_sim_bag.main, ['{tmp}/x.mcap', '--frames', '0'],
     'argument --frames: must be at least 1, got 0'),
    (record_sim_bag.main, ['{tmp}/x.mcap', '--scenes', '0'],
     'argument --scenes: must be at least 1, got 0'),
    (record_sim_bag.main, ['{tmp}/x.mcap', '--rate', '0'],
     'argument --rate: must be a finite number above 0, got 0'),
])
def test_other_tools_refuse_before_any_work(capsys, tmp_path, main, args, reason):
    args = [a.format(tmp=tmp_path) for a in args]
    assert reason in exits_2(capsys, main, args)
    assert not (tmp_path / 'x.mcap').exists()


@pytest.mark.parametrize('option, value, reason', [
    ('--max-frames', '-1', 'must be at least 0, got -1'),
    ('--strip-frames', '-1', 'must be at least 0, got -1'),
    ('--threads', '-1', 'must be at least 0, got -1'),
    ('--min-area', '0', 'must be at least 1, got 0'),
    ('--max-detections', '0', 'must be at least 1, got 0'),
    ('--depth-scale', '0', 'must be a finite number above 0, got 0'),
    ('--depth-scale', 'inf', 'must be a finite number above 0, got inf'),
    ('--sync-tolerance', 'nan', 'must be a finite number at least 0, got nan'),
    ('--threshold', '1.5', 'must be a finite number in [0, 1], got 1.5'),
    ('--min-depth', '-1', 'must be a finite number at least 0, got -1'),
])
def test_ground_bag_names_the_one_option_out_of_range(capsys, tmp_path, option, value, reason):
    args = [str(tmp_path / 'in.mcap'), '--phrases', 'cup', option, value]
    err = exits_2(capsys, ground_bag.main, args)
    assert f'argument {option}: {reason}' in err


def test_ground_bag_names_both_depth_limits_when_they_disagree(capsys, tmp_path):
    args = [str(tmp_path / 'in.mcap'), '--phrases', 'cup', '--min-depth', '2', '--max-depth', '1']
    err = exits_2(capsys, ground_bag.main, args)
    assert '--min-depth 2 must be below --max-depth 1' in err


def test_ground_bag_help_shows_its_example_as_a_shell_takes_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        ground_bag.main(['--help'])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert '--command-topic /command \\\n      --depth-topic' in out and '\\\\' not in out


def test_evaluate_policy_train_tasks_show_no_held_out_combination():
    from clip_ros.sim.dataset import HELD_OUT
    from clip_ros.sim.scene import sample_scene
    args = evaluate_policy.parse_args(['--split', 'train', '--episodes', '12',
                                       '--verbs', 'pick', 'place'])
    tasks = evaluate_policy.make_tasks(args)
    held = {tuple(c) for c in HELD_OUT}
    assert len(tasks) == 24 and not any(t.held_out for t in tasks)
    assert not any((o.colour, o.shape) in held
                   for t in tasks for o in sample_scene(t.seed).objects)
