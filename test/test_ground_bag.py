"""record_sim_bag -> ground_bag: replay equals a direct pipeline run, the bag format, bad input."""
import io
import json
import os
from pathlib import Path
import subprocess
import sys

from ament_index_python.packages import get_package_share_directory
from mcap.reader import make_reader
import numpy as np
from PIL import Image
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.highlevel import AnyReader
from rosbags.typesys import get_typestore, Stores
from std_msgs.msg import Header, String
from vision_msgs.msg import Detection2DArray, Detection3DArray, LabelInfo
import yaml

from clip_ros.nodes.messages import detections_3d_msg, detections_msg, label_info_msg
from clip_ros.perception.grounding import GroundingPipeline
from clip_ros.perception.loading import load_or_tabletop
from clip_ros.perception.table_depth import DepthView
from clip_ros.perception.tracking import Tracker
from clip_ros.policy.command import MAX_PHRASES, parse_command
from clip_ros.policy.lifting import lift_mask
from clip_ros.tools import bag_messages, bags, ground_bag, record_sim_bag

ROOT = Path(__file__).resolve().parents[1]
FRAMES, SCENES, WIDTH, HEIGHT = 10, 2, 320, 240
COMPRESSED_FRAMES = 3
THRESHOLD = 0.4
NODE_DEPTH_RANGE = (0.05, 5.0)  # grounding_node's min_depth, max_depth
TOPICS = record_sim_bag.TOPICS
REPLAY = ['--command-topic', TOPICS['command'], '--device', 'cpu', '--quiet']
WITH_3D = ['--depth-topic', TOPICS['depth'], '--camera-info-topic', TOPICS['camera_info']]


@pytest.fixture(scope='module')
def recording(tmp_path_factory, gl_context):
    """Record the bag, and the same frames rendered again for the direct run."""
    path = tmp_path_factory.mktemp('bags') / 'sim.mcap'
    assert record_sim_bag.main([str(path), '--frames', str(FRAMES), '--scenes', str(SCENES),
                                '--width', str(WIDTH), '--height', str(HEIGHT),
                                '--compressed']) == 0
    frames = list(record_sim_bag.sim_frames(FRAMES, SCENES, 0, WIDTH, HEIGHT))
    return path, frames


@pytest.fixture(scope='module')
def pipeline():
    """Build the pipeline grounding_node builds with its default parameters (bundled model)."""
    clip, clipseg, note = load_or_tabletop(('tabletop', ''), 'tabletop', 'cpu')
    assert note == ''
    return GroundingPipeline(clip, clipseg, max_candidates=64)


def direct_run(pipeline, frames, decode=None, depth=False) -> list:
    """
    Ground each frame with the phrases of its scene's command, as grounding_node would.

    depth: the grounding sees each frame's depth too, as grounding_node's publish_3d.
    """
    pipeline.forget()  # start as a new node does: nothing remembered from other runs
    out, phrases, tracker = [], None, Tracker()
    for item in frames:
        if item.command is not None:
            phrases = parse_command(item.command).phrases
        rgb = item.frame.rgb if decode is None else decode(item.frame.rgb)
        view = DepthView(item.frame.depth, item.frame.K) if depth else None
        result = pipeline(rgb, phrases, THRESHOLD, with_heatmaps=False, depth=view)
        ids = tracker.update([d.phrase for d in result.detections],
                             [d.box for d in result.detections], item.stamp_ns * 1e-9,
                             result.label_image)
        out.append((item, result, ids))
    return out


def read_topic(path, topic) -> list:
    with bags.BagReader(path) as reader:
        return list(reader.messages([topic]))


def detection_fields(d) -> tuple:
    """Return a decoded Detection2D as (phrase, score, id, cx, cy, width, height)."""
    return (d.results[0].hypothesis.class_id, d.results[0].hypothesis.score, d.id,
            d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.size_x, d.bbox.size_y)


def ros_header(item) -> Header:
    header = Header(frame_id=record_sim_bag.FRAME_ID)
    header.stamp.sec, header.stamp.nanosec = divmod(item.stamp_ns, 1_000_000_000)
    return header


def round_trip(msg):
    """Return a ROS message as it arrives on a subscriber (float32 fields rounded)."""
    return deserialize_message(serialize_message(msg), type(msg))


@pytest.fixture(scope='module')
def replay(recording, tmp_path_factory):
    path, _ = recording
    out = tmp_path_factory.mktemp('replay')
    output, strip, summary = out / 'grounded.mcap', out / 'strip.png', out / 'summary.json'
    assert ground_bag.main([str(path), '-o', str(output), *REPLAY, *WITH_3D, '--debug-image',
                            '--copy-input', '--strip', str(strip), '--json', str(summary)]) == 0
    return output, strip, json.loads(summary.read_text())


def test_replay_equals_a_direct_run(recording, replay, pipeline):
    _, frames = recording
    output, _, _ = replay
    expected = direct_run(pipeline, frames, depth=True)  # the replay reads the depth topic
    messages = read_topic(output, '/grounding/detections')
    masks = read_topic(output, '/grounding/mask')
    assert len(messages) == len(masks) == FRAMES
    assert sum(len(result.detections) for _, result, _ in expected) > 0
    for (item, result, ids), message, mask in zip(expected, messages, masks):
        assert message.log_time == mask.log_time == item.stamp_ns
        got = message.decoded
        assert (got.header.stamp.sec, got.header.stamp.nanosec) == divmod(item.stamp_ns, 10**9)
        assert [detection_fields(d) for d in got.detections] == [
            (d.phrase, d.score, str(i), *d.center_size) for d, i in zip(result.detections, ids)]
        # The bytes are what grounding_node publishes for these detections.
        assert deserialize_message(message.data, Detection2DArray) == round_trip(
            detections_msg(result.detections, ros_header(item), ids))
        assert mask.decoded.encoding == 'mono16'
        np.testing.assert_array_equal(bag_messages.image_array(mask.decoded), result.label_image)


def test_replay_lifts_each_detection_as_grounding_node(recording, replay, pipeline):
    _, frames = recording
    output, _, summary = replay
    lifted = read_topic(output, '/grounding/detections_3d')
    assert len(lifted) == FRAMES
    for (item, result, ids), message in zip(direct_run(pipeline, frames, depth=True), lifted):
        assert message.log_time == item.stamp_ns
        items = []
        for detection, track_id in zip(result.detections, ids):
            target = lift_mask(item.frame.depth, result.label_image == detection.index + 1,
                               item.frame.K, depth_range=NODE_DEPTH_RANGE)
            items.append((track_id, detection.phrase, detection.score, target))
        got = message.decoded.detections
        assert [(d.id, d.results[0].hypothesis.class_id) for d in got] == [
            (str(i), phrase) for i, phrase, _, _ in items]
        assert [(d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.center.position.z,
                 d.bbox.size.x, d.bbox.size.y, d.bbox.size.z) for d in got] == [
            (*target.centre, *target.size) for _, _, _, target in items]
        # The bytes are what grounding_node's publish_3d sends (the depth image's frame).
        assert deserialize_message(message.data, Detection3DArray) == round_trip(
            detections_3d_msg(items, ros_header(item)))
    assert summary['lifted_frames'] == FRAMES and summary['not_lifted'] == 0


def test_compressed_depth_lifts_as_the_raw_depth(recording, replay, tmp_path):
    path, _ = recording
    output = tmp_path / 'compressed_depth.mcap'
    assert ground_bag.main([str(path), '-o', str(output), *REPLAY, '--depth-topic',
                            TOPICS['compressed_depth'], '--camera-info-topic',
                            TOPICS['camera_info'], '--strip-frames', '0']) == 0
    raw = read_topic(replay[0], '/grounding/detections_3d')
    packed = read_topic(output, '/grounding/detections_3d')
    assert len(packed) == len(raw) == FRAMES
    compared = 0
    for a, b in zip(raw, packed):
        assert [d.id for d in a.decoded.detections] == [d.id for d in b.decoded.detections]
        for da, db in zip(a.decoded.detections, b.decoded.detections):
            ca, cb = da.bbox.center.position, db.bbox.center.position
            # The PNG keeps inverse depth in 16 bits: well under a millimetre at 1 m.
            assert np.allclose([ca.x, ca.y, ca.z], [cb.x, cb.y, cb.z], atol=2e-3)
            compared += 1
    assert compared, 'the comparison needs detections to compare'


def test_compressed_replay_equals_a_direct_run_on_the_decoded_jpeg(recording, pipeline,
                                                                   tmp_path):
    path, frames = recording
    output = tmp_path / 'compressed.mcap'
    assert ground_bag.main([str(path), '-o', str(output), '--image-topic',
                            TOPICS['compressed'], '--max-frames', str(COMPRESSED_FRAMES),
                            '--strip-frames', '0', *REPLAY]) == 0

    def jpeg(rgb):
        data = bag_messages.compressed_image_msg(rgb, 'jpeg', bag_messages.header())['data']
        return np.array(Image.open(io.BytesIO(data)).convert('RGB'))

    expected = direct_run(pipeline, frames[:COMPRESSED_FRAMES], jpeg)
    messages = read_topic(output, '/grounding/detections')
    assert len(messages) == COMPRESSED_FRAMES
    for (_, result, ids), message in zip(expected, messages):
        assert [detection_fields(d) for d in message.decoded.detections] == [
            (d.phrase, d.score, str(i), *d.center_size) for d, i in zip(result.detections, ids)]
    assert not (tmp_path / 'compressed.png').exists()


def test_output_is_a_rosbag2_mcap(recording, replay):
    output, _, _ = replay
    copied = {TOPICS['image'], TOPICS['depth'], TOPICS['camera_info']}
    types = {'/grounding/detections': 'vision_msgs/msg/Detection2DArray',
             '/grounding/mask': 'sensor_msgs/msg/Image',
             '/grounding/label_info': 'vision_msgs/msg/LabelInfo',
             '/grounding/detections_3d': 'vision_msgs/msg/Detection3DArray',
             '/grounding/debug_image': 'sensor_msgs/msg/Image',
             TOPICS['image']: 'sensor_msgs/msg/Image', TOPICS['depth']: 'sensor_msgs/msg/Image',
             TOPICS['camera_info']: 'sensor_msgs/msg/CameraInfo'}
    with open(output, 'rb') as f:
        reader = make_reader(f)
        assert reader.get_header().profile == 'ros2'
        summary = reader.get_summary()
        metadata = {m.name: m.metadata for m in reader.iter_metadata()}
    channels = {c.topic: c for c in summary.channels.values()}
    assert set(channels) == set(types)
    counts = {c.topic: summary.statistics.channel_message_counts[c.id]
              for c in summary.channels.values()}
    assert counts == {**{topic: FRAMES for topic in types}, '/grounding/label_info': SCENES}
    for topic, channel in channels.items():
        schema = summary.schemas[channel.schema_id]
        assert (channel.message_encoding, schema.encoding, schema.name) == (
            'cdr', 'ros2msg', types[topic])
        if topic not in copied:
            assert schema.data.decode() == bags.full_definition(types[topic])
        qos = yaml.safe_load(channel.metadata['offered_qos_profiles'])
        assert qos[0]['reliability'] == 'reliable' and qos[0]['history'] == 'keep_last'
        assert channel.metadata['topic_type_hash'] == type_hash(types[topic])
    latched = yaml.safe_load(channels['/grounding/label_info'].metadata['offered_qos_profiles'])
    assert latched[0]['durability'] == 'transient_local'
    # What rosbag2's MCAP plugin reads back as the bag's metadata.
    info = yaml.safe_load(metadata['rosbag2']['serialized_metadata'])
    assert (info['version'], info['storage_identifier']) == (9, 'mcap')
    assert info['message_count'] == summary.statistics.message_count
    assert {t['topic_metadata']['name']: (t['topic_metadata']['type'], t['message_count'])
            for t in info['topics_with_message_count']} == {
        topic: (types[topic], counts[topic]) for topic in types}
    assert info['relative_file_paths'] == [output.name]


def test_another_reader_decodes_the_output(recording, replay):
    # rosbags has its own MCAP, rosbag2 metadata, message definition and CDR code: it reads
    # the types from the file's schemas alone.
    _, frames = recording
    output, _, _ = replay
    with AnyReader([output], default_typestore=get_typestore(Stores.EMPTY)) as reader:
        assert {c.topic: c.msgcount for c in reader.connections}['/grounding/detections'] == \
            FRAMES
        labels = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()
                  if c.topic == '/grounding/label_info']
        first = next(reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()
                     if c.topic == '/grounding/detections_3d')
    assert [[c.class_name for c in label.class_map] for label in labels] == [
        parse_command(f.command).phrases for f in frames if f.command]
    assert first.detections and first.detections[0].bbox.center.orientation.w == 1.0


def test_label_info_is_what_grounding_node_publishes(replay):
    output, _, _ = replay
    messages = read_topic(output, '/grounding/label_info')
    for message in messages:
        phrases = [c.class_name for c in message.decoded.class_map]
        header = Header(frame_id=message.decoded.header.frame_id)
        header.stamp.sec = message.decoded.header.stamp.sec
        header.stamp.nanosec = message.decoded.header.stamp.nanosec
        assert deserialize_message(message.data, LabelInfo) == round_trip(
            label_info_msg(phrases, THRESHOLD, header))


def test_summary_strip_and_copied_inputs(recording, replay):
    path, frames = recording
    output, strip, summary = replay
    assert summary['frames'] == summary['grounded'] == FRAMES
    rows = {row['phrase']: row for row in summary['rows']}
    assert rows['all frames']['frames'] == FRAMES
    assert sum(row['frames'] for name, row in rows.items() if name != 'all frames') == FRAMES
    assert [c['phrases'] for c in summary['commands']] == [
        parse_command(f.command).phrases for f in frames if f.command]
    with Image.open(strip) as image:
        assert image.size == (4 * WIDTH, HEIGHT)
    source = read_topic(path, TOPICS['image'])
    copied = read_topic(output, TOPICS['image'])
    assert [(m.log_time, m.data) for m in copied] == [(m.log_time, m.data) for m in source]


def test_sixteen_bit_depth_in_millimetres(gl_context, tmp_path):
    path = tmp_path / 'mm.mcap'
    assert record_sim_bag.main([str(path), '--frames', '2', '--scenes', '1', '--width', '160',
                                '--height', '120', '--depth-encoding', '16UC1']) == 0
    depth = read_topic(path, TOPICS['depth'])[0].decoded
    assert depth.encoding == '16UC1'
    item = next(record_sim_bag.sim_frames(1, 1, 0, 160, 120))
    np.testing.assert_array_equal(bag_messages.image_array(depth),
                                  np.round(item.frame.depth * 1000).astype(np.uint16))
    output, summary = tmp_path / 'mm_grounded.mcap', tmp_path / 'summary.json'
    assert ground_bag.main([str(path), '-o', str(output), *REPLAY, *WITH_3D,
                            '--json', str(summary)]) == 0
    report = json.loads(summary.read_text())
    assert report['lifted_frames'] == 2 and report['lifted'] > 0 and report['not_lifted'] == 0
    centre = read_topic(output, '/grounding/detections_3d')[0].decoded.detections[0].bbox.center
    assert 0.3 < centre.position.z < 3.0  # metres, not millimetres


def test_a_recording_cut_short_replays_up_to_the_cut(recording, tmp_path):
    # A recorder killed mid-write leaves no summary: the chunks before the cut still replay.
    path, _ = recording
    cut = tmp_path / 'cut.mcap'
    data = path.read_bytes()
    cut.write_bytes(data[:int(len(data) * 0.6)])
    output, summary = tmp_path / 'cut_grounded.mcap', tmp_path / 'summary.json'
    assert ground_bag.main([str(cut), '-o', str(output), *REPLAY, '--json', str(summary)]) == 0
    report = json.loads(summary.read_text())
    assert 1 <= report['grounded'] < FRAMES
    assert len(read_topic(output, '/grounding/detections')) == report['grounded']


def test_definitions_are_the_installed_messages():
    # The bundled definitions are the installed .msg files without comments; the type hashes
    # those of rosidl's generated type descriptions.
    for name, text in bags.DEFINITIONS.items():
        package, _, message = name.split('/')
        share = Path(get_package_share_directory(package)) / 'msg'
        lines = [line.split('#')[0].rstrip() for line in
                 (share / f'{message}.msg').read_text().splitlines()]
        assert text == ''.join(line + '\n' for line in lines if line), name
    for name in bags.TYPE_HASHES:
        assert bags.TYPE_HASHES[name] == type_hash(name)


def type_hash(name: str) -> str:
    package, _, message = name.split('/')
    path = Path(get_package_share_directory(package)) / 'msg' / f'{message}.json'
    return json.loads(path.read_text())['type_hashes'][0]['hash_string']


def test_full_definition_follows_rosbag2():
    text = bags.full_definition('vision_msgs/msg/Detection2DArray')
    separator = '\n' + '=' * 80 + '\nMSG: '
    names = [part.split('\n', 1)[0] for part in text.split(separator)[1:]]
    # Depth first, nested types in sorted order, each once.
    assert names == ['std_msgs/Header', 'builtin_interfaces/Time', 'vision_msgs/Detection2D',
                     'vision_msgs/BoundingBox2D', 'vision_msgs/Pose2D', 'vision_msgs/Point2D',
                     'vision_msgs/ObjectHypothesisWithPose', 'geometry_msgs/PoseWithCovariance',
                     'geometry_msgs/Pose', 'geometry_msgs/Point', 'geometry_msgs/Quaternion',
                     'vision_msgs/ObjectHypothesis']
    assert text.startswith(bags.DEFINITIONS['vision_msgs/msg/Detection2DArray'])


@pytest.fixture(scope='module')
def small_bag(tmp_path_factory):
    """Write a bag without the simulator: two frames on each camera topic and a command."""
    path = tmp_path_factory.mktemp('small') / 'small.mcap'
    rgb = np.zeros((24, 32, 3), np.uint8)
    with bags.BagWriter(path) as bag:
        for topic, type_name in ((TOPICS['image'], 'sensor_msgs/msg/Image'),
                                 (TOPICS['compressed'], 'sensor_msgs/msg/CompressedImage'),
                                 (TOPICS['camera_info'], 'sensor_msgs/msg/CameraInfo'),
                                 (TOPICS['command'], 'std_msgs/msg/String')):
            bag.add_topic(topic, type_name)
        bag.write(TOPICS['command'], bag_messages.string_msg('find the cup'), 1)
        for t in (10, 20):
            head = bag_messages.header_at(t)
            bag.write(TOPICS['image'], bag_messages.image_msg(rgb, 'rgb8', head), t)
            bag.write(TOPICS['compressed'], bag_messages.compressed_image_msg(rgb, 'png', head), t)
            bag.write(TOPICS['camera_info'], bag_messages.camera_info_msg(np.eye(3), 32, 24, head),
                      t)
    return path


def run_bad(capsys, *args) -> str:
    code = ground_bag.main([*args, '--device', 'cpu'])
    assert code == 2
    return capsys.readouterr().err


def test_missing_or_foreign_files_exit_2(tmp_path, capsys):
    assert 'does not exist' in run_bad(capsys, str(tmp_path / 'nope.mcap'), '--phrases', 'cup')
    text = tmp_path / 'notes.mcap'
    text.write_text('not a bag')
    err = run_bad(capsys, str(text), '--phrases', 'cup')
    assert 'is not an MCAP file' in err and "b'not a ba'" in err
    sqlite = tmp_path / 'old.db3'
    sqlite.write_bytes(b'SQLite format 3\x00' + bytes(100))
    assert 'SQLite3' in run_bad(capsys, str(sqlite), '--phrases', 'cup')


def test_wrong_topics_exit_2_naming_the_bag_topics(small_bag, tmp_path, capsys):
    path = small_bag
    out = ['-o', str(tmp_path / 'never.mcap')]
    err = run_bad(capsys, str(path), *out, '--phrases', 'cup', '--image-topic', '/camera/rgb')
    assert 'image topic /camera/rgb is not in the bag' in err
    assert f'{TOPICS["image"]} (sensor_msgs/msg/Image, 2 messages)' in err
    assert f'{TOPICS["command"]} (std_msgs/msg/String, 1 messages)' in err
    err = run_bad(capsys, str(path), *out, '--phrases', 'cup', '--image-topic',
                  TOPICS['camera_info'])
    assert ('image topic /camera/camera_info has type sensor_msgs/msg/CameraInfo, not '
            'sensor_msgs/msg/Image or sensor_msgs/msg/CompressedImage') in err
    err = run_bad(capsys, str(path), *out, '--command-topic', TOPICS['image'])
    assert 'command topic /camera/image_raw has type sensor_msgs/msg/Image' in err
    err = run_bad(capsys, str(path), *out, '--phrases', 'cup', '--depth-topic',
                  TOPICS['compressed'], '--camera-info-topic', TOPICS['camera_info'])
    assert ("depth topic /camera/image_raw/compressed carries 'png' CompressedImage, not "
            'compressedDepth') in err
    assert not (tmp_path / 'never.mcap').exists()


def test_a_depth_topic_given_as_the_image_topic_exits_2(tmp_path, capsys):
    path = tmp_path / 'depth.mcap'
    depth = np.full((24, 32), 800, np.uint16)
    with bags.BagWriter(path) as bag:
        bag.add_topic('/depth', 'sensor_msgs/msg/Image')
        bag.add_topic('/depth/compressedDepth', 'sensor_msgs/msg/CompressedImage')
        head = bag_messages.header_at(10)
        bag.write('/depth', bag_messages.image_msg(depth, '16UC1', head), 10)
        bag.write('/depth/compressedDepth',
                  bag_messages.compressed_depth_msg(depth, '16UC1', head), 10)
    out = ['-o', str(tmp_path / 'never.mcap'), '--phrases', 'cup']
    err = run_bad(capsys, str(path), *out, '--image-topic', '/depth')
    assert "image topic /depth carries '16UC1' images, not colour (rgb8, bgr8" in err
    assert 'give depth as --depth-topic' in err and '/depth (sensor_msgs/msg/Image' in err
    err = run_bad(capsys, str(path), *out, '--image-topic', '/depth/compressedDepth')
    assert "image topic /depth/compressedDepth carries depth ('16UC1; compressedDepth" in err
    assert not (tmp_path / 'never.mcap').exists()


def test_bad_arguments_exit_2(small_bag, capsys):
    path = small_bag
    for args in ([str(path)], [str(path), '--phrases', 'cup', '--depth-topic', '/d'],
                 [str(path), '--phrases', 'cup', '--threshold', '1.5']):
        with pytest.raises(SystemExit) as exit_info:
            ground_bag.main(args)
        assert exit_info.value.code == 2
    assert 'give --phrases, --command-topic or both' in capsys.readouterr().err


def test_the_bag_inside_a_rosbag2_folder_is_never_the_output(small_bag, tmp_path, capsys):
    folder = tmp_path / 'rosbag2_run'
    folder.mkdir()
    inside = folder / 'rosbag2_run_0.mcap'
    inside.write_bytes(small_bag.read_bytes())
    err = run_bad(capsys, str(folder), '-o', str(inside), '--phrases', 'cup')
    assert 'is the input bag' in err
    assert inside.read_bytes() == small_bag.read_bytes()  # untouched


def test_outputs_that_cannot_be_written_exit_2_before_any_work(small_bag, tmp_path, capsys):
    nowhere = tmp_path / 'missing' / 'x'
    out = ['-o', str(tmp_path / 'out.mcap')]
    for args, reason in ((['-o', f'{nowhere}.mcap'], 'does not exist or is not writable'),
                         ([*out, '--json', f'{nowhere}.json'], 'does not exist or is not'),
                         ([*out, '--strip', f'{nowhere}.png'], 'does not exist or is not'),
                         (['-o', str(tmp_path)], 'is a folder')):
        err = run_bad(capsys, str(small_bag), *args, '--phrases', 'cup', '--quiet')
        assert reason in err, err
    assert not (tmp_path / 'out.mcap').exists()
    for args in (['--threads', '-1'], ['--sync-tolerance', 'nan'], ['--depth-scale', 'inf']):
        with pytest.raises(SystemExit) as exit_info:
            ground_bag.main([str(small_bag), '--phrases', 'cup', *args])
        assert exit_info.value.code == 2


def test_too_many_phrases_are_refused_as_the_node_refuses_them(small_bag, tmp_path, capsys):
    many = [f'thing {k}' for k in range(MAX_PHRASES + 1)]
    with pytest.raises(SystemExit) as exit_info:
        ground_bag.main([str(small_bag), '--phrases', *many, '-o', str(tmp_path / 'a.mcap')])
    assert exit_info.value.code == 2
    assert f'at most {MAX_PHRASES}' in capsys.readouterr().err
    # A command naming too many keeps the phrases before it, as grounding_node does.
    path, report = tmp_path / 'many.mcap', tmp_path / 'many.json'
    with bags.BagWriter(path) as bag:
        bag.add_topic(TOPICS['image'], 'sensor_msgs/msg/Image')
        bag.add_topic(TOPICS['command'], 'std_msgs/msg/String')
        bag.write(TOPICS['command'], bag_messages.string_msg('find ' + ', '.join(many)), 1)
        bag.write(TOPICS['image'], bag_messages.image_msg(
            np.zeros((24, 32, 3), np.uint8), 'rgb8', bag_messages.header_at(10)), 10)
    ground_bag.main([str(path), '--phrases', 'red block', '--command-topic', TOPICS['command'],
                     '--device', 'cpu', '-o', str(tmp_path / 'b.mcap'), '--json', str(report)])
    summary = json.loads(report.read_text())
    assert summary['commands'][0]['phrases'] is None
    assert [(r['phrase'], r['frames']) for r in summary['rows']] == [
        ('red block', 1), ('all frames', 1)]
    assert f'at most {MAX_PHRASES} are grounded at once: keeping' in capsys.readouterr().err


def test_a_message_that_cannot_be_decoded_exits_2_naming_it(tmp_path, capsys):
    path = tmp_path / 'bad_command.mcap'
    with bags.BagWriter(path) as bag:
        bag.add_topic(TOPICS['image'], 'sensor_msgs/msg/Image')
        bag.add_topic(TOPICS['command'], 'std_msgs/msg/String')
        command = bytearray(serialize_message(String(data='find the cup')))
        command[8:12] = b'\xff\xfe\xfd\xfc'  # the text's first bytes: not UTF-8
        bag.write_raw(TOPICS['command'], bytes(command), 1)
        head = bag_messages.header_at(10)
        bag.write(TOPICS['image'], bag_messages.image_msg(np.zeros((24, 32, 3), np.uint8),
                                                          'rgb8', head), 10)
    err = run_bad(capsys, str(path), '--command-topic', TOPICS['command'], '-o',
                  str(tmp_path / 'out.mcap'), '--quiet')
    assert f'{TOPICS["command"]}: cannot decode the message logged at 1 ns' in err, err


def test_phrases_the_model_cannot_express_are_reported(small_bag, tmp_path, capsys):
    report = tmp_path / 'summary.json'
    code = ground_bag.main([str(small_bag), '--phrases', 'red blok', '--device', 'cpu',
                            '-o', str(tmp_path / 'out.mcap'), '--json', str(report)])
    out, err = capsys.readouterr()
    assert code == 1 and "'red blok' refused: unknown word: blok" in out
    assert 'no phrase could be grounded: unknown word: blok' in err
    assert json.loads(report.read_text())['refused'] == {'red blok': 'unknown word: blok'}


def test_unstamped_frames_are_tracked_on_the_bags_log_time(tmp_path):
    from clip_ros.sim.synthetic import scene_image
    rgb, objects = scene_image(0, 320, 240)
    path, out = tmp_path / 'unstamped.mcap', tmp_path / 'out.mcap'
    with bags.BagWriter(path) as bag:
        bag.add_topic(TOPICS['image'], 'sensor_msgs/msg/Image')
        for k in range(3):  # stamps 0; logged 2 s apart, longer than a track lives unseen
            bag.write(TOPICS['image'], bag_messages.image_msg(rgb, 'rgb8',
                                                              bag_messages.header_at(0)),
                      1 + k * 2_000_000_000)
    assert ground_bag.main([str(path), '--phrases', objects[0].name, '--device', 'cpu',
                            '-o', str(out), '--quiet']) == 0
    ids = [[d.id for d in m.decoded.detections]
           for m in read_topic(out, '/grounding/detections')]
    assert all(ids) and len({i for frame in ids for i in frame}) == sum(map(len, ids)), ids


def test_depth_slower_than_colour_serves_every_frame_near_it(tmp_path):
    # grounding_node takes the depth stamped nearest each frame within sync_tolerance, so one
    # depth image serves every frame near it; the replay must lift the same frames.
    from clip_ros.sim.synthetic import scene_image
    rgb, objects = scene_image(0, 160, 120)
    K = [[150.0, 0.0, 79.5], [0.0, 150.0, 59.5], [0.0, 0.0, 1.0]]
    path, out, report = tmp_path / 'rates.mcap', tmp_path / 'out.mcap', tmp_path / 's.json'
    with bags.BagWriter(path) as bag:
        for topic, kind in (('/image', 'Image'), ('/depth', 'Image'), ('/info', 'CameraInfo')):
            bag.add_topic(topic, f'sensor_msgs/msg/{kind}')
        for k in range(8):  # colour at 30 Hz; depth at 15 Hz, and none after frame 4
            t = 1_700_000_000_000_000_000 + k * 33_333_333
            head = bag_messages.header_at(t, 'camera')
            bag.write('/image', bag_messages.image_msg(rgb, 'rgb8', head), t)
            if k in (0, 2, 4):
                bag.write('/depth', bag_messages.image_msg(
                    np.full((120, 160), 0.6, np.float32), '32FC1', head), t)
                bag.write('/info', bag_messages.camera_info_msg(K, 160, 120, head), t)
    assert ground_bag.main([str(path), '--image-topic', '/image', '--phrases', objects[0].name,
                            '--depth-topic', '/depth', '--camera-info-topic', '/info',
                            '--device', 'cpu', '-o', str(out), '--json', str(report),
                            '--strip-frames', '0', '--quiet']) == 0
    summary = json.loads(report.read_text())
    # Frames 0-5 are within 50 ms of a depth image; 6 and 7 are 67 and 100 ms from the last.
    assert summary['lifted_frames'] == 6 and summary['without_depth'] == 2, summary
    lifted = read_topic(out, '/grounding/detections_3d')
    stamps = [m.log_time for m in read_topic(out, '/grounding/detections')]
    assert [m.log_time for m in lifted] == stamps[:6]
    assert all(m.decoded.detections for m in lifted)


def test_grounding_sees_the_depth_written_after_its_frame(gl_context, tmp_path):
    # Val light_intensity scene 100004: the white bowl is clipped white like the table, and
    # only depth finds it (perception.table_depth). The bag holds each depth after its frame,
    # as record_sim_bag writes them; the replay grounds the frame once its depth is read.
    from clip_ros.perception.geometry import box_iou
    from clip_ros.sim.conditions import condition_frames
    from clip_ros.sim.simulator import Simulator
    with Simulator(0, 640, 480, show_gripper=False) as sim:
        _, _, frame = next(condition_frames(sim, 'val', 'light_intensity', 1, 4, depth=True))
    truth = next(o.box for o in frame.objects if o.name == 'white bowl')
    path = tmp_path / 'bright.mcap'
    with bags.BagWriter(path) as bag:
        for topic, kind in (('/image', 'Image'), ('/depth', 'Image'), ('/info', 'CameraInfo')):
            bag.add_topic(topic, f'sensor_msgs/msg/{kind}')
        t = 1_700_000_000_000_000_000
        head = bag_messages.header_at(t, 'camera')
        bag.write('/image', bag_messages.image_msg(frame.rgb, 'rgb8', head), t)
        bag.write('/depth', bag_messages.image_msg(frame.depth, '32FC1', head), t)
        bag.write('/info', bag_messages.camera_info_msg(frame.K, 640, 480, head), t)
    found = {}
    with_depth = ['--depth-topic', '/depth', '--camera-info-topic', '/info']
    for name, extra in (('colour', []), ('depth', with_depth)):
        out = tmp_path / f'{name}.mcap'
        assert ground_bag.main([str(path), '--image-topic', '/image', '--phrases', 'white bowl',
                                '--device', 'cpu', '-o', str(out), '--strip-frames', '0',
                                '--quiet', *extra]) == 0
        found[name] = read_topic(out, '/grounding/detections')[0].decoded.detections
    assert not found['colour']
    assert len(found['depth']) == 1
    box = found['depth'][0].bbox
    x, y, w, h = box.center.position.x, box.center.position.y, box.size_x, box.size_y
    assert box_iou((x - w / 2, y - h / 2, x + w / 2, y + h / 2), truth)[0, 0] >= 0.8


def test_console_script_exit_status(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])))
    proc = subprocess.run([sys.executable, '-m', 'clip_ros.tools.ground_bag',
                           str(tmp_path / 'nope.mcap'), '--phrases', 'cup'],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f'ground_bag: error: {tmp_path / "nope.mcap"} does not exist')
