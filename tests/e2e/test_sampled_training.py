"""Training with epochs of sampled crops: a few large images train, and a resumed run repeats the samples exactly."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import DataParams, DemoParams, FoldsParams, MasksParams, ModelConfig, TrainParams, from_dict
from pipeline.data.demo import generate_demo
from pipeline.data.folds import build_folds
from pipeline.data.masks import build_masks
from pipeline.errors import UserError
from pipeline.io import read_json
from pipeline.paths import Layout
from pipeline.train import train_fold

if TYPE_CHECKING:
    from e2e.conftest import Project

pytestmark = pytest.mark.slow

TRAIN = TrainParams(models=["tiny"], folds=[0, 1], device="cpu", threads=1, preload=True)


def crop_config(**recipe: Any) -> ModelConfig:
    """A tiny U-Net that trains on 32x48 crops (stride 8), fp32 on the CPU so that runs compare number for number."""
    base = {
        "epochs": 2,
        "batch_size": 8,
        "lr": 3.0e-3,
        "warmup_epochs": 0.5,
        "cpu_bf16": False,
        "channels_last": False,
        "loss": [{"name": "ce"}, {"name": "dice", "weight": 0.5}],
        "augment": [{"name": "RandomBrightnessContrast", "kwargs": {"p": 0.5}}],  # seeded per epoch too
    }
    return from_dict(
        ModelConfig,
        {
            "decoder": "Unet",
            "encoder": "resnet10t",
            "encoder_depth": 3,
            "decoder_kwargs": {"decoder_channels": [16, 8, 8]},
            "input_size": [32, 48],
            "resize": "pad",
            "recipe": {**base, **recipe},
        },
        "test config",
    )


def test_sixteen_large_images_train_on_sampled_crops(tmp_path: Path) -> None:
    """16 canvases of 256x256 with 3 small digits each, 2 folds: 8 training images, fewer than a batch of 16."""
    data = DataParams(root=str(tmp_path / "competition"), truth_dir=str(tmp_path / "truth"))
    demo = DemoParams(n_train=16, n_test=2, height=256, width=256, min_digits=3, max_digits=3)
    layout = Layout(tmp_path)
    generate_demo(demo, data.root, data.truth_dir)
    build_masks(data, MasksParams(workers=1), layout)
    build_folds(FoldsParams(k=2, seed=0), layout)
    n_train = int((pd.read_csv(layout.folds_csv)["fold"] != 0).sum())
    assert n_train < 16

    by_files = crop_config(batch_size=16, epochs=1)
    with pytest.raises(UserError, match=f"{n_train} training images is fewer than one batch.*samples_per_epoch"):
        train_fold(by_files, "tiny", 0, layout, data, TRAIN, progress=False)

    cfg = crop_config(batch_size=16, epochs=2, samples_per_epoch=40, foreground_share=0.33)
    metrics = train_fold(cfg, "tiny", 0, layout, data, TRAIN, progress=False)
    log = pd.read_csv(layout.curve_path("tiny", 0))
    assert log["step"].tolist() == [2, 4]  # 40 samples // 16 per batch (drop_last) = 2 steps per epoch
    assert np.isfinite(log["train_loss"]).all()
    classes = read_json(layout.classes_json)
    assert len(metrics["per_class_IoU"]) == len(classes)
    with np.load(layout.model_dir("tiny", 0) / "oof.npz") as oof:  # validation on the whole 256x256 images
        assert {oof[k].shape for k in oof.files} == {(len(classes), 256, 256)}


class Interrupted(Exception):
    pass


def interrupted_run(monkeypatch: pytest.MonkeyPatch, at_call: int, run: Any) -> None:
    """``run()`` stopped by :class:`Interrupted` at the ``at_call``-th loss evaluation, then the loss restored."""
    import pipeline.losses as losses

    forward, calls = losses.WeightedLoss.forward, [0]

    def stop(self: Any, *args: Any) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == at_call:
            raise Interrupted
        return forward(self, *args)

    monkeypatch.setattr(losses.WeightedLoss, "forward", stop)
    with pytest.raises(Interrupted):
        run()
    monkeypatch.setattr(losses.WeightedLoss, "forward", forward)


def test_a_resumed_sampled_run_matches_an_uninterrupted_one(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped after one optimizer step of epoch 2 and run again, the losses and scores repeat those of a run
    that never stopped: the crops of epoch 2 are drawn from (seed, 2) again, not from where the RNG was."""
    from e2e.test_training import RESUME_ATOL

    p = project
    cfg = crop_config(samples_per_epoch=40, foreground_share=0.33)
    train = dataclasses.replace(TRAIN, epochs=None)
    spe = 40 // 8
    train_fold(cfg, "tiny_crops_ref", 0, p.layout, p.data, train, progress=False)

    # epoch 1 checkpointed, one step of epoch 2 taken
    interrupted_run(
        monkeypatch, spe + 2, lambda: train_fold(cfg, "tiny_crops", 0, p.layout, p.data, train, progress=False)
    )
    assert torch.load(p.layout.checkpoint("tiny_crops", 0, which="last"), weights_only=True)["epoch"] == 1

    torch.manual_seed(123)  # whatever the process RNG holds now must not matter
    train_fold(cfg, "tiny_crops", 0, p.layout, p.data, train, progress=False)
    resumed = pd.read_csv(p.layout.curve_path("tiny_crops", 0))
    reference = pd.read_csv(p.layout.curve_path("tiny_crops_ref", 0))
    assert resumed["step"].tolist() == reference["step"].tolist() == [spe, 2 * spe]
    np.testing.assert_allclose(resumed["train_loss"], reference["train_loss"], rtol=0, atol=RESUME_ATOL)
    np.testing.assert_allclose(resumed["val_mIoU"], reference["val_mIoU"], rtol=0, atol=RESUME_ATOL)
