"""Launch clipseg.launch.py with the tiny model; a frame gives a mask and detections."""
from pathlib import Path
import tempfile
import unittest

import pytest

pytest.importorskip('launch')
pytest.importorskip('launch_ros')
pytest.importorskip('launch_testing')
pytest.importorskip('vision_msgs')

from launch import LaunchDescription  # noqa: E402, I100 - imported after the skips
from launch.actions import IncludeLaunchDescription, SetEnvironmentVariable  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402
import yaml  # noqa: E402

from node_harness import Harness, request, rgb_image, wait_for  # noqa: E402, I100

DOMAIN = 75
ROOT = Path(__file__).resolve().parents[1]


def params_file() -> str:
    """Write the shipped parameters with background threshold 0 to a temp file."""
    params = yaml.safe_load((ROOT / 'config' / 'clipseg_node.yaml').read_text())
    # Reliable: Fast DDS loses best-effort 640x480 frames between processes.
    node_params = params['/**/clipseg_node']['ros__parameters']
    node_params.update(background_threshold=0.0, image_qos='reliable')
    with tempfile.NamedTemporaryFile('w', suffix='.yaml', delete=False) as f:
        yaml.safe_dump(params, f)
    return f.name


@pytest.mark.launch_test
def generate_test_description():
    """Start the shipped launch file with model:=tiny in namespace /seg."""
    launch_file = PythonLaunchDescriptionSource(str(ROOT / 'launch' / 'clipseg.launch.py'))
    include = IncludeLaunchDescription(launch_file, launch_arguments={
        'model': 'tiny', 'device': 'cpu', 'namespace': 'seg', 'image_topic': 'camera/image',
        'params_file': params_file()}.items())
    return LaunchDescription([SetEnvironmentVariable('ROS_DOMAIN_ID', str(DOMAIN)), include,
                              launch_testing.actions.ReadyToTest()])


class TestClipSegLaunch(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.ros = Harness(DOMAIN)

    @classmethod
    def tearDownClass(cls):
        cls.ros.shutdown()

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
