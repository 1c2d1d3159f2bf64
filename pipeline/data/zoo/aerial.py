"""``aerial``: a few very large images (2048x2048) with hundreds of small objects each (the Vaihingen case).

12 train / 4 test RGB tiles: shaded terrain relief (the Jacksboro fault elevation model, tinted) under fields of
real foliage and bokeh texture and grey roads (all background), with about 140 objects per megapixel (~600 a tile)
of 4 classes: ``building`` (rotated rectangles 24-70 px, roof colours), ``car`` (6-9 x 12-18 px, any colour),
``tree`` (discs 10-30 px of foliage texture) and the rare ``pool`` (cyan, ~2% of the objects). Too few images for
an epoch of files: the pipeline must sample crops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.zoo import draw, sources
from pipeline.data.zoo.compose import Piece, write_competition

CLASSES = ["building", "car", "tree", "pool"]
PER_MPIX = {"building": 30.0, "car": 60.0, "tree": 50.0, "pool": 3.0}
ROOFS = np.array([[150, 150, 155], [170, 70, 50], [120, 90, 70], [200, 190, 170]], np.float32)


def terrain_background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Tinted relief with fields of real textures and roads: everything that is not an object."""
    base = sources.random_crop(sources.region(sources.TEXTURES["terrain"]), height, width, rng, (4.0, 8.0))
    bg = base * np.array([0.8, 1.05, 0.7], np.float32)
    n_fields = int(height * width / 1e6 * 6) + 1
    fields = [sources.TEXTURES["foliage"], sources.BACKGROUNDS[2], sources.BACKGROUNDS[3]]
    for _ in range(n_fields):
        fh, fw = (int(rng.uniform(0.08, 0.3) * min(height, width)) for _ in range(2))
        top, left = draw.place(rng, (height, width), fh, fw)
        patch = sources.random_crop(sources.region(fields[int(rng.integers(0, len(fields)))]), fh, fw, rng, (1.0, 3.0))
        r0, c0 = max(0, top), max(0, left)
        r1, c1 = min(height, top + fh), min(width, left + fw)
        if r0 < r1 and c0 < c1:
            region = bg[r0:r1, c0:c1]
            region[:] = 0.35 * region + 0.65 * patch[r0 - top : r1 - top, c0 - left : c1 - left]
    for _ in range(int(height * width / 1e6 * 2) + 1):  # roads: straight grey lines, several pixels wide
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        a = rng.uniform(0, np.pi)
        pts = [(x0 - 3000 * np.cos(a), y0 - 3000 * np.sin(a)), (x0 + 3000 * np.cos(a), y0 + 3000 * np.sin(a))]
        alpha = _line(pts, float(rng.uniform(6, 14)), height, width)
        bg = alpha[:, :, None] * np.float32(rng.uniform(100, 140)) + (1 - alpha[:, :, None]) * bg
    return np.clip(bg, 0, 255).astype(np.float32)


def _line(points: list[tuple[float, float]], width_px: float, height: int, width: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.new("L", (width, height), 0)
    ImageDraw.Draw(im).line(points, fill=255, width=int(width_px))
    return np.asarray(im, np.float32) / 255.0


def aerial_piece(cls: str, canvas: tuple[int, int], rng: np.random.Generator) -> Piece:
    """One small object of class ``cls`` at a random place and heading."""
    angle = float(rng.uniform(0, np.pi))
    if cls == "building":
        alpha = draw.rotated_rect_alpha(rng.uniform(24, 70), rng.uniform(18, 45), angle)
        pixels = draw.shade(ROOFS[int(rng.integers(0, len(ROOFS)))] * rng.uniform(0.85, 1.15), alpha.shape, rng, 0.4)
    elif cls == "car":
        alpha = draw.rotated_rect_alpha(rng.uniform(12, 18), rng.uniform(6, 9), angle)
        pixels = draw.shade(draw.vivid(rng), alpha.shape, rng)
    elif cls == "tree":
        d = int(rng.uniform(10, 30))
        alpha = draw.shape_alpha("circle", d, d, rng)
        pixels = sources.texture_crop("foliage", d, d, rng) * 0.8
    else:
        d = int(rng.uniform(10, 20))
        alpha = draw.shape_alpha("square" if rng.random() < 0.5 else "circle", d, int(d * rng.uniform(1, 1.6)), rng)
        pixels = draw.shade(np.array([60, 200, 230], np.float32), alpha.shape, rng, 0.15)
    top, left = draw.place(rng, canvas, *alpha.shape, out=0.0)
    return Piece(CLASSES.index(cls) + 1, top, left, alpha >= 0.5, pixels, alpha)


def generate(
    out: str | Path,
    truth: str | Path,
    n_train: int = 12,
    n_test: int = 4,
    seed: int = 0,
    height: int = 2048,
    width: int = 2048,
) -> dict[str, Any]:
    """Write the ``aerial`` competition to ``out`` and its test truth to ``truth``; return counts."""
    mpix = height * width / 1e6

    def render(split: str, rng: np.random.Generator) -> tuple[np.ndarray, list[Piece]]:
        bg = terrain_background(height, width, rng)
        pieces = [
            aerial_piece(cls, (height, width), rng)
            for cls, rate in PER_MPIX.items()
            for _ in range(int(rng.poisson(rate * mpix)))
        ]
        return bg, pieces

    return write_competition(
        out, truth, "aerial", CLASSES, render, n_train, n_test, seed,
        f"zoo aerial: {height}x{width} RGB tiles with ~{int(sum(PER_MPIX.values()) * mpix)} small objects each",
    )  # fmt: skip
