"""Launch the closed-loop demo: MuJoCo tabletop sim, grounding node and vla_policy_node."""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.substitutions import FindPackageShare

from clip_ros.perception.names import BACKENDS
from clip_ros.perception_launch import BOOLEANS
from clip_ros.tools.demo_graph import (
    GROUNDING_INPUTS, model_parameters, OWN_PROCESS, POLICY_INPUTS, remappings, WITH_DEPTH)


def _config(name: str):
    return PathJoinSubstitution([FindPackageShare('clip_ros'), 'config', name])


def generate_launch_description():
    """Declare the arguments and the three nodes, wired sim -> grounding -> policy -> sim."""
    model, device = LaunchConfiguration('model'), LaunchConfiguration('device')
    arguments = [
        DeclareLaunchArgument('namespace', default_value='', description='namespace of all'),
        DeclareLaunchArgument('model', default_value='tabletop', choices=['tabletop', 'tiny'],
                              description='grounding models (CLIP and CLIPSeg)'),
        DeclareLaunchArgument('device', default_value='auto',
                              description="'auto', 'cpu', 'cuda' or 'cuda:N'"),
        DeclareLaunchArgument('backend', default_value='torch', choices=list(BACKENDS),
                              description='grounding backend; onnxruntime is the faster one '
                                          'for the tabletop model on a CPU'),
        DeclareLaunchArgument('policy', default_value='geometric',
                              choices=['geometric', 'learned'], description='policy'),
        DeclareLaunchArgument('head_path', default_value='',
                              description='policy head checkpoint for policy:=learned'),
        DeclareLaunchArgument(
            'autostart', default_value='true', choices=BOOLEANS,
            description='configure and activate the grounding and policy lifecycle nodes at '
                        'start; false leaves them unconfigured for a lifecycle manager'),
        DeclareLaunchArgument('log_level', default_value='info',
                              description="log level of the three nodes: 'debug', 'info', "
                                          "'warn', 'error' or 'fatal'"),
    ]
    log_level = ['--log-level', LaunchConfiguration('log_level')]
    autostart = LaunchConfiguration('autostart')
    namespace = LaunchConfiguration('namespace')
    nodes = [
        Node(package='clip_ros', executable='sim_node', name='sim_node',
             namespace=namespace, output='screen', parameters=[_config('sim_node.yaml')],
             ros_arguments=log_level),
        LifecycleNode(package='clip_ros', executable='grounding_node', name='grounding_node',
                      namespace=namespace, output='screen',
                      remappings=remappings(GROUNDING_INPUTS),
                      parameters=[_config('grounding_node.yaml'),
                                  {**model_parameters(model, device), **OWN_PROCESS,
                                   **WITH_DEPTH,
                                   'backend': LaunchConfiguration('backend'),
                                   'autostart': autostart}],
                      ros_arguments=log_level),
        LifecycleNode(package='clip_ros', executable='vla_policy_node', name='vla_policy_node',
                      namespace=namespace, output='screen', remappings=remappings(POLICY_INPUTS),
                      parameters=[_config('vla_policy_node.yaml'),
                                  {'policy': LaunchConfiguration('policy'),
                                   'head_path': LaunchConfiguration('head_path'),
                                   'device': device, 'autostart': autostart}],
                      ros_arguments=log_level),
    ]
    return LaunchDescription(arguments + nodes)
