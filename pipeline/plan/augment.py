"""Which augmentations the data allows: the plan's rule (:func:`choose_augmentations`).

Whether a mirrored or rotated image is still a valid training image is a property of the data (a mirrored digit is
not a digit; an aerial tile rotated is still an aerial tile). The fingerprint reads it from the training masks
(:mod:`pipeline.plan.symmetry`, ``Fingerprint.handedness``): a flip or quarter turn is added only where no class has a
handedness under it, and a quarter turn only for a square input (it would swap the sides of any other).

Scale and colour jitter keep every label valid in photographs whatever their content; they pay off only once the
model trains long enough to overfit its images, so they are added when the plan's round-1 training is at least
:data:`LONG_TRAINING` epochs, and never colour to grey images (it would only change their brightness).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.plan.fingerprint import Fingerprint

# candidate -> the albumentations transforms it adds (recipe.augment entries)
CANDIDATES: dict[str, list[dict[str, Any]]] = {
    "hflip": [{"name": "HorizontalFlip", "kwargs": {"p": 0.5}}],
    "vflip": [{"name": "VerticalFlip", "kwargs": {"p": 0.5}}],
    "rot90": [{"name": "RandomRotate90", "kwargs": {"p": 0.5}}],
    "scale": [{"name": "Affine", "kwargs": {"scale": [0.8, 1.25], "translate_percent": [-0.1, 0.1], "p": 0.5}}],
    "colour": [
        {"name": "ColorJitter", "kwargs": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.1, "p": 0.5}}
    ],
}
GEOMETRIC = ("hflip", "vflip", "rot90")
LONG_TRAINING = 20  # round-1 epochs from which scale and colour jitter are added


def choose_augmentations(fp: Fingerprint, input_size: Sequence[int], epochs: int) -> tuple[list[dict[str, Any]], str]:
    """The ``recipe.augment`` list for a model seeing ``input_size`` for ``epochs`` round-1 epochs, and why."""
    kept, off = [], []
    for name in GEOMETRIC:
        if name in fp.handedness:
            off.append(fp.handedness[name])
        elif name == "rot90" and input_size[0] != input_size[1]:
            off.append(f"rot90: off (the input {input_size[0]}x{input_size[1]} is not square)")
        else:
            kept.append(name)
    if epochs >= LONG_TRAINING:
        kept.append("scale")
        if fp.channels == 3:
            kept.append("colour")
        else:
            off.append("colour: off (grey images)")
    else:
        off.append(f"scale, colour: off ({epochs} epochs, under {LONG_TRAINING}: too short to overfit)")
    augs = [a for name in kept for a in CANDIDATES[name]]
    closed = [n for n in kept if n in GEOMETRIC]
    why = f"kept {', '.join(kept) or 'none'}"
    if closed:
        why += f" ({', '.join(closed)}: the training masks are closed under it)"
    return augs, "; ".join([why, *off])
