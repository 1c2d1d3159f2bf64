"""The bad-input corpus of the data side (issue 19): COCO files, images, checkpoints, YAML, masks-stage sets.

Each case builds a tiny competition (or file) in ``tmp_path`` and runs the real entry: ``build_masks`` (the masks
stage's library function), ``python -m stages.masks`` / ``stages.folds`` in a subprocess for a few, or the reader
(``read_image``, ``load_torch``, ``load_params``). A bad input must give ONE line that names the file, the entry and
the fix, and leave nothing half-written: a previous run's outputs stay byte for byte, and no ``work/.masks.*.tmp``
is left. The inputs that must work (odd file names, modest out-of-image points, 16-bit / palette / RGBA /
grey-in-RGB / EXIF-rotated images) are checked against values computed here, independently of ``pipeline``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import REPO, compressed_rle, square, uncompressed_rle, write_competition, write_image
from PIL import Image

from pipeline.config import DataParams, MasksParams, load_params
from pipeline.data.folds import build_folds
from pipeline.data.masks import build_masks
from pipeline.errors import UserError
from pipeline.io import load_torch, read_image, save_torch
from pipeline.paths import Layout

H, W = 20, 24
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]


def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    """An axis-aligned rectangle polygon; pycocotools paints pixels x0 <= x < x1, y0 <= y < y1 (integer corners)."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def competition() -> dict[str, Any]:
    """Two images, four annotations (polygons, compressed and uncompressed RLE), two categories."""
    return {
        "images": [
            {"id": 10, "file_name": "a.png", "height": H, "width": W},
            {"id": 20, "file_name": "sub/b.png", "height": H, "width": W},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 1, "segmentation": [box(2, 2, 9, 9)], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 2, "segmentation": compressed_rle(square(H, W, 10, 12, 5))},
            {"id": 3, "image_id": 20, "category_id": 2, "segmentation": uncompressed_rle(square(H, W, 3, 4, 6))},
            {"id": 4, "image_id": 20, "category_id": 1, "segmentation": [box(12, 5, 20, 15)], "bbox": [12, 5, 8, 10]},
        ],
        "categories": [dict(c) for c in CATEGORIES],  # a copy: cases mutate it
    }


def write_comp(root: Path, data: dict[str, Any]) -> Path:
    return write_competition(root, data["images"], data["annotations"], data["categories"])


def run_masks(root: Path, layout: Layout, on_error: str = "fail") -> dict[str, Any]:
    return build_masks(DataParams(root=str(root), on_error=on_error), MasksParams(workers=1), layout)  # type: ignore[arg-type]


def snapshot(layout: Layout) -> dict[str, bytes]:
    return {
        p.relative_to(layout.root).as_posix(): p.read_bytes() for p in sorted(layout.root.rglob("*")) if p.is_file()
    }


def leftovers(layout: Layout) -> list[str]:
    return sorted(p.name for p in layout.work.iterdir() if p.name.startswith(".")) if layout.work.is_dir() else []


# --------------------------------------------------------------------------------------------------------------
# COCO: every case mutates the good competition and must stop the masks stage with one line


@dataclasses.dataclass
class Coco:
    name: str
    mutate: Callable[[dict[str, Any], Path], str | None]  # may return raw json text to write instead of the data
    entry: str  # appears in the message after the json path
    fix: str  # how to fix it: appears in the message too


def ann(i: int, **fields: Any) -> Callable[[dict[str, Any], Path], None]:
    def mutate(data: dict[str, Any], root: Path) -> None:
        data["annotations"][i].update(fields)

    return mutate


def image(i: int, **fields: Any) -> Callable[[dict[str, Any], Path], None]:
    def mutate(data: dict[str, Any], root: Path) -> None:
        data["images"][i].update(fields)

    return mutate


def category(i: int, **fields: Any) -> Callable[[dict[str, Any], Path], None]:
    def mutate(data: dict[str, Any], root: Path) -> None:
        data["categories"][i].update(fields)

    return mutate


def raw(text: Callable[[dict[str, Any]], str]) -> Callable[[dict[str, Any], Path], str]:
    return lambda data, root: text(data)


def _absolute(data: dict[str, Any], root: Path) -> None:
    data["images"][1]["file_name"] = str(root / "images" / "sub" / "b.png")  # exists, but absolute


def _two_ids_one_file(data: dict[str, Any], root: Path) -> None:
    data["images"].append({"id": 30, "file_name": "./a.png", "height": H, "width": W})
    data["annotations"].append({"id": 9, "image_id": 30, "category_id": 2, "segmentation": [box(0, 0, 5, 5)]})


def _duplicate_key(data: dict[str, Any]) -> str:
    text = json.dumps(data, indent=1)
    return text[:-2] + ',\n "annotations": []\n}'  # a second "annotations" that json.load would silently keep


SKIP = "set data.on_error: skip"
ANN3 = "annotations[3] (id 4)"
COCO_CASES = [
    Coco("polygon 1e12", ann(3, segmentation=[[2, 2, 1e12, 2, 1e12, 1e12, 2, 1e12]]), ANN3, "fix its coordinates"),
    Coco("polygon 1e7", ann(3, segmentation=[[2, 2, 1e7, 2, 1e7, 1e7, 2, 1e7]]), ANN3, "fix its coordinates"),
    Coco("polygon -1e9", ann(3, segmentation=[[2, 2, 9, 2, 9, -1e9]]), ANN3, "fix its coordinates"),
    Coco(
        "polygon 10**400 (an int)",
        raw(lambda d: json.dumps(d).replace("[12, 5, 20,", "[12, 5, 1" + "0" * 400 + ",")),
        ANN3,
        "fix its coordinates",
    ),
    Coco("polygon NaN", raw(lambda d: json.dumps(d).replace("[12, 5, 20,", "[12, NaN, 20,")), ANN3, SKIP),
    Coco("polygon Infinity", raw(lambda d: json.dumps(d).replace("[12, 5, 20,", "[12, Infinity, 20,")), ANN3, SKIP),
    Coco("empty segmentation list", ann(3, segmentation=[]), ANN3, SKIP),
    Coco("segmentation as a string", ann(3, segmentation="[[1, 2, 3, 4, 5, 6]]"), ANN3, SKIP),
    Coco(
        "RLE counts sum too high",
        ann(2, segmentation={"size": [H, W], "counts": [0, H * W + 1]}),
        "annotations[2] (id 3)",
        SKIP,
    ),
    Coco(
        "RLE counts sum too low", ann(2, segmentation={"size": [H, W], "counts": [5, 7]}), "annotations[2] (id 3)", SKIP
    ),
    Coco(
        "compressed RLE too long",
        ann(1, segmentation={"size": [H, W], **{"counts": compressed_rle(np.ones((H + 1, W), np.uint8))["counts"]}}),
        "annotations[1] (id 2)",
        SKIP,
    ),
    Coco(
        "RLE size as floats",
        ann(2, segmentation={"size": [20.0, 24.0], "counts": [0, H * W]}),
        "annotations[2] (id 3)",
        SKIP,
    ),
    Coco("negative bbox", ann(3, bbox=[12, 5, -8, 10]), ANN3, SKIP),
    Coco("zero-area bbox", ann(3, bbox=[12, 5, 8, 0]), ANN3, SKIP),
    Coco("bbox of 3 numbers", ann(3, bbox=[12, 5, 8]), ANN3, SKIP),
    Coco("duplicate annotation id", ann(3, id=1), "annotations[0] (id 1)", "give each its own id"),
    Coco('iscrowd "0"', ann(3, iscrowd="0"), ANN3, "iscrowd must be 0 or 1"),
    Coco("iscrowd 2", ann(3, iscrowd=2), ANN3, "iscrowd must be 0 or 1"),
    Coco("iscrowd null", ann(3, iscrowd=None), ANN3, "iscrowd must be 0 or 1"),
    Coco("category id 0", category(0, id=0), "categories[0] ('cat')", "renumber the categories"),
    Coco("category id -3", category(0, id=-3), "categories[0] ('cat')", "renumber the categories"),
    Coco("duplicate category names", category(1, name="cat"), "categories[1] (id 2)", "rename one"),
    Coco("absolute file name", _absolute, "image id 20 (/", "paths must be relative to"),
    Coco("two image ids on one file", _two_ids_one_file, "images[0] (id 10)", "keep one entry"),
    Coco("NUL in a file name", image(1, file_name="sub/b\x00.png"), "images[1] (id 20)", "without NUL"),
    Coco('"annotations" twice', raw(_duplicate_key), "line ", "merge or rename them"),
    Coco("nested 200000 deep", raw(lambda d: "[" * 200_000 + "]" * 200_000), "top level", "not a COCO file"),
    Coco(
        "annotations not a list", raw(lambda d: json.dumps({**d, "annotations": 5})), "annotations", "expected a list"
    ),
]


def _case_ids(cases: list[Any]) -> list[str]:
    return [c.name for c in cases]


@pytest.mark.parametrize("case", COCO_CASES, ids=_case_ids(COCO_CASES))
def test_bad_coco_stops_with_one_line_and_keeps_the_previous_outputs(tmp_path: Path, case: Coco) -> None:
    root = tmp_path / "comp"
    json_path = write_comp(root, competition())
    layout = Layout(tmp_path / "proj")
    run_masks(root, layout)  # a previous good run: its outputs must survive the bad one byte for byte
    before = snapshot(layout)

    data = competition()
    text = case.mutate(data, root)
    json_path.write_text(text if isinstance(text, str) else json.dumps(data), encoding="utf-8")
    with pytest.raises(UserError) as info:
        run_masks(root, layout)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{json_path}: "), message
    assert case.entry in message, message
    assert case.fix in message, message
    assert snapshot(layout) == before
    assert leftovers(layout) == []


def test_the_1e12_polygon_is_skipped_by_on_error_skip_instead_of_crashing_a_worker(tmp_path: Path) -> None:
    data = competition()
    data["annotations"][3]["segmentation"] = [[2, 2, 1e12, 2, 1e12, 1e12, 2, 1e12]]
    write_comp(tmp_path / "comp", data)
    layout = Layout(tmp_path / "proj")
    summary = run_masks(tmp_path / "comp", layout, on_error="skip")
    assert summary["skipped"] == {"bad segmentation": 1}
    mask = np.asarray(Image.open(layout.mask_path(20)))
    want = square(H, W, 3, 4, 6) * 2  # only annotation 3 (dog, class 2) is left on image 20
    np.testing.assert_array_equal(mask, want)


def test_two_ids_on_one_file_drop_both_images_in_skip_mode(tmp_path: Path) -> None:
    data = competition()
    _two_ids_one_file(data, tmp_path / "comp")
    write_comp(tmp_path / "comp", data)
    summary = run_masks(tmp_path / "comp", Layout(tmp_path / "proj"), on_error="skip")
    assert summary["images"] == 1  # only sub/b.png: a.png and ./a.png are one file under ids 10 and 30
    assert summary["skipped"] == {"image file under two ids": 2, "annotation of a duplicate image id": 3}


# --------------------------------------------------------------------------------------------------------------
# COCO inputs that must work


def test_file_names_with_spaces_and_unicode_work(tmp_path: Path) -> None:
    data = competition()
    data["images"][0]["file_name"] = "a folder/éclair été 猫.png"
    data["images"][1]["file_name"] = "sub/b  two spaces.png"
    write_comp(tmp_path / "comp", data)
    layout = Layout(tmp_path / "proj")
    summary = run_masks(tmp_path / "comp", layout)
    assert summary["images"] == 2
    index = layout.train_index.read_text(encoding="utf-8")
    assert "a folder/éclair été 猫.png" in index and "sub/b  two spaces.png" in index


def test_points_modestly_outside_the_image_are_clipped_as_coco_does(tmp_path: Path) -> None:
    data = competition()
    data["annotations"][3]["segmentation"] = [box(-10, 15, 30, 40)]  # out on the left, right and bottom
    data["annotations"][3].pop("bbox")
    write_comp(tmp_path / "comp", data)
    layout = Layout(tmp_path / "proj")
    run_masks(tmp_path / "comp", layout)
    want = np.zeros((H, W), np.uint8)
    want[15:, :] = 1  # the rectangle's part inside the image: rows 15..19, every column
    dog = square(H, W, 3, 4, 6).astype(bool)  # annotation 3 (class 2) is smaller: painted on top
    want[dog] = 2
    np.testing.assert_array_equal(np.asarray(Image.open(layout.mask_path(20))), want)


@pytest.mark.parametrize("crowd", [0, 1, True, False])
def test_iscrowd_0_1_and_booleans_are_read_as_their_truth_value(tmp_path: Path, crowd: Any) -> None:
    data = competition()
    data["annotations"][3]["iscrowd"] = crowd
    write_comp(tmp_path / "comp", data)
    layout = Layout(tmp_path / "proj")
    build_masks(DataParams(root=str(tmp_path / "comp")), MasksParams(workers=1, crowd="ignore"), layout)
    mask = np.asarray(Image.open(layout.mask_path(20)))
    assert (mask[5:15, 12:20] == (255 if crowd else 1)).all()


# --------------------------------------------------------------------------------------------------------------
# Images


def _save(path: Path, im: Image.Image, **kwargs: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kwargs)
    return path


def test_16_bit_png_is_scaled_over_its_full_range_not_clipped(tmp_path: Path) -> None:
    values = np.random.default_rng(0).integers(0, 65536, (H, W), dtype=np.uint16)
    values[0, :4] = [0, 128, 65535, 32896]  # 0, 128/257 -> 0, 255, 128
    path = _save(tmp_path / "deep.png", Image.fromarray(values))
    got = read_image(path)
    want = np.floor(values / 257 + 0.5).astype(np.uint8)  # round(v * 255 / 65535): 65535 / 255 = 257
    assert got.shape == (H, W, 3) and got.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(got[:, :, c], want)
    assert list(got[0, :4, 0]) == [0, 0, 255, 128]
    assert (got == 255).mean() < 0.01  # clipping made 99.6% of these pixels 255


def test_palette_rgba_and_grey_in_rgb_read_as_their_colours(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 16, (H, W), dtype=np.uint8)
    palette = [(i * 13 % 256, 255 - i * 7, (i * 31) % 256) for i in range(16)]
    p = Image.fromarray(idx, "P")
    p.putpalette([v for rgb in palette for v in rgb] + [0] * 3 * 240)
    np.testing.assert_array_equal(read_image(_save(tmp_path / "p.png", p)), np.array(palette, np.uint8)[idx])

    rgba = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    np.testing.assert_array_equal(
        read_image(_save(tmp_path / "rgba.png", Image.fromarray(rgba, "RGBA"))), rgba[..., :3]
    )

    grey = rng.integers(0, 256, (H, W), dtype=np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(read_image(_save(tmp_path / "g.png", Image.fromarray(rgb, "RGB"))), rgb)


@pytest.mark.parametrize("kind", ["zero-byte", "truncated", "text"])
def test_unreadable_image_is_one_line_naming_it(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x.png"
    write_image(path, H, W, np.random.default_rng(0))
    if kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:60])
    else:
        path.write_text("not an image")
    with pytest.raises(UserError) as info:
        read_image(path)
    assert str(info.value).startswith(f"{path}: unreadable or corrupt image") and "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["zero-byte", "truncated", "wrong size"])
def test_bad_image_file_stops_the_masks_stage_naming_the_image(tmp_path: Path, kind: str) -> None:
    json_path = write_comp(tmp_path / "comp", competition())
    path = tmp_path / "comp" / "images" / "sub" / "b.png"
    if kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        write_image(path, H + 1, W, np.random.default_rng(0))
    layout = Layout(tmp_path / "proj")
    with pytest.raises(UserError) as info:
        run_masks(tmp_path / "comp", layout)
    message = str(info.value)
    assert message.startswith(f"{json_path}: image id 20 (sub/b.png): ") and "\n" not in message, message
    assert SKIP in message
    assert ("json says 20x24" in message) == (kind == "wrong size")
    assert not layout.masks_dir.exists() and leftovers(layout) == []


def exif_rotated(path: Path, upright: np.ndarray) -> None:
    """Save ``upright`` (H, W) as a JPEG whose pixels are stored turned a quarter and whose EXIF orientation (6:
    "rotate 90 clockwise to view") turns them back."""
    stored = Image.fromarray(upright, "L").transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(path, stored, format="JPEG", exif=exif, quality=95)


def test_exif_rotated_jpeg_is_read_upright_so_mask_and_image_align(tmp_path: Path) -> None:
    h, w = 20, 30
    upright = np.zeros((h, w), np.uint8)
    upright[4:12, 18:26] = 255  # the object: 64 pixels in the upright view, where annotators see it
    data = {
        "images": [{"id": 1, "file_name": "photo.jpg", "height": h, "width": w}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [box(18, 4, 26, 12)]}],
        "categories": [dict(CATEGORIES[0])],
    }
    root = tmp_path / "comp"
    write_comp(root, data)
    exif_rotated(root / "images" / "photo.jpg", upright)
    with Image.open(root / "images" / "photo.jpg") as im:
        assert im.size == (h, w)  # stored turned: w and h swapped
    layout = Layout(tmp_path / "proj")
    run_masks(root, layout)
    mask = np.asarray(Image.open(layout.mask_path(1)))
    pixels = read_image(root / "images" / "photo.jpg")[:, :, 0]
    assert pixels.shape == (h, w)
    assert mask.sum() == 64
    assert (pixels[mask == 1] > 128).all()  # all 64 object pixels overlap (unrotated: 0 of 64)
    assert (pixels[mask == 0] < 128).all()


def test_exif_rotated_jpeg_with_the_stored_size_in_the_json_gets_a_hint(tmp_path: Path) -> None:
    h, w = 20, 30
    data = {
        "images": [{"id": 1, "file_name": "photo.jpg", "height": w, "width": h}],  # the stored (unrotated) size
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [box(2, 2, 8, 8)]}],
        "categories": [dict(CATEGORIES[0])],
    }
    write_comp(tmp_path / "comp", data)
    exif_rotated(tmp_path / "comp" / "images" / "photo.jpg", np.zeros((h, w), np.uint8))
    with pytest.raises(UserError) as info:
        run_masks(tmp_path / "comp", Layout(tmp_path / "proj"))
    message = str(info.value)
    assert "image file is 20x30, json says 30x20" in message and "EXIF orientation" in message, message
    assert "remove the file's EXIF orientation tag" in message and "\n" not in message


# --------------------------------------------------------------------------------------------------------------
# Checkpoints


class Custom:
    """A class a weights-only load cannot rebuild."""

    def __init__(self) -> None:
        self.x = 1


def _checkpoint(kind: str, path: Path) -> None:
    if kind == "custom class":
        torch.save({"model": {}, "extra": Custom()}, path)
    elif kind == "plain pickle":
        import pickle

        path.write_bytes(pickle.dumps({"a": 1}))
    else:
        save_torch(path, {"model": {"w": torch.ones(3)}, "config": {}})
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif kind == "0-byte":
            path.write_bytes(b"")
        elif kind == "text":
            path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 12\n")


CHECKPOINTS = [
    ("custom class", "refused: the checkpoint pickles a Python object (test_bad_inputs.Custom)", "re-save it"),
    ("plain pickle", "checkpoint is not a torch checkpoint", "delete it and re-run"),
    ("truncated", "checkpoint is truncated or not a torch checkpoint", "delete it and re-run"),
    ("0-byte", "checkpoint is empty (0 bytes)", "delete it and re-run"),
    ("text", "checkpoint is not a torch checkpoint", "delete it and re-run"),
]


@pytest.mark.parametrize(("kind", "problem", "fix"), CHECKPOINTS, ids=[c[0] for c in CHECKPOINTS])
def test_unreadable_checkpoint_is_one_line_and_never_advises_weights_only_false(
    tmp_path: Path, kind: str, problem: str, fix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "best.pt"
    _checkpoint(kind, path)
    with pytest.raises(UserError) as info:
        load_torch(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {problem}"), message
    assert fix in message and "\n" not in message
    assert "weights_only=False" not in message and "`weights_only` set to `False`" not in message
    assert capsys.readouterr().err == ""  # no torch warning around the one line either


def test_half_written_last_checkpoint_can_be_ignored_with_a_warning(tmp_path: Path, capsys) -> None:
    path = tmp_path / "last.pt"
    _checkpoint("truncated", path)
    assert load_torch(path, corrupt_ok=True) is None  # what a resume does: start afresh
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"warning: {path} is truncated") and "\n" not in err


def test_checkpoint_without_config_names_the_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    save_torch(path, {"model": {"w": torch.ones(2)}})
    with pytest.raises(UserError, match=r"best.pt: checkpoint lacks 'config': .* re-run training"):
        load_torch(path, required=("model", "config"))
    assert set(load_torch(path, required=("model",))) == {"model"}


# --------------------------------------------------------------------------------------------------------------
# YAML


@pytest.mark.parametrize(
    ("text", "key", "line", "first"),
    [
        ("data:\n  root: a\n  on_error: skip\n  root: b\n", "root", 4, 2),
        ("masks:\n  workers: 1\nfolds:\n  k: 3\nmasks:\n  workers: 2\n", "masks", 5, 1),
        ("folds: {k: 3, k: 4}\n", "k", 1, 1),
    ],
    ids=["key", "section", "flow mapping"],
)
def test_yaml_key_given_twice_is_an_error_naming_it_and_the_line(
    tmp_path: Path, text: str, key: str, line: int, first: int
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_params(path)
    assert str(info.value) == (
        f"{path}: line {line}: key {key!r} is given twice in one section (first on line {first}; YAML would keep "
        "only the last); merge the two into one"
    )


def test_yaml_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("x: &base {k: 3, seed: 1}\nfolds:\n  <<: *base\n  k: 4\n")
    from pipeline.config import read_yaml

    assert read_yaml(path)["folds"] == {"k": 4, "seed": 1}


# --------------------------------------------------------------------------------------------------------------
# The real entry points in a subprocess: no traceback, one line, exit code 2


def run_stage(stage: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", f"stages.{stage}"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def assert_one_line_exit_2(proc: subprocess.CompletedProcess[str], *parts: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("masks:")]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])


SUBPROCESS = ["polygon 1e12", '"annotations" twice', "nested 200000 deep", 'iscrowd "0"']


@pytest.mark.parametrize("case", [c for c in COCO_CASES if c.name in SUBPROCESS], ids=SUBPROCESS)
def test_masks_stage_cli_on_bad_coco(tmp_path: Path, case: Coco) -> None:
    root = tmp_path / "comp"
    json_path = write_comp(root, competition())
    data = competition()
    text = case.mutate(data, root)
    json_path.write_text(text if isinstance(text, str) else json.dumps(data), encoding="utf-8")
    (tmp_path / "params.yaml").write_text(f"data:\n  root: {root}\nmasks:\n  workers: 2\n")
    proc = run_stage("masks", tmp_path)
    assert_one_line_exit_2(proc, str(json_path), case.entry, case.fix)
    assert not (tmp_path / "work").exists() or leftovers(Layout(tmp_path)) == []
    assert not (tmp_path / "work" / "masks").exists()


def test_masks_stage_cli_on_a_yaml_key_given_twice(tmp_path: Path) -> None:
    root = tmp_path / "comp"
    write_comp(root, competition())
    (tmp_path / "params.yaml").write_text(f"data:\n  root: {root}\nmasks:\n  workers: 1\n  workers: 2\n")
    assert_one_line_exit_2(run_stage("masks", tmp_path), "params.yaml: line 5: key 'workers' is given twice")
    assert not (tmp_path / "work").exists()


# --------------------------------------------------------------------------------------------------------------
# The masks stage's outputs are one set: folds refuses new masks beside an old index


def test_folds_refuses_masks_and_index_from_different_runs(tmp_path: Path) -> None:
    root = tmp_path / "comp"
    write_comp(root, competition())
    layout = Layout(tmp_path)
    run_masks(root, layout)
    (tmp_path / "params.yaml").write_text(f"data:\n  root: {root}\nfolds:\n  k: 2\n")
    first = {p: p.read_bytes() for p in (layout.train_index, layout.classes_json, layout.mask_summary)}
    assert run_stage("folds", tmp_path).returncode == 0
    folds_before = layout.folds_csv.read_bytes()

    # A second masks run (one annotation more) that was killed right after swapping in its masks folder.
    data = competition()
    data["annotations"].append({"id": 7, "image_id": 20, "category_id": 1, "segmentation": [box(0, 16, 4, 20)]})
    write_comp(root, data)
    run_masks(root, layout)
    for path, content in first.items():
        path.write_bytes(content)  # the index, classes and summary of the first run
    proc = run_stage("folds", tmp_path)
    assert_one_line_exit_2(proc, "error: work: masks and mask_summary.json are not from the same", "re-run the masks")
    assert layout.folds_csv.read_bytes() == folds_before

    run_masks(root, layout)  # the re-run makes a consistent set again
    (layout.train_index).write_text(layout.train_index.read_text() + "99,x.png,20,24,1\n")
    with pytest.raises(UserError, match="train_index.csv and mask_summary.json are not from the same masks run"):
        build_folds(load_params(tmp_path / "params.yaml").folds, layout)
