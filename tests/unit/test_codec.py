"""The submission codec: round trips in every layout x RLE variant (hypothesis, checked by a reference decoder
written here), the params files through the strict loader, and the hostile inputs of issue 19 (a catastrophic
regex, int64 overflow, short and long rows, BOM/CRLF, CSV injection)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_leaderboard import LAYOUTS, VARIANTS, make_competition, ref_decode

from pipeline import rle
from pipeline.config import load_params
from pipeline.errors import UserError
from pipeline.leaderboard import score_submission
from pipeline.submission import codec
from pipeline.submission.cli import main as validate_main
from pipeline.submission.format import SubmissionFormat, class_labels, foreground_classes, submission_format
from pipeline.submission.ledger import LEDGER_COLUMNS, append_ledger
from pipeline.submission.validate import validate_submission
from pipeline.submission.writer import SubmissionWriter, write_submission

REPO = Path(__file__).resolve().parents[2]
CLASSES = [(0, "background"), (1, "cat"), (2, "dog")]


# --------------------------------------------------------------------------------------------------------------
# Round trips


@st.composite
def masks_and_formats(draw):
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    layout = draw(st.sampled_from(sorted(LAYOUTS)))
    fmt = SubmissionFormat(rle=draw(st.sampled_from(VARIANTS)), **LAYOUTS[layout])
    k = 2 if fmt.single_class() else 4
    values = draw(st.lists(st.integers(0, k - 1), min_size=h * w, max_size=h * w))
    return np.array(values, np.uint8).reshape(h, w), fmt, k


@settings(max_examples=300, deadline=None)
@given(masks_and_formats())
def test_encode_then_decode_is_the_mask_in_every_layout_and_variant(case) -> None:
    mask, fmt, k = case
    names = ["background", "cat", "dog", "eel"][:k]
    labels = class_labels(foreground_classes(list(enumerate(names))), fmt)
    rows = codec.encode_image(mask, fmt, labels, "7")
    # the reference decoder reads the same text back to the same mask
    ref = np.zeros(mask.shape, np.int64)
    for key, text in rows.items():
        if fmt.layout == "per_image":
            tokens = text.split() if text != fmt.rle.empty else []
            for lab in dict.fromkeys(tokens[0::3]):
                pairs = [v for j in range(0, len(tokens), 3) if tokens[j] == lab for v in tokens[j + 1 : j + 3]]
                ref[ref_decode(" ".join(pairs), mask.shape, fmt.rle)] = {v: i for i, v in labels.items()}[lab]
        else:
            index = (
                1
                if fmt.single_class()
                else {v: i for i, v in labels.items()}[
                    codec.split_key(key, fmt, codec.key_parser(fmt, list(labels.values())))[1]
                ]
            )
            ref[ref_decode(text, mask.shape, fmt.rle)] = index
    np.testing.assert_array_equal(ref, mask)
    df = pd.DataFrame([(*key, text) for key, text in rows.items()], columns=fmt.columns(), dtype=object)
    assert not validate_submission(df, None, {"7": mask.shape}, fmt, list(enumerate(names)))
    decoded = codec.decode_frame(df, fmt, {"7": mask.shape}, {v: i for i, v in labels.items()})
    np.testing.assert_array_equal(decoded["7"], mask)


# --------------------------------------------------------------------------------------------------------------
# Params files


PARAMS_FILES = [REPO / "params.yaml", *sorted((REPO / "profiles").glob("*.yaml"))]


@pytest.mark.parametrize("path", PARAMS_FILES, ids=[p.name for p in PARAMS_FILES])
def test_every_params_file_has_a_valid_submission_format(path: Path) -> None:
    fmt = submission_format(load_params(path), path)
    assert isinstance(fmt, SubmissionFormat) and fmt.columns()[-1] == fmt.prediction_column


def test_a_bad_submission_format_names_the_params_file(tmp_path: Path) -> None:
    text = (REPO / "params.yaml").read_text().replace("  submission: {}", "  submission: {layot: dense}")
    assert text != (REPO / "params.yaml").read_text()
    (tmp_path / "mine.yaml").write_text(text)
    with pytest.raises(UserError, match=r"mine\.yaml: infer\.submission.*layot"):
        submission_format(load_params(tmp_path / "mine.yaml"), tmp_path / "mine.yaml")


# --------------------------------------------------------------------------------------------------------------
# Hostile input (issue 19)


def _csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_a_long_digit_run_before_a_bad_value_is_refused_at_once() -> None:
    t0 = time.perf_counter()
    for n in (40, 10_000, 1_000_000):
        with pytest.raises(rle.RleError, match=r"value 2 \('x'\) is not an integer"):
            rle.parse_integers("1" * n + " x")
    assert time.perf_counter() - t0 < 1.0  # the old nested regex took 3.6 s at 28 digits, doubling per digit
    with pytest.raises(rle.RleError, match=r"character '\\xa0' is not an ASCII digit"):
        rle.parse_integers("1\xa02")
    for bad in ("+5", "1_000", "\u0663"):  # int() would accept these; a submission must not
        with pytest.raises(rle.RleError, match="is not an integer"):
            rle.parse_integers(f"1 {bad}")


def test_a_run_that_would_overflow_int64_is_refused(tmp_path: Path) -> None:
    text = "3 9223372036854775807 6 1"
    with pytest.raises(rle.RleError, match=r"value 2 \(9223372036854775807\) is beyond any image"):
        rle.parse_runs(text)
    sub = _csv(tmp_path / "s.csv", f"id,class,predicted\n1,cat,{text}\n1,dog,\n")
    problems = validate_submission(sub, None, {"1": (3, 3)}, classes=CLASSES)
    assert problems == [
        f"{sub}: line 2 (id '1', class 'cat'): value 2 (9223372036854775807) is beyond any image "
        f"({rle.MAX_PIXELS} pixels at most)"
    ]
    with pytest.raises(rle.RleError, match="beyond any image"):  # relative starts: the cumulative sum is guarded
        rle.parse_runs("1 1 9223372036854775806 1", rle.RleFormat(starts="relative"))


def test_a_short_row_is_a_problem_not_an_empty_mask(tmp_path: Path) -> None:
    sub = _csv(tmp_path / "s.csv", "id,class,predicted\n1,a\n")
    want = (
        f"{sub}: line 2 has 2 fields, the header has 3 (id,class,predicted); every row needs exactly one value "
        "per column"
    )
    assert validate_submission(sub) == [want]
    out = validate_main(["validate", str(sub)])
    assert out == 1


def test_an_extra_field_in_the_first_row_is_one_clear_problem(tmp_path: Path) -> None:
    sub = _csv(tmp_path / "s.csv", "id,class,predicted\n1,cat,1 2,extra\n1,dog,\n2,cat,\n2,dog,\n")
    problems = validate_submission(sub, None, {"1": (3, 3), "2": (3, 3)}, classes=CLASSES)
    assert problems == [
        f"{sub}: line 2 has 4 fields, the header has 3 (id,class,predicted); every row needs "
        "exactly one value per column"
    ]


def test_empty_and_non_utf8_files_are_one_problem(tmp_path: Path) -> None:
    assert validate_submission(_csv(tmp_path / "e.csv", "")) == [
        f"{tmp_path / 'e.csv'}: empty file; a submission starts with a header line of column names"
    ]
    (problem,) = validate_submission(_csv(tmp_path / "l.csv", "id,class,predicted\n1,ch\xe9,\n", "latin-1"))
    assert problem.startswith(f"{tmp_path / 'l.csv'}: not a readable UTF-8 CSV")
    (problem,) = validate_submission(_csv(tmp_path / "d.csv", "id,id,predicted\n1,2,\n"))
    assert "column 'id' appears twice" in problem


def test_bom_and_crlf_read_like_plain_lf(tmp_path: Path) -> None:
    test_json, truth_dir, truths = make_competition(tmp_path, ["background", "cat", "dog"], [(4, 3), (2, 5)])
    plain = write_submission(truths.items(), CLASSES, tmp_path / "plain.csv")
    text = plain.read_text()
    dos = _csv(tmp_path / "dos.csv", "\ufeff" + text.replace("\n", "\r\n"))
    pd.testing.assert_frame_equal(codec.read_submission_csv(dos), codec.read_submission_csv(plain))
    assert list(codec.read_submission_csv(dos).columns) == ["id", "class", "predicted"]
    shapes = {k: v.shape for k, v in truths.items()}
    assert validate_submission(dos, None, shapes, classes=CLASSES) == []
    assert score_submission(dos, truth_dir, test_json, SubmissionFormat())["mIoU"] == 1.0


@pytest.mark.parametrize("name", ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)"])
def test_a_label_a_spreadsheet_would_run_is_refused(tmp_path: Path, name: str) -> None:
    classes = [(0, "background"), (1, name)]
    with pytest.raises(UserError, match=r"class label .* which a spreadsheet runs as a formula; rename the category"):
        SubmissionWriter(classes)
    # written as class indices it is only digits
    path = write_submission(
        [(1, np.ones((2, 2), np.uint8))], classes, tmp_path / "s.csv", SubmissionFormat(class_value="index")
    )
    assert path.read_text() == "id,class,predicted\n1,1,1 4\n"


def test_no_cell_we_write_or_accept_is_a_formula(tmp_path: Path) -> None:
    w = SubmissionWriter(CLASSES, SubmissionFormat(id_source="file_stem"))
    with pytest.raises(UserError, match=r"image id '=1\+2' starts with '=', which a spreadsheet runs as a formula"):
        w.add("=1+2", np.zeros((2, 2), np.uint8))
    sub = _csv(tmp_path / "s.csv", 'id,class,predicted\n"=HYPERLINK(""x"")",cat,\n')
    (problem,) = validate_submission(sub)
    assert "key '=HYPERLINK(\"x\")' starts with '=', which a spreadsheet runs as a formula (CSV injection)" in problem
    # the empty token -1 and negative numbers are numbers, not formulas
    empty = SubmissionFormat(rle=rle.RleFormat(empty="-1"))
    text = write_submission([(1, np.zeros((2, 2), np.uint8))], CLASSES, tmp_path / "e.csv", empty).read_text()
    assert text == "id,class,predicted\n1,cat,-1\n1,dog,-1\n"
    append_ledger(tmp_path / "ledger.csv", {"file": "=cmd", "models": "@evil", "oof_miou": -0.5})
    row = (tmp_path / "ledger.csv").read_text().splitlines()[1].split(",")
    assert row[LEDGER_COLUMNS.index("file")] == "'=cmd" and row[LEDGER_COLUMNS.index("models")] == "'@evil"
    assert row[LEDGER_COLUMNS.index("oof_miou")] == "-0.5"


def test_decode_frame_refuses_what_it_cannot_decode(tmp_path: Path) -> None:
    df = pd.DataFrame([["1", "cat", "1 2 3"]], columns=["id", "class", "predicted"], dtype=object)
    with pytest.raises(UserError, match=r"sub\.csv: line 2 \(1, cat\): odd number of values"):
        codec.decode_frame(df, SubmissionFormat(), {"1": (2, 2)}, {"cat": 1}, "sub.csv")
    fmt = dataclasses.replace(SubmissionFormat(), class_column=None)
    df = pd.DataFrame([["1", "1 2"]], columns=["id", "predicted"], dtype=object)
    np.testing.assert_array_equal(codec.decode_frame(df, fmt, {"1": (2, 2)}, {"lesion": 1})["1"], [[1, 0], [1, 0]])
