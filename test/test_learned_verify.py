"""The learned policy looks again after acting, with the geometric policy's check."""
import numpy as np
import torch

from clip_ros.policy.command import parse_command
from clip_ros.policy.geometric import Observation
from clip_ros.policy.learned import HeadConfig, LearnedPolicy, PolicyHead
from clip_ros.policy.lifting import LiftedTarget

DIM = 8
IMAGE = np.zeros((8, 8, 3), np.uint8)


class ConstantEmbedder:
    """Constant embeddings: enough to drive the head without a CLIP."""

    def image(self, rgb):
        return torch.ones(DIM) / DIM ** 0.5

    def text(self, command):
        return torch.full((DIM,), -1.0) / DIM ** 0.5


def block(centre) -> LiftedTarget:
    """Return a 4 cm block lifted at `centre`."""
    centre = np.asarray(centre, float)
    return LiftedTarget(np.zeros(3), centre, np.full(3, 0.04), 0.6, (0.0, 0.0), 50,
                        float(centre[2] + 0.02), centre)


def pick_then_look(load_at) -> tuple:
    """Drive a learned pick to its lift, then show the load at `load_at(ee)`; return the end."""
    policy = LearnedPolicy(PolicyHead(HeadConfig(DIM, hidden=16)).eval(), ConstantEmbedder())
    policy.start(parse_command('pick up the blue block'), 0.0)
    target = np.array([0.1, 0.0, 0.02])
    low, high = target.copy(), target + (0, 0, 0.15)
    actions = []
    # Grasped at the block, then raised by the lift height: the head's own steps are ignored.
    path = [(low, False), (low, True)] + [(high, True)] * 60
    for k, (ee, holding) in enumerate(path):
        load = load_at(ee)  # None: the load is not grounded (hidden in the gripper)
        seen = {'target': [] if load is None else [block(load)]}
        actions.append(policy.step(Observation(0.1 * k, ee, 1.0, target, None, holding,
                                               IMAGE, seen)))
        if actions[-1].state not in ('waiting', 'executing'):
            break
    return actions


def test_learned_pick_is_confirmed_when_the_load_is_held():
    actions = pick_then_look(lambda ee: ee)
    assert actions[-1].state == 'succeeded' and actions[-1].phase == 'verify'
    assert 'held 15 cm above the table (3 of 3 views)' in actions[-1].detail
    assert 'the gripper closed on it' in actions[-1].detail
    assert all(a.goal is None for a in actions if a.phase == 'verify')


def test_learned_pick_fails_when_the_load_stays_on_the_table():
    actions = pick_then_look(lambda ee: (0.1, 0.0, 0.02))
    assert actions[-1].state == 'failed'
    assert actions[-1].detail.startswith('blue block on the table, 15 cm from the gripper')


def test_learned_pick_held_but_not_grounded_is_confirmed_by_the_grasp_sensor():
    actions = pick_then_look(lambda ee: None)
    assert actions[-1].state == 'succeeded', actions[-1].detail
    assert 'the gripper closed on an object; blue block not seen after the lift' in \
        actions[-1].detail


def test_learned_place_with_an_absent_destination_never_moves():
    policy = LearnedPolicy(PolicyHead(HeadConfig(DIM, hidden=16)).eval(), ConstantEmbedder())
    policy.start(parse_command('put the blue block in the purple bowl'), 0.0)
    ee, target, actions = np.array([0.0, 0.12, 0.45]), np.array([0.1, 0.0, 0.02]), []
    for k in range(60):
        actions.append(policy.step(Observation(0.1 * k, ee, 0.0, target, None, False, IMAGE,
                                               {'target': [block(target)]},
                                               undetected=('destination',))))
    assert actions[-1].state == 'rejected'
    assert actions[-1].detail.startswith('not found: purple bowl')
    assert all(a.goal is None and a.gripper is None for a in actions)
