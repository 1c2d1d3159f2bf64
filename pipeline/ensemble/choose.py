"""The TTA set of each model config, in one place for ``infer`` and ``pseudo``: ``none``, the model config's own
set, or ``auto``: a greedy search on out-of-fold (OOF) predictions in the competition metric.

``auto`` starts from no TTA and keeps each candidate (each flip, then each extra scale) only if the OOF metric of
that config rises. Every TTA set the search tries is predicted once over the selection images and kept as per-image
confusion matrices, so the same search run without fold k (cross-fitting, :func:`pipeline.oof.cross_fit`) re-reads
them instead of predicting again.

Without OOF predictions (a member's ``oof.npz`` missing, or ``--checkpoint`` members) ``auto`` is an error naming
what is missing, unless ``infer.allow_fallback`` lets it fall back to the config's set (and the fallback is
recorded).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import nn

from pipeline.config import InferParams, TtaConfig
from pipeline.ensemble.data import OofData, predict_oof
from pipeline.ensemble.members import Member, Runtime
from pipeline.errors import UserError
from pipeline.oof import ImageMatrices, Memo, image_matrices, missing_oof
from pipeline.paths import Layout
from pipeline.tta import describe

TtaKey = tuple[tuple[str, ...], tuple[float, ...], str]


def tta_key(tta: TtaConfig) -> TtaKey:
    """A hashable identity of a TTA set (1.0 is always among the scales)."""
    return tuple(tta.flips), tuple(sorted(set(tta.scales) | {1.0})), tta.merge


def no_tta(merge: str = "mean") -> TtaConfig:
    return TtaConfig(flips=[], scales=[1.0], merge=merge)  # type: ignore[arg-type]


def tta_candidates(p: InferParams) -> list[tuple[str, TtaConfig]]:
    """The greedy search's steps: each flip, then each extra scale, as an addition to the current set."""
    steps: list[tuple[str, TtaConfig]] = [
        (f, TtaConfig(flips=[f], scales=[1.0], merge=p.tta_merge)) for f in p.tta_flips
    ]
    steps += [(f"scale {s:g}", TtaConfig(flips=[], scales=[1.0, s], merge=p.tta_merge)) for s in p.tta_scales]
    return steps


def _merge_tta(a: TtaConfig, b: TtaConfig) -> TtaConfig:
    flips = list(dict.fromkeys([*a.flips, *b.flips]))
    scales = sorted(set(a.scales) | set(b.scales))
    return TtaConfig(flips=flips, scales=scales, merge=a.merge)  # type: ignore[arg-type]


class TtaSearch:
    """Greedy TTA selection of one model config on its folds' validation images (``infer.tta_select_images`` of
    them, the same share from each fold), through the sliding window when the runtime has a tile."""

    def __init__(
        self,
        models_by_fold: dict[int, nn.Module],
        data: OofData,
        truth: Callable[[int], np.ndarray],
        rt: Runtime,
        num_classes: int,
        metric: str,
    ) -> None:
        p: InferParams = rt.p  # annotated: the DVC params test follows reads through it
        total = sum(len(v) for v in data.ids.values())
        share = 1.0 if p.tta_select_images <= 0 else min(1.0, p.tta_select_images / max(1, total))
        self.limit = {f: max(1, int(round(len(data.ids[f]) * share))) for f in data.ids}
        self.models_by_fold, self.data, self.truth, self.rt = models_by_fold, data, truth, rt
        self.num_classes, self.metric, self.merge = num_classes, metric, p.tta_merge
        self.steps = tta_candidates(p)
        self._matrices: Memo[ImageMatrices] = Memo(self._predict)

    def _predict(self, key: TtaKey) -> ImageMatrices:
        tta = TtaConfig(flips=list(key[0]), scales=list(key[1]), merge=key[2])  # type: ignore[arg-type]
        fwd = {f: self.rt.group([m], tta) for f, m in self.models_by_fold.items()}
        preds = predict_oof(fwd, self.data, self.rt, self.limit)
        return image_matrices(preds, self.truth, self.data.fold_of(), self.num_classes, self.rt.multilabel)

    def matrices(self, tta: TtaConfig) -> ImageMatrices:
        """Per-image matrices of the selection images under ``tta`` (predicted on first use)."""
        return self._matrices(tta_key(tta))

    def greedy(self, held_out: int | None = None) -> tuple[TtaConfig, list[dict[str, Any]]]:
        """The chosen set and every candidate's scores, chosen on every fold or on all folds but ``held_out``."""

        def score(tta: TtaConfig) -> dict[str, Any]:
            m = self.matrices(tta)
            return m.scores(self.metric, None if held_out is None else m.folds != held_out)

        current = no_tta(self.merge)
        s = score(current)
        best = s["score"]
        report = [{"tta": "none", "oof_mIoU": s["mIoU"], "score": best, "kept": True}]
        for name, step in self.steps:
            cand = _merge_tta(current, step)
            s = score(cand)
            kept = s["score"] > best
            report.append(
                {"tta": describe(cand), "added": name, "oof_mIoU": s["mIoU"], "score": s["score"], "kept": kept}
            )
            if held_out is None:
                print(f"  TTA {describe(cand):<28} OOF {self.metric} {s['score']:.5f} {'kept' if kept else 'dropped'}")
            if kept:
                current, best = cand, s["score"]
        return current, report


def oof_unavailable(layout: Layout, members: Sequence[Member]) -> str | None:
    """Why the members have no OOF predictions to choose on (a missing file, named), or ``None`` when they do."""
    if any(m.fold < 0 for m in members):
        return "--checkpoint members have no out-of-fold predictions"
    for m in members:
        path = missing_oof(layout, [m.model], [m.fold], m.round)
        if path is not None:
            return f"{path} not found"
    return None


@dataclasses.dataclass
class TtaChoice:
    """A config's TTA set, how it was chosen, and the search (for cross-fitting) when it was ``auto``."""

    tta: TtaConfig
    candidates: list[dict[str, Any]] | None = None
    search: TtaSearch | None = None
    fallback: str | None = None


def resolve_tta(
    mode: str,
    param: str,
    config_tta: TtaConfig,
    unavailable: str | None,
    allow_fallback: bool,
    search: Callable[[], TtaSearch],
) -> TtaChoice:
    """The TTA set for ``mode`` (``none`` | ``config`` | ``auto``), read from ``param`` (e.g. ``infer.tta``).

    Args:
        mode: the param's value.
        param: its name, for the error and the fallback note.
        config_tta: the model config's own set.
        unavailable: why there are no OOF predictions (:func:`oof_unavailable`), or ``None``.
        allow_fallback: ``infer.allow_fallback``: without OOF, use the config's set instead of failing.
        search: builds the config's :class:`TtaSearch` (called only for ``auto`` with OOF).

    Raises:
        UserError: ``auto`` without OOF predictions and without ``allow_fallback``.
    """
    if mode == "none":
        return TtaChoice(no_tta(config_tta.merge))
    if mode == "config":
        return TtaChoice(config_tta)
    if unavailable is not None:
        if not allow_fallback:
            raise UserError(
                f"{param}: auto chooses TTA on out-of-fold predictions, but {unavailable}; finish training "
                f"(dvc repro), set {param}: config, or set infer.allow_fallback: true to use the config's TTA set"
            )
        note = f"{param} auto -> config ({unavailable})"
        print(f"fallback: {note}")
        return TtaChoice(config_tta, fallback=note)
    s = search()
    tta, candidates = s.greedy()
    return TtaChoice(tta, candidates, s)
