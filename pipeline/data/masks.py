"""The masks stage: a COCO competition's train split -> one PNG class mask per image, classes.json, an index and
a per-class summary. Images are checked and painted in parallel worker processes.

Kill-safety: the masks folder is swapped in whole (:func:`pipeline.io.atomic_dir`), then classes.json, the index
and last the summary are written, each atomically. A kill between those steps leaves new masks beside an old index;
so the summary records the digests of the other three (``outputs``), and the folds stage
(:func:`pipeline.data.folds.check_masks_outputs`) refuses a set that does not match. Workers die with the main
process, and the temp files and folders of a killed run are removed by the next one.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.config import DataParams, MasksParams
from pipeline.data.coco import Category, CocoImage, check_image_file, load_coco, paint_mask
from pipeline.errors import DataError, UserError
from pipeline.io import atomic_dir, clean_stale_tmp, digest_set, write_csv, write_json, write_png
from pipeline.labels import IGNORE_INDEX, check_multilabel_classes, class_pixels
from pipeline.paths import Layout


def _paint_one(job: tuple[Any, ...]) -> tuple[int, np.ndarray | None, str | None]:
    """Worker: check the image file, paint and write the mask. Errors come back as text (they must pickle)."""
    image, categories, overlap, crowd, images_root, json_path, out_dir = job
    try:
        check_image_file(images_root, image, json_path)
        mask = paint_mask(image, categories, overlap, crowd)
        write_png(out_dir / Layout.mask_name(image.id), mask)
        return image.id, np.bincount(mask.ravel(), minlength=256).astype(np.int64), None
    except DataError as e:
        return image.id, None, str(e)


def _die_with_parent(parent: int) -> None:
    """Pool initializer: a worker must not outlive the main process (a ``kill -9`` of it used to leave the workers
    painting on, reparented). Linux: the kernel kills the worker when its parent dies (``PR_SET_PDEATHSIG``);
    everywhere: a thread that exits when the parent changes."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


def build_masks(data: DataParams, params: MasksParams, layout: Layout) -> dict[str, Any]:
    """Convert ``data.root/data.train_json`` into masks under ``layout``; return the summary written beside them."""
    root = Path(data.root)
    if not root.is_dir():
        raise UserError(f"competition folder not found: {root} (set data.root in params.yaml)")
    json_path = data.train_json_path
    coco = load_coco(json_path, require_annotations=True, on_error=data.on_error)
    images_root = data.images_path
    categories: list[Category] = coco.categories
    multilabel = params.overlap == "multilabel"
    if multilabel:
        check_multilabel_classes(len(categories), str(json_path))
    skipped = dict(coco.skipped)
    kept: list[CocoImage] = []
    counts: dict[int, np.ndarray] = {}
    for path in (layout.train_index, layout.classes_json, layout.mask_summary):
        clean_stale_tmp(path)  # a killed run's half-written temp files (atomic_dir cleans beside the masks)
    with atomic_dir(layout.masks_dir) as out_dir:
        jobs = [(im, categories, params.overlap, params.crowd, images_root, json_path, out_dir) for im in coco.images]
        by_id = {im.id: im for im in coco.images}
        ctx = mp.get_context("spawn" if sys.platform == "darwin" else "fork")
        # A ProcessPoolExecutor, not a multiprocessing.Pool: when a worker dies (out of memory, a crash in native
        # code) the Pool silently waits forever for its lost task, the executor raises BrokenProcessPool.
        pool = ProcessPoolExecutor(
            max(1, params.workers), mp_context=ctx, initializer=_die_with_parent, initargs=(os.getpid(),)
        )
        with pool:
            results = pool.map(_paint_one, jobs, chunksize=32)
            try:
                for image_id, hist, err in tqdm(results, total=len(jobs), desc="masks", unit="img", mininterval=1.0):
                    if err is not None:
                        if data.on_error == "fail":
                            pool.shutdown(wait=False, cancel_futures=True)
                            raise UserError(err + " (set data.on_error: skip to skip such images)")
                        skipped["bad image file"] = skipped.get("bad image file", 0) + 1
                        continue
                    counts[image_id] = hist
                    kept.append(by_id[image_id])
            except BrokenProcessPool as e:
                raise RuntimeError(f"a masks worker died (out of memory? try masks.workers: 1): {e}") from e
    if not kept:
        raise UserError(f"{json_path}: no usable train images")
    kept.sort(key=lambda im: im.id)
    k = len(categories)
    # per image, (K + 1,) pixels of each class (a multilabel mask's bits counted per class) and its ignore pixels
    pixels = {i: class_pixels(h, k + 1, multilabel) for i, h in counts.items()}
    # One row per image: which class indices are present (folds stratify on this, without re-reading masks).
    rows = []
    for im in kept:
        present = [str(c) for c in range(1, k + 1) if pixels[im.id][c] > 0]
        rows.append([im.id, im.file_name, im.height, im.width, " ".join(present)])
    classes = coco.classes()
    write_json(layout.classes_json, classes)
    write_csv(layout.train_index, ["image_id", "file_name", "height", "width", "classes"], rows)
    total = np.sum([pixels[im.id] for im in kept], axis=0)
    presence = np.sum([pixels[im.id] > 0 for im in kept], axis=0)
    summary = {
        "images": len(kept),
        "annotations": sum(len(im.annotations) for im in kept),
        "skipped": skipped,
        "labels": "multilabel" if multilabel else "multiclass",  # multilabel: bit-field masks (pipeline/labels.py)
        "ignored_pixels": int(sum(counts[im.id][IGNORE_INDEX] for im in kept)),
        "classes": [
            {
                "index": c["index"],
                "name": c["name"],
                "pixels": int(total[c["index"]]),
                "images": int(presence[c["index"]]),
            }
            for c in classes
        ],
        # written last, it vouches for the other outputs as one set (pipeline.data.folds.check_masks_outputs)
        "outputs": digest_set([layout.masks_dir, layout.train_index, layout.classes_json]),
    }
    write_json(layout.mask_summary, summary)
    if skipped:
        print(f"warning: skipped {sum(skipped.values())} entries: {skipped}", file=sys.stderr)
    return summary


def summary_table(summary: dict[str, Any]) -> str:
    """The per-class pixel and presence counts as an aligned text table."""
    lines = [f"{'index':>5}  {'class':<16}{'pixels':>12}{'images':>8}"]
    for c in summary["classes"]:
        lines.append(f"{c['index']:>5}  {c['name'][:16]:<16}{c['pixels']:>12}{c['images']:>8}")
    return "\n".join(lines)
