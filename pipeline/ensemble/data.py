"""The images an ensemble predicts: each fold's validation images (out-of-fold) and the competition's test set."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from pipeline.config import Params
from pipeline.data.coco import load_coco
from pipeline.data.dataset import SegDataset
from pipeline.data.folds import read_folds
from pipeline.errors import UserError
from pipeline.io import safe_join
from pipeline.paths import Layout
from pipeline.predict import iter_logits

if TYPE_CHECKING:
    from pipeline.ensemble.members import Runtime


@dataclasses.dataclass
class OofData:
    """Per-fold validation images of the train set: ids and paths."""

    ids: dict[int, list[int]]
    images: dict[int, list[Path]]

    def fold_of(self) -> dict[int, int]:
        """``image id -> fold``."""
        return {i: f for f, ids in self.ids.items() for i in ids}


def oof_data(layout: Layout, params: Params, folds: Sequence[int]) -> OofData:
    """The validation images of ``folds`` from the saved folds."""
    df = read_folds(layout)
    root = params.data.images_path
    ids, images = {}, {}
    for f in folds:
        sel = df[df["fold"] == f]
        ids[f] = [int(i) for i in sel["image_id"]]
        images[f] = [safe_join(root, n) for n in sel["file_name"]]
    return OofData(ids, images)


def predict_oof(
    forward_by_fold: dict[int, nn.Module], data: OofData, rt: Runtime, limit: dict[int, int] | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (image id, (C, H, W) float32 probabilities) for each fold's validation images (the first
    ``limit[fold]`` of them) with that fold's forward."""
    for f, forward in forward_by_fold.items():
        n = limit[f] if limit else len(data.ids[f])
        ds = SegDataset(data.images[f][:n], None, None, preload=False)
        # around this generator's own work only (a generator's consumer raises in its own frame, not in here)
        with rt.memory(f"fold {f}: predicting out of fold (to choose TTA, weights and post-processing)"):
            for idx, logp in iter_logits(forward, ds, rt.device, rt.batch, amp_ctx=rt.amp_ctx):
                probs = rt.probabilities(logp).cpu().numpy()
                for j, i in enumerate(idx.tolist()):
                    yield data.ids[f][i], probs[j]


@dataclasses.dataclass
class TestSet:
    ids: list[int]
    file_names: list[str]
    paths: list[Path]
    sizes: list[tuple[int, int]]


def test_set(params: Params, images_dir: str | None = None) -> TestSet:
    """The competition's test images (test.json), or every image in a folder (``--images``)."""
    if images_dir is not None:
        folder = Path(images_dir)
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".tif", ".bmp"})
        if not files:
            raise UserError(f"{folder}: no images found")
        sizes = []
        from PIL import Image

        for f in files:
            with Image.open(f) as im:
                sizes.append((im.height, im.width))
        names = [str(f.relative_to(folder)) for f in files]
        return TestSet(list(range(1, len(files) + 1)), names, files, sizes)
    coco = load_coco(params.data.test_json_path, require_annotations=False, on_error=params.data.on_error)
    images_root = params.data.images_path
    return TestSet(
        [im.id for im in coco.images],
        [im.file_name for im in coco.images],
        [safe_join(images_root, im.file_name) for im in coco.images],
        [(im.height, im.width) for im in coco.images],
    )
