"""The plan's rules: from the fingerprint and the device to model-config keys, each with one line of why.

Pure functions of their inputs (no files, no torch), so a table of fingerprints can test them. Every rule returns
:class:`Choice` objects keyed by the dotted model-config key they set (``input_size``, ``recipe.batch_size``) or by
``infer.<key>`` for inference; :mod:`pipeline.plan.apply` decides whether an explicit setting wins over them.
Epochs and samples per epoch need the measured step time and are sized in :mod:`pipeline.plan.stage`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.plan.augment import choose_augmentations, choose_paste
from pipeline.plan.fingerprint import ClassStats, Fingerprint

# Largest image side a model sees whole, per device: beyond it, random crops (or a resize, for large objects).
MAX_SIDE = {"cpu": 256, "cuda": 512}
# Pixels per training batch: the embedded default's 32 canvases of 64x84 on a CPU; 16 crops of 512x512 on a GPU.
BATCH_PIXELS = {"cpu": 32 * 64 * 84, "cuda": 16 * 512 * 512}
MAX_BATCH = {"cpu": 32, "cuda": 64}
MIN_BATCH = 2  # UPerNet's pooled BatchNorm needs two images per step
RARE_PIXELS = 0.2  # a class under this share of the median foreground class's pixels is rare
RARE_IMAGES = 0.05  # ... or present in under this share of the images
MAX_CLASS_WEIGHT = 10.0
FOREGROUND_SHARE = 0.33  # nnU-Net's oversample_foreground_percent
REFERENCE_BATCH = 32  # the shipped configs' learning rates are for this batch
# Optimiser steps a fold's round 1 should make. From scratch on the zoo's `objects` (U-Net ResNet-10-T, batch 16) the
# model predicts background alone for ~900 steps and climbs from there (fold-0 val 0.14 at 400 steps, 0.24 at 900,
# 0.45 at 1300; bench/RECIPE.md); batch 8 beat batch 32 by +0.045 at equal epochs.
TARGET_STEPS = 1500
MIN_CPU_BATCH = 8  # BatchNorm statistics over fewer images get noisy


@dataclasses.dataclass(frozen=True)
class Choice:
    """One planned value and why."""

    key: str  # dotted model-config key, or infer.<key>
    value: Any
    why: str


def _even_floor(x: float) -> int:
    return max(0, int(x) // 2 * 2)


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def _round_down(v: int, m: int) -> int:
    return max(m, v // m * m)


def object_side(fp: Fingerprint) -> float:
    """The typical object's side in pixels: the median over foreground classes of their median component side."""
    sides = [c.side.median for c in fp.foreground if c.components]
    return float(sorted(sides)[len(sides) // 2]) if sides else 0.0


@dataclasses.dataclass(frozen=True)
class Geometry:
    input_size: tuple[int, int]
    resize: str  # "pad" or "resize"
    crops: bool  # random crops in training: of larger images, with sliding-window inference unless ...
    choices: list[Choice]
    whole_inference: bool = False  # ... the crops are of images the model can take whole (thin structures)


def choose_geometry(fp: Fingerprint, device: str, multiple: int = 1) -> Geometry:
    """Input size and size policy.

    Whole images (``pad``) when every image fits ``MAX_SIDE``; otherwise random crops of ``MAX_SIDE`` with sliding
    inference, unless the objects are larger than half a crop: then the image is resized so the model sees them
    whole. ``multiple``: the input size a fixed-size encoder (Swin, BEiT) needs it to be a multiple of.
    """
    max_side = MAX_SIDE[device]
    h, w = int(fp.height.max), int(fp.width.max)
    if h <= max_side and w <= max_side:
        size = (_round_up(h, multiple), _round_up(w, multiple))
        what = f"every image is {h}x{w}" if fp.distinct_sizes == 1 else f"images are at most {h}x{w}"
        why = f"{what}, within {max_side} px a side on {device}: the model sees whole images"
        why += " (padded to the largest)" if fp.distinct_sizes > 1 else " (it pads to its stride and crops back)"
        return Geometry(size, "pad", False, [Choice("input_size", list(size), why), Choice("resize", "pad", why)])
    side = object_side(fp)
    mh, mw = fp.modal_size
    if side > max_side / 2:
        scale = max_side / max(mh, mw)
        m = max(multiple, 32)
        size = (_round_down(int(mh * scale), m), _round_down(int(mw * scale), m))
        why = (
            f"images of {mh}x{mw} exceed {max_side} px and objects are large (median side {side:.0f} px, over half "
            f"a {max_side} crop): resized whole to {size[0]}x{size[1]} so each object is seen whole"
        )
        return Geometry(size, "resize", False, [Choice("input_size", list(size), why), Choice("resize", "resize", why)])
    crop = (_round_down(min(max_side, int(fp.height.median)), 32), _round_down(min(max_side, int(fp.width.median)), 32))
    crop = (_round_up(crop[0], multiple), _round_up(crop[1], multiple))
    why = (
        f"images up to {h}x{w} exceed {max_side} px a side and objects are small (median side {side:.0f} px): "
        f"random {crop[0]}x{crop[1]} crops in training, sliding-window inference over tiles of that size"
    )
    return Geometry(crop, "pad", True, [Choice("input_size", list(crop), why), Choice("resize", "pad", why)])


def choose_batch(input_size: Sequence[int], device: str, n_fit: int) -> Choice:
    """The batch: a fixed number of pixels per step (the embedded default's on a CPU), even, at least 2."""
    px = int(input_size[0]) * int(input_size[1])
    b = min(MAX_BATCH[device], max(MIN_BATCH, _even_floor(BATCH_PIXELS[device] / px)))
    why = f"{BATCH_PIXELS[device]} pixels per step on {device} at {input_size[0]}x{input_size[1]}"
    if n_fit < b:  # a fold smaller than the batch would make no step at all
        b = max(MIN_BATCH, _even_floor(n_fit))
        why += f", cut to the fold's {n_fit} training images"
    return Choice("recipe.batch_size", b, why)


MAX_WORKERS = 8  # data-loader workers on a GPU machine: past this, decoding keeps up and workers only cost memory


def choose_workers(device: str, cores: int, world: int = 1) -> Choice:
    """Data-loader workers per training process: none on a CPU, where a worker takes a core from the training step
    itself (the loader is a few percent of a step there: bench/bench_loader.py); on a GPU the cores but one each
    process leaves to itself, at most :data:`MAX_WORKERS`, so augmenting the next batches overlaps the device's step.

    >>> choose_workers("cpu", 2).value, choose_workers("cuda", 16).value, choose_workers("cuda", 16, world=4).value
    (0, 8, 3)
    >>> choose_workers("cuda", 1).value
    0
    """
    if device != "cuda":
        return Choice("recipe.num_workers", 0, "on a CPU, loader workers would take cores from the training step")
    per_process = max(1, cores // max(1, world))
    n = min(MAX_WORKERS, per_process - 1)
    why = (
        f"{cores} cores for {world} training process{'es' if world > 1 else ''}: {n} loader workers each, "
        "the main process keeps one core"
    )
    return Choice("recipe.num_workers", max(0, n), why)


def batch_for_steps(device: str, steps: int, batch: int) -> Choice | None:
    """A smaller batch when round 1 of a fold would make fewer than :data:`TARGET_STEPS` optimiser steps on a CPU.

    On a CPU one image costs about the same at any batch (cnn_default at 96x128 on the 2-core box: 22-26 ms at
    batch 8, 14 and 32, measured by the probe), so a smaller batch buys steps at no cost in images seen; on a GPU a
    small batch wastes the device, and the rule does not apply. ``None`` when the batch stays.
    """
    if device != "cpu" or steps >= TARGET_STEPS or batch <= MIN_CPU_BATCH:
        return None
    b = max(MIN_CPU_BATCH, _even_floor(batch * steps / TARGET_STEPS))
    why = (
        f"{steps} optimiser steps per fold at batch {batch} fit the budget, under the {TARGET_STEPS} a model from "
        f"scratch needs; a CPU step costs about the same per image at any batch, so batch {b} makes about "
        f"{steps * batch // b} in the same time"
    )
    return Choice("recipe.batch_size", b, why)


MIN_SCALE = 0.5  # a budget resize keeps at least half of each side
MIN_RESIZED_SIDE = 64  # px: a 5-stage encoder's bottleneck is 2 px a side there
MIN_STEP_GAIN = 1.25  # the smaller input stands only if the probe finds it buys this many times the steps
# A resize by s that would put this share of the foreground pixels on an outline (fingerprint boundary_share / s)
# blurs too much of it: crops at full resolution instead. Between the zoo's measured sides, 0.19 / 0.21 / 0.36
# (scenes, textures, manyclass: the resize won) and 0.47 / 1.5 (silhouette, thin: crops won); a narrow margin, from
# six competitions at one budget (bench/RESULTS.md, 2026-12-07).
MAX_RESIZED_BOUNDARY = 0.4


def scale_for_steps(fp: Fingerprint, geometry: Geometry, device: str, steps: int, batch: int) -> Geometry | None:
    """Smaller inputs when a fold's round 1 still makes fewer than :data:`TARGET_STEPS` optimiser steps on a CPU at
    the smallest batch (:func:`batch_for_steps` has nothing left to give): whole images resized, or, where a resize
    would blur too much of the objects' outlines, random crops at full resolution.

    A CPU step costs about its pixels, so a side scaled by ``s`` buys about ``1 / s**2`` the steps in the same time:
    ``s = sqrt(steps / TARGET_STEPS)``, but at least :data:`MIN_SCALE` and the shorter side at least
    :data:`MIN_RESIZED_SIDE` px. A resize keeps every object in each step but shrinks it: the share of its pixels
    on an outline grows as ``1 / s`` (:func:`pipeline.plan.fingerprint.boundary_share`). Where that share would reach
    :data:`MAX_RESIZED_BOUNDARY`, the model trains instead on random crops of that size at full resolution (one per
    image and epoch) and predicts whole images (it is fully convolutional): it sees fewer objects a step, each
    sharp. Measured on the zoo at 3 minutes on a 2-core box, LB mIoU over seeds 0-2, crops - resize (paired):
    thin (1-3 px strokes, share 0.77 -> 1.5) +0.083, silhouette (a horse's legs and tail, 0.25 -> 0.47) +0.036,
    objects (0.32 -> 0.49, still on its background plateau) -0.005, manyclass (0.18 -> 0.36, two seeds) -0.011,
    textures (0.105 -> 0.21) -0.018, scenes (0.096 -> 0.19) -0.033 (bench/RESULTS.md, 2026-12-07).
    Resized predictions go back to each image's size (the ``resize`` policy). ``None`` on a GPU, with enough steps,
    a batch the steps rule can still shrink, random crops or an existing resize, or when the scale would be above
    0.9 (too little to gain).
    """
    if device != "cpu" or steps >= TARGET_STEPS or batch > MIN_CPU_BATCH or geometry.crops:
        return None
    if geometry.resize != "pad":
        return None
    h, w = geometry.input_size
    floor = max(MIN_SCALE, MIN_RESIZED_SIDE / min(h, w))
    scale = max(math.sqrt(max(steps, 1) / TARGET_STEPS), floor)
    if scale > 0.9:
        return None
    size = (_round_up(int(h * scale), 8), _round_up(int(w * scale), 8))
    bound = "half a side" if floor == MIN_SCALE else f"the shorter side kept {MIN_RESIZED_SIDE} px"
    why = (
        f"{steps} optimiser steps per fold at batch {batch} and {h}x{w}, under the {TARGET_STEPS} a model from "
        f"scratch needs; a CPU step costs about its pixels: scale {scale:.2f} "
        f"({'at the floor: ' + bound if scale == floor else 'floor ' + bound}), {size[0]}x{size[1]}"
    )
    blurred = fp.boundary_share / scale
    outline = (
        f"{100 * fp.boundary_share:.0f}% of the foreground pixels on an outline, {100 * blurred:.0f}% once resized"
    )
    if blurred >= MAX_RESIZED_BOUNDARY:
        why += (
            f": random crops of that size at full resolution ({outline}, at least "
            f"{100 * MAX_RESIZED_BOUNDARY:.0f}%), whole images at inference"
        )
        choices = [Choice("input_size", list(size), why), Choice("resize", "pad", why)]
        return Geometry(size, "pad", True, choices, whole_inference=True)
    why += f": whole images resized, predictions resized back ({outline}, under {100 * MAX_RESIZED_BOUNDARY:.0f}%)"
    return Geometry(size, "resize", False, [Choice("input_size", list(size), why), Choice("resize", "resize", why)])


def keep_smaller_input(steps: int, timing: Any, small_steps: int, small_timing: Any) -> tuple[bool, str]:
    """Whether :func:`scale_for_steps`'s smaller input stands, measured: the probe at that size must buy at least
    :data:`MIN_STEP_GAIN` times round 1's steps. Returns the verdict and, when the full size stays, why."""
    if small_steps >= MIN_STEP_GAIN * steps:
        return True, ""
    h, w = small_timing.input_size
    why = (
        f"the steps rule tried {h}x{w}: {small_timing.step_seconds:.3f} s a step against "
        f"{timing.step_seconds:.3f}, {small_steps} steps instead of {steps}; kept the full size"
    )
    return False, why


def folds_for_steps(steps: Mapping[int, int], target: int) -> tuple[int, str]:
    """How many folds train: the most whose round 1 each still makes ``target`` optimiser steps, else one.

    ``steps[n]``: the round-1 steps per fold when ``n`` folds share the budget (every count from 1 to the folds of
    ``train.folds``). A model from scratch predicts background alone for its first ~900 steps on the zoo's `objects`
    (bench/RECIPE.md), so where the budget cannot give every fold enough steps, fewer folds trained longer beat an
    ensemble of models that have barely left that plateau; the untrained folds' images are then not in the OOF.

    >>> folds_for_steps({1: 3500, 2: 1750, 3: 1160, 4: 870, 5: 700}, 3000)[0]
    1
    >>> folds_for_steps({1: 9000, 2: 4500, 3: 3000, 4: 2250, 5: 1800}, 3000)[0]
    3
    >>> folds_for_steps({1: 20000, 2: 10000, 3: 6600, 4: 5000, 5: 4000}, 3000)[0]
    5
    >>> folds_for_steps({1: 640}, 3000)  # train.folds: [0]
    (1, 'the one fold makes 640 round-1 steps, under plan.fold_steps (3000): no fold to drop')
    """
    most = max(steps)
    n = max([k for k, s in steps.items() if s >= target], default=1)
    if n == most and steps[n] >= target:
        return n, f"each of the {n} folds makes {steps[n]} round-1 steps, at least plan.fold_steps ({target})"
    if most == 1:
        return 1, f"the one fold makes {steps[1]} round-1 steps, under plan.fold_steps ({target}): no fold to drop"
    return n, (
        f"the budget gives each of {most} folds {steps[most]} round-1 steps, under plan.fold_steps ({target}): "
        f"{n} fold{'s' if n > 1 else ''} of {steps[n]} steps each instead (the others' stages skip; 0 trains all)"
    )


MAX_EPOCH_LOSS = 0.2  # the smaller batch may cost at most this share of round 1's epochs


def keep_smaller_batch(epochs: int, timing: Any, small_epochs: int, small_timing: Any) -> tuple[bool, str]:
    """Whether the steps rule's smaller batch stands, measured: it must keep at least ``1 - MAX_EPOCH_LOSS`` of the
    round-1 epochs the larger batch had (a CPU image then costs about the same at both). Returns the verdict and,
    when the larger batch stays, why (the zoo's `objects` at 96x128: 24-26 against 22-24 ms
    an image, kept; the embedded digits at 64x84: 13.7 against 10.1 ms, 2 epochs instead of 3, refused)."""
    if small_epochs >= (1 - MAX_EPOCH_LOSS) * epochs:
        return True, ""
    ms = lambda t: 1000 * t.step_seconds / t.batch_size  # noqa: E731
    why = (
        f"the steps rule tried batch {small_timing.batch_size}: {ms(small_timing):.1f} ms an image against "
        f"{ms(timing):.1f} at batch {timing.batch_size}, so {small_epochs} epochs instead of {epochs}; kept "
        f"{timing.batch_size}"
    )
    return False, why


def choose_lr(base_lr: float, batch: int, source: str) -> Choice:
    """Square-root scaling of the base config's AdamW learning rate (set for a batch of 32) to the batch."""
    lr = float(f"{base_lr * math.sqrt(batch / REFERENCE_BATCH):.3g}")
    why = f"{source}'s {base_lr:g} at batch {REFERENCE_BATCH}, scaled by sqrt({batch}/{REFERENCE_BATCH})"
    return Choice("recipe.lr", lr, why if batch != REFERENCE_BATCH else f"{source}'s {base_lr:g} at batch {batch}")


def rare_classes(fp: Fingerprint) -> list[ClassStats]:
    """Foreground classes with few pixels (against the median foreground class) or present in few images."""
    fg = [c for c in fp.foreground if c.pixel_share > 0]
    if not fg:
        return []
    median = sorted(c.pixel_share for c in fg)[len(fg) // 2]
    return [c for c in fg if c.pixel_share < RARE_PIXELS * median or c.image_share < RARE_IMAGES]


def choose_loss(fp: Fingerprint, base_loss: list[dict[str, Any]]) -> list[Choice]:
    """CE + Dice as the base config has them; CE class weights (sqrt inverse frequency, at most 10) for rare
    classes. Dice already weighs every class equally, whatever its size."""
    terms = " + ".join(f"{t.get('weight', 1.0):g} {t['name']}" for t in base_loss)
    choices = [Choice("recipe.loss", base_loss, f"{terms}: cross-entropy for pixels, Dice for each class's overlap")]
    rare = rare_classes(fp)
    if not rare:
        why = "no rare class (each foreground class has at least a fifth of the median class's pixels)"
        return [*choices, Choice("recipe.class_weights", None, why)]
    fg = [c for c in fp.foreground if c.pixel_share > 0]
    median = sorted(c.pixel_share for c in fg)[len(fg) // 2]
    rare_ids = {c.index for c in rare}
    weights = [
        round(min(MAX_CLASS_WEIGHT, math.sqrt(median / c.pixel_share)), 3) if c.index in rare_ids else 1.0
        for c in fp.classes
    ]
    names = ", ".join(f"{c.name} ({100 * c.pixel_share:.2f}% px, {100 * c.image_share:.0f}% img)" for c in rare)
    why = f"rare classes {names}: CE weight sqrt(median share / share), at most {MAX_CLASS_WEIGHT:g}"
    return [*choices, Choice("recipe.class_weights", weights, why)]


def choose_sampling(fp: Fingerprint, geometry: Geometry, n_fit: int, batch: int, recipe_keys: set[str]) -> list[Choice]:
    """Samples per epoch (random crops: about one pass over the training pixels) and the foreground share of them
    (nnU-Net's third, when crops of sparse images or rare classes would rarely show a class)."""
    out = []
    if "samples_per_epoch" in recipe_keys:
        if geometry.whole_inference:
            why = "random crops of whole images that fit the model: an epoch is one crop of each file"
            out.append(Choice("recipe.samples_per_epoch", None, why))
        elif geometry.crops:
            ch, cw = geometry.input_size
            per_image = max(1, round(fp.height.median * fp.width.median / (ch * cw)))
            samples = max(4 * batch, n_fit * per_image) // batch * batch
            why = f"{n_fit} training images of about {per_image} crops each: an epoch is {samples} crops"
            out.append(Choice("recipe.samples_per_epoch", samples, why))
        else:
            out.append(Choice("recipe.samples_per_epoch", None, "whole images: an epoch is one pass over the files"))
    if "foreground_share" in recipe_keys:
        rare = rare_classes(fp)
        if rare or (geometry.crops and fp.foreground_share < 0.5):
            why = (
                f"rare classes ({', '.join(c.name for c in rare)})"
                if rare
                else (f"random crops of images that are {100 * fp.foreground_share:.1f}% foreground")
            )
            out.append(Choice("recipe.foreground_share", FOREGROUND_SHARE, f"{why}: a third of samples on a class"))
        else:
            why = "no rare class and whole images: every image is seen each epoch, no oversampling"
            out.append(Choice("recipe.foreground_share", 0.0, why))
    return out


def choose_tta(geometry: Geometry) -> list[Choice]:
    """TTA candidates for the OOF check (``infer.tta: auto`` keeps only those that raise OOF mIoU) and sliding."""
    flips = Choice("infer.tta_flips", ["hflip", "vflip"], "candidates only: the OOF check keeps a flip that helps")
    if geometry.crops and not geometry.whole_inference:
        return [
            flips,
            Choice("infer.tta_scales", [], "sliding-window inference: a scale would cost another pass over every tile"),
            Choice("infer.sliding", True, "trained on crops: test images go through overlapping tiles of that size"),
        ]
    return [
        flips,
        Choice("infer.tta_scales", [0.75, 1.25], "candidates only: the OOF check keeps a scale that helps"),
        Choice(
            "infer.sliding",
            False,
            "trained on crops of images the model takes whole: whole images at inference (it is fully convolutional)"
            if geometry.whole_inference
            else "the model sees whole images in training: whole images at inference",
        ),
    ]


def choose_normalisation(fp: Fingerprint, pretrained: bool) -> Choice:
    """Reported, not a config key: the pipeline normalises with ImageNet statistics (what timm's weights expect)."""
    stats = f"dataset mean {[round(v, 3) for v in fp.mean]}, std {[round(v, 3) for v in fp.std]}"
    if pretrained:
        return Choice("normalisation", "imagenet", f"pretrained encoder: the statistics its weights expect ({stats})")
    return Choice(
        "normalisation",
        "imagenet",
        f"from scratch: ImageNet statistics, the pipeline's only normalisation; the first BatchNorm absorbs the "
        f"difference from the {stats}",
    )


def choose_augment(fp: Fingerprint, input_size: Sequence[int], epochs: int) -> Choice:
    """Flips and quarter turns the masks are closed under; scale and colour for long trainings (:mod:`.augment`)."""
    augs, why = choose_augmentations(fp, input_size, epochs)
    return Choice("recipe.augment", augs, why)


def choose_copy_paste(fp: Fingerprint, epochs: int, steps: int) -> Choice:
    """Copy-paste for long trainings on data made of objects on a background (:func:`.augment.choose_paste`)."""
    share, why = choose_paste(fp, epochs, steps)
    return Choice("recipe.paste", share, why)


def fixed_size_multiple(cfg: Mapping[str, Any]) -> int:
    """The multiple a fixed-input encoder needs (Swin windows, BEiT's pyramid down to stride 32); 1 otherwise."""
    if cfg.get("adapter") == "vit_pyramid" or str(cfg.get("encoder", "")).startswith("swin"):
        return 32
    return 1
