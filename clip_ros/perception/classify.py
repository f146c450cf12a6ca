"""Zero-shot image classification with CLIP and multi-class semantic segmentation maps."""
import string

import numpy as np
from scipy import ndimage
import torch

from clip_ros.perception.geometry import Detection, slices_to_box
from clip_ros.perception.image import preprocess, validate_rgb
from clip_ros.perception.vocabulary import Lexicon

DEFAULT_TEMPLATES = ('a photo of a {}.',)
# uint16 label images reserve 0 for background.
MAX_CLASSES = np.iinfo(np.uint16).max


def _check_names(names, what: str) -> list:
    if isinstance(names, str):
        raise ValueError(f'{what} must be a list of strings, got the single string {names!r}')
    names = [str(n) for n in names]
    if not names:
        raise ValueError(f'no {what}')
    if any(not n.strip() for n in names):
        raise ValueError(f'{what} must be non-empty strings, got {names!r}')
    return names


def check_templates(templates) -> list:
    """Return the templates; ValueError unless each has one '{}' and nothing else to fill."""
    templates = _check_names(templates, 'templates')
    for template in templates:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
            template.format('x')  # a format spec such as '{:d}' fails here
        except (ValueError, IndexError, KeyError) as e:  # an unmatched '{', a named field
            raise ValueError(f'template {template!r} cannot be filled in: {e}') from None
        if fields != ['']:
            raise ValueError(f"template {template!r} must hold exactly one '{{}}' placeholder "
                             f"(the class name) and no other field ('{{{{' writes a brace); "
                             f'it has {len(fields)}: {fields!r}')
    return templates


class ZeroShotClassifier:
    """
    Score a whole image against a class list with CLIP.

    Class embeddings are the renormalised mean of the normalised template embeddings (open_clip
    zero-shot style), computed once per class list; frames only run the image tower.

    A model with a shape head (the bundled tabletop model) whose classes are all
    "<colour> <shape>" of its own words (or their synonyms) is scored by composition instead
    (compose=False turns it off): its CLIP towers tell colours apart but do not compose them
    with shapes, so each class gets log P(colour) from CLIP among the model's colour words plus
    log P(shape) from the head, the whole image taken as the object's box.
    """

    def __init__(self, clip, classes, templates=DEFAULT_TEMPLATES, compose: bool = True):
        templates = check_templates(templates)
        self._clip = clip
        self._templates = tuple(templates)
        self._allow_compose = bool(compose)
        self.set_classes(classes)

    @property
    def classes(self) -> list:
        """Return the current class names."""
        return list(self._classes)

    @property
    def text_embeddings(self) -> torch.Tensor:
        """
        Return the text embeddings [C, D] the image is compared with, L2-normalised.

        One per class, or one per colour word when composing.
        """
        return self._text

    @property
    def composed(self) -> bool:
        """Tell whether classes are scored as colour x shape (see the class docstring)."""
        return self._parts is not None

    def set_classes(self, classes) -> None:
        """Replace the class list and recompute its text embeddings."""
        classes = _check_names(classes, 'classes')
        self._parts = composition(self._clip, classes) if self._allow_compose else None
        self._text = self._embed(classes if self._parts is None else self._parts[0])
        self._classes = classes

    def _embed(self, names: list) -> torch.Tensor:
        texts = [t.format(c) for c in names for t in self._templates]
        with torch.inference_mode():
            emb = self._clip.encode_text(texts).float()  # [C * T, D]
            emb = torch.nn.functional.normalize(emb, dim=-1)
            emb = emb.reshape(len(names), len(self._templates), -1).mean(dim=1)
            return torch.nn.functional.normalize(emb, dim=-1)  # [C, D]

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """Return softmax class probabilities, float32 [C], for an RGB uint8 HxWx3 image."""
        rgb = validate_rgb(rgb)
        clip = self._clip
        pixels = preprocess(rgb, clip.image_size, clip.mean, clip.std, clip.device, clip.dtype)
        with torch.inference_mode():
            image = clip.encode_images(pixels).float()  # [1, D]
            logits = clip.logit_scale * image @ self._text.to(image.device).T
            probs = logits.softmax(dim=-1)[0].cpu().numpy().astype(np.float64)
        if self._parts is not None:
            _, colour, shape = self._parts
            head = clip.shape
            height, width = rgb.shape[:2]
            shapes = head.probabilities(rgb, [(0, 0, width, height)])[0, :len(head.shapes)]
            shapes = shapes / max(float(shapes.sum()), 1e-12)  # without the background class
            log = np.log(probs[colour] + 1e-12) + np.log(shapes[shape] + 1e-12)
            probs = np.exp(log - log.max())
            probs /= probs.sum()
        return probs.astype(np.float32)


def composition(clip, classes) -> tuple:
    """
    Return (colour words, colour index per class, shape index per class), or None.

    None unless the model has a shape head and every class reads as "<colour> <shape>" with a
    colour word of its vocabulary's names and one of the head's shapes, after the model's
    synonyms table and filler words (perception.vocabulary: 'a crimson cube' is red block).
    """
    head = getattr(clip, 'shape', None)
    if head is None:
        return None
    shapes = list(head.shapes)
    vocabulary = getattr(clip, 'vocabulary', ())
    colours = sorted({n.split()[0] for n in vocabulary
                      if len(n.split()) == 2 and n.split()[1] in shapes})
    lexicon = Lexicon(vocabulary, getattr(clip, 'synonyms', {}))
    colour_of, shape_of = [], []
    for name in classes:
        canonical, reason = lexicon.canonical(name)
        words = canonical.split()
        if reason or len(words) != 2 or words[0] not in colours or words[1] not in shapes:
            return None
        colour_of.append(colours.index(words[0]))
        shape_of.append(shapes.index(words[1]))
    return colours, colour_of, shape_of


def _check_heatmaps(heatmaps) -> np.ndarray:
    heatmaps = np.asarray(heatmaps)
    if heatmaps.ndim != 3 or 0 in heatmaps.shape:
        raise ValueError(f'heatmaps must be a non-empty [C, H, W] array, got {heatmaps.shape}')
    if heatmaps.shape[0] > MAX_CLASSES:
        raise ValueError(f'at most {MAX_CLASSES} classes fit a uint16 label image')
    return heatmaps


def semantic_segmentation(heatmaps, background_threshold: float) -> np.ndarray:
    """
    Label each pixel with its most probable class.

    Parameters
    ----------
    heatmaps : float [C, H, W]
        Per-class probabilities.
    background_threshold : float
        In [0, 1]; pixels whose best probability is below it are background.

    Returns
    -------
    uint16 [H, W]: class index + 1, or 0 for background.

    """
    heatmaps = _check_heatmaps(heatmaps)
    if not 0.0 <= background_threshold <= 1.0:
        raise ValueError(f'background_threshold must be in [0, 1], got {background_threshold}')
    best = heatmaps.argmax(axis=0)
    peak = np.take_along_axis(heatmaps, best[None], axis=0)[0]
    return np.where(peak >= background_threshold, best + 1, 0).astype(np.uint16)


def semantic_regions(label_image: np.ndarray, heatmaps, classes=None) -> list:
    """
    Summarise a semantic label image as one Detection per class present.

    A class's region is all its pixels, connected or not: the box is their union bounding box, so
    the label image and the detections agree one-to-one by class. Detection.index is the class
    index (label value - 1), score and mean_prob are the class's mean probability over its pixels.

    Parameters
    ----------
    label_image : uint16 [H, W]
        Output of semantic_segmentation.
    heatmaps : float [C, H, W]
        The maps the label image came from.
    classes : list of C str, optional
        Names for Detection.phrase (default: the class index as a string).

    Returns
    -------
    list of Detection ordered by class index.

    """
    heatmaps = _check_heatmaps(heatmaps)
    label_image = np.asarray(label_image)
    if label_image.shape != heatmaps.shape[1:]:
        raise ValueError(
            f'label image {label_image.shape} must match heatmaps {heatmaps.shape[1:]}')
    count = heatmaps.shape[0]
    if classes is not None and len(classes) != count:
        raise ValueError(f'got {len(classes)} class names for {count} heatmaps')
    if label_image.max(initial=0) > count:
        raise ValueError(f'label values must be in [0, {count}], got {label_image.max()}')
    labels = label_image.astype(np.int32)
    present = np.unique(labels[labels > 0])
    own = np.take_along_axis(heatmaps, np.maximum(labels - 1, 0)[None], axis=0)[0]  # [H, W]
    areas = ndimage.sum_labels(labels > 0, labels, present)
    means = ndimage.mean(own, labels, present)
    centres = ndimage.center_of_mass(labels > 0, labels, present)
    boxes = ndimage.find_objects(labels)
    regions = []
    for i, value in enumerate(present):
        index = int(value) - 1
        cy, cx = (float(v) for v in centres[i])
        regions.append(Detection(
            index=index, phrase=classes[index] if classes is not None else str(index),
            score=float(means[i]), box=slices_to_box(boxes[value - 1]), area=int(areas[i]),
            centroid=(cx + 0.5, cy + 0.5), mean_prob=float(means[i])))
    return regions
