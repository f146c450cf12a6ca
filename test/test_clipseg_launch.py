"""Launch clipseg.launch.py with the tiny model; a frame gives a mask and detections."""
import unittest

import pytest

# ROS 2 launch_testing (which brings launch) and launch_ros are the only optional
# test tools; every message package is a dependency and imports directly.
pytest.importorskip('launch_testing')
pytest.importorskip('launch_ros')

import launch_testing.asserts  # noqa: E402, I100 - imported after the skips
from sensor_msgs.msg import Image  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from node_harness import (  # noqa: E402, I100
    launch_test_description, LaunchHarness, request, rgb_image, shipped_params, wait_for)

DOMAIN = 75


@pytest.mark.launch_test
def generate_test_description():
    """Start the shipped launch file with model:=tiny in namespace /seg."""
    # Reliable: Fast DDS loses best-effort 640x480 frames between processes.
    params = shipped_params('clipseg_node', background_threshold=0.0, image_qos='reliable')
    return launch_test_description('clipseg', DOMAIN, {
        'model': 'tiny', 'device': 'cpu', 'namespace': 'seg', 'image_topic': 'camera/image',
        'params_file': params})


class TestClipSegLaunch(LaunchHarness, unittest.TestCase):

    DOMAIN = DOMAIN

    def test_frame_gives_mask_and_detections(self, proc_output):
        proc_output.assertWaitFor('loaded tiny', timeout=60)
        ros = self.ros
        image_pub = ros.publisher(Image, '/seg/camera/image')
        masks = ros.subscribe(Image, '/seg/mask')
        detections = ros.subscribe(Detection2DArray, '/seg/detections')
        self.assertTrue(wait_for(lambda: image_pub.get_subscription_count() > 0, timeout=30))
        msg = rgb_image(ros.header())
        mask = request(image_pub, msg, masks)
        self.assertIsNotNone(mask)
        self.assertEqual((mask.width, mask.height, mask.encoding), (640, 480, 'mono16'))
        result = wait_for(lambda: detections.find(lambda m: m.header == msg.header))
        self.assertIsNotNone(result)
        self.assertTrue(result.detections)


@launch_testing.post_shutdown_test()
class TestClipSegShutdown(unittest.TestCase):

    def test_exit_code(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)
