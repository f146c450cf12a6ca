"""
Launch the Gazebo Harmonic tabletop world and bridge its RGB-D camera to the clip_ros topics.

Needs Gazebo Harmonic with ros_gz_sim and ros_gz_bridge. Publishes camera/image_raw (rgb8),
camera/depth/image_raw (32FC1, metres) and camera/camera_info, as launch/sim.launch.py does;
the MuJoCo-only sim/ground_truth topics and sim/reset are not available here. The default world
is the MuJoCo scene sim.launch.py starts with (seed 0), written by clip_ros.tools.gazebo_world;
test/test_gazebo_world.py checks that its camera and objects are the simulator's.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

# gz topic -> ROS topic (relative, so `namespace` applies), all gz -> ROS only.
BRIDGED = (
    ('/camera/image', 'camera/image_raw', 'sensor_msgs/msg/Image', 'gz.msgs.Image'),
    ('/camera/depth_image', 'camera/depth/image_raw', 'sensor_msgs/msg/Image', 'gz.msgs.Image'),
    ('/camera/camera_info', 'camera/camera_info', 'sensor_msgs/msg/CameraInfo',
     'gz.msgs.CameraInfo'),
    ('/clock', '/clock', 'rosgraph_msgs/msg/Clock', 'gz.msgs.Clock'),
)


def generate_launch_description():
    """Declare the arguments, start gz sim with the world and the camera bridge."""
    arguments = [
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace for the bridged topics'),
        DeclareLaunchArgument(
            'world', default_value=PathJoinSubstitution(
                [FindPackageShare('clip_ros'), 'config', 'gazebo', 'tabletop.sdf']),
            description='SDF world to load'),
        DeclareLaunchArgument('headless', default_value='true', choices=['true', 'false'],
                              description='run the gz server only (no GUI)'),
    ]
    headless = LaunchConfiguration('headless')
    gazebo = [IncludeLaunchDescription(
        PathJoinSubstitution([FindPackageShare('ros_gz_sim'), 'launch', 'gz_sim.launch.py']),
        launch_arguments={'gz_args': [flags, LaunchConfiguration('world')]}.items(),
        condition=condition)
        for flags, condition in (('-r -s ', IfCondition(headless)),
                                 ('-r ', UnlessCondition(headless)))]
    bridge = Node(
        package='ros_gz_bridge', executable='parameter_bridge', name='camera_bridge',
        namespace=LaunchConfiguration('namespace'), output='screen',
        arguments=[f'{gz}@{ros_type}[{gz_type}' for gz, _, ros_type, gz_type in BRIDGED],
        remappings=[(gz, ros) for gz, ros, _, _ in BRIDGED if gz != ros],
        parameters=[{'use_sim_time': True}])
    return LaunchDescription(arguments + gazebo + [bridge])
