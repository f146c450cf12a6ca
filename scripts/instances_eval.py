"""
Instances per object on rendered test-split scenes: the pipeline's regions against plain blobs.

For each scene condition, every visible object with a unique name is asked for by its name
through GroundingPipeline (bundled tabletop model, abstention off, 640x480). Per condition:
top detection right (box IoU >= 0.5), boxes per object (detections whose pixels lie mostly on
the object; 1 is ideal, 0 means it was merged into a bigger box or missed), the share of top
detections that cover more than 30 % of two or more objects, and the CPU time of the instance
step per frame. --blobs runs the same with plain connected components (the old behaviour).

    python scripts/instances_eval.py --scenes 40
    python scripts/instances_eval.py --scenes 40 --blobs
"""
import argparse
import time

import numpy as np
import torch

from clip_ros.perception import tabletop_model as tabletop
from clip_ros.perception.geometry import box_iou, connected_components
from clip_ros.perception.grounding import AbstainRule, GroundingPipeline
from clip_ros.sim.conditions import condition_frames
from clip_ros.sim.simulator import Simulator

CONDITIONS = ('in_distribution', 'same_colour_distractors', 'occlusion', 'camera_far',
              'camera_low', 'small_objects', 'many_objects')


def blobs(pipeline):
    """Return an instance step that keeps one region per connected blob."""
    def step(heatmaps, limits):
        owners, regions = [], []
        for i, (prob, limit) in enumerate(zip(heatmaps, limits)):
            found = connected_components(prob > limit, prob, pipeline.min_area)
            owners += [i] * len(found)
            regions += found
        return owners, regions
    return step


def timed(step, seconds: list):
    """Wrap an instance step to record its CPU time."""
    def run(*args):
        start = time.process_time()
        result = step(*args)
        seconds.append(time.process_time() - start)
        return result
    return run


def query(pipeline, rgb, name: str, target, masks: list) -> dict:
    """Ground one name; score the top detection and count the boxes on the target."""
    result = pipeline(rgb, [name], 0.4, with_heatmaps=False)
    on = 0
    for d in result.detections:
        pixels = result.label_image == d.index + 1
        on += int((pixels & target).sum() > 0.5 * max(pixels.sum(), 1))
    if not result.detections:
        return {'correct': False, 'on': on, 'merged': False}
    top = result.detections[0]
    rows, cols = np.flatnonzero(target.any(1)), np.flatnonzero(target.any(0))
    box = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], float)
    pixels = result.label_image == 1
    covered = sum(int((pixels & m).sum() > 0.3 * m.sum()) for m in masks)
    return {'correct': bool(box_iou(np.array(top.box), box)[0, 0] >= 0.5), 'on': on,
            'merged': covered > 1}


def main(argv=None) -> int:
    """Print one row per condition."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--scenes', type=int, default=40, help='test-split scenes per condition')
    parser.add_argument('--conditions', default=','.join(CONDITIONS))
    parser.add_argument('--blobs', action='store_true', help='plain connected components')
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    clip = tabletop.load_tabletop_clip(device='cpu')
    clipseg = tabletop.load_tabletop_clipseg(device='cpu')
    pipeline = GroundingPipeline(clip, clipseg, abstain=AbstainRule.off())
    seconds = []
    pipeline._instances = timed(blobs(pipeline) if args.blobs else pipeline._instances, seconds)
    print(f"{'condition':<24} {'queries':>7} {'top right':>9} {'boxes/object':>12} "
          f"{'merged':>7}")
    with Simulator(0, 640, 480, show_gripper=False) as sim:
        for condition in args.conditions.split(','):
            rows = []
            for _, _, frame in condition_frames(sim, 'test', condition, args.scenes):
                names = [o.name for o in frame.objects]
                masks = [frame.instances == o.instance_id for o in frame.objects]
                for obj, mask in zip(frame.objects, masks):
                    if mask.sum() >= pipeline.min_area and names.count(obj.name) == 1:
                        rows.append(query(pipeline, frame.rgb, obj.name, mask, masks))
            print(f"{condition:<24} {len(rows):>7} {np.mean([r['correct'] for r in rows]):>9.1%} "
                  f"{np.mean([r['on'] for r in rows]):>12.2f} "
                  f"{np.mean([r['merged'] for r in rows]):>7.1%}")
    print(f'instance step CPU ms per frame: p50 {1e3 * np.median(seconds):.1f}, '
          f'p90 {1e3 * np.percentile(seconds, 90):.1f}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
