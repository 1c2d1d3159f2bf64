"""Numerical faults and out-of-memory in training (issue 19): one line naming model, fold, epoch and the fix.

A NaN loss comes from the real loss of the real model: a forward hook multiplies the logits of one chosen training
batch by inf (where ``recipe.lr: 1e6`` alone overflows depends on the machine's rounding: epoch 2 on one, epoch 3 on
another). A model blown up for real, one epoch of ``recipe.lr: 1e6`` (AdamW's decoupled weight decay multiplies the
weights by ``1 - lr * wd = -99`` per step: huge, still finite), is the collapsed one; a batch of images whose masks
are all ignore (255) gives cross-entropy over no pixel, 0/0. Out of memory is raised at the boundary, by a forward
(or backward) hook on the real tiny model, as the CUDA caching or the CPU allocator raise it."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest
import torch

import pipeline.training.finish as training_finish
import pipeline.training.setup as training_setup
from pipeline.config import ModelConfig
from pipeline.errors import UserError
from pipeline.faults import StepGuard, all_finite
from pipeline.io import read_json, read_mask, write_png
from pipeline.train import train_fold

if TYPE_CHECKING:
    from e2e.conftest import Project

pytestmark = pytest.mark.slow


def recipe(p: Project, **changes: Any) -> ModelConfig:
    return dataclasses.replace(p.cfg, recipe=dataclasses.replace(p.cfg.recipe, **changes))


def finite_weights(path: Path) -> bool:
    model = torch.load(path, map_location="cpu", weights_only=True)["model"]
    return all(bool(torch.isfinite(t).all()) for t in model.values() if t.is_floating_point())


def run(p: Project, cfg: ModelConfig, name: str, **kwargs: Any) -> tuple[dict[str, Any], str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        metrics = train_fold(cfg, name, 0, p.layout, p.data, p.params.train, progress=False, **kwargs)
    return metrics, out.getvalue() + err.getvalue()


def nan_at(monkeypatch: pytest.MonkeyPatch, batch: int) -> None:
    """The logits of the ``batch``-th training forward pass (from 1) become inf * logits: NaN and inf losses."""
    seen = {"n": 0}

    def hook(module: torch.nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor | None:
        if not module.training:
            return None
        seen["n"] += 1
        return out * float("inf") if seen["n"] == batch else None

    with_hook(monkeypatch, lambda m: m.register_forward_hook(hook), modules=(training_setup,))


STEPS = 3  # training batches per epoch of fold 0 in the tiny project (24 images, batch 8)


def test_a_nan_loss_stops_training_naming_the_epoch_step_and_fix(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    p, name = project, "tiny_nan"
    nan_at(monkeypatch, STEPS + 2)  # epoch 2, its second batch
    with pytest.raises(UserError) as e:
        run(p, p.cfg, name)
    msg = str(e.value)
    assert re.fullmatch(
        rf"{name} fold 0: the loss is (nan|inf) at epoch 2 step {STEPS + 2}; lower recipe\.lr \(now 0\.003\) in "
        rf"\S*configs/models/{name}\.yaml, or set recipe\.skip_nonfinite: true there to skip such batches",
        msg,
    ), msg
    best = p.layout.checkpoint(name, 0)
    assert best.exists() and finite_weights(best)  # epoch 1's
    assert torch.load(best, weights_only=True)["epoch"] == 1
    assert not (best.parent / "metrics.json").exists()


def test_skip_nonfinite_counts_the_skipped_batches_and_keeps_nan_out_of_best(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    p, name = project, "tiny_nan_skip"
    nan_at(monkeypatch, STEPS + 2)
    metrics, log = run(p, recipe(p, skip_nonfinite=True), name)
    out = p.layout.model_dir(name, 0)
    assert metrics["skipped_nonfinite_batches"] == 1 and read_json(out / "metrics.json") == metrics
    assert re.search(r"skipped a batch whose loss is (nan|inf) at epoch 2", log) and "(recipe.skip_nonfinite)" in log
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 2  # the run went on past the skipped batch, and the checkpoint's history counts it
    assert [r["skipped_nonfinite"] for r in last["history"]] == [0, 1]
    assert finite_weights(out / "best.pt") and finite_weights(out / "last.pt")  # the skipped batch updated nothing


def test_a_blown_up_model_is_reported_as_collapsed(project: Project) -> None:
    p, name = project, "tiny_blown_up"
    metrics, log = run(p, recipe(p, lr=1e6, epochs=1), name)
    assert metrics["collapsed"] is True
    assert "collapsed" in log and re.search(r"predicts class \d+ for every validation pixel", log), log


def test_a_batch_without_a_labelled_pixel_is_named_as_the_cause_or_skipped(project: Project, tmp_path: Path) -> None:
    """Pseudo-labels under the threshold everywhere (or crowd-only images painted ignore) make all-255 masks; at
    batch size 1 each such image is a batch whose cross-entropy is over no pixel."""
    p = project
    folds = pd.read_csv(p.layout.folds_csv)
    extra = []
    for row in folds[folds["fold"] != 0].head(2).itertuples():
        mask = tmp_path / f"{row.image_id}.png"
        write_png(mask, np.full_like(read_mask(p.layout.mask_path(int(row.image_id))), 255))
        extra.append((Path(p.data.root) / p.data.images_dir / row.file_name, mask))
    cfg = recipe(p, epochs=1, batch_size=1)
    with pytest.raises(UserError) as e:
        run(p, cfg, "tiny_unlabelled", extra=extra)
    assert re.fullmatch(
        r"tiny_unlabelled fold 0: the loss is nan at epoch 1 step \d+: the batch has no labelled pixel \(every mask "
        r"pixel is 255, ignore\); drop the images whose masks are all ignore, or set recipe\.skip_nonfinite: true "
        r"in \S+ to skip such batches",
        str(e.value),
    ), str(e.value)

    metrics, log = run(
        p,
        dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, skip_nonfinite=True)),
        "tiny_unlabelled_skip",
        extra=extra,
    )
    assert metrics["skipped_nonfinite_batches"] == 2  # the two all-ignore images, once each
    assert "(a batch without a labelled pixel)" in log and "epoch 1 skipped 2 of" in log
    assert finite_weights(p.layout.checkpoint("tiny_unlabelled_skip", 0))


def test_weights_that_are_not_finite_never_make_the_best_epoch(project: Project) -> None:
    guard = StepGuard("tiny", 0, 1, project.cfg.recipe, project.layout.model_config("tiny"))
    from pipeline.models.registry import build_model

    model = build_model(project.cfg, 11)
    assert all_finite(model) and guard.can_be_best(0.5, model, 1)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    assert not guard.can_be_best(0.9, model, 2)  # a better score, NaN weights: refused
    assert not guard.can_be_best(float("nan"), build_model(project.cfg, 11), 3)


def oom_hook(error: BaseException, when: Callable[[torch.nn.Module], bool]) -> Callable[..., Any]:
    def hook(module: torch.nn.Module, *args: Any) -> None:
        if when(module):
            raise error

    return hook


def with_hook(
    monkeypatch: pytest.MonkeyPatch, attach: Callable[[torch.nn.Module], Any], modules: tuple[Any, ...] = ()
) -> None:
    """Every model train_fold builds gets the hook (the real tiny model, the real loop): the one it trains
    (pipeline/training/setup.py) and the best one it reloads for the out-of-fold predictions (finish.py), or those
    that ``modules`` build."""
    real = training_setup.build_model

    def build(cfg: ModelConfig, num_classes: int) -> torch.nn.Module:
        model = real(cfg, num_classes)
        attach(model)
        return model

    for module in modules or (training_setup, training_finish):
        monkeypatch.setattr(module, "build_model", build)


CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total capacity)"
CPU_OOM = "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize(
    ("error", "phase", "expected"),
    [
        pytest.param(
            torch.cuda.OutOfMemoryError(CUDA_OOM), "forward", r"\(epoch 1\); set recipe\.batch_size to 4", id="cuda"
        ),
        pytest.param(RuntimeError(CPU_OOM), "backward", r"\(epoch 1\); set recipe\.batch_size to 4", id="cpu-backward"),
        pytest.param(MemoryError(), "validation", r"\(epoch 1, validation\); set recipe\.batch_size to 4", id="val"),
        pytest.param(  # after the last epoch: the best model reloaded for the out-of-fold predictions
            torch.cuda.OutOfMemoryError(CUDA_OOM),
            "oof",
            r"\(out-of-fold prediction with best\.pt\); set recipe\.batch_size to 4",
            id="oof",
        ),
    ],
)
def test_out_of_memory_names_the_batch_size_to_set(
    project: Project, monkeypatch: pytest.MonkeyPatch, error: BaseException, phase: str, expected: str
) -> None:
    p, name = project, "tiny_oom"
    if phase == "backward":
        attach = lambda m: m.register_full_backward_hook(oom_hook(error, lambda mod: True))  # noqa: E731
    else:
        training = phase == "forward"
        attach = lambda m: m.register_forward_hook(oom_hook(error, lambda mod: mod.training == training))  # noqa: E731
    with_hook(monkeypatch, attach, (training_finish,) if phase == "oof" else ())
    with pytest.raises(UserError) as e:
        run(p, recipe(p, epochs=1), name)
    msg = str(e.value)
    assert re.fullmatch(rf"{name} fold 0: out of memory at batch_size 8 {expected}.* in \S*{name}\.yaml", msg), msg
    assert "\n" not in msg
    if phase == "oof":  # the epoch is kept; the fold is not finished, so a re-run resumes to finish it
        out = p.layout.model_dir(name, 0)
        assert (out / "best.pt").is_file() and not (out / "metrics.json").exists() and not (out / "oof.npz").exists()


def test_other_runtime_errors_keep_their_traceback(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    with_hook(monkeypatch, lambda m: m.register_forward_hook(oom_hook(RuntimeError("shape mismatch"), lambda _: True)))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run(project, recipe(project, epochs=1), "tiny_bug")


def test_batch_size_one_out_of_memory_names_the_input_size(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    oom = torch.cuda.OutOfMemoryError(CUDA_OOM)
    with_hook(monkeypatch, lambda m: m.register_forward_hook(oom_hook(oom, lambda mod: mod.training)))
    with pytest.raises(UserError, match=r"out of memory at batch_size 1 \(epoch 1\); set a smaller input_size"):
        run(project, recipe(project, epochs=1, batch_size=1), "tiny_oom1")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_real_cuda_out_of_memory_is_the_same_one_line(project: Project) -> None:
    guard = StepGuard("tiny", 0, 1, project.cfg.recipe, project.layout.model_config("tiny"))
    with pytest.raises(UserError, match=r"^tiny fold 0: out of memory at batch_size 8 \(epoch 3\); set recipe\."):
        with guard.step(3):
            torch.empty(2**62, dtype=torch.uint8, device="cuda")  # 4 EiB: the caching allocator's own error
    torch.cuda.empty_cache()
