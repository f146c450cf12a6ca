"""Phrase grounding: CLIPSeg maps -> thresholded instances -> CLIP re-scoring -> detections."""
from dataclasses import dataclass
import re

import numpy as np
import torch

from clip_ros.perception.clipseg import ClipSegRunner
from clip_ros.perception.geometry import connected_components, Detection, paint
from clip_ros.perception.image import crops, validate_rgb

# Competing texts in the re-scoring softmax so a crop of table or wall can lose to 'background'.
DEFAULT_DISTRACTORS = ('background', 'a table surface', 'a wall', 'the floor')

__all__ = ['DEFAULT_DISTRACTORS', 'Detection', 'GroundingPipeline', 'GroundingResult',
           'check_phrases', 'check_thresholds', 'rival_mask']


@dataclass
class GroundingResult:
    """Everything one frame produced."""

    phrases: list            # query phrases, in the order of heatmaps
    detections: list         # Detection, sorted by score desc; index = position
    label_image: np.ndarray  # uint16 [H, W]: detection index + 1, 0 background
    heatmaps: object         # float32 [N, H, W] CLIPSeg probabilities, or None if not asked


def clean_phrases(values) -> list[str]:
    """Normalise whitespace, drop empty phrases and duplicates, keep order."""
    phrases = []
    for value in values:
        phrase = ' '.join(str(value).split())
        if phrase and phrase not in phrases:
            phrases.append(phrase)
    return phrases


def check_phrases(phrases) -> list:
    """Return phrases as a list of str; raise ValueError when empty or not a list."""
    if isinstance(phrases, str):
        raise ValueError(f'phrases must be a list of strings, got the single string {phrases!r}')
    phrases = [str(p) for p in phrases]
    if not phrases:
        raise ValueError('no phrases')
    return phrases


def check_thresholds(thresholds, count: int) -> list:
    """Expand a float or a per-phrase list into `count` floats in [0, 1], else ValueError."""
    if isinstance(thresholds, (int, float, np.floating, np.integer)):
        values = [float(thresholds)] * count
    else:
        try:
            values = [float(t) for t in thresholds]
        except (TypeError, ValueError) as e:
            raise ValueError(
                f'thresholds must be a float or a list of floats, got {thresholds!r}') from e
        if len(values) != count:
            raise ValueError(f'got {len(values)} thresholds for {count} phrases; '
                             'give one float or one per phrase')
    bad = [v for v in values if not 0.0 <= v <= 1.0]  # also rejects NaN
    if bad:
        raise ValueError(f'thresholds must be in [0, 1], got {bad}')
    return values


class GroundingPipeline:
    """
    Find the image regions that match text phrases.

    CLIPSeg gives a probability map per phrase; a pixel is foreground where its probability
    exceeds the phrase's threshold (so 1.0 switches a phrase off). Each connected component of at
    least min_area pixels becomes an instance, which CLIP re-scores against all phrases, the
    distractors and the CLIP model's vocabulary of known object names (at most max_candidates
    components per frame, highest CLIPSeg mean first).
    Final score = sqrt(clip_prob * mean_prob): the geometric mean lets either model veto an
    instance while agreement keeps the score high.
    """

    def __init__(self, clip, clipseg, distractors=DEFAULT_DISTRACTORS, min_area: int = 64,
                 max_detections: int = 20, rescore: bool = True, crop_pad: float = 0.1,
                 max_candidates: int = 64):
        if min_area < 1:
            raise ValueError(f'min_area must be >= 1, got {min_area}')
        if max_detections < 1:
            raise ValueError(f'max_detections must be >= 1, got {max_detections}')
        if max_candidates < max_detections:
            raise ValueError(f'max_candidates ({max_candidates}) must be >= max_detections '
                             f'({max_detections})')
        if crop_pad < 0:
            raise ValueError(f'crop_pad must be >= 0, got {crop_pad}')
        if isinstance(distractors, str):
            raise ValueError(f'distractors must be a list of strings, got {distractors!r}')
        self.clip = clip
        self.runner = ClipSegRunner(clipseg)
        self.distractors = tuple(distractors)
        self.min_area = int(min_area)
        self.max_detections = int(max_detections)
        self.rescore = bool(rescore)
        self.crop_pad = float(crop_pad)
        self.max_candidates = int(max_candidates)

    def __call__(self, rgb: np.ndarray, phrases, thresholds=0.4,
                 with_heatmaps: bool = True) -> GroundingResult:
        """
        Ground `phrases` in an RGB uint8 HxWx3 image.

        Parameters
        ----------
        rgb : uint8 [H, W, 3]
            The frame.
        phrases : list of str
            Query phrases, at least one.
        thresholds : float or list of float
            In [0, 1], one for all phrases or one per phrase.
        with_heatmaps : bool
            Return the probability maps (they are computed either way).

        Returns
        -------
        GroundingResult in original-image pixels.

        """
        return self.batch([(rgb, phrases, thresholds)], with_heatmaps)[0]

    def batch(self, requests, with_heatmaps: bool = True) -> list:
        """
        Ground several frames at once: one GroundingResult per (rgb, phrases, thresholds).

        CLIPSeg's vision tower runs once over all frames and CLIP encodes the crops of all
        frames in one call; each frame keeps its own phrases, thresholds and results, the
        same as calling the pipeline on it alone (up to float rounding of the batched matmuls).
        A single frame is the batch of one.
        """
        frames, phrase_lists, limits = [], [], []
        for rgb, phrases, thresholds in requests:
            frames.append(validate_rgb(rgb))
            phrase_lists.append(check_phrases(phrases))
            limits.append(check_thresholds(thresholds, len(phrase_lists[-1])))
        with torch.inference_mode():
            maps = self.runner.probabilities_batch(frames, phrase_lists)  # [N, H, W] each
        maps = [np.asarray(m, dtype=np.float32) for m in maps]
        found = [self._instances(m, lim) for m, lim in zip(maps, limits)]  # (owners, regions)
        scores = self._scores(frames, phrase_lists, found)
        return [self._result(rgb, phrases, owners, regions, frame_scores,
                             heatmaps if with_heatmaps else None)
                for rgb, phrases, (owners, regions), frame_scores, heatmaps
                in zip(frames, phrase_lists, found, scores, maps)]

    def _result(self, rgb, phrases, owners, regions, scores, heatmaps) -> GroundingResult:
        """Keep the best max_detections regions, paint the label image, build the detections."""
        order = sorted(range(len(regions)), key=lambda k: -scores[k])[:self.max_detections]
        label_image = np.zeros(rgb.shape[:2], np.uint16)
        detections = []
        for index, k in enumerate(order):
            region = regions[k]
            paint(label_image, region, index + 1)  # higher scores paint first and keep overlaps
            detections.append(Detection(
                index=index, phrase=phrases[owners[k]], score=scores[k], box=region.box,
                area=region.area, centroid=region.centroid, mean_prob=region.mean_prob))
        return GroundingResult(phrases, detections, label_image, heatmaps)

    def _instances(self, heatmaps: np.ndarray, limits: list) -> tuple:
        """Return (phrase index per region, regions) from the thresholded maps."""
        owners, regions = [], []
        for i, (prob, limit) in enumerate(zip(heatmaps, limits)):
            found = connected_components(prob > limit, prob, self.min_area)
            owners += [i] * len(found)
            regions += found
        # Bound the CLIP batch on noisy maps: keep the components CLIPSeg is surest about.
        keep = sorted(range(len(regions)), key=lambda k: -regions[k].mean_prob)
        keep = sorted(keep[:self.max_candidates])
        return [owners[k] for k in keep], [regions[k] for k in keep]

    def _scores(self, frames, phrase_lists, found) -> list:
        """Return per frame one score in [0, 1] per region (CLIPSeg mean, or its mix with CLIP)."""
        seg = [[min(max(r.mean_prob, 0.0), 1.0) for r in regions] for _, regions in found]
        if not self.rescore or not any(regions for _, regions in found):
            return seg
        clip_probs = self.clip_probabilities_batch(
            [(rgb, phrases, owners, [r.box for r in regions])
             for rgb, phrases, (owners, regions) in zip(frames, phrase_lists, found)])
        return [[float(np.sqrt(c * s)) for c, s in zip(probs, frame_seg)]
                for probs, frame_seg in zip(clip_probs, seg)]

    def clip_probabilities(self, rgb, phrases, owners, boxes) -> list:
        """
        Return, per box, CLIP's softmax probability of its own phrase.

        The softmax runs over the unique phrases, the distractors and the model's vocabulary,
        minus the texts that merely specialise the box's phrase ('blue block' does not compete
        with 'block', so a query can be as general as the user likes). All crops of the frame
        go through one encode_images call; text embeddings come from the model's cache.
        """
        return self.clip_probabilities_batch([(rgb, phrases, owners, boxes)])[0]

    def clip_probabilities_batch(self, items) -> list:
        """
        Return clip_probabilities for each (rgb, phrases, owners, boxes) of several frames.

        The crops of all frames go through one encode_images call; each frame's softmax runs
        over its own texts.
        """
        clip = self.clip
        pixels = [crops(rgb, boxes, clip.image_size, clip.mean, clip.std, clip.device,
                        clip.dtype, pad=self.crop_pad)
                  for rgb, _, _, boxes in items]  # [K, 3, S, S] per frame
        counts = [len(p) for p in pixels]
        results = []
        with torch.inference_mode():
            images = clip.encode_images(torch.cat(pixels)).float() if sum(counts) else None
            first = 0
            for (_, phrases, owners, _), count in zip(items, counts):
                if not count:
                    results.append([])
                    continue
                texts = list(dict.fromkeys([*phrases, *self.distractors, *clip.vocabulary]))
                rivals = rival_mask(texts, [phrases[o] for o in owners])  # [K, T]
                text = clip.encode_text(texts).float()  # [T, D]
                frame = images[first:first + count]  # [K, D]
                first += count
                logits = clip.logit_scale * frame @ text.to(frame.device).T
                probs = logits.masked_fill(~rivals.to(logits.device),
                                           float('-inf')).softmax(dim=-1)
                cols = torch.tensor([texts.index(phrases[o]) for o in owners],
                                    device=probs.device)
                results.append(probs.gather(1, cols[:, None])[:, 0].cpu().tolist())
        return results


_ARTICLES = frozenset(('a', 'an', 'the'))


def content_words(text: str) -> frozenset:
    """Return the lower-case words of a phrase without articles."""
    return frozenset(re.findall(r"[a-z0-9']+", text.lower())) - _ARTICLES


def rival_mask(texts: list, queries: list) -> torch.Tensor:
    """
    Tell which texts compete with each query in the re-scoring softmax.

    Parameters
    ----------
    texts : list of str
        The softmax's texts; every query is among them.
    queries : list of str
        One query per crop.

    Returns
    -------
    bool [len(queries), len(texts)]: True for the query itself and for every text that does
    not contain all of the query's words.

    """
    words = [content_words(t) for t in texts]
    rows = {}
    for query in dict.fromkeys(queries):
        own = content_words(query)
        rows[query] = [t == query or not own <= w for t, w in zip(texts, words)]
    return torch.tensor([rows[q] for q in queries], dtype=torch.bool).reshape(len(queries), -1)
