"""Launch sim_node: MuJoCo camera images, depth, camera_info and ground truth (headless)."""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def given(values: dict) -> dict:
    """Return the parameters the seed and rate arguments set ('' = not given: params_file's)."""
    result = {}
    if values['seed']:
        result['seed'] = int(values['seed'])
    if values['rate']:
        result['rate'] = float(values['rate'])
    return result


def _node(context) -> list:
    values = {name: LaunchConfiguration(name).perform(context) for name in ('seed', 'rate')}
    extra = given(values)
    return [Node(
        package='clip_ros', executable='sim_node', name='sim_node',
        namespace=LaunchConfiguration('namespace'), output='screen', emulate_tty=True,
        parameters=[LaunchConfiguration('params_file')] + ([extra] if extra else []),
        ros_arguments=['--log-level', LaunchConfiguration('log_level')])]


def generate_launch_description():
    """Declare the arguments and the simulator node."""
    arguments = [
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace for the node and its topics'),
        DeclareLaunchArgument('seed', default_value='',
                              description="scene seed at start ('' = params_file's, 0)"),
        DeclareLaunchArgument('rate', default_value='',
                              description="frames per second ('' = params_file's, 15)"),
        DeclareLaunchArgument(
            'params_file',
            default_value=PathJoinSubstitution(
                [FindPackageShare('clip_ros'), 'config', 'sim_node.yaml']),
            description='node parameters (YAML, /**/sim_node: ros__parameters:)'),
        DeclareLaunchArgument('log_level', default_value='info',
                              description="node log level: 'debug', 'info', 'warn', 'error' "
                                          "or 'fatal'"),
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=_node)])
