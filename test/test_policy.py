"""Geometric policy: phases, speed limit, workspace, lost target, unknown verbs."""
import math

import numpy as np
import pytest

from clip_ros.policy.command import parse_command
from clip_ros.policy.geometric import (
    CLOSED, GeometricPolicy, Observation, OPEN, plan, PolicyConfig, validate_command)
from clip_ros.policy.lifting import LiftedTarget

TARGET = np.array([0.1, 0.05, 0.02])   # a 4 cm block's centre on the table
BOWL = np.array([-0.2, 0.1, 0.02])     # the bowl's place point: footprint centre at its top
CONFIG = PolicyConfig()
BLOCK = np.array([0.04, 0.04, 0.04])


def lifted(centre, size) -> LiftedTarget:
    """Return a lifted object with its box centred on `centre` (what perceive reports)."""
    centre, size = np.asarray(centre, float), np.asarray(size, float)
    return LiftedTarget(np.zeros(3), centre, size, 0.6, (0.0, 0.0), 100,
                        float(centre[2] + size[2] / 2), centre)


BOWL_SEEN = lifted(BOWL - (0, 0, 0.01), (0.11, 0.11, 0.02))


def run(text, target=TARGET, destination=BOWL, ticks=400, seen=lambda t: True,
        config=CONFIG, drop_in='', look_alike=None):
    """
    Step the policy with an end effector that reaches each waypoint; return the log.

    A closed gripper at the target holds it; opened, the load drops into the bowl when its
    centre is over the bowl's footprint, else onto the table (in phase `drop_in` it slips
    out of the fingers). A `look_alike` of the target, if given, is its best detection.
    """
    policy = GeometricPolicy(config)
    action = policy.start(parse_command(text), 0.0)
    ee, gripper, log = np.array([0.0, 0.12, 0.45]), OPEN, []
    load, offset, dropped = np.array(target, float), None, False
    for tick in range(ticks):
        if action.state not in ('waiting', 'executing'):
            break
        t = tick / config.rate
        dropped = dropped or bool(drop_in and action.phase == drop_in)
        if offset is not None and (gripper == OPEN or dropped):
            in_bowl = np.linalg.norm(load[:2] - BOWL[:2]) < 0.07
            load[2], offset = (0.028 if in_bowl else 0.02), None
        if offset is None and gripper == CLOSED and np.linalg.norm(ee - load) < 0.03 \
                and not dropped:
            offset = load - ee
        if offset is not None:
            load = ee + offset
        others = [] if look_alike is None else [lifted(look_alike, BLOCK)]
        view = {'target': others + [lifted(load, BLOCK)], 'destination': [BOWL_SEEN]}
        obs = Observation(t, ee.copy(), gripper, load.copy() if seen(t) else None,
                          destination if seen(t) else None, offset is not None,
                          seen=view if seen(t) else None)
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
    assert phases == ['pre_grasp', 'open', 'descend', 'close', 'lift', 'verify']
    assert 'held 14 cm above the table (3 of 3 views)' in action.detail
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
    assert action.state == 'succeeded' and 'on green bowl' in action.detail
    release = [obs for obs, a in log if a.phase == 'release']
    assert release and np.linalg.norm(release[0].ee_position[:2] - BOWL[:2]) < 0.02
    assert log[-1][0].gripper == OPEN


@pytest.mark.parametrize('text', [
    'dance with the blue block', 'blue block', 'sing',
    # What the policy would carry out as something else: a forbidden object, a second
    # object, a place beside (done as 'on'), a push towards an object (done as 'forward').
    "don't grab the red block, grab the blue block",
    'instead of the red block, grab the blue block',
    'pick up the blue block and the red ball', 'put the blue block next to the green bowl',
    'move the blue block to the left of the green bowl', 'push the blue block to the green bowl',
    'take the blue block to the left'])
def test_commands_it_cannot_do_never_move(text):
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


def test_target_grounding_never_finds_is_rejected_without_motion():
    policy = GeometricPolicy(CONFIG)
    policy.start(parse_command('grab the purple block'), 0.0)
    ee, actions = np.array([0.0, 0.12, 0.45]), []
    for tick in range(100):
        actions.append(policy.step(Observation(tick / CONFIG.rate, ee, OPEN, seen={},
                                               undetected=('target',))))
    assert actions[-1].state == 'rejected'
    assert actions[-1].detail == 'not found: purple block (no detection within 3 s)'
    assert all(a.goal is None and a.gripper is None for a in actions)


def test_place_beside_the_destination_fails():
    # The bowl is seen 9 cm to the side of where it is: the load lands on the table.
    action, log = run('put the blue block in the green bowl', destination=BOWL + (0.09, 0, 0))
    assert action.state == 'failed' and action.phase == 'verify'
    assert action.detail.startswith('blue block 3 cm beside green bowl (centres 9 cm apart')
    assert not any(a.goal is not None for _, a in log if a.phase == 'verify')


def test_pick_dropped_during_the_lift_fails():
    action, _ = run('pick up the blue block', drop_in='lift')
    assert action.state == 'failed', action.detail
    assert action.detail.startswith('blue block on the table')


def test_pick_unseen_after_the_lift_fails():
    action, log = run('pick up the blue block', seen=lambda t: t < 3.0)
    assert action.state == 'failed' and action.detail == 'blue block not seen after the pick'
    assert log[-1][0].time - min(o.time for o, a in log if a.phase == 'verify') >= 3.0


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
    # A REP 103 base (x forward, y left), the camera behind the arm looking forward: left in
    # the image is the base's +y.
    rep103 = PolicyConfig(view=((0.0, -1.0), (1.0, 0.0)))
    action, log = run('push the blue block to the left', config=rep103)
    assert action.state == 'succeeded'
    assert max(obs.ee_position[1] for obs, _ in log) > TARGET[1] + 0.05
    assert max(abs(obs.ee_position[0] - TARGET[0]) for obs, _ in log[-20:]) < 0.02


def test_validation_and_plans():
    assert 'no destination' in validate_command(parse_command('put the blue block'))
    assert validate_command(parse_command('grab the cup')) == ''
    reasons = {text: validate_command(parse_command(text)) for text in (
        "don't grab the cup", 'grab the cup and the fork', 'put the cup next to the bowl',
        'push the cup to the bowl')}
    assert "says what not to do (\"don't\")" in reasons["don't grab the cup"]
    assert "2 objects ('cup', 'fork')" in reasons['grab the cup and the fork']
    assert "'next to' 'bowl'; only on or in" in reasons['put the cup next to the bowl']
    assert 'a push goes in a direction' in reasons['push the cup to the bowl']
    for text in ('put the cup in the bowl', 'stack the cup on top of the bowl',
                 'take the cup to the bowl', 'grab the cup and put it into the bowl',
                 'pick up the cup to the left of the bowl', 'push the cup left'):
        assert validate_command(parse_command(text)) == '', text
    with pytest.raises(ValueError, match='known'):
        plan(parse_command('sing a song'), CONFIG)
    with pytest.raises(ValueError, match='workspace_min'):
        PolicyConfig(workspace_min=(1, 1, 1))


def test_target_estimate_freezes_near_the_target():
    # Near the target the gripper occludes it and grounding flickers to a similar object.
    other = TARGET + np.array([0.0, 0.1, 0.03])
    policy = GeometricPolicy(PolicyConfig(verify=None))  # about the approach: no look after
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


@pytest.mark.parametrize('text', ['pick up the blue block', 'put the blue block in the bowl'])
def test_a_look_alike_on_the_table_does_not_hide_the_outcome(text):
    action, _ = run(text, look_alike=np.array([0.3, -0.2, 0.02]))
    assert action.state == 'succeeded', action.detail


def test_only_a_look_alike_is_not_the_outcome():
    action, _ = run('pick up the blue block', drop_in='lift', look_alike=(0.0, 0.12, 0.3))
    assert action.state == 'failed', action.detail  # the look-alike is not at the gripper


def test_place_with_an_absent_destination_is_rejected_before_any_motion():
    # The block is in view, the bowl never is: a place must not pick up what it cannot put down.
    policy = GeometricPolicy(CONFIG)
    policy.start(parse_command('put the blue block in the purple bowl'), 0.0)
    ee, actions = np.array([0.0, 0.12, 0.45]), []
    for tick in range(100):
        actions.append(policy.step(Observation(tick / CONFIG.rate, ee, OPEN, TARGET, None,
                                               undetected=('destination',))))
    assert actions[-1].state == 'rejected'
    assert actions[-1].detail == 'not found: purple bowl (no detection within 3 s)'
    assert all(a.goal is None and a.gripper is None for a in actions)


def test_place_waits_for_its_destination_before_moving():
    # The bowl shows up after a second: the place starts only then.
    policy = GeometricPolicy(CONFIG)
    policy.start(parse_command('put the blue block in the green bowl'), 0.0)
    ee, rate = np.array([0.0, 0.12, 0.45]), int(CONFIG.rate)
    early = [policy.step(Observation(tick / rate, ee, OPEN, TARGET, None)) for tick in range(rate)]
    assert [a.state for a in early] == ['waiting'] * rate
    assert all(a.goal is None for a in early)
    later = policy.step(Observation(1.0, ee, OPEN, TARGET, BOWL))
    assert later.state == 'executing' and later.goal is not None


@pytest.mark.parametrize('table_z', [0.0, 0.1])
def test_a_load_is_released_its_clearance_above_the_destination_on_any_table(table_z):
    # A 4 cm block onto a 5 cm block, the table at table_z: the load hangs from its grasp
    # point by its height above the table, not above the workspace floor.
    config = PolicyConfig(verify=None, table_z=table_z, workspace_max=(0.55, 0.45, 0.8))
    target = np.array([0.1, 0.0, table_z + 0.02])
    destination = np.array([-0.1, 0.0, table_z + 0.05])
    policy = GeometricPolicy(config)
    policy.start(parse_command('put the red block on the blue block'), 0.0)
    ee, gripper = np.array([0.0, 0.12, 0.45]), OPEN
    for tick in range(600):
        action = policy.step(Observation(tick / config.rate, ee.copy(), gripper, target,
                                         destination, gripper == CLOSED))
        if action.phase == 'release':
            break
        ee = ee if action.goal is None else np.asarray(action.goal, float)
        gripper = gripper if action.gripper is None else action.gripper
    assert action.phase == 'release', action
    load_bottom = ee[2] - (target[2] - table_z)  # grasped at the block's centre
    assert load_bottom - destination[2] == pytest.approx(config.place_clearance, abs=0.012)


@pytest.mark.parametrize('table_z', [-0.2, 0.3])
def test_the_grasp_descends_to_the_target_on_a_table_below_or_above_the_base(table_z):
    # A base frame at the arm's mount: the table top is table_z, not z = 0.
    config = PolicyConfig(verify=None, table_z=table_z, workspace_min=(-0.55, -0.45, -0.3))
    low = np.array([0.1, 0.05, table_z + 0.015])  # a 3 cm block's centre
    sunk = np.array([0.1, 0.05, table_z - 0.01])  # an estimate under the table top
    for target, depth in ((low, low[2]), (sunk, table_z + config.min_grasp_height)):
        policy = GeometricPolicy(config)
        policy.start(parse_command('pick up the red block'), 0.0)
        ee, gripper = np.array([0.0, 0.12, 0.45]), OPEN
        for tick in range(600):
            action = policy.step(Observation(tick / config.rate, ee.copy(), gripper, target))
            if action.phase == 'close':
                break
            ee = ee if action.goal is None else np.asarray(action.goal, float)
            gripper = gripper if action.gripper is None else action.gripper
        assert action.phase == 'close', action
        assert ee[2] == pytest.approx(depth, abs=config.tolerance)


def approach_heights(config, target, seen, ee) -> tuple:
    """Run a pick up to the close; return (lowest pre_grasp waypoint z, the close's ee)."""
    policy = GeometricPolicy(config)
    policy.start(parse_command('pick up the red block'), 0.0)
    gripper, lowest = OPEN, math.inf
    for tick in range(600):
        action = policy.step(Observation(tick / config.rate, ee.copy(), gripper, target,
                                         seen=seen))
        if action.phase == 'close':
            return lowest, ee
        if action.phase == 'pre_grasp' and action.goal is not None:
            lowest = min(lowest, float(action.goal[2]))
        ee = ee if action.goal is None else np.asarray(action.goal, float)
        gripper = gripper if action.gripper is None else action.gripper
    raise AssertionError(f'never closed: {action}')


def test_the_gripper_comes_down_over_a_tall_objects_top_not_into_it():
    config = PolicyConfig(verify=None)
    tall = np.array([0.1, 0.05, 0.2])  # a 40 cm bottle's centre: its top at 0.4 m
    seen = {'target': [lifted(tall, (0.06, 0.06, 0.4))]}
    lowest, ee = approach_heights(config, tall, seen, np.array([0.0, 0.12, 0.5]))
    # Above the top by the clearance, where 0.10 m over the centre (0.3 m) is inside it.
    assert lowest == pytest.approx(0.4 + config.top_clearance, abs=config.tolerance)
    assert ee[2] == pytest.approx(0.2, abs=config.tolerance)  # then down to the grasp point
    # A short object's approach is as before: 0.10 m over its centre is above its top.
    lowest, _ = approach_heights(config, TARGET, {'target': [lifted(TARGET, BLOCK)]},
                                 np.array([0.0, 0.12, 0.3]))
    assert lowest == pytest.approx(TARGET[2] + config.approach_height, abs=config.tolerance)
