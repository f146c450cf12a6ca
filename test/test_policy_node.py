"""
vla_policy_node over DDS: bad inputs and unknown verbs never move; a lost target aborts.

As a lifecycle node it moves only while active, stops on deactivate and frees its learned head
on cleanup.
"""
import gc
import json
import os
import time
import weakref

os.environ['ROS_DOMAIN_ID'] = '66'  # before rclpy: own domain, no cross-talk with other tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402


from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402, I100
from geometry_msgs.msg import PoseStamped, TwistStamped  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Float64, Header, String  # noqa: E402
from vision_msgs.msg import Detection2DArray, Detection3DArray  # noqa: E402

from clip_ros.nodes.common import LATCHED_QOS  # noqa: E402
from clip_ros.nodes.conversions import image_to_numpy, numpy_to_image  # noqa: E402
from clip_ros.nodes.sim_messages import camera_info_msg  # noqa: E402
from clip_ros.nodes.vla_policy_node import VlaPolicyNode  # noqa: E402
from clip_ros.perception.loading import load_clip  # noqa: E402
from clip_ros.perception.stats import ERROR, WARN  # noqa: E402
from clip_ros.policy.learned import HeadConfig, PolicyHead  # noqa: E402
from clip_ros.policy.lifting import matrix_to_quat  # noqa: E402
from node_harness import arm_state, blue_block, Harness, wait_for  # noqa: E402, I100, I201

DOMAIN = 66
W, H = 80, 60
K = np.array([[80.0, 0.0, 39.5], [0.0, 80.0, 29.5], [0.0, 0.0, 1.0]])
# Camera 0.7 m above the base origin looking straight down.
EXTRINSIC = [0.0, 0.0, 0.7] + matrix_to_quat(np.diag([1.0, -1.0, -1.0]))
PARAMETERS = [Parameter('rate', value=20.0), Parameter('extrinsic', value=EXTRINSIC),
              Parameter('acquire_timeout', value=1.0)]
MANAGED = [Parameter('autostart', value=False), Parameter('lost_timeout', value=5.0)]
SUCCESS = TransitionCallbackReturn.SUCCESS


class Rig:
    """The probe's publishers and inboxes for one policy node's namespace."""

    def __init__(self, harness: Harness, namespace: str = ''):
        self.harness, self.header, self.namespace = harness, harness.header, namespace or '/'
        topic = f'{namespace}/{{}}'.format
        self.status = harness.subscribe(String, topic('policy_status'))
        self.goals = harness.subscribe(PoseStamped, topic('ee_goal'))
        self.twists = harness.subscribe(TwistStamped, topic('ee_twist'))
        self.targets = harness.subscribe(Detection3DArray, topic('targets_3d'))
        self.pubs = {name: harness.publisher(kind, topic(name)) for kind, name in (
            (String, 'command'), (Detection2DArray, 'detections'), (Image, 'mask'),
            (Image, 'depth'), (CameraInfo, 'camera_info'), (PoseStamped, 'ee_state'),
            (Float64, 'gripper_state'))}

    def policy_node(self, extra=()) -> VlaPolicyNode:
        """Add a policy node in this namespace with the test's camera and timeouts."""
        return self.harness.add(VlaPolicyNode(
            context=self.harness.context, namespace=self.namespace,
            parameter_overrides=PARAMETERS + list(extra)))


@pytest.fixture(scope='module')
def harness():
    harness = Harness(DOMAIN)
    harness.diagnostics = harness.subscribe(DiagnosticArray, '/diagnostics')
    yield harness
    harness.shutdown()


@pytest.fixture(scope='module')
def ros(harness):
    rig = Rig(harness)
    rig.node = rig.policy_node([Parameter('lost_timeout', value=0.5)])
    assert wait_for(lambda: rig.pubs['command'].get_subscription_count() > 0)
    return rig


@pytest.fixture
def managed(harness, request):
    """Return a Rig in a namespace of its own, and remove the nodes the test added."""
    count = len(harness.added_since(0))
    yield Rig(harness, '/' + request.node.originalname.removeprefix('test_'))
    for node in harness.added_since(count):
        harness.remove(node)


def send_frame(ros, depth_fill=0.6, info=True, depth_size=(W, H), info_frame=None, ee=True,
               depth_frame=None):
    """Publish one matched set: a 'blue block' detection, its mask, depth and camera_info."""
    header = ros.header('camera_optical_frame')
    detections, mask = blue_block(header, W, H)
    depth = np.full((depth_size[1], depth_size[0]), depth_fill, np.float32)
    if ee:
        ros.pubs['ee_state'].publish(arm_state(header))
    ros.pubs['detections'].publish(detections)
    ros.pubs['mask'].publish(mask)
    depth_header = Header(stamp=header.stamp, frame_id=depth_frame or header.frame_id)
    ros.pubs['depth'].publish(numpy_to_image(depth, '32FC1', depth_header))
    if info:
        info_header = Header(stamp=header.stamp, frame_id=info_frame or depth_header.frame_id)
        ros.pubs['camera_info'].publish(camera_info_msg(K, W, H, info_header))


def run_command(ros, text, frames=30, final=('aborted', 'rejected', 'succeeded'), settle=5.0,
                **frame):
    """Send `text`, then frames at about 20 Hz; return (final status dict, goals sent)."""
    goals = len(ros.goals.messages)
    count = len(ros.status.messages)
    ros.pubs['command'].publish(String(data=text))

    def finished():
        for msg in ros.status.messages[count:]:
            status = json.loads(msg.data)
            if status['command'] == text and status['state'] in final:
                return status
        return None
    for _ in range(frames):
        if finished():
            break
        send_frame(ros, **frame)
        wait_for(finished, timeout=0.05)
    return wait_for(finished, timeout=settle), len(ros.goals.messages) - goals


def test_unknown_verb_is_rejected_without_motion(ros):
    status, goals = run_command(ros, 'juggle the blue block', frames=5)
    assert status['state'] == 'rejected' and 'no motion' in status['detail']
    assert goals == 0


@pytest.mark.parametrize('frame, reason', [
    ({'depth_fill': np.nan}, 'all NaN'), ({'depth_fill': 0.0}, 'all zero'),
    ({'depth_size': (40, 30)}, 'differs'), ({'info': False}, 'no camera_info since the command'),
    ({'info_frame': 'other_camera'}, "camera_info frame 'other_camera'"),
    # Depth of the depth camera (not aligned to the colour image the mask is of).
    ({'depth_frame': 'camera_depth_optical_frame'}, 'must be registered to the colour image')])
def test_bad_depth_or_no_camera_info_never_moves(ros, frame, reason):
    status, goals = run_command(ros, 'pick up the blue block', **frame)
    assert status is not None and status['state'] == 'aborted', status
    assert reason in status['detail'], status
    # A new command's status never carries the previous command's reason.
    assert reason == 'differs' or 'differs' not in status['detail'], status
    assert goals == 0


def test_valid_target_moves_then_lost_target_aborts(ros):
    seen = len(ros.status.messages)
    status, goals = run_command(ros, 'pick up the blue block', frames=8, final=('never',),
                                settle=0.0)
    assert goals > 0, 'valid inputs should move the arm'
    lifted = wait_for(lambda: ros.targets.messages)
    position = lifted[-1].detections[0].results[0].pose.pose.position
    assert (position.x, position.y, position.z) == pytest.approx((0.0, 0.0, 0.1), abs=0.01)

    def aborted():
        return next((json.loads(m.data) for m in ros.status.messages[seen:]
                     if json.loads(m.data)['state'] == 'aborted'), None)
    status = wait_for(aborted, timeout=5.0)  # no more frames: the target is lost
    assert status and 'target lost' in status['detail'], status


def states(rig, since: int = 0) -> list:
    """Return the (state, detail) of every policy_status message after the first `since`."""
    found = (json.loads(m.data) for m in rig.status.messages[since:])
    return [(s['state'], s['detail']) for s in found]


def diagnostics_of(harness, node):
    """Return the newest /diagnostics values of `node` as a dict, with 'level' and 'message'."""
    name = node.get_fully_qualified_name()
    found = harness.diagnostics.find(lambda m: any(s.name == name for s in m.status))
    if found is None:
        return None
    status = next(s for s in found.status if s.name == name)
    return {kv.key: kv.value for kv in status.values} | {
        'level': status.level[0], 'message': status.message}


def test_unconfigured_node_takes_nothing_and_publishes_nothing(managed):
    node = managed.policy_node(MANAGED)
    assert node.lifecycle_state == 'unconfigured' and node._policy is None
    assert not wait_for(lambda: managed.pubs['command'].get_subscription_count(), timeout=1.0)
    status, goals = run_command(managed, 'pick up the blue block', frames=10, settle=0.5)
    assert status is None and goals == 0 and not managed.status.messages


def test_lifecycle_moves_only_while_active(managed, harness):
    node = managed.policy_node(MANAGED)
    assert node.trigger_configure() == SUCCESS
    assert node.lifecycle_state == 'inactive' and node._policy is not None
    assert managed.pubs['command'].get_subscription_count() == 0, 'inactive: no inputs'
    assert node.trigger_activate() == SUCCESS
    assert wait_for(lambda: managed.pubs['command'].get_subscription_count() > 0)
    values = wait_for(lambda: (v := diagnostics_of(harness, node)) and v['state'] == 'active'
                      and v)
    assert values and values['model'] == 'geometric policy'

    status, goals = run_command(managed, 'pick up the blue block', frames=8, final=('never',),
                                settle=0.0)
    assert goals > 0, 'an active node with valid inputs moves'
    seen = len(managed.status.messages)
    assert node.trigger_deactivate() == SUCCESS
    stopped = wait_for(lambda: [s for s in states(managed, seen) if s[0] == 'aborted'])
    assert stopped and 'deactivated' in stopped[0][1], states(managed, seen)
    twist = wait_for(lambda: managed.twists.messages)[-1].twist.linear
    assert (twist.x, twist.y, twist.z) == (0.0, 0.0, 0.0), 'deactivate stops servoing'
    assert wait_for(lambda: managed.pubs['command'].get_subscription_count() == 0)

    seen, goals = len(managed.status.messages), len(managed.goals.messages)
    status, _ = run_command(managed, 'pick up the blue block', frames=10, settle=0.5)
    assert status is None and len(managed.goals.messages) == goals, 'inactive: no motion'
    assert states(managed, seen) == []

    assert node.trigger_activate() == SUCCESS, 'reactivating keeps the policy'
    assert wait_for(lambda: managed.pubs['command'].get_subscription_count() > 0)
    _, goals = run_command(managed, 'pick up the blue block', frames=8, final=('never',),
                           settle=0.0)
    assert goals > 0
    assert node.trigger_deactivate() == SUCCESS
    assert node.trigger_cleanup() == SUCCESS
    assert node.lifecycle_state == 'unconfigured' and node._policy is None
    assert node.trigger_shutdown() == SUCCESS and node.lifecycle_state == 'finalized'


@pytest.mark.parametrize('steps', [[], ['configure'], ['configure', 'activate']],
                         ids=['unconfigured', 'inactive', 'active'])
def test_shutdown_from_any_state(managed, steps):
    node = managed.policy_node(MANAGED)
    for step in steps:
        assert getattr(node, f'trigger_{step}')() == SUCCESS
    assert node.trigger_shutdown() == SUCCESS
    assert node.lifecycle_state == 'finalized' and node._policy is None
    assert node._timer.is_canceled()


@pytest.fixture(scope='module')
def head_path(tmp_path_factory):
    """Write a random policy head over the tiny CLIP (no weights needed)."""
    dim = load_clip('tiny', 'random', 'cpu').encode_text(['a block']).shape[1]
    path = tmp_path_factory.mktemp('head') / 'head.pt'
    PolicyHead(HeadConfig(dim, 'tiny', 'random', hidden=16)).save(str(path))
    return str(path)


def test_cleanup_releases_the_learned_head(managed, head_path):
    node = managed.policy_node(MANAGED + [
        Parameter('policy', value='learned'), Parameter('head_path', value=head_path),
        Parameter('device', value='cpu')])
    for _ in range(2):
        assert node.trigger_configure() == SUCCESS
        head = weakref.ref(node._policy.head)
        clip = weakref.ref(node._policy.embedder.clip.model)
        assert node._model[0] == 'learned head head.pt on tiny/random'
        assert node.trigger_cleanup() == SUCCESS
        gc.collect()
        assert head() is None and clip() is None, 'cleanup must drop the head and its CLIP'


def test_missing_head_fails_configure_with_the_reason(managed, harness, tmp_path):
    node = managed.policy_node([
        Parameter('policy', value='learned'), Parameter('head_path', value=str(tmp_path / 'x'))])
    assert node.lifecycle_state == 'unconfigured', 'autostart with a missing head'
    assert 'train_policy_head' in node.load_error
    # Wait for the error status itself, not for the first status of any level.
    values = wait_for(lambda: (v := diagnostics_of(harness, node)) and v['level'] == ERROR and v)
    assert values and 'model failed to load' in values['message'], values


def test_diagnostics_name_the_missing_stream(managed, harness):
    node = managed.policy_node([Parameter('silent_input_sec', value=0.3),
                                Parameter('diagnostics_period', value=0.2)])
    values = wait_for(lambda: (v := diagnostics_of(harness, node)) and v['level'] == WARN and v)
    assert values and 'no detections, mask, depth, camera_info since activation' in \
        values['message'], values


def test_learned_head_takes_dtype_and_logs_the_loader_warnings(managed, harness, head_path):
    from rcl_interfaces.msg import Log
    rosout = harness.subscribe(Log, '/rosout')
    node = managed.policy_node(MANAGED + [
        Parameter('policy', value='learned'), Parameter('head_path', value=head_path),
        Parameter('device', value='cpu'), Parameter('dtype', value='float16')])
    assert node.trigger_configure() == SUCCESS
    clip = node._policy.embedder.clip
    assert str(clip.device) == 'cpu' and str(clip.dtype) == 'torch.float32', 'float16 -> float32'
    # The loader's Python warning (the 'clip_ros' logger) reaches the node's log.
    warned = wait_for(lambda: rosout.find(lambda m: m.name == node.get_logger().name
                                          and 'float16 is not supported well on CPU' in m.msg))
    assert warned and warned.level == Log.WARN, 'loader warning not in the node log'


def test_learned_head_looks_for_its_clip_in_cache_dir(managed, tmp_path):
    # A head over ViT-B-32/openai: its CLIP weights are looked up in cache_dir, and only there.
    path = tmp_path / 'head.pt'
    PolicyHead(HeadConfig(512, clip_arch='ViT-B-32', clip_pretrained='openai',
                          hidden=16)).save(str(path))
    cache = tmp_path / 'empty_cache'
    cache.mkdir()
    node = managed.policy_node(MANAGED + [
        Parameter('policy', value='learned'), Parameter('head_path', value=str(path)),
        Parameter('device', value='cpu'), Parameter('cache_dir', value=str(cache))])
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert 'not in the local cache' in node.load_error and str(cache) in node.load_error, \
        node.load_error


def test_an_ended_command_is_reported_once(ros):
    # After the end the control ticks go on and the input explanation may change: no repeats.
    count = len(ros.status.messages)
    status, _ = run_command(ros, 'pick up the blue block', frames=3, info=False)
    assert status is not None and status['state'] == 'aborted', status
    for _ in range(10):  # the missing input now arrives: the explanation would change
        send_frame(ros)
        time.sleep(0.1)
    ended = [s for s in (json.loads(m.data) for m in ros.status.messages[count:])
             if s['state'] in ('succeeded', 'aborted', 'rejected')]
    assert len(ended) == 1, ended


def test_non_finite_poses_are_refused_counted_and_never_reach_the_arm(managed):
    node = managed.policy_node()
    camera_pose = managed.harness.publisher(PoseStamped, f'{managed.namespace}/camera_pose',
                                            LATCHED_QOS)
    assert wait_for(lambda: camera_pose.get_subscription_count() > 0)
    extrinsic = node._extrinsic
    ee = arm_state(managed.header('camera'))
    ee.pose.position.x = float('nan')
    managed.pubs['ee_state'].publish(ee)
    zero = PoseStamped(header=managed.header('world'))
    zero.pose.orientation.w = 0.0  # a zero quaternion
    camera_pose.publish(zero)
    assert wait_for(lambda: node.rejected >= 2), node.rejected  # the pose is kept-last 1
    nowhere = PoseStamped(header=managed.header('world'))
    nowhere.pose.position.z, nowhere.pose.orientation.w = float('inf'), 1.0
    camera_pose.publish(nowhere)
    assert wait_for(lambda: node.rejected >= 3), node.rejected
    before = node.rejected
    tilted = PoseStamped(header=managed.header('world'))
    tilted.pose.orientation.x, tilted.pose.orientation.w = float('inf'), 1.0  # NaN if normalised
    camera_pose.publish(tilted)
    assert wait_for(lambda: node.rejected > before), node.rejected
    assert node._ee is None and node._extrinsic is extrinsic
    # The executor survived: the next command moves the arm to finite goals only.
    status, goals = run_command(managed, 'pick up the blue block', frames=8, final=('never',),
                                settle=0.0)
    assert goals > 0
    for msg in managed.goals.messages:
        position = msg.pose.position
        assert np.isfinite([position.x, position.y, position.z]).all()


def test_an_unreadable_grounding_status_is_refused_and_the_next_one_read(managed):
    node = managed.policy_node()
    status = managed.harness.publisher(String, f'{managed.namespace}/grounding_status',
                                       LATCHED_QOS)
    assert wait_for(lambda: status.get_subscription_count() > 0)
    # Nested deeper than the JSON decoder recurses: its error must not end the executor.
    status.publish(String(data='[' * 100_000))
    assert wait_for(lambda: node.rejected >= 1), node.rejected
    refused = {'blue block': 'unknown word: blue'}
    status.publish(String(data=json.dumps({'rejected': refused})))
    assert wait_for(lambda: node._refused == refused), node._refused


def executing(managed):
    """Return a policy node whose arm is moving towards the blue block."""
    node = managed.policy_node()
    assert wait_for(lambda: managed.pubs['command'].get_subscription_count() > 0)
    _, goals = run_command(managed, 'pick up the blue block', frames=8, final=('never',),
                           settle=0.0)
    assert goals > 0 and node._policy.status.state == 'executing'
    return node


def test_a_new_command_stops_the_arm_before_anything_else(managed):
    executing(managed)
    twists = len(managed.twists.messages)
    managed.pubs['command'].publish(String(data='pick up the red ball'))  # nothing to see

    def stopped():
        return any(m.twist.linear.x == m.twist.linear.y == m.twist.linear.z == 0.0
                   for m in managed.twists.messages[twists:])
    assert wait_for(stopped), [m.twist.linear for m in managed.twists.messages[twists:]]


def test_a_replaced_command_ends_with_a_status_of_its_own(managed):
    executing(managed)
    count = len(managed.status.messages)
    managed.pubs['command'].publish(String(data='pick up the red ball'))

    def replaced():
        ended = [s for s in (json.loads(m.data) for m in managed.status.messages[count:])
                 if s['command'] == 'pick up the blue block']
        return ended and ended[-1]
    old = wait_for(replaced)
    assert old and old['state'] == 'aborted' and 'replaced by' in old['detail'], old
    assert wait_for(lambda: json.loads(managed.status.messages[-1].data)['command']
                    == 'pick up the red ball')


def test_a_new_command_after_a_limit_change_still_stops_the_arm(managed):
    node = executing(managed)
    # The next command runs a new policy with the new limit; the old one was still moving.
    assert node.set_parameters([Parameter('max_speed', value=0.2)])[0].successful
    twists = len(managed.twists.messages)
    managed.pubs['command'].publish(String(data='pick up the red ball'))

    def stopped():
        return any(m.twist.linear.x == m.twist.linear.y == m.twist.linear.z == 0.0
                   for m in managed.twists.messages[twists:])
    assert wait_for(stopped), [m.twist.linear for m in managed.twists.messages[twists:]]
    assert node._policy.config.max_speed == 0.2


def test_a_silent_arm_state_stops_the_arm_and_aborts_saying_why(managed):
    node = managed.policy_node([Parameter('ee_timeout', value=0.3)])
    assert wait_for(lambda: managed.pubs['command'].get_subscription_count() > 0)
    _, goals = run_command(managed, 'pick up the blue block', frames=8, final=('never',),
                           settle=0.0)
    assert goals > 0 and node._policy.status.state == 'executing'
    # The camera still sees the target, but ee_state stops: goals would come from a stale pose.
    count = len(managed.status.messages)

    def aborted():
        return next((s for s in (json.loads(m.data) for m in managed.status.messages[count:])
                     if s['state'] == 'aborted'), None)
    for _ in range(200):  # about 10 s of perception sets without ee_state
        if aborted():
            break
        send_frame(managed, ee=False)
        time.sleep(0.05)
    status = wait_for(aborted, timeout=5.0)
    assert status and 'end-effector state lost' in status['detail'], status
    last = wait_for(lambda: managed.twists.messages)[-1].twist.linear
    assert (last.x, last.y, last.z) == (0.0, 0.0, 0.0), 'the arm is told to stop'


def test_a_non_finite_gripper_state_is_refused_and_counted(managed):
    node = managed.policy_node()
    assert wait_for(lambda: managed.pubs['gripper_state'].get_subscription_count() > 0)
    managed.pubs['gripper_state'].publish(Float64(data=float('nan')))
    assert wait_for(lambda: node.rejected >= 1), node.rejected
    assert node._gripper == 0.0 and node._state_closed is None
    managed.pubs['gripper_state'].publish(Float64(data=1.0))
    assert wait_for(lambda: node._state_closed is True)


def test_an_ee_state_of_another_frame_is_refused_without_tf(managed):
    node = managed.policy_node()
    assert wait_for(lambda: managed.pubs['ee_state'].get_subscription_count() > 0)
    ee = arm_state(managed.header())
    ee.header.frame_id = 'panda_hand'  # not base_frame 'world', and use_tf is off
    managed.pubs['ee_state'].publish(ee)
    assert wait_for(lambda: node.rejected >= 1), node.rejected
    assert node._ee is None
    ee.header.frame_id = '/world'  # base_frame, spelt with tf1's leading slash
    managed.pubs['ee_state'].publish(ee)
    assert wait_for(lambda: node._ee is not None)
    assert node._ee == pytest.approx((0.0, 0.12, 0.45)) and node.rejected == 1


def test_a_colour_mask_is_refused_naming_its_encoding(ros):
    from clip_ros.policy.command import parse_command
    node = ros.node
    header = ros.header('camera_optical_frame')
    detections, mask = blue_block(header, W, H)
    labels = image_to_numpy(mask)
    command = parse_command('pick up the blue block')
    match = {'detections': detections, 'depth': numpy_to_image(
                 np.full((H, W), 0.6, np.float32), '32FC1', header),
             'camera_info': camera_info_msg(K, W, H, header),
             'mask': numpy_to_image(np.repeat(labels[..., None].astype(np.uint8), 3, -1),
                                    'rgb8', header)}
    with node._control_lock:  # no control tick takes the result meanwhile
        node._command, node._fresh = command, {}
        node._perceive(match, command)
        assert 'target' not in node._fresh
        assert "mask encoding 'rgb8' is not a label image" in node._perceive_error
        match['mask'] = mask
        node._perceive(match, command)
        assert node._fresh['target'] == pytest.approx((0.0, 0.0, 0.1), abs=0.01)
        node._command = None


def test_a_set_lifted_for_an_old_command_is_not_the_new_ones_target(ros):
    from clip_ros.policy.command import parse_command
    node = ros.node
    header = ros.header('camera_optical_frame')
    detections, mask = blue_block(header, W, H)
    match = {'detections': detections, 'mask': mask,
             'depth': numpy_to_image(np.full((H, W), 0.6, np.float32), '32FC1', header),
             'camera_info': camera_info_msg(K, W, H, header)}
    old, new = parse_command('pick up the blue block'), parse_command('pick up the blue block')
    with node._control_lock:  # no control tick takes the result meanwhile
        node._command = new
        node._fresh = {}
        node._perceive(match, old)  # lifted while the new command arrived
        assert 'target' not in node._fresh
        node._perceive(match, new)
        assert node._fresh['target'] == pytest.approx((0.0, 0.0, 0.1), abs=0.01)
        node._command = None


def test_under_use_sim_time_the_timeouts_run_on_the_simulators_clock(managed):
    from rosgraph_msgs.msg import Clock
    node = managed.policy_node([Parameter('use_sim_time', value=True)])
    clock = managed.harness.publisher(Clock, '/clock')
    sim_time = [100.0]

    def tick() -> None:  # the simulation runs at a quarter of real time
        sim_time[0] += 0.05
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = int(sim_time[0]), int(sim_time[0] % 1 * 1e9)
        clock.publish(msg)
    tick()
    assert wait_for(lambda: node.get_clock().now().nanoseconds >= 100e9)
    count = len(managed.status.messages)
    managed.pubs['command'].publish(String(data='pick up the green ball'))  # never seen
    for _ in range(10):  # 2 s of wall time, 0.5 s of simulated time: within acquire_timeout
        time.sleep(0.2)
        tick()
    assert states(managed, count) == [('waiting', states(managed, count)[0][1])], \
        states(managed, count)

    def ended():
        tick()
        return [s for s in states(managed, count) if s[0] != 'waiting']
    final = wait_for(ended, timeout=20.0, period=0.2)
    assert final and final[0][0] == 'aborted' and 'not found within 1 s' in final[0][1], final
    assert sim_time[0] >= 101.0, sim_time


def test_depth_qos_sensor_data_hears_a_best_effort_camera(managed):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    best_effort = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    publishers = {name: managed.harness.publisher(kind, f'{managed.namespace}/{name}',
                                                  best_effort)
                  for kind, name in ((Image, 'depth'), (CameraInfo, 'camera_info'))}
    reliable = managed.policy_node()  # the default: a best-effort driver is never heard
    assert wait_for(lambda: managed.pubs['command'].get_subscription_count() > 0)
    wait_for(lambda: False, timeout=0.5)
    assert all(p.get_subscription_count() == 0 for p in publishers.values())
    managed.harness.remove(reliable)
    managed.policy_node([Parameter('depth_qos', value='sensor_data')])
    assert wait_for(lambda: all(p.get_subscription_count() == 1 for p in publishers.values()))
    managed.pubs.update(publishers)  # the matched sets now come best effort
    _, goals = run_command(managed, 'pick up the blue block', frames=8, final=('never',),
                           settle=0.0)
    assert goals > 0


def test_an_unknown_depth_qos_fails_configure_with_the_choices(managed):
    node = managed.policy_node(MANAGED + [Parameter('depth_qos', value='best_effort')])
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "depth_qos 'best_effort' is not one of" in node.load_error, node.load_error


def test_state_and_camera_pose_are_heard_from_any_usual_publisher(managed):
    # A best-effort ee_state driver and a volatile camera_pose publisher (ros2 topic pub's
    # default) are heard, as reliable and latched ones are.
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    best_effort = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    node = managed.policy_node()
    ee = managed.harness.publisher(PoseStamped, f'{managed.namespace}/ee_state', best_effort)
    pose = managed.harness.publisher(PoseStamped, f'{managed.namespace}/camera_pose')
    assert wait_for(lambda: ee.get_subscription_count() == 1 and pose.get_subscription_count())
    msg = PoseStamped(header=Header(frame_id='world'))  # base_frame
    msg.pose.position.x, msg.pose.position.z, msg.pose.orientation.w = 0.1, 0.4, 1.0
    # Sent until heard: a writer can see the reader before the reader has matched it, and a
    # best-effort or volatile message sent in that moment is lost (once under a loaded CI).
    assert wait_for(lambda: ee.publish(msg) or (
        node._ee is not None and node._ee[2] == pytest.approx(0.4)), period=0.1)
    msg.pose.position.x = 0.25
    assert wait_for(lambda: pose.publish(msg) or (
        node._extrinsic.translation[0] == pytest.approx(0.25)), period=0.1)
