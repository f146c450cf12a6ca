"""Ground language phrases in camera images: detections, instance mask, heatmap, overlay."""
import numpy as np
from rcl_interfaces.msg import SetParametersResult
import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import String
from vision_msgs.msg import Detection2DArray, LabelInfo

from clip_ros.core.command import MAX_COMMAND_CHARS, parse_command
from clip_ros.core.grounding import DEFAULT_DISTRACTORS, GroundingPipeline
from clip_ros.core.models import load_clip, load_clipseg
from clip_ros.core.registry import DEFAULT_CLIP, DEFAULT_CLIPSEG
from clip_ros.nodes.common import (
    clean_phrases, COMMAND_QOS, common_parameters, declare_all, decode_rgb, describe,
    LATCHED_QOS, parameter_values, RESULTS_QOS, string_list, subscribe_images, unit_floats)
from clip_ros.nodes.conversions import numpy_to_image
from clip_ros.nodes.frame_worker import FrameWorker, KeyedThrottle
from clip_ros.nodes.messages import detections_msg, label_info_msg
from clip_ros.nodes.overlay import draw_overlay

THROTTLE_SEC = 5.0
STATS_PERIOD_SEC = 10.0
# Parameters that need a new GroundingPipeline (the models are kept).
PIPELINE_PARAMS = ('distractors', 'min_area', 'max_detections', 'rescore')


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
    return pairs, values[0]


class GroundingNode(Node):
    """Find the regions that match the active phrases (command or `queries`) in each frame."""

    def __init__(self, **kwargs):
        super().__init__('grounding_node', **kwargs)
        self._declare_parameters()
        self._warn = KeyedThrottle(self.get_logger().warning, THROTTLE_SEC)
        self._error = KeyedThrottle(self.get_logger().error, THROTTLE_SEC)
        self.rejected = 0
        self._command_phrases: list | None = None
        self._phrases: list = []
        self._label_sent = False
        self._default_threshold = 0.4
        self._pipeline = None
        self._not_ready = ''
        self._det_pub = self.create_publisher(Detection2DArray, 'detections', RESULTS_QOS)
        self._mask_pub = self.create_publisher(Image, 'mask', RESULTS_QOS)
        self._heatmap_pub = self.create_publisher(Image, 'heatmap', RESULTS_QOS)
        self._debug_pub = self.create_publisher(Image, 'debug_image', RESULTS_QOS)
        self._label_pub = self.create_publisher(LabelInfo, 'label_info', LATCHED_QOS)
        try:
            self._read_parameters(parameter_values(self))
        except ValueError as e:
            self._not_ready = f'invalid parameters: {e}'
            self.get_logger().error(self._not_ready)
        self._image_qos = self.get_parameter('image_qos').value
        if not self._not_ready:
            self._load_models()
        self._worker = FrameWorker(self._process, self._on_worker_error, 'grounding_worker')
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        subscribe_images(self, self._image_qos, self._worker.submit)
        self.create_subscription(String, 'command', self._on_command, COMMAND_QOS)
        self._stats_timer = self.create_timer(STATS_PERIOD_SEC, self._log_stats)

    @property
    def worker(self) -> FrameWorker:
        """Return the frame worker, which counts received, dropped and processed frames."""
        return self._worker

    @property
    def not_ready(self) -> str:
        """Return why frames cannot be processed ('' when the model is loaded)."""
        return self._not_ready

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
            ('queries', None, describe('standing phrases to ground until a command arrives',
                                       dynamic=True)),
            ('thresholds', [0.4], describe(
                'per-query probability thresholds in [0, 1], or one value for all; the first '
                'value also applies to command phrases that are not queries', dynamic=True)),
            ('distractors', list(DEFAULT_DISTRACTORS),
             describe('competing texts for CLIP re-scoring', dynamic=True)),
            ('min_area', 64, describe('smallest instance in pixels', int_range=(1, 1 << 24))),
            ('max_detections', 20, describe('most detections per frame', int_range=(1, 1000))),
            ('rescore', True, describe('re-score instances with CLIP crops')),
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
        if self._command_phrases is None:
            self._set_phrases(list(self._query_thresholds))

    def _load_models(self) -> None:
        values = parameter_values(self)
        device, dtype, cache_dir = values['device'], values['dtype'], values['cache_dir'] or None
        try:
            self._clip = load_clip(values['clip_arch'], values['clip_pretrained'], device, dtype,
                                   cache_dir)
            self._clipseg = load_clipseg(values['clipseg_model'], device, dtype, cache_dir)
            self._pipeline = self._build_pipeline()
        except Exception as e:  # noqa: B902 - the node stays up and says why it cannot infer
            self._not_ready = f'model not loaded: {e}'
            self.get_logger().error(self._not_ready)
            return
        self.get_logger().info(f'loaded {self._clip.name} and {self._clipseg.name} on '
                               f'{self._clip.device} ({self._clip.dtype})')

    def _build_pipeline(self) -> GroundingPipeline:
        return GroundingPipeline(self._clip, self._clipseg, self._distractors, self._min_area,
                                 self._max_detections, self._rescore)

    def _validate_parameters(self, params) -> SetParametersResult:
        values = parameter_values(self)
        values.update({p.name: p.value for p in params})
        try:
            query_thresholds(values['queries'], values['thresholds'])
            string_list('distractors', values['distractors'])
        except ValueError as e:
            return SetParametersResult(successful=False, reason=str(e))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params) -> None:
        self._read_parameters(parameter_values(self))
        if self._not_ready.startswith('invalid parameters'):
            self._not_ready = ''  # fixed at run time: load what startup skipped
            self._load_models()
        if self._pipeline is not None and any(p.name in PIPELINE_PARAMS for p in params):
            self._pipeline = self._build_pipeline()

    def _set_phrases(self, phrases: list) -> None:
        """Make `phrases` active and republish the label map when they change."""
        if phrases == self._phrases and self._label_sent:
            return
        self._phrases = phrases
        self._label_sent = True
        self._label_pub.publish(label_info_msg(phrases, self._default_threshold))

    def _threshold_list(self, phrases: list) -> list:
        return [self._query_thresholds.get(p, self._default_threshold) for p in phrases]

    def _on_command(self, msg: String) -> None:
        text = msg.data
        if not text.strip():
            self._reject('empty_command', 'ignored an empty command')
            return
        if len(text) > MAX_COMMAND_CHARS:
            self._warn('long_command', f'command of {len(text)} characters truncated to '
                       f'{MAX_COMMAND_CHARS}')
            # Cut at a word boundary so no half word becomes a phrase.
            head = text[:MAX_COMMAND_CHARS + 1]
            text = head.rsplit(maxsplit=1)[0] if len(head.split()) > 1 else head[:-1]
        command = parse_command(text)
        phrases = clean_phrases(command.targets + [command.destination or ''])
        if not phrases:
            self._reject('vague_command', f'command {text[:80]!r} names nothing to ground; '
                         f'keeping {self._phrases}')
            return
        self.get_logger().info(f'command {command.verb or "(no verb)"}: grounding {phrases}')
        self._command_phrases = phrases
        self._set_phrases(phrases)

    def _reject(self, key: str, message: str) -> None:
        self.rejected += 1
        self._warn(key, message)

    def _process(self, msg: Image) -> None:
        pipeline, phrases = self._pipeline, self._phrases
        if pipeline is None:
            self._error('not_ready', self._not_ready)
            return
        if not phrases:
            self._warn('no_phrases', 'no phrases to ground: set `queries` or publish a command')
            return
        try:
            rgb = decode_rgb(msg, self._max_image_size)
        except ValueError as e:
            self._reject('bad_image', f'rejected image: {e}')
            return
        heat = self._heatmap_pub.get_subscription_count() > 0
        result = pipeline(rgb, phrases, self._threshold_list(phrases), with_heatmaps=heat)
        self._publish(msg.header, rgb, result)

    def _publish(self, header, rgb: np.ndarray, result) -> None:
        self._det_pub.publish(detections_msg(result.detections, header))
        self._mask_pub.publish(numpy_to_image(result.label_image, 'mono16', header))
        if result.heatmaps is not None and len(result.heatmaps):
            heatmap = result.heatmaps.max(axis=0).astype(np.float32)  # [H, W]
            self._heatmap_pub.publish(numpy_to_image(heatmap, '32FC1', header))
        if self._debug_pub.get_subscription_count() > 0:
            overlay = draw_overlay(rgb, result.detections, result.label_image, result.phrases)
            self._debug_pub.publish(numpy_to_image(overlay, 'rgb8', header))

    def _on_worker_error(self, error: Exception) -> None:
        self._error('inference', f'inference failed: {type(error).__name__}: {error}')

    def _log_stats(self) -> None:
        report = self._worker.dropped_report()
        if report:
            self.get_logger().info(f'{report}; {self.rejected} inputs rejected')

    def destroy_node(self) -> None:
        """Stop the worker before the publishers go away."""
        self._worker.stop()
        super().destroy_node()


def main(args=None) -> None:
    """Run the grounding node until interrupted."""
    try:
        with rclpy.init(args=args):
            node = GroundingNode()
            executor = MultiThreadedExecutor()
            executor.add_node(node)
            try:
                executor.spin()
            finally:
                node.destroy_node()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass


if __name__ == '__main__':
    main()
