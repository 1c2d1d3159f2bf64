"""A benchmark project in a folder, made through the real stage code: one home for bench_oof and bench_scaling.

The project is the embedded demo (``pipeline.data.demo``) with one digit a canvas, its masks (``build_masks``, one
worker) and 2 folds (``build_folds``), and one ``cnn_default`` checkpoint per fold with random weights in the format
training writes (``config``, ``classes``, ``model``), beside an empty ``oof.npz``: ``plan_ensemble`` predicts every
out-of-fold image again from the checkpoints and only checks that the file exists. ``project_params`` is the
``params.yaml`` the infer stage would read there.

The stage modules and torch are imported in the functions that use them, so a benchmark process that runs one stage
(bench_scaling) holds what that stage imports and no more: its resident memory is what is measured.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.config import (
    DemoParams,
    FoldsParams,
    MasksParams,
    ModelConfig,
    Params,
    load_model_config,
    load_params,
    tiny_variant,
    to_dict,
)
from pipeline.io import npz_writer, read_json, save_torch
from pipeline.paths import Layout

REPO = Path(__file__).resolve().parents[1]
MODEL, FOLDS = "cnn_default", (0, 1)
MASKS = MasksParams(workers=1)
FOLDS_PARAMS = FoldsParams(k=len(FOLDS), seed=0)


def project_params(root: Path) -> Params:
    """params.yaml with this project's data, the fixed model on 2 folds, no pseudo round, OOF choices on."""
    p = load_params(REPO / "params.yaml")
    comp = root / "data" / "competition"
    data = dataclasses.replace(p.data, root=str(comp), truth_dir=str(root / "data" / "truth"))
    train = dataclasses.replace(p.train, models=[MODEL], folds=list(FOLDS), device="cpu")
    infer = dataclasses.replace(
        p.infer, tta="auto", tta_flips=["hflip"], tta_scales=[], calibrate=True, output=str(root / "submission.csv")
    )
    return dataclasses.replace(
        p,
        data=data,
        train=train,
        infer=infer,
        pseudo=dataclasses.replace(p.pseudo, rounds=0),
        plan=dataclasses.replace(p.plan, enabled=False),
    )


def demo_params(n: int, height: int = 64, width: int = 84) -> DemoParams:
    """``n`` train and ``n`` test canvases of ``height`` x ``width``, one digit each: 4N test canvases need 4N
    distinct test digits (the pools are disjoint; 2000 of the 5000 digits are kept for test)."""
    return DemoParams(n_train=n, n_test=n, height=height, width=width, min_digits=1, max_digits=1, test_digit_share=0.4)


def model_config(height: int = 64, width: int = 84, tiny: bool = False) -> ModelConfig:
    """``cnn_default`` (or its ``tiny`` variant) seeing the whole ``height`` x ``width`` canvas (``input_size``)."""
    cfg = load_model_config(Layout(REPO).model_config(MODEL))
    cfg = tiny_variant(cfg) if tiny else cfg
    return dataclasses.replace(cfg, input_size=(height, width))


def random_checkpoints(layout: Layout, cfg: ModelConfig) -> None:
    """One checkpoint of ``cfg`` per fold with random weights (seeded by the fold), as training writes them."""
    import torch  # here, not at the top: see the module docstring

    from pipeline.models.registry import build_model

    classes = read_json(layout.classes_json)
    for fold in FOLDS:
        torch.manual_seed(fold)
        model = build_model(cfg, len(classes))
        ck = {"config": to_dict(cfg), "classes": classes, "model": model.state_dict(), "ema": None}
        save_torch(layout.checkpoint(MODEL, fold), ck)
        with npz_writer(layout.oof_path(MODEL, fold)):
            pass  # only its existence is checked: plan_ensemble predicts OOF from the checkpoint


def make_project(root: Path, n: int, height: int = 64, width: int = 84) -> None:
    """The demo with ``n`` train and ``n`` test images, its masks and folds, one random checkpoint per fold."""
    from pipeline.data.demo import generate_demo  # here, not at the top: see the module docstring
    from pipeline.data.folds import build_folds
    from pipeline.data.masks import build_masks

    params, layout = project_params(root), Layout(root)
    generate_demo(demo_params(n, height, width), params.data.root, params.data.truth_dir)
    build_masks(params.data, MASKS, layout)
    build_folds(FOLDS_PARAMS, layout)
    random_checkpoints(layout, model_config(height, width))
