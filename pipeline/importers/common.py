"""What every importer shares: class lists, the train/test split, and the writer of a standard COCO competition.

An importer turns someone else's layout into the folder the rest of the pipeline reads::

    <out>/train.json      COCO images, annotations and categories (the user's class names and ids)
    <out>/test.json       COCO images and categories, no annotations
    <out>/images/...      the image files (copied byte for byte, or written as PNG)
    <truth>/<stem>.png    held-back test truth: class-index masks, named by test-image file stem
    <truth>/classes.json  what the indices mean: [{index, name, coco_id}, ...]

Class indices follow :mod:`pipeline.data.coco`: 0 is background (never a COCO category), 1..K are the categories
sorted by COCO id, so non-contiguous ids are fine. The truth masks are painted from the written annotations by
:func:`pipeline.data.coco.paint_mask`, exactly as the masks stage paints the train split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from scipy import ndimage

from pipeline.data.coco import Category, CocoImage, paint_mask
from pipeline.data.coco_write import annotation
from pipeline.data.truth import write_truth_record
from pipeline.errors import DataError, UserError
from pipeline.io import atomic_dir, atomic_path, safe_join, write_json, write_png
from pipeline.labels import MAX_CLASSES, MULTILABEL_MAX_CLASSES, check_multilabel_classes
from pipeline.paths import CompetitionFiles, Layout, TruthFiles

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")

SplitName = Literal["train", "test"]
Objects = Sequence[tuple[int, np.ndarray]]  # (COCO category id, (H, W) bool mask) per object


# --------------------------------------------------------------------------------------------------------------
# Classes


def parse_classes(text: str, where: str = "--classes") -> dict[int, str]:
    """``{category id: name}`` from ``"a,b"`` (ids 1, 2, ...) or ``"a=1,b=5"`` (explicit, non-contiguous ids).

    Args:
        text: comma-separated names, or comma-separated ``name=id`` pairs (not mixed).
        where: what to name in errors (the option or file).
    """
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UserError(f"{where}: no class names given")
    explicit = ["=" in t for t in items]
    if any(explicit) and not all(explicit):
        raise UserError(f"{where}: {text!r} mixes 'name' and 'name=id' items; use one style")
    if not any(explicit):
        return check_classes({i + 1: name for i, name in enumerate(items)}, where, names=items)
    pairs = []
    for t in items:
        name, _, value = t.rpartition("=")
        pairs.append((name.strip(), _class_id(value.strip(), where, t)))
    return check_classes(dict((i, n) for n, i in pairs), where, names=[n for n, _ in pairs], ids=[i for _, i in pairs])


def read_classes_file(path: str | os.PathLike[str]) -> dict[int, str]:
    """``{category id: name}`` from a class-names file.

    Either every non-blank line is ``name=id``, or line ``i`` (from 0) names class ``i``: line 0 is the
    background (its name is not used) and a blank line leaves that id unused. ``#`` starts a comment line.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: class-names file not found")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if not ln.startswith("#")]
    while lines and not lines[-1]:
        lines.pop()
    filled = [ln for ln in lines if ln]
    if not filled:
        raise UserError(f"{path}: no class names")
    if all("=" in ln for ln in filled):
        return parse_classes(",".join(filled), str(path))
    if any("=" in ln for ln in filled):
        bad = next(ln for ln in filled if "=" in ln)
        raise UserError(f"{path}: line {bad!r} is 'name=id' but others are plain names; use one style")
    classes = {i: name for i, name in enumerate(lines) if i > 0 and name}
    if not classes:
        raise UserError(f"{path}: only a background line; name the classes on lines 1, 2, ... (line 0 is background)")
    return check_classes(classes, str(path), names=list(classes.values()))


def _class_id(value: str, where: str, item: str) -> int:
    if not re.fullmatch(r"[0-9]+", value):
        raise UserError(f"{where}: {item!r}: the id after '=' must be a positive integer")
    return int(value)


def check_classes(
    classes: Mapping[int, str], where: str, names: Sequence[str] | None = None, ids: Sequence[int] | None = None
) -> dict[int, str]:
    """Check ids (positive, unique, at most 254 classes) and names (non-empty, unique); return them sorted by id."""
    names = list(classes.values()) if names is None else list(names)
    ids = list(classes) if ids is None else list(ids)
    for i in ids:
        if i < 1:
            raise UserError(f"{where}: class id {i}: 0 is the background, which is not a COCO category; ids start at 1")
    dup_id = next((i for i in ids if ids.count(i) > 1), None)
    if dup_id is not None:
        raise UserError(f"{where}: class id {dup_id} is given twice")
    dup_name = next((n for n in names if names.count(n) > 1), None)
    if dup_name is not None:
        raise UserError(f"{where}: class name {dup_name!r} is given twice; names must be unique")
    if any(not n for n in names):
        raise UserError(f"{where}: empty class name")
    if len(classes) > MAX_CLASSES:
        raise UserError(f"{where}: {len(classes)} classes; uint8 masks hold at most {MAX_CLASSES}")
    return {i: classes[i] for i in sorted(classes)}


def coco_categories(classes: Mapping[int, str]) -> list[dict[str, Any]]:
    """COCO ``categories`` for ``{id: name}``, sorted by id."""
    return [{"id": int(i), "name": name, "supercategory": ""} for i, name in sorted(classes.items())]


def classes_json(classes: Mapping[int, str]) -> list[dict[str, Any]]:
    """The classes.json content (as :meth:`pipeline.data.coco.CocoData.classes` writes it) for ``{id: name}``."""
    return [{"index": 0, "name": "background", "coco_id": None}] + [
        {"index": k + 1, "name": name, "coco_id": int(i)} for k, (i, name) in enumerate(sorted(classes.items()))
    ]


# --------------------------------------------------------------------------------------------------------------
# Split


@dataclasses.dataclass(frozen=True)
class Split:
    """How images are divided into train and a held-out test split (whose truth goes to the truth folder).

    Attributes:
        test_share: share of the images drawn at random for test (0 keeps every image in train).
        seed: seed of the random draw.
        test_list: a file naming the test images (one per line, or separated by spaces or commas; ``#`` starts a
            comment); it replaces the random draw. What names an image depends on the importer.
    """

    test_share: float = 0.15
    seed: int = 0
    test_list: Path | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.test_share < 1:
            raise UserError(f"split: the test share must be in [0, 1), got {self.test_share}")


def parse_split(text: str) -> float:
    """The test share from ``"train:test"`` ratios (``"0.85:0.15"``, ``"17:3"``) or a single test share."""
    parts = text.split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise UserError(f"split {text!r}: expected TRAIN:TEST ratios like 0.85:0.15") from None
    if len(values) == 1:
        return values[0]
    if len(values) != 2 or min(values) < 0 or sum(values) <= 0:
        raise UserError(f"split {text!r}: expected two non-negative ratios TRAIN:TEST like 0.85:0.15")
    return values[1] / (values[0] + values[1])


def read_test_list(path: Path) -> list[str]:
    """The entries of a test-list file, in file order."""
    if not path.is_file():
        raise UserError(f"{path}: test-list file not found")
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip().startswith("#"):
            entries.extend(t for t in re.split(r"[\s,]+", line) if t)
    return entries


def split_keys(keys: Sequence[str], split: Split) -> set[str]:
    """The keys that go to test: those in ``split.test_list``, else a seeded random ``test_share`` of them.

    The draw is a permutation of the sorted keys, so it depends only on the set of keys and the seed.
    """
    if split.test_list is not None:
        known = set(keys)
        chosen: set[str] = set()
        for entry in read_test_list(split.test_list):
            if entry not in known:
                example = ", ".join(sorted(known)[:3])
                raise DataError(split.test_list, f"entry {entry!r}", f"no such image (images are named like {example})")
            chosen.add(entry)
    else:
        ordered = sorted(keys)
        n_test = int(round(split.test_share * len(ordered)))
        perm = np.random.default_rng(split.seed).permutation(len(ordered))
        chosen = {ordered[i] for i in perm[:n_test].tolist()}
    if keys and len(chosen) == len(set(keys)):
        raise UserError(f"split: all {len(chosen)} images went to test; train needs at least one")
    return chosen


# --------------------------------------------------------------------------------------------------------------
# Images and objects


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files (by suffix) under ``folder``, sorted, as paths relative to it; hidden files are skipped."""
    if not folder.is_dir():
        raise UserError(f"{folder}: folder not found")
    found = folder.rglob("*") if recursive else folder.iterdir()
    rel = [p.relative_to(folder) for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(p for p in rel if not any(part.startswith(".") for part in p.parts))


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file, after decoding it fully (a truncated file fails here, not in training)."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.size[1], im.size[0]
    except FileNotFoundError:
        raise UserError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: unreadable or corrupt image ({e})") from None


def components(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected components of a (H, W) bool mask, each as its own (H, W) bool mask."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    return [labels == k for k in range(1, n + 1)]


def class_mask_objects(class_mask: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """One object per connected component of each nonzero value of a (H, W) mask whose values are category ids."""
    return [(int(v), m) for v in np.unique(class_mask).tolist() if v != 0 for m in components(class_mask == v)]


def check_output(out: Path, sources: Sequence[Path], what: str = "--out") -> None:
    """Refuse an output folder that is, or contains, an input: it is replaced whole."""
    o = out.resolve()
    for s in sources:
        s = s.resolve()
        if o == s or o in s.parents:
            raise UserError(f"{what} {out} contains the input {s}; the output folder is replaced whole")


# --------------------------------------------------------------------------------------------------------------
# Writer


class CompetitionWriter:
    """Collects images and their objects, writing image files as they come; :meth:`finish` writes the jsons.

    Use it through :func:`write_competition`, which makes the whole output appear at once (or not at all).
    """

    def __init__(
        self, comp_dir: Path, truth_dir: Path | None, classes: Mapping[int, str], multilabel: bool | None = False
    ) -> None:
        """``multilabel``: paint the truth as bit fields (:mod:`pipeline.labels`); ``None``: when some pixel of
        some image holds two classes (and they fit the bits), decided at :meth:`finish`."""
        self.comp_dir, self.truth_dir, self.multilabel = comp_dir, truth_dir, multilabel
        self.overlap_pixels = 0  # pixels (train and test) that two classes' objects cover
        self._truth: list[CocoImage] = []  # test images with truth, painted at finish
        self.comp = CompetitionFiles(comp_dir)
        self.classes = check_classes(classes, "class list")
        self.categories = [Category(k + 1, name, cid) for k, (cid, name) in enumerate(self.classes.items())]
        self.images: dict[SplitName, list[dict[str, Any]]] = {"train": [], "test": []}
        self.annotations: list[dict[str, Any]] = []
        self.test_objects = 0
        self._stems: dict[str, str] = {}
        self._ids: set[int] = set()
        self._next_id = 1

    def add(  # noqa: C901 - validates each keyword-only way of giving an image (pixels, source, size, id)
        self,
        split: SplitName,
        file_name: str,
        objects: Objects | None,
        *,
        pixels: np.ndarray | None = None,
        source: Path | bytes | None = None,
        image_id: int | None = None,
        size: tuple[int, int] | None = None,
        origin: str = "",
    ) -> int:
        """Write one image and record its objects; returns its COCO image id.

        Args:
            split: ``train`` (objects become annotations) or ``test`` (objects become the truth mask).
            file_name: its path under ``images/`` (its stem must be unique: truth and submissions use it).
            objects: ``(category id, (H, W) bool mask)`` per object; empty masks are dropped. ``None`` for a test
                image without truth (a competition's own test set).
            pixels: the image as a uint8 (H, W) or (H, W, 3) array, written as PNG; or else
            source: a file (or its bytes) copied as it is.
            image_id: its COCO id (default: one more than the largest so far).
            size: (H, W) of ``source`` when the caller has already decoded it (else the copy is decoded).
            origin: where it came from, for error messages.
        """
        dest = safe_join(self.comp.images_dir, file_name)
        stem = Path(file_name).stem
        if stem in self._stems:
            raise UserError(
                f"{origin or file_name}: image name {file_name!r} has the same stem as {self._stems[stem]!r}; "
                "stems must be unique (truth masks and submission ids use them)"
            )
        self._stems[stem] = file_name
        if pixels is not None:
            write_png(dest, pixels)
            height, width = pixels.shape[:2]
        else:
            with atomic_path(dest) as tmp:
                if isinstance(source, bytes):
                    tmp.write_bytes(source)
                else:
                    shutil.copyfile(source, tmp)
            height, width = size if size is not None else image_size(dest)
        if image_id is None:
            image_id = self._next_id
        if image_id in self._ids:
            raise UserError(f"{origin or file_name}: image id {image_id} is used twice")
        self._ids.add(image_id)
        self._next_id = max(self._next_id, image_id + 1)
        self.images[split].append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        if objects is None:
            if split == "train":
                raise RuntimeError("a train image needs its objects")
            return image_id
        anns = []
        held: dict[int, np.ndarray] = {}  # category id -> the union of its objects
        for category_id, mask in objects:
            if category_id not in self.classes:
                raise UserError(f"{origin or file_name}: category id {category_id} is not in the class list")
            if mask.shape != (height, width):
                raise UserError(f"{origin or file_name}: a mask is {mask.shape}, the image {height}x{width}")
            if mask.any():
                first = len(self.annotations) + len(anns) + 1
                anns.append(annotation(first, image_id, category_id, mask))
                held[category_id] = held[category_id] | mask if category_id in held else mask.astype(bool)
        if len(held) > 1:
            self.overlap_pixels += int((np.sum(list(held.values()), axis=0) > 1).sum())
        if split == "train":
            self.annotations.extend(anns)
        else:
            if self.truth_dir is None:
                raise RuntimeError("a test image with truth, but no truth folder was opened")
            self._truth.append(CocoImage(image_id, file_name, height, width, anns))
            self.test_objects += len(anns)
        return image_id

    def _truth_multilabel(self) -> bool:
        if self.multilabel is not None:
            if self.multilabel:
                check_multilabel_classes(len(self.classes), "the class list")
            return self.multilabel
        return self.overlap_pixels > 0 and len(self.classes) <= MULTILABEL_MAX_CLASSES

    def finish(self, info: Mapping[str, Any]) -> dict[str, int]:
        """Write train.json, test.json (and the truth's classes.json); return counts."""
        if not self.images["train"]:
            raise UserError("no train images to write")
        categories = coco_categories(self.classes)
        train = {"info": dict(info), "images": self.images["train"], "annotations": self.annotations}
        write_json(self.comp.train_json, {**train, "categories": categories})
        test = {"info": dict(info), "images": self.images["test"], "categories": categories}
        write_json(self.comp.test_json, test)
        multilabel = self._truth_multilabel()
        if self.truth_dir is not None:
            for im in self._truth:  # every class of a pixel (bit fields), or one: as the masks stage paints
                painted = paint_mask(im, self.categories, "multilabel" if multilabel else "larger_first")
                write_png(TruthFiles(self.truth_dir).mask(Path(im.file_name).stem), painted)
            write_json(TruthFiles(self.truth_dir).classes_json, classes_json(self.classes))
            write_truth_record(self.truth_dir, self.comp.test_json, multilabel)  # whose truth it is (the leaderboard)
        return {
            "train_images": len(self.images["train"]),
            "test_images": len(self.images["test"]),
            "train_annotations": len(self.annotations),
            "test_objects": self.test_objects,
            "categories": len(self.classes),
            "overlapping_pixels": self.overlap_pixels,
            "labels": "multilabel" if multilabel else "multiclass",
        }


@contextlib.contextmanager
def write_competition(
    out: str | os.PathLike[str],
    truth: str | os.PathLike[str] | None,
    classes: Mapping[int, str],
    info: Mapping[str, Any],
    counts: dict[str, int],
    sources: Sequence[Path] = (),
    multilabel: bool | None = False,
) -> Iterator[CompetitionWriter]:
    """A :class:`CompetitionWriter` on temporary folders that replace ``out`` (and ``truth``) when the block ends.

    ``counts`` receives :meth:`CompetitionWriter.finish`'s counts. On an error both folders are left as they were.
    Neither folder may contain an input (``sources``) or the other folder.
    """
    check_output(Path(out), sources)
    if truth is not None:
        check_output(Path(truth), [*sources, Path(out)], "--truth")
        check_output(Path(out), [Path(truth)])
    with contextlib.ExitStack() as stack:
        comp = stack.enter_context(atomic_dir(out))
        truth_tmp = stack.enter_context(atomic_dir(truth)) if truth is not None else None
        CompetitionFiles(comp).images_dir.mkdir()
        writer = CompetitionWriter(comp, truth_tmp, classes, multilabel)
        yield writer
        counts.update(writer.finish(info))


def default_truth(out: str | os.PathLike[str]) -> Path:
    """The truth folder beside ``out`` (``data/competition`` -> ``data/truth``, as params.yaml expects)."""
    return Path(out).parent / Layout().truth_dir.name
