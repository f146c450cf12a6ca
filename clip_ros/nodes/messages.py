"""Build vision_msgs and diagnostic messages from core results (images: nodes/conversions.py)."""
from typing import Sequence

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
import numpy as np
from std_msgs.msg import Header
from vision_msgs.msg import (
    Classification, Detection2D, Detection2DArray, LabelInfo, ObjectHypothesis,
    ObjectHypothesisWithPose, VisionClass)


def detection_msg(detection, header: Header, track_id: int | None = None) -> Detection2D:
    """Convert one core Detection (box in original pixels) to a Detection2D; id = track id."""
    msg = Detection2D(header=header,
                      id=str(detection.index if track_id is None else track_id))
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


def detections_msg(detections: Sequence, header: Header,
                   ids: Sequence[int] | None = None) -> Detection2DArray:
    """Convert core Detections to a Detection2DArray with the image's header (ids optional)."""
    ids = [None] * len(detections) if ids is None else ids
    return Detection2DArray(header=header, detections=[
        detection_msg(d, header, i) for d, i in zip(detections, ids)])


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


def _number(value: float, digits: int = 1) -> str:
    return 'nan' if value != value else f'{value:.{digits}f}'


def diagnostics_msg(name: str, snapshot, extra: dict, stamp=None) -> DiagnosticArray:
    """
    Build a one-status DiagnosticArray from an assessed core.stats Snapshot.

    `extra` adds string key-values first (state, model, device, ...); the status message
    joins the snapshot's reasons, or reads 'ok'.
    """
    values = {key: str(value) for key, value in extra.items()}
    values.update({
        'input_rate_hz': _number(snapshot.input_rate),
        'processed_rate_hz': _number(snapshot.processed_rate),
        'frames_received': str(snapshot.received),
        'frames_processed': str(snapshot.processed),
        'frames_dropped': str(snapshot.dropped),
        'drop_ratio': _number(snapshot.drop_ratio, 3),
        'inference_p50_ms': _number(snapshot.inference_ms[0]),
        'inference_p99_ms': _number(snapshot.inference_ms[1]),
        'latency_p50_ms': _number(snapshot.latency_ms[0]),
        'latency_p99_ms': _number(snapshot.latency_ms[1]),
        'seconds_since_input': _number(snapshot.since_input),
        'last_error': snapshot.last_error,
    })
    status = DiagnosticStatus(
        level=bytes([snapshot.level]), name=name, message='; '.join(snapshot.reasons) or 'ok',
        hardware_id=values.get('device', ''),
        values=[KeyValue(key=k, value=v) for k, v in values.items()])
    msg = DiagnosticArray(status=[status])
    if stamp is not None:
        msg.header.stamp = stamp
    return msg
