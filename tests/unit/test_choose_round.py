"""``infer.round: auto``: the round whose OOF scores best, against a confusion matrix counted here pixel by pixel; the
leak (``pseudo.source: full``), one round, ties and a missing OOF file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import Params
from pipeline.errors import UserError
from pipeline.io import write_npz, write_png
from pipeline.paths import Layout
from pipeline.rounds import choose_round

C, FOLDS, IDS = 3, [0, 1], {0: [10, 11], 1: [12]}


def params(rounds: int = 1, source: str = "leak_free") -> Params:
    p = Params()
    return dataclasses.replace(
        p,
        pseudo=dataclasses.replace(p.pseudo, rounds=rounds, source=source),  # type: ignore[arg-type]
        train=dataclasses.replace(p.train, folds=FOLDS),
    )


def project(tmp_path: Path, noise: dict[int, float]) -> tuple[Layout, dict[int, np.ndarray], dict[int, dict]]:
    """Truth masks of three images and, per round, each fold's OOF probabilities: the truth one-hot plus noise of
    the round's size (more noise, more wrong pixels)."""
    layout = Layout(tmp_path)
    rng = np.random.default_rng(0)
    truth = {i: rng.integers(0, C, (6, 7)).astype(np.uint8) for ids in IDS.values() for i in ids}
    truth[11][0, :3] = 255  # ignored pixels count nowhere
    for i, t in truth.items():
        write_png(layout.mask_path(i), t)
    probs: dict[int, dict] = {}
    for r, sd in noise.items():
        probs[r] = {}
        for f, ids in IDS.items():
            arrays = {}
            for i in ids:
                p = (np.arange(C)[:, None, None] == truth[i]).astype(np.float32) + rng.normal(0, sd, (C, 6, 7))
                arrays[str(i)] = p.astype(np.float16)
                probs[r][i] = arrays[str(i)]
            layout.oof_path("m", f, r).parent.mkdir(parents=True, exist_ok=True)
            write_npz(layout.oof_path("m", f, r), **arrays)
    return layout, truth, probs


def miou(truth: dict[int, np.ndarray], probs: dict) -> float:
    """Dataset mIoU (background in) of the argmax, from a matrix counted pixel by pixel."""
    cm = np.zeros((C, C), np.int64)
    for i, t in truth.items():
        pred = probs[i].astype(np.float32).argmax(0)
        for y, x in np.ndindex(t.shape):
            if t[y, x] != 255:
                cm[t[y, x], pred[y, x]] += 1
    tp, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
    return float(np.mean(tp[union > 0] / union[union > 0]))


def test_the_round_with_the_better_oof_is_chosen(tmp_path: Path) -> None:
    layout, truth, probs = project(tmp_path, {1: 0.3, 2: 0.8})
    chosen, why = choose_round(params(), layout, ["m"], C)
    want = {r: miou(truth, probs[r]) for r in (1, 2)}
    assert want[1] > want[2] and chosen == 1 and why["chosen"] == 1
    assert why["oof"] == {str(r): pytest.approx(v, abs=1e-5) for r, v in want.items()}
    layout, truth, probs = project(tmp_path / "b", {1: 0.8, 2: 0.3})
    assert choose_round(params(), layout, ["m"], C)[0] == 2


def test_a_tie_keeps_the_later_round(tmp_path: Path) -> None:
    layout, _, _ = project(tmp_path, {1: 0.0, 2: 0.0})
    chosen, why = choose_round(params(), layout, ["m"], C)
    assert chosen == 2 and why["oof"] == {"1": 1.0, "2": 1.0}


def test_one_round_and_the_full_source_need_no_oof(tmp_path: Path) -> None:
    layout = Layout(tmp_path)  # nothing written: neither reads an OOF file
    assert choose_round(params(rounds=0), layout, ["m"], C)[0] == 1
    chosen, why = choose_round(params(rounds=2, source="full"), layout, ["m"], C)
    assert chosen == 3 and "pseudo.source: full" in why["why"]


def test_a_missing_oof_file_names_it_and_the_fix(tmp_path: Path) -> None:
    layout, _, _ = project(tmp_path, {1: 0.3})
    with pytest.raises(UserError, match=r"r2/.*oof\.npz is missing: train round 2 again .*infer\.round to a number"):
        choose_round(params(), layout, ["m"], C)
