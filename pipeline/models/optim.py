"""Optimizer parameter groups: no weight decay where it hurts, layer-wise lr decay for ViT/BEiT fine-tuning."""

from __future__ import annotations

from typing import Any

from torch import nn

from pipeline.errors import UserError

# Parameters named like this (last name component) get no weight decay: position embeddings, special tokens and
# relative position tables, as timm's ``no_weight_decay()`` lists them for ViT, BEiT and Swin.
NO_DECAY_NAMES = frozenset(
    {
        "pos_embed",
        "absolute_pos_embed",
        "cls_token",
        "dist_token",
        "reg_token",
        "mask_token",
        "relative_position_bias_table",
    }
)
# Layer 0. A shared BEiT ``rel_pos_bias`` is not here: BEiT puts it with the final norm, at the full lr.
_STEM = ("patch_embed", "cls_token", "pos_embed", "dist_token", "reg_token", "mask_token")


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, layer_decay: float | None = None
) -> list[dict[str, Any]]:
    """Parameter groups for ``torch.optim.AdamW`` (or any optimizer taking per-group ``lr``/``weight_decay``).

    Norm weights, biases (every tensor with one dimension or fewer) and the :data:`NO_DECAY_NAMES` get
    ``weight_decay=0``. With ``layer_decay`` (BEiT's fine-tuning recipe), the ViT/BEiT encoder's layers get smaller
    learning rates the closer they are to the input: with ``L`` blocks, layer ``i`` gets
    ``lr * layer_decay ** (L + 1 - i)``, where layer 0 is the patch embedding, position embedding and class token,
    layer ``i`` is ``blocks.{i - 1}``, and the encoder's final norm is layer ``L + 1``. Everything outside the
    encoder (pyramid, decoder, head) gets the full ``lr``. The encoder is the first submodule that has both
    ``patch_embed`` and ``blocks``.

    Each group also carries ``lr_scale`` (its share of ``lr``), which timm's schedulers apply; a ``LambdaLR``
    scales each group's initial ``lr`` and needs nothing more.

    Raises:
        UserError: ``layer_decay`` is set but the model has no ViT/BEiT encoder.
    """
    layer_of = _layer_ids(model) if layer_decay is not None else None
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim > 1 and name.rsplit(".", 1)[-1] not in NO_DECAY_NAMES
        scale = 1.0
        if layer_of is not None and layer_decay is not None:
            num_layers, prefix = layer_of
            if name.startswith(prefix):
                scale = layer_decay ** (num_layers + 1 - _layer_id(name[len(prefix) :], num_layers))
        group = groups.setdefault(
            (scale, decay),
            {"params": [], "lr": lr * scale, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale},
        )
        group["params"].append(param)
    # Smallest lr first, so the last group runs at the full lr (what a training log shows); decay before no-decay.
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], not k[1]))]


def _layer_ids(model: nn.Module) -> tuple[int, str]:
    """(number of blocks, parameter-name prefix) of the first submodule with ``patch_embed`` and ``blocks``."""
    for prefix, module in model.named_modules():
        if hasattr(module, "patch_embed") and isinstance(getattr(module, "blocks", None), nn.Module):
            return len(module.blocks), f"{prefix}." if prefix else ""
    raise UserError(
        "recipe.layer_decay: needs a ViT/BEiT-style encoder (adapter: vit_pyramid); this model has none, so set "
        "recipe.layer_decay: null"
    )


def _layer_id(name: str, num_layers: int) -> int:
    """Layer of an encoder parameter ``name`` (relative to the encoder): 0 stem, 1..L blocks, L + 1 the rest."""
    if name.startswith(_STEM):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers + 1
