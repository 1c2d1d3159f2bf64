"""The folds stage: k folds made once, seeded, saved to ``folds.csv`` and re-read by everything downstream.

Images are stratified on per-image class presence (a multi-label problem) with iterative stratification
(``iterstrat.MultilabelStratifiedKFold``). With a group key (the image's sub-folder), whole groups are stratified
on their pooled presence counts, so a group never spans two folds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from pipeline.config import DataParams, FoldsParams
from pipeline.errors import UserError
from pipeline.io import digest_set, read_json, write_csv
from pipeline.paths import Layout, PseudoSetFiles


def presence_matrix(index: pd.DataFrame, num_classes: int) -> np.ndarray:
    """(N, K) 0/1 presence of classes 1..K per image, from train_index.csv's ``classes`` column."""
    y = np.zeros((len(index), num_classes), np.int64)
    for i, text in enumerate(index["classes"].fillna("").astype(str)):
        for c in text.split():
            y[i, int(c) - 1] = 1
    return y


def group_keys(file_names: pd.Series, group_by: str) -> np.ndarray | None:
    if group_by == "none":
        return None
    # group_by == "subfolder": the parent folder of file_name ("" for images at the top level)
    return np.array([str(PurePosixPath(f).parent) for f in file_names])


def assign_folds(y: np.ndarray, k: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """(N,) fold index per image from multi-label stratification; groups (if given) stay within one fold."""
    if groups is None:
        if len(y) < k:
            raise UserError(f"folds: {len(y)} images cannot make k={k} folds")
        folds = np.full(len(y), -1, np.int64)
        # iterstrat refuses a single label column (sklearn calls it "binary", not multilabel), which is every
        # one-class competition: stratify on present/absent instead. An image with no class still gets a fold.
        if y.shape[1] < 2:
            y = np.concatenate([y, 1 - y], axis=1) if y.shape[1] == 1 else np.ones((len(y), 2), np.int64)
        for f, (_, val) in enumerate(MultilabelStratifiedKFold(k, shuffle=True, random_state=seed).split(y, y)):
            folds[val] = f
        return folds
    uniq, inverse = np.unique(groups, return_inverse=True)
    if len(uniq) < k:
        raise UserError(f"folds: {len(uniq)} groups cannot make k={k} folds (group_by: subfolder)")
    pooled = np.zeros((len(uniq), y.shape[1]), np.int64)
    np.add.at(pooled, inverse, y)
    group_fold = assign_folds((pooled > 0).astype(np.int64), k, seed)
    return group_fold[inverse]


def balance_table(y: np.ndarray, folds: np.ndarray, class_names: list[str]) -> str:
    """Per-fold image counts and class presence (share of the fold's images), as an aligned text table."""
    k = int(folds.max()) + 1
    head = f"{'fold':>4} {'images':>7} " + " ".join(f"{n[:6]:>6}" for n in class_names)
    lines = [head]
    for f in range(k):
        sel = y[folds == f]
        shares = sel.mean(axis=0) if len(sel) else np.zeros(y.shape[1])
        lines.append(f"{f:>4} {len(sel):>7} " + " ".join(f"{s:>6.3f}" for s in shares))
    return "\n".join(lines)


def check_masks_outputs(layout: Layout) -> None:
    """Refuse masks-stage outputs that are not one set: a killed masks run can swap in its masks folder and die
    before rewriting the index beside it (which would then list images that have no mask, or miss new ones).

    The masks stage writes ``mask_summary.json`` last, with the digests of the masks folder, the index and
    classes.json (``outputs``); they must match. A project without the summary (an index written by hand) is not
    checked.
    """
    if not layout.mask_summary.is_file():
        return
    rerun = "re-run the masks stage (python -m stages.masks, or dvc repro masks)"
    recorded = read_json(layout.mask_summary).get("outputs")
    if not isinstance(recorded, dict):
        raise UserError(f"{layout.mask_summary}: has no record of its outputs (an older version wrote it); {rerun}")
    paths = [layout.masks_dir, layout.train_index, layout.classes_json]
    for path in paths:
        if not path.exists():
            raise UserError(f"{path}: not found; {rerun}")
    actual = digest_set(paths)
    stale = [name for name, digest in actual.items() if recorded.get(name) != digest]
    if stale:
        raise UserError(
            f"{layout.work}: {', '.join(stale)} and {layout.mask_summary.name} are not from the same masks run (one "
            f"was interrupted between writing them, or a file was edited); {rerun}"
        )


def build_folds(params: FoldsParams, layout: Layout) -> tuple[pd.DataFrame, str]:
    """Read the masks stage's index, write ``folds.csv`` (image_id, file_name, fold); return it and the table."""
    if params.k < 2:
        raise UserError(f"folds.k must be at least 2, got {params.k}")
    check_masks_outputs(layout)
    index = pd.read_csv(layout.train_index, dtype={"classes": str}, keep_default_na=False)
    classes = read_json(layout.classes_json)
    names = [c["name"] for c in classes[1:]]
    y = presence_matrix(index, len(names))
    folds = assign_folds(y, params.k, params.seed, group_keys(index["file_name"], params.group_by))
    out = pd.DataFrame({"image_id": index["image_id"], "file_name": index["file_name"], "fold": folds})
    write_csv(layout.folds_csv, list(out.columns), out.values.tolist())
    return out, balance_table(y, folds, names)


def read_folds(layout: Layout) -> pd.DataFrame:
    """The saved folds; nothing downstream re-splits."""
    if not layout.folds_csv.is_file():
        raise UserError(f"{layout.folds_csv} not found: run the folds stage first (dvc repro folds)")
    return pd.read_csv(layout.folds_csv)


@dataclasses.dataclass
class FoldSplit:
    """Paths of one fold's training and validation images and masks."""

    train_images: list[Path]
    train_masks: list[Path]
    val_ids: list[int]
    val_images: list[Path]
    val_masks: list[Path]
    extra: int = 0  # the last ``extra`` training pairs are the extra ones (pseudo-labelled test images)

    def soft_targets(self) -> list[Path | None] | None:
        """``pseudo.soft``: per training image, the teacher's probabilities of an extra (pseudo-labelled) one, ``None``
        for a labelled one; ``None`` without extra images. A :class:`UserError` when the pseudo stage wrote none."""
        if self.extra == 0:
            return None
        n = len(self.train_masks) - self.extra
        soft = [PseudoSetFiles.soft_for(m) for m in self.train_masks[n:]]
        missing = next((p for p in soft if not p.is_file()), None)
        if missing is not None:
            raise UserError(
                f"{missing} not found: pseudo.soft needs the teacher's probabilities, which the pseudo stage writes "
                "only with pseudo.soft: true; run it again (dvc repro pseudo)"
            )
        return [None] * n + soft  # type: ignore[list-item]


def fold_split(layout: Layout, data: DataParams, fold: int, extra: Sequence[tuple[Path, Path]] = ()) -> FoldSplit:
    """Split the saved folds: fold ``fold`` validates, the rest (plus ``extra`` image/mask pairs) train.

    ``extra`` (e.g. pseudo-labelled test images) only ever joins the training side.
    """
    folds = read_folds(layout)
    if fold not in set(folds["fold"]):
        raise UserError(f"fold {fold} is not in {layout.folds_csv} (folds 0..{folds['fold'].max()})")
    images_root = data.images_path
    tr, va = folds[folds["fold"] != fold], folds[folds["fold"] == fold]
    return FoldSplit(
        train_images=[images_root / f for f in tr["file_name"]] + [p for p, _ in extra],
        train_masks=[layout.mask_path(i) for i in tr["image_id"]] + [m for _, m in extra],
        val_ids=[int(i) for i in va["image_id"]],
        val_images=[images_root / f for f in va["file_name"]],
        val_masks=[layout.mask_path(i) for i in va["image_id"]],
        extra=len(extra),
    )
