"""
Verify after acting: check that what the robot senses matches what the command asked for.

Evidence, as a real robot has it: the grasp sensor (`holding`, the fingers stopped on an object
instead of closing fully; None where no such reading reaches the policy) and the camera. The
bundled model does not ground objects held in the gripper, inside bowls or stacked, so "not
seen" is no evidence of failure where the grasp sensor or the destination explains it.

Pick: with a grasp sensor, the gripper closed on something is the primary evidence and the
camera may only veto (the target seen still lying on the table where it was grasped); an empty
closed gripper fails. Without one, the target must be seen held above the table (its lifted
bottom at least `held_height` above the table top, its centre near the grasp point).
Place: the target must rest on or in the destination (its centre within the destination's
footprint, the circle in the destination's lifted box as seen before the carry, and
its bottom not hanging above the destination's top); seen beside it fails; still held fails;
not seen at all succeeds when the depth over the destination's footprint now stands at least
`min_rise` above what it showed before the carry (in a bowl or on a stack the bundled model
grounds neither the load nor, sometimes, the destination); without depth to tell, a load not
seen while the destination is still seen where it was succeeds. A detection farther than
`beside_distance` from the footprint is another object of that name, not the released load;
one at the open gripper after the release (`gripper_radius`) is the gripper itself.
Each view considers every detection of the target's phrase that stands above the table: a
look-alike elsewhere must not hide the real target. The policy looks several times and goes by
the majority of the views (`Verification`), so one flickering detection neither confirms nor
refutes the outcome. Every policy (geometric, learned) and so both vla_policy_node and the
episode runner use this check.
"""
from dataclasses import dataclass, field

import numpy as np

from clip_ros.policy.lifting import LiftedTarget


@dataclass
class VerifyConfig:
    """What counts as done (metres, seconds)."""

    table_z: float = 0.0          # base-frame z of the table top
    held_height: float = 0.05     # a picked target's bottom this far above the table
    hold_distance: float = 0.08   # a held target's centre lies this close to the grasp point
    above_tolerance: float = 0.03  # a placed target's bottom at most this above the top
    beside_distance: float = 0.1  # a load that misses lands this close to the footprint
    settle: float = 0.3           # look only this long after the motion ended (fresh frames)
    views: int = 3                # decide on this many perception sets
    timeout: float = 3.0          # decide on what was seen by then; nothing seen: failed
    min_rise: float = 0.015       # the depth over a destination rose this much: a load is on it
    # A load raises the depth over its destination by at most its own height (this, when its
    # height is unknown) and above_tolerance: anything higher is the arm over it.
    max_load: float = 0.12
    # After a release the gripper retreats 10 cm: a detection this close to its axis and not
    # lower than this below its grasp point is the gripper (a released load lies 13 cm below).
    gripper_radius: float = 0.06


def bottom(lifted: LiftedTarget) -> float:
    """Return the base-frame z of the lowest points of a lifted object (5th percentile)."""
    return float(lifted.centre[2] - lifted.size[2] / 2)


def footprint_radius(lifted: LiftedTarget) -> float:
    """
    Return the radius of a lifted object's footprint circle (m): the circle in its box.

    The box is the extent of its points along the base axes: for a bowl, ball or cylinder this
    circle is the object's own, for a block turned on the table it reaches towards its corners.
    The box's bounding circle would be 1.4 times a round object's: a load 2 cm past a bowl's
    rim would count as in it.
    """
    return float(max(lifted.size[0], lifted.size[1]) / 2)


def _cm(metres: float) -> str:
    return f'{100 * metres:.0f} cm'


def _seen_held(name: str, target: LiftedTarget | None, ee_position,
               config: VerifyConfig) -> tuple:
    """Return (seen held, what the camera shows) for one view of a picked target."""
    if target is None:
        return False, f'{name} not seen after the lift'
    height = bottom(target) - config.table_z
    gap = float(np.linalg.norm(target.centre - np.asarray(ee_position, np.float64)))
    if height < config.held_height:
        where = 'on the table' if height < config.held_height / 2 else \
            f'only {_cm(height)} above the table'
        return False, f'{name} {where}, {_cm(gap)} from the gripper'
    if gap > config.hold_distance:
        return False, f'{name} {_cm(height)} above the table but {_cm(gap)} from the gripper'
    return True, f'{name} held {_cm(height)} above the table'


def check_pick(name: str, target: LiftedTarget | None, ee_position, config: VerifyConfig,
               holding: bool | None = None, grasped_at=None) -> tuple:
    """
    Return (picked, what was sensed) for one view after a pick.

    `target`: a detection of the target this view (None: not seen); `holding`: the grasp
    sensor (None: no reading, the camera decides alone); `grasped_at`: where the target was
    when grasped (None: straight below the gripper, which lifts vertically).
    """
    seen_ok, seen = _seen_held(name, target, ee_position, config)
    if holding is None:
        return seen_ok, seen
    if not holding:
        return False, f'{seen}; the gripper closed on nothing'
    if seen_ok:
        return True, f'the gripper closed on it; {seen}'
    if target is None:
        return True, f'the gripper closed on an object; {seen} (hidden in the gripper)'
    where = np.asarray(ee_position if grasped_at is None else grasped_at, np.float64)
    moved = float(np.linalg.norm(target.centre[:2] - where[:2]))
    if bottom(target) - config.table_z < config.held_height / 2 and \
            moved <= config.hold_distance:
        return False, f'{seen}, where it was grasped: the gripper holds something else'
    return True, f'the gripper closed on an object; {seen}: another {name}'


def at_gripper(point, ee_position, radius: float, below: float) -> bool:
    """Tell whether a lifted point is the gripper: within `radius` of its axis, not `below` it."""
    point, ee = np.asarray(point, np.float64), np.asarray(ee_position, np.float64)
    return bool(np.linalg.norm(point[:2] - ee[:2]) <= radius and point[2] >= ee[2] - below)


def _at_gripper(view: LiftedTarget, ee_position, config: VerifyConfig) -> bool:
    """Tell whether a detection lies on the open gripper (near its axis, not below it)."""
    return at_gripper(view.centre, ee_position, config.gripper_radius, config.gripper_radius)


def _still_there(destination: LiftedTarget, views) -> bool:
    """Tell whether one of `views` (detections now) lies on the destination's footprint."""
    radius = footprint_radius(destination)
    return any(float(np.linalg.norm(v.centre[:2] - destination.centre[:2])) <= radius
               for v in views or ())


def rise(destination: LiftedTarget, probe, max_rise: float = np.inf, before=None) -> float:
    """
    Return how much higher the depth over a destination stands now (m).

    With `before` (the perceive.DepthProbe of the set the destination was last seen in, before
    the carry) the footprint is cut into CELL-sized squares, each cell's highest point before
    and now compared, and the 90th percentile of the rises returned: a load covers a sixth or
    more of a destination's footprint, a bowl's rim the same cells before and after. Without
    it, the 90th percentile height of the points within 0.6 of the footprint radius of the
    centre, before (the destination's lifted points) and now (`probe`). Either way points more
    than `max_rise` above the destination's top are the gripper retreating over it, not a
    load, and are left out. NaN when too few points can be compared.
    """
    if probe is None:
        return float('nan')
    ceiling = destination.top + max_rise
    if before is not None:
        return _cell_rise(destination, before, probe, ceiling)
    if destination.points is None:
        return float('nan')
    radius = 0.6 * footprint_radius(destination)
    centre = destination.centre[:2]
    was = destination.points[np.linalg.norm(destination.points[:, :2] - centre, axis=1)
                             <= radius][:, 2]
    now = probe.heights(centre, radius)
    now = now[now <= ceiling]
    if len(was) < 10 or len(now) < 10:
        return float('nan')
    return float(np.percentile(now, 90) - np.percentile(was, 90))


CELL = 0.01  # m: the squares whose highest points are compared before and after a place


def _cell_rise(destination: LiftedTarget, before, probe, ceiling: float) -> float:
    centre, radius = destination.centre[:2], footprint_radius(destination)
    side = int(np.ceil(radius / CELL)) + 1  # cells per half side: keys below are unique
    tops = []
    for view in (before, probe):
        points = view.points(centre, radius)
        points = points[points[:, 2] <= ceiling]
        cells = np.floor((points[:, :2] - centre) / CELL).astype(np.int64) + side
        top = np.full((2 * side + 1) ** 2, -np.inf)
        np.maximum.at(top, cells[:, 0] * (2 * side + 1) + cells[:, 1], points[:, 2])
        tops.append(top)
    shared = np.isfinite(tops[0]) & np.isfinite(tops[1])
    if shared.sum() < 10:
        return float('nan')
    return float(np.percentile(tops[1][shared] - tops[0][shared], 90))


def check_place(name: str, target: LiftedTarget | None, destination_name: str,
                destination: LiftedTarget | None, config: VerifyConfig,
                holding: bool | None = None, destination_now=None, probe=None,
                height: float | None = None, probe_before=None) -> tuple:
    """
    Return (resting on the destination, what was sensed) for one view after a place.

    `destination`: the destination as seen before the carry; `destination_now`: its detections
    this view (None: not looked for), which explain an unseen target (in or on it); `probe`:
    this view's depth (perceive.DepthProbe), whose rise over the destination does too;
    `height`: the target's own height (its top above the table before the pick), which places
    its bottom when the lower part of its side is hidden or left out of its mask;
    `probe_before`: the depth of the set `destination` was seen in, to compare with `probe`.
    """
    if holding:
        return False, f'{name} still held'
    if destination is None:
        return False, f'{destination_name} was never seen'
    radius = footprint_radius(destination)
    gap = np.inf if target is None else \
        float(np.linalg.norm(target.centre[:2] - destination.centre[:2]))
    if gap > radius + config.beside_distance:  # not seen, or another object of that name
        other = '' if target is None else f' (the {name} {_cm(gap)} away is another one)'
        if destination_now is None:
            return False, f'{name} not seen after the place{other}'
        max_rise = (config.max_load if height is None else height) + config.above_tolerance
        risen = rise(destination, probe, max_rise, probe_before)
        if not _still_there(destination, destination_now):
            if risen >= config.min_rise:
                return True, (f'{name} not seen after release over {destination_name}, but '
                              f'the depth over it stands {_cm(risen)} higher than before{other}')
            return False, (f'{name} not seen after release over {destination_name}, nor '
                           f'{destination_name} where it was{other}')
        if risen < config.min_rise:  # NaN (no depth to tell) keeps the destination's word
            return False, (f'{name} not seen after release over {destination_name}, and the '
                           f'depth over it did not rise ({risen * 100:+.1f} cm){other}')
        inside = 'inside it' if 'bowl' in destination_name.split() else 'on it, not told apart'
        return True, f'{name} not seen after release over {destination_name}: {inside}{other}'
    if gap > radius:
        return False, (f'{name} {_cm(gap - radius)} beside {destination_name} (centres '
                       f'{_cm(gap)} apart, footprint radius {_cm(radius)})')
    above = bottom(target) - destination.top
    if height is not None:
        above = min(above, target.top - height - destination.top)
    if above > config.above_tolerance:
        return False, f'{name} {_cm(above)} above {destination_name}, not resting on it'
    return True, f'{name} on {destination_name} ({_cm(gap)} from its centre)'


@dataclass
class Verification:
    """
    The views of one look after acting and the verdict they add up to.

    Feed `look` every tick of the verify phase; it returns None until it can decide, then
    (succeeded, detail). The views start `settle` seconds after `start`; the verdict is the
    majority of the first `views` views, or of those seen by `timeout`.
    """

    verb: str
    target: str
    destination: str | None
    destination_view: LiftedTarget | None
    start: float
    config: VerifyConfig = field(default_factory=VerifyConfig)
    seen: list = field(default_factory=list)  # (passed, detail) per view
    grasped_at: np.ndarray | None = None  # the target's position when grasped, if known
    target_height: float | None = None  # its top above the table before the pick, if known
    destination_probe: object = None  # the depth destination_view was seen in, if known

    def look(self, now: float, seen: dict | None, ee_position, holding=None, probe=None):
        """
        Add this tick's view (`seen`: role -> [LiftedTarget], None: no perception set).

        `probe`: that perception set's depth (perceive.DepthProbe), if any.
        """
        config, waited = self.config, now - self.start
        if seen is not None and waited >= config.settle:
            views = seen.get('target') or []
            if self.verb == 'place' and not holding:
                # After the release, a 'target' at the open gripper is the gripper itself.
                views = [v for v in views if not _at_gripper(v, ee_position, config)]
            checks = [self._check(view, seen, ee_position, holding, probe)
                      for view in views or [None]]
            if self.verb == 'pick' and holding is not None:
                # The grasp sensor decides; a detection left where it was grasped vetoes.
                self.seen.append(next((c for c in checks if not c[0]), checks[0]))
            else:
                # Any detection of the target showing the outcome confirms it; else the best
                # detection's story.
                self.seen.append(next((c for c in checks if c[0]), checks[0]))
        if len(self.seen) < config.views and waited < config.timeout:
            return None
        return self.verdict()

    def _check(self, target, seen, ee_position, holding, probe=None) -> tuple:
        if self.verb == 'pick':
            return check_pick(self.target, target, ee_position, self.config, holding,
                              self.grasped_at)
        return check_place(self.target, target, self.destination, self.destination_view,
                           self.config, holding, seen.get('destination') or [], probe,
                           self.target_height, self.destination_probe)

    def verdict(self) -> tuple:
        """Return (succeeded, detail) from the views so far (none: failed)."""
        if not self.seen:
            return False, f'{self.target} not seen after the {self.verb}'
        passed = [detail for ok, detail in self.seen if ok]
        failed = [detail for ok, detail in self.seen if not ok]
        votes = f'{len(passed)} of {len(self.seen)} views'
        if len(passed) > len(failed):
            return True, f'{passed[-1]} ({votes})'
        return False, f'{failed[-1]} ({votes} confirm the {self.verb})'
