"""A plain ViT/BEiT encoder (one stride-16 token map) turned into a 4-level pyramid for SMP's UPerNet decoder.

The pyramid is the BEiT/ViTDet *simple feature pyramid*: four blocks' token maps, all at stride 16, become strides 4
(two 2x2 transposed convolutions), 8 (one), 16 (identity) and 32 (2x2 max-pool). SMP's ``UPerNetDecoder`` and
``SegmentationHead`` are built directly on those channels, so SMP's encoder table is never touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.base.initialization import initialize_decoder, initialize_head
from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder
from torch import nn

from pipeline.errors import UserError

PATCH = 16  # the pyramid's scale factors assume stride-16 tokens
STRIDE = 2 * PATCH  # the coarsest level (max-pooled)


def default_feature_blocks(num_blocks: int) -> tuple[int, ...]:
    """The last block of each quarter of the encoder (12 blocks: 2, 5, 8, 11), as in BEiT's UPerNet recipe."""
    return tuple(-(-num_blocks * (k + 1) // 4) - 1 for k in range(4))


class SimpleFeaturePyramid(nn.Module):
    """Four stride-16 maps (B, D, H/16, W/16) -> maps (B, D, H/s, W/s) at strides s = 4, 8, 16, 32."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
            nn.BatchNorm2d(dim),
            nn.GELU(),
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
        )
        self.up2 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.keep = nn.Identity()
        self.down2 = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [op(f) for op, f in zip((self.up4, self.up2, self.keep, self.down2), features, strict=True)]


class ViTPyramidSegmenter(nn.Module):
    """timm ViT/BEiT encoder -> simple feature pyramid -> SMP UPerNet decoder -> 1x1 head upsampled 4x.

    The input's H and W must be multiples of :attr:`stride` (32), and equal to the encoder's ``img_size`` unless it
    was built with ``dynamic_img_size=True``; the registry's pad/crop wrapper takes care of both.

    Args:
        encoder: a timm model with ``patch_embed``, ``blocks`` and ``forward_intermediates`` (ViT, BEiT, DeiT, ...),
            patch size 16. Blocks after the last feature block, the final norm and the head are pruned.
        num_classes: output channels.
        decoder_channels: UPerNet width.
        decoder_use_norm: UPerNet's norm (SMP's ``use_norm``).
        feature_blocks: the four block indices the pyramid is built from; default :func:`default_feature_blocks`.
    """

    stride = STRIDE

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        decoder_channels: int = 256,
        decoder_use_norm: bool | str | dict[str, Any] = "batchnorm",
        feature_blocks: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        for attr in ("patch_embed", "blocks", "forward_intermediates"):
            if not hasattr(encoder, attr):
                raise UserError(
                    f"adapter vit_pyramid: encoder {type(encoder).__name__} has no {attr!r}; it needs a plain "
                    f"ViT/BEiT-style timm model (for hierarchical encoders such as Swin or ConvNeXt use adapter: smp)"
                )
        patch = tuple(encoder.patch_embed.patch_size)
        if patch != (PATCH, PATCH):
            raise UserError(f"adapter vit_pyramid: needs patch size {PATCH}, encoder has {patch}")
        num_blocks = len(encoder.blocks)
        blocks = tuple(feature_blocks) if feature_blocks is not None else default_feature_blocks(num_blocks)
        if len(blocks) != 4 or not all(0 <= b < num_blocks for b in blocks):
            raise UserError(
                f"decoder_kwargs.feature_blocks: need 4 block indices in [0, {num_blocks - 1}], got {list(blocks)}"
            )
        self.feature_blocks = blocks
        self._take = sorted(set(blocks))  # forward_intermediates returns each block once
        encoder.prune_intermediate_layers(self._take, prune_norm=True, prune_head=True)
        self.encoder = encoder
        dim = encoder.embed_dim
        self.pyramid = SimpleFeaturePyramid(dim)
        # SMP decoders index features as [input, stride 2, stride 4, ...]; UPerNet ignores the first two.
        self.decoder = UPerNetDecoder(
            encoder_channels=[encoder.patch_embed.proj.in_channels, 0, dim, dim, dim, dim],
            encoder_depth=5,
            decoder_channels=decoder_channels,
            use_norm=decoder_use_norm,
        )
        self.segmentation_head = SegmentationHead(decoder_channels, num_classes, kernel_size=1, upsampling=4)
        initialize_decoder(self.decoder)
        initialize_head(self.segmentation_head)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> four maps (B, D, H/s, W/s) for s = 4, 8, 16, 32."""
        maps = self.encoder.forward_intermediates(x, indices=self._take, intermediates_only=True, output_fmt="NCHW")
        by_block = dict(zip(self._take, maps, strict=True))
        return self.pyramid([by_block[b] for b in self.feature_blocks])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, num_classes, H, W)."""
        b, _, h, w = x.shape
        skipped = x.new_empty(b, 0, h // 2, w // 2)  # the stride-2 slot SMP's decoders expect, unused by UPerNet
        return self.segmentation_head(self.decoder([x, skipped, *self.forward_features(x)]))
