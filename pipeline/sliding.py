"""Sliding-window inference: predict a large image tile by tile and blend the tiles back into one prediction.

A model trained on 64x84 crops (or one whose memory grows with the image, like every CNN) need not see a 2048x2048
image whole. :class:`SlidingWindow` cuts each image into tiles of the model's input size that overlap by a share
of the tile, puts the tiles through the model ``tile_batch`` at a time, and adds each tile's output, weighted by an
importance map, into a full-size float32 accumulator (C, H, W) with a weight map beside it; their quotient is the
prediction. Memory is bounded by one batch of tiles plus one image's accumulator, whatever the image size.

The layout of the tiles follows nnU-Net v2 (``compute_steps_for_sliding_window``): per axis, the fewest tiles whose
step is at most ``tile x (1 - overlap)``, spread evenly so that the first tile starts at 0 and the last one ends
exactly on the image border (no tile reaches outside the image). An image smaller than the tile is padded at the
bottom and right (with 0, the normalised mean colour, as :class:`pipeline.models.registry.PadCropWrapper` pads)
and the prediction is cropped back to the original size.

Blending (``blend``): ``gaussian`` is nnU-Net's importance map (a Gaussian with sigma = 1/8 of the tile size per
axis, peak 1), which trusts the centre of a tile, where the model saw context on every side, over its border;
``constant`` weights every pixel of every tile equally (a plain mean over the tiles that cover it). What is
blended is what the wrapped forward returns (logits or log-probabilities), as nnU-Net blends logits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import UserError

Blend = Literal["gaussian", "constant"]
SIGMA_SCALE = 1.0 / 8  # nnU-Net's: sigma = tile size / 8 per axis


def check_window(tile: Sequence[int], overlap: float, blend: str, tile_batch: int) -> tuple[int, int]:
    """Validate the window parameters (named as the ``infer`` keys they come from); return the tile as (H, W)."""
    if len(tile) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in tile):
        raise UserError(f"infer.tile: expected two integers [height, width], got {list(tile)}")
    if min(tile) <= 0:
        raise UserError(f"infer.tile: height and width must be positive, got {list(tile)}")
    if not 0.0 <= overlap < 1.0:
        raise UserError(f"infer.tile_overlap: must be a share of the tile in [0, 1) (e.g. 0.25 or 0.5), got {overlap}")
    if blend not in ("gaussian", "constant"):
        raise UserError(f"infer.tile_blend: {blend!r} is not one of 'gaussian', 'constant'")
    if tile_batch < 1:
        raise UserError(f"infer.tile_batch: must be at least 1 tile per model call, got {tile_batch}")
    return int(tile[0]), int(tile[1])


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of the tiles along one axis of length ``size``.

    The first is 0 and the last ``size - tile`` (a single 0 when the axis is no longer than the tile); the step
    between them is even (to a pixel) and at most ``tile x (1 - overlap)``. Example: ``tile_starts(200, 64, 0.25)``
    is ``[0, 45, 91, 136]`` (steps of 45.3 <= 48).
    """
    if size <= tile:
        return [0]
    target = max(1.0, tile * (1.0 - overlap))
    n = math.ceil((size - tile) / target) + 1
    step = (size - tile) / (n - 1)
    return [int(round(step * i)) for i in range(n)]


def tile_boxes(height: int, width: int, tile: tuple[int, int], overlap: float) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of every tile of an image padded to at least the tile size, row by row."""
    ys = tile_starts(height, tile[0], overlap)
    xs = tile_starts(width, tile[1], overlap)
    return [(y, x) for y in ys for x in xs]


def importance_map(tile: tuple[int, int], blend: Blend = "gaussian", sigma_scale: float = SIGMA_SCALE) -> torch.Tensor:
    """(h, w) float32 per-pixel weight of a tile's prediction.

    ``gaussian``: ``exp(-d^2 / (2 sigma^2))`` per axis with sigma = ``sigma_scale`` x the tile's size along it,
    d the distance to the tile centre ``(n - 1) / 2`` (symmetric, so a flipped tile gets the same weights), scaled
    to a peak of 1. This is nnU-Net v2's ``compute_gaussian`` in closed form; at the tile border (d = 4 sigma) the
    weight is exp(-8) = 3.4e-4, never 0, so the weight map has no zeros. ``constant``: ones.
    """
    h, w = tile
    if blend == "constant":
        return torch.ones(h, w, dtype=torch.float32)
    axes = []
    for n in (h, w):
        d = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        g = torch.exp(-(d**2) / (2 * (sigma_scale * n) ** 2))
        axes.append(g / g.max())
    return (axes[0][:, None] * axes[1][None, :]).float()


class SlidingWindow(nn.Module):
    """(B, 3, H, W) normalised images -> (B, C, H, W) float32 outputs of ``model``, blended over overlapping tiles.

    Args:
        model: maps a (n, 3, h, w) batch of tiles to (n, C, h, w) outputs (a model, a TTA wrapper, an ensemble).
        tile: (h, w) the tiles the model sees (usually the model config's ``input_size``).
        overlap: share of the tile that neighbouring tiles overlap by, in [0, 1).
        blend: ``gaussian`` (nnU-Net importance map) or ``constant``.
        tile_batch: tiles per model call.

    Images of a batch are done one after another, each with its own accumulator, so give it small image batches
    (the inference path gives it one image at a time).
    """

    def __init__(
        self,
        model: nn.Module,
        tile: Sequence[int],
        overlap: float = 0.25,
        blend: Blend = "gaussian",
        tile_batch: int = 8,
    ) -> None:
        super().__init__()
        self.tile = check_window(tile, overlap, blend, tile_batch)
        self.model, self.overlap, self.blend, self.tile_batch = model, overlap, blend, tile_batch
        self.register_buffer("importance", importance_map(self.tile, blend), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = [self.predict_one(image) for image in x]
        return out[0][None] if len(out) == 1 else torch.stack(out)

    def predict_one(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) -> (C, H, W) float32."""
        (th, tw), (h, w) = self.tile, image.shape[-2:]
        ph, pw = max(h, th), max(w, tw)
        if (ph, pw) != (h, w):  # smaller than a tile along an axis: pad (bottom, right), crop back at the end
            image = F.pad(image, (0, pw - w, 0, ph - h))
        channels_last = image[None].is_contiguous(memory_format=torch.channels_last) and image.shape[0] > 1
        importance = self.importance.to(image.device)
        boxes = tile_boxes(ph, pw, self.tile, self.overlap)
        acc: torch.Tensor | None = None  # (C, ph, pw) float32 sum of weighted tile outputs
        weight = torch.zeros(ph, pw, dtype=torch.float32, device=image.device)  # (ph, pw) sum of weights
        for i in range(0, len(boxes), self.tile_batch):
            chunk = boxes[i : i + self.tile_batch]
            tiles = torch.stack([image[:, y : y + th, x : x + tw] for y, x in chunk])  # (n, 3, th, tw)
            if channels_last:
                tiles = tiles.contiguous(memory_format=torch.channels_last)
            pred = self.model(tiles)  # (n, C, th, tw), maybe bf16 under autocast
            if acc is None:
                acc = torch.zeros(pred.shape[1], ph, pw, dtype=torch.float32, device=image.device)
            for (y, x), p in zip(chunk, pred):
                acc[:, y : y + th, x : x + tw].addcmul_(p.float(), importance)
                weight[y : y + th, x : x + tw] += importance
        assert acc is not None  # there is always at least one tile
        return acc.div_(weight)[:, :h, :w]
