"""Launch clipseg_node: per-pixel classes of each frame -> mask, detections, label_info."""
from clip_ros.perception_launch import perception_launch


def generate_launch_description():
    """Declare the arguments and the CLIPSeg segmentation node."""
    return perception_launch('clipseg_node', {'clipseg_model': 'tiny'})
