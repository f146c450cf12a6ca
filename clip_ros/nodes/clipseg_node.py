"""Semantic segmentation of camera frames into named classes with CLIPSeg."""
from dataclasses import replace
import threading

import numpy as np
from sensor_msgs.msg import Image
import torch
from vision_msgs.msg import Detection2DArray, LabelInfo

from clip_ros.nodes.backend_parameters import backend_options, backend_parameters
from clip_ros.nodes.common import (
    clean_phrases, common_parameters, declare_all, describe, LATCHED_QOS,
    parameter_values, RESULTS_QOS, spin_node, string_list)
from clip_ros.nodes.conversions import numpy_to_image
from clip_ros.nodes.managed import ManagedNode
from clip_ros.nodes.messages import detections_msg, label_info_msg
from clip_ros.perception.backends import make_engine, make_runner, use_cpu_threads
from clip_ros.perception.classify import semantic_regions, semantic_segmentation
from clip_ros.perception.clipseg import load_clipseg
from clip_ros.perception.light import correction_for
from clip_ros.perception.registry import DEFAULT_CLIPSEG

WARM_UP_SIZE = 224


def check_classes(values: dict) -> list:
    """Return the cleaned `classes`; raise ValueError naming the problem."""
    return clean_phrases(string_list('classes', values['classes']))


class ClipSegNode(ManagedNode):
    """Label every pixel with its most probable class from `classes`, or background."""

    def __init__(self, **kwargs):
        super().__init__('clipseg_node', **kwargs)
        declare_all(self, (
            ('clipseg_model', DEFAULT_CLIPSEG,
             describe("CLIPSeg hub id or local directory, or 'tiny'", read_only=True)),
            *common_parameters(),
            *backend_parameters(),
            ('classes', None, describe('class names to segment', dynamic=True)),
            ('background_threshold', 0.5, describe(
                'pixels whose best class probability is below this are background (0)',
                float_range=(0.0, 1.0))),
        ))
        self._runner = self._clipseg = self._light = None
        self._label_pub = None
        self._classes: list = []
        self._label_sent = False
        self._background = None
        # Orders label_info against the masks: none read against a map it was not made with.
        self._labels_lock = threading.Lock()
        self.watch_parameters(check_classes, self._apply_parameters)
        self.start()

    def load_model(self) -> tuple:
        """Load CLIPSeg, warm it up and create the outputs."""
        values = parameter_values(self)
        options = backend_options(values)
        cache = options.pop('cache_dir')
        engine = make_engine(**options)  # an unknown backend or device fails before loading
        model = load_clipseg(values['clipseg_model'], values['device'], values['dtype'],
                             values['cache_dir'] or None)
        threads = use_cpu_threads(values['threads'], model)
        if engine is not None:
            engine = replace(engine, threads=threads)
        self.get_logger().info(f'loaded {model.name} on {model.device}, '
                               f'backend {options["backend"]}')
        self._runner, self._clipseg = make_runner(model, engine, cache), model
        # One inference now, so the first camera frame does not pay for lazy initialisation.
        with torch.inference_mode():
            self._runner.probabilities(np.zeros((WARM_UP_SIZE, WARM_UP_SIZE, 3), np.uint8),
                                       self._classes or ['an object'])
        self._mask_pub = self.output(Image, 'mask', RESULTS_QOS)
        self._det_pub = self.output(Detection2DArray, 'detections', RESULTS_QOS)
        self._label_pub = self.output(LabelInfo, 'label_info', LATCHED_QOS)
        return model.name, str(model.device)

    def release_model(self) -> None:
        """Drop the model and the outputs."""
        self._runner = self._clipseg = self._label_pub = None

    def on_activated(self) -> None:
        """Publish the current label map, latched for late subscribers."""
        self._label_sent = False
        self._apply_parameters(set())

    def _apply_parameters(self, names: set) -> None:
        # Checked by check_classes before the set landed; frames read these when they start.
        values = parameter_values(self)
        self._max_image_size = int(values['max_image_size'])
        light = correction_for(self._clipseg, values['light_correction'])
        background = float(values['background_threshold'])
        classes = check_classes(values)
        # label_info carries the classes and the threshold: republished when either changes.
        with self._labels_lock:
            self._light = light
            if (classes != self._classes or background != self._background
                    or not self._label_sent):
                self._classes, self._background = classes, background
                self._label_sent = self._label_pub is not None and self.active
                if self._label_sent:
                    self._label_pub.publish(label_info_msg(classes, self._background))

    def process(self, msg: Image) -> None:
        """Segment one frame into the classes and publish the label image and regions."""
        with self._labels_lock:
            runner, classes, background = self._runner, self._classes, self._background
            light = self._light
        if runner is None:
            return
        if not classes:
            self._warn('no_classes', 'no classes to segment: set the `classes` parameter')
            return
        rgb = self.decode_frame(msg)
        if rgb is None:
            return
        if light is not None:
            rgb = light(rgb)
        with torch.inference_mode():
            heatmaps = runner.probabilities(rgb, classes)  # [C, H, W]
        label_image = semantic_segmentation(heatmaps, background)
        regions = semantic_regions(label_image, heatmaps, classes)
        with self._labels_lock:
            if (classes, background) != (self._classes, self._background):
                # label_info changed meanwhile: its ids would misname these pixels.
                self.get_logger().info('a frame segmented before classes or '
                                       'background_threshold changed is not published',
                                       throttle_duration_sec=5.0)
                return
            self._mask_pub.publish(numpy_to_image(label_image, 'mono16', msg.header))
            self._det_pub.publish(detections_msg(regions, msg.header))


def main(args=None) -> None:
    """Run the CLIPSeg node until interrupted."""
    spin_node(ClipSegNode, args)


if __name__ == '__main__':
    main()
