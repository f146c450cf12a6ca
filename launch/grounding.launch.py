"""Launch grounding_node: phrases from `command` (or the `queries` parameter) -> detections."""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import EqualsSubstitution, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.substitutions import FindPackageShare

# model:=tiny swaps in small random-init models: no weights needed (tests, smoke demos).
TINY_MODELS = {'clip_arch': 'tiny', 'clip_pretrained': 'random', 'clipseg_model': 'tiny'}


def generate_launch_description():
    """Declare the arguments and the grounding node."""
    arguments = [
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace for the node and its topics'),
        DeclareLaunchArgument('image_topic', default_value='camera/image_raw',
                              description='input sensor_msgs/Image topic'),
        DeclareLaunchArgument('command_topic', default_value='command',
                              description='input std_msgs/String command topic'),
        DeclareLaunchArgument(
            'params_file',
            default_value=PathJoinSubstitution(
                [FindPackageShare('clip_ros'), 'config', 'grounding_node.yaml']),
            description='node parameters (YAML, /**/grounding_node: ros__parameters:)'),
        DeclareLaunchArgument(
            'model', default_value='default', choices=['default', 'tiny'],
            description="'default': the models named in params_file; 'tiny': small random "
                        'models that need no weights (tests, smoke demos)'),
        DeclareLaunchArgument('device', default_value='auto', choices=['auto', 'cpu', 'cuda'],
                              description='inference device; overrides params_file'),
        DeclareLaunchArgument('use_sim_time', default_value='false', choices=['true', 'false'],
                              description='use the /clock topic'),
        DeclareLaunchArgument(
            'autostart', default_value='true', choices=['true', 'false'],
            description='configure and activate the lifecycle node at start; false leaves it '
                        'unconfigured for a lifecycle manager or `ros2 lifecycle set`'),
    ]
    tiny = EqualsSubstitution(LaunchConfiguration('model'), 'tiny')
    return LaunchDescription(arguments + [
        _node(UnlessCondition(tiny), {}),
        _node(IfCondition(tiny), TINY_MODELS),
    ])


def _node(condition, model_parameters: dict) -> LifecycleNode:
    return LifecycleNode(
        package='clip_ros', executable='grounding_node', name='grounding_node',
        namespace=LaunchConfiguration('namespace'), output='screen', emulate_tty=True,
        parameters=[LaunchConfiguration('params_file'), model_parameters,
                    {'device': LaunchConfiguration('device'),
                     'use_sim_time': LaunchConfiguration('use_sim_time'),
                     'autostart': LaunchConfiguration('autostart')}],
        remappings=[('image', LaunchConfiguration('image_topic')),
                    ('command', LaunchConfiguration('command_topic'))],
        condition=condition)
