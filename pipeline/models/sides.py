"""Deep supervision on decoder stages (nnU-Net, HuBMAP 2021 1st): ``ModelConfig.deep_supervision: w``.

:class:`DecoderSides` takes the outputs of the last decoder stages before the final one (at strides 2, 4 and 8 of a
U-Net), maps each through its own 1x1 convolution to class logits and upsamples them bilinearly to the network's
output size. In training the network returns ``(output, side_1, ..., side_k)``, finest side first, and
:class:`pipeline.losses.WeightedLoss` adds ``w`` x a weighted mean of the sides' losses, with nnU-Net's weights
(halving per stage, normalised to sum 1). In eval it returns the output alone, so inference, TTA and ensembling are
unchanged and the side heads cost nothing there.

Upsampling the side logits, rather than downsampling the target as nnU-Net does, keeps the ignore label and Dice exact
at every stage.

Stages are found on SMP decoders that keep a list of blocks (``decoder.blocks``: Unet, Linknet, MAnet); their channel
counts are read from one forward pass of a zero image at build time.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ModelConfig
from pipeline.errors import UserError

MAX_SIDES = 3  # nnU-Net supervises all but the two coarsest of its ~6 resolutions; here the 3 below the output


def side_weights(n_sides: int) -> list[float]:
    """nnU-Net's weights for ``n_sides`` side outputs, finest first: halving per stage, normalised to sum 1.

    >>> side_weights(3)
    [0.5714285714285714, 0.2857142857142857, 0.14285714285714285]
    >>> side_weights(1)
    [1.0]
    """
    raw = [0.5**k for k in range(n_sides)]
    return [r / sum(raw) for r in raw]


class DecoderSides(nn.Module):
    """A network whose chosen decoder stages get 1x1 side heads; see the module docstring.

    Args:
        net: the network (an SMP model).
        stages: the modules whose outputs are supervised, finest first.
        channels: their output channel counts.
        num_classes: logits of every side head (the network's own output count).
    """

    def __init__(self, net: nn.Module, stages: list[nn.Module], channels: list[int], num_classes: int) -> None:
        super().__init__()
        self.net = net
        self.heads = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in channels)
        self._kept: dict[int, torch.Tensor] = {}
        for i, stage in enumerate(stages):
            stage.register_forward_hook(self._keeper(i))

    def _keeper(self, i: int) -> Any:
        def keep(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            if self.training:
                self._kept[i] = output

        return keep

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.net(x)
        kept, self._kept = self._kept, {}
        if not self.training:
            return out
        if len(kept) != len(self.heads):
            raise RuntimeError(f"DecoderSides: {len(kept)} of {len(self.heads)} stage hooks ran")
        size = out.shape[-2:]
        sides = [
            F.interpolate(head(kept[i]), size=size, mode="bilinear", align_corners=False)
            for i, head in enumerate(self.heads)
        ]
        return (out, *sides)


def decoder_sides(net: nn.Module, cfg: ModelConfig, num_classes: int, size: tuple[int, int]) -> DecoderSides:
    """``net`` with side heads on up to :data:`MAX_SIDES` decoder stages before its last, probed at ``size``.

    Raises:
        UserError: the network has no decoder stage list (an adapter or SMP decoder other than Unet, Linknet, MAnet).
    """
    blocks = getattr(getattr(net, "decoder", None), "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) < 2:
        raise UserError(
            f"deep_supervision: {cfg.adapter} decoder {cfg.decoder} has no list of decoder stages to supervise; use "
            "an SMP Unet, Linknet or MAnet (U²-Net: its decoder_kwargs.deep_supervision), or set deep_supervision: 0"
        )
    stages = list(blocks)[:-1][::-1][:MAX_SIDES]  # the finest stage before the output first
    channels: dict[int, int] = {}
    hooks = [
        s.register_forward_hook(lambda m, i, o, k=k: channels.__setitem__(k, int(o.shape[1])))
        for k, s in enumerate(stages)
    ]
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, cfg.in_channels, *size))
    finally:
        net.train(was_training)
        for h in hooks:
            h.remove()
    return DecoderSides(net, stages, [channels[k] for k in range(len(stages))], num_classes)
