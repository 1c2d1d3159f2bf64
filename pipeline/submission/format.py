"""How predictions become rows: :class:`SubmissionFormat`, the class labels it writes, and the format from params.

Layouts (``SubmissionFormat.layout``), all CSV with one header line:

``per_class`` (default)
    One row per (image, foreground class): ``id,class,predicted`` where ``class`` is the category name (or the
    class index, ``class_value="index"``) and ``predicted`` is the binary mask of that class as ``start length``
    text in ``SubmissionFormat.rle`` (see :mod:`pipeline.rle`). Kaggle's combined key column (``ImageId_ClassId``)
    is ``key_format="{id}_{class}"`` with ``class_column=None``; a single-class competition (``ImageId,
    EncodedPixels``) is ``class_column=None`` without ``key_format``.
``per_image``
    One row per image: ``id,predicted`` where ``predicted`` is space-separated triples ``class start length``,
    grouped by class in class-index order, each class's runs in pixel order (relative starts, if chosen, are
    counted within that class). An image without foreground is the RLE format's empty token.
``dense``
    One row per image (the trash-competition style ``image_id,PredictionString``): the class index of every pixel
    of the mask resized to ``dense_size`` (H, W) with nearest-neighbour centre sampling (as PIL ``NEAREST``),
    space-separated, row-major. Background (0) is written too.

Class masks handed to the writers are (H, W) integer arrays at the original image size: 0 background, 1..K the
classes of the class list. With a sample submission the writers follow it exactly: its rows in its order, its
columns, its other columns untouched; only the prediction column is filled. The text of every row, both ways, is
:mod:`pipeline.submission.codec`'s.
"""

from __future__ import annotations

import dataclasses
import os
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.config import DEFAULT_PARAMS, from_dict
from pipeline.errors import DataError, UserError
from pipeline.io import read_json
from pipeline.rle import KAGGLE, RleFormat

Classes = Sequence[tuple[int, str]] | Sequence[Mapping[str, Any]]

# A cell that starts with one of these is a formula to a spreadsheet (CSV injection); '-' is fine before a number.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?", re.ASCII)


@dataclasses.dataclass(frozen=True)
class SubmissionFormat:
    """How predictions become rows; see the module docstring for the layouts.

    Attributes:
        rle: how a binary mask is written (per_class and per_image layouts).
        layout: ``per_class``, ``per_image`` or ``dense``.
        id_column: the image id column, or the combined key column when ``key_format`` is set.
        class_column: the class column (per_class); ``None`` when there is none (``key_format`` or one class).
        prediction_column: the column that holds the prediction.
        key_format: how image id and class form one key (e.g. ``"{id}_{class}"``), or ``None``.
        class_value: write a class as its ``name`` or its class ``index``.
        id_source: what identifies an image: the COCO ``image_id``, the ``file_stem`` or the ``file_name``.
        dense_size: (H, W) of the dense layout.
    """

    rle: RleFormat = KAGGLE
    layout: Literal["per_class", "per_image", "dense"] = "per_class"
    id_column: str = "id"
    class_column: str | None = "class"
    prediction_column: str = "predicted"
    key_format: str | None = None
    class_value: Literal["name", "index"] = "name"
    id_source: Literal["image_id", "file_stem", "file_name"] = "image_id"
    dense_size: tuple[int, int] = (256, 256)

    def __post_init__(self) -> None:
        choices = {
            "layout": ("per_class", "per_image", "dense"),
            "class_value": ("name", "index"),
            "id_source": ("image_id", "file_stem", "file_name"),
        }
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise UserError(f"submission format: {name} {getattr(self, name)!r} is not one of {', '.join(valid)}")
        if self.key_format is not None:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.key_format) if f is not None]
            if "id" not in fields or set(fields) - {"id", "class"}:
                raise UserError(
                    f"submission format: key_format {self.key_format!r} must contain {{id}} and may "
                    "contain {class}, nothing else"
                )
        if len(self.dense_size) != 2 or min(self.dense_size) < 1:
            raise UserError(f"submission format: dense_size must be (H, W) positive, got {self.dense_size}")

    def columns(self) -> list[str]:
        """The columns of a submission written without a sample."""
        if self.layout == "per_class" and self.key_format is None and self.class_column is not None:
            return [self.id_column, self.class_column, self.prediction_column]
        return [self.id_column, self.prediction_column]

    def key_columns(self) -> list[str]:
        """The columns that identify a row."""
        return self.columns()[:-1]

    def image_key(self, image_id: int | str, file_name: str = "") -> str:
        """The submission id of an image, by ``id_source``."""
        if self.id_source == "image_id":
            return str(image_id)
        if self.id_source == "file_stem":
            return Path(file_name).stem
        return file_name

    def class_label(self, index: int, name: str) -> str:
        """How class ``index`` called ``name`` is written."""
        return name if self.class_value == "name" else str(index)

    def row_key(self, image: str, label: str) -> tuple[str, ...]:
        """The key-column values of the row for ``image`` and class ``label`` (label unused outside per_class)."""
        if self.layout != "per_class":
            return (image,)
        if self.key_format is not None:
            return (self.key_format.format(**{"id": image, "class": label}),)
        if self.class_column is None:
            return (image,)
        return (image, label)

    def single_class(self) -> bool:
        """Whether a per_class row key leaves the class out (then only one foreground class is allowed)."""
        if self.layout != "per_class":
            return False
        if self.key_format is not None:
            return "{class}" not in self.key_format
        return self.class_column is None


PER_CLASS = SubmissionFormat()
"""The default: ``id,class,predicted``, one row per (image, foreground class), class names, Kaggle RLE."""

TRASH = SubmissionFormat(
    layout="dense",
    id_column="image_id",
    prediction_column="PredictionString",
    class_column=None,
    id_source="file_name",
    dense_size=(256, 256),
)
"""The trash-competition layout: ``image_id,PredictionString`` with 256x256 row-major class indices."""


def submission_format(params: Any, params_path: str | os.PathLike[str] = DEFAULT_PARAMS) -> SubmissionFormat:
    """The :class:`SubmissionFormat` of ``params.infer.submission`` (a ``Params``, an ``InferParams`` or the dict
    itself), checked strictly; an error names ``params_path`` and the key, e.g. ``profiles/x.yaml: infer.submission:
    unknown key 'layot'``."""
    section = getattr(params, "infer", params)
    data = getattr(section, "submission", section)
    return from_dict(SubmissionFormat, data, f"{params_path}: infer.submission")


def formula_risk(cell: str) -> str | None:
    """Why a spreadsheet would read ``cell`` as a formula (CSV injection), or None when it is plain text."""
    if cell.startswith(_FORMULA_START) and not _NUMBER.fullmatch(cell):
        return f"{cell[:20]!r} starts with {cell[0]!r}, which a spreadsheet runs as a formula"
    return None


def foreground_classes(classes: Classes) -> list[tuple[int, str]]:
    """``(index, name)`` of every non-background class, by index, from pairs or classes.json entries."""
    if isinstance(classes, (str, Mapping)) or not isinstance(classes, Sequence):
        raise UserError(
            f"class list: expected a list of (index, name) pairs or {{index, name}} objects, got "
            f"{type(classes).__name__}"
        )
    out: dict[int, str] = {}
    for c in classes:
        if isinstance(c, Mapping) and not {"index", "name"} <= set(c):
            raise UserError(f"class list: entry {dict(c)} needs 'index' and 'name'")
        index, name = (c["index"], c["name"]) if isinstance(c, Mapping) else c
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index <= 255:
            raise UserError(f"class list: class index {index!r} must be an integer in 0..255")
        if int(index) in out:
            raise UserError(f"class list: class index {index} appears twice")
        out[int(index)] = str(name)
    return sorted((i, n) for i, n in out.items() if i != 0)


def class_labels(fg: list[tuple[int, str]], fmt: SubmissionFormat) -> dict[int, str]:
    """``{class index: label written}`` for the foreground classes; refuses labels the format cannot write."""
    labels = {i: fmt.class_label(i, n) for i, n in fg}
    if len(set(labels.values())) != len(labels):
        raise UserError(f"class list: class labels are not unique ({sorted(labels.values())})")
    if fmt.layout == "per_image":
        bad = [lab for lab in labels.values() if not lab or lab.split() != [lab]]
        if bad:
            raise UserError(
                f"class list: label {bad[0]!r} is empty or has whitespace; the per_image layout needs "
                "one-word labels (use class_value='index')"
            )
    if fmt.layout != "dense" and not fmt.single_class():
        for lab in labels.values():
            risk = formula_risk(lab)
            if risk:
                raise UserError(
                    f"class list: class label {risk}; rename the category or write class indices "
                    "(infer.submission.class_value: index)"
                )
    if fmt.single_class() and len(labels) != 1:
        raise UserError(
            f"submission format: rows have no class (class_column none, key_format "
            f"{fmt.key_format!r}) but there are {len(labels)} foreground classes; set class_column or "
            "a key_format with {class}"
        )
    return labels


def resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a (H, W) mask to ``size`` (H, W) by nearest-neighbour centre sampling (PIL ``NEAREST``)."""
    h, w = mask.shape
    out_h, out_w = size
    rows = np.minimum(((np.arange(out_h) + 0.5) * h / out_h).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * w / out_w).astype(np.int64), w - 1)
    return mask[rows[:, None], cols[None, :]]


def key_pattern(key_format: str, labels: Iterable[str] | None, any_class: str = ".+?") -> re.Pattern[str]:
    """A regex splitting a combined key (``{id}_{class}``) into ``id`` and ``cls``: ``cls`` is one of ``labels``
    (longest first), or ``any_class`` when the labels are not known."""
    known = sorted(labels or [], key=len, reverse=True)
    cls = "|".join(re.escape(lab) for lab in known) if known else any_class
    pattern = ""
    for literal, field, _, _ in string.Formatter().parse(key_format):
        pattern += re.escape(literal)
        if field == "id":
            pattern += "(?P<id>.+)"
        elif field == "class":
            pattern += f"(?P<cls>{cls})"
    return re.compile(pattern)


def shapes_from_coco(path: str | os.PathLike[str], id_source: str = "image_id") -> dict[str, tuple[int, int]]:
    """``{submission id: (H, W)}`` from the ``images`` of a COCO json (a test split needs no annotations)."""
    data = read_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataError(path, "top level", "expected a JSON object with an 'images' list")
    fmt = SubmissionFormat(id_source=id_source)  # type: ignore[arg-type]
    shapes: dict[str, tuple[int, int]] = {}
    for i, im in enumerate(images):
        if not isinstance(im, dict) or not all(k in im for k in ("id", "file_name", "height", "width")):
            raise DataError(path, f"images[{i}]", "an image needs id, file_name, height and width")
        key = fmt.image_key(im["id"], str(im["file_name"]))
        if key in shapes:
            raise DataError(path, f"images[{i}]", f"submission id {key!r} (id_source {id_source}) is not unique")
        shapes[key] = (int(im["height"]), int(im["width"]))
    return shapes
