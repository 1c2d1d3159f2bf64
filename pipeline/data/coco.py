"""COCO competition -> per-image class masks.

Class indices: 0 is background, 1..K are the categories sorted by COCO id (so non-contiguous ids become
contiguous indices). Each annotation is decoded exactly as pycocotools' ``COCO.annToMask`` does (polygons with
several parts are merged; uncompressed RLE goes through ``frPyObjects``; compressed RLE is decoded as is).
Overlaps are resolved by painting order (``larger_first`` by default: larger objects first, so smaller ones stay
visible on top; ties by annotation id). ``iscrowd`` regions are painted in the same order, as their class or as
the ignore value 255.

Validation happens in :func:`load_coco`: every problem names the file and the entry. With ``on_error="fail"`` the
first problem stops the run; with ``"skip"`` the offending annotation (or image) is dropped and counted. An image
id that appears twice is ambiguous: every image with it is dropped, and so are its annotations.
"""

from __future__ import annotations

import dataclasses
import math
import os
import posixpath
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

from pipeline.errors import DataError, UserError
from pipeline.io import read_json, safe_join, upright_size
from pipeline.labels import IGNORE_INDEX, MAX_CLASSES, bit


@dataclasses.dataclass(frozen=True)
class Category:
    index: int  # 1..K, by sorted COCO id
    name: str
    coco_id: int


@dataclasses.dataclass
class CocoImage:
    id: int
    file_name: str
    height: int
    width: int
    annotations: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class CocoData:
    """A validated COCO file: images (in file order) with their annotations, and categories by index."""

    path: Path
    images: list[CocoImage]
    categories: list[Category]
    skipped: Counter[str] = dataclasses.field(default_factory=Counter)

    def classes(self) -> list[dict[str, Any]]:
        """The classes.json content: background plus one entry per category."""
        return [{"index": 0, "name": "background", "coco_id": None}] + [
            {"index": c.index, "name": c.name, "coco_id": c.coco_id} for c in self.categories
        ]


class _Problems:
    """Raise on the first problem (fail) or count it and tell the caller to skip the entry (skip)."""

    def __init__(self, path: Path, on_error: Literal["fail", "skip"]) -> None:
        self.path, self.on_error, self.counts = path, on_error, Counter[str]()

    def __call__(self, entry: str, problem: str, kind: str) -> None:
        if self.on_error == "fail":
            raise DataError(self.path, entry, problem + " (set data.on_error: skip to skip such entries)")
        self.counts[kind] += 1


def load_coco(  # noqa: C901, PLR0915 - one check per malformation, each with its own message
    path: str | os.PathLike[str], require_annotations: bool = True, on_error: Literal["fail", "skip"] = "fail"
) -> CocoData:
    """Read and validate a COCO json (structure, ids, segmentations). Image files are checked by the caller."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(path, "top level", "expected a JSON object with images, annotations and categories")
    required = ["images", "categories"] + (["annotations"] if require_annotations else [])
    for key in required:
        if key not in data:
            raise DataError(path, "top level", f"missing key {key!r}")
        if not isinstance(data[key], list):
            raise DataError(path, key, f"expected a list, got {type(data[key]).__name__}")
    if not isinstance(data.get("annotations", []), list):
        raise DataError(path, "annotations", f"expected a list, got {type(data['annotations']).__name__}")
    problem = _Problems(path, on_error)

    categories = _load_categories(path, data["categories"])
    by_coco_id = {c.coco_id: c for c in categories}

    images: dict[int, CocoImage] = {}
    positions: dict[int, int] = {}  # image id -> its index in the images list
    duplicated: set[int] = set()
    for i, im in enumerate(data["images"]):
        entry = f"images[{i}]" + (f" (id {im.get('id')!r})" if isinstance(im, dict) else "")
        if not isinstance(im, dict) or not all(k in im for k in ("id", "file_name", "height", "width")):
            problem(entry, "an image needs id, file_name, height and width", "bad image entry")
            continue
        if not (_is_int(im["height"]) and _is_int(im["width"]) and im["height"] > 0 and im["width"] > 0):
            problem(
                entry,
                f"height and width must be positive integers, got {im['height']!r}x{im['width']!r}",
                "bad image entry",
            )
            continue
        if not _is_int(im["id"]):
            problem(entry, f"id must be an integer, got {im['id']!r}", "bad image entry")
            continue
        if im["id"] in images or im["id"] in duplicated:
            # Which entry would the id's annotations belong to? Unknowable: in skip mode every entry with the id
            # is dropped, and its annotations with it, rather than painting them on the wrong image.
            problem(entry, f"duplicate image id {im['id']}", "duplicate image id")
            if im["id"] in images:
                del images[im["id"]]
                problem.counts["duplicate image id"] += 1
            duplicated.add(im["id"])
            continue
        if not isinstance(im["file_name"], str) or not im["file_name"] or "\0" in im["file_name"]:
            problem(entry, "file_name must be a non-empty string (without NUL characters)", "bad image entry")
            continue
        images[im["id"]] = CocoImage(im["id"], im["file_name"], int(im["height"]), int(im["width"]))
        positions[im["id"]] = i
    _refuse_shared_files(images, positions, duplicated, problem)

    annotations = data.get("annotations") or []
    ann_ids = Counter(a["id"] for a in annotations if isinstance(a, dict) and _is_int(a.get("id")))
    for i, ann in enumerate(annotations):
        entry = f"annotations[{i}]" + (f" (id {ann.get('id')!r})" if isinstance(ann, dict) else "")
        if not isinstance(ann, dict):
            problem(entry, "expected an object", "bad annotation")
            continue
        if _is_int(ann.get("id")) and ann_ids[ann["id"]] > 1:
            # Painting order breaks ties by id, and a person fixing one of them must know there are two: both go.
            problem(
                entry,
                f"annotation id {ann['id']} is used {ann_ids[ann['id']]} times; give each its own id",
                "duplicate annotation id",
            )
            continue
        reason = check_annotation_fields(ann)
        if reason:
            problem(entry, reason, "bad annotation")
            continue
        image_id, category_id = ann.get("image_id"), ann.get("category_id")
        if _is_int(image_id) and image_id in duplicated:
            problem(entry, f"image_id {image_id} is duplicated in images", "annotation of a duplicate image id")
            continue
        image = images.get(image_id) if _is_int(image_id) else None  # an unhashable id must not crash
        if image is None:
            problem(entry, f"unknown image_id {ann.get('image_id')!r}", "unknown image id")
            continue
        if not _is_int(category_id) or category_id not in by_coco_id:
            problem(entry, f"unknown category_id {ann.get('category_id')!r}", "unknown category id")
            continue
        reason = check_segmentation(ann.get("segmentation"), image.height, image.width)
        if reason:
            problem(entry, reason, "bad segmentation")
            continue
        image.annotations.append(ann)
    return CocoData(path, list(images.values()), categories, problem.counts)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    return isinstance(v, int) or (isinstance(v, float) and math.isfinite(v))


def _short(v: float) -> str:
    """A coordinate for a message: ``1e+12``, ``3.5``; a 400-digit integer as its first digits and length."""
    if isinstance(v, int) and abs(v) >= 10**15:
        text = str(v)
        return f"{text[:6]}...({len(text)} digits)"
    return f"{v:g}"


def _refuse_shared_files(
    images: dict[int, CocoImage], positions: dict[int, int], duplicated: set[int], problem: _Problems
) -> None:
    """Two image ids on one file (``a.png`` and ``./a.png``) would give it two labels and two folds: a leak.

    Names are compared normalised (``posixpath.normpath``: ``./``, ``//`` and ``x/../`` removed). Every image on a
    shared file is dropped (in skip mode), with its annotations: which id is right is unknowable.
    """
    by_file: dict[str, list[int]] = {}
    for image_id, im in images.items():
        by_file.setdefault(posixpath.normpath(im.file_name), []).append(image_id)
    for name, ids in by_file.items():
        if len(ids) < 2:
            continue
        names = {o: images[o].file_name for o in ids}
        for image_id in ids:
            others = ", ".join(f"{names[o]!r} (id {o})" for o in ids if o != image_id)
            problem(
                f"images[{positions[image_id]}] (id {image_id})",
                f"file_name {names[image_id]!r} is the file {name!r} that {others} names too: one image "
                "under two ids gets two labels and can sit in two folds; keep one entry",
                "image file under two ids",
            )
            duplicated.add(image_id)
            del images[image_id]


def _load_categories(path: Path, raw: list[Any]) -> list[Category]:
    seen: set[int] = set()
    names: dict[str, int] = {}
    cats = []
    for i, c in enumerate(raw):
        if not isinstance(c, dict) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str):
            raise DataError(path, f"categories[{i}]", "a category needs an integer id and a string name")
        if c["id"] in seen:
            raise DataError(path, f"categories[{i}]", f"duplicate category id {c['id']}")
        if c["id"] <= 0:
            raise DataError(
                path,
                f"categories[{i}] ({c['name']!r})",
                f"category id {c['id']}: COCO category ids start at 1 (class index 0 is the background, which is "
                "never a category); renumber the categories and their annotations' category_id",
            )
        if c["name"] in names:
            raise DataError(
                path,
                f"categories[{i}] (id {c['id']})",
                f"category name {c['name']!r} is also category id {names[c['name']]}: a submission names classes, "
                "so two classes cannot share a name; rename one (or merge them into one id)",
            )
        seen.add(c["id"])
        names[c["name"]] = c["id"]
        cats.append(c)
    if not cats:
        raise DataError(path, "categories", "no categories")
    if len(cats) > MAX_CLASSES:
        raise DataError(
            path,
            "categories",
            f"{len(cats)} categories; uint8 masks hold at most {MAX_CLASSES} ({IGNORE_INDEX} = ignore)",
        )
    cats.sort(key=lambda c: c["id"])
    return [Category(i + 1, c["name"], c["id"]) for i, c in enumerate(cats)]


def check_annotation_fields(ann: dict[str, Any]) -> str | None:
    """Why the fields beside the segmentation are wrong (``iscrowd``, ``bbox``), or None when they are fine."""
    crowd = ann.get("iscrowd", 0)
    if not (crowd in (0, 1) and isinstance(crowd, (int, bool))):
        # "0" is truthy: pycocotools would paint the object as a crowd (ignore) region.
        return f"iscrowd must be 0 or 1, got {crowd!r}"
    if "bbox" in ann:
        box = ann["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            return f"bbox must be [x, y, width, height] of 4 finite numbers, got {box!r}"
        if box[2] <= 0 or box[3] <= 0:
            return f"bbox {box} has a {'negative' if min(box[2], box[3]) < 0 else 'zero'} width or height"
    return None


def check_segmentation(seg: Any, height: int, width: int) -> str | None:  # noqa: C901 - a check per way to be wrong
    """Why ``seg`` is not a valid COCO segmentation for an image of this size, or None when it is.

    Polygon points may lie outside the image by up to the image's own size (pycocotools clips them to the image,
    as COCO does); further out they are an error: they are not plausible annotations (a unit mix-up, corrupt
    numbers), and pycocotools rasterises the outline at 5 times the resolution, so 1e7 costs 1.5 GiB for one
    polygon and 1e8 crashes it.
    """
    if isinstance(seg, list):
        if not seg:
            return "empty polygon list"
        for j, poly in enumerate(seg):
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                return f"polygon {j} is not a list of finite numbers"
            if len(poly) % 2:
                return f"polygon {j} has an odd number of coordinates ({len(poly)})"
            if len(poly) < 6:
                return f"polygon {j} has {len(poly) // 2} points; a polygon needs at least 3"
            for x, y in zip(poly[0::2], poly[1::2], strict=True):
                if not (-width <= x <= 2 * width and -height <= y <= 2 * height):
                    return (
                        f"polygon {j} has the point ({_short(x)}, {_short(y)}) far outside the {height}x{width} "
                        f"image (points may lie in x [{-width}, {2 * width}], y [{-height}, {2 * height}] and are "
                        "clipped to the image); fix its coordinates (pixels of this image, x first)"
                    )
        return None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
            return "RLE needs size [height, width] (two integers)"
        if list(size) != [height, width]:
            return f"RLE size {size} disagrees with the image's {height}x{width}"
        if isinstance(counts, list):
            if not all(_is_int(v) and v >= 0 for v in counts):
                return "uncompressed RLE counts must be non-negative integers"
            if sum(counts) != height * width:
                return f"uncompressed RLE counts sum to {sum(counts)}, not {height}x{width}={height * width}"
            return None
        if isinstance(counts, str):
            # pycocotools decodes without bounds checks: runs that sum to less than H*W leave the rest of the
            # mask uninitialised memory, and more overrun it. So the runs are checked here, before decoding.
            runs = rle_string_counts(counts)
            if runs is None:
                return "compressed RLE counts is not a valid COCO RLE string"
            if any(r < 0 or r >= 2**32 for r in runs):
                return "compressed RLE has a negative or too large run length"
            if sum(runs) != height * width:
                return f"compressed RLE runs sum to {sum(runs)}, not {height}x{width}={height * width}"
            return None
        return "RLE counts must be a list (uncompressed) or a string (compressed)"
    return "segmentation must be a list of polygons or an RLE object"


def rle_string_counts(counts: str) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``), or None when malformed.

    Each run is a little-endian sequence of 5-bit groups, stored as ``chr(48 + group)`` with bit 0x20 meaning "more
    groups follow" and bit 0x10 of the last group the sign; from the fourth run on, the value is a difference to
    the run two places back.
    """
    runs: list[int] = []
    x = k = 0
    more = False
    for ch in counts:
        c = ord(ch) - 48
        if not 0 <= c < 64 or k >= 7:  # outside the alphabet, or longer than a 32-bit run needs
            return None
        x |= (c & 0x1F) << (5 * k)
        more = bool(c & 0x20)
        k += 1
        if not more:
            if c & 0x10:
                x |= -1 << (5 * k)
            if len(runs) > 2:
                x += runs[-2]
            runs.append(x)
            x = k = 0
    return None if more else runs


def compressed_runs(counts: bytes | str) -> tuple[np.ndarray, np.ndarray]:
    """0-based column-major ``(starts, lengths)`` of the foreground runs of a valid compressed COCO RLE string.

    The format of :func:`rle_string_counts`, decoded with numpy in one pass instead of a loop per character. The
    string must be valid (:func:`check_segmentation` or pycocotools made it); counts alternate background,
    foreground, ..., background first.
    """
    c = np.frombuffer(counts.encode("ascii") if isinstance(counts, str) else counts, np.uint8).astype(np.int64) - 48
    ends = np.flatnonzero((c & 0x20) == 0)  # the last group of each count
    firsts = np.concatenate(([0], ends[:-1] + 1))
    groups = ends - firsts + 1
    count = np.repeat(np.arange(ends.size), groups)
    shift = 5 * (np.arange(c.size) - firsts[count])
    # at most 7 groups of 5 bits: the float64 sums of bincount are exact
    x = np.bincount(count, weights=(c & 0x1F) << shift, minlength=ends.size).astype(np.int64)
    x -= np.where(c[ends] & 0x10, 1 << (5 * groups), 0)  # negative values: sign-extend their top group
    x[1::2] = np.cumsum(x[1::2])  # from the fourth count on, a difference to the count two places back
    x[2::2] = np.cumsum(x[2::2])
    lengths = x[1 : 2 * (x.size // 2) : 2]
    starts = np.cumsum(x)[1 : 2 * (x.size // 2) : 2] - lengths
    keep = lengths > 0
    return starts[keep], lengths[keep]


def ann_to_rle(seg: Any, height: int, width: int) -> dict[str, Any]:
    """The compressed RLE (``counts`` as bytes) of one segmentation, as pycocotools' ``annToRLE`` makes it: polygons
    merged, uncompressed RLE through ``frPyObjects``, compressed RLE as it is."""
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if isinstance(seg["counts"], list):
        return mask_utils.frPyObjects(seg, height, width)
    counts = seg["counts"]
    return {"size": seg["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def ann_to_mask(seg: Any, height: int, width: int) -> np.ndarray:
    """Decode one segmentation to a (H, W) uint8 0/1 mask, the way pycocotools' ``annToMask`` does."""
    return mask_utils.decode(ann_to_rle(seg, height, width))


OverlapOrder = Literal["larger_first", "smaller_first", "annotation_order", "multilabel"]
CrowdMode = Literal["class", "ignore"]


def paint_mask(
    image: CocoImage, categories: list[Category], overlap: OverlapOrder = "larger_first", crowd: CrowdMode = "class"
) -> np.ndarray:
    """The (H, W) uint8 class mask of one image: 0 background, 1..K categories, 255 ignored crowd regions; with
    ``overlap="multilabel"`` a bit field holding every class of a pixel (:mod:`pipeline.labels`; an ignored crowd
    region is 255 whatever else covers it).

    The same mask as decoding every annotation with ``annToMask`` and painting them in order, without decoding any
    to a full image: sizes come from the RLEs (``mask.area``), and each object's runs are painted on a column-major
    canvas, touching only the columns it spans (an image of 600 small objects was 600 full-size decodes).
    """
    index = {c.coco_id: c.index for c in categories}
    anns = image.annotations
    rles = [ann_to_rle(ann["segmentation"], image.height, image.width) for ann in anns]
    order = list(range(len(anns)))
    if overlap != "annotation_order" and rles:
        sign = -1 if overlap == "larger_first" else 1
        areas = [int(mask_utils.area(rle)) for rle in rles]  # one at a time: area() of 256+ RLEs overflows a uint8
        order.sort(key=lambda i: (sign * areas[i], anns[i].get("id", 0)))
    canvas = np.zeros((image.width, image.height), np.uint8)  # canvas[x, y]: flat in COCO's column-major order
    flat = canvas.reshape(-1)
    if overlap == "multilabel":
        ignored = np.zeros_like(flat, dtype=bool)
        for i in order:
            starts, lengths = compressed_runs(rles[i]["counts"])
            if anns[i].get("iscrowd") and crowd == "ignore":
                _paint_runs(ignored, starts, lengths, True)
            else:
                _paint_runs(flat, starts, lengths, bit(index[anns[i]["category_id"]]), combine=True)
        flat[ignored] = IGNORE_INDEX
        return np.ascontiguousarray(canvas.T)
    for i in order:
        value = IGNORE_INDEX if (anns[i].get("iscrowd") and crowd == "ignore") else index[anns[i]["category_id"]]
        _paint_runs(flat, *compressed_runs(rles[i]["counts"]), value)
    return np.ascontiguousarray(canvas.T)


def _paint_runs(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, value: Any, combine: bool = False) -> None:
    """Set the runs' pixels of ``flat`` to ``value`` (``combine``: OR it in), writing only from the first run's start
    to the last run's end."""
    if not starts.size:
        return
    lo, hi = int(starts[0]), int(starts[-1] + lengths[-1])
    counts = np.empty(2 * starts.size - 1, np.int64)  # run, gap, run, ..., run
    counts[0::2] = lengths
    counts[1::2] = starts[1:] - starts[:-1] - lengths[:-1]
    inside = np.repeat(np.arange(counts.size) % 2 == 0, counts)
    if combine:
        flat[lo:hi][inside] |= value
        return
    np.copyto(flat[lo:hi], value, where=inside)


def check_image_file(images_root: Path, image: CocoImage, json_path: Path) -> Path:
    """Resolve the image's file under ``images_root`` and check it exists, decodes and has the declared size.

    The size compared is the upright one (after the EXIF orientation, as :func:`pipeline.io.read_image` reads it).
    """
    entry = f"image id {image.id} ({image.file_name})"
    try:
        path = safe_join(images_root, image.file_name)
        found = path.is_file()
    except UserError as e:
        raise DataError(json_path, entry, str(e)) from None
    except (OSError, ValueError) as e:  # a name too long for the file system, say
        raise DataError(json_path, entry, f"file_name cannot be opened: {e}") from None
    if not found:
        raise DataError(json_path, entry, f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()  # decode fully: a truncated file fails here, not later in training
            w, h, swapped = upright_size(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(json_path, entry, f"corrupt or unreadable image {path}: {e}") from None
    if (h, w) != (image.height, image.width):
        hint = ""
        if swapped and (w, h) == (image.height, image.width):
            hint = (
                f" (its EXIF orientation turns the stored {w}x{h} pixels upright to {h}x{w}; the json has the "
                "stored size, so its annotations were probably made on the unrotated pixels: remove the file's EXIF "
                "orientation tag, or give the upright size and annotations)"
            )
        raise DataError(json_path, entry, f"image file is {h}x{w}, json says {image.height}x{image.width}{hint}")
    return path
