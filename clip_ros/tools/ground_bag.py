r"""
Ground phrases in a camera topic of a rosbag2 MCAP file and write the results to a new one.

  ground_bag IN.mcap --image-topic /camera/image_raw --command-topic /command \
      --depth-topic /camera/depth/image_raw --camera-info-topic /camera/camera_info

Runs what grounding_node runs on each frame (the same model loading, GroundingPipeline and
track ids) on a sensor_msgs/Image or CompressedImage (jpeg/png) topic. The phrases are
--phrases, replaced from its log time on by each std_msgs/String command of --command-topic
(parse_command, as grounding_node). Per grounded frame the output holds, stamped and logged
as the frame, under --prefix: detections (vision_msgs/Detection2DArray), mask (mono16
instance mask: detection index + 1), label_info (vision_msgs/LabelInfo, when the phrases
change) and, with depth (32FC1 or 16UC1) and camera_info, detections_3d
(vision_msgs/Detection3DArray: each detection's mask lifted in the depth image's frame, as
grounding_node's publish_3d; with depth a frame is grounded once its depth is matched, and the
grounding sees it as the node's does). Prints a summary table and writes a PNG strip of a few
overlaid frames. Needs no ROS install.

Exit status: 0 done, 1 no frame could be grounded or a model failed, 2 bad input (a bag that
does not exist or is not MCAP, a topic not in the bag, a topic of the wrong type).
"""
import argparse
import json
import math
from pathlib import Path
import sys
import time

import numpy as np

from clip_ros.nodes.overlay import draw_overlay
from clip_ros.perception.grounding import (
    clean_phrases, DEFAULT_DISTRACTORS, frame_only, GroundingPipeline)
from clip_ros.perception.loading import load_or_tabletop, ModelLoadError
from clip_ros.perception.pixels import TO_RGB
from clip_ros.perception.table_depth import DepthView
from clip_ros.perception.tracking import Tracker
from clip_ros.policy.command import MAX_PHRASES, parse_command, quote
from clip_ros.policy.lifting import (
    camera_intrinsics, check_camera_size, check_frames, DEPTH_ENCODINGS, depth_to_metres)
from clip_ros.policy.perceive import lift_instances
from clip_ros.policy.sync import StampBuffer
from clip_ros.tools import bag_messages as msgs
from clip_ros.tools.bags import BagError, BagReader, BagWriter, IMAGE_TYPES, LATCHED_QOS
from clip_ros.tools.cli import count, number, unwritable_file

STRING_TYPE = 'std_msgs/msg/String'
DEPTH_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')  # compressedDepth
CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
WARM_UP_SIZE = 224  # as grounding_node
# Seconds of newer frames after which a frame stops waiting for a nearer depth image.
DEPTH_WAIT_SEC = 1.0


class Summary:
    """Counts and timings of one replay, per phrase and over all frames."""

    def __init__(self):
        self.frames = self.grounded = self.without_phrases = self.rejected = 0
        self.reject_reason = ''
        self.ms = []
        self.per_phrase = {}  # phrase -> {'frames', 'detected', 'scores', 'ms'}
        self.any_detected, self.best_scores = 0, []
        self.lifted_frames = self.lifted = self.not_lifted = self.without_depth = 0
        self.lift_reason = ''
        self.lift_ms = []
        self.commands = []
        self.refused = {}  # phrase -> why the model's words cannot ground it

    def add(self, phrases: list, detections: list, ms: float, refused: dict = None) -> None:
        """Count one grounded frame (refused: the pipeline's reasons per phrase)."""
        self.grounded += 1
        for phrase, reason in (refused or {}).items():
            if not frame_only(reason):  # "not found" is per frame, in the table
                self.refused.setdefault(phrase, reason)
        self.ms.append(ms)
        for phrase in phrases:
            row = self.per_phrase.setdefault(
                phrase, {'frames': 0, 'detected': 0, 'scores': [], 'ms': []})
            row['frames'] += 1
            row['ms'].append(ms)
            scores = [d.score for d in detections if d.phrase == phrase]
            if scores:
                row['detected'] += 1
                row['scores'].append(max(scores))
        if detections:
            self.any_detected += 1
            self.best_scores.append(max(d.score for d in detections))

    def rows(self) -> list:
        """Return one dict per phrase, then 'all frames'."""
        def row(name, frames, detected, scores, ms):
            p50, p99 = np.percentile(ms, [50, 99]) if ms else (float('nan'),) * 2
            return {'phrase': name, 'frames': frames, 'with_detection': detected,
                    'mean_score': float(np.mean(scores)) if scores else float('nan'),
                    'ms_p50': float(p50), 'ms_p99': float(p99)}

        rows = [row(p, r['frames'], r['detected'], r['scores'], r['ms'])
                for p, r in self.per_phrase.items()]
        return rows + [row('all frames', self.grounded, self.any_detected, self.best_scores,
                           self.ms)]

    def table(self) -> str:
        """Return the rows as a Markdown table."""
        lines = ['| phrase | frames | frames with a detection | mean score | ms p50 | ms p99 |',
                 '|---|---|---|---|---|---|']
        for r in self.rows():
            share = f" ({100 * r['with_detection'] / r['frames']:.0f}%)" if r['frames'] else ''
            lines.append(f"| {r['phrase']} | {r['frames']} | {r['with_detection']}{share} | "
                         f"{r['mean_score']:.2f} | {r['ms_p50']:.1f} | {r['ms_p99']:.1f} |")
        return '\n'.join(lines)

    def to_dict(self) -> dict:
        """Return everything for --json."""
        return {'frames': self.frames, 'grounded': self.grounded,
                'without_phrases': self.without_phrases, 'rejected': self.rejected,
                'reject_reason': self.reject_reason, 'rows': self.rows(),
                'lifted_frames': self.lifted_frames, 'without_depth': self.without_depth,
                'lifted': self.lifted,
                'not_lifted': self.not_lifted, 'lift_reason': self.lift_reason,
                'lift_ms_p50': float(np.median(self.lift_ms)) if self.lift_ms else None,
                'commands': self.commands, 'refused': self.refused}


class BagGrounder:
    """grounding_node's per-frame work on the messages of a bag, written to another bag."""

    def __init__(self, args, pipeline: GroundingPipeline, image_type: str, writer: BagWriter):
        self.args, self.pipeline, self.image_type, self.out = args, pipeline, image_type, writer
        self.phrases = clean_phrases(args.phrases or [])
        self.tracker = Tracker()
        self.summary = Summary()
        self.strip = {}  # image index -> overlay
        self.picks = set()
        self._label_phrases = None
        self.with_3d = bool(args.depth_topic)
        # Each frame takes the depth stamped nearest it within sync_tolerance, as grounding_node
        # does: one depth image serves every frame it is nearest to (depth slower than colour).
        # A frame waits until a depth stamped past its tolerance (or DEPTH_WAIT_SEC of newer
        # frames) shows that no nearer one is coming. The intrinsics are the latest camera_info
        # (often published once, or after its frame), and frames wait for the first one.
        self.depth = StampBuffer(args.sync_tolerance) if self.with_3d else None
        self._pending = []  # (stamp, item) of frames whose nearest depth may still come
        self._newest = {'image': -math.inf, 'depth': -math.inf}  # stamps (s)
        self.camera_info, self._waiting = None, []
        self._decoded = (None, None)  # (depth message, metres)
        self.topics = {name: f'{args.prefix.rstrip("/")}/{name}' for name in
                       ('detections', 'mask', 'label_info', 'detections_3d', 'debug_image')}
        writer.add_topic(self.topics['detections'], 'vision_msgs/msg/Detection2DArray')
        writer.add_topic(self.topics['mask'], 'sensor_msgs/msg/Image')
        writer.add_topic(self.topics['label_info'], 'vision_msgs/msg/LabelInfo', LATCHED_QOS)
        if self.with_3d:
            writer.add_topic(self.topics['detections_3d'], 'vision_msgs/msg/Detection3DArray')
        if args.debug_image:
            writer.add_topic(self.topics['debug_image'], 'sensor_msgs/msg/Image')
        self._copied = set()
        self.start_time = 0  # ns, the bag's first log time: command times are relative to it

    def handle(self, message) -> None:
        """Process one input message."""
        if self.args.copy_input and message.topic != self.args.command_topic:
            if message.topic not in self._copied:
                self._copied.add(message.topic)
                self.out.copy_topic(message)
            self.out.write_raw(message.topic, message.data, message.log_time,
                               message.publish_time)
        if message.topic == self.args.image_topic:
            self.on_image(message)
        elif message.topic == self.args.command_topic:
            self.on_command(message)
        elif message.topic == self.args.depth_topic:
            self._match_depth(message)
        elif message.topic == self.args.camera_info_topic:
            self.camera_info = message.decoded
            waiting, self._waiting = self._waiting, []
            for item, depth in waiting:
                self._write_3d(item, depth)

    def finish(self) -> None:
        """Count the frames that never got depth, or never camera_info, as not lifted."""
        if self.with_3d:
            self._resolve(final=True)
        for (_, result, _, _), _ in self._waiting:
            self.summary.not_lifted += len(result.detections)
            self.summary.lift_reason = self.summary.lift_reason or (
                f'no camera_info on {self.args.camera_info_topic}')
        self._waiting = []
        if self.with_3d:
            self.summary.without_depth = self.summary.grounded - self.summary.lifted_frames

    def on_command(self, message) -> None:
        """Replace the phrases with those of a command, as grounding_node's command topic."""
        text = message.decoded.data
        seconds = (message.log_time - self.start_time) * 1e-9
        if not text.strip():
            self.summary.commands.append({'time': seconds, 'text': text, 'phrases': None})
            return
        phrases = parse_command(text).phrases
        if len(phrases) > MAX_PHRASES:  # refused as grounding_node refuses it
            self.summary.commands.append({'time': seconds, 'text': text, 'phrases': None})
            if not self.args.quiet:
                print(f'command names {len(phrases)} things; at most {MAX_PHRASES} are grounded '
                      f'at once: keeping {self.phrases}', file=sys.stderr)
            return
        self.summary.commands.append({'time': seconds, 'text': text, 'phrases': phrases})
        if phrases:
            self.phrases = phrases
        elif not self.args.quiet:
            print(f'command {quote(text)} names nothing to ground; keeping {self.phrases}',
                  file=sys.stderr)

    def on_image(self, message) -> None:
        """Ground one frame and write its results."""
        index = self.summary.frames
        self.summary.frames += 1
        phrases = self.phrases
        if not phrases and index not in self.picks:
            self.summary.without_phrases += 1
            return
        started = time.perf_counter()
        try:
            rgb = msgs.image_rgb(message.decoded, self.image_type)
        except ValueError as e:
            self.summary.rejected += 1
            self.summary.reject_reason = self.summary.reject_reason or str(e)
            return
        if not phrases:
            self.summary.without_phrases += 1
            self.strip[index] = np.array(rgb)
            return
        head = msgs.copy_header(message.decoded.header)
        # Unstamped frames: the bag's log time, so tracks do not depend on this machine's speed.
        stamp = msgs.stamp_seconds(head) or message.log_time * 1e-9
        # Decoding counts in the frame's time; waiting for its depth does not.
        frame = (message, head, rgb, phrases, index, stamp, time.perf_counter() - started)
        if not self.with_3d:
            self._ground(frame)
            return
        # Grounded once its depth is matched: grounding sees the depth, as grounding_node's
        # publish_3d does (perception.table_depth), whether the bag holds it before or after.
        self._newest['image'] = max(self._newest['image'], stamp)
        self._pending.append((stamp, frame))
        self._resolve()

    def _ground(self, frame, depth=None) -> tuple:
        """Ground one frame (with its DepthView or None) and write its 2D results."""
        message, head, rgb, phrases, index, stamp, decoding = frame
        started = time.perf_counter() - decoding
        result = self.pipeline(rgb, phrases, self.args.threshold, with_heatmaps=False,
                               depth=depth)
        ids = self.tracker.update([d.phrase for d in result.detections],
                                  [d.box for d in result.detections], stamp, result.label_image)
        self.summary.add(phrases, result.detections, (time.perf_counter() - started) * 1e3,
                         result.rejected)
        self._write_2d(message, head, rgb, result, ids)
        if index in self.picks:
            self.strip[index] = draw_overlay(rgb, result.detections, result.label_image,
                                             result.phrases)
        return (head, result, ids, message.log_time)

    def _write_2d(self, message, head: dict, rgb: np.ndarray, result, ids: list) -> None:
        t, out = message.log_time, self.out
        if result.phrases != self._label_phrases:
            self._label_phrases = list(result.phrases)
            out.write(self.topics['label_info'],
                      msgs.label_info_msg(result.phrases, self.args.threshold, head), t)
        out.write(self.topics['detections'], msgs.detections_msg(result.detections, head, ids), t)
        out.write(self.topics['mask'], msgs.image_msg(result.label_image, 'mono16', head), t)
        if self.args.debug_image:
            overlay = draw_overlay(rgb, result.detections, result.label_image, result.phrases)
            out.write(self.topics['debug_image'], msgs.image_msg(overlay, 'rgb8', head), t)

    def _match_depth(self, message) -> None:
        stamp = msgs.stamp_seconds(msgs.copy_header(message.decoded.header))
        stamp = stamp or message.log_time * 1e-9  # unstamped: the bag's log time
        self._newest['depth'] = max(self._newest['depth'], stamp)
        self.depth.add(stamp, message.decoded)
        self._resolve()

    def _resolve(self, final: bool = False) -> None:
        """Ground and lift the frames whose nearest depth is known (all of them when `final`)."""
        tolerance, waiting = self.args.sync_tolerance, []
        for stamp, frame in self._pending:
            if not (final or self._newest['depth'] > stamp + tolerance or
                    self._newest['image'] > stamp + DEPTH_WAIT_SEC):
                waiting.append((stamp, frame))
                continue
            depth = self.depth.nearest(stamp)
            item = self._ground(frame, self._depth_view(depth, frame[1], frame[2].shape[:2]))
            if depth is None:
                continue  # no depth within sync_tolerance: counted as without depth
            if self.camera_info is None:
                self._waiting.append((item, depth))
            else:
                self._write_3d(item, depth)
        self._pending = waiting

    def _depth_view(self, depth_msg, head: dict, shape: tuple):
        """Return the DepthView grounding sees, or None (_write_3d says why not)."""
        if depth_msg is None or self.camera_info is None:
            return None
        try:
            return DepthView(*self._metric_depth(depth_msg, head, shape))
        except ValueError:
            return None

    def _metric_depth(self, depth_msg, head: dict, shape: tuple) -> tuple:
        """Return (depth metres, K) for a frame of `shape`; ValueError says why not."""
        if self._decoded[0] is not depth_msg:  # one decode for grounding and lifting
            self._decoded = (depth_msg, depth_to_metres(*msgs.depth_array(depth_msg),
                                                        self.args.depth_scale))
        depth = self._decoded[1]
        if depth.shape != tuple(shape):
            raise ValueError(f'depth {depth.shape[1]}x{depth.shape[0]} is not the frame '
                             f'size {shape[1]}x{shape[0]}')
        check_frames(head['frame_id'], depth_msg.header.frame_id,
                     self.camera_info.header.frame_id)
        K, size = camera_intrinsics(self.camera_info)  # P, binning and ROI, as the node
        check_camera_size(*size, depth)
        return depth, K

    def _write_3d(self, item, depth_msg) -> None:
        """Lift every detection as grounding_node's publish_3d does, in the depth image frame."""
        head, result, ids, log_time = item
        started = time.perf_counter()
        summary = self.summary
        try:
            depth, K = self._metric_depth(depth_msg, head, result.label_image.shape)
            lifted, reasons = lift_instances(
                result.label_image, len(result.detections), depth, K, None,
                (self.args.min_depth, self.args.max_depth))
        except ValueError as e:
            summary.not_lifted += len(result.detections)
            summary.lift_reason = summary.lift_reason or str(e)
            return
        items = [(d, ids[d.index], lifted[d.index]) for d in result.detections
                 if d.index in lifted]
        summary.lifted += len(items)
        summary.not_lifted += len(reasons)
        summary.lift_reason = summary.lift_reason or next(iter(reasons.values()), '')
        summary.lifted_frames += 1
        summary.lift_ms.append((time.perf_counter() - started) * 1e3)
        out_head = msgs.header(head['stamp']['sec'], head['stamp']['nanosec'],
                               depth_msg.header.frame_id)
        self.out.write(self.topics['detections_3d'], msgs.detections_3d_msg(items, out_head),
                       log_time)


def check_inputs(reader: BagReader, args) -> str:
    """Check the topics and types against the bag; return the image type, else BagError."""
    image_type = reader.require(args.image_topic, IMAGE_TYPES, 'image')
    first = getattr(next(iter(reader.messages([args.image_topic])), None), 'decoded', None)
    # A depth topic given as the image topic: say so now, not one refused frame after another.
    if first is not None and image_type.endswith('CompressedImage') and \
            'compresseddepth' in first.format.lower():
        raise BagError(f'image topic {args.image_topic} carries depth ({first.format!r}), not '
                       f'colour: give it as --depth-topic; {reader.describe()}')
    if first is not None and image_type.endswith('/Image') and first.encoding not in TO_RGB:
        hint = ': give depth as --depth-topic' if first.encoding in DEPTH_ENCODINGS else ''
        raise BagError(f'image topic {args.image_topic} carries {first.encoding!r} images, '
                       f'not colour ({", ".join(TO_RGB)}){hint}; {reader.describe()}')
    if args.command_topic:
        reader.require(args.command_topic, (STRING_TYPE,), 'command')
    if args.depth_topic:
        if reader.require(args.depth_topic, DEPTH_TYPES, 'depth').endswith('CompressedImage'):
            first = next(iter(reader.messages([args.depth_topic])), None)
            fmt = getattr(getattr(first, 'decoded', None), 'format', '')
            if first is not None and 'compressedDepth' not in fmt:
                raise BagError(f'depth topic {args.depth_topic} carries {fmt!r} '
                               "CompressedImage, not compressedDepth (e.g. '32FC1; "
                               f"compressedDepth png'); {reader.describe()}")
        reader.require(args.camera_info_topic, (CAMERA_INFO_TYPE,), 'camera_info')
    return image_type


def output_path(args, reader) -> Path:
    """
    Return --output, or IN_grounded.mcap next to the input, checked before any work.

    BagError when it is the MCAP file the reader opened (also inside a rosbag2 folder: writing
    would empty the bag being read), a folder, or when it, --json or --strip cannot be written.
    """
    source = Path(args.bag)
    path = Path(args.output) if args.output else source.with_name(
        f'{source.stem}_grounded.mcap')
    if path.exists() and path.resolve() in (source.resolve(), Path(reader.path).resolve()):
        raise BagError(f'the output {path} is the input bag; give another --output')
    for option, target in (('--output', path), ('--json', args.json),
                           ('--strip', args.strip)):
        reason = unwritable_file(option, target) if target else ''
        if reason:
            raise BagError(reason)
    return path


def write_strip(images: list, path: Path) -> None:
    """Write overlays side by side as one PNG."""
    from PIL import Image

    height = max(image.shape[0] for image in images)
    strip = Image.new('RGB', (sum(image.shape[1] for image in images), height))
    x = 0
    for image in images:
        strip.paste(Image.fromarray(image), (x, 0))
        x += image.shape[1]
    strip.save(path)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(prog='ground_bag', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('bag', help='rosbag2 MCAP file (or a rosbag2 directory with one)')
    parser.add_argument('-o', '--output', default='',
                        help='MCAP file to write (default: IN_grounded.mcap next to IN)')
    parser.add_argument('--image-topic', default='/camera/image_raw',
                        help='sensor_msgs/Image or CompressedImage (jpeg/png) topic')
    parser.add_argument('--phrases', nargs='+', default=[],
                        help='phrases to ground (until a command replaces them)')
    parser.add_argument('--command-topic', default='',
                        help='std_msgs/String command topic; each command sets the phrases')
    parser.add_argument('--depth-topic', default='',
                        help='depth image topic (32FC1 metres or 16UC1, raw or compressedDepth '
                             'png): adds detections_3d')
    parser.add_argument('--camera-info-topic', default='',
                        help='sensor_msgs/CameraInfo topic of the depth image')
    parser.add_argument('--depth-scale', type=number(0.0, low_open=True), default=0.001,
                        help='metres per 16UC1 depth unit')
    parser.add_argument('--min-depth', type=number(0.0), default=0.05,
                        help='nearest valid depth (m)')
    parser.add_argument('--max-depth', type=number(0.0, low_open=True), default=5.0,
                        help='farthest valid depth (m)')
    parser.add_argument('--sync-tolerance', type=number(0.0), default=0.05,
                        help='largest stamp difference (s) between a frame and its depth')
    parser.add_argument('--clip-arch', default='tabletop',
                        help="open_clip architecture, 'tiny', or 'tabletop' (bundled)")
    parser.add_argument('--clip-pretrained', default='',
                        help="pretrained tag or weights file; '' or 'random' for random init")
    parser.add_argument('--clipseg', default='tabletop',
                        help="CLIPSeg hub id or local directory, 'tiny' or 'tabletop'")
    parser.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument('--dtype', default='auto',
                        help="'auto', 'float32', 'float16' or 'bfloat16'")
    parser.add_argument('--cache-dir', default='', help="model cache root; '' for the default")
    parser.add_argument('--threshold', type=number(0.0, 1.0), default=0.4,
                        help='CLIPSeg probability threshold in [0, 1]')
    parser.add_argument('--min-area', type=count(1), default=64, help='smallest instance (pixels)')
    parser.add_argument('--max-detections', type=count(1), default=20,
                        help='most detections per frame')
    parser.add_argument('--prefix', default='/grounding', help='namespace of the output topics')
    parser.add_argument('--debug-image', action='store_true',
                        help='also write the overlay image (debug_image) per frame')
    parser.add_argument('--copy-input', action='store_true',
                        help='also copy the image, depth and camera_info topics to the output')
    parser.add_argument('--max-frames', type=count(0), default=0,
                        help='stop after this many image messages (0: all)')
    parser.add_argument('--strip', default='',
                        help='PNG strip of overlaid frames (default: OUT with .png)')
    parser.add_argument('--strip-frames', type=count(0), default=4,
                        help='frames in the strip, evenly spaced (0: no strip)')
    parser.add_argument('--json', default='', help='also write the summary to this JSON file')
    parser.add_argument('--threads', type=count(0), default=0, help='torch threads (0: default)')
    parser.add_argument('--quiet', action='store_true', help='print only the summary')
    return parser


def check_arguments(parser, args) -> None:
    """Reject inconsistent arguments (argparse's exit status 2)."""
    if not args.phrases and not args.command_topic:
        parser.error('give --phrases, --command-topic or both')
    if len(clean_phrases(args.phrases)) > MAX_PHRASES:
        parser.error(f'--phrases names {len(clean_phrases(args.phrases))} phrases; at most '
                     f'{MAX_PHRASES} are grounded at once (as grounding_node)')
    if bool(args.depth_topic) != bool(args.camera_info_topic):
        parser.error('--depth-topic and --camera-info-topic go together')
    if args.min_depth >= args.max_depth:
        parser.error(f'--min-depth {args.min_depth:g} must be below --max-depth '
                     f'{args.max_depth:g}')


def load_pipeline(args) -> GroundingPipeline:
    """Load the models as grounding_node does and build its pipeline."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    clip, clipseg, note = load_or_tabletop((args.clip_arch, args.clip_pretrained), args.clipseg,
                                           args.device, args.dtype, args.cache_dir or None)
    if note:
        print(f'ground_bag: {note}', file=sys.stderr)
    if not args.quiet:
        print(f'loaded {clip.name} and {clipseg.name} on {clip.device} ({clip.dtype})')
    pipeline = GroundingPipeline(clip, clipseg, DEFAULT_DISTRACTORS, args.min_area,
                                 args.max_detections, True,
                                 max_candidates=max(64, args.max_detections))
    # Warm both models up (grounding_node runs the first of these), so the first frame's
    # time is not lazy initialisation's.
    blank = np.zeros((WARM_UP_SIZE, WARM_UP_SIZE, 3), np.uint8)
    pipeline(blank, ['an object'], args.threshold)
    pipeline.clip_probabilities(blank, ['an object'], [0], [(0, 0, WARM_UP_SIZE, WARM_UP_SIZE)])
    return pipeline


def run(args) -> int:
    """Replay the bag; return the exit status."""
    with BagReader(args.bag) as reader:
        image_type = check_inputs(reader, args)
        path = output_path(args, reader)
        try:
            pipeline = load_pipeline(args)
        except (ModelLoadError, ValueError) as e:
            print(f'ground_bag: error: {e}', file=sys.stderr)
            return 1
        topics = [t for t in (args.image_topic, args.command_topic, args.depth_topic,
                              args.camera_info_topic) if t]
        total = reader.topics[args.image_topic].count
        if args.max_frames:
            total = min(total, args.max_frames) if total else args.max_frames
        with BagWriter(path) as writer:
            grounder = BagGrounder(args, pipeline, image_type, writer)
            grounder.start_time = reader.start_time or 0
            if total and args.strip_frames:
                picks = np.linspace(0, total - 1, min(args.strip_frames, total))
                grounder.picks = set(picks.round().astype(int).tolist())
            for message in reader.messages(topics):
                if message.topic == args.image_topic and args.max_frames and \
                        grounder.summary.frames >= args.max_frames:
                    break
                grounder.handle(message)
            grounder.finish()
            counts = writer.counts()
    summary = grounder.summary
    report(args, image_type, path, summary, counts)
    if grounder.strip:
        strip_path = Path(args.strip) if args.strip else path.with_suffix('.png')
        write_strip([grounder.strip[i] for i in sorted(grounder.strip)], strip_path)
        print(f'strip of {len(grounder.strip)} frames: {strip_path}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'bag': str(args.bag), 'output': str(path), 'image_topic': args.image_topic,
                       'image_type': image_type, **summary.to_dict()}, f, indent=2)
    asked = set(summary.per_phrase)
    if asked and asked <= set(summary.refused):
        print(f'ground_bag: no phrase could be grounded: '
              f'{"; ".join(summary.refused.values())}', file=sys.stderr)
        return 1
    if summary.grounded == 0:
        reason = summary.reject_reason or ('no phrases: give --phrases or a --command-topic '
                                           'with commands' if summary.frames else
                                           f'no messages on {args.image_topic}')
        print(f'ground_bag: no frame was grounded: {reason}', file=sys.stderr)
        return 1
    return 0


def report(args, image_type: str, path: Path, summary: Summary, counts: dict) -> None:
    """Print what was read and written, and the summary table."""
    print(f'{args.bag}: {summary.frames} frames of {args.image_topic} ({image_type}); '
          f'grounded {summary.grounded}, {summary.without_phrases} without phrases, '
          f'{summary.rejected} rejected{": " + summary.reject_reason if summary.rejected else ""}')
    for command in summary.commands:
        print(f"  command at +{command['time']:.3f} s: {command['text']!r} -> "
              f"{command['phrases'] if command['phrases'] else 'ignored'}")
    if args.depth_topic:
        note = f' ({summary.lift_reason})' if summary.not_lifted else ''
        print(f'3D: {summary.lifted_frames} frames lifted ({summary.without_depth} without '
              f'depth), {summary.lifted} detections lifted, {summary.not_lifted} not{note}')
    for phrase, reason in summary.refused.items():
        print(f'  {phrase!r} refused: {reason}')
    print(f'wrote {path}: ' + ', '.join(f'{t} ({n})' for t, n in counts.items()))
    print(summary.table())


def main(argv=None) -> int:
    """Parse arguments, replay the bag, print the summary; exit status 2 on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    try:
        return run(args)
    except BagError as e:
        print(f'ground_bag: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    raise SystemExit(main())
