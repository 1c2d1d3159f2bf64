"""``manyclass``: 45 classes (9 shapes x 5 colours) with a long-tailed frequency, RGB 128x128.

Like People Clothing (59 classes): 600 train / 150 test, 2 to 5 solid shapes per image on photographs, class
frequencies falling as 1 / rank^0.9 (the most common class is about 30 times as frequent as the rarest), so many
classes are absent from any one fold's validation images. The class is the pair (shape, colour); shapes keep a
square box (the aspect would blur square and diamond), colours keep to a narrow band of hue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.zoo import draw, sources
from pipeline.data.zoo.compose import Piece, write_competition

SHAPES = [s for s in draw.SHAPES if s != "ring"]
COLOURS = {"red": 0.0, "yellow": 0.15, "green": 0.33, "blue": 0.62, "magenta": 0.83}
CLASSES = [f"{s}_{c}" for s in SHAPES for c in COLOURS]
# A fixed shuffle decides which classes are common, so rarity is not tied to one shape or colour.
_RANK = np.random.default_rng(1234).permutation(len(CLASSES))
_WEIGHTS = 1.0 / (1.0 + _RANK) ** 0.9


def class_piece(category_id: int, canvas: tuple[int, int], rng: np.random.Generator) -> Piece:
    """One solid shape of class ``category_id``: 14-40% of the canvas, its colour's hue +- 0.03."""
    shape, colour = CLASSES[category_id - 1].split("_")
    h = w = int(canvas[0] * rng.uniform(0.14, 0.4))
    alpha = draw.shape_alpha(shape, h, w, rng)
    pixels = draw.shade(draw.vivid(rng, COLOURS[colour], 0.03), (h, w), rng)
    top, left = draw.place(rng, canvas, h, w)
    return Piece(category_id, top, left, alpha >= 0.5, pixels, alpha)


def generate(
    out: str | Path,
    truth: str | Path,
    n_train: int = 600,
    n_test: int = 150,
    seed: int = 0,
    height: int = 128,
    width: int = 128,
) -> dict[str, Any]:
    """Write the ``manyclass`` competition to ``out`` and its test truth to ``truth``; return counts."""

    def render(split: str, rng: np.random.Generator) -> tuple[np.ndarray, list[Piece]]:
        bg = sources.background(height, width, rng)
        ids = rng.choice(len(CLASSES), size=int(rng.integers(2, 6)), p=_WEIGHTS / _WEIGHTS.sum()) + 1
        return bg, [class_piece(int(c), (height, width), rng) for c in ids]

    return write_competition(
        out, truth, "manyclass", CLASSES, render, n_train, n_test, seed,
        f"zoo manyclass: {len(CLASSES)} classes (shape x colour), long-tailed, RGB {height}x{width}",
    )  # fmt: skip
