"""Launch grounding.launch.py with the tiny models; a command and a frame give detections."""
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
from std_msgs.msg import String  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402
import yaml  # noqa: E402

from node_harness import Harness, request, rgb_image, wait_for  # noqa: E402, I100

DOMAIN = 74
ROOT = Path(__file__).resolve().parents[1]


def params_file() -> str:
    """Write the shipped parameters with threshold 0 (always a detection) to a temp file."""
    params = yaml.safe_load((ROOT / 'config' / 'grounding_node.yaml').read_text())
    node_params = params['/**/grounding_node']['ros__parameters']
    # Across processes Fast DDS loses best-effort 640x480 frames (fragments overflow the
    # default socket buffers), so the test subscribes reliably.
    node_params.update(thresholds=[0.0], min_area=16, image_qos='reliable')
    with tempfile.NamedTemporaryFile('w', suffix='.yaml', delete=False) as f:
        yaml.safe_dump(params, f)
    return f.name


@pytest.mark.launch_test
def generate_test_description():
    """Start the shipped launch file with model:=tiny in namespace /lt."""
    launch_file = PythonLaunchDescriptionSource(str(ROOT / 'launch' / 'grounding.launch.py'))
    include = IncludeLaunchDescription(launch_file, launch_arguments={
        'model': 'tiny', 'device': 'cpu', 'namespace': 'lt', 'image_topic': 'camera/image',
        'command_topic': 'say', 'params_file': params_file()}.items())
    # Pytest may import other test modules that set ROS_DOMAIN_ID: pin the node's domain.
    return LaunchDescription([SetEnvironmentVariable('ROS_DOMAIN_ID', str(DOMAIN)), include,
                              launch_testing.actions.ReadyToTest()])


class TestGroundingLaunch(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.ros = Harness(DOMAIN)

    @classmethod
    def tearDownClass(cls):
        cls.ros.shutdown()

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
