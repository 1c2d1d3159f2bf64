"""Copy-paste augmentation: a training sample gets the labelled foreground of another sample pasted over it.

Ghiasi et al. (2021, "Simple Copy-Paste is a Strong Data Augmentation Method for Instance Segmentation") paste the
objects of one image onto another; with few training images it multiplies the object / background / neighbour
combinations the model sees. Here the unit is the whole labelled foreground of a donor (every pixel whose class is
neither background 0 nor ignore 255), after the donor went through the training transform of its own, so both
samples already have the input size: the donor's pixels and labels overwrite the receiver's where it has
foreground, and the receiver's objects it covers are occluded, labels included.

The donors are drawn in the main process (:class:`PasteSampler`, seeded from the run's seed and the epoch), not in
the loader's workers, so a resumed run and any number of workers draw the same pairs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from pipeline.labels import IGNORE_INDEX

NO_DONOR = -1


def paste(receiver: dict[str, Any], donor: dict[str, Any]) -> dict[str, Any]:
    """``receiver`` (an item of :class:`pipeline.data.dataset.SegDataset`: (H, W, 3) uint8 image, (H, W) long mask)
    with ``donor``'s foreground pixels and labels over it; a ``ValueError`` if their sizes differ."""
    image, mask = receiver["image"], receiver["mask"]
    if donor["mask"].shape != mask.shape:
        raise ValueError(f"paste: donor mask {tuple(donor['mask'].shape)} differs from {tuple(mask.shape)}")
    fg = (donor["mask"] > 0) & (donor["mask"] != IGNORE_INDEX)
    image, mask = image.clone(), mask.clone()
    image[fg] = donor["image"][fg]
    mask[fg] = donor["mask"][fg]
    out = {**receiver, "image": image, "mask": mask}
    if "soft" in receiver:  # soft targets (pseudo.soft): the donor's probabilities, or its labels as one-hot
        given = donor["soft"] if donor["soft_row"] else one_hot(donor["mask"], donor["soft"].shape[0])
        out["soft"] = receiver["soft"].clone()
        out["soft"][:, fg] = given[:, fg]
    return out


def one_hot(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(H, W) labels -> (C, H, W) uint8, 255 on each pixel's class (none on ignore).

    >>> one_hot(torch.tensor([[0, 2], [255, 1]]), 3)[:, 0].tolist()
    [[255, 0], [0, 0], [0, 255]]
    """
    planes = torch.arange(num_classes, device=mask.device)[:, None, None] == mask[None]
    return planes.to(torch.uint8) * 255


class PasteSampler(Sampler[tuple[Any, int]]):
    """``base``'s items (or a shuffled pass over ``n`` indices when ``base`` is None), each paired with a donor index
    drawn uniformly with probability ``p``, else :data:`NO_DONOR`; reseeded by :meth:`set_epoch`."""

    def __init__(self, base: Sampler[Any] | None, n: int, p: float, seed: int) -> None:
        self.base, self.n, self.p, self.seed, self.epoch = base, n, p, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.base is not None and hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base) if self.base is not None else self.n  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        rng = np.random.default_rng((self.seed, self.epoch, 0x9A57E))
        items = iter(self.base) if self.base is not None else iter(rng.permutation(self.n).tolist())
        for item in items:
            donor = int(rng.integers(self.n)) if rng.random() < self.p else NO_DONOR
            yield item, donor


class PastedDataset(Dataset):
    """Items of ``dataset`` keyed by the (item, donor) pairs of :class:`PasteSampler`: the item, with the donor's
    foreground pasted over it unless the donor is :data:`NO_DONOR` or the item itself."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, pair: tuple[Any, int]) -> dict[str, Any]:
        item, donor = pair
        out = self.dataset[item]
        if donor == NO_DONOR or donor == out["index"]:
            return out
        return paste(out, self.dataset[donor])
