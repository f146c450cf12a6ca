"""Ground language phrases in camera images: detections, instance mask, heatmap, overlay."""
import time

import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import String
from vision_msgs.msg import Detection2DArray, LabelInfo

from clip_ros.nodes.common import (
    clean_phrases, COMMAND_QOS, common_parameters, declare_all, describe, LATCHED_QOS,
    parameter_values, RESULTS_QOS, spin_node, string_list, unit_floats)
from clip_ros.nodes.conversions import numpy_to_image
from clip_ros.nodes.depth_lift import depth_parameters, DepthLift
from clip_ros.nodes.managed import ManagedNode
from clip_ros.nodes.messages import detections_msg, label_info_msg
from clip_ros.nodes.overlay import draw_overlay
from clip_ros.perception.grounding import DEFAULT_DISTRACTORS, GroundingPipeline
from clip_ros.perception.loading import load_or_tabletop
from clip_ros.perception.registry import DEFAULT_CLIP, DEFAULT_CLIPSEG
from clip_ros.perception.tracking import Tracker
from clip_ros.policy.command import MAX_COMMAND_CHARS, parse_command, quote

WARM_UP_SIZE = 224
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
        self._clip = self._clipseg = self._pipeline = None
        self._label_pub = None
        self._tracker = Tracker()
        self.watch_parameters(self._check_parameters, self._apply_parameters)
        self.start()

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
            ('rescore', True, describe('re-score instances with CLIP crops')),
            ('track_iou', 0.3, describe(
                'smallest mask IoU (after motion prediction) that keeps an instance id',
                float_range=(0.01, 1.0), **ro)),
            ('track_timeout', 1.0, describe(
                'seconds an unseen instance keeps its id', float_range=(0.0, 3600.0), **ro)),
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

    def load_model(self) -> tuple:
        """Load both models, warm them up and create the outputs."""
        values = parameter_values(self)
        device, dtype, cache_dir = values['device'], values['dtype'], values['cache_dir'] or None
        # Uncached pretrained weights fall back to the bundled tabletop model, with a warning.
        self._clip, self._clipseg, note = load_or_tabletop(
            (values['clip_arch'], values['clip_pretrained']), values['clipseg_model'], device,
            dtype, cache_dir)
        if note:
            self.get_logger().warning(note)
        self.get_logger().info(f'loaded {self._clip.name} and {self._clipseg.name} on '
                               f'{self._clip.device} ({self._clip.dtype})')
        self._pipeline = self._build_pipeline()
        # One inference now, so the first camera frame does not pay for lazy initialisation.
        self._pipeline(np.zeros((WARM_UP_SIZE, WARM_UP_SIZE, 3), np.uint8),
                       self._phrases or ['an object'], self._default_threshold)
        self._tracker = Tracker(values['track_iou'], values['track_timeout'])
        self._det_pub = self.output(Detection2DArray, 'detections', RESULTS_QOS)
        self._mask_pub = self.output(Image, 'mask', RESULTS_QOS)
        self._heatmap_pub = self.output(Image, 'heatmap', RESULTS_QOS)
        self._debug_pub = self.output(Image, 'debug_image', RESULTS_QOS)
        self._label_pub = self.output(LabelInfo, 'label_info', LATCHED_QOS)
        self._depth = DepthLift(self, values) if values['publish_3d'] else None
        if self._depth is not None:
            self._depth.create_outputs()
        return f'{self._clip.name} + {self._clipseg.name}', str(self._clip.device)

    def release_model(self) -> None:
        """Drop the models, the pipeline and the outputs."""
        self._pipeline = self._clip = self._clipseg = None
        self._label_pub = self._depth = None
        self._tracker.reset()

    def subscribe_inputs(self) -> None:
        """Subscribe the camera images and the command topic."""
        super().subscribe_inputs()
        self.subscribe(String, 'command', self._on_command, COMMAND_QOS)
        if self._depth is not None:
            self._depth.subscribe()

    def on_activated(self) -> None:
        """Publish the current label map, latched for late subscribers."""
        self._label_sent = False
        self._set_phrases(self._phrases)

    def _build_pipeline(self) -> GroundingPipeline:
        # CLIP re-scores at most 64 candidates a frame, or max_detections when that is more.
        return GroundingPipeline(self._clip, self._clipseg, self._distractors, self._min_area,
                                 self._max_detections, self._rescore,
                                 max_candidates=max(64, self._max_detections))

    @staticmethod
    def _check_parameters(values: dict) -> None:
        query_thresholds(values['queries'], values['thresholds'])
        string_list('distractors', values['distractors'])

    def _apply_parameters(self, names: set) -> None:
        # Frames read the attributes (and the pipeline) when they start: the next one sees them.
        self._read_parameters(parameter_values(self))
        if self._pipeline is not None and names & set(PIPELINE_PARAMS):
            self._pipeline = self._build_pipeline()
        if 'thresholds' in names:
            self._label_sent = False  # label_info carries the default threshold
            self._set_phrases(self._phrases)

    def _set_phrases(self, phrases: list) -> None:
        """Make `phrases` active and republish the label map when they change."""
        if phrases == self._phrases and self._label_sent:
            return
        self._phrases = phrases
        if self._label_pub is None or not self.active:
            self._label_sent = False  # sent on activation
            return
        self._label_sent = True
        self._label_pub.publish(label_info_msg(phrases, self._default_threshold))

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
        self.get_logger().info(f'command {command.verb or "(no verb)"}: grounding {phrases}')
        self._command_phrases = phrases
        self._set_phrases(phrases)

    def process(self, msg: Image) -> None:
        """Ground the active phrases in one frame and publish the results."""
        pipeline, phrases = self._pipeline, self._phrases
        if pipeline is None:
            return
        if not phrases:
            self._warn('no_phrases', 'no phrases to ground: set `queries` or publish a command')
            return
        rgb = self.decode_frame(msg)
        if rgb is None:
            return
        heat = self._heatmap_pub.get_subscription_count() > 0
        result = pipeline(rgb, phrases, self._threshold_list(phrases), with_heatmaps=heat)
        self._publish(msg.header, rgb, result)

    def _publish(self, header, rgb: np.ndarray, result) -> None:
        stamp = header.stamp.sec + header.stamp.nanosec * 1e-9 or time.monotonic()
        ids = self._tracker.update([d.phrase for d in result.detections],
                                   [d.box for d in result.detections], stamp, result.label_image)
        self._det_pub.publish(detections_msg(result.detections, header, ids))
        if self._depth is not None:
            self._depth.publish(header, result, ids)
        self._mask_pub.publish(numpy_to_image(result.label_image, 'mono16', header))
        if result.heatmaps is not None and len(result.heatmaps):
            heatmap = result.heatmaps.max(axis=0).astype(np.float32)  # [H, W]
            self._heatmap_pub.publish(numpy_to_image(heatmap, '32FC1', header))
        if self._debug_pub.get_subscription_count() > 0:
            overlay = draw_overlay(rgb, result.detections, result.label_image, result.phrases)
            self._debug_pub.publish(numpy_to_image(overlay, 'rgb8', header))


def main(args=None) -> None:
    """Run the grounding node until interrupted."""
    spin_node(GroundingNode, args)


if __name__ == '__main__':
    main()
