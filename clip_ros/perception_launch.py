"""
The launch description shared by the perception nodes' launch files (ROS installs only).

Each of launch/grounding, clip_classifier and clipseg.launch.py declares the same arguments
(namespace, image_topic, params_file, model, device, cache_dir, use_sim_time, autostart,
log_level) and starts one lifecycle node; only the node, its tiny-model parameters and its
extra input topics differ.
"""
import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.substitutions import FindPackageShare

BOOLEANS = ['true', 'false', 'True', 'False']


def perception_launch(node: str, tiny_models: dict, topics: dict = None) -> LaunchDescription:
    """
    Return the arguments and the lifecycle node `node` of clip_ros.

    Parameters
    ----------
    node : str
        Executable and node name, e.g. 'grounding_node'; its parameters are
        config/<node>.yaml.
    tiny_models : dict
        Parameters that model:=tiny sets: small random-init models that need no weights.
    topics : dict
        Extra remappable inputs besides `image`: {topic: description}; each gets a
        `<topic>_topic` argument.

    Returns
    -------
    LaunchDescription

    """
    topics = topics or {}
    arguments = [
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace for the node and its topics'),
        DeclareLaunchArgument('image_topic', default_value='camera/image_raw',
                              description='input sensor_msgs/Image topic'),
        *[DeclareLaunchArgument(f'{topic}_topic', default_value=topic, description=text)
          for topic, text in topics.items()],
        DeclareLaunchArgument(
            'params_file',
            default_value=PathJoinSubstitution(
                [FindPackageShare('clip_ros'), 'config', f'{node}.yaml']),
            description=f'node parameters (YAML, /**/{node}: ros__parameters:)'),
        DeclareLaunchArgument(
            'model', default_value='default', choices=['default', 'tiny'],
            description="'default': the models named in params_file; 'tiny': small random "
                        'models that need no weights (tests, smoke demos)'),
        DeclareLaunchArgument('device', default_value='',
                              description="inference device: 'auto', 'cpu', 'cuda' or "
                                          "'cuda:N'; overrides params_file when given"),
        DeclareLaunchArgument('cache_dir', default_value='',
                              description='where `prefetch --cache-dir` put the weights; '
                                          'overrides params_file when given'),
        # Both spellings: robot launch files commonly pass 'True'/'False' to included ones.
        DeclareLaunchArgument('use_sim_time', default_value='false', choices=BOOLEANS,
                              description='use the /clock topic'),
        DeclareLaunchArgument(
            'autostart', default_value='', choices=['', *BOOLEANS],
            description='configure and activate the lifecycle node at start; false leaves it '
                        'unconfigured for a lifecycle manager or `ros2 lifecycle set`; '
                        'overrides params_file when given (the node default is true)'),
        DeclareLaunchArgument('log_level', default_value='info',
                              description="node log level: 'debug', 'info', 'warn', 'error' "
                                          "or 'fatal'"),
    ]
    remappings = [(topic, LaunchConfiguration(f'{topic}_topic'))
                  for topic in ('image', *topics)]
    return LaunchDescription(arguments + [
        OpaqueFunction(function=_node, args=[node, remappings, tiny_models])])


def overrides(values: dict) -> dict:
    """Return the parameters that launch argument values override ('' = not given)."""
    result = {'use_sim_time': values['use_sim_time'].lower() == 'true'}
    if values['device']:
        result['device'] = values['device']
    if values.get('cache_dir'):
        # The shell leaves '~' in `cache_dir:=~/...` as it is.
        result['cache_dir'] = os.path.expanduser(values['cache_dir'])
    if values['autostart']:
        result['autostart'] = values['autostart'].lower() == 'true'
    return result


def _node(context, node: str, remappings: list, tiny_models: dict) -> list:
    """Return the node: params_file, then the tiny models, then the arguments given."""
    values = {name: LaunchConfiguration(name).perform(context)
              for name in ('use_sim_time', 'device', 'cache_dir', 'autostart', 'model')}
    tiny = tiny_models if values['model'] == 'tiny' else {}
    return [LifecycleNode(
        package='clip_ros', executable=node, name=node,
        namespace=LaunchConfiguration('namespace'), output='screen', emulate_tty=True,
        parameters=[LaunchConfiguration('params_file'), tiny, overrides(values)],
        remappings=remappings, ros_arguments=['--log-level', LaunchConfiguration('log_level')])]
