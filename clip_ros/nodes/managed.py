"""
Lifecycle base for model-owning nodes: transitions, newest-frame worker, diagnostics.

A subclass declares its parameters in `__init__`, registers how they are checked and applied
with `self.watch_parameters(check, apply)`, calls `self.start()` last, and implements:

* `load_model()` -> (model name, device): load and warm the weights, create outputs with
  `self.output(...)`; raise to fail the configure transition (the reason is logged).
* `release_model()`: drop every reference to the model (cleanup frees the memory).
* `process(msg)`: handle one input message on the worker thread.

Optional hooks: `subscribe_inputs()` (default: `image` with the `image_qos` parameter),
`on_activated()` and `on_deactivated()` for extra subscriptions, latched outputs or timers, and
`input_hint()` for what the diagnostics say while no input arrives.
"""
import ctypes
import gc
import os
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.qos import qos_check_compatible, QoSCompatibility, QoSPolicyKind
from sensor_msgs.msg import CompressedImage, Image

from clip_ros.nodes.common import (
    declare_all, decode_rgb, describe, image_qos, package_logs_to, parameter_values,
    transport_topic, watch_parameters)
from clip_ros.nodes.frame_worker import FrameWorker, KeyedThrottle
from clip_ros.nodes.messages import diagnostics_msg
from clip_ros.perception.compressed import decode_colour
from clip_ros.perception.stats import assess, FrameStats, HealthLimits

THROTTLE_SEC = 5.0
STATS_PERIOD_SEC = 10.0
SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


def managed_parameters() -> tuple:
    """Return (name, default, descriptor) for the lifecycle and diagnostics parameters."""
    ro = {'read_only': True}
    return (
        ('autostart', True, describe(
            'configure and activate at start-up (plain node); false waits for a lifecycle '
            'manager or `ros2 lifecycle set`', **ro)),
        ('diagnostics_period', 1.0, describe(
            'seconds between /diagnostics messages', float_range=(0.1, 60.0), **ro)),
        # Both are read by every diagnostics message: a set applies from the next one.
        ('silent_input_sec', 5.0, describe(
            'an active node with no input frame for this long reports WARN',
            float_range=(0.1, 3600.0))),
        ('max_drop_ratio', 0.95, describe(
            'WARN when more than this share of input frames is dropped (replaced before '
            'inference) over the last 10 s', float_range=(0.0, 1.0))),
    )


def resident_bytes() -> int:
    """Return this process's resident memory in bytes (Linux /proc/self/statm)."""
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _cuda():
    """Return torch.cuda when torch is loaded and sees a GPU, else None (never imports torch)."""
    torch = sys.modules.get('torch')  # a Triton client never loads it
    cuda = getattr(torch, 'cuda', None)
    return cuda if cuda is not None and cuda.is_available() else None


def cuda_bytes() -> int:
    """Return the bytes allocated by torch on the current CUDA device, 0 without CUDA."""
    cuda = _cuda()
    return cuda.memory_allocated() if cuda else 0


def free_memory() -> None:
    """Collect garbage, empty the CUDA cache and hand freed heap pages back to the OS."""
    gc.collect()
    cuda = _cuda()
    if cuda:
        cuda.empty_cache()
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: freed pages return to the OS on the allocator's own schedule


def qos_text(qos) -> str:
    """Describe the QoS policies that decide whether a publisher and subscription match."""
    # The graph reports no history or depth for remote endpoints, and they never block a match.
    return f'{qos.reliability.name.lower()}, {qos.durability.name.lower()}'


def incompatible_offers(publishers, requested) -> list[str]:
    """Return why each of `publishers` (endpoint infos) cannot feed a `requested` subscription."""
    reasons = []
    for info in publishers:
        # The graph gives remote endpoints no history or depth: those only ever warn.
        compatibility, reason = qos_check_compatible(info.qos_profile, requested)
        if compatibility == QoSCompatibility.ERROR:
            reasons.append('; '.join(part[len('ERROR:'):].strip() for part in reason.split(';')
                                     if part.startswith('ERROR:')))
    return reasons


class ManagedNode(LifecycleNode):
    """Lifecycle node that loads a model on configure and processes the newest input frame."""

    def __init__(self, node_name: str, **kwargs):
        super().__init__(node_name, **kwargs)
        self.refused_overrides = []  # start-up values rclpy refused (declare_all)
        declare_all(self, managed_parameters())
        self._warn = KeyedThrottle(self.get_logger(), 'warning', THROTTLE_SEC)
        self._error = KeyedThrottle(self.get_logger(), 'error', THROTTLE_SEC)
        self.stats = FrameStats()
        self.load_error = ''
        self.rejected = 0  # inputs refused with a logged reason (bad frames, vague commands)
        self._max_image_size = 4096  # a subclass with max_image_size sets it from its parameter
        self.params_error = ''  # why the start-up parameter values are unusable
        self.memory = {}  # 'configure' / 'cleanup' -> (resident bytes, CUDA bytes)
        self._model = ('', '')  # (name, device)
        self._outputs, self._inputs = [], []
        self._worker = None
        self._active = False
        self._qos_hint = ''
        self._lock = threading.Lock()
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._diag_timer = self.create_timer(
            self.get_parameter('diagnostics_period').value, self.publish_diagnostics,
            callback_group=MutuallyExclusiveCallbackGroup())
        self._stats_timer = self.create_timer(STATS_PERIOD_SEC, self._log_stats)

    # Subclass interface --------------------------------------------------------------------

    def load_model(self) -> tuple:
        """Load and warm the model, create the outputs; return (model name, device)."""
        raise NotImplementedError

    def release_model(self) -> None:
        """Drop every reference to the model."""
        raise NotImplementedError

    def process(self, msg) -> None:
        """Handle one input message (worker thread)."""
        raise NotImplementedError

    def subscribe_inputs(self) -> None:
        """Subscribe the inputs that feed the worker (default: `image`)."""
        qos = image_qos(self.get_parameter('image_qos').value)  # checked at configure
        transport = self.get_parameter('image_transport').value
        kind = Image if transport == 'raw' else CompressedImage
        self.subscribe_frames(kind, transport_topic(self, 'image', transport), qos)

    def make_worker(self):
        """Return the worker that runs the input frames (default: newest frame, one at a time)."""
        return FrameWorker(self._run_frame, self._on_worker_error, f'{self.get_name()}_worker')

    def extra_diagnostics(self, limits: HealthLimits, stamp) -> list:
        """Return more DiagnosticStatus entries for this node's DiagnosticArray (default none)."""
        return []

    def on_activated(self) -> None:
        """Run after the inputs are subscribed and the outputs enabled."""

    def on_deactivated(self) -> None:
        """Run after the inputs are gone, before the outputs are disabled."""

    # Helpers for subclasses ----------------------------------------------------------------

    def start(self) -> None:
        """Configure and activate now when `autostart` is set; call at the end of __init__."""
        if not self.get_parameter('autostart').value:
            self.get_logger().info('waiting for lifecycle transitions (autostart is false)')
            return
        if self.trigger_configure() == SUCCESS:
            self.trigger_activate()

    def watch_parameters(self, check, apply) -> None:
        """
        Check every parameter set with `check(values)` and apply it with `apply(names)`.

        See common.watch_parameters. Start-up values that `check` refuses are logged and fail
        configure (the reason shows in the diagnostics) until a set fixes them; then `apply`
        gets every parameter name and the node starts as `autostart` says.
        """
        try:
            if self.refused_overrides:
                raise ValueError(f"{'; '.join(self.refused_overrides)} (the default is used "
                                 'until a valid value is set)')
            check(parameter_values(self))
        except ValueError as e:
            self.params_error = f'invalid parameters: {e}'
            self.get_logger().error(self.params_error)
        else:
            apply(set(parameter_values(self)))

        def applied(names: set) -> None:
            if self.params_error:
                self.params_error = ''  # fixed at run time: apply all and start what was skipped
                apply(set(parameter_values(self)))
                if self.lifecycle_state == 'unconfigured':
                    self.start()
                return
            apply(names)
        watch_parameters(self, check, applied)

    def output(self, msg_type, topic: str, qos):
        """Create a lifecycle publisher that publishes only while active."""
        publisher = self.create_lifecycle_publisher(msg_type, topic, qos)
        self._outputs.append(publisher)
        return publisher

    def subscribe_frames(self, msg_type, topic: str, qos, callback=None):
        """Subscribe `topic` into the worker (`callback`: instead of _on_frame), watching QoS."""
        # `sub` is read when the event fires: the hint names the camera whose QoS conflicts.
        events = SubscriptionEventCallbacks(
            incompatible_qos=lambda info: self._on_incompatible_qos(info, sub))
        sub = self.create_subscription(msg_type, topic, callback or self._on_frame, qos,
                                       event_callbacks=events)
        self._inputs.append(sub)
        return sub

    def subscribe(self, msg_type, topic: str, callback, qos):
        """Create a subscription that lives from activate to deactivate."""
        sub = self.create_subscription(msg_type, topic, callback, qos)
        self._inputs.append(sub)
        return sub

    @property
    def worker(self) -> FrameWorker | None:
        """Return the newest-frame worker, or None while unconfigured."""
        return self._worker

    @property
    def not_ready(self) -> str:
        """Return why frames are not processed ('' while active)."""
        if self._active:
            return ''
        return self.load_error or f'lifecycle state is {self.lifecycle_state}'

    def reject(self, key: str, message: str, camera=None) -> None:
        """
        Count a refused input and log why (once per distinct reason per throttle period).

        `camera`: the nodes.cameras.Camera it came from, when the node serves several: it is
        named in the message and counted in that camera's diagnostics too.
        """
        if camera is not None and camera.name:
            key, message = f'{key}:{camera.name}', f'camera {camera.name}: {message}'
            camera.stats.on_rejected(message)
        self.rejected += 1
        self.stats.on_rejected(message)
        self._warn(key, message)

    def decode_frame(self, msg, camera=None):
        """Return an Image or CompressedImage as RGB uint8 [H, W, 3], or None (rejected)."""
        try:
            if isinstance(msg, CompressedImage):
                # On the model's device: torchvision decodes JPEG on the GPU there.
                return decode_colour(msg.data, msg.format, self._max_image_size,
                                     self._model[1] or 'cpu')
            return decode_rgb(msg, self._max_image_size)
        except ValueError as e:
            self.reject('bad_image', f'rejected image: {e}', camera)
            return None
        except Exception as e:  # noqa: BLE001 - a decoder's own failure is this frame's alone
            self.reject('bad_image', f'rejected image: the decoder failed: '
                                     f'{type(e).__name__}: {e}', camera)
            return None

    def submit_frame(self, msg) -> None:
        """Hand `msg` to the worker as if it arrived on the input topic (ignored unless active)."""
        self._on_frame(msg)

    @property
    def active(self) -> bool:
        """Return whether frames are being processed."""
        return self._active

    @property
    def lifecycle_state(self) -> str:
        """Return the current lifecycle state label ('unconfigured', 'inactive', ...)."""
        return self._state_machine.current_state[1]

    # Transitions ---------------------------------------------------------------------------

    def on_configure(self, state) -> TransitionCallbackReturn:
        """Load the model and create the outputs; FAILURE (logged) when that fails."""
        free_memory()
        self.memory['configure'] = (resident_bytes(), cuda_bytes())
        try:
            if self.params_error:
                raise ValueError(self.params_error)
            self.check_transports()
            with package_logs_to(self.get_logger()):
                self._model = self.load_model()
        except Exception as e:  # noqa: B902 - any load error fails the transition, with reason
            self.load_error = f'{type(e).__name__}: {e}'
            self.get_logger().error(f'configure failed: {self.load_error}')
            self._release()
            return FAILURE
        self.load_error = ''
        self.stats.reset()
        self._worker = self.make_worker()
        self.get_logger().info(f'configured: {self._model[0]} on {self._model[1]}')
        return SUCCESS

    def check_transports(self) -> None:
        """Raise ValueError naming the choices when an input transport or QoS is unknown."""
        if self.has_parameter('image_transport'):
            transport_topic(self, 'image', self.get_parameter('image_transport').value)
        if self.has_parameter('image_qos'):
            image_qos(self.get_parameter('image_qos').value)

    def on_activate(self, state) -> TransitionCallbackReturn:
        """Subscribe the inputs and enable the outputs."""
        self.stats.reset()
        self._qos_hint = ''
        try:
            self.subscribe_inputs()
        except Exception as e:  # noqa: B902 - rclpy would swallow it, unlogged
            self._stop_inputs()
            self.get_logger().error(f'activate failed: {type(e).__name__}: {e}')
            self.stats.on_error(f'activate failed: {e}')
            return FAILURE
        result = super().on_activate(state)
        self._active = True
        self.on_activated()
        self.get_logger().info('activated: processing frames')
        return result

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        """Stop taking frames; the model stays loaded."""
        self._stop_inputs()
        self.on_deactivated()
        self.get_logger().info('deactivated')
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        """Free the model, the outputs and the GPU memory."""
        self._release()
        self.get_logger().info('cleaned up: ' + self.memory_text())
        return SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        """Stop and free everything, whatever the state."""
        self._stop_inputs()
        self._release()
        self.get_logger().info('shut down')
        return SUCCESS

    def on_error(self, state) -> TransitionCallbackReturn:
        """Free everything so the node can be configured again."""
        self._stop_inputs()
        self._release()
        return SUCCESS

    def memory_text(self) -> str:
        """Describe resident and CUDA memory now against the last configure."""
        rss, cuda = resident_bytes(), cuda_bytes()
        before = self.memory.get('configure', (rss, cuda))
        return (f'resident {rss / 2**20:.0f} MB ({(rss - before[0]) / 2**20:+.0f} MB since '
                f'configure), CUDA {cuda / 2**20:.0f} MB ({(cuda - before[1]) / 2**20:+.0f} MB)')

    def _stop_inputs(self) -> None:
        self._active = False
        for sub in self._inputs:
            self.destroy_subscription(sub)
        self._inputs = []
        if self._worker is not None:
            self._worker.clear()

    def _release(self) -> None:
        if self._worker is not None:
            if not self._worker.stop():  # waits for the frame in progress, up to 5 s
                self.get_logger().warning('a frame still in progress after 5 s is left to '
                                          'finish; its results will not be published')
            self._worker = None
        self.release_model()
        self._model = ('', '')  # the diagnostics no longer name a freed model
        for publisher in self._outputs:
            self.destroy_lifecycle_publisher(publisher)
        self._outputs = []
        free_memory()
        self.memory['cleanup'] = (resident_bytes(), cuda_bytes())

    def destroy_node(self) -> None:
        """Stop the worker and drop the model before the node's entities go away."""
        self._stop_inputs()
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        self.release_model()
        super().destroy_node()

    # Frames and diagnostics ----------------------------------------------------------------

    def _on_frame(self, msg) -> None:
        worker = self._worker
        if worker is None or not self._active:
            return
        self.stats.on_input(worker.submit((time.monotonic(), msg)))

    def _run_frame(self, item) -> None:
        received, msg = item
        start = time.monotonic()
        try:
            self.process(msg)
        finally:
            end = time.monotonic()
            self.stats.on_processed(end - start, end - received)

    def _log_stats(self) -> None:
        report = self._worker.dropped_report() if self._worker is not None else None
        if report:
            self.get_logger().info(report)

    def _on_worker_error(self, error: Exception) -> None:
        if not self.context.ok():
            return  # a shutdown (Ctrl-C) cut the frame short: its publish fails, nothing is wrong
        message = f'inference failed: {type(error).__name__}: {error}'
        self.stats.on_failed(message)
        self._error('inference', message)

    def _on_incompatible_qos(self, info, sub) -> None:
        try:
            policy = QoSPolicyKind(info.last_policy_kind).name.lower()
        except ValueError:
            policy = str(info.last_policy_kind)
        self._qos_hint = self._qos_mismatch(sub, f'incompatible QoS ({policy})')

    def _qos_mismatch(self, sub, what: str) -> str:
        topic, ours = sub.topic_name, sub.qos_profile
        theirs = [qos_text(p.qos_profile) for p in self.get_publishers_info_by_topic(topic)]
        hint = (f'{what} on {topic}: publishers offer [{"; ".join(theirs)}], this node '
                f'subscribes with [{qos_text(ours)}]; set image_qos or the '
                'publisher QoS so they match')
        self._warn(what.split()[0], hint)
        return hint

    def _check_silent_input(self, snapshot, limits: HealthLimits) -> None:
        if not self._active or not self._inputs:
            self._qos_hint = ''
            return
        if snapshot.received and snapshot.since_input <= limits.silent_after:
            self._qos_hint = ''  # frames flow
            return
        if self._qos_hint.startswith('incompatible'):
            return  # kept until frames flow
        if snapshot.since_input <= limits.silent_after:
            return
        # A silent publisher whose QoS matches ours has merely paused: the diagnostics report
        # the silence, and only an offer that cannot match our request gets a QoS hint.
        self._qos_hint = ''
        for sub in self._inputs:  # every camera's, and the other inputs'
            conflicts = incompatible_offers(self.get_publishers_info_by_topic(sub.topic_name),
                                            sub.qos_profile)
            if conflicts:
                self._qos_hint = self._qos_mismatch(sub, f'QoS mismatch ({conflicts[0]})')
                return

    def input_hint(self, snapshot, limits: HealthLimits) -> str:
        """Return why input may be missing, for the diagnostics ('' when nothing is suspected)."""
        self._check_silent_input(snapshot, limits)
        return self._qos_hint

    def health_limits(self) -> HealthLimits:
        """Return the diagnostics limits from the current parameter values."""
        return HealthLimits(silent_after=self.get_parameter('silent_input_sec').value,
                            max_drop_ratio=self.get_parameter('max_drop_ratio').value)

    def diagnostics(self):
        """Return the current statistics, assessed (level and reasons set)."""
        limits = self.health_limits()
        snapshot = self.stats.snapshot()
        hint = self.input_hint(snapshot, limits)
        return assess(snapshot, limits, self._active, self.load_error, hint)

    def publish_diagnostics(self) -> None:
        """Publish one DiagnosticArray with this node's status."""
        snapshot = self.diagnostics()
        extra = {'state': self.lifecycle_state, 'model': self._model[0],
                 'device': self._model[1], 'qos_hint': self._qos_hint}
        stamp = self.get_clock().now().to_msg()
        msg = diagnostics_msg(self.get_fully_qualified_name(), snapshot, extra, stamp)
        msg.status.extend(self.extra_diagnostics(self.health_limits(), stamp))
        self._diag_pub.publish(msg)
