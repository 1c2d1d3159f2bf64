"""Pseudo-labelling: the round-1 ensemble (with TTA) labels the test images for a second training round.

Pixels whose top-class probability is under ``threshold`` become ignore (255); an image whose confident share is
under ``min_confident`` is dropped. Pseudo-labelled images only ever join the training side of a fold.

The leak: a round-1 model of fold j != k was trained on fold k's validation images, so pseudo-labels from the full
ensemble carry fold k's validation labels into round-2 fold k and inflate its OOF score. ``source: leak_free``
(the default) therefore makes one pseudo set per fold k from the round-1 models of fold k only (they never saw
fold k's validation images); ``source: full`` makes one set from every fold model, shared by all folds.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.config import Params, TtaConfig
from pipeline.data.dataset import SegDataset
from pipeline.infer import (
    EnsembleForward,
    GroupForward,
    choose_tta,
    find_members,
    image_batch,
    inference_tile,
    load_member,
    oof_data,
    resolve_device,
    test_set,
    windowed,
)
from pipeline.io import atomic_dir, read_json, write_csv, write_json, write_png
from pipeline.paths import Layout
from pipeline.plan.apply import planned_params
from pipeline.predict import autocast, iter_logits
from pipeline.rounds import PSEUDO_INDEX_COLUMNS, pseudo_round_runs, pseudo_sets, skip_pseudo_round

IGNORE = 255


def confident_mask(probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) probabilities -> ((H, W) uint8 class mask with 255 where top prob < threshold, confident (H, W))."""
    top = probs.max(0)
    mask = probs.argmax(0).astype(np.uint8)
    confident = top >= threshold
    mask[~confident] = IGNORE
    return mask, confident


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
    loaded = {(m.model, m.fold): load_member(m, device) for m in members}
    cfg0 = next(iter(loaded.values()))[1]
    tile = inference_tile(params.infer, [cfg for _, cfg, _ in loaded.values()])  # infer.sliding applies here too
    amp_ctx = lambda: autocast(device, cfg0.recipe.amp, cfg0.recipe.cpu_bf16)  # noqa: E731
    ttas: dict[str, TtaConfig] = {}
    for name in params.train.models:
        if p.tta == "none":
            ttas[name] = TtaConfig(flips=[], scales=[1.0])
        elif p.tta == "config":
            ttas[name] = loaded[(name, params.train.folds[0])][1].tta
        else:
            by_fold = {f: loaded[(name, f)][0] for f in params.train.folds}
            data = oof_data(layout, params, params.train.folds)
            ttas[name], _ = choose_tta(by_fold, data, layout, params.infer, len(classes), device, amp_ctx, tile)
    ds = SegDataset(tests.paths, None, None, preload=False)
    for s in pseudo_sets(params):
        folds = params.train.folds if s == "all" else [s]
        groups = [
            GroupForward(
                [loaded[(n, f)][0] for f in folds], ttas[n], params.infer.space, batched=params.infer.batched_tta
            )
            for n in params.train.models
        ]
        ensemble = EnsembleForward(groups, [1.0] * len(groups), params.infer.space).to(device)
        forward, batch = windowed(ensemble, params.infer, tile), image_batch(params.infer, tile)
        rows, per_class_conf, per_class_all = [], np.zeros(len(classes)), np.zeros(len(classes))
        with atomic_dir(layout.pseudo_dir(round_, s)) as d:
            for idx, logp in tqdm(
                iter_logits(forward, ds, device, batch, sizes=lambda i: tests.sizes[i], amp_ctx=amp_ctx),
                desc=f"pseudo set {s}",
                unit="batch",
                mininterval=1.0,
            ):
                probs = logp.softmax(1).cpu().numpy()
                for j, i in enumerate(idx.tolist()):
                    mask, conf = confident_mask(probs[j], p.threshold)
                    pred = probs[j].argmax(0)
                    per_class_all += np.bincount(pred.ravel(), minlength=len(classes))
                    per_class_conf += np.bincount(pred[conf].ravel(), minlength=len(classes))
                    share = float(conf.mean())
                    if share < p.min_confident:
                        continue
                    write_png(d / f"{tests.ids[i]}.png", mask)
                    rows.append([tests.ids[i], tests.file_names[i], f"{tests.ids[i]}.png", round(share, 4)])
            write_csv(d / "index.csv", PSEUDO_INDEX_COLUMNS, rows)
            summary = {
                "set": str(s),
                "models": params.train.models,
                "folds": list(folds),
                "tta": {n: dataclasses.asdict(t) for n, t in ttas.items()},
                "test_images": len(ds),
                "kept_images": len(rows),
                "confident_pixel_share_per_class": {
                    c["name"]: (
                        float(per_class_conf[c["index"]] / per_class_all[c["index"]])
                        if per_class_all[c["index"]]
                        else None
                    )
                    for c in classes
                },
            }
            write_json(d / "summary.json", summary)
        print(f"pseudo set {s}: kept {len(rows)}/{len(ds)} test images")
        out["sets"][str(s)] = {"kept_images": len(rows), "test_images": len(ds)}
    out["seconds"] = round(time.time() - t0, 1)
    return out
