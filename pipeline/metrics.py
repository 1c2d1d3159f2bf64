"""Segmentation metrics: a streaming confusion matrix, the scores derived from it, and Boundary IoU.

Conventions (mmseg / Kaggle):

* The confusion matrix is int64 ``(C, C)``: rows are the truth, columns the prediction.
* Dataset scores sum intersections and unions over all images first and divide once. With ``per_image=True`` each
  image is scored on its own and the per-image scores are averaged over images (per class, ignoring NaN).
* A class absent from both truth and prediction has no score: it is NaN and means skip it (``nanmean``). Accuracy
  (recall) is NaN whenever the class is absent from the truth.
* Pixels whose truth is ``ignore_index`` never count, whatever the prediction says there. A prediction is never
  ``ignore_index``.

Worked 3x3 example (2 classes, ``ignore_index=255``)::

    truth         prediction    matrix (rows = truth)
    0   0 1       0 1 1             pred 0  pred 1
    0   1 1       0 1 0         t0     2      1
    255 1 1       1 1 1         t1     1      4       (the 255 pixel is dropped)

    IoU  = [2 / (2+1+1), 4 / (4+1+1)] = [1/2, 2/3]    Acc  = [2/3, 4/5]
    Dice = [4 / (4+1+1), 8 / (8+1+1)] = [2/3, 4/5]    aAcc = 6/8

Boundary IoU follows Cheng et al. (CVPR 2021) and the authors' ``boundary_iou/utils/boundary_utils.py``; see
:func:`mask_boundary` and :class:`BoundaryIoU`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple, TypeAlias

import numpy as np
import torch

from pipeline.errors import UserError
from pipeline.labels import IGNORE_INDEX, check_multilabel_classes, planes

ArrayLike: TypeAlias = np.ndarray | torch.Tensor

# CPU updates go through a fixed-size scratch buffer: allocating one index array the size of the batch costs more
# (page faults) than the bincount itself, and a chunk that fits in cache makes the bincount faster too.
_CPU_CHUNK = 1 << 20
# Above this many bins, one row per target value up to ignore_index is too many; ignore moves to row C instead.
_MAX_BINS = 1 << 22


# --------------------------------------------------------------------------------------------------------------------
# Input checks


def _as_labels(x: ArrayLike, name: str) -> torch.Tensor:
    """Return ``x`` as an integer tensor of shape (B, H, W), sharing memory where possible."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "iub":
            raise UserError(f"{name} must hold integer class indices, got a {x.dtype} array (argmax the logits first)")
        if x.dtype == np.uint16 or x.dtype == np.uint32 or x.dtype == np.uint64:
            x = x.astype(np.int64)  # torch has no unsigned 16/32/64-bit tensors
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise UserError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex():
        raise UserError(f"{name} must hold integer class indices, got a {x.dtype} tensor (argmax the logits first)")
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim != 3:
        raise UserError(f"{name} must have shape (H, W) or (B, H, W), got {tuple(x.shape)}")
    return x


def _as_pair(pred: ArrayLike, target: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    p = _as_labels(pred, "pred")
    t = _as_labels(target, "target")
    if p.shape != t.shape:
        raise UserError(f"pred has shape {tuple(p.shape)} but target has shape {tuple(t.shape)}; they must match")
    if p.device != t.device:
        raise UserError(f"pred is on {p.device} but target is on {t.device}; put both on the same device")
    return p, t


def _check_num_classes(num_classes: int, ignore_index: int) -> None:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    if 0 <= ignore_index < num_classes:
        raise UserError(
            f"ignore_index {ignore_index} is a class index (num_classes={num_classes}); use e.g. {IGNORE_INDEX}"
        )


def _bad_pred(value: int, num_classes: int) -> UserError:
    return UserError(
        f"pred holds class index {value}, outside [0, {num_classes}); check num_classes (a prediction is never the "
        "ignore index)"
    )


def _check_pred_range(pred: torch.Tensor, num_classes: int) -> None:
    lo, hi = (int(v) for v in torch.aminmax(pred))
    if lo < 0 or hi >= num_classes:
        raise _bad_pred(lo if lo < 0 else hi, num_classes)


def _bad_target(value: int, num_classes: int, ignore_index: int) -> UserError:
    return UserError(
        f"target holds value {value}, which is neither a class in [0, {num_classes}) nor ignore_index "
        f"{ignore_index}; check num_classes and ignore_index against the masks"
    )


def _check_target_range(target: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """Full check that every target value is a class or the ignore index (one or two passes)."""
    lo, hi = (int(v) for v in torch.aminmax(target))
    if lo >= 0 and hi < num_classes:
        return
    bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    if bool(bad.any()):
        raise _bad_target(int(target[bad].reshape(-1)[0]), num_classes, ignore_index)


# --------------------------------------------------------------------------------------------------------------------
# Confusion matrix


def _pair_counts(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, num_rows: int, ignore_index: int
) -> torch.Tensor:
    """Count (target, pred) pairs as ``bincount(target * C + pred)``: (num_rows * C,) int64.

    Checks ``0 <= pred < C`` and ``0 <= target < num_rows`` chunk by chunk, while the chunk is in cache: on CPU,
    reading the batch from memory twice costs more than the bincount. The index goes through one chunk-sized buffer
    because allocating a batch-sized array costs more (page faults) than filling it. The index is int16 whenever
    every bin fits (``num_rows * C < 2**15``): ``torch.bincount`` on int16 runs about twice as fast as on int64 on
    CPU, and uint8 class maps (1 byte a pixel) then never widen to 8 bytes.
    """
    c = num_classes
    n_bins = num_rows * c
    p = pred.reshape(-1)
    t = target.reshape(-1)
    n = p.numel()
    chunk = min(_CPU_CHUNK, n) if p.device.type == "cpu" else n  # the CUDA allocator caches: no need to chunk
    counts = torch.zeros(n_bins, dtype=torch.int64, device=p.device)
    index_dtype = torch.int16 if n_bins <= torch.iinfo(torch.int16).max + 1 else torch.int64
    buf = torch.empty(chunk, dtype=index_dtype, device=p.device)
    fast = p.dtype == torch.int64 and t.dtype == torch.int64
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        pc, tc = p[start:stop], t[start:stop]
        p_lo, p_hi, t_lo, t_hi = (int(v) for v in (*torch.aminmax(pc), *torch.aminmax(tc)))
        if p_lo < 0 or p_hi >= c:
            raise _bad_pred(p_lo if p_lo < 0 else p_hi, c)
        if t_lo < 0 or t_hi >= num_rows:
            raise _bad_target(t_lo if t_lo < 0 else t_hi, c, ignore_index)
        idx = buf[: stop - start]
        if fast:  # int64 in: one fused pass (the bounds were just checked, so the narrowing cast is exact)
            torch.add(pc, tc, alpha=c, out=idx)
        else:  # small dtypes would overflow in their own type: widen into the index first
            idx.copy_(tc).mul_(c).add_(pc)
        counts += torch.bincount(idx, minlength=n_bins)
    return counts


def _valid_matrix(counts: torch.Tensor, num_classes: int, ignore_row: int, ignore_index: int) -> torch.Tensor:
    """(R * C,) pair counts -> (C, C) matrix; rows >= C must be empty except ``ignore_row``."""
    rows = counts.view(-1, num_classes)  # (R, C)
    if rows.shape[0] > num_classes:
        extra = rows[num_classes:].sum(dim=1)  # (R - C,)
        if 0 <= ignore_row - num_classes < extra.shape[0]:
            extra[ignore_row - num_classes] = 0
        nonzero = torch.nonzero(extra)
        if nonzero.numel():
            raise _bad_target(num_classes + int(nonzero[0, 0]), num_classes, ignore_index)
    return rows[:num_classes]


def confusion_matrix(
    pred: ArrayLike, target: ArrayLike, num_classes: int, ignore_index: int = IGNORE_INDEX, per_image: bool = False
) -> torch.Tensor:
    """Confusion matrix of integer label maps, computed with bincount on the input's own device.

    Args:
        pred: predicted class indices, (H, W) or (B, H, W), numpy or torch, any integer dtype.
        target: true class indices or ``ignore_index``, same shape and device as ``pred``.
        num_classes: number of classes C.
        ignore_index: target value whose pixels never count.
        per_image: return one matrix per image instead of their sum.

    Returns:
        int64 tensor on the input's device, (C, C), or (B, C, C) with ``per_image``; rows are the truth.

    Raises:
        UserError: shapes differ, labels are not integers, or a value is neither a class nor ``ignore_index``.
    """
    _check_num_classes(num_classes, ignore_index)
    p, t = _as_pair(pred, target)  # (B, H, W) each
    c = num_classes
    if p.numel() == 0:
        return torch.zeros((p.shape[0], c, c) if per_image else (c, c), dtype=torch.int64, device=p.device)
    # Every target value v in [0, ignore_index] gets its own row of C bins, so ignored pixels (and any stray value
    # between C and ignore_index) land in rows >= C without a masking pass; _valid_matrix drops the ignore row and
    # reports the rest.
    ignore_row = ignore_index
    num_rows = max(c, ignore_index + 1)
    if ignore_index < 0 or num_rows * c > _MAX_BINS:  # a negative or huge ignore_index: move it to row C (slower)
        _check_target_range(t, c, ignore_index)
        t = torch.where(t == ignore_index, c, t.long())
        ignore_row, num_rows = c, c + 1
    if per_image:
        return torch.stack(
            [
                _valid_matrix(_pair_counts(pi, ti, c, num_rows, ignore_index), c, ignore_row, ignore_index)
                for pi, ti in zip(p, t, strict=True)
            ]
        )
    return _valid_matrix(_pair_counts(p, t, c, num_rows, ignore_index), c, ignore_row, ignore_index)


class ConfusionMatrix:
    """Streaming confusion matrix: ``update`` batch by batch, ``merge`` (or ``+``) partial results, read ``matrix``.

    The running total stays on the device of the first update, so GPU batches are never copied to the host. With
    ``per_image=True`` it also keeps one (C, C) matrix per image on the CPU (N * C * C * 8 bytes) for the per-image
    scores and for ranking images.

    Example:
        >>> cm = ConfusionMatrix(num_classes=2)
        >>> cm.update(np.array([[0, 1], [1, 1]]), np.array([[0, 1], [0, 255]]))
        >>> cm.matrix.tolist()
        [[1, 1], [0, 1]]
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, per_image: bool = False) -> None:
        _check_num_classes(num_classes, ignore_index)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.per_image = per_image
        self._total: torch.Tensor | None = None  # (C, C) int64 on the first update's device
        self._images: list[torch.Tensor] = []  # (B, C, C) int64 on the CPU, one entry per update

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add a batch: ``pred`` and ``target`` are (H, W) or (B, H, W) integer class indices."""
        m = confusion_matrix(pred, target, self.num_classes, self.ignore_index, per_image=self.per_image)
        if self.per_image:
            self._images.append(m.cpu())
            m = m.sum(dim=0)
        self._total = m if self._total is None else self._total + m.to(self._total.device)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """A new accumulator holding both; per-image matrices keep their order (self first)."""
        key = (self.num_classes, self.ignore_index, self.per_image)
        other_key = (other.num_classes, other.ignore_index, other.per_image)
        if other_key != key:
            raise ValueError(
                f"cannot merge confusion matrices (num_classes, ignore_index, per_image) {key} and {other_key}"
            )
        out = ConfusionMatrix(self.num_classes, self.ignore_index, self.per_image)
        parts = [m for m in (self._total, other._total) if m is not None]
        if parts:
            out._total = parts[0].clone() if len(parts) == 1 else parts[0] + parts[1].to(parts[0].device)
        out._images = self._images + other._images
        return out

    __add__ = merge

    @property
    def matrix(self) -> np.ndarray:
        """(C, C) int64, rows = truth, columns = prediction (zeros before the first update)."""
        if self._total is None:
            return np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        return self._total.cpu().numpy().copy()

    @property
    def image_matrices(self) -> np.ndarray:
        """(N, C, C) int64, one matrix per image in update order; needs ``per_image=True``."""
        if not self.per_image:
            raise ValueError("per-image matrices are kept only with ConfusionMatrix(..., per_image=True)")
        if not self._images:
            return np.zeros((0, self.num_classes, self.num_classes), dtype=np.int64)
        return torch.cat(self._images).numpy()

    def __repr__(self) -> str:
        n = sum(len(m) for m in self._images)
        images = f", images={n}" if self.per_image else ""
        return f"ConfusionMatrix(num_classes={self.num_classes}, pixels={int(self.matrix.sum())}{images})"


# --------------------------------------------------------------------------------------------------------------------
# Multilabel: one binary problem per class (pipeline/labels.py: bit-field masks)


def _check_bits(x: torch.Tensor, num_classes: int, name: str, ignore: bool) -> None:
    """Every value of a multilabel mask holds only the bits of classes 1..C-1 (or is the ignore index)."""
    if x.numel() == 0:
        return
    held = x.long()
    if ignore:
        held = torch.where(held == IGNORE_INDEX, 0, held)
    hi = int(held.max())
    if int(held.min()) < 0 or hi >> (num_classes - 1):
        raise UserError(
            f"{name} holds multilabel value {hi}, which sets a bit past the {num_classes - 1} classes (bits 0.."
            f"{num_classes - 2}){' or is the ignore index' if not ignore else ''}; check num_classes and that the "
            "masks were made with masks.overlap: multilabel"
        )


def multilabel_matrix(pred: ArrayLike, target: ArrayLike, num_classes: int, per_image: bool = False) -> torch.Tensor:
    """One-vs-rest 2 x 2 matrices of multilabel masks, one per class: ``[[TN, FP], [FN, TP]]`` (rows = truth).

    Class 0 is "no class" (a pixel holding no bit), classes 1..C-1 their bits (:mod:`pipeline.labels`); a pixel
    whose truth is the ignore index never counts. Returns int64 (1, C, 2, 2), or (B, C, 2, 2) with ``per_image``:
    always four dimensions, which is how the scores below tell a multilabel stack from a confusion matrix.

    Worked example (C = 3, one image of 3 pixels: truth {1}, {1, 2}, ignore; prediction {1, 2}, {1}, {}):
    class 1 has TP 2; class 2 has FP 1 and FN 1; no class has TN 2.

    >>> m = multilabel_matrix(np.array([[3, 1, 0]]), np.array([[1, 3, 255]]), 3)
    >>> m[0].tolist()
    [[[2, 0], [0, 0]], [[0, 0], [0, 2]], [[0, 1], [1, 0]]]
    """
    p, t = _as_pair(pred, target)  # (B, H, W)
    _check_bits(p, num_classes, "pred", ignore=False)
    _check_bits(t, num_classes, "target", ignore=True)
    ok = (t != IGNORE_INDEX).unsqueeze(1)  # (B, 1, H, W)
    pp, tt = planes(p, num_classes) & ok, planes(t, num_classes)  # (B, C, H, W); truth planes leave ignore out
    n = ok.sum(dim=(-2, -1)).expand(-1, num_classes)  # (B, C)
    tp = (pp & tt).sum(dim=(-2, -1))
    fn, fp = tt.sum(dim=(-2, -1)) - tp, pp.sum(dim=(-2, -1)) - tp
    m = torch.stack([torch.stack([n - tp - fp - fn, fp], -1), torch.stack([fn, tp], -1)], -2).long()
    return m if per_image else m.sum(dim=0, keepdim=True)


class MultilabelMatrix:
    """Streaming one-vs-rest matrices of multilabel masks (:func:`multilabel_matrix`), with the interface of
    :class:`ConfusionMatrix`: ``update``, ``merge``, ``matrix`` ((1, C, 2, 2)), ``image_matrices`` ((N, C, 2, 2))."""

    def __init__(self, num_classes: int, per_image: bool = False) -> None:
        _check_num_classes(num_classes, IGNORE_INDEX)
        check_multilabel_classes(num_classes - 1, "MultilabelMatrix")
        self.num_classes, self.per_image, self.ignore_index = num_classes, per_image, IGNORE_INDEX
        self._total = torch.zeros((1, num_classes, 2, 2), dtype=torch.int64)
        self._images: list[torch.Tensor] = []

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add a batch: (H, W) or (B, H, W) multilabel masks."""
        m = multilabel_matrix(pred, target, self.num_classes, per_image=True).cpu()
        if self.per_image:
            self._images.append(m)
        self._total += m.sum(dim=0, keepdim=True)

    def merge(self, other: MultilabelMatrix) -> MultilabelMatrix:
        if (other.num_classes, other.per_image) != (self.num_classes, self.per_image):
            raise ValueError(f"cannot merge multilabel matrices of {self!r} and {other!r}")
        out = MultilabelMatrix(self.num_classes, self.per_image)
        out._total = self._total + other._total
        out._images = self._images + other._images
        return out

    __add__ = merge

    @property
    def matrix(self) -> np.ndarray:
        return self._total.numpy().copy()

    @property
    def image_matrices(self) -> np.ndarray:
        if not self.per_image:
            raise ValueError("per-image matrices are kept only with MultilabelMatrix(..., per_image=True)")
        if not self._images:
            return np.zeros((0, self.num_classes, 2, 2), dtype=np.int64)
        return torch.cat(self._images).numpy()

    def __repr__(self) -> str:
        return f"MultilabelMatrix(num_classes={self.num_classes}, pixels={int(self._total[0, 0].sum())})"


def counter(num_classes: int, multilabel: bool = False, per_image: bool = False) -> ConfusionMatrix | MultilabelMatrix:
    """The accumulator that scores class maps (:class:`ConfusionMatrix`) or multilabel masks."""
    return MultilabelMatrix(num_classes, per_image) if multilabel else ConfusionMatrix(num_classes, per_image=per_image)


# --------------------------------------------------------------------------------------------------------------------
# Scores from a confusion matrix: pure numpy, (..., C, C) in, (..., C) out before any averaging over images


Matrix: TypeAlias = "ArrayLike | ConfusionMatrix | MultilabelMatrix"


class _Stats(NamedTuple):
    """What every score is made of, per class (..., C): true positives, truth and prediction sizes; and per matrix
    (...,): the decisions right and counted (pixels; a multilabel stack: (pixel, class) pairs)."""

    tp: np.ndarray
    truth: np.ndarray
    pred: np.ndarray
    correct: np.ndarray
    total: np.ndarray


def _as_matrix(matrix: Matrix, per_image: bool) -> np.ndarray:
    """(C, C) for dataset scores, (N, C, C) for per-image scores, as float64; a multilabel stack (N, C, 2, 2) stays
    four-dimensional: (1, C, 2, 2) summed, or (N, C, 2, 2) per image."""
    if isinstance(matrix, (ConfusionMatrix, MultilabelMatrix)):
        m = matrix.image_matrices if per_image else matrix.matrix
    elif isinstance(matrix, torch.Tensor):
        m = matrix.detach().cpu().numpy()
    else:
        m = np.asarray(matrix)
    if m.ndim == 4 and m.shape[-2:] == (2, 2):
        return (m if per_image else m.sum(axis=0, keepdims=True)).astype(np.float64)
    if m.ndim < 2 or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"a confusion matrix has shape (C, C) or (N, C, C), got {m.shape}")
    if per_image:
        if m.ndim != 3:
            raise ValueError(f"per-image scores need an (N, C, C) stack of matrices, got shape {m.shape}")
        return m.astype(np.float64)
    return m.reshape(-1, *m.shape[-2:]).sum(axis=0).astype(np.float64)


def _stats(matrix: Matrix, per_image: bool) -> _Stats:
    """:class:`_Stats` of a confusion matrix or a multilabel stack: (N, C) per image, (C,) summed."""
    m = _as_matrix(matrix, per_image)
    if m.ndim == 4:  # multilabel: [[TN, FP], [FN, TP]] per class
        tp = m[..., 1, 1]
        truth, pred = m[..., 1, 0] + tp, m[..., 0, 1] + tp
        correct, total = (m[..., 0, 0] + tp).sum(-1), m.sum(axis=(-2, -1)).sum(-1)
        if not per_image:
            return _Stats(tp[0], truth[0], pred[0], correct[0], total[0])
        return _Stats(tp, truth, pred, correct, total)
    tp = np.diagonal(m, axis1=-2, axis2=-1)
    return _Stats(tp, m.sum(axis=-1), m.sum(axis=-2), np.trace(m, axis1=-2, axis2=-1), m.sum(axis=(-2, -1)))


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den == 0 (no warnings)."""
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def nanmean(x: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """Mean ignoring NaN; NaN (without a warning) where everything is NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        out = np.nanmean(np.asarray(x, dtype=np.float64), axis=axis)
    return float(out) if np.ndim(out) == 0 else out


def _reduce(scores: np.ndarray, per_image: bool) -> np.ndarray:
    # (N, C) per-image scores -> (C,): mean over the images where the class has a score
    return nanmean(scores, axis=0) if per_image else scores


def class_iou(matrix: Matrix, per_image: bool = False) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN), (C,) float64; NaN for a class absent from truth and prediction.

    Args:
        matrix: (C, C) confusion matrix (an (N, C, C) stack is summed), or a :class:`ConfusionMatrix`.
        per_image: score each image of an (N, C, C) stack, then average each class over the images where it has a
            score.
    """
    st = _stats(matrix, per_image)
    return _reduce(_divide(st.tp, st.truth + st.pred - st.tp), per_image)


def class_accuracy(matrix: Matrix, per_image: bool = False) -> np.ndarray:
    """Per-class accuracy (recall) = TP / (TP + FN), (C,) float64; NaN for a class absent from the truth.

    Args:
        matrix: as in :func:`class_iou`.
        per_image: as in :func:`class_iou`.
    """
    st = _stats(matrix, per_image)
    return _reduce(_divide(st.tp, st.truth), per_image)


def class_dice(matrix: Matrix, per_image: bool = False) -> np.ndarray:
    """Per-class Dice (F1) = 2 TP / (2 TP + FP + FN), (C,) float64; NaN for a class absent from truth and prediction.

    Args:
        matrix: as in :func:`class_iou`.
        per_image: as in :func:`class_iou`.
    """
    st = _stats(matrix, per_image)
    return _reduce(_divide(2 * st.tp, st.truth + st.pred), per_image)


def pixel_accuracy(matrix: Matrix, per_image: bool = False) -> float:
    """aAcc: correctly labelled pixels / counted pixels; NaN with no counted pixels (a multilabel stack: the share
    of (pixel, class) decisions right, "no class" among them).

    Args:
        matrix: as in :func:`class_iou`.
        per_image: mean over images of each image's pixel accuracy (images with no counted pixels are skipped).
    """
    st = _stats(matrix, per_image)
    acc = _divide(st.correct, st.total)
    return nanmean(acc) if per_image else float(acc)


def mean_iou(matrix: Matrix, per_image: bool = False) -> float:
    """mIoU: mean of :func:`class_iou` over the classes that have a score."""
    return nanmean(class_iou(matrix, per_image))


def mean_accuracy(matrix: Matrix, per_image: bool = False) -> float:
    """mAcc: mean of :func:`class_accuracy` over the classes that have a score."""
    return nanmean(class_accuracy(matrix, per_image))


def mean_dice(matrix: Matrix, per_image: bool = False) -> float:
    """mDice: mean of :func:`class_dice` over the classes that have a score."""
    return nanmean(class_dice(matrix, per_image))


def image_miou(matrices: ArrayLike) -> np.ndarray:
    """mIoU of each image on its own: (N, C, C) (or (N, C, 2, 2)) -> (N,); NaN for an image with no counted pixels."""
    st = _stats(matrices, per_image=True)
    return np.asarray(nanmean(_divide(st.tp, st.truth + st.pred - st.tp), axis=1), dtype=np.float64)


# --------------------------------------------------------------------------------------------------------------------
# The competition metric: one name (params.yaml ``metric.name``) for what OOF, the local leaderboard and every
# OOF-driven choice optimise


METRICS = ("miou", "image_miou", "image_dice")


def image_dice(matrices: ArrayLike) -> np.ndarray:
    """Mean Dice of each image over its foreground classes (1..C-1), empty-vs-empty = 1: (N, C, C) -> (N,).

    The Severstal / SIIM / UW-Madison convention: every (image, foreground class) pair scores
    ``2 |T & P| / (|T| + |P|)``, and 1 when the class is in neither truth nor prediction of that image. Class 0
    (background) never counts; a one-class map (C = 1) has no foreground and scores NaN. An image with no counted
    pixels (all ignore) is NaN too, so it is skipped like in :func:`image_miou`. Every image has the same C - 1
    pairs, so the mean over images of this equals the mean over all (image, class) pairs.

    Example (C = 3, one image: truth ``[[1, 1, 0, 0]]``, prediction ``[[1, 0, 0, 0]]``)::

        class 1: 2 * 1 / (2 + 1) = 2/3     class 2: empty in both = 1     image Dice = (2/3 + 1) / 2 = 5/6

    >>> m = confusion_matrix(np.array([[1, 0, 0, 0]]), np.array([[1, 1, 0, 0]]), 3, per_image=True)
    >>> round(float(image_dice(m)[0]), 6)
    0.833333
    """
    st = _stats(matrices, per_image=True)
    tp = st.tp[:, 1:]  # (N, C-1)
    size = (st.truth + st.pred)[:, 1:]  # |T| + |P| per foreground class
    dice = np.where(size > 0, 2 * tp / np.maximum(size, 1), 1.0)
    out = np.asarray(nanmean(dice, axis=1) if dice.shape[1] else np.full(len(tp), np.nan), dtype=np.float64)
    out[st.total == 0] = np.nan
    return out


def image_scores(name: str, matrices: ArrayLike) -> np.ndarray:
    """Each image's own score in the per-image metric ``name`` (``image_miou`` or ``image_dice``): (N,), NaN = none."""
    if name == "image_miou":
        return image_miou(matrices)
    if name == "image_dice":
        return image_dice(matrices)
    raise ValueError(f"{name!r} is not a per-image metric; per-image metrics: image_miou, image_dice")


def check_metric(name: str) -> str:
    """``name`` if it is one of :data:`METRICS`, else a UserError listing them."""
    if name not in METRICS:
        raise UserError(f"metric {name!r} is not one of {', '.join(METRICS)} (params.yaml: metric.name)")
    return name


def score_matrices(name: str, matrices: ArrayLike) -> float:
    """The competition metric ``name`` of an (N, C, C) stack of per-image confusion matrices (rows = truth).

    * ``miou``: dataset mIoU (mmseg / the trash competition): intersections and unions summed over all images,
      divided once per class, then the mean over the classes with a score; background (class 0) included.
    * ``image_miou``: the mean over images of each image's mIoU over the classes present in its truth or its
      prediction (background included; :func:`image_miou`).
    * ``image_dice``: the mean over (image, foreground class) pairs of Dice, empty-vs-empty = 1, background not
      counted (:func:`image_dice`).

    Ignore pixels are already out of the matrices. NaN when nothing has a score.

    Example (C = 2; image A: truth ``[1, 1]``, prediction ``[1, 0]``; image B: truth ``[0, 0]``, prediction
    ``[0, 0]``)::

        miou       = mean(IoU_0 = 2 / (2+3-2), IoU_1 = 1 / (2+1-1)) = mean(2/3, 1/2)      = 7/12
        image_miou = mean(A: mean(IoU_0 = 0/1, IoU_1 = 1/2), B: IoU_0 = 1 (class 1 absent)) = mean(1/4, 1) = 5/8
        image_dice = mean(A: Dice_1 = 2*1 / (2+1), B: Dice_1 empty vs empty = 1)   = mean(2/3, 1) = 5/6

    >>> a = confusion_matrix(np.array([[1, 0]]), np.array([[1, 1]]), 2, per_image=True)
    >>> b = confusion_matrix(np.array([[0, 0]]), np.array([[0, 0]]), 2, per_image=True)
    >>> m = np.concatenate([a, b])
    >>> [round(score_matrices(n, m), 6) for n in METRICS]
    [0.583333, 0.625, 0.833333]
    """
    check_metric(name)
    m = _as_matrix(matrices, per_image=True)
    if name == "miou":
        return float(mean_iou(m.sum(axis=0, keepdims=m.ndim == 4)))
    return float(nanmean(image_scores(name, m)))


# --------------------------------------------------------------------------------------------------------------------
# Boundary IoU (Cheng et al., CVPR 2021)


def boundary_dilation(height: int, width: int, dilation_ratio: float = 0.02) -> int:
    """Boundary width d in pixels: ``max(1, round(dilation_ratio * sqrt(h^2 + w^2)))``, as in the official code."""
    return max(1, int(round(dilation_ratio * math.sqrt(height**2 + width**2))))


def _window_clean(change: torch.Tensor, d: int, dim: int) -> torch.Tensor:
    """Where the (2d+1)-long window around each position holds no change and lies inside the image.

    ``change`` has n - 1 entries along ``dim`` (change[j] is about positions j and j + 1); the result has n. Counting
    changes with a cumulative sum makes this O(n) whatever d is.
    """
    n = change.shape[dim] + 1
    shape = list(change.shape)
    shape[dim] = n
    out = torch.zeros(shape, dtype=torch.bool, device=change.device)
    if n < 2 * d + 1:
        return out
    shape[dim] = 1
    zero = torch.zeros(shape, dtype=torch.int32, device=change.device)
    csum = torch.cat([zero, torch.cumsum(change, dim, dtype=torch.int32)], dim)  # csum[k]: changes in pairs < k
    # changes among pairs i-d .. i+d-1 = csum[i+d] - csum[i-d], for the positions d .. n-1-d whose window fits
    out.narrow(dim, d, n - 2 * d).copy_(csum.narrow(dim, 2 * d, n - 2 * d) == csum.narrow(dim, 0, n - 2 * d))
    return out


def label_boundary(labels: ArrayLike, dilation: int) -> torch.Tensor:
    """Pixels within ``dilation`` pixels (chessboard distance) of another label or of the image border.

    For every class c, ``(labels == c) & label_boundary(labels, d)`` equals the official ``mask_to_boundary`` of the
    binary mask ``labels == c``: padding with one pixel of zeros and eroding ``d`` times with a 3x3 kernel keeps
    exactly the pixels whose (2d+1) x (2d+1) window lies inside the image and is all c. One label-agnostic pass
    thus serves all classes.

    Args:
        labels: integer label map, (H, W) or (B, H, W).
        dilation: boundary width d >= 1 in pixels (see :func:`boundary_dilation`).

    Returns:
        bool tensor (B, H, W) on the input's device.
    """
    x = _as_labels(labels, "labels")  # (B, H, W)
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    if x.numel() == 0:
        return torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    rows_clean = _window_clean(x[:, :, 1:] != x[:, :, :-1], dilation, dim=2)  # (B, H, W) row window uniform
    # the square window is uniform iff the column window has one label and every row window in it is uniform
    col_change = (x[:, 1:, :] != x[:, :-1, :]) | ~(rows_clean[:, 1:, :] & rows_clean[:, :-1, :])
    return ~_window_clean(col_change, dilation, dim=1)


def mask_boundary(mask: ArrayLike, dilation_ratio: float = 0.02) -> np.ndarray:
    """Inner boundary band of one binary mask, as ``mask_to_boundary`` in the official Boundary IoU code.

    The mask is padded with one pixel of zeros (so a mask cut by the image border has a boundary there too), eroded
    d times with a 3x3 kernel, and the eroded mask is subtracted; d comes from the mask's own (H, W) (see
    :func:`boundary_dilation`). The band therefore lies inside the mask: it is G_d intersected with G in the paper.

    Args:
        mask: (H, W) binary mask (nonzero = inside).
        dilation_ratio: boundary width as a fraction of the image diagonal.

    Returns:
        (H, W) bool boundary band.
    """
    m = _as_labels(mask, "mask")[0] != 0  # (H, W)
    d = boundary_dilation(m.shape[0], m.shape[1], dilation_ratio)
    return (m & label_boundary(m, d)[0]).cpu().numpy()


def boundary_counts(
    pred: ArrayLike, target: ArrayLike, num_classes: int, ignore_index: int = IGNORE_INDEX, dilation_ratio: float = 0.02
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class Boundary IoU intersection and union of a batch, summed over its images.

    For each image and class c, G_b = boundary band of (target == c) and P_b = boundary band of (pred == c), each
    from :func:`label_boundary` with d from the image's (H, W); intersection = |G_b & P_b|, union = |G_b | P_b|.
    Pixels whose truth is ``ignore_index`` are taken as ``ignore_index`` in the prediction too, so they never count
    and the prediction there changes nothing; their neighbours are boundary in truth and prediction alike.

    Args:
        pred: predicted class indices, (H, W) or (B, H, W).
        target: true class indices or ``ignore_index``, same shape.
        num_classes: number of classes C.
        ignore_index: target value whose pixels never count.
        dilation_ratio: boundary width as a fraction of the image diagonal (0.02 in the paper).

    Returns:
        (intersection, union), each (C,) int64 on the input's device.
    """
    _check_num_classes(num_classes, ignore_index)
    p, t = _as_pair(pred, target)  # (B, H, W)
    c = num_classes
    zeros = torch.zeros(c, dtype=torch.int64, device=p.device)
    if p.numel() == 0:
        return zeros, zeros.clone()
    _check_pred_range(p, c)
    _check_target_range(t, c, ignore_index)
    d = boundary_dilation(p.shape[1], p.shape[2], dilation_ratio)
    p, t = p.long(), t.long()
    valid = t != ignore_index
    p = torch.where(valid, p, t)
    t_band = label_boundary(t, d) & valid
    p_band = label_boundary(p, d) & valid
    both = t_band & p_band & (t == p)
    inter = torch.bincount(t[both], minlength=c)
    union = torch.bincount(t[t_band], minlength=c) + torch.bincount(p[p_band], minlength=c) - inter
    return inter, union


def multilabel_boundary_counts(
    pred: ArrayLike, target: ArrayLike, num_classes: int, dilation_ratio: float = 0.02
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`boundary_counts` of multilabel masks: each class (0: no class) as its own binary mask, its band the
    pixels of the plane within d of its outside or the border; ignore pixels never count and the prediction there
    is taken as the truth's planes (none). Returns (intersection, union), each (C,) int64.

    >>> t = np.zeros((1, 9, 9), np.int64); t[0, 2:7, 2:7] = 3  # a 5x5 square of classes 1 and 2
    >>> p = t.copy(); p[0, 2:7, 2:7] = 1  # class 1 right, class 2 missed
    >>> [x.tolist() for x in multilabel_boundary_counts(p, t, 3)]
    [[56, 16, 0], [56, 16, 16]]
    """
    p, t = _as_pair(pred, target)
    _check_bits(p, num_classes, "pred", ignore=False)
    _check_bits(t, num_classes, "target", ignore=True)
    zeros = torch.zeros(num_classes, dtype=torch.int64, device=p.device)
    if p.numel() == 0:
        return zeros, zeros.clone()
    d = boundary_dilation(p.shape[1], p.shape[2], dilation_ratio)
    ok = t != IGNORE_INDEX
    pp, tt = planes(torch.where(ok, p.long(), 0), num_classes), planes(t, num_classes)  # (B, C, H, W)
    inter, union = zeros.clone(), zeros.clone()
    for c in range(num_classes):
        t_band = tt[:, c] & label_boundary(tt[:, c], d) & ok
        p_band = pp[:, c] & label_boundary(pp[:, c], d) & ok
        inter[c] = (t_band & p_band).sum()
        union[c] = (t_band | p_band).sum()
    return inter, union


def boundary_iou_scores(intersection: ArrayLike, union: ArrayLike) -> np.ndarray:
    """Per-class Boundary IoU = intersection / union, (C,) float64; NaN where the union is 0."""
    inter = intersection.cpu().numpy() if isinstance(intersection, torch.Tensor) else np.asarray(intersection)
    uni = union.cpu().numpy() if isinstance(union, torch.Tensor) else np.asarray(union)
    return _divide(inter.astype(np.float64), uni.astype(np.float64))


class BoundaryIoU:
    """Streaming per-class Boundary IoU: boundary intersections and unions summed over images, divided once.

    This is the mIoU convention applied to boundary bands (see :func:`boundary_counts`). An image where a class is
    absent from both truth and prediction adds 0 to that class's intersection and union, so it does not count at
    all (it neither lowers nor raises the score); a class absent from every image has union 0 and scores NaN, and
    ``mean`` skips it. Images of different sizes go in separate ``update`` calls; each gets d from its own size.

    Example:
        >>> biou = BoundaryIoU(num_classes=2)
        >>> biou.update(np.ones((8, 8), np.int64), np.ones((8, 8), np.int64))
        >>> biou.scores().tolist()
        [nan, 1.0]
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        dilation_ratio: float = 0.02,
        multilabel: bool = False,
    ) -> None:
        _check_num_classes(num_classes, ignore_index)
        if not dilation_ratio > 0:
            raise UserError(f"dilation_ratio must be > 0, got {dilation_ratio}")
        self.multilabel = multilabel  # multilabel masks: :func:`multilabel_boundary_counts`
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.dilation_ratio = dilation_ratio
        self._inter: torch.Tensor | None = None  # (C,) int64 on the first update's device
        self._union: torch.Tensor | None = None

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add a batch of same-sized images: (H, W) or (B, H, W) integer class indices."""
        if self.multilabel:
            inter, union = multilabel_boundary_counts(pred, target, self.num_classes, self.dilation_ratio)
        else:
            inter, union = boundary_counts(pred, target, self.num_classes, self.ignore_index, self.dilation_ratio)
        if self._inter is None or self._union is None:
            self._inter, self._union = inter, union
        else:
            self._inter = self._inter + inter.to(self._inter.device)
            self._union = self._union + union.to(self._union.device)

    def merge(self, other: BoundaryIoU) -> BoundaryIoU:
        """A new accumulator holding both."""
        key = (self.num_classes, self.ignore_index, self.dilation_ratio, self.multilabel)
        if (other.num_classes, other.ignore_index, other.dilation_ratio, other.multilabel) != key:
            raise ValueError(f"cannot merge BoundaryIoU with different settings: {key} vs {other!r}")
        out = BoundaryIoU(*key)
        out._inter = torch.as_tensor(self.intersection + other.intersection)
        out._union = torch.as_tensor(self.union + other.union)
        return out

    __add__ = merge

    @property
    def intersection(self) -> np.ndarray:
        """(C,) int64 summed boundary intersections."""
        if self._inter is None:
            return np.zeros(self.num_classes, dtype=np.int64)
        return self._inter.cpu().numpy().copy()

    @property
    def union(self) -> np.ndarray:
        """(C,) int64 summed boundary unions."""
        if self._union is None:
            return np.zeros(self.num_classes, dtype=np.int64)
        return self._union.cpu().numpy().copy()

    def scores(self) -> np.ndarray:
        """(C,) float64 per-class Boundary IoU, NaN for classes absent everywhere."""
        return boundary_iou_scores(self.intersection, self.union)

    def mean(self) -> float:
        """Mean Boundary IoU over the classes that have a score."""
        return nanmean(self.scores())

    def __repr__(self) -> str:
        return (
            f"BoundaryIoU(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"dilation_ratio={self.dilation_ratio})"
        )


# --------------------------------------------------------------------------------------------------------------------
# Summary


def _json_float(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def summarize(
    matrix: Matrix,
    class_names: Sequence[str],
    per_image: bool = False,
    boundary: ArrayLike | BoundaryIoU | None = None,
) -> dict[str, Any]:
    """Scores as a plain JSON-ready dict; NaN becomes None.

    Args:
        matrix: (C, C) confusion matrix, (N, C, C) per-image stack, or a :class:`ConfusionMatrix`.
        class_names: one name per class, in class-index order.
        per_image: average per-image scores instead of dataset scores (needs per-image matrices).
        boundary: per-class Boundary IoU, (C,) scores or a :class:`BoundaryIoU`; adds ``mBIoU`` and ``BIoU``.

    Returns:
        ``{"mIoU", "aAcc", "mAcc", "mDice", ["mBIoU"], "per_image", "per_class": {name: {"IoU", "Acc", "Dice",
        ["BIoU"]}}}``, scores as fractions in [0, 1].
    """
    iou = class_iou(matrix, per_image)
    acc = class_accuracy(matrix, per_image)
    dice = class_dice(matrix, per_image)
    names = list(class_names)
    if len(names) != len(iou):
        raise UserError(f"got {len(names)} class names for {len(iou)} classes; give one name per class")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise UserError(f"class names must be unique, repeated: {dupes}")
    biou = None
    if boundary is not None:
        if isinstance(boundary, BoundaryIoU):
            biou = boundary.scores()
        elif isinstance(boundary, torch.Tensor):
            biou = boundary.detach().cpu().numpy().astype(np.float64)
        else:
            biou = np.asarray(boundary, dtype=np.float64)
        if len(biou) != len(iou):
            raise UserError(f"got Boundary IoU for {len(biou)} classes but the confusion matrix has {len(iou)}")
    out: dict[str, Any] = {
        "mIoU": _json_float(nanmean(iou)),
        "aAcc": _json_float(pixel_accuracy(matrix, per_image)),
        "mAcc": _json_float(nanmean(acc)),
        "mDice": _json_float(nanmean(dice)),
    }
    if biou is not None:
        out["mBIoU"] = _json_float(nanmean(biou))
    out["per_image"] = per_image
    per_class: dict[str, dict[str, float | None]] = {}
    for i, name in enumerate(names):
        row = {"IoU": _json_float(iou[i]), "Acc": _json_float(acc[i]), "Dice": _json_float(dice[i])}
        if biou is not None:
            row["BIoU"] = _json_float(biou[i])
        per_class[name] = row
    out["per_class"] = per_class
    return out
