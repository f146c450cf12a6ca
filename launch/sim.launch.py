"""Launch sim_node: MuJoCo camera images, depth, camera_info and ground truth (headless)."""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    """Declare the arguments and the simulator node."""
    arguments = [
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace for the node and its topics'),
        DeclareLaunchArgument('seed', default_value='0', description='scene seed at start'),
        DeclareLaunchArgument('rate', default_value='15.0', description='frames per second'),
        DeclareLaunchArgument(
            'params_file',
            default_value=PathJoinSubstitution(
                [FindPackageShare('clip_ros'), 'config', 'sim_node.yaml']),
            description='node parameters (YAML, /**/sim_node: ros__parameters:)'),
    ]
    node = Node(
        package='clip_ros', executable='sim_node', name='sim_node',
        namespace=LaunchConfiguration('namespace'), output='screen', emulate_tty=True,
        parameters=[LaunchConfiguration('params_file'),
                    {'seed': ParameterValue(LaunchConfiguration('seed'), value_type=int),
                     'rate': ParameterValue(LaunchConfiguration('rate'), value_type=float)}])
    return LaunchDescription(arguments + [node])
