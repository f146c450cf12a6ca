"""Build CameraInfo and ground-truth vision_msgs messages from the MuJoCo sim's frames."""
from sensor_msgs.msg import CameraInfo, JointState
from std_msgs.msg import Header
from vision_msgs.msg import (
    Detection2D, Detection2DArray, Detection3D, Detection3DArray, ObjectHypothesisWithPose)


def camera_info_msg(K, width: int, height: int, header: Header) -> CameraInfo:
    """Return the CameraInfo of an undistorted pinhole camera with intrinsics `K` (3x3)."""
    fx, fy, cx, cy = float(K[0][0]), float(K[1][1]), float(K[0][2]), float(K[1][2])
    return CameraInfo(header=header, width=width, height=height, distortion_model='plumb_bob',
                      d=[0.0] * 5, k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
                      r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                      p=[fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0])


# Two prismatic finger joints, each the travel of one finger from the grasp centre (m), so their
# sum is the opening between the fingers, as franka_gripper's joint_states reports it.
FINGER_JOINTS = ('finger_left_joint', 'finger_right_joint')


def finger_opening(sim, closed: bool) -> float:
    """
    Return the measured gap between the inner faces of `sim`'s fingers (m).

    The fingers stop at the held object's width; closed on nothing they meet (0). The sim
    leaves its fingers drawn open when closing on nothing, so `closed` (the last command the
    sim ran) says whether they are shut.
    """
    if sim.holding is None and closed:
        return 0.0
    finger = sim.model.geom('finger_l')
    return max(0.0, 2.0 * float(finger.pos[1] - finger.size[1]))


def finger_joint_state_msg(opening: float, header: Header) -> JointState:
    """Return the fingers' JointState: each finger at half of `opening` (m)."""
    return JointState(header=header, name=list(FINGER_JOINTS), position=[opening / 2] * 2,
                      velocity=[], effort=[])


def _hypothesis(truth) -> ObjectHypothesisWithPose:
    result = ObjectHypothesisWithPose()
    result.hypothesis.class_id = truth.name
    result.hypothesis.score = 1.0
    pose = result.pose.pose
    pose.position.x, pose.position.y, pose.position.z = truth.position_camera
    quat = truth.quat_camera  # (w, x, y, z)
    pose.orientation.w, pose.orientation.x = quat[0], quat[1]
    pose.orientation.y, pose.orientation.z = quat[2], quat[3]
    return result


def ground_truth_3d_msg(truths, header: Header) -> Detection3DArray:
    """One Detection3D per object: class_id = name, pose and box in the camera optical frame."""
    detections = []
    for truth in truths:
        msg = Detection3D(header=header, id=str(truth.instance_id))
        hypothesis = _hypothesis(truth)
        msg.results.append(hypothesis)
        msg.bbox.center = hypothesis.pose.pose
        msg.bbox.size.x, msg.bbox.size.y, msg.bbox.size.z = (float(v) for v in truth.size)
        detections.append(msg)
    return Detection3DArray(header=header, detections=detections)


def ground_truth_2d_msg(truths, header: Header) -> Detection2DArray:
    """One Detection2D per visible object: class_id = name, pixel box from its mask."""
    detections = []
    for truth in truths:
        if truth.box is None:
            continue
        msg = Detection2D(header=header, id=str(truth.instance_id))
        msg.results.append(_hypothesis(truth))
        x0, y0, x1, y1 = truth.box
        # Same convention as the grounding node: pixel (0, 0) spans [0, 1) x [0, 1).
        msg.bbox.center.position.x = (x0 + x1) / 2
        msg.bbox.center.position.y = (y0 + y1) / 2
        msg.bbox.size_x, msg.bbox.size_y = float(x1 - x0), float(y1 - y0)
        detections.append(msg)
    return Detection2DArray(header=header, detections=detections)
