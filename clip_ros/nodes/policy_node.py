"""
vla_policy_node: turn a language command and groundings into end-effector goals and gripper.

Detections, the instance mask, depth and camera_info are matched by stamp (TimeMatcher); the
command's target and destination are lifted to the base frame with the median masked depth and
the static extrinsic (or tf2, or a camera_pose topic); a geometric or learned policy then
publishes goals, a servo twist, the gripper command and a JSON status at `rate` Hz.
"""
import threading
import time

import numpy as np
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from geometry_msgs.msg import PoseStamped, TwistStamped  # noqa: I100 - ROS messages after rclpy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Float64, Header, String
from vision_msgs.msg import Detection2DArray, Detection3DArray
from visualization_msgs.msg import MarkerArray

from clip_ros.core.command import parse_command
from clip_ros.core.lifting import (
    check_intrinsics, depth_to_metres, Extrinsic, lift_mask, quat_to_matrix)
from clip_ros.core.policy import GeometricPolicy, Observation, OPEN, PolicyConfig
from clip_ros.core.sync import TimeMatcher
from clip_ros.nodes.common import (
    COMMAND_QOS, declare_all, describe, image_qos, LATCHED_QOS, RESULTS_QOS, spin_node)
from clip_ros.nodes.conversions import image_to_numpy, to_rgb
from clip_ros.nodes.policy_messages import (
    goal_msg, markers_msg, position_of, status_msg, targets_3d_msg, twist_msg)

STREAMS = ('detections', 'mask', 'depth', 'camera_info')
POLICIES = ('geometric', 'learned')


def _stamp(header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def _parameters() -> tuple:
    ro = {'read_only': True}
    return (
        ('policy', 'geometric', describe("'geometric' or 'learned' (needs head_path)", **ro)),
        ('head_path', '', describe('policy head checkpoint (train_policy_head)', **ro)),
        ('device', 'auto', describe("device of the learned head's CLIP", **ro)),
        ('rate', 15.0, describe('control ticks per second', float_range=(1.0, 200.0), **ro)),
        ('base_frame', 'world', describe('frame of goals, targets and end-effector state')),
        ('extrinsic', [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0], describe(
            'base_from_camera [x, y, z, qx, qy, qz, qw]; overridden by camera_pose or tf2')),
        ('use_tf', False, describe('look up base_frame <- camera frame with tf2', **ro)),
        ('depth_scale', 0.001, describe('metres per unit of 16UC1 depth',
                                        float_range=(1e-6, 1.0))),
        ('min_depth', 0.05, describe('nearest valid depth (m)', float_range=(0.0, 100.0))),
        ('max_depth', 5.0, describe('farthest valid depth (m)', float_range=(0.01, 1000.0))),
        ('sync_tolerance', 0.05, describe('largest stamp gap of matched inputs (s)',
                                          float_range=(0.0, 10.0))),
        ('min_score', 0.0, describe('ignore detections below this score',
                                    float_range=(0.0, 1.0))),
        ('max_speed', 0.3, describe('end-effector speed limit (m/s)',
                                    float_range=(0.001, 5.0), **ro)),
        ('workspace_min', [-0.55, -0.45, 0.0], describe('workspace box low corner', **ro)),
        ('workspace_max', [0.55, 0.45, 0.6], describe('workspace box high corner', **ro)),
        ('lost_timeout', 2.0, describe('abort when the target is unseen this long (s)',
                                       float_range=(0.05, 60.0), **ro)),
        ('acquire_timeout', 3.0, describe('abort when the target is never seen (s)',
                                          float_range=(0.05, 600.0), **ro)),
        ('time_limit', 30.0, describe('abort a command running longer (s)',
                                      float_range=(1.0, 3600.0), **ro)),
    )


class VlaPolicyNode(Node):
    """Ground the command's target in 3D and drive the end effector with a policy."""

    def __init__(self, **kwargs):
        super().__init__('vla_policy_node', **kwargs)
        declare_all(self, _parameters())
        p = {name: self.get_parameter(name).value for name, _, _ in _parameters()}
        self._p = p
        self._extrinsic = Extrinsic.from_xyz_quat(p['extrinsic'])
        self._policy = self._make_policy(p)
        # Detections come a few hundred ms after their frame on a CPU: keep ~1 s of 30 Hz depth.
        self._matcher = TimeMatcher(STREAMS, p['sync_tolerance'], queue_size=30)
        self._seen = set()
        self._command, self._fresh, self._error = None, {}, ''
        self._ee, self._gripper, self._image, self._sent = None, OPEN, None, None
        self._lock = threading.Lock()
        self._tf = self._make_tf() if p['use_tf'] else None
        outputs = ((Detection3DArray, 'targets_3d'), (MarkerArray, 'target_markers'),
                   (PoseStamped, 'ee_goal'), (TwistStamped, 'ee_twist'),
                   (Float64, 'gripper_command'), (String, 'policy_status'))
        self._pubs = {topic: self.create_publisher(kind, topic, RESULTS_QOS)
                      for kind, topic in outputs}
        self._subscribe()
        control = MutuallyExclusiveCallbackGroup()
        self._timer = self.create_timer(1.0 / p['rate'], self._tick, callback_group=control)

    def _make_policy(self, p: dict):
        config = PolicyConfig(rate=p['rate'], max_speed=p['max_speed'],
                              workspace_min=tuple(p['workspace_min']),
                              workspace_max=tuple(p['workspace_max']),
                              lost_timeout=p['lost_timeout'],
                              acquire_timeout=p['acquire_timeout'], time_limit=p['time_limit'])
        if p['policy'] not in POLICIES:
            raise ValueError(f"policy {p['policy']!r} is not one of {', '.join(POLICIES)}")
        if p['policy'] == 'geometric':
            return GeometricPolicy(config)
        from clip_ros.core.models import load_clip
        from clip_ros.core.policy_head import Embedder, LearnedPolicy, PolicyHead

        head = PolicyHead.load(p['head_path'])
        clip = load_clip(head.config.clip_arch, head.config.clip_pretrained, p['device'])
        return LearnedPolicy(head, Embedder(clip), config)

    def _make_tf(self):
        try:
            import tf2_ros
        except ImportError:
            self.get_logger().warning('use_tf is set but tf2_ros is not installed; using the '
                                      'extrinsic parameter')
            return None
        buffer = tf2_ros.Buffer()
        self._tf_listener = tf2_ros.TransformListener(buffer, self)
        return buffer

    def _subscribe(self) -> None:
        sensor = image_qos('reliable')
        for kind, topic, qos in ((Detection2DArray, 'detections', RESULTS_QOS),
                                 (Image, 'mask', RESULTS_QOS), (Image, 'depth', sensor),
                                 (CameraInfo, 'camera_info', sensor)):
            self.create_subscription(kind, topic, self._stream(topic), qos)
        self.create_subscription(String, 'command', self._on_command, COMMAND_QOS)
        self.create_subscription(PoseStamped, 'ee_state', self._on_ee, RESULTS_QOS)
        self.create_subscription(Float64, 'gripper_state', self._on_gripper, RESULTS_QOS)
        # Transient local: the pose is latched once per scene, usually before this node starts.
        self.create_subscription(PoseStamped, 'camera_pose', self._on_camera_pose, LATCHED_QOS)
        if self._p['policy'] == 'learned':
            self.create_subscription(Image, 'image', self._on_image, sensor)

    def _stream(self, name: str):
        def callback(msg) -> None:
            self._seen.add(name)
            match = self._matcher.add(name, _stamp(msg.header), msg)
            if match is not None and self._command is not None:
                self._perceive(match)
        return callback

    def _on_command(self, msg: String) -> None:
        self._command = parse_command(msg.data)
        self._fresh = {}
        action = self._policy.start(self._command, time.monotonic())
        self.get_logger().info(f'command {msg.data!r}: {action.state} {action.detail}')
        self._publish_status(action)

    def _on_ee(self, msg: PoseStamped) -> None:
        self._ee = position_of(msg)

    def _on_gripper(self, msg: Float64) -> None:
        self._gripper = float(msg.data)

    def _on_image(self, msg: Image) -> None:
        self._image = to_rgb(image_to_numpy(msg, copy=True), msg.encoding)

    def _on_camera_pose(self, msg: PoseStamped) -> None:
        q = msg.pose.orientation
        self._extrinsic = Extrinsic(quat_to_matrix((q.x, q.y, q.z, q.w)), position_of(msg))

    def _lookup_extrinsic(self, header) -> Extrinsic:
        if self._tf is None:
            return self._extrinsic
        try:
            t = self._tf.lookup_transform(self._p['base_frame'], header.frame_id,
                                          rclpy.time.Time())
        except Exception as e:  # noqa: B902 - tf2 raises several unrelated types
            raise ValueError(f"no transform {self._p['base_frame']} <- {header.frame_id}: "
                             f'{e}') from e
        q, v = t.transform.rotation, t.transform.translation
        return Extrinsic(quat_to_matrix((q.x, q.y, q.z, q.w)), np.array([v.x, v.y, v.z]))

    def _inputs(self, match: dict) -> tuple:
        info, depth_msg = match['camera_info'], match['depth']
        K = check_intrinsics(info.k)
        depth = depth_to_metres(image_to_numpy(depth_msg), depth_msg.encoding,
                                self._p['depth_scale'])
        labels = image_to_numpy(match['mask'])
        if (info.width, info.height) != (depth.shape[1], depth.shape[0]):
            raise ValueError(f'depth size {depth.shape[1]}x{depth.shape[0]} differs from '
                             f'camera_info {info.width}x{info.height}')
        return K, depth, labels, self._lookup_extrinsic(depth_msg.header)

    def _best(self, detections, phrase: str):
        """Return (index, detection) of the best-scoring detection of `phrase`, or None."""
        # The mask's pixel value is the detection's position + 1 (its id is a track id).
        found = [(i, d) for i, d in enumerate(detections) if d.results and
                 d.results[0].hypothesis.class_id == phrase and
                 d.results[0].hypothesis.score >= self._p['min_score']]
        return max(found, key=lambda p: p[1].results[0].hypothesis.score, default=None)

    def _perceive(self, match: dict) -> None:
        command, lifted, errors = self._command, {}, []
        try:
            K, depth, labels, extrinsic = self._inputs(match)
        except ValueError as e:
            self._error = str(e)
            return
        depth_range = (self._p['min_depth'], self._p['max_depth'])
        roles = {'target': command.targets[0] if command.targets else None,
                 'destination': command.destination}
        for role, phrase in roles.items():
            best = self._best(match['detections'].detections, phrase) if phrase else None
            if phrase and best is None:
                errors.append(f'{phrase!r} not detected')
            if best is None:
                continue
            index, det = best
            try:
                mask = labels == index + 1
                target = lift_mask(depth, mask, K, extrinsic, depth_range)
            except ValueError as e:
                errors.append(f'{phrase!r}: {e}')
                continue
            lifted[role] = (phrase, det.results[0].hypothesis.score, target)
        self._error = '; '.join(errors)
        with self._lock:
            self._fresh.update({role: v[2].position for role, v in lifted.items()})
        if lifted:
            header = Header(frame_id=self._p['base_frame'], stamp=match['detections'].header.stamp)
            self._pubs['targets_3d'].publish(targets_3d_msg(lifted, header))
            self._pubs['target_markers'].publish(markers_msg(lifted, header))

    def _input_context(self) -> str:
        missing = [s for s in STREAMS if s not in self._seen]
        if missing:
            return f"no {', '.join(missing)} yet"
        if self._ee is None:
            return 'no end-effector state on ee_state yet'
        return self._error

    def _tick(self) -> None:
        if self._command is None:
            return
        with self._lock:
            fresh, self._fresh = self._fresh, {}
        if self._ee is None:
            # Without the arm's position nothing can move; the policy's clocks still run.
            fresh = {}
        ee = self._ee if self._ee is not None else np.zeros(3)
        obs = Observation(time.monotonic(), ee, self._gripper, fresh.get('target'),
                          fresh.get('destination'), None, self._image)
        before = self._policy.status.state
        action = self._policy.step(obs) if self._ee is not None or before != 'executing' \
            else self._policy.cancel('end-effector state lost')
        header = Header(frame_id=self._p['base_frame'], stamp=self.get_clock().now().to_msg())
        if action.goal is not None and self._ee is not None:
            self._pubs['ee_goal'].publish(goal_msg(action.goal, header))
            self._pubs['ee_twist'].publish(twist_msg(action.velocity, header))
        elif before == 'executing' and action.state != 'executing':
            self._pubs['ee_twist'].publish(twist_msg(np.zeros(3), header))  # stop servoing
        if action.gripper is not None:
            self._pubs['gripper_command'].publish(Float64(data=float(action.gripper)))
        self._publish_status(action)

    def _publish_status(self, action) -> None:
        context = self._input_context() if action.state in ('waiting', 'aborted') else ''
        if context and context not in action.detail:
            action = type(action)(action.state, action.phase, f'{action.detail} ({context})')
        key = (action.state, action.phase, action.detail if action.state != 'executing' else '')
        if key == self._sent:
            return
        self._sent = key
        self._pubs['policy_status'].publish(status_msg(self._command.text, action))
        # rclpy fixes a logging call site's severity on first use: one call per level.
        if action.state == 'succeeded':
            self.get_logger().info(f'{action.state}: {action.detail}')
        elif action.state in ('aborted', 'rejected'):
            self.get_logger().warning(f'{action.state}: {action.detail}')


def main(args=None) -> None:
    """Run the VLA policy node until interrupted."""
    spin_node(VlaPolicyNode, args)


if __name__ == '__main__':
    main()
