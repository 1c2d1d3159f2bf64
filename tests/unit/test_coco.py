"""COCO -> masks, pixel for pixel against pycocotools, and bad input named by file and entry in both error modes."""

from __future__ import annotations

import copy
import dataclasses
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers import (
    OTHER_CATEGORIES,
    compressed_rle,
    load_reference_coco,
    random_blob,
    random_polygon,
    read_png,
    reference_masks,
    someone_elses_competition,
    square,
    uncompressed_rle,
    write_competition,
    write_image,
    write_json,
)
from PIL import Image

from pipeline.config import DataParams, MasksParams
from pipeline.data.coco import (
    ann_to_mask,
    check_segmentation,
    compressed_runs,
    load_coco,
    paint_mask,
    rle_string_counts,
)
from pipeline.data.masks import build_masks
from pipeline.errors import UserError
from pipeline.paths import Layout

ORDERS = ["larger_first", "smaller_first", "annotation_order"]
CROWD = ["class", "ignore"]


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Someone else's competition (written once per module; tests only read it)."""
    return someone_elses_competition(tmp_path_factory.mktemp("other") / "comp", n_images=7, seed=3)


def run_masks(root: Path, layout_root: Path, on_error: str = "fail", **masks: Any) -> dict[str, Any]:
    data = DataParams(root=str(root), on_error=on_error)  # type: ignore[arg-type]
    return build_masks(data, MasksParams(**{"workers": 2, **masks}), Layout(layout_root))


def image_mode(path: Path) -> str:
    with Image.open(path) as im:
        return im.mode


# --------------------------------------------------------------------------------------------------------------
# Decoding and painting against pycocotools


def test_the_reference_competition_covers_what_it_should(other: Path) -> None:
    data = json.loads(other.read_text())
    names = [im["file_name"] for im in data["images"]]
    assert any("/" in n for n in names) and any("/" not in n for n in names)
    modes = {image_mode(other.parent / "images" / n) for n in names}
    assert modes == {"RGB", "L"}
    assert len({(im["height"], im["width"]) for im in data["images"]}) > 3
    segs = [a["segmentation"] for a in data["annotations"]]
    assert any(isinstance(s, list) and len(s) > 1 for s in segs)
    assert any(isinstance(s, dict) and isinstance(s["counts"], list) for s in segs)
    assert any(isinstance(s, dict) and isinstance(s["counts"], str) for s in segs)
    assert any(a["iscrowd"] for a in data["annotations"])
    # The three orders and the two crowd modes really paint differently, so comparing them means something.
    refs = {(o, c): reference_masks(other, o, c) for o in ORDERS for c in CROWD}
    for a in refs:
        for b in refs:
            if a != b:
                assert any(not np.array_equal(refs[a][i], refs[b][i]) for i in refs[a]), (a, b)


def test_ann_to_mask_matches_pycocotools_for_every_segmentation_kind(other: Path) -> None:
    coco = load_reference_coco(other)
    assert len(coco.anns) >= 30
    for ann in coco.anns.values():
        im = coco.imgs[ann["image_id"]]
        got = ann_to_mask(ann["segmentation"], im["height"], im["width"])
        assert got.dtype == np.uint8 and got.shape == (im["height"], im["width"])
        np.testing.assert_array_equal(got, coco.annToMask(ann), err_msg=f"annotation {ann['id']}")


@pytest.mark.parametrize("crowd", CROWD)
@pytest.mark.parametrize("overlap", ORDERS)
def test_paint_mask_matches_reference(other: Path, overlap: str, crowd: str) -> None:
    coco = load_coco(other)
    assert [c.coco_id for c in coco.categories] == [3, 17, 90]
    assert [c.index for c in coco.categories] == [1, 2, 3]
    ref = reference_masks(other, overlap, crowd)
    for im in coco.images:
        got = paint_mask(im, coco.categories, overlap, crowd)  # type: ignore[arg-type]
        np.testing.assert_array_equal(got, ref[im.id], err_msg=f"image {im.id} {im.file_name}")


@pytest.mark.parametrize(("overlap", "crowd"), [(o, "class") for o in ORDERS] + [("larger_first", "ignore")])
def test_build_masks_on_someone_elses_competition(other: Path, tmp_path: Path, overlap: str, crowd: str) -> None:
    layout = Layout(tmp_path)
    summary = run_masks(other.parent, tmp_path, overlap=overlap, crowd=crowd)
    ref = reference_masks(other, overlap, crowd)
    assert sorted(p.name for p in layout.masks_dir.iterdir()) == sorted(f"{i}.png" for i in ref)
    for image_id, want in ref.items():
        got = read_png(layout.mask_path(image_id))
        np.testing.assert_array_equal(got, want, err_msg=f"image {image_id}")

    classes = json.loads(layout.classes_json.read_text())
    assert [(c["index"], c["name"], c["coco_id"]) for c in classes] == [
        (0, "background", None),
        (1, "alpha", 3),
        (2, "beta", 17),
        (3, "gamma", 90),
    ]
    index = pd.read_csv(layout.train_index, dtype={"classes": str}, keep_default_na=False)
    assert list(index.columns) == ["image_id", "file_name", "height", "width", "classes"]
    assert index["image_id"].tolist() == sorted(ref)
    for row in index.itertuples():
        present = sorted(int(v) for v in np.unique(ref[row.image_id]) if 0 < v < 255)
        assert [int(c) for c in row.classes.split()] == present
        assert (row.height, row.width) == ref[row.image_id].shape
    stacked = np.concatenate([m.ravel() for m in ref.values()])
    assert summary["images"] == len(ref) and summary["skipped"] == {}
    assert summary["ignored_pixels"] == int((stacked == 255).sum())
    assert [c["pixels"] for c in summary["classes"]] == [int((stacked == i).sum()) for i in range(4)]
    assert json.loads(layout.mask_summary.read_text()) == summary
    assert not [p for p in layout.work.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_non_contiguous_ids_index_by_sorted_id_not_file_order(tmp_path: Path) -> None:
    images = [{"id": 5, "file_name": "x.png", "height": 8, "width": 9}]
    anns = [
        {
            "id": i + 1,
            "image_id": 5,
            "category_id": cat,
            "segmentation": compressed_rle(square(8, 9, i * 2, i * 2, 2)),
            "iscrowd": 0,
        }
        for i, cat in enumerate([90, 3, 17])
    ]
    json_path = write_competition(tmp_path / "c", images, anns, OTHER_CATEGORIES)
    coco = load_coco(json_path)
    mask = paint_mask(coco.images[0], coco.categories)
    assert mask[0, 0] == 3 and mask[2, 2] == 1 and mask[4, 4] == 2
    np.testing.assert_array_equal(mask, reference_masks(json_path)[5])


def test_ties_in_size_are_broken_by_annotation_id(tmp_path: Path) -> None:
    # Same area, overlapping; the later-painted (higher id) wins the overlap in both size orders.
    images = [{"id": 1, "file_name": "x.png", "height": 10, "width": 10}]
    anns = [
        {
            "id": 9,
            "image_id": 1,
            "category_id": 3,
            "segmentation": uncompressed_rle(square(10, 10, 0, 0, 5)),
            "iscrowd": 0,
        },
        {
            "id": 4,
            "image_id": 1,
            "category_id": 17,
            "segmentation": [[2.0, 2.0, 7.0, 2.0, 7.0, 7.0, 2.0, 7.0]],
            "iscrowd": 0,
        },
    ]
    coco = load_coco(write_competition(tmp_path / "c", images, anns, OTHER_CATEGORIES))
    for order in ("larger_first", "smaller_first"):
        assert paint_mask(coco.images[0], coco.categories, order)[3, 3] == 1  # id 9 (category 3) painted last
    assert paint_mask(coco.images[0], coco.categories, "annotation_order")[3, 3] == 2  # file order: id 4 last


def test_rle_string_counts_reads_pycocotools_strings() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        runs = rle_string_counts(compressed_rle(m)["counts"])
        assert runs is not None and sum(runs) == h * w
        assert runs == uncompressed_rle(m)["counts"]
    assert rle_string_counts("0") == [0]
    for bad in ("\x7f", "0" + "h" * 8, "h", "é"):
        assert rle_string_counts(bad) is None, bad


def test_compressed_runs_are_the_foreground_runs_of_pycocotools_strings() -> None:
    rng = np.random.default_rng(0)
    masks = [(rng.random((int(h), int(w))) < rng.random()) for h, w in rng.integers(1, 40, (50, 2))]
    long = np.zeros((3000, 2000), bool)  # counts of several 5-bit groups, and negative differences
    long[:, 700:1900], long[5, 0], long[2999, 1999] = True, True, True
    for m in [*masks, long, np.ones((3, 4), bool), np.zeros((3, 4), bool)]:
        starts, lengths = compressed_runs(compressed_rle(m.astype(np.uint8))["counts"])
        flat = m.ravel(order="F")
        change = np.flatnonzero(np.diff(np.concatenate(([0], flat.view(np.int8), [0]))))
        assert (starts.tolist(), lengths.tolist()) == (change[0::2].tolist(), np.diff(change)[0::2].tolist())


def test_paint_mask_of_hundreds_of_overlapping_objects_matches_reference(tmp_path: Path) -> None:
    # more than 255 objects in one image: pycocotools' area() of a list that long overflows, so it is called per RLE
    rng = np.random.default_rng(2)
    images = [{"id": 1, "file_name": "x.png", "height": 60, "width": 50}]
    anns = []
    for i in range(300):
        y, x, side = int(rng.integers(0, 54)), int(rng.integers(0, 44)), int(rng.integers(1, 7))
        polygon = [[float(v) for v in (x, y, x + side, y, x + side, y + side, x, y + side)]]
        seg = compressed_rle(square(60, 50, y, x, side)) if i % 2 else polygon
        anns.append({"id": i + 1, "image_id": 1, "category_id": [3, 17, 90][i % 3], "segmentation": seg, "iscrowd": 0})
    json_path = write_competition(tmp_path / "c", images, anns, OTHER_CATEGORIES)
    coco = load_coco(json_path)
    for order in ORDERS:
        np.testing.assert_array_equal(
            paint_mask(coco.images[0], coco.categories, order), reference_masks(json_path, order)[1]
        )


# --------------------------------------------------------------------------------------------------------------
# Bad input


def base_competition(root: Path) -> tuple[Path, dict[str, Any]]:
    """3 images (10, 20 in a sub-folder, 30) and 5 annotations: [0, 1] on 10, [2, 3] on 20, [4] on 30."""
    rng = np.random.default_rng(1)
    h, w = 20, 24
    images = [
        {"id": 10, "file_name": "a.png", "height": h, "width": w},
        {"id": 20, "file_name": "sub/b.png", "height": h, "width": w},
        {"id": 30, "file_name": "c.jpg", "height": h, "width": w},
    ]
    segs = [
        [random_polygon(rng, h, w)],
        compressed_rle(random_blob(rng, h, w)),
        uncompressed_rle(random_blob(rng, h, w)),
        [random_polygon(rng, h, w), random_polygon(rng, h, w)],
        compressed_rle(random_blob(rng, h, w)),
    ]
    owners = [10, 10, 20, 20, 30]
    anns = [
        {"id": i + 1, "image_id": o, "category_id": [3, 17, 90][i % 3], "segmentation": s, "iscrowd": 0}
        for i, (o, s) in enumerate(zip(owners, segs, strict=True))
    ]
    data = {"images": images, "annotations": anns, "categories": OTHER_CATEGORIES}
    return write_competition(root, images, anns, OTHER_CATEGORIES), data


def _set(path: str, value: Any) -> Callable[[dict[str, Any], Path], None]:
    """A mutation that sets e.g. ``annotations.3.category_id`` in the json data."""

    def mutate(data: dict[str, Any], root: Path) -> None:
        *head, last = path.split(".")
        node: Any = data
        for key in head:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(last) if last.isdigit() else last] = value

    return mutate


def _image_file(action: str) -> Callable[[dict[str, Any], Path], None]:
    def mutate(data: dict[str, Any], root: Path) -> None:
        path = root / "images" / "sub" / "b.png"
        if action == "missing":
            path.unlink()
        elif action == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif action == "wrong size":
            write_image(path, 21, 24, np.random.default_rng(0))
        elif action == "escapes":
            write_image(root / "outside.png", 20, 24, np.random.default_rng(0))  # exists, but outside images/
            data["images"][1]["file_name"] = "../outside.png"

    return mutate


@dataclasses.dataclass
class Bad:
    name: str
    mutate: Callable[[dict[str, Any], Path], None]
    entry: str  # must appear in the message, beside the json path
    problem: str  # must appear in the message too
    skipped: dict[str, int]  # summary["skipped"] in skip mode
    drop_anns: tuple[int, ...] = ()  # annotation indices that skip mode leaves out
    drop_images: tuple[int, ...] = ()  # image ids that skip mode leaves out


ANN3 = dict(entry="annotations[3] (id 4)", drop_anns=(3,))
BAD = [
    Bad(
        "unknown image id",
        _set("annotations.3.image_id", 999),
        problem="unknown image_id 999",
        skipped={"unknown image id": 1},
        **ANN3,
    ),
    Bad(
        "unhashable image id",
        _set("annotations.3.image_id", [20]),
        problem="unknown image_id [20]",
        skipped={"unknown image id": 1},
        **ANN3,
    ),
    Bad(
        "unknown category id",
        _set("annotations.3.category_id", 4),
        problem="unknown category_id 4",
        skipped={"unknown category id": 1},
        **ANN3,
    ),
    Bad(
        "odd coordinates",
        _set("annotations.3.segmentation", [[1, 1, 9, 1, 9, 9, 1]]),
        problem="odd number",
        skipped={"bad segmentation": 1},
        **ANN3,
    ),
    Bad(
        "two points",
        _set("annotations.3.segmentation", [[1, 1, 9, 1, 9, 9], [1, 1, 9, 9]]),
        problem="polygon 1 has 2 points",
        skipped={"bad segmentation": 1},
        **ANN3,
    ),
    Bad(
        "nan coordinate",
        _set("annotations.3.segmentation", [[1, 1, 9, 1, 9, float("nan")]]),
        problem="finite numbers",
        skipped={"bad segmentation": 1},
        **ANN3,
    ),
    Bad(
        "compressed RLE size",
        _set("annotations.3.segmentation", compressed_rle(np.ones((21, 24), np.uint8))),
        problem="RLE size [21, 24] disagrees with the image's 20x24",
        skipped={"bad segmentation": 1},
        **ANN3,
    ),
    Bad(
        "uncompressed RLE size",
        _set("annotations.3.segmentation", uncompressed_rle(np.ones((20, 25), np.uint8))),
        problem="disagrees",
        skipped={"bad segmentation": 1},
        **ANN3,
    ),
    # A compressed RLE whose runs cover fewer pixels than its declared size: pycocotools would decode the rest
    # from uninitialised memory.
    Bad(
        "short compressed RLE",
        _set(
            "annotations.3.segmentation",
            {"size": [20, 24], "counts": compressed_rle(np.ones((3, 3), np.uint8))["counts"]},
        ),
        problem="runs sum to 9, not 20x24=480",
        skipped={"bad segmentation": 1},
        **ANN3,
    ),
    Bad(
        "garbage compressed RLE",
        _set("annotations.3.segmentation", {"size": [20, 24], "counts": "\x01\x02"}),
        problem="not a valid COCO RLE string",
        skipped={"bad segmentation": 1},
        **ANN3,
    ),
    # Image 30 takes id 10: both entries are dropped, and so are the annotations of 10 (ambiguous) and of 30.
    Bad(
        "duplicate image id",
        _set("images.2.id", 10),
        entry="images[2] (id 10)",
        problem="duplicate image id 10",
        skipped={"duplicate image id": 2, "annotation of a duplicate image id": 2, "unknown image id": 1},
        drop_anns=(0, 1, 4),
        drop_images=(10, 30),
    ),
    Bad(
        "missing image file",
        _image_file("missing"),
        entry="image id 20 (sub/b.png)",
        problem="image file not found",
        skipped={"bad image file": 1},
        drop_images=(20,),
    ),
    Bad(
        "truncated image file",
        _image_file("truncated"),
        entry="image id 20 (sub/b.png)",
        problem="corrupt",
        skipped={"bad image file": 1},
        drop_images=(20,),
    ),
    Bad(
        "wrongly sized image",
        _image_file("wrong size"),
        entry="image id 20 (sub/b.png)",
        problem="image file is 21x24, json says 20x24",
        skipped={"bad image file": 1},
        drop_images=(20,),
    ),
    Bad(
        "file_name escapes the root",
        _image_file("escapes"),
        entry="image id 20 (../outside.png)",
        problem="escapes the data root",
        skipped={"bad image file": 1},
        drop_images=(20,),
    ),
]


def make_bad(tmp_path: Path, case: Bad) -> tuple[Path, dict[str, Any]]:
    json_path, data = base_competition(tmp_path / "comp")
    original = copy.deepcopy(data)
    case.mutate(data, json_path.parent)
    write_json(json_path, data)
    if "bad segmentation" in case.skipped:
        # Checked here first so that a regression fails fast: pycocotools loops forever on a NaN vertex and reads
        # uninitialised memory for short RLE runs, so build_masks would hang or paint garbage instead.
        assert check_segmentation(data["annotations"][3]["segmentation"], 20, 24) is not None
    return json_path, original


def assert_nothing_written(layout: Layout) -> None:
    assert not layout.masks_dir.exists()
    assert not layout.work.exists() or not list(layout.work.iterdir()), list(layout.work.iterdir())


@pytest.mark.parametrize("case", BAD, ids=[c.name for c in BAD])
def test_bad_input_fails_naming_file_and_entry(tmp_path: Path, case: Bad) -> None:
    json_path, _ = make_bad(tmp_path, case)
    layout = Layout(tmp_path / "proj")
    with pytest.raises(UserError) as info:
        run_masks(json_path.parent, layout.root, on_error="fail")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{json_path}: {case.entry}: "), message
    assert case.problem in message
    assert "on_error: skip" in message  # how to get past it
    assert_nothing_written(layout)


@pytest.mark.parametrize("case", BAD, ids=[c.name for c in BAD])
def test_bad_input_is_skipped_and_counted(tmp_path: Path, case: Bad) -> None:
    json_path, original = make_bad(tmp_path, case)
    layout = Layout(tmp_path / "proj")
    summary = run_masks(json_path.parent, layout.root, on_error="skip")
    assert summary["skipped"] == case.skipped

    # The rest is exactly what a clean file without the offending entries gives.
    clean = copy.deepcopy(original)
    clean["annotations"] = [a for i, a in enumerate(clean["annotations"]) if i not in case.drop_anns]
    clean["images"] = [im for im in clean["images"] if im["id"] not in case.drop_images]
    ref = reference_masks(write_json(tmp_path / "clean.json", clean))
    assert sorted(p.name for p in layout.masks_dir.iterdir()) == sorted(f"{i}.png" for i in ref)
    for image_id, want in ref.items():
        np.testing.assert_array_equal(read_png(layout.mask_path(image_id)), want, err_msg=f"image {image_id}")
    assert summary["images"] == len(ref)
    assert summary["annotations"] == sum(a["image_id"] in ref for a in clean["annotations"])


@pytest.mark.parametrize("on_error", ["fail", "skip"])
@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("invalid JSON", '{"images": [', "line 1 column 13: invalid JSON"),
        ("missing images", json.dumps({"annotations": [], "categories": OTHER_CATEGORIES}), "missing key 'images'"),
        (
            "missing annotations",
            json.dumps({"images": [], "categories": OTHER_CATEGORIES}),
            "missing key 'annotations'",
        ),
        ("missing categories", json.dumps({"images": [], "annotations": []}), "missing key 'categories'"),
        (
            "images not a list",
            json.dumps({"images": {}, "annotations": [], "categories": OTHER_CATEGORIES}),
            "images: expected a list",
        ),
    ],
)
def test_unusable_json_fails_in_both_modes(tmp_path: Path, name: str, text: str, expected: str, on_error: str) -> None:
    json_path, _ = base_competition(tmp_path / "comp")
    json_path.write_text(text)
    layout = Layout(tmp_path / "proj")
    with pytest.raises(UserError) as info:
        run_masks(json_path.parent, layout.root, on_error=on_error)
    assert str(info.value).startswith(f"{json_path}: "), str(info.value)
    assert expected in str(info.value)
    assert_nothing_written(layout)


def test_failure_keeps_the_previous_masks_and_leaves_no_temp_folder(tmp_path: Path) -> None:
    json_path, data = base_competition(tmp_path / "comp")
    layout = Layout(tmp_path / "proj")
    run_masks(json_path.parent, layout.root)
    before = {p: p.read_bytes() for p in sorted(layout.work.rglob("*")) if p.is_file()}
    assert len([p for p in before if p.parent == layout.masks_dir]) == 3

    _image_file("truncated")(data, json_path.parent)  # fails inside the parallel part, mid-folder
    with pytest.raises(UserError, match="corrupt"):
        run_masks(json_path.parent, layout.root)
    after = {p: p.read_bytes() for p in sorted(layout.work.rglob("*")) if p.is_file()}
    assert after == before
    assert sorted(p.name for p in layout.work.iterdir()) == [
        "classes.json",
        "mask_summary.json",
        "masks",
        "train_index.csv",
    ]


def test_no_usable_image_is_an_error(tmp_path: Path) -> None:
    json_path, data = base_competition(tmp_path / "comp")
    for im in data["images"]:
        (json_path.parent / "images" / im["file_name"]).unlink()
    with pytest.raises(UserError, match="no usable train images"):
        run_masks(json_path.parent, tmp_path / "proj", on_error="skip")


def test_missing_competition_folder_names_the_param(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="set data.root"):
        run_masks(tmp_path / "nowhere", tmp_path / "proj")


def test_stage_cli_prints_one_line_and_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from pipeline.errors import run_cli
    from stages.masks import main

    json_path, data = make_bad(tmp_path, BAD[0])
    (tmp_path / "params.yaml").write_text(f"data:\n  root: {json_path.parent}\nmasks:\n  workers: 1\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        run_cli(main, ["--params", "params.yaml"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: {json_path}: annotations[3]"), err


def test_check_segmentation_accepts_what_pycocotools_decodes() -> None:
    m = random_blob(np.random.default_rng(5), 11, 13)
    for seg in ([random_polygon(np.random.default_rng(1), 11, 13)], uncompressed_rle(m), compressed_rle(m)):
        assert check_segmentation(seg, 11, 13) is None
    assert check_segmentation({"size": [11, 13], "counts": 5}, 11, 13) is not None
    assert check_segmentation("polygon", 11, 13) is not None
    assert check_segmentation([], 11, 13) == "empty polygon list"


def _die(job: Any) -> Any:
    import os

    os._exit(1)  # what an out-of-memory kill looks like to the parent


def test_a_dying_worker_raises_instead_of_hanging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.data.masks

    json_path, _ = base_competition(tmp_path / "comp")
    monkeypatch.setattr(pipeline.data.masks, "_paint_one", _die)
    layout = Layout(tmp_path / "proj")

    def hung(signum: int, frame: Any) -> None:
        raise TimeoutError("build_masks hung on a dead worker")

    old = signal.signal(signal.SIGALRM, hung)  # a regression must fail, not hang the test run
    signal.alarm(60)
    try:
        with pytest.raises(RuntimeError, match="worker died"):
            run_masks(json_path.parent, layout.root)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert_nothing_written(layout)
