"""
Grounding datasets rendered from the MuJoCo simulator, and a torch Dataset to read them.

On disk, one folder per split::

    <out>/<split>/dataset.json      index: format, split, size, held-out combos, scenes
    <out>/<split>/<seed>/rgb.png    uint8 RGB
    <out>/<split>/<seed>/masks.png  uint8 instance ids (0 background, i = objects[i - 1])
    <out>/<split>/<seed>/depth.npy  float32 metres (only when rendered with depth)
    <out>/<split>/<seed>/meta.json  seed, K, caption, objects (name, colour, shape, instance_id,
                                    box [x_min, y_min, x_max, y_max) pixels, visible_pixels,
                                    captions, position_camera, position_world)

Seeds decide everything, so a scene regenerates identically; splits use disjoint seed ranges and
the HELD_OUT colour-shape combinations never appear in 'train'.
"""
import json
from pathlib import Path

import numpy as np
from PIL import Image
import torch

from clip_ros.perception.geometry import SceneObject
from clip_ros.sim.splits import (  # noqa: F401 (re-exported: the dataset's API)
    HELD_OUT, split_exclude, split_seeds, SPLIT_SIZE, SPLITS)

FORMAT = 'clip_ros-tabletop-1'
CAPTION_TEMPLATES = ('the {}', 'a {}', 'pick up the {}')


def object_captions(name: str) -> list:
    """Return referring phrases for one object, e.g. 'the blue block', 'pick up the blue block'."""
    return [template.format(name) for template in CAPTION_TEMPLATES]


def scene_caption(names: list) -> str:
    """Return a sentence listing the objects, e.g. 'a red ball and a blue block on a table'."""
    items = [f'a {name}' for name in names]
    listed = items[0] if len(items) == 1 else ', '.join(items[:-1]) + ' and ' + items[-1]
    return f'{listed} on a table'


def _meta(seed: int, frame) -> dict:
    objects = [{
        'instance_id': obj.instance_id, 'name': obj.name, 'colour': obj.colour,
        'shape': obj.shape, 'box': None if obj.box is None else list(obj.box),
        'visible_pixels': obj.visible_pixels, 'captions': object_captions(obj.name),
        'position_camera': [round(v, 5) for v in obj.position_camera],
        'position_world': [round(v, 5) for v in obj.position_world],
    } for obj in frame.objects]
    return {'seed': seed, 'K': frame.K.tolist(), 'objects': objects,
            'caption': scene_caption([obj['name'] for obj in objects])}


def write_scene(folder: Path, seed: int, frame) -> dict:
    """Write one rendered scene (rgb.png, masks.png, depth.npy if rendered, meta.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame.rgb).save(folder / 'rgb.png')
    Image.fromarray(frame.instances).save(folder / 'masks.png')
    if frame.depth is not None:
        np.save(folder / 'depth.npy', frame.depth)
    meta = _meta(seed, frame)
    (folder / 'meta.json').write_text(json.dumps(meta, indent=1))
    return meta


def generate(out, split: str, count: int, width: int = 224, height: int = 224,
             start: int = 0, depth: bool = False, progress=None,
             condition: str = 'in_distribution') -> Path:
    """
    Render `count` scenes of `split` into `out/split` and write its dataset.json.

    Parameters
    ----------
    out : str or Path
        Dataset root; the split goes into its own sub-folder.
    split : str
        'train', 'val' or 'test'.
    count, start : int
        Which scenes of the split (seed = first seed of the split + start + i).
    width, height : int
        Image size in pixels.
    depth : bool
        Also save depth.npy per scene.
    progress : callable, optional
        Wraps the seed iterable (e.g. tqdm).
    condition : str
        Scene condition (clip_ros.sim.conditions.CONDITIONS or 'randomised').

    Returns
    -------
    Path
        The dataset.json written.

    """
    from clip_ros.sim.conditions import load_condition
    from clip_ros.sim.simulator import Simulator  # needs OpenGL; reading a dataset does not

    seeds = split_seeds(split, count, start)
    root = Path(out) / split
    path = root / 'dataset.json'
    settings = {'format': FORMAT, 'split': split, 'condition': condition, 'width': width,
                'height': height, 'depth': depth, 'held_out': [list(c) for c in HELD_OUT]}
    # Rendering in chunks (--start) adds to the split's index; other settings would mix.
    earlier = json.loads(path.read_text()) if path.is_file() else {'scenes': []}
    differ = [k for k in settings if path.is_file() and earlier.get(k) != settings[k]]
    if differ:
        raise ValueError(f'{path} holds scenes written with other settings ('
                         + ', '.join(f'{k} {earlier.get(k)!r} not {settings[k]!r}'
                                     for k in differ) + '); choose another --out')
    scenes = []
    with Simulator(seeds[0] if count else 0, width, height, exclude=split_exclude(split),
                   show_gripper=False) as sim:
        for seed in (progress(seeds) if progress else seeds):
            spec = load_condition(sim, seed, condition, split_exclude(split))
            meta = write_scene(root / f'{seed:06d}', seed,
                               sim.render(depth=depth, instances=True))
            scenes.append({'seed': seed, 'dir': f'{seed:06d}', 'focus': spec.focus,
                           'objects': [obj['name'] for obj in meta['objects']]})
    fresh = {scene['seed'] for scene in scenes}
    scenes = sorted([e for e in earlier['scenes'] if e['seed'] not in fresh] + scenes,
                    key=lambda scene: scene['seed'])
    index = {**settings, 'scenes': scenes}
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(index, indent=1))
    return path


class SceneDataset(torch.utils.data.Dataset):
    """
    Read one split written by `generate`.

    Items are dicts: 'rgb' uint8 [H, W, 3], 'masks' uint8 [H, W] instance ids, 'meta' (the
    scene's meta.json) and 'depth' float32 [H, W] when saved; `transform` maps that dict.
    """

    def __init__(self, root, split: str = 'train', transform=None):
        self.root = Path(root) / split
        index_path = self.root / 'dataset.json'
        if not index_path.is_file():
            raise FileNotFoundError(f'{index_path} not found; write it with: make_dataset '
                                    f'--out {root} --split {split} --count N')
        self.index = json.loads(index_path.read_text())
        if self.index.get('format') != FORMAT:
            raise ValueError(f'{index_path}: format {self.index.get("format")!r}, '
                             f'expected {FORMAT!r}')
        self.transform = transform

    def __len__(self) -> int:
        return len(self.index['scenes'])

    def __getitem__(self, i: int) -> dict:
        folder = self.root / self.index['scenes'][i]['dir']
        item = {'rgb': np.asarray(Image.open(folder / 'rgb.png').convert('RGB')),
                'masks': np.asarray(Image.open(folder / 'masks.png')),
                'meta': json.loads((folder / 'meta.json').read_text())}
        if self.index.get('depth'):
            item['depth'] = np.load(folder / 'depth.npy')
        return self.transform(item) if self.transform else item


def render_scenes(seeds, width: int, height: int, exclude=(), condition: str = 'in_distribution'):
    """
    Yield (rgb, visible SceneObjects, all names) for each seed from the MuJoCo sim.

    `condition` draws each seed's scene under one of clip_ros.sim.conditions' names (or its
    'randomised' training mode); the default renders the seed's usual scene.
    """
    from clip_ros.sim.conditions import load_condition
    from clip_ros.sim.simulator import Simulator  # needs OpenGL; reading a dataset does not
    with Simulator(seeds[0], width, height, exclude=exclude, show_gripper=False) as sim:
        for seed in seeds:
            load_condition(sim, seed, condition, exclude)
            frame = sim.render(depth=False, instances=True)
            objects = [SceneObject(o.name, o.box, frame.instances == o.instance_id)
                       for o in frame.objects if o.box is not None and o.visible_pixels > 0]
            yield frame.rgb, objects, [o.name for o in frame.objects]
