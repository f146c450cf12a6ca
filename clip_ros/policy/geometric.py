"""
A geometric manipulation policy: verb + grounded 3D target -> end-effector goals and gripper.

The policy is a small state machine stepped at a fixed rate. Each verb expands into phases
(move to a point relative to the target or destination, set the gripper); a phase ends when
the end effector reaches its goal or the gripper has had time to act. Safety: goals are clipped
to the workspace box, every published waypoint is at most ``max_speed / rate`` from the end
effector, a target unseen for ``lost_timeout`` seconds aborts the command (until the end
effector comes within ``near_distance`` of it: from there the estimate is frozen, as the
gripper occludes the object), and a command without a known action verb never moves the arm.
A target never seen within ``acquire_timeout`` rejects the command ("not found: <phrase>")
without motion. After a pick or place the policy looks again (``verify``, policy/verify.py)
and reports ``succeeded`` only when the target is held above the table or rests on the
destination, else ``failed`` with what it saw.
"""
from dataclasses import dataclass, field

import numpy as np

from clip_ros.policy.command import Command, quote
from clip_ros.policy.verify import at_gripper, Verification, VerifyConfig

ACTION_VERBS = ('pick', 'place', 'push', 'point', 'go_to', 'find')
# A place ends with the load over the destination's centre: on it or in it. Anything else
# ('next to', 'behind', 'to the left of') would be carried out as 'on', so it is refused.
PLACE_RELATIONS = ('on', 'onto', 'on top of', 'in', 'into', 'inside', 'inside of', 'to', 'at',
                   'above', 'over')
# Status states: idle -> waiting (no target yet) -> executing -> succeeded | failed | aborted;
# rejected when the command cannot be executed at all (no verb, target not found); failed
# when the motion ran but the look afterwards does not show the outcome.
STATES = ('idle', 'waiting', 'executing', 'succeeded', 'failed', 'aborted', 'rejected')
FINAL_STATES = ('succeeded', 'failed', 'aborted', 'rejected')
OPEN, CLOSED = 0.0, 1.0
# (right, away from the camera, up) as the camera sees the table: PolicyConfig.view turns them
# into the base frame (the simulator's world frame is x right, y away from its camera, z up).
DIRECTIONS = {
    'left': (-1.0, 0.0, 0.0), 'right': (1.0, 0.0, 0.0), 'forward': (0.0, 1.0, 0.0),
    'away': (0.0, 1.0, 0.0), 'backward': (0.0, -1.0, 0.0), 'closer': (0.0, -1.0, 0.0),
    'up': (0.0, 0.0, 1.0), 'down': (0.0, 0.0, -1.0),
}


@dataclass
class PolicyConfig:
    """Geometry, timing and safety limits of the geometric policy (metres, seconds)."""

    rate: float = 15.0               # control ticks per second
    max_speed: float = 0.3           # end-effector speed limit (m/s)
    workspace_min: tuple = (-0.55, -0.45, 0.0)   # base-frame box the goals stay in
    workspace_max: tuple = (0.55, 0.45, 0.6)
    approach_height: float = 0.10    # pre-grasp / pre-place height above the point
    top_clearance: float = 0.03      # ... and at least this above the target's top (tall objects)
    # The camera's right and forward on the table, base-frame xy (lifting.table_view): a push
    # 'left' goes left in the image, whatever the base frame's axes.
    view: tuple = ((1.0, 0.0), (0.0, 1.0))
    lift_height: float = 0.15        # how far a grasped object is raised
    place_clearance: float = 0.03    # the load's bottom this far above the destination point
    hover_height: float = 0.10       # point / go_to stop this far above the target
    push_distance: float = 0.10      # push stroke length
    push_offset: float = 0.06        # start this far behind the target
    min_grasp_height: float = 0.01   # never descend closer than this to the table top (table_z)
    table_z: float = 0.0             # base-frame z of the table top (what a grasped load rests on)
    tolerance: float = 0.01          # a goal is reached within this distance
    near_distance: float = 0.20      # freeze the target estimate this close (occlusion)
    gripper_time: float = 0.3        # wait after a gripper command
    lost_timeout: float = 1.0        # abort when the target is unseen this long (s)
    acquire_timeout: float = 3.0     # abort when the target is never seen this long (s)
    time_limit: float = 30.0         # abort a command running longer than this (s)
    home: tuple = (0.0, 0.12, 0.45)  # where 'go home' / retreat ends
    verify: VerifyConfig | None = field(default_factory=VerifyConfig)  # None: no look after

    def __post_init__(self):
        if not self.rate > 0 or not self.max_speed > 0:
            raise ValueError(f'rate and max_speed must be > 0, got {self.rate}, '
                             f'{self.max_speed}')
        low, high = np.asarray(self.workspace_min), np.asarray(self.workspace_max)
        if low.shape != (3,) or high.shape != (3,) or not np.all(low < high):
            raise ValueError(f'workspace_min {self.workspace_min} must be below workspace_max '
                             f'{self.workspace_max} on every axis')
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            # An infinite corner would switch the workspace limit off.
            raise ValueError(f'workspace_min {self.workspace_min} and workspace_max '
                             f'{self.workspace_max} must be finite')


@dataclass
class Observation:
    """What the policy sees at one tick (base frame, metres)."""

    time: float                             # seconds, any monotonic origin
    ee_position: np.ndarray                 # [3] grasp point
    gripper: float = OPEN                   # 0 open .. 1 closed (measured or last command)
    target: np.ndarray | None = None        # lifted target this tick; None when not seen
    destination: np.ndarray | None = None   # lifted destination this tick; None when not seen
    holding: bool | None = None             # grasp sensor, None when unknown
    image: np.ndarray | None = None         # rgb uint8 [H, W, 3] for learned policies
    # role -> [LiftedTarget] of a perception set that arrived this tick: every candidate of
    # the role's phrase standing above the table, best first (Perception.seen); None when no
    # set arrived. The look after acting (verify) reads it.
    seen: dict | None = None
    undetected: tuple = ()  # roles that set had no detection for at all (grounding: not found)
    probe: object = None    # that set's perceive.DepthProbe: heights for the look after acting


@dataclass
class Action:
    """What to command at one tick."""

    state: str                            # one of STATES
    phase: str = ''                       # current phase name ('' when not executing)
    detail: str = ''                      # human-readable reason or progress
    goal: np.ndarray | None = None        # [3] next waypoint; None: hold still
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(3))  # [3] m/s servo twist
    gripper: float | None = None          # 0 open .. 1 closed; None: unchanged

    @property
    def moving(self) -> bool:
        """Return whether this action moves the arm."""
        return self.goal is not None and bool(np.any(self.velocity))


@dataclass
class Phase:
    """One step of a plan: move relative to an anchor, or set the gripper."""

    name: str
    anchor: str = ''            # 'target', 'destination', 'ee', 'home' or '' (gripper phase)
    offset: tuple = (0.0, 0.0, 0.0)
    gripper: float | None = None
    track: bool = False         # keep updating the target estimate during this phase


def plan(command: Command, config: PolicyConfig) -> list:
    """Return the phases of `command`'s verb (raises ValueError for verbs without motion)."""
    up, lift = config.approach_height, config.lift_height
    # The target is tracked until the descent: near it the fingers occlude the object.
    grasp = [Phase('pre_grasp', 'target', (0, 0, up), track=True), Phase('open', gripper=OPEN),
             Phase('descend', 'target'), Phase('close', gripper=CLOSED),
             Phase('lift', 'ee', (0, 0, lift))]
    verify = [Phase('verify')] if config.verify is not None else []
    if command.verb == 'pick':
        return grasp + verify
    if command.verb == 'place':
        drop = config.place_clearance
        return grasp + [Phase('carry', 'destination', (0, 0, up + drop)),
                        Phase('lower', 'destination', (0, 0, drop)),
                        Phase('release', gripper=OPEN),
                        Phase('retreat', 'ee', (0, 0, up))] + verify
    if command.verb == 'push':
        right, away, rise = DIRECTIONS.get(command.direction or 'forward', DIRECTIONS['forward'])
        (rx, ry), (fx, fy) = config.view
        d = np.array([right * rx + away * fx, right * ry + away * fy, rise])
        start, end = -d * config.push_offset, d * config.push_distance
        return [Phase('close', gripper=CLOSED),
                Phase('pre_push', 'target', start + (0, 0, up), track=True),
                Phase('approach', 'target', start), Phase('push', 'target', end),
                Phase('retreat', 'ee', (0, 0, up))]
    if command.verb in ('point', 'go_to'):
        return [Phase('hover', 'target', (0, 0, config.hover_height), track=True)]
    if command.verb == 'find':
        return []
    raise ValueError(f'no action for verb {command.verb!r}; known: {", ".join(ACTION_VERBS)}')


# How far under the grasp point a destination sighting on the gripper's axis may lie and
# still be the arm: a real destination under a carried load lies a clearance and a load lower.
ARM_BELOW = 0.01


def occludes(ee_position, target, near_distance: float) -> bool:
    """Tell whether the end effector is close enough to `target` to hide it (None: no)."""
    return target is not None and bool(
        np.linalg.norm(np.asarray(ee_position) - target) <= near_distance)


class TargetTracker:
    """
    The last known target and destination, as every policy (and its demonstrations) sees them.

    Near the target the gripper hides part of it and grounding may prefer a similar object or
    flicker between parts; objects do not move until grasped, so once the end effector comes
    within `near_distance` the estimate made from the unoccluded view is kept. A held load
    occludes the destination, so callers stop tracking it once the carry starts.
    """

    def __init__(self, near_distance: float = PolicyConfig.near_distance):
        self.near_distance = near_distance
        self.target = self.destination = None
        self.target_seen = self.destination_seen = None
        self.destination_view = None  # the destination's LiftedTarget with the latest point
        self.destination_probe = None  # ... and the depth it was seen in
        self.target_view = None  # ... and the target's, before the gripper came near
        self.frozen = False
        self.not_found = False  # a perception set came without any detection of the target
        self.destination_not_found = False  # ... or of the destination

    def tracking(self, phase_tracks: bool = True) -> bool:
        """Return whether the target estimate is still updated (and must stay in view)."""
        return self.target is None or (phase_tracks and not self.frozen)

    def update(self, obs: Observation, track_target: bool = None,
               track_destination: bool = None) -> None:
        """Keep this tick's sightings; by default both are tracked until something is held."""
        track_target = not obs.holding if track_target is None else track_target
        track_destination = not obs.holding if track_destination is None else track_destination
        self.frozen = self.frozen or occludes(obs.ee_position, self.target, self.near_distance)
        if obs.target is not None and self.tracking(track_target):
            self.target, self.target_seen = np.asarray(obs.target, np.float64), obs.time
            self.target_view = ((obs.seen or {}).get('target') or [self.target_view])[0]
        # The arm above the grasp point can be grounded as the destination (a grey arm passes
        # for a white cylinder): a destination there is the gripper, never the place to go.
        if obs.destination is not None and not at_gripper(
                obs.destination, obs.ee_position, VerifyConfig.gripper_radius, ARM_BELOW) and (
                self.destination is None or track_destination):
            self.destination = np.asarray(obs.destination, np.float64)
            self.destination_seen = obs.time
            view = ((obs.seen or {}).get('destination') or [None])[0]
            if view is not None:
                self.destination_view, self.destination_probe = view, obs.probe
        if self.target is None and 'target' in obs.undetected:
            self.not_found = True
        if self.destination is None and 'destination' in obs.undetected:
            self.destination_not_found = True

    def verification(self, verb: str, command: Command, now: float,
                     config: 'VerifyConfig') -> Verification:
        """Return the look after acting at `now` for `command` (its target, destination)."""
        # Its height on the table: after a place its lower side can be hidden, its top not.
        height = None if self.target_view is None else self.target_view.top - config.table_z
        return Verification(verb, command.targets[0], command.destination,
                            self.destination_view, now, config, grasped_at=self.target,
                            target_height=height, destination_probe=self.destination_probe)


def validate_command(command: Command) -> str:
    """Return '' when `command` can be executed, else the reason it cannot."""
    if command.negation:
        return (f'{quote(command.text)} says what not to do ({command.negation!r}); no motion: '
                f'name only the object to act on')
    if command.verb not in ACTION_VERBS:
        verb = 'no known verb' if command.verb is None else f'verb {command.verb!r}'
        return (f'{verb} in {quote(command.text)}; no motion (known verbs: '
                f'{", ".join(ACTION_VERBS)})')
    text = quote(command.text)
    if not command.targets:
        return f'{text} names no target; no motion'
    if len(command.targets) > 1:
        return (f'{text} names {len(command.targets)} objects '
                f'({", ".join(map(repr, command.targets))}); one object a command; no motion')
    if command.verb == 'place' and not command.destination:
        return f'{text} names no destination; no motion'
    if command.verb == 'place' and (command.direction or command.relation not in PLACE_RELATIONS):
        return (f'{text} puts the object {command.relation!r} {command.destination!r}; only on '
                f'or in a destination can be done; no motion')
    if command.verb == 'push' and command.destination:
        return (f'{text} pushes towards {command.destination!r}; a push goes in a direction '
                f'(left, right, forward, backward), not to an object; no motion')
    return ''


class GeometricPolicy:
    """
    Execute one command at a time: ``start(command, now)``, then ``step(observation)`` per tick.

    Parameters
    ----------
    config : PolicyConfig
        Limits and geometry; defaults when None.

    """

    def __init__(self, config: PolicyConfig = None):
        self.config = config or PolicyConfig()
        self._low = np.asarray(self.config.workspace_min, np.float64)
        self._high = np.asarray(self.config.workspace_max, np.float64)
        self.command: Command | None = None
        self._last = Action('idle', detail='no command')

    @property
    def status(self) -> Action:
        """Return the last action (its state says where the current command stands)."""
        return self._last

    def start(self, command: Command, now: float) -> Action:
        """Begin `command`; an unknown verb or missing target is rejected without motion."""
        self.command = command
        reason = validate_command(command)
        if reason:
            self._phases = []
            return self._finish('rejected', reason)
        self._phases = plan(command, self.config)
        self._last_track = max((i for i, p in enumerate(self._phases) if p.track), default=-1)
        self._index, self._started, self._phase_start = 0, now, now
        self._tracker = TargetTracker(self.config.near_distance)
        self._anchor_ee, self._load, self._verification = None, 0.0, None
        self._last = Action('waiting', detail=f'looking for {command.targets[0]!r}')
        return self._last

    def cancel(self, reason: str) -> Action:
        """Abort the current command (no further motion)."""
        if self._last.state in ('waiting', 'executing'):
            return self._finish('aborted', reason)
        return self._last

    def _finish(self, state: str, detail: str, phase: str = '') -> Action:
        self._last = Action(state, phase, detail)
        return self._last

    def step(self, obs: Observation) -> Action:
        """Return the action for this tick; a finished command returns its final status."""
        if self._last.state not in ('waiting', 'executing'):
            return self._finish(self._last.state, self._last.detail, self._last.phase)
        self._observe(obs)
        reason = self._safety(obs)
        if reason:
            return self._finish(*self._stopped(reason), self._phase_name())
        if self._missing():
            return self._last  # still waiting, within acquire_timeout
        if self._index >= len(self._phases):
            return self._finish('succeeded', self._success_detail())
        action = self._run_phase(self._phases[self._index], obs)
        self._last = action
        return action

    def _stopped(self, reason: str) -> tuple:
        """
        Return the final (state, detail) for a limit: rejected when never found, else aborted.

        Rejected only when grounding answered without any detection of the target (nothing has
        moved yet); missing inputs or unusable depth abort with their reason.
        """
        tracker, missing = self._tracker, self._missing()
        if missing and (tracker.not_found if missing == 'target' else
                        tracker.destination_not_found):
            name = self.command.targets[0] if missing == 'target' else self.command.destination
            return 'rejected', (f'not found: {name} (no detection within '
                                f'{self.config.acquire_timeout:g} s)')
        return 'aborted', reason

    def _missing(self) -> str:
        """
        Return the role not yet seen before the first motion ('' once all are).

        A place waits for its destination too, so an absent destination stops the command
        before anything has moved.
        """
        if self._tracker.target is None:
            return 'target'
        if (self.command.verb == 'place' and self._tracker.destination is None
                and not self._moved()):
            return 'destination'
        return ''

    def _moved(self) -> bool:
        """Return whether the command has gone past its first phase."""
        return self._index > 0

    def _phase_name(self) -> str:
        phases = getattr(self, '_phases', [])
        return phases[self._index].name if self._index < len(phases) else ''

    def _tracking(self) -> bool:
        """Return whether the target estimate is still updated (and must stay in view)."""
        return self._tracker.tracking(self._index <= self._last_track)

    def _observe(self, obs: Observation) -> None:
        # The destination is latched once the carry starts: the load then occludes it.
        carrying = any(p.anchor == 'destination' for p in self._phases[:self._index + 1])
        self._tracker.update(obs, self._index <= self._last_track, not carrying)

    def _limits(self, now: float) -> str:
        """Return why the command must stop now ('' when it may go on): every policy's checks."""
        cfg, tracker = self.config, self._tracker
        if now - self._started > cfg.time_limit:
            return f'time limit of {cfg.time_limit:g} s exceeded'
        missing = self._missing()
        if missing:
            if now - self._started > cfg.acquire_timeout:
                name = self.command.targets[0] if missing == 'target' else \
                    self.command.destination
                return f'{missing} {name!r} not found within {cfg.acquire_timeout:g} s'
            return ''
        if self._tracking() and now - tracker.target_seen > cfg.lost_timeout:
            return f'target lost for {now - tracker.target_seen:.2f} s (> {cfg.lost_timeout:g} s)'
        if self._tracking() and not self._inside(tracker.target):
            return f'target at {np.round(tracker.target, 3).tolist()} is outside the workspace'
        return ''

    def _safety(self, obs: Observation) -> str:
        reason = self._limits(obs.time)
        phase = self._phases[self._index] if self._index < len(self._phases) else None
        if (not reason and phase is not None and phase.anchor == 'destination'
                and self._tracker.destination is None
                and obs.time - self._phase_start > self.config.acquire_timeout):
            return f'destination {self.command.destination!r} not found'
        return reason

    def _inside(self, point) -> bool:
        return bool(np.all(point >= self._low) and np.all(point <= self._high))

    def _success_detail(self) -> str:
        if self.command.verb == 'find':
            where = np.round(self._tracker.target, 3).tolist()
            return f'found {self.command.targets[0]!r} at {where}'
        return f'{self.command.verb} {self.command.targets[0]!r} done'

    def _advance(self, now: float) -> None:
        self._index += 1
        self._phase_start, self._anchor_ee = now, None

    def _run_phase(self, phase: Phase, obs: Observation) -> Action:
        cfg, now = self.config, obs.time
        if phase.name == 'verify':
            return self._verify(obs)
        if phase.gripper is not None:
            if now - self._phase_start >= cfg.gripper_time:
                if phase.name == 'close' and obs.holding is False and self._needs_grasp():
                    return self._finish('aborted', 'grasp missed: nothing between the fingers',
                                        phase.name)
                if phase.name == 'close':  # the load hangs this far below the grasp point
                    self._load = max(0.0, float(obs.ee_position[2]) - cfg.table_z)
                self._advance(now)
                if self._index >= len(self._phases):
                    return self._finish('succeeded', self._success_detail(), phase.name)
            return Action('executing', phase.name, 'gripper', None, np.zeros(3), phase.gripper)
        goal = self._goal_of(phase, obs)
        if goal is None:
            return Action('executing', phase.name, f'waiting for the {phase.anchor}')
        ee = np.asarray(obs.ee_position, np.float64)
        if np.linalg.norm(goal - ee) <= cfg.tolerance:
            self._advance(now)
            if self._index >= len(self._phases):
                return self._finish('succeeded', self._success_detail(), phase.name)
            return Action('executing', phase.name, 'reached', ee, np.zeros(3))
        return self._servo(phase, ee, goal)

    def _verify(self, obs: Observation) -> Action:
        """Look again after the motion; finish succeeded or failed with what was seen."""
        if self._verification is None:
            self._verification = self._tracker.verification(
                self.command.verb, self.command, obs.time, self.config.verify)
        verdict = self._verification.look(obs.time, obs.seen, obs.ee_position, obs.holding,
                                          obs.probe)
        if verdict is None:
            return Action('executing', 'verify', 'looking again', None, np.zeros(3))
        done, seen = verdict
        if done:
            return self._finish('succeeded', f'{self._success_detail()}: {seen}', 'verify')
        return self._finish('failed', seen, 'verify')

    def _needs_grasp(self) -> bool:
        return self.command.verb in ('pick', 'place')

    def _goal_of(self, phase: Phase, obs: Observation) -> np.ndarray | None:
        if phase.anchor == 'ee':
            if self._anchor_ee is None:
                self._anchor_ee = np.asarray(obs.ee_position, np.float64).copy()
            base = self._anchor_ee
        elif phase.anchor == 'home':
            base = np.asarray(self.config.home, np.float64)
        else:
            tracker = self._tracker
            base = tracker.target if phase.anchor == 'target' else tracker.destination
            if base is None:
                return None
        goal = base + np.asarray(phase.offset, np.float64)
        if phase.anchor == 'destination':  # the load's bottom, not the grasp point, clears it
            goal[2] += self._load
        if phase.anchor == 'target':  # the table, not the base frame's origin, is the floor
            goal[2] = max(goal[2], self.config.table_z + self.config.min_grasp_height)
        view = self._tracker.target_view
        if phase.name in ('pre_grasp', 'pre_push') and view is not None:
            # Coming down from above: over a tall object's top, not into it.
            goal[2] = max(goal[2], view.top + self.config.top_clearance)
        return np.clip(goal, self._low, self._high)

    def _servo(self, phase: Phase, ee: np.ndarray, goal: np.ndarray) -> Action:
        cfg = self.config
        delta = goal - ee
        distance = float(np.linalg.norm(delta))
        step = min(distance, cfg.max_speed / cfg.rate)
        waypoint = np.clip(ee + delta * (step / distance), self._low, self._high)
        velocity = delta / distance * min(cfg.max_speed, distance * cfg.rate)
        return Action('executing', phase.name, f'{distance:.3f} m to go', waypoint, velocity)
