"""Record demonstrations of the geometric policy in the sim and fit a PolicyHead to them."""
from dataclasses import replace

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
import torch
from tqdm.auto import tqdm

from clip_ros.learning.training import train, TrainConfig
from clip_ros.policy.geometric import GeometricPolicy, PolicyConfig
from clip_ros.policy.learned import (
    action_label, BCStep, Demonstrations, HeadConfig, PolicyHead, state_vector, Tracker)
from clip_ros.sim.episodes import EpisodeConfig, run_episode


def episode_arrays(result, embedder, max_step: float, episode: int) -> dict:
    """Turn one recorded episode's (observation, action) pairs into demonstration rows."""
    text = embedder.text(result.task.command).numpy()
    tracker, image = Tracker(), None
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
