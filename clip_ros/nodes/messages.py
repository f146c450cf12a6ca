"""Build vision_msgs messages from core results (images live in nodes/conversions.py)."""
from typing import Sequence

import numpy as np
from std_msgs.msg import Header
from vision_msgs.msg import (
    Classification, Detection2D, Detection2DArray, LabelInfo, ObjectHypothesis,
    ObjectHypothesisWithPose, VisionClass)


def detection_msg(detection, header: Header) -> Detection2D:
    """Convert one core Detection (box in original pixels) to a Detection2D."""
    msg = Detection2D(header=header, id=str(detection.index))
    cx, cy, w, h = detection.center_size
    msg.bbox.center.position.x = float(cx)
    msg.bbox.center.position.y = float(cy)
    msg.bbox.size_x = float(w)
    msg.bbox.size_y = float(h)
    result = ObjectHypothesisWithPose()
    result.hypothesis.class_id = detection.phrase
    result.hypothesis.score = float(detection.score)
    msg.results.append(result)
    return msg


def detections_msg(detections: Sequence, header: Header) -> Detection2DArray:
    """Convert core Detections to a Detection2DArray that carries the image's header."""
    return Detection2DArray(header=header,
                            detections=[detection_msg(d, header) for d in detections])


def label_info_msg(phrases: Sequence[str], threshold: float = 0.0,
                   header: Header | None = None) -> LabelInfo:
    """Map label-image values to phrases: class_id = phrase index + 1, 0 is background."""
    class_map = [VisionClass(class_id=i + 1, class_name=p) for i, p in enumerate(phrases)]
    return LabelInfo(header=header or Header(), class_map=class_map, threshold=float(threshold))


def classification_msg(classes: Sequence[str], probabilities: np.ndarray,
                       header: Header, top_k: int = 0) -> Classification:
    """Build a Classification with one hypothesis per class, highest probability first."""
    order = np.argsort(-np.asarray(probabilities, dtype=np.float64), kind='stable')
    if top_k > 0:
        order = order[:top_k]
    results = [ObjectHypothesis(class_id=classes[i], score=float(probabilities[i]))
               for i in order]
    return Classification(header=header, results=results)
