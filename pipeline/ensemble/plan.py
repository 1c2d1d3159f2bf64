"""The ensemble's plan, every choice made on out-of-fold (OOF) predictions and never on test truth: the TTA set of
each model config, its temperature (``infer.calibrate``) and the weights across configs (``infer.weights: fit``).

Each choice is scored twice in the competition metric (:mod:`pipeline.oof`): in-sample (chosen and scored on every
fold) and cross-fitted (fold k scored with the choices made without fold k, pooled over k): the estimate to compare
with the leaderboard. Each config's OOF probabilities are predicted once per TTA set over every OOF image, and every
candidate's per-image confusion matrices once, so the cross-fitted choices re-read them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from pipeline import postprocess as pp
from pipeline import threshold as thr
from pipeline.config import Params, TtaConfig
from pipeline.ensemble.choose import TtaChoice, TtaSearch, resolve_tta, tta_key
from pipeline.ensemble.data import OofData, oof_data, predict_oof
from pipeline.ensemble.fit import ascend_weights, combine, fit_temperature, temper
from pipeline.ensemble.members import Loaded, Runtime
from pipeline.errors import UserError
from pipeline.metrics import counter, score_matrices
from pipeline.oof import CrossFit, Memo, cross_fit, truth_reader
from pipeline.paths import Layout
from pipeline.store import SpillDict, Subset
from pipeline.tta import describe


@dataclasses.dataclass
class Plan:
    """What the test forward uses (per config: TTA set and temperature; weights in config order) and the report."""

    ttas: dict[str, TtaConfig]
    temps: dict[str, float]
    weights: list[float]
    report: dict[str, Any]
    fallback: list[str]
    postprocess: dict[int, pp.Rule] = dataclasses.field(default_factory=dict)  # class -> its rule
    # binary tasks: class 1 where its probability is over it (None: the argmax); multilabel: one per class 1..K
    threshold: float | tuple[float, ...] | None = None


def plan_ensemble(params: Params, layout: Layout, loaded: Loaded, rt: Runtime, unavailable: str | None) -> Plan:
    """Choose TTA sets, temperatures and weights on OOF (``unavailable``: why there is no OOF, or ``None``)."""
    p, metric, names = rt.p, params.metric.name, list(loaded.groups)
    # OOF of the folds every member group has (a --checkpoint run may hold a few folds only)
    folds = sorted(set.intersection(*(set(by_fold) for by_fold in loaded.groups.values())))
    data = oof_data(layout, params, folds) if unavailable is None and folds else None
    unavailable = unavailable or (None if folds else "the member groups share no fold to score out of fold")
    truth_of = truth_reader(layout)
    choices: dict[str, TtaChoice] = {}
    for name, by_fold in loaded.groups.items():
        if p.tta == "auto" and data is not None:
            print(f"{name}: choosing TTA on out-of-fold predictions")
        choices[name] = resolve_tta(
            p.tta,
            "infer.tta",
            loaded.cfgs[name].tta,
            unavailable,
            p.allow_fallback,
            lambda by_fold=by_fold: TtaSearch(
                {f: m for f, m in by_fold.items() if f in folds}, data, truth_of, rt, len(loaded.classes), metric
            ),  # type: ignore[arg-type]
        )
    fallback = [c.fallback for c in choices.values() if c.fallback]
    ttas = {n: c.tta for n, c in choices.items()}
    per_model: dict[str, dict[str, Any]] = {n: {"tta": describe(t)} for n, t in ttas.items()}
    for n, c in choices.items():
        if c.candidates is not None:
            per_model[n]["tta_candidates"] = c.candidates
    equal = [1.0 / len(names)] * len(names)
    if data is None:
        if p.weights == "fit" and len(names) > 1:
            if not p.allow_fallback:
                raise UserError(
                    f"infer.weights: fit fits on out-of-fold predictions, but {unavailable}; set infer.weights: equal, "
                    "or set infer.allow_fallback: true to use equal weights"
                )
            fallback.append(f"infer.weights fit -> equal ({unavailable})")
            print(f"fallback: {fallback[-1]}")
        for n in names:
            print(f"{n}: TTA {per_model[n]['tta']}")
        return Plan(ttas, {}, equal, {"per_model": per_model}, fallback)
    planner = _OofPlanner(params, layout, loaded, rt, data, truth_of, choices, per_model, fallback)
    try:
        return planner.plan()
    finally:
        planner.close()


class Decision(NamedTuple):
    """How one pseudo set turns probabilities into a class map: the binary threshold (``None``: the argmax), then
    the post-processing rules (class -> rule; none: unchanged)."""

    threshold: float | tuple[float, ...] | None  # multilabel: one per class
    rules: dict[int, pp.Rule]


def pseudo_rules(
    params: Params, layout: Layout, loaded: Loaded, rt: Runtime, ttas: dict[str, TtaConfig], sets: list[int | str]
) -> tuple[dict[str, Decision], dict[str, Any]]:
    """The pseudo-labelling ensemble's threshold (``infer.threshold``) and post-processing (``infer.postprocess``),
    per pseudo set, fitted on round-1 OOF predictions as infer fits its own (:meth:`_OofPlanner.set_rules`: set k's
    never sees fold k)."""
    folds = sorted(set.intersection(*(set(by_fold) for by_fold in loaded.groups.values())))
    choices = {n: TtaChoice(t) for n, t in ttas.items()}
    planner = _OofPlanner(
        params, layout, loaded, rt, oof_data(layout, params, folds), truth_reader(layout), choices, {}, []
    )
    try:
        return planner.set_rules(sets)
    finally:
        planner.close()


class _OofPlanner:
    """The OOF half of :func:`plan_ensemble`: probabilities and matrices predicted once, choices cross-fitted.

    Memory stays flat in the number of OOF images: each TTA set's probabilities and the truth masks are spilled to
    disk (:mod:`pipeline.store`) and read back one image at a time; only per-image confusion matrices stay in RAM.
    """

    def __init__(  # noqa: PLR0913 - the planner's inputs, each from plan_ensemble
        self,
        params: Params,
        layout: Layout,
        loaded: Loaded,
        rt: Runtime,
        data: OofData,
        truth_of: Callable[[int], np.ndarray],
        choices: dict[str, TtaChoice],
        per_model: dict[str, dict[str, Any]],
        fallback: list[str],
    ) -> None:
        self.p, self.metric, self.rt, self.data, self.loaded = rt.p, params.metric.name, rt, data, loaded
        self.names, self.choices, self.per_model, self.fallback = list(loaded.groups), choices, per_model, fallback
        self.num_classes, self.multilabel = len(loaded.classes), loaded.multilabel
        if self.multilabel and self.p.calibrate:
            raise UserError(
                "infer.calibrate fits a softmax temperature: not for multilabel masks (a sigmoid per class); set "
                "infer.calibrate: false"
            )
        fold_of = data.fold_of()
        self.ids = [str(i) for f in data.ids for i in data.ids[f]]  # every OOF image, fold by fold
        self.image_folds = np.asarray([fold_of[int(i)] for i in self.ids], np.int64)
        self.scratch = layout.scratch_dir
        self.truth = SpillDict(self.scratch)  # (H, W) uint8 masks, read once
        for i in self.ids:
            self.truth[i] = truth_of(int(i))
        self._probs: Memo[SpillDict] = Memo(self._predict)
        self._model_mats: Memo[np.ndarray] = Memo(self._model_matrices)
        self._ens_mats: Memo[np.ndarray] = Memo(self._ensemble_matrices)
        self._argmax: Memo[SpillDict] = Memo(self._ensemble_argmax)
        self._thr_stats: Memo[list[tuple[np.ndarray, np.ndarray]]] = Memo(self._threshold_stats)
        self._sweeps: Memo[np.ndarray] = Memo(self._class_sweep)  # multilabel: per class and current thresholds
        self._pp_stacks: Memo[pp.Stack] = Memo(self._pp_stack)
        self._holes: Memo[np.ndarray] = Memo(self._hole_stack)
        pixels = int(np.median([self.truth[i].size for i in self.ids]))
        self.grid = pp.Grid.for_pixels(pixels, shapes=self.p.postprocess == "shapes")

    # -- predicted once per key
    def _predict(self, key: tuple[str, Any]) -> dict[str, np.ndarray]:
        name, tk = key
        tta = TtaConfig(flips=list(tk[0]), scales=list(tk[1]), merge=tk[2])  # type: ignore[arg-type]
        fwd = {f: self.rt.group([m], tta) for f, m in self.loaded.groups[name].items() if f in self.data.ids}
        probs = SpillDict(self.scratch)
        for i, pr in predict_oof(fwd, self.data, self.rt):
            probs[str(i)] = pr.astype(np.float16)
        return probs

    def _ensemble_probs(self, key: tuple[Any, ...]) -> Any:
        """(image id, (C, H, W) probabilities of the ensemble ``key[:3]``) for every OOF image, streamed."""
        tks, temps, weights = key[:3]
        per_model = [self._probs((n, tk)) for n, tk in zip(self.names, tks)]
        for i in self.ids:
            outs = [pm[i] if t == 1.0 else temper(pm[i], t).astype(np.float16) for pm, t in zip(per_model, temps)]
            yield i, combine(outs, weights, self.p.space, self.multilabel)

    def _ensemble_preds(self, key: tuple[Any, ...]) -> Any:
        """(image id, (H, W) class map of the ensemble ``key``) for every OOF image, streamed: its argmax, or with a
        fourth element, the binary threshold (:func:`pipeline.threshold.decide`, as infer decides)."""
        threshold = key[3] if len(key) > 3 else None
        for i, probs in self._ensemble_probs(key):
            yield i, thr.decide(probs, threshold, self.multilabel)

    def _class_sweep(self, key: tuple[Any, ...]) -> np.ndarray:
        """(T, N, C, 2, 2): every OOF image's matrices of the ensemble ``key[0]`` as class ``key[1]``'s threshold
        takes each candidate, the others at ``key[2]`` (:func:`pipeline.threshold.class_sweep`)."""
        ens, j, current = key
        mats = [thr.class_sweep(p, self.truth[i], j, current, thr.THRESHOLDS) for i, p in self._ensemble_probs(ens)]
        return np.stack(mats, axis=1)

    def _threshold_stats(self, key: tuple[Any, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per OOF image, the threshold search's counts of the ensemble ``key`` (:func:`.threshold.image_counts`)."""
        return [thr.image_counts(p, self.truth[i], thr.THRESHOLDS) for i, p in self._ensemble_probs(key)]

    def threshold(self, ens: Any) -> tuple[CrossFit[tuple[Any, ...]], dict[str, Any]]:
        """The binary threshold fitted on the ensemble's OOF (fold k's without fold k's images, on the ensemble
        chosen without it: cross-fitted as every other choice): the cross-fit, whose choices are the ensemble keys
        with the threshold appended, and the report's section."""

        def choose(k: int | None) -> tuple[Any, ...]:
            key = ens.choice if k is None else ens.fold_choices[k]
            keep = np.ones(len(self.ids), bool) if k is None else self.image_folds != k
            if self.multilabel:  # one threshold per class, coordinate ascent over the classes
                sweep = lambda j, current: self._sweeps((key, j, current))  # noqa: E731
                ts, _, _ = thr.fit_multilabel(sweep, self.num_classes, self.metric, keep)
                return (*key, ts)
            stats = [s for s, w in zip(self._thr_stats(key), keep) if w]
            t, _, _ = thr.fit(stats, thr.THRESHOLDS, self.metric, lambda: self._ens_mats(key)[keep])
            return (*key, t)

        cf = cross_fit(self.image_folds, choose, self._ens_mats, self.metric)
        section = {
            "value": _listed(cf.choice[3]),
            "candidates": list(thr.THRESHOLDS),
            "per_fold": {str(k): _listed(c[3]) for k, c in cf.fold_choices.items()},
            "before": {"oof_mIoU": ens.in_sample_miou, **ens.figures()},
            "after": {"oof_mIoU": cf.in_sample_miou, **cf.figures()},
        }
        chosen = "argmax" if cf.choice[3] is None else cf.choice[3]
        print(
            f"threshold: {chosen}; {self.metric} in-sample {ens.in_sample:.5f} -> {cf.in_sample:.5f}, cross-fitted "
            f"{_fmt(ens.cross_fitted)} -> {_fmt(cf.cross_fitted)}"
        )
        return cf, section

    def thresholds_apply(self) -> tuple[bool, str]:
        """Whether ``infer.threshold`` fits here, and why not."""
        if self.p.threshold == "none":
            return False, "none (infer.threshold: none)"
        if self.multilabel:  # one threshold per class
            return True, ""
        if self.num_classes != 2:
            return False, f"none: a threshold is for binary tasks; {self.num_classes} classes keep the argmax"
        return True, ""

    def postprocesses(self) -> bool:
        """Whether ``infer.postprocess`` fits rules here (not on multilabel masks yet: said once)."""
        if self.p.postprocess == "none":
            return False
        if self.multilabel:
            print("post-processing: none (its rules are for class maps; multilabel masks are not post-processed yet)")
            return False
        return True

    def _ensemble_argmax(self, key: tuple[Any, ...]) -> SpillDict:
        """The ensemble ``key``'s (H, W) uint8 argmax of every OOF image, spilled: post-processing re-reads it."""
        preds = SpillDict(self.scratch)
        for i, pred in self._ensemble_preds(key):
            preds[i] = pred.astype(np.uint8)
        return preds

    def _pp_stack(self, key: tuple[Any, ...]) -> pp.Stack:
        """The post-processing search's per-image removal statistics of the ensemble ``key``."""
        preds = self._argmax(key)
        stats = [pp.image_stats(preds[i], self.truth[i], self.num_classes, self.grid.areas) for i in self.ids]
        return pp.Stack(stats, self.grid)

    def _hole_stack(self, key: tuple[tuple[Any, ...], tuple[tuple[int, pp.Rule], ...]]) -> np.ndarray:
        """(N, C, C) hole statistics of the ensemble ``key[0]``'s argmax after the removal rules ``key[1]``."""
        preds, removal = self._argmax(key[0]), dict(key[1])
        return np.stack([pp.hole_stats(pp.apply(preds[i], removal), self.truth[i], self.num_classes) for i in self.ids])

    def _pp_matrices(self, key: tuple[Any, ...], rules: dict[int, pp.Rule]) -> np.ndarray:
        """(N, C, C) matrices of the ensemble ``key`` with ``rules`` applied (holes counted when a rule fills)."""
        holes = None
        if any(r.fill for r in rules.values()):
            removal = tuple(sorted((c, r._replace(fill=False)) for c, r in rules.items() if r.removes))
            holes = self._holes((key, removal))
        return self._pp_stacks(key).matrices_for(rules, holes=holes)

    def postprocess(self, ens: Any) -> tuple[CrossFit[tuple[Any, dict[int, pp.Rule]]], dict[str, Any]]:
        """Per-class rules fitted on the ensemble's OOF (fold k's on the ensemble chosen without it: cross-fitted as
        every other choice): the cross-fit (``.choice[1]`` the rules, ``.fold_choices[k][1]`` fold k's), the report's
        section (the rules, the grid, the figures before) and the figures after, in-sample and cross-fitted."""

        def choose(k: int | None) -> tuple[Any, dict[int, pp.Rule]]:
            key = ens.choice if k is None else ens.fold_choices[k]
            where = None if k is None else self.image_folds != k
            stack = self._pp_stacks(key)
            rules = pp.fit(stack, self.grid, self.metric, where)[0]
            if self.grid.fill:  # holes on the map the removal leaves
                holes = self._holes((key, tuple(sorted(rules.items()))))
                rules = pp.fit_fill(stack, rules, holes, self.metric, where)[0]
            return key, rules

        cf = cross_fit(self.image_folds, choose, lambda c: self._pp_matrices(*c), self.metric)
        rules = cf.choice[1]
        section = {
            "rules": pp.describe(rules, self.loaded.classes),
            "grid": {
                "min_area": list(self.grid.areas),
                "min_total": list(self.grid.totals),
                "largest": self.grid.largest,
                "fill": self.grid.fill,
            },
            "before": {"oof_mIoU": ens.in_sample_miou, **ens.figures()},  # the ensemble's argmax, unchanged
        }
        print(
            f"post-processing: {section['rules'] or 'no rule helps'}; {self.metric} in-sample {ens.in_sample:.5f} -> "
            f"{cf.in_sample:.5f}, cross-fitted {_fmt(ens.cross_fitted)} -> {_fmt(cf.cross_fitted)}"
        )
        return cf, {"section": section, "after": {"oof_mIoU": cf.in_sample_miou, **cf.figures()}}

    def set_rules(self, sets: list[int | str]) -> tuple[dict[str, Decision], dict[str, Any]]:
        """Each pseudo set's threshold (``infer.threshold``) and post-processing rules (``infer.postprocess``) for
        the ensemble of the chosen TTA sets at equal weights (as it labels): set k's fitted without fold k's images,
        so round-2 fold k's validation truth never shapes its pseudo-labels (none with one fold); set ``all``'s on
        every fold; with the report (``threshold`` and the post-processing's sections)."""
        key = (
            tuple(tta_key(self.choices[n].tta) for n in self.names),
            tuple(1.0 for _ in self.names),
            tuple([1.0 / len(self.names)] * len(self.names)),
        )
        ens: CrossFit[Any] = cross_fit(self.image_folds, lambda k: key, self._ens_mats, self.metric)
        report: dict[str, Any] = {}
        fits, why = self.thresholds_apply()
        if fits:
            ens, report["threshold"] = self.threshold(ens)
        else:
            report["threshold"] = {"value": None, "why": why}
        cf = None
        if self.postprocesses():
            cf, figures = self.postprocess(ens)
            report.update({**figures["section"], "after": figures["after"]})

        def of_set(s: int | str) -> Decision:
            t = (ens.choice if s == "all" else ens.fold_choices.get(s, (None,) * 4))[3] if fits else None
            rules = {} if cf is None else cf.choice[1] if s == "all" else cf.fold_choices.get(s, (None, {}))[1]
            return Decision(t, rules)

        return {str(s): of_set(s) for s in sets}, report

    def close(self) -> None:
        """Release the spill files (they have no name on disk; this frees their space now)."""
        self.truth.close()
        for spilled in (*self._probs.values.values(), *self._argmax.values.values()):
            spilled.close()

    def _model_matrices(self, key: tuple[str, Any], temperature: float = 1.0) -> np.ndarray:
        probs = self._probs(key)
        cm = counter(self.num_classes, self.multilabel, per_image=True)
        for i in self.ids:
            pr = probs[i] if temperature == 1.0 else temper(probs[i], temperature).astype(np.float16)
            cm.update(thr.decide(pr, None, self.multilabel), self.truth[i])
        return cm.image_matrices

    def _ensemble_matrices(self, key: tuple[Any, ...]) -> np.ndarray:
        cm = counter(self.num_classes, self.multilabel, per_image=True)
        for i, pred in self._ensemble_preds(key):
            cm.update(pred, self.truth[i])
        return cm.image_matrices

    # -- choices, on every fold (held_out None) or without fold k
    def fold_tta(self, name: str, held_out: int | None) -> Any:
        c = self.choices[name]
        return tta_key(c.tta if c.search is None or held_out is None else c.search.greedy(held_out)[0])

    def choose(self, held_out: int | None) -> tuple[Any, ...]:
        fit = self.image_folds != held_out  # every image when held_out is None
        tks = tuple(self.fold_tta(n, held_out) for n in self.names)
        temps = tuple(1.0 for _ in self.names)
        if self.p.calibrate:
            truth = Subset(self.truth, [i for i, keep in zip(self.ids, fit) if keep])
            temps = tuple(fit_temperature(self._probs((n, tk)), truth) for n, tk in zip(self.names, tks))
        n = len(self.names)
        weights = [1.0 / n] * n
        if self.p.weights == "fit":
            weights, _, _ = ascend_weights(
                lambda w: score_matrices(self.metric, self._ens_mats((tks, temps, tuple(round(x, 9) for x in w)))[fit]),
                n,
            )
        return tks, temps, tuple(weights)

    def plan(self) -> Plan:
        for name in self.names:
            entry = self.per_model[name]
            cf = cross_fit(
                self.image_folds,
                lambda k, name=name: self.fold_tta(name, k),
                lambda tk, name=name: self._model_mats((name, tk)),
                self.metric,
            )
            entry["oof_mIoU"] = cf.in_sample_miou
            entry.update(cf.figures())
            print(
                f"{name}: TTA {entry['tta']}, OOF mIoU {entry['oof_mIoU']:.5f}, {self.metric} in-sample "
                f"{cf.in_sample:.5f} cross-fitted {_fmt(cf.cross_fitted)}"
            )
        ens = cross_fit(self.image_folds, self.choose, self._ens_mats, self.metric)
        tks, temps, weights = ens.choice
        if self.p.calibrate:  # a temperature keeps each config's own argmax; it matters in the weighted average
            for name, tk, t in zip(self.names, tks, temps):
                self.per_model[name]["temperature"] = t
                self.per_model[name]["oof_mIoU_calibrated"] = score_matrices(
                    "miou", self._model_matrices((name, tk), t)
                )
        equal = tuple([1.0 / len(self.names)] * len(self.names))
        report: dict[str, Any] = {"per_model": self.per_model}
        report["oof_mIoU_equal_weights"] = score_matrices("miou", self._ens_mats((tks, temps, equal)))
        report["oof_mIoU"] = ens.in_sample_miou
        report.update(ens.figures())
        report["cross_fitted_choices"] = {
            str(k): {
                "tta": {n: describe(_tta(tk)) for n, tk in zip(self.names, c[0])},
                "temperature": dict(zip(self.names, c[1])),
                "weights": dict(zip(self.names, c[2])),
            }
            for k, c in ens.fold_choices.items()
        }
        print(
            f"ensemble OOF mIoU: equal weights {report['oof_mIoU_equal_weights']:.5f}, {self.p.weights} weights "
            f"{report['oof_mIoU']:.5f}; {self.metric} in-sample {ens.in_sample:.5f}, "
            f"cross-fitted {_fmt(ens.cross_fitted)}"
        )
        fits, why = self.thresholds_apply()
        if fits:  # the top-level OOF figures are then the submission's: ensemble + threshold (+ rules)
            ens, report["threshold"] = self.threshold(ens)
            report["oof_mIoU"] = ens.in_sample_miou
            report.update(ens.figures())
        elif self.p.threshold != "none":
            report["threshold"] = {"value": None, "why": why}
        rules: dict[int, pp.Rule] = {}
        if self.postprocesses():  # the top-level OOF figures are then the submission's: ensemble + rules
            cf, figures = self.postprocess(ens)
            rules = cf.choice[1]
            report["postprocess"] = figures["section"]
            report.update(figures["after"])
        ttas = {n: _tta(tk) for n, tk in zip(self.names, tks)}
        temps_used = dict(zip(self.names, temps)) if self.p.calibrate else {}
        threshold = ens.choice[3] if fits else None
        return Plan(ttas, temps_used, list(weights), report, self.fallback, rules, threshold)


def _tta(tk: Any) -> TtaConfig:
    return TtaConfig(flips=list(tk[0]), scales=list(tk[1]), merge=tk[2])  # type: ignore[arg-type]


def _listed(t: Any) -> Any:
    """A threshold for JSON: a multilabel tuple (one per class) as a list."""
    return list(t) if isinstance(t, tuple) else t


def _fmt(x: float | None) -> str:
    return "n/a (one fold)" if x is None else f"{x:.5f}"
