"""
The 'triton' backend: the grounding pipeline's heavy passes on a shared Triton server.

A robot keeps decoding, resizing, thresholds, components, re-scoring, tracking and messages;
the CLIPSeg vision pass and decoder, the CLIP image tower, both text towers and the shape
head (where the model has one) run on the server that `serve` (clip_ros.tools.serve) starts,
batched there across every robot. The robot holds no weights: the model description (sizes,
normalisation, vocabulary, synonyms, abstention rule, shape classes) comes from the server's
clip_ros_info model.

Errors: connect() raises TritonUnavailable (one sentence: where, what failed, how to start
the server); a frame whose request fails raises TritonUnavailable too, counted in
TritonServer.health() until a request succeeds again. Every request carries a timeout, so a
hung server never blocks a caller longer than that.

Nothing here imports torch: images are prepared and maps resized on numpy
(perception.image_np) and phrases tokenised on numpy (perception.tokenizer), so a robot that
only runs this client keeps its memory to the interpreter, rclpy and numpy.
"""
import json
import os
import re
import threading

import numpy as np

from clip_ros.perception import image_np, shape_crops
from clip_ros.perception.grounding import GroundingPipeline
from clip_ros.perception.handles import ClipModel, ClipSegModel
from clip_ros.perception.text_cache import TextCache
from clip_ros.perception.tokenizer import token_ids

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
                 ssl: bool = False, root_certificates: str = None, private_key: str = None,
                 certificate_chain: str = None):
        self.url, self.timeout = url, float(timeout)
        grpc = _grpc()
        self._grpc = grpc
        # PEM files; the key and chain are this robot's for a server requiring client
        # certificates (serve --ssl-root).
        self.client = grpc.InferenceServerClient(url, ssl=ssl,
                                                 root_certificates=root_certificates,
                                                 private_key=private_key,
                                                 certificate_chain=certificate_chain,
                                                 channel_args=CHANNEL_ARGS)
        self._lock = threading.Lock()
        self.failed = 0  # requests that failed since connect
        self.failing_since = None  # failed requests in a row ('' when the last one succeeded)
        self.last_error = ''
        self.info = None
        self.changed = ''  # why the server's models are no longer the ones connected to

    def connect(self) -> dict:
        """Check that the server is live and every model is ready; return the model info."""
        try:
            if not self.client.is_server_live(client_timeout=self.timeout):
                raise TritonUnavailable('server is not live')
            missing = [m for m in MODELS
                       if not self.client.is_model_ready(m, client_timeout=self.timeout)]
            if missing:
                raise TritonUnavailable(f'models not ready: {", ".join(missing)}')
            self.info = self._fetch_info()
        except Exception as e:  # noqa: B902 - every failure becomes the one error below
            raise TritonUnavailable(
                f'Triton server at {self.url} is not available ({_reason(e)}); start it with '
                '`serve` (clip_ros.tools.serve) or set triton_url') from e
        return self.info

    def _fetch_info(self) -> dict:
        request = self._grpc.InferInput('request', [1], 'BYTES')
        request.set_data_from_numpy(np.array([b'info'], dtype=np.object_))
        result = self.client.infer('clip_ros_info', [request], client_timeout=self.timeout)
        return json.loads(result.as_numpy('info')[0])

    def _check_same_models(self) -> None:
        """After an outage, make sure the server came back with the models connected to."""
        try:
            info = self._fetch_info()
        except Exception:  # noqa: B902 - still coming up: the next request checks again
            with self._lock:
                self.failing_since = self.failing_since or 1
            return
        if info.get('graphs') != (self.info or {}).get('graphs'):
            # Text features, vocabulary and calibration all came from the old models.
            self.changed = (f"the server came back with other models ({info['clip']['name']} "
                            f"+ {info['clipseg']['name']}, graphs "
                            f"{', '.join(info.get('graphs') or ['?'])}): reconfigure this "
                            'node to use them')

    def infer(self, model: str, arrays: dict, output: str) -> np.ndarray:
        """Run one request; TritonUnavailable (counted) names the model and the reason."""
        if self.changed:
            with self._lock:
                self.failed += 1
                self.failing_since = (self.failing_since or 0) + 1
                self.last_error = self.changed
            raise TritonUnavailable(f'Triton server at {self.url}: {self.changed}')
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
            came_back, self.failing_since = bool(self.failing_since), None
        if came_back:
            self._check_same_models()
            if self.changed:
                return self.infer(model, arrays, output)  # refused, with the reason
        return np.array(result.as_numpy(output))  # a writable copy

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
    common = {'model': None, 'device': 'cpu', 'dtype': 'float32'}
    clip, seg = info['clip'], info['clipseg']
    return (ClipModel(name=clip['name'], image_size=clip['image_size'],
                      mean=tuple(clip['mean']), std=tuple(clip['std']),
                      logit_scale=clip['logit_scale'], vocabulary=tuple(clip['vocabulary']),
                      synonyms=dict(clip['synonyms']), abstain=dict(clip['abstain']),
                      light=dict(clip.get('light', {})),
                      **common),
            ClipSegModel(name=seg['name'], image_size=seg['image_size'],
                         mean=tuple(seg['mean']), std=tuple(seg['std']), **common))


def _normalised(features: np.ndarray) -> np.ndarray:
    """Return rows scaled to unit length (F.normalize's epsilon)."""
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    return (features / np.maximum(norms, 1e-12)).astype(np.float32)


class TritonClipModel(ClipModel):
    """ClipModel whose image and text towers run on the server; numpy in and out."""

    server: 'TritonServer' = None

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """Return L2-normalised float32 image embeddings [B, D] for normalised pixels [B,3,S,S]."""
        pixels = np.asarray(pixels, np.float32)
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f'pixels must be [B, 3, S, S], got {list(pixels.shape)}')
        return _normalised(self.server.infer_rows('clip_image', 'pixels', pixels, 'features'))

    def crop_features(self, items: list, pad: float) -> np.ndarray:
        """Return float32 [K, D] embeddings of the padded boxes of several frames."""
        return self.encode_images(np.concatenate([
            image_np.crops(rgb, boxes, self.image_size, self.mean, self.std, pad=pad)
            for rgb, boxes in items]))

    def text_features(self, texts: list) -> np.ndarray:
        """Return the cached text embeddings float32 [N, D]."""
        return self.encode_text(texts)

    def _encode_text(self, phrases: list) -> np.ndarray:
        return _normalised(self.server.infer_rows('clip_text', 'tokens', token_ids(phrases),
                                                  'features'))


class TritonShapeHead:
    """The shape head (perception.shape_head.ShapeHead's interface) run on the server."""

    def __init__(self, server: 'TritonServer', block: dict):
        self.server = server
        self.shapes = tuple(str(s) for s in block['shapes'])
        self.background = bool(block.get('background', False))
        self.pad, self.size = float(block.get('pad', 1.25)), int(block.get('input', 48))

    def shape_index(self, words: str):
        """Return the index of the shape a phrase (the model's words) names, or None."""
        return shape_crops.shape_index(self.shapes, words)

    def probabilities(self, rgb: np.ndarray, boxes) -> np.ndarray:
        """Return the softmax [K, outputs] of the crops around `boxes` (last: background)."""
        if not len(boxes):
            return np.zeros((0, len(self.shapes) + self.background), np.float32)
        pixels = shape_crops.box_pixels(rgb, boxes, self.pad, self.size)
        return shape_crops.softmax(self.server.infer_rows('shape', 'pixels', pixels, 'logits'))


class TritonClipSegRunner:
    """The CLIPSeg side of GroundingPipeline on the server: one request a frame, numpy only."""

    def __init__(self, model: ClipSegModel, server: TritonServer):
        self.model, self.server = model, server
        self.text_cache = TextCache(self._encode_text, model.name)

    def encode_text(self, phrases) -> np.ndarray:
        """Return CLIPSeg conditional embeddings [N, projection_dim], cached per phrase."""
        return self.text_cache.get(list(phrases) if not isinstance(phrases, str) else [phrases])

    def logits(self, pixels: np.ndarray, cond: np.ndarray) -> np.ndarray:
        """Return logits [N, s, s] for one image's pixels [1, 3, S, S] and N conditionals."""
        pixels = np.asarray(pixels, np.float32)
        if pixels.ndim != 4 or pixels.shape[0] != 1 or pixels.shape[1] != 3:
            raise ValueError(f'pixels must be [1, 3, S, S], got {list(pixels.shape)}')
        return self.server.infer('clipseg', {'pixels': pixels,
                                             'conditionals': np.asarray(cond, np.float32)[None]},
                                 'logits')[0]

    def probabilities(self, rgb: np.ndarray, phrases) -> np.ndarray:
        """Return sigmoid maps float32 [N, H, W] resized to the original image size."""
        return self.probabilities_batch([rgb], [phrases])[0]

    def probabilities_batch(self, images: list, phrase_lists: list) -> list:
        """Return one float32 [N, H, W] map stack per image (ClipSegRunner's contract)."""
        m = self.model
        maps = []
        for rgb, phrases in zip(images, phrase_lists):
            height, width = image_np.validate_rgb(rgb).shape[:2]
            if not len(phrases):
                maps.append(np.zeros((0, height, width), np.float32))
                continue
            logits = self.logits(image_np.preprocess(rgb, m.image_size, m.mean, m.std),
                                 self.encode_text(phrases))
            maps.append(image_np.to_image_size(image_np.sigmoid(logits), (height, width)))
        return maps

    def _encode_text(self, phrases: list) -> np.ndarray:
        return self.server.infer_rows('clipseg_text', 'tokens', token_ids(phrases), 'features')


def tls_options(ca: str = '', key: str = '', cert: str = '') -> dict:
    """
    Return TritonServer's TLS keywords for PEM file paths ('' = not given).

    A client key needs its certificate and both need the server's CA (TLS); ValueError
    names what is missing or unreadable.
    """
    if bool(key) != bool(cert):
        raise ValueError('triton_key and triton_cert go together (the client certificate of '
                         'a server requiring them), got only '
                         f"{'triton_key' if key else 'triton_cert'}")
    if key and not ca:
        raise ValueError('a client certificate needs TLS: set triton_ca to the server CA')
    for name, path in (('triton_ca', ca), ('triton_key', key), ('triton_cert', cert)):
        if path and not os.access(path, os.R_OK):
            raise ValueError(f'{name} {path!r} is not a readable file')
    return {'ssl': bool(ca), 'root_certificates': ca or None, 'private_key': key or None,
            'certificate_chain': cert or None}


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
    values = {name: getattr(clip, name) for name in clip.__dataclass_fields__}
    values['text_cache'] = None
    block = (server.info or {}).get('shape')
    values['shape'] = TritonShapeHead(server, block) if block else None
    remote = TritonClipModel(**values)
    remote.server = server
    pipeline = GroundingPipeline(remote, clipseg, runner=TritonClipSegRunner(clipseg, server),
                                 **options)
    pipeline.backend = 'triton'
    return pipeline


__all__ = ['connect', 'DEFAULT_TIMEOUT', 'DEFAULT_URL', 'MODELS', 'server_ready',
           'TritonClipModel', 'TritonClipSegRunner', 'TritonServer', 'TritonShapeHead',
           'triton_pipeline',
           'TritonUnavailable']
