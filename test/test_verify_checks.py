"""The checks after acting, one view at a time: grasp sensor and camera as evidence."""
import itertools

import numpy as np
import pytest

from clip_ros.policy.lifting import LiftedTarget
from clip_ros.policy.verify import check_pick, check_place, Verification, VerifyConfig

CONFIG = VerifyConfig()
EE = np.array([0.1, 0.0, 0.17])        # the gripper after lifting straight up from GRASPED
GRASPED = np.array([0.1, 0.0, 0.02])   # where the block was grasped
BOWL = np.array([0.3, 0.1, 0.01])


def lifted(centre, size=(0.04, 0.04, 0.04)) -> LiftedTarget:
    """Return a lifted object with its box centred on `centre` (what perceive reports)."""
    centre, size = np.asarray(centre, float), np.asarray(size, float)
    return LiftedTarget(np.zeros(3), centre, size, 0.6, (0.0, 0.0), 100,
                        float(centre[2] + size[2] / 2), centre)


BOWL_SEEN = lifted(BOWL, (0.11, 0.11, 0.02))


def pick(target, holding):
    return check_pick('blue block', target, EE, CONFIG, holding, GRASPED)


def place(target, now, destination='green bowl', holding=False):
    return check_place('blue block', target, destination, BOWL_SEEN, CONFIG, holding, now)


def test_pick_held_but_not_seen_succeeds_on_the_grasp_sensor():
    ok, detail = pick(None, True)
    assert ok
    assert detail == ('the gripper closed on an object; blue block not seen after the lift '
                      '(hidden in the gripper)')


def test_pick_seen_held_succeeds_with_both_kinds_of_evidence():
    ok, detail = pick(lifted(EE - (0, 0, 0.02)), True)
    assert ok and detail == 'the gripper closed on it; blue block held 13 cm above the table'


def test_pick_vetoed_when_the_target_lies_where_it_was_grasped():
    ok, detail = pick(lifted(GRASPED + (0.01, 0, 0)), True)
    assert not ok
    assert detail.startswith('blue block on the table, 15 cm from the gripper')
    assert detail.endswith('where it was grasped: the gripper holds something else')


def test_pick_look_alike_elsewhere_on_the_table_does_not_veto():
    ok, detail = pick(lifted(GRASPED + (0.2, 0.1, 0)), True)
    assert ok and detail.startswith('the gripper closed on an object; blue block on the table')
    assert detail.endswith(': another blue block')


def test_pick_with_an_empty_closed_gripper_fails():
    ok, detail = pick(None, False)
    assert not ok
    assert detail == 'blue block not seen after the lift; the gripper closed on nothing'
    ok, detail = pick(lifted(EE - (0, 0, 0.02)), False)  # the camera cannot outvote it
    assert not ok and detail.endswith('; the gripper closed on nothing')


def test_pick_without_a_grasp_sensor_goes_by_the_camera():
    assert pick(None, None) == (False, 'blue block not seen after the lift')
    assert pick(lifted(EE - (0, 0, 0.02)), None) == \
        (True, 'blue block held 13 cm above the table')


def test_one_view_with_a_veto_fails_even_if_a_look_alike_is_held_high():
    look = Verification('pick', 'blue block', None, None, 0.0, grasped_at=GRASPED)
    seen = {'target': [lifted(GRASPED + (0.3, 0, 0)), lifted(GRASPED)]}
    for k in range(3):
        verdict = look.look(1.0 + k, seen, EE, True)
    assert verdict[0] is False and 'where it was grasped' in verdict[1]
    assert verdict[1].endswith('(0 of 3 views confirm the pick)')


def test_place_seen_on_the_destination_succeeds():
    ok, detail = place(lifted(BOWL + (0.02, 0, 0.02)), [BOWL_SEEN])
    assert ok and detail == 'blue block on green bowl (2 cm from its centre)'


def test_place_seen_beside_the_destination_fails():
    ok, detail = place(lifted(BOWL + (0.12, 0, 0.01)), [BOWL_SEEN])
    assert not ok and detail.startswith('blue block 6 cm beside green bowl (centres 12 cm')


def test_place_not_seen_over_a_destination_still_there_succeeds():
    ok, detail = place(None, [lifted(BOWL + (0.01, 0, 0), (0.11, 0.11, 0.02))])
    assert ok and detail == 'blue block not seen after release over green bowl: inside it'
    ok, detail = place(None, [BOWL_SEEN], destination='red block')
    assert ok and detail == 'blue block not seen after release over red block: on it, ' \
                            'not told apart'


def test_place_look_alike_far_away_is_not_the_load():
    ok, detail = place(lifted(BOWL + (0.3, 0, 0.01)), [BOWL_SEEN])
    assert ok and detail.endswith('inside it (the blue block 30 cm away is another one)')


def test_place_not_seen_without_the_destination_fails():
    ok, detail = place(None, [])
    assert not ok
    assert detail == 'blue block not seen after release over green bowl, nor green bowl ' \
                     'where it was'
    ok, _ = place(None, [lifted(BOWL + (0.2, 0, 0), (0.11, 0.11, 0.02))])  # it moved
    assert not ok


def test_place_still_held_fails():
    assert place(None, [BOWL_SEEN], holding=True) == (False, 'blue block still held')
    assert place(lifted(BOWL), [BOWL_SEEN], holding=True)[0] is False


def _bowl_seen_inside() -> LiftedTarget:
    """Return BOWL as lifted before the carry, with the points of its inside (a 2 cm ring)."""
    ring = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    inside = np.c_[BOWL[0] + 0.02 * np.cos(ring), BOWL[1] + 0.02 * np.sin(ring),
                   np.full(200, 0.005)]
    return LiftedTarget(np.zeros(3), BOWL, np.array([0.11, 0.11, 0.02]), 0.6, (0.0, 0.0), 100,
                        0.02, BOWL, inside)


def _probe(load_height: float, gripper: float = 0.0):
    """
    Return the depth of a camera 0.7 m above the table looking down at BOWL's footprint.

    `gripper`: the height of a gripper retreating over the bowl's centre (0: none).
    """
    from clip_ros.policy.lifting import Extrinsic
    from clip_ros.policy.perceive import DepthProbe
    size, f = 120, 200.0
    K = np.array([[f, 0.0, size / 2 - 0.5], [0.0, f, size / 2 - 0.5], [0.0, 0.0, 1.0]])
    extrinsic = Extrinsic(np.diag([1.0, -1.0, -1.0]), np.array([BOWL[0], BOWL[1], 0.7]))
    rows, cols = np.mgrid[:size, :size]
    x = (cols - K[0, 2]) * 0.7 / f  # the table plane, to first order: 0.7 m away
    y = -(rows - K[1, 2]) * 0.7 / f
    height = np.where(np.hypot(x, y) <= 0.05, 0.005, 0.0)  # the bowl's inside
    height = np.where(np.hypot(x, y) <= 0.02, load_height, height)  # a load inside it
    if gripper:
        height = np.where(np.hypot(x, y) <= 0.015, gripper, height)
    return DepthProbe((0.7 - height).astype(np.float32), K, extrinsic, (0.05, 5.0))


def test_place_unseen_with_the_destination_unseen_goes_by_the_depth_over_it():
    bowl = _bowl_seen_inside()
    args = ('blue block', None, 'green bowl', bowl, CONFIG, False, [])
    ok, detail = check_place(*args, _probe(0.045))
    assert ok and detail == ('blue block not seen after release over green bowl, but the '
                             'depth over it stands 4 cm higher than before')
    ok, detail = check_place(*args, _probe(0.005))  # the bowl as it was: nothing in it
    assert not ok and 'nor green bowl where it was' in detail
    assert not check_place(*args, None)[0]  # no depth: no such evidence


def test_place_detection_at_the_open_gripper_is_the_gripper_not_the_load():
    above = BOWL + (0.0, 0.0, 0.22)  # the gripper after the release, grounded as the load
    look = Verification('place', 'blue block', 'green bowl', BOWL_SEEN, 0.0)
    seen = {'target': [lifted(above)], 'destination': [BOWL_SEEN]}
    for k in range(3):
        verdict = look.look(1.0 + k, seen, above, False)
    assert verdict == (True, 'blue block not seen after release over green bowl: inside it '
                             '(3 of 3 views)')
    far = Verification('place', 'blue block', 'green bowl', BOWL_SEEN, 0.0)
    for k in range(3):  # with the gripper elsewhere, the same detection is the load, too high
        verdict = far.look(1.0 + k, seen, above + (0.3, 0.0, 0.0), False)
    assert not verdict[0] and 'above green bowl, not resting on it' in verdict[1]


def test_place_unseen_with_the_destination_seen_needs_the_depth_to_rise_when_known():
    bowl = _bowl_seen_inside()
    args = ('blue block', None, 'green bowl', bowl, CONFIG, False, [bowl])
    assert check_place(*args, _probe(0.045)) == (
        True, 'blue block not seen after release over green bowl: inside it')
    ok, detail = check_place(*args, _probe(0.005))  # it fell beside the bowl, out of sight
    assert not ok and detail == ('blue block not seen after release over green bowl, and the '
                                 'depth over it did not rise (+0.0 cm)')
    assert check_place(*args, None)[0]  # without depth the destination's word stands


def test_place_unseen_the_gripper_over_the_destination_is_not_a_load():
    bowl = _bowl_seen_inside()
    empty = _probe(0.005)  # the depth the bowl was seen in before the carry
    for seen, before in itertools.product(([], [bowl]), (None, empty)):
        args = ('blue block', None, 'green bowl', bowl, CONFIG, False, seen)
        # The empty gripper 20 cm over an empty bowl: the depth rose under it, but higher
        # than a 4 cm load could: not a place.
        ok, detail = check_place(*args, _probe(0.005, gripper=0.2), 0.04, before)
        assert not ok and 'green bowl' in detail, detail
        assert not check_place(*args, _probe(0.005, gripper=0.2), probe_before=before)[0]
        # The load in the bowl under the same gripper still counts.
        ok, detail = check_place(*args, _probe(0.045, gripper=0.2), 0.04, before)
        assert ok, detail


def test_place_unseen_compares_the_footprint_with_its_depth_before_the_carry():
    # Before the carry the destination's own lifted points may be few or a rim: the depth it
    # was seen in shows the whole footprint, cell by cell.
    rim = np.c_[BOWL[0] + 0.05 * np.cos(np.linspace(0, 6.2, 200)),
                BOWL[1] + 0.05 * np.sin(np.linspace(0, 6.2, 200)), np.full(200, 0.02)]
    bowl = LiftedTarget(np.zeros(3), BOWL, np.array([0.11, 0.11, 0.02]), 0.6, (0.0, 0.0), 100,
                        0.02, BOWL, rim)
    args = ('blue block', None, 'green bowl', bowl, CONFIG, False, [])
    ok, detail = check_place(*args, _probe(0.045), 0.04, _probe(0.005))
    assert ok and 'stands 4 cm higher than before' in detail, detail
    ok, detail = check_place(*args, _probe(0.005), 0.04, _probe(0.005))
    assert not ok and 'nor green bowl where it was' in detail, detail


def test_place_reads_the_bottom_from_the_top_when_the_lower_side_is_hidden():
    # An 8.4 cm cylinder on a 4.7 cm block, its lower 3 cm of side out of its mask (as seen
    # in a closed-loop place): the points' box starts 3.2 cm above the block's top.
    block = lifted((0.23, -0.13, 0.0235), (0.06, 0.06, 0.047))
    seen = lifted((0.23, -0.13, 0.106), (0.04, 0.04, 0.054))  # top 0.133

    def check(height, target=seen):
        return check_place('orange cylinder', target, 'purple block', block, CONFIG, False,
                           [block], None, height)
    ok, detail = check(None)
    assert not ok and detail == 'orange cylinder 3 cm above purple block, not resting on it'
    assert check(0.084) == (True, 'orange cylinder on purple block (0 cm from its centre)')
    # Its top 6 cm higher than the height allows: above, whatever the height says.
    assert not check(0.084, lifted((0.23, -0.13, 0.164), (0.04, 0.04, 0.054)))[0]
    # An underestimated height never passes what the points' box refuses.
    assert not check(0.0)[0]


def test_the_tracker_keeps_the_targets_height_for_the_look_after_a_place():
    from clip_ros.policy.command import parse_command
    from clip_ros.policy.geometric import Observation, TargetTracker

    tracker = TargetTracker()
    cylinder = lifted((0.23, -0.13, 0.042), (0.04, 0.04, 0.084))
    obs = Observation(0.0, np.array([0.0, 0.0, 0.3]), 0.04, cylinder.centre, BOWL, False,
                      seen={'target': [cylinder], 'destination': [BOWL_SEEN]})
    tracker.update(obs)
    look = tracker.verification('place', parse_command('put the orange cylinder in the green '
                                                       'bowl'), 1.0, CONFIG)
    assert look.target_height == pytest.approx(0.084)
    assert TargetTracker().verification('place', parse_command(
        'put the orange cylinder in the green bowl'), 1.0, CONFIG).target_height is None
