"""RViz markers of lifted objects: a sphere at the object, its label above it."""
import numpy as np
import pytest
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from clip_ros.nodes.messages import object_markers
from clip_ros.policy.lifting import LiftedTarget


def lifted(centre) -> LiftedTarget:
    centre = np.asarray(centre, float)
    return LiftedTarget(centre, centre, np.full(3, 0.04), 0.6, (0, 0), 100,
                        float(centre[2] + 0.02), centre)


@pytest.mark.parametrize('frame, up', [('base_link', (0, 0, 0.06)),
                                       ('camera_color_optical_frame', (0, -0.06, 0))])
def test_the_label_floats_above_its_sphere_in_either_frame(frame, up):
    markers = object_markers([('blue block', (0.0, 0.0, 1.0), lifted([0.1, 0.2, 0.5]))],
                             Header(frame_id=frame), 'test').markers
    assert markers[0].action == Marker.DELETEALL
    sphere, label = markers[1:]
    assert sphere.type == Marker.SPHERE and label.type == Marker.TEXT_VIEW_FACING
    offset = np.subtract([label.pose.position.x, label.pose.position.y, label.pose.position.z],
                         [sphere.pose.position.x, sphere.pose.position.y, sphere.pose.position.z])
    assert offset == pytest.approx(up) and label.text == 'blue block'
