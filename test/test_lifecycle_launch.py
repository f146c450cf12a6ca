"""Launch grounding.launch.py and vla_policy_node unconfigured; walk their lifecycles."""
from pathlib import Path
import unittest

import pytest

# ROS 2 launch_testing (which brings launch) and launch_ros are the only optional
# test tools; every message package is a dependency and imports directly.
pytest.importorskip('launch_testing')
pytest.importorskip('launch_ros')

from geometry_msgs.msg import PoseStamped  # noqa: E402, I100 - imported after the skips
from launch import LaunchDescription  # noqa: E402
from launch.actions import IncludeLaunchDescription, SetEnvironmentVariable  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from launch_ros.actions import LifecycleNode  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from node_harness import Harness, request, rgb_image, wait_for  # noqa: E402

DOMAIN = 73
ROOT = Path(__file__).resolve().parents[1]
NODE = '/lc/grounding_node'
POLICY = '/lc/vla_policy_node'


@pytest.mark.launch_test
def generate_test_description():
    """Start grounding.launch.py (tiny models) and the policy node, both unconfigured."""
    launch_file = PythonLaunchDescriptionSource(str(ROOT / 'launch' / 'grounding.launch.py'))
    include = IncludeLaunchDescription(launch_file, launch_arguments={
        'model': 'tiny', 'device': 'cpu', 'namespace': 'lc', 'autostart': 'false'}.items())
    policy = LifecycleNode(package='clip_ros', executable='vla_policy_node',
                           name='vla_policy_node', namespace='lc', output='screen',
                           parameters=[{'autostart': False}])
    # Pytest may import other test modules that set ROS_DOMAIN_ID: pin the node's domain.
    return LaunchDescription([SetEnvironmentVariable('ROS_DOMAIN_ID', str(DOMAIN)), include,
                              policy, launch_testing.actions.ReadyToTest()])


class TestLifecycleLaunch(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.ros = Harness(DOMAIN)
        cls.change, cls.get = {}, {}
        for node in (NODE, POLICY):
            cls.change[node] = cls.ros.probe.create_client(ChangeState, f'{node}/change_state')
            cls.get[node] = cls.ros.probe.create_client(GetState, f'{node}/get_state')

    @classmethod
    def tearDownClass(cls):
        cls.ros.shutdown()

    def transition(self, transition_id: int, node: str = NODE) -> None:
        req = ChangeState.Request()
        req.transition.id = transition_id
        response = self.change[node].call(req, timeout_sec=60.0)
        self.assertTrue(response is not None and response.success, (node, transition_id))

    def state(self, node: str = NODE) -> str:
        return self.get[node].call(GetState.Request(), timeout_sec=10.0).current_state.label

    def wait_for_services(self, node: str) -> None:
        self.assertTrue(self.change[node].wait_for_service(30.0)
                        and self.get[node].wait_for_service(30.0))

    def test_policy_transitions(self, proc_output):
        proc_output.assertWaitFor('lc.vla_policy_node]: waiting for lifecycle transitions',
                                  timeout=60)
        self.wait_for_services(POLICY)
        self.assertEqual(self.state(POLICY), 'unconfigured')
        ee_state = self.ros.publisher(PoseStamped, '/lc/ee_state')  # only the policy takes it
        self.assertEqual(ee_state.get_subscription_count(), 0)

        self.transition(Transition.TRANSITION_CONFIGURE, POLICY)
        proc_output.assertWaitFor('lc.vla_policy_node]: configured: geometric policy',
                                  timeout=30)
        self.assertEqual(ee_state.get_subscription_count(), 0, 'inactive: no inputs')
        self.transition(Transition.TRANSITION_ACTIVATE, POLICY)
        self.assertEqual(self.state(POLICY), 'active')
        self.assertTrue(wait_for(lambda: ee_state.get_subscription_count() > 0, timeout=30))
        self.transition(Transition.TRANSITION_DEACTIVATE, POLICY)
        self.assertTrue(wait_for(lambda: ee_state.get_subscription_count() == 0, timeout=30))
        self.transition(Transition.TRANSITION_CLEANUP, POLICY)
        proc_output.assertWaitFor('lc.vla_policy_node]: cleaned up', timeout=30)
        self.transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN, POLICY)
        self.assertEqual(self.state(POLICY), 'finalized')

    def test_transitions(self, proc_output):
        proc_output.assertWaitFor('waiting for lifecycle transitions', timeout=60)
        self.wait_for_services(NODE)
        self.assertEqual(self.state(), 'unconfigured')
        ros = self.ros
        image_pub = ros.publisher(Image, '/lc/camera/image_raw')
        detections = ros.subscribe(Detection2DArray, '/lc/detections')
        self.assertEqual(image_pub.get_subscription_count(), 0)

        self.transition(Transition.TRANSITION_CONFIGURE)
        proc_output.assertWaitFor('configured: tiny', timeout=30)
        self.transition(Transition.TRANSITION_ACTIVATE)
        proc_output.assertWaitFor('activated', timeout=10)
        self.assertEqual(self.state(), 'active')
        self.assertTrue(wait_for(lambda: image_pub.get_subscription_count() > 0, timeout=30))
        params = ros.probe.create_client(SetParameters, f'{NODE}/set_parameters')
        self.assertTrue(params.wait_for_service(10.0))
        req = SetParameters.Request(parameters=[
            Parameter('queries', value=['cup']).to_parameter_msg(),
            Parameter('thresholds', value=[0.0]).to_parameter_msg()])
        results = params.call(req, timeout_sec=10.0).results
        self.assertTrue(all(r.successful for r in results), [r.reason for r in results])
        # Across processes Fast DDS may drop large best-effort frames: keep this one small.
        self.assertIsNotNone(request(image_pub, rgb_image(ros.header(), 96, 72), detections))

        self.transition(Transition.TRANSITION_DEACTIVATE)
        proc_output.assertWaitFor('deactivated', timeout=10)
        self.assertTrue(wait_for(lambda: image_pub.get_subscription_count() == 0, timeout=30))
        self.transition(Transition.TRANSITION_CLEANUP)
        proc_output.assertWaitFor('cleaned up', timeout=30)
        self.assertEqual(self.state(), 'unconfigured')
        self.transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
        proc_output.assertWaitFor('shut down', timeout=10)
        self.assertEqual(self.state(), 'finalized')


@launch_testing.post_shutdown_test()
class TestLifecycleShutdown(unittest.TestCase):

    def test_exit_code(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)
