"""Sliding-window inference: tile layout, importance map, blending against the whole-image pass, and the params."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from pipeline.config import InferParams, ModelConfig, from_dict
from pipeline.ensemble.members import image_batch, inference_tile, windowed
from pipeline.errors import UserError
from pipeline.sliding import SlidingWindow, importance_map, tile_boxes, tile_starts


class Recording(nn.Module):
    """Wraps a model and records the shape of every batch it is called with."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return self.model(x)


def pointwise_net(seed: int = 0) -> nn.Module:
    """1x1 conv -> tanh -> 1x1 conv (3 -> 5 channels): its output at a pixel depends on that pixel only, so it is
    translation-equivariant and every tile agrees with the whole image where they overlap."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.Tanh(), nn.Conv2d(8, 5, 1)).eval()


def images(b: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------------------
# Tile layout


@pytest.mark.parametrize(
    "size, tile, overlap, starts",
    [
        (200, 64, 0.25, [0, 45, 91, 136]),  # steps of 45.3 <= 48, the last tile ends on the border
        (128, 64, 0.0, [0, 64]),  # a multiple, no overlap: side by side
        (128, 64, 0.5, [0, 32, 64]),
        (64, 64, 0.5, [0]),  # one tile
        (30, 64, 0.25, [0]),  # smaller than a tile: padded, one tile
        (65, 64, 0.25, [0, 1]),
        (2048, 64, 0.25, [round(i * 1984 / 42) for i in range(43)]),
    ],
)
def test_tile_starts(size: int, tile: int, overlap: float, starts: list[int]) -> None:
    assert tile_starts(size, tile, overlap) == starts


@pytest.mark.parametrize("size", [1, 63, 64, 65, 100, 127, 200, 511, 777])
@pytest.mark.parametrize("tile, overlap", [(64, 0.0), (64, 0.25), (37, 0.5), (16, 0.9)])
def test_tiles_cover_every_pixel_and_stay_inside(size: int, tile: int, overlap: float) -> None:
    starts = tile_starts(size, tile, overlap)
    padded = max(size, tile)
    assert starts[0] == 0 and starts[-1] == padded - tile  # first at 0, last on the (padded) border
    assert all(0 <= s <= padded - tile for s in starts)  # never out of range
    assert starts == sorted(set(starts))  # no duplicates
    steps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(s <= max(1, math.ceil(tile * (1 - overlap))) for s in steps)  # overlap at least as asked
    covered = torch.zeros(padded, dtype=torch.bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()


def test_tile_boxes_are_the_grid_of_both_axes() -> None:
    boxes = tile_boxes(100, 150, (64, 84), 0.25)
    assert boxes == [(y, x) for y in tile_starts(100, 64, 0.25) for x in tile_starts(150, 84, 0.25)]


# --------------------------------------------------------------------------------------------------------------
# Importance map


@pytest.mark.parametrize("tile", [(64, 84), (33, 17), (8, 8)])
def test_gaussian_importance_map(tile: tuple[int, int]) -> None:
    g = importance_map(tile, "gaussian")
    assert g.shape == tile and g.dtype == torch.float32
    assert torch.equal(g, g.flip(0)) and torch.equal(g, g.flip(1))  # symmetric: flips see the same weights
    assert g.max() == pytest.approx(1.0) and g.min() > 0  # peak 1, never 0 (no division by zero)
    h, w = tile
    # sigma = tile / 8 per axis: along the middle row (odd width) the weight at distance d is exp(-d^2 / (2 s^2))
    if w % 2:
        row, c, s = g[h // 2] / g[h // 2].max(), w // 2, w / 8
        for d in range(c + 1):
            assert float(row[c + d]) == pytest.approx(math.exp(-(d**2) / (2 * s**2)), rel=1e-5)
    # the corners are the least trusted pixels: about 4 sigma from the centre on both axes, ~exp(-8) x exp(-8)
    assert float(g[0, 0]) == float(g.min()) < 1e-5


def test_constant_importance_map_is_ones() -> None:
    assert torch.equal(importance_map((5, 7), "constant"), torch.ones(5, 7))


# --------------------------------------------------------------------------------------------------------------
# Blending


@torch.no_grad()
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("size", [(100, 150), (64, 84), (70, 200), (40, 50), (40, 300), (129, 85)])
def test_a_pointwise_model_gives_the_whole_image_output(blend: str, overlap: float, size: tuple[int, int]) -> None:
    model = pointwise_net()
    x = images(2, *size)
    window = SlidingWindow(Recording(model), (64, 84), overlap, blend, tile_batch=3)  # type: ignore[arg-type]
    out = window(x)
    assert out.shape == (2, 5, *size) and out.dtype == torch.float32  # exactly the original size
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
    calls = window.model.calls
    assert all(c[1:] == (3, 64, 84) for c in calls)  # only whole tiles, padded when the image is smaller
    assert all(c[0] <= 3 for c in calls)  # tile_batch tiles per model call at most
    per_image = len(tile_boxes(max(size[0], 64), max(size[1], 84), (64, 84), overlap))
    assert sum(c[0] for c in calls) == 2 * per_image


@torch.no_grad()
def test_constant_blend_without_overlap_stitches_the_tiles() -> None:
    """A model that is not translation-equivariant (each tile's output is its own mean): side-by-side tiles come back
    as they are, each in its own place."""

    class TileMean(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((2, 3), keepdim=True).expand_as(x).clone()

    x = images(1, 64, 168)
    out = SlidingWindow(TileMean(), (64, 84), 0.0, "constant")(x)
    torch.testing.assert_close(out[..., :84], x[..., :84].mean((2, 3), keepdim=True).expand(1, 3, 64, 84))
    torch.testing.assert_close(out[..., 84:], x[..., 84:].mean((2, 3), keepdim=True).expand(1, 3, 64, 84))


@torch.no_grad()
def test_gaussian_blend_trusts_the_tile_centre() -> None:
    """Two overlapping tiles that disagree (each outputs its own index): where they overlap, the pixel nearer one
    tile's centre follows that tile with the Gaussian map, and is their plain mean with the constant one."""

    class TileIndex(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            index = torch.arange(self.n, self.n + len(x), dtype=torch.float32).view(-1, 1, 1, 1)
            self.n += len(x)
            return index.expand(-1, 1, *x.shape[2:])

    x = images(1, 32, 48)  # tiles at x = 0 and x = 16, overlapping on columns 16..31
    assert tile_starts(48, 32, 0.5) == [0, 16]
    gauss = SlidingWindow(TileIndex(), (32, 32), 0.5, "gaussian")(x)[0, 0, 16]
    const = SlidingWindow(TileIndex(), (32, 32), 0.5, "constant")(x)[0, 0, 16]
    assert torch.all(const[16:32] == 0.5)
    assert gauss[17] < 0.5 < gauss[30]  # column 17 is nearer tile 0's centre (15.5), column 30 tile 1's (31.5)
    assert torch.all(gauss[:16] == 0) and torch.all(gauss[32:] == 1)


@torch.no_grad()
def test_bf16_tile_outputs_accumulate_in_float32() -> None:
    model = pointwise_net()
    out = SlidingWindow(model.to(torch.bfloat16), (32, 32), 0.25)(images(1, 50, 70).to(torch.bfloat16))
    assert out.dtype == torch.float32 and out.shape == (1, 5, 50, 70)


# --------------------------------------------------------------------------------------------------------------
# Bad parameters, and the params that switch it on


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"overlap": 1.0}, "infer.tile_overlap: must be a share of the tile in [0, 1)"),
        ({"overlap": 1.5}, "infer.tile_overlap"),
        ({"overlap": -0.1}, "infer.tile_overlap"),
        ({"tile": (0, 64)}, "infer.tile: height and width must be positive, got [0, 64]"),
        ({"tile": (64, -8)}, "infer.tile: height and width must be positive"),
        ({"tile": (64,)}, "infer.tile: expected two integers"),
        ({"blend": "linear"}, "infer.tile_blend: 'linear' is not one of"),
        ({"tile_batch": 0}, "infer.tile_batch: must be at least 1"),
    ],
)
def test_bad_parameters_are_user_errors(kwargs: dict, message: str) -> None:
    args = {"tile": (64, 84), "overlap": 0.25, "blend": "gaussian", "tile_batch": 4, **kwargs}
    with pytest.raises(UserError) as e:
        SlidingWindow(nn.Identity(), **args)
    assert message in str(e.value)


def cfg(size: tuple[int, int]) -> ModelConfig:
    return ModelConfig(decoder="Unet", encoder="resnet10t", input_size=size)


def test_infer_params_switch_the_sliding_window_on() -> None:
    off = from_dict(InferParams, {}, "params.yaml: infer")
    assert not off.sliding and inference_tile(off, [cfg((64, 84))]) is None  # the default: whole images
    assert windowed(nn.Identity(), off, None).__class__ is nn.Identity and image_batch(off, None) == off.batch_size

    on = from_dict(InferParams, {"sliding": True, "tile_overlap": 0.5, "tile_blend": "constant"}, "infer")
    tile = inference_tile(on, [cfg((64, 84)), cfg((64, 84))])
    assert tile == (64, 84)  # the configs' input size
    window = windowed(nn.Identity(), on, tile)
    assert isinstance(window, SlidingWindow) and (window.overlap, window.blend) == (0.5, "constant")
    assert image_batch(on, tile) == 1  # one image (one accumulator) at a time

    with pytest.raises(UserError, match="different input sizes.*set infer.tile"):
        inference_tile(on, [cfg((64, 84)), cfg((128, 128))])
    given = dataclasses.replace(on, tile=(96, 96))
    assert inference_tile(given, [cfg((64, 84)), cfg((128, 128))]) == (96, 96)
    with pytest.raises(UserError, match="infer.tile_overlap"):
        inference_tile(dataclasses.replace(on, tile_overlap=1.0), [cfg((64, 84))])
    with pytest.raises(UserError, match=r"infer.tile: expected 2 items"):
        from_dict(InferParams, {"tile": [64]}, "infer")
