"""Launch grounding.launch.py with the tiny models; a command and a frame give detections."""
import unittest

import pytest

# ROS 2 launch_testing (which brings launch) and launch_ros are the only optional
# test tools; every message package is a dependency and imports directly.
pytest.importorskip('launch_testing')
pytest.importorskip('launch_ros')

import launch_testing.asserts  # noqa: E402, I100 - imported after the skips
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from node_harness import (  # noqa: E402, I100
    launch_test_description, LaunchHarness, request, rgb_image, shipped_params, wait_for)

DOMAIN = 74


@pytest.mark.launch_test
def generate_test_description():
    """Start the shipped launch file with model:=tiny in namespace /lt."""
    # Threshold 0: always a detection. Reliable: across processes Fast DDS loses best-effort
    # 640x480 frames (fragments overflow the default socket buffers).
    params = shipped_params('grounding_node', thresholds=[0.0], min_area=16,
                            image_qos='reliable')
    return launch_test_description('grounding', DOMAIN, {
        'model': 'tiny', 'device': 'cpu', 'namespace': 'lt', 'image_topic': 'camera/image',
        'command_topic': 'say', 'params_file': params})


class TestGroundingLaunch(LaunchHarness, unittest.TestCase):

    DOMAIN = DOMAIN

    def test_command_and_frame_give_detections(self, proc_output):
        proc_output.assertWaitFor('loaded tiny', timeout=60)
        ros = self.ros
        image_pub = ros.publisher(Image, '/lt/camera/image')
        command_pub = ros.publisher(String, '/lt/say')
        detections = ros.subscribe(Detection2DArray, '/lt/detections')
        self.assertTrue(wait_for(lambda: image_pub.get_subscription_count() > 0
                                 and command_pub.get_subscription_count() > 0, timeout=30))
        command_pub.publish(String(data='pick up the red block'))
        proc_output.assertWaitFor("grounding ['red block']", timeout=20)
        msg = rgb_image(ros.header())
        result = request(image_pub, msg, detections)
        self.assertIsNotNone(result)
        self.assertEqual(result.header, msg.header)
        self.assertTrue(result.detections)
        self.assertEqual(result.detections[0].results[0].hypothesis.class_id, 'red block')


@launch_testing.post_shutdown_test()
class TestGroundingShutdown(unittest.TestCase):

    def test_exit_code(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)
