from glob import glob
import os

from setuptools import find_packages, setup

package_name = 'clip_ros'


def model_files():
    """Install bundled model files (added under clip_ros/models/) as package data."""
    return [path for path in glob('clip_ros/models/**/*', recursive=True) if os.path.isfile(path)]


setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    package_data={package_name: [os.path.relpath(p, package_name) for p in model_files()]},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml')),
        ('share/' + package_name + '/config/gazebo', glob('config/gazebo/*.sdf')),
        # `serve` runs it in the server environment (no torch, no ROS) by its path.
        ('share/' + package_name + '/scripts', ['scripts/triton_server.py']),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='clip_ros maintainers',
    maintainer_email='maintainers@clip-ros.dev',
    description='Ground language commands in camera images with CLIP and CLIPSeg.',
    license='Apache-2.0',
    # As ros2 pkg create writes it (tests_require is gone from setuptools and warns).
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'grounding_node = clip_ros.nodes.grounding_node:main',
            'clip_classifier_node = clip_ros.nodes.clip_classifier_node:main',
            'clipseg_node = clip_ros.nodes.clipseg_node:main',
            'prefetch = clip_ros.tools.prefetch:main',
            'benchmark = clip_ros.tools.benchmark:main',
            'demo = clip_ros.tools.demo:main',
            'sim_node = clip_ros.nodes.sim_node:main',
            'make_dataset = clip_ros.tools.make_dataset:main',
            'vla_policy_node = clip_ros.nodes.vla_policy_node:main',
            'policy_demo = clip_ros.tools.policy_demo:main',
            'flood = clip_ros.tools.flood:main',
            'train_tabletop = clip_ros.tools.train_tabletop:main',
            'train_shape = clip_ros.tools.train_shape:main',
            'evaluate = clip_ros.tools.evaluate:main',
            'evaluate_crops = clip_ros.tools.evaluate_crops:main',
            'record_demos = clip_ros.tools.record_demos:main',
            'train_policy_head = clip_ros.tools.train_policy_head:main',
            'evaluate_policy = clip_ros.tools.evaluate_policy:main',
            'record_sim_bag = clip_ros.tools.record_sim_bag:main',
            'ground_bag = clip_ros.tools.ground_bag:main',
            'export = clip_ros.tools.export:main',
            # The same, by a name a shell can run: bash's builtin `export` wins the plain one.
            'export_onnx = clip_ros.tools.export:main',
            'calibrate = clip_ros.tools.calibrate:main',
            'serve = clip_ros.tools.serve:main',
        ],
    },
)
