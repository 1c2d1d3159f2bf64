"""Class masks in, a checked submission CSV out: :class:`SubmissionWriter` and its shortcuts."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import UserError
from pipeline.io import atomic_open
from pipeline.submission import codec
from pipeline.submission.format import (
    PER_CLASS,
    TRASH,
    Classes,
    SubmissionFormat,
    class_labels,
    foreground_classes,
    formula_risk,
)
from pipeline.submission.validate import frame, validate_submission

SHOWN_IN_ERROR = 5


class SubmissionWriter:
    """Collect predictions one image at a time (as short strings, never masks), then write a checked CSV.

    Example::

        writer = SubmissionWriter(classes, fmt, sample=read_submission_csv("sample_submission.csv"))
        for image, mask in predictions:          # mask: (H, W) uint8 class indices at the original size
            writer.add(fmt.image_key(image.id, image.file_name), mask)
        writer.finalize("submissions/sub.csv")  # validates, refuses a bad file, writes atomically

    Every cell written is digits, the RLE format's empty token, an image id or a class label; an id or label that a
    spreadsheet would read as a formula (``=``, ``+``, ``-``, ``@`` first) is refused, never written.
    """

    def __init__(
        self,
        classes: Classes,
        fmt: SubmissionFormat = PER_CLASS,
        sample: str | os.PathLike[str] | pd.DataFrame | None = None,
        multilabel: bool = False,
    ) -> None:
        self.fmt, self.multilabel = fmt, multilabel  # multilabel: masks are bit fields (pipeline/labels.py)
        self.classes = foreground_classes(classes)
        self.labels = class_labels(self.classes, fmt)
        self._valid = np.array([0] + [i for i, _ in self.classes])
        if multilabel:  # every set of the classes' bits
            self._valid = np.arange(1 << len(self.classes))
        self.sample_name, self.sample = frame(sample, "sample") if sample is not None else ("", None)
        if self.sample is not None:
            for c in fmt.key_columns() + [fmt.prediction_column]:
                if c not in self.sample.columns:
                    raise UserError(
                        f"{self.sample_name}: no column {c!r} (columns: {', '.join(self.sample.columns)})"
                        "; set the format's id_column/class_column/prediction_column/key_format"
                    )
            keys = codec.row_keys(self.sample, fmt.key_columns())
            dup = next((k for k, n in Counter(keys).items() if n > 1), None)
            if dup is not None:
                raise UserError(f"{self.sample_name}: row {dup} appears more than once in the sample")
        self._rows: dict[tuple[str, ...], str] = {}
        self._shapes: dict[str, tuple[int, int]] = {}

    def add(self, image: str | int, class_mask: np.ndarray) -> None:
        """Add the (H, W) integer class mask of one image, at its original size, under submission id ``image``."""
        image = str(image)
        if image in self._shapes:
            raise UserError(f"submission: image {image!r} was added twice")
        risk = formula_risk(image)
        if risk:
            raise UserError(
                f"submission: image id {risk}; refusing to write it into a CSV (rename the image or choose "
                "another infer.submission.id_source)"
            )
        class_mask = np.asarray(class_mask)
        if class_mask.ndim != 2 or not np.issubdtype(class_mask.dtype, np.integer):
            raise UserError(
                f"submission: image {image!r}: expected an (H, W) integer class mask, got "
                f"{class_mask.dtype} {class_mask.shape}"
            )
        bad = np.setdiff1d(np.unique(class_mask), self._valid)
        if bad.size and self.multilabel:
            raise UserError(
                f"submission: image {image!r}: multilabel mask value {bad[0]} sets a bit past the "
                f"{len(self.classes)} classes"
            )
        if bad.size:
            raise UserError(
                f"submission: image {image!r}: mask has class index {bad[0]}, not in the class list "
                f"({', '.join(map(str, self._valid.tolist()))})"
            )
        self._rows.update(codec.encode_image(class_mask, self.fmt, self.labels, image, self.multilabel))
        self._shapes[image] = (int(class_mask.shape[0]), int(class_mask.shape[1]))

    def frame(self) -> pd.DataFrame:
        """The submission as a frame (cells as text), in the sample's rows and columns when there is a sample."""
        fmt = self.fmt
        if self.sample is None:
            rows = [(*key, text) for key, text in self._rows.items()]
            return pd.DataFrame(rows, columns=fmt.columns(), dtype=object)
        keys = codec.row_keys(self.sample, fmt.key_columns())
        missing = [k for k in keys if k not in self._rows]
        in_sample = set(keys)
        extra = [k for k in self._rows if k not in in_sample]
        if missing or extra:
            made = next(iter(self._rows), None)
            hint = f"; the writer made rows like {made}" if made else "; no image was added"
            what = []
            if missing:
                what.append(f"{len(missing)} sample rows have no prediction (first {missing[0]})")
            if extra:
                what.append(f"{len(extra)} predicted rows are not in the sample (first {extra[0]})")
            raise UserError(
                f"{self.sample_name}: {' and '.join(what)}{hint}. Check that every test image was "
                "predicted and the id_source/class_value/key_format options"
            )
        out = self.sample.copy()
        out[fmt.prediction_column] = [self._rows[k] for k in keys]
        return out

    def finalize(self, path: str | os.PathLike[str]) -> Path:
        """Validate the submission and write it atomically to ``path``; a bad submission raises UserError."""
        df = self.frame()
        problems = validate_submission(df, self.sample, self._shapes, self.fmt, self.classes)
        if problems:
            shown = "; ".join(problems[:SHOWN_IN_ERROR])
            more = f" (and {len(problems) - SHOWN_IN_ERROR} more)" if len(problems) > SHOWN_IN_ERROR else ""
            raise UserError(f"{path}: refusing to write an invalid submission: {shown}{more}")
        path = Path(path)
        with atomic_open(path, "w", encoding="utf-8", newline="") as f:
            df.to_csv(f, index=False, lineterminator="\n")
        return path


def write_submission(
    predictions: Iterable[tuple[str | int, np.ndarray]],
    classes: Classes,
    path: str | os.PathLike[str],
    fmt: SubmissionFormat = PER_CLASS,
    sample: str | os.PathLike[str] | pd.DataFrame | None = None,
    multilabel: bool = False,
) -> Path:
    """Stream ``(submission id, (H, W) class mask)`` pairs through a :class:`SubmissionWriter` into ``path``
    (``multilabel``: the masks are bit fields)."""
    writer = SubmissionWriter(classes, fmt, sample, multilabel)
    for image, class_mask in predictions:
        writer.add(image, class_mask)
    return writer.finalize(path)


class PredictionStringWriter(SubmissionWriter):
    """The trash-competition writer: ``image_id,PredictionString`` with the mask resized (nearest) to ``size``
    (H, W) and written as row-major class indices."""

    def __init__(
        self,
        classes: Classes,
        size: tuple[int, int] = (256, 256),
        sample: str | os.PathLike[str] | pd.DataFrame | None = None,
        id_column: str = "image_id",
        prediction_column: str = "PredictionString",
    ) -> None:
        fmt = dataclasses.replace(
            TRASH, dense_size=tuple(size), id_column=id_column, prediction_column=prediction_column
        )
        super().__init__(classes, fmt, sample)
