"""Whether the data is closed under a flip or a quarter turn, read from the training masks alone (no training).

A transform is a valid training augmentation when it maps the data onto images whose labels still hold: a mirrored
digit is not a digit, a rotated aerial tile is still an aerial tile. A flip negates the skewness of every region, a
quarter turn its log aspect ratio; where a class's mean moment is far from 0 (t > 4 and |mean| > 0.1: most digits
lean one way, all are taller than wide) the data is not closed under that transform and it is left out. The plan
(:mod:`pipeline.plan.augment`) and the trained probe (:mod:`pipeline.augment_probe`) both ask this first.

>>> import numpy as np
>>> masks = []
>>> for i in range(12):  # an L-shaped class 1: its foot always points right
...     m = np.zeros((20, 20), np.uint8); m[2:18, 4 + i % 3:8 + i % 3] = 1; m[14:18, 4:16] = 1; masks.append(m)
>>> sorted(chiral_reasons(masks, ["hflip", "vflip", "rot90"]))  # it leans right and down, and is tall
['hflip', 'rot90', 'vflip']
>>> chiral_reasons([np.fliplr(m) for m in masks] + masks, ["hflip"])  # both orientations as often: closed
{}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.labels import regions

MIN_T, MIN_EFFECT, MIN_REGIONS = 4.0, 0.1, 8  # a class is chiral when its mean moment is both significant and large


def shape_moments(masks: Sequence[np.ndarray], multilabel: bool = False) -> dict[int, np.ndarray]:
    """Per foreground class, one row per (image, class) region: x skewness, y skewness and log(std_y / std_x).

    A mirror image negates the x skewness, a vertical flip the y skewness, a quarter turn the log aspect. If the data
    holds each orientation as often as its transform, the class means are 0 within their standard errors.
    """
    rows: dict[int, list[tuple[float, float, float]]] = {}
    for m in masks:
        for c, inside in regions(m, multilabel):
            y, x = np.nonzero(inside)
            if len(x) < 16:
                continue
            sx, sy = x.std(), y.std()
            if sx < 1 or sy < 1:
                continue
            skx = float(((x - x.mean()) ** 3).mean() / sx**3)
            sky = float(((y - y.mean()) ** 3).mean() / sy**3)
            rows.setdefault(int(c), []).append((skx, sky, float(np.log(sy / sx))))
    return {c: np.array(r) for c, r in rows.items()}


def chiral_classes(
    masks: Sequence[np.ndarray], column: int, multilabel: bool = False
) -> list[tuple[int, float, float]]:
    """Classes whose moment ``column`` of :func:`shape_moments` has a mean far from 0: (class, mean, t)."""
    out = []
    for c, r in sorted(shape_moments(masks, multilabel).items()):
        if len(r) < MIN_REGIONS:
            continue
        v = r[:, column]
        mean, se = float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) + 1e-12
        if abs(mean) > MIN_EFFECT and abs(mean / se) > MIN_T:
            out.append((c, mean, mean / se))
    return out


SYMMETRY_COLUMN = {"hflip": 0, "vflip": 1, "rot90": 2}
MOMENT_NAME = {0: "x skewness", 1: "y skewness", 2: "log height/width"}


def chiral_reasons(masks: Sequence[np.ndarray], names: Sequence[str], multilabel: bool = False) -> dict[str, str]:
    """Candidate name -> why it is off, for each candidate some class of ``masks`` (bit fields: ``multilabel``) has
    a handedness under."""
    chiral: dict[str, str] = {}
    for name in names:
        if name in SYMMETRY_COLUMN:
            found = chiral_classes(masks, SYMMETRY_COLUMN[name], multilabel)
            if found:
                c, mean, t = max(found, key=lambda f: abs(f[2]))
                what = MOMENT_NAME[SYMMETRY_COLUMN[name]]
                chiral[name] = (
                    f"{name}: off (the training masks are not closed under it: class {c} has mean {what} "
                    f"{mean:+.2f}, t = {t:+.1f}; {len(found)} such class(es))"
                )
    return chiral
