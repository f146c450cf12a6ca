"""tf2 buffers: one listener per node, however often it is configured."""
import os
import sys
import types

os.environ['ROS_DOMAIN_ID'] = '45'  # before rclpy: own domain, no cross-talk with other tests

import pytest  # noqa: E402
import rclpy  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from clip_ros.nodes.grounding_node import GroundingNode  # noqa: E402

SUCCESS = TransitionCallbackReturn.SUCCESS


@pytest.fixture
def listeners(monkeypatch):
    """Install a tf2_ros stand-in (tf2 is not on PyPI) that records each listener made."""
    made = []
    tf2 = types.ModuleType('tf2_ros')
    tf2.Buffer = type('Buffer', (), {})
    tf2.TransformListener = lambda buffer, node: made.append((buffer, node))
    monkeypatch.setitem(sys.modules, 'tf2_ros', tf2)
    return made


def test_configure_cleanup_cycles_keep_one_tf_listener(listeners):
    context = Context()
    rclpy.init(context=context, domain_id=45)
    node = GroundingNode(context=context, parameter_overrides=[
        Parameter('clip_arch', value='tiny'), Parameter('clip_pretrained', value='random'),
        Parameter('clipseg_model', value='tiny'), Parameter('autostart', value=False),
        Parameter('publish_3d', value=True), Parameter('target_frame', value='world')])
    try:
        buffers = []
        for _ in range(3):
            assert node.trigger_configure() == SUCCESS, node.not_ready
            buffers.append(node._depth.tf)
            assert node.trigger_cleanup() == SUCCESS
        assert len(listeners) == 1 and listeners[0] == (buffers[0], node)
        assert buffers[0] is not None and all(b is buffers[0] for b in buffers)
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)
