"""Launch clip_classifier_node: zero-shot classification of each frame -> classification."""
from clip_ros.perception_launch import perception_launch


def generate_launch_description():
    """Declare the arguments and the zero-shot classifier node."""
    return perception_launch('clip_classifier_node',
                             {'clip_arch': 'tiny', 'clip_pretrained': 'random'})
