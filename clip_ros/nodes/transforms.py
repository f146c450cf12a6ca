"""tf2 for the nodes: an optional buffer, and base_from_camera transforms as Extrinsics."""
import numpy as np

from clip_ros.policy.lifting import Extrinsic, quat_to_matrix

# How far the latest transform's stamp may be from a frame's when tf has none at the frame's
# time (s): a joint_states period plus its delay, but not a stalled publisher.
LATEST_SLACK = 0.5


def make_tf_buffer(node, why: str):
    """
    Return the node's tf2 buffer listening on /tf, or None (warned) without tf2_ros.

    One buffer and listener per node, made on first use. `why` completes the warning: what
    the node does instead.
    """
    try:
        import tf2_ros
    except ImportError:
        node.get_logger().warning(f'tf2_ros is not installed; {why}')
        return None
    buffer = getattr(node, '_tf_buffer', None)
    if buffer is None:  # one per node: a listener per configure would add /tf subscriptions
        buffer = node._tf_buffer = tf2_ros.Buffer()
        node._tf_listener = tf2_ros.TransformListener(buffer, node)  # kept alive with the node
    return buffer


def lookup_extrinsic(buffer, target: str, source: str, stamp=None) -> Extrinsic:
    """
    Return target_from_source at `stamp` (a builtin_interfaces Time); ValueError when unknown.

    A moving camera (on an arm, on a base) is where it was when the frame was taken, so the
    transform at the frame's stamp is used; when tf has none for that time yet (the camera's
    frame newer than its latest transform) or any more (older than the buffer), the latest,
    if it is static or within LATEST_SLACK of the stamp: a stalled tf publisher would otherwise
    place a moving camera where it was seconds ago. Without a stamp (or a zero one) the latest.
    """
    import rclpy.time
    latest = rclpy.time.Time()
    stamped = stamp is not None and bool(stamp.sec or stamp.nanosec)
    try:
        try:
            t = buffer.lookup_transform(target, source, rclpy.time.Time.from_msg(stamp)
                                        if stamped else latest)
        except Exception:  # noqa: B902 - extrapolation (or other tf errors): try the latest
            if not stamped:
                raise
            t = buffer.lookup_transform(target, source, latest)
            gap = _seconds(stamp) - _seconds(t.header.stamp)
            if _seconds(t.header.stamp) > 0 and abs(gap) > LATEST_SLACK:  # 0: static chain
                raise LookupError(f'the latest transform is {abs(gap):.2f} s '
                                  f"{'older' if gap > 0 else 'newer'} than the frame "
                                  f'(more than {LATEST_SLACK:g} s)')
    except Exception as e:  # noqa: B902 - tf2 raises several unrelated types
        raise ValueError(f'no transform {target} <- {source}: {e}') from e
    q, v = t.transform.rotation, t.transform.translation
    return Extrinsic(quat_to_matrix((q.x, q.y, q.z, q.w)), np.array([v.x, v.y, v.z]))


def _seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9
