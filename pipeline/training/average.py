"""Checkpoint averaging (``recipe.average_best: k``): the weights of a run's k best epochs, averaged into one model.

SIIM pneumothorax's winners averaged their top 3 epochs; contrails 4th used SWA (Izmailov et al. 2018). After each
epoch the evaluated weights (the EMA's when ``recipe.ema`` is on) are kept in ``top/epoch<NNN>.pt`` while the epoch
is among the k best by the validation score so far; ``top/index.json`` lists them with their scores (written after
the weights, so a kill leaves at most an unlisted file, deleted on the next offer). A resumed run reads the index
back, so the k best are those of the whole run.

At the end the kept weights are averaged (every floating tensor: the mean; integer buffers such as BatchNorm's
``num_batches_tracked``: the best epoch's), BatchNorm statistics are recomputed by one pass over the training loader
(``torch.optim.swa_utils.update_bn``: an average of means is not the mean under the averaged weights), and the
average is validated like an epoch. It becomes ``best.pt`` when its score beats the best epoch's, so the out-of-fold
predictions, the ensemble and round 2 all use it; metrics.json's ``averaged`` says which epochs, the score, and
whether it was used.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.io import load_torch, read_json, save_torch, write_json
from pipeline.models.registry import build_model
from pipeline.paths import TopFiles
from pipeline.training.checkpoint import TrainState, seed_epoch
from pipeline.training.context import Context
from pipeline.training.epoch import evaluate
from pipeline.training.setup import Loaders

Weights = dict[str, torch.Tensor]


class TopK:
    """The k best epochs' weights of one run, on disk in ``files`` (:class:`pipeline.paths.TopFiles`)."""

    def __init__(self, files: TopFiles, k: int) -> None:
        self.files, self.k = files, k
        listed = read_json(files.index) if files.index.is_file() else {}
        self.scores = {int(e): float(s) for e, s in listed.items() if self.path(int(e)).is_file()}

    @classmethod
    def for_run(cls, files: TopFiles, k: int, fresh: bool, main: bool) -> TopK | None:
        """The run's store (None when ``k`` is 0); a run that starts afresh (``fresh``: no checkpoint resumed) first
        drops what an earlier run of another config, data or code kept there (rank 0 only: ``main``)."""
        if fresh and main and files.root.is_dir():
            shutil.rmtree(files.root)
        return cls(files, k) if k else None

    def path(self, epoch: int) -> Path:
        return self.files.epoch(epoch)

    def ranked(self) -> list[int]:
        """The kept epochs, best first (an earlier epoch first on a tie)."""
        return sorted(self.scores, key=lambda e: (-self.scores[e], e))

    def would_keep(self, score: float) -> bool:
        """Whether an epoch scoring ``score`` is among the k best so far (a tie with the k-th is not)."""
        if not math.isfinite(score):
            return False
        ranked = self.ranked()
        return len(ranked) < self.k or score > self.scores[ranked[self.k - 1]]

    def offer(self, epoch: int, score: float, model: nn.Module) -> bool:
        """Keep ``model``'s weights for ``epoch`` if it is among the k best so far; True when kept."""
        if not self.would_keep(score):
            return False
        self.files.root.mkdir(parents=True, exist_ok=True)
        save_torch(self.path(epoch), {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        self.scores[epoch] = score
        for dropped in self.ranked()[self.k :]:
            del self.scores[dropped]
        write_json(self.files.index, {str(e): s for e, s in self.scores.items()})
        keep = {self.path(e) for e in self.scores}
        for f in self.files.epoch_files():  # dropped epochs, and any file a kill left unlisted
            if f not in keep:
                f.unlink()
        return True

    def load(self) -> list[Weights]:
        """The kept weights, best first."""
        return [load_torch(self.path(e)) for e in self.ranked()]


def average_weights(members: Sequence[Weights]) -> Weights:
    """The mean of every floating tensor over ``members``; other tensors (counters) from the first member."""
    first = members[0]
    out: Weights = {}
    for key, value in first.items():
        if value.is_floating_point():
            out[key] = torch.stack([m[key].to(torch.float64) for m in members]).mean(0).to(value.dtype)
        else:
            out[key] = value.clone()
    return out


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def recompute_batchnorm(model: nn.Module, inputs: Iterable[torch.Tensor]) -> None:
    """BatchNorm running statistics of ``model`` re-estimated from ``inputs`` (batches on the model's device)."""
    torch.optim.swa_utils.update_bn(inputs, model)


def average_into_best(
    top: TopK, cfg: ModelConfig, ctx: Context, loaders: Loaders, state: TrainState, best_path: Path
) -> dict[str, Any]:
    """Average the kept epochs, recompute BatchNorm, validate; write it as ``best_path`` when it beats the best epoch.

    Runs on every process (validation all-reduces; under DDP rank 0's BatchNorm statistics are broadcast, so every
    process scores the same model); rank 0 writes. Returns metrics.json's ``averaged`` entry.
    """
    epochs = sorted(top.scores)
    if len(epochs) < 2:
        return {"epochs": epochs, "used": False, "why": "fewer than 2 epochs kept"}
    model = build_model(cfg, len(ctx.classes)).to(ctx.device)
    model.load_state_dict(average_weights(top.load()))
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if has_batchnorm(model):
        seed_epoch(cfg.recipe.seed, state.epoch)  # the pass's shuffling and augmentation repeat on a rerun
        loaders.set_epoch(cfg.recipe.seed, state.epoch)
        with torch.no_grad():
            recompute_batchnorm(model, (ctx.inputs(b)[0] for b in loaders.train))
        for buf in model.buffers():
            ctx.ddp.broadcast(buf)
    val = evaluate(model, loaders.val, ctx)
    used = bool(val["score"] > state.best)
    summary = {
        "epochs": epochs,
        "val_score": val["score"],
        "val_mIoU": val["mIoU"],
        "best_epoch_score": state.best,
        "used": used,
    }
    if ctx.ddp.main:
        print(
            f"{ctx.run.title}: the average of epochs {epochs} validates {val['score']:.4f} against the best epoch's "
            f"{state.best:.4f}: {'used as best.pt' if used else 'not used'}"
        )
        if used:
            ck = load_torch(best_path)
            weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            ck.update(model=weights, ema=None, metrics=val, averaged=summary)
            save_torch(best_path, ck)
    return summary
