"""Losses from config: weighted sums of SMP's multiclass losses and cross-entropy, all honouring ignore (255); on
multilabel masks (:mod:`pipeline.labels`) per-class binary cross-entropy and SMP's multilabel losses."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import LossTerm, ModelConfig
from pipeline.errors import UserError
from pipeline.labels import IGNORE_INDEX, planes
from pipeline.models.registry import WithPresence
from pipeline.models.sides import side_weights


class MultilabelBCE(nn.Module):
    """Binary cross-entropy of each class's own logit against its plane of a multilabel mask (plane 0: no class),
    averaged over the (pixel, class) pairs of non-ignore pixels; ``class_weights`` scale each class's term."""

    def __init__(self, class_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        w = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", w)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        c = logits.shape[1]
        ok = (target != IGNORE_INDEX).unsqueeze(1)  # (B, 1, H, W)
        bce = F.binary_cross_entropy_with_logits(logits, planes(target, c).float(), reduction="none")
        if self.class_weights is not None:
            bce = bce * self.class_weights.view(1, -1, 1, 1)
        return (bce * ok).sum() / (ok.sum() * c).clamp_min(1)


class OnPlanes(nn.Module):
    """An SMP loss in its ``multilabel`` mode, fed a multilabel mask as (B, C, H, W) planes with 255 on every plane
    of an ignore pixel (SMP's own ignore handling)."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = planes(target, logits.shape[1]).long()
        p = p.masked_fill((target == IGNORE_INDEX).unsqueeze(1), IGNORE_INDEX)
        return self.loss(logits, p)


def make_term(term: LossTerm, class_weights: Sequence[float] | None, multilabel: bool = False) -> nn.Module:
    """One loss term; ``multilabel``: on bit-field masks, each class its own binary problem (``ce`` is then
    :class:`MultilabelBCE`, the SMP losses run in their multilabel mode)."""
    kw = dict(term.kwargs)
    try:
        if term.name == "ce" and multilabel:
            return MultilabelBCE(class_weights, **kw)
        if term.name == "ce":
            weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
            return nn.CrossEntropyLoss(weight=weight, ignore_index=IGNORE_INDEX, **kw)
        cls = {
            "dice": smp.losses.DiceLoss,
            "lovasz": smp.losses.LovaszLoss,
            "focal": smp.losses.FocalLoss,
            "jaccard": smp.losses.JaccardLoss,
        }[term.name]
        if multilabel:
            return OnPlanes(cls(mode="multilabel", ignore_index=IGNORE_INDEX, **kw))
        return cls(mode="multiclass", ignore_index=IGNORE_INDEX, **kw)
    except TypeError as e:
        raise UserError(f"loss {term.name}: bad kwargs {kw}: {e}") from None


@dataclasses.dataclass
class SoftTarget:
    """A training batch's targets when some rows are soft (``pseudo.soft``): ``mask`` (B, H, W) int64 labels with 255
    = ignore (a soft row's: the teacher's argmax), ``soft`` (B, C, H, W) uint8 teacher probabilities x 255 (read on
    soft rows only) and ``rows`` (B,) bool, the soft rows."""

    mask: torch.Tensor
    soft: torch.Tensor
    rows: torch.Tensor


def labels(target: torch.Tensor | SoftTarget) -> torch.Tensor:
    """The (B, H, W) labels of a target."""
    return target.mask if isinstance(target, SoftTarget) else target


def soft_cross_entropy(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Per pixel, ``-sum_c q_c log softmax(logits)_c`` with ``q`` the (B, C, H, W) uint8 probabilities normalised to
    sum 1 (their rounding to 1/255 undone): (B, H, W)."""
    q = soft.float()
    q = q / q.sum(1, keepdim=True).clamp_min(1.0)
    return -(q * F.log_softmax(logits, 1)).sum(1)


class WeightedLoss(nn.Module):
    """sum_i weight_i * loss_i(logits (B, C, H, W) float, target (B, H, W) int64 with 255 = ignore).

    Deep supervision: a tuple of logits (a network in training that returns its output, then its side outputs, as
    U²-Net does: :mod:`pipeline.models.u2net`) gets the sum of that loss over its members, with equal weights; with
    ``side_weight`` (``deep_supervision: w``, :mod:`pipeline.models.sides`) the output's loss plus ``w`` x the sides'
    losses weighted by :func:`~pipeline.models.sides.side_weights`.
    A :class:`WithPresence` output (``presence_head``) adds ``presence_weight`` x the binary cross-entropy of its
    presence logits against the classes each target holds (:func:`presence_target`).

    A :class:`SoftTarget` (round 2 with ``pseudo.soft``): the soft rows' pixels learn the teacher's probabilities by
    :func:`soft_cross_entropy`, the other rows' the terms above; the two are weighted by their shares of the batch's
    labelled pixels, so a batch without soft rows has exactly the loss above.
    """

    def __init__(
        self,
        terms: Sequence[LossTerm],
        class_weights: Sequence[float] | None = None,
        presence_weight: float = 0.0,
        side_weight: float | None = None,
        multilabel: bool = False,
    ) -> None:
        super().__init__()
        if not terms:
            raise UserError("recipe.loss: at least one loss term is needed")
        self.weights = [t.weight for t in terms]
        self.terms = nn.ModuleList(make_term(t, class_weights, multilabel) for t in terms)
        self.presence_weight = presence_weight
        self.side_weight = side_weight
        self.multilabel = multilabel

    @classmethod
    def for_config(cls, cfg: ModelConfig, multilabel: bool = False) -> WeightedLoss:
        """The loss ``cfg`` trains with: its recipe's terms and class weights, its presence and side heads' weights
        (``multilabel``: on bit-field masks)."""
        sides = cfg.deep_supervision or None
        return cls(cfg.recipe.loss, cfg.recipe.class_weights, cfg.presence_head, sides, multilabel)

    def forward(
        self, logits: torch.Tensor | tuple[torch.Tensor, ...] | WithPresence, target: torch.Tensor | SoftTarget
    ) -> torch.Tensor:
        if isinstance(logits, WithPresence):
            held = presence_target(labels(target), logits.presence.shape[1], self.multilabel)
            presence = F.binary_cross_entropy_with_logits(logits.presence.float(), held)
            return self.forward(logits.logits, target) + self.presence_weight * presence
        if isinstance(logits, tuple) and self.side_weight is not None:  # decoder sides: the output, then w x sides
            sides = sum(a * self.forward(z, target) for a, z in zip(side_weights(len(logits) - 1), logits[1:]))
            return self.forward(logits[0], target) + self.side_weight * sides
        if isinstance(logits, tuple):  # deep supervision: the output and each side output, equal weights
            return sum(self.forward(z, target) for z in logits)  # type: ignore[return-value]
        logits = logits.float()  # losses in float32 even under autocast
        if isinstance(target, SoftTarget):
            if self.multilabel:
                raise UserError("pseudo.soft: soft pseudo-labels are for class maps, not multilabel masks; set false")
            return self._mixed(logits, target)
        return sum(w * term(logits, target) for w, term in zip(self.weights, self.terms))  # type: ignore[return-value]

    def _mixed(self, logits: torch.Tensor, target: SoftTarget) -> torch.Tensor:
        rows = target.rows.view(-1, 1, 1)
        hard = target.mask.masked_fill(rows, IGNORE_INDEX)  # the labelled rows, for the recipe's terms
        soft = (target.mask != IGNORE_INDEX) & rows  # the soft rows' pixels (255 there only where padded)
        n_hard, n_soft = int((hard != IGNORE_INDEX).sum()), int(soft.sum())
        if n_soft == 0:
            return self.forward(logits, hard)
        soft_loss = soft_cross_entropy(logits, target.soft)[soft].mean()
        if n_hard == 0:
            return soft_loss
        return (n_hard * self.forward(logits, hard) + n_soft * soft_loss) / (n_hard + n_soft)


def presence_target(target: torch.Tensor, num_classes: int, multilabel: bool = False) -> torch.Tensor:
    """(B, num_classes) float: 1 where the (B, H, W) target holds the class (ignore, 255, never counts; a multilabel
    mask holds each class of its bits, and "no class" where a pixel has none).

    >>> presence_target(torch.tensor([[[0, 2], [255, 2]], [[1, 1], [1, 1]]]), 3).tolist()
    [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    >>> presence_target(torch.tensor([[[3, 1]]]), 3, multilabel=True).tolist()
    [[0.0, 1.0, 1.0]]
    """
    if multilabel:
        return planes(target, num_classes).flatten(2).any(-1).float()
    t = target.flatten(1).long()
    t = torch.where(t == IGNORE_INDEX, torch.full_like(t, num_classes), t)
    present = torch.zeros(t.shape[0], num_classes + 1, device=t.device).scatter_(1, t, 1.0)
    return present[:, :num_classes]
