"""``objects``: coloured MNIST digits (10 classes) overlapping on textured photo backgrounds, RGB 96x128.

Like the held-out competition the team measures on: 900 train / 200 test images, 1 to 4 digits each at a random
scale, aspect, colour and position (they may overlap), on random crops of the photographs and textures of
:mod:`pipeline.data.zoo.sources`. Train and test digits come from disjoint MNIST pools, as in the embedded demo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.demo import load_digits, split_pools
from pipeline.data.zoo import draw, sources
from pipeline.data.zoo.compose import Piece, Renderer, write_competition

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digit_piece(
    digit: np.ndarray,
    category_id: int,
    canvas: tuple[int, int],
    rng: np.random.Generator,
    size: tuple[float, float] | None = None,
) -> Piece:
    """One MNIST digit cut to its box, coloured, placed at random (it may overlap others or leave the canvas).

    Its height is ``size`` (a range of shares of the canvas height), or by default its own height scaled by
    1.4-2.6 per 96 px of canvas (28-52 px for most digits on the ``objects`` canvas).
    """
    rows, cols = np.nonzero(digit)
    d = digit[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].astype(np.float32)
    if size is None:
        scale = canvas[0] / 96 * rng.uniform(1.4, 2.6)
        h = max(8, int(round(d.shape[0] * scale)))
    else:
        h = max(8, int(round(canvas[0] * rng.uniform(*size))))
        scale = h / d.shape[0]
    w = max(4, int(round(d.shape[1] * scale * rng.uniform(0.8, 1.25))))
    mask, alpha = draw.soft_mask(draw.resize(d, h, w), 60.0, 160.0)
    pixels = draw.shade(draw.vivid(rng), (h, w), rng)
    top = int(rng.integers(-h // 4, canvas[0] - 3 * h // 4))
    left = int(rng.integers(-w // 4, canvas[1] - 3 * w // 4))
    return Piece(category_id, top, left, mask, pixels, alpha)


def renderer(seed: int, height: int, width: int, max_objects: int) -> Renderer:
    """The ``objects`` renderer: 1 to ``max_objects`` coloured digits (category digit + 1) on a photo or texture."""
    images, labels = load_digits()
    pools = dict(zip(("train", "test"), split_pools(labels, 0.2, seed)))

    def render(split: str, rng: np.random.Generator) -> tuple[np.ndarray, list[Piece]]:
        bg = sources.background(height, width, rng, with_textures=True)
        chosen = rng.choice(pools[split], size=int(rng.integers(1, max_objects + 1)), replace=False)
        return bg, [digit_piece(images[j], int(labels[j]) + 1, (height, width), rng) for j in chosen]

    return render


def generate(
    out: str | Path,
    truth: str | Path,
    n_train: int = 900,
    n_test: int = 200,
    seed: int = 0,
    height: int = 96,
    width: int = 128,
    max_objects: int = 4,
) -> dict[str, Any]:
    """Write the ``objects`` competition to ``out`` and its test truth to ``truth``; return counts."""
    render = renderer(seed, height, width, max_objects)
    return write_competition(
        out, truth, "objects", CLASSES, render, n_train, n_test, seed,
        f"zoo objects: coloured MNIST digits on photo backgrounds, RGB {height}x{width}",
    )  # fmt: skip
