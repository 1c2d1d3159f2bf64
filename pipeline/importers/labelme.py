"""A folder of labelme JSON files -> a COCO competition.

Each ``<name>.json`` describes one image: ``imagePath`` (relative to the JSON file), ``imageHeight``,
``imageWidth``, optional ``imageData`` (the image, base64) and ``shapes``, each with a ``label``, ``points`` and a
``shape_type``: ``polygon`` (3 or more points), ``rectangle`` (two opposite corners) or ``circle`` (centre, then a
point on the circle). Shapes are rasterised the way labelme's own ``shape_to_mask`` does (PIL, outline included).
Each shape is one annotation; shapes that share a label and a ``group_id`` are one annotation together. Every label
must be in the label map, which gives its COCO category id.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from pipeline.errors import DataError, UserError
from pipeline.importers.common import Split, default_truth, image_size, split_keys, write_competition
from pipeline.io import read_json, safe_join

SHAPE_TYPES = ("polygon", "rectangle", "circle")
_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "GIF": ".gif", "WEBP": ".webp"}


def rasterize(shape_type: str, points: list[tuple[float, float]], height: int, width: int) -> np.ndarray:
    """A (H, W) bool mask of one shape, drawn with its outline as labelme's ``shape_to_mask`` draws it."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if shape_type == "circle":
        (cx, cy), (px, py) = points
        d = math.hypot(cx - px, cy - py)
        draw.ellipse([cx - d, cy - d, cx + d, cy + d], outline=1, fill=1)
    elif shape_type == "rectangle":
        (x0, y0), (x1, y1) = points
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=1, fill=1)
    else:
        draw.polygon(points, outline=1, fill=1)
    return np.array(canvas).astype(bool)


def _points(shape: dict[str, Any], shape_type: str) -> list[tuple[float, float]] | str:
    """The shape's points as (x, y) floats, or why they are not usable."""
    raw = shape.get("points")
    if not isinstance(raw, list) or not all(
        isinstance(p, (list, tuple))
        and len(p) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p)
        for p in raw
    ):
        return "points must be a list of [x, y] number pairs"
    need = {"polygon": "at least 3", "rectangle": "exactly 2", "circle": "exactly 2"}[shape_type]
    if (shape_type == "polygon" and len(raw) < 3) or (shape_type != "polygon" and len(raw) != 2):
        return f"a {shape_type} needs {need} points, got {len(raw)}"
    return [(float(x), float(y)) for x, y in raw]


def shape_objects(
    doc: dict[str, Any], label_ids: Mapping[str, int], height: int, width: int, path: Path
) -> tuple[list[tuple[int, np.ndarray]], int]:
    """``(objects, empty)``: one (category id, mask) per shape or group of shapes, and how many shapes drew nothing."""
    shapes = doc.get("shapes", [])
    if not isinstance(shapes, list):
        raise DataError(path, "shapes", "expected a list of shapes")
    groups: dict[Any, tuple[int, np.ndarray]] = {}
    empty = 0
    for i, shape in enumerate(shapes):
        label = shape.get("label") if isinstance(shape, dict) else None
        entry = f"shapes[{i}]" + (f" (label {label!r})" if label is not None else "")
        if not isinstance(shape, dict) or not isinstance(label, str):
            raise DataError(path, entry, "a shape needs a string label")
        if label not in label_ids:
            known = ", ".join(f"{k}={v}" for k, v in sorted(label_ids.items(), key=lambda kv: kv[1]))
            raise DataError(path, entry, f"unknown label; the label map has {known}. Map it: --labels ...,{label}=ID")
        shape_type = shape.get("shape_type") or "polygon"  # old labelme files leave it out
        if shape_type not in SHAPE_TYPES:
            raise DataError(path, entry, f"unsupported shape_type {shape_type!r} (supported: {', '.join(SHAPE_TYPES)})")
        points = _points(shape, shape_type)
        if isinstance(points, str):
            raise DataError(path, entry, points)
        mask = rasterize(shape_type, points, height, width)
        if not mask.any():
            empty += 1
            continue
        group_id = shape.get("group_id")
        key = (label, group_id) if group_id is not None else ("", i)
        if key in groups:
            groups[key] = (groups[key][0], groups[key][1] | mask)
        else:
            groups[key] = (label_ids[label], mask)
    return list(groups.values()), empty


def _exif_upright(path: Path) -> bytes | None:
    """PNG bytes of the image turned upright, when its EXIF orientation says it is stored rotated (labelme draws
    on the upright image); None when it is already upright."""
    try:
        with Image.open(path) as im:
            if im.getexif().get(0x0112, 1) in (0, 1):  # 0x0112: the EXIF Orientation tag
                return None
            buf = io.BytesIO()
            ImageOps.exif_transpose(im).save(buf, format="PNG")
            return buf.getvalue()
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: unreadable or corrupt image ({e})") from None


def image_source(doc: dict[str, Any], path: Path, root: Path) -> tuple[Path | bytes, str]:
    """The image of a labelme file: the ``imagePath`` file when it is inside ``root``, else ``imageData``.

    Returns:
        ``(file or bytes, suffix)``.
    """
    image_path = doc.get("imagePath")
    problem = "no imagePath and no imageData"
    if isinstance(image_path, str) and image_path:
        rel = (path.resolve().parent.relative_to(root) / image_path.replace("\\", "/")).as_posix()
        try:
            candidate = safe_join(root, rel)
        except UserError as e:
            problem = str(e)
        else:
            if candidate.is_file():
                upright = _exif_upright(candidate)
                return (upright, ".png") if upright is not None else (candidate, candidate.suffix.lower())
            problem = f"image file {candidate} not found"
    data = doc.get("imageData")
    if isinstance(data, str) and data:
        try:
            raw = base64.b64decode(data, validate=True)
            with Image.open(io.BytesIO(raw)) as im:
                fmt = im.format
        except (binascii.Error, ValueError, OSError) as e:
            raise DataError(path, "imageData", f"not a base64-encoded image ({e})") from None
        if fmt not in _SUFFIX:
            buf = io.BytesIO()
            with Image.open(io.BytesIO(raw)) as im:
                im.save(buf, format="PNG")
            return buf.getvalue(), ".png"
        return raw, _SUFFIX[fmt]
    raise DataError(path, "imagePath", f"{problem}; put the image beside the JSON file or keep imageData")


def import_labelme(
    folder: str | os.PathLike[str],
    labels: Mapping[int, str],
    out: str | os.PathLike[str],
    truth: str | os.PathLike[str] | None = None,
    split: Split | None = None,
    root: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write a folder of labelme JSON files as a COCO competition in ``out`` (test truth in ``truth``).

    The image of ``<name>.json`` becomes ``images/<name><suffix>``: copied as it is (a JPEG whose EXIF orientation
    says it is stored rotated is turned upright and written as PNG, since labelme draws on the upright image), or
    decoded from ``imageData`` when the ``imagePath`` file is missing or outside ``root``.

    Args:
        folder: the folder of ``*.json`` files (not searched recursively).
        labels: ``{category id: label}``: the category of each labelme label (its COCO name is the label).
        out: the competition folder to write (replaced whole).
        truth: the test-truth folder (default: ``truth`` beside ``out``); only written when there is a test split.
        split: a random share (default 0.15), or a test list of JSON stems.
        root: image paths must stay inside this folder (default ``folder``); it must contain ``folder``.

    Returns:
        Counts of images, annotations, categories and shapes that drew no pixel, and where the truth went.
    """
    split = split if split is not None else Split()
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: folder not found")
    root_dir = Path(root).resolve() if root is not None else folder.resolve()
    if root_dir != folder.resolve() and root_dir not in folder.resolve().parents:
        raise UserError(f"{folder}: the labelme folder is not inside the data root {root}")
    files = sorted(p for p in folder.glob("*.json") if p.is_file())
    if not files:
        raise UserError(f"{folder}: no labelme .json files")
    label_ids = {name: i for i, name in labels.items()}
    test = split_keys([p.stem for p in files], split)
    truth_dir = (Path(truth) if truth is not None else default_truth(out)) if test else None
    info = {"description": "imported from labelme JSON files", "source": str(folder), "seed": split.seed}
    counts: dict[str, Any] = {}
    empty_shapes = 0
    with write_competition(out, truth_dir, labels, info, counts, [folder, root_dir]) as writer:
        for path in files:
            doc = read_json(path)
            if not isinstance(doc, dict):
                raise DataError(path, "top level", "expected a labelme JSON object")
            source, suffix = image_source(doc, path, root_dir)
            if isinstance(source, Path):
                height, width = image_size(source)
            else:
                with Image.open(io.BytesIO(source)) as im:
                    width, height = im.size
            declared = (doc.get("imageHeight"), doc.get("imageWidth"))
            if declared != (None, None) and declared != (height, width):
                raise DataError(
                    path, "imageHeight/imageWidth", f"{declared[0]}x{declared[1]}, but the image is {height}x{width}"
                )
            objects, empty = shape_objects(doc, label_ids, height, width, path)
            empty_shapes += empty
            writer.add(
                "test" if path.stem in test else "train",
                path.stem + suffix,
                objects,
                source=source,
                size=(height, width) if isinstance(source, Path) else None,
                origin=str(path),
            )
    return {**counts, "empty_shapes": empty_shapes, "truth": str(truth_dir) if truth_dir else None}
