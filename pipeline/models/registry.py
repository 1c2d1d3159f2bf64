"""The model factory: ``build_model(cfg, num_classes)`` picks an adapter by ``cfg.adapter`` and wraps what it builds.

An adapter turns a :class:`~pipeline.config.ModelConfig` into a network and its stride. Adapters are registered here,
explicitly, with :func:`register_adapter` (no import side effects elsewhere decide what exists):

* ``smp``: ``smp.create_model(decoder, encoder_name="tu-" + encoder, ...)``: any SMP decoder on any timm encoder
  that timm can build with ``features_only`` (ResNet, ConvNeXt, Swin, EfficientNet, ...).
* ``vit_pyramid``: a plain ViT/BEiT timm encoder, a simple feature pyramid and SMP's UPerNet decoder
  (:mod:`pipeline.models.vit_pyramid`).
* ``u2net``: U²-Net, nested residual U-blocks with deep supervision, from scratch (:mod:`pipeline.models.u2net`).

Every network is wrapped by :class:`PadCropWrapper`, the one place that pads the input to the stride and crops the
logits back, so any H, W works. A network may return a tuple of logits in training (deep supervision: its output,
then its side outputs; :class:`pipeline.losses.WeightedLoss` sums over them); the wrappers treat each member alike.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
from collections.abc import Callable
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ModelConfig
from pipeline.errors import UserError
from pipeline.models.pretrained import (
    load_encoder_weights,
    pretrained_timm_state_dict,
    read_state_dict,
    resolve_pretrained,
)
from pipeline.models.sides import decoder_sides
from pipeline.models.u2net import STRIDE as U2NET_STRIDE
from pipeline.models.u2net import build_u2net
from pipeline.models.vit_pyramid import ViTPyramidSegmenter

AdapterFn = Callable[[ModelConfig, int], tuple[nn.Module, int]]  # (cfg, num_classes) -> (network, stride)
Logits = torch.Tensor | tuple[torch.Tensor, ...]  # (B, C, H, W), or (output, *side outputs) of a deep-supervised net

_ADAPTERS: dict[str, AdapterFn] = {}

# Arguments the adapters set themselves; a config that sets them would silently fight the pipeline.
_SMP_RESERVED = {"self", "encoder_name", "encoder_weights", "encoder_depth", "in_channels", "classes"}
_SMP_REFUSED = {  # would change what forward returns: the pipeline needs raw logits of one tensor
    "activation": "the pipeline applies softmax itself; remove it",
    "aux_params": "an auxiliary classification head is not supported; remove it",
}
_TIMM_RESERVED = {"pretrained", "features_only", "out_indices", "in_chans", "num_classes", "pretrained_cfg_overlay"}


def register_adapter(name: str) -> Callable[[AdapterFn], AdapterFn]:
    """Decorator: register ``fn(cfg, num_classes) -> (network, stride)`` as adapter ``name`` (once)."""

    def decorate(fn: AdapterFn) -> AdapterFn:
        if name in _ADAPTERS:
            raise ValueError(f"model adapter {name!r} is already registered")  # a bug, not user input
        _ADAPTERS[name] = fn
        return fn

    return decorate


def list_adapters() -> list[str]:
    """Names valid for ``ModelConfig.adapter``."""
    return sorted(_ADAPTERS)


def list_decoders() -> list[str]:
    """SMP architecture names valid for ``ModelConfig.decoder`` with adapter ``smp`` (case-insensitive)."""
    return [cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values()]


@dataclasses.dataclass
class WithPresence:
    """A training output of a model with a class-presence head (:class:`PresenceHead`): the logits (or a
    deep-supervision tuple) and (B, num_classes) presence logits, one per class."""

    logits: Logits
    presence: torch.Tensor


def map_logits(out: Logits | WithPresence, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` of the logits, of each member of a deep-supervision tuple, or of a :class:`WithPresence`'s logits."""
    if isinstance(out, WithPresence):
        return WithPresence(map_logits(out.logits, fn), out.presence)
    return tuple(fn(z) for z in out) if isinstance(out, tuple) else fn(out)


class PresenceHead(nn.Module):
    """An image-level class-presence head (UW-Madison 1st, Severstal, HuBMAP 2021 1st): the deepest encoder
    features, average-pooled, through dropout and a linear layer to one logit per class, trained with BCE on which
    classes the training mask holds (:class:`pipeline.losses.WeightedLoss`). In training the output is a
    :class:`WithPresence`; in eval the network's logits alone, so inference, TTA and ensembling are unchanged.

    The features are taken by a forward hook on ``features``, the module whose output (a tensor, or a list of them:
    the last is the deepest) has ``channels`` channels: an SMP model's encoder, the ViT pyramid.
    """

    def __init__(self, net: nn.Module, features: nn.Module, channels: int, num_classes: int) -> None:
        super().__init__()
        self.net = net
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(channels, num_classes)
        )
        self._deepest: torch.Tensor | None = None
        features.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._deepest = output[-1] if isinstance(output, (list, tuple)) else output

    def forward(self, x: torch.Tensor) -> Logits | WithPresence:
        out = self.net(x)
        deepest, self._deepest = self._deepest, None
        if not self.training:
            return out
        if deepest is None:
            raise RuntimeError("PresenceHead: the feature hook did not run")
        return WithPresence(out, self.head(deepest))


def _presence_features(net: nn.Module, cfg: ModelConfig) -> tuple[nn.Module, int]:
    """The module a :class:`PresenceHead` hooks and its deepest channel count, per adapter."""
    if isinstance(net, ViTPyramidSegmenter):
        return net.pyramid, int(net.encoder.embed_dim)
    encoder = getattr(net, "encoder", None)
    if encoder is None or not hasattr(encoder, "out_channels"):
        raise UserError(
            f"presence_head: adapter {cfg.adapter} has no encoder features to pool; use adapter smp or vit_pyramid "
            "(or presence_head: 0)"
        )
    return encoder, int(encoder.out_channels[-1])


class PadCropWrapper(nn.Module):
    """Pads the input to what the network accepts, and crops the logits back to the input size.

    The pad goes at the bottom and right, so the crop is ``[:H, :W]``. It is zero (``pad_mode="constant"``: the
    network sees a frame of the normalised value 0, and never uses the padded logits). ``"reflect"`` or
    ``"replicate"`` are there for images whose border continues; reflect needs the pad smaller than the image.

    Attributes:
        net: the network; its input H, W must be multiples of ``stride`` (or exactly ``fixed_size``).
        stride: the multiple H and W are padded to.
        fixed_size: (H, W) for encoders built for one size (Swin, BEiT, ViT without ``dynamic_img_size``): every
            input is padded to exactly this and may not be larger. ``None`` when any multiple of ``stride`` works.
    """

    def __init__(
        self, net: nn.Module, stride: int, fixed_size: tuple[int, int] | None = None, pad_mode: str = "constant"
    ) -> None:
        super().__init__()
        self.net = net
        self.stride = stride
        self.fixed_size = fixed_size
        self.pad_mode = pad_mode

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The (H, W) an input of ``height`` x ``width`` is padded to."""
        if self.fixed_size is not None:
            fh, fw = self.fixed_size
            if height > fh or width > fw:
                raise UserError(
                    f"input {height}x{width} is larger than the model's fixed input_size {fh}x{fw}; raise "
                    f"input_size in the model config (or resize the images)"
                )
            return fh, fw
        s = self.stride
        return -(-height // s) * s, -(-width // s) * s

    def forward(self, x: torch.Tensor) -> Logits:
        """(B, C, H, W) float -> logits (B, num_classes, H, W); a deep-supervised net in training: a tuple of them."""
        h, w = x.shape[-2:]
        ph, pw = self.padded_size(h, w)
        if (ph, pw) != (h, w):
            x = F.pad(x, (0, pw - w, 0, ph - h), mode=self.pad_mode)
        return map_logits(self.net(x), lambda z: z[..., :h, :w])


class RefineHead(nn.Module):
    """A full-resolution refinement of a network's logits that sees the input pixels.

    Decoders end at stride 2 or 4 and upsample, so a class edge that lies between two input pixels is a guess made
    from coarse features (thin structures suffer most: on the embedded default about 5 % of digit pixels were
    predicted as background). This head concatenates the logits with the (normalised) input and adds a residual
    from two 3x3 convolutions at full resolution: ``logits + conv(relu(bn(conv(cat(logits, x)))))``. The last
    convolution starts at zero, so at initialisation the head is the identity.
    """

    def __init__(self, net: nn.Module, in_channels: int, num_classes: int, width: int) -> None:
        super().__init__()
        self.net = net
        self.head = nn.Sequential(
            nn.Conv2d(num_classes + in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, num_classes, 1),
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor) -> Logits:
        out = self.net(x)
        if isinstance(out, tuple):  # deep supervision: refine the output, keep the side outputs as they are
            return (self._refine(out[0], x), *out[1:])
        return self._refine(out, x)

    def _refine(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return logits + self.head(torch.cat([logits, x.to(logits.dtype)], dim=1))


class SigmoidAsTwoClass(nn.Module):
    """A one-logit binary network seen as a two-class one: ``z -> (0, z)``.

    ``softmax((0, z)) = (1 - sigmoid(z), sigmoid(z))`` and cross-entropy on ``(0, z)`` is binary cross-entropy on
    ``z``, so a sigmoid model trains, ensembles, TTAs and pseudo-labels through the same two-class code as a
    softmax one, with exactly the sigmoid's probabilities.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> Logits:
        # each z (B, 1, H, W): the foreground logit
        return map_logits(self.net(x), lambda z: torch.cat([torch.zeros_like(z), z], dim=1))


def build_model(cfg: ModelConfig, num_classes: int) -> PadCropWrapper:
    """Build the segmentation model ``cfg`` describes, with ``num_classes`` output channels.

    Weights are random unless ``cfg.pretrained`` names a local file or ``"cache"`` (see
    :mod:`pipeline.models.pretrained`); nothing is downloaded.

    Returns:
        A module mapping (B, in_channels, H, W) to logits (B, num_classes, H, W) for any H, W (in training, a
        deep-supervised network such as U²-Net gives a tuple of them); ``.stride`` tells the multiple it pads to.

    Raises:
        UserError: unknown adapter, decoder or encoder, bad kwargs, or missing pretrained weights.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    try:
        adapter = _ADAPTERS[cfg.adapter]
    except KeyError:
        raise UserError(f"adapter: unknown {cfg.adapter!r}; valid adapters: {', '.join(list_adapters())}") from None
    if cfg.head == "sigmoid" and num_classes != 2:
        raise UserError(
            f"head: sigmoid is for binary tasks (background + one class), but this competition has {num_classes} "
            "classes; use head: softmax"
        )
    outputs = 1 if cfg.head == "sigmoid" else num_classes
    net, stride = adapter(cfg, outputs)
    features = _presence_features(net, cfg) if cfg.presence_head else None
    if cfg.deep_supervision:
        probe = _fixed_input_size(net) or tuple(-(-v // stride) * stride for v in cfg.input_size)
        net = decoder_sides(net, cfg, outputs, probe)
    if cfg.head == "sigmoid":
        net = SigmoidAsTwoClass(net)
    if cfg.refine < 0:
        raise UserError(f"refine: must be 0 (no refinement head) or a channel count, got {cfg.refine}")
    if cfg.refine:
        net = RefineHead(net, cfg.in_channels, num_classes, cfg.refine)
    if features is not None:
        net = PresenceHead(net, *features, num_classes)
    fixed = _fixed_input_size(net)
    if fixed is not None and (fixed[0] % stride or fixed[1] % stride):
        rounded = [-(-v // stride) * stride for v in fixed]
        raise UserError(
            f"input_size: encoder {cfg.encoder!r} is built for exactly {list(fixed)}, which must be a multiple of "
            f"the model stride {stride}; use e.g. input_size: {rounded}"
        )
    return PadCropWrapper(net, stride, fixed)


# --------------------------------------------------------------------------------------------------------------
# Adapters


@register_adapter("smp")
def smp_adapter(cfg: ModelConfig, num_classes: int) -> tuple[nn.Module, int]:
    """Any SMP decoder on a timm encoder (``tu-``); ``encoder_kwargs`` go to ``timm.create_model``.

    SMP forwards every keyword its decoder class does not name to ``timm.create_model(features_only=True, ...)``,
    so ``decoder_kwargs`` are checked against the decoder's signature and ``encoder_kwargs`` must not collide with
    it. Encoders that timm marks ``fixed_input_size`` (Swin, ...) get ``img_size=cfg.input_size``.
    """
    arch = _smp_arch(cfg.decoder)
    _check_timm_encoder(cfg.encoder)
    decoder_params = set(inspect.signature(arch.__init__).parameters) - _SMP_RESERVED - {"kwargs"}
    for key in cfg.decoder_kwargs:
        if key in _SMP_REFUSED:
            raise UserError(f"decoder_kwargs.{key}: {_SMP_REFUSED[key]}")
        if key not in decoder_params:
            valid = ", ".join(sorted(decoder_params - set(_SMP_REFUSED)))
            raise UserError(f"decoder_kwargs.{key}: not an argument of SMP {arch.__name__}; valid: {valid}")
    timm_kwargs = _timm_kwargs(cfg, img_size=_has_fixed_input_size(cfg.encoder))
    for key in timm_kwargs:
        if key in decoder_params:
            raise UserError(f"encoder_kwargs.{key}: is an argument of SMP {arch.__name__}; move it to decoder_kwargs")

    try:
        weights = pretrained_timm_state_dict(cfg, timm_kwargs)
        extra: dict[str, Any] = {}
        if weights is not None:
            # timm loads a state dict passed this way before wrapping the model in its features_only form, so the
            # keys map themselves; a state dict source is never fetched from the network.
            extra = {"pretrained_cfg_overlay": {"state_dict": weights}}
        net = smp.create_model(
            arch.__name__,
            encoder_name="tu-" + cfg.encoder,
            encoder_weights=True if weights is not None else None,
            encoder_depth=cfg.encoder_depth,
            in_channels=cfg.in_channels,
            classes=num_classes,
            **cfg.decoder_kwargs,
            **timm_kwargs,
            **extra,
        )
    except (TypeError, ValueError, AssertionError) as e:
        hint = ""
        if "downsampling pattern" in str(e):
            hint = " (a plain ViT has one stride; use adapter: vit_pyramid)"
        raise UserError(
            f"cannot build SMP {arch.__name__} on timm encoder {cfg.encoder!r} with encoder_depth "
            f"{cfg.encoder_depth} and encoder_kwargs {dict(cfg.encoder_kwargs)}: {e}{hint}".replace("\n", " ")
        ) from e
    if weights is not None:
        net.encoder.model.pretrained_cfg.pop("state_dict", None)  # timm keeps a copy of the overlay; drop it
    return net, net.encoder.output_stride


@register_adapter("vit_pyramid")
def vit_pyramid_adapter(cfg: ModelConfig, num_classes: int) -> tuple[nn.Module, int]:
    """A plain ViT/BEiT timm encoder at ``img_size=cfg.input_size``, a simple feature pyramid, SMP's UPerNet.

    ``decoder_kwargs``: ``decoder_channels``, ``decoder_use_norm``, ``feature_blocks`` (four block indices).
    """
    if cfg.decoder.lower() != "upernet":
        raise UserError(f"decoder: adapter vit_pyramid supports UPerNet only, got {cfg.decoder!r}")
    _check_timm_encoder(cfg.encoder)
    valid = {"decoder_channels", "decoder_use_norm", "feature_blocks"}
    for key in cfg.decoder_kwargs:
        if key not in valid:
            raise UserError(
                f"decoder_kwargs.{key}: not valid for adapter vit_pyramid; valid: {', '.join(sorted(valid))}"
            )
    timm_kwargs = _timm_kwargs(cfg, img_size=True)
    path = resolve_pretrained(cfg)
    try:
        encoder = timm.create_model(
            cfg.encoder, pretrained=False, num_classes=0, in_chans=cfg.in_channels, **timm_kwargs
        )
    except (TypeError, ValueError, AssertionError) as e:
        raise UserError(
            f"cannot build timm encoder {cfg.encoder!r} with encoder_kwargs {timm_kwargs}: {e}".replace("\n", " ")
        ) from e
    if path is not None:  # before the pyramid prunes the final norm, so the report counts only real misses
        load_encoder_weights(encoder, read_state_dict(path), str(path), cfg.encoder)
    net = ViTPyramidSegmenter(encoder, num_classes, **cfg.decoder_kwargs)
    return net, net.stride


@register_adapter("u2net")
def u2net_adapter(cfg: ModelConfig, num_classes: int) -> tuple[nn.Module, int]:
    """U²-Net from scratch (:mod:`pipeline.models.u2net`): ``decoder: U2Net``, ``encoder`` names the variant
    (``u2net`` or the small ``u2netp``); ``decoder_kwargs``: ``deep_supervision``, and for ``u2netp``
    ``mid_channels`` and ``out_channels``."""
    if cfg.decoder.lower() != "u2net":
        raise UserError(f"decoder: adapter u2net builds U2Net only, got {cfg.decoder!r}; set decoder: U2Net")
    refused = {
        "encoder_kwargs": (bool(cfg.encoder_kwargs), "U²-Net has no timm encoder; remove it"),
        "encoder_depth": (cfg.encoder_depth != 5, "U²-Net's six stages are fixed (stride 32); remove it"),
        "pretrained": (cfg.pretrained is not None, "U²-Net trains from scratch here; set pretrained: null"),
        "refine": (cfg.refine != 0, "U²-Net's side outputs are already fused at full resolution; set refine: 0"),
        "deep_supervision": (
            cfg.deep_supervision != 0,
            "U²-Net supervises its own side outputs (decoder_kwargs.deep_supervision); set deep_supervision: 0",
        ),
    }
    for key, (bad, why) in refused.items():
        if bad:
            raise UserError(f"{key}: not used by adapter u2net: {why}")
    return build_u2net(cfg.encoder, cfg.in_channels, num_classes, cfg.decoder_kwargs), U2NET_STRIDE


# --------------------------------------------------------------------------------------------------------------
# Helpers


def _smp_arch(name: str) -> type[nn.Module]:
    try:
        return smp.MODEL_ARCHITECTURES_MAPPING[name.lower()]
    except KeyError:
        raise UserError(
            f"decoder: unknown SMP decoder {name!r}; valid decoders: {', '.join(list_decoders())}"
        ) from None


def _check_timm_encoder(name: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3, cutoff=0.7)
    did_you_mean = f"did you mean {', '.join(close)}? " if close else ""
    pattern = re.match(r"[a-z]*", name.lower()).group(0) or name  # the family: resnet181 -> resnet
    raise UserError(f"encoder: unknown timm model {name!r}; {did_you_mean}see timm.list_models('*{pattern}*')")


def _has_fixed_input_size(encoder: str) -> bool:
    pcfg = timm.models.get_pretrained_cfg(encoder)
    return bool(pcfg is not None and pcfg.fixed_input_size)


def _timm_kwargs(cfg: ModelConfig, img_size: bool) -> dict[str, Any]:
    """``cfg.encoder_kwargs`` for ``timm.create_model``, with ``img_size=cfg.input_size`` added when asked."""
    for key in cfg.encoder_kwargs:
        if key in _TIMM_RESERVED:
            raise UserError(f"encoder_kwargs.{key}: is set by the pipeline (see in_channels and pretrained); remove it")
    kwargs = dict(cfg.encoder_kwargs)
    if img_size:
        kwargs.setdefault("img_size", tuple(cfg.input_size))
    for key, value in kwargs.items():
        if isinstance(value, list):  # YAML lists; timm wants tuples for sizes, depths, ...
            kwargs[key] = tuple(value)
    return kwargs


def _fixed_input_size(net: nn.Module) -> tuple[int, int] | None:
    """The (H, W) a timm patch embedding insists on (``strict_img_size``), or ``None``."""
    for module in net.modules():
        if getattr(module, "strict_img_size", False) and getattr(module, "img_size", None) is not None:
            return tuple(module.img_size)  # type: ignore[return-value]
    return None
