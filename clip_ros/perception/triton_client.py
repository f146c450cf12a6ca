"""
The 'triton' backend: the grounding pipeline's heavy passes on a shared Triton server.

A robot keeps decoding, resizing, thresholds, components, re-scoring, tracking and messages;
the CLIPSeg vision pass and decoder, the CLIP image tower and both text towers run on the
server that `serve` (clip_ros.tools.serve) starts, batched there across every robot. The
robot holds no weights: the model description (sizes, normalisation, vocabulary, synonyms,
abstention rule) comes from the server's clip_ros_info model.

Errors: connect() raises TritonUnavailable (one sentence: where, what failed, how to start
the server); a frame whose request fails raises TritonUnavailable too, counted in
TritonServer.health() until a request succeeds again. Every request carries a timeout, so a
hung server never blocks a caller longer than that.
"""
import json
import re
import threading

import numpy as np
import torch
import torch.nn.functional as F

from clip_ros.perception.clipseg import ClipSegRunner
from clip_ros.perception.grounding import GroundingPipeline
from clip_ros.perception.handles import ClipModel, ClipSegModel
from clip_ros.perception.tokenizer import tokenize

DEFAULT_URL = 'localhost:8001'
DEFAULT_TIMEOUT = 10.0  # seconds a request may take before it counts as failed
# gRPC's default reconnect backoff grows to 2 minutes: a restarted server is found within 2 s.
CHANNEL_ARGS = [('grpc.max_send_message_length', 1 << 28),
                ('grpc.max_receive_message_length', 1 << 28),
                ('grpc.initial_reconnect_backoff_ms', 500),
                ('grpc.min_reconnect_backoff_ms', 500),
                ('grpc.max_reconnect_backoff_ms', 2000)]
MODELS = ('clipseg', 'clip_image', 'clip_text', 'clipseg_text', 'clip_ros_info')


class TritonUnavailable(RuntimeError):
    """The server cannot be reached, is not ready, or refused a request (message says why)."""


def _grpc():
    try:
        import tritonclient.grpc as grpcclient
    except ImportError as e:
        raise ValueError(f"backend 'triton' needs tritonclient (pip install "
                         f"'tritonclient[grpc]'): {e}") from e
    return grpcclient


class TritonServer:
    """A gRPC connection to the grounding server, with its failure count."""

    def __init__(self, url: str = DEFAULT_URL, timeout: float = DEFAULT_TIMEOUT,
                 ssl: bool = False, root_certificates: str = None):
        self.url, self.timeout = url, float(timeout)
        grpc = _grpc()
        self._grpc = grpc
        self.client = grpc.InferenceServerClient(url, ssl=ssl,
                                                 root_certificates=root_certificates,
                                                 channel_args=CHANNEL_ARGS)
        self._lock = threading.Lock()
        self.failed = 0  # requests that failed since connect
        self.failing_since = None  # failed requests in a row ('' when the last one succeeded)
        self.last_error = ''
        self.info = None

    def connect(self) -> dict:
        """Check that the server is live and every model is ready; return the model info."""
        try:
            if not self.client.is_server_live(client_timeout=self.timeout):
                raise TritonUnavailable('server is not live')
            missing = [m for m in MODELS
                       if not self.client.is_model_ready(m, client_timeout=self.timeout)]
            if missing:
                raise TritonUnavailable(f'models not ready: {", ".join(missing)}')
            request = self._grpc.InferInput('request', [1], 'BYTES')
            request.set_data_from_numpy(np.array([b'info'], dtype=np.object_))
            result = self.client.infer('clip_ros_info', [request], client_timeout=self.timeout)
            self.info = json.loads(result.as_numpy('info')[0])
        except Exception as e:  # noqa: B902 - every failure becomes the one error below
            raise TritonUnavailable(
                f'Triton server at {self.url} is not available ({_reason(e)}); start it with '
                '`serve` (clip_ros.tools.serve) or set triton_url') from e
        return self.info

    def infer(self, model: str, arrays: dict, output: str) -> np.ndarray:
        """Run one request; TritonUnavailable (counted) names the model and the reason."""
        inputs = []
        for name, array in arrays.items():
            array = np.ascontiguousarray(array)
            item = self._grpc.InferInput(name, list(array.shape),
                                         'FP32' if array.dtype == np.float32 else 'INT64')
            item.set_data_from_numpy(array)
            inputs.append(item)
        try:
            result = self.client.infer(model, inputs, client_timeout=self.timeout)
        except Exception as e:  # noqa: B902 - counted, then raised with the reason
            with self._lock:
                self.failed += 1
                self.failing_since = (self.failing_since or 0) + 1
                self.last_error = f'{model}: {_reason(e)}'
            raise TritonUnavailable(f'Triton server at {self.url}: {self.last_error}') from e
        with self._lock:
            self.failing_since = None
        return np.array(result.as_numpy(output))  # writable, for torch

    def infer_rows(self, model: str, name: str, array: np.ndarray, output: str) -> np.ndarray:
        """Run a batched model on rows of `array`, split into the server's largest batch."""
        step = int((self.info or {}).get('max_crops', 64))
        return np.concatenate([self.infer(model, {name: array[i:i + step]}, output)
                               for i in range(0, len(array), step)])

    def health(self) -> tuple:
        """Return (ok, message, values) for the diagnostics: failures and the last reason."""
        with self._lock:
            failing, failed, error = self.failing_since, self.failed, self.last_error
        values = {'triton_url': self.url, 'failed_requests': str(failed),
                  'failing_in_a_row': str(failing or 0)}
        if failing:
            return False, f'Triton server unreachable or refusing: {error}', values
        return True, 'Triton server answers', values

    def close(self) -> None:
        """Close the gRPC channel."""
        self.client.close()


def _reason(error: Exception) -> str:
    """Return a one-line reason from a tritonclient or gRPC error."""
    message = getattr(error, 'message', None)
    text = str((message() if callable(message) else None) or error)
    # A model's exception comes back inside the server's traceback: keep its last line.
    raised = [line.strip() for line in text.splitlines()
              if re.match(r'[\w.]*(Error|Exception): ', line.strip())
              and 'TritonModelException' not in line]
    text = raised[-1] if raised else text
    return ' '.join(text.split())[:300] or type(error).__name__


def _handles(info: dict) -> tuple:
    """Return (ClipModel, ClipSegModel) without weights from the server's model info."""
    common = {'model': None, 'device': torch.device('cpu'), 'dtype': torch.float32}
    clip, seg = info['clip'], info['clipseg']
    return (ClipModel(name=clip['name'], image_size=clip['image_size'],
                      mean=tuple(clip['mean']), std=tuple(clip['std']),
                      logit_scale=clip['logit_scale'], vocabulary=tuple(clip['vocabulary']),
                      synonyms=dict(clip['synonyms']), abstain=dict(clip['abstain']),
                      **common),
            ClipSegModel(name=seg['name'], image_size=seg['image_size'],
                         mean=tuple(seg['mean']), std=tuple(seg['std']), **common))


class TritonClipModel(ClipModel):
    """ClipModel whose image and text towers run on the server."""

    server: TritonServer = None

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Return L2-normalised float32 image embeddings [B, D] for normalised pixels [B,3,S,S]."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f'pixels must be [B, 3, S, S], got {list(pixels.shape)}')
        features = self.server.infer_rows('clip_image', 'pixels', pixels.float().numpy(),
                                          'features')
        return F.normalize(torch.from_numpy(features), dim=-1)

    def _encode_text(self, phrases: list) -> torch.Tensor:
        features = self.server.infer_rows('clip_text', 'tokens', tokenize(phrases).numpy(),
                                          'features')
        return F.normalize(torch.from_numpy(features), dim=-1)


class TritonClipSegRunner(ClipSegRunner):
    """ClipSegRunner whose vision pass and decoder run on the server, in one request a frame."""

    def __init__(self, model: ClipSegModel, server: TritonServer):
        self.server = server
        super().__init__(model)

    def visual(self, pixels: torch.Tensor) -> list:
        """Return [pixels]: the server runs the vision pass together with the decoder."""
        if pixels.ndim != 4 or pixels.shape[0] < 1 or pixels.shape[1] != 3:
            raise ValueError(f'pixels must be [B, 3, S, S], got {list(pixels.shape)}')
        return [pixels.float()]

    def decode(self, activations: list, cond: torch.Tensor) -> torch.Tensor:
        """Return logits [N, s, s] for one image's pixels (visual's output) and N conditionals."""
        logits = self.server.infer('clipseg', {'pixels': activations[0].numpy(),
                                               'conditionals': cond.float().numpy()[None]},
                                   'logits')
        return torch.from_numpy(logits[0])

    def _encode_text(self, phrases: list) -> torch.Tensor:
        return torch.from_numpy(self.server.infer_rows(
            'clipseg_text', 'tokens', tokenize(phrases).numpy(), 'features'))


def connect(url: str = DEFAULT_URL, timeout: float = DEFAULT_TIMEOUT, **tls) -> tuple:
    """
    Connect to the server and return (TritonServer, ClipModel, ClipSegModel) handles.

    The handles carry the served models' description and no weights; triton_pipeline turns
    them into a pipeline. Raises TritonUnavailable (one sentence) when the server is absent.
    """
    server = TritonServer(url, timeout, **tls)
    try:
        clip, clipseg = _handles(server.connect())
    except TritonUnavailable:
        server.close()
        raise
    return server, clip, clipseg


def server_ready(url: str = DEFAULT_URL, timeout: float = 2.0, **tls) -> bool:
    """Return whether the server at url is up with every model ready (never raises)."""
    try:
        server = TritonServer(url, timeout, **tls)
    except ValueError:
        return False
    try:
        return server.client.is_server_ready(client_timeout=timeout) and all(
            server.client.is_model_ready(m, client_timeout=timeout) for m in MODELS)
    except Exception:  # noqa: B902 - unreachable, refused, timed out: not ready
        return False
    finally:
        server.close()


def triton_pipeline(server: TritonServer, clip: ClipModel, clipseg: ClipSegModel,
                    **options) -> GroundingPipeline:
    """Return a GroundingPipeline (options as its keywords) whose passes run on the server."""
    pipeline = GroundingPipeline(clip, clipseg, **options)
    values = {name: getattr(clip, name) for name in clip.__dataclass_fields__}
    values['text_cache'] = None
    remote = TritonClipModel(**values)
    remote.server = server
    pipeline.clip = remote
    pipeline.runner = TritonClipSegRunner(clipseg, server)
    pipeline.backend = 'triton'
    return pipeline


__all__ = ['connect', 'DEFAULT_TIMEOUT', 'DEFAULT_URL', 'MODELS', 'server_ready',
           'TritonClipModel', 'TritonClipSegRunner', 'TritonServer', 'triton_pipeline',
           'TritonUnavailable']
