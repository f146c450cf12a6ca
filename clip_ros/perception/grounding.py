"""
Phrase grounding: CLIPSeg maps -> thresholded instances -> CLIP re-scoring -> detections.

A phrase is first mapped onto the model's words (perception.vocabulary.Lexicon); a phrase with
a word the model does not know gets no detection. Each candidate instance then has to pass the
model's abstention rule (AbstainRule, calibrated per model by the `calibrate` command): CLIP's
best-matching text for its crop must be the phrase or a text that only specialises it, by a
margin, and CLIPSeg must be sure enough somewhere inside it. A phrase left without any instance
is "not found". Both kinds of refusal are reported in GroundingResult.rejected.
"""
from dataclasses import dataclass, field, fields, replace
import functools
import math

import numpy as np

from clip_ros.perception import (depth_surfaces, shape_search, solid_shape,
                                 still_view, table_depth, table_split, zoom)
from clip_ros.perception.geometry import Detection, paint
from clip_ros.perception.image_np import validate_rgb
from clip_ros.perception.light import correction_for
from clip_ros.perception.refine import grow, refine
from clip_ros.perception.regions import distinct, instances
from clip_ros.perception.search_memo import SearchMemo
from clip_ros.perception.vocabulary import Lexicon, words_of

# Competing texts in the re-scoring softmax so a crop of table or wall can lose to 'background'.
DEFAULT_DISTRACTORS = ('background', 'a table surface', 'a wall', 'the floor')

__all__ = ['AbstainRule', 'DEFAULT_DISTRACTORS', 'Detection', 'Evidence', 'frame_only',
           'GroundingPipeline', 'GroundingResult', 'check_phrases', 'check_thresholds',
           'not_found', 'rival_mask']


@dataclass
class GroundingResult:
    """Everything one frame produced."""

    phrases: list            # query phrases, in the order of heatmaps
    detections: list         # Detection, sorted by score desc; index = position
    label_image: np.ndarray  # uint16 [H, W]: detection index + 1, 0 background
    # float32 [N, H, W] CLIPSeg probabilities, or None if not asked; for a phrase that took the
    # second look (perception.zoom), the zoomed map its candidates came from
    heatmaps: object
    # phrase -> why it has no detection: 'not found: <phrase>', 'unknown word: <word>', ...
    rejected: dict = field(default_factory=dict)


def not_found(phrase: str) -> str:
    """Return the reason given for a phrase without any accepted instance."""
    return f'not found: {phrase}'


CUT = 'found, but not among the best max_detections'


def frame_only(reason: str) -> bool:
    """Tell whether a refusal holds for this frame only (the next may differ), not the words."""
    return reason.startswith(('not found', CUT))


@dataclass(frozen=True)
class Evidence:
    """What the models say about one candidate instance of a phrase (no extra model pass)."""

    # CLIP logit of the best text that is the phrase or only specialises it, minus the best
    # rival's (log-odds between the two); inf when nothing competes or without re-scoring.
    margin: float
    clip_prob: float  # CLIP softmax probability of the phrase among its rivals (nan: no CLIP)
    seg_mean: float   # CLIPSeg mean probability over the instance
    seg_peak: float   # CLIPSeg highest probability inside the instance
    # The shape head's probability that the crop is the shape the phrase names, or that it is
    # any object when the phrase names no shape and the head knows background (nan: no head,
    # or a candidate the rule refuses anyway).
    shape_prob: float = math.nan


@dataclass(frozen=True)
class AbstainRule:
    """
    When a candidate instance counts as its phrase; a phrase left with none is 'not found'.

    Read from the model config's 'clip_ros' block, key "abstain" (the `calibrate` command writes
    it). A model without one (pretrained CLIP, random test models) gets the defaults, which
    accept every candidate: only a phrase CLIPSeg finds nowhere above its threshold is then
    'not found'.
    """

    min_margin: float = -math.inf  # Evidence.margin at least this (0: the phrase must win)
    min_peak: float = 0.0          # Evidence.seg_peak at least this
    min_shape: float = 0.0         # Evidence.shape_prob at least this (nan always passes)

    @classmethod
    def from_config(cls, values) -> 'AbstainRule':
        """Return the rule of a config block (dict; missing keys keep their default)."""
        if not values:
            return cls()
        if not isinstance(values, dict):
            raise ValueError(f'abstain must be a mapping of thresholds, got {values!r}')
        known = {f.name for f in fields(cls)}
        rule = {}
        for key, value in values.items():
            if key not in known:
                continue  # calibration figures travel in the same block
            try:
                rule[key] = float(value)
            except (TypeError, ValueError) as e:
                raise ValueError(f'abstain {key} must be a number, got {value!r}') from e
            if math.isnan(rule[key]):
                raise ValueError(f'abstain {key} must be a number, got NaN')
        return cls(**rule)

    @classmethod
    def off(cls) -> 'AbstainRule':
        """Return a rule that accepts every candidate (the defaults)."""
        return cls()

    def accepts(self, evidence: Evidence) -> bool:
        """Tell whether `evidence` is enough to report the instance."""
        return (evidence.margin >= self.min_margin and evidence.seg_peak >= self.min_peak
                and not evidence.shape_prob < self.min_shape)

    def as_dict(self) -> dict:
        """Return the thresholds as the config block stores them."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


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
    if isinstance(phrases, (str, bytes)):
        raise ValueError(f'phrases must be a list of strings, got the single '
                         f'{type(phrases).__name__} {phrases!r}')
    try:
        phrases = [str(p) for p in phrases]
    except TypeError:
        raise ValueError(f'phrases must be a list of strings, got {phrases!r}') from None
    if not phrases:
        raise ValueError('no phrases')
    return phrases


def check_thresholds(thresholds, count: int) -> list:
    """Expand a float or a per-phrase list into `count` floats in [0, 1], else ValueError."""
    if isinstance(thresholds, (int, float, np.floating, np.integer)) or \
            (isinstance(thresholds, np.ndarray) and thresholds.ndim == 0):
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


@dataclass
class _Frame:
    """One request on its way through the pipeline."""

    rgb: np.ndarray
    phrases: list       # the user's phrases
    limits: list        # one threshold per phrase
    asked: list         # indices of the phrases that go to the models
    words: list         # the model's words for each asked phrase
    rejected: dict      # phrase -> reason, filled on the way
    owners: list = None   # per candidate: index into `asked`
    regions: list = None  # candidate Regions
    evidence: list = None  # per candidate Evidence
    maps: np.ndarray = None  # float32 [len(asked), H, W] CLIPSeg probabilities
    shape_probs: dict = field(default_factory=dict)  # candidate -> its shape's probability
    narrowed: set = field(default_factory=set)  # candidates shape search cut from a blob
    on_table: set = field(default_factory=set)  # candidates cut from a table-sized one
    zoomed: set = field(default_factory=set)  # candidates of zoomed maps (perception.zoom)
    depth: object = None  # table_depth.DepthView, or None
    raw: np.ndarray = None  # the frame before light correction (for the view drawn from depth)
    on_depth: set = field(default_factory=set)  # candidates of the look in depth
    solid: set = field(default_factory=set)  # ... whose shape depth alone singles out
    fits: dict = field(default_factory=dict)  # candidate -> depth leaves it its shape word
    thumb: np.ndarray = None  # zoom.thumbnail of the frame as it came: tells a still view
    still: object = None  # still_view.View of a frame with depth: what its view gave before

    @property
    def cut(self):
        """Return the surfaces depth cuts the frame into (perception.depth_surfaces), or None."""
        return self.still.cut(self.depth.depth) if self.depth is not None else None

    def fits_depth(self, k: int) -> bool:
        """
        Tell whether depth leaves candidate k the shape its phrase names (True when unknown).

        The surface holding the candidate's surest pixels is measured: a map that spilled onto
        the block in front of a half-hidden cylinder answers 'cylinder' with a block.
        """
        if self.cut is None:
            return True
        if k not in self.fits:
            named = solid_shape.named_shape(self.words[self.owners[k]])
            label = named is not None and depth_surfaces.surface_label(
                self.cut, self.regions[k], self.maps[self.owners[k]])
            surface = depth_surfaces.surface_region(self.cut, label) if label else None
            self.fits[k] = (surface is None
                            or surface.area > depth_surfaces.MAX_SHARE * self.cut.labels.size
                            or named in self.still.solid_shapes(label, self.depth, surface))
        return self.fits[k]


class GroundingPipeline:
    """
    Find the image regions that match text phrases.

    A model with a light reference (config 'light') sees each frame light-corrected first
    (perception.light; light_correction=False turns it off). Each phrase is mapped onto the
    model's words (Lexicon of the CLIP model's vocabulary and
    synonyms; unchanged for open models); a word the model does not know rejects the phrase.
    CLIPSeg gives a probability map per phrase; a pixel is foreground where its probability
    exceeds the phrase's threshold (so 1.0 switches a phrase off). Each connected component of at
    least min_area pixels becomes a candidate, which CLIP re-scores against all phrases, the
    distractors and the CLIP model's vocabulary of known object names (at most max_candidates
    components per frame, highest CLIPSeg mean first). A candidate the abstention rule refuses
    is dropped. A phrase left without candidates gets a second look at zoomed tiles of the
    frame (perception.zoom; zoom_in=False skips it), and is 'not found' if that finds none.
    Final score = sqrt(clip_prob * mean_prob), times sqrt(shape_prob) with shape evidence: the
    geometric mean lets either model veto an instance while agreement keeps the score high.
    """

    def __init__(self, clip, clipseg, distractors=DEFAULT_DISTRACTORS, min_area: int = 64,
                 max_detections: int = 20, rescore: bool = True, crop_pad: float = 0.1,
                 max_candidates: int = 64, abstain=None, runner=None,
                 light_correction: bool = True, refine_masks: bool = True,
                 shape_search: bool = True, zoom_in: bool = True):
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
        if runner is None:  # torch's runner; a Triton client brings its own and no torch
            from clip_ros.perception.clipseg import ClipSegRunner
            runner = ClipSegRunner(clipseg)
        self.runner = runner
        self.distractors = tuple(distractors)
        self.min_area = int(min_area)
        self.max_detections = int(max_detections)
        self.rescore = bool(rescore)
        self.crop_pad = float(crop_pad)
        self.max_candidates = int(max_candidates)
        # Redraw small detections from the frame's colours, grow partly hidden ones over their
        # object (perception.refine).
        self.refine_masks = bool(refine_masks)
        # Look inside same-colour blobs for the named shape (perception.shape_search).
        self.shape_search = bool(shape_search)
        self.search_memo = SearchMemo()  # a still camera's blobs are searched once
        # Look again at zoomed tiles for a phrase the whole frame left unfound (perception.zoom).
        self.zoom_in = bool(zoom_in)
        self.zoom_memo = zoom.ZoomMemo()  # a still camera's second look is taken once
        self.zoom_looks = zoom.Recent(zoom.SIZE, 'look')  # ... and judged once
        self.still_views = still_view.ViewMemo()  # ... and what depth gives, once
        # None: the model's calibrated rule (config 'abstain'), or the defaults.
        self.abstain = abstain if isinstance(abstain, AbstainRule) else AbstainRule.from_config(
            getattr(clip, 'abstain', None) if abstain is None else abstain)
        # The model's light reference (config 'light'), or None: frames go in as they come.
        self.light = correction_for(clip, light_correction)
        self.lexicon = Lexicon(getattr(clip, 'vocabulary', ()), getattr(clip, 'synonyms', {}))
        self.canonical = functools.lru_cache(maxsize=256)(self.lexicon.canonical)

    def forget(self) -> None:
        """Drop what the pipeline remembers across frames (the memos of still views)."""
        self.search_memo = SearchMemo()
        self.zoom_memo = zoom.ZoomMemo()
        self.zoom_looks = zoom.Recent(zoom.SIZE, 'look')
        self.still_views = still_view.ViewMemo()
        if self.light is not None:
            self.light.forget()

    def memos(self) -> dict:
        """Return {memo: (hits, misses)}: how often a frame took what a still view gave before."""
        memos = {'shape_search': self.search_memo, 'zoomed_maps': self.zoom_memo,
                 'zoomed_looks': self.zoom_looks, 'depth_views': self.still_views}
        if self.light is not None:
            memos['light'] = self.light.recent
        return {name: (memo.hits, memo.misses) for name, memo in memos.items()}

    def __call__(self, rgb: np.ndarray, phrases, thresholds=0.4,
                 with_heatmaps: bool = True, depth=None) -> GroundingResult:
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
        depth : table_depth.DepthView or (depth, K), optional
            Metric depth registered to the frame and its intrinsics: a white object on a
            washed-out table is then found by what stands on the table (perception.table_depth).

        Returns
        -------
        GroundingResult in original-image pixels; detections carry the phrases as given.

        """
        return self.batch([(rgb, phrases, thresholds, depth)], with_heatmaps)[0]

    def batch(self, requests, with_heatmaps: bool = True) -> list:
        """
        Ground several frames at once: one GroundingResult per (rgb, phrases, thresholds).

        A request may carry a fourth item, the frame's depth (as for __call__) or None.

        CLIPSeg's vision tower runs once over all frames and CLIP encodes the crops of all
        frames in one call; each frame keeps its own phrases, thresholds and results, the
        same as calling the pipeline on it alone (up to float rounding of the batched matmuls).
        A single frame is the batch of one.
        """
        frames = self.candidates(requests)
        if self.zoom_in:
            self._zoom_in(frames)
        self._depth_look(frames)
        return [self._result(frame, with_heatmaps) for frame in frames]

    def candidates(self, requests) -> list:
        """
        Return every candidate instance with its Evidence, before the abstention rule.

        One _Frame per (rgb, phrases, thresholds): `owners[k]` is the index into `asked` (and
        `words`) of candidate k's phrase, `regions[k]` its Region, `evidence[k]` its Evidence,
        `rejected` the phrases refused for their words, `maps` the asked phrases' CLIPSeg maps.
        """
        frames = []
        for rgb, phrases, thresholds, *depth in requests:
            phrases = check_phrases(phrases)
            rgb = validate_rgb(rgb)
            thumb = zoom.thumbnail(rgb)
            frame = _Frame(self.light(rgb, thumb) if self.light else rgb, phrases,
                           check_thresholds(thresholds, len(phrases)),
                           [], [], {}, raw=rgb, thumb=thumb,
                           depth=table_depth.check_depth(depth[0] if depth else None,
                                                         rgb.shape[:2]))
            if frame.depth is not None:
                frame.still = self.still_views.view(frame.thumb, frame.depth)
            first = {}  # model words (any case, any spacing) -> the phrase asked first
            for k, phrase in enumerate(phrases):
                words, reason = self.canonical(phrase)
                key = ' '.join(words.casefold().split())
                if reason:
                    frame.rejected.setdefault(phrase, reason)
                elif key in first:
                    # 'red cube' beside 'red block': one object, one detection, not two; the
                    # same phrase twice is simply asked once.
                    if phrase != first[key]:
                        frame.rejected.setdefault(phrase, f'same words as {first[key]!r}: '
                                                          f'{words!r}')
                else:
                    first[key] = phrase
                    frame.asked.append(k)
                    frame.words.append(words)
            frames.append(frame)
        maps = self.runner.probabilities_batch([f.rgb for f in frames],
                                               [f.words for f in frames])  # [N, H, W] each
        for frame, frame_maps in zip(frames, maps):
            frame.maps = np.asarray(frame_maps, dtype=np.float32)
            frame.owners, frame.regions = self._instances(frame)
        self._evidence(frames)
        return frames

    def _accepted(self, frame: _Frame) -> list:
        """Return the candidates the abstention rule (or the look in depth's) accepts."""
        def accepted(k, e):
            if k in frame.on_depth:  # the map says nothing about it
                return k in frame.solid or table_depth.accepts(e)
            return (self.abstain.accepts(e) and (k not in frame.on_table or table_split.accepts(e))
                    and (k not in frame.zoomed or zoom.accepts(e)) and frame.fits_depth(k))
        return [k for k, e in enumerate(frame.evidence) if accepted(k, e)]

    def _zoom_in(self, frames: list) -> None:
        """Give each phrase left without an accepted candidate the map of zoomed tiles."""
        if getattr(self.clip, 'shape', None) is None:  # zoomed candidates need its word
            return
        retry = []  # (frame, unfound phrases, its thumbnail, {phrase: zoomed map})
        for frame in frames:
            found = {frame.owners[k] for k in self._accepted(frame)}
            # A threshold of 1 switches a phrase off: no map of any size passes it.
            unfound = [i for i in range(len(frame.asked))
                       if i not in found and frame.limits[frame.asked[i]] < 1.0]
            if unfound:
                thumb = frame.thumb
                known = {i: self.zoom_memo.recall(frame.words[i], thumb, frame.rgb.shape[:2])
                         for i in unfound}
                retry.append((frame, unfound, thumb,
                              {i: m for i, m in known.items() if m is not None}))
        if not retry:
            return
        images, words, asks = [], [], []
        for frame, unfound, _, known in retry:
            ask = [i for i in unfound if i not in known]
            boxes = zoom.tiles(*frame.rgb.shape[:2]) if ask else []
            asks.append((ask, boxes))
            for row, col, th, tw in boxes:
                images.append(frame.rgb[row:row + th, col:col + tw])
                words.append([frame.words[i] for i in ask])
        maps = iter(self.runner.probabilities_batch(images, words) if images else [])
        looks, fresh = [], []  # one _Frame per retried frame: its unfound phrases' candidates
        for (frame, unfound, thumb, known), (ask, boxes) in zip(retry, asks):
            if ask:
                merged = zoom.merge([next(maps) for _ in boxes], boxes, *frame.rgb.shape[:2])
                for i, zoomed in zip(ask, merged):
                    self.zoom_memo.remember(frame.words[i], thumb, zoomed)
                    known[i] = zoomed
            # The found phrases' maps are left empty: their candidates stay as they were, and
            # all the phrases still compete in CLIP's re-scoring as in the first look.
            look = _Frame(frame.rgb, frame.phrases, frame.limits, frame.asked, frame.words, {})
            look.maps = np.zeros_like(frame.maps)
            for i in unfound:
                look.maps[i] = known[i]
            kept = sum(1 for owner in frame.owners if owner not in unfound)
            # A still view's zoomed candidates were found and judged on a frame before.
            key = (tuple(self._texts(frame.words)), tuple(unfound), self.max_candidates - kept,
                   frame.rgb.shape[:2])
            seen = None if ask else self.zoom_looks.find(
                lambda item: item[0] == key and zoom.same_view(item[1], thumb))
            if seen is None:
                look.owners, look.regions = self._instances(look, self.max_candidates - kept)
                fresh.append((key, thumb, look))
            else:
                (look.owners, look.regions, look.evidence, look.shape_probs, look.narrowed,
                 look.on_table) = seen[2]
            looks.append(look)
        self._evidence([look for _, _, look in fresh])
        for key, thumb, look in fresh:
            self.zoom_looks.add((key, thumb, (look.owners, look.regions, look.evidence,
                                              look.shape_probs, look.narrowed, look.on_table)))
        for (frame, unfound, *_), look in zip(retry, looks):
            _replace_candidates(frame, set(unfound), look)

    def _depth_look(self, frames: list) -> None:
        """
        Give each phrase still unfound what stands on the table in depth and nothing was found on.

        On a washed-out table (perception.table_depth) the blobs as white as the lamp clips
        them, judged on the view drawn from depth; elsewhere the surfaces no accepted candidate
        lies on (perception.depth_surfaces: a partly hidden object, one between same-colour
        neighbours), judged on the frame. Each by its colour (CLIP) and its shape (the head).
        """
        head = getattr(self.clip, 'shape', None)
        if head is None or not self.rescore:  # the blobs need CLIP's colour and the head
            return
        for frame in frames:
            if frame.depth is None:
                continue
            accepted = self._accepted(frame)
            found = {frame.owners[k] for k in accepted}
            unfound = [i for i in range(len(frame.asked))
                       if i not in found and frame.limits[frame.asked[i]] < 1.0]
            if not unfound:
                continue
            blobs, least = table_depth.washed_out_blobs(frame.raw, frame.depth), -np.inf
            if blobs:
                reference = getattr(self.light, 'reference', None)
                view = table_depth.drawn_view(frame.raw, frame.depth, blobs,
                                              reference.median_rgb if reference else None)
                texts, logits, shapes = self._look(head, frame, [(view, b.box) for b in blobs])
                labels = [None] * len(blobs)
            elif frame.cut is not None:
                taken = {depth_surfaces.surface_label(frame.cut, frame.regions[k],
                                                      frame.maps[frame.owners[k]])
                         for k in accepted}
                free = frame.still.free_surfaces(frame.depth.depth, taken)
                labels, blobs = list(free), list(free.values())
                least = depth_surfaces.MIN_MARGIN  # coloured surfaces: CLIP must be surer
                if blobs:
                    texts, logits, shapes = self._surface_looks(head, frame, free)
            if not blobs:
                continue
            # A surface's shape in depth (the head knows whole objects, not half-hidden pieces),
            # measured only for surfaces whose colour passes for some phrase.
            for i in unfound:
                queries = [frame.words[i]] * len(blobs)
                margins, probs = _colour_margins(texts, logits, queries, head.shapes,
                                                 *_margins(texts, logits, queries))
                s = head.shape_index(frame.words[i])
                shape_probs = shapes[:, s] if s is not None else (
                    1.0 - shapes[:, -1] if head.background else np.ones(len(blobs)))
                named = solid_shape.named_shape(frame.words[i])
                for label, blob, m, p, shape in zip(labels, blobs, margins, probs, shape_probs):
                    if m < least:
                        continue
                    left = (frame.still.solid_shapes(label, frame.depth, blob)
                            if label is not None else solid_shape.SHAPES)
                    if named and named not in left:  # depth says another shape
                        continue
                    if named and left == [named]:  # depth says this shape and no other
                        frame.solid.add(len(frame.regions))
                    row, col = blob.offset
                    h, w = blob.mask.shape
                    window = frame.maps[i, row:row + h, col:col + w][blob.mask]
                    frame.on_depth.add(len(frame.regions))
                    frame.on_table.add(len(frame.regions))  # its mask is depth's: kept as is
                    frame.owners.append(i)
                    frame.regions.append(replace(blob, mean_prob=float(window.mean())))
                    frame.evidence.append(Evidence(float(m), float(p), float(window.mean()),
                                                   float(window.max()), float(shape)))

    def _look(self, head, frame: _Frame, views: list) -> tuple:
        """Return (texts, CLIP logits [K, T], head probabilities [K, shapes]) of (view, box)s."""
        looked = self._clip_logits_batch([(v, frame.words, [], [box]) for v, box in views])
        shapes = np.concatenate([head.probabilities(v, [box]) for v, box in views])
        return looked[0][0], np.concatenate([item[1] for item in looked]), shapes

    def _surface_looks(self, head, frame: _Frame, free: dict) -> tuple:
        """
        Return _look's answer for the free surfaces ({label: Region}), each judged alone.

        A still view's surfaces were looked at before (frame.still): only new ones are shown.
        """
        key = tuple(self._texts(frame.words))
        new = [label for label in free if (label, key) not in frame.still.looks]
        if new:
            # Each surface alone on the frame: the rest painted table-coloured.
            views = [depth_surfaces.isolated(frame.rgb, frame.cut, free[label]) for label in new]
            texts, logits, shapes = self._look(head, frame, views)
            for n, label in enumerate(new):
                frame.still.looks[label, key] = (texts, logits[n:n + 1], shapes[n:n + 1])
        looks = [frame.still.looks[label, key] for label in free]
        return (looks[0][0], np.concatenate([look[1] for look in looks]),
                np.concatenate([look[2] for look in looks]))

    def _result(self, frame: _Frame, with_heatmaps: bool) -> GroundingResult:
        """Apply the abstention rule, keep the best max_detections, paint, build detections."""
        keep = self._accepted(frame)
        rejected = dict(frame.rejected)
        kept_owners = {frame.owners[k] for k in keep}
        for i, k in enumerate(frame.asked):
            if i not in kept_owners:
                rejected.setdefault(frame.phrases[k], not_found(frame.phrases[k]))
        scores = {k: table_depth.score(frame.evidence[k]) if k in frame.on_depth
                  else _score(frame.evidence[k]) for k in keep}
        # A blob kept whole beside its parts (shape search): the better-scored reading wins.
        order = distinct(frame.regions, frame.owners, sorted(keep, key=lambda k: -scores[k]))
        cut, order = order[self.max_detections:], order[:self.max_detections]
        reported = {frame.owners[k] for k in order}
        for i in sorted({frame.owners[k] for k in cut} - reported):
            phrase = frame.phrases[frame.asked[i]]
            rejected.setdefault(phrase, f'{CUT} ({self.max_detections})')
        label_image = np.zeros(frame.rgb.shape[:2], np.uint16)
        detections = []
        size = self.runner.model.image_size  # one map cell: the frame over CLIPSeg's input
        cell = (label_image.shape[1] / size, label_image.shape[0] / size)
        # With depth, each mask is cut to the surface it lies on (perception.depth_surfaces).
        cut = frame.cut if self.refine_masks and order else None
        for index, k in enumerate(order):
            region = frame.regions[k]
            # A window cut from a same-colour blob touches neighbours of its colours.
            if self.refine_masks and k not in frame.narrowed | frame.on_table:
                region = refine(frame.rgb, region, frame.maps[frame.owners[k]], cell)
                region = self._grown(frame, k, region)
            if cut is not None and k not in frame.on_depth:  # those masks are depth's already
                region = depth_surfaces.on_surface(cut, region, frame.maps[frame.owners[k]])
            paint(label_image, region, index + 1)  # higher scores paint first and keep overlaps
            detections.append(Detection(
                index=index, phrase=frame.phrases[frame.asked[frame.owners[k]]],
                score=scores[k], box=region.box, area=region.area, centroid=region.centroid,
                mean_prob=region.mean_prob, shape_prob=frame.evidence[k].shape_prob))
        heatmaps = self._heatmaps(frame) if with_heatmaps else None
        return GroundingResult(frame.phrases, detections, label_image, heatmaps, rejected)

    def _grown(self, frame: _Frame, k: int, region):
        """
        Return candidate k's region grown over its object (perception.refine.grow), or as is.

        Only for a phrase that names a shape, and only when the shape head finds the grown
        box at least as much that shape: growth into a same-colour neighbour makes it less so.
        """
        head = getattr(self.clip, 'shape', None)
        shape = head.shape_index(frame.words[frame.owners[k]]) if head is not None else None
        if shape is None:
            return region
        grown = grow(frame.rgb, region, frame.maps[frame.owners[k]])
        if grown is region:
            return region
        before = frame.evidence[k].shape_prob  # the head's answer for the candidate's box
        if region is not frame.regions[k] or not math.isfinite(before):  # redrawn since
            before, after = head.probabilities(frame.rgb, [region.box, grown.box])[:, shape]
        else:
            after = head.probabilities(frame.rgb, [grown.box])[0, shape]
        return grown if after >= before else region

    @staticmethod
    def _heatmaps(frame: _Frame) -> np.ndarray:
        """Return one map per phrase; a phrase refused for its words gets zeros."""
        if len(frame.asked) == len(frame.phrases):
            return frame.maps
        heatmaps = np.zeros((len(frame.phrases), *frame.rgb.shape[:2]), np.float32)
        heatmaps[frame.asked] = frame.maps
        return heatmaps

    def _instances(self, frame: _Frame, budget: int = None) -> tuple:
        """
        Return (phrase index per region, regions) from the frame's thresholded maps.

        At most `budget` regions (default max_candidates), those CLIPSeg is surest about.

        One region per object rather than per blob (perception.regions.instances): a blob is
        cut between the peaks of two touching objects, and the pieces of a broken-up object
        are joined. With shape search, a cut blob the shape head is sure is the named shape
        stays a candidate too (an occluder in front of one object cuts it like two). With a
        shape head, a table-sized candidate adds the blobs standing on it
        (perception.table_split), listed in frame.on_table.
        """
        owners, regions, sure = [], [], {}  # sure: candidate -> the head's answer
        for i, (prob, k) in enumerate(zip(frame.maps, frame.asked)):
            cut = [] if self.shape_search else None
            found = instances(prob, frame.limits[k], self.min_area, cut=cut)
            if cut:
                for whole, p in shape_search.sure_wholes(getattr(self.clip, 'shape', None),
                                                         frame.rgb, cut, frame.words[i]):
                    sure[len(regions) + len(found)] = p
                    found.append(whole)
            owners += [i] * len(found)
            regions += found
        # Bound the CLIP batch on noisy maps: keep the components CLIPSeg is surest about.
        keep = sorted(range(len(regions)), key=lambda k: -regions[k].mean_prob)
        keep = sorted(keep[:max(self.max_candidates if budget is None else budget, 0)])
        frame.shape_probs = {new: sure[old] for new, old in enumerate(keep) if old in sure}
        owners, regions = [owners[k] for k in keep], [regions[k] for k in keep]
        if getattr(self.clip, 'shape', None) is not None:  # its blobs need the head's word
            size = frame.rgb.shape[0] * frame.rgb.shape[1]
            for i, region in list(zip(owners, regions)):
                table = table_split.table_pixels(frame.rgb, region) \
                    if table_split.is_table_sized(region, size) else None
                if table is None:
                    continue
                blobs = table_split.table_blobs(region, table, frame.maps[i])
                frame.on_table.update(range(len(regions), len(regions) + len(blobs)))
                owners += [i] * len(blobs)
                regions += blobs
        return owners, regions

    def _evidence(self, frames: list) -> None:
        """Fill each frame's per-candidate Evidence from its maps and one batched CLIP call."""
        if self.shape_search:
            self._search_shapes(frames)
        for frame in frames:
            frame.evidence = []
            for owner, region in zip(frame.owners, frame.regions):
                row, col = region.offset
                h, w = region.mask.shape
                peak = float(frame.maps[owner, row:row + h, col:col + w][region.mask].max())
                frame.evidence.append(Evidence(math.inf, math.nan,
                                               min(max(region.mean_prob, 0.0), 1.0), peak))
        if self.rescore and any(f.regions for f in frames):
            self._clip_evidence(frames)
        self._shapes(frames)

    def _clip_evidence(self, frames: list) -> None:
        """Fill each candidate's CLIP margin and probability from one batched CLIP call."""
        logits = self._clip_logits_batch(
            [(f.rgb, f.words, f.owners, [r.box for r in f.regions]) for f in frames])
        for frame, (texts, frame_logits) in zip(frames, logits):
            if not frame.regions:
                continue
            margins, probs = _margins(texts, frame_logits, [frame.words[o] for o in frame.owners])
            frame.evidence = [replace(e, margin=float(m), clip_prob=float(p))
                              for m, p, e in zip(margins, probs, frame.evidence)]

    def _shapes(self, frames: list) -> None:
        """
        Fill Evidence.shape_prob of candidates from the model's shape head.

        A phrase that names a shape gets the head's probability of that shape; one that names
        none ("the red one") gets the probability of any object when the head has a
        background class, else nothing. Only candidates the rule's other thresholds accept are
        asked: the others are refused whatever their shape (with the rule off, as calibrate
        runs it, that is every one).
        """
        head = getattr(self.clip, 'shape', None)
        if head is None:
            return
        rule = replace(self.abstain, min_shape=0.0)
        for frame in frames:
            wanted = [(k, head.shape_index(frame.words[o])) for k, o in enumerate(frame.owners)
                      if rule.accepts(frame.evidence[k])]
            wanted = [(k, s) for k, s in wanted if s is not None or head.background]
            if not wanted:
                continue
            ask = [frame.regions[k].box for k, _ in wanted if k not in frame.shape_probs]
            probs = iter(head.probabilities(frame.rgb, ask))
            for k, s in wanted:
                if k in frame.shape_probs:
                    frame.evidence[k] = replace(frame.evidence[k],
                                                shape_prob=frame.shape_probs[k])
                    continue
                p = next(probs)
                shape_prob = p[s] if s is not None else 1.0 - p[-1]
                frame.evidence[k] = replace(frame.evidence[k], shape_prob=float(shape_prob))

    def _search_shapes(self, frames: list) -> None:
        """
        Narrow candidates whose blob holds several objects to the window showing their shape.

        Runs before any evidence, so the map, CLIP and the rule all judge the narrowed region;
        the head's answer is kept in frame.shape_probs for _shapes.
        """
        head = getattr(self.clip, 'shape', None)
        if head is None:
            return
        for frame in frames:
            searched = 0
            for k in sorted(range(len(frame.regions)), key=lambda k: -frame.regions[k].mean_prob):
                owner, region = frame.owners[k], frame.regions[k]
                shape = head.shape_index(frame.words[owner])
                if shape is None or k in frame.shape_probs:  # none, or a sure whole
                    continue
                radius = shape_search.search_radius(region)
                if not radius or searched >= shape_search.MAX_BLOBS:
                    continue
                searched += 1
                row, col = region.offset
                h, w = region.mask.shape
                window_prob = frame.maps[owner, row:row + h, col:col + w]
                answer = self.search_memo.recall(shape, region, frame.rgb, window_prob)
                if answer is None:
                    whole = float(head.probabilities(frame.rgb, [region.box])[0, shape])
                    found = shape_search.search(head, frame.rgb, region, shape, whole,
                                                window_prob, radius)
                    self.search_memo.remember(shape, region, frame.rgb, whole, found)
                else:
                    whole, found = answer
                if found is not None:
                    frame.regions[k] = found[0]
                    frame.narrowed.add(k)
                frame.shape_probs[k] = whole if found is None else found[1]

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
        results = []
        logits_per_frame = self._clip_logits_batch(items)
        for (_, phrases, owners, _), (texts, logits) in zip(items, logits_per_frame):
            if logits is None:
                results.append([])
                continue
            results.append(_margins(texts, logits, [phrases[o] for o in owners])[1].tolist())
        return results

    def _texts(self, phrases) -> list:
        """Return the texts CLIP ranks a crop among: the phrases, distractors and vocabulary."""
        return list(dict.fromkeys([*phrases, *self.distractors, *self.clip.vocabulary]))

    def _clip_logits_batch(self, items) -> list:
        """Return per (rgb, phrases, owners, boxes): (texts, CLIP logits [K, T] or None)."""
        clip = self.clip
        counts = [len(boxes) for _, _, _, boxes in items]
        images = clip.crop_features([(rgb, boxes) for rgb, _, _, boxes in items if len(boxes)],
                                    self.crop_pad) if sum(counts) else None  # [sum K, D]
        results, first = [], 0
        for (_, phrases, _, _), count in zip(items, counts):
            texts = self._texts(phrases)
            if not count:
                results.append((texts, None))
                continue
            text = clip.text_features(texts)  # [T, D]
            frame = images[first:first + count]  # [K, D]
            first += count
            results.append((texts, np.float32(clip.logit_scale) * frame @ text.T))
        return results


def _score(evidence: Evidence) -> float:
    """
    Return the detection score: sqrt(CLIP probability x CLIPSeg mean), or the mean alone.

    With shape evidence, times sqrt(shape probability): of two candidates the rule accepts,
    the one of the named shape ranks first (a big same-colour block before the half-hidden
    cylinder asked for).
    """
    score = evidence.seg_mean if math.isnan(evidence.clip_prob) else float(
        np.sqrt(evidence.clip_prob * evidence.seg_mean))
    if not math.isnan(evidence.shape_prob):
        score *= math.sqrt(max(evidence.shape_prob, 0.0))
    return score


def _margins(texts: list, logits: np.ndarray, queries: list) -> tuple:
    """
    Return (margin, probability) per crop for its query among `texts` (numpy [K] each).

    margin: the best logit of the query or a text that only specialises it ('blue block' for
    'block') minus the best rival's (inf without rivals); probability: the query's softmax over
    itself and its rivals, as in the re-scoring.
    """
    logits = np.asarray(logits, np.float32)
    rivals = rival_mask(texts, queries)  # [K, T]: the query and its rivals
    own = np.zeros_like(rivals)
    own[np.arange(len(queries)), [texts.index(q) for q in queries]] = True
    best_own = np.where(rivals & ~own, -np.inf, logits).max(axis=-1)
    best_rival = np.where(~rivals | own, -np.inf, logits).max(axis=-1)
    with np.errstate(invalid='ignore'):
        margins = np.where(np.isinf(best_rival), np.inf, best_own - best_rival)
    competing = np.where(rivals, logits, -np.inf)
    exp = np.exp(competing - competing.max(axis=-1, keepdims=True))
    probs = (exp / exp.sum(axis=-1, keepdims=True))[own]
    return margins.astype(np.float32), probs.astype(np.float32)


def _colour_margins(texts: list, logits: np.ndarray, queries: list, shapes, margins,
                    probs) -> tuple:
    """
    Return (margin, probability) per crop for its query's colour (table_depth.colour_rivals).

    The query against the texts of its shape in other colours; a query without a shape word
    keeps its margin and probability from _margins.
    """
    margins, probs = margins.copy(), probs.copy()
    for k, query in enumerate(queries):
        rivals = table_depth.colour_rivals(texts, query, shapes)
        if rivals is None:
            continue
        own = float(logits[k, texts.index(query)])
        competing = np.array([own] + [float(logits[k, r]) for r in rivals])
        margins[k] = own - competing[1:].max() if rivals else np.inf
        exp = np.exp(competing - competing.max())
        probs[k] = exp[0] / exp.sum()
    return margins, probs


_ARTICLES = frozenset(('a', 'an', 'the'))


def content_words(text: str) -> frozenset:
    """Return the lower-case words of a phrase (any script) without articles."""
    return frozenset(w for w in words_of(text) if w not in ',&') - _ARTICLES


def rival_mask(texts: list, queries: list) -> np.ndarray:
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
    return np.array([rows[q] for q in queries], dtype=bool).reshape(len(queries), -1)


def _replace_candidates(frame: _Frame, phrases: set, look: _Frame) -> None:
    """Swap the candidates of `phrases` (indices into frame.asked) for those of `look`."""
    keep = [k for k, owner in enumerate(frame.owners) if owner not in phrases]
    index = {k: n for n, k in enumerate(keep)}
    offset = len(keep)

    def moved(old: set, new: set) -> set:
        return {index[k] for k in old if k in index} | {offset + k for k in new}
    frame.owners = [frame.owners[k] for k in keep] + look.owners
    frame.regions = [frame.regions[k] for k in keep] + look.regions
    frame.evidence = [frame.evidence[k] for k in keep] + look.evidence
    frame.shape_probs = {**{index[k]: p for k, p in frame.shape_probs.items() if k in index},
                         **{offset + k: p for k, p in look.shape_probs.items()}}
    frame.narrowed = moved(frame.narrowed, look.narrowed)
    frame.on_table = moved(frame.on_table, look.on_table)
    frame.on_depth = moved(frame.on_depth, look.on_depth)
    frame.zoomed = set(range(offset, offset + len(look.regions)))
    frame.fits = {}  # measured on the candidates' old numbers and maps
    # The map each candidate came from (refinement reads it; the heatmaps return it).
    maps = frame.maps.copy()
    for i in phrases:
        maps[i] = look.maps[i]
    frame.maps = maps
