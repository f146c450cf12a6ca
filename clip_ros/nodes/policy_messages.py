"""Messages of the VLA policy node: grounded 3D targets, markers, goals, twist and status."""
import json

from geometry_msgs.msg import PoseStamped, TwistStamped
import numpy as np
from std_msgs.msg import Header, String
from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose
from visualization_msgs.msg import Marker, MarkerArray

from clip_ros.policy.perceive import Candidate

ROLE_COLOURS = {'target': (0.1, 0.9, 0.2), 'destination': (0.2, 0.5, 1.0)}


def detection_candidates(msg, labels: np.ndarray, phrases) -> dict:
    """
    Return {phrase: [Candidate]} of a Detection2DArray for the given phrases.

    grounding_node's mask holds detection position + 1 per pixel (a detection's id is its
    track id, not its position).
    """
    candidates = {}
    for i, detection in enumerate(msg.detections):
        if not detection.results:
            continue
        hypothesis = detection.results[0].hypothesis
        if hypothesis.class_id in phrases:
            candidates.setdefault(hypothesis.class_id, []).append(
                Candidate(float(hypothesis.score), labels == i + 1))
    return candidates


def _centre(target) -> np.ndarray:
    """Return a lifted target's box centre (its median point when no box was measured)."""
    return target.position if target.centre is None else target.centre


def targets_3d_msg(lifted: dict, header: Header) -> Detection3DArray:
    """One Detection3D per grounded phrase: {role: (phrase, score, LiftedTarget)}, base frame."""
    detections = []
    for role, (phrase, score, target) in lifted.items():
        msg = Detection3D(header=header, id=role)
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = phrase, float(score)
        position = hypothesis.pose.pose.position
        position.x, position.y, position.z = (float(v) for v in _centre(target))
        hypothesis.pose.pose.orientation.w = 1.0
        msg.results.append(hypothesis)
        msg.bbox.center = hypothesis.pose.pose
        msg.bbox.size.x, msg.bbox.size.y, msg.bbox.size.z = (float(v) for v in target.size)
        detections.append(msg)
    return Detection3DArray(header=header, detections=detections)


def markers_msg(lifted: dict, header: Header) -> MarkerArray:
    """Return a sphere and a text label per grounded phrase (RViz), replacing the last set."""
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    for k, (role, (phrase, _, target)) in enumerate(lifted.items()):
        r, g, b = ROLE_COLOURS.get(role, (1.0, 1.0, 1.0))
        for kind, ident in ((Marker.SPHERE, 2 * k), (Marker.TEXT_VIEW_FACING, 2 * k + 1)):
            marker = Marker(header=header, ns='vla_policy', id=ident, type=kind)
            marker.pose.position.x, marker.pose.position.y, marker.pose.position.z = (
                float(v) for v in _centre(target) + np.array([0, 0, 0.06 * (ident % 2)]))
            marker.pose.orientation.w = 1.0
            side = 0.03 if kind == Marker.SPHERE else 0.025
            marker.scale.x = marker.scale.y = marker.scale.z = side
            marker.color.r, marker.color.g, marker.color.b, marker.color.a = r, g, b, 0.9
            marker.text = f'{role}: {phrase}' if kind == Marker.TEXT_VIEW_FACING else ''
            markers.append(marker)
    return MarkerArray(markers=markers)


def goal_msg(goal, header: Header) -> PoseStamped:
    """Return an end-effector goal pose (grasp point; fingers down, identity orientation)."""
    msg = PoseStamped(header=header)
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in goal)
    msg.pose.orientation.w = 1.0
    return msg


def twist_msg(velocity, header: Header) -> TwistStamped:
    """Return a linear servo twist (m/s)."""
    msg = TwistStamped(header=header)
    msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(v) for v in velocity)
    return msg


def status_msg(command, action) -> String:
    """Return the status as JSON: command text, its target and destination, state, detail."""
    target = command.targets[0] if command.targets else None
    return String(data=json.dumps({
        'command': command.text, 'target': target, 'destination': command.destination,
        'state': action.state, 'phase': action.phase, 'detail': action.detail}))


def position_of(msg) -> np.ndarray:
    """Return a Pose(Stamped)'s position as a float64 [3]."""
    pose = getattr(msg, 'pose', msg)
    return np.array([pose.position.x, pose.position.y, pose.position.z])
