"""Geometric policy: phases, speed limit, workspace, lost target, unknown verbs."""
import numpy as np
import pytest

from clip_ros.policy.command import parse_command
from clip_ros.policy.geometric import (
    CLOSED, GeometricPolicy, Observation, OPEN, plan, PolicyConfig, validate_command)

TARGET = np.array([0.1, 0.05, 0.02])
BOWL = np.array([-0.2, 0.1, 0.02])
CONFIG = PolicyConfig()


def run(text, target=TARGET, destination=BOWL, ticks=400, seen=lambda t: True):
    """Step the policy with an end effector that reaches each waypoint; return the log."""
    policy = GeometricPolicy(CONFIG)
    action = policy.start(parse_command(text), 0.0)
    ee, gripper, log = np.array([0.0, 0.12, 0.45]), OPEN, []
    for tick in range(ticks):
        if action.state not in ('waiting', 'executing'):
            break
        t = tick / CONFIG.rate
        holding = gripper == CLOSED and np.linalg.norm(ee - target) < 0.03
        obs = Observation(t, ee.copy(), gripper, target if seen(t) else None,
                          destination if seen(t) else None, holding)
        action = policy.step(obs)
        log.append((obs, action))
        if action.goal is not None:
            ee = action.goal.copy()
        if action.gripper is not None:
            gripper = action.gripper
    return action, log


def test_pick_runs_all_phases_within_limits():
    action, log = run('please pick up the blue block')
    assert action.state == 'succeeded'
    phases = list(dict.fromkeys(a.phase for _, a in log if a.phase))
    assert phases == ['pre_grasp', 'open', 'descend', 'close', 'lift']
    step_limit = CONFIG.max_speed / CONFIG.rate + 1e-9
    for obs, act in log:
        if act.goal is not None:
            assert np.linalg.norm(act.goal - obs.ee_position) <= step_limit
            assert np.all(act.goal >= CONFIG.workspace_min)
            assert np.all(act.goal <= CONFIG.workspace_max)
            assert np.linalg.norm(act.velocity) <= CONFIG.max_speed + 1e-9
    closing = [obs.ee_position for obs, a in log if a.phase == 'close']
    assert np.linalg.norm(closing[0] - TARGET) <= CONFIG.tolerance


def test_place_ends_open_above_destination():
    action, log = run('put the blue block in the green bowl')
    assert action.state == 'succeeded'
    release = [obs for obs, a in log if a.phase == 'release']
    assert release and np.linalg.norm(release[0].ee_position[:2] - BOWL[:2]) < 0.02
    assert log[-1][0].gripper == OPEN


@pytest.mark.parametrize('text', ['dance with the blue block', 'blue block', 'sing'])
def test_unknown_verb_never_moves(text):
    policy = GeometricPolicy(CONFIG)
    action = policy.start(parse_command(text), 0.0)
    assert action.state == 'rejected' and 'no motion' in action.detail
    # Stepped on with the target in view, the rejected command still holds the arm still.
    ee = np.array([0.0, 0.12, 0.45])
    actions = [action] + [policy.step(Observation(tick / CONFIG.rate, ee, OPEN, TARGET, BOWL))
                          for tick in range(1, 60)]
    assert [a.state for a in actions] == ['rejected'] * 60
    assert all(a.goal is None and not a.moving and a.gripper is None for a in actions)


def test_lost_target_aborts():
    far = np.array([0.4, -0.3, 0.02])  # the approach takes longer than the timeout
    action, log = run('grab the blue block', target=far, seen=lambda t: t < 0.3)
    assert action.state == 'aborted' and 'target lost' in action.detail
    stopped = log[-1][1]
    assert stopped.goal is None and not stopped.moving


def test_never_seen_target_aborts_without_motion():
    action, log = run('grab the blue block', seen=lambda t: False)
    assert action.state == 'aborted' and 'not found' in action.detail
    assert len(log) > 1 and all(a.goal is None and a.gripper is None for _, a in log)


def test_target_outside_workspace_aborts():
    action, log = run('pick up the blue block', target=np.array([2.0, 0.0, 0.02]))
    assert action.state == 'aborted' and 'outside the workspace' in action.detail


def test_point_push_and_find():
    action, log = run('point at the blue block')
    assert action.state == 'succeeded'
    assert log[-1][0].ee_position[:2] == pytest.approx(TARGET[:2], abs=0.02)
    action, log = run('push the blue block to the left')
    assert action.state == 'succeeded'
    assert min(obs.ee_position[0] for obs, _ in log) < TARGET[0] - 0.05
    action, _ = run('where is the blue block')
    assert action.state == 'succeeded' and 'found' in action.detail


def test_validation_and_plans():
    assert 'no destination' in validate_command(parse_command('put the blue block'))
    assert validate_command(parse_command('grab the cup')) == ''
    with pytest.raises(ValueError, match='known'):
        plan(parse_command('sing a song'), CONFIG)
    with pytest.raises(ValueError, match='workspace_min'):
        PolicyConfig(workspace_min=(1, 1, 1))


def test_target_estimate_freezes_near_the_target():
    # Near the target the gripper occludes it and grounding flickers to a similar object.
    other = TARGET + np.array([0.0, 0.1, 0.03])
    policy = GeometricPolicy(CONFIG)
    action = policy.start(parse_command('pick up the blue block'), 0.0)
    ee, gripper = np.array([0.0, 0.12, 0.45]), OPEN
    for tick in range(400):
        if action.state != 'executing' and tick:
            break
        near = np.linalg.norm(ee - TARGET) < CONFIG.near_distance
        seen = (other if tick % 2 else None) if near else TARGET
        holding = gripper == CLOSED and np.linalg.norm(ee - TARGET) < 0.03
        action = policy.step(Observation(tick / CONFIG.rate, ee.copy(), gripper, seen, None,
                                         holding))
        if action.phase == 'close':
            assert np.linalg.norm(ee - TARGET) <= CONFIG.tolerance
        ee = ee if action.goal is None else action.goal.copy()
        gripper = gripper if action.gripper is None else action.gripper
    assert action.state == 'succeeded', action.detail


def test_place_releases_the_load_above_the_destination():
    action, log = run('put the blue block in the green bowl')
    grasp_z = [obs.ee_position[2] for obs, a in log if a.phase == 'close'][0]
    release = [obs.ee_position for obs, a in log if a.phase == 'release'][0]
    load = grasp_z - CONFIG.workspace_min[2]  # the load hangs this far below the grasp point
    assert release[2] == pytest.approx(BOWL[2] + CONFIG.place_clearance + load, abs=0.011)
