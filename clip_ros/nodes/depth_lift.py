"""
3D detections for every grounded object: depth + camera_info matched to the frame by stamp.

grounding_node owns one DepthLift when `publish_3d` is set. Depth and camera_info are kept
in stamp buffers; each grounded frame takes the nearest ones within `sync_tolerance`, lifts
every instance mask with the policy's lift_mask (policy/perceive.lift_instances) and publishes
`detections_3d` (same ids as the 2D detections) and `detection_markers`, in `target_frame`
through tf2 when it is installed and knows the transform, else in the depth image's frame.
Depth must be registered to the grounded image (same frame_id) and rectified: the intrinsics
are camera_info's P (policy/lifting.camera_intrinsics). The same depth also goes into the
grounding itself (view): on a washed-out table it finds what colour cannot
(perception.table_depth).
"""
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from clip_ros.nodes.common import describe, image_qos, RESULTS_QOS, transport_topic
from clip_ros.nodes.conversions import image_to_numpy
from clip_ros.nodes.messages import detections_3d_msg, object_markers
from clip_ros.nodes.overlay import phrase_colour
from clip_ros.nodes.transforms import lookup_extrinsic, make_tf_buffer
from clip_ros.perception.compressed import decode_depth
from clip_ros.perception.table_depth import DepthView
from clip_ros.policy.lifting import (
    camera_intrinsics, check_camera_size, check_frames, depth_to_metres)
from clip_ros.policy.perceive import lift_instances
from clip_ros.policy.sync import StampBuffer

DEPTH_TRANSPORTS = ('raw', 'compressedDepth')
MAX_DEPTH_SIZE = 16384  # pixels per side of a compressed depth frame (checked before decoding)
# How long a frame waits for depth and camera_info of its instant that have not come yet (s):
# drivers publish them after the colour frame, and a frame grounded before they come would be
# grounded without depth. A stream that never sent anything is not waited for.
DEPTH_WAIT = 0.1


def depth_parameters() -> tuple:
    """Return (name, default, descriptor) of the 3D output's parameters (read-only)."""
    ro = {'read_only': True}
    return (
        ('publish_3d', False, describe(
            'subscribe depth + camera_info and publish detections_3d and detection_markers',
            **ro)),
        ('target_frame', '', describe(
            "frame of detections_3d through tf2 ('' = the depth image's frame)", **ro)),
        ('depth_transport', 'raw', describe(
            "'raw' (Image on depth) or 'compressedDepth' (PNG on <depth>/compressedDepth)",
            **ro)),
        ('depth_qos', 'reliable', describe(
            "QoS of depth and camera_info: 'reliable' or 'sensor_data' (best effort, for "
            'drivers that publish best effort)', **ro)),
        ('depth_scale', 0.001, describe('metres per unit of 16UC1 depth',
                                        float_range=(1e-6, 1.0), **ro)),
        ('min_depth', 0.05, describe('nearest valid depth (m)', float_range=(0.0, 100.0), **ro)),
        ('max_depth', 5.0, describe('farthest valid depth (m)', float_range=(0.01, 1000.0),
                                    **ro)),
        ('sync_tolerance', 0.05, describe('largest stamp gap between a frame and its depth (s)',
                                          float_range=(0.0, 10.0), **ro)),
    )


def _seconds(header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def depth_metres(msg, depth_scale: float):
    """Return a depth Image or compressedDepth message as float32 metres [H, W]."""
    if isinstance(msg, CompressedImage):
        raw, encoding = decode_depth(msg.data, msg.format, MAX_DEPTH_SIZE)
    else:
        raw, encoding = image_to_numpy(msg), msg.encoding
    return depth_to_metres(raw, encoding, depth_scale)


class DepthLift:
    """The depth inputs and 3D outputs of a grounding node (see the module docstring)."""

    def __init__(self, node, values: dict):
        transport_topic(node, 'depth', values['depth_transport'], DEPTH_TRANSPORTS)
        image_qos(values['depth_qos'], 'depth_qos')  # an unknown one fails configure
        if not values['min_depth'] < values['max_depth']:
            raise ValueError(f"min_depth {values['min_depth']} must be below max_depth "
                             f"{values['max_depth']}")
        self.node, self.values = node, values
        self.depth = StampBuffer(values['sync_tolerance'])
        self._decoded = (None, None)  # (message, metres): decoded once for view and lift
        self.info = StampBuffer(values['sync_tolerance'])
        self.tf = make_tf_buffer(node, 'detections_3d stay in the depth image frame') \
            if values['target_frame'] else None
        self._warned_frame = False
        self._pubs = {}

    def create_outputs(self) -> None:
        """Create detections_3d and detection_markers (lifecycle publishers)."""
        self._pubs = {'detections_3d': self.node.output(Detection3DArray, 'detections_3d',
                                                        RESULTS_QOS),
                      'markers': self.node.output(MarkerArray, 'detection_markers',
                                                  RESULTS_QOS)}

    def subscribe(self) -> None:
        """Subscribe depth (raw or compressedDepth) and camera_info into the stamp buffers."""
        qos = image_qos(self.values['depth_qos'], 'depth_qos')
        transport = self.values['depth_transport']
        kind = Image if transport == 'raw' else CompressedImage
        topic = transport_topic(self.node, 'depth', transport, DEPTH_TRANSPORTS)
        self.node.subscribe(kind, topic, lambda m: self.depth.add(_seconds(m.header), m), qos)
        self.node.subscribe(CameraInfo, 'camera_info',
                            lambda m: self.info.add(_seconds(m.header), m), qos)

    def publish(self, header, result, ids) -> None:
        """Lift every detection of `result` (ids: the 2D ids); log why when it cannot."""
        try:
            items, out_header = self._lift(header, result, ids)
        except ValueError as e:
            self.node.reject('no_3d', f'no detections_3d for this frame: {e}')
            return
        self._pubs['detections_3d'].publish(detections_3d_msg(items, out_header))
        phrases = list(result.phrases)
        self._pubs['markers'].publish(object_markers(
            [(f'{phrase} {score:.2f}',
              tuple(c / 255 for c in phrase_colour(phrases.index(phrase))), target)
             for _, phrase, score, target in items], out_header, 'detections_3d'))

    def view(self, header, shape: tuple):
        """
        Return the frame's DepthView for the grounding, or None.

        None without depth or camera_info near the frame, or with depth that does not fit it:
        publish() then logs and counts the reason.
        """
        try:
            depth_msg, depth, K = self._matched(header, shape, DEPTH_WAIT)
        except ValueError:
            return None
        return DepthView(depth, K)

    def _matched(self, header, shape: tuple, wait: float = 0.0) -> tuple:
        """
        Return (depth message, depth metres, K) nearest the frame; ValueError says why not.

        Depth or camera_info not yet at the frame's stamp is waited for up to `wait` seconds.
        """
        stamp = _seconds(header)
        depth_msg, info = self.depth.wait_nearest(stamp, wait), self.info.wait_nearest(stamp, wait)
        if depth_msg is None or info is None:
            missing = [n for n, m in (('depth', depth_msg), ('camera_info', info)) if m is None]
            raise ValueError(f"no {' or '.join(missing)} within sync_tolerance "
                             f"({self.values['sync_tolerance']:g} s) of the frame")
        check_frames(header.frame_id, depth_msg.header.frame_id, info.header.frame_id)
        if self._decoded[0] is not depth_msg:
            self._decoded = (depth_msg, depth_metres(depth_msg, self.values['depth_scale']))
        depth = self._decoded[1]
        if depth.shape != tuple(shape):
            raise ValueError(f'depth {depth.shape[1]}x{depth.shape[0]} is not the frame size '
                             f'{shape[1]}x{shape[0]}')
        K, size = camera_intrinsics(info)
        check_camera_size(*size, depth)  # else every point is misplaced
        return depth_msg, depth, K

    def _lift(self, header, result, ids) -> tuple:
        depth_msg, depth, K = self._matched(header, result.label_image.shape)
        extrinsic, out_header = self._frame(depth_msg.header)
        lifted, reasons = lift_instances(result.label_image, len(result.detections), depth, K,
                                         extrinsic,
                                         (self.values['min_depth'], self.values['max_depth']))
        for d in result.detections:
            if d.index in reasons:  # published in 2D only: say why not in 3D
                self.node.reject('no_3d_detection', f'{d.phrase!r} (id {ids[d.index]}) has no '
                                 f'3D detection: {reasons[d.index]}')
        items = [(ids[d.index], d.phrase, d.score, lifted[d.index])
                 for d in result.detections if d.index in lifted]
        out_header.stamp = header.stamp
        return items, out_header

    def _frame(self, depth_header) -> tuple:
        """Return (extrinsic or None, header of the output frame)."""
        target = self.values['target_frame']
        if not target or target == depth_header.frame_id:
            return None, type(depth_header)(frame_id=depth_header.frame_id)
        if self.tf is not None:
            try:
                return (lookup_extrinsic(self.tf, target, depth_header.frame_id,
                                         depth_header.stamp),
                        type(depth_header)(frame_id=target))
            except ValueError as e:
                reason = str(e)
        else:
            reason = 'tf2_ros is not installed'
        if not self._warned_frame:
            self._warned_frame = True
            self.node.get_logger().warning(
                f'detections_3d in {depth_header.frame_id!r}, not target_frame {target!r}: '
                f'{reason}')
        return None, type(depth_header)(frame_id=depth_header.frame_id)
