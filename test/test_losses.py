"""Loss tests: the lecture's worked examples (with corrected numbers) and loss mechanics."""
import math

import pytest
import torch

from clip_ros.learning.losses import (
    ClipLoss, create_loss, gradient_cosine, list_losses, MAX_LOGIT_SCALE, TripletLoss,
    UncertaintyWeighting)

# The lecture's N = 2 example. I1.T1 = 0.56 + 0.42 = 0.98, I1.T2 = 0.56 - 0.42 = 0.14,
# I2.T1 = 0.42 + 0.56 = 0.98, I2.T2 = 0.42 - 0.56 = -0.14. The T vectors have norm 0.99, not 1,
# so the similarity matrix is reproduced with normalize=False (dot products as given).
IMAGES = torch.tensor([[0.8, 0.6], [0.6, 0.8]], dtype=torch.float64)
TEXTS = torch.tensor([[0.7, 0.7], [0.7, -0.7]], dtype=torch.float64)
SIMILARITY = [[0.98, 0.14], [0.98, -0.14]]


def close(actual: torch.Tensor, expected, atol: float):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=atol,
                               rtol=0)


def lecture_loss(**kwargs) -> ClipLoss:
    return ClipLoss(temperature=0.07, normalize=False, **kwargs).double()


def test_lecture_n2_logits():
    loss = lecture_loss()
    close(loss.similarity(IMAGES, TEXTS), SIMILARITY, 1e-12)
    logits_per_image, logits_per_text = loss.get_logits(IMAGES, TEXTS)
    # 0.98 / 0.07 = 14.0, 0.14 / 0.07 = 2.0, -0.14 / 0.07 = -2.0 (tau is stored in float32)
    close(logits_per_image, [[14.0, 2.0], [14.0, -2.0]], 1e-6)
    close(logits_per_text, [[14.0, 14.0], [2.0, -2.0]], 1e-6)


def test_lecture_n2_losses():
    out = lecture_loss()(IMAGES, TEXTS, output_dict=True)
    # Image -> text, rows of [[14, 2], [14, -2]] with targets 0 and 1:
    #   I1: -log(e^14 / (e^14 + e^2)) = log(1 + e^(2 - 14)) = log(1 + e^-12) ~= 6.1442e-06
    #   I2: -log(e^-2 / (e^14 + e^-2)) = 16 + log(1 + e^-16) ~= 16.0000 (16.00000011)
    #   mean = 8.0000031
    # Text -> image, columns [14, 14] (target 0) and [2, -2] (target 1):
    #   T1: -log(e^14 / (e^14 + e^14)) = log 2 ~= 0.6931
    #   T2: -log(e^-2 / (e^2 + e^-2)) = 4 + log(1 + e^-4) ~= 4.0181 (softmax 0.0180, as lectured)
    #   mean = 2.3556
    # Symmetric: (8.0000031 + 2.3556486) / 2 ~= 5.1778
    assert out['image_to_text'].item() == pytest.approx(8.0000031, abs=1e-6)
    assert out['text_to_image'].item() == pytest.approx(2.3556486, abs=1e-6)
    assert out['loss'].item() == pytest.approx(5.1778258, abs=1e-6)
    # The lecture's T2 term alone: softmax 0.0180, CE 4.0181.
    _, logits_per_text = lecture_loss().get_logits(IMAGES, TEXTS)
    assert torch.softmax(logits_per_text[1], 0)[1].item() == pytest.approx(0.017986, abs=1e-6)
    assert ClipLoss.cross_entropy(logits_per_text[1:], torch.tensor([1])).item() == \
        pytest.approx(4.0181499, abs=1e-6)


def test_temperature_one_softens():
    loss = ClipLoss(temperature=1.0, normalize=False)
    logits, _ = loss.get_logits(torch.tensor([[1.0]]), torch.tensor([[1.0], [0.2]]))
    # e^1 / (e^1 + e^0.2) = 1 / (1 + e^-0.8) = 0.68997 (the lecture's 0.67 is a rounding slip)
    assert torch.softmax(logits[0], 0).tolist() == pytest.approx([0.690, 0.310], abs=5e-4)
    sharp, _ = ClipLoss(normalize=False).get_logits(torch.tensor([[1.0]]),
                                                    torch.tensor([[1.0], [0.2]]))
    # tau = 0.07: e^14.29 / (e^14.29 + e^2.86) = 0.99999
    assert torch.softmax(sharp[0], 0)[0].item() == pytest.approx(0.99999, abs=1e-5)


def test_cross_entropy_lecture_example():
    # -log(e^2 / (e^2 + e^0.5)) = log(1 + e^-1.5) = 0.2014 (the lecture's 0.12 is wrong)
    value = ClipLoss.cross_entropy(torch.tensor([[2.0, 0.5]]), torch.tensor([0]))
    assert value.item() == pytest.approx(0.201, abs=5e-4)


def test_default_temperature_and_clamp():
    loss = ClipLoss()
    assert loss.logit_scale.item() == pytest.approx(1 / 0.07)
    assert loss.temperature == pytest.approx(0.07)
    assert loss.log_logit_scale.requires_grad
    with torch.no_grad():
        loss.log_logit_scale.fill_(10.0)  # scale e^10, far above the bound
    assert loss.logit_scale.item() == pytest.approx(MAX_LOGIT_SCALE)
    loss.clamp_()
    assert loss.log_logit_scale.item() == pytest.approx(math.log(MAX_LOGIT_SCALE))
    fixed = ClipLoss(learn_temperature=False)
    assert not list(fixed.parameters())
    with pytest.raises(ValueError, match='temperature'):
        ClipLoss(temperature=0.0)


def test_logit_scale_override_and_gradient():
    loss = ClipLoss(normalize=False).double()
    out = loss(IMAGES, TEXTS, logit_scale=torch.tensor(1 / 0.07, dtype=torch.float64))
    assert out.item() == pytest.approx(5.1778258, abs=1e-6)
    loss(IMAGES, TEXTS).backward()
    assert loss.log_logit_scale.grad is not None


def test_unique_labels_equal_plain_loss():
    torch.manual_seed(0)
    images, texts = torch.randn(5, 8), torch.randn(5, 8)
    loss = ClipLoss()
    assert loss(images, texts, labels=torch.arange(5)).item() == \
        pytest.approx(loss(images, texts).item(), rel=1e-6)


def test_duplicate_captions_are_positives():
    loss = ClipLoss(temperature=1.0, normalize=False)
    targets = loss.get_ground_truth(3, 'cpu', labels=torch.tensor([7, 7, 3]))
    assert targets.tolist() == [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]
    # Texts 0 and 1 are the same caption, so image 0 scores both equally: logits row [1, 1, 0].
    images = torch.eye(3)
    texts = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    out = loss(images, texts, labels=[7, 7, 3], output_dict=True)
    # Rows 0, 1: -(0.5 log p + 0.5 log p), p = e / (2e + 1) -> log(2 + e^-1) = 0.8620
    # Row 2 [0, 0, 1]: log(2 e^-1 + 1) = 0.5514; mean = (2 * 0.8620 + 0.5514) / 3 = 0.7585
    expected = (2 * math.log(2 + math.exp(-1)) + math.log(1 + 2 * math.exp(-1))) / 3
    assert out['image_to_text'].item() == pytest.approx(expected, abs=1e-6)
    # Image 0 now prefers the duplicate text 1: logits row [0, 2, 0]. With labels the CE is
    # log(2 + e^2) - 1 = 1.2395; as a negative (no labels) it is log(2 + e^2) = 2.2395.
    # Rows 1 and 2 are unchanged, so the image -> text means differ by exactly 1/3.
    texts[0] = torch.tensor([0.0, 1.0, 0.0])
    texts[1, 0] = 2.0
    with_labels = loss(images, texts, labels=[7, 7, 3], output_dict=True)['image_to_text']
    without = loss(images, texts, output_dict=True)['image_to_text']
    assert (without - with_labels).item() == pytest.approx(1 / 3, abs=1e-6)
    with pytest.raises(ValueError, match='labels'):
        loss(images, texts, labels=[1, 2])


def test_shape_errors():
    loss = ClipLoss()
    with pytest.raises(ValueError, match='one text per image'):
        loss(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match='same D'):
        loss(torch.randn(3, 4), torch.randn(3, 5))


def triplet_inputs():
    # Identity images and texts = S^T give image @ text^T = S = [[0.9, 0.3], [0.5, 0.4]].
    sim = torch.tensor([[0.9, 0.3], [0.5, 0.4]])
    return torch.eye(2), sim.T.contiguous()


def test_triplet_hand_example():
    images, texts = triplet_inputs()
    out = TripletLoss(margin=0.2, normalize=False)(images, texts, output_dict=True)
    # Image anchors: max(0, 0.3 - 0.9 + 0.2) = 0, max(0, 0.5 - 0.4 + 0.2) = 0.3 -> mean 0.15
    # Text anchors: max(0, 0.5 - 0.9 + 0.2) = 0, max(0, 0.3 - 0.4 + 0.2) = 0.1 -> mean 0.05
    assert out['image_to_text'].item() == pytest.approx(0.15)
    assert out['text_to_image'].item() == pytest.approx(0.05)
    assert out['loss'].item() == pytest.approx(0.10)


def test_triplet_all_negatives_and_duplicates():
    sim = torch.tensor([[0.8, 0.6, 0.1], [0.2, 0.5, 0.4], [0.0, 0.3, 0.9]])
    images, texts = torch.eye(3), sim.T.contiguous()
    loss = TripletLoss(margin=0.1, negatives='all', normalize=False)
    # Image 0: hinges over texts 1, 2: max(0, 0.6 - 0.8 + 0.1) = 0, 0 -> 0
    # Image 1: 0.2 - 0.5 + 0.1 < 0, max(0, 0.4 - 0.5 + 0.1) = 0 -> 0
    # Image 2: 0 - 0.9 + 0.1 < 0, 0.3 - 0.9 + 0.1 < 0 -> 0
    assert loss(images, texts, output_dict=True)['image_to_text'].item() == pytest.approx(0.0)
    hard = TripletLoss(margin=0.3, negatives='hardest', normalize=False)
    # Image 0: hardest negative 0.6: 0.6 - 0.8 + 0.3 = 0.1; image 1: 0.4 - 0.5 + 0.3 = 0.2;
    # image 2: 0.3 - 0.9 + 0.3 < 0 -> mean 0.1
    assert hard(images, texts, output_dict=True)['image_to_text'].item() == pytest.approx(0.1)
    # Texts 0 and 1 share a caption: the 0.6 negative of image 0 and 0.2 of image 1 drop out.
    # Image 0: 0.1 - 0.8 + 0.3 < 0; image 1: 0.4 - 0.5 + 0.3 = 0.2; image 2 -> mean 0.2 / 3
    dup = hard(images, texts, labels=[0, 0, 1], output_dict=True)['image_to_text']
    assert dup.item() == pytest.approx(0.2 / 3)
    with pytest.raises(ValueError, match='hardest, all'):
        TripletLoss(negatives='semi')


def test_create_loss():
    assert list_losses() == ['clip', 'triplet']
    assert isinstance(create_loss('clip'), ClipLoss)
    assert create_loss(' Triplet ', margin=0.5).margin == 0.5
    with pytest.raises(ValueError, match='clip, triplet'):
        create_loss('siglip')


def test_uncertainty_weighting():
    weighting = UncertaintyWeighting(2)
    losses = [torch.tensor(2.0), torch.tensor(0.5)]
    total = weighting(losses)
    # s = 0: 1 * 2.0 + 0 + 1 * 0.5 + 0 = 2.5
    assert total.item() == pytest.approx(2.5)
    total.backward()
    # d/ds_i = 1 - exp(-s_i) L_i = [1 - 2, 1 - 0.5]
    assert weighting.log_vars.grad.tolist() == pytest.approx([-1.0, 0.5])
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor([math.log(2.0), math.log(0.5)]))
    # Optimum s_i = log L_i: 1 + log 2 + 1 + log 0.5 = 2.0
    assert weighting(losses).item() == pytest.approx(2.0)
    assert weighting.weights().tolist() == pytest.approx([0.5, 2.0])
    with pytest.raises(ValueError, match='expected 2 losses'):
        weighting([torch.tensor(1.0)])


def test_gradient_cosine():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    unused = torch.nn.Parameter(torch.tensor(3.0))
    loss = (w ** 2).sum()
    assert gradient_cosine(loss, loss * 3, [w, unused]) == pytest.approx(1.0)
    # grad of w0 is [1, 0], of -w0 is [-1, 0], of w1 is [0, 1]
    assert gradient_cosine(w[0], -w[0], [w]) == pytest.approx(-1.0)
    assert gradient_cosine(w[0], w[1], [w]) == pytest.approx(0.0)
    assert gradient_cosine(w[0], unused * 2, [w]) == 0.0
    # w[0] reaches only w; shared_only drops `unused`, so -w0 + 5 unused is anti-parallel.
    assert gradient_cosine(w[0], -w[0] + 5 * unused, [w, unused]) == pytest.approx(-1 / 26 ** 0.5)
    assert gradient_cosine(w[0], -w[0] + 5 * unused, [w, unused], shared_only=True) == \
        pytest.approx(-1.0)
    assert gradient_cosine(w[0], unused * 2, [w, unused], shared_only=True) == 0.0
    loss.backward()  # graphs are retained for the caller
