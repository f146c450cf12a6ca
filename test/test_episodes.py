"""
Closed-loop episodes in the MuJoCo sim with fixed seeds.

Targets are grounded with the simulator's instance masks (TruthPerception), so these episodes
test lifting, the policy and the sim together without depending on a model's accuracy; the
evaluate_policy command measures the same loop with the grounding models.
"""
import numpy as np
import pytest

from clip_ros.policy.geometric import GeometricPolicy, Observation
from clip_ros.sim.dataset import HELD_OUT
from clip_ros.sim.episodes import (
    check_success, EpisodeConfig, run_episode, sample_absent_task, sample_task, save_strip, Task,
    TruthPerception)


@pytest.fixture(scope='module')
def sim(gl_context):
    from clip_ros.sim.simulator import Simulator

    sim = Simulator(0, 96, 72)
    yield sim
    sim.close_renderer()


@pytest.mark.parametrize('seed, verb', [(11, 'pick'), (12, 'pick'), (13, 'place'),
                                        (14, 'place')])
def test_fixed_seed_episodes_succeed(sim, seed, verb):
    task = sample_task(seed, verb, HELD_OUT, want_held_out=seed % 2 == 0)
    result = run_episode(sim, task, GeometricPolicy(), TruthPerception(),
                         EpisodeConfig(perceive_every=2))
    assert result.success, (task, result.status, result.detail)
    assert result.status == 'succeeded' and result.agrees, result.detail
    assert result.sim_time < 10.0
    assert set(result.latency) >= {'render', 'grounding', 'lifting', 'policy', 'sim'}


def test_unknown_target_is_rejected_without_motion(sim, tmp_path):
    task = Task(3, 'pick up the golden teapot', 'pick', sim.object_names[0])
    result = run_episode(sim, task, GeometricPolicy(), TruthPerception(),
                         EpisodeConfig(perceive_every=3, snapshot_every=6, time_limit=5.0))
    assert not result.success and result.status == 'rejected' and not result.moved
    assert result.detail.startswith('not found: golden teapot')
    assert result.agrees
    assert np.allclose(sim.gripper_position, (0.0, 0.12, 0.45))
    assert save_strip(result.frames, str(tmp_path / 'strip.png'))


def test_demonstration_tasks_show_no_held_out_combination():
    from clip_ros.sim.scene import sample_scene
    held = {tuple(c) for c in HELD_OUT}
    for k in range(40):
        task = sample_task(7 * k, ('pick', 'place')[k % 2], HELD_OUT, only_seen=True)
        names = {(o.colour, o.shape) for o in sample_scene(task.seed).objects}
        assert not names & held, (task, names & held)
    with pytest.raises(ValueError, match='exclude each other'):
        sample_task(0, 'pick', HELD_OUT, want_held_out=True, only_seen=True)


def test_nothing_is_placed_on_a_ball():
    # A load put on a ball would roll off; the simulator has no contacts to show it.
    tasks = [sample_task(200000 + 97 * k, 'place', HELD_OUT, want_held_out=k % 2 == 1)
             for k in range(60)]
    assert all(not t.destination.endswith('ball') for t in tasks)
    assert len({t.destination.split()[-1] for t in tasks}) >= 3  # bowls and other shapes


def test_tasks_are_paraphrased_and_split():
    tasks = [sample_task(100 + k, 'pick', HELD_OUT, want_held_out=k % 2 == 1) for k in range(8)]
    assert len({t.command for t in tasks}) > 4
    assert all(t.held_out == (k % 2 == 1) for k, t in enumerate(tasks))
    assert sum(bool(t.distractor) for t in tasks) >= 6


def test_cylinder_place_rests_on_top(sim):
    task = next(t for t in (sample_task(s, 'place') for s in range(300, 400))
                if t.destination.endswith('cylinder'))
    result = run_episode(sim, task, GeometricPolicy(), TruthPerception(),
                         EpisodeConfig(perceive_every=2))
    assert result.success, (task, result.status, result.detail)
    assert sim.resting_on(task.target) == [task.destination]
    assert check_success(sim, task, True)


def test_absent_object_command_is_rejected_without_motion(sim):
    names = [f'{c} {s}' for c in ('red', 'blue', 'green', 'purple') for s in ('block', 'ball')]
    task = sample_absent_task(40, names)
    sim.reset(task.seed)
    assert task.verb == 'absent' and task.target not in sim.object_names
    result = run_episode(sim, task, GeometricPolicy(), TruthPerception(),
                         EpisodeConfig(perceive_every=2, time_limit=6.0))
    assert result.success and result.agrees and not result.moved, result.detail
    assert result.status == 'rejected' and f'not found: {task.target}' in result.detail


class MisplacingPolicy(GeometricPolicy):
    """The geometric policy with a deliberate error: it sees the destination 12 cm to the side."""

    def step(self, obs: Observation):
        if obs.destination is not None:
            obs.destination = obs.destination + (0.12, 0.0, 0.0)
        return super().step(obs)


def test_misplaced_object_is_reported_failed(sim):
    """The load is released beside the destination: the look after the place says so."""
    task = sample_task(13, 'place', HELD_OUT)
    result = run_episode(sim, task, MisplacingPolicy(), TruthPerception(),
                         EpisodeConfig(perceive_every=2))
    assert sim.holding is None and task.destination not in sim.resting_on(task.target)
    assert not result.success and result.status == 'failed' and result.agrees, result.detail
    assert f'{task.target}' in result.detail and f'beside {task.destination}' in result.detail


def test_dropped_pick_is_reported_failed(sim):
    """The simulator lets go of the load during the lift: the look after the pick sees it."""

    class Dropping(GeometricPolicy):

        def step(self, obs: Observation):
            action = super().step(obs)
            if action.phase == 'lift' and obs.ee_position[2] > 0.08:
                sim.open()  # the object slips out of the fingers
            return action

    task = sample_task(11, 'pick', HELD_OUT)
    result = run_episode(sim, task, Dropping(), TruthPerception(), EpisodeConfig())
    assert not result.success and result.status == 'failed' and result.agrees, result.detail
    assert 'on the table' in result.detail


def test_episode_runs_the_scene_of_its_task_whatever_the_sim_excludes(gl_context):
    """A sim built without the held-out combinations still runs the task's own scene."""
    from clip_ros.sim.scene import sample_scene
    from clip_ros.sim.simulator import Simulator

    task = sample_task(11, 'pick', HELD_OUT, want_held_out=True)
    with Simulator(0, 96, 72, exclude=HELD_OUT) as excluding:
        result = run_episode(excluding, task, GeometricPolicy(), TruthPerception(),
                             EpisodeConfig(perceive_every=2))
        assert excluding.spec == sample_scene(task.seed)
    assert task.held_out and result.success, (task, result.status, result.detail)


def test_a_verb_the_simulator_cannot_judge_is_refused_before_any_motion(sim):
    task = Task(3, 'push the red block left', 'push', 'red block')
    sim.reset(4)
    with pytest.raises(ValueError, match="cannot judge verb 'push'"):
        run_episode(sim, task, GeometricPolicy(), TruthPerception())
    assert sim.seed == 4  # refused before the scene was loaded
    with pytest.raises(ValueError, match="cannot judge verb 'push'"):
        check_success(sim, task, True)


def test_point_succeeds_above_the_target_not_inside_it(sim):
    sim.reset(5)
    name = sim.object_names[0]
    task = Task(5, f'point at the {name}', 'point', name)
    centre = sim.object_position(name)
    sim.move_to(centre, instant=True)  # the grasp point inside the object
    assert not check_success(sim, task, True)
    sim.move_to(centre + [0.0, 0.0, 0.1 + sim.spec.objects[0].half_size[2]], instant=True)
    assert check_success(sim, task, True)
    assert not check_success(sim, task, False)
