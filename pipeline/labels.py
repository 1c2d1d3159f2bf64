"""The values of a label mask, one home for every module that paints, reads, learns from or scores one.

A mask is an (H, W) uint8 array of class indices: 0 is background, 1..K the classes, and :data:`IGNORE_INDEX` marks
pixels that are never learned from or scored (COCO crowd regions painted as ignore, unconfident pseudo-label pixels,
padding). It is the ``ignore_index`` of the losses and metrics, so a class index is at most ``IGNORE_INDEX - 1``.

**Multilabel masks** (``masks.overlap: multilabel``: a pixel may hold several classes, UW-Madison's stomach and
bowel, Severstal's defects) are the same (H, W) uint8 arrays holding a bit field: class k (1..K) is bit ``k - 1``,
0 is a pixel of no class, and :data:`IGNORE_INDEX` (255, every bit set) is ignore. With K at most
:data:`MULTILABEL_MAX_CLASSES` (7) the top bit is never a class, so 255 cannot be a set of classes. Everything that
moves a mask (PNG files, the decoded cache, crops, flips and nearest-neighbour resizing, copy-paste, padding with
255) moves a bit field unchanged; only what reads the values asks which kind it holds: the losses and metrics
(:func:`planes`: one binary plane per class, plane 0 the pixels of no class) and whatever makes a mask from
probabilities (:func:`decode`: each class's own sigmoid probability over its threshold).

Worked example (K = 2): a pixel of class 1 alone is ``0b01 = 1``, of class 2 alone ``0b10 = 2``, of both ``0b11 = 3``.

>>> import numpy as np
>>> bits = np.array([[0, 1, 2, 3, 255]], np.uint8)
>>> planes(bits, 3).astype(int)[:, 0].tolist()  # planes: no class, class 1, class 2 (ignore in none)
[[1, 0, 0, 0, 0], [0, 1, 0, 1, 0], [0, 0, 1, 1, 0]]
>>> pack(planes(bits, 3))[0].tolist()  # the ignore pixel comes back as 0: planes do not carry ignore
[0, 1, 2, 3, 0]
"""

from __future__ import annotations

from typing import Any

import numpy as np

IGNORE_INDEX = 255
MAX_CLASSES = IGNORE_INDEX - 1  # foreground classes a mask can hold (1..254), background 0 besides
MULTILABEL_MAX_CLASSES = 7  # foreground classes a multilabel (bit-field) mask can hold: bits 0..6; 255 stays ignore


def _is_torch(x: Any) -> bool:
    """A torch tensor, told without importing torch (this module is imported where torch is not needed)."""
    return type(x).__module__.startswith("torch")


def multilabel_masks(mask_summary: Any) -> bool:
    """Whether the masks stage painted bit fields (``masks.overlap: multilabel``), read from its summary
    (``Layout.mask_summary``); a layout without one (made by hand, by a test) holds class maps."""
    from pathlib import Path

    path = Path(mask_summary)
    if not path.is_file():
        return False
    from pipeline.io import read_json

    return read_json(path).get("labels") == "multilabel"


def bit(k: int) -> int:
    """The bit of class ``k`` (1..:data:`MULTILABEL_MAX_CLASSES`) in a multilabel mask: ``1 << (k - 1)``."""
    if not 1 <= k <= MULTILABEL_MAX_CLASSES:
        raise ValueError(f"a multilabel class index is in 1..{MULTILABEL_MAX_CLASSES}, got {k}")
    return 1 << (k - 1)


def check_multilabel_classes(num_foreground: int, where: str) -> None:
    """A ``UserError`` naming ``where`` when ``num_foreground`` classes do not fit a multilabel mask's bits."""
    from pipeline.errors import UserError

    if num_foreground > MULTILABEL_MAX_CLASSES:
        raise UserError(
            f"{where}: {num_foreground} categories, but masks.overlap: multilabel holds at most "
            f"{MULTILABEL_MAX_CLASSES} (one bit each in a uint8 mask); use masks.overlap: larger_first (one class a "
            "pixel), or merge categories"
        )


def planes(bits: Any, num_classes: int) -> Any:
    """(..., H, W) multilabel masks (numpy or torch) -> (..., C, H, W) bool planes: plane 0 the pixels of no class,
    plane k those holding class k; an ignore pixel is in no plane (:func:`valid` says which pixels count)."""
    if _is_torch(bits):
        import torch

        b = bits.long()
        shifts = torch.arange(num_classes - 1, device=bits.device).view(-1, 1, 1)
        fg = ((b.unsqueeze(-3) >> shifts) & 1).bool()
        ok = (b != IGNORE_INDEX).unsqueeze(-3)
        return torch.cat([(b == 0).unsqueeze(-3), fg & ok], dim=-3)
    b = np.asarray(bits).astype(np.int64)
    shifts = np.arange(num_classes - 1).reshape(-1, 1, 1)
    fg = ((b[..., None, :, :] >> shifts) & 1).astype(bool)
    ok = (b != IGNORE_INDEX)[..., None, :, :]
    return np.concatenate([(b == 0)[..., None, :, :], fg & ok], axis=-3)


def valid(bits: Any) -> Any:
    """(..., H, W) bool: the pixels of a mask that are learnt from and scored (not :data:`IGNORE_INDEX`)."""
    return bits != IGNORE_INDEX


def pack(class_planes: Any) -> Any:
    """(..., C, H, W) bool planes -> (..., H, W) uint8 multilabel masks (plane 0 is not read: no class is no bit)."""
    if _is_torch(class_planes):
        import torch

        c = class_planes.shape[-3]
        weights = (1 << torch.arange(c - 1, device=class_planes.device)).view(-1, 1, 1)
        return (class_planes[..., 1:, :, :].long() * weights).sum(-3).to(torch.uint8)
    p = np.asarray(class_planes)
    weights = (1 << np.arange(p.shape[-3] - 1)).reshape(-1, 1, 1)
    return (p[..., 1:, :, :].astype(np.int64) * weights).sum(axis=-3).astype(np.uint8)


def decode(probs: Any, thresholds: Any = 0.5) -> Any:
    """(..., C, H, W) per-class sigmoid probabilities -> (..., H, W) uint8 multilabel masks: class k where its own
    probability is over its threshold (a float, or one per class 1..K); channel 0 (no class) is not read.

    >>> import numpy as np
    >>> p = np.array([[[0.9]], [[0.6]], [[0.2]]])  # one pixel; no class 0.9, class 1 0.6, class 2 0.2
    >>> int(decode(p)[0, 0]), int(decode(p, [0.7, 0.1])[0, 0])
    (1, 2)
    """
    c = probs.shape[-3]
    if _is_torch(probs):
        import torch

        t = torch.as_tensor(thresholds, dtype=probs.dtype, device=probs.device).reshape(-1)
        t = t.expand(c - 1) if t.numel() == 1 else t
        over = probs[..., 1:, :, :] > t.view(-1, 1, 1)
        return pack(torch.cat([torch.zeros_like(over[..., :1, :, :]), over], dim=-3))
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    t = np.broadcast_to(t, (c - 1,)) if t.size == 1 else t
    over = np.asarray(probs)[..., 1:, :, :] > t.reshape(-1, 1, 1)
    return pack(np.concatenate([np.zeros_like(over[..., :1, :, :]), over], axis=-3))


def class_pixels(histogram: np.ndarray, num_classes: int, multilabel: bool) -> np.ndarray:
    """(C,) pixels of each class (0: background, or no class) from a mask's 256-bin value histogram.

    >>> h = np.zeros(256, np.int64); h[[0, 1, 3, 255]] = [5, 2, 1, 9]
    >>> class_pixels(h, 3, multilabel=True).tolist(), class_pixels(h, 3, multilabel=False).tolist()
    ([5, 3, 1], [5, 2, 0])
    """
    if not multilabel:
        return np.asarray(histogram[:num_classes], dtype=np.int64)
    values = np.arange(IGNORE_INDEX)  # 255 is ignore, never a set of classes
    out = [int(histogram[0])]
    for k in range(1, num_classes):
        out.append(int(histogram[:IGNORE_INDEX][(values >> (k - 1)) & 1 == 1].sum()))
    return np.asarray(out, dtype=np.int64)


def regions(mask: np.ndarray, multilabel: bool = False) -> list[tuple[int, np.ndarray]]:
    """``(class, (H, W) bool pixels)`` of each foreground class a mask holds, in class order; background, no class
    and ignore form no region.

    >>> m = np.array([[1, 3, 255, 0]], np.uint8)
    >>> [(c, r.astype(int).tolist()) for c, r in regions(m)]
    [(1, [[1, 0, 0, 0]]), (3, [[0, 1, 0, 0]])]
    >>> [(c, r.astype(int).tolist()) for c, r in regions(m, multilabel=True)]  # 3 = classes 1 and 2
    [(1, [[1, 1, 0, 0]]), (2, [[0, 1, 0, 0]])]
    """
    if not multilabel:
        return [(int(c), mask == c) for c in np.unique(mask) if c != 0 and c != IGNORE_INDEX]
    values = np.unique(mask)
    held = np.bitwise_or.reduce(values[values != IGNORE_INDEX].astype(np.int64)) if values.size else 0
    ok = mask != IGNORE_INDEX
    return [
        (k, ok & ((mask >> (k - 1)) & 1).astype(bool))
        for k in range(1, MULTILABEL_MAX_CLASSES + 1)
        if (int(held) >> (k - 1)) & 1
    ]
