"""
The demo graph's wiring, written once: simulator -> grounding_node -> vla_policy_node.

launch/demo_sim.launch.py, `demo` and `policy_demo` all remap the nodes' inputs to the
simulator's camera topics with SIM_TOPICS. `build_graph` creates the three nodes in one process;
`start_processes` runs each in a process of its own, as ros2 launch does.
"""
import functools
import multiprocessing
import os
import signal

# The simulator's outputs that the grounding node (image, depth, camera_info) and the policy
# (all four) read.
SIM_TOPICS = {'image': 'camera/image_raw', 'depth': 'camera/depth/image_raw',
              'camera_info': 'camera/camera_info', 'camera_pose': 'sim/camera_pose'}
GROUNDING_INPUTS = ('image', 'depth', 'camera_info')
# The policy needs depth, so the grounding takes it too: a partly hidden object or one between
# same-colour neighbours keeps to its own surface, and white objects on a washed-out table are
# found (perception.depth_surfaces, perception.table_depth). evaluate_policy grounds the same way.
WITH_DEPTH = {'publish_3d': True}
POLICY_INPUTS = tuple(SIM_TOPICS)


def remappings(names) -> list:
    """Return [(input, simulator topic)] for `names` (launch files' remappings)."""
    return [(name, SIM_TOPICS[name]) for name in names]


def remap_args(names) -> list:
    """Return ROS arguments remapping `names` to the simulator's topics (nodes in-process)."""
    pairs = [('-r', f'{name}:={topic}') for name, topic in remappings(names)]
    return ['--ros-args'] + [a for pair in pairs for a in pair]


# The grounding node's frames when it runs in a process of its own: between processes,
# best-effort DDS drops most 0.9 MB camera frames. In one process the default loses none.
OWN_PROCESS = {'image_qos': 'reliable'}


def model_parameters(model: str, device: str) -> dict:
    """Return the grounding node's model parameters for `model` ('tabletop' or 'tiny')."""
    return {'clip_arch': model, 'clip_pretrained': 'random', 'clipseg_model': model,
            'device': device}


def node_specs(sim: dict, model: str, device: str, policy: dict = None,
               grounding: dict = None) -> list:
    """
    Return (node class path, ROS arguments, parameters) of the simulator, grounding and policy.

    Parameters
    ----------
    sim
        sim_node parameters (seed, width, height, rate, ...).
    model, device
        the grounding models and their device.
    policy, grounding
        extra vla_policy_node and grounding_node parameters (policy, head_path; backend, ...).

    """
    return [
        ('clip_ros.nodes.sim_node:SimNode', [], dict(sim)),
        ('clip_ros.nodes.grounding_node:GroundingNode', remap_args(GROUNDING_INPUTS),
         {**model_parameters(model, device), **WITH_DEPTH, **(grounding or {})}),
        ('clip_ros.nodes.vla_policy_node:VlaPolicyNode', remap_args(POLICY_INPUTS),
         {'device': device, **(policy or {})}),
    ]


def _node_factory(path: str, ros_args: list, values: dict, **kwargs):
    """Return a callable that creates the node `path` ('module:Class') with its parameters."""
    import importlib

    from rclpy.parameter import Parameter
    module, name = path.split(':')
    overrides = [Parameter(key, value=value) for key, value in values.items()]
    return functools.partial(getattr(importlib.import_module(module), name), cli_args=ros_args,
                             parameter_overrides=overrides, **kwargs)


def build_graph(context, sim: dict, model: str, device: str, policy: dict = None,
                grounding: dict = None) -> list:
    """Create the simulator, grounding and policy nodes (node_specs) in `context`."""
    return [_node_factory(*spec, context=context)()
            for spec in node_specs(sim, model, device, policy, grounding)]


def _run_node(spec: tuple, parent: int) -> None:
    """Spin one node of node_specs until SIGINT or SIGTERM (a child process's target)."""
    import threading
    import time

    from clip_ros.nodes.common import spin_node

    def orphaned() -> None:
        # A parent killed outright stops nothing: interrupt this node as the parent would have.
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=orphaned, daemon=True).start()
    spin_node(_node_factory(*spec))


def start_processes(specs: list) -> list:
    """Start each node spec in a process of its own (spawned: no state shared with this one)."""
    spawn = multiprocessing.get_context('spawn')
    processes = [spawn.Process(target=_run_node, args=(spec, os.getpid()), daemon=True,
                               name=spec[0].rsplit(':', 1)[1]) for spec in specs]
    for process in processes:
        process.start()
    return processes


def stop_processes(processes: list, timeout: float = 10.0) -> None:
    """Interrupt the node processes as ros2 launch does (SIGINT), kill what outlives timeout."""
    for process in processes:
        if process.is_alive():
            os.kill(process.pid, signal.SIGINT)
    for process in processes:
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
