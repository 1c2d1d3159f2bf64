"""Shared test utilities: write small COCO competitions, the pycocotools reference masks to compare against, and
processes to kill mid-run.

The reference never goes through ``pipeline``: it is ``pycocotools.coco.COCO(json).annToMask(ann)`` painted in the
documented order (larger objects first, ties by annotation id; or smaller first; or file order), crowd regions as
their class or as 255.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image
from pycocotools.coco import COCO

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------------------
# Segmentation encoders (independent of pipeline.data.coco_write)


def compressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a binary (H, W) mask, ``counts`` as str."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE: run lengths over the column-major pixels, starting with a (maybe empty) 0-run."""
    flat = mask.astype(bool).ravel(order="F")
    counts, value, run = [], False, 0
    for px in flat.tolist():
        if px != value:
            counts.append(run)
            value, run = px, 0
        run += 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def random_polygon(rng: np.random.Generator, height: int, width: int, points: int = 5) -> list[float]:
    """A random (possibly self-intersecting) polygon with float vertices, mostly inside the image."""
    cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
    angles = np.sort(rng.uniform(0, 2 * np.pi, points))
    radius = rng.uniform(0.15, 0.45, points) * min(height, width)
    xs = np.clip(cx + radius * np.cos(angles), -2, width + 2)
    ys = np.clip(cy + radius * np.sin(angles), -2, height + 2)
    return [round(float(v), 2) for xy in zip(xs, ys, strict=True) for v in xy]


def random_blob(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random ellipse, sometimes with a hole punched in it: (H, W) uint8 0/1."""
    yy, xx = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
    ry, rx = rng.uniform(0.15, 0.4) * height, rng.uniform(0.15, 0.4) * width
    r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    mask = r <= 1
    if rng.random() < 0.5:
        mask &= r >= 0.15
    return mask.astype(np.uint8)


def square(height: int, width: int, y: int, x: int, size: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[y : y + size, x : x + size] = 1
    return mask


# --------------------------------------------------------------------------------------------------------------
# Writing competitions


def write_image(path: Path, height: int, width: int, rng: np.random.Generator) -> None:
    """Random pixels: ``.jpg`` as an RGB JPEG, anything else as a grayscale PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB").save(path, "JPEG")
    else:
        Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "L").save(path, "PNG")


def write_competition(
    root: Path,
    images: Sequence[dict[str, Any]],
    annotations: Sequence[dict[str, Any]],
    categories: Sequence[dict[str, Any]],
    json_name: str = "train.json",
    images_dir: str = "images",
    seed: int = 0,
) -> Path:
    """Write ``root/json_name`` and one image file per image entry under ``root/images_dir``; return the json path."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for im in images:
        write_image(root / images_dir / im["file_name"], im["height"], im["width"], rng)
    return write_json(
        root / json_name, {"images": list(images), "annotations": list(annotations), "categories": list(categories)}
    )


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


# Non-contiguous category ids: class indices 1, 2, 3 in id order, whatever the file order.
OTHER_CATEGORIES = [{"id": 90, "name": "gamma"}, {"id": 3, "name": "alpha"}, {"id": 17, "name": "beta"}]

_LAYOUTS = [  # file_name, height, width: sub-folders, RGB jpg and grayscale png, different sizes
    ("top.png", 30, 40),
    ("a/one.jpg", 48, 32),
    ("a/two.png", 25, 25),
    ("b/c/deep.jpg", 36, 52),
    ("b/c/more.png", 40, 30),
    ("a/three.jpg", 33, 47),
]


def someone_elses_competition(root: Path, n_images: int = 6, seed: int = 0) -> Path:
    """A COCO competition unlike the demo; return its train.json path.

    Every image has: a two-part polygon and a random float polygon, a smaller compressed-RLE blob overlapping
    them, two equal-area overlapping squares (a tie for the size orders; their ids run against file order), one
    as uncompressed RLE and one as a polygon, and a crowd region (compressed RLE). Annotation ids are shuffled.
    """
    rng = np.random.default_rng(seed)
    cat_ids = [c["id"] for c in OTHER_CATEGORIES]
    images, anns = [], []
    for i in range(n_images):
        name, h, w = _LAYOUTS[i % len(_LAYOUTS)]
        if i >= len(_LAYOUTS):
            name = f"extra{i}/{name.rsplit('/', 1)[-1]}"
        image_id = 1000 + 7 * i
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})

        def add(segmentation: Any, iscrowd: int = 0, image_id: int = image_id) -> None:
            anns.append(
                {
                    "image_id": image_id,
                    "category_id": int(rng.choice(cat_ids)),
                    "segmentation": segmentation,
                    "iscrowd": iscrowd,
                }
            )

        left = [1.0, 1.0, w / 2, 1.5, w / 2 - 1, h - 2.0, 2.0, h - 3.0]
        right = [w / 2 + 2, h / 3, w - 1.0, h / 3 + 1, w - 3.0, h - 1.0]
        add([left, right])  # several parts
        add([random_polygon(rng, h, w, points=int(rng.integers(3, 9)))])
        add(compressed_rle(random_blob(rng, h, w)))
        s = min(h, w) // 3
        y, x = int(rng.integers(0, h - s - 2)), int(rng.integers(0, w - s - 2))
        add(uncompressed_rle(square(h, w, y, x, s)))
        add(
            [
                [
                    float(x + 2),
                    float(y + 2),
                    float(x + 2 + s),
                    float(y + 2),
                    float(x + 2 + s),
                    float(y + 2 + s),
                    float(x + 2),
                    float(y + 2 + s),
                ]
            ]
        )  # same area as the square above once rasterised, overlapping it
        add(compressed_rle(random_blob(rng, h, w)), iscrowd=1)
    for ann, ann_id in zip(anns, rng.permutation(len(anns)) + 1, strict=True):
        ann["id"] = int(ann_id)
    return write_competition(root, images, anns, OTHER_CATEGORIES, seed=seed)


# --------------------------------------------------------------------------------------------------------------
# The reference


def load_reference_coco(json_path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress
        return COCO(str(json_path))


def reference_masks(json_path: Path, overlap: str = "larger_first", crowd: str = "class") -> dict[int, np.ndarray]:
    """image id -> (H, W) uint8 class mask, painted from pycocotools' ``annToMask`` in the documented order."""
    coco = load_reference_coco(json_path)
    index = {cat_id: i + 1 for i, cat_id in enumerate(sorted(coco.getCatIds()))}
    out = {}
    for image_id, image in coco.imgs.items():
        decoded = [(ann, coco.annToMask(ann)) for ann in coco.imgToAnns[image_id]]  # file order
        if overlap == "larger_first":
            decoded.sort(key=lambda am: (-int(am[1].sum()), am[0]["id"]))
        elif overlap == "smaller_first":
            decoded.sort(key=lambda am: (int(am[1].sum()), am[0]["id"]))
        else:
            assert overlap == "annotation_order"
        mask = np.zeros((image["height"], image["width"]), np.uint8)
        for ann, m in decoded:
            mask[m > 0] = 255 if (crowd == "ignore" and ann.get("iscrowd")) else index[ann["category_id"]]
        out[image_id] = mask
    return out


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


# --------------------------------------------------------------------------------------------------------------
# Processes killed mid-run (kill -9 tests; Linux: /proc)


@contextlib.contextmanager
def started(
    args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None, **popen: Any
) -> Iterator[subprocess.Popen[bytes]]:
    """``subprocess.Popen(args)`` in a session (process group) of its own, for :func:`kill_9`. On the way out what
    is left of the group (the process, a worker that outlived it) is SIGKILLed and the process reaped, so a test
    that fails half-way leaves nothing running."""
    env = dict(env) if env is not None else None
    proc = subprocess.Popen(list(args), cwd=cwd, env=env, start_new_session=True, **popen)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # ProcessLookupError: nothing left
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def kill_9(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGKILL the process alone (not its group: its workers must go by themselves, which the tests check) and wait
    for it; return its exit status: ``-signal.SIGKILL``, or its own where it ended first."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    return proc.wait(timeout=timeout)


def children(pid: int) -> list[int]:
    """The process ids of ``pid``'s children (every thread's), now."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def alive(pid: int) -> bool:
    """Running (a zombie, killed but not yet reaped by init, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def reference_apply(pred: np.ndarray, rules: dict[int, tuple]) -> np.ndarray:
    """Post-processing rules ``{class: (min_area, min_total[, largest[, fill]])}`` written independently of
    pipeline.postprocess: scipy.ndimage's labelling (8-connected classes, 4-connected background) and per-component
    sizes; removal for every class, then each class's holes (background regions off the border whose 4-neighbours
    outside are all that class) filled."""
    from scipy import ndimage

    out = pred.copy()
    full = {c: (tuple(r) + (False, False))[:4] for c, r in rules.items()}
    for c, (min_area, min_total, largest, _) in full.items():
        mask = pred == c
        labels, n = ndimage.label(mask, structure=np.ones((3, 3), int))
        sizes = [int((labels == j).sum()) for j in range(1, n + 1)]
        for j, size in enumerate(sizes, start=1):
            if (largest and size < max(sizes)) or (not largest and size < min_area):
                out[labels == j] = 0
        left = (out == c) & mask
        if 0 < left.sum() < min_total:
            out[left] = 0
    fills = {c for c, r in full.items() if r[3]}
    removed = out.copy()
    cross = ndimage.generate_binary_structure(2, 1)
    labels, n = ndimage.label(removed == 0, structure=cross)
    for j in range(1, n + 1):
        region = labels == j
        ys, xs = np.nonzero(region)
        if ys.min() == 0 or xs.min() == 0 or ys.max() == pred.shape[0] - 1 or xs.max() == pred.shape[1] - 1:
            continue
        around = set(np.unique(removed[ndimage.binary_dilation(region, cross) & ~region]).tolist())
        if len(around) == 1 and around <= fills:
            out[region] = around.pop()
    return out


def reference_postprocess(
    pred: np.ndarray, by_name: dict[str, dict[str, Any]], classes: list[dict[str, Any]]
) -> np.ndarray:
    """:func:`reference_apply` with the rules as metrics/infer.json names them: ``{name: {min_area, min_total[,
    largest][, fill]}}``."""
    index = {c["name"]: int(c["index"]) for c in classes}
    return reference_apply(
        pred,
        {
            index[n]: (r["min_area"], r["min_total"], r.get("largest", False), r.get("fill", False))
            for n, r in by_name.items()
        },
    )


def load_bench(file: str, name: str) -> Any:
    """The benchmark script ``bench/<file>`` loaded as module ``name`` (bench/ importable, as when run as a script;
    registered in sys.modules, which its dataclasses look up while they are made)."""
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
