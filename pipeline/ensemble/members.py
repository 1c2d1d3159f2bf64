"""A round's members and their forward passes: the fold models of each model config, TTA'd, averaged per config in
probability or logit space, weighted across configs, optionally through the sliding window.

Shared by ``infer`` and ``pseudo`` (so the pseudo stages depend on no submission, leaderboard or report code).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.config import InferParams, ModelConfig, TtaConfig, from_dict
from pipeline.ensemble.fit import EPS
from pipeline.errors import UserError
from pipeline.faults import inference_memory
from pipeline.io import load_torch
from pipeline.models.registry import build_model
from pipeline.paths import Layout
from pipeline.predict import SizedModel, activate, autocast
from pipeline.sliding import SlidingWindow, check_window
from pipeline.tta import TtaForward


@dataclasses.dataclass
class Member:
    """One trained fold model."""

    model: str
    fold: int
    round: int
    path: Path


def find_members(layout: Layout, models: Sequence[str], folds: Sequence[int], round_: int) -> list[Member]:
    """The best checkpoints of ``models`` x ``folds`` in ``round_``; a missing one is an error saying what to run."""
    members = []
    for m in models:
        for f in folds:
            path = layout.checkpoint(m, f, round_)
            if not path.is_file():
                raise UserError(
                    f"{path} not found: train it first (dvc repro, or python -m stages.train --model {m} "
                    f"--fold {f} --round {round_})"
                )
            members.append(Member(m, f, round_, path))
    return members


def members_from_checkpoints(paths: Sequence[str | Path]) -> list[Member]:
    """One member per checkpoint file (``--checkpoint``), its model, fold and round read from the checkpoint itself.

    Every checkpoint ``pipeline.train`` writes records them, wherever the file was copied to. Two checkpoints of one
    (model, fold) are an error: the ensemble averages one model per fold, so one of them would be silently dropped.
    """
    members: list[Member] = []
    for c in paths:
        path = Path(c)
        ck = load_torch(path)
        missing = [k for k in ("model_name", "fold", "round") if k not in ck]
        if missing:
            raise UserError(
                f"{path}: the checkpoint does not record its {', '.join(missing)} (not written by pipeline.train); "
                "pass checkpoints that stages.train wrote"
            )
        member = Member(str(ck["model_name"]), int(ck["fold"]), int(ck["round"]), path)
        same = next((m for m in members if (m.model, m.fold) == (member.model, member.fold)), None)
        if same is not None:
            raise UserError(
                f"--checkpoint {path} and {same.path} are both {member.model} fold {member.fold} (rounds "
                f"{same.round} and {member.round}): give one checkpoint per model and fold"
            )
        members.append(member)
    return members


def load_member(member: Member, device: torch.device) -> tuple[nn.Module, ModelConfig, list[dict[str, Any]], bool]:
    """Rebuild a fold model from its checkpoint (weights_only); EMA weights when it has them. Also returns the
    classes and whether it learnt multilabel masks."""
    ck = load_torch(member.path, required=("config", "classes"))
    cfg = from_dict(ModelConfig, ck["config"], f"{member.path}: config")
    model = build_model(cfg, len(ck["classes"]))
    model.load_state_dict(ck["ema"] if ck.get("ema") is not None else ck["model"])
    model = model.to(device).eval()
    if cfg.recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    size = tuple(cfg.input_size) if cfg.resize == "resize" else None
    return SizedModel(model, size), cfg, ck["classes"], bool(ck.get("multilabel", False))  # type: ignore[arg-type]


@dataclasses.dataclass
class Loaded:
    """Every member loaded, grouped by model config: ``groups[config][fold]`` is the fold model."""

    groups: dict[str, dict[int, nn.Module]]
    cfgs: dict[str, ModelConfig]
    classes: list[dict[str, Any]]
    multilabel: bool = False  # the members learnt bit-field masks (their checkpoints say so): sigmoids per class


def load_members(members: Sequence[Member], device: torch.device) -> Loaded:
    """Load ``members`` onto ``device``, grouped by model config in member order."""
    out = Loaded({}, {}, [])
    kinds: dict[bool, Member] = {}
    for m in members:
        model, cfg, out.classes, multilabel = load_member(m, device)
        out.groups.setdefault(m.model, {})[m.fold] = model
        out.cfgs[m.model] = cfg
        kinds.setdefault(multilabel, m)
    if len(kinds) > 1:
        a, b = kinds[True], kinds[False]
        raise UserError(
            f"{a.path} learnt multilabel masks, {b.path} class maps: one ensemble needs one kind (run dvc repro "
            "to retrain every member on the masks of masks.overlap)"
        )
    out.multilabel = next(iter(kinds), False)
    return out


class GroupForward(nn.Module):
    """One model config's fold models with a TTA set: (B, 3, H, W) -> (B, C, H, W) log-probabilities.

    Fold models are averaged in probability or logit (log-probability) space; the temperature re-scales the
    result. Log-probabilities come out so the caller can resize them like logits. ``multilabel`` (a sigmoid per
    class): logits come out, the logit of the fold models' mean probability (``prob``) or their mean logit.
    """

    def __init__(  # noqa: PLR0913 - the group and how it averages
        self,
        models: Sequence[nn.Module],
        tta: TtaConfig,
        space: str,
        temperature: float = 1.0,
        batched: bool = True,
        multilabel: bool = False,
    ) -> None:
        super().__init__()
        self.models = nn.ModuleList(TtaForward(m, tta, batched, multilabel) for m in models)
        self.space, self.temperature, self.multilabel = space, temperature, multilabel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [m(x).float() for m in self.models]
        if self.multilabel:
            z = mean_logit([o.sigmoid() for o in outs]) if self.space == "prob" else torch.stack(outs).mean(0)
            return z / self.temperature if self.temperature != 1.0 else z
        if self.space == "prob":
            logp = torch.log(torch.stack([o.softmax(1) for o in outs]).mean(0) + EPS)
        else:
            logp = torch.stack([o.log_softmax(1) for o in outs]).mean(0).log_softmax(1)
        return (logp / self.temperature).log_softmax(1) if self.temperature != 1.0 else logp


class EnsembleForward(nn.Module):
    """Weighted combination of model-config groups: (B, 3, H, W) -> (B, C, H, W) log-probabilities (``multilabel``:
    logits, of the weighted mean probability or the weighted mean logit)."""

    def __init__(
        self, groups: Sequence[GroupForward], weights: Sequence[float], space: str, multilabel: bool = False
    ) -> None:
        super().__init__()
        self.groups, self.space, self.multilabel = nn.ModuleList(groups), space, multilabel
        w = torch.tensor(weights, dtype=torch.float32)
        self.register_buffer("weights", w / w.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logps = torch.stack([g(x) for g in self.groups])  # (G, B, C, H, W)
        w = self.weights.view(-1, 1, 1, 1, 1)
        if self.multilabel and self.space == "prob":
            return mean_logit([(logps.sigmoid() * w).sum(0)])
        if self.multilabel:
            return (logps * w).sum(0)
        if self.space == "prob":
            return torch.log((logps.exp() * w).sum(0) + EPS)
        return (logps * w).sum(0).log_softmax(1)


def mean_logit(probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The logit of the mean of per-class sigmoid probabilities (clamped into (EPS, 1 - EPS))."""
    p = torch.stack(list(probs)).mean(0).clamp(EPS, 1 - EPS)
    return torch.log(p) - torch.log1p(-p)


def inference_tile(p: InferParams, cfgs: Sequence[ModelConfig]) -> tuple[int, int] | None:
    """The sliding-window tile (H, W), or ``None`` without ``infer.sliding``.

    ``infer.tile``, else the model configs' common ``input_size`` (the size they trained on): one tile is cut for
    the whole ensemble, so configs of different input sizes need ``infer.tile`` set.
    """
    if not p.sliding:
        return None
    if p.tile is not None:
        return check_window(p.tile, p.tile_overlap, p.tile_blend, p.tile_batch)
    sizes = sorted({tuple(c.input_size) for c in cfgs})
    if len(sizes) != 1:
        raise UserError(
            f"infer.tile: the model configs have different input sizes {[list(s) for s in sizes]}; set infer.tile "
            "to the tile the sliding window should cut (e.g. tile: [512, 512])"
        )
    return check_window(sizes[0], p.tile_overlap, p.tile_blend, p.tile_batch)


def windowed(forward: nn.Module, p: InferParams, tile: tuple[int, int] | None) -> nn.Module:
    """``forward`` itself, or with a ``tile`` a :class:`~pipeline.sliding.SlidingWindow` over it."""
    if tile is None:
        return forward
    return SlidingWindow(forward, tile, p.tile_overlap, p.tile_blend, p.tile_batch)


def image_batch(p: InferParams, tile: tuple[int, int] | None) -> int:
    """Images per batch: ``infer.batch_size``, or 1 through the sliding window (each image has its own full-size
    accumulator, so memory is one image's accumulator plus ``infer.tile_batch`` tiles)."""
    return p.batch_size if tile is None else 1


@dataclasses.dataclass
class Runtime:
    """How forwards run: device, autocast, the infer params (batching, TTA batching) and the sliding-window tile."""

    device: torch.device
    amp_ctx: Callable[[], Any]
    p: InferParams
    tile: tuple[int, int] | None
    multilabel: bool = False  # the members' outputs are per-class sigmoid logits (Loaded.multilabel)

    @classmethod
    def of(cls, loaded: Loaded, p: InferParams, device: torch.device) -> Runtime:
        recipe = next(iter(loaded.cfgs.values())).recipe  # the first config's autocast policy serves all
        return cls(
            device,
            lambda: autocast(device, recipe.amp, recipe.cpu_bf16),
            p,
            inference_tile(p, list(loaded.cfgs.values())),
            loaded.multilabel,
        )

    def group(
        self, models: Sequence[nn.Module], tta: TtaConfig, space: str = "prob", temperature: float = 1.0
    ) -> nn.Module:
        """A (windowed) :class:`GroupForward` of ``models``."""
        group = GroupForward(models, tta, space, temperature, self.p.batched_tta, self.multilabel)
        return windowed(group, self.p, self.tile)

    def probabilities(self, out: torch.Tensor) -> torch.Tensor:
        """Probabilities of what a group or ensemble forward returns: its softmax, or each class's sigmoid."""
        return activate(out, self.multilabel)

    @property
    def batch(self) -> int:
        return image_batch(self.p, self.tile)

    def memory(self, what: str) -> contextlib.AbstractContextManager[None]:
        """Around a pass of these forwards (``what`` names it): out of memory becomes one line naming the key to
        lower: ``infer.batch_size``, or ``infer.tile_batch`` through the sliding window (:mod:`pipeline.faults`)."""
        return inference_memory(self.p, self.tile, what)
