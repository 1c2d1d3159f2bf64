"""Paste objects onto a background and write the result as a standard COCO competition with held-back truth.

Every zoo generator renders one image at a time as a background plus :class:`Piece` objects; this module pastes them
and writes the folder exactly as the embedded demo does: ``images/``, ``train.json`` (polygons, or compressed RLE for
masks with holes), ``test.json`` (images only), ``sample_submission.csv`` and, in a separate truth folder, one PNG
class mask per test image (named by file stem) with ``classes.json``.

Overlaps: pieces are pasted larger first (ties in generation order) and annotation ids follow that order, so the
picture, the truth mask and the masks stage's default painting (``masks.overlap: larger_first``, ties by id) agree
pixel for pixel: each annotation is the object's whole (amodal) mask, the truth is what is visible.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.data.coco_write import patch_annotation
from pipeline.data.truth import write_truth_record
from pipeline.io import atomic_dir, write_png
from pipeline.labels import IGNORE_INDEX, bit, class_pixels
from pipeline.paths import CompetitionFiles, TruthFiles, generated_image_name

SPLIT_CODES = {"train": 0, "test": 1}


@dataclasses.dataclass
class Piece:
    """One object: its category id, where its patch sits on the canvas, its patch mask and how it looks.

    ``pixels`` is (h, w, C) float in [0, 255]; ``alpha`` (h, w) in [0, 1] blends soft edges (default: the mask).
    ``top``/``left`` may put part of the patch off the canvas; :func:`clip` cuts it to the canvas.
    """

    category_id: int
    top: int
    left: int
    mask: np.ndarray
    pixels: np.ndarray
    alpha: np.ndarray | None = None


Renderer = Callable[[str, np.random.Generator], tuple[np.ndarray, list[Piece]]]
"""``render(split, rng) -> (background (H, W, C) float, pieces)``: one image of split ``train`` or ``test``."""


def clip(piece: Piece, height: int, width: int) -> Piece | None:
    """The part of ``piece`` on a ``height`` x ``width`` canvas, trimmed to its mask's box; None if nothing is left."""
    ph, pw = piece.mask.shape
    r0, c0 = max(0, -piece.top), max(0, -piece.left)
    r1, c1 = min(ph, height - piece.top), min(pw, width - piece.left)
    if r0 >= r1 or c0 >= c1:
        return None
    m = piece.mask[r0:r1, c0:c1].astype(bool)
    if not m.any():
        return None
    rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
    a0, a1, b0, b1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    alpha = piece.alpha[r0:r1, c0:c1][a0:a1, b0:b1] if piece.alpha is not None else None
    return Piece(
        piece.category_id,
        piece.top + r0 + a0,
        piece.left + c0 + b0,
        m[a0:a1, b0:b1],
        piece.pixels[r0:r1, c0:c1][a0:a1, b0:b1],
        alpha,
    )


def compose(background: np.ndarray, pieces: list[Piece]) -> tuple[np.ndarray, list[Piece], np.ndarray]:
    """Paste ``pieces`` larger first: the uint8 image, the clipped pieces in paste order, the (H, W) truth mask.

    The truth holds category ids (the class index, as ids are 1..K): the last piece pasted over a pixel wins.
    """
    h, w = background.shape[:2]
    canvas = background.astype(np.float32).copy()
    kept = [q for q in (clip(p, h, w) for p in pieces) if q is not None]
    order = sorted(range(len(kept)), key=lambda i: (-int(kept[i].mask.sum()), i))
    kept = [kept[i] for i in order]
    truth = np.zeros((h, w), np.uint8)
    for p in kept:
        ph, pw = p.mask.shape
        region = canvas[p.top : p.top + ph, p.left : p.left + pw]
        a = (p.alpha if p.alpha is not None else p.mask).astype(np.float32)[:, :, None]
        region[:] = a * p.pixels.reshape(ph, pw, -1) + (1 - a) * region
        truth[p.top : p.top + ph, p.left : p.left + pw][p.mask] = p.category_id
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return image, kept, truth


def pixel_shares(render: Renderer, n: int, seed: int, k: int, split: str = "train") -> np.ndarray:
    """The (k + 1,) class pixel shares of the first ``n`` images ``render`` draws, without writing anything."""
    counts = np.zeros(k + 1, np.int64)
    for i in range(n):
        _, _, truth = compose(*render(split, image_rng(seed, split, i)))
        counts += np.bincount(truth.ravel(), minlength=k + 1)[: k + 1]
    return counts / counts.sum()


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """One generator per image, from (seed, split, index): a tiny zoo is the first images of the full-size one."""
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


def write_competition(  # noqa: PLR0913 - every zoo generator's one call: what a competition is named and holds
    out: str | Path,
    truth: str | Path,
    name: str,
    class_names: list[str],
    render: Renderer,
    n_train: int,
    n_test: int,
    seed: int,
    description: str,
    single_class: bool = False,
    attributes: Mapping[int, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Render ``n_train`` + ``n_test`` images and write the competition folder ``out`` and truth folder ``truth``.

    ``single_class``: the sample submission has one row per test image (``id,predicted``, no class column), as in
    binary competitions (Carvana); needs exactly one class. ``attributes``: a multilabel competition whose pieces'
    categories are not its classes: piece category -> the classes (1-based into ``class_names``) it belongs to;
    each piece's visible pixels are annotated once per class (a piece under another is not annotated there, so the
    train masks equal the truth), and the truth is the bit field of every class of a pixel (:mod:`pipeline.labels`,
    recorded as multilabel). Returns counts (images, annotations, pixel shares).
    """
    if single_class and len(class_names) != 1:
        raise ValueError(f"{name}: a single-class submission needs one class, got {len(class_names)}")
    categories = [{"id": i + 1, "name": n, "supercategory": name} for i, n in enumerate(class_names)]
    k = len(categories)
    pixels = np.zeros((2, k + 1), np.int64)
    lut = attribute_bits(attributes) if attributes is not None else None
    with atomic_dir(out) as comp_dir, atomic_dir(truth) as truth_tmp:
        comp, truth_files = CompetitionFiles(comp_dir), TruthFiles(truth_tmp)
        img_dir = comp.images_dir
        img_dir.mkdir()
        coco: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
        next_id = 1
        for s, (split, n) in enumerate((("train", n_train), ("test", n_test))):
            images: list[dict[str, Any]] = []
            anns: list[dict[str, Any]] = []
            for i in tqdm(range(n), desc=f"{name} {split}", unit="img", mininterval=1.0):
                background, pieces = render(split, image_rng(seed, split, i))
                image, kept, mask = compose(background, pieces)
                h, w = mask.shape
                file_name = generated_image_name(split, i)
                write_png(img_dir / file_name, image)
                images.append({"id": next_id, "file_name": file_name, "height": h, "width": w})
                if lut is not None:
                    mask = lut[mask]
                if split == "train":
                    anns.extend(piece_annotations(kept, attributes, len(anns) + 1, next_id, (h, w)))
                else:
                    write_png(truth_files.mask(Path(file_name).stem), mask)
                pixels[s] += class_pixels(np.bincount(mask.ravel(), minlength=256), k + 1, lut is not None)
                next_id += 1
            coco[split] = (images, anns)
        info = {"description": description, "zoo": name, "seed": seed}
        train_images, train_anns = coco["train"]
        _dump(
            comp.train_json,
            {"info": info, "images": train_images, "annotations": train_anns, "categories": categories},
        )
        _dump(comp.test_json, {"info": info, "images": coco["test"][0], "categories": categories})
        if single_class:
            rows = ["id,predicted"] + [f"{im['id']}," for im in coco["test"][0]]
        else:
            rows = ["id,class,predicted"] + [f"{im['id']},{c['name']}," for im in coco["test"][0] for c in categories]
        comp.sample_submission.write_text("\n".join(rows) + "\n", encoding="utf-8")
        truth_classes = [{"index": 0, "name": "background", "coco_id": None}] + [
            {"index": c["id"], "name": c["name"], "coco_id": c["id"]} for c in categories
        ]
        _dump(truth_files.classes_json, truth_classes)
        # the leaderboard scores only this competition against it (multilabel: per class)
        write_truth_record(truth_files.root, comp.test_json, multilabel=lut is not None)
    return {
        "train_images": n_train,
        "test_images": n_test,
        "train_annotations": len(coco["train"][1]),
        "train_pixel_share": _shares(pixels[0], class_names),
        "test_pixel_share": _shares(pixels[1], class_names),
    }


def piece_annotations(
    kept: Sequence[Piece],
    attributes: Mapping[int, Sequence[int]] | None,
    first_id: int,
    image_id: int,
    shape: tuple[int, int],
) -> list[dict[str, Any]]:
    """One image's COCO annotations from id ``first_id``: each piece whole (amodal), or with ``attributes`` its
    visible pixels once per class it has."""
    h, w = shape
    if attributes is None:
        return [
            patch_annotation(first_id + n, image_id, p.category_id, p.mask, p.top, p.left, h, w)
            for n, p in enumerate(kept)
        ]
    out: list[dict[str, Any]] = []
    for p, seen in zip(kept, visible(kept, shape), strict=True):
        for c in attributes[p.category_id]:
            out.append(patch_annotation(first_id + len(out), image_id, c, seen, p.top, p.left, h, w))
    return out


def visible(kept: Sequence[Piece], shape: tuple[int, int]) -> list[np.ndarray]:
    """Each piece's own mask less what the pieces painted after it cover (in its own box)."""
    top = np.full(shape, -1, np.int64)
    for j, p in enumerate(kept):
        ph, pw = p.mask.shape
        top[p.top : p.top + ph, p.left : p.left + pw][p.mask] = j
    out = []
    for j, p in enumerate(kept):
        ph, pw = p.mask.shape
        out.append(p.mask & (top[p.top : p.top + ph, p.left : p.left + pw] == j))
    return out


def attribute_bits(attributes: Mapping[int, Sequence[int]]) -> np.ndarray:
    """(256,) uint8 lookup: a piece category's multilabel bit field (255 stays ignore, 0 no class).

    >>> attribute_bits({1: [1], 2: [1, 2]})[:3].tolist()
    [0, 1, 3]
    """
    lut = np.zeros(256, np.uint8)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    for category, classes in attributes.items():
        lut[category] = sum(bit(c) for c in set(classes))
    return lut


def _shares(counts: np.ndarray, class_names: list[str]) -> dict[str, float]:
    total = max(1, int(counts.sum()))
    return {n: round(int(c) / total, 5) for n, c in zip(["background", *class_names], counts.tolist())}


def _dump(path: Path, obj: Any) -> None:
    # Inside an atomic_dir the whole folder appears at once, so plain writes are safe here.
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)
