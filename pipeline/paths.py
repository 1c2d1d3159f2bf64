"""The one place that owns the output layout: every artifact path is derived here from ids, and every file name the
pipeline writes or reads is written here once.

``dvc.yaml`` uses the same templates (a test checks that they agree), and no other module writes a file-name literal
(tests/unit/test_file_names.py). Besides :class:`Layout` (the project's artifacts), small helpers name the files of a
folder the caller chooses: a trained fold (:class:`FoldFiles`), a pseudo-label set (:class:`PseudoSetFiles`), a
competition folder (:class:`CompetitionFiles`) and a held-back truth folder (:class:`TruthFiles`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

# the kernel's description of this machine's CPUs (Linux): its flags tell native bf16 (pipeline.predict.cpu_has_bf16)
CPUINFO = Path("/proc/cpuinfo")
PROC_SELF_STAT = Path("/proc/self/stat")  # this process's start (pipeline.clock)
PROC_UPTIME = Path("/proc/uptime")

# a local weights file for an encoder, in order of preference (pipeline.plan.stage.find_weights)
WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def weights_files(weights_dir: str | Path, encoder: str) -> list[Path]:
    """Where a local weights file for ``encoder`` may be: ``<weights_dir>/<encoder><suffix>``, preferred first."""
    return [Path(weights_dir) / f"{encoder}{suffix}" for suffix in WEIGHTS_SUFFIXES]


def generated_image_name(prefix: str, i: int) -> str:
    """The file name of the ``i``-th image a generator writes (the demo, the zoo, the M2NIST importer)."""
    return f"{prefix}_{i:05d}.png"


@dataclasses.dataclass(frozen=True)
class CompetitionFiles:
    """A competition folder as the demo, the zoo and the importers write it: ``train.json``, ``test.json``,
    ``images/`` and (optionally) ``sample_submission.csv``. The pipeline reads the files the ``data.*`` params name
    (:class:`pipeline.config.DataParams`), whose defaults are these names."""

    root: Path

    TRAIN_JSON: ClassVar[str] = "train.json"
    TEST_JSON: ClassVar[str] = "test.json"
    IMAGES: ClassVar[str] = "images"
    SAMPLE_SUBMISSION: ClassVar[str] = "sample_submission.csv"

    @property
    def train_json(self) -> Path:
        return Path(self.root) / self.TRAIN_JSON

    @property
    def test_json(self) -> Path:
        return Path(self.root) / self.TEST_JSON

    @property
    def images_dir(self) -> Path:
        return Path(self.root) / self.IMAGES

    @property
    def sample_submission(self) -> Path:
        return Path(self.root) / self.SAMPLE_SUBMISSION


@dataclasses.dataclass(frozen=True)
class TruthFiles:
    """A held-back test truth folder: one ``<test image stem>.png`` class mask per test image, ``classes.json`` (what
    the indices mean) and ``competition.json`` (whose truth it is: :mod:`pipeline.data.truth`)."""

    root: Path

    RECORD: ClassVar[str] = "competition.json"

    @property
    def classes_json(self) -> Path:
        return Path(self.root) / "classes.json"

    @property
    def record(self) -> Path:
        return Path(self.root) / self.RECORD

    def mask(self, stem: str) -> Path:
        """The truth mask of the test image whose file name has stem ``stem``."""
        return Path(self.root) / f"{stem}.png"


@dataclasses.dataclass(frozen=True)
class TopFiles:
    """The k best epochs' weights of one run (``recipe.average_best``, :mod:`pipeline.training.average`)."""

    root: Path

    @property
    def index(self) -> Path:
        """The kept epochs and their validation scores."""
        return self.root / "index.json"

    def epoch(self, epoch: int) -> Path:
        return self.root / f"epoch{epoch:03d}.pt"

    def epoch_files(self) -> list[Path]:
        return sorted(self.root.glob("epoch*.pt"))


@dataclasses.dataclass(frozen=True)
class FoldFiles:
    """The files of one trained (model, fold, round) folder (:meth:`Layout.model_dir`, or a run's ``out_dir``)."""

    root: Path

    def checkpoint(self, which: str = "best") -> Path:
        """``best.pt`` (the best epoch's weights) or ``last.pt`` (what a resume reads)."""
        return self.root / f"{which}.pt"

    @property
    def best(self) -> Path:
        return self.checkpoint("best")

    @property
    def last(self) -> Path:
        return self.checkpoint("last")

    @property
    def oof(self) -> Path:
        """Out-of-fold probabilities of the fold's validation images."""
        return self.root / "oof.npz"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def config(self) -> Path:
        """The resolved model config the run trained with."""
        return self.root / "config.yaml"

    @property
    def skipped(self) -> Path:
        """Written instead of a model by a switched-off training round, saying why."""
        return self.root / "skipped.txt"

    @property
    def top(self) -> TopFiles:
        """The k best epochs' weights (``recipe.average_best``)."""
        return TopFiles(self.root / "top")

    # the fold report (pipeline.training.finish.fold_report)
    @property
    def per_class_csv(self) -> Path:
        return self.root / "per_class.csv"

    @property
    def per_class_md(self) -> Path:
        return self.root / "per_class.md"

    @property
    def confusion_png(self) -> Path:
        return self.root / "confusion.png"

    @property
    def examples_png(self) -> Path:
        return self.root / "examples.png"


@dataclasses.dataclass(frozen=True)
class PseudoSetFiles:
    """The files of one pseudo-label set (:meth:`Layout.pseudo_dir`): a mask per kept test image, ``index.csv`` and
    ``summary.json``; with ``pseudo.soft`` also the teacher's probabilities beside each mask (:meth:`soft_for`)."""

    root: Path

    @staticmethod
    def mask_name(image_id: int) -> str:
        """The mask's file name, as ``index.csv`` records it (relative to the set's folder)."""
        return f"{image_id}.png"

    def mask(self, image_id: int) -> Path:
        return self.root / self.mask_name(image_id)

    @staticmethod
    def soft_for(mask: Path) -> Path:
        """The teacher's probabilities of a pseudo mask: ``<id>.soft.npy`` beside ``<id>.png``, a (C, H, W) uint8
        array of ``round(p * 255)``.

        >>> PseudoSetFiles.soft_for(Path("work/r1/pseudo/0/17.png")).as_posix()
        'work/r1/pseudo/0/17.soft.npy'
        """
        return mask.with_name(f"{mask.stem}.soft.npy")

    @property
    def index_csv(self) -> Path:
        return self.root / "index.csv"

    @property
    def summary_json(self) -> Path:
        return self.root / "summary.json"


@dataclasses.dataclass(frozen=True)
class Layout:
    """Artifact paths below a project root (the repository root by default)."""

    root: Path = Path(".")

    @property
    def params_yaml(self) -> Path:
        return self.root / "params.yaml"

    @property
    def dvc_lock(self) -> Path:
        return self.root / "dvc.lock"

    @property
    def dvc_yaml(self) -> Path:
        return self.root / "dvc.yaml"

    @property
    def work(self) -> Path:
        return self.root / "work"

    def parallel_log(self, stage: str, worker: int) -> Path:
        """The log of worker ``worker`` of a training stage run by :mod:`pipeline.parallel_folds`."""
        return self.work / "parallel" / f"{stage}.{worker}.log"

    @property
    def scratch_dir(self) -> Path:
        """Where :mod:`pipeline.store` spills arrays: anonymous files, unlinked when made, on the project's disk."""
        return self.work

    # the competition and its held-back truth where the demo writes them (the defaults of data.root, data.truth_dir)
    @property
    def competition_dir(self) -> Path:
        return self.root / "data" / "competition"

    @property
    def truth_dir(self) -> Path:
        return self.root / "data" / "truth"

    # profiles (pipeline.profile): overlays of params.yaml
    @property
    def profiles_dir(self) -> Path:
        return self.root / "profiles"

    def profile(self, name: str) -> Path:
        return self.profiles_dir / f"{name}.yaml"

    # masks stage
    @property
    def masks_dir(self) -> Path:
        return self.work / "masks"

    @staticmethod
    def mask_name(image_id: int) -> str:
        return f"{image_id}.png"

    def mask_path(self, image_id: int) -> Path:
        return self.masks_dir / self.mask_name(image_id)

    @property
    def decoded_dir(self) -> Path:
        """Training's disk cache of decoded (image, mask) pairs (:mod:`pipeline.data.cache`); safe to delete."""
        return self.work / "decoded"

    def decoded_path(self, key: str) -> Path:
        """The cache entry of one decoded pair, named by its sources' digest."""
        return self.decoded_dir / f"{key}.npy"

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

    def fold_files(self, model: str, fold: int, round_: int = 1) -> FoldFiles:
        return FoldFiles(self.model_dir(model, fold, round_))

    def oof_path(self, model: str, fold: int, round_: int = 1) -> Path:
        return self.fold_files(model, fold, round_).oof

    def checkpoint(self, model: str, fold: int, round_: int = 1, which: str = "best") -> Path:
        return self.fold_files(model, fold, round_).checkpoint(which)

    # pseudo-labelling: one set per fold (leak-free) or one shared set ("all")
    def pseudo_metrics(self, round_: int) -> Path:
        """The pseudo stage's summary for the labels round ``round_``'s models make."""
        return self.metrics_dir / f"pseudo_r{round_}.json"

    def pseudo_dir(self, round_: int, fold: int | str) -> Path:
        return self.round_dir(round_) / "pseudo" / f"fold{fold}"

    def pseudo_files(self, round_: int, fold: int | str) -> PseudoSetFiles:
        return PseudoSetFiles(self.pseudo_dir(round_, fold))

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

    @property
    def submission(self) -> Path:
        """The default of ``infer.output``."""
        return self.submissions_dir / "submission.csv"

    @property
    def overlays_dir(self) -> Path:
        """PNG overlays of the first test predictions (the infer stage)."""
        return self.reports_dir / "overlays"

    def overlay_path(self, stem: str) -> Path:
        return self.overlays_dir / f"{stem}.png"

    def timing_path(self, stage: str) -> Path:
        return self.metrics_dir / "timing" / f"{stage}.json"

    @property
    def infer_json(self) -> Path:
        return self.metrics_dir / "infer.json"

    @property
    def leaderboard_json(self) -> Path:
        return self.metrics_dir / "leaderboard.json"

    # the report stage (pipeline.report)
    @property
    def summary_json(self) -> Path:
        return self.metrics_dir / "summary.json"

    @property
    def summary_md(self) -> Path:
        return self.reports_dir / "summary.md"

    @property
    def predictions_png(self) -> Path:
        """The grid of test predictions that ``summary.md`` shows (beside it: the link is its bare name)."""
        return self.reports_dir / "predictions.png"

    # the ablation (pipeline.ablation, pipeline.repeats)
    @property
    def ablation_json(self) -> Path:
        return self.metrics_dir / "ablation.json"

    @property
    def ablation_md(self) -> Path:
        return self.reports_dir / "ablation.md"

    def ablation_submission(self, row: str) -> Path:
        return self.submissions_dir / "ablation" / f"{row}.csv"

    def ablation_seed(self, seed: int) -> Path:
        """One seed's ablation rows (``--seeds``)."""
        return self.metrics_dir / "ablation" / f"seed{seed}.json"
