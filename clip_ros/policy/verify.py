"""
Verify after acting: check that what the camera shows matches what the command asked for.

After a pick the target must be held above the table (its lifted bottom at least `held_height`
above the table top, its centre near the grasp point); after a place it must rest on or in the
destination (its centre within the destination's footprint, the bounding circle of the
destination's lifted box as seen before the carry, and its bottom not hanging above the
destination's top). Each view considers every detection of the target's phrase that stands
above the table: a look-alike elsewhere must not hide the real target. The policy looks several
times and goes by the majority of the views (`Verification`), so one flickering detection
neither confirms nor refutes the outcome. Every
policy (geometric, learned) and so both vla_policy_node and the episode runner use this check.
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
    settle: float = 0.3           # look only this long after the motion ended (fresh frames)
    views: int = 3                # decide on this many perception sets
    timeout: float = 3.0          # decide on what was seen by then; nothing seen: failed


def bottom(lifted: LiftedTarget) -> float:
    """Return the base-frame z of the lowest points of a lifted object (5th percentile)."""
    return float(lifted.centre[2] - lifted.size[2] / 2)


def footprint_radius(lifted: LiftedTarget) -> float:
    """Return the radius of the bounding circle of a lifted object's footprint box (m)."""
    return float(np.hypot(lifted.size[0], lifted.size[1]) / 2)


def _cm(metres: float) -> str:
    return f'{100 * metres:.0f} cm'


def check_pick(name: str, target: LiftedTarget | None, ee_position,
               config: VerifyConfig) -> tuple:
    """Return (held, what was seen) for a picked `target` (None: not seen this view)."""
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


def check_place(name: str, target: LiftedTarget | None, destination_name: str,
                destination: LiftedTarget | None, config: VerifyConfig,
                holding: bool | None = None) -> tuple:
    """Return (resting on the destination, what was seen) for a placed `target`."""
    if holding:
        return False, f'{name} still held'
    if destination is None:
        return False, f'{destination_name} was never seen'
    if target is None:
        return False, f'{name} not seen after the place'
    radius = footprint_radius(destination)
    gap = float(np.linalg.norm(target.centre[:2] - destination.centre[:2]))
    if gap > radius:
        return False, (f'{name} {_cm(gap - radius)} beside {destination_name} (centres '
                       f'{_cm(gap)} apart, footprint radius {_cm(radius)})')
    above = bottom(target) - destination.top
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

    def look(self, now: float, seen: dict | None, ee_position, holding=None):
        """Add this tick's view (`seen`: role -> [LiftedTarget], None: no perception set)."""
        config, waited = self.config, now - self.start
        if seen is not None and waited >= config.settle:
            checks = [self._check(view, ee_position, holding)
                      for view in seen.get('target') or [None]]
            # Any detection of the target showing the outcome confirms it; else the best
            # detection's story.
            self.seen.append(next((c for c in checks if c[0]), checks[0]))
        if len(self.seen) < config.views and waited < config.timeout:
            return None
        return self.verdict()

    def _check(self, target, ee_position, holding) -> tuple:
        if self.verb == 'pick':
            return check_pick(self.target, target, ee_position, self.config)
        return check_place(self.target, target, self.destination, self.destination_view,
                           self.config, holding)

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
