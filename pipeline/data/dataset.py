"""Datasets and transforms for training and inference.

Images travel as uint8 (H, W, 3) arrays and are normalised per batch on the device (:func:`normalize`), which is
cheaper than per-sample float work on a 2-core CPU. Masks are uint8 class indices with 255 = ignore.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.config import ModelConfig
from pipeline.data.cache import DecodedCache
from pipeline.data.sampling import NO_CENTRE, centred_window
from pipeline.errors import UserError
from pipeline.io import read_image, read_mask, read_npy
from pipeline.labels import IGNORE_INDEX

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics: what timm's pretrained encoders expect
STD = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, ImageNet-normalised."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def size_transforms(cfg: ModelConfig, train: bool) -> list[A.BasicTransform]:
    """The size policy: ``pad`` keeps pixels (pad with ignore, random-crop larger images in training);
    ``resize`` interpolates images (linear) and masks (nearest) to ``cfg.input_size``."""
    h, w = cfg.input_size
    if cfg.resize == "resize":
        return [A.Resize(h, w, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)]
    if not train:
        return []  # inference on the whole image; the model pads to its stride and crops back
    return [
        A.PadIfNeeded(h, w, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_INDEX),
        A.RandomCrop(h, w),
    ]


def build_transform(cfg: ModelConfig, train: bool, seed: int | None = None) -> A.Compose:
    """Size policy plus (in training) the config's albumentations, each named by its class."""
    ops: list[A.BasicTransform] = []
    if train:
        for aug in cfg.recipe.augment:
            cls = getattr(A, aug.name, None)
            if cls is None or not isinstance(cls, type):
                raise UserError(f"augment: {aug.name!r} is not an albumentations transform (see albumentations docs)")
            try:
                ops.append(cls(**aug.kwargs))
            except Exception as e:  # albumentations validates its kwargs with pydantic
                raise UserError(f"augment {aug.name}: bad kwargs {aug.kwargs}: {e}".replace("\n", " ")) from None
    ops += size_transforms(cfg, train)
    # "soft": the teacher's (H, W, C) probabilities of a pseudo-labelled image (pseudo.soft) move as the mask does
    return A.Compose(ops, seed=seed, additional_targets={"soft": "mask"})


@dataclasses.dataclass(frozen=True)
class SoftPaths:
    """Soft targets of a training set (``pseudo.soft``): per image, the file of a pseudo-labelled one's teacher
    probabilities (:meth:`pipeline.paths.PseudoSetFiles.soft_for`) or ``None`` for a labelled one; the class count."""

    paths: list[Path | None]
    num_classes: int


class SegDataset(Dataset):
    """Images (and masks, when given) as uint8 arrays; decoded once and kept in memory (``preload``), or read on
    each access from the source files or from a :class:`~pipeline.data.cache.DecodedCache` (``cache``).

    An item is an image index, or an ``(index, y, x)`` triple from :class:`pipeline.data.sampling.CropSampler`:
    with ``crop`` set and (y, x) a pixel, the image is first cut to the ``crop`` window centred on that pixel (kept
    inside the image), so the transform's own random crop leaves it whole; ``y == NO_CENTRE`` leaves the crop to
    the transform.

    Soft targets (``pseudo.soft``): with ``soft`` (:class:`SoftPaths`) every item also holds
    ``soft`` ((C, H, W) uint8, transformed as the mask is; zeros on a labelled row) and ``soft_row``; a soft row's
    ``mask`` is the teacher's argmax (255 only where the transform padded), so its every pixel is learnt
    (:class:`pipeline.losses.SoftTarget`). The probabilities are read from disk on each access, even with
    ``preload`` (they are ``C`` times a mask).
    """

    def __init__(
        self,
        images: Sequence[Path],
        masks: Sequence[Path] | None,
        transform: A.Compose | None = None,
        preload: bool = True,
        crop: tuple[int, int] | None = None,
        cache: DecodedCache | None = None,
        soft: SoftPaths | None = None,
    ) -> None:
        if masks is not None and len(masks) != len(images):
            raise ValueError("images and masks differ in length")
        if soft is not None and (len(soft.paths) != len(images) or masks is None or soft.num_classes < 1):
            raise ValueError("soft targets need one entry per image, masks and a class count")
        self.images, self.masks, self.transform = list(images), masks and list(masks), transform
        self.crop, self.cache, self.soft = crop, cache, soft
        self._cache: list[tuple[np.ndarray, np.ndarray | None]] | None = None
        if preload:
            self._cache = [self._read(i) for i in range(len(self.images))]

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        mask_path = self.masks[i] if self.masks is not None else None
        if self.cache is not None:
            image, mask = self.cache.read(self.images[i], mask_path)
        else:
            image = read_image(self.images[i])
            mask = read_mask(mask_path) if mask_path is not None else None
        if mask is not None and mask.shape != image.shape[:2]:
            raise UserError(f"{self.masks[i]}: mask is {mask.shape}, image {self.images[i]} is {image.shape[:2]}")
        return image, mask

    def original_mask(self, i: int) -> np.ndarray:
        """The (H, W) uint8 truth mask of item ``i`` at its original size, untransformed."""
        if self.masks is None:
            raise ValueError("this dataset has no masks")
        if self._cache is not None:
            return self._cache[i][1]  # type: ignore[return-value]
        return self._read(i)[1] if self.cache is not None else read_mask(self.masks[i])  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.images)

    def _soft(self, i: int, shape: tuple[int, ...]) -> np.ndarray | None:
        """Image ``i``'s teacher probabilities as (H, W, C) uint8, or ``None`` (a labelled image, or none at all)."""
        if self.soft is None or self.soft.paths[i] is None:
            return None
        path = self.soft.paths[i]
        soft, want = read_npy(path), (self.soft.num_classes, *shape)
        if soft.dtype != np.uint8 or soft.shape != want:
            raise UserError(
                f"{path}: teacher probabilities are {soft.dtype} {soft.shape}, expected uint8 {want} for "
                f"{self.images[i]}; run the pseudo stage again (dvc repro pseudo)"
            )
        return soft.transpose(1, 2, 0)

    def __getitem__(self, item: int | tuple[int, int, int]) -> dict[str, Any]:
        i, y, x = item if isinstance(item, tuple) else (int(item), NO_CENTRE, NO_CENTRE)
        image, mask = self._cache[i] if self._cache is not None else self._read(i)
        soft = self._soft(i, image.shape[:2])
        if soft is not None:
            mask = soft.argmax(-1).astype(np.uint8)  # every pixel is learnt, from the probabilities
        if self.crop is not None and y != NO_CENTRE:
            top, left, h, w = centred_window(image.shape[:2], self.crop, y, x)
            image = image[top : top + h, left : left + w]
            mask = mask[top : top + h, left : left + w] if mask is not None else None
            soft = soft[top : top + h, left : left + w] if soft is not None else None
        if self.transform is not None:
            targets = {"mask": mask} if mask is not None else {}
            out = self.transform(image=image, **targets, **({"soft": soft} if soft is not None else {}))
            image, mask, soft = out["image"], out.get("mask", mask), out.get("soft", soft)
        item: dict[str, Any] = {"image": torch.from_numpy(np.ascontiguousarray(image)), "index": i}
        if mask is not None:
            item["mask"] = torch.from_numpy(np.ascontiguousarray(mask)).long()
        if self.soft is not None:
            zeros = torch.zeros(self.soft.num_classes, *item["mask"].shape, dtype=torch.uint8)
            item["soft"] = (
                torch.from_numpy(np.ascontiguousarray(soft.transpose(2, 0, 1))) if soft is not None else zeros
            )
            item["soft_row"] = soft is not None
        return item
