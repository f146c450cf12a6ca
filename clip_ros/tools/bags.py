"""
Read and write rosbag2 MCAP files without a ROS install (the mcap, mcap-ros2-support packages).

The writer follows what rosbag2's MCAP storage plugin writes, so `ros2 bag info/play` and
Foxglove open the files: profile 'ros2'; one 'ros2msg' schema per type named 'pkg/msg/Type'
with the full message definition (the type's fields, then each nested type after a
'=====...' line and 'MSG: pkg/Type', in rosbag2's order); 'cdr' channels whose metadata carries
'offered_qos_profiles' and 'topic_type_hash'; and a 'rosbag2' metadata record with the bag's
'serialized_metadata' (version 9). Definitions of the types clip_ros writes are bundled
(fields and constants only, comments dropped); messages are plain dicts, encoded by
mcap-ros2-support from those definitions.
"""
from dataclasses import dataclass
import os
from pathlib import Path
import re
import struct

from mcap.exceptions import McapError
from mcap.reader import make_reader
from mcap.records import Channel, Message, Schema
from mcap.stream_reader import StreamReader
from mcap.well_known import MessageEncoding, SchemaEncoding
from mcap.writer import CompressionType, Writer
from mcap_ros2._dynamic import serialize_dynamic
from mcap_ros2.decoder import DecoderFactory
import yaml

MCAP_MAGIC = b'\x89MCAP0\r\n'
METADATA_VERSION = 9  # rosbag2's BagMetadata version that this writer produces
_PRIMITIVES = {'bool', 'byte', 'char', 'float32', 'float64', 'int8', 'uint8', 'int16', 'uint16',
               'int32', 'uint32', 'int64', 'uint64', 'string', 'wstring'}
# A field's type: the first word of a line, before any array brackets.
_FIELD_TYPE = re.compile(r'(?:^|\n)\s*([a-zA-Z0-9_/]+)(?:\[[^\]]*\])?\s+')

# Fields and constants of each type (as in its .msg file, comments dropped).
DEFINITIONS = {
    'builtin_interfaces/msg/Time': 'int32 sec\nuint32 nanosec\n',
    'std_msgs/msg/Header': 'builtin_interfaces/Time stamp\nstring frame_id\n',
    'std_msgs/msg/String': 'string data\n',
    'sensor_msgs/msg/Image': (
        'std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\n'
        'uint8 is_bigendian\nuint32 step\nuint8[] data\n'),
    'sensor_msgs/msg/CompressedImage': 'std_msgs/Header header\nstring format\nuint8[] data\n',
    'sensor_msgs/msg/CameraInfo': (
        'std_msgs/Header header\nuint32 height\nuint32 width\nstring distortion_model\n'
        'float64[] d\nfloat64[9]  k\nfloat64[9]  r\nfloat64[12] p\nuint32 binning_x\n'
        'uint32 binning_y\nRegionOfInterest roi\n'),
    'sensor_msgs/msg/RegionOfInterest': (
        'uint32 x_offset\nuint32 y_offset\nuint32 height\nuint32 width\nbool do_rectify\n'),
    'geometry_msgs/msg/Point': 'float64 x\nfloat64 y\nfloat64 z\n',
    'geometry_msgs/msg/Quaternion': 'float64 x 0\nfloat64 y 0\nfloat64 z 0\nfloat64 w 1\n',
    'geometry_msgs/msg/Pose': 'Point position\nQuaternion orientation\n',
    'geometry_msgs/msg/PoseWithCovariance': 'Pose pose\nfloat64[36] covariance\n',
    'geometry_msgs/msg/Vector3': 'float64 x\nfloat64 y\nfloat64 z\n',
    'vision_msgs/msg/Point2D': 'float64 x\nfloat64 y\n',
    'vision_msgs/msg/Pose2D': 'vision_msgs/Point2D position\nfloat64 theta\n',
    'vision_msgs/msg/BoundingBox2D': (
        'vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n'),
    'vision_msgs/msg/BoundingBox3D': 'geometry_msgs/Pose center\ngeometry_msgs/Vector3 size\n',
    'vision_msgs/msg/ObjectHypothesis': 'string class_id\nfloat64 score\n',
    'vision_msgs/msg/ObjectHypothesisWithPose': (
        'ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n'),
    'vision_msgs/msg/Detection2D': (
        'std_msgs/Header header\nObjectHypothesisWithPose[] results\nBoundingBox2D bbox\n'
        'string id\n'),
    'vision_msgs/msg/Detection2DArray': 'std_msgs/Header header\nDetection2D[] detections\n',
    'vision_msgs/msg/Detection3D': (
        'std_msgs/Header header\nObjectHypothesisWithPose[] results\nBoundingBox3D bbox\n'
        'string id\n'),
    'vision_msgs/msg/Detection3DArray': 'std_msgs/Header header\nDetection3D[] detections\n',
    'vision_msgs/msg/VisionClass': 'uint16 class_id\nstring class_name\n',
    'vision_msgs/msg/LabelInfo': (
        'std_msgs/Header header\nvision_msgs/VisionClass[] class_map\nfloat32 threshold\n'),
}
# RIHS01 type hashes (rosidl's share/<package>/msg/<Type>.json) of the types clip_ros writes.
TYPE_HASHES = {
    'std_msgs/msg/String':
        'RIHS01_df668c740482bbd48fb39d76a70dfd4bd59db1288021743503259e948f6b1a18',
    'sensor_msgs/msg/Image':
        'RIHS01_d31d41a9a4c4bc8eae9be757b0beed306564f7526c88ea6a4588fb9582527d47',
    'sensor_msgs/msg/CompressedImage':
        'RIHS01_15640771531571185e2efc8a100baf923961a4d15d5569652e6cb6691e8e371a',
    'sensor_msgs/msg/CameraInfo':
        'RIHS01_b3dfd68ff46c9d56c80fd3bd4ed22c7a4ddce8c8348f2f59c299e73118e7e275',
    'vision_msgs/msg/Detection2DArray':
        'RIHS01_214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968',
    'vision_msgs/msg/Detection3DArray':
        'RIHS01_793f5eab9595ac1c0da07873cc859db42eae51f0ee76056db8562515d830e018',
    'vision_msgs/msg/LabelInfo':
        'RIHS01_3d37df4015cdf660cc851c51897f2acd957e1ca6205ba0a99aebffb9406b0783',
}
IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')


class BagError(ValueError):
    """A bag, topic or message type that cannot be used; the message says what was found."""


@dataclass(frozen=True)
class Qos:
    """The offered QoS recorded with a topic (rosbag2 replays it)."""

    depth: int = 10
    reliability: str = 'reliable'  # or 'best_effort'
    durability: str = 'volatile'   # or 'transient_local' (latched)

    def to_yaml(self) -> list:
        """Return the profile as rosbag2 serialises it (metadata version 9)."""
        zero = {'sec': 0, 'nsec': 0}  # the middleware's default
        return [{
            'history': 'keep_last', 'depth': self.depth, 'reliability': self.reliability,
            'durability': self.durability, 'deadline': dict(zero), 'lifespan': dict(zero),
            'liveliness': 'automatic', 'liveliness_lease_duration': dict(zero),
            'avoid_ros_namespace_conventions': False}]


RESULTS_QOS = Qos()
LATCHED_QOS = Qos(depth=1, durability='transient_local')
CAMERA_QOS = Qos(depth=2)


def normalise_type(name: str) -> str:
    """Return 'pkg/msg/Type' for 'pkg/Type' or 'pkg/msg/Type'."""
    parts = name.split('/')
    if len(parts) == 2:
        return f'{parts[0]}/msg/{parts[1]}'
    return name


def full_definition(type_name: str) -> str:
    """
    Return the concatenated definition of `type_name` as rosbag2 records it.

    The type's own text, then each nested type not yet written, depth first in sorted name
    order, after a line of 80 '=' and 'MSG: pkg/Type'.
    """
    seen = set()

    def text(name: str, depth: int) -> str:
        if depth > 50:
            raise ValueError(f'definition of {type_name} nests too deeply')
        key = normalise_type(name)
        if key not in DEFINITIONS:
            raise ValueError(f'no bundled definition of {key}; known: {", ".join(DEFINITIONS)}')
        own = DEFINITIONS[key]
        package = key.split('/')[0]
        out = own
        for dep in sorted(_dependencies(own, package)):
            if dep not in seen:
                seen.add(dep)
                out += '\n' + '=' * 80 + '\nMSG: ' + dep + '\n' + text(dep, depth + 1)
        return out

    return text(type_name, 0)


def _dependencies(definition: str, package: str) -> set:
    found = set()
    for match in _FIELD_TYPE.finditer(definition):
        name = match.group(1)
        if name in _PRIMITIVES:
            continue
        found.add(name if '/' in name else f'{package}/{name}')
    return found


@dataclass
class TopicInfo:
    """One topic of a bag."""

    name: str
    type_name: str        # 'pkg/msg/Type'
    count: int            # messages (0 when the file has no summary)
    schema_encoding: str  # 'ros2msg' for the ROS 2 types this module decodes
    message_encoding: str
    defined: bool = True  # the bag holds the type's definition (its schema is not empty)


@dataclass
class BagMessage:
    """One message read from a bag: decoded, and its CDR bytes with their schema and channel."""

    topic: str
    log_time: int      # ns
    publish_time: int  # ns
    decoded: object    # fields as attributes
    data: bytes
    schema: object     # mcap Schema record
    channel: object    # mcap Channel record


class BagReader:
    """
    Read one rosbag2 MCAP file (or the single .mcap file of a rosbag2 directory).

    Raises BagError when the path does not exist, is not MCAP or cannot be read.
    """

    def __init__(self, path):
        self.path = _mcap_file(Path(path))
        self._file = open(self.path, 'rb')
        self._decoders = DecoderFactory()
        try:
            self._reader = make_reader(self._file)
            self.topics = self._read_topics()
        except (McapError, OSError, ValueError, EOFError, struct.error) as e:
            self._file.close()
            raise BagError(f'{self.path}: cannot read the MCAP file: {type(e).__name__}: {e}')

    def _read_topics(self) -> dict:
        try:
            summary = self._reader.get_summary()
        except (McapError, OSError, ValueError, EOFError, struct.error):
            summary = None  # no footer: a recording that was cut short
        # Without a summary (or its statistics) the file is read linearly, in file order, up
        # to where it ends, as rosbag2 falls back to a scan.
        self.indexed = summary is not None and summary.statistics is not None
        self.start_time = None  # log time of the first message (ns)
        if not self.indexed:
            channels, schemas, counts = {}, {}, {}
            for schema, channel, message in self._scan():
                channels[channel.id], counts[channel.id] = channel, counts.get(channel.id, 0) + 1
                if schema is not None:
                    schemas[schema.id] = schema
                if self.start_time is None or message.log_time < self.start_time:
                    self.start_time = message.log_time
        else:
            channels, schemas = summary.channels, summary.schemas
            counts = dict(summary.statistics.channel_message_counts)
            self.start_time = summary.statistics.message_start_time
        topics = {}
        for channel in channels.values():
            schema = schemas.get(channel.schema_id)
            topics[channel.topic] = TopicInfo(
                channel.topic, normalise_type(schema.name) if schema else '(no schema)',
                int(counts.get(channel.id, 0)), schema.encoding if schema else '',
                channel.message_encoding, bool(schema and schema.data))
        return topics

    def _scan(self, topics=None):
        """Yield (schema, channel, message) in file order, up to where the file ends."""
        self._file.seek(0)
        schemas, channels = {}, {}
        try:
            for record in StreamReader(self._file).records:
                if isinstance(record, Schema):
                    schemas[record.id] = record
                elif isinstance(record, Channel):
                    channels[record.id] = record
                elif isinstance(record, Message) and record.channel_id in channels:
                    channel = channels[record.channel_id]
                    if topics is None or channel.topic in topics:
                        yield schemas.get(channel.schema_id), channel, record
        except (McapError, EOFError, struct.error):
            return  # a cut record: the recording ends here

    def describe(self) -> str:
        """Return 'topics in <file>: /a (pkg/msg/T, n messages), ...'."""
        if not self.topics:
            return f'{self.path} has no topics'
        listed = ', '.join(f'{t.name} ({t.type_name}, {t.count} messages)'
                           for t in sorted(self.topics.values(), key=lambda t: t.name))
        return f'topics in {self.path}: {listed}'

    def require(self, topic: str, types, role: str) -> str:
        """Return the type of `topic`; BagError when it is missing or not one of `types`."""
        info = self.topics.get(topic)
        if info is None:
            raise BagError(f'{role} topic {topic} is not in the bag; {self.describe()}')
        if info.type_name not in types:
            raise BagError(f'{role} topic {topic} has type {info.type_name}, not '
                           f'{" or ".join(types)}; {self.describe()}')
        if info.schema_encoding != SchemaEncoding.ROS2 or \
                info.message_encoding != MessageEncoding.CDR:
            raise BagError(f'{role} topic {topic} is stored as {info.message_encoding!r} with a '
                           f'{info.schema_encoding!r} schema; only cdr with ros2msg schemas '
                           'can be decoded')
        if not info.defined:
            raise BagError(f'{role} topic {topic} ({info.type_name}) has an empty schema: the '
                           'bag does not hold the message definition, so its messages cannot '
                           'be decoded; record it where the message package is installed')
        return info.type_name

    def messages(self, topics):
        """Yield a BagMessage per message of `topics`, in log-time order (file order unindexed)."""
        topics = set(topics)
        try:
            records = (self._reader.iter_messages(topics=list(topics), log_time_order=True)
                       if self.indexed else self._scan(topics))
            for schema, channel, message in records:
                decode = self._decoders.decoder_for(channel.message_encoding, schema)
                if decode is None:
                    raise BagError(f'{channel.topic}: no decoder for {channel.message_encoding!r} '
                                   f'messages with a {getattr(schema, "encoding", "")!r} schema')
                try:
                    decoded = decode(message.data)
                except Exception as e:  # noqa: B902 - any decoder error is the bag's
                    raise BagError(f'{channel.topic}: cannot decode the message logged at '
                                   f'{message.log_time} ns: {type(e).__name__}: {e}') from e
                yield BagMessage(channel.topic, message.log_time, message.publish_time,
                                 decoded, message.data, schema, channel)
        except (McapError, EOFError, struct.error) as e:
            raise BagError(f'{self.path}: cannot read a message: {type(e).__name__}: {e}')

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _mcap_file(path: Path) -> Path:
    if not path.exists():
        raise BagError(f'{path} does not exist')
    if path.is_dir():  # a rosbag2 directory: metadata.yaml and one .mcap file per split
        files = sorted(path.glob('*.mcap'))
        if len(files) != 1:
            raise BagError(f'{path} is a directory with {len(files)} .mcap files; give one '
                           f'file{": " + ", ".join(f.name for f in files) if files else ""}')
        path = files[0]
    with open(path, 'rb') as f:
        head = f.read(len(MCAP_MAGIC))
    if head != MCAP_MAGIC:
        kind = ' (a rosbag2 SQLite3 .db3 file)' if head.startswith(b'SQLite f') else ''
        raise BagError(f'{path} is not an MCAP file{kind}: it starts with {head!r}, not '
                       f'{MCAP_MAGIC!r}')
    return path


class BagWriter:
    """
    Write a rosbag2 MCAP file: `add_topic` once per topic, then `write` dict messages.

    Close it (or use it as a context manager) to write the summary and the rosbag2 metadata.
    """

    def __init__(self, path, compression: str = 'zstd', ros_distro: str | None = None):
        self.path = Path(path)
        self._file = open(self.path, 'wb')
        self._writer = Writer(self._file, compression=CompressionType[compression.upper()])
        self._writer.start(profile='ros2', library='clip_ros bags')
        self._schemas, self._channels, self._encoders = {}, {}, {}
        self._topics = {}  # topic -> [type, qos yaml, count]
        self._start = self._end = None
        self._ros_distro = os.environ.get('ROS_DISTRO', '') if ros_distro is None else ros_distro
        self._closed = False

    def add_topic(self, topic: str, type_name: str, qos: Qos = RESULTS_QOS) -> None:
        """Register `topic` with a bundled type (its schema is written once per type)."""
        type_name = normalise_type(type_name)
        if type_name not in self._schemas:
            text = full_definition(type_name)
            self._schemas[type_name] = self._writer.register_schema(
                type_name, SchemaEncoding.ROS2, text.encode())
            self._encoders[type_name] = serialize_dynamic(type_name, text)[type_name]
        self._add_channel(topic, type_name, self._schemas[type_name], qos.to_yaml(),
                          TYPE_HASHES.get(type_name, ''))

    def copy_topic(self, message: BagMessage) -> None:
        """Register the topic of a message read from another bag: same schema, QoS and hash."""
        schema, metadata = message.schema, message.channel.metadata
        name = normalise_type(schema.name)
        if name not in self._schemas:
            self._schemas[name] = self._writer.register_schema(
                schema.name, schema.encoding, schema.data)
        qos = metadata.get('offered_qos_profiles')
        qos = yaml.safe_load(qos) if qos else CAMERA_QOS.to_yaml()
        self._add_channel(message.topic, name, self._schemas[name], qos,
                          metadata.get('topic_type_hash', TYPE_HASHES.get(name, '')))

    def counts(self) -> dict:
        """Return {topic: messages written}."""
        return {topic: entry[2] for topic, entry in self._topics.items()}

    def _add_channel(self, topic, type_name, schema_id, qos: list, type_hash: str) -> None:
        if topic in self._channels:
            raise ValueError(f'topic {topic} is already in {self.path}')
        self._channels[topic] = self._writer.register_channel(
            topic, MessageEncoding.CDR, schema_id,
            {'offered_qos_profiles': yaml.safe_dump(qos, sort_keys=False),
             'topic_type_hash': type_hash})
        self._topics[topic] = [type_name, qos, 0, type_hash]

    def write(self, topic: str, message, log_time: int, publish_time: int | None = None) -> None:
        """Encode `message` (dict) as the topic's type and write it at `log_time` (ns)."""
        self.write_raw(topic, self._encoders[self._topics[topic][0]](message), log_time,
                       publish_time)

    def write_raw(self, topic: str, data: bytes, log_time: int,
                  publish_time: int | None = None) -> None:
        """Write CDR bytes on a registered topic."""
        entry = self._topics[topic]
        self._writer.add_message(
            self._channels[topic], int(log_time),
            data, int(log_time if publish_time is None else publish_time), entry[2])
        entry[2] += 1
        self._start = log_time if self._start is None else min(self._start, log_time)
        self._end = log_time if self._end is None else max(self._end, log_time)

    def bag_metadata(self) -> dict:
        """Return rosbag2's BagMetadata of what was written (as in its metadata.yaml)."""
        start = self._start or 0
        duration = (self._end or 0) - start
        count = sum(entry[2] for entry in self._topics.values())
        return {
            'version': METADATA_VERSION,
            'storage_identifier': 'mcap',
            'duration': {'nanoseconds': duration},
            'starting_time': {'nanoseconds_since_epoch': start},
            'message_count': count,
            'topics_with_message_count': [
                {'topic_metadata': {'name': topic, 'type': type_name,
                                    'serialization_format': MessageEncoding.CDR,
                                    'offered_qos_profiles': qos,
                                    'type_description_hash': type_hash},
                 'message_count': n}
                for topic, (type_name, qos, n, type_hash) in self._topics.items()],
            'compression_format': '',
            'compression_mode': '',
            'relative_file_paths': [self.path.name],
            'files': [{'path': self.path.name, 'starting_time': {'nanoseconds_since_epoch': start},
                       'duration': {'nanoseconds': duration}, 'message_count': count}],
            'custom_data': {},
            'ros_distro': self._ros_distro,
        }

    def close(self) -> None:
        """Write the rosbag2 metadata record and the summary, then close the file."""
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.add_metadata('rosbag2', {
                'serialized_metadata': yaml.safe_dump(self.bag_metadata(), sort_keys=False)})
            self._writer.finish()
        finally:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
