"""Zero-shot classification of whole camera frames with CLIP."""
from dataclasses import replace

import numpy as np
from sensor_msgs.msg import Image
from vision_msgs.msg import Classification

from clip_ros.nodes.backend_parameters import backend_options, backend_parameters
from clip_ros.nodes.common import (
    clean_phrases, common_parameters, declare_all, describe, parameter_values,
    RESULTS_QOS, spin_node, string_list)
from clip_ros.nodes.managed import ManagedNode
from clip_ros.nodes.messages import classification_msg
from clip_ros.perception.backends import make_clip, make_engine, use_cpu_threads
from clip_ros.perception.classify import check_templates, DEFAULT_TEMPLATES, ZeroShotClassifier
from clip_ros.perception.light import correction_for
from clip_ros.perception.loading import load_clip
from clip_ros.perception.registry import DEFAULT_CLIP

WARM_UP_SIZE = 224


def check_lists(values: dict) -> tuple[list, list]:
    """Return cleaned (classes, templates); raise ValueError naming the problem."""
    classes = clean_phrases(string_list('classes', values['classes']))
    templates = [t for t in string_list('templates', values['templates']) if t.strip()]
    try:
        return classes, check_templates(templates) if templates else list(DEFAULT_TEMPLATES)
    except ValueError as e:
        raise ValueError(f'templates: {e}') from None


class ClipClassifierNode(ManagedNode):
    """Publish the probability of each class in `classes` for every frame."""

    def __init__(self, **kwargs):
        super().__init__('clip_classifier_node', **kwargs)
        ro = {'read_only': True}
        declare_all(self, (
            ('clip_arch', DEFAULT_CLIP[0], describe("open_clip architecture, or 'tiny'", **ro)),
            ('clip_pretrained', DEFAULT_CLIP[1],
             describe("pretrained tag or weights file; '' or 'random' for random init", **ro)),
            *common_parameters(),
            *backend_parameters(),
            ('classes', None, describe('class names to score', dynamic=True)),
            ('templates', list(DEFAULT_TEMPLATES),
             describe("prompt templates with a '{}' for the class name", dynamic=True)),
            ('top_k', 0, describe('publish only the best k classes; 0 for all',
                                  int_range=(0, 65535))),
            ('compose', True, describe(
                "score classes that are all '<colour> <shape>' of a model with a shape head (the "
                "bundled tabletop) as CLIP's colour times the head's shape; false: CLIP alone")),
        ))
        self._clip = self._classifier = None
        self._frame_settings = (None, None, 0)  # (classifier, light correction, top_k)
        self._classes: list = []
        self.watch_parameters(check_lists, self._apply_parameters)
        self.start()

    def load_model(self) -> tuple:
        """Load CLIP, build the classifier for the current classes and create the output."""
        values = parameter_values(self)
        options = backend_options(values)
        cache = options.pop('cache_dir')
        engine = make_engine(**options)  # an unknown backend or device fails before loading
        clip = load_clip(values['clip_arch'], values['clip_pretrained'],
                         values['device'], values['dtype'], values['cache_dir'] or None)
        threads = use_cpu_threads(values['threads'], clip)
        if engine is not None:
            engine = replace(engine, threads=threads)
        self._clip = make_clip(clip, engine, cache)
        self.get_logger().info(f'loaded {clip.name} on {clip.device}, '
                               f'backend {options["backend"]}')
        self._apply_parameters(set())
        # One inference now, so the first camera frame does not pay for lazy initialisation.
        ZeroShotClassifier(self._clip, self._classes or ['an object'], DEFAULT_TEMPLATES)(
            np.zeros((WARM_UP_SIZE, WARM_UP_SIZE, 3), np.uint8))
        self._pub = self.output(Classification, 'classification', RESULTS_QOS)
        return self._clip.name, str(self._clip.device)

    def release_model(self) -> None:
        """Drop the model and the classifier."""
        self._classifier = self._clip = None
        self._frame_settings = (None, None, 0)

    def _apply_parameters(self, names: set) -> None:
        # Checked by check_lists before the set landed; frames read these when they start.
        values = parameter_values(self)
        self._max_image_size = int(values['max_image_size'])
        light = correction_for(self._clip, values['light_correction'])
        classes, templates = check_lists(values)
        classifier = None
        if self._clip is not None and classes:
            classifier = ZeroShotClassifier(self._clip, classes, templates, values['compose'])
            if classifier.composed != getattr(self._classifier, 'composed', None):
                self.get_logger().info('classes scored as colour x shape' if classifier.composed
                                       else 'classes scored by CLIP alone')
        self._classifier, self._classes = classifier, classes
        # Swapped in one assignment, so a frame never scores with one set's classifier and
        # publishes with another set's top_k or light correction.
        self._frame_settings = (classifier, light, int(values['top_k']))

    def process(self, msg: Image) -> None:
        """Score the classes on one frame and publish them."""
        classifier, light, top_k = self._frame_settings
        if self._clip is None:
            return
        if classifier is None:
            self._warn('no_classes', 'no classes to score: set the `classes` parameter')
            return
        rgb = self.decode_frame(msg)
        if rgb is None:
            return
        probabilities = classifier(light(rgb) if light is not None else rgb)
        self._pub.publish(
            classification_msg(classifier.classes, probabilities, msg.header, top_k))


def main(args=None) -> None:
    """Run the classifier node until interrupted."""
    spin_node(ClipClassifierNode, args)


if __name__ == '__main__':
    main()
