"""Record demonstrations of the geometric policy in the sim and fit a PolicyHead to them."""
from dataclasses import replace
import json
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from clip_ros.learning.training import train, TrainConfig
from clip_ros.policy.geometric import (
    Action, GeometricPolicy, Observation, PolicyConfig, TargetTracker)
from clip_ros.policy.learned import HeadConfig, PolicyHead, state_vector
from clip_ros.sim.episodes import EpisodeConfig, run_episode


def action_label(obs: Observation, action: Action, max_step: float) -> np.ndarray:
    """Return the float32 [ACTION_DIM] (dx, dy, dz, gripper) target of a demonstration step."""
    delta = np.zeros(3) if action.goal is None else (np.asarray(action.goal) - obs.ee_position)
    gripper = obs.gripper if action.gripper is None else action.gripper
    return np.concatenate([np.clip(delta / max_step, -1, 1), [gripper]]).astype(np.float32)


def bc_loss(pred: torch.Tensor, target: torch.Tensor) -> dict:
    """Return {'loss', 'loss_step', 'loss_gripper', 'accuracy' (gripper)} of a batch."""
    step = F.mse_loss(pred[:, :3], target[:, :3])
    gripper = F.binary_cross_entropy_with_logits(pred[:, 3], target[:, 3])
    accuracy = ((pred[:, 3] > 0) == (target[:, 3] > 0.5)).float().mean().item()
    return {'loss': step + 0.5 * gripper, 'loss_step': step.item(),
            'loss_gripper': gripper.item(), 'accuracy': accuracy}


class BCStep(nn.Module):
    """Step function for clip_ros.learning.training.train on demonstration batches."""

    def forward(self, model, loss_fn, batch: dict, log: bool = False) -> dict:
        pred = model(batch['images'], batch['texts'], batch['state'])
        return bc_loss(pred, batch['action'])


class Demonstrations(torch.utils.data.Dataset):
    """Demonstration arrays as dict items ('images' and 'texts' are CLIP embeddings)."""

    KEYS = ('image_emb', 'text_emb', 'state', 'action', 'episode')

    def __init__(self, arrays: dict, episodes=None):
        missing = [k for k in self.KEYS if k not in arrays]
        if missing:
            raise ValueError(f'demonstrations lack {missing}; expected {list(self.KEYS)}')
        keep = np.ones(len(arrays['state']), bool) if episodes is None else np.isin(
            arrays['episode'], list(episodes))
        self.image = torch.from_numpy(np.asarray(arrays['image_emb'][keep], np.float32))
        self.text = torch.from_numpy(np.asarray(arrays['text_emb'][keep], np.float32))
        self.state = torch.from_numpy(np.asarray(arrays['state'][keep], np.float32))
        self.action = torch.from_numpy(np.asarray(arrays['action'][keep], np.float32))

    def __len__(self) -> int:
        return len(self.state)

    def __getitem__(self, i: int) -> dict:
        return {'images': self.image[i], 'texts': self.text[i], 'state': self.state[i],
                'action': self.action[i]}


def save_demonstrations(path: str, arrays: dict, meta: dict) -> None:
    """Write demonstration arrays and a JSON meta block to an .npz file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)


def load_demonstrations(path: str) -> tuple:
    """Return (arrays dict, meta dict) from save_demonstrations' file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"demonstrations '{path}' do not exist; record them with: "
                                'ros2 run clip_ros record_demos')
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != 'meta'}
        meta = json.loads(str(data['meta'])) if 'meta' in data.files else {}
    return arrays, meta


def episode_arrays(result, embedder, max_step: float, episode: int) -> dict:
    """Turn one recorded episode's (observation, action) pairs into demonstration rows."""
    text = embedder.text(result.task.command).numpy()
    tracker, image = TargetTracker(), None
    rows = {k: [] for k in Demonstrations.KEYS}
    for obs, action in result.steps:
        tracker.update(obs)
        if obs.image is not None:
            image = embedder.image(obs.image).numpy()
        if tracker.target is None or image is None or action.state != 'executing':
            continue
        rows['image_emb'].append(image)
        rows['text_emb'].append(text)
        rows['state'].append(state_vector(obs, tracker.target, tracker.destination))
        rows['action'].append(action_label(obs, action, max_step))
        rows['episode'].append(episode)
    return rows


def record_demonstrations(sim, tasks, perception, embedder, max_step: float = 0.02,
                          policy_config: PolicyConfig = None,
                          episode_config: EpisodeConfig = None, progress: bool = True) -> tuple:
    """
    Run the geometric policy on `tasks`; keep the successful episodes as demonstrations.

    Returns
    -------
    (arrays, stats): arrays as Demonstrations expects (image_emb, text_emb, state, action,
    episode), stats {'episodes', 'kept', 'rows'}.

    """
    config = replace(episode_config or EpisodeConfig(), record_steps=True, with_image=True)
    rows = {k: [] for k in Demonstrations.KEYS}
    kept = 0
    for task in tqdm(tasks, desc='demonstrations', disable=not progress, dynamic_ncols=True):
        result = run_episode(sim, task, GeometricPolicy(policy_config), perception, config)
        if not result.success:
            continue
        for key, values in episode_arrays(result, embedder, max_step, kept).items():
            rows[key].extend(values)
        kept += 1
    if not rows['state']:
        raise ValueError(f'no successful demonstration in {len(tasks)} episodes')
    arrays = {k: np.stack([np.asarray(v) for v in values]) for k, values in rows.items()}
    return arrays, {'episodes': len(tasks), 'kept': kept, 'rows': len(arrays['state'])}


def anticipate_gripper(arrays: dict, ticks: int) -> dict:
    """
    Return `arrays` with each gripper label taken from `ticks` rows later in its episode.

    The expert flips the gripper on one tick, and the tick before it (the arm reached the
    grasp or release point) is labelled with the old command, so at that point the labels
    split and a well-fitted head never closed or opened. Rows come in ascending episode order.
    """
    if ticks <= 0:
        return arrays
    action, episode = arrays['action'].copy(), arrays['episode']
    later = np.minimum(np.arange(len(episode)) + ticks, len(episode) - 1)
    # Never borrow from the next episode: stay on the episode's last row.
    last = np.searchsorted(episode, episode, side='right') - 1
    action[:, 3] = action[np.minimum(later, last), 3]
    return {**arrays, 'action': action}


def fit_head(arrays: dict, head_config: HeadConfig, config: TrainConfig,
             val_fraction: float = 0.1, gripper_lookahead: int = 0) -> tuple:
    """
    Fit a PolicyHead by behaviour cloning; whole episodes go to the validation split.

    `gripper_lookahead` > 0 trains on anticipated gripper labels (see anticipate_gripper).

    Returns
    -------
    (head in eval mode, history from clip_ros.learning.training.train)

    """
    arrays = anticipate_gripper(arrays, gripper_lookahead)
    episodes = np.unique(arrays['episode'])
    rng = np.random.default_rng(config.seed)
    val = set(rng.choice(episodes, max(1, int(len(episodes) * val_fraction)), replace=False)
              .tolist()) if len(episodes) > 1 and val_fraction > 0 else set()
    train_set = Demonstrations(arrays, [e for e in episodes if e not in val])
    val_set = Demonstrations(arrays, sorted(val)) if val else None
    torch.manual_seed(config.seed)
    head = PolicyHead(head_config)
    history = train(head, None, train_set, val_set, replace(config, out_dir=''),
                    step_fn=BCStep())
    return head.eval(), history


def plot_bc_history(history: dict, path: str) -> None:
    """Write the behaviour-cloning loss curves (train per step, validation per epoch)."""
    figure = Figure(figsize=(6, 3.6), layout='constrained')
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    steps = history['steps']
    for key in ('loss', 'loss_step', 'loss_gripper'):
        axis.plot([r['step'] for r in steps], [r[key] for r in steps], label=key, alpha=0.8)
    ends = np.cumsum([r['steps'] for r in history['epochs']])
    val = [(end, r['val_loss']) for end, r in zip(ends, history['epochs']) if 'val_loss' in r]
    if val:
        axis.plot(*zip(*val), 'o-', label='val_loss')
    axis.set(title='behaviour cloning', xlabel='step', yscale='log')
    axis.legend(fontsize='small')
    figure.savefig(path, dpi=80)
