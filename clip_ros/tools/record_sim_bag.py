"""
Record MuJoCo tabletop frames into a rosbag2 MCAP file: record_sim_bag OUT.mcap --frames N ...

Writes what sim_node publishes, under the same topic names, at the root namespace:
/camera/image_raw (rgb8), /camera/depth/image_raw (32FC1 metres, or 16UC1 millimetres),
/camera/camera_info and, with --compressed, /camera/image_raw/compressed (jpeg) and
/camera/depth/image_raw/compressedDepth (image_transport's PNG form); plus one
std_msgs/String on /command at the start of each scene ('pick up the <object>', an object of
that scene). N frames are split over --scenes scenes (seeds --seed, --seed + 1, ...); the
gripper circles above the table so consecutive frames differ. Stamps start at a fixed time
and advance by 1/--rate s, so a recording is the same on every run.
"""
import argparse
from dataclasses import dataclass
import math
import random
import sys

import numpy as np

from clip_ros.sim.scene import GRIPPER_HOME
from clip_ros.tools import bag_messages as msgs, cli
from clip_ros.tools.bags import BagWriter, CAMERA_QOS, Qos

START_NS = 1_700_000_000 * 1_000_000_000  # first frame stamp (ns since the epoch)
COMMAND_LEAD_NS = 1_000_000  # a scene's command is logged this long before its first frame
FRAME_ID = 'camera_optical_frame'
TOPICS = {
    'image': '/camera/image_raw',
    'compressed': '/camera/image_raw/compressed',
    'depth': '/camera/depth/image_raw',
    'compressed_depth': '/camera/depth/image_raw/compressedDepth',
    'camera_info': '/camera/camera_info',
    'command': '/command',
}
DEPTH_ENCODINGS = ('32FC1', '16UC1')
COMMAND_QOS = Qos(depth=10)
CIRCLE_RADIUS = 0.08  # m, the gripper's path around its home position
CIRCLE_FRAMES = 24    # frames per turn


@dataclass
class SimFrame:
    """One recorded frame and the command that starts its scene (None after the first)."""

    index: int
    seed: int
    stamp_ns: int
    command: str | None
    frame: object  # sim.simulator.Frame


def frames_per_scene(frames: int, scenes: int) -> list:
    """Split `frames` over `scenes` (the first scenes take the remainder)."""
    if frames < 1 or scenes < 1:
        raise ValueError(f'frames and scenes must be >= 1, got {frames} and {scenes}')
    scenes = min(scenes, frames)
    return [frames // scenes + (k < frames % scenes) for k in range(scenes)]


def scene_command(seed: int, object_names: list) -> str:
    """Return the command of a scene: pick up one of its objects, drawn from `seed`."""
    return f'pick up the {random.Random(seed).choice(object_names)}'


def sim_frames(frames: int, scenes: int = 1, seed: int = 0, width: int = 640,
               height: int = 480, rate: float = 15.0):
    """Yield SimFrame for `frames` frames over `scenes` scenes (renders RGB and depth)."""
    from clip_ros.sim.simulator import Simulator  # MuJoCo and OpenGL only when recording

    period_ns = round(1e9 / rate)
    index = 0
    with Simulator(seed, width, height) as sim:
        for scene, count in enumerate(frames_per_scene(frames, scenes)):
            sim.reset(seed + scene)
            command = scene_command(sim.seed, sim.object_names)
            for k in range(count):
                angle = 2 * math.pi * k / CIRCLE_FRAMES
                home = np.asarray(GRIPPER_HOME)
                sim.move_to(home + CIRCLE_RADIUS * np.array([math.cos(angle) - 1,
                                                             math.sin(angle), 0.0]),
                            instant=True)
                yield SimFrame(index, sim.seed, START_NS + index * period_ns,
                               command if k == 0 else None, sim.render(depth=True))
                index += 1


def depth_image(depth: np.ndarray, encoding: str) -> np.ndarray:
    """Return metres as the `encoding` array: 32FC1 as is, 16UC1 in millimetres (0 = none)."""
    if encoding == '32FC1':
        return depth.astype(np.float32, copy=False)
    if encoding != '16UC1':
        raise ValueError(f'depth encoding {encoding!r} is not one of {", ".join(DEPTH_ENCODINGS)}')
    mm = np.where(np.isfinite(depth) & (depth > 0), np.round(depth * 1000.0), 0.0)
    return np.clip(mm, 0, 65535).astype(np.uint16)


def record(path: str, frames: int, scenes: int = 1, seed: int = 0, width: int = 640,
           height: int = 480, rate: float = 15.0, compressed: bool = False,
           depth_encoding: str = '32FC1') -> dict:
    """Write the recording to `path`; return {topic: message count} and the commands."""
    depth_image(np.zeros((1, 1), np.float32), depth_encoding)  # check before rendering
    commands = []
    with BagWriter(path) as bag:
        bag.add_topic(TOPICS['image'], 'sensor_msgs/msg/Image', CAMERA_QOS)
        bag.add_topic(TOPICS['depth'], 'sensor_msgs/msg/Image', CAMERA_QOS)
        bag.add_topic(TOPICS['camera_info'], 'sensor_msgs/msg/CameraInfo', CAMERA_QOS)
        if compressed:
            for topic in (TOPICS['compressed'], TOPICS['compressed_depth']):
                bag.add_topic(topic, 'sensor_msgs/msg/CompressedImage', CAMERA_QOS)
        bag.add_topic(TOPICS['command'], 'std_msgs/msg/String', COMMAND_QOS)
        for item in sim_frames(frames, scenes, seed, width, height, rate):
            if item.command is not None:
                commands.append((item.seed, item.command))
                bag.write(TOPICS['command'], msgs.string_msg(item.command),
                          item.stamp_ns - COMMAND_LEAD_NS)
            head = msgs.header_at(item.stamp_ns, FRAME_ID)
            frame, t = item.frame, item.stamp_ns
            bag.write(TOPICS['image'], msgs.image_msg(frame.rgb, 'rgb8', head), t)
            if compressed:
                bag.write(TOPICS['compressed'], msgs.compressed_image_msg(frame.rgb, 'jpeg', head),
                          t)
            depth = depth_image(frame.depth, depth_encoding)
            bag.write(TOPICS['depth'], msgs.image_msg(depth, depth_encoding, head), t)
            if compressed:
                bag.write(TOPICS['compressed_depth'],
                          msgs.compressed_depth_msg(depth, depth_encoding, head), t)
            bag.write(TOPICS['camera_info'], msgs.camera_info_msg(
                frame.K, frame.rgb.shape[1], frame.rgb.shape[0], head), t)
        counts = bag.counts()
    return {'counts': counts, 'commands': commands}


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(prog='record_sim_bag', description=__doc__.split('\n\n')[0])
    parser.add_argument('output', help='MCAP file to write (e.g. sim.mcap)')
    parser.add_argument('--frames', type=cli.count(1), default=30, help='frames in all')
    parser.add_argument('--scenes', type=cli.count(1), default=3,
                        help='scenes the frames are split over')
    parser.add_argument('--seed', type=cli.count(0), default=0, help='seed of the first scene')
    # The renderer's offscreen buffer: larger frames fail inside MuJoCo.
    parser.add_argument('--width', type=cli.count(8, 4096), default=640,
                        help='image width (pixels)')
    parser.add_argument('--height', type=cli.count(8, 4096), default=480,
                        help='image height (pixels)')
    parser.add_argument('--rate', type=cli.number(0.0, low_open=True), default=15.0,
                        help='frames per second (stamps)')
    parser.add_argument('--compressed', action='store_true',
                        help=f'also write a jpeg CompressedImage on {TOPICS["compressed"]} and '
                             f'compressedDepth on {TOPICS["compressed_depth"]}')
    parser.add_argument('--depth-encoding', choices=DEPTH_ENCODINGS, default='32FC1',
                        help='32FC1 metres or 16UC1 millimetres')
    return parser


def main(argv=None) -> int:
    """Record the frames and print the topics written."""
    parser = build_parser()
    args = parser.parse_args(argv)
    cli.writable(parser, 'output', args.output)
    try:
        report = record(args.output, args.frames, args.scenes, args.seed, args.width,
                        args.height, args.rate, args.compressed, args.depth_encoding)
    except (RuntimeError, ValueError, OSError) as e:
        print(f'record_sim_bag: error: {e}', file=sys.stderr)
        return 1
    for seed, command in report['commands']:
        print(f'scene {seed}: {command!r}')
    print(f'wrote {args.output}: ' + ', '.join(
        f'{topic} ({count})' for topic, count in report['counts'].items()))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
