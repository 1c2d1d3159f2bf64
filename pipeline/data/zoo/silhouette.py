"""``silhouette``: binary, one large four-legged animal per image with fine boundaries (the Weizmann Horse case).

scikit-image's ``horse`` silhouette is not installed here, so each horse is drawn: a body, neck, head, ears, four
thin jointed legs and a tail in a random pose, bent by a smooth random warp, mirrored half the time, 55-90% of the
image wide. Its coat is a real texture recoloured to a horse colour; the background is a photograph. RGB 120x160
(not a multiple of 32: the pipeline must pad), 300 train / 80 test, one class ``horse``. The sample submission has
one row per image (``id,predicted``): the scoring is mIoU and Boundary IoU over background and horse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from pipeline.data.zoo import draw, sources
from pipeline.data.zoo.compose import Piece, write_competition

CLASSES = ["horse"]
COATS = np.array([[0.55, 0.36, 0.2], [0.35, 0.2, 0.12], [0.12, 0.1, 0.09], [0.8, 0.78, 0.72], [0.6, 0.5, 0.38]])
SS = 4  # supersampling: legs and tails a few pixels wide keep smooth edges


def horse_alpha(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """An anti-aliased (height, width) alpha of one horse in a random pose, size and place."""
    H, W = height * SS, width * SS
    length = W * rng.uniform(0.55, 0.9)  # nose to tail
    ox = rng.uniform(0.02, 0.98 - length / W) * W
    oy = rng.uniform(0.02, 0.12) * H
    sy = min(H * 0.95, length * 0.75)  # the animal's height, for its proportions

    def p(x: float, y: float) -> tuple[float, float]:  # horse coordinates in [0, 1] -> supersampled pixels
        return (ox + x * length, oy + y * sy)

    im = Image.new("L", (W, H), 0)
    d = ImageDraw.Draw(im)
    j = lambda s: float(rng.uniform(-s, s))  # noqa: E731 - a jitter of +- s
    bx, by, rx, ry = 0.45 + j(0.03), 0.42 + j(0.03), 0.27 + j(0.03), 0.15 + j(0.02)
    d.ellipse([*p(bx - rx, by - ry), *p(bx + rx, by + ry)], fill=255)
    head = (0.9 + j(0.03), 0.12 + j(0.08))
    neck_w = 0.07 * length
    d.line([p(bx + rx * 0.7, by - ry * 0.3), p(*head)], fill=255, width=int(neck_w))
    hx, hy = head
    d.polygon([p(hx - 0.05, hy - 0.05), p(hx + 0.09, hy + 0.08), p(hx + 0.07, hy + 0.13), p(hx - 0.04, hy + 0.06)], 255)
    d.polygon([p(hx - 0.03, hy - 0.04), p(hx - 0.01, hy - 0.13), p(hx + 0.01, hy - 0.03)], fill=255)  # ear
    leg_w = max(SS * 1.5, (0.025 + j(0.006)) * length)
    for hip_x in (bx - rx * 0.7, bx - rx * 0.5, bx + rx * 0.55, bx + rx * 0.75):
        swing = j(0.1)
        knee = (hip_x + swing, by + ry + 0.18 + j(0.03))
        hoof = (knee[0] + j(0.08), 0.98 + j(0.02))
        d.line([p(hip_x, by + ry * 0.5), p(*knee), p(*hoof)], fill=255, width=int(leg_w), joint="curve")
    tail = [(bx - rx * 0.95, by - ry * 0.6)]
    for _ in range(4):
        tail.append((tail[-1][0] - 0.035 + j(0.02), tail[-1][1] + 0.09 + j(0.03)))
    d.line([p(*t) for t in tail], fill=255, width=int(max(SS, 0.018 * length)), joint="curve")
    a = np.asarray(im, np.float32) / 255.0
    # A smooth random warp (elastic deformation): no two horses have the same outline.
    # Smoothed at the output size, then resampled up: the same field as smoothing at full size, 16x cheaper.
    dy, dx = (draw.resize(ndimage.gaussian_filter(rng.normal(size=(height, width)), 12), H, W) for _ in range(2))
    scale = 3.0 * SS / max(np.abs(dy).max(), np.abs(dx).max(), 1e-6)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    a = ndimage.map_coordinates(a, [yy + dy * scale, xx + dx * scale], order=1, mode="constant")
    a = a.reshape(height, SS, width, SS).mean(axis=(1, 3))
    return a[:, ::-1].copy() if rng.random() < 0.5 else a


def generate(
    out: str | Path,
    truth: str | Path,
    n_train: int = 300,
    n_test: int = 80,
    seed: int = 0,
    height: int = 120,
    width: int = 160,
) -> dict[str, Any]:
    """Write the ``silhouette`` competition to ``out`` and its test truth to ``truth``; return counts."""

    def render(split: str, rng: np.random.Generator) -> tuple[np.ndarray, list[Piece]]:
        bg = sources.background(height, width, rng)
        alpha = horse_alpha(height, width, rng)
        texture = sources.texture_crop(
            list(sources.TEXTURES)[int(rng.integers(0, len(sources.TEXTURES)))], height, width, rng
        )
        luma = draw.to_gray(texture) / 128.0
        coat = COATS[int(rng.integers(0, len(COATS)))] * rng.uniform(0.85, 1.15, 3)
        pixels = np.clip(luma * 0.35 + 0.65, 0, 2) * coat * 255  # the texture's light and shade, the coat's colour
        return bg, [Piece(1, 0, 0, alpha >= 0.5, np.clip(pixels, 0, 255).astype(np.float32), alpha)]

    return write_competition(
        out, truth, "silhouette", CLASSES, render, n_train, n_test, seed,
        f"zoo silhouette: one drawn horse per image on photographs, binary, RGB {height}x{width}",
        single_class=True,
    )  # fmt: skip
