"""
A learned policy head: MLP over frozen CLIP embeddings and robot state -> end-effector action.

Inputs per tick: the CLIP image embedding of the camera frame, the CLIP text embedding of the
command, and the state vector (end-effector position, gripper, grasp sensor, and the lifted
target and destination relative to the end effector with seen flags: a global image embedding
alone cannot say where a small object is). Output: a position step in units of the speed
limit per tick (clipped to [-1, 1]) and a gripper logit. Trained by behaviour cloning on
demonstrations of the geometric policy (see record_demonstrations).
"""
from dataclasses import asdict, dataclass
import os
import pickle

import numpy as np
import torch
from torch import nn

from clip_ros.perception.image import preprocess
from clip_ros.policy.geometric import (
    Action, CLOSED, GeometricPolicy, Observation, OPEN, PolicyConfig, TargetTracker,
    validate_command)

STATE_DIM = 13  # ee xyz, gripper, holding, target rel xyz + seen, destination rel xyz + seen
ACTION_DIM = 4  # dx, dy, dz (units of max step), gripper logit


def holds(obs: Observation) -> bool:
    """Return whether something is held: the grasp sensor, or without one the closed gripper."""
    return bool(obs.holding) if obs.holding is not None else obs.gripper >= 0.5


def state_vector(obs: Observation, target, destination) -> np.ndarray:
    """Return the float32 [STATE_DIM] state; target/destination are the last known points."""
    ee = np.asarray(obs.ee_position, np.float64)
    parts = [ee, [obs.gripper, float(holds(obs))]]
    for point in (target, destination):
        parts.append([0.0, 0.0, 0.0, 0.0] if point is None
                     else list(np.asarray(point) - ee) + [1.0])
    return np.concatenate([np.asarray(p, np.float64) for p in parts]).astype(np.float32)


@dataclass
class HeadConfig:
    """Sizes of the head; saved with its weights."""

    embed_dim: int            # CLIP embedding size
    clip_arch: str = 'tabletop'  # the frozen CLIP the embeddings came from (the bundled one)
    clip_pretrained: str = ''
    hidden: int = 256
    layers: int = 3
    dropout: float = 0.1
    max_step: float = 0.02    # metres per tick that an output of 1 means


class PolicyHead(nn.Module):
    """MLP: [image emb, text emb, state] -> [dx, dy, dz, gripper logit]."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        dims = [2 * config.embed_dim + STATE_DIM] + [config.hidden] * (config.layers - 1)
        blocks = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.GELU(), nn.Dropout(config.dropout)]
        self.mlp = nn.Sequential(*blocks, nn.Linear(dims[-1], ACTION_DIM))
        # State features are metres: scale them up so they weigh like unit embeddings.
        self.register_buffer('state_scale', torch.tensor([5.0] * 3 + [1.0] * 2 + [10.0] * 8))

    def forward(self, image, text, state) -> torch.Tensor:
        """Return [B, ACTION_DIM]: step (tanh, units of max_step) and the gripper logit."""
        out = self.mlp(torch.cat([image, text, state * self.state_scale], dim=-1))
        return torch.cat([torch.tanh(out[:, :3]), out[:, 3:]], dim=-1)

    def save(self, path: str) -> None:
        """Write weights and config to `path` (a .pt file)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        torch.save({'config': asdict(self.config), 'state_dict': self.state_dict()}, path)

    @classmethod
    def load(cls, path: str, device='cpu') -> 'PolicyHead':
        """Load a head written by save(); raise FileNotFoundError/ValueError with the reason."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"policy head '{path}' does not exist; train one with: "
                                    'ros2 run clip_ros train_policy_head')
        try:
            blob = torch.load(path, map_location=device, weights_only=True)
            head = cls(HeadConfig(**blob['config']))
            head.load_state_dict(blob['state_dict'])
        except (KeyError, TypeError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
            raise ValueError(f"'{path}' is not a policy head checkpoint: {e}") from e
        return head.to(device).eval()


class Embedder:
    """Frozen CLIP embeddings of frames and commands (commands cached by the model)."""

    def __init__(self, clip):
        self.clip = clip

    @torch.no_grad()
    def image(self, rgb: np.ndarray) -> torch.Tensor:
        """Return the [D] float32 embedding of an RGB frame."""
        clip = self.clip
        pixels = preprocess(rgb, clip.image_size, clip.mean, clip.std, clip.device, clip.dtype)
        return clip.encode_images(pixels)[0].float().cpu()

    def text(self, command: str) -> torch.Tensor:
        """Return the [D] float32 embedding of a command."""
        return self.clip.encode_text([command])[0].float().cpu()


class LearnedPolicy(GeometricPolicy):
    """
    Run a PolicyHead with the geometric policy's interface and safety checks.

    Unknown verbs are rejected, goals are clipped to the workspace and the speed limit, and a
    target unseen for `lost_timeout` before the grasp aborts. A pick is done once the held
    object is raised `lift_height` * 0.8, a place once the gripper opens after holding; then
    the policy holds still and looks again (verify) before it reports succeeded or failed.
    """

    def __init__(self, head: PolicyHead, embedder: Embedder, config: PolicyConfig = None):
        super().__init__(config)
        # A head is trained on one CLIP's embeddings: another CLIP's (a retrained bundled
        # model, another architecture) would be read as noise, or fail at the first step.
        width = int(embedder.text('a').shape[-1])
        if width != head.config.embed_dim:
            raise ValueError(f'the policy head was trained on {head.config.embed_dim}-d '
                             f'embeddings of {head.config.clip_arch!r}, but this CLIP gives '
                             f'{width}-d ones; load the CLIP it was trained with')
        self.head, self.embedder = head, embedder
        device = next(head.parameters()).device
        self._device = device

    def start(self, command, now: float) -> Action:
        """Begin `command` (rejected without motion when it has no action verb or target)."""
        self.command = command
        reason = validate_command(command)
        if reason or command.verb not in ('pick', 'place'):
            reason = reason or f'the learned head handles pick and place, not {command.verb!r}'
            return self._finish('rejected', reason)
        self._text = self.embedder.text(command.text)[None].to(self._device)
        self._image, self._frame = None, None
        self._tracker = TargetTracker(self.config.near_distance)
        self._started, self._held, self._grasp_z = now, False, None
        self._verification = None
        self._last = Action('waiting', detail=f'looking for {command.targets[0]!r}')
        return self._last

    def _tracking(self) -> bool:
        # Until the grasp; the geometric policy's limits (_limits) then apply unchanged.
        return self._tracker.tracking(not self._held)

    def step(self, obs: Observation) -> Action:
        """Return the head's action for this tick, or the final status."""
        if self._last.state not in ('waiting', 'executing'):
            return self._last
        # The destination is latched once something is held: the load then occludes it.
        self._tracker.update(obs, track_destination=not self._held)
        reason = self._limits(obs.time)
        if reason:
            return self._finish(*self._stopped(reason), 'learned')
        if self._verification is not None:
            return self._verify(obs)
        if self._missing():
            return self._last  # nothing to act on: no image embedding spent while waiting
        if obs.image is not None and obs.image is not self._frame:
            # A node passes its newest frame every tick: embed each frame once.
            self._frame = obs.image
            self._image = self.embedder.image(obs.image)[None].to(self._device)
        if self._image is None:
            return self._last
        done = self._progress(obs)
        if done and self.config.verify is None:
            return self._finish('succeeded', done, 'learned')
        if done:  # hold still and look again (the geometric policy's verify phase)
            self._done = done
            return self._verify(obs)
        state = state_vector(obs, self._tracker.target, self._tracker.destination)
        with torch.no_grad():
            out = self.head(self._image, self._text,
                            torch.from_numpy(state)[None].to(self._device))[0].cpu().numpy()
        return self._action(obs, out)

    def _success_detail(self) -> str:
        return self._done

    def _moved(self) -> bool:
        return self._image is not None  # the head has acted on a frame

    def _progress(self, obs: Observation) -> str:
        # Without a grasp sensor the closed gripper stands for holding; the look after acting
        # (verify) then tells whether it closed on the object.
        ee_z, holding = float(obs.ee_position[2]), holds(obs)
        if holding and not self._held:
            self._held, self._grasp_z = True, ee_z
        if self.command.verb == 'pick' and self._held and holding and \
                ee_z >= self._grasp_z + 0.8 * self.config.lift_height:
            return f'pick {self.command.targets[0]!r} done'
        if self.command.verb == 'place' and self._held and not holding:
            return f'place {self.command.targets[0]!r} done'
        return ''

    def _action(self, obs: Observation, out: np.ndarray) -> Action:
        cfg = self.config
        step = np.clip(out[:3], -1, 1) * self.head.config.max_step
        limit = cfg.max_speed / cfg.rate
        norm = float(np.linalg.norm(step))
        if norm > limit:
            step *= limit / norm
        ee = np.asarray(obs.ee_position, np.float64)
        goal = np.clip(ee + step, self._low, self._high)
        gripper = CLOSED if out[3] > 0 else OPEN
        velocity = (goal - ee) * cfg.rate
        return Action('executing', 'learned', f'step {np.linalg.norm(goal - ee):.3f} m', goal,
                      velocity, gripper)
