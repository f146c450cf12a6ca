"""Image-text losses as nn.Modules: CLIP contrastive, triplet, and uncertainty weighting."""
import math

import torch
from torch import nn
import torch.nn.functional as F

__all__ = [
    'ClipLoss', 'create_loss', 'DEFAULT_TEMPERATURE', 'gradient_cosine', 'list_losses',
    'MAX_LOGIT_SCALE', 'PairLoss', 'TripletLoss', 'UncertaintyWeighting',
]

# CLIP's initial temperature; its inverse (about 14.3) is the initial logit scale.
DEFAULT_TEMPERATURE = 0.07
# CLIP clamps the learned logit scale at 100 (temperature >= 0.01) to keep training stable.
MAX_LOGIT_SCALE = 100.0


class PairLoss(nn.Module):
    """
    Base of losses over a batch of N (image, text) pairs; pair i is (image_i, text_i).

    Parameters
    ----------
    normalize
        L2-normalise the features first, so similarities are cosines (the lecture's s_ij).
        False uses the features' dot products as given.

    """

    def __init__(self, normalize: bool = True):
        super().__init__()
        self.normalize = normalize

    def positive_mask(self, num: int, device, labels=None) -> torch.Tensor:
        """
        Return the bool [num, num] matrix of positive (image i, text j) pairs.

        Parameters
        ----------
        num
            batch size N.
        device
            device of the result.
        labels
            optional caption id per pair [N]; pairs with equal ids are all positives
            (a caption repeated in the batch). None: only the diagonal.

        Returns
        -------
        Bool tensor [N, N].

        """
        if labels is None:
            return torch.eye(num, dtype=torch.bool, device=device)
        labels = torch.as_tensor(labels, device=device)
        if labels.shape != (num,):
            raise ValueError(f'labels must have shape [{num}], got {list(labels.shape)}')
        return labels[:, None] == labels[None, :]

    def similarity(self, image_features: torch.Tensor, text_features: torch.Tensor):
        """Return s [N_image, N_text]: cosine similarities (dot products if not normalising)."""
        if image_features.ndim != 2 or image_features.shape[1:] != text_features.shape[1:]:
            raise ValueError(
                'features must be [N, D] with the same D, got image '
                f'{list(image_features.shape)} and text {list(text_features.shape)}')
        if self.normalize:
            image_features = F.normalize(image_features, dim=-1)
            text_features = F.normalize(text_features, dim=-1)
        return image_features @ text_features.T

    @staticmethod
    def _check_pairs(image_features, text_features):
        if image_features.shape[0] != text_features.shape[0]:
            raise ValueError(
                f'need one text per image, got {image_features.shape[0]} images and '
                f'{text_features.shape[0]} texts')


class ClipLoss(PairLoss):
    """
    CLIP's symmetric contrastive loss with a learned temperature.

    logits_ij = s_ij / tau; loss = (CE(image -> text) + CE(text -> image)) / 2, each CE the mean
    over the N rows. The temperature is learned as log(1 / tau) (as in CLIP), starts at
    `temperature` and is clamped so that 1 / tau <= `max_logit_scale`.

    Duplicate captions: with `labels`, every pair that shares a caption id is a positive. The
    targets are the positive mask normalised per row (soft targets summing to 1), so an image
    whose caption occurs k times in the batch puts 1/k on each copy instead of calling k - 1
    correct texts negatives. With unique captions this equals the usual one-hot CE.

    Parameters
    ----------
    temperature
        initial tau (> 0); 0.07 as in CLIP.
    learn_temperature
        whether tau is a trainable parameter (else a fixed buffer).
    max_logit_scale
        upper bound of 1 / tau.
    normalize
        L2-normalise features (cosine similarity).

    """

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, learn_temperature: bool = True,
                 max_logit_scale: float = MAX_LOGIT_SCALE, normalize: bool = True):
        super().__init__(normalize)
        if not temperature > 0 or not max_logit_scale > 0:
            raise ValueError(
                f'temperature and max_logit_scale must be > 0, got {temperature}, '
                f'{max_logit_scale}')
        self.max_log_scale = math.log(max_logit_scale)
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer('log_logit_scale', log_scale)

    @property
    def logit_scale(self) -> torch.Tensor:
        """Return 1 / tau, clamped at the maximum (differentiable below it)."""
        return self.log_logit_scale.clamp(max=self.max_log_scale).exp()

    @property
    def temperature(self) -> float:
        """Return the current tau."""
        return float(1.0 / self.logit_scale.detach())

    @torch.no_grad()
    def clamp_(self):
        """Clamp the stored parameter in place (after an optimiser step, as CLIP does)."""
        self.log_logit_scale.clamp_(max=self.max_log_scale)

    def get_ground_truth(self, num: int, device, labels=None) -> torch.Tensor:
        """
        Return CE targets for N pairs.

        Returns
        -------
        Class indices arange(N) without labels; with labels, float soft targets [N, N]: the
        positive mask divided by its row sums.

        """
        if labels is None:
            return torch.arange(num, device=device)
        mask = self.positive_mask(num, device, labels).float()
        return mask / mask.sum(dim=1, keepdim=True)

    def get_logits(self, image_features, text_features, logit_scale=None):
        """
        Return (logits_per_image [N_i, N_t], logits_per_text [N_t, N_i]) = scale * s.

        Parameters
        ----------
        image_features, text_features
            [N_i, D] and [N_t, D].
        logit_scale
            overrides the loss's own 1 / tau (e.g. a pretrained model's); None uses it.

        """
        scale = self.logit_scale if logit_scale is None else logit_scale
        logits_per_image = scale * self.similarity(image_features, text_features)
        return logits_per_image, logits_per_image.T

    @staticmethod
    def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return mean CE of logits [N, C] against class indices [N] or probabilities [N, C]."""
        return F.cross_entropy(logits, targets)

    def forward(self, image_features, text_features, labels=None, logit_scale=None,
                output_dict: bool = False):
        """
        Compute the symmetric loss of N pairs of features [N, D].

        Parameters
        ----------
        image_features, text_features
            [N, D] each; row i of both is pair i.
        labels
            optional caption id per pair [N] (duplicates become positives).
        logit_scale
            optional override of 1 / tau.
        output_dict
            also return both directions.

        Returns
        -------
        Scalar loss, or {'loss', 'image_to_text', 'text_to_image'} with output_dict.

        """
        self._check_pairs(image_features, text_features)
        logits_per_image, logits_per_text = self.get_logits(
            image_features, text_features, logit_scale)
        targets = self.get_ground_truth(image_features.shape[0], image_features.device, labels)
        # The positive mask is symmetric and so is its row normalisation: same targets both ways.
        image_to_text = self.cross_entropy(logits_per_image, targets)
        text_to_image = self.cross_entropy(logits_per_text, targets)
        loss = (image_to_text + text_to_image) / 2
        if output_dict:
            return {'loss': loss, 'image_to_text': image_to_text, 'text_to_image': text_to_image}
        return loss


class TripletLoss(PairLoss):
    """
    Margin (triplet) loss on cosine similarities, both directions, for comparison with CLIP.

    For anchor image i with positive text i: max(0, s(i, n) - s(i, i) + margin) over negative
    texts n; likewise with text anchors. Pairs that share a caption id are never negatives.
    The loss is the mean over anchors, then over the two directions.

    Parameters
    ----------
    margin
        required gap between positive and negative similarity.
    negatives
        'hardest': only the most similar negative per anchor (VSE++); 'all': mean hinge over
        all negatives.
    normalize
        L2-normalise features (cosine similarity).

    """

    NEGATIVES = ('hardest', 'all')

    def __init__(self, margin: float = 0.2, negatives: str = 'hardest', normalize: bool = True):
        super().__init__(normalize)
        if negatives not in self.NEGATIVES:
            raise ValueError(
                f"unknown negatives '{negatives}'; valid: {', '.join(self.NEGATIVES)}")
        self.margin = margin
        self.negatives = negatives

    def get_ground_truth(self, num: int, device, labels=None) -> torch.Tensor:
        """Return the bool [N, N] mask of pairs that may not be used as negatives."""
        return self.positive_mask(num, device, labels)

    def get_logits(self, image_features, text_features):
        """Return (s [N_i, N_t], s.T): similarities, no temperature."""
        sim = self.similarity(image_features, text_features)
        return sim, sim.T

    def _direction(self, sim: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        # sim [anchors, candidates]; the paired candidate of anchor i is i.
        hinge = (self.margin + sim - sim.diagonal()[:, None]).clamp(min=0)
        hinge = hinge.masked_fill(positives, 0.0)
        if self.negatives == 'hardest':
            return hinge.max(dim=1).values.mean()
        count = (~positives).sum(dim=1).clamp(min=1)
        return (hinge.sum(dim=1) / count).mean()

    def forward(self, image_features, text_features, labels=None, output_dict: bool = False):
        """
        Compute the symmetric triplet loss of N pairs of features [N, D].

        Returns
        -------
        Scalar loss, or {'loss', 'image_to_text', 'text_to_image'} with output_dict.

        """
        self._check_pairs(image_features, text_features)
        sim, sim_t = self.get_logits(image_features, text_features)
        positives = self.get_ground_truth(sim.shape[0], sim.device, labels)
        image_to_text = self._direction(sim, positives)
        text_to_image = self._direction(sim_t, positives.T)
        loss = (image_to_text + text_to_image) / 2
        if output_dict:
            return {'loss': loss, 'image_to_text': image_to_text, 'text_to_image': text_to_image}
        return loss


class UncertaintyWeighting(nn.Module):
    """
    Weigh task losses by learned homoscedastic uncertainty (Kendall, Gal and Cipolla, 2018).

    total = sum_i exp(-s_i) * L_i + s_i with learned s_i = log(sigma_i^2). A task with a large
    loss learns a large s_i, so its weight exp(-s_i) shrinks; the + s_i term stops s_i from
    growing without bound. This is the common form of the paper's 1/(2 sigma^2) L + log sigma
    (constant factors absorbed in s_i); the optimum for fixed L_i is s_i = log(L_i).

    Parameters
    ----------
    num_losses
        number of task losses.
    init
        initial s_i (0: weight 1).

    """

    def __init__(self, num_losses: int = 2, init: float = 0.0):
        super().__init__()
        if num_losses < 1:
            raise ValueError(f'num_losses must be >= 1, got {num_losses}')
        self.log_vars = nn.Parameter(torch.full((num_losses,), float(init)))

    def weights(self) -> torch.Tensor:
        """Return the current weights exp(-s_i) [num_losses]."""
        return torch.exp(-self.log_vars)

    def forward(self, losses) -> torch.Tensor:
        """Return the weighted total of a sequence of num_losses scalar losses."""
        losses = torch.stack([torch.as_tensor(loss) for loss in losses])
        if losses.shape != self.log_vars.shape:
            raise ValueError(
                f'expected {self.log_vars.numel()} losses, got {losses.numel()}')
        return (torch.exp(-self.log_vars) * losses + self.log_vars).sum()


def gradient_cosine(loss_a: torch.Tensor, loss_b: torch.Tensor, params,
                    shared_only: bool = False) -> float:
    """
    Return the cosine between the gradients of two losses w.r.t. parameters.

    Both graphs are kept (retain_graph) so the caller can still backpropagate.

    Parameters
    ----------
    loss_a, loss_b
        scalar losses.
    params
        iterable of parameters (only those requiring grad are used).
    shared_only
        use only parameters both losses reach (e.g. a shared encoder, not task heads);
        otherwise a parameter one loss does not reach counts as zero gradient there.

    Returns
    -------
    Cosine in [-1, 1]; 0.0 when either gradient is zero or nothing is shared.

    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError('gradient_cosine needs at least one parameter that requires grad')
    grads = [torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
             for loss in (loss_a, loss_b)]
    keep = [i for i in range(len(params))
            if not shared_only or (grads[0][i] is not None and grads[1][i] is not None)]
    if not keep:
        return 0.0
    flat = [torch.cat([(g[i] if g[i] is not None else torch.zeros_like(params[i]))
                       .reshape(-1).float() for i in keep]) for g in grads]
    norm = flat[0].norm() * flat[1].norm()
    if norm == 0:
        return 0.0
    return float(torch.dot(flat[0], flat[1]) / norm)


_LOSSES = {'clip': ClipLoss, 'triplet': TripletLoss}


def list_losses() -> list:
    """Return the names create_loss accepts."""
    return sorted(_LOSSES)


def create_loss(name: str = 'clip', **kwargs) -> PairLoss:
    """
    Build a pair loss by name.

    Parameters
    ----------
    name
        'clip' (ClipLoss) or 'triplet' (TripletLoss).
    kwargs
        passed to the loss's constructor.

    Returns
    -------
    The loss module.

    """
    key = (name or '').strip().lower()
    try:
        cls = _LOSSES[key]
    except KeyError as e:
        raise ValueError(f"unknown loss '{name}'; valid: {', '.join(list_losses())}") from e
    return cls(**kwargs)
