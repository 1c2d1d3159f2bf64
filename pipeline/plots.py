"""Plots of predictions: the class palette and mask colouring, error maps, the confusion-matrix PNG and the grid of
the worst and best validation images.

Every file is written atomically through :mod:`pipeline.io`. Matplotlib is imported inside the plotting functions
(Agg backend) and figures are built as ``Figure`` objects, never through pyplot's global figure list. The per-class
tables are :mod:`pipeline.tables`; the end-of-run report is :mod:`pipeline.report`.
"""

from __future__ import annotations

import colorsys
import io
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.errors import UserError
from pipeline.io import atomic_open
from pipeline.labels import IGNORE_INDEX
from pipeline.metrics import confusion_matrix, image_miou
from pipeline.tables import percent

IGNORE_COLOR = (128, 128, 128)  # grey: no palette colour is grey, so ignored pixels never look like a class
ERROR_COLOR = (255, 0, 0)


# --------------------------------------------------------------------------------------------------------------------
# Colours


def _palette_table() -> np.ndarray:
    """The fixed 256-colour table: class 0 black, then hues stepped by the golden ratio (neighbours differ a lot)."""
    table = np.zeros((256, 3), dtype=np.uint8)
    golden = (math.sqrt(5) - 1) / 2
    for i in range(1, 256):
        hue = (i * golden) % 1.0
        sat = (1.0, 0.55)[(i // 2) % 2]
        val = (0.95, 0.7, 0.5)[i % 3]
        table[i] = [round(255 * ch) for ch in colorsys.hsv_to_rgb(hue, sat, val)]
    return table


_PALETTE = _palette_table()


def palette(n: int = 256) -> np.ndarray:
    """The first ``n`` colours of the fixed class palette, (n, 3) uint8; class i has the same colour for every n.

    Colours are distinct and never grey (grey marks ignored pixels); class 0 (usually background) is black.
    """
    if not 0 <= n <= 256:
        raise UserError(f"the palette has colours for up to 256 classes, asked for {n}")
    return _PALETTE[:n].copy()


def colorize(mask: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Colour a class mask with :func:`palette`; ``ignore_index`` pixels are grey.

    Args:
        mask: (H, W) integer class indices in [0, 256), or ``ignore_index``.
        ignore_index: value drawn grey instead of a class colour.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    m = np.asarray(mask)
    if m.ndim != 2 or m.dtype.kind not in "iub":
        raise UserError(f"a class mask is an (H, W) integer array, got shape {m.shape} dtype {m.dtype}")
    ignored = m == ignore_index
    bad = ~ignored & ((m < 0) | (m > 255))
    if bad.any():
        raise UserError(f"mask value {m[bad].flat[0]} has no palette colour (classes 0..255, ignore {ignore_index})")
    out = _PALETTE[np.where(ignored, 0, m).astype(np.intp)]  # (H, W, 3)
    out[ignored] = IGNORE_COLOR
    return out


def error_map(pred: np.ndarray, target: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(H, W, 3) uint8: red where the prediction is wrong, black where right, grey where the truth is ignored."""
    p, t = np.asarray(pred), np.asarray(target)
    if p.shape != t.shape:
        raise UserError(f"pred has shape {p.shape} but target has shape {t.shape}; they must match")
    out = np.zeros((*t.shape, 3), dtype=np.uint8)
    out[p != t] = ERROR_COLOR
    out[t == ignore_index] = IGNORE_COLOR
    return out


# --------------------------------------------------------------------------------------------------------------------
# Plots


def _new_figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _save_figure(fig: Any, dest: str | os.PathLike[str]) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    with atomic_open(dest, "wb") as f:
        f.write(buf.getvalue())


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], dest: str | os.PathLike[str]) -> None:
    """Write the confusion matrix, normalised by row (each truth row sums to 1), as a PNG.

    Args:
        matrix: (C, C) counts, rows = truth, columns = prediction.
        class_names: C names, shown on both axes.
        dest: PNG path.
    """
    m = np.asarray(matrix, dtype=np.float64)
    c = len(class_names)
    if m.shape != (c, c):
        raise UserError(f"confusion matrix has shape {m.shape} but there are {c} class names")
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)  # a class absent from the truth: a zero row
    side = min(40.0, max(5.0, 0.45 * c + 2.5))
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(c), labels=list(class_names), rotation=90, fontsize=8)
    ax.set_yticks(range(c), labels=list(class_names), fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    ax.set_title("confusion matrix (normalised by truth row)")
    if c <= 20:
        for i in range(c):
            for j in range(c):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    fig.tight_layout()
    _save_figure(fig, dest)


def rank_images(scores: Sequence[float] | np.ndarray, n: int) -> tuple[list[int], list[int]]:
    """Indices of the ``n`` worst and ``n`` best images by score; NaN scores (nothing to score) are left out.

    Worst come lowest first, best highest first; an image is never in both (with fewer than 2n scored images the
    best list gets what is left). Ties keep input order.
    """
    s = np.asarray(scores, dtype=np.float64)
    scored = np.flatnonzero(~np.isnan(s))
    order = scored[np.argsort(s[scored], kind="stable")]
    worst = order[:n].tolist()
    rest = order[len(worst) :]
    best = rest[::-1][:n].tolist()
    return worst, best


def plot_examples(  # noqa: PLR0913 - the figure's data (images, truth, predictions) and its display options
    dest: str | os.PathLike[str],
    images: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    num_classes: int,
    n: int = 4,
    ignore_index: int = IGNORE_INDEX,
    scores: Sequence[float] | np.ndarray | None = None,
    names: Sequence[str] | None = None,
) -> tuple[list[int], list[int]]:
    """Write a PNG grid (image | truth | prediction | error) of the ``n`` worst and ``n`` best images by mIoU.

    Args:
        dest: PNG path.
        images: (H, W, 3) uint8 (or (H, W) grey) images; any indexable sequence, so a lazy loader works.
        targets: (H, W) true class masks.
        preds: (H, W) predicted class masks.
        num_classes: number of classes C.
        n: rows for the worst and for the best images.
        ignore_index: truth value drawn grey and never scored.
        scores: per-image mIoU, when already known (e.g. :func:`pipeline.metrics.image_miou`); then only the
            chosen images are read. Computed from ``targets`` and ``preds`` otherwise.
        names: per-image labels for the row titles (default: the index).

    Returns:
        (worst, best) indices drawn.
    """
    if not len(images) == len(targets) == len(preds):
        raise UserError(f"got {len(images)} images, {len(targets)} targets and {len(preds)} predictions")
    if scores is None:
        mats = np.stack(
            [confusion_matrix(preds[i], targets[i], num_classes, ignore_index).numpy() for i in range(len(preds))]
        )
        scores = image_miou(mats) if len(mats) else np.zeros(0)
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) != len(images):
        raise UserError(f"got {len(scores)} scores for {len(images)} images")
    worst, best = rank_images(scores, n)
    chosen = [("worst", i) for i in worst] + [("best", i) for i in best]
    if not chosen:
        raise UserError("no image has a score (every pixel ignored?); nothing to draw")
    fig = _new_figure(4 * 2.6, len(chosen) * 2.6)
    axes = fig.subplots(len(chosen), 4, squeeze=False)
    for row, (kind, i) in enumerate(chosen):
        target, pred = np.asarray(targets[i]), np.asarray(preds[i])
        label = names[i] if names is not None else f"#{i}"
        panels = [
            (np.asarray(images[i]), f"{kind}: {label}"),
            (colorize(target, ignore_index), "truth"),
            (colorize(pred, ignore_index), "prediction"),
            (error_map(pred, target, ignore_index), f"error (mIoU {percent(float(scores[i]))}%)"),
        ]
        for ax, (panel, title) in zip(axes[row], panels, strict=True):
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    _save_figure(fig, dest)
    return worst, best
