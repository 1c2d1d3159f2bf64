"""The data fingerprint the plan is derived from, read from training data only (never test truth).

What nnU-Net calls the dataset fingerprint, for 2-D competition data: image size distribution, channels and bit
depth, per-channel pixel statistics, class pixel shares and per-image presence, connected-component (object) sizes
per class, the number of images, and whether the masks are closed under flips and quarter turns
(:mod:`pipeline.plan.symmetry`). Sizes, shares and presence come from the ``masks`` stage's outputs
(``work/train_index.csv``, ``work/mask_summary.json``, ``work/classes.json``); component sizes and pixel statistics
from a seeded sample of ``plan.fingerprint_images`` masks and images (every one when there are fewer).

Components are 4-connected (``scipy.ndimage.label``'s default cross), per class: two touching digits of different
classes are two objects, a digit broken by a thin gap is two as well.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from pipeline.config import DataParams, to_dict
from pipeline.errors import UserError
from pipeline.io import read_image, read_json, read_mask, safe_join
from pipeline.labels import IGNORE_INDEX, regions
from pipeline.paths import Layout
from pipeline.plan.symmetry import SYMMETRY_COLUMN, chiral_reasons

# PIL modes -> (channels, bits per channel); anything else is read as 8-bit RGB by pipeline.io.read_image
_MODES = {
    "1": (1, 1),
    "L": (1, 8),
    "P": (3, 8),
    "LA": (2, 8),
    "RGB": (3, 8),
    "RGBA": (4, 8),
    "CMYK": (4, 8),
    "I;16": (1, 16),
    "I;16B": (1, 16),
    "I;16L": (1, 16),
    "I": (1, 32),
    "F": (1, 32),
}


@dataclasses.dataclass(frozen=True)
class Spread:
    """Minimum, median and maximum of a quantity over images (or objects)."""

    min: float
    median: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray) -> Spread:
        v = np.asarray(values, dtype=np.float64)
        if v.size == 0:
            return cls(0.0, 0.0, 0.0)
        return cls(float(v.min()), float(np.median(v)), float(v.max()))


@dataclasses.dataclass(frozen=True)
class ClassStats:
    """One class: its share of the labelled pixels, the share of images holding it, its objects' sizes.

    ``area`` and ``side`` (square root of the area, a length to compare with a crop's side) are over the 4-connected
    components of the class in the sampled masks; ``components`` counts them.
    """

    index: int
    name: str
    pixel_share: float
    image_share: float
    components: int
    area: Spread
    area_p10: float
    side: Spread


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What the plan knows about a competition's training data."""

    images: int  # usable training images (train_index.csv rows)
    test_images: int  # images listed in test.json (their count only: how many pseudo-labels round 2 may add)
    height: Spread
    width: Spread
    distinct_sizes: int
    modal_size: tuple[int, int]  # the most common (H, W)
    modal_share: float  # share of images at the modal size
    modes: dict[str, int]  # PIL mode -> sampled images in it
    channels: int  # 1 when every sampled image is grey (mode L/I, or RGB with R == G == B), else 3 (alpha dropped)
    bit_depth: int
    mean: tuple[float, float, float]  # per RGB channel, pixels scaled to [0, 1], over the sampled images
    std: tuple[float, float, float]
    foreground_share: float  # share of labelled pixels not background
    ignore_share: float  # share of all pixels that are ignore (255)
    classes: list[ClassStats]  # every class, background (index 0) first
    sample: int  # images and masks read for the pixel statistics and components
    read_seconds: float  # mean seconds to read one image and its mask (what preloading a fold costs)
    # flip or quarter turn -> why the sampled masks are not closed under it (pipeline.plan.symmetry); absent: closed
    handedness: dict[str, str] = dataclasses.field(default_factory=dict)
    # share of the sampled foreground pixels on a boundary (:func:`boundary_share`): how much a resize would blur
    boundary_share: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @property
    def foreground(self) -> list[ClassStats]:
        return [c for c in self.classes if c.index != 0]


def class_components(
    masks: Iterable[np.ndarray], num_classes: int, multilabel: bool = False
) -> Iterator[tuple[int, np.ndarray, np.ndarray, int]]:
    """For each mask and each foreground class (1..num_classes-1) in it: ``(class, its pixels, their 4-connected
    component labels, the number of components)``. Ignore pixels (255) and background (0) form no objects; a
    multilabel mask's classes are its bits (:func:`pipeline.labels.regions`)."""
    for m in masks:
        for c, inside in regions(m, multilabel):
            if c >= num_classes:
                continue
            labels, n = ndimage.label(inside)
            if n:
                yield c, inside, labels, n


def boundary_share(masks: Iterable[np.ndarray]) -> float:
    """The share of foreground pixels (not background 0, not ignore 255) that have a 4-neighbour of another label
    (background, another class or ignore; the image border is no neighbour), pooled over ``masks``: 0 when there is
    no foreground. A resize by ``s`` scales an object's outline by ``s`` and its area by ``s**2``, so the share of
    its pixels on the outline, the ones a resize blurs, grows about as ``1 / s``.

    >>> m = np.zeros((6, 8), np.uint8); m[1:5, 1:5] = 1; m[1:5, 6] = 2  # a 4x4 square and a 1-px line
    >>> boundary_share([m])  # the square's 12 outline pixels of 16 and all 4 of the line's: 16 of 20
    0.8
    """
    edge = fg = 0
    for m in masks:
        inside = (m != 0) & (m != IGNORE_INDEX)
        differs = np.zeros(m.shape, bool)
        vertical, horizontal = m[1:] != m[:-1], m[:, 1:] != m[:, :-1]
        differs[1:] |= vertical
        differs[:-1] |= vertical
        differs[:, 1:] |= horizontal
        differs[:, :-1] |= horizontal
        edge += int((differs & inside).sum())
        fg += int(inside.sum())
    return edge / fg if fg else 0.0


def component_areas(masks: Iterable[np.ndarray], num_classes: int, multilabel: bool = False) -> dict[int, list[int]]:
    """Pixel areas of the 4-connected components of each foreground class (1..num_classes-1) over ``masks``.

    Ignore pixels (255) and background (0) form no objects. Returns ``{class: [area, ...]}`` for every foreground
    class, empty lists for classes never present.
    """
    areas: dict[int, list[int]] = {c: [] for c in range(1, num_classes)}
    for c, _, labels, _ in class_components(masks, num_classes, multilabel):
        areas[c].extend(int(a) for a in np.bincount(labels.ravel())[1:])
    return areas


def channel_stats(images: Iterable[np.ndarray]) -> tuple[tuple[float, ...], tuple[float, ...], bool]:
    """Per-channel mean and std of (H, W, 3) uint8 images scaled to [0, 1], pooled over every pixel, and whether
    every image is grey (R == G == B everywhere)."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    grey = True
    for im in images:
        x = im.reshape(-1, 3).astype(np.float64) / 255.0
        total += x.sum(0)
        total_sq += np.square(x).sum(0)
        count += x.shape[0]
        grey = grey and bool((im[..., 0] == im[..., 1]).all() and (im[..., 1] == im[..., 2]).all())
    if count == 0:
        return (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), True
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std), grey


def class_stats(
    classes: Sequence[dict[str, Any]],
    summary: dict[str, Any],
    areas: dict[int, list[int]],
) -> list[ClassStats]:
    """Per-class shares from the masks stage's summary (all images) and object sizes from ``areas`` (the sample)."""
    pixels = {c["index"]: c["pixels"] for c in summary["classes"]}
    present = {c["index"]: c["images"] for c in summary["classes"]}
    labelled = max(1, sum(pixels.values()))
    n = max(1, summary["images"])
    out = []
    for c in classes:
        i = c["index"]
        a = np.asarray(areas.get(i, []), dtype=np.float64)
        out.append(
            ClassStats(
                index=i,
                name=str(c["name"]),
                pixel_share=pixels.get(i, 0) / labelled,
                image_share=present.get(i, 0) / n,
                components=int(a.size),
                area=Spread.of(a),
                area_p10=float(np.percentile(a, 10)) if a.size else 0.0,
                side=Spread.of(np.sqrt(a)),
            )
        )
    return out


def sample_rows(n: int, k: int, seed: int) -> np.ndarray:
    """Sorted indices of ``k`` of ``n`` rows drawn without replacement (all of them when ``k >= n``)."""
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def image_mode(path: Path) -> str:
    try:
        with Image.open(path) as im:
            return im.mode
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: unreadable or corrupt image ({e})") from None


def compute_fingerprint(data: DataParams, layout: Layout, sample: int = 500, seed: int = 0) -> Fingerprint:
    """The fingerprint of the training data the ``masks`` stage prepared (``layout``), images from ``data``."""
    for path in (layout.train_index, layout.classes_json, layout.mask_summary):
        if not path.is_file():
            raise UserError(f"{path} not found: run the masks stage first (dvc repro masks)")
    index = pd.read_csv(layout.train_index)
    classes = read_json(layout.classes_json)
    summary = read_json(layout.mask_summary)
    if index.empty:
        raise UserError(f"{layout.train_index}: no training images")
    images_root = data.images_path
    rows = index.iloc[sample_rows(len(index), sample, seed)]

    masks, pictures, modes = [], [], {}
    t0 = time.perf_counter()
    for image_id, file_name in zip(rows["image_id"], rows["file_name"]):
        path = safe_join(images_root, str(file_name))
        mode = image_mode(path)
        modes[mode] = modes.get(mode, 0) + 1
        pictures.append(read_image(path))
        masks.append(read_mask(layout.mask_path(int(image_id))))
    read_seconds = (time.perf_counter() - t0) / max(1, len(rows))
    mean, std, grey = channel_stats(pictures)
    del pictures
    multilabel = summary.get("labels") == "multilabel"  # bit-field masks (pipeline/labels.py)
    areas = component_areas(masks, len(classes), multilabel)
    handedness = chiral_reasons(masks, list(SYMMETRY_COLUMN), multilabel)
    stats = class_stats(classes, summary, areas)

    sizes = list(zip(index["height"].astype(int), index["width"].astype(int)))
    counts: dict[tuple[int, int], int] = {}
    for s in sizes:
        counts[s] = counts.get(s, 0) + 1
    modal = max(counts, key=lambda s: (counts[s], s))
    grey_modes = all(m in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F") for m in modes)
    labelled = sum(c["pixels"] for c in summary["classes"])
    total = labelled + summary.get("ignored_pixels", 0)
    test_json = data.test_json_path
    test_images = len(read_json(test_json).get("images", [])) if test_json.is_file() else 0
    return Fingerprint(
        images=len(index),
        test_images=test_images,
        height=Spread.of(index["height"].to_numpy()),
        width=Spread.of(index["width"].to_numpy()),
        distinct_sizes=len(counts),
        modal_size=(int(modal[0]), int(modal[1])),
        modal_share=counts[modal] / len(sizes),
        modes=dict(sorted(modes.items())),
        channels=1 if (grey or grey_modes) else 3,
        bit_depth=max(_MODES.get(m, (3, 8))[1] for m in modes),
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        foreground_share=1.0 - (stats[0].pixel_share if stats and stats[0].index == 0 else 0.0),
        ignore_share=summary.get("ignored_pixels", 0) / max(1, total),
        classes=stats,
        sample=len(rows),
        read_seconds=read_seconds,
        handedness=handedness,
        boundary_share=boundary_share(masks),
    )
