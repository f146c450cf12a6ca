"""
One perceive -> lift for the node and the episodes.

The node's path (grounding results -> Detection2DArray + mask -> detection_candidates) and the
episode runner's path (ModelPerception) must hand `perceive` the same candidates, so the
closed-loop evaluation measures what vla_policy_node does.
"""
import subprocess
import sys

import numpy as np
import pytest
from std_msgs.msg import Header

from clip_ros.nodes.messages import detections_msg
from clip_ros.nodes.policy_messages import detection_candidates
from clip_ros.perception.table_depth import DepthView
from clip_ros.policy.command import parse_command
from clip_ros.policy.lifting import Extrinsic
from clip_ros.policy.perceive import Candidate, LiftConfig, perceive, roles
from clip_ros.sim.episodes import load_perception, TruthPerception


@pytest.fixture(scope='module')
def frame_and_sim(gl_context):
    from clip_ros.sim.simulator import Simulator

    with Simulator(0, 320, 240) as sim:
        sim.reset(200_003)  # a test-split scene
        yield sim.render(depth=True, instances=True), sim


def test_roles_are_the_first_target_and_the_destination():
    command = parse_command('put the red block and the blue ball in the green bowl')
    assert roles(command) == {'target': 'red block', 'destination': 'green bowl'}
    assert roles(parse_command('hello')) == {'target': None, 'destination': None}


def test_flat_masks_are_skipped_and_objects_centred(frame_and_sim):
    frame, sim = frame_and_sim
    name = sim.object_names[0]
    table = frame.instances == 0
    table[:table.shape[0] // 2] = False  # the near half: table top only, a shadow-like patch
    obj = frame.instances == 1
    command, extrinsic = parse_command(f'pick up the {name}'), Extrinsic(*sim.camera_pose())
    flat = perceive(command, {name: [Candidate(0.9, table)]}, frame.depth, frame.K, extrinsic)
    assert not flat.points and 'flat on the table' in flat.error
    # The shadow scores higher, so only the height test can pass it over.
    found = perceive(command, {name: [Candidate(0.9, table), Candidate(0.5, obj)]},
                     frame.depth, frame.K, extrinsic)
    truth = sim.object_position(name)
    assert found.error == '' and found.lifted['target'][1] == 0.5
    assert np.linalg.norm(found.points['target'][:2] - truth[:2]) < 0.03


def test_min_score_and_missing_phrases_are_reported(frame_and_sim):
    frame, sim = frame_and_sim
    name, other = sim.object_names[:2]
    command = parse_command(f'put the {name} in the {other}')
    candidates = {name: [Candidate(0.3, frame.instances == 1)]}
    found = perceive(command, candidates, frame.depth, frame.K, Extrinsic(*sim.camera_pose()),
                     LiftConfig(min_score=0.5))
    assert found.points == {}
    assert found.errors == [f'{name!r} not detected', f'{other!r} not detected']


def test_destination_is_placed_on_its_top_face(frame_and_sim):
    frame, sim = frame_and_sim
    name, other = sim.object_names[:2]
    command = parse_command(f'put the {name} on the {other}')
    candidates = TruthPerception()(frame, [name, other], sim.object_names)
    found = perceive(command, candidates, frame.depth, frame.K, Extrinsic(*sim.camera_pose()))
    lifted = found.lifted['destination'][2]
    assert found.points['destination'][2] == pytest.approx(lifted.top)
    np.testing.assert_allclose(found.points['destination'][:2], lifted.centre[:2])


def test_node_and_episode_paths_give_the_same_points(frame_and_sim):
    frame, sim = frame_and_sim
    perception, _ = load_perception('tabletop', 'cpu')
    names = sim.object_names[:2]
    command = parse_command(f'put the {names[0]} in the {names[1]}')
    phrases = [p for p in roles(command).values() if p]
    episode = perception(frame, phrases, sim.object_names)
    # What grounding_node publishes for the same frame (publish_3d, as in the demo graph: the
    # frame's depth and intrinsics go into the grounding), read back as vla_policy_node reads it.
    assert perception.depth
    view = DepthView(frame.depth, frame.K)
    result = perception.pipeline(frame.rgb, phrases, perception.threshold, with_heatmaps=False,
                                 depth=view)
    msg = detections_msg(result.detections, Header(frame_id='camera'))
    node = detection_candidates(msg, result.label_image, set(phrases))
    assert episode.keys() >= node.keys() and any(episode.values())
    for phrase in phrases:
        assert [c.score for c in node.get(phrase, [])] == pytest.approx(
            [c.score for c in episode[phrase]])
        # The shape head's probability travels as the detection's second hypothesis.
        assert [c.shape_prob for c in node.get(phrase, [])] == pytest.approx(
            [c.shape_prob for c in episode[phrase]])
        assert all(0.0 <= c.shape_prob <= 1.0 for c in episode[phrase])
        for a, b in zip(node.get(phrase, []), episode[phrase]):
            assert np.array_equal(a.mask, b.mask)
    extrinsic = Extrinsic(*sim.camera_pose())
    a = perceive(command, node, frame.depth, frame.K, extrinsic)
    b = perceive(command, episode, frame.depth, frame.K, extrinsic)
    assert a.points.keys() == b.points.keys() and a.points
    for role in a.points:
        np.testing.assert_array_equal(a.points[role], b.points[role])


def test_models_load_after_a_gl_context_in_one_process(gl_context):
    # The demo runs the simulator and the grounding models in one process; a GL driver's LLVM
    # and triton's used to collide there (segmentation fault on the models' first import).
    code = ('from clip_ros.sim.simulator import create_gl_context\n'
            'context = create_gl_context(8, 8)\n'
            'from clip_ros.perception.loading import load_clipseg\n'
            "print(load_clipseg('tabletop', device='cpu').image_size)\n"
            'context.free()\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ['128'], proc.stdout  # the bundled model's input size


def test_truth_perception_loads_only_the_clip_it_embeds_with(caplog):
    caplog.set_level('WARNING')
    perception, clip = load_perception('truth', 'cpu', clip='tabletop')
    assert isinstance(perception, TruthPerception) and clip.name == 'tabletop'
    # A tiny CLIP loaded first and thrown away would have logged that it has no weights.
    assert not [r for r in caplog.records if 'No pretrained weights' in r.getMessage()]
