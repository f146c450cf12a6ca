"""
Many cameras, one model: a newest-frame slot per camera, batched through one worker thread.

grounding_node with `cameras` set keeps a Camera per entry (its own topics, Tracker and
FrameStats) and one BatchWorker (nodes/frame_worker.py). The worker takes the newest frame of
every camera that has one, waiting at most `batch_window` seconds after the first for the
cameras that sent frames recently, and hands them to the model as one batch. A camera with no
new frame is simply not in the batch, so a slow or silent camera never stalls the others.
"""
from clip_ros.nodes.common import string_list
from clip_ros.perception.stats import FrameStats


def camera_names(node, value) -> list[str]:
    """
    Return the `cameras` parameter as a list of namespaces; raise ValueError with the reason.

    Unset (None) means the node's own single camera and returns []. A value that is not a
    list of strings, an explicitly empty list, an empty entry, or one camera given twice
    (after resolving its image topic, so 'cam' and '/<node namespace>/cam' are the same
    camera) is refused.
    """
    if value is None:
        return []
    # Not list(value): a single string (`-p cameras:=front`) would become one camera per letter.
    names = [name.strip().rstrip('/') for name in string_list('cameras', value)]
    if not names:
        raise ValueError('cameras is an empty list: name at least one camera namespace, or '
                         "leave it unset for the node's own image topic")
    seen = {}
    for name in names:
        if not name:
            raise ValueError(f'cameras {list(value)} has an empty entry')
        try:
            topic = node.resolve_topic_name(f'{name}/image')
        except Exception as e:  # noqa: B902 - rclpy raises its own types for invalid names
            raise ValueError(f'cameras entry {name!r} is not a valid namespace: {e}') from e
        if topic in seen:
            raise ValueError(f'camera {name!r} is given twice in cameras (as {seen[topic]!r} '
                             f'and {name!r}, both {topic})')
        seen[topic] = name
    return names


class Camera:
    """One camera's topics, outputs, tracker and statistics ('' = the node's own topics)."""

    def __init__(self, name: str, tracker):
        self.name = name
        self.tracker = tracker
        self.stats = FrameStats()
        self.pubs = {}  # output topic base name -> lifecycle publisher

    def topic(self, base: str) -> str:
        """Return the camera's topic `base` (relative, so namespaces and remapping apply)."""
        return f'{self.name}/{base}' if self.name else base
