"""Which augmentations the data allows: the hook the plan's rules ask (:func:`choose_augmentations`).

Whether a mirrored or rotated image is still a valid training image is a property of the data (a mirrored digit is
not a digit; an aerial tile rotated is still an aerial tile) that the fingerprint cannot see. So the choice comes
from a short probe: ``probe`` maps a candidate (a name in :data:`CANDIDATES`) to the change in validation mIoU it
made on a held-out fold against no augmentation. Without a probe nothing is added (the recipe's behaviour before
the plan), and the reason says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.plan.fingerprint import Fingerprint

# candidate -> the albumentations transforms it adds (recipe.augment entries)
CANDIDATES: dict[str, list[dict[str, Any]]] = {
    "hflip": [{"name": "HorizontalFlip", "kwargs": {"p": 0.5}}],
    "vflip": [{"name": "VerticalFlip", "kwargs": {"p": 0.5}}],
    "rot90": [{"name": "RandomRotate90", "kwargs": {"p": 0.5}}],
    "scale": [{"name": "Affine", "kwargs": {"scale": [0.8, 1.25], "p": 0.5}}],
    "colour": [{"name": "ColorJitter", "kwargs": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "p": 0.5}}],
}
MIN_GAIN = 0.002  # a probe's mIoU change under this is noise between two short runs


def choose_augmentations(fp: Fingerprint, probe: Mapping[str, float] | None) -> tuple[list[dict[str, Any]], str]:
    """The ``recipe.augment`` list and one line of why, from the probe's measured gains."""
    if probe is None:
        return [], "no augmentation probe ran: none added (whether flips or rotations keep labels valid is measured)"
    kept = [name for name, gain in probe.items() if name in CANDIDATES and gain >= MIN_GAIN]
    if fp.channels == 1:
        kept = [k for k in kept if k != "colour"]  # colour jitter of grey images is only a brightness change
    augs = [a for name in kept for a in CANDIDATES[name]]
    shown = ", ".join(f"{k} {v:+.3f}" for k, v in probe.items())
    return augs, f"kept the probe's candidates that raised held-out mIoU by {MIN_GAIN} or more ({shown})"
