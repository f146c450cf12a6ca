"""
The demo graph's wiring, written once: simulator -> grounding_node -> vla_policy_node.

launch/demo_sim.launch.py, `demo` and `policy_demo` all remap the nodes' inputs to the
simulator's camera topics with SIM_TOPICS; `build_graph` creates the three nodes in one process.
"""
# The simulator's outputs that the grounding node (image) and the policy (all four) read.
SIM_TOPICS = {'image': 'camera/image_raw', 'depth': 'camera/depth/image_raw',
              'camera_info': 'camera/camera_info', 'camera_pose': 'sim/camera_pose'}
GROUNDING_INPUTS = ('image',)
POLICY_INPUTS = tuple(SIM_TOPICS)


def remappings(names) -> list:
    """Return [(input, simulator topic)] for `names` (launch files' remappings)."""
    return [(name, SIM_TOPICS[name]) for name in names]


def remap_args(names) -> list:
    """Return ROS arguments remapping `names` to the simulator's topics (nodes in-process)."""
    pairs = [('-r', f'{name}:={topic}') for name, topic in remappings(names)]
    return ['--ros-args'] + [a for pair in pairs for a in pair]


def model_parameters(model: str, device: str) -> dict:
    """Return the grounding node's model parameters for `model` ('tabletop' or 'tiny')."""
    return {'clip_arch': model, 'clip_pretrained': 'random', 'clipseg_model': model,
            'device': device}


def build_graph(context, sim: dict, model: str, device: str, policy: dict = None) -> list:
    """
    Create the simulator, grounding and policy nodes in `context`.

    Parameters
    ----------
    context
        the rclpy context the nodes join.
    sim
        sim_node parameters (seed, width, height, rate, ...).
    model, device
        the grounding models and their device.
    policy
        extra vla_policy_node parameters (policy, head_path, ...).

    """
    from rclpy.parameter import Parameter

    from clip_ros.nodes.grounding_node import GroundingNode
    from clip_ros.nodes.sim_node import SimNode
    from clip_ros.nodes.vla_policy_node import VlaPolicyNode

    def overrides(values: dict) -> list:
        return [Parameter(name, value=value) for name, value in values.items()]

    return [
        SimNode(context=context, parameter_overrides=overrides(sim)),
        GroundingNode(context=context, cli_args=remap_args(GROUNDING_INPUTS),
                      parameter_overrides=overrides(model_parameters(model, device))),
        VlaPolicyNode(context=context, cli_args=remap_args(POLICY_INPUTS),
                      parameter_overrides=overrides({'device': device, **(policy or {})})),
    ]
