"""Pseudo-labelling: the round-1 ensemble (with TTA) labels the test images for a second training round.

Pixels whose top-class probability is under ``threshold`` become ignore (255); an image whose confident share is
under ``min_confident`` is dropped. Pseudo-labelled images only ever join the training side of a fold. With ``soft``
each kept image's probabilities are written beside its mask too (:func:`soft_label`), for round 2 to learn them.

The leak: a round-1 model of fold j != k was trained on fold k's validation images, so pseudo-labels from the full
ensemble carry fold k's validation labels into round-2 fold k and inflate its OOF score. ``source: leak_free``
(the default) therefore makes one pseudo set per fold k from the round-1 models of fold k only (they never saw
fold k's validation images); ``source: full`` makes one set from every fold model, shared by all folds.

Post-processing (``infer.postprocess``) is applied as infer applies it, with rules fitted the same way on round-1
OOF predictions of the labelling ensemble (:func:`pipeline.ensemble.plan.pseudo_rules`): set k's rules without fold
k's images (none when fold k is the only fold), set ``all``'s on every fold. What the rules change is labelled with
the class they give it (a removed component as background, a filled hole as its class), confident.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline import postprocess as pp
from pipeline.config import Params, TtaConfig
from pipeline.data.dataset import SegDataset
from pipeline.distributed import resolve_device
from pipeline.ensemble.choose import TtaSearch, oof_unavailable, resolve_tta
from pipeline.ensemble.data import oof_data, test_set
from pipeline.ensemble.members import (
    EnsembleForward,
    GroupForward,
    Loaded,
    Runtime,
    find_members,
    load_members,
    windowed,
)
from pipeline.ensemble.plan import Decision, pseudo_rules
from pipeline.errors import UserError
from pipeline.io import atomic_dir, read_json, write_csv, write_json, write_npy, write_png
from pipeline.labels import IGNORE_INDEX, class_pixels
from pipeline.oof import truth_reader
from pipeline.paths import Layout, PseudoSetFiles
from pipeline.plan.apply import planned_params
from pipeline.predict import iter_logits
from pipeline.rounds import PSEUDO_INDEX_COLUMNS, pseudo_round_runs, pseudo_sets, skip_pseudo_round
from pipeline.threshold import decide


def confident_mask(
    probs: np.ndarray, threshold: float, decision: float | None = None, multilabel: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) probabilities -> ((H, W) uint8 class mask with 255 where top prob < threshold, confident (H, W));
    the class map is :func:`pipeline.threshold.decide`'s with ``decision`` (the binary threshold; None: argmax).
    ``multilabel`` (per-class sigmoids): the bit field, confident where every class is, its probability or its
    complement at least ``threshold``.

    >>> p = np.array([[[0.5, 0.5]], [[0.95, 0.6]], [[0.02, 0.03]]])  # no class, class 1, class 2 (two pixels)
    >>> [a.tolist() for a in confident_mask(p, 0.9, multilabel=True)]
    [[[1, 255]], [[True, False]]]
    """
    if multilabel:
        top = np.maximum(probs[1:], 1 - probs[1:]).min(0)
    else:
        top = probs.max(0)
    mask = decide(probs, decision, multilabel).astype(np.uint8)
    confident = top >= threshold
    mask[~confident] = IGNORE_INDEX
    return mask, confident


def pseudo_label(
    probs: np.ndarray,
    threshold: float,
    rules: dict[int, pp.Rule],
    decision: float | None = None,
    multilabel: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One test image's pseudo-label from its (C, H, W) probabilities: the (H, W) uint8 mask (:func:`confident_mask`
    with ``rules`` applied: what they change is labelled as they say, confident), the confident pixels, the
    post-processed class map (the argmax, or over the binary threshold ``decision``, as infer decides; multilabel:
    the bit field) and the pixels the rules changed."""
    mask, conf = confident_mask(probs, threshold, decision, multilabel)
    pred = decide(probs, decision, multilabel)
    changed = np.zeros(pred.shape, bool)
    if rules:
        post = pp.apply(pred, rules)
        changed = post != pred
        mask[changed], conf, pred = post[changed], conf | changed, post
    return mask, conf, pred, changed


def soft_label(probs: np.ndarray, pred: np.ndarray, changed: np.ndarray) -> np.ndarray:
    """``pseudo.soft``: the teacher's (C, H, W) probabilities as uint8 ``round(p * 255)``, except where the rules
    ``changed`` the label: there the class they gave it (``pred``) alone, 255.

    >>> probs = np.array([[[0.7, 0.2]], [[0.3, 0.8]]])  # two classes, one row of two pixels
    >>> soft_label(probs, np.array([[0, 0]]), np.array([[False, True]])).tolist()  # a rule set pixel 2 to class 0
    [[[178, 255]], [[76, 0]]]
    """
    soft = np.rint(probs * 255).astype(np.uint8)
    soft[:, changed] = 0
    ys, xs = np.nonzero(changed)
    soft[pred[changed], ys, xs] = 255
    return soft


def set_rules(
    params: Params,
    layout: Layout,
    loaded: Loaded,
    rt: Runtime,
    ttas: dict[str, TtaConfig],
    sets: list[int | str],
    unavailable: str | None,
) -> tuple[dict[str, Decision], dict[str, Any]]:
    """Each set's threshold (``infer.threshold``) and post-processing rules (``infer.postprocess``), fitted on
    round-1 OOF, leak-free per fold, and the report; none where both are ``none`` or there is no OOF
    (``unavailable``: why)."""
    none = {str(s): Decision(None, {}) for s in sets}
    if params.infer.postprocess == "none" and params.infer.threshold == "none":
        return none, {"rules": "none (infer.postprocess: none)", "threshold": {"value": None}}
    if unavailable is not None:
        print(f"pseudo: no threshold or post-processing ({unavailable})")
        return none, {"rules": f"none ({unavailable})", "threshold": {"value": None, "why": unavailable}}
    decisions, report = pseudo_rules(params, layout, loaded, rt, ttas, sets)
    classes = read_json(layout.classes_json)
    report["per_set"] = {s: pp.describe(d.rules, classes) for s, d in decisions.items()}
    report["threshold_per_set"] = {s: d.threshold for s, d in decisions.items()}
    return decisions, report


def pseudo_ttas(
    params: Params, layout: Layout, loaded: Loaded, rt: Runtime, unavailable: str | None
) -> tuple[dict[str, TtaConfig], list[str]]:
    """Each model config's TTA set by ``pseudo.tta`` (the same none / config / auto resolution as infer; auto chooses
    on OOF) and the fallbacks taken (``unavailable``: why there is no OOF, or ``None``)."""
    p, num_classes = params.pseudo, len(loaded.classes)
    data = oof_data(layout, params, params.train.folds) if p.tta == "auto" and unavailable is None else None
    ttas: dict[str, TtaConfig] = {}
    fallback = []
    for name, by_fold in loaded.groups.items():
        choice = resolve_tta(
            p.tta,
            "pseudo.tta",
            loaded.cfgs[name].tta,
            unavailable,
            params.infer.allow_fallback,
            lambda by_fold=by_fold: TtaSearch(  # type: ignore[misc]
                by_fold, data, truth_reader(layout), rt, num_classes, params.metric.name
            ),
        )
        ttas[name] = choice.tta
        if choice.fallback:
            fallback.append(f"{name}: {choice.fallback}")
    return ttas, fallback


def make_pseudo_labels(params: Params, layout: Layout, round_: int = 1) -> dict[str, Any]:
    """Write the pseudo-label sets of ``round_`` (PNG masks + index.csv + summary.json per set)."""
    p = params.pseudo
    if not pseudo_round_runs(params, round_):
        return skip_pseudo_round(params, layout, round_)  # empty sets keep the DVC outputs defined
    params = planned_params(params, layout)  # the plan's sliding window and TTA candidates, as infer uses
    out: dict[str, Any] = {"round": round_, "source": p.source, "sets": {}}
    t0 = time.time()
    device = resolve_device(params.train.device)
    classes = read_json(layout.classes_json)
    tests = test_set(params)
    members = find_members(layout, params.train.models, params.train.folds, round_)
    loaded = load_members(members, device)
    ml = loaded.multilabel
    if ml and p.soft:
        raise UserError("pseudo.soft: soft pseudo-labels are for class maps, not multilabel masks; set it to false")
    rt = Runtime.of(loaded, params.infer, device)  # infer.sliding, batching and TTA batching apply here too
    tile, amp_ctx = rt.tile, rt.amp_ctx
    unavailable = oof_unavailable(layout, members)
    ttas, out["fallback"] = pseudo_ttas(params, layout, loaded, rt, unavailable)
    sets = pseudo_sets(params)
    decisions, out["postprocess"] = set_rules(params, layout, loaded, rt, ttas, sets, unavailable)
    ds = SegDataset(tests.paths, None, None, preload=False)
    for s in sets:
        folds = params.train.folds if s == "all" else [s]
        groups = [
            GroupForward(
                [loaded.groups[n][f] for f in folds],
                ttas[n],
                params.infer.space,
                batched=params.infer.batched_tta,
                multilabel=ml,
            )
            for n in params.train.models
        ]
        ensemble = EnsembleForward(groups, [1.0] * len(groups), params.infer.space, ml).to(device)
        forward, batch = windowed(ensemble, params.infer, tile), rt.batch
        rows, per_class_conf, per_class_all = [], np.zeros(len(classes)), np.zeros(len(classes))
        with atomic_dir(layout.pseudo_dir(round_, s)) as d:
            files = PseudoSetFiles(d)  # the set's temporary folder until the block ends
            batches = iter_logits(forward, ds, device, batch, sizes=lambda i: tests.sizes[i], amp_ctx=amp_ctx)
            with rt.memory(f"pseudo set {s}: labelling the test images"):  # out of memory: the infer key to lower
                for idx, logp in tqdm(batches, desc=f"pseudo set {s}", unit="batch", mininterval=1.0):
                    probs = rt.probabilities(logp).cpu().numpy()
                    for j, i in enumerate(idx.tolist()):
                        d = decisions[str(s)]
                        mask, conf, pred, changed = pseudo_label(probs[j], p.threshold, d.rules, d.threshold, ml)
                        per_class_all += class_pixels(np.bincount(pred.ravel(), minlength=256), len(classes), ml)
                        per_class_conf += class_pixels(np.bincount(pred[conf].ravel(), minlength=256), len(classes), ml)
                        share = float(conf.mean())
                        if share < p.min_confident:
                            continue
                        write_png(files.mask(tests.ids[i]), mask)
                        if p.soft:
                            write_npy(files.soft_for(files.mask(tests.ids[i])), soft_label(probs[j], pred, changed))
                        rows.append([tests.ids[i], tests.file_names[i], files.mask_name(tests.ids[i]), round(share, 4)])
            write_csv(files.index_csv, PSEUDO_INDEX_COLUMNS, rows)
            summary = {
                "set": str(s),
                "models": params.train.models,
                "folds": list(folds),
                "tta": {n: dataclasses.asdict(t) for n, t in ttas.items()},
                "test_images": len(ds),
                "kept_images": len(rows),
                "postprocess": pp.describe(decisions[str(s)].rules, classes),
                "threshold": decisions[str(s)].threshold,
                "confident_pixel_share_per_class": {
                    c["name"]: (
                        float(per_class_conf[c["index"]] / per_class_all[c["index"]])
                        if per_class_all[c["index"]]
                        else None
                    )
                    for c in classes
                },
            }
            write_json(files.summary_json, summary)
        print(f"pseudo set {s}: kept {len(rows)}/{len(ds)} test images")
        out["sets"][str(s)] = {"kept_images": len(rows), "test_images": len(ds)}
    out["seconds"] = round(time.time() - t0, 1)
    return out
