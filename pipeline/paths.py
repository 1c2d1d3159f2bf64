"""The one place that owns the output layout: every artifact path is derived here from ids.

``dvc.yaml`` uses the same templates (a test checks that they agree), and stages never write path literals.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Layout:
    """Artifact paths below a project root (the repository root by default)."""

    root: Path = Path(".")

    @property
    def work(self) -> Path:
        return self.root / "work"

    # masks stage
    @property
    def masks_dir(self) -> Path:
        return self.work / "masks"

    def mask_path(self, image_id: int) -> Path:
        return self.masks_dir / f"{image_id}.png"

    @property
    def classes_json(self) -> Path:
        return self.work / "classes.json"

    @property
    def train_index(self) -> Path:
        """One row per usable train image: image_id, file_name, height, width, present class indices."""
        return self.work / "train_index.csv"

    @property
    def mask_summary(self) -> Path:
        return self.work / "mask_summary.json"

    # plan stage
    @property
    def plan_yaml(self) -> Path:
        """The plan: fingerprint, machine, every planned key with its source and reason, the budget split."""
        return self.work / "plan.yaml"

    # folds stage
    @property
    def folds_csv(self) -> Path:
        return self.work / "folds.csv"

    # training
    def model_config(self, name: str) -> Path:
        return self.root / "configs" / "models" / f"{name}.yaml"

    def round_dir(self, round_: int) -> Path:
        """Everything a round makes: ``models/<model>/fold<k>`` (and, for round 1, ``pseudo/``)."""
        return self.work / f"r{round_}"

    def model_dir(self, model: str, fold: int, round_: int = 1) -> Path:
        return self.round_dir(round_) / "models" / model / f"fold{fold}"

    def curve_path(self, model: str, fold: int, round_: int = 1) -> Path:
        """Per-epoch training log (dvc plots); outside the model folder, which DVC tracks as one output."""
        return self.metrics_dir / "curves" / f"r{round_}" / f"{model}-fold{fold}.csv"

    def oof_path(self, model: str, fold: int, round_: int = 1) -> Path:
        return self.model_dir(model, fold, round_) / "oof.npz"

    def checkpoint(self, model: str, fold: int, round_: int = 1, which: str = "best") -> Path:
        return self.model_dir(model, fold, round_) / f"{which}.pt"

    # pseudo-labelling: one set per fold (leak-free) or one shared set ("all")
    def pseudo_metrics(self, round_: int) -> Path:
        """The pseudo stage's summary for the labels round ``round_``'s models make."""
        return self.metrics_dir / f"pseudo_r{round_}.json"

    def pseudo_dir(self, round_: int, fold: int | str) -> Path:
        return self.round_dir(round_) / "pseudo" / f"fold{fold}"

    # reports and submissions
    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def submissions_dir(self) -> Path:
        return self.root / "submissions"

    @property
    def ledger(self) -> Path:
        return self.submissions_dir / "ledger.csv"

    def timing_path(self, stage: str) -> Path:
        return self.metrics_dir / "timing" / f"{stage}.json"

    @property
    def infer_json(self) -> Path:
        return self.metrics_dir / "infer.json"

    @property
    def leaderboard_json(self) -> Path:
        return self.metrics_dir / "leaderboard.json"
