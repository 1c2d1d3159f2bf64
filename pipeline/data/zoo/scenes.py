"""``scenes``: RGB 256x256 photographs with 3 to 8 pasted objects of 6 classes (overlapping), one class rare.

400 train / 100 test. Classes differ in shape and look: coloured MNIST ``digit``s (disjoint train and test pools),
solid ``star``s, ``ring``s of terrain texture, ``disc``s of dahlia petals, ``tile``s (squares or diamonds) of the
flag texture, and the rare ``marker``: a small bright cross, under 1% of the pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.demo import load_digits, split_pools
from pipeline.data.zoo import draw, sources
from pipeline.data.zoo.compose import Piece, Renderer, write_competition
from pipeline.data.zoo.objects import digit_piece

CLASSES = ["digit", "star", "ring", "disc", "tile", "marker"]
RARE = "marker"
_WEIGHTS = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.25])


def shape_piece(cls: str, canvas: tuple[int, int], rng: np.random.Generator) -> Piece:
    """One object of class ``cls`` (not ``digit``): its shape, size and fill."""
    category_id = CLASSES.index(cls) + 1
    if cls == RARE:
        h = w = int(rng.integers(7, 13))
    else:
        h = int(canvas[0] * rng.uniform(0.12, 0.4))
        w = int(h * rng.uniform(0.8, 1.25))
    kind = {"star": "star", "ring": "ring", "disc": "circle", "marker": "cross"}.get(cls)
    kind = kind or ("square" if rng.random() < 0.5 else "diamond")
    alpha = draw.shape_alpha(kind, h, w, rng)
    if cls in ("star", "marker"):
        pixels = draw.shade(draw.vivid(rng), (h, w), rng)
    else:
        pixels = sources.texture_crop({"ring": "terrain", "disc": "petals", "tile": "flag"}[cls], h, w, rng)
    top, left = draw.place(rng, canvas, h, w)
    return Piece(category_id, top, left, alpha >= 0.5, pixels, alpha)


def renderer(images: np.ndarray, labels: np.ndarray, seed: int = 0, height: int = 256, width: int = 256) -> Renderer:
    """The function that draws one ``scenes`` image, from MNIST ``images``/``labels`` (disjoint split pools)."""
    pools = dict(zip(("train", "test"), split_pools(labels, 0.2, seed)))
    canvas = (height, width)

    def render(split: str, rng: np.random.Generator) -> tuple[np.ndarray, list[Piece]]:
        bg = sources.background(height, width, rng, scale=(0.5, 1.2))
        pieces = []
        for c in rng.choice(len(CLASSES), size=int(rng.integers(3, 9)), p=_WEIGHTS / _WEIGHTS.sum()):
            if CLASSES[c] == "digit":
                j = int(rng.choice(pools[split]))
                pieces.append(digit_piece(images[j], 1, canvas, rng, (0.15, 0.4)))
            else:
                pieces.append(shape_piece(CLASSES[c], canvas, rng))
        return bg, pieces

    return render


def generate(
    out: str | Path,
    truth: str | Path,
    n_train: int = 400,
    n_test: int = 100,
    seed: int = 0,
    height: int = 256,
    width: int = 256,
) -> dict[str, Any]:
    """Write the ``scenes`` competition to ``out`` and its test truth to ``truth``; return counts."""
    images, labels = load_digits()
    return write_competition(
        out, truth, "scenes", CLASSES, renderer(images, labels, seed, height, width), n_train, n_test, seed,
        f"zoo scenes: 6 classes of objects on photographs, RGB {height}x{width}, '{RARE}' rare",
    )  # fmt: skip
