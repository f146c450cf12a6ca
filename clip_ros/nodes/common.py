"""Parameter, QoS, logging and input helpers shared by the nodes."""
import array
from contextlib import contextmanager
import gc
import logging
import signal
import sys

from rcl_interfaces.msg import (
    FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult)
import rclpy
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from clip_ros.nodes.conversions import image_to_numpy, to_rgb
from clip_ros.perception.grounding import clean_phrases  # noqa: F401 - the nodes' import

IMAGE_QOS_CHOICES = ('sensor_data', 'reliable')
IMAGE_TRANSPORTS = ('raw', 'compressed')
# Results: reliable so no detection is lost between nodes on one machine.
RESULTS_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
# Robot state feedback: best effort matches reliable and best-effort publishers alike.
STATE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
# What the label values mean: late subscribers still get the current map.
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
# Commands: reliable and volatile, so a restarted node never replays an old command.
COMMAND_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
RCLError = _rclpy.RCLError
# Longest a spin waits without looking at the context (see spin_until_shutdown).
SPIN_WAKE_SEC = 0.2


def describe(description: str, read_only: bool = False, float_range: tuple | None = None,
             int_range: tuple | None = None, dynamic: bool = False) -> ParameterDescriptor:
    """Build a ParameterDescriptor with an optional closed range."""
    descriptor = ParameterDescriptor(description=description, read_only=read_only,
                                     dynamic_typing=dynamic)
    if float_range is not None:
        descriptor.floating_point_range = [
            FloatingPointRange(from_value=float(float_range[0]), to_value=float(float_range[1]))]
    if int_range is not None:
        descriptor.integer_range = [
            IntegerRange(from_value=int(int_range[0]), to_value=int(int_range[1]), step=1)]
    return descriptor


def image_qos(name: str, parameter: str = 'image_qos') -> QoSProfile:
    """Return the subscription QoS for an `image_qos` (or `parameter`) value."""
    if name == 'sensor_data':
        # Best effort, newest frame only: a slow model never builds a backlog.
        return QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                          history=HistoryPolicy.KEEP_LAST)
    if name == 'reliable':
        return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                          history=HistoryPolicy.KEEP_LAST)
    raise ValueError(f'{parameter} {name!r} is not one of {", ".join(IMAGE_QOS_CHOICES)}')


def string_list(name: str, value) -> list[str]:
    """
    Return a string-array parameter value as a list of str.

    An empty YAML list arrives as an unset parameter (None) and an empty list from
    `ros2 param set` as a byte array, so both mean 'no entries'.
    """
    if value is None:
        return []
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f'{name} must be a list of strings, got {value!r}')


def unit_floats(name: str, value) -> list[float]:
    """Return a double or double-array parameter as a list of floats in [0, 1]."""
    values = [value] if isinstance(value, (int, float)) else value
    if isinstance(values, array.array):
        values = values.tolist()  # double arrays set over the parameter services arrive so
    if not isinstance(values, (list, tuple)) or not values or any(
            isinstance(v, (bool, str, bytes)) or not isinstance(v, (int, float)) for v in values):
        raise ValueError(f'{name} must be a number or a non-empty list of numbers, got {value!r}')
    bad = [v for v in values if not 0.0 <= float(v) <= 1.0]  # also catches NaN
    if bad:
        raise ValueError(f'{name} values must be in [0, 1], got {bad}')
    return [float(v) for v in values]


def decode_rgb(msg, max_size: int):
    """Return an Image message as RGB uint8 HxWx3, or raise ValueError with the reason."""
    if msg.width == 0 or msg.height == 0:
        raise ValueError(f'empty image ({msg.width}x{msg.height})')
    if max(msg.width, msg.height) > max_size:
        # Checked before touching the data, so a huge frame never reaches the model.
        raise ValueError(f'image {msg.width}x{msg.height} exceeds max_image_size {max_size}')
    return to_rgb(image_to_numpy(msg), msg.encoding)


def transport_topic(node, topic: str, transport: str, choices=IMAGE_TRANSPORTS) -> str:
    """
    Return the topic of `topic`'s `transport` ('raw': `topic` itself).

    By the image_transport convention a transport publishes on <resolved base topic>/<name>,
    so the base is resolved first: a remapping of `topic` moves its transports too.
    """
    if transport not in choices:
        raise ValueError(f'{topic} transport {transport!r} is not one of {", ".join(choices)}')
    if transport == 'raw':
        return topic
    return f'{node.resolve_topic_name(topic)}/{transport}'


def model_parameters() -> tuple:
    """Return (name, default, descriptor) for where and how a model loads (read-only)."""
    ro = {'read_only': True}
    return (
        ('device', 'auto', describe("'auto', 'cpu', 'cuda' or 'cuda:N'", **ro)),
        ('dtype', 'auto', describe("'auto', 'float32', 'float16' or 'bfloat16'", **ro)),
        ('cache_dir', '', describe("model cache root; '' for the default caches", **ro)),
    )


def common_parameters() -> tuple:
    """Return (name, default, descriptor) for the model, input and size parameters."""
    ro = {'read_only': True}
    return (
        *model_parameters(),
        ('image_qos', 'sensor_data',
         describe("image QoS: 'sensor_data' (best effort, depth 1) or 'reliable'", **ro)),
        ('image_transport', 'raw', describe(
            "'raw' (sensor_msgs/Image on image) or 'compressed' (sensor_msgs/CompressedImage, "
            'JPEG or PNG, on <image>/compressed)', **ro)),
        ('max_image_size', 4096, describe(
            'frames with a side above this many pixels are rejected', int_range=(32, 16384))),
        ('light_correction', True, describe(
            'correct a warm or blue light cast, brighten dim and darken over-exposed frames, and '
            "recolour the table towards what the model was trained on (config.json 'light'; "
            'models without one, such as the pretrained defaults, are never corrected)')),
    )


def declare_all(node, table) -> None:
    """
    Declare every (name, default, descriptor) of `table` on `node`.

    A start-up value outside its descriptor's range or of the wrong type raises, unless
    `node` keeps a `refused_overrides` list (the managed nodes): then the parameter takes its
    default and the reason goes to that list, so the node stays up and says why.
    """
    refused = getattr(node, 'refused_overrides', None)
    for name, default, descriptor in table:
        try:
            node.declare_parameter(name, default, descriptor)
        except (InvalidParameterValueException, InvalidParameterTypeException) as e:
            if refused is None:
                raise
            refused.append(f'{name}: {e}')
            node.declare_parameter(name, default, descriptor, ignore_override=True)


def parameter_values(node) -> dict:
    """Return {name: value} for all of the node's parameters."""
    return {name: p.value for name, p in node.get_parameters_by_prefix('').items()}


def watch_parameters(node, check, apply) -> None:
    """
    Validate every parameter set on `node` before it lands and apply it after.

    rclpy first refuses read-only parameters, wrong types and values outside a descriptor's
    range. Then `check(values)` gets all of the node's values with the set's new ones merged in
    (so limits that depend on each other are checked together) and raises ValueError naming the
    valid range or choices: the set is refused with that reason and every old value stays.
    After a successful set, `apply(names)` gets the names of the parameters it changed.
    """
    def validate(params) -> SetParametersResult:
        values = parameter_values(node)
        values.update({p.name: p.value for p in params})
        try:
            check(values)
        except ValueError as e:
            return SetParametersResult(successful=False, reason=str(e))
        return SetParametersResult(successful=True)

    def applied(params) -> None:
        names = {p.name for p in params}
        try:
            apply(names)
        except Exception as e:  # noqa: BLE001 - an escape here would end the executor
            node.get_logger().error(f'applying {sorted(names)} failed: {type(e).__name__}: {e}')

    node.add_on_set_parameters_callback(validate)
    node.add_post_set_parameters_callback(applied)


def subscribe_images(node, qos_name: str, callback):
    """Subscribe to `image` with the named QoS, falling back to sensor_data on a bad name."""
    try:
        qos = image_qos(qos_name)
    except ValueError as e:
        node.get_logger().error(f'{e}; using sensor_data')
        qos = image_qos('sensor_data')
    return node.create_subscription(Image, 'image', callback, qos)


class NodeLogHandler(logging.Handler):
    """Forward Python logging records (the ROS-free layers' warnings) to a node's logger."""

    def __init__(self, node_logger):
        super().__init__(logging.INFO)
        self._logger = node_logger

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        if record.levelno >= logging.ERROR:
            self._logger.error(text)
        elif record.levelno >= logging.WARNING:
            self._logger.warning(text)
        else:
            self._logger.info(text)


@contextmanager
def package_logs_to(node_logger):
    """Send the 'clip_ros' Python loggers' records to `node_logger` inside the block."""
    handler, package = NodeLogHandler(node_logger), logging.getLogger('clip_ros')
    # Not also to Python's root logger: a library (open_clip) may have given it a handler, and
    # each warning would then print twice, once unformatted.
    propagate, package.propagate = package.propagate, False
    package.addHandler(handler)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.propagate = propagate


def spin_until_shutdown(executor, context) -> None:
    """
    Spin `executor` until `context` is shut down (SIGINT, SIGTERM or rclpy.shutdown).

    rclpy's signal thread first wakes the executors and then shuts the contexts down. A spin
    that wakes and goes back to waiting in between sleeps until its next event: forever for a
    node without timers, hence the wait is bounded by SPIN_WAKE_SEC. One that builds its wait
    set in between, or a callback that publishes while the shutdown lands, gets an RCLError
    ('the given context is not valid'), which then only means the context is gone; the same
    error with the context still valid is real and propagates.
    """
    try:
        while context.ok():
            executor.spin_once(timeout_sec=SPIN_WAKE_SEC)
    except ExternalShutdownException:
        pass
    except RCLError:
        if context.ok():
            raise


# README.md sections that describe a node's topics and parameters, where not its own name.
README_SECTIONS = {'sim_node': 'Simulation (MuJoCo, headless)'}


def help_requested(args) -> bool:
    """Tell whether -h or --help comes before any --ros-args in the command line `args`."""
    for arg in args:
        if arg == '--ros-args':
            return False
        if arg in ('-h', '--help'):
            return True
    return False


def node_usage(node_class) -> str:
    """Return the --help text of the node `node_class`: what it does and how to configure it."""
    module = sys.modules[node_class.__module__]
    spec = getattr(module, '__spec__', None)  # under `python -m` the module is __main__
    name = (spec.name if spec else module.__name__).rsplit('.', 1)[-1]
    summary = next((line.strip() for line in (module.__doc__ or '').splitlines()
                    if line.strip()), name)
    section = README_SECTIONS.get(name, name)
    return (f'usage: {name} [-h] [--ros-args (-p NAME:=VALUE | --params-file FILE) ...]\n\n'
            f'{summary}\n\n'
            f'A ROS 2 node: it runs until interrupted (Ctrl-C). Set a parameter with\n'
            f'  {name} --ros-args -p name:=value\n'
            f'or all of them from a file (it lists every parameter with its default):\n'
            f'  {name} --ros-args --params-file config/{name}.yaml\n'
            f'Its topics and parameters: README.md, section "{section}".\n')


def spin_node(node_class, args=None) -> None:
    """
    Create `node_class()`, spin it until interrupted, clean up; for a node's main().

    -h or --help before any --ros-args prints the node's usage instead, with neither rclpy nor
    a node started. The process is expected to exit afterwards: the heap is left frozen
    (gc.freeze). One executor thread is enough (inference runs on the node's own worker
    thread) and is faster: rclpy's MultiThreadedExecutor holds the GIL so much that a 2-core
    graph grounded at a third of the rate.
    """
    if help_requested(sys.argv[1:] if args is None else args):
        print(node_usage(node_class), end='')
        return
    starting = [True]

    def on_sigint(signum, frame):
        # rclpy's handler (which calls this one) shuts the context down and ends the spin; a
        # KeyboardInterrupt on top would land anywhere in rclpy (mid message conversion, or
        # cutting destroy_node short on the second SIGINT that launch forwards after Ctrl-C).
        if starting[0]:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)  # before rclpy.init, which chains to it
    context = None
    try:
        with rclpy.init(args=args) as init:
            context = init.context
            try:
                _spin_new_node(node_class, context, starting)
            except RCLError:
                if context.ok():
                    raise  # not a node cut short by a shutdown during start-up
    except KeyboardInterrupt:
        pass
    # Interpreter exit resets Python's handlers to the default action, which a late SIGINT kills.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if context is not None:
        context.destroy()
    # One collection frees what still holds the context (the node's objects form cycles), so
    # the DDS participant leaves the graph now; then freezing the heap spares interpreter exit
    # its repeated walks over torch and transformers: seconds on a busy CPU, past the 5 s that
    # launch waits after SIGINT before it sends SIGTERM.
    gc.collect()
    gc.freeze()


def _spin_new_node(node_class, context, starting: list) -> None:
    node = node_class()
    executor = SingleThreadedExecutor(context=context)
    try:
        executor.add_node(node)
        starting[0] = False
        spin_until_shutdown(executor, context)
    finally:
        starting[0] = False  # a KeyboardInterrupt must not cut the clean-up short
        node.destroy_node()
        executor.shutdown(timeout_sec=0.0)  # its guard conditions hold the context
