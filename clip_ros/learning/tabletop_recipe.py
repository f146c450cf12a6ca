"""
The recipe of the bundled `tabletop` model: render simulator scenes, train, save (CPU, < 30 min).

Scenes are drawn in clip_ros.sim.conditions' 'randomised' mode by default (light colour and
intensity, table colours and textures, camera distance/height/elevation, object scale, occluders,
crowds with same-colour and same-shape neighbours); held-out colour x shape combinations never
appear, not even as text. The CLIPSeg decoder learns to segment '<colour> <shape>' phrases (BCE +
dice on the target's mask, an empty mask for absent objects, half of them sharing a colour or
shape with an object in the scene) while its CLIP towers learn object crops against their names:
the in-batch contrastive loss, plus a classification of each crop among every trained name (all
absent names are negatives), of its colour among the colour words and its shape among the shape
words, and a pull of each name's text towards the sum of its two words' texts, so that unseen
combinations compose. The two losses are balanced by learned uncertainty weights.
"""
from dataclasses import dataclass
import json
import logging
import math
from pathlib import Path
import random
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from clip_ros.learning import training
from clip_ros.learning.lora import apply_lora, count_parameters, merge_lora
from clip_ros.learning.losses import ClipLoss, create_loss, MAX_LOGIT_SCALE, UncertaintyWeighting
from clip_ros.learning.training import pick_threads, TrainConfig
from clip_ros.perception import tabletop_model as tabletop
from clip_ros.perception.grounding import DEFAULT_DISTRACTORS
from clip_ros.perception.image import crops, preprocess
from clip_ros.perception.registry import IMAGENET_MEAN, IMAGENET_STD
from clip_ros.perception.shape_head import WEIGHTS_FILE as SHAPE_WEIGHTS
from clip_ros.perception.tokenizer import tokenize
from clip_ros.sim.conditions import RANDOMISED
from clip_ros.sim.dataset import render_scenes, split_exclude, split_seeds
from clip_ros.sim.scene import COLOURS, SHAPES

COLOUR_WORDS, SHAPE_WORDS = tuple(COLOURS), tuple(SHAPES)
MIN_CROP_PIXELS = 40  # objects hidden down to fewer pixels give no crop (nothing to learn)
# Phrasings seen in training; the node strips commands to '<colour> <shape>' first.
# 'a photo of a {}.' is clip_classifier_node's default template.
TEMPLATES = ('{}', '{}', 'the {}', 'a {}', 'pick up the {}', 'the {} on the table',
             'a photo of a {}.')
# Token ids beyond the end-of-text id are padding; short contexts give identical features.
TRAIN_CONTEXT = 16
POS_WEIGHT = torch.tensor(3.0)
# LoRA fine-tuning adapts every attention projection of both towers and the decoder.
LORA_TARGETS = ('*self_attn.q_proj', '*self_attn.k_proj', '*self_attn.v_proj',
                '*self_attn.out_proj')
_log = logging.getLogger('train_tabletop')

# Sizes of the bundled model; 'clip_ros' holds what transformers' config does not know.
DEFAULT_CONFIG = {
    'text_config': {
        'vocab_size': 49408, 'hidden_size': 32, 'intermediate_size': 128,
        'num_hidden_layers': 2, 'num_attention_heads': 2, 'max_position_embeddings': 77,
        'eos_token_id': 49407,
    },
    'vision_config': {
        'hidden_size': 96, 'intermediate_size': 192, 'num_hidden_layers': 4,
        'num_attention_heads': 4, 'image_size': 128, 'patch_size': 8,
    },
    'projection_dim': 64,
    'extract_layers': [1, 3],
    'reduce_dim': 32,
    'conditional_layer': 0,
    'decoder_num_attention_heads': 2,
    'decoder_intermediate_size': 64,
    'clip_ros': {
        'image_size': 128,  # CLIPSeg input side (frames are stretched to it)
        'crop_size': 64,  # CLIP re-scoring crop side
        'mean': list(IMAGENET_MEAN),
        'std': list(IMAGENET_STD),
        'tokenizer': 'open_clip bpe_simple_vocab_16e6 via clip_ros.perception.tokenizer',
        # Every object the simulator makes (held-out combinations included: their words are known).
        'vocabulary': [f'{colour} {shape}' for colour in COLOURS for shape in SHAPES],
        # User words -> vocabulary words (clip_ros.perception.vocabulary.Lexicon).
        'synonyms': {
            'cube': 'block', 'cuboid': 'block', 'box': 'block', 'brick': 'block',
            'sphere': 'ball', 'marble': 'ball', 'orb': 'ball',
            'can': 'cylinder', 'tin': 'cylinder', 'tube': 'cylinder', 'canister': 'cylinder',
            'pillar': 'cylinder', 'column': 'cylinder', 'dish': 'bowl', 'basin': 'bowl',
            'violet': 'purple', 'crimson': 'red', 'scarlet': 'red', 'gold': 'yellow',
            'golden': 'yellow',
        },
    },
}


# The 'clip_ros' keys a training run decides; the others (synonyms, abstention calibration)
# are data kept from the checkpoint a run overwrites.
MODEL_KEYS = ('image_size', 'crop_size', 'mean', 'std', 'tokenizer', 'vocabulary')


@dataclass
class Pool:
    """Pre-rendered training scenes at model resolution (uint8 pixels, float16 masks)."""

    images: torch.Tensor  # uint8 [N, 3, S, S]
    masks: list           # per scene uint8 [K, S, S] (mask coverage * 255)
    names: list           # per scene K '<colour> <shape>' names
    crops: torch.Tensor   # uint8 [M, 3, c, c] object and background crops
    crop_scene: list      # scene index per crop
    crop_names: list      # name per crop; '' for a table-only crop


def _as_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp(0, 255).to(torch.uint8)


def _background_box(rng, objects, height, width):
    """Return a table-only box (no object pixel inside), or None after a few tries."""
    union = np.zeros((height, width), bool)
    for obj in objects:
        union |= obj.mask
    for _ in range(10):
        side = int(rng.integers(min(height, width) // 10, min(height, width) // 4))
        x0, y0 = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
        if not union[y0:y0 + side, x0:x0 + side].any():
            return (x0, y0, x0 + side, y0 + side)
    return None


def _scene_tensors(rgb, objects, size, crop_size, rng):
    """Return (image uint8 [3,S,S], masks [K,S,S], object+background crops, their names)."""
    raw = (0.0, 0.0, 0.0), (1 / 255,) * 3  # keep 0..255 values; normalise at train time
    image = _as_uint8(preprocess(rgb, size, *raw)[0])
    masks = torch.from_numpy(np.stack([o.mask for o in objects]).astype(np.float32))
    masks = _as_uint8(F.interpolate(masks[None], size=(size, size), mode='area')[0] * 255)
    shown = [o for o in objects if o.mask.sum() >= MIN_CROP_PIXELS]
    boxes, names = [o.box for o in shown], [o.name for o in shown]
    background = _background_box(rng, objects, *rgb.shape[:2])
    if background is not None:
        boxes, names = boxes + [background], names + ['']
    cut = _as_uint8(crops(rgb, boxes, crop_size, *raw, pad=0.1))
    return image, masks, cut, names


def build_pool(scenes, size: int, crop_size: int, progress=True) -> Pool:
    """Collect (rgb, objects, names) scenes at model resolution into a Pool."""
    rng = np.random.default_rng(0)
    images, masks, names, cuts, crop_scene, crop_names = [], [], [], [], [], []
    for rgb, objects, _ in scenes:
        if not objects:
            continue
        image, mask, cut, cut_names = _scene_tensors(rgb, objects, size, crop_size, rng)
        images.append(image)
        masks.append(mask)
        names.append([o.name for o in objects])
        cuts.append(cut)
        crop_scene += [len(images) - 1] * len(cut_names)
        crop_names += cut_names
    return Pool(torch.stack(images), masks, names, torch.cat(cuts), crop_scene, crop_names)


def normalise(pixels: torch.Tensor, config: dict) -> torch.Tensor:
    """Map uint8 [B,3,s,s] to the model's normalised float input."""
    extra = config['clip_ros']
    mean = torch.tensor(extra['mean']).view(1, 3, 1, 1)
    std = torch.tensor(extra['std']).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


def _phrase(name: str, rng: random.Random) -> str:
    return rng.choice(TEMPLATES).format(name)


def _hard_absent(names: list, absent: list, rng: random.Random) -> list:
    """Return the absent names sharing a colour or a shape with a present one."""
    present = [n.split() for n in names]
    return [n for n in absent
            if any(n.split()[0] == c or n.split()[1] == s for c, s in present)]


def segmentation_batch(pool: Pool, scenes: list, vocabulary: list, rng: random.Random,
                       positives: int = 3):
    """Return (query phrases, scene index per query, target masks [Q, S, S])."""
    phrases, owner, targets = [], [], []
    for row, scene in enumerate(scenes):
        names, masks = pool.names[scene], pool.masks[scene]
        for k in rng.sample(range(len(names)), min(positives, len(names))):
            phrases.append(_phrase(names[k], rng))
            owner.append(row)
            targets.append(masks[k].float() / 255)
        # One absent name (empty target); half the time one sharing a colour or a shape with
        # an object present, the look-alikes that must not light up.
        absent = [n for n in vocabulary if n not in names]
        hard = _hard_absent(names, absent, rng)
        if absent:
            pick = rng.choice(hard if hard and rng.random() < 0.5 else absent)
            phrases.append(_phrase(pick, rng))
            owner.append(row)
            targets.append(torch.zeros_like(masks[0], dtype=torch.float32))
    return phrases, torch.tensor(owner), torch.stack(targets)


def crop_batch(pool: Pool, scenes: list, rng: random.Random, limit: int = 32):
    """Return (crops float [M,3,c,c] 0..255, captions, caption ids [M], names ('' = table))."""
    wanted = set(scenes)
    index = [k for k, scene in enumerate(pool.crop_scene) if scene in wanted]
    index = sorted(rng.sample(index, min(limit, len(index))))
    keys = [pool.crop_names[k] or 'background' for k in index]
    ids = {key: i for i, key in enumerate(sorted(set(keys)))}
    # One phrasing per name, so equal ids always mean equal texts.
    texts = {key: _phrase(key, rng) if key != 'background' else rng.choice(DEFAULT_DISTRACTORS)
             for key in ids}
    labels = torch.tensor([ids[key] for key in keys])
    return (_colour_jitter(_jitter(pool.crops[index], rng), rng), [texts[key] for key in keys],
            labels, [pool.crop_names[k] for k in index])


def vocabulary_targets(names: list, vocabulary: list, rng: random.Random) -> dict:
    """
    Return the per-crop classification targets among all trained names and among the words.

    'vocab_texts': one phrasing of every vocabulary name, then one background text;
    'vocab_labels' [M]: each crop's index in it ('' = background, the last); 'colour_labels'
    and 'shape_labels' [M]: indices in COLOUR_WORDS / SHAPE_WORDS (-100 for background).
    """
    index = {name: i for i, name in enumerate(vocabulary)}
    texts = [_phrase(name, rng) for name in vocabulary] + [rng.choice(DEFAULT_DISTRACTORS)]
    words = [name.split() if name else (None, None) for name in names]
    return {'vocab_texts': texts,
            'vocab_labels': torch.tensor([index.get(n, len(vocabulary)) for n in names]),
            'colour_labels': torch.tensor([COLOUR_WORDS.index(c) if c else -100
                                           for c, _ in words]),
            'shape_labels': torch.tensor([SHAPE_WORDS.index(s) if s else -100
                                          for _, s in words]),
            'names': list(vocabulary)}


def _colour_jitter(pixels: torch.Tensor, rng: random.Random, p: float = 0.5) -> torch.Tensor:
    """Scale each image's channels by random gains (light colour and intensity), 0..255."""
    out = pixels.float()
    gains = torch.ones(len(out), 3, 1, 1)
    for k in range(len(out)):
        if rng.random() < p:
            level = rng.uniform(0.6, 1.4)
            gains[k, :, 0, 0] = torch.tensor([level * rng.uniform(0.8, 1.2) for _ in range(3)])
    return (out * gains).clamp(0, 255)


def _jitter(cut: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Randomly shrink or shift each crop's window a little, as region boxes vary."""
    side = cut.shape[-1]
    out = []
    for c in cut:
        inner = rng.randint(int(side * 0.8), side)
        x0, y0 = rng.randint(0, side - inner), rng.randint(0, side - inner)
        window = c[None, :, y0:y0 + inner, x0:x0 + inner].float()
        out.append(F.interpolate(window, size=(side, side), mode='bilinear', antialias=True,
                                 align_corners=False)[0])
    return torch.stack(out)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return the mean soft dice loss over [Q, S, S] maps (empty targets push maps to 0)."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    overlap = (prob * target).sum(1)
    return (1 - (2 * overlap + 1) / (prob.sum(1) + target.sum(1) + 1)).mean()


class TabletopStep(torch.nn.Module):
    """
    One step of the recipe for clip_ros.learning.training.train: segmentation + contrastive.

    The CLIPSeg decoder segments phrases (BCE + dice) while the CLIP towers match object crops
    to their names with `loss_fn` (ClipLoss at the model's own temperature, or TripletLoss);
    the two losses are balanced by learned uncertainty weights, trained with the model.
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        self.weighting = UncertaintyWeighting(2)

    def forward(self, model, loss_fn, batch: dict, log: bool = False) -> dict:
        """Return {'loss': weighted total, and each part as a float for the history}."""
        pixels = normalise(batch['images'], self.config)
        out = model.clip.vision_model(pixel_values=pixels, output_hidden_states=True,
                                      interpolate_pos_encoding=True)
        hidden = [out.hidden_states[i + 1][batch['owner']] for i in model.extract_layers]
        targets = batch['targets']
        cond = tabletop.text_features(model, tokenize(batch['phrases'], TRAIN_CONTEXT))
        logits = model.decoder(hidden, cond).logits.reshape(targets.shape)
        # Objects cover about 1% of a frame: up-weight their pixels so 'all background' is no
        # minimum.
        seg = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=POS_WEIGHT)
        seg = seg + dice_loss(logits, targets)
        image = tabletop.image_features(model, normalise(batch['crops'], self.config))
        text = F.normalize(tabletop.text_features(
            model, tokenize(batch['captions'], TRAIN_CONTEXT)), dim=-1)
        with torch.no_grad():  # in place, as open_clip does: inference reads it unclamped
            model.clip.logit_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))
        scale = model.clip.logit_scale.exp()
        if isinstance(loss_fn, ClipLoss):
            contrastive = loss_fn(image, text, labels=batch['labels'], logit_scale=scale)
        else:
            contrastive = loss_fn(image, text, labels=batch['labels'])
        parts = {}
        if 'vocab_texts' in batch:
            parts = self.vocabulary_terms(model, image, batch, scale)
            contrastive = contrastive + sum(parts.values())
        weights = self.weighting.weights().detach()
        return {'loss': self.weighting([seg, contrastive]), 'segmentation': seg.item(),
                'temperature': 1.0 / scale.item(),  # the one this step used
                'contrastive': contrastive.item(), 'weight_segmentation': weights[0].item(),
                'weight_contrastive': weights[1].item(),
                **{k: v.item() for k, v in parts.items()}}

    @staticmethod
    def vocabulary_terms(model, image: torch.Tensor, batch: dict, scale) -> dict:
        """
        Return the per-crop terms: names (all trained names, absent ones are negatives), words.

        'names': cross-entropy of each crop among every trained name and a background text;
        'words': of its colour among COLOUR_WORDS plus of its shape among SHAPE_WORDS;
        'compose': 1 - cosine between each name's text and the normalised sum of its words'.
        """
        def encode(texts):
            return F.normalize(tabletop.text_features(
                model, tokenize(texts, TRAIN_CONTEXT)), dim=-1)

        vocab = encode(batch['vocab_texts'])
        names = ce = F.cross_entropy(scale * image @ vocab.T, batch['vocab_labels'])
        words = encode(list(COLOUR_WORDS) + list(SHAPE_WORDS))
        colours, shapes = words[:len(COLOUR_WORDS)], words[len(COLOUR_WORDS):]
        ce = F.cross_entropy(scale * image @ colours.T, batch['colour_labels'],
                             ignore_index=-100)
        ce = ce + F.cross_entropy(scale * image @ shapes.T, batch['shape_labels'],
                                  ignore_index=-100)
        plain = encode(batch['names'])
        pairs = [name.split() for name in batch['names']]
        summed = F.normalize(torch.stack([colours[COLOUR_WORDS.index(c)]
                                          + shapes[SHAPE_WORDS.index(s)] for c, s in pairs]),
                             dim=-1)
        compose = (1 - (plain * summed).sum(-1)).mean()
        return {'names': names, 'words': 0.5 * ce, 'compose': compose}


class RecipeBatches(torch.utils.data.Dataset):
    """Batch i of a run: scenes sampled from the pool with a generator seeded by (seed, i)."""

    def __init__(self, pool: Pool, steps: int, batch: int, seed: int):
        self.pool, self.steps, self.batch, self.seed = pool, steps, batch, seed
        self.vocabulary = sorted({n for names in pool.names for n in names})

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> dict:
        rng = random.Random(self.seed * 1_000_003 + i)
        phrases, owner, targets, (cut, captions, labels, names), images = make_batch(
            self.pool, self.vocabulary, self.batch, rng)
        return {'phrases': phrases, 'owner': owner, 'targets': targets, 'crops': cut,
                'captions': captions, 'labels': labels, 'images': images,
                **vocabulary_targets(names, self.vocabulary, rng)}


def make_batch(pool: Pool, vocabulary: list, size: int, rng: random.Random) -> tuple:
    """Sample scenes; return (phrases, owner, targets, crop_batch's tuple, images 0..255)."""
    scenes = rng.sample(range(len(pool.images)), size)
    phrases, owner, targets = segmentation_batch(pool, scenes, vocabulary, rng)
    images = _colour_jitter(pool.images[scenes], rng, p=0.3)
    if rng.random() < 0.5:  # mirror whole scenes: masks follow, names stay true
        images, targets = images.flip(-1), targets.flip(-1)
    return phrases, owner, targets, crop_batch(pool, scenes, rng), images


def train(model, pool: Pool, config: dict, args, seconds: float, step=None) -> list:
    """
    Train with the package's one training loop for args.steps or `seconds`; return the rows.

    `step` defaults to a new TabletopStep; the learning rate warms up over 3% of the run, then
    decays (cosine, to 2%) along whichever of steps and time is further along.
    """
    batches = torch.utils.data.DataLoader(
        RecipeBatches(pool, args.steps, args.batch, args.seed), batch_size=None)
    settings = TrainConfig(
        seed=args.seed, epochs=1, max_steps=args.steps, lr=args.lr, weight_decay=0.01,
        warmup_steps=max(1, round(0.03 * args.steps)), min_lr=0.02, grad_clip=1.0,
        deterministic=False, progress=not args.quiet, time_budget=seconds)
    loss = create_loss(getattr(args, 'loss', 'clip'))
    history = training.train(model, loss, batches, config=settings,
                             step_fn=step or TabletopStep(config))
    return history['steps']


def write_curves(history: list, path: Path) -> None:
    """Plot smoothed loss curves into a PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    steps = np.array([h['step'] for h in history])
    for axis, key in zip(axes, ('loss', 'segmentation', 'contrastive')):
        values = np.array([h[key] for h in history])
        width = max(1, len(values) // 50)
        smooth = np.convolve(values, np.ones(width) / width, mode='valid')
        axis.plot(steps, values, alpha=0.25, color='tab:blue')
        axis.plot(steps[width - 1:], smooth, color='tab:blue')
        axis.set_title('total loss' if key == 'loss' else f'{key} loss')
        axis.set_xlabel('step')
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def initial_model(args, config: dict) -> tuple:
    """
    Return (model in train mode, its config, LoRA-adapted layer names) for a run.

    From scratch by default; with args.finetune every weight of the checkpoint args.init (default:
    the bundled model) trains on from where it stands; with args.lora > 0 that checkpoint gets
    rank-args.lora adapters on every attention projection and only they (and the loss weights)
    train, so a few minutes adapt it to new scenes without forgetting.
    """
    if not getattr(args, 'lora', 0) and not getattr(args, 'finetune', False):
        return tabletop.build(config).train(), config, []
    model, config, _, _ = tabletop.load(getattr(args, 'init', '') or None, 'cpu', 'float32')
    if not getattr(args, 'lora', 0):
        return model.train(), config, []
    adapted = apply_lora(model, LORA_TARGETS, r=args.lora, alpha=2.0 * args.lora)
    trainable, total = count_parameters(model)
    _log.info('LoRA rank %d on %d layers: %d of %d parameters train', args.lora, len(adapted),
              trainable, total)
    return model.train(), config, adapted


def _pool(args, mode: str, extra: dict) -> Pool:
    """Render the training pool, or load it from args.pool (written there on first use)."""
    key = {'scenes': args.scenes, 'mode': mode, 'width': args.render_width,
           'height': args.render_height, 'image_size': extra['image_size'],
           'crop_size': extra['crop_size']}
    path = Path(args.pool) if getattr(args, 'pool', '') else None
    if path is not None and path.is_file():
        saved = torch.load(path, weights_only=False)
        if saved['key'] != key:
            raise ValueError(f'{path} holds a pool of {saved["key"]}, this run wants {key}')
        return saved['pool']
    seeds = split_seeds('train', args.scenes)
    scenes = render_scenes(seeds, args.render_width, args.render_height, split_exclude('train'),
                           mode)
    scenes = tqdm(scenes, total=len(seeds), desc='render', disable=args.quiet)
    pool = build_pool(scenes, extra['image_size'], extra['crop_size'])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({'key': key, 'pool': pool}, path)
    return pool


def _other_keys(out: Path) -> dict:
    """Return an existing checkpoint's 'clip_ros' keys that training does not decide."""
    path = out / tabletop.CONFIG_FILE
    if not path.is_file():
        return {}
    block = json.loads(path.read_text(encoding='utf-8')).get('clip_ros', {})
    return {k: v for k, v in block.items() if k not in MODEL_KEYS}


def _carry_shape_head(out: Path, source: Path) -> None:
    """
    Give a new checkpoint whose config names a shape head the head's weights.

    The head reads pixels only, so a retrained CLIPSeg keeps it: it is copied from the checkpoint
    the run started from, or its config block is dropped when there is none to copy.
    """
    path = out / tabletop.CONFIG_FILE
    config = json.loads(path.read_text(encoding='utf-8'))
    if 'shape' not in config['clip_ros'] or (out / SHAPE_WEIGHTS).is_file():
        return
    if (source / SHAPE_WEIGHTS).is_file():
        shutil.copy2(source / SHAPE_WEIGHTS, out / SHAPE_WEIGHTS)
        return
    del config['clip_ros']['shape']
    path.write_text(json.dumps(config, indent=2) + '\n', encoding='utf-8')


def run(args) -> dict:
    """Render, train, save; return a summary."""
    threads = pick_threads(args.threads)
    _log.info('training with %d torch thread(s)', threads)
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    config = DEFAULT_CONFIG
    start = time.monotonic()
    mode = getattr(args, 'scene_mode', RANDOMISED)
    pool = _pool(args, mode, config['clip_ros'])
    render_seconds = time.monotonic() - start
    model, config, adapted = initial_model(args, config)
    # The time budget covers the whole command; keep a little for saving and plotting.
    budget = args.minutes * 60 - render_seconds - 15 if args.minutes else 0.0
    if args.minutes and budget <= 0:
        raise ValueError(f'--minutes {args.minutes:g} is spent on rendering '
                         f'({render_seconds:.0f} s) before the first step; give more time')
    history = train(model, pool, config, args, budget)
    if not history:  # never save untrained weights over a model
        raise ValueError('the time budget ended before the first training step; nothing saved')
    if adapted:
        merge_lora(model)  # a plain checkpoint again: loads like any other
    kept = _other_keys(Path(args.out))
    out = tabletop.save(model, config, args.out)
    if kept:  # synonyms, abstention calibration...: written by other commands, kept
        path = out / tabletop.CONFIG_FILE
        saved = json.loads(path.read_text(encoding='utf-8'))
        saved['clip_ros'].update(kept)
        path.write_text(json.dumps(saved, indent=2) + '\n', encoding='utf-8')
    _carry_shape_head(out, Path(getattr(args, 'init', '') or tabletop.BUNDLED_DIR))
    write_curves(history, Path(args.curves or out / 'training_curves.png'))
    summary = {'parameters': tabletop.parameter_count(model), 'scenes': len(pool.images),
               'threads': threads, 'cpu_seconds': round(time.process_time(), 1),
               'steps': len(history), 'render_seconds': round(render_seconds, 1),
               'lora_layers': len(adapted), 'loss': getattr(args, 'loss', 'clip'),
               'finetune': bool(getattr(args, 'finetune', False)),
               'scene_mode': mode, 'seed': args.seed,
               'total_seconds': round(time.monotonic() - start, 1), 'out': str(out)}
    (out / 'training.json').write_text(json.dumps(summary, indent=2) + '\n', encoding='utf-8')
    return summary
