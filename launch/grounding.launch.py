"""Launch grounding_node: phrases from `command` (or the `queries` parameter) -> detections."""
from clip_ros.perception_launch import perception_launch


def generate_launch_description():
    """Declare the arguments and the grounding node."""
    return perception_launch(
        'grounding_node', {'clip_arch': 'tiny', 'clip_pretrained': 'random',
                           'clipseg_model': 'tiny'},
        {'command': 'input std_msgs/String command topic',
         'depth': 'input depth image topic (publish_3d; its transports follow it)',
         'camera_info': 'input sensor_msgs/CameraInfo topic (publish_3d)'})
