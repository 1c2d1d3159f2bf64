"""Test-time augmentation with ttach, applied to logits, optionally batched.

ttach's ``SegmentationTTAWrapper`` runs the augmented copies through the model one at a time. :class:`TtaForward`
uses the same ttach transforms (augment the image, de-augment the logits, merge) but, when ``batched``, puts all
copies of one size through the model as one batch, which is what a GPU wants. Copies of another scale come back
at a size that may differ by a pixel after de-augmentation; they are resized to the input size exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import ttach
from torch import nn

from pipeline.config import TtaConfig
from pipeline.errors import UserError


def tta_transforms(cfg: TtaConfig) -> ttach.Compose:
    ops: list[ttach.base.BaseTransform] = []
    if "hflip" in cfg.flips:
        ops.append(ttach.HorizontalFlip())
    if "vflip" in cfg.flips:
        ops.append(ttach.VerticalFlip())
    scales = sorted(set(cfg.scales) | {1.0})
    if scales != [1.0]:
        ops.append(ttach.Scale(scales=scales, interpolation="bilinear", align_corners=False))
    return ttach.Compose(ops)


def describe(cfg: TtaConfig) -> str:
    """A short name for a TTA set, e.g. ``hflip+scales(0.75,1,1.25)`` or ``none``."""
    parts = list(cfg.flips)
    scales = sorted(set(cfg.scales) | {1.0})
    if scales != [1.0]:
        parts.append("scales(" + ",".join(f"{s:g}" for s in scales) + ")")
    return "+".join(parts) or "none"


class TtaForward(nn.Module):
    """(B, 3, H, W) normalised images -> (B, C, H, W) merged logits over the TTA set.

    ``mean`` and ``max`` merge the logits; ``gmean`` merges probabilities geometrically and returns the mean
    log-probabilities (valid logits).
    """

    def __init__(self, model: nn.Module, cfg: TtaConfig, batched: bool = False, multilabel: bool = False) -> None:
        super().__init__()
        self.model, self.batched = model, batched
        self.transforms = list(tta_transforms(cfg))
        self.merge = cfg.merge
        if multilabel and self.merge == "gmean" and len(self.transforms) > 1:
            raise UserError(
                "tta merge gmean averages log-softmax outputs: not for multilabel masks (a sigmoid per class); use "
                "infer.tta_merge: mean (or the model config's tta.merge)"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.transforms) == 1:
            return self.model(x)
        size = x.shape[-2:]
        augmented = [t.augment_image(x) for t in self.transforms]
        outputs = self._run(augmented)
        # ttach's gmean multiplies its inputs and takes the n-th root: meant for probabilities, NaN on signed logits.
        # The geometric mean of probabilities is the arithmetic mean of log-probabilities (up to a per-pixel
        # constant, which softmax and argmax ignore), so gmean averages log_softmax outputs.
        gmean = self.merge == "gmean"
        merger = ttach.base.Merger(type="mean" if gmean else self.merge, n=len(self.transforms))
        for t, out in zip(self.transforms, outputs):
            out = t.deaugment_mask(out)
            if out.shape[-2:] != size:
                out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
            merger.append(out.log_softmax(1) if gmean else out)
        return merger.result

    def _run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if not self.batched:
            return [self.model(a) for a in inputs]
        # one forward per distinct size, all copies of that size concatenated on the batch axis
        out: list[torch.Tensor | None] = [None] * len(inputs)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, a in enumerate(inputs):
            by_size.setdefault(tuple(a.shape), []).append(i)
        for ids in by_size.values():
            y = self.model(torch.cat([inputs[i] for i in ids]))
            for i, chunk in zip(ids, y.chunk(len(ids))):
                out[i] = chunk
        return out  # type: ignore[return-value]
