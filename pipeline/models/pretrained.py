"""Pretrained encoder weights, from local files only: nothing here ever downloads.

``ModelConfig.pretrained`` is one of

* ``null``: random init;
* a path to a local weights file (``.pth``/``.pt``/``.bin`` state dict, read with ``torch.load(weights_only=True)``, or
  ``.safetensors``), relative to the working directory (the project root when run by DVC);
* ``"cache"``: the file timm would download, if it is already in the local Hugging Face cache (``HF_HOME``) or the
  torch hub cache; it is looked up offline.

When the weights are not there, :class:`~pipeline.errors.UserError` says what to download (the Hugging Face hub id or
URL from timm's ``pretrained_cfg``) and where to set its path. Loading goes through the encoder family's timm
``checkpoint_filter_fn``, so a checkpoint saved at 224x224 loads into a model built at another ``img_size``: ViT
absolute position embeddings, BEiT/Swin relative position tables and patch embeddings are resampled.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.errors import UserError

_logger = logging.getLogger(__name__)

CACHE = "cache"  # the special value of ModelConfig.pretrained


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What :func:`load_encoder_weights` did: tensors loaded, keys left at random init, checkpoint keys unused."""

    source: str
    loaded: int
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]

    def __str__(self) -> str:
        def some(keys: tuple[str, ...]) -> str:
            return f" (e.g. {', '.join(keys[:3])})" if keys else ""

        return (
            f"{self.source}: loaded {self.loaded} tensors; {len(self.missing)} missing{some(self.missing)}, "
            f"{len(self.unexpected)} unexpected{some(self.unexpected)}"
        )


def resolve_pretrained(cfg: ModelConfig) -> Path | None:
    """The local weights file for ``cfg.encoder``, or ``None`` when ``cfg.pretrained`` is null.

    Raises:
        UserError: the file (or the cache entry) is missing; the message says what to download and where to set it.
    """
    if cfg.pretrained is None:
        return None
    if cfg.pretrained == CACHE:
        found = _find_in_cache(cfg.encoder)
        if found is None:
            raise UserError(
                f"pretrained: cache: no weights for encoder {cfg.encoder!r} in the local Hugging Face or torch hub "
                f"cache; download {_download_hint(cfg.encoder)} and set `pretrained:` in the model config to the "
                f"file's path (or `pretrained: null` to train from scratch)"
            )
        return found
    path = Path(cfg.pretrained).expanduser()
    if not path.is_file():
        raise UserError(
            f"pretrained: weights file {str(path)!r} not found; download {_download_hint(cfg.encoder)} and put it "
            f"at that path (or set `pretrained: null` in the model config to train from scratch)"
        )
    return path


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``: tensors only, never code).

    A training checkpoint that wraps the weights in ``state_dict``/``model``/``module`` is unwrapped and a DDP
    ``module.`` prefix is stripped.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise UserError(f"{path}: reading .safetensors needs `pip install safetensors`") from None
            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as e:  # unpickling refused, truncated file, not a checkpoint at all
        raise UserError(f"{path}: cannot read pretrained weights ({type(e).__name__}: {e})".replace("\n", " ")) from e
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_encoder_weights(
    encoder: nn.Module, state_dict: dict[str, torch.Tensor], source: str, encoder_name: str
) -> LoadReport:
    """Load ``state_dict`` into a plain timm model (not a ``features_only`` wrapper), checking shapes.

    The checkpoint goes through the timm family's ``checkpoint_filter_fn`` (position embeddings, relative position
    tables and patch embeddings resampled to the model's size), the first conv is adapted to the model's input
    channels, the classifier is dropped. A tensor whose shape still differs is an error naming the key.

    Args:
        encoder: a model from ``timm.create_model`` (e.g. ``num_classes=0``).
        state_dict: the checkpoint's tensors.
        source: the file name, for messages.
        encoder_name: the timm model name, to find its pretrained config (first conv and classifier names).

    Returns:
        The counts of loaded, missing and unexpected keys (also logged).
    """
    filter_fn = getattr(sys.modules.get(type(encoder).__module__), "checkpoint_filter_fn", None)
    sd = dict(state_dict)
    if filter_fn is not None:
        try:
            # A few older timm filters take the state dict only; timm's own load_pretrained retries the same way.
            try:
                sd = filter_fn(sd, encoder)
            except TypeError:
                sd = filter_fn(sd)
        except Exception as e:  # a checkpoint of another architecture trips the filter's own assumptions
            raise UserError(f"{source}: does not fit encoder {encoder_name!r} ({type(e).__name__}: {e})") from e
    pcfg = timm.models.get_pretrained_cfg(encoder_name)
    classifiers = _as_tuple(pcfg.classifier if pcfg else None)
    first_convs = _as_tuple(pcfg.first_conv if pcfg else None)
    own = encoder.state_dict()
    unexpected = []
    for key in list(sd):
        if key not in own:
            if not any(key.startswith(c + ".") for c in classifiers):  # a dropped head is expected, not news
                unexpected.append(key)
            del sd[key]
            continue
        value, want = sd[key], own[key]
        if value.shape != want.shape and key.removesuffix(".weight") in first_convs and value.ndim == 4:
            sd[key] = value = timm.models.adapt_input_conv(want.shape[1], value)  # e.g. RGB weights, 1-channel input
        if value.shape != want.shape:
            raise UserError(
                f"{source}: tensor {key!r} has shape {tuple(value.shape)} but encoder {encoder_name!r} needs "
                f"{tuple(want.shape)}; check that the file holds weights of this encoder and its encoder_kwargs"
            )
    if not sd:
        raise UserError(
            f"{source}: no tensor matches encoder {encoder_name!r} (checkpoint keys look like "
            f"{', '.join(list(state_dict)[:3])}); is it a checkpoint of this encoder?"
        )
    result = encoder.load_state_dict(sd, strict=False)
    report = LoadReport(source, len(sd), tuple(result.missing_keys), tuple(sorted(unexpected)))
    _logger.info("pretrained %s", report)
    return report


def pretrained_timm_state_dict(cfg: ModelConfig, timm_kwargs: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The configured pretrained weights, in the key layout and shapes of ``timm.create_model(cfg.encoder, ...)``.

    A full (not ``features_only``) timm model is built with ``timm_kwargs``, the checkpoint loaded into it with
    :func:`load_encoder_weights`, and its state dict returned; SMP's ``features_only`` encoder can then take it through
    timm's ``pretrained_cfg_overlay=dict(state_dict=...)``, which maps keys to the feature wrapper without a download.
    ``None`` when ``cfg.pretrained`` is null.
    """
    path = resolve_pretrained(cfg)
    if path is None:
        return None
    full = timm.create_model(cfg.encoder, pretrained=False, num_classes=0, in_chans=cfg.in_channels, **timm_kwargs)
    load_encoder_weights(full, read_state_dict(path), str(path), cfg.encoder)
    return full.state_dict()


def _find_in_cache(encoder: str) -> Path | None:
    """The already-downloaded weights file timm would use for ``encoder``; looked up offline, never fetched."""
    pcfg = timm.models.get_pretrained_cfg(encoder)
    if pcfg is None:
        return None
    if pcfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        names = [pcfg.hf_hub_filename] if pcfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for name in names:
            found = try_to_load_from_cache(pcfg.hf_hub_id, name)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    if pcfg.url:
        found_path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(pcfg.url).path)
        if found_path.is_file():
            return found_path
    return None


def _download_hint(encoder: str) -> str:
    """Where timm would fetch ``encoder``'s weights from, as a human instruction."""
    pcfg = timm.models.get_pretrained_cfg(encoder)
    if pcfg is None or not (pcfg.hf_hub_id or pcfg.url):
        return f"weights for {encoder!r} (timm has none registered for it)"
    hints = []
    if pcfg.hf_hub_id:
        name = pcfg.hf_hub_filename or "model.safetensors"
        hints.append(f"https://huggingface.co/{pcfg.hf_hub_id}/resolve/main/{name} (hub id {pcfg.hf_hub_id})")
    if pcfg.url:
        hints.append(pcfg.url)
    return " or ".join(hints)


def _as_tuple(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)
