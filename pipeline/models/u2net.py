"""U²-Net (Qin et al. 2020, "U²-Net: Going Deeper with Nested U-Structure for Salient Object Detection"), multi-class.

A residual U-block RSU-L is a small U-Net of height L inside a residual connection: an input convolution, L - 1
convolutions with 2x max-pooling between them, a bottom convolution at dilation 2, and a decoder that concatenates
each level's skip. RSU-4F keeps the resolution and grows the dilation instead (1, 2, 4, 8). Six of these blocks make
the outer encoder (RSU-7, 6, 5, 4, 4F, 4F, 2x max-pooling between them) and five the outer decoder (4F, 4, 5, 6, 7,
bilinear upsampling between them). The bottom encoder stage and each decoder stage have a side output: a 3x3
convolution to the class logits, upsampled to the input size. A 1x1 convolution over the six concatenated side
outputs is the fused output.

Multi-class: every output is ``num_classes`` logits (the paper's one sigmoid channel is the registry's ``head:
sigmoid``). Deep supervision: in training :class:`U2Net` returns ``(fused, side_1, ..., side_6)`` and
:class:`pipeline.losses.WeightedLoss` sums the loss over them with equal weights (the paper's equation 1); in eval
mode it returns the fused logits alone, so inference sees one (B, C, H, W) tensor.

The input's H and W must be multiples of :data:`STRIDE` (each stage's deepest level is at 1/32 of the input); the
registry's pad/crop wrapper pads to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import UserError

STRIDE = 32  # five 2x poolings between the six stages; each stage's RSU-L pools down to the same 1/32 inside


class Stage(NamedTuple):
    """One RSU block: height L, the channels of its inner U (``mid``) and of its output; ``dilated`` for RSU-LF."""

    height: int
    mid: int
    out: int
    dilated: bool = False


# The authors' tables (their u2net.py): six encoder stages top to bottom, five decoder stages bottom to top.
FULL_ENCODER = (
    Stage(7, 32, 64),
    Stage(6, 32, 128),
    Stage(5, 64, 256),
    Stage(4, 128, 512),
    Stage(4, 256, 512, dilated=True),
    Stage(4, 256, 512, dilated=True),
)
FULL_DECODER = (
    Stage(4, 256, 512, dilated=True),
    Stage(4, 128, 256),
    Stage(5, 64, 128),
    Stage(6, 32, 64),
    Stage(7, 16, 64),
)
VARIANTS = {"u2net": "the full U²-Net (44 M parameters)", "u2netp": "the small U²-Net† (1.1 M parameters)"}


class ConvBnReLU(nn.Sequential):
    """3x3 convolution (dilated by ``dilation``, same size out), BatchNorm, ReLU: the paper's REBNCONV."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class RSU(nn.Module):
    """Residual U-block RSU-L (``dilated``: RSU-LF): (B, in_channels, H, W) -> (B, stage.out, H, W).

    ``x -> f(x) + U(f(x))`` with ``f`` the input convolution and ``U`` a U-Net of height L. RSU-L pools 2x between
    its first L - 1 levels (exactly when H and W divide by 2 ** (L - 2)); RSU-LF dilates instead and keeps H, W.
    """

    def __init__(self, in_channels: int, stage: Stage) -> None:
        super().__init__()
        levels = stage.height
        if stage.dilated:
            dilation = [2**i for i in range(levels)]  # 4F: 1, 2, 4, 8
        else:
            dilation = [1] * (levels - 1) + [2]  # the bottom level's context comes from a dilation, not a pool
        self.pool = not stage.dilated
        self.inp = ConvBnReLU(in_channels, stage.out)
        self.down = nn.ModuleList(
            ConvBnReLU(stage.out if i == 0 else stage.mid, stage.mid, dilation[i]) for i in range(levels)
        )
        # up[i] mirrors down[i] (i < L - 1): it sees the deeper level's output concatenated with down[i]'s
        self.up = nn.ModuleList(
            ConvBnReLU(2 * stage.mid, stage.out if i == 0 else stage.mid, dilation[i]) for i in range(levels - 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hin = self.inp(x)
        h, skips = hin, []
        for i, conv in enumerate(self.down[:-1]):
            if i and self.pool:
                h = F.max_pool2d(h, 2, 2, ceil_mode=True)
            h = conv(h)
            skips.append(h)
        h = self.down[-1](h)  # the bottom, at the resolution of the level above
        for i in reversed(range(len(self.up))):
            h = self.up[i](torch.cat([resize_like(h, skips[i]), skips[i]], dim=1))
        return h + hin


class U2Net(nn.Module):
    """The nested U: RSU encoder stages, RSU decoder stages, six side outputs and their 1x1 fusion.

    Args:
        in_channels: input channels.
        num_classes: channels of every output (logits).
        encoder: the six encoder stages, top (full resolution) first.
        decoder: the five decoder stages, bottom first; stage k sees the deeper stage's output concatenated with the
            encoder stage at its level.
        deep_supervision: in training, return the side outputs too (``False``: the fused logits always).
    """

    stride = STRIDE

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        encoder: tuple[Stage, ...],
        decoder: tuple[Stage, ...],
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        if len(encoder) != len(decoder) + 1:
            raise ValueError(f"U2Net needs one encoder stage more than decoder stages: {len(encoder)}, {len(decoder)}")
        self.deep_supervision = deep_supervision
        ins = [in_channels] + [s.out for s in encoder[:-1]]
        self.encoder = nn.ModuleList(RSU(c, s) for c, s in zip(ins, encoder))
        below = [encoder[-1].out] + [s.out for s in decoder[:-1]]
        skips = [s.out for s in reversed(encoder[:-1])]
        self.decoder = nn.ModuleList(RSU(b + k, s) for b, k, s in zip(below, skips, decoder))
        # side outputs of the bottom encoder stage and of each decoder stage, deepest first
        self.sides = nn.ModuleList(nn.Conv2d(s.out, num_classes, 3, padding=1) for s in (encoder[-1], *decoder))
        self.fuse = nn.Conv2d(len(self.sides) * num_classes, num_classes, 1)

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, in_channels, H, W) -> ``(fused, side_1, ..., side_6)``, each (B, num_classes, H, W) logits.

        ``side_1`` is the top decoder stage's and ``side_6`` the bottom encoder stage's, as the paper numbers them.
        """
        h, skips = x, []
        for i, stage in enumerate(self.encoder):
            if i:
                h = F.max_pool2d(h, 2, 2, ceil_mode=True)
            h = stage(h)
            skips.append(h)
        features = [h]  # deepest first
        for stage, skip in zip(self.decoder, reversed(skips[:-1])):
            h = stage(torch.cat([resize_like(h, skip), skip], dim=1))
            features.append(h)
        sides = [resize_like(side(f), x) for side, f in zip(self.sides, features)][::-1]
        return self.fuse(torch.cat(sides, dim=1)), *sides

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Training (with deep supervision): :meth:`outputs`; otherwise the fused logits (B, num_classes, H, W)."""
        out = self.outputs(x)
        return out if self.training and self.deep_supervision else out[0]


def resize_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` bilinearly resized to ``like``'s H, W (unchanged when they agree)."""
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def build_u2net(variant: str, in_channels: int, num_classes: int, options: Mapping[str, Any]) -> U2Net:
    """The ``variant`` (:data:`VARIANTS`) with ``options`` (a config's ``decoder_kwargs``).

    Options: ``deep_supervision`` (default true) and, for ``u2netp``, ``mid_channels`` (16) and ``out_channels``
    (64), the widths of every block.

    Raises:
        UserError: an unknown variant or option.
    """
    if variant not in VARIANTS:
        valid = "; ".join(f"{k}: {v}" for k, v in VARIANTS.items())
        raise UserError(f"encoder: adapter u2net has no variant {variant!r}; valid: {valid}")
    valid_options = {"deep_supervision"} | ({"mid_channels", "out_channels"} if variant == "u2netp" else set())
    for key in options:
        if key not in valid_options:
            raise UserError(
                f"decoder_kwargs.{key}: not an option of adapter u2net, encoder {variant}; valid: "
                f"{', '.join(sorted(valid_options))}"
            )
    deep = options.get("deep_supervision", True)
    if not isinstance(deep, bool):
        raise UserError(f"decoder_kwargs.deep_supervision: expected true or false, got {deep!r}")
    encoder, decoder = FULL_ENCODER, FULL_DECODER
    if variant == "u2netp":  # U²-Net†: the full tables' heights, one width everywhere
        widths = {"mid": options.get("mid_channels", 16), "out": options.get("out_channels", 64)}
        for key, value in widths.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"decoder_kwargs.{key}_channels: expected a channel count of 1 or more, got {value!r}")
        encoder = tuple(s._replace(**widths) for s in FULL_ENCODER)
        decoder = tuple(s._replace(**widths) for s in FULL_DECODER)
    return U2Net(in_channels, num_classes, encoder, decoder, deep)
