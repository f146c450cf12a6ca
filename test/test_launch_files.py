"""Launch files declare their arguments up front; config files list every node parameter."""
from importlib import import_module, util
import os
from pathlib import Path
import re
import shlex

import pytest
import rclpy
from rclpy.context import Context
import yaml

ROOT = Path(__file__).resolve().parents[1]
NODES = {
    'grounding': ('grounding_node', 'clip_ros.nodes.grounding_node', 'GroundingNode'),
    'clip_classifier': ('clip_classifier_node', 'clip_ros.nodes.clip_classifier_node',
                        'ClipClassifierNode'),
    'clipseg': ('clipseg_node', 'clip_ros.nodes.clipseg_node', 'ClipSegNode'),
}
# config file -> (node name, module, class) for the nodes without a launch file of their own too
CONFIGS = {
    **{f'{node}.yaml': (node, module, cls) for node, module, cls in NODES.values()},
    'vla_policy_node.yaml': ('vla_policy_node', 'clip_ros.nodes.vla_policy_node', 'VlaPolicyNode'),
    'sim_node.yaml': ('sim_node', 'clip_ros.nodes.sim_node', 'SimNode'),
}
BUILT_IN = {'use_sim_time', 'start_type_description_service'}


@pytest.fixture(scope='module')
def launch_actions():
    """Return launch.actions; skip when ROS 2 launch (a third-party tool) is not installed."""
    # launch.actions, not launch: the repository's own launch/ folder imports as a namespace.
    actions = pytest.importorskip('launch.actions')
    pytest.importorskip('launch_ros')
    return actions


def declared_arguments(actions, stem: str) -> dict:
    spec = util.spec_from_file_location(stem, ROOT / 'launch' / f'{stem}.launch.py')
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    return {e.name: e for e in description.entities
            if isinstance(e, actions.DeclareLaunchArgument)}


def launched_command(stem: str, arguments: dict, monkeypatch) -> list:
    """
    Return the command line that `ros2 launch clip_ros <stem>.launch.py` runs with `arguments`.

    Real launch and launch_ros, with the launch prefix `echo`: the node's command is printed
    instead of run. The file is included as a robot's own launch file would include it.
    """
    from launch import LaunchDescription, LaunchService
    from launch.actions import (
        IncludeLaunchDescription, RegisterEventHandler, SetLaunchConfiguration)
    from launch.event_handlers import OnProcessIO
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    ament_index = pytest.importorskip('ament_index_python.packages')
    try:
        ament_index.get_package_prefix('clip_ros')
    except ament_index.PackageNotFoundError:
        pytest.skip('clip_ros is not built and sourced (colcon build, install/setup.bash)')
    monkeypatch.setenv('ROS_DOMAIN_ID', '59')  # launch_ros's own rclpy node
    lines = []
    description = LaunchDescription([
        SetLaunchConfiguration('launch-prefix', 'echo'),
        RegisterEventHandler(OnProcessIO(on_stdout=lambda e: lines.append(e.text.decode()))),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(str(ROOT / 'launch' / f'{stem}.launch.py')),
            launch_arguments=arguments.items())])
    service = LaunchService()
    service.include_launch_description(description)
    assert service.run() == 0
    return ''.join(lines).split()


def node_parameters(command: list, node: str) -> dict:
    """Return the parameters the node `node` gets from the --params-file files of `command`."""
    values = {}
    for flag, path in zip(command, command[1:]):
        if flag == '--params-file':
            for key, entry in yaml.safe_load(Path(path).read_text()).items():
                # The package's '/**/<node>', launch_ros's '/<namespace>/<node>'.
                if key == '/**' or key.rsplit('/', 1)[-1] == node:
                    values.update(entry['ros__parameters'])
    return values


@pytest.mark.parametrize('stem', list(NODES))
def test_launch_arguments_are_declared_with_descriptions(launch_actions, stem):
    arguments = declared_arguments(launch_actions, stem)
    assert {'namespace', 'image_topic', 'params_file', 'model', 'device',
            'use_sim_time', 'autostart'} <= set(arguments)
    for argument in arguments.values():
        assert argument.description and 'no description' not in argument.description
    assert arguments['device'].choices is None and 'cuda:N' in arguments['device'].description
    assert arguments['model'].choices == ['default', 'tiny']
    assert {'', 'true', 'false'} <= set(arguments['autostart'].choices)
    assert 'log_level' in arguments and 'cache_dir' in arguments


def test_boolean_arguments_take_the_capitalised_spelling(launch_actions, monkeypatch):
    # Robot launch files commonly pass use_sim_time:='True' to the files they include.
    command = launched_command('grounding', {'use_sim_time': 'True', 'autostart': 'False'},
                               monkeypatch)
    parameters = node_parameters(command, 'grounding_node')
    assert parameters['use_sim_time'] is True and parameters['autostart'] is False


def test_log_level_reaches_the_node(launch_actions, monkeypatch):
    command = launched_command('clipseg', {'log_level': 'debug'}, monkeypatch)
    assert '--log-level debug' in ' '.join(command)


@pytest.mark.parametrize('stem', ['sim', 'demo_sim'])
def test_simulator_launch_files_take_a_log_level(launch_actions, monkeypatch, stem):
    command = ' '.join(launched_command(stem, {'log_level': 'debug'}, monkeypatch))
    nodes = 1 if stem == 'sim' else 3
    assert command.count('--log-level debug') == nodes


def test_demo_takes_the_capitalised_autostart(launch_actions, monkeypatch):
    command = launched_command('demo_sim', {'autostart': 'False'}, monkeypatch)
    # Both lifecycle nodes get the same override.
    assert node_parameters(command, 'grounding_node')['autostart'] is False
    assert node_parameters(command, 'vla_policy_node')['autostart'] is False


def test_demo_grounds_with_the_depth_the_policy_reads(launch_actions, monkeypatch):
    command = launched_command('demo_sim', {}, monkeypatch)
    assert node_parameters(command, 'grounding_node')['publish_3d'] is True
    # The grounding node and the policy both read the simulator's depth and camera_info.
    for remap in ('depth:=camera/depth/image_raw', 'camera_info:=camera/camera_info'):
        assert command.count(remap) == 2, remap
    assert command.count('image:=camera/image_raw') == 2


def test_readme_robot_launch_reads_the_prefetched_weights(launch_actions, monkeypatch):
    text = (ROOT / 'README.md').read_text()
    section = text.split('## On a robot', 1)[1].split('\n## ', 1)[0]
    commands = section.replace('\\\n', ' ')
    cache = re.search(r'ros2 run clip_ros prefetch .*--cache-dir (\S+)', commands).group(1)
    launch_line = re.search(r'ros2 launch clip_ros grounding\.launch\.py (.*)', commands)
    # As the shell expands them.
    words = [os.path.expandvars(word) for word in shlex.split(launch_line.group(1))]
    arguments = dict(word.split(':=', 1) for word in words)
    declared = declared_arguments(launch_actions, 'grounding')
    assert set(arguments) <= set(declared), set(arguments) - set(declared)
    command = launched_command('grounding', arguments, monkeypatch)
    parameters = node_parameters(command, 'grounding_node')
    assert parameters['cache_dir'] == os.path.expanduser(cache)
    assert f"image:={arguments['image_topic']}" in command


def test_only_the_arguments_given_override_the_params_file(launch_actions):
    from clip_ros.perception_launch import overrides
    unset = {'use_sim_time': 'false', 'device': '', 'autostart': ''}
    assert overrides(unset) == {'use_sim_time': False}
    assert overrides({'use_sim_time': 'true', 'device': 'cuda:1', 'autostart': 'false'}) == {
        'use_sim_time': True, 'device': 'cuda:1', 'autostart': False}
    given = {**unset, 'cache_dir': '~/weights'}  # the shell leaves '~' after ':='
    assert overrides(given)['cache_dir'] == os.path.expanduser('~/weights')


def test_sim_launch_overrides_seed_and_rate_only_when_given(launch_actions):
    spec = util.spec_from_file_location('sim_launch', ROOT / 'launch' / 'sim.launch.py')
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    arguments = declared_arguments(launch_actions, 'sim')
    assert arguments['seed'].default_value[0].text == '' == arguments['rate'].default_value[0].text
    assert module.given({'seed': '', 'rate': ''}) == {}  # params_file's values stand
    assert module.given({'seed': '7', 'rate': '30'}) == {'seed': 7, 'rate': 30.0}


def test_grounding_launch_remaps_the_3d_inputs(launch_actions):
    arguments = declared_arguments(launch_actions, 'grounding')
    assert {'command_topic', 'depth_topic', 'camera_info_topic'} <= set(arguments)


def test_every_config_file_is_checked():
    assert {path.name for path in (ROOT / 'config').glob('*.yaml')} == set(CONFIGS)


@pytest.mark.parametrize('config', list(CONFIGS))
def test_config_lists_every_parameter(config):
    node_name, module_name, class_name = CONFIGS[config]
    path = ROOT / 'config' / config
    # '/**/' so the values still apply when launch puts the node in a namespace.
    params = yaml.safe_load(path.read_text())[f'/**/{node_name}']['ros__parameters']
    module = import_module(module_name)
    context = Context()
    # Tiny models so a machine with cached weights does not load the large ones here.
    rclpy.init(context=context, domain_id=65, args=[
        '--ros-args', '--params-file', str(path), '-p', 'clip_arch:=tiny',
        '-p', 'clip_pretrained:=random', '-p', 'clipseg_model:=tiny',
        '-p', 'width:=32', '-p', 'height:=24'])
    try:
        node = getattr(module, class_name)(context=context)
        declared = set(node.get_parameters_by_prefix('')) - BUILT_IN
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
    assert set(params) == declared
