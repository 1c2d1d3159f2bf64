"""One tiny prepared project, built once per test session and shared by every end-to-end test.

The project is a temporary folder laid out like the repository: the embedded demo competition (48 train and 12 test
canvases of 64x84) under ``data/``, masks and two folds under ``work/``, a tiny Unet config in ``configs/models`` and
a ``params.yaml`` whose data paths are absolute (``DataParams`` paths are used as given, ``Layout`` paths are
relative to its root), so the stages can run from the project folder and the library can be called in-process.

Fixtures:
    project: the prepared project (no model trained).
    trained: the same project after ``tiny`` has trained on both folds for 2 epochs (in-process, 1 torch thread).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from pipeline.config import (
    DataParams,
    DemoParams,
    FoldsParams,
    MasksParams,
    ModelConfig,
    Params,
    load_model_config,
    load_params,
)
from pipeline.data.demo import generate_demo
from pipeline.data.folds import build_folds
from pipeline.data.masks import build_masks
from pipeline.paths import Layout
from pipeline.train import train_fold

REPO = Path(__file__).resolve().parents[2]
MODEL = "tiny"  # the model every e2e test trains or predicts with
# Copies of the same config under other names, so tests that train again write to their own folders.
ALIASES = ("tiny_resume", "tiny_ddp", "tiny_fp", "tiny_second", "tiny_cuda", "tiny_avg")

TINY_MODEL: dict[str, Any] = {
    "decoder": "Unet",
    "encoder": "resnet10t",
    "encoder_depth": 3,  # stride 8: 64x84 pads to 64x88 inside the model
    "decoder_kwargs": {"decoder_channels": [16, 8, 8]},
    "input_size": [64, 84],
    "resize": "pad",
    "recipe": {
        "epochs": 2,
        "batch_size": 8,
        "lr": 3.0e-3,
        "warmup_epochs": 0.5,
        "ema": 0.9,  # EMA on, so resume must restore it too
        "cpu_bf16": False,  # fp32 on CPU: resumed and uninterrupted runs are compared number for number
        "channels_last": False,
        "loss": [{"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 0.5}],
        "seed": 0,
    },
}


@dataclasses.dataclass(frozen=True)
class Project:
    """A prepared tiny project: its folder, its layout, its params and the tiny model config (named ``model``)."""

    root: Path
    layout: Layout
    params: Params
    cfg: ModelConfig
    model: str = MODEL

    @property
    def data(self) -> DataParams:
        return self.params.data

    def env(self) -> dict[str, str]:
        """Environment for a subprocess run from the project folder: the repository importable, one thread."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["OMP_NUM_THREADS"] = "1"
        env["MKL_NUM_THREADS"] = "1"
        return env

    def write_params(self, name: str, **sections: dict[str, Any]) -> Path:
        """Write ``name`` (e.g. ``params_ddp.yaml``) beside params.yaml with some sections' keys replaced."""
        data = yaml.safe_load((self.root / "params.yaml").read_text())
        for section, values in sections.items():
            data[section] = {**data[section], **values}
        path = self.root / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        load_params(path)  # strict: a typo in a test fails here, not deep inside a stage
        return path


def project_params(root: Path) -> dict[str, Any]:
    """params.yaml of the tiny project (absolute data paths)."""
    return {
        "data": {"root": str(root / "data" / "competition"), "truth_dir": str(root / "data" / "truth")},
        "demo": {"n_train": 48, "n_test": 12},
        "masks": {"workers": 1},
        "folds": {"k": 2, "seed": 0},
        "train": {"models": [MODEL], "folds": [0, 1], "device": "cpu", "threads": 1, "preload": True},
        "pseudo": {
            "rounds": 1,
            "threshold": 0.5,
            "min_confident": 0.0,
            "source": "leak_free",
            "tta": "none",
            "init_from_previous": False,
            "epochs": None,
            "lr_scale": 1.0,
        },
        "plan": {"enabled": False},
        "infer": {
            "round": 1,
            "tta": "auto",
            "tta_flips": ["hflip"],
            "tta_scales": [1.25],
            "tta_select_images": 0,
            "batch_size": 16,
            "output": "submissions/submission.csv",
            "overlays": 2,
        },
    }


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    root = tmp_path_factory.mktemp("project")
    (root / "params.yaml").write_text(yaml.safe_dump(project_params(root), sort_keys=False))
    params = load_params(root / "params.yaml")
    layout = Layout(root)
    generate_demo(params.demo, params.data.root, params.data.truth_dir)
    build_masks(params.data, params.masks, layout)
    build_folds(params.folds, layout)
    for name in (MODEL, *ALIASES):
        path = layout.model_config(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(TINY_MODEL, sort_keys=False))
    assert params.demo == DemoParams(n_train=48, n_test=12)
    assert params.masks == MasksParams(workers=1) and params.folds == FoldsParams(k=2, seed=0)
    return Project(root, layout, params, load_model_config(layout.model_config(MODEL)))


@pytest.fixture(scope="session")
def trained(project: Project) -> Project:
    """``tiny`` trained on both folds (2 epochs each), as the train stage would leave it."""
    threads = torch.get_num_threads()
    try:
        for fold in project.params.train.folds:
            train_fold(project.cfg, MODEL, fold, project.layout, project.data, project.params.train, progress=False)
    finally:
        torch.set_num_threads(threads)  # train.threads: 1 changed it for this process
    return project
