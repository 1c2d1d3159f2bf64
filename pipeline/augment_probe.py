"""Which augmentations the data allows, decided by a short probe on one fold (issue 15, item 3).

A transform is a valid training augmentation when it maps the data onto images whose labels still hold: mirrored
digits are not digits, a rotated aerial tile is still an aerial tile. The probe measures this in two steps.

First, for free, the training masks: a flip negates the skewness of every region, a quarter turn its log aspect
ratio; where a class's mean moment is far from 0 (t > 4 and |mean| > 0.1, e.g. most digits lean one way, all are
taller than wide) the data is not closed under that transform and it is left out.

Then it trains
the model briefly *without* any augmentation, then scores it on the fold's validation images passed through each
candidate transform (the prediction mapped back, as TTA does). Where the data is closed under the transform (both
orientations of a car occur in the photos, textures look alike at any rotation) a model that never saw the
transform still scores nearly as well (``score(T) / score(identity) >= threshold``) and the transform is kept; where
it changes what the pixels mean (a mirrored 7, an upside-down 6), the score drops and it is left out.

Candidates: ``hflip``, ``vflip``, ``rot90`` (on square inputs), ``scale`` (x0.8 and x1.25) and ``photometric``
(brightness, contrast and saturation x0.8 and x1.2). Each choice carries a one-line reason with the numbers.

Usage (the plan stage)::

    plan = probe_fold(layout, params.data, cfg, fold=0, seconds=90)
    cfg.recipe.augment = plan.augments; print("\\n".join(plan.reasons))
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import Augment, DataParams, ModelConfig
from pipeline.data.dataset import MEAN, STD, SegDataset, build_transform, normalize
from pipeline.errors import UserError
from pipeline.losses import WeightedLoss
from pipeline.metrics import ConfusionMatrix, mean_iou
from pipeline.models.registry import build_model
from pipeline.paths import Layout
from pipeline.plan.symmetry import SYMMETRY_COLUMN, chiral_reasons
from pipeline.predict import autocast, iter_logits

# What each kept candidate adds to recipe.augment (albumentations class names, as the recipe takes them).
AUGMENTS: dict[str, list[Augment]] = {
    "hflip": [Augment("HorizontalFlip", {"p": 0.5})],
    "vflip": [Augment("VerticalFlip", {"p": 0.5})],
    "rot90": [Augment("RandomRotate90", {"p": 0.5})],
    "scale": [Augment("RandomScale", {"scale_limit": 0.2, "p": 0.5})],
    "photometric": [
        Augment("ColorJitter", {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.0, "p": 0.5})
    ],
}
THRESHOLD = 0.9  # keep a transform when the unaugmented model keeps this share of its validation mIoU under it
# the probe model must beat predicting background everywhere by this much val mIoU for its scores to mean anything
MIN_GAIN = 0.1


@dataclasses.dataclass(frozen=True)
class AugmentPlan:
    """The probe's decision: the augments to train with, one reason per candidate, and the scores behind them."""

    augments: list[Augment]
    reasons: list[str]
    kept: list[str]
    scores: dict[str, float]  # validation mIoU of the probe model under each transform ("identity" included)
    seconds: float  # wall time of the probe


# ---------------------------------------------------------------------------------------------------------------
# The transforms, applied to normalised (B, 3, H, W) batches, with the inverse mapping of the logits


def _flip(dim: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: t.flip(dim)


def _scaled(factor: float) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    sizes: list[tuple[int, int]] = []

    def down(x: torch.Tensor) -> torch.Tensor:
        sizes.append(tuple(x.shape[-2:]))  # type: ignore[arg-type]
        h, w = (max(8, int(round(s * factor))) for s in x.shape[-2:])
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)

    def up(y: torch.Tensor) -> torch.Tensor:
        return F.interpolate(y, size=sizes.pop(), mode="bilinear", align_corners=False)

    return down, up


def _jitter(factor: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Brightness, contrast and saturation all scaled by ``factor`` (ColorJitter's definitions), in pixel space."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)

    def apply(x: torch.Tensor) -> torch.Tensor:
        p = x * std.to(x) + mean.to(x)
        p = (p * factor).clamp(0, 1)  # brightness
        gray = (0.299 * p[:, 0] + 0.587 * p[:, 1] + 0.114 * p[:, 2]).unsqueeze(1)
        p = (gray.mean((2, 3), keepdim=True) + factor * (p - gray.mean((2, 3), keepdim=True))).clamp(0, 1)  # contrast
        gray = (0.299 * p[:, 0] + 0.587 * p[:, 1] + 0.114 * p[:, 2]).unsqueeze(1)
        p = (gray + factor * (p - gray)).clamp(0, 1)  # saturation
        return (p - mean.to(x)) / std.to(x)

    return apply


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def candidate_transforms(
    input_size: tuple[int, int],
) -> dict[str, list[tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]]]:
    """Per candidate, the (forward, inverse) pairs it is scored under (the worst of them decides)."""
    out: dict[str, list[Any]] = {
        "hflip": [(_flip(-1), _flip(-1))],
        "vflip": [(_flip(-2), _flip(-2))],
        "scale": [_scaled(0.8), _scaled(1.25)],
        "photometric": [(_jitter(0.8), _identity), (_jitter(1.2), _identity)],
    }
    if input_size[0] == input_size[1]:  # a quarter turn of a non-square input changes the layout the model sees
        out["rot90"] = [(lambda t: torch.rot90(t, 1, (-2, -1)), lambda t: torch.rot90(t, -1, (-2, -1)))]
    return out


# ---------------------------------------------------------------------------------------------------------------
# The probe


def _fit(
    cfg: ModelConfig, train_ds: SegDataset, num_classes: int, seconds: float, steps: int | None, device: torch.device
) -> torch.nn.Module:
    """Train ``cfg``'s model without augmentation for ``steps`` steps (or until ``seconds`` have passed), at the
    recipe's learning rate with a short warm-up and a linear decay to zero over the (time or step) budget."""
    rec = cfg.recipe
    torch.manual_seed(rec.seed)
    model = build_model(cfg, num_classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=rec.lr, weight_decay=rec.weight_decay)
    criterion = WeightedLoss.for_config(cfg).to(device)
    batch = min(rec.batch_size, len(train_ds))
    gen = torch.Generator().manual_seed(rec.seed)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=batch, shuffle=True, drop_last=True, generator=gen)
    model.train()
    step, t0, warmup = 0, time.monotonic(), 20
    while True:
        for b in loader:
            done = step / steps if steps is not None else (time.monotonic() - t0) / seconds
            if done >= 1.0:
                model.eval()
                return model
            for g in optimizer.param_groups:
                g["lr"] = rec.lr * min(1.0, (step + 1) / warmup) * max(0.02, 1.0 - done)
            x = normalize(b["image"].to(device))
            with autocast(device, rec.amp, rec.cpu_bf16):
                loss = criterion(model(x), b["mask"].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1


@torch.no_grad()
def _score(
    model: torch.nn.Module,
    val_ds: SegDataset,
    num_classes: int,
    pairs: Sequence[tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]],
    device: torch.device,
    cpu_bf16: bool,
) -> float:
    """The worst validation mIoU over ``pairs`` of (transform the input, map the logits back)."""
    scores = []
    amp = lambda: autocast(device, "none", cpu_bf16)  # noqa: E731
    sizes = lambda i: val_ds.original_mask(i).shape  # noqa: E731
    for fwd, inv in pairs:
        cm = ConfusionMatrix(num_classes)

        def forward(x: torch.Tensor, fwd: Any = fwd, inv: Any = inv) -> torch.Tensor:
            return inv(model(fwd(x)))

        for idx, logits in iter_logits(forward, val_ds, device, 32, sizes, amp_ctx=amp):
            truth = torch.from_numpy(np.stack([val_ds.original_mask(int(i)) for i in idx]))
            cm.update(logits.argmax(1).cpu(), truth)
        scores.append(float(mean_iou(cm)))
    return min(scores)


def _all_background_miou(val_ds: SegDataset, num_classes: int) -> float:
    """The validation mIoU of predicting background everywhere: the floor a probe model must clear to judge."""
    cm = ConfusionMatrix(num_classes)
    for i in range(len(val_ds)):
        truth = torch.from_numpy(val_ds.original_mask(i))
        cm.update(torch.zeros_like(truth, dtype=torch.long)[None], truth[None])
    return float(mean_iou(cm))


def _verdict(name: str, s: float, base: float, background: float, threshold: float) -> tuple[bool, str]:
    """Whether candidate ``name`` is on, and why: its val mIoU ``s`` against the unaugmented ``base``, when the
    probe model beats all-background (``background``) by :data:`MIN_GAIN`; else on the masks' symmetry alone."""
    ratio = s / base if base > 0 else math.nan
    if base < background + MIN_GAIN:
        if name in SYMMETRY_COLUMN:  # the masks are symmetric under it: keep it on their word
            return True, (
                f"{name}: on (no class of the training masks has a handedness under it; the probe model is "
                f"too weak to check more: val mIoU {base:.3f}, all-background {background:.3f})"
            )
        return False, (
            f"{name}: off (the probe model is too weak to judge it: val mIoU {base:.3f}, "
            f"all-background {background:.3f})"
        )
    if ratio >= threshold:
        return True, (
            f"{name}: on (a model trained without it keeps {ratio:.0%} of its val mIoU under it: "
            f"{s:.3f} vs {base:.3f}, so the labels hold)"
        )
    return False, (
        f"{name}: off (it drops the unaugmented model's val mIoU to {ratio:.0%}: {s:.3f} vs {base:.3f}, "
        f"so it changes what the pixels mean)"
    )


def choose_augmentations(  # noqa: PLR0913 - one fold's split plus five keyword-only probe knobs (Args)
    cfg: ModelConfig,
    train_images: Sequence[Path],
    train_masks: Sequence[Path],
    val_images: Sequence[Path],
    val_masks: Sequence[Path],
    num_classes: int,
    seconds: float = 60.0,
    *,
    steps: int | None = None,
    threshold: float = THRESHOLD,
    candidates: Sequence[str] | None = None,
    max_val_images: int = 128,
    device: str = "cpu",
) -> AugmentPlan:
    """Decide which of the candidate augmentations the data allows (see the module docstring).

    Args:
        cfg: the model config the competition will train (its recipe's loss, lr, batch size and bf16 are used;
            its own ``augment`` list is ignored: the probe model trains without any).
        train_images, train_masks, val_images, val_masks: one fold's split (e.g. from :func:`probe_fold`).
        num_classes: classes including background.
        seconds: time allowance for the whole probe; about 3/4 of it trains, the rest scores the transforms.
        steps: train exactly this many steps instead (deterministic; the tests use it).
        threshold: keep a transform when the probe model keeps this share of its validation mIoU under it.
        candidates: a subset of ``hflip, vflip, rot90, scale, photometric`` (default: all that apply).
        max_val_images: score on the first this many validation images (each candidate costs 1-2 passes).
        device: ``cpu`` or ``cuda``.

    Returns:
        The augments to put in ``recipe.augment`` and one reason line per candidate.
    """
    t0 = time.monotonic()
    dev = torch.device(device)
    transforms = candidate_transforms(cfg.input_size)
    names = [n for n in (candidates or list(AUGMENTS)) if n in transforms]
    unknown = sorted(set(candidates or []) - set(AUGMENTS))
    if unknown:
        raise UserError(f"augment probe: unknown candidate {unknown[0]!r}; valid: {', '.join(AUGMENTS)}")
    bare = dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, augment=[]))
    train_ds = SegDataset(train_images, train_masks, build_transform(bare, train=True, seed=cfg.recipe.seed))
    val_ds = SegDataset(val_images[:max_val_images], val_masks[:max_val_images], build_transform(bare, train=False))
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise UserError("augment probe: the fold needs training and validation images")
    kept, reasons, augments = [], [], []
    # 1. the training masks' symmetry: a class with a handedness rules its transform out before any training
    chiral = chiral_reasons([train_ds.original_mask(i) for i in range(len(train_ds))], names)
    # 2. a short training without augmentation, scored on the validation images under each remaining transform
    model = _fit(bare, train_ds, num_classes, 0.75 * seconds, steps, dev)
    ident = [(_identity, _identity)]
    scores = {"identity": _score(model, val_ds, num_classes, ident, dev, cfg.recipe.cpu_bf16)}
    scores["all_background"] = _all_background_miou(val_ds, num_classes)
    for name in names:
        if name in chiral:
            reasons.append(chiral[name])
            continue
        scores[name] = _score(model, val_ds, num_classes, transforms[name], dev, cfg.recipe.cpu_bf16)
        on, reason = _verdict(name, scores[name], scores["identity"], scores["all_background"], threshold)
        reasons.append(reason)
        if on:
            kept.append(name)
            augments += AUGMENTS[name]
    for name in (n for n in (candidates or list(AUGMENTS)) if n not in transforms):
        reasons.append(f"{name}: off (the input {cfg.input_size[0]}x{cfg.input_size[1]} is not square)")
    return AugmentPlan(augments, reasons, kept, scores, round(time.monotonic() - t0, 1))


def probe_fold(
    layout: Layout, data: DataParams, cfg: ModelConfig, fold: int = 0, seconds: float = 60.0, **kwargs: Any
) -> AugmentPlan:
    """:func:`choose_augmentations` on fold ``fold`` of the saved folds (masks and classes from the masks stage)."""
    from pipeline.data.folds import fold_split
    from pipeline.io import read_json

    split = fold_split(layout, data, fold)
    n = len(read_json(layout.classes_json))
    return choose_augmentations(
        cfg, split.train_images, split.train_masks, split.val_images, split.val_masks, n, seconds, **kwargs
    )
