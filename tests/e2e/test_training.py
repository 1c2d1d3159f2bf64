"""Training end to end on the tiny project: outputs, resume after SIGKILL, fingerprint checks, DDP on CPU.

Numbers compared between runs use one torch thread, fp32 and the CPU, where every kernel is deterministic; see
:data:`RESUME_ATOL` for the tolerance.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import kill_9, started

from pipeline.config import ModelConfig, to_dict
from pipeline.errors import UserError
from pipeline.io import read_json, read_mask, write_png
from pipeline.metrics import ConfusionMatrix, mean_iou
from pipeline.train import LOG_COLUMNS, train_fold

if TYPE_CHECKING:
    from e2e.conftest import Project  # tests/ is on sys.path (tests/conftest.py); annotations only

pytestmark = pytest.mark.slow

NUM_CLASSES = 11  # background + 10 digits
CHECKPOINT_KEYS = {
    "model",
    "ema",
    "optimizer",
    "scheduler",
    "scaler",
    "rng",
    "epoch",
    "step",
    "config",
    "classes",
    "metrics",
    "fingerprint",
    "history",
}
# A resumed run reloads weights, EMA, optimizer, scheduler and RNG bit for bit and reseeds shuffling and augmentation
# from (seed, epoch), and on the CPU with one thread every fp32 kernel is deterministic, so a resumed run should match
# an uninterrupted one exactly. 1e-6 only leaves room for the killed process and the test process choosing different
# (equally deterministic) oneDNN kernels; a resume that lost any state moves the loss by 1e-3 or more.
RESUME_ATOL = 1e-6

# Runs the train stage with its loss held (asleep) at one call, so the test can SIGKILL it at a known point. The hook
# only delays: it changes no value.
PAUSED_TRAIN = """
import sys, time
import pipeline.losses as losses
pause_at, calls, forward = int(sys.argv[1]), [0], losses.WeightedLoss.forward
def held(self, *args):
    calls[0] += 1
    if calls[0] == pause_at:
        time.sleep(300)
    return forward(self, *args)
losses.WeightedLoss.forward = held
from stages.train import main
sys.exit(main(sys.argv[2:]))
"""


def folds(p: Project) -> pd.DataFrame:
    return pd.read_csv(p.layout.folds_csv)


def steps_per_epoch(p: Project, fold: int) -> int:
    """Optimizer steps in one epoch of one process: the fold's training images // batch size (drop_last)."""
    return int((folds(p)["fold"] != fold).sum()) // p.cfg.recipe.batch_size


def read_log(p: Project, model: str, fold: int) -> pd.DataFrame:
    return pd.read_csv(p.layout.curve_path(model, fold))


def oof_miou(p: Project, oof_file: Path) -> float:
    """Dataset mIoU of the argmax of the stored out-of-fold probabilities against the truth masks."""
    cm = ConfusionMatrix(NUM_CLASSES)
    with np.load(oof_file) as oof:
        for key in oof.files:
            cm.update(oof[key].astype(np.float32).argmax(0), read_mask(p.layout.mask_path(int(key))))
    return float(mean_iou(cm))


def test_train_fold_writes_checkpoints_log_metrics_and_oof(trained: Project) -> None:
    p, epochs = trained, trained.cfg.recipe.epochs
    classes = read_json(p.layout.classes_json)
    for fold in p.params.train.folds:
        out = p.layout.model_dir(p.model, fold)
        spe = steps_per_epoch(p, fold)
        assert spe >= 2, "the tiny project should give a few steps per epoch"

        # last.pt and best.pt load without pickled code and carry everything a resume or an ensemble needs
        last = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
        best = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
        for ck in (last, best):
            assert CHECKPOINT_KEYS <= set(ck), f"missing {CHECKPOINT_KEYS - set(ck)}"
            assert ck["config"] == to_dict(p.cfg)
            assert ck["classes"] == classes
            assert {"mIoU", "mBIoU", "aAcc", "per_class"} <= set(ck["metrics"])
            assert set(ck["rng"]) >= {"torch", "numpy", "python"}
            assert ck["ema"] is not None and ck["ema"].keys() == ck["model"].keys()
        assert last["epoch"] == epochs and last["step"] == epochs * spe
        assert last["scheduler"]["last_epoch"] == epochs * spe  # one scheduler step per optimizer step

        # the per-epoch log: one row per epoch, steps counted per optimizer step
        log = read_log(p, p.model, fold)
        assert list(log.columns) == LOG_COLUMNS
        assert log["epoch"].tolist() == list(range(1, epochs + 1))
        assert log["step"].tolist() == [spe * e for e in range(1, epochs + 1)]
        assert np.isfinite(log["train_loss"]).all() and (log["train_loss"] > 0).all()
        assert log["val_mIoU"].between(0, 1).all()

        # metrics.json reports the best epoch of the log, and best.pt is that epoch
        metrics = read_json(out / "metrics.json")
        best_row = int(log["val_mIoU"].idxmax())
        assert metrics["best_epoch"] == best["epoch"] == int(log["epoch"][best_row])
        assert metrics["val_mIoU"] == pytest.approx(log["val_mIoU"][best_row], abs=1e-9)
        assert metrics["epochs"] == epochs
        assert len(metrics["per_class_IoU"]) == NUM_CLASSES
        assert yaml.safe_load((out / "config.yaml").read_text()) == to_dict(p.cfg)

        # oof.npz: one float16 (C, H, W) probability map per validation image of this fold, from the best model
        val_ids = sorted(folds(p).query("fold == @fold")["image_id"].astype(int))
        with np.load(out / "oof.npz") as oof:
            assert sorted(int(k) for k in oof.files) == val_ids
            for key in oof.files:
                a = oof[key]
                assert a.dtype == np.float16 and a.shape == (NUM_CLASSES, 64, 84)
                np.testing.assert_allclose(a.astype(np.float32).sum(0), 1.0, atol=1e-2)
        # float16 rounding may flip a near-tie pixel's argmax, hence the tolerance
        assert oof_miou(p, out / "oof.npz") == pytest.approx(metrics["val_mIoU"], abs=5e-3)
        assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))  # atomic writes left nothing behind


def test_resume_after_sigkill_matches_an_uninterrupted_run(trained: Project, tmp_path: Path) -> None:
    p, name, fold = trained, "tiny_resume", 0
    spe = steps_per_epoch(p, fold)
    last = p.layout.checkpoint(name, fold, which="last")
    out_file = tmp_path / "killed.log"
    # held at the 2nd loss call of epoch 2: epoch 1 is checkpointed, epoch 2 has taken one optimizer step
    argv = [sys.executable, "-c", PAUSED_TRAIN, str(spe + 2), "--model", name, "--fold", str(fold)]
    with open(out_file, "w") as out, started(argv, p.root, p.env(), stdout=out, stderr=subprocess.STDOUT) as proc:
        deadline = time.monotonic() + 240
        while not (last.is_file() and torch.load(last, weights_only=True)["epoch"] == 1):
            assert proc.poll() is None, f"training exited early ({proc.returncode}): {out_file.read_text()}"
            assert time.monotonic() < deadline, "no epoch-1 checkpoint within 240 s"
            time.sleep(0.05)
        assert kill_9(proc) == -signal.SIGKILL
    killed = torch.load(last, weights_only=True)
    assert killed["epoch"] == 1 and killed["step"] == spe
    assert len(read_log(p, name, fold)) == 1

    # run it again: it resumes after epoch 1 and finishes epoch 2
    metrics = train_fold(p.cfg, name, fold, p.layout, p.data, p.params.train, progress=False)
    resumed, reference = read_log(p, name, fold), read_log(p, p.model, fold)
    assert resumed["epoch"].tolist() == reference["epoch"].tolist() == [1, 2]
    assert resumed["step"].tolist() == reference["step"].tolist() == [spe, 2 * spe]
    np.testing.assert_allclose(resumed["train_loss"], reference["train_loss"], rtol=0, atol=RESUME_ATOL)
    np.testing.assert_allclose(resumed["val_mIoU"], reference["val_mIoU"], rtol=0, atol=RESUME_ATOL)
    ref_metrics = read_json(p.layout.model_dir(p.model, fold) / "metrics.json")
    assert metrics["best_epoch"] == ref_metrics["best_epoch"]
    assert metrics["val_mIoU"] == pytest.approx(ref_metrics["val_mIoU"], abs=RESUME_ATOL)
    final = torch.load(last, weights_only=True)
    assert final["epoch"] == 2 and final["step"] == 2 * spe


def test_a_checkpoint_of_another_config_is_not_resumed(project: Project) -> None:
    p, name, fold = project, "tiny_fp", 1
    spe = steps_per_epoch(p, fold)
    one_epoch = dataclasses.replace(p.params.train, epochs=1)
    first = dataclasses.replace(p.cfg, recipe=dataclasses.replace(p.cfg.recipe, lr=3e-3))
    train_fold(first, name, fold, p.layout, p.data, one_epoch, progress=False)
    loss_a = read_log(p, name, fold)["train_loss"].tolist()

    # same config again: a resume of a finished run trains nothing more (a fresh run would rewrite last.pt)
    last = p.layout.checkpoint(name, fold, which="last")
    stamp = last.stat().st_mtime_ns
    train_fold(first, name, fold, p.layout, p.data, one_epoch, progress=False)
    assert last.stat().st_mtime_ns == stamp
    assert read_log(p, name, fold)["train_loss"].tolist() == loss_a
    # DVC deletes the curves file (not persistent) before it reruns the stage: the finished resume writes it again
    p.layout.curve_path(name, fold).unlink()
    train_fold(first, name, fold, p.layout, p.data, one_epoch, progress=False)
    assert last.stat().st_mtime_ns == stamp
    assert read_log(p, name, fold)["train_loss"].tolist() == loss_a

    # another learning rate: the fingerprint differs, so epoch 1 is trained afresh with the new config
    changed = dataclasses.replace(p.cfg, recipe=dataclasses.replace(p.cfg.recipe, lr=1e-3))
    train_fold(changed, name, fold, p.layout, p.data, one_epoch, progress=False)
    log = read_log(p, name, fold)
    assert log["epoch"].tolist() == [1] and log["step"].tolist() == [spe]
    assert abs(log["train_loss"][0] - loss_a[0]) > 1e-4, "the old run's epoch was kept"
    ck = torch.load(last, weights_only=True)
    assert ck["config"]["recipe"]["lr"] == 1e-3 and ck["step"] == spe


def test_new_labels_at_the_same_path_are_not_resumed(project: Project, tmp_path: Path) -> None:
    """A pseudo-label round rewrites the same mask files: a checkpoint trained on the old labels is stale."""
    p, name, fold = project, "tiny_relabel", 1
    one_epoch = dataclasses.replace(p.params.train, epochs=1)
    row = folds(p).iloc[0]
    image = Path(p.data.root) / p.data.images_dir / row["file_name"]
    mask_file = tmp_path / "pseudo.png"
    truth = read_mask(p.layout.mask_path(int(row["image_id"])))
    write_png(mask_file, truth)
    train_fold(p.cfg, name, fold, p.layout, p.data, one_epoch, extra=[(image, mask_file)], progress=False)
    last = p.layout.checkpoint(name, fold, which="last")
    stamp = last.stat().st_mtime_ns

    write_png(mask_file, np.full_like(truth, 255))  # same path, every pixel now ignored
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train_fold(p.cfg, name, fold, p.layout, p.data, one_epoch, extra=[(image, mask_file)], progress=False)
    assert "starting afresh" in out.getvalue()
    assert last.stat().st_mtime_ns != stamp
    assert read_log(p, name, fold)["epoch"].tolist() == [1]


def test_a_batch_too_small_for_batchnorm_is_a_clear_error(project: Project) -> None:
    """SMP's UPerNet normalises 1x1 pooled features: one image per step cannot train; say so, name the fix."""
    p, name, fold = project, "tiny_upernet_b1", 0
    cfg = ModelConfig(
        decoder="UPerNet",
        encoder="resnet18",
        encoder_kwargs={"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "stem_width": 16},
        decoder_kwargs={"decoder_channels": 16},
    )
    cfg = dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, batch_size=1, epochs=1))
    with pytest.raises(UserError, match=r"batch of 1 image\(s\) per process .* recipe\.batch_size to at least 2"):
        train_fold(cfg, name, fold, p.layout, p.data, p.params.train, progress=False)


def test_ddp_two_cpu_processes_split_the_global_batch(trained: Project) -> None:
    p, name, fold = trained, "tiny_ddp", 0
    params = p.write_params("params_ddp.yaml", train={"epochs": 1})
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "-m",
        "stages.train",
        "--params",
        params.name,
        "--model",
        name,
        "--fold",
        str(fold),
    ]
    run = subprocess.run(cmd, cwd=p.root, env=p.env(), capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    out = p.layout.model_dir(name, fold)
    written = {f.name for f in out.iterdir()}
    assert {"best.pt", "last.pt", "config.yaml", "metrics.json", "oof.npz"} <= written
    assert not [n for n in written if n.startswith(".") or n.endswith(".tmp")]  # no half-written or racing copies
    # rank 0 alone logs and writes: one epoch line, one log row
    assert run.stdout.count(f"{name} fold {fold} round 1 epoch 1/1:") == 1
    log = read_log(p, name, fold)
    # each process takes batch_size // 2 images per step, so 2 processes take as many steps as 1 process does
    single = read_log(p, p.model, fold)
    assert log["epoch"].tolist() == [1]
    assert log["step"].tolist() == single["step"][:1].tolist() == [steps_per_epoch(p, fold)]
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["epoch"] == 1 and ck["step"] == steps_per_epoch(p, fold)
    assert not any(k.startswith("module.") for k in ck["model"])  # the plain model is saved, not the DDP wrapper
    # validation is sharded over the 2 processes and all-reduced: its mIoU is that of every validation image, which
    # rank 0 alone predicted into oof.npz
    val_ids = set(folds(p).query("fold == @fold")["image_id"].astype(int))
    with np.load(out / "oof.npz") as oof:
        assert {int(k) for k in oof.files} == val_ids
    metrics = read_json(out / "metrics.json")
    assert oof_miou(p, out / "oof.npz") == pytest.approx(metrics["val_mIoU"], abs=5e-3)
