"""Out-of-fold (OOF) scoring, in one place: every OOF figure, fold validation score and OOF-driven choice of the
pipeline is computed here, in the competition's metric (params.yaml ``metric.name``).

Functional core, streaming shell (as mmseg's ``iou_metric``): predictions stream in image by image and only one
(C, C) confusion matrix per image is kept (:class:`ImageMatrices`); any metric of
:func:`pipeline.metrics.score_matrices` is then a pure function of any subset of those matrices. That is what makes
cross-fitting cheap: a candidate (a TTA set, a weight vector) is predicted once over all OOF images, and choosing it
on folds != k and scoring it on fold k are both sums over rows of the same stack.

Cross-fitting (:func:`cross_fit`): a choice fitted on OOF and scored on the same OOF is optimistic (in-sample). For
each fold k the choice is made again on the other folds' images only, fold k is scored with that choice, and the
per-image matrices of every fold are pooled into one score. The cross-fitted figure is the estimate to compare with
the leaderboard; the in-sample one is what the chosen configuration scores on the data it was chosen on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from pipeline.io import read_mask
from pipeline.labels import multilabel_masks
from pipeline.metrics import check_metric, counter, score_matrices
from pipeline.paths import Layout
from pipeline.threshold import decide

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class ImageMatrices:
    """One (C, C) confusion matrix per OOF image (rows = truth), with the image's id and fold (multilabel masks:
    one (C, 2, 2) stack of one-vs-rest matrices per image, :func:`pipeline.metrics.multilabel_matrix`)."""

    ids: np.ndarray  # (N,) int64 image ids
    folds: np.ndarray  # (N,) int64 fold whose validation set holds the image
    matrices: np.ndarray  # (N, C, C) int64, or (N, C, 2, 2)

    def take(self, where: np.ndarray) -> ImageMatrices:
        """The images where the (N,) bool ``where`` is true."""
        return ImageMatrices(self.ids[where], self.folds[where], self.matrices[where])

    def score(self, metric: str, where: np.ndarray | None = None) -> float:
        """The metric over all images, or over those where ``where`` (an (N,) bool mask) is true."""
        return score_matrices(metric, self.matrices if where is None else self.matrices[where])

    def scores(self, metric: str, where: np.ndarray | None = None) -> dict[str, Any]:
        """``{"metric", "score", "mIoU"}``: the metric and the dataset mIoU (always reported beside it)."""
        return scores(self.matrices if where is None else self.matrices[where], metric)


def scores(matrices: np.ndarray, metric: str) -> dict[str, Any]:
    """``{"metric": name, "score": the metric, "mIoU": dataset mIoU}`` of an (N, C, C) stack."""
    return {
        "metric": check_metric(metric),
        "score": score_matrices(metric, matrices),
        "mIoU": score_matrices("miou", matrices),
    }


def truth_reader(layout: Layout) -> Callable[[int], np.ndarray]:
    """``image id -> (H, W) uint8 truth mask`` read from the masks stage's output."""
    return lambda image_id: read_mask(layout.mask_path(image_id))


def image_matrices(
    preds: Iterable[tuple[int, np.ndarray]],
    truth: Callable[[int], np.ndarray],
    fold_of: Mapping[int, int],
    num_classes: int,
    multilabel: bool = False,
) -> ImageMatrices:
    """Stream (image id, (C, H, W) probabilities or (H, W) class indices) into per-image confusion matrices
    (``multilabel``: bit-field masks, one 2 x 2 matrix per class; probabilities are each class's sigmoid)."""
    cm = counter(num_classes, multilabel, per_image=True)
    ids = []
    for image_id, p in preds:
        cm.update(decide(p, None, multilabel) if p.ndim == 3 else p, truth(image_id))
        ids.append(int(image_id))
    id_arr = np.asarray(ids, dtype=np.int64)
    folds = np.asarray([fold_of[i] for i in ids], dtype=np.int64)
    return ImageMatrices(id_arr, folds, cm.image_matrices)


def missing_oof(layout: Layout, models: Sequence[str], folds: Sequence[int], round_: int) -> Path | None:
    """The first ``oof.npz`` of ``models`` x ``folds`` in ``round_`` that does not exist, or ``None``."""
    for m in models:
        for f in folds:
            path = layout.oof_path(m, f, round_)
            if not path.is_file():
                return path
    return None


def read_oof(layout: Layout, model: str, folds: Sequence[int], round_: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (fold, image id, (C, H, W) float16 probabilities) from the fold models' ``oof.npz`` files."""
    for f in folds:
        with np.load(layout.oof_path(model, f, round_)) as z:
            for key in z.files:
                yield f, int(key), z[key]


def model_oof(layout: Layout, model: str, folds: Sequence[int], round_: int, num_classes: int) -> ImageMatrices | None:
    """Per-image matrices of one model config's OOF files (every fold pooled); ``None`` when one is missing."""
    if missing_oof(layout, [model], folds, round_) is not None:
        return None
    fold_of: dict[int, int] = {}

    def stream() -> Iterator[tuple[int, np.ndarray]]:
        for f, image_id, probs in read_oof(layout, model, folds, round_):
            fold_of[image_id] = f
            yield image_id, probs

    multilabel = multilabel_masks(layout.mask_summary)
    # fold_of is filled as it streams
    return image_matrices(stream(), truth_reader(layout), fold_of, num_classes, multilabel)


# --------------------------------------------------------------------------------------------------------------
# Cross-fitting


@dataclasses.dataclass(frozen=True)
class CrossFit(Generic[T]):
    """A choice fitted on OOF and its two scores in the competition metric.

    ``in_sample``: the choice made on every fold, scored on every fold. ``cross_fitted``: fold k scored with the
    choice made without fold k, pooled over k (``None`` with fewer than two folds). ``fold_choices[k]``: that choice.
    """

    metric: str
    choice: T
    in_sample: float
    cross_fitted: float | None
    fold_choices: dict[int, T]
    in_sample_miou: float
    cross_fitted_miou: float | None

    def figures(self) -> dict[str, Any]:
        """The labelled figures for ``metrics/infer.json`` and the ledger."""
        return {
            "metric": self.metric,
            "oof_in_sample": self.in_sample,
            "oof_cross_fitted": self.cross_fitted,
            "oof_mIoU_cross_fitted": self.cross_fitted_miou,
        }


def cross_fit(
    image_folds: np.ndarray,
    choose: Callable[[int | None], T],
    matrices_of: Callable[[T], np.ndarray],
    metric: str,
) -> CrossFit[T]:
    """Score a choice in-sample and cross-fitted.

    Args:
        image_folds: (N,) fold of each OOF image.
        choose: ``choose(None)`` makes the choice on every fold; ``choose(k)`` makes it without fold k's images.
        matrices_of: (N, C, C) per-image matrices of all N images under a choice (memoise it: it is called once per
            fold, often with a choice already seen).
        metric: a name of :data:`pipeline.metrics.METRICS`.

    Example: two candidates a, b; fold 0 prefers a, fold 1 prefers b. In-sample the choice is whichever wins on the
    pooled images; cross-fitted, fold 0 is scored with the choice made on fold 1 (b) and fold 1 with a.
    """
    check_metric(metric)
    choice = choose(None)
    full = matrices_of(choice)
    in_sample, in_miou = score_matrices(metric, full), score_matrices("miou", full)
    folds = [int(k) for k in np.unique(image_folds)]
    if len(folds) < 2:
        return CrossFit(metric, choice, in_sample, None, {}, in_miou, None)
    pooled = np.empty_like(full)
    fold_choices: dict[int, T] = {}
    for k in folds:
        fold_choices[k] = choose(k)
        rows = image_folds == k
        pooled[rows] = matrices_of(fold_choices[k])[rows]
    return CrossFit(
        metric,
        choice,
        in_sample,
        score_matrices(metric, pooled),
        fold_choices,
        in_miou,
        score_matrices("miou", pooled),
    )


class Memo(Generic[T]):
    """``key -> value`` computed once: per-image matrices of each candidate are predicted once and re-read."""

    def __init__(self, compute: Callable[[Any], T]) -> None:
        self.compute = compute
        self.values: dict[Any, T] = {}

    def __call__(self, key: Any) -> T:
        if key not in self.values:
            self.values[key] = self.compute(key)
        return self.values[key]
