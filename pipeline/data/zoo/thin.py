"""``thin``: grayscale 160x160 images with thin structures 1-3 px wide: branching ``vessel``s and straight ``wire``s.

400 train / 100 test single-channel PNGs. Backgrounds are grayscale crops of the photographs and textures (the MRI
slice, the terrain relief, ...); a vessel is a smoothly turning random walk with side branches, darker or brighter
than the background it crosses (as in retinal or X-ray angiograms); a wire is a straight segment. Each structure is
drawn anti-aliased; its mask is where it covers at least half a pixel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.zoo import draw, sources
from pipeline.data.zoo.compose import Piece, write_competition

CLASSES = ["vessel", "wire"]


def _walk(rng: np.random.Generator, start: tuple[float, float], angle: float, steps: int) -> list[tuple[float, float]]:
    """A smooth random walk of ``steps`` 3-px steps: the heading turns a little at each step."""
    x, y = start
    pts = [(x, y)]
    turn = 0.0
    for _ in range(steps):
        turn = 0.8 * turn + rng.normal(0, 0.12)
        angle += turn
        x, y = x + 3 * np.cos(angle), y + 3 * np.sin(angle)
        pts.append((float(x), float(y)))
    return pts


def _structure(cls: str, canvas: tuple[int, int], rng: np.random.Generator) -> list[np.ndarray]:
    """Alphas (whole canvas) of one vessel tree (a trunk and 0-3 thinner branches) or one wire."""
    h, w = canvas
    if cls == "wire":
        p0 = (float(rng.uniform(0, w)), float(rng.uniform(0, h)))
        a = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.3, 0.9) * max(h, w)
        p1 = (p0[0] + length * np.cos(a), p0[1] + length * np.sin(a))
        return [draw.polyline_alpha([p0, p1], float(rng.uniform(1.3, 2.2)), h, w)]
    start = (float(rng.uniform(0.2, 0.8) * w), float(rng.uniform(0.2, 0.8) * h))
    trunk = _walk(rng, start, rng.uniform(0, 2 * np.pi), 50)
    width = float(rng.uniform(2.0, 3.0))
    alphas = [draw.polyline_alpha(trunk, width, h, w)]
    for _ in range(int(rng.integers(0, 4))):
        k = int(rng.integers(5, len(trunk) - 5))
        (x0, y0), (x1, y1) = trunk[k - 1], trunk[k]
        heading = np.arctan2(y1 - y0, x1 - x0) + rng.choice([-1, 1]) * rng.uniform(0.4, 1.1)
        branch = _walk(rng, trunk[k], heading, int(rng.integers(12, 35)))
        alphas.append(draw.polyline_alpha(branch, max(1.3, width - 1.0), h, w))
    return alphas


def generate(
    out: str | Path,
    truth: str | Path,
    n_train: int = 400,
    n_test: int = 100,
    seed: int = 0,
    height: int = 160,
    width: int = 160,
) -> dict[str, Any]:
    """Write the ``thin`` competition to ``out`` and its test truth to ``truth``; return counts."""
    canvas = (height, width)

    def render(split: str, rng: np.random.Generator) -> tuple[np.ndarray, list[Piece]]:
        bg = draw.to_gray(sources.background(height, width, rng, with_textures=True))
        pieces = []
        for cls in ["vessel"] * int(rng.integers(2, 5)) + ["wire"] * int(rng.integers(1, 4)):
            # Contrast against the local mean: dark vessels on bright ground, bright on dark, never invisible.
            sign = -1.0 if bg.mean() > 110 else 1.0
            for alpha in _structure(cls, canvas, rng):
                if alpha.max() < 0.5:
                    continue
                level = np.clip(bg + sign * rng.uniform(45, 90), 0, 255)
                pieces.append(Piece(CLASSES.index(cls) + 1, 0, 0, alpha >= 0.5, level, alpha))
        return bg, pieces

    return write_competition(
        out, truth, "thin", CLASSES, render, n_train, n_test, seed,
        f"zoo thin: grayscale {height}x{width}, thin vessels and wires 1-3 px wide",
    )  # fmt: skip
