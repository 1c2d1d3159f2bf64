"""Image and mask folders matched by file stem -> a COCO competition.

The Weizmann Horse layout: ``horse/horse001.png`` is the image, ``mask/horse001.png`` its mask. A mask holds class
ids per pixel: a grayscale PNG of class indices, a palette PNG (its indices count, not its colours), or a 0/255
binary mask (255 becomes class 1 when the mask holds only 0 and 255). Value 0 is background; every other value must
be a class id of the class list.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.errors import DataError, UserError
from pipeline.importers.common import (
    Split,
    class_mask_objects,
    default_truth,
    image_size,
    list_images,
    split_keys,
    write_competition,
)
from pipeline.io import safe_join


def read_class_mask(path: Path) -> np.ndarray:
    """A mask file as an (H, W) int64 array of its pixel values (palette PNGs give their indices)."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                values = np.array(im).astype(np.int64)
            elif mode == "1":
                values = np.array(im).astype(np.int64)
            elif mode in ("LA", "PA"):
                values = np.array(im)[..., 0].astype(np.int64)
            elif mode in ("RGB", "RGBA"):
                rgb = np.array(im)[..., :3]
                if not ((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])).all():
                    raise UserError(
                        f"{path}: a colour (mode {mode}) mask; save masks as class-index grayscale or palette PNGs"
                    )
                values = rgb[..., 0].astype(np.int64)
            else:
                raise UserError(f"{path}: unsupported mask mode {mode}; use a grayscale or palette PNG")
    except FileNotFoundError:
        raise UserError(f"{path}: mask file not found") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: unreadable or corrupt mask ({e})") from None
    return values


def mask_to_ids(values: np.ndarray, classes: Mapping[int, str], path: Path) -> np.ndarray:
    """Check a mask's values against the class ids; a 0/255 binary mask becomes 0/1 (unless 255 is a class id)."""
    present = np.unique(values)
    binary = 255 not in classes and present.size > 0 and set(present.tolist()) <= {0, 255} and present[-1] == 255
    if binary:
        values = (values == 255).astype(np.int64)
        present = np.unique(values)
    bad = [int(v) for v in present.tolist() if v != 0 and v not in classes]
    if bad:
        n = int((values == bad[0]).sum())
        known = ", ".join(f"{i}={name}" for i, name in sorted(classes.items()))
        note = " (a 0/255 mask: 255 reads as class 1)" if binary else ""
        raise DataError(
            path,
            f"value {bad[0]}{note} ({n} pixels)",
            f"not background (0) or a class id ({known}); name every class with --classes / --classes-file",
        )
    return values


def _by_key(folder: Path, files: list[Path], suffix: str, what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for rel in files:
        stem = rel.stem
        if suffix:
            if not stem.endswith(suffix):
                raise UserError(f"{folder / rel}: {what} name does not end with the mask suffix {suffix!r}")
            stem = stem[: -len(suffix)]
        if stem in out:
            raise UserError(f"{folder / rel}: same stem {stem!r} as {folder / out[stem]}; stems must be unique")
        out[stem] = rel
    return out


def match_pairs(images_dir: Path, masks_dir: Path, mask_suffix: str = "") -> list[tuple[str, Path, Path]]:
    """``(stem, image path, mask path)`` for every pair, sorted by stem; an image without mask (or the other way)
    is an error naming the file."""
    images = _by_key(images_dir, list_images(images_dir), "", "image")
    masks = _by_key(masks_dir, list_images(masks_dir), mask_suffix, "mask")
    for stem, rel in images.items():
        if stem not in masks:
            raise UserError(f"{images_dir / rel}: image has no mask {stem}{mask_suffix}.* in {masks_dir}")
    for stem, rel in masks.items():
        if stem not in images:
            raise UserError(f"{masks_dir / rel}: mask has no image {stem}.* in {images_dir}")
    if not images:
        raise UserError(f"{images_dir}: no image files ({', '.join(('png', 'jpg', 'bmp', 'tif'))}, ...)")
    pairs = []
    for stem in sorted(images):
        # safe_join refuses a link that leads out of its folder
        safe_join(images_dir, images[stem].as_posix())
        safe_join(masks_dir, masks[stem].as_posix())
        pairs.append((stem, images_dir / images[stem], masks_dir / masks[stem]))
    return pairs


def import_folders(
    images: str | os.PathLike[str],
    masks: str | os.PathLike[str],
    classes: Mapping[int, str],
    out: str | os.PathLike[str],
    truth: str | os.PathLike[str] | None = None,
    split: Split | None = None,
    mask_suffix: str = "",
) -> dict[str, Any]:
    """Write image/mask folder pairs as a COCO competition in ``out`` (test truth in ``truth``).

    Images are copied as they are (same file name); each connected component of each class is one annotation.

    Args:
        images: the images folder (not searched recursively).
        masks: the masks folder; ``<stem><mask_suffix>.<ext>`` is the mask of image ``<stem>.<ext>``.
        classes: ``{class id: name}``; a mask value is a class id (0 is background).
        out: the competition folder to write (replaced whole).
        truth: the test-truth folder (default: ``truth`` beside ``out``); only written when there is a test split.
        split: a random share (default 0.15), or a test list of image stems.
        mask_suffix: what mask stems add to image stems (``"_mask"`` for ``x_mask.png``).

    Returns:
        Counts of images, annotations and categories, and where the truth went.
    """
    split = split if split is not None else Split()
    images_dir, masks_dir = Path(images), Path(masks)
    pairs = match_pairs(images_dir, masks_dir, mask_suffix)
    test = split_keys([stem for stem, _, _ in pairs], split)
    truth_dir = (Path(truth) if truth is not None else default_truth(out)) if test else None
    info = {"description": "imported from image/mask folders", "source": str(images_dir), "seed": split.seed}
    counts: dict[str, Any] = {}
    with write_competition(out, truth_dir, classes, info, counts, [images_dir, masks_dir]) as writer:
        for stem, image_path, mask_path in pairs:
            ids = mask_to_ids(read_class_mask(mask_path), classes, mask_path)
            height, width = image_size(image_path)
            if ids.shape != (height, width):
                raise DataError(mask_path, "size", f"mask is {ids.shape[0]}x{ids.shape[1]}, image {height}x{width}")
            writer.add(
                "test" if stem in test else "train",
                image_path.name,
                class_mask_objects(ids),
                source=image_path,
                size=(height, width),
                origin=str(image_path),
            )
    return {**counts, "truth": str(truth_dir) if truth_dir else None}
