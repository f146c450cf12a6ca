"""
vla_policy_node: turn a language command and groundings into end-effector goals and gripper.

Detections, the instance mask, depth and camera_info are matched by stamp (TimeMatcher); the
command's target and destination are lifted to the base frame with the median masked depth and
the static extrinsic (or tf2, or a camera_pose topic); a geometric or learned policy then
publishes goals, a servo twist, the gripper command and a JSON status at `rate` Hz.

Parameter sets are checked before they land (a bad value is refused with the valid range) and
take effect without a restart: the lifting limits on the next perception set; base_frame,
extrinsic, depth_scale, sync_tolerance and ee_timeout at once; the policy limits from the
next command.
"""
import json
import math
import os
import threading
import time

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import TransitionCallbackReturn
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue  # noqa: I100 - ROS messages last
from geometry_msgs.msg import PoseStamped, TwistStamped
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, JointState
from std_msgs.msg import Float64, Header, String
from vision_msgs.msg import Detection2DArray, Detection3DArray
from visualization_msgs.msg import MarkerArray

from clip_ros.nodes.common import (
    COMMAND_QOS, declare_all, describe, image_qos, LATCHED_QOS, model_parameters,
    parameter_values, RESULTS_QOS, spin_node, STATE_QOS, transport_topic)
from clip_ros.nodes.conversions import image_to_numpy
from clip_ros.nodes.depth_lift import depth_metres, DEPTH_TRANSPORTS
from clip_ros.nodes.managed import ManagedNode
from clip_ros.nodes.policy_messages import (
    detection_candidates, goal_msg, markers_msg, position_of, status_msg, targets_3d_msg,
    twist_msg)
from clip_ros.nodes.transforms import lookup_extrinsic, make_tf_buffer
from clip_ros.perception.grounding import frame_only
from clip_ros.policy.command import parse_command, quote
from clip_ros.policy.geometric import (
    Action, FINAL_STATES, GeometricPolicy, Observation, OPEN, PolicyConfig)
from clip_ros.policy.lifting import (
    camera_intrinsics, check_camera_size, check_frames, Extrinsic, quat_to_matrix, table_view)
from clip_ros.policy.perceive import LiftConfig, perceive, roles
from clip_ros.policy.sync import TimeMatcher
from clip_ros.policy.verify import VerifyConfig

STREAMS = ('detections', 'mask', 'depth', 'camera_info')
POLICIES = ('geometric', 'learned')
FINAL = FINAL_STATES  # succeeded, failed (the look after acting disagreed), aborted, rejected
OUTPUTS = ((Detection3DArray, 'targets_3d'), (MarkerArray, 'target_markers'),
           (PoseStamped, 'ee_goal'), (TwistStamped, 'ee_twist'), (Float64, 'gripper_command'),
           (String, 'policy_status'))


def _stamp(header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def _parameters() -> tuple:
    ro = {'read_only': True}
    return (
        ('policy', 'geometric', describe("'geometric' or 'learned' (needs head_path)", **ro)),
        ('head_path', '', describe('policy head checkpoint (train_policy_head)', **ro)),
        *model_parameters(),  # of the learned head's CLIP
        ('rate', 15.0, describe('control ticks per second; read-only: the step length '
                                'max_speed / rate and the timer are fixed at start',
                                float_range=(1.0, 200.0), **ro)),
        ('base_frame', 'world', describe(
            'frame of goals, targets and end-effector state; applies at once')),
        ('extrinsic', [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0], describe(
            'base_from_camera [x, y, z, qx, qy, qz, qw], a non-zero quaternion; a set applies '
            'at once, until the next camera_pose; tf2 (use_tf) overrides it')),
        ('grasp_orientation', [0.0, 0.0, 0.0, 1.0], describe(
            'orientation of every ee_goal in base_frame [qx, qy, qz, qw], a non-zero quaternion '
            '(normalised): the tool frame with the fingers pointing down, which depends on the '
            'arm (the simulator: identity; Franka and UR tool frames: [1, 0, 0, 0]); applies at '
            'once')),
        ('use_tf', False, describe('look up base_frame <- camera frame with tf2', **ro)),
        ('depth_transport', 'raw', describe(
            "'raw' (sensor_msgs/Image on depth) or 'compressedDepth' (image_transport's PNG "
            'compressedDepth, 16UC1 or 32FC1, on <depth>/compressedDepth)', **ro)),
        ('depth_qos', 'reliable', describe(
            "QoS of depth, camera_info and (learned policy) image: 'reliable' or "
            "'sensor_data' (best effort, for drivers that publish best effort)", **ro)),
        ('depth_scale', 0.001, describe('metres per unit of 16UC1 depth; applies at once',
                                        float_range=(1e-6, 1.0))),
        ('min_depth', 0.05, describe('nearest valid depth (m), below max_depth; applies from '
                                     'the next perception set', float_range=(0.0, 100.0))),
        ('max_depth', 5.0, describe('farthest valid depth (m), above min_depth; applies from '
                                    'the next perception set', float_range=(0.01, 1000.0))),
        ('sync_tolerance', 0.05, describe('largest stamp gap of matched inputs (s); applies at '
                                          'once', float_range=(0.0, 10.0))),
        ('min_score', LiftConfig.min_score, describe(
            'ignore detections below this score; applies from the next perception set',
            float_range=(0.0, 1.0))),
        ('table_z', 0.0, describe('base-frame z of the table top (m); applies from the next '
                                  'perception set', float_range=(-100.0, 100.0))),
        ('min_height', 0.01, describe(
            'skip detections whose points all lie this close to the table (shadows); 0: off; '
            'applies from the next perception set', float_range=(0.0, 1.0))),
        ('shape_band', 0.004, describe(
            'check shape words (block, ball, cylinder, bowl and synonyms) against depth: '
            'thickness (m) of the top band, about 3x the depth noise at the objects; a detection '
            'of the wrong shape is passed over; 0: off; applies from the next perception set',
            float_range=(0.0, 0.1))),
        ('near_distance', 0.20, describe(
            'freeze the target estimate once the gripper is this close (it occludes the '
            'object); applies from the next command', float_range=(0.0, 2.0))),
        ('max_speed', 0.3, describe('end-effector speed limit (m/s); applies from the next '
                                    'command', float_range=(0.001, 5.0))),
        ('workspace_min', [-0.55, -0.45, 0.0], describe(
            'workspace box low corner [x, y, z], below workspace_max on every axis; applies '
            'from the next command')),
        ('workspace_max', [0.55, 0.45, 0.6], describe(
            'workspace box high corner [x, y, z]; applies from the next command')),
        ('lost_timeout', 2.0, describe('abort when the target is unseen this long (s); applies '
                                       'from the next command', float_range=(0.05, 60.0))),
        ('acquire_timeout', 3.0, describe('abort when the target is never seen (s); applies '
                                          'from the next command', float_range=(0.05, 600.0))),
        ('time_limit', 30.0, describe('abort a command running longer (s); applies from the '
                                      'next command', float_range=(1.0, 3600.0))),
        ('ee_timeout', 1.0, describe(
            'abort a running command and stop the arm when ee_state is older than this (s): '
            'goals and twists from a stale position drive the arm blind; applies at once',
            float_range=(0.05, 60.0))),
        ('empty_grip_opening', 0.005, describe(
            'finger opening (m, gripper/joint_states) at or below which a closed gripper holds '
            'nothing; above it, it holds an object; applies at once', float_range=(0.0, 0.5))),
    )


def policy_config(p: dict, view=PolicyConfig.view) -> PolicyConfig:
    """
    Return the PolicyConfig of parameter values `p`; ValueError names a bad limit.

    view: the camera's right and forward on the table (lifting.table_view), for push.
    """
    for name in ('workspace_min', 'workspace_max'):
        value = p[name]
        if isinstance(value, (str, bytes)) or not hasattr(value, '__len__') or len(value) != 3:
            raise ValueError(f'{name} must be 3 numbers [x, y, z], got {value!r}')
    return PolicyConfig(rate=p['rate'], max_speed=p['max_speed'],
                        workspace_min=tuple(float(v) for v in p['workspace_min']),
                        workspace_max=tuple(float(v) for v in p['workspace_max']),
                        lost_timeout=p['lost_timeout'], acquire_timeout=p['acquire_timeout'],
                        time_limit=p['time_limit'], near_distance=p['near_distance'],
                        table_z=p['table_z'], verify=VerifyConfig(table_z=p['table_z']),
                        view=view)


def check_parameters(p: dict) -> None:
    """Raise ValueError naming the parameter and its valid values when `p` cannot be used."""
    if not p['base_frame'].strip():
        raise ValueError("base_frame must name a frame, got ''")
    if not p['min_depth'] < p['max_depth']:
        raise ValueError(f"min_depth ({p['min_depth']:g}) must be below max_depth "
                         f"({p['max_depth']:g})")
    try:
        Extrinsic.from_xyz_quat(p['extrinsic'])
    except ValueError as e:
        raise ValueError(f"extrinsic {list(p['extrinsic'])} refused: {e}") from e
    grasp_orientation(p)
    policy_config(p)


def grasp_orientation(p: dict) -> tuple:
    """Return grasp_orientation normalised (x, y, z, w); ValueError when it is no rotation."""
    value = p['grasp_orientation']
    if isinstance(value, (str, bytes)) or not hasattr(value, '__len__') or len(value) != 4:
        raise ValueError(f'grasp_orientation must be 4 numbers [qx, qy, qz, qw], got {value!r}')
    q = np.asarray(value, np.float64)
    norm = float(np.linalg.norm(q))
    if not np.isfinite(q).all() or norm < 1e-9:
        raise ValueError(f'grasp_orientation {list(value)} is no rotation: a finite, non-zero '
                         'quaternion is needed')
    return tuple(float(v) for v in q / norm)


class VlaPolicyNode(ManagedNode):
    """
    Ground the command's target in 3D and drive the end effector with a policy.

    Lifecycle: configure builds the policy (loading and warming the learned head's CLIP) and the
    outputs; activate subscribes and starts the control ticks; deactivate aborts a running
    command and stops; cleanup drops the policy. Matched perception sets are the "frames" the
    base class's worker lifts and its diagnostics count.
    """

    def __init__(self, **kwargs):
        super().__init__('vla_policy_node', **kwargs)
        declare_all(self, _parameters())
        self._p = p = parameter_values(self)
        self._extrinsic = Extrinsic(np.eye(3), np.zeros(3))
        self._camera_rotation = None  # base_from_camera rotation of the last perception set
        self._policy, self._new_policy, self._pubs, self._command = None, None, {}, None
        self._fresh_lock, self._control_lock = threading.Lock(), threading.Lock()
        self._reset_inputs()
        self._tf = make_tf_buffer(self, 'use_tf is set: using the extrinsic parameter') \
            if p['use_tf'] else None
        self._timer = self.create_timer(1.0 / p['rate'], self._tick, autostart=False,
                                        callback_group=MutuallyExclusiveCallbackGroup())
        self.watch_parameters(check_parameters, self._apply_parameters)
        self.start()

    def _apply_parameters(self, names: set) -> None:
        """Take checked parameter values into use (see the module docstring for when)."""
        # One assignment: a perception set or tick reads either the old or the new values.
        self._p = p = parameter_values(self)
        if 'extrinsic' in names:
            self._extrinsic = Extrinsic.from_xyz_quat(p['extrinsic'])
        self._orientation = grasp_orientation(p)
        self._matcher.tolerance = float(p['sync_tolerance'])

    def _reset_inputs(self) -> None:
        # Detections come a few hundred ms after their frame on a CPU: keep ~1 s of 30 Hz depth.
        self._matcher = TimeMatcher(STREAMS, self._p['sync_tolerance'], queue_size=30,
                                    exact=('mask',))  # one grounded frame: one stamp
        self._seen, self._fresh, self._perceive_error, self._sent = set(), {}, '', None
        self._look_refused = ''  # the last look's refusal of a detection (wrong shape)
        self._seen_for_command = set()  # streams seen since the current command arrived
        self._ee, self._gripper, self._image = None, OPEN, None
        self._ee_time = None  # when ee_state last arrived (policy time)
        self._ee_doubted = False  # a tick found ee_state stale and let the executor catch up
        # Grasp sensor: the finger opening (m); closed?: gripper_state, else the last command.
        self._opening, self._closed, self._state_closed = None, None, None
        self._refused = {}  # phrase -> grounding_node's refusal of its words (unknown word, ...)

    # Lifecycle hooks -----------------------------------------------------------------------

    def check_transports(self) -> None:
        """Refuse an unknown depth_transport or depth_qos at configure, naming the choices."""
        transport_topic(self, 'depth', self._p['depth_transport'], DEPTH_TRANSPORTS)
        image_qos(self._p['depth_qos'], 'depth_qos')

    def load_model(self) -> tuple:
        """Build the policy and the outputs; return (policy name, device)."""
        self._new_policy, model = self._make_policy(self._p)
        self._policy = self._new_policy(policy_config(self._p))
        self._pubs = {topic: self.output(kind, topic, RESULTS_QOS) for kind, topic in OUTPUTS}
        return model

    def release_model(self) -> None:
        """Stop the ticks and drop the policy (with the learned head and its CLIP)."""
        self._timer.cancel()
        self._policy = self._new_policy = None

    def subscribe_inputs(self) -> None:
        """Subscribe perception, command, arm state and camera pose, forgetting older inputs."""
        self._reset_inputs()
        sensor = image_qos(self._p['depth_qos'], 'depth_qos')
        transport = self._p['depth_transport']
        depth = (Image if transport == 'raw' else CompressedImage,
                 transport_topic(self, 'depth', transport, DEPTH_TRANSPORTS))
        for kind, topic, qos, stream in ((Detection2DArray, 'detections', RESULTS_QOS, None),
                                         (Image, 'mask', RESULTS_QOS, None),
                                         (*depth, sensor, 'depth'),
                                         (CameraInfo, 'camera_info', sensor, None)):
            self.subscribe(kind, topic, self._stream(stream or topic), qos)
        self.subscribe(String, 'command', self._on_command, COMMAND_QOS)
        # Best effort hears reliable and best-effort drivers alike: only the newest state counts.
        self.subscribe(PoseStamped, 'ee_state', self._on_ee, STATE_QOS)
        self.subscribe(Float64, 'gripper_state', self._on_gripper, STATE_QOS)
        self.subscribe(JointState, 'gripper/joint_states', self._on_fingers, STATE_QOS)
        # Transient local gets a pose latched once per scene, usually before this node starts;
        # a transient-local subscription never hears a volatile publisher (`ros2 topic pub`),
        # so a second, volatile one does. A pose heard twice is the same pose.
        self.subscribe(PoseStamped, 'camera_pose', self._on_camera_pose, LATCHED_QOS)
        self.subscribe(PoseStamped, 'camera_pose', self._on_camera_pose, RESULTS_QOS)
        # Latched: why grounding gives no detection for a phrase, published when it changes.
        self.subscribe(String, 'grounding_status', self._on_grounding_status, LATCHED_QOS)
        if self._p['policy'] == 'learned':
            self.subscribe(Image, 'image', self._on_image, sensor)

    def on_activated(self) -> None:
        """Start the control ticks."""
        self._timer.reset()

    def on_deactivated(self) -> None:
        """Abort a running command while the outputs can still say so."""
        self._stop_motion('vla_policy_node deactivated')

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        """Abort a running command, then free everything."""
        self._stop_motion('vla_policy_node shut down')
        return super().on_shutdown(state)

    def process(self, match: dict) -> None:
        """Lift the command's target and destination from one matched set (worker thread)."""
        command, policy = self._command, self._policy
        # An ended command needs no more looking: lifting every frame would cost a core's share.
        if command is not None and (policy is None or policy.status.state not in FINAL):
            self._perceive(match, command)

    def _now(self) -> float:
        """Return the policy's time (s): the ROS clock under use_sim_time, else monotonic."""
        clock = self.get_clock()
        if getattr(clock, 'ros_time_is_active', False):
            return clock.now().nanoseconds * 1e-9  # a bag or simulator sets the pace
        return time.monotonic()

    def input_hint(self, snapshot, limits) -> str:
        """Say which perception stream is missing while no matched set arrives."""
        if not self.active or snapshot.since_input <= limits.silent_after:
            return ''
        missing = [s for s in STREAMS if s not in self._seen]
        if missing:
            return f"no {', '.join(missing)} since activation"
        return (f'detections, mask, depth and camera_info arrive but no set has stamps within '
                f"sync_tolerance ({self._p['sync_tolerance']:g} s)")

    def _stop_motion(self, reason: str) -> None:
        self._timer.cancel()
        with self._control_lock:
            policy = self._policy
            if policy is not None and self._command is not None:
                self._abort(policy, reason)
            self._command = None

    def _abort(self, policy, reason: str) -> None:
        """End a waiting or executing command aborted with `reason`; stop the arm if moving."""
        before = policy.status.state
        action = policy.cancel(reason)  # an ended command keeps its final status
        if before == 'executing':
            self._pubs['ee_twist'].publish(twist_msg(np.zeros(3), self._header()))
        self._publish_status(action, explain=False)

    # Policy and inputs ---------------------------------------------------------------------

    def _make_policy(self, p: dict) -> tuple:
        """
        Return (policy factory, (name, device)); the factory builds a policy from a PolicyConfig.

        The learned head and its CLIP load once here (with `device`, `dtype`, `cache_dir`, as
        the perception nodes load theirs); each command with new limits gets a new policy
        object around them.
        """
        if p['policy'] not in POLICIES:
            raise ValueError(f"policy {p['policy']!r} is not one of {', '.join(POLICIES)}")
        if p['policy'] == 'geometric':
            return GeometricPolicy, ('geometric policy', 'cpu')
        from clip_ros.perception.loading import load_clip
        from clip_ros.policy.learned import Embedder, LearnedPolicy, PolicyHead

        head = PolicyHead.load(p['head_path'])
        clip = load_clip(head.config.clip_arch, head.config.clip_pretrained, p['device'],
                         p['dtype'], p['cache_dir'] or None)
        embedder = Embedder(clip)
        # One pass each now, so the first command and frame do not pay for lazy initialisation.
        embedder.image(np.zeros((clip.image_size, clip.image_size, 3), np.uint8))
        embedder.text('pick up the block')
        name = f"learned head {os.path.basename(p['head_path'])} on {clip.name}"
        return (lambda config: LearnedPolicy(head, embedder, config)), (name, str(clip.device))

    def _stream(self, name: str):
        def callback(msg) -> None:
            self._seen.add(name)
            self._seen_for_command.add(name)
            match = self._matcher.add(name, _stamp(msg.header), msg)
            if match is not None:
                self.submit_frame(match)  # lifted on the worker thread, newest set first
        return callback

    def _on_command(self, msg: String) -> None:
        with self._control_lock:
            policy = self._policy
            if policy is None:
                return  # shutting down
            if self._command is not None:
                # The new command replaces a running one: stop the arm and end its status,
                # before a new policy (limits set since) forgets it was moving.
                self._abort(policy, f'replaced by command {quote(msg.data)}')
            # Push directions are the camera's: from the pose the last perception set used.
            rotation = self._camera_rotation if self._camera_rotation is not None \
                else self._extrinsic.rotation
            config = policy_config(self._p, table_view(rotation))
            if config != policy.config:
                # Limits set since the last command: a new policy around the same model.
                policy = self._policy = self._new_policy(config)
            # The same parse as grounding_node's, so both act on the same phrases.
            self._command = parse_command(msg.data)
            with self._fresh_lock:
                self._fresh = {}
            # A new command starts clean: no reason left over from the previous one.
            self._perceive_error, self._sent, self._seen_for_command = '', None, set()
            self._look_refused = ''
            action = policy.start(self._command, self._now())
            self.get_logger().info(f'command {quote(msg.data)}: {action.state} {action.detail}')
            self._publish_status(action)

    def _on_ee(self, msg: PoseStamped) -> None:
        position = position_of(msg)
        if not np.isfinite(position).all():
            self.reject('ee_state', f'ignored ee_state with position {position.tolist()}: '
                        f'need finite coordinates')
            return
        frame, base = msg.header.frame_id.lstrip('/'), self._p['base_frame'].lstrip('/')
        if frame and frame != base:
            # Goals are in base_frame: a pose of another frame taken as one would steer the
            # arm by the offset between the two.
            try:
                if self._tf is None:
                    raise ValueError('use_tf is off')
                t = lookup_extrinsic(self._tf, base, frame, msg.header.stamp)
            except ValueError as e:
                self.reject('ee_state', f'ignored ee_state in frame {frame!r}: goals are in '
                            f'base_frame {base!r} ({e}); publish it in {base!r}, or set use_tf '
                            f'with a transform {base} <- {frame}')
                return
            position = t.rotation @ position + t.translation
        self._ee_time, self._ee, self._ee_doubted = self._now(), position, False

    def _on_grounding_status(self, msg: String) -> None:
        """Keep grounding_node's refusals of words; 'not found' waits for acquire_timeout."""
        try:
            rejected = json.loads(msg.data)['rejected']
            self._refused = {str(phrase): str(reason) for phrase, reason in rejected.items()
                             if not frame_only(str(reason))}
        # RecursionError: json's decoder on deeply nested input, which would end the executor.
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            self.reject('grounding_status', f'ignored an unreadable grounding_status '
                        f'({type(e).__name__}: {e})')

    def _word_refusal(self, policy) -> str:
        """Return grounding's refusal of the waiting command's target or destination words."""
        command = self._command
        if policy.status.state != 'waiting':
            return ''
        for phrase in (*command.targets[:1], command.destination):
            if phrase and phrase in self._refused:
                return self._refused[phrase]
        return ''

    def _on_gripper(self, msg: Float64) -> None:
        if not math.isfinite(msg.data):
            # NaN would reach the learned head's state and make its goals NaN.
            self.reject('gripper_state', f'ignored gripper_state {msg.data}: need a finite '
                        f'value, 0 open .. 1 closed')
            return
        self._gripper = float(msg.data)
        self._state_closed = self._gripper >= 0.5

    def _on_fingers(self, msg: JointState) -> None:
        """Take the opening: the sum of the finger joints' travels (m), franka_gripper style."""
        opening = float(np.sum(msg.position)) if len(msg.position) else math.nan
        if not math.isfinite(opening) or opening < 0.0:
            self.reject('gripper/joint_states', f'ignored gripper/joint_states with positions '
                        f'{list(msg.position)}: need finite finger travels (m) >= 0')
            return
        self._opening = opening

    def _holding(self) -> bool | None:
        """Return the grasp sensor's reading: a closed gripper stopped apart holds something."""
        if self._opening is None:
            return None  # no sensor: the camera decides alone
        closed = self._state_closed if self._state_closed is not None else self._closed
        if closed is None:
            return None  # an opening alone does not tell an open gripper from a full one
        return bool(closed and self._opening > self._p['empty_grip_opening'])

    def extra_diagnostics(self, limits, stamp) -> list:
        """Return the grasp sensor's reading as <node>/grasp."""
        holding, opening = self._holding(), self._opening
        text = {None: 'no gripper/joint_states: the camera alone confirms picks',
                True: 'holding', False: 'not holding'}[holding]
        if opening is not None:
            limit = self._p['empty_grip_opening']
            text += f' (opening {opening:.4f} m, empty at or below {limit:g} m)'
        return [DiagnosticStatus(level=DiagnosticStatus.OK, message=text,
                                 name=f'{self.get_fully_qualified_name()}/grasp',
                                 values=[KeyValue(key='holding', value=str(holding))])]

    def _on_image(self, msg: Image) -> None:
        rgb = self.decode_frame(msg)  # a bad frame is logged and counted there
        if rgb is not None:
            self._image = rgb

    def _on_camera_pose(self, msg: PoseStamped) -> None:
        q, position = msg.pose.orientation, position_of(msg)
        try:
            if not np.isfinite(position).all():
                raise ValueError(f'position {position.tolist()} must be finite')
            rotation = quat_to_matrix((q.x, q.y, q.z, q.w))  # a zero or non-finite one raises
        except ValueError as e:
            self.reject('camera_pose', f'ignored camera_pose: {e}')
            return
        self._extrinsic = Extrinsic(rotation, position)

    def _lookup_extrinsic(self, header) -> Extrinsic:
        if self._tf is None:
            return self._extrinsic
        return lookup_extrinsic(self._tf, self._p['base_frame'], header.frame_id, header.stamp)

    def _read_inputs(self, match: dict) -> tuple:
        info, depth_msg = match['camera_info'], match['depth']
        # Another camera's intrinsics or unregistered depth misplace every point, whatever tf
        # says of the frames: both are refused.
        check_frames(match['mask'].header.frame_id, depth_msg.header.frame_id,
                     info.header.frame_id)
        K, size = camera_intrinsics(info)
        depth = depth_metres(depth_msg, self._p['depth_scale'])
        labels = image_to_numpy(match['mask'])
        if labels.ndim != 2:
            raise ValueError(f"mask encoding {match['mask'].encoding!r} is not a label image: "
                             f'publish mono16 (detection index + 1, 0 background)')
        check_camera_size(*size, depth)
        extrinsic = self._lookup_extrinsic(depth_msg.header)
        self._camera_rotation = extrinsic.rotation
        return K, depth, labels, extrinsic

    def _lift_config(self) -> LiftConfig:
        p = self._p
        return LiftConfig(min_score=p['min_score'], depth_range=(p['min_depth'], p['max_depth']),
                          table_z=p['table_z'], min_height=p['min_height'],
                          shape_band=p['shape_band'])

    def _perceive(self, match: dict, command) -> None:
        try:
            K, depth, labels, extrinsic = self._read_inputs(match)
        except ValueError as e:
            self._perceive_error = str(e)
            return
        phrases = {phrase for phrase in roles(command).values() if phrase}
        candidates = detection_candidates(match['detections'], labels, phrases)
        found = perceive(command, candidates, depth, K, extrinsic, self._lift_config())
        with self._fresh_lock:
            if self._command is not command:
                return  # a new command came while this set was lifted: not its target
            self._perceive_error = found.error
            if found.refused or found.lifted:  # a later set that lifts clears an old refusal
                self._look_refused = '; '.join(found.refused.values())
            self._fresh.update(found.points)
            # What this set showed, for the policy's look after acting and "not found".
            self._fresh['seen'], self._fresh['undetected'] = found.seen, tuple(found.undetected)
            self._fresh['probe'] = found.probe
        if found.lifted:
            header = Header(frame_id=self._p['base_frame'],
                            stamp=match['detections'].header.stamp)
            self._pubs['targets_3d'].publish(targets_3d_msg(found.lifted, header))
            self._pubs['target_markers'].publish(markers_msg(found.lifted, header))

    def _input_context(self) -> str:
        missing = [s for s in STREAMS if s not in self._seen_for_command]
        if missing:
            return f"no {', '.join(missing)} since the command"
        if self._ee is None:
            return 'no end-effector state on ee_state yet'
        if self._current_ee() is None:
            return self._ee_lost()
        return self._perceive_error

    def _current_ee(self):
        """Return the end-effector position, or None when ee_state never came or went stale."""
        ee, at = self._ee, self._ee_time
        if ee is None or self._now() - at > self._p['ee_timeout']:
            return None
        return ee

    def _ee_lost(self) -> str:
        if self._ee_time is None:
            return 'no end-effector state on ee_state'
        return (f'no ee_state for {self._now() - self._ee_time:.2f} s '
                f"(> ee_timeout {self._p['ee_timeout']:g} s)")

    def _header(self) -> Header:
        return Header(frame_id=self._p['base_frame'], stamp=self.get_clock().now().to_msg())

    def _tick(self) -> None:
        with self._control_lock:
            policy = self._policy
            if policy is not None and self._command is not None:
                self._step(policy)

    def _step(self, policy) -> None:
        refusal = self._word_refusal(policy)
        if refusal:
            # Nothing has moved yet: end the command with grounding's reason.
            policy.cancel(refusal)
            self._publish_status(Action('rejected', detail=refusal))
            return
        with self._fresh_lock:
            fresh, self._fresh = self._fresh, {}
        current = self._current_ee()
        if current is None and self._ee is not None and not self._ee_doubted:
            # A slow tick (the learned head on a CPU) can hold an ee_state in the executor's
            # queue past ee_timeout: hand it the turn once before calling the state lost.
            self._ee_doubted = True
            return
        if current is None:
            # Without the arm's position nothing can move; the policy's clocks still run.
            fresh = {}
        ee = current if current is not None else np.zeros(3)
        # Without gripper_state, the gripper is as last commanded.
        gripper = self._gripper if self._state_closed is not None or self._closed is None \
            else float(self._closed)
        obs = Observation(self._now(), ee, gripper, fresh.get('target'),
                          fresh.get('destination'), self._holding(), self._image,
                          fresh.get('seen'),
                          fresh.get('undetected', ()), fresh.get('probe'))
        before = policy.status.state
        action = policy.step(obs) if current is not None or before != 'executing' \
            else policy.cancel(f'end-effector state lost: {self._ee_lost()}')
        header = self._header()
        if action.goal is not None and current is not None:
            self._pubs['ee_goal'].publish(goal_msg(action.goal, header, self._orientation))
            self._pubs['ee_twist'].publish(twist_msg(action.velocity, header))
        elif before == 'executing' and action.state != 'executing':
            self._pubs['ee_twist'].publish(twist_msg(np.zeros(3), header))  # stop servoing
        if action.gripper is not None:
            self._closed = float(action.gripper) >= 0.5
            self._pubs['gripper_command'].publish(Float64(data=float(action.gripper)))
        self._publish_status(action)

    def _publish_status(self, action, explain: bool = True) -> None:
        """Publish `action` when it changed; `explain` adds the missing input or refused look."""
        context = ''
        if explain and action.state in ('waiting', 'aborted'):
            context = self._input_context()
        elif explain and action.state == 'rejected' and self._look_refused:
            # "Not found" although grounding detected it: say what the look refused.
            context = f'seen but refused: {self._look_refused}'
        if context and context not in action.detail:
            action = type(action)(action.state, action.phase, f'{action.detail} ({context})')
        key = (action.state, action.phase, action.detail if action.state != 'executing' else '')
        if key == self._sent or (self._sent and self._sent[0] in FINAL and key[0] in FINAL):
            return  # unchanged, or the command already ended (its explanation may change)
        self._sent = key
        self._pubs['policy_status'].publish(status_msg(self._command, action))
        # rclpy fixes a logging call site's severity on first use: one call per level.
        if action.state == 'succeeded':
            self.get_logger().info(f'{action.state}: {action.detail}')
        elif action.state in ('aborted', 'rejected', 'failed'):
            self.get_logger().warning(f'{action.state}: {action.detail}')


def main(args=None) -> None:
    """Run the VLA policy node until interrupted."""
    spin_node(VlaPolicyNode, args)


if __name__ == '__main__':
    main()
