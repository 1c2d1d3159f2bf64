"""Submission writing, validation, the CLI, COCO results export and the ledger."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import rle
from pipeline.config import Params, TtaConfig
from pipeline.ensemble.plan import Plan
from pipeline.errors import UserError
from pipeline.infer import ledger_row
from pipeline.submission.cli import main
from pipeline.submission.coco_results import to_coco_results
from pipeline.submission.codec import read_submission_csv
from pipeline.submission.format import (
    PER_CLASS,
    TRASH,
    SubmissionFormat,
    foreground_classes,
    resize_nearest,
    shapes_from_coco,
)
from pipeline.submission.ledger import LEDGER_COLUMNS, append_ledger
from pipeline.submission.validate import validate_submission
from pipeline.submission.writer import PredictionStringWriter, SubmissionWriter, write_submission

REPO = Path(__file__).resolve().parents[2]
CLASSES = [(0, "background"), (1, "cat"), (2, "dog")]
# (H, W) = (2, 3); column-major 1-based numbers: 1 3 5 / 2 4 6
MASK_A = np.array([[1, 1, 0], [0, 2, 2]], dtype=np.uint8)  # cat: pixels 1,3; dog: 4,6
MASK_B = np.zeros((3, 2), dtype=np.uint8)  # (H, W) = (3, 2), nothing found
MASK_B[2, 1] = 2  # dog: pixel 6


def _csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _write(writer: SubmissionWriter, path: Path) -> str:
    writer.finalize(path)
    return path.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# Writing


def test_default_layout_without_a_sample(tmp_path: Path) -> None:
    w = SubmissionWriter(CLASSES)
    w.add("a", MASK_A)
    w.add(7, MASK_B)
    text = _write(w, tmp_path / "sub.csv")
    assert text == "id,class,predicted\na,cat,1 1 3 1\na,dog,4 1 6 1\n7,cat,\n7,dog,6 1\n"


def test_rows_decode_back_to_the_class_masks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    masks = {f"img{i}": rng.integers(0, 3, size=(5 + i, 9 - i), dtype=np.uint8) for i in range(4)}
    write_submission(((key, m) for key, m in masks.items()), CLASSES, tmp_path / "sub.csv")
    df = read_submission_csv(tmp_path / "sub.csv")
    assert len(df) == 8
    for row in df.itertuples():
        c = {"cat": 1, "dog": 2}[row._2]
        np.testing.assert_array_equal(rle.decode(row.predicted, masks[row.id].shape), masks[row.id] == c)


def test_sample_rows_order_and_other_columns_are_kept(tmp_path: Path) -> None:
    sample = _csv(
        tmp_path / "sample.csv",
        "Usage,id,class,predicted\nPublic,007,dog,1 1\nPrivate,a,dog,\nPublic,a,cat,x\nPublic,007,cat,\n",
    )
    w = SubmissionWriter(CLASSES, sample=sample)
    w.add("a", MASK_A)
    w.add("007", MASK_B)
    text = _write(w, tmp_path / "sub.csv")
    assert text.splitlines() == [
        "Usage,id,class,predicted",
        "Public,007,dog,6 1",
        "Private,a,dog,4 1 6 1",
        "Public,a,cat,1 1 3 1",
        "Public,007,cat,",
    ]


def test_combined_key_column_with_class_indices_and_file_names(tmp_path: Path) -> None:
    fmt = SubmissionFormat(
        id_column="ImageId_ClassId",
        class_column=None,
        prediction_column="EncodedPixels",
        key_format="{id}_{class}",
        class_value="index",
        id_source="file_name",
    )
    sample = _csv(tmp_path / "sample.csv", "ImageId_ClassId,EncodedPixels\nx_1.jpg_2,1 1\nx_1.jpg_1,1 1\n")
    w = SubmissionWriter(CLASSES, fmt, sample=sample)
    w.add(fmt.image_key(5, "x_1.jpg"), MASK_A)
    text = _write(w, tmp_path / "sub.csv")
    assert text == "ImageId_ClassId,EncodedPixels\nx_1.jpg_2,4 1 6 1\nx_1.jpg_1,1 1 3 1\n"
    assert validate_submission(tmp_path / "sub.csv", sample, {"x_1.jpg": (2, 3)}, fmt, CLASSES) == []
    # the key's id is found even though it contains the separator, so the image size check still applies
    bad = validate_submission(tmp_path / "sub.csv", sample, {"x_1.jpg": (1, 3)}, fmt, CLASSES)
    assert any("x_1.jpg_2" in p and "past the last pixel 3" in p for p in bad)


def test_single_class_siim_style(tmp_path: Path) -> None:
    fmt = SubmissionFormat(
        rle=rle.SIIM, id_column="ImageId", class_column=None, prediction_column="EncodedPixels", id_source="file_stem"
    )
    w = SubmissionWriter([(0, "bg"), (1, "pneumothorax")], fmt)
    w.add(fmt.image_key(1, "dir/1.2.3.dcm"), np.array([[0, 1], [1, 1]], dtype=np.uint8))
    w.add("empty", np.zeros((2, 2), dtype=np.uint8))
    assert _write(w, tmp_path / "s.csv") == "ImageId,EncodedPixels\n1.2.3,1 3\nempty,-1\n"
    with pytest.raises(UserError, match="there are 2 foreground classes"):
        SubmissionWriter(CLASSES, fmt)


def test_per_image_layout_writes_class_start_length_triples(tmp_path: Path) -> None:
    fmt = SubmissionFormat(layout="per_image", class_value="index")
    w = SubmissionWriter(CLASSES, fmt)
    w.add("a", MASK_A)
    w.add("b", np.zeros((2, 2), np.uint8))
    assert _write(w, tmp_path / "s.csv") == "id,predicted\na,1 1 1 1 3 1 2 4 1 2 6 1\nb,\n"
    assert validate_submission(tmp_path / "s.csv", shapes={"a": (2, 3), "b": (2, 2)}, fmt=fmt, classes=CLASSES) == []
    with pytest.raises(UserError, match="has whitespace"):
        SubmissionWriter([(1, "traffic light")], SubmissionFormat(layout="per_image"))


def test_resize_nearest_matches_pil() -> None:
    rng = np.random.default_rng(1)
    for (h, w), size in [((512, 512), (256, 256)), ((7, 5), (256, 256)), ((300, 200), (97, 131)), ((3, 3), (3, 3))]:
        m = rng.integers(0, 11, size=(h, w), dtype=np.uint8)
        pil = np.asarray(Image.fromarray(m).resize((size[1], size[0]), Image.NEAREST))
        np.testing.assert_array_equal(resize_nearest(m, size), pil)


def test_prediction_string_writer(tmp_path: Path) -> None:
    classes = [(i, f"c{i}") for i in range(11)]
    sample = _csv(tmp_path / "sample.csv", "image_id,PredictionString\nb/2.jpg,\na/1.jpg,\n")
    m1 = np.zeros((8, 6), np.uint8)
    m1[:4, :3] = 10
    w = PredictionStringWriter(classes, size=(4, 2), sample=sample)
    w.add("a/1.jpg", m1)
    w.add("b/2.jpg", np.full((3, 3), 4, np.uint8))
    assert (
        _write(w, tmp_path / "s.csv")
        == "image_id,PredictionString\nb/2.jpg,4 4 4 4 4 4 4 4\na/1.jpg,10 0 10 0 0 0 0 0\n"
    )
    fmt = dataclasses.replace(TRASH, dense_size=(4, 2))
    assert validate_submission(tmp_path / "s.csv", sample, fmt=fmt, classes=classes) == []


def test_prediction_string_default_size_is_256() -> None:
    w = PredictionStringWriter([(0, "bg"), (1, "x")])
    w.add("a", np.ones((512, 384), np.uint8))
    values = w.frame()["PredictionString"].iat[0].split()
    assert len(values) == 256 * 256 and set(values) == {"1"}


def test_writer_keeps_strings_not_masks() -> None:
    w = SubmissionWriter(CLASSES)
    w.add("a", np.zeros((1000, 1000), np.uint8))
    assert all(isinstance(v, str) for v in w._rows.values())


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda w: (w.add("a", MASK_A), w.add("a", MASK_A)), "image 'a' was added twice"),
        (
            lambda w: w.add("a", np.array([[0, 7]], np.uint8)),
            r"mask has class index 7, not in the class list \(0, 1, 2\)",
        ),
        (lambda w: w.add("a", np.zeros((2, 2, 3), np.uint8)), r"expected an \(H, W\) integer class mask"),
        (lambda w: w.add("a", np.zeros((2, 2), np.float32)), "integer class mask"),
    ],
)
def test_writer_rejects_bad_input(call, message: str) -> None:
    with pytest.raises(UserError, match=message):
        call(SubmissionWriter(CLASSES))


def test_writer_refuses_when_images_and_sample_differ(tmp_path: Path) -> None:
    sample = _csv(tmp_path / "sample.csv", "id,class,predicted\na,cat,\na,dog,\nb,cat,\nb,dog,\n")
    w = SubmissionWriter(CLASSES, sample=sample)
    w.add("a", MASK_A)
    with pytest.raises(UserError, match=r"2 sample rows have no prediction \(first \('b', 'cat'\)\)"):
        w.finalize(tmp_path / "sub.csv")
    w.add("c", MASK_A)
    with pytest.raises(UserError, match="2 predicted rows are not in the sample"):
        w.finalize(tmp_path / "sub.csv")
    assert not (tmp_path / "sub.csv").exists()


def test_writer_names_the_row_it_made_when_class_values_differ(tmp_path: Path) -> None:
    sample = _csv(tmp_path / "sample.csv", "id,class,predicted\na,1,\na,2,\n")
    w = SubmissionWriter(CLASSES, sample=sample)  # class_value="name": rows ('a', 'cat'), not ('a', '1')
    w.add("a", MASK_A)
    with pytest.raises(UserError, match=r"the writer made rows like \('a', 'cat'\)"):
        w.finalize(tmp_path / "sub.csv")


def test_writer_refuses_an_invalid_frame_and_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    dest = _csv(tmp_path / "sub.csv", "old\n")
    w = SubmissionWriter(CLASSES)
    w.add("a", MASK_A)
    good = w.frame()
    bad = good.copy()
    bad.loc[0, "predicted"] = "3 1 1 1"
    monkeypatch.setattr(w, "frame", lambda: bad)
    with pytest.raises(
        UserError,
        match=r"sub.csv: refusing to write an invalid submission: .*line 2 \(id 'a', "
        r"class 'cat'\): run 2 starts at 1, before run 1",
    ):
        w.finalize(dest)
    assert dest.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]  # no temp file left behind


def test_writer_checks_the_sample_columns(tmp_path: Path) -> None:
    sample = _csv(tmp_path / "sample.csv", "ImageId_ClassId,EncodedPixels\na_1,\n")
    with pytest.raises(UserError, match=r"sample.csv: no column 'id' .*set the format's id_column"):
        SubmissionWriter(CLASSES, sample=sample)
    dup = _csv(tmp_path / "dup.csv", "id,class,predicted\na,cat,\na,cat,\n")
    with pytest.raises(UserError, match="appears more than once in the sample"):
        SubmissionWriter(CLASSES, sample=dup)


def test_format_rejects_bad_options() -> None:
    with pytest.raises(UserError, match="key_format '{image}_{class}' must contain {id}"):
        SubmissionFormat(key_format="{image}_{class}")
    with pytest.raises(UserError, match="layout 'rows' is not one of"):
        SubmissionFormat(layout="rows")  # type: ignore[arg-type]


def test_foreground_classes_accepts_pairs_and_classes_json() -> None:
    assert foreground_classes([(2, "dog"), (0, "bg"), (1, "cat")]) == [(1, "cat"), (2, "dog")]
    assert foreground_classes([{"index": 0, "name": "bg", "coco_id": None}, {"index": 1, "name": "x"}]) == [(1, "x")]
    with pytest.raises(UserError, match="class index 1 appears twice"):
        foreground_classes([(1, "a"), (1, "b")])
    with pytest.raises(UserError, match="expected a list"):
        foreground_classes({"index": 1})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# Validation

GOOD = "id,class,predicted\na,cat,1 1 3 1\na,dog,4 1 6 1\nb,cat,\nb,dog,6 1\n"
SHAPES = {"a": (2, 3), "b": (3, 2)}


def test_a_good_submission_has_no_problems(tmp_path: Path) -> None:
    sub = _csv(tmp_path / "sub.csv", GOOD)
    assert validate_submission(sub, _csv(tmp_path / "sample.csv", GOOD), SHAPES, PER_CLASS, CLASSES) == []
    assert validate_submission(sub, shapes=SHAPES, classes=CLASSES) == []
    assert validate_submission(sub) == []


@pytest.mark.parametrize(
    "text, problem",
    [
        (GOOD + "b,dog,6 1\n", "line 5 (id 'b', class 'dog'): appears 2 times (lines 5, 6)"),
        (GOOD.replace("b,cat,\n", ""), "missing row (id 'b', class 'cat')"),
        (GOOD + "c,cat,\n", "line 6 (id 'c', class 'cat'): unexpected row"),
        (GOOD.replace("4 1 6 1", "4 1 6"), "line 3 (id 'a', class 'dog'): odd number of values (3)"),
        (GOOD.replace("4 1 6 1", "6 1 4 1"), "line 3 (id 'a', class 'dog'): run 2 starts at 4, before run 1"),
        (GOOD.replace("4 1 6 1", "4 2 5 1"), "line 3 (id 'a', class 'dog'): run 2 (start 5) overlaps run 1"),
        (GOOD.replace("b,dog,6 1", "b,dog,6 2"), "line 5 (id 'b', class 'dog'): run 1 ends at pixel 7, past"),
        (GOOD.replace("b,cat,", "b,cat,-1"), "line 4 (id 'b', class 'cat'): '-1' is not this format's empty"),
        (GOOD.replace("id,class,predicted", "id,class,EncodedPixels"), "columns ['id', 'class', 'EncodedPixels']"),
    ],
)
def test_validator_finds_each_problem(tmp_path: Path, text: str, problem: str) -> None:
    sample = _csv(tmp_path / "sample.csv", GOOD)
    problems = validate_submission(_csv(tmp_path / "sub.csv", text), sample, SHAPES, PER_CLASS, CLASSES)
    assert any(problem in p for p in problems), problems
    assert all(p.startswith(str(tmp_path / "sub.csv")) for p in problems)


def test_validator_checks_columns_and_values_kept_from_the_sample(tmp_path: Path) -> None:
    sample = _csv(tmp_path / "sample.csv", "id,class,Usage,predicted\na,cat,Public,\n")
    reordered = _csv(tmp_path / "r.csv", "id,class,predicted,Usage\na,cat,,Public\n")
    assert any("do not match the sample" in p for p in validate_submission(reordered, sample))
    changed = _csv(tmp_path / "c.csv", "id,class,Usage,predicted\na,cat,Private,\n")
    assert validate_submission(changed, sample) == [
        f"{tmp_path / 'c.csv'}: line 2 (id 'a', class 'cat'): column 'Usage' is 'Private', the sample has 'Public'"
    ]


def test_validator_without_a_sample_uses_shapes_and_classes(tmp_path: Path) -> None:
    sub = _csv(tmp_path / "sub.csv", GOOD.replace("a,dog,4 1 6 1\n", "") + "z,cat,\nb,bird,\n")
    problems = validate_submission(sub, shapes=SHAPES, classes=CLASSES)
    assert any("missing row (id 'a', class 'dog')" in p for p in problems)
    assert any("(id 'z', class 'cat'): no image size for id 'z'" in p for p in problems)
    assert any("(id 'b', class 'bird'): unknown class 'bird'" in p for p in problems)


def test_validator_per_image_and_dense_problems(tmp_path: Path) -> None:
    fmt = SubmissionFormat(layout="per_image", class_value="index")
    sub = _csv(tmp_path / "p.csv", "id,predicted\na,1 1 2 2 2 1\nb,1 1\nc,3 1 1\n")
    problems = validate_submission(sub, shapes={"a": (2, 3), "b": (2, 2), "c": (2, 2)}, fmt=fmt, classes=CLASSES)
    assert any("line 2 (id 'a'): runs of different classes overlap" in p for p in problems), problems
    assert any("line 3 (id 'b'): 2 values; expected 'class start length' triples" in p for p in problems)
    assert any("line 4 (id 'c'): unknown class '3'" in p for p in problems)
    fmt = dataclasses.replace(TRASH, dense_size=(1, 3))
    sub = _csv(tmp_path / "d.csv", "image_id,PredictionString\na,0 1\nb,0 1 5\nc,0 1 x\n")
    problems = validate_submission(sub, fmt=fmt, classes=CLASSES)
    assert any("line 2 (image_id 'a'): 2 values; expected 3 (1x3 class indices)" in p for p in problems)
    assert any("line 3 (image_id 'b'): class index 5 is not in the class list (0, 1, 2)" in p for p in problems)
    assert any("line 4 (image_id 'c'): value 3 ('x') is not an integer" in p for p in problems)


def test_validator_caps_the_list(tmp_path: Path) -> None:
    sub = _csv(tmp_path / "sub.csv", "id,class,predicted\n" + "".join(f"i{k},cat,0 1\n" for k in range(80)))
    problems = validate_submission(sub, max_problems=10)
    assert len(problems) == 11 and problems[-1] == "... and 70 more problems"


def test_shapes_from_coco(tmp_path: Path) -> None:
    coco = tmp_path / "test.json"
    coco.write_text(json.dumps({"images": [{"id": 3, "file_name": "d/x.png", "height": 2, "width": 5}]}))
    assert shapes_from_coco(coco) == {"3": (2, 5)}
    assert shapes_from_coco(coco, "file_stem") == {"x": (2, 5)}
    coco.write_text(json.dumps({"images": [{"id": 3}]}))
    with pytest.raises(UserError, match=r"test.json: images\[0\]: an image needs id, file_name, height and width"):
        shapes_from_coco(coco)


# ---------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_prints_ok_or_the_problems(tmp_path: Path, capsys) -> None:
    sample = _csv(tmp_path / "sample.csv", GOOD)
    coco = tmp_path / "test.json"
    coco.write_text(
        json.dumps(
            {
                "images": [
                    {"id": "a", "file_name": "a.png", "height": 2, "width": 3},
                    {"id": "b", "file_name": "b.png", "height": 3, "width": 2},
                ]
            }
        )
    )
    good = _csv(tmp_path / "good.csv", GOOD)
    assert main(["validate", str(good), "--sample", str(sample), "--shapes-from", str(coco)]) == 0
    assert capsys.readouterr().out.startswith("OK")
    bad = _csv(tmp_path / "bad.csv", GOOD.replace("b,dog,6 1", "b,dog,7 1"))
    assert main(["validate", str(bad), "--sample", str(sample), "--shapes-from", str(coco)]) == 1
    assert "line 5 (id 'b', class 'dog'): run 1 ends at pixel 7" in capsys.readouterr().out
    # pixel 5 is the last one of a 3x2 image with 0-based starts, past it with 1-based starts
    zero_based = ["--sample", str(sample), "--start-index", "0", "--shapes-from", str(coco)]
    ok0 = _csv(tmp_path / "ok0.csv", GOOD.replace("b,dog,6 1", "b,dog,5 1").replace("4 1 6 1", "3 1 5 1"))
    assert main(["validate", str(ok0), *zero_based]) == 0
    assert main(["validate", str(good), *zero_based]) == 1
    assert "line 5 (id 'b', class 'dog'): run 1 ends at pixel 6, past the last pixel 5" in capsys.readouterr().out
    siim = _csv(tmp_path / "siim.csv", "ImageId,EncodedPixels\nx,-1\ny,0 1 2 1\n")
    args = [
        "validate",
        str(siim),
        "--id-column",
        "ImageId",
        "--class-column",
        "",
        "--prediction-column",
        "EncodedPixels",
        "--start-index",
        "0",
        "--starts",
        "relative",
        "--empty=-1",
    ]
    assert main(args) == 0


def test_cli_as_a_module_and_its_user_errors(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = [sys.executable, "-m", "pipeline.submission", "validate"]
    bad = _csv(tmp_path / "bad.csv", "id,class,predicted\na,cat,1 2 3\n")
    out = subprocess.run([*run, str(bad)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 1 and "line 2 (id 'a', class 'cat'): odd number of values (3)" in out.stdout
    out = subprocess.run([*run, str(tmp_path / "nope.csv")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr == f"error: {tmp_path / 'nope.csv'}: file not found\n"


# ---------------------------------------------------------------------------------------------------------------
# COCO results


def _coco_gt(h: int, w: int) -> object:
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "file_name": "x.png", "height": h, "width": w}],
        "annotations": [],
        "categories": [{"id": 10, "name": "cat"}, {"id": 20, "name": "dog"}],
    }
    gt.createIndex()
    return gt


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on numpy 2
def test_coco_results_one_rle_per_component_readable_by_loadres(capsys) -> None:
    mask = np.zeros((6, 7), np.uint8)
    mask[0:2, 0:2] = 1  # cat component 1
    mask[4:6, 5:7] = 1  # cat component 2
    mask[2, 2] = 2  # dog: two pixels touching diagonally, one component with 8-connectivity
    mask[3, 3] = 2
    probs = np.zeros((3, 6, 7))
    probs[1, 0:2, 0:2] = 0.8
    probs[1, 4:6, 5:7] = [[0.5, 0.7], [0.6, 0.6]]
    probs[2, 2, 2], probs[2, 3, 3] = 0.9, 0.7
    results = to_coco_results(1, mask, {1: 10, 2: 20}, scores=probs)
    assert [(r["category_id"], round(r["score"], 6)) for r in results] == [(10, 0.8), (10, 0.6), (20, 0.8)]
    json.dumps(results)  # JSON-ready
    expected = [np.pad(np.ones((2, 2)), ((0, 4), (0, 5))), np.pad(np.ones((2, 2)), ((4, 0), (5, 0))), mask == 2]
    dt = _coco_gt(6, 7).loadRes(results)
    anns = dt.loadAnns(dt.getAnnIds(imgIds=[1]))
    assert len(anns) == 3
    for ann, want in zip(anns, expected, strict=True):
        np.testing.assert_array_equal(dt.annToMask(ann), want.astype(np.uint8))
        assert ann["area"] == want.sum()
    assert [r["score"] for r in to_coco_results(1, mask, {1: 10, 2: 20})] == [1.0, 1.0, 1.0]
    assert len(to_coco_results(1, mask, {1: 10, 2: 20}, connectivity=4)) == 4


def test_coco_results_score_from_a_single_probability_map_and_errors() -> None:
    mask = np.array([[0, 3, 3]], np.uint8)
    out = to_coco_results(5, mask, {3: 1}, scores=np.array([[0.1, 0.2, 0.4]]))
    assert len(out) == 1 and out[0]["score"] == pytest.approx(0.3) and out[0]["image_id"] == 5
    assert to_coco_results(5, np.zeros((2, 2), np.uint8), {}) == []
    with pytest.raises(UserError, match="class index 3 has no category id"):
        to_coco_results(5, mask, {1: 1})


# ---------------------------------------------------------------------------------------------------------------
# Ledger


def _read_ledger(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def test_ledger_creates_then_appends(tmp_path: Path) -> None:
    ledger = tmp_path / "submissions" / "ledger.csv"
    append_ledger(
        ledger,
        {
            "file": "a.csv",
            "time": "t1",
            "models": ["unet", "fpn"],
            "members": [0, 1],
            "ensemble_weights": {"unet": 0.5},
            "oof_miou": 0.71,
            "tta": True,
        },
    )
    append_ledger(ledger, {"file": "b.csv", "git_commit": "abc123", "lb_miou": np.float32(0.5)})
    rows = _read_ledger(ledger)
    assert rows[0] == LEDGER_COLUMNS
    # the last eight: metric, oof_in_sample, oof_cross_fitted, fallback, lb_score, submission_sha256, postprocess,
    # threshold
    assert rows[1] == ["a.csv", "t1", "", '["unet","fpn"]', "[0,1]", "True", '{"unet":0.5}', "0.71", "", ""] + [""] * 8
    assert rows[2][0] == "b.csv" and rows[2][2] == "abc123" and rows[2][8] == "0.5" and rows[2][9] == ""
    assert rows[2][1].endswith("+00:00")  # time defaults to now, UTC
    assert [p.name for p in ledger.parent.iterdir()] == ["ledger.csv"]


def test_ledger_rejects_unknown_columns_and_foreign_files(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.csv"
    with pytest.raises(UserError, match="unknown ledger column 'score'"):
        append_ledger(ledger, {"file": "a.csv", "score": 1})
    assert not ledger.exists()
    ledger.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="is not the ledger's"):
        append_ledger(ledger, {"file": "a.csv"})
    assert ledger.read_text() == "a,b\n1,2\n"


def test_ledger_keeps_earlier_rows_verbatim(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.csv"
    append_ledger(ledger, {"file": 'odd, "name".csv', "time": "t"})
    append_ledger(ledger, {"file": "next.csv", "time": "t"})
    assert _read_ledger(ledger)[1][0] == 'odd, "name".csv'
    assert len(_read_ledger(ledger)) == 3


def test_a_rerun_of_the_same_submission_replaces_its_row(tmp_path: Path) -> None:
    """infer adds its ledger row, then the stage writes metrics/infer.json: a kill between the two leaves the row,
    and the re-run (which writes the same submission again) must not add a second. The rows are infer's own
    (:func:`pipeline.infer.ledger_row`, the submission's sha256 from the file written); a public score pasted into
    the row stays; another submission written to the same path is a row of its own."""
    ledger, sub = tmp_path / "submissions" / "ledger.csv", tmp_path / "submission.csv"
    report = {"models": ["tiny"], "members": [{"model": "tiny", "fold": 0, "round": 1}], "submission": str(sub)}
    plan = Plan({"tiny": TtaConfig(flips=["hflip"], scales=[1.0])}, {}, [1.0], {}, [])
    masks = {str(i): np.random.default_rng(i).integers(0, 3, (6, 7)).astype(np.uint8) for i in range(3)}

    def infer_run(flip: bool = False) -> None:
        """The end of one infer run: the submission, the ledger row (killed here: no metrics/infer.json)."""
        write_submission(((k, 2 - m if flip else m) for k, m in masks.items()), CLASSES, sub)
        append_ledger(ledger, ledger_row(report, Params(), plan, None))

    infer_run()  # killed before metrics/infer.json
    infer_run()  # the re-run
    rows = _read_ledger(ledger)
    assert len(rows) == 2, rows  # the header and one row
    key = LEDGER_COLUMNS.index("submission_sha256")
    assert rows[1][key] == hashlib.sha256(sub.read_bytes()).hexdigest() and rows[1][0] == str(sub)
    assert rows[1][LEDGER_COLUMNS.index("tta")] == "tiny: hflip"

    score = LEDGER_COLUMNS.index("public_score")
    rows[1][score] = "0.812"  # pasted after the upload
    with open(ledger, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    infer_run()
    assert [r[score] for r in _read_ledger(ledger)[1:]] == ["0.812"]

    infer_run(flip=True)  # other predictions, the same file name: another submission
    rows = _read_ledger(ledger)
    assert len(rows) == 3 and rows[1][score] == "0.812" and rows[2][score] == "" and rows[1][key] != rows[2][key]


def test_a_ledger_from_before_the_last_columns_gets_them(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.csv"
    old = LEDGER_COLUMNS[: LEDGER_COLUMNS.index("submission_sha256")]
    with open(ledger, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([old, ["a.csv", "t"] + [""] * (len(old) - 3) + ["0.5"]])
    append_ledger(ledger, {"file": "a.csv", "time": "t2", "submission_sha256": "ab" * 32})
    rows = _read_ledger(ledger)
    assert rows[0] == LEDGER_COLUMNS and len(rows) == 3  # the old row had no digest: never the same submission
    added = len(LEDGER_COLUMNS) - len(old)  # submission_sha256 and the columns after it
    assert rows[1] == ["a.csv", "t"] + [""] * (len(old) - 3) + ["0.5"] + [""] * added
    assert rows[2][0] == "a.csv" and rows[2][LEDGER_COLUMNS.index("submission_sha256")] == "ab" * 32
