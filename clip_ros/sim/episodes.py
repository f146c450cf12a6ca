"""
Closed-loop episodes in the MuJoCo tabletop: perceive -> lift -> policy -> end effector.

An episode resets a seeded scene, parses a command, and at each control tick renders the
camera, grounds the target (and destination) phrase, lifts the mask to the base frame with the
rendered depth, steps the policy, and executes its goal and gripper command on the kinematic
gripper. The episode runs until the policy ends the command (or the time limit); then the
simulator judges it. Success: pick = the target held and lifted >= 5 cm; place = the target
released and resting on the destination (inside a bowl, or on top of a block, ball or
cylinder: its centre within the destination's footprint, see Simulator.resting_on);
point/go_to = the grasp point above the target's top, within 3 cm of its centre across; absent
(a command naming an object that is not in the scene) = no motion and a rejected "not found"
status. Other verbs (push) cannot be judged: objects move only while grasped. `agrees` says
whether the policy's own report (succeeded after its look again, policy/verify.py) matches that
judgement. Per-stage wall-clock latencies are recorded.
"""
from dataclasses import dataclass, field
import time

import numpy as np

from clip_ros.perception.table_depth import DepthView
from clip_ros.policy.command import parse_command
from clip_ros.policy.geometric import CLOSED, FINAL_STATES, Observation, OPEN
from clip_ros.policy.lifting import Extrinsic
from clip_ros.policy.perceive import Candidate, LiftConfig, perceive, roles
from clip_ros.sim.scene import GRIPPER_HOME, sample_scene

LIFT_SUCCESS = 0.05  # metres the picked object's bottom must rise above the table
STAGES = ('render', 'grounding', 'lifting', 'policy', 'sim')
JUDGED_VERBS = ('pick', 'place', 'point', 'go_to', 'absent')


class TruthPerception:
    """Ground a phrase with the simulator's instance mask of the object of that name."""

    name = 'ground truth masks'
    needs_instances = True

    def __call__(self, frame, phrases: list, names: list) -> dict:
        """Return {phrase: [Candidate]}: the visible object of exactly that name, if any."""
        candidates = {}
        for phrase in phrases:
            index = names.index(phrase) + 1 if phrase in names else 0
            mask = frame.instances == index if index else None
            candidates[phrase] = [Candidate(1.0, mask)] if mask is not None and mask.any() else []
        return candidates


class ModelPerception:
    """Ground phrases with a GroundingPipeline: each phrase's detections, best first."""

    needs_instances = False

    def __init__(self, pipeline, threshold: float = 0.4, depth: bool = True):
        self.pipeline = pipeline
        self.threshold = float(threshold)
        self.depth = depth  # ground with the frame's depth, as grounding_node with publish_3d
        self.name = f'{pipeline.clip.name} + {pipeline.runner.model.name}'

    def __call__(self, frame, phrases: list, names: list) -> dict:
        """Return {phrase: [Candidate]}, as grounding_node's detections and mask give them."""
        result = self.pipeline(frame.rgb, phrases, self.threshold, with_heatmaps=False,
                               depth=self.view(frame))
        candidates = {phrase: [] for phrase in phrases}
        for det in result.detections:
            mask = result.label_image == det.index + 1
            candidates[det.phrase].append(Candidate(det.score, mask, det.shape_prob))
        return candidates

    def view(self, frame):
        """Return the frame's DepthView for the grounding, or None without depth."""
        if not self.depth or frame.depth is None:
            return None
        return DepthView(frame.depth, frame.K)


@dataclass
class Task:
    """One episode's scene and command."""

    seed: int
    command: str
    verb: str
    target: str                   # object name ('<colour> <shape>')
    destination: str | None = None
    distractor: str = ''          # 'colour', 'shape', 'colour+shape' or '' (none shares)
    held_out: bool = False        # the target's colour x shape is a held-out combination
    # verb 'absent': the command (a pick) names `target`, which is not in the scene


@dataclass
class EpisodeResult:
    """What one episode did."""

    task: Task
    success: bool                 # the simulator's judgement of the command's outcome
    status: str                   # the policy's final state
    detail: str
    sim_time: float               # seconds of simulated time
    moved: bool = False           # the policy sent a goal or a gripper command

    @property
    def agrees(self) -> bool:
        """Return whether the policy's report (succeeded or not) matches the simulator's."""
        if self.task.verb == 'absent':  # nothing to do: any claim of success is wrong
            return self.status != 'succeeded'
        return (self.status == 'succeeded') == self.success
    latency: dict = field(default_factory=dict)  # stage -> list of seconds
    frames: list = field(default_factory=list)   # rgb uint8 snapshots when recorded
    steps: list = field(default_factory=list)    # (Observation, Action) when recorded


@dataclass
class EpisodeConfig:
    """How an episode runs."""

    rate: float = 15.0           # control ticks per second (simulated)
    time_limit: float = 20.0     # simulated seconds
    perceive_every: int = 1      # ground every n-th tick (grounding is the costly stage)
    depth_range: tuple = (0.05, 5.0)
    snapshot_every: int = 0      # keep a frame every n ticks for a strip/GIF (0: none)
    record_steps: bool = False   # keep (observation, action) pairs (demonstrations)
    with_image: bool = False     # pass the rgb frame in observations (learned policies)


def _timed(latency: dict, stage: str, fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    latency.setdefault(stage, []).append(time.perf_counter() - start)
    return value


def _unjudged(verb: str) -> ValueError:
    return ValueError(f'the simulator cannot judge verb {verb!r} (objects move only while '
                      f'grasped); it judges {", ".join(JUDGED_VERBS)}')


def check_success(sim, task: Task, finished: bool) -> bool:
    """
    Return whether the task's goal holds in the sim now (`finished`: the policy stopped).

    Raises ValueError for a verb outside JUDGED_VERBS (push: the sim moves no object it does
    not hold, so a push could only ever be judged a failure).
    """
    if task.verb == 'pick':
        return sim.holding == task.target and sim.lift_height(task.target) >= LIFT_SUCCESS
    if task.verb == 'place':
        # Released objects drop onto what lies under their centre (Simulator.resting_on):
        # in a bowl, or on top of a block, ball or cylinder; beside it is the table.
        if sim.holding is not None or task.destination is None:
            return False
        return task.destination in sim.resting_on(task.target)
    if task.verb == 'absent':  # judged on the policy's status and motion (run_episode)
        return False
    if task.verb in ('point', 'go_to'):
        grip, centre = sim.gripper_position, sim.object_position(task.target)
        top = centre[2] + sim.spec.objects[sim.object_names.index(task.target)].half_size[2]
        return finished and bool(np.linalg.norm(grip[:2] - centre[:2]) < 0.03 and grip[2] > top)
    raise _unjudged(task.verb)


def _observe(sim, task, perception, config, latency, t, gripper) -> tuple:
    frame = _timed(latency, 'render', sim.render, True, perception.needs_instances)
    command = parse_command(task.command)
    phrases = [p for p in dict.fromkeys(roles(command).values()) if p]
    candidates = _timed(latency, 'grounding', perception, frame, phrases, sim.object_names) \
        if phrases else {}
    # The same perceive -> lift as vla_policy_node, with its default limits.
    lift = LiftConfig(depth_range=config.depth_range)
    found = _timed(latency, 'lifting', perceive, command, candidates, frame.depth, frame.K,
                   Extrinsic(*sim.camera_pose()), lift)
    target, destination = found.points.get('target'), found.points.get('destination')
    # The grasp sensor: the closed fingers stopped on an object's width (the sim holds one).
    obs = Observation(t, sim.gripper_position, gripper, target, destination,
                      sim.holding is not None,
                      image=frame.rgb if config.with_image else None, seen=found.seen,
                      undetected=tuple(found.undetected), probe=found.probe)
    return obs, frame


def _execute(sim, action, gripper: float, dt: float) -> float:
    if action.gripper is not None and action.gripper != gripper:
        (sim.close if action.gripper >= 0.5 else sim.open)()
        gripper = CLOSED if action.gripper >= 0.5 else OPEN
    if action.goal is not None:
        sim.move_to(action.goal)
    sim.step(dt)
    return gripper


def run_episode(sim, task: Task, policy, perception, config: EpisodeConfig = None):
    """
    Run `task` in `sim` with `policy` (start/step, e.g. GeometricPolicy) and `perception`.

    Returns
    -------
    EpisodeResult: the episode ends when the policy ends the command (succeeded, failed,
    aborted or rejected: the policy's own report after it looked again) or at the time
    limit; success is the simulator's judgement then.

    Raises
    ------
    ValueError
        For a verb outside JUDGED_VERBS, before the scene is loaded.

    """
    config = config or EpisodeConfig()
    if task.verb not in JUDGED_VERBS:  # before the motion, not after it
        raise _unjudged(task.verb)
    # The scene sample_task drew for this seed, whatever count or exclusions the sim was
    # built with.
    sim.load(sample_scene(task.seed))
    sim.move_to(GRIPPER_HOME, instant=True)
    dt, latency, gripper = 1.0 / config.rate, {}, OPEN
    result = EpisodeResult(task, False, 'idle', '', 0.0, latency=latency)
    action = policy.start(parse_command(task.command), 0.0)
    ticks = int(round(config.time_limit * config.rate))
    for tick in range(ticks):
        t = tick * dt
        if action.state in FINAL_STATES:
            break
        if tick % max(1, config.perceive_every) == 0:
            obs, frame = _observe(sim, task, perception, config, latency, t, gripper)
            if config.snapshot_every and tick % config.snapshot_every == 0:
                result.frames.append(frame.rgb)
        else:
            obs = Observation(t, sim.gripper_position, gripper, None, None,
                              sim.holding is not None)
        action = _timed(latency, 'policy', policy.step, obs)
        if config.record_steps:
            result.steps.append((obs, action))
        result.moved = result.moved or action.goal is not None or action.gripper is not None
        gripper = _timed(latency, 'sim', _execute, sim, action, gripper, dt)
        result.sim_time = t + dt
    finished = action.state in FINAL_STATES
    result.status, result.detail = action.state, action.detail
    if task.verb == 'absent':
        result.success = (not result.moved and action.state == 'rejected'
                          and 'not found' in action.detail)
    else:
        result.success = check_success(sim, task, finished)
    if config.snapshot_every:
        result.frames.append(sim.render(depth=False).rgb)
    return result


PICK_TEMPLATES = ('grab {t}', 'pick up {t}', 'get me {t}', 'could you pick up {t}',
                  'pick {t} up', 'grasp {t}', 'can you grab {t}', 'lift {t}')
PLACE_TEMPLATES = ('put {t} in {d}', 'place {t} on {d}', 'could you put {t} into {d}',
                   'grab {t} and put it in {d}', 'pick up {t} and place it on {d}',
                   'move {t} into {d}')


def _phrase(name: str, rng) -> str:
    return ('the ' if rng.random() < 0.6 else '') + name


def paraphrase(verb: str, target: str, destination: str | None, rng) -> str:
    """Return a random wording of the command, with or without articles and 'please'."""
    templates = PICK_TEMPLATES if verb == 'pick' else PLACE_TEMPLATES
    text = templates[int(rng.integers(len(templates)))].format(
        t=_phrase(target, rng), d=_phrase(destination or '', rng))
    roll = rng.random()
    return f'please {text}' if roll < 0.25 else f'{text} please' if roll < 0.4 else text


def _distractor(spec, index: int) -> str:
    obj = spec.objects[index]
    others = [o for i, o in enumerate(spec.objects) if i != index]
    kinds = [k for k, same in (('colour', any(o.colour == obj.colour for o in others)),
                               ('shape', any(o.shape == obj.shape for o in others))) if same]
    return '+'.join(kinds)


def sample_task(seed: int, verb: str, held_out: tuple = (), want_held_out: bool = False,
                tries: int = 200, only_seen: bool = False) -> Task:
    """
    Return a task from the first scene at or after `seed` that fits.

    The target shares its colour or shape with another object whenever the scene allows;
    with `want_held_out` its colour x shape is one of `held_out`; with `only_seen` no object
    of the scene is (training demonstrations: neither target, destination nor image shows
    one). A place task's destination is a bowl when there is one, else another object that
    is not a ball (a load put on a ball would roll off it; the simulator has no contacts to
    show that).
    """
    held = {tuple(c) for c in held_out}
    if only_seen and want_held_out:
        raise ValueError('only_seen and want_held_out exclude each other')
    for scene_seed in range(seed, seed + tries):
        spec, rng = sample_scene(scene_seed), np.random.default_rng(scene_seed)
        if only_seen and any((o.colour, o.shape) in held for o in spec.objects):
            continue
        pool = [i for i, o in enumerate(spec.objects)
                if ((o.colour, o.shape) in held) == want_held_out]
        if verb == 'place':
            pool = [i for i in pool if spec.objects[i].shape != 'bowl']
        if not pool or (verb == 'place' and len(spec.objects) < 2):
            continue
        confusable = [i for i in pool if _distractor(spec, i)]
        index = int(rng.choice(confusable or pool))
        obj, destination = spec.objects[index], None
        if verb == 'place':
            others = [o for i, o in enumerate(spec.objects) if i != index and o.shape != 'ball']
            if not others:
                continue
            bowls = [o for o in others if o.shape == 'bowl']
            destination = (bowls or others)[int(rng.integers(len(bowls or others)))].name
        return Task(scene_seed, paraphrase(verb, obj.name, destination, rng), verb, obj.name,
                    destination, _distractor(spec, index), (obj.colour, obj.shape) in held)
    raise ValueError(f'no scene in seeds {seed}..{seed + tries - 1} fits verb={verb!r}, '
                     f'held_out={want_held_out}')


def sample_absent_task(seed: int, names, tries: int = 200) -> Task:
    """
    Return a pick command naming one of `names` that is not in the scene at or after `seed`.

    The absent name shares its colour (else its shape) with an object in the scene whenever
    one can, the case where grounding used to return the look-alike.
    """
    for scene_seed in range(seed, seed + tries):
        spec, rng = sample_scene(scene_seed), np.random.default_rng(scene_seed)
        present = {o.name for o in spec.objects}
        absent = [n for n in names if n not in present]
        if not absent:
            continue
        colours, shapes = {o.colour for o in spec.objects}, {o.shape for o in spec.objects}
        same_colour = [n for n in absent if n.split()[0] in colours]
        same_shape = [n for n in absent if n.split()[-1] in shapes]
        pool, kind = ((same_colour, 'colour') if same_colour else
                      (same_shape, 'shape') if same_shape else (absent, ''))
        name = pool[int(rng.integers(len(pool)))]
        return Task(scene_seed, paraphrase('pick', name, None, rng), 'absent', name,
                    distractor=kind)
    raise ValueError(f'no scene in seeds {seed}..{seed + tries - 1} lacks one of {names}')


PERCEPTION_CHOICES = ('truth', 'tiny', 'tabletop')


def load_perception(name: str, device: str = 'auto', threshold: float = 0.4,
                    clip: str = 'tiny', depth: bool = True) -> tuple:
    """
    Return (perception, clip) for a perception choice.

    'truth' uses the sim's instance masks and returns the CLIP named by `clip` ('tiny' or
    'tabletop') for embeddings; 'tiny' and 'tabletop' run the GroundingPipeline with those
    models and return its CLIP; `depth`: they ground with the rendered depth too.
    """
    from clip_ros.perception.grounding import GroundingPipeline
    from clip_ros.perception.loading import load_clip, load_clipseg

    if name not in PERCEPTION_CHOICES:
        raise ValueError(f'perception {name!r} is not one of {", ".join(PERCEPTION_CHOICES)}')
    if name == 'truth':
        # Only the CLIP the caller embeds with: loading another first would be wasted.
        return TruthPerception(), load_clip(clip, 'random' if clip == 'tiny' else '', device)
    model = load_clip(name, 'random' if name == 'tiny' else '', device)
    pipeline = GroundingPipeline(model, load_clipseg(name, device))
    return ModelPerception(pipeline, threshold, depth), model


def save_strip(frames: list, path: str, columns: int = 8) -> str:
    """Write snapshots as a PNG strip (at most `columns` evenly spaced) or, for .gif, all."""
    from PIL import Image

    if not frames:
        raise ValueError('no frames to save; run the episode with snapshot_every > 0')
    images = [Image.fromarray(np.asarray(f)) for f in frames]
    if path.endswith('.gif'):
        images[0].save(path, save_all=True, append_images=images[1:], duration=200, loop=0)
        return path
    picks = np.linspace(0, len(images) - 1, min(columns, len(images))).round().astype(int)
    width, height = images[0].size
    strip = Image.new('RGB', (width * len(picks), height))
    for k, i in enumerate(picks):
        strip.paste(images[i], (k * width, 0))
    strip.save(path)
    return path
