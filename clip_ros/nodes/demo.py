"""
Run the grounding node on procedural tabletop frames and print what each command grounded.

Everything runs in one process over real DDS: the grounding node, and a driver node that
publishes commands and camera frames and listens for detections. The annotated strip is written
as a PNG. Uses the pretrained models when they are cached, else random-initialised tiny ones.
"""
import argparse
import os
import threading
import time

import numpy as np
from PIL import Image as PILImage
import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from std_msgs.msg import String
from vision_msgs.msg import Detection2DArray

from clip_ros.core.geometry import Detection
from clip_ros.core.models import load_clip, load_clipseg, ModelLoadError
from clip_ros.core.synthetic import tabletop_image
from clip_ros.nodes.common import COMMAND_QOS, RESULTS_QOS
from clip_ros.nodes.conversions import image_to_numpy, numpy_to_image
from clip_ros.nodes.grounding_node import GroundingNode
from clip_ros.nodes.overlay import draw_overlay

COMMANDS = ('pick up the blue block', 'grab the red ball', 'where is the green bowl?',
            'please pick up the yellow block')


def choose_models(device: str) -> tuple:
    """Return (clip_arch, clip_pretrained, clipseg) to run: pretrained if cached, else tiny."""
    try:
        load_clip(device=device)
        load_clipseg(device=device)
        return 'ViT-B-16', 'openai', 'CIDAS/clipseg-rd64-refined'
    except ModelLoadError as e:
        print(f'Pretrained weights are not available offline:\n  {e}\n'
              'Running with random-initialised tiny models instead: the topics, messages and '
              'timings are real, the groundings are not meaningful.')
        return 'tiny', 'random', 'tiny'


class Driver(Node):
    """Publish commands and frames; keep the latest detections and mask by frame stamp."""

    def __init__(self):
        super().__init__('demo_driver')
        self.image_pub = self.create_publisher(Image, 'image', RESULTS_QOS)
        self.command_pub = self.create_publisher(String, 'command', COMMAND_QOS)
        self.results = {}
        self.ready = threading.Condition()
        self.create_subscription(Detection2DArray, 'detections', self._on_detections, RESULTS_QOS)
        self.create_subscription(Image, 'mask', self._on_mask, RESULTS_QOS)

    def _key(self, header) -> tuple:
        return header.stamp.sec, header.stamp.nanosec

    def _on_detections(self, msg) -> None:
        self._store(self._key(msg.header), 'detections', msg)

    def _on_mask(self, msg) -> None:
        self._store(self._key(msg.header), 'mask', image_to_numpy(msg, copy=True))

    def _store(self, key, field, value) -> None:
        with self.ready:
            self.results.setdefault(key, {})[field] = value
            self.ready.notify_all()

    def ask(self, command: str, rgb: np.ndarray, timeout: float = 60.0) -> tuple:
        """Send `command`, then one frame; return (Detection2DArray, mask, seconds) or None."""
        self.command_pub.publish(String(data=command))
        time.sleep(0.2)  # commands and frames travel on different topics
        msg = numpy_to_image(rgb, 'rgb8')
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = 'camera_optical_frame'
        key = self._key(msg.header)
        start = time.perf_counter()
        self.image_pub.publish(msg)
        with self.ready:
            done = self.ready.wait_for(lambda: len(self.results.get(key, {})) == 2, timeout)
        if not done:
            return None
        result = self.results.pop(key)
        return result['detections'], result['mask'], time.perf_counter() - start


def to_detections(msg) -> list:
    """Rebuild core Detections from a Detection2DArray for drawing."""
    out = []
    for index, d in enumerate(msg.detections):
        cx, cy = d.bbox.center.position.x, d.bbox.center.position.y
        w, h = d.bbox.size_x, d.bbox.size_y
        hyp = d.results[0].hypothesis
        out.append(Detection(index, hyp.class_id, hyp.score, (cx - w / 2, cy - h / 2,
                             cx + w / 2, cy + h / 2), 0, (cx, cy), hyp.score))
    return out


def run(args) -> int:
    """Start both nodes, send each command with a fresh scene, print and draw the results."""
    clip_arch, clip_pretrained, clipseg = choose_models(args.device)
    overrides = [Parameter('clip_arch', value=clip_arch),
                 Parameter('clip_pretrained', value=clip_pretrained),
                 Parameter('clipseg_model', value=clipseg),
                 Parameter('device', value=args.device),
                 Parameter('image_qos', value='reliable')]
    grounding = GroundingNode(parameter_overrides=overrides)
    driver = Driver()
    executor = MultiThreadedExecutor()
    executor.add_node(grounding)
    executor.add_node(driver)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    panels, failures = [], 0
    try:
        for seed, command in enumerate(COMMANDS):
            rgb, objects = tabletop_image(seed=seed)
            answer = driver.ask(command, rgb)
            if answer is None:
                print(f'{command!r}: no detections within the timeout')
                failures += 1
                continue
            msg, mask, seconds = answer
            detections = to_detections(msg)
            top = (f'{detections[0].phrase} score {detections[0].score:.2f} box '
                   f'{tuple(round(v) for v in detections[0].box)}' if detections else 'nothing')
            print(f'{command!r} -> {len(detections)} detections in {seconds * 1e3:.0f} ms; '
                  f'top: {top}; scene: {", ".join(o.name for o in objects)}')
            panels.append(draw_overlay(rgb, detections, mask, grounding.phrases))
    finally:
        executor.shutdown()
        grounding.destroy_node()
        driver.destroy_node()
    if panels:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        PILImage.fromarray(np.concatenate(panels, axis=1)).save(args.output)
        print(f'wrote {args.output}')
    return 1 if failures else 0


def main(args=None) -> int:
    """Parse arguments and run the demo."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--device', default='auto', help="'auto', 'cpu' or 'cuda'")
    parser.add_argument('--output', default='out/demo_strip.png', help='annotated strip PNG')
    parsed = parser.parse_args(rclpy.utilities.remove_ros_args(args)[1:] if args else None)
    with rclpy.init(args=args):
        return run(parsed)


if __name__ == '__main__':
    raise SystemExit(main())
