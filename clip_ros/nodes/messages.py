"""Build vision_msgs and diagnostic messages from core results (images: nodes/conversions.py)."""
import json
import math
from typing import Sequence

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
import numpy as np
from std_msgs.msg import Header, String
from vision_msgs.msg import (
    Classification, Detection2D, Detection2DArray, Detection3D, Detection3DArray, LabelInfo,
    ObjectHypothesis, ObjectHypothesisWithPose, VisionClass)
from visualization_msgs.msg import Marker, MarkerArray

from clip_ros.perception.geometry import SHAPE_HYPOTHESIS


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
    if math.isfinite(detection.shape_prob):
        # A second hypothesis: the shape head's probability of the phrase's shape, which lets
        # vla_policy_node trust a sure head over a partial depth view (policy.perceive).
        shape = ObjectHypothesisWithPose()
        shape.hypothesis.class_id = SHAPE_HYPOTHESIS
        shape.hypothesis.score = float(detection.shape_prob)
        msg.results.append(shape)
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


def grounding_status_msg(phrases: Sequence[str], rejected: dict, header=None) -> String:
    """
    Return grounding_node's per-phrase outcome as JSON text.

    {"phrases": [...], "found": [...], "rejected": {phrase: reason}, "stamp": [sec, nanosec]}:
    every active phrase is either found (it has detections) or rejected with the reason
    ('not found: <phrase>', 'unknown word: <word>', ...); stamp is the frame's, or null when
    the reasons come from the words alone.
    """
    stamp = None if header is None else [int(header.stamp.sec), int(header.stamp.nanosec)]
    return String(data=json.dumps({
        'phrases': list(phrases), 'found': [p for p in phrases if p not in rejected],
        'rejected': {p: rejected[p] for p in phrases if p in rejected}, 'stamp': stamp}))


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
        'inference_failures': str(snapshot.failed),
        'inputs_rejected': str(snapshot.rejected),
        'last_rejected': snapshot.last_rejected,
    })
    status = DiagnosticStatus(
        level=bytes([snapshot.level]), name=name, message='; '.join(snapshot.reasons) or 'ok',
        hardware_id=values.get('device', ''),
        values=[KeyValue(key=k, value=v) for k, v in values.items()])
    msg = DiagnosticArray(status=[status])
    if stamp is not None:
        msg.header.stamp = stamp
    return msg


def _centre(target) -> np.ndarray:
    """Return a lifted target's box centre (its median point when no box was measured)."""
    return target.position if target.centre is None else target.centre


def detection_3d(ident: str, phrase: str, score: float, target, header: Header) -> Detection3D:
    """Return a Detection3D of a LiftedTarget: box centre and size in the header's frame."""
    msg = Detection3D(header=header, id=str(ident))
    hypothesis = ObjectHypothesisWithPose()
    hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = phrase, float(score)
    position = hypothesis.pose.pose.position
    position.x, position.y, position.z = (float(v) for v in _centre(target))
    hypothesis.pose.pose.orientation.w = 1.0
    msg.results.append(hypothesis)
    msg.bbox.center = hypothesis.pose.pose
    msg.bbox.size.x, msg.bbox.size.y, msg.bbox.size.z = (float(v) for v in target.size)
    return msg


def detections_3d_msg(items: Sequence, header: Header) -> Detection3DArray:
    """Return a Detection3DArray of (id, phrase, score, LiftedTarget) items."""
    return Detection3DArray(header=header, detections=[
        detection_3d(ident, phrase, score, target, header)
        for ident, phrase, score, target in items])


def object_markers(items: Sequence, header: Header, namespace: str) -> MarkerArray:
    """Return a sphere and a text label per (label, rgb 0..1, LiftedTarget), replacing the last."""
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    # The label floats 6 cm above its sphere: up is +z in a base frame, -y in an optical one
    # (REP 103: z forward, y down).
    up = np.array([0.0, -0.06, 0.0] if 'optical' in header.frame_id else [0.0, 0.0, 0.06])
    for k, (label, (r, g, b), target) in enumerate(items):
        for kind, ident in ((Marker.SPHERE, 2 * k), (Marker.TEXT_VIEW_FACING, 2 * k + 1)):
            marker = Marker(header=header, ns=namespace, id=ident, type=kind)
            marker.pose.position.x, marker.pose.position.y, marker.pose.position.z = (
                float(v) for v in _centre(target) + up * (ident % 2))
            marker.pose.orientation.w = 1.0
            side = 0.03 if kind == Marker.SPHERE else 0.025
            marker.scale.x = marker.scale.y = marker.scale.z = side
            marker.color.r, marker.color.g, marker.color.b, marker.color.a = r, g, b, 0.9
            marker.text = label if kind == Marker.TEXT_VIEW_FACING else ''
            markers.append(marker)
    return MarkerArray(markers=markers)
