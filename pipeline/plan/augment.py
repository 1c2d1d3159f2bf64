"""Which augmentations the data allows: the plan's rule (:func:`choose_augmentations`).

Whether a mirrored or rotated image is still a valid training image is a property of the data (a mirrored digit is
not a digit; an aerial tile rotated is still an aerial tile). The fingerprint reads it from the training masks
(:mod:`pipeline.plan.symmetry`, ``Fingerprint.handedness``): a flip or quarter turn is added only where no class has a
handedness under it, and a quarter turn only for a square input (it would swap the sides of any other).

Copy-paste (``recipe.paste``, :mod:`pipeline.data.paste`) puts another training image's labelled objects over an
image: new combinations of object and background for the same labels. It is a regulariser, so it waits for a longer
training (:data:`PASTE_TRAINING` epochs and :data:`PASTE_STEPS` optimiser steps), and needs objects to paste:
foreground classes made of components that leave most of the image background (under :data:`PASTE_MAX_FOREGROUND` of
the pixels). Measured on the zoo's ``objects`` fold 0 at batch 14 (bench/RECIPE.md): 0.472 -> 0.531 val mIoU at 40
epochs (2080 steps), but 0.205 -> 0.173 at 20 (1040 steps).

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
PASTE_TRAINING = 30  # round-1 epochs from which copy-paste is added ...
PASTE_STEPS = 1500  # ... and round-1 optimiser steps (it hurt at 1040, helped at 2080)
PASTE_SHARE = 0.5  # the share of training samples that get another sample's objects pasted over them
PASTE_MAX_FOREGROUND = 0.5  # copy-paste only where objects leave most of the image background


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


def choose_paste(fp: Fingerprint, epochs: int, steps: int) -> tuple[float, str]:
    """``recipe.paste`` for ``epochs`` round-1 epochs of ``steps`` optimiser steps in all on data with fingerprint
    ``fp``, and why."""
    components = sum(c.components for c in fp.foreground)
    if components == 0 or fp.foreground_share >= PASTE_MAX_FOREGROUND:
        return 0.0, (
            f"off: {components} foreground components covering {100 * fp.foreground_share:.0f}% of the pixels "
            f"(copy-paste needs objects on a background, under {100 * PASTE_MAX_FOREGROUND:.0f}%)"
        )
    if epochs < PASTE_TRAINING:
        return 0.0, f"off: {epochs} epochs, under {PASTE_TRAINING} (a regulariser: it costs a short training)"
    if steps < PASTE_STEPS:
        return 0.0, f"off: {steps} optimiser steps, under {PASTE_STEPS} (a regulariser: it costs a short training)"
    return PASTE_SHARE, (
        f"{PASTE_SHARE:g} of samples get another image's objects pasted ({components} objects on "
        f"{100 * (1 - fp.foreground_share):.0f}% background, {epochs} epochs >= {PASTE_TRAINING}, {steps} steps >= "
        f"{PASTE_STEPS})"
    )
