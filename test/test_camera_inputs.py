"""
Camera inputs: JPEG/PNG and compressedDepth frames, and 3D detections from depth.

A 640x480 JPEG frame grounds like the raw frame (box IoU >= 0.95); corrupt, truncated,
mislabelled and oversized data are rejected with a logged reason and counted, and the next good
frame is still answered; vla_policy_node lifts from compressedDepth as from raw depth; with
publish_3d grounding_node lifts every detection near its true 3D centre, and its depth finds a
white object on a washed-out table that colour cannot.
"""
import io
import os

os.environ['ROS_DOMAIN_ID'] = '81'  # before rclpy: own domain, no cross-talk with other tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402, I100
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from vision_msgs.msg import Detection2DArray, Detection3DArray  # noqa: E402

from clip_ros.nodes import depth_lift  # noqa: E402
from clip_ros.nodes.conversions import numpy_to_image  # noqa: E402
from clip_ros.nodes.grounding_node import GroundingNode  # noqa: E402
from clip_ros.nodes.sim_messages import camera_info_msg  # noqa: E402
from clip_ros.nodes.vla_policy_node import VlaPolicyNode  # noqa: E402
from clip_ros.perception.compressed import (  # noqa: E402
    decode_colour, decode_depth, encode_colour, encode_depth)
from clip_ros.perception.geometry import box_iou  # noqa: E402
from clip_ros.perception.grounding import GroundingPipeline  # noqa: E402
from clip_ros.perception.loading import load_clip, load_clipseg  # noqa: E402
from clip_ros.policy.lifting import matrix_to_quat  # noqa: E402
from node_harness import arm_state, blue_block, Harness, wait_for  # noqa: E402, I100

DOMAIN = 81
SMALL = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)


def test_png_is_lossless_and_jpeg_close():
    assert np.array_equal(decode_colour(encode_colour(SMALL, 'png'), 'png', 4096), SMALL)
    smooth = np.repeat(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], 48, 0)
    smooth = np.repeat(smooth, 3, axis=2)
    jpeg = decode_colour(encode_colour(smooth, 'jpeg', 95), 'rgb8; jpeg compressed bgr8', 4096)
    assert jpeg.shape == smooth.shape and np.abs(jpeg.astype(int) - smooth).mean() < 2


def grey16_png() -> bytes:
    """Return a 16-bit grey PNG (a depth or IR frame sent as a 'colour' image)."""
    from PIL import Image
    out = io.BytesIO()
    Image.fromarray(np.arange(0, 40000, 10, dtype=np.uint16).reshape(40, 100)).save(out, 'PNG')
    return out.getvalue()


@pytest.mark.parametrize('data, fmt, reason', [
    (b'', 'jpeg', 'empty compressed data'),
    (b'not an image at all', 'jpeg', 'cannot be read'),
    (encode_colour(SMALL, 'jpeg')[:300], 'jpeg', 'Truncated File Read'),
    (encode_colour(SMALL, 'jpeg')[:-400], 'jpeg', 'corrupt or truncated'),
    (encode_colour(SMALL, 'png'), 'jpeg', 'the format says jpeg but the data is PNG'),
    (encode_colour(SMALL, 'jpeg'), 'theora', 'neither JPEG nor PNG'),
    (encode_depth(np.ones((4, 4), np.uint16), '16UC1'), '16UC1; compressedDepth png',
     'is a compressedDepth image'),
    (grey16_png(), 'png', r'png holds I;16 pixels \(16-bit or float grey\), not a colour'),
])
def test_bad_colour_data_says_why(data, fmt, reason):
    with pytest.raises(ValueError, match=reason):
        decode_colour(data, fmt, 4096)


def test_size_is_checked_before_decoding():
    with pytest.raises(ValueError, match='64x48 exceeds max_image_size 32'):
        decode_colour(encode_colour(SMALL, 'png'), 'png', 32)


def png_claiming(width: int, height: int) -> bytes:
    """Return a 1x1 PNG whose header claims `width` x `height` (a decompression bomb)."""
    import struct
    import zlib
    data = bytearray(encode_colour(np.zeros((1, 1, 3), np.uint8), 'png'))
    header = struct.pack('>II', width, height) + data[24:29]
    data[16:29] = header
    data[29:33] = struct.pack('>I', zlib.crc32(b'IHDR' + header))
    return bytes(data)


def test_a_header_past_the_decoders_own_limit_is_refused_as_too_large():
    # 20000x20000 is beyond PIL's decompression-bomb limit: it raised its own error before.
    for size in (5000, 20000):
        with pytest.raises(ValueError, match='exceeds max_image_size 4096'):
            decode_colour(png_claiming(size, size), 'png', 4096)
    depth = encode_depth(np.ones((1, 1), np.uint16), '16UC1')
    depth = depth[:12] + png_claiming(20000, 20000)  # the compressedDepth header, then the PNG
    with pytest.raises(ValueError, match='exceeds max_image_size'):
        decode_depth(depth, '16UC1; compressedDepth png', 4096)


def test_compressed_depth_round_trips():
    millimetres = (np.arange(48 * 64).reshape(48, 64) % 5000).astype(np.uint16)
    depth, encoding = decode_depth(encode_depth(millimetres, '16UC1'),
                                   '16UC1; compressedDepth png', 4096)
    assert encoding == '16UC1' and np.array_equal(depth, millimetres)
    depth, encoding = decode_depth(encode_depth(millimetres, '16UC1'),
                                   'mono16; compressedDepth png', 4096)
    assert encoding == '16UC1' and np.array_equal(depth, millimetres)
    metres = np.linspace(0.3, 4.0, 48 * 64, dtype=np.float32).reshape(48, 64)
    metres[0, 0] = np.nan
    depth, encoding = decode_depth(encode_depth(metres, '32FC1'), '32FC1; compressedDepth png',
                                   4096)
    assert encoding == '32FC1' and np.isnan(depth[0, 0])
    # Inverse-depth quantisation: the step is z^2 / a (a = 10100: 1.6 mm at 4 m).
    assert np.nanmax(np.abs(depth - metres) / metres ** 2) < 0.6 / 10100
    with pytest.raises(ValueError, match='not compressedDepth'):
        decode_depth(b'x' * 20, 'png', 4096)
    with pytest.raises(ValueError, match='RVL is not supported'):
        decode_depth(b'\x01' + b'\x00' * 19, '16UC1; compressedDepth rvl', 4096)
    # ROS 2 names RVL only in the format string; the header's format field is 0 as for PNG.
    with pytest.raises(ValueError, match='RVL is not supported'):
        decode_depth(b'\x00' * 20, '16UC1; compressedDepth rvl', 4096)


@pytest.fixture(scope='module')
def ros():
    harness = Harness(DOMAIN)
    yield harness
    harness.shutdown()


@pytest.fixture(scope='module')
def frame(gl_context):
    from clip_ros.sim.simulator import Simulator

    with Simulator(200_004, 640, 480) as sim:  # a test-split scene
        render = sim.render(depth=False, instances=False)
        return render.rgb, sim.object_names[0]


def compressed_msg(harness, data: bytes, fmt: str) -> CompressedImage:
    msg = CompressedImage(header=harness.header(), format=fmt)
    msg.data = data
    return msg


def test_jpeg_frame_grounds_like_the_raw_frame(ros, frame):
    rgb, name = frame
    node = ros.add(GroundingNode(
        context=ros.context, namespace='jpeg', cli_args=['--ros-args', '-r', 'image:=cam/raw'],
        parameter_overrides=[Parameter('clip_arch', value='tabletop'),
                             Parameter('clipseg_model', value='tabletop'),
                             Parameter('device', value='cpu'),
                             Parameter('image_transport', value='compressed'),
                             Parameter('max_image_size', value=1024),
                             Parameter('queries', value=[name])]))
    assert node.lifecycle_state == 'active', node.not_ready
    # The image_transport convention: the remapped base topic plus /compressed.
    pub = ros.publisher(CompressedImage, '/jpeg/cam/raw/compressed')
    results = ros.subscribe(Detection2DArray, '/jpeg/detections')
    assert wait_for(lambda: pub.get_subscription_count() > 0)
    jpeg = encode_colour(rgb, 'jpeg', 95)
    pub.publish(compressed_msg(ros, jpeg, 'rgb8; jpeg compressed bgr8'))
    answer = wait_for(lambda: results.messages, timeout=60)
    assert answer, 'no detections for the JPEG frame'
    pipeline = GroundingPipeline(load_clip('tabletop', device='cpu'),
                                 load_clipseg('tabletop', device='cpu'))
    expected = pipeline(rgb, [name], 0.4).detections
    got = answer[-1].detections
    assert expected and len(got) == len(expected)
    for want, have in zip(expected, got):
        c, s = have.bbox.center.position, (have.bbox.size_x, have.bbox.size_y)
        box = (c.x - s[0] / 2, c.y - s[1] / 2, c.x + s[0] / 2, c.y + s[1] / 2)
        assert box_iou(want.box, box)[0, 0] >= 0.95, (want.box, box)
    print(f'640x480 frame: raw {rgb.nbytes} bytes, JPEG q95 {len(jpeg)} bytes')

    # Bad data: each refused with its reason and counted; the next good frame is answered.
    bad = [(b'\xff\xd8garbage', 'jpeg'), (jpeg[:len(jpeg) // 3], 'jpeg'),
           (encode_colour(rgb, 'png'), 'jpeg'), (jpeg, 'webp'),
           (encode_colour(np.zeros((1100, 8, 3), np.uint8), 'png'), 'png')]
    before = node.rejected
    for data, fmt in bad:
        pub.publish(compressed_msg(ros, data, fmt))
        wait_for(lambda: False, timeout=0.3)  # the worker keeps only the newest frame
    assert wait_for(lambda: node.rejected - before == len(bad)), node.rejected - before
    count = len(results.messages)
    pub.publish(compressed_msg(ros, jpeg, 'jpeg'))
    assert wait_for(lambda: len(results.messages) > count, timeout=60)


def test_unknown_transport_fails_configure(ros):
    node = ros.add(GroundingNode(context=ros.context, namespace='bad_transport',
                                 parameter_overrides=[
                                     Parameter('clip_arch', value='tiny'),
                                     Parameter('clip_pretrained', value='random'),
                                     Parameter('clipseg_model', value='tiny'),
                                     Parameter('image_transport', value='theora')]))
    assert node.lifecycle_state == 'unconfigured'
    assert "transport 'theora' is not one of raw, compressed" in node.not_ready


@pytest.mark.parametrize('cameras', [[], ['cam_a', 'cam_b']], ids=['one', 'cameras'])
def test_unknown_image_qos_fails_configure_with_the_choices(ros, cameras):
    extra = [Parameter('cameras', value=cameras)] if cameras else []
    node = ros.add(GroundingNode(context=ros.context, namespace=f'bad_qos_{len(cameras)}',
                                 parameter_overrides=[
                                     Parameter('clip_arch', value='tiny'),
                                     Parameter('clip_pretrained', value='random'),
                                     Parameter('clipseg_model', value='tiny'),
                                     Parameter('image_qos', value='best_effort')] + extra))
    assert node.lifecycle_state == 'unconfigured'
    assert "image_qos 'best_effort' is not one of" in node.not_ready, node.not_ready


def test_policy_lifts_from_compressed_depth(ros):
    W, H = 80, 60
    K = np.array([[80.0, 0.0, 39.5], [0.0, 80.0, 29.5], [0.0, 0.0, 1.0]])
    extrinsic = [0.0, 0.0, 0.7] + matrix_to_quat(np.diag([1.0, -1.0, -1.0]))
    ros.add(VlaPolicyNode(context=ros.context, namespace='cdepth', parameter_overrides=[
        Parameter('depth_transport', value='compressedDepth'),
        Parameter('extrinsic', value=extrinsic), Parameter('acquire_timeout', value=30.0)]))
    pubs = {name: ros.publisher(kind, f'/cdepth/{name}') for kind, name in (
        (Detection2DArray, 'detections'), (Image, 'mask'), (CameraInfo, 'camera_info'),
        (CompressedImage, 'depth/compressedDepth'), (String, 'command'))}
    ee = ros.publisher(type(arm_state(ros.header())), '/cdepth/ee_state')
    targets = ros.subscribe(Detection3DArray, '/cdepth/targets_3d')
    assert wait_for(lambda: pubs['command'].get_subscription_count() > 0)
    pubs['command'].publish(String(data='pick up the blue block'))
    depth = encode_depth(np.full((H, W), 0.6, np.float32), '32FC1')

    def send():
        header = ros.header('camera_optical_frame')
        detections, mask = blue_block(header, W, H)
        ee.publish(arm_state(header))
        pubs['detections'].publish(detections)
        pubs['mask'].publish(mask)
        pubs['camera_info'].publish(camera_info_msg(K, W, H, header))
        msg = CompressedImage(header=header, format='32FC1; compressedDepth png')
        msg.data = depth
        pubs['depth/compressedDepth'].publish(msg)
        return bool(targets.messages)
    assert wait_for(send, timeout=20), 'no 3D target from compressedDepth'
    position = targets.messages[-1].detections[0].results[0].pose.pose.position
    assert (position.x, position.y, position.z) == pytest.approx((0.0, 0.0, 0.1), abs=0.01)


def send_with_depth(ros, pubs: dict, rgb, depth, K, size=(640, 480)):
    """Publish depth and camera_info, then the frame, all with one header; return it."""
    header = ros.header('camera')
    pubs['depth'].publish(numpy_to_image(depth, '32FC1', header))
    pubs['camera_info'].publish(camera_info_msg(K, *size, header))
    wait_for(lambda: False, timeout=0.5)  # depth and camera_info reach their buffers first
    pubs['image'].publish(numpy_to_image(rgb, 'rgb8', header))
    return header


def test_every_detection_is_lifted_to_3d(ros, gl_context):
    from clip_ros.sim.simulator import Simulator

    with Simulator(200_004, 640, 480) as sim:
        frame = sim.render(depth=True, instances=True)
    truth = {o.name: np.array(o.position_camera) for o in frame.objects if o.visible_pixels > 400}
    node = ros.add(GroundingNode(context=ros.context, namespace='lift3d', parameter_overrides=[
        Parameter('clip_arch', value='tabletop'), Parameter('clipseg_model', value='tabletop'),
        Parameter('device', value='cpu'), Parameter('queries', value=sorted(truth)),
        Parameter('publish_3d', value=True), Parameter('target_frame', value='world')]))
    assert node.lifecycle_state == 'active', node.not_ready
    pubs = {name: ros.publisher(kind, f'/lift3d/{name}') for kind, name in (
        (Image, 'image'), (Image, 'depth'), (CameraInfo, 'camera_info'))}
    flat = ros.subscribe(Detection2DArray, '/lift3d/detections')
    lifted = ros.subscribe(Detection3DArray, '/lift3d/detections_3d')
    assert wait_for(lambda: all(p.get_subscription_count() for p in pubs.values()))

    # A frame without depth: no 3D output, a counted and logged reason.
    before = node.rejected
    pubs['image'].publish(numpy_to_image(frame.rgb, 'rgb8', ros.header('camera')))
    assert wait_for(lambda: node.rejected > before, timeout=60)
    assert not lifted.messages

    header = send_with_depth(ros, pubs, frame.rgb, frame.depth, frame.K)
    msg = wait_for(lambda: lifted.find(lambda m: m.header.stamp == header.stamp), timeout=60)
    assert msg is not None and msg.detections
    # No tf2 here: the depth image's frame, with a one-time warning, never silently wrong.
    assert msg.header.frame_id == 'camera'
    two_d = flat.find(lambda m: m.header.stamp == header.stamp)
    assert {d.id for d in msg.detections} <= {d.id for d in two_d.detections}
    best = {}
    for d in msg.detections:
        hypothesis = d.results[0].hypothesis
        if hypothesis.score > best.get(hypothesis.class_id, (0, None))[0]:
            best[hypothesis.class_id] = (hypothesis.score, d)
    assert len(best) >= len(truth) - 1, (sorted(best), sorted(truth))
    for name, (_, d) in best.items():
        p = d.results[0].pose.pose.position
        # The box centre of the visible points: within a few cm of the object's true centre.
        assert np.linalg.norm(np.array([p.x, p.y, p.z]) - truth[name]) < 0.04, name
        assert 0.01 < d.bbox.size.x < 0.3 and 0.01 < d.bbox.size.z < 0.3

    def send(depth, size=(640, 480)):
        return send_with_depth(ros, pubs, frame.rgb, depth, frame.K, size)
    # Intrinsics of another resolution: no 3D output for the frame, a counted reason.
    before = node.rejected
    header = send(frame.depth, (1280, 960))
    assert wait_for(lambda: flat.find(lambda m: m.header.stamp == header.stamp), timeout=60)
    assert wait_for(lambda: node.rejected > before)
    assert lifted.find(lambda m: m.header.stamp == header.stamp) is None
    # No valid depth under the objects: each 2D detection's missing 3D one is counted.
    before = node.rejected
    header = send(np.full_like(frame.depth, np.nan))
    msg = wait_for(lambda: lifted.find(lambda m: m.header.stamp == header.stamp), timeout=60)
    two_d = flat.find(lambda m: m.header.stamp == header.stamp)
    assert msg is not None and not msg.detections and two_d.detections
    assert node.rejected - before >= len(two_d.detections)


def test_depth_finds_a_white_bowl_on_a_washed_out_table(ros, gl_context, monkeypatch):
    # Val light_intensity scene 100004: the white bowl's pixels are clipped white like the table.
    from clip_ros.sim.conditions import condition_frames
    from clip_ros.sim.simulator import Simulator

    with Simulator(0, 640, 480, show_gripper=False) as sim:
        _, _, frame = next(condition_frames(sim, 'val', 'light_intensity', 1, 4, depth=True))
    truth = next(o.box for o in frame.objects if o.name == 'white bowl')
    node = ros.add(GroundingNode(context=ros.context, namespace='bright', parameter_overrides=[
        Parameter('clip_arch', value='tabletop'), Parameter('clipseg_model', value='tabletop'),
        Parameter('device', value='cpu'), Parameter('queries', value=['white bowl']),
        Parameter('publish_3d', value=True)]))
    assert node.lifecycle_state == 'active', node.not_ready
    pubs = {name: ros.publisher(kind, f'/bright/{name}') for kind, name in (
        (Image, 'image'), (Image, 'depth'), (CameraInfo, 'camera_info'))}
    flat = ros.subscribe(Detection2DArray, '/bright/detections')
    assert wait_for(lambda: all(p.get_subscription_count() for p in pubs.values()))

    header = ros.header('camera')  # no depth for this frame: colour alone finds nothing
    pubs['image'].publish(numpy_to_image(frame.rgb, 'rgb8', header))
    msg = wait_for(lambda: flat.find(lambda m: m.header.stamp == header.stamp), timeout=60)
    assert msg is not None and not msg.detections

    header = send_with_depth(ros, pubs, frame.rgb, frame.depth, frame.K)
    msg = wait_for(lambda: flat.find(lambda m: m.header.stamp == header.stamp), timeout=60)
    assert msg is not None and len(msg.detections) == 1
    box = msg.detections[0].bbox
    found = (box.center.position.x - box.size_x / 2, box.center.position.y - box.size_y / 2,
             box.center.position.x + box.size_x / 2, box.center.position.y + box.size_y / 2)
    assert box_iou(found, truth)[0, 0] >= 0.8

    # A driver sends depth and camera_info after the frame: the frame waits for them (here as
    # long as it takes, so a loaded machine cannot turn this into a race) and is grounded with
    # them, not by colour alone.
    monkeypatch.setattr(depth_lift, 'DEPTH_WAIT', 600.0)
    header = ros.header('camera')
    pubs['image'].publish(numpy_to_image(frame.rgb, 'rgb8', header))
    wait_for(lambda: False, timeout=0.5)
    pubs['depth'].publish(numpy_to_image(frame.depth, '32FC1', header))
    pubs['camera_info'].publish(camera_info_msg(frame.K, 640, 480, header))
    msg = wait_for(lambda: flat.find(lambda m: m.header.stamp == header.stamp), timeout=60)
    assert msg is not None and len(msg.detections) == 1


def test_onnxruntime_backend_answers_like_torch(ros, tmp_path):
    tiny = [Parameter('clip_arch', value='tiny'), Parameter('clip_pretrained', value='random'),
            Parameter('clipseg_model', value='tiny'), Parameter('device', value='cpu'),
            Parameter('queries', value=['red block']), Parameter('thresholds', value=[0.5]),
            Parameter('cache_dir', value=str(tmp_path))]
    answers = {}
    for backend in ('torch', 'onnxruntime'):
        node = ros.add(GroundingNode(context=ros.context, namespace=f'b_{backend}',
                                     parameter_overrides=tiny + [
                                         Parameter('backend', value=backend)]))
        assert node.lifecycle_state == 'active', node.not_ready
        pub = ros.publisher(Image, f'/b_{backend}/image')
        results = ros.subscribe(Detection2DArray, f'/b_{backend}/detections')
        assert wait_for(lambda: pub.get_subscription_count() > 0)
        pub.publish(numpy_to_image(SMALL, 'rgb8', ros.header('camera')))
        answers[backend] = wait_for(lambda: results.messages, timeout=60)[-1].detections
    assert (tmp_path / 'onnx').is_dir()  # the graphs went under cache_dir
    torch_boxes = [(d.bbox.center.position.x, d.bbox.size_x) for d in answers['torch']]
    onnx_boxes = [(d.bbox.center.position.x, d.bbox.size_x) for d in answers['onnxruntime']]
    assert torch_boxes and onnx_boxes == pytest.approx(torch_boxes, abs=1e-3)
    # A run-time parameter change rebuilds the pipeline around the open graph sessions.
    sessions = node._pipeline.clip.sessions, node._pipeline.runner
    assert node.set_parameters([Parameter('min_area', value=9)])[0].successful
    assert node._pipeline.min_area == 9 and node._pipeline.backend == 'onnxruntime'
    assert (node._pipeline.clip.sessions, node._pipeline.runner) == sessions
    pub.publish(numpy_to_image(SMALL, 'rgb8', ros.header('camera')))
    count = len(results.messages)
    assert wait_for(lambda: len(results.messages) > count, timeout=60)
    bad = ros.add(GroundingNode(context=ros.context, namespace='b_bad',
                                parameter_overrides=tiny + [Parameter('backend', value='tvm')]))
    assert bad.lifecycle_state == 'unconfigured'
    assert "unknown backend 'tvm'; valid backends: torch, onnxruntime, openvino, triton" in \
        bad.not_ready
