"""Ground language phrases in camera images: detections, instance mask, heatmap, overlay."""
import os
import threading
import time

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String
from vision_msgs.msg import Detection2DArray, LabelInfo

from clip_ros.nodes.backend_parameters import backend_options, backend_parameters
from clip_ros.nodes.cameras import Camera, camera_names
from clip_ros.nodes.common import (
    clean_phrases, COMMAND_QOS, common_parameters, declare_all, describe, image_qos,
    LATCHED_QOS, parameter_values, RESULTS_QOS, spin_node, string_list, transport_topic,
    unit_floats)
from clip_ros.nodes.conversions import numpy_to_image
from clip_ros.nodes.depth_lift import depth_parameters, DepthLift
from clip_ros.nodes.frame_worker import BatchWorker
from clip_ros.nodes.managed import ManagedNode
from clip_ros.nodes.messages import detections_msg, diagnostics_msg, label_info_msg
from clip_ros.nodes.overlay import draw_overlay
from clip_ros.nodes.phrase_report import PhraseReport
from clip_ros.perception.grounding import AbstainRule, DEFAULT_DISTRACTORS, GroundingPipeline
from clip_ros.perception.names import DEFAULT_CLIP, DEFAULT_CLIPSEG
from clip_ros.perception.stats import assess
from clip_ros.perception.tracking import Tracker
from clip_ros.perception.triton_client import (
    connect, DEFAULT_TIMEOUT, DEFAULT_URL, server_ready, tls_options, triton_pipeline)
from clip_ros.policy.command import MAX_COMMAND_CHARS, MAX_PHRASES, parse_command, quote

WARM_UP_SIZE = 224
TRITON_RETRY_SEC = 2.0  # how often an autostarted node looks for its absent Triton server
# Parameters that need a new GroundingPipeline (the models are kept).
PIPELINE_PARAMS = ('distractors', 'min_area', 'max_detections', 'rescore', 'abstain',
                   'light_correction', 'zoom_in')


def query_thresholds(queries, thresholds) -> tuple[dict, float]:
    """
    Pair `queries` with their thresholds.

    Returns ({phrase: threshold} for the cleaned, de-duplicated queries, default threshold),
    the default being the first value; raises ValueError naming the problem.
    """
    queries = string_list('queries', queries)
    values = unit_floats('thresholds', thresholds)
    if len(values) not in (1, len(queries)):
        raise ValueError(
            f'thresholds has {len(values)} values for {len(queries)} queries; give one value '
            'or one per query (set both at once to change the count)')
    per_query = values * len(queries) if len(values) == 1 else values
    pairs = {}
    for query, value in zip(queries, per_query):
        for phrase in clean_phrases([query]):
            pairs.setdefault(phrase, value)
    if len(pairs) > MAX_PHRASES:
        raise ValueError(f'queries has {len(pairs)} phrases; at most {MAX_PHRASES} are '
                         f'grounded at once')
    return pairs, values[0]


class GroundingNode(ManagedNode):
    """Find the regions that match the active phrases (command or `queries`) in each frame."""

    def __init__(self, **kwargs):
        super().__init__('grounding_node', **kwargs)
        self._declare_parameters()
        self._command_phrases: list | None = None
        self._depth = None  # DepthLift while configured with publish_3d
        self._phrases: list = []
        self._label_sent = False
        self._default_threshold = 0.4
        # (phrases, default threshold) that label_info carries; a frame publishes only if they
        # are still the ones it was grounded with, else its mask ids would misname its pixels.
        self._labels_lock = threading.Lock()
        self._labels = ((), 0.4)
        self._clip = self._clipseg = self._pipeline = None
        self._triton = None  # TritonServer while configured with backend 'triton'
        self._threads = 0  # CPU threads chosen at configure (0: the library default)
        self._label_pub = None
        self._single = Camera('', Tracker())  # the node's own topics while `cameras` is unset
        self._cameras: list = []  # Camera per `cameras` entry, while configured
        self._report = PhraseReport(self.get_logger())  # found / refused, per phrase
        self.watch_parameters(self._check_parameters, self._apply_parameters)
        self.start()
        self._triton_retry = None
        if 'TritonUnavailable' in self.load_error and self.get_parameter('autostart').value:
            # A robot may boot before its server: configure once the server answers.
            self._triton_retry = self.create_timer(TRITON_RETRY_SEC, self._retry_triton)

    @property
    def phrases(self) -> list:
        """Return the active phrase set."""
        return list(self._phrases)

    def _declare_parameters(self) -> None:
        ro = {'read_only': True}
        declare_all(self, (
            ('clip_arch', DEFAULT_CLIP[0], describe("open_clip architecture, or 'tiny'", **ro)),
            ('clip_pretrained', DEFAULT_CLIP[1],
             describe("pretrained tag or weights file; '' or 'random' for random init", **ro)),
            ('clipseg_model', DEFAULT_CLIPSEG,
             describe("CLIPSeg hub id or local directory, or 'tiny'", **ro)),
            *common_parameters(),
            *depth_parameters(),
            ('queries', None, describe('standing phrases to ground until a command arrives',
                                       dynamic=True)),
            ('thresholds', [0.4], describe(
                'per-query probability thresholds in [0, 1], or one value for all; the first '
                'value also applies to command phrases that are not queries', dynamic=True)),
            ('distractors', list(DEFAULT_DISTRACTORS),
             describe('competing texts for CLIP re-scoring', dynamic=True)),
            ('min_area', 64, describe('smallest instance in pixels', int_range=(1, 1 << 24))),
            ('max_detections', 20, describe('most detections per frame', int_range=(1, 1000))),
            *backend_parameters(),
            ('rescore', True, describe('re-score instances with CLIP crops')),
            ('abstain', True, describe(
                "refuse instances the model's calibrated abstention rule rejects (config.json "
                "'abstain'); a phrase left without any is reported 'not found'")),
            ('zoom_in', True, describe(
                'look again at four zoomed tiles for a phrase the frame leaves unfound (a partly '
                'hidden or distant object); models with a shape head only; costs time on '
                'frames with such a phrase')),
            ('track_iou', 0.3, describe(
                'smallest mask IoU (after motion prediction) that keeps an instance id',
                float_range=(0.01, 1.0), **ro)),
            ('track_timeout', 1.0, describe(
                'seconds an unseen instance keeps its id', float_range=(0.0, 3600.0), **ro)),
            ('cameras', None, describe(
                'camera namespaces served by one model: <camera>/image in, <camera>/detections '
                "... out; unset = the node's own image topic", dynamic=True, **ro)),
            ('batch_window', 0.0, describe(
                'seconds to wait after the first frame for the other cameras before a batch',
                float_range=(0.0, 1.0), **ro)),
            ('workers', 0, describe(
                'threads grounding batches of `cameras` in parallel, each camera in one batch '
                'at a time; 0 picks one per camera up to the CPU cores when inference runs on '
                'one thread (small models on the CPU, see `threads`), else 1',
                int_range=(0, 64), **ro)),
            ('triton_url', DEFAULT_URL, describe(
                "backend 'triton': host:port of the `serve` gRPC endpoint", **ro)),
            ('triton_timeout', DEFAULT_TIMEOUT, describe(
                "backend 'triton': seconds a request may take before the frame fails",
                float_range=(0.1, 600.0), **ro)),
            ('triton_ca', '', describe(
                "backend 'triton': PEM CA file of a TLS server ('' = plain gRPC, localhost)",
                **ro)),
            ('triton_key', '', describe(
                "backend 'triton': this robot's PEM private key, for a server that requires "
                'client certificates (serve --ssl-root); with triton_cert', **ro)),
            ('triton_cert', '', describe(
                "backend 'triton': this robot's PEM certificate chain (with triton_key)",
                **ro)),
        ))

    def _read_parameters(self, values: dict) -> None:
        """Copy parameter values into typed attributes; raise ValueError if inconsistent."""
        self._query_thresholds, self._default_threshold = query_thresholds(
            values['queries'], values['thresholds'])
        self._distractors = clean_phrases(string_list('distractors', values['distractors']))
        self._min_area = int(values['min_area'])
        self._max_detections = int(values['max_detections'])
        self._max_image_size = int(values['max_image_size'])
        self._rescore = bool(values['rescore'])
        self._abstain = bool(values['abstain'])
        self._light_correction = bool(values['light_correction'])
        self._zoom_in = bool(values['zoom_in'])
        if self._command_phrases is None:
            self._set_phrases(list(self._query_thresholds))

    def load_model(self) -> tuple:
        """Load both models, warm them up and create the outputs."""
        values = parameter_values(self)
        names = camera_names(self, values['cameras'])  # refused before any model loads
        if names and values['publish_3d']:
            raise ValueError('publish_3d serves one camera: leave cameras unset, or run one '
                             'node per camera for 3D output')
        device, dtype, cache_dir = values['device'], values['dtype'], values['cache_dir'] or None
        if values['backend'] == 'triton':  # the server's models: no weights on this robot
            self._triton, self._clip, self._clipseg = connect(
                values['triton_url'], values['triton_timeout'], **self._tls(values))
            note, self._threads = '', 0  # no weights here, and no torch to give threads to
        else:
            # torch loads only here: a Triton client never imports it.
            from clip_ros.perception.backends import BACKENDS, make_engine, use_cpu_threads
            from clip_ros.perception.loading import load_or_tabletop
            if values['backend'] not in BACKENDS:
                raise ValueError(f"unknown backend {values['backend']!r}; valid backends: "
                                 f"{', '.join((*BACKENDS, 'triton'))}")
            options = backend_options(values)
            del options['cache_dir']
            make_engine(**options)  # an unavailable provider or device fails before loading
            # Uncached pretrained weights fall back to the bundled tabletop model, with a warning.
            self._clip, self._clipseg, note = load_or_tabletop(
                (values['clip_arch'], values['clip_pretrained']), values['clipseg_model'],
                device, dtype, cache_dir)
            self._threads = use_cpu_threads(values['threads'], self._clip, self._clipseg)
        if note:
            self.get_logger().warning(note)
        self.get_logger().info(f'loaded {self._clip.name} and {self._clipseg.name} on '
                               f'{self._clip.device} ({self._clip.dtype}), '
                               f'{self._threads or "default"} CPU threads')
        self._pipeline = self._build_pipeline()
        # One inference now, so the first camera frame does not pay for lazy initialisation.
        self._pipeline(np.zeros((WARM_UP_SIZE, WARM_UP_SIZE, 3), np.uint8),
                       self._phrases or ['an object'], self._default_threshold)
        track = (values['track_iou'], values['track_timeout'])
        self._single = Camera('', Tracker(*track))
        self._cameras = [Camera(name, Tracker(*track)) for name in names]
        for camera in self._cameras or [self._single]:
            camera.pubs = {base: self.output(kind, camera.topic(base), RESULTS_QOS) for base, kind
                           in (('detections', Detection2DArray), ('mask', Image),
                               ('heatmap', Image), ('debug_image', Image))}
            # Latched: a policy that subscribes late still learns why its phrase has no detection.
            camera.pubs['grounding_status'] = self.output(
                String, camera.topic('grounding_status'), LATCHED_QOS)
        self._label_pub = self.output(LabelInfo, 'label_info', LATCHED_QOS)
        self._depth = DepthLift(self, values) if values['publish_3d'] else None
        if self._depth is not None:
            self._depth.create_outputs()
        return f'{self._clip.name} + {self._clipseg.name}', str(self._clip.device)

    def release_model(self) -> None:
        """Drop the models, the pipeline and the outputs."""
        self._pipeline = self._clip = self._clipseg = None
        if self._triton is not None:
            self._triton.close()
            self._triton = None
        self._label_pub = self._depth = None
        self._single.tracker.reset()
        self._cameras = []

    def make_worker(self):
        """Return a BatchWorker over the cameras, or the single-camera newest-frame worker."""
        if not self._cameras:
            return super().make_worker()
        return BatchWorker(self._cameras, self._run_batch, self._on_worker_error,
                           self.get_parameter('batch_window').value, f'{self.get_name()}_worker',
                           self._workers())

    def _workers(self) -> int:
        """Return the batch worker count: `workers`, or for 0 one per camera up to the cores."""
        requested = self.get_parameter('workers').value
        if requested:
            return requested
        if self._threads != 1:  # passes that use every core gain nothing from more workers
            return 1
        return max(1, min(len(self._cameras), os.cpu_count() or 1))

    def subscribe_inputs(self) -> None:
        """Subscribe the camera images (one per camera) and the command topic."""
        if not self._cameras:
            super().subscribe_inputs()
        else:
            qos = image_qos(self.get_parameter('image_qos').value)
            transport = self.get_parameter('image_transport').value
            kind = Image if transport == 'raw' else CompressedImage
            for camera in self._cameras:
                self.subscribe_frames(
                    kind, transport_topic(self, camera.topic('image'), transport), qos,
                    lambda msg, camera=camera: self._on_camera_frame(camera, msg))
        self.subscribe(String, 'command', self._on_command, COMMAND_QOS)
        if self._depth is not None:
            self._depth.subscribe()

    def on_activated(self) -> None:
        """Publish the current label map, latched for late subscribers."""
        self._label_sent = False
        self._set_phrases(self._phrases)
        for camera in self._cameras:
            camera.stats.reset()

    def _pipeline_options(self) -> dict:
        # CLIP re-scores at most 64 candidates a frame, or max_detections when that is more.
        return {'distractors': self._distractors, 'min_area': self._min_area,
                'max_detections': self._max_detections, 'rescore': self._rescore,
                'max_candidates': max(64, self._max_detections),
                'abstain': None if self._abstain else AbstainRule.off(),
                'light_correction': self._light_correction, 'zoom_in': self._zoom_in}

    def _rebuild_pipeline(self) -> GroundingPipeline:
        """Return a pipeline with the current options around the models already running."""
        old = self._pipeline  # its graph sessions or server handles: opening them costs seconds
        pipeline = GroundingPipeline(old.clip, self._clipseg, runner=old.runner,
                                     **self._pipeline_options())
        pipeline.backend = getattr(old, 'backend', 'torch')
        return pipeline

    def _build_pipeline(self) -> GroundingPipeline:
        values, options = parameter_values(self), self._pipeline_options()
        if self._triton is not None:
            return triton_pipeline(self._triton, self._clip, self._clipseg, **options)
        from clip_ros.perception.backends import make_pipeline
        return make_pipeline(self._clip, self._clipseg, **backend_options(values),
                             threads=self._threads, **options)

    @staticmethod
    def _check_parameters(values: dict) -> None:
        query_thresholds(values['queries'], values['thresholds'])
        string_list('distractors', values['distractors'])

    def _apply_parameters(self, names: set) -> None:
        # Frames read the attributes (and the pipeline) when they start: the next one sees them.
        self._read_parameters(parameter_values(self))
        if self._pipeline is not None and names & set(PIPELINE_PARAMS):
            self._pipeline = self._rebuild_pipeline()
        if 'thresholds' in names:
            self._label_sent = False  # label_info carries the default threshold
            self._set_phrases(self._phrases)

    def _set_phrases(self, phrases: list) -> None:
        """Make `phrases` active and republish the label map when they change."""
        if phrases == self._phrases and self._label_sent:
            return
        with self._labels_lock:
            self._phrases = phrases
            self._labels = (tuple(phrases), self._default_threshold)
            if self._label_pub is None or not self.active:
                self._label_sent = False  # sent on activation
                return
            self._label_sent = True
            self._label_pub.publish(label_info_msg(phrases, self._default_threshold))
        self._start_report(phrases)

    def _start_report(self, phrases: list) -> None:
        """Report the phrases afresh: each refusal is logged once more, the status resent."""
        if self._label_pub is None or not self.active:
            return
        self._report.start(phrases, self._word_reasons(phrases), {
            camera.name: camera.pubs['grounding_status'] for camera in self._all_cameras()})

    def _all_cameras(self) -> list:
        return self._cameras or [self._single]

    def _word_reasons(self, phrases: list) -> dict:
        """Return {phrase: reason} for the phrases the model's words cannot express."""
        pipeline = self._pipeline
        if pipeline is None:
            return {}
        reasons = {p: pipeline.canonical(p)[1] for p in phrases}
        return {p: reason for p, reason in reasons.items() if reason}

    def _threshold_list(self, phrases: list) -> list:
        return [self._query_thresholds.get(p, self._default_threshold) for p in phrases]

    def _on_command(self, msg: String) -> None:
        text = msg.data
        if not text.strip():
            self.reject('empty_command', 'ignored an empty command')
            return
        command = parse_command(text)
        if command.truncated:
            self._warn('long_command', f'command of {len(text)} characters cut to '
                       f'{len(command.text)} (max {MAX_COMMAND_CHARS})')
        phrases = command.phrases
        if not phrases:
            self.reject('vague_command', f'command {quote(text)} names nothing to ground; '
                        f'keeping {self._phrases}')
            return
        if len(phrases) > MAX_PHRASES:
            self.reject('many_phrases', f'command names {len(phrases)} things; at most '
                        f'{MAX_PHRASES} are grounded at once: keeping {self._phrases}')
            return
        self.get_logger().info(f'command {command.verb or "(no verb)"}: grounding {phrases}'
                               f'{self._model_words(phrases)}')
        self._command_phrases = phrases
        repeated = phrases == self._phrases and self._label_sent
        self._set_phrases(phrases)
        if repeated:
            self._start_report(phrases)  # a new command, though about the same phrases

    def _model_words(self, phrases: list) -> str:
        """Return ' as [...]' naming the model's words for the phrases, when they differ."""
        pipeline = self._pipeline
        if pipeline is None:
            return ''
        words = [pipeline.canonical(p)[0] for p in phrases]
        return f' as {words}' if words != phrases else ''

    def process(self, msg: Image) -> None:
        """Ground the active phrases in one frame and publish the results."""
        self._ground([(self._single, msg)])

    def _on_camera_frame(self, camera: Camera, msg) -> None:
        worker = self.worker
        if worker is None or not self.active:
            return
        dropped = worker.submit(camera, (time.monotonic(), msg))
        camera.stats.on_input(dropped)
        self.stats.on_input(dropped)

    def _run_batch(self, batch: list) -> None:
        """Ground the newest frame of several cameras as one batch (BatchWorker thread)."""
        start = time.monotonic()
        try:
            self._ground([(camera, msg) for camera, (_, msg) in batch])
        except Exception as e:  # noqa: B902 - charged to each camera, then the node's handler
            if self.context.ok():
                for camera, _ in batch:
                    camera.stats.on_failed(f'inference failed: {type(e).__name__}: {e}')
            raise
        finally:
            end = time.monotonic()
            for camera, (received, _) in batch:
                camera.stats.on_processed(end - start, end - received)
                # The node's statistics share the batch time out: `busy` is worker time (with
                # several workers it adds up across them).
                self.stats.on_processed((end - start) / len(batch), end - received)

    def _ground(self, items: list) -> None:
        """Ground the active phrases in each (camera, frame) and publish per camera."""
        with self._labels_lock:
            pipeline, labels = self._pipeline, self._labels
        phrases = list(labels[0])
        if pipeline is None:
            return
        if not phrases:
            self._warn('no_phrases', 'no phrases to ground: set `queries` or publish a command')
            return
        frames = [(camera, msg, self.decode_frame(msg, camera)) for camera, msg in items]
        frames = [frame for frame in frames if frame[2] is not None]
        if not frames:
            return
        heat = any(c.pubs['heatmap'].get_subscription_count() > 0 for c, _, _ in frames)
        thresholds = self._threshold_list(phrases)
        if len(frames) == 1:  # the batch of one
            _, msg, rgb = frames[0]
            depth = self._depth.view(msg.header, rgb.shape[:2]) if self._depth else None
            results = [pipeline(rgb, phrases, thresholds, with_heatmaps=heat, depth=depth)]
        else:
            results = pipeline.batch([(rgb, phrases, thresholds) for _, _, rgb in frames],
                                     with_heatmaps=heat)
        with self._labels_lock:
            if labels != self._labels:
                self.get_logger().info('a frame grounded before the phrases or the threshold '
                                       'changed is not published', throttle_duration_sec=5.0)
                return
            for (camera, msg, rgb), result in zip(frames, results):
                self._publish(camera, msg.header, rgb, result)

    def _publish(self, camera: Camera, header, rgb: np.ndarray, result) -> None:
        stamp = header.stamp.sec + header.stamp.nanosec * 1e-9 or time.monotonic()
        ids = camera.tracker.update([d.phrase for d in result.detections],
                                    [d.box for d in result.detections], stamp,
                                    result.label_image)
        pubs = camera.pubs
        pubs['detections'].publish(detections_msg(result.detections, header, ids))
        self._report.update(camera.name, result.phrases, result.rejected, header,
                            pubs['grounding_status'])
        if self._depth is not None:
            self._depth.publish(header, result, ids)
        if pubs['mask'].get_subscription_count() > 0:  # a 0.6 MB copy nobody would read
            pubs['mask'].publish(numpy_to_image(result.label_image, 'mono16', header))
        if result.heatmaps is not None and len(result.heatmaps):
            heatmap = result.heatmaps.max(axis=0).astype(np.float32)  # [H, W]
            pubs['heatmap'].publish(numpy_to_image(heatmap, '32FC1', header))
        if pubs['debug_image'].get_subscription_count() > 0:
            overlay = draw_overlay(rgb, result.detections, result.label_image, result.phrases)
            pubs['debug_image'].publish(numpy_to_image(overlay, 'rgb8', header))

    def extra_diagnostics(self, limits, stamp) -> list:
        """
        Return the phrases' outcome (<node>/phrases) and one status per camera.

        <node>/phrases names each refused phrase with its reason; a camera's status,
        <node>/<camera>, carries its own statistics.
        """
        node, active = self.get_fully_qualified_name(), self.active
        return [self._report.diagnostic(f'{node}/phrases', self._model[1])] + \
            self._triton_diagnostics(node) + self._memo_diagnostics(node) + [
            # An absolute camera ('/front') is <node>/front, not <node>//front.
            diagnostics_msg(f"{node}/{camera.name.lstrip('/')}",
                            assess(camera.stats.snapshot(), limits, active),
                            {'camera': camera.name, 'device': self._model[1]},
                            stamp).status[0]
            for camera in self._cameras]

    @staticmethod
    def _tls(values: dict) -> dict:
        return tls_options(values['triton_ca'], values['triton_key'], values['triton_cert'])

    def _retry_triton(self) -> None:
        if self.lifecycle_state != 'unconfigured':
            self._triton_retry.cancel()  # configured meanwhile (or shutting down)
            return
        values = parameter_values(self)
        try:
            tls = self._tls(values)
        except ValueError:
            return  # a file missing or unreadable: the configure error said so
        if not server_ready(values['triton_url'], **tls):
            return  # still absent: the configure error already said so, once
        self.start()

    def _memo_diagnostics(self, node: str) -> list:
        """
        Return <node>/memos: how often frames took what a still view gave before.

        A depth camera whose noise moves cells by more than still_view.MAX_DEPTH_CHANGE misses
        the depth views every frame, and each frame then pays for them in full.
        """
        memos = getattr(self._pipeline, 'memos', None)
        if memos is None:  # not configured
            return []
        counts = memos()
        seen = ', '.join(f'{name} {hits}/{hits + misses}'
                         for name, (hits, misses) in counts.items() if hits + misses)
        return [DiagnosticStatus(
            level=DiagnosticStatus.OK, name=f'{node}/memos', hardware_id=self._model[1],
            message=f"frames that took a still view's answers: {seen}" if seen else
            'no still view looked up yet',
            values=[KeyValue(key=f'{name}_{kind}', value=str(count))
                    for name, pair in counts.items()
                    for kind, count in zip(('hits', 'misses'), pair)])]

    def _triton_diagnostics(self, node: str) -> list:
        """Return <node>/triton: ERROR with the reason while the server's requests fail."""
        server = self._triton
        if server is None:
            return []
        ok, message, values = server.health()
        return [DiagnosticStatus(
            level=DiagnosticStatus.OK if ok else DiagnosticStatus.ERROR, name=f'{node}/triton',
            message=message, hardware_id=server.url,
            values=[KeyValue(key=k, value=v) for k, v in values.items()])]


def main(args=None) -> None:
    """Run the grounding node until interrupted."""
    spin_node(GroundingNode, args)


if __name__ == '__main__':
    main()
