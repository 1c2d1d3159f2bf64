"""Losses from config: weighted sums of SMP's multiclass losses and cross-entropy, all honouring ignore (255)."""

from __future__ import annotations

from collections.abc import Sequence

import segmentation_models_pytorch as smp
import torch
from torch import nn

from pipeline.config import LossTerm
from pipeline.errors import UserError
from pipeline.labels import IGNORE_INDEX


def make_term(term: LossTerm, class_weights: Sequence[float] | None) -> nn.Module:
    kw = dict(term.kwargs)
    try:
        if term.name == "ce":
            weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
            return nn.CrossEntropyLoss(weight=weight, ignore_index=IGNORE_INDEX, **kw)
        cls = {
            "dice": smp.losses.DiceLoss,
            "lovasz": smp.losses.LovaszLoss,
            "focal": smp.losses.FocalLoss,
            "jaccard": smp.losses.JaccardLoss,
        }[term.name]
        return cls(mode="multiclass", ignore_index=IGNORE_INDEX, **kw)
    except TypeError as e:
        raise UserError(f"loss {term.name}: bad kwargs {kw}: {e}") from None


class WeightedLoss(nn.Module):
    """sum_i weight_i * loss_i(logits (B, C, H, W) float, target (B, H, W) int64 with 255 = ignore).

    Deep supervision: a tuple of logits (a network in training that returns its output, then its side outputs, as
    U²-Net does: :mod:`pipeline.models.u2net`) gets the sum of that loss over its members, with equal weights.
    """

    def __init__(self, terms: Sequence[LossTerm], class_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if not terms:
            raise UserError("recipe.loss: at least one loss term is needed")
        self.weights = [t.weight for t in terms]
        self.terms = nn.ModuleList(make_term(t, class_weights) for t in terms)

    def forward(self, logits: torch.Tensor | tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, tuple):  # deep supervision: the output and each side output, equal weights
            return sum(self.forward(z, target) for z in logits)  # type: ignore[return-value]
        logits = logits.float()  # losses in float32 even under autocast
        return sum(w * term(logits, target) for w, term in zip(self.weights, self.terms))  # type: ignore[return-value]
