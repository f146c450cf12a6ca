"""Semantic segmentation of camera frames into named classes with CLIPSeg."""
from rcl_interfaces.msg import SetParametersResult
import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image
import torch
from vision_msgs.msg import Detection2DArray, LabelInfo

from clip_ros.core.classify import semantic_regions, semantic_segmentation
from clip_ros.core.clipseg import ClipSegRunner, load_clipseg
from clip_ros.core.registry import DEFAULT_CLIPSEG
from clip_ros.nodes.common import (
    clean_phrases, common_parameters, declare_all, decode_rgb, describe, LATCHED_QOS,
    parameter_values, RESULTS_QOS, string_list, subscribe_images)
from clip_ros.nodes.conversions import numpy_to_image
from clip_ros.nodes.frame_worker import FrameWorker, KeyedThrottle
from clip_ros.nodes.messages import detections_msg, label_info_msg

THROTTLE_SEC = 5.0
STATS_PERIOD_SEC = 10.0


class ClipSegNode(Node):
    """Label every pixel with its most probable class from `classes`, or background."""

    def __init__(self, **kwargs):
        super().__init__('clipseg_node', **kwargs)
        declare_all(self, (
            ('clipseg_model', DEFAULT_CLIPSEG,
             describe("CLIPSeg hub id or local directory, or 'tiny'", read_only=True)),
            *common_parameters(),
            ('classes', None, describe('class names to segment', dynamic=True)),
            ('background_threshold', 0.5, describe(
                'pixels whose best class probability is below this are background (0)',
                float_range=(0.0, 1.0))),
        ))
        self._warn = KeyedThrottle(self.get_logger().warning, THROTTLE_SEC)
        self._error = KeyedThrottle(self.get_logger().error, THROTTLE_SEC)
        self.rejected = 0
        self._runner = None
        self._not_ready = ''
        self._classes: list = []
        self._label_sent = False
        self._mask_pub = self.create_publisher(Image, 'mask', RESULTS_QOS)
        self._det_pub = self.create_publisher(Detection2DArray, 'detections', RESULTS_QOS)
        self._label_pub = self.create_publisher(LabelInfo, 'label_info', LATCHED_QOS)
        values = parameter_values(self)
        self._load_model(values)
        self._apply_parameters([])
        self._worker = FrameWorker(self._process, self._on_worker_error, 'clipseg_worker')
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        subscribe_images(self, values['image_qos'], self._worker.submit)
        self._stats_timer = self.create_timer(STATS_PERIOD_SEC, self._log_stats)

    @property
    def worker(self) -> FrameWorker:
        """Return the frame worker, which counts received, dropped and processed frames."""
        return self._worker

    @property
    def not_ready(self) -> str:
        """Return why frames cannot be processed ('' when the model is loaded)."""
        return self._not_ready

    def _load_model(self, values: dict) -> None:
        try:
            model = load_clipseg(values['clipseg_model'], values['device'], values['dtype'],
                                 values['cache_dir'] or None)
            self._runner = ClipSegRunner(model)
        except Exception as e:  # noqa: B902 - the node stays up and says why it cannot infer
            self._not_ready = f'model not loaded: {e}'
            self.get_logger().error(self._not_ready)
            return
        self.get_logger().info(f'loaded {model.name} on {model.device}')

    def _validate_parameters(self, params) -> SetParametersResult:
        for param in params:
            if param.name == 'classes':
                try:
                    string_list('classes', param.value)
                except ValueError as e:
                    return SetParametersResult(successful=False, reason=str(e))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params) -> None:
        values = parameter_values(self)
        self._max_image_size = int(values['max_image_size'])
        self._background = float(values['background_threshold'])
        try:
            classes = clean_phrases(string_list('classes', values['classes']))
        except ValueError as e:
            classes = []
            self.get_logger().error(f'invalid parameters: {e}')
        if classes != self._classes or not self._label_sent:
            self._classes = classes
            self._label_sent = True
            self._label_pub.publish(label_info_msg(classes, self._background))

    def _process(self, msg: Image) -> None:
        runner, classes = self._runner, self._classes
        if runner is None:
            self._error('not_ready', self._not_ready)
            return
        if not classes:
            self._warn('no_classes', 'no classes to segment: set the `classes` parameter')
            return
        try:
            rgb = decode_rgb(msg, self._max_image_size)
        except ValueError as e:
            self.rejected += 1
            self._warn('bad_image', f'rejected image: {e}')
            return
        with torch.inference_mode():
            heatmaps = runner.probabilities(rgb, classes)  # [C, H, W]
        label_image = semantic_segmentation(heatmaps, self._background)
        regions = semantic_regions(label_image, heatmaps, classes)
        self._mask_pub.publish(numpy_to_image(label_image, 'mono16', msg.header))
        self._det_pub.publish(detections_msg(regions, msg.header))

    def _log_stats(self) -> None:
        report = self._worker.dropped_report()
        if report:
            self.get_logger().info(f'{report}; {self.rejected} images rejected')

    def _on_worker_error(self, error: Exception) -> None:
        self._error('inference', f'inference failed: {type(error).__name__}: {error}')

    def destroy_node(self) -> None:
        """Stop the worker before the publishers go away."""
        self._worker.stop()
        super().destroy_node()


def main(args=None) -> None:
    """Run the CLIPSeg node until interrupted."""
    try:
        with rclpy.init(args=args):
            node = ClipSegNode()
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
