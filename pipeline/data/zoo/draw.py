"""Small drawing helpers shared by the zoo generators: colours, soft masks from intensities, resizing."""

from __future__ import annotations

import colorsys

import numpy as np
from scipy import ndimage


def vivid(rng: np.random.Generator, hue: float | None = None, spread: float = 0.0) -> np.ndarray:
    """A saturated RGB colour (3,) in [0, 255]: a random hue, or ``hue`` +- ``spread`` (hues in [0, 1))."""
    h = float(rng.random()) if hue is None else (hue + float(rng.uniform(-spread, spread))) % 1.0
    s, v = float(rng.uniform(0.6, 1.0)), float(rng.uniform(0.6, 1.0))
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32) * 255


def resize(a: np.ndarray, height: int, width: int, order: int = 1) -> np.ndarray:
    """``a`` (h, w) or (h, w, C) resampled to ``height`` x ``width`` (exact output size)."""
    factors = (height / a.shape[0], width / a.shape[1]) + (1,) * (a.ndim - 2)
    out = ndimage.zoom(a.astype(np.float32), factors, order=order, mode="nearest", grid_mode=True)
    return out[:height, :width]


def soft_mask(intensity: np.ndarray, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """An anti-aliased alpha ramping from ``low`` to ``high`` intensity, and the mask where alpha >= 0.5."""
    alpha = np.clip((intensity - low) / (high - low), 0.0, 1.0).astype(np.float32)
    return alpha >= 0.5, alpha


def shade(color: np.ndarray, shape: tuple[int, int], rng: np.random.Generator, amount: float = 0.25) -> np.ndarray:
    """A (h, w, 3) fill of ``color`` with a smooth random brightness gradient (objects are not flat paint)."""
    h, w = shape
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = rng.normal(size=2)
    ramp = (gy / max(h, 1) * d[0] + gx / max(w, 1) * d[1]) * amount
    return np.clip(color[None, None, :] * (1 + ramp[:, :, None]), 0, 255).astype(np.float32)


SHAPES = ["circle", "square", "triangle", "star", "cross", "ring", "hexagon", "crescent", "diamond", "arrow"]
_SS = 4  # supersampling factor of the shape rasteriser: anti-aliased edges


def _outline(kind: str) -> list[tuple[float, float]]:
    """The shape's outline as (x, y) in [-1, 1], before rotation."""
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    if kind in ("circle", "ring", "crescent"):
        return list(zip(np.cos(t), np.sin(t)))
    if kind == "star":
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        a = np.arange(10) * np.pi / 5 - np.pi / 2
        return list(zip(r * np.cos(a), r * np.sin(a)))
    if kind == "hexagon":
        a = np.arange(6) * np.pi / 3
        return list(zip(np.cos(a), np.sin(a)))
    fixed = {
        "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
        "triangle": [(0.0, -1.0), (0.95, 0.75), (-0.95, 0.75)],
        "diamond": [(0.0, -1.0), (0.6, 0.0), (0.0, 1.0), (-0.6, 0.0)],
        "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1),
                  (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
        "arrow": [(-1, -0.3), (0.2, -0.3), (0.2, -0.8), (1, 0), (0.2, 0.8), (0.2, 0.3), (-1, 0.3)],
    }  # fmt: skip
    return fixed[kind]


def shape_alpha(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """An anti-aliased (height, width) alpha in [0, 1] of shape ``kind`` at a random rotation, filling the box.

    Rings have a hole and crescents a bite: their masks are not hole-free polygons (COCO writes RLE for rings).
    """
    from PIL import Image, ImageDraw

    H, W = height * _SS, width * _SS
    angle = float(rng.uniform(0, 2 * np.pi)) if kind not in ("circle", "ring") else 0.0
    c, s = np.cos(angle), np.sin(angle)

    def to_px(points: list[tuple[float, float]], shrink: float = 1.0, dx: float = 0.0) -> list[tuple[float, float]]:
        out = []
        for x, y in points:
            x, y = x * shrink + dx, y * shrink
            xr, yr = x * c - y * s, x * s + y * c
            out.append(((xr * 0.98 + 1) * W / 2, (yr * 0.98 + 1) * H / 2))
        return out

    im = Image.new("L", (W, H), 0)
    d = ImageDraw.Draw(im)
    outline = _outline(kind)
    d.polygon(to_px(outline), fill=255)
    if kind == "ring":
        d.polygon(to_px(outline, float(rng.uniform(0.35, 0.6))), fill=0)
    elif kind == "crescent":
        d.polygon(to_px(outline, 0.85, float(rng.uniform(0.45, 0.7))), fill=0)
    a = np.asarray(im, np.float32).reshape(height, _SS, width, _SS).mean(axis=(1, 3)) / 255.0
    return a


def place(rng: np.random.Generator, canvas: tuple[int, int], h: int, w: int, out: float = 0.2) -> tuple[int, int]:
    """A random top-left for an ``h`` x ``w`` patch; up to ``out`` of it may lie off the canvas on each side."""
    top = int(rng.integers(-int(h * out), max(1, canvas[0] - h + int(h * out)) + 1))
    left = int(rng.integers(-int(w * out), max(1, canvas[1] - w + int(w * out)) + 1))
    return top, left


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H, W, 1) luma (ITU-R 601 weights)."""
    return (rgb @ np.array([0.299, 0.587, 0.114], np.float32))[:, :, None]


def polyline_alpha(points: list[tuple[float, float]], width_px: float, height: int, width: int) -> np.ndarray:
    """An anti-aliased (height, width) alpha of a polyline through (x, y) ``points``, ``width_px`` pixels wide."""
    from PIL import Image, ImageDraw

    im = Image.new("L", (width * _SS, height * _SS), 0)
    d = ImageDraw.Draw(im)
    pts = [(x * _SS, y * _SS) for x, y in points]
    lw = max(1, int(round(width_px * _SS)))
    d.line(pts, fill=255, width=lw, joint="curve")
    r = lw / 2
    for x, y in (pts[0], pts[-1]):  # round caps: the ends of a vessel are not square
        d.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return np.asarray(im, np.float32).reshape(height, _SS, width, _SS).mean(axis=(1, 3)) / 255.0


def rotated_rect_alpha(length: float, breadth: float, angle: float) -> np.ndarray:
    """An anti-aliased alpha of a ``length`` x ``breadth`` rectangle turned by ``angle``, in its bounding box."""
    from PIL import Image, ImageDraw

    c, s = np.cos(angle), np.sin(angle)
    corners = np.array([[-length, -breadth], [length, -breadth], [length, breadth], [-length, breadth]]) / 2
    xy = corners @ np.array([[c, s], [-s, c]])
    size = np.ceil(np.abs(xy).max(axis=0) * 2).astype(int) + 2  # (w, h) with a pixel of margin each side
    im = Image.new("L", (int(size[0]) * _SS, int(size[1]) * _SS), 0)
    pts = [((x + size[0] / 2) * _SS, (y + size[1] / 2) * _SS) for x, y in xy]
    ImageDraw.Draw(im).polygon(pts, fill=255)
    return np.asarray(im, np.float32).reshape(int(size[1]), _SS, int(size[0]), _SS).mean(axis=(1, 3)) / 255.0
