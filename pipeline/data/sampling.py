"""Epochs as sampled crops: which image (and which pixel a crop is centred on) each training sample comes from.

With ``recipe.samples_per_epoch`` an epoch is that many samples drawn with replacement, so a competition of 16
large images still makes full batches (each sample a random crop of ``input_size``); with
``recipe.foreground_share`` (nnU-Net's ``oversample_foreground_percent``, 0.33) that share of the samples is centred
on a foreground pixel of a class drawn uniformly among the classes present in the training masks (so a class under
1% of the pixels is drawn as often as a common one), from an image containing it.

With ``extra`` images (the pseudo-labelled test images of rounds 2+, last in the dataset) and ``extra_share``, that
share of each epoch's samples is drawn from them and the rest from the labelled images, shuffled together (each batch
holds the share on average); with ``extra_first`` epochs, those epochs draw only extra images and the later ones only
labelled images (pretrain, then fine-tune). A sample centred on foreground is drawn from every image holding the class.

Every draw comes from ``numpy.random.default_rng((seed, epoch))``: an epoch's samples depend on nothing else, so a
resumed run repeats them exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from pipeline.labels import regions

MAX_POINTS = 4096  # foreground pixels kept per (image, class): enough to centre crops on, small for 6000x6000 tiles
NO_CENTRE = -1  # (image, NO_CENTRE, NO_CENTRE): a sample cropped at random by the dataset's transform


def foreground_points(
    masks: Sequence[np.ndarray], seed: int = 0, multilabel: bool = False
) -> dict[int, list[tuple[int, np.ndarray]]]:
    """Per foreground class, the images holding it and up to ``MAX_POINTS`` of its (y, x) pixels in each (a
    multilabel mask's classes are its bits: :func:`pipeline.labels.regions`).

    Returns:
        ``{class: [(image index, (n, 2) int32 array of y, x), ...]}`` for every class > 0 (not ignore) present.
    """
    rng = np.random.default_rng(seed)
    points: dict[int, list[tuple[int, np.ndarray]]] = {}
    for i, m in enumerate(masks):
        for c, inside in regions(m, multilabel):
            idx = np.flatnonzero(inside.ravel())
            if len(idx) > MAX_POINTS:  # a fixed subsample: the same points every epoch and every run
                idx = np.sort(rng.choice(idx, MAX_POINTS, replace=False))
            yx = np.stack(np.unravel_index(idx, m.shape), 1).astype(np.int32)
            points.setdefault(int(c), []).append((i, yx))
    return points


@dataclasses.dataclass(frozen=True)
class Extra:
    """The extra images of a round 2+ (its pseudo-labelled test images, last in the dataset) and how epochs draw them:
    ``share`` of each epoch's samples (``None``: no split), or only them for the ``first`` epochs, then none."""

    images: int = 0
    share: float | None = None
    first: int = 0

    def share_at(self, epoch: int, n_images: int) -> float | None:
        """The share of epoch ``epoch``'s samples drawn from the extra images (``None``: no split)."""
        if self.images == 0 or self.images == n_images:
            return None
        if self.first:
            return 1.0 if epoch < self.first else 0.0
        return self.share


class CropSampler(Sampler[tuple[int, int, int]]):
    """Yields ``(image index, y, x)`` per sample: a crop centred on pixel (y, x), or ``NO_CENTRE`` for a random one.

    Args:
        n_images: training images in the dataset.
        points: :func:`foreground_points` of the training masks.
        samples: samples per epoch; ``None`` is one pass over the images (a permutation, each image once).
        foreground_share: share of the samples centred on a foreground pixel (rounded to a whole count).
        seed: with the epoch (:meth:`set_epoch`), seeds every draw.
        rank, world: under DDP each process takes every ``world``-th sample from ``rank`` (``samples // world``).
        extra: the extra (pseudo-labelled) images, last in the dataset, and their share of each epoch.
    """

    def __init__(
        self,
        n_images: int,
        points: dict[int, list[tuple[int, np.ndarray]]],
        samples: int | None,
        foreground_share: float,
        seed: int,
        rank: int = 0,
        world: int = 1,
        extra: Extra = Extra(),  # noqa: B008 - frozen: one shared default is safe
    ) -> None:
        if not 0.0 <= foreground_share <= 1.0:
            raise ValueError(f"foreground_share must be in [0, 1], got {foreground_share}")
        if not 0 <= extra.images <= n_images:
            raise ValueError(f"extra images must be in [0, {n_images}], got {extra.images}")
        self.n_images, self.points, self.seed, self.rank, self.world = n_images, points, seed, rank, world
        self.extra = extra
        self.samples = samples if samples is not None else n_images
        self.foreground_share = foreground_share if points else 0.0  # no foreground at all: random crops only
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples // self.world

    def draw(self, epoch: int) -> np.ndarray:
        """The epoch's (samples, 3) int64 array of (image, y, x) for all processes, in order."""
        rng = np.random.default_rng((self.seed, epoch))
        n = self.samples
        out = np.full((n, 3), NO_CENTRE, dtype=np.int64)
        share = self.extra.share_at(epoch, self.n_images)
        if share is not None:  # labelled images [0, n - extra), extra ones after: each group its share
            n_x = int(round(n * share))
            labelled = self.n_images - self.extra.images
            out[:, 0] = rng.permutation(
                np.concatenate([_draw(rng, 0, labelled, n - n_x), _draw(rng, labelled, self.n_images, n_x)])
            )
        elif n == self.n_images:
            out[:, 0] = rng.permutation(self.n_images)  # one pass: every image once, as a shuffled loader would
        else:
            out[:, 0] = rng.integers(0, self.n_images, n)
        n_fg = int(round(n * self.foreground_share))
        if n_fg:
            classes = sorted(self.points)
            for row in rng.choice(n, n_fg, replace=False):
                holders = self.points[classes[rng.integers(len(classes))]]
                image, yx = holders[rng.integers(len(holders))]
                y, x = yx[rng.integers(len(yx))]
                out[row] = (image, y, x)
        return out

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        rows = self.draw(self.epoch)[: len(self) * self.world][self.rank :: self.world]
        return iter([(int(i), int(y), int(x)) for i, y, x in rows])


def _draw(rng: np.random.Generator, lo: int, hi: int, n: int) -> np.ndarray:
    """``n`` image indices from ``[lo, hi)``: each once (shuffled) while they last, then drawn with replacement."""
    if n <= 0:
        return np.zeros(0, np.int64)
    whole, rest = divmod(n, hi - lo)
    passes = [rng.permutation(np.arange(lo, hi)) for _ in range(whole)]
    return np.concatenate([*passes, rng.choice(np.arange(lo, hi), rest, replace=False)]).astype(np.int64)


def centred_window(shape: tuple[int, int], size: tuple[int, int], y: int, x: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a ``size`` window centred on (y, x), shifted to lie inside ``shape``.

    A side where the image is smaller than the window keeps the whole image (the transform pads it).
    """
    out = []
    for extent, want, c in zip(shape, size, (y, x)):
        h = min(extent, want)
        out.append((min(max(0, c - h // 2), extent - h), h))
    (top, h), (left, w) = out
    return top, left, h, w
