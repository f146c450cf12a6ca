"""
grounding_node and vla_policy_node over DDS act on the same phrases for any command.

Both parse the command text with clip_ros.policy.command.parse_command (one truncation rule):
what grounding_node grounds (label_info) must contain exactly what the policy waits for
(policy_status target and destination), for long, odd, multi-target and non-ASCII commands.
"""
import json
import os

os.environ['ROS_DOMAIN_ID'] = '77'  # before rclpy: own domain, no cross-talk with other tests

import pytest  # noqa: E402


from rclpy.parameter import Parameter  # noqa: E402, I100
from std_msgs.msg import String  # noqa: E402
from vision_msgs.msg import LabelInfo  # noqa: E402

from clip_ros.nodes.grounding_node import GroundingNode  # noqa: E402
from clip_ros.nodes.vla_policy_node import VlaPolicyNode  # noqa: E402
from clip_ros.policy.command import MAX_COMMAND_CHARS, parse_command  # noqa: E402
from node_harness import Harness, LATCHED, wait_for  # noqa: E402, I100

DOMAIN = 77
TINY = [Parameter('clip_arch', value='tiny'), Parameter('clip_pretrained', value='random'),
        Parameter('clipseg_model', value='tiny'), Parameter('device', value='cpu'),
        Parameter('queries', value=['start'])]
COMMANDS = {
    'padded': 'pick up the red block and put it in the blue bowl ' + 'please ' * 140,
    'one huge word': 'pick up the red block ' + 'x' * 1_000_000,
    'multi-target': 'grab the red block, the green ball and the white cup then put them in '
                    'the blue bowl',
    'non-ascii': 'hebe den grünen Würfel auf, bitte — pick up the ＲＥＤ block',
    'emoji': 'pick up the 🍎 apple',
    'odd punctuation': '?!., pick up!!! the   yellow\tcylinder ... now',
    'cut mid-word': 'put the red block in the ' + 'very ' * 194 + 'bowlxyz',
    'wanting and descriptions': 'I need the block that is red, then put it in the blue '
                                'colored bowl',
}


@pytest.fixture(scope='module')
def ros():
    harness = Harness(DOMAIN)
    harness.add(GroundingNode(context=harness.context, parameter_overrides=TINY))
    harness.add(VlaPolicyNode(context=harness.context,
                              parameter_overrides=[Parameter('acquire_timeout', value=600.0)]))
    harness.labels = harness.subscribe(LabelInfo, 'label_info', LATCHED)
    harness.status = harness.subscribe(String, 'policy_status')
    harness.command = harness.publisher(String, 'command')
    assert wait_for(lambda: harness.command.get_subscription_count() >= 2)
    yield harness
    harness.shutdown()


def phrases_of(info) -> list:
    return [c.class_name for c in info.class_map]


@pytest.mark.parametrize('name', sorted(COMMANDS))
def test_both_nodes_act_on_the_same_phrases(ros, name):
    text = COMMANDS[name]
    expected = parse_command(text)
    assert expected.phrases and len(expected.text) <= MAX_COMMAND_CHARS
    ros.command.publish(String(data=text))
    info = wait_for(lambda: ros.labels.find(lambda m: phrases_of(m) == expected.phrases))
    assert info is not None, (name, [phrases_of(m) for m in ros.labels.messages[-3:]])
    status = wait_for(lambda: ros.status.find(
        lambda m: json.loads(m.data)['command'] == expected.text))
    assert status is not None, name
    status = json.loads(status.data)
    grounded = phrases_of(info)
    assert status['target'] == expected.targets[0] and status['target'] in grounded
    assert status['destination'] == expected.destination
    assert status['destination'] is None or status['destination'] in grounded
    # Long commands reach the status cut, never whole.
    assert len(status['command']) <= MAX_COMMAND_CHARS


def test_cut_commands_keep_whole_words():
    assert parse_command(COMMANDS['padded']).destination == 'blue bowl'
    assert parse_command(COMMANDS['one huge word']).targets == ['red block']
    cut = parse_command(COMMANDS['cut mid-word'])
    assert cut.truncated > 0 and not cut.text.endswith('bowlx')
    assert cut.destination.split()[-1] == 'very'
    wanting = parse_command(COMMANDS['wanting and descriptions'])
    assert (wanting.verb, wanting.targets, wanting.destination) == (
        'place', ['red block'], 'blue bowl')
