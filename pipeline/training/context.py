"""Which run this is and how it runs: two small frozen objects passed whole instead of loose arguments.

:class:`RunId` names the run (model config, fold, round) and derives its paths from :class:`~pipeline.paths.Layout`;
:class:`Context` holds what every step of it needs: the run, device and processes, precision, batch size, classes and
the metric.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import torch

from pipeline.config import ModelConfig, TrainParams
from pipeline.data.dataset import normalize
from pipeline.distributed import Dist, init_process
from pipeline.errors import UserError
from pipeline.labels import multilabel_masks
from pipeline.losses import SoftTarget
from pipeline.paths import FoldFiles, Layout
from pipeline.predict import autocast


@dataclasses.dataclass(frozen=True)
class RunId:
    """One (model config, fold, round) run and the paths ``Layout`` gives it."""

    layout: Layout
    model: str
    fold: int
    round_: int = 1

    @property
    def out_dir(self) -> Path:
        """The model folder: checkpoints, config.yaml, metrics.json, oof.npz, the fold report."""
        return self.layout.model_dir(self.model, self.fold, self.round_)

    @property
    def files(self) -> FoldFiles:
        """The files in :attr:`out_dir`."""
        return FoldFiles(self.out_dir)

    @property
    def curves(self) -> Path:
        """The per-epoch log (dvc plots), outside the model folder."""
        return self.layout.curve_path(self.model, self.fold, self.round_)

    @property
    def model_config(self) -> Path:
        """The config file a user edits when the recipe does not fit (named in errors)."""
        return self.layout.model_config(self.model)

    @property
    def title(self) -> str:
        return f"{self.model} fold {self.fold} round {self.round_}"


@dataclasses.dataclass(frozen=True)
class Context:
    """How one run trains and evaluates."""

    run: RunId
    device: torch.device
    ddp: Dist
    amp: str  # recipe.amp: the autocast dtype on CUDA ("none", "bf16", "fp16")
    cpu_bf16: bool  # recipe.cpu_bf16: bf16 autocast on the CPU
    channels_last: bool
    batch_size: int  # the global batch: each process steps on batch_size // world images
    classes: list[dict[str, Any]]  # classes.json: index -> {"name", ...}, background first
    metric: str  # metric.name: scores each epoch's validation and picks the best epoch
    bars: bool = False  # tqdm progress bars (rank 0 only)
    multilabel: bool = False  # bit-field masks (masks.overlap: multilabel): a sigmoid per class (pipeline/labels.py)

    @property
    def per_process_batch(self) -> int:
        return max(1, self.batch_size // self.ddp.world)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.device, self.amp, self.cpu_bf16)

    def inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | SoftTarget]:
        """A loader batch on the device: (B, 3, H, W) float32 normalised images, (B, H, W) int64 masks (a
        :class:`~pipeline.losses.SoftTarget` of them when the batch carries soft targets: ``pseudo.soft``)."""
        x = normalize(batch["image"].to(self.device, non_blocking=True))
        y: torch.Tensor | SoftTarget = batch["mask"].to(self.device, non_blocking=True)
        if "soft" in batch:
            soft, rows = (batch[k].to(self.device, non_blocking=True) for k in ("soft", "soft_row"))
            y = SoftTarget(y, soft, rows)  # type: ignore[arg-type]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y


def make_context(
    cfg: ModelConfig, params: TrainParams, run: RunId, classes: list[dict[str, Any]], metric: str, progress: bool
) -> Context:
    """Set this process up (threads, process group, device: :func:`pipeline.distributed.init_process`) for ``run``."""
    ddp, device = init_process(params.device, params.threads)
    rec = cfg.recipe
    multilabel = multilabel_masks(run.layout.mask_summary)
    if multilabel and cfg.head == "sigmoid":
        raise UserError(
            f"{run.model_config}: head: sigmoid is the one-logit binary head; multilabel masks (masks.overlap: "
            "multilabel) train a sigmoid on each class's own logit: use head: softmax (the C logits)"
        )
    return Context(
        run=run,
        device=device,
        ddp=ddp,
        amp=rec.amp,
        cpu_bf16=rec.cpu_bf16,
        channels_last=rec.channels_last,
        batch_size=rec.batch_size,
        classes=classes,
        metric=metric,
        bars=progress and ddp.main,
        multilabel=multilabel,
    )
