"""Launch clip_classifier.launch.py with the tiny model; a frame gives a classification."""
import unittest

import pytest

# ROS 2 launch_testing (which brings launch) and launch_ros are the only optional
# test tools; every message package is a dependency and imports directly.
pytest.importorskip('launch_testing')
pytest.importorskip('launch_ros')

import launch_testing.asserts  # noqa: E402, I100 - imported after the skips
from sensor_msgs.msg import Image  # noqa: E402
from vision_msgs.msg import Classification  # noqa: E402

from node_harness import (  # noqa: E402, I100
    launch_test_description, LaunchHarness, request, rgb_image, shipped_params, wait_for)

DOMAIN = 67


@pytest.mark.launch_test
def generate_test_description():
    """Start the shipped launch file with model:=tiny in namespace /cls."""
    # Reliable: Fast DDS loses best-effort 640x480 frames between processes.
    params = shipped_params('clip_classifier_node', image_qos='reliable')
    return launch_test_description('clip_classifier', DOMAIN, {
        'model': 'tiny', 'device': 'cpu', 'namespace': 'cls', 'image_topic': 'camera/image',
        'params_file': params})


class TestClassifierLaunch(LaunchHarness, unittest.TestCase):

    DOMAIN = DOMAIN

    def test_frame_gives_classification(self, proc_output):
        proc_output.assertWaitFor('loaded tiny', timeout=60)
        ros = self.ros
        image_pub = ros.publisher(Image, '/cls/camera/image')
        results = ros.subscribe(Classification, '/cls/classification')
        self.assertTrue(wait_for(lambda: image_pub.get_subscription_count() > 0, timeout=30))
        msg = rgb_image(ros.header())
        result = request(image_pub, msg, results)
        self.assertIsNotNone(result)
        self.assertEqual(len(result.results), 5)  # the five classes of the shipped config


@launch_testing.post_shutdown_test()
class TestClassifierShutdown(unittest.TestCase):

    def test_exit_code(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)
