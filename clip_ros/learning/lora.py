"""
Low-rank adapters (LoRA, Hu et al., 2021) for fine-tuning a frozen CLIP: W' = W + (alpha/r) BA.

Which layers get adapters in open_clip's transformers (default DEFAULT_TARGETS, both towers):

- ``*.mlp.c_fc`` and ``*.mlp.c_proj``: plain nn.Linear, replaced by LoRALinear.
- ``*.attn.out_proj``: nn.MultiheadAttention's output projection. It is an nn.Linear subclass,
  but MultiheadAttention reads ``out_proj.weight`` directly instead of calling the module, so a
  wrapper would be bypassed: the weight is reparametrised instead (LoRAParametrization).
- ``*.attn.in_proj``: the packed q/k/v projection ``in_proj_weight`` [3d, d] of
  nn.MultiheadAttention, a bare Parameter, also reparametrised.

Projections that are bare Parameters (``visual.proj``, ``text_projection``), embeddings and
layer norms get none. merge_lora folds every adapter into its weight.
"""
from fnmatch import fnmatch
import math

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = [
    'apply_lora', 'count_parameters', 'DEFAULT_TARGETS', 'lora_parameters', 'LoRALinear',
    'LoRAParametrization', 'merge_lora',
]

DEFAULT_TARGETS = ('*attn.in_proj', '*attn.out_proj', '*mlp.c_fc', '*mlp.c_proj')
# Suffix naming nn.MultiheadAttention's packed in_proj_weight as a target.
IN_PROJ = 'in_proj'


class _LowRank(nn.Module):
    """The trainable pair: A [r, in] (Kaiming uniform), B [out, r] (zeros, so BA = 0 at start)."""

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, like):
        super().__init__()
        if r < 1:
            raise ValueError(f'LoRA rank r must be >= 1, got {r}')
        self.r = r
        self.scaling = alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, in_features, device=like.device,
                                               dtype=like.dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, device=like.device,
                                               dtype=like.dtype))
        # Same init as nn.Linear's weight, as in the LoRA reference implementation.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta(self) -> torch.Tensor:
        """Return (alpha / r) B A [out, in]."""
        return self.scaling * (self.lora_B @ self.lora_A)


class LoRALinear(_LowRank):
    """
    A frozen nn.Linear plus a low-rank update: y = W x + b + (alpha / r) B A x.

    Parameters
    ----------
    base
        the layer to adapt; its parameters are frozen.
    r
        rank of the update.
    alpha
        scale numerator; the update is multiplied by alpha / r.

    """

    def __init__(self, base: nn.Linear, r: int = 4, alpha: float = 8.0):
        super().__init__(base.in_features, base.out_features, r, alpha, base.weight)
        self.base = base
        base.requires_grad_(False)

    @property
    def weight(self) -> torch.Tensor:
        """Return the effective weight W + (alpha / r) B A."""
        return self.base.weight + self.delta()

    @property
    def bias(self):
        """Return the frozen base layer's offset vector, or None."""
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two thin matmuls instead of forming the [out, in] update.
        return self.base(x) + self.scaling * ((x @ self.lora_A.T) @ self.lora_B.T)

    def merged(self) -> nn.Linear:
        """Return the base layer with B A folded into its weight."""
        with torch.no_grad():
            self.base.weight.add_(self.delta())
        return self.base


class LoRAParametrization(_LowRank):
    """A weight parametrisation W -> W + (alpha / r) B A, for weights read without a call."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta()


def _candidates(model: nn.Module) -> dict:
    """Map adaptable names to (owner module, attribute or None for a Linear module)."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found[name] = (module, None)
        elif isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            found[f'{name}.{IN_PROJ}' if name else IN_PROJ] = (module, 'in_proj_weight')
    return found


def _set_child(model: nn.Module, name: str, child: nn.Module):
    parent_name, _, attr = name.rpartition('.')
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, child)


def apply_lora(model: nn.Module, targets=DEFAULT_TARGETS, r: int = 4, alpha: float = 8.0,
               freeze: bool = True) -> list:
    """
    Add LoRA adapters in place to the layers whose qualified names match `targets`.

    Parameters
    ----------
    model
        e.g. an open_clip CLIP (ClipModel.model).
    targets
        fnmatch patterns over module names; ``<attention>.in_proj`` names the packed q/k/v
        weight of an nn.MultiheadAttention. See the module docstring for the defaults.
    r, alpha
        rank and scale numerator (update scaled by alpha / r).
    freeze
        freeze every existing parameter first, so only the adapters train.

    Returns
    -------
    Sorted names of the adapted layers.

    Raises
    ------
    ValueError
        no layer matches (some valid names are listed).

    """
    candidates = _candidates(model)
    chosen = sorted(n for n in candidates if any(fnmatch(n, t) for t in targets))
    if not chosen:
        shown = ', '.join(sorted(candidates)[:8]) or 'none'
        raise ValueError(f'no layer matches {list(targets)}; adaptable layers include: {shown}')
    if freeze:
        model.requires_grad_(False)
    for name in chosen:
        module, attr = candidates[name]
        parent = model.get_submodule(name.rpartition('.')[0]) if '.' in name else model
        if attr is not None:
            weight = getattr(module, attr)
            lora = LoRAParametrization(weight.shape[1], weight.shape[0], r, alpha, weight)
            parametrize.register_parametrization(module, attr, lora)
        elif isinstance(parent, nn.MultiheadAttention):
            lora = LoRAParametrization(module.in_features, module.out_features, r, alpha,
                                       module.weight)
            parametrize.register_parametrization(module, 'weight', lora)
        else:
            _set_child(model, name, LoRALinear(module, r, alpha))
    return chosen


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight in place and return the model (no LoRA left)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            _set_child(model, name, module.merged())
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        for attr, chain in list(module.parametrizations.items()):
            if any(isinstance(p, LoRAParametrization) for p in chain):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    return model


def lora_parameters(model: nn.Module) -> list:
    """Return the adapters' A and B parameters."""
    return [p for n, p in model.named_parameters() if n.rpartition('.')[2] in
            ('lora_A', 'lora_B')]


def count_parameters(model: nn.Module) -> tuple:
    """Return (trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
