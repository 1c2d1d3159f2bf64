"""``attributes``: a multilabel competition: the ``objects`` canvases (coloured MNIST digits on photos, RGB 96x128)
with three overlapping classes a digit has: ``digit`` (every digit), ``odd`` (1, 3, 5, 7, 9) and ``loop`` (0, 6, 8,
9: a closed stroke). An odd digit's pixels hold two classes, a 9's all three (UW-Madison's organs and Severstal's
defects overlap the same way: one pixel, several labels). Its truth is the bit field of every class of a pixel
(:mod:`pipeline.labels`); train with ``masks.overlap: multilabel`` (the zoo registry says so). Painted one class a
pixel (``larger_first``) the classes of a digit tie in area and the last annotated wins: ``digit`` would be learnt
only on 2s and 4s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.data.zoo import objects
from pipeline.data.zoo.compose import write_competition

CLASSES = ["digit", "odd", "loop"]
LOOPS = (0, 6, 8, 9)


def classes_of(digit: int) -> list[int]:
    """The classes (1-based into :data:`CLASSES`) of a digit.

    >>> classes_of(9), classes_of(2), classes_of(7)
    ([1, 2, 3], [1], [1, 2])
    """
    return [1] + ([2] if digit % 2 else []) + ([3] if digit in LOOPS else [])


ATTRIBUTES = {d + 1: classes_of(d) for d in range(10)}  # the objects renderer's category (digit + 1) -> classes


def generate(
    out: str | Path,
    truth: str | Path,
    n_train: int = 600,
    n_test: int = 150,
    seed: int = 0,
    height: int = 96,
    width: int = 128,
    max_objects: int = 4,
) -> dict[str, Any]:
    """Write the ``attributes`` competition to ``out`` and its bit-field test truth to ``truth``; return counts."""
    render = objects.renderer(seed, height, width, max_objects)
    return write_competition(
        out, truth, "attributes", CLASSES, render, n_train, n_test, seed,
        f"zoo attributes: coloured MNIST digits on photos as digit, odd and loop, RGB {height}x{width}",
        attributes=ATTRIBUTES,
    )  # fmt: skip
