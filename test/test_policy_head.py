"""Policy head: shapes, checkpoint round trip, behaviour cloning fits, learned-policy safety."""
import numpy as np
import pytest
import torch

from clip_ros.learning.behaviour_cloning import (
    action_label, anticipate_gripper, fit_head, load_demonstrations, plot_bc_history,
    save_demonstrations)
from clip_ros.learning.training import TrainConfig
from clip_ros.policy.command import parse_command
from clip_ros.policy.geometric import Observation, TargetTracker
from clip_ros.policy.learned import (
    HeadConfig, LearnedPolicy, PolicyHead, STATE_DIM, state_vector)

DIM = 8


class FakeEmbedder:
    """Constant embeddings: enough to drive the head without a CLIP."""

    def image(self, rgb):
        return torch.ones(DIM) / DIM ** 0.5

    def text(self, command):
        return torch.full((DIM,), -1.0) / DIM ** 0.5


def synthetic(n=400, seed=0):
    """Demonstrations whose action is a simple function of the state."""
    rng = np.random.default_rng(seed)
    state = rng.uniform(-0.2, 0.2, (n, STATE_DIM)).astype(np.float32)
    step = np.clip(state[:, 5:8] * 10, -1, 1)
    action = np.concatenate([step, (state[:, :1] > 0)], axis=1).astype(np.float32)
    return {'image_emb': rng.normal(size=(n, DIM)).astype(np.float32),
            'text_emb': rng.normal(size=(n, DIM)).astype(np.float32), 'state': state,
            'action': action, 'episode': np.arange(n) // 20}


def test_features_and_labels():
    obs = Observation(0.0, np.array([0.0, 0.1, 0.3]), 1.0, holding=True)
    state = state_vector(obs, np.array([0.1, 0.1, 0.1]), None)
    assert state.shape == (STATE_DIM,) and state[5:9] == pytest.approx([0.1, 0.0, -0.2, 1.0])
    assert state[9:].tolist() == [0.0] * 4

    class Act:
        goal, gripper = np.array([0.01, 0.1, 0.3]), None
    assert action_label(obs, Act, 0.02) == pytest.approx([0.5, 0.0, 0.0, 1.0])


def test_fit_reduces_loss_and_round_trips(tmp_path):
    arrays = synthetic()
    config = TrainConfig(epochs=15, batch_size=64, lr=3e-3, progress=False)
    head, history = fit_head(arrays, HeadConfig(DIM, hidden=64), config)
    losses = [r['loss'] for r in history['steps']]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert 'val_loss' in history['epochs'][-1]
    plot_bc_history(history, str(tmp_path / 'loss.png'))
    assert (tmp_path / 'loss.png').stat().st_size > 0
    head.save(str(tmp_path / 'head.pt'))
    again = PolicyHead.load(str(tmp_path / 'head.pt'))
    x = [torch.from_numpy(arrays[k][:4]) for k in ('image_emb', 'text_emb', 'state')]
    assert torch.allclose(head(*x), again(*x))
    save_demonstrations(str(tmp_path / 'd.npz'), arrays, {'clip': 'fake'})
    loaded, meta = load_demonstrations(str(tmp_path / 'd.npz'))
    assert meta == {'clip': 'fake'} and loaded['state'].shape == arrays['state'].shape


def test_missing_checkpoint_says_how_to_train(tmp_path):
    with pytest.raises(FileNotFoundError, match='train_policy_head'):
        PolicyHead.load(str(tmp_path / 'none.pt'))


def test_learned_policy_keeps_the_safety_rules():
    head = PolicyHead(HeadConfig(DIM, hidden=16)).eval()
    policy = LearnedPolicy(head, FakeEmbedder())
    assert policy.start(parse_command('juggle the blue block'), 0.0).state == 'rejected'
    assert policy.step(Observation(0.1, np.zeros(3))).goal is None
    policy.start(parse_command('pick up the blue block'), 0.0)
    image = np.zeros((8, 8, 3), np.uint8)
    ee = np.array([0.0, 0.12, 0.45])
    action = policy.step(Observation(0.1, ee, target=np.array([0.1, 0.0, 0.02]), image=image))
    assert action.state == 'executing'
    assert np.linalg.norm(action.goal - ee) <= policy.config.max_speed / policy.config.rate + 1e-9
    action = policy.step(Observation(2.0, ee, image=image))
    assert action.state == 'aborted' and 'target lost' in action.detail


@pytest.mark.parametrize('holding', [True, None], ids=['grasp sensor', 'no grasp sensor'])
def test_a_pick_ends_with_or_without_a_grasp_sensor(holding):
    # Without one (holding None), the closed gripper stands for holding, as in training.
    from clip_ros.policy.geometric import CLOSED, OPEN, PolicyConfig
    head = PolicyHead(HeadConfig(DIM, hidden=16)).eval()
    policy = LearnedPolicy(head, FakeEmbedder(), PolicyConfig(verify=None))
    policy.start(parse_command('pick up the red block'), 0.0)
    image, target = np.zeros((8, 8, 3), np.uint8), np.array([0.0, 0.0, 0.02])
    for tick in range(60):
        t = tick / 15
        z = min(0.02 + 0.3 * max(t - 1, 0), 0.3)  # grasped at 1 s, then raised
        grasped = t >= 1
        obs = Observation(t, np.array([0.0, 0.0, z]), CLOSED if grasped else OPEN,
                          None if grasped else target, None,
                          (holding if grasped else False) if holding else None, image)
        action = policy.step(obs)
        if action.state not in ('waiting', 'executing'):
            break
    assert action.state == 'succeeded' and action.detail == "pick 'red block' done"
    assert state_vector(obs, target, None)[4] == 1.0


def test_a_head_of_other_embeddings_or_a_broken_file_is_refused(tmp_path):
    head = PolicyHead(HeadConfig(DIM * 2, clip_arch='tiny', hidden=16)).eval()
    with pytest.raises(ValueError, match=f'trained on {DIM * 2}-d embeddings of .tiny., but '
                                         f'this CLIP gives {DIM}-d'):
        LearnedPolicy(head, FakeEmbedder())
    broken = tmp_path / 'head.pt'
    broken.write_bytes(b'not a checkpoint at all')
    with pytest.raises(ValueError, match='is not a policy head checkpoint'):
        PolicyHead.load(str(broken))


def test_tracker_freezes_the_target_near_the_gripper():
    tracker, target = TargetTracker(0.2), np.array([0.1, 0.0, 0.02])
    tracker.update(Observation(0.0, np.array([0.0, 0.1, 0.45]), target=target))
    tracker.update(Observation(0.1, np.array([0.1, 0.0, 0.12]), target=target + 0.1))
    assert np.allclose(tracker.target, target) and tracker.frozen


def test_tracker_never_takes_the_arm_for_the_destination():
    # Seed 255435 of the closed loop: the grey arm above the fingers was grounded as "the white
    # cylinder" while lifting, and the block went back down where it was picked up.
    tracker, destination = TargetTracker(0.2), np.array([-0.12, 0.0, 0.065])
    ee = np.array([0.156, -0.17, 0.31])
    tracker.update(Observation(0.0, ee, destination=destination, holding=True), True, True)
    tracker.update(Observation(0.1, ee, destination=ee + [0.007, -0.054, 0.065],
                               holding=True), True, True)
    assert np.allclose(tracker.destination, destination)
    # A destination under the gripper, a clearance and a load below it, is still taken.
    below = ee - [0.0, 0.0, 0.05]
    tracker.update(Observation(0.2, ee, destination=below, holding=True), True, True)
    assert np.allclose(tracker.destination, below)


def test_gripper_labels_anticipate_within_the_episode():
    action = np.zeros((6, 4), np.float32)
    action[[2, 3, 5], 3] = 1.0  # episode 0 closes on its row 2; episode 1 on its last row
    arrays = {'action': action, 'episode': np.array([0, 0, 0, 0, 1, 1])}
    shifted = anticipate_gripper(arrays, 1)['action'][:, 3]
    assert shifted.tolist() == [0, 1, 1, 1, 1, 1]
    assert arrays['action'][1, 3] == 0 and anticipate_gripper(arrays, 0) is arrays
