"""recipe.average_best end to end on the tiny project: the k best epochs kept, averaged, validated, and used as
best.pt (and so as the out-of-fold predictions) only when the average validates better than the best epoch."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pytest
import torch
from test_training import oof_miou, read_log

from pipeline.io import read_json
from pipeline.train import train_fold

if TYPE_CHECKING:
    from e2e.conftest import Project

pytestmark = pytest.mark.slow

NAME = "tiny_avg"  # an alias of tiny (conftest.ALIASES): its own model folder


@pytest.mark.parametrize("epochs, k", [(4, 2), (4, 4)])
def test_the_best_epochs_are_averaged_and_used_when_better(project: Project, epochs: int, k: int) -> None:
    p, fold = project, 0
    rec = dataclasses.replace(p.cfg.recipe, average_best=k)
    cfg = dataclasses.replace(p.cfg, recipe=rec)
    train = dataclasses.replace(p.params.train, epochs=epochs)
    train_fold(cfg, NAME, fold, p.layout, p.data, train, progress=False)
    out = p.layout.model_dir(NAME, fold)
    log = read_log(p, NAME, fold)
    metrics = read_json(out / "metrics.json")
    avg = metrics["averaged"]

    # the kept epochs are the k best of the log (mIoU is the metric here), and nothing else is on disk
    best_k = sorted(log.sort_values(["val_mIoU", "epoch"], ascending=[False, True])["epoch"].head(k).tolist())
    assert avg["epochs"] == best_k
    assert sorted(f.name for f in (out / "top").glob("*.pt")) == [f"epoch{e:03d}.pt" for e in best_k]
    assert avg["best_epoch_score"] == pytest.approx(log["val_mIoU"].max(), abs=1e-9)
    assert avg["used"] == (avg["val_score"] > avg["best_epoch_score"])

    best = torch.load(out / "best.pt", weights_only=True)
    top = [torch.load(out / "top" / f"epoch{e:03d}.pt", weights_only=True) for e in best_k]
    if avg["used"]:
        # best.pt's weights are the plain mean of the kept ones (BatchNorm's running statistics aside: re-estimated)
        assert best["ema"] is None and best["averaged"] == avg
        for key, value in best["model"].items():
            if value.is_floating_point() and "running_" not in key:
                torch.testing.assert_close(value, sum(t[key] for t in top) / k, rtol=1e-5, atol=1e-6)
        assert metrics["val_mIoU"] == pytest.approx(avg["val_mIoU"], abs=1e-9)
    else:
        assert best["ema"] is not None and "averaged" not in best  # the best epoch's checkpoint, untouched
        assert metrics["val_mIoU"] == pytest.approx(log["val_mIoU"].max(), abs=1e-9)
    # the out-of-fold predictions come from whichever best.pt is (float16 rounding: the tolerance)
    assert oof_miou(p, out / "oof.npz") == pytest.approx(metrics["val_mIoU"], abs=5e-3)
