"""``textures``: shapes filled with 5 real textures on photographs, RGB 128x160; the ``brain`` class is rare.

700 train / 150 test images. Each holds 1 to 3 shapes (any of :data:`pipeline.data.zoo.draw.SHAPES`, so the shape
says nothing about the class) whose fill is a random crop of one texture of :data:`pipeline.data.zoo.sources.TEXTURES`:
the class is the texture. Backgrounds are photograph regions that hold none of the textures. The rare class is
drawn for about 1 shape in 25 and smaller, so it covers well under 1% of the pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.zoo import draw, sources
from pipeline.data.zoo.compose import Piece, Renderer, write_competition

CLASSES = ["foliage", "petals", "terrain", "brain", "flag"]
RARE = "brain"
_WEIGHTS = np.array([1.0 if c != RARE else 1 / 6 for c in CLASSES])


def texture_piece(category_id: int, canvas: tuple[int, int], rng: np.random.Generator, rare: bool) -> Piece:
    """A random shape, 20-60% of the canvas height (the rare class 12-30%), filled with its class's texture."""
    lo, hi = (0.12, 0.3) if rare else (0.2, 0.6)
    h = max(6, int(canvas[0] * rng.uniform(lo, hi)))
    w = max(6, int(h * rng.uniform(0.7, 1.4)))
    kind = draw.SHAPES[int(rng.integers(0, len(draw.SHAPES)))]
    alpha = draw.shape_alpha(kind, h, w, rng)
    pixels = sources.texture_crop(CLASSES[category_id - 1], h, w, rng)
    top = int(rng.integers(-h // 5, canvas[0] - 4 * h // 5))
    left = int(rng.integers(-w // 5, canvas[1] - 4 * w // 5))
    return Piece(category_id, top, left, alpha >= 0.5, pixels, alpha)


def renderer(height: int = 128, width: int = 160) -> Renderer:
    """The function that draws one ``textures`` image (background and pieces)."""

    def render(split: str, rng: np.random.Generator) -> tuple[np.ndarray, list[Piece]]:
        bg = sources.background(height, width, rng)
        ids = rng.choice(len(CLASSES), size=int(rng.integers(1, 4)), p=_WEIGHTS / _WEIGHTS.sum()) + 1
        return bg, [texture_piece(int(c), (height, width), rng, CLASSES[c - 1] == RARE) for c in ids]

    return render


def generate(
    out: str | Path,
    truth: str | Path,
    n_train: int = 700,
    n_test: int = 150,
    seed: int = 0,
    height: int = 128,
    width: int = 160,
) -> dict[str, Any]:
    """Write the ``textures`` competition to ``out`` and its test truth to ``truth``; return counts."""
    return write_competition(
        out, truth, "textures", CLASSES, renderer(height, width), n_train, n_test, seed,
        f"zoo textures: shapes filled with 5 real textures on photographs, RGB {height}x{width}, '{RARE}' rare",
    )  # fmt: skip
