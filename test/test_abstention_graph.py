"""
"Not found" end to end over DDS: simulator -> grounding_node (bundled model) -> vla_policy_node.

A command about an object that is not on the table gets no detection from grounding_node (its
grounding_status says why) and vla_policy_node ends it `rejected` "not found: <phrase>" within
acquire_timeout without sending a single goal, so the simulated arm never moves. Words the model
does not know, a phrase naming two objects and a phrase left empty end `rejected` with that
reason; afterwards both nodes still answer a command about an object that is there.
"""
import json
import os
import time

os.environ['ROS_DOMAIN_ID'] = '84'  # before rclpy: own domain, no cross-talk with other tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from geometry_msgs.msg import PoseStamped  # noqa: E402, I100
from std_msgs.msg import String  # noqa: E402

from clip_ros.sim.dataset import split_seeds  # noqa: E402
from clip_ros.sim.scene import COLOURS, sample_scene  # noqa: E402
from node_harness import LATCHED, sim_graph, wait_for  # noqa: E402, I100

DOMAIN = 84
W, H = 640, 480  # the size the bundled model was trained at
SEED = split_seeds('test', 1, 3)[0]
NAMES = [o.name for o in sample_scene(SEED).objects]
ACQUIRE = 3.0
FINAL = ('succeeded', 'failed', 'aborted', 'rejected')


@pytest.fixture(scope='module')
def graph(gl_context):
    harness = sim_graph(DOMAIN, {'seed': SEED, 'width': W, 'height': H, 'rate': 10.0},
                        {'acquire_timeout': ACQUIRE}, {
                            'status': (String, 'policy_status'),
                            'grounding': (String, 'grounding_status', LATCHED),
                            'goals': (PoseStamped, 'ee_goal')})
    yield harness
    harness.shutdown()


def run(graph, text: str, timeout: float = 60.0) -> tuple:
    """Send `text`; return (final policy status, goals sent, ee positions while it ran)."""
    goals, states = len(graph.goals.messages), len(graph.ee.messages)
    graph.command.publish(String(data=text))
    status = wait_for(lambda: next(
        (s for s in (json.loads(m.data) for m in graph.status.messages)
         if s['command'] == text and s['state'] in FINAL), None), timeout)
    time.sleep(1.0)  # a motion after the final status would show here
    positions = [(m.pose.position.x, m.pose.position.y, m.pose.position.z)
                 for m in graph.ee.messages[states:]]
    return status, graph.goals.messages[goals:], np.array(positions)


def grounding_reason(graph, phrase: str) -> str:
    """Return grounding_node's latest reason for `phrase` ('' when it was found)."""
    msg = graph.grounding.find(lambda m: phrase in json.loads(m.data)['phrases'])
    return json.loads(msg.data)['rejected'].get(phrase, '') if msg else None


def assert_still(positions) -> None:
    assert len(positions) > 0 and np.ptp(positions, axis=0).max() < 1e-6, positions


def test_absent_object_is_rejected_without_motion(graph):
    colour = next(c for c in COLOURS if not any(n.startswith(c) for n in NAMES))
    phrase = f'{colour} ball'
    status, goals, positions = run(graph, f'pick up the {phrase}')
    assert status is not None and status['state'] == 'rejected', status
    assert status['detail'].startswith(f'not found: {phrase}'), status
    assert not goals
    assert_still(positions)
    assert grounding_reason(graph, phrase) == f'not found: {phrase}'


@pytest.mark.parametrize('text, reason', [
    ('pick up the turquoise block', 'unknown word: turquoise'),
    ('pick up the red block blue ball', 'two objects: red block, blue ball'),
    ('pick up the thing', 'empty phrase'),
])
def test_bad_words_are_rejected_with_the_reason(graph, text, reason):
    status, goals, positions = run(graph, text)
    assert status is not None and status['state'] == 'rejected', status
    assert status['detail'] == reason and not goals
    assert_still(positions)


def test_a_present_object_is_still_found(graph):
    # After the refusals both nodes answer: the scene's first object is found and reported.
    name = NAMES[0]
    status, goals, _ = run(graph, f'find the {name}')
    assert status is not None and status['state'] == 'succeeded', status
    assert status['detail'].startswith(f"found '{name}'") and not goals
    assert grounding_reason(graph, name) == ''
