"""Every node's console script answers -h/--help with its usage, without starting rclpy."""
import subprocess
import sys

import pytest
import rclpy

from clip_ros.nodes import (clip_classifier_node, clipseg_node, common, grounding_node, sim_node,
                            vla_policy_node)

NODES = {'grounding_node': grounding_node, 'clip_classifier_node': clip_classifier_node,
         'clipseg_node': clipseg_node, 'sim_node': sim_node, 'vla_policy_node': vla_policy_node}


@pytest.mark.parametrize('name', sorted(NODES))
@pytest.mark.parametrize('flag', ['--help', '-h'])
def test_help_prints_the_usage_and_starts_nothing(capsys, name, flag):
    assert NODES[name].main([name, flag]) is None  # a console script's exit status 0
    out = capsys.readouterr().out
    assert out.startswith(f'usage: {name} ')
    assert f'{name} --ros-args -p name:=value' in out
    assert f'--params-file config/{name}.yaml' in out
    assert 'README.md, section "' in out
    assert not rclpy.ok()  # rclpy was never initialised, so no node can have been made


def test_help_names_what_the_node_does_and_where_it_is_described(capsys):
    grounding_node.main(['grounding_node', '--help'])
    out = capsys.readouterr().out
    assert 'Ground language phrases in camera images' in out
    assert 'section "grounding_node"' in out
    sim_node.main(['sim_node', '--help'])
    assert 'section "Simulation (MuJoCo, headless)"' in capsys.readouterr().out


def test_only_a_help_flag_before_the_ros_arguments_counts():
    assert common.help_requested(['grounding_node', '--help'])
    assert common.help_requested(['-h', '--ros-args', '-p', 'device:=cpu'])
    assert not common.help_requested(['grounding_node', '--ros-args', '-p', 'x:=1', '--help'])
    assert not common.help_requested(['grounding_node', '--ros-args', '-r', '__node:=-h'])
    assert not common.help_requested(['grounding_node'])


def test_help_exits_0_as_a_process():
    done = subprocess.run([sys.executable, '-m', 'clip_ros.nodes.clipseg_node', '--help'],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('usage: clipseg_node ')
    assert 'Semantic segmentation of camera frames' in done.stdout
