"""Grounding pipeline with the tiny random CLIP and CLIPSeg on a synthetic tabletop."""
import math

import numpy as np
import pytest

from clip_ros.perception.grounding import (
    AbstainRule, check_thresholds, content_words, DEFAULT_DISTRACTORS, GroundingPipeline,
    rival_mask)
from clip_ros.perception.loading import load_clip, load_clipseg
from clip_ros.sim.synthetic import COLOURS, scene_image, TABLE_RGB

W, H = 96, 64
OFF = AbstainRule.off()
PHRASES = ['red block', 'blue ball']


@pytest.fixture(scope='module')
def models():
    return load_clip('tiny', '', device='cpu'), load_clipseg('tiny', device='cpu')


@pytest.fixture(scope='module')
def rgb():
    image, _ = scene_image(seed=3, width=W, height=H, count=2)
    return image


@pytest.fixture
def pipeline(models):
    return GroundingPipeline(*models, min_area=4)


def _median_thresholds(pipeline, rgb):
    """Thresholds at each phrase's median probability, so the maps split into several parts."""
    maps = pipeline(rgb, PHRASES, thresholds=0.0).heatmaps
    return [float(np.median(m)) for m in maps]


def test_zero_threshold_gives_full_image_detections(pipeline, rgb):
    result = pipeline(rgb, PHRASES, thresholds=0.0)
    assert [d.box for d in result.detections] == [(0.0, 0.0, float(W), float(H))] * 2
    assert sorted(d.phrase for d in result.detections) == sorted(PHRASES)
    assert all(d.area == W * H for d in result.detections)
    assert result.detections[0].centroid == pytest.approx((W / 2, H / 2))
    # Both cover the frame; the higher-scoring one owns every pixel.
    assert (result.label_image == 1).all()


def test_output_shapes_and_dtypes(pipeline, rgb):
    result = pipeline(rgb, PHRASES, thresholds=0.3)
    assert result.phrases == PHRASES
    assert result.heatmaps.dtype == np.float32 and result.heatmaps.shape == (2, H, W)
    assert ((result.heatmaps >= 0) & (result.heatmaps <= 1)).all()
    assert result.label_image.dtype == np.uint16 and result.label_image.shape == (H, W)
    assert pipeline(rgb, PHRASES, thresholds=0.3, with_heatmaps=False).heatmaps is None


def test_label_image_matches_detections(models, rgb):
    # Regions as thresholded from the maps (perception.refine redraws small ones from colours).
    pipeline = GroundingPipeline(*models, min_area=4, refine_masks=False)
    result = pipeline(rgb, PHRASES, thresholds=_median_thresholds(pipeline, rgb))
    dets = result.detections
    assert len(dets) >= 2
    assert [d.index for d in dets] == list(range(len(dets)))
    scores = [d.score for d in dets]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    # A detection fully covered by higher-scoring ones of another phrase keeps no pixels.
    assert 1 <= result.label_image.max() <= len(dets)
    limits = np.asarray(_median_thresholds(pipeline, rgb))[:, None, None]
    visible = 0
    for d in dets:
        ys, xs = np.nonzero(result.label_image == d.index + 1)
        assert len(xs) <= d.area and d.area >= pipeline.min_area
        assert isinstance(d.centroid[0], float) and isinstance(d.box[0], float)
        assert d.box[2] - d.box[0] == d.center_size[2]
        if len(xs):
            visible += 1
            x0, y0, x1, y1 = d.box
            assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
            phrase = PHRASES.index(d.phrase)
            assert (result.heatmaps[phrase, ys, xs] > limits[phrase, 0, 0]).all()
    assert visible >= 2 and (result.label_image == 1).sum() == dets[0].area
    # Background: pixels no phrase map exceeds its threshold stay 0.
    below = (result.heatmaps <= limits).all(axis=0)
    assert below.any() and (result.label_image[below] == 0).all()


def test_per_phrase_thresholds(pipeline, rgb):
    result = pipeline(rgb, PHRASES, thresholds=[0.0, 1.0])
    assert [d.phrase for d in result.detections] == ['red block']
    assert result.detections[0].box == (0.0, 0.0, float(W), float(H))
    assert pipeline(rgb, PHRASES, thresholds=1.0).detections == []
    assert not pipeline(rgb, PHRASES, thresholds=1.0).label_image.any()


@pytest.mark.parametrize('thresholds, reason', [
    ([0.5], '1 thresholds for 2 phrases'),
    ([0.5, 0.5, 0.5], '3 thresholds for 2 phrases'),
    (1.5, r'in \[0, 1\]'),
    ([0.2, -0.1], r'in \[0, 1\]'),
    (float('nan'), r'in \[0, 1\]'),
    (['a', 'b'], 'list of floats'),
])
def test_threshold_validation(pipeline, rgb, thresholds, reason):
    with pytest.raises(ValueError, match=reason):
        pipeline(rgb, PHRASES, thresholds=thresholds)


def test_input_validation(pipeline, rgb):
    with pytest.raises(ValueError, match='no phrases'):
        pipeline(rgb, [])
    with pytest.raises(ValueError, match='uint8'):
        pipeline(rgb.astype(np.float32), PHRASES)
    with pytest.raises(ValueError, match='channels'):
        pipeline(rgb[..., :2], PHRASES)
    assert check_thresholds(0.25, 3) == [0.25, 0.25, 0.25]
    assert check_thresholds(np.array(0.25), 2) == [0.25, 0.25]  # a 0-d array is one float


def test_min_area_and_max_detections(models, rgb):
    assert GroundingPipeline(*models, min_area=W * H + 1)(rgb, PHRASES, 0.0).detections == []
    pipeline = GroundingPipeline(*models, min_area=1, max_detections=1)
    result = pipeline(rgb, PHRASES, thresholds=0.0)
    assert len(result.detections) == 1 and result.label_image.max() == 1
    # Every other phrase says why it has no detection.
    for phrase in set(PHRASES) - {result.detections[0].phrase}:
        assert phrase in result.rejected, (phrase, result.rejected)
    with pytest.raises(ValueError, match='max_detections'):
        GroundingPipeline(*models, max_detections=0)


def blue_blocks(rows: int, cols: int, side: int = 40, pitch: int = 75) -> tuple:
    """Draw rows x cols separate blue blocks on the table; return (rgb, block boxes)."""
    rgb = np.empty((20 + rows * pitch, 20 + cols * pitch, 3), np.uint8)
    rgb[:] = TABLE_RGB
    boxes = []
    for row in range(rows):
        for col in range(cols):
            x0, y0 = 20 + col * pitch, 15 + row * pitch
            rgb[y0:y0 + side, x0:x0 + side] = COLOURS['blue']
            boxes.append((x0, y0, x0 + side, y0 + side))
    return rgb, boxes


def block_under(point, boxes) -> int:
    """Return the index of the box containing `point`, or -1."""
    x, y = point
    return next((i for i, (x0, y0, x1, y1) in enumerate(boxes)
                 if x0 <= x < x1 and y0 <= y < y1), -1)


def test_max_detections_keeps_the_best_of_many_instances():
    # The bundled tabletop model finds each of twelve separate blue blocks: more candidate
    # instances than the limits under test (the abstention rule off: the limit is under test).
    models = load_clip('tabletop', device='cpu'), load_clipseg('tabletop', device='cpu')
    rgb, blocks = blue_blocks(3, 4)
    every = GroundingPipeline(*models, abstain=OFF, min_area=16, max_detections=64)(
        rgb, ['blue block'], 0.4)
    assert sorted(block_under(d.centroid, blocks) for d in every.detections) == list(
        range(len(blocks))), [d.box for d in every.detections]
    assert GroundingPipeline(*models, abstain=OFF, min_area=16)(
        rgb, ['red block'], 0.4).detections == []
    for limit in (1, 5, 11):
        result = GroundingPipeline(*models, abstain=OFF, min_area=16, max_detections=limit)(
            rgb, ['blue block'], 0.4)
        assert len(result.detections) == limit and result.label_image.max() == limit
        # The limit keeps the best-scoring instances, in score order.
        assert [d.box for d in result.detections] == [d.box for d in every.detections[:limit]]
        assert [d.score for d in result.detections] == pytest.approx(
            [d.score for d in every.detections[:limit]])


def test_phrases_with_the_same_model_words_are_grounded_once():
    models = load_clip('tabletop', device='cpu'), load_clipseg('tabletop', device='cpu')
    rgb, _ = blue_blocks(1, 2)
    result = GroundingPipeline(*models, abstain=OFF, min_area=16)(
        rgb, ['blue block', 'blue cube', 'the blue block'], 0.4)
    assert {d.phrase for d in result.detections} == {'blue block'}
    assert all((result.label_image == d.index + 1).sum() > 0 for d in result.detections)
    assert result.rejected == dict.fromkeys(('blue cube', 'the blue block'),
                                            "same words as 'blue block': 'blue block'")
    # The same phrase twice is asked once, and is no refusal of itself.
    twice = GroundingPipeline(*models, abstain=OFF, min_area=16)(
        rgb, ['blue block', 'blue block'], 0.4)
    assert twice.detections and twice.rejected == {}


def test_an_open_model_asks_a_phrase_once_whatever_its_case_and_refuses_empty_ones_or_long():
    pipeline = GroundingPipeline(load_clip('tiny', '', device='cpu'),
                                 load_clipseg('tiny', device='cpu'), min_area=4)
    rgb, _ = blue_blocks(1, 2)
    rambling = 'blue block ' + ' '.join(['and then some more'] * 20)  # one sentence, no stop
    result = pipeline(rgb, ['blue block', 'Blue  Block', '  ', rambling], 0.0)
    assert {d.phrase for d in result.detections} <= {'blue block'}
    assert result.rejected == {'Blue  Block': "same words as 'blue block': 'Blue  Block'",
                               '  ': 'empty phrase',
                               rambling: 'phrase too long: 82 tokens, the text encoder reads 75'}


@pytest.mark.parametrize('phrases', [b'blue block', None, 5, np.array('blue block')])
def test_phrases_that_are_no_list_of_strings_are_refused_with_the_reason(phrases):
    pipeline = GroundingPipeline(load_clip('tiny', '', device='cpu'),
                                 load_clipseg('tiny', device='cpu'))
    with pytest.raises(ValueError, match='phrases must be a list of strings'):
        pipeline(np.zeros((32, 32, 3), np.uint8), phrases, 0.4)


def test_rivals_are_read_in_any_script():
    # Words of any script count: a phrase in Cyrillic has the other texts as rivals.
    assert content_words('Красный куб') == {'красный', 'куб'}
    assert rival_mask(['красный куб', 'синий шар'], ['красный куб']).tolist() == [[True, True]]


def test_score_is_geometric_mean_of_clip_and_clipseg(models, rgb, monkeypatch):
    clip = models[0]
    calls = []
    encode = clip.encode_images
    monkeypatch.setattr(clip, 'encode_images', lambda px: calls.append(len(px)) or encode(px))
    pipeline = GroundingPipeline(*models, min_area=4, max_detections=2)
    result = pipeline(rgb, PHRASES, thresholds=_median_thresholds(pipeline, rgb))
    # One call per frame: 2 full-image regions at threshold 0, then every median-split part.
    assert len(calls) == 2 and calls[0] == 2 and calls[1] > len(result.detections) == 2
    boxes = [d.box for d in result.detections]
    owners = [PHRASES.index(d.phrase) for d in result.detections]
    clip_probs = pipeline.clip_probabilities(rgb, PHRASES, owners, boxes)
    for d, c in zip(result.detections, clip_probs):
        assert 0.0 < c < 1.0
        assert d.score == pytest.approx(math.sqrt(c * d.mean_prob), rel=1e-5)


def test_rescore_off_uses_clipseg_mean(models, rgb):
    result = GroundingPipeline(*models, rescore=False)(rgb, PHRASES, thresholds=0.0)
    assert [d.score for d in result.detections] == [d.mean_prob for d in result.detections]


def test_distractor_equal_to_phrase_is_not_duplicated(models, rgb):
    pipeline = GroundingPipeline(*models)
    probs = pipeline.clip_probabilities(rgb, ['background'], [0], [(0, 0, W, H)])
    texts = ['background'] + [t for t in DEFAULT_DISTRACTORS if t != 'background']
    image = pipeline.clip.encode_images(pipeline_crop(pipeline, rgb))
    logits = pipeline.clip.logit_scale * image @ pipeline.clip.encode_text(texts).T
    assert probs[0] == pytest.approx(float(logits.softmax(-1)[0, 0]), rel=1e-5)


def test_rival_mask_keeps_specialisations_out():
    texts = ['block', 'the blue block', 'blue', 'blue block', 'red block', 'blue ball']
    mask = rival_mask(texts, ['block', 'the blue block', 'blue'])
    assert mask.tolist() == [
        [True, False, True, False, False, True],  # a 'blue block' is a kind of 'block'
        [True, True, True, False, True, True],    # 'blue block' only drops the article
        [True, False, True, False, True, False],  # everything blue is a 'blue'
    ]


def test_vocabulary_competes_in_rescoring(models, rgb):
    from dataclasses import replace
    clip = replace(models[0], vocabulary=('red block', 'green block', 'red ball'))
    pipeline = GroundingPipeline(clip, models[1], distractors=('background',))
    probs = pipeline.clip_probabilities(rgb, ['block'], [0], [(0, 0, W, H)])
    texts = ['block', 'background', 'red ball']  # the two blocks only specialise the query
    image = clip.encode_images(pipeline_crop(pipeline, rgb))
    logits = clip.logit_scale * image @ clip.encode_text(texts).T
    assert probs[0] == pytest.approx(float(logits.softmax(-1)[0, 0]), rel=1e-5)


def pipeline_crop(pipeline, rgb):
    from clip_ros.perception.image import crops
    clip = pipeline.clip
    return crops(rgb, [(0, 0, W, H)], clip.image_size, clip.mean, clip.std, clip.device,
                 clip.dtype, pad=pipeline.crop_pad)


def test_text_encoded_once_across_frames(models):
    clip = models[0]
    pipeline = GroundingPipeline(*models, min_area=1)
    frames = [scene_image(seed=s, width=W, height=H, count=2)[0] for s in (10, 11, 12)]
    pipeline(frames[0], ['green bowl', 'yellow ball'], thresholds=0.0)
    clip_misses = clip.text_cache.misses
    seg_misses = pipeline.runner.text_cache.misses
    for frame in frames[1:]:
        pipeline(frame, ['green bowl', 'yellow ball'], thresholds=0.0)
    assert clip.text_cache.misses == clip_misses
    assert pipeline.runner.text_cache.misses == seg_misses
    assert clip.text_cache.hits > 0 and pipeline.runner.text_cache.hits > 0


def test_max_candidates_bounds_the_clip_batch(models, rgb, monkeypatch):
    clip = models[0]
    calls = []
    encode = clip.encode_images
    monkeypatch.setattr(clip, 'encode_images', lambda px: calls.append(len(px)) or encode(px))
    pipeline = GroundingPipeline(*models, min_area=1, max_detections=2, max_candidates=3)
    thresholds = _median_thresholds(pipeline, rgb)
    result = pipeline(rgb, PHRASES, thresholds=thresholds)
    assert calls[-1] == 3 and len(result.detections) == 2
    # The kept candidates are the three with the highest CLIPSeg mean probability.
    every = GroundingPipeline(*models, min_area=1, max_candidates=1000, max_detections=1000,
                              rescore=False)(rgb, PHRASES, thresholds=thresholds)
    top = sorted((d.mean_prob for d in every.detections), reverse=True)[:3]
    assert all(d.mean_prob >= top[-1] for d in result.detections)
    with pytest.raises(ValueError, match='max_candidates'):
        GroundingPipeline(*models, max_detections=5, max_candidates=4)
