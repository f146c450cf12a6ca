"""Messages of the VLA policy node: grounded 3D targets, markers, goals, twist and status."""
import json
import math

from geometry_msgs.msg import PoseStamped, TwistStamped
import numpy as np
from std_msgs.msg import Header, String
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from clip_ros.nodes.messages import detection_3d, object_markers
from clip_ros.perception.geometry import SHAPE_HYPOTHESIS
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
            shape = [float(r.hypothesis.score) for r in detection.results[1:]
                     if r.hypothesis.class_id == SHAPE_HYPOTHESIS]
            candidates.setdefault(hypothesis.class_id, []).append(
                Candidate(float(hypothesis.score), labels == i + 1,
                          shape[0] if shape else math.nan))
    return candidates


def targets_3d_msg(lifted: dict, header: Header) -> Detection3DArray:
    """One Detection3D per grounded phrase: {role: (phrase, score, LiftedTarget)}, base frame."""
    return Detection3DArray(header=header, detections=[
        detection_3d(role, phrase, score, target, header)
        for role, (phrase, score, target) in lifted.items()])


def markers_msg(lifted: dict, header: Header) -> MarkerArray:
    """Return a sphere and a text label per grounded phrase (RViz), replacing the last set."""
    return object_markers([(f'{role}: {phrase}', ROLE_COLOURS.get(role, (1.0, 1.0, 1.0)), target)
                           for role, (phrase, _, target) in lifted.items()], header, 'vla_policy')


def goal_msg(goal, header: Header, orientation=(0.0, 0.0, 0.0, 1.0)) -> PoseStamped:
    """Return an end-effector goal pose: the grasp point, with the fingers-down `orientation`."""
    msg = PoseStamped(header=header)
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in goal)
    q = msg.pose.orientation
    q.x, q.y, q.z, q.w = (float(v) for v in orientation)
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
