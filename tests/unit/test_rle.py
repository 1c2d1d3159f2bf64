"""Run-length encoding: hand-computed tables, properties, and agreement with pycocotools."""

from __future__ import annotations

import itertools

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline import rle
from pipeline.rle import RleFormat

# The module docstring's worked example
M3 = np.array([[0, 1, 1], [0, 1, 0], [1, 0, 0]], dtype=np.uint8)
# A non-square mask, so a swapped H/W or order shows up:
#   column-major 1-based numbers     row-major 1-based numbers
#   1 3 5 7                          1 2 3 4
#   2 4 6 8                          5 6 7 8
M24 = np.array([[1, 1, 0, 0], [0, 1, 1, 1]], dtype=np.uint8)

ALL_FORMATS = [
    RleFormat(order=o, start_index=i, starts=s, empty=e)
    for o, i, s, e in itertools.product(("column", "row"), (1, 0), ("absolute", "relative"), ("", "-1"))
]

TABLE = [
    # mask, format, text
    (M3, RleFormat(), "3 3 7 1"),
    (M3, RleFormat(start_index=0), "2 3 6 1"),
    (M3, RleFormat(starts="relative"), "3 3 1 1"),
    (M3, rle.SIIM, "2 3 1 1"),
    (M3, RleFormat(order="row"), "2 2 5 1 7 1"),
    (M3, RleFormat(order="row", start_index=0), "1 2 4 1 6 1"),
    (M3, RleFormat(order="row", starts="relative"), "2 2 1 1 1 1"),
    (M24, RleFormat(), "1 1 3 2 6 1 8 1"),
    (M24, RleFormat(order="row"), "1 2 6 3"),
    (M24, RleFormat(order="row", start_index=0, starts="relative"), "0 2 3 3"),
    (np.zeros((2, 3), np.uint8), RleFormat(), ""),
    (np.zeros((2, 3), np.uint8), RleFormat(empty="-1"), "-1"),
    (np.ones((2, 3), np.uint8), RleFormat(), "1 6"),
    (np.ones((2, 3), np.uint8), rle.SIIM, "0 6"),
    (np.eye(2, dtype=bool), RleFormat(), "1 1 4 1"),  # first and last pixel
    (np.eye(2, dtype=bool), RleFormat(starts="relative", start_index=0), "0 1 2 1"),
]


@pytest.mark.parametrize("mask, fmt, text", TABLE)
def test_encode_table(mask: np.ndarray, fmt: RleFormat, text: str) -> None:
    assert rle.encode(mask, fmt) == text


@pytest.mark.parametrize("mask, fmt, text", TABLE)
def test_decode_table(mask: np.ndarray, fmt: RleFormat, text: str) -> None:
    out = rle.decode(text, mask.shape, fmt)
    assert out.dtype == bool and out.shape == mask.shape
    np.testing.assert_array_equal(out, mask.astype(bool))


def test_encode_runs_are_zero_based_in_the_given_order() -> None:
    starts, lengths = rle.encode_runs(M24, "column")
    assert starts.tolist() == [0, 2, 5, 7] and lengths.tolist() == [1, 2, 1, 1]
    starts, lengths = rle.encode_runs(M24, "row")
    assert starts.tolist() == [0, 5] and lengths.tolist() == [2, 3]


def test_encode_class_runs_lists_every_run_with_its_value() -> None:
    mask = np.array([[0, 2, 2], [1, 1, 0]], dtype=np.uint8)
    values, starts, lengths = rle.encode_class_runs(mask, "row")
    assert values.tolist() == [0, 2, 1, 0] and starts.tolist() == [0, 1, 3, 5] and lengths.tolist() == [1, 2, 2, 1]
    values, starts, lengths = rle.encode_class_runs(mask, "column")  # flat: 0 1 2 1 2 0
    assert values.tolist() == [0, 1, 2, 1, 2, 0] and lengths.tolist() == [1] * 6


def test_touching_runs_decode_to_their_union() -> None:
    out = rle.decode("1 2 3 2", (2, 3), RleFormat())
    np.testing.assert_array_equal(out, [[1, 1, 0], [1, 1, 0]])
    out = rle.decode("1 2 0 2", (2, 3), RleFormat(starts="relative"))
    np.testing.assert_array_equal(out, [[1, 1, 0], [1, 1, 0]])


@pytest.mark.parametrize(
    "text, fmt, reason",
    [
        ("1 2 3", RleFormat(), "odd number of values (3)"),
        ("1 2.5", RleFormat(), "value 2 ('2.5') is not an integer"),
        ("1 x", RleFormat(), "value 2 ('x') is not an integer"),
        ("1 ٣", RleFormat(), "is not an integer"),  # a non-ASCII digit that int() would accept
        ("1 99999999999999999999999", RleFormat(), "too large"),
        ("1 0", RleFormat(), "run 1 (start 1) has length 0"),
        ("1 2 5 -1", RleFormat(), "run 2 (start 5) has length -1"),
        ("0 2", RleFormat(), "run 1 starts at 0, before the first pixel (1 with 1-based starts)"),
        ("-1 2", RleFormat(start_index=0), "run 1 starts at -1, before the first pixel (0 with 0-based"),
        ("5 1 2 1", RleFormat(), "run 2 starts at 2, before run 1 at 5: starts must be sorted"),
        ("1 3 2 1", RleFormat(), "run 2 (start 2) overlaps run 1 (start 1, length 3)"),
        ("1 3 1 1", RleFormat(), "run 2 (start 1) overlaps run 1"),
        ("1 2 -1 1", RleFormat(starts="relative"), "run 2 has a negative relative start -1: it overlaps run 1"),
        ("5 3", RleFormat(), "run 1 ends at pixel 7, past the last pixel 6 of the image"),
        ("0 7", RleFormat(start_index=0), "run 1 ends at pixel 6, past the last pixel 5"),
        ("1 1 4 3", RleFormat(starts="relative"), "run 2 ends at pixel 8, past the last pixel 6"),
        ("-1", RleFormat(), "'-1' is not this format's empty-mask token; an empty mask is written ''"),
        ("", RleFormat(empty="-1"), "'' is not this format's empty-mask token; an empty mask is written '-1'"),
    ],
)
def test_decode_rejects_bad_text_with_the_reason(text: str, fmt: RleFormat, reason: str) -> None:
    with pytest.raises(rle.RleError) as e:
        rle.decode(text, (2, 3), fmt)
    assert reason in str(e.value)
    assert isinstance(e.value, ValueError)


def test_decode_rejects_non_text() -> None:
    with pytest.raises(rle.RleError, match="expected run-length text, got float"):
        rle.decode(float("nan"), (2, 3))  # type: ignore[arg-type]


def test_parse_runs_without_a_size_skips_only_the_bounds_check() -> None:
    starts, lengths = rle.parse_runs("100 5", RleFormat())
    assert starts.tolist() == [99] and lengths.tolist() == [5]
    with pytest.raises(rle.RleError, match="overlaps"):
        rle.parse_runs("1 5 3 1", RleFormat())


def test_surrounding_whitespace_is_ignored() -> None:
    np.testing.assert_array_equal(rle.decode("  3 3\t7 1 \n", (3, 3)), M3.astype(bool))
    assert not rle.decode("   ", (3, 3)).any()


@pytest.mark.parametrize(
    "kwargs", [{"order": "F"}, {"start_index": 2}, {"start_index": True}, {"starts": "rel"}, {"empty": "0"}]
)
def test_format_rejects_unknown_options(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=f"RleFormat.{next(iter(kwargs))}"):
        RleFormat(**kwargs)


def test_encode_rejects_non_2d() -> None:
    with pytest.raises(ValueError, match=r"expected a 2-D \(H, W\) mask"):
        rle.encode(np.zeros((2, 2, 2)))


# ---------------------------------------------------------------------------------------------------------------
# Properties


@st.composite
def masks(draw: st.DrawFn, max_side: int = 24) -> np.ndarray:
    shape = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    # random masks with a chosen density reach empty, full and fragmented masks far more often than uniform bits
    return np.random.default_rng(seed).random(shape) < density


@settings(max_examples=200, deadline=None)
@given(m=masks(), fmt=st.sampled_from(ALL_FORMATS))
def test_round_trip(m: np.ndarray, fmt: RleFormat) -> None:
    text = rle.encode(m, fmt)
    np.testing.assert_array_equal(rle.decode(text, m.shape, fmt), m)


@settings(max_examples=100, deadline=None)
@given(m=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, max_side=12), elements=st.integers(0, 3)))
def test_nonzero_is_foreground_for_any_integer_mask(m: np.ndarray) -> None:
    np.testing.assert_array_equal(rle.decode(rle.encode(m), m.shape), m != 0)


def _runs_by_pixel_loop(m: np.ndarray, order: str) -> tuple[list[int], list[int]]:
    flat = m.ravel(order="F" if order == "column" else "C").tolist()
    starts, lengths = [], []
    for i, v in enumerate(flat):
        if v and (i == 0 or not flat[i - 1]):
            starts.append(i)
            lengths.append(0)
        if v:
            lengths[-1] += 1
    return starts, lengths


@settings(max_examples=100, deadline=None)
@given(m=masks(), order=st.sampled_from(["column", "row"]))
def test_encode_runs_match_a_per_pixel_loop(m: np.ndarray, order: str) -> None:
    starts, lengths = rle.encode_runs(m, order)  # type: ignore[arg-type]
    assert (starts.tolist(), lengths.tolist()) == _runs_by_pixel_loop(m, order)


def _layouts(m: np.ndarray) -> list[np.ndarray]:
    """The same pixels C-ordered, Fortran-ordered and as a strided view (encode reads each without a transpose)."""
    padded = np.zeros((2 * m.shape[0], 3 * m.shape[1]), m.dtype)
    padded[::2, ::3] = m
    return [np.ascontiguousarray(m), np.asfortranarray(m), padded[::2, ::3]]


@settings(max_examples=100, deadline=None)
@given(m=masks(max_side=40), order=st.sampled_from(["column", "row"]))
def test_encode_runs_ignore_memory_layout_and_dtype(m: np.ndarray, order: str) -> None:
    # 0/1, 0/255 and wider integers go through the word-wise compare, floats through the pixel-wise one
    expected = _runs_by_pixel_loop(m, order)
    for dtype, fg in ((bool, True), (np.uint8, 1), (np.uint8, 255), (np.int32, 7), (np.int64, -1), (np.float32, 0.5)):
        for arr in _layouts(np.where(m, fg, 0).astype(dtype)):
            starts, lengths = rle.encode_runs(arr, order)  # type: ignore[arg-type]
            assert (starts.tolist(), lengths.tolist()) == expected, (dtype, fg, arr.flags)


def _class_runs_by_pixel_loop(m: np.ndarray, order: str) -> list[tuple[int, int, int]]:
    flat = m.ravel(order="F" if order == "column" else "C").tolist()
    runs: list[tuple[int, int, int]] = []
    for i, v in enumerate(flat):
        if i and v == flat[i - 1]:
            runs[-1] = (v, runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((v, i, 1))
    return runs


@settings(max_examples=100, deadline=None)
@given(
    m=hnp.arrays(np.int64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=30), elements=st.integers(0, 3)),
    order=st.sampled_from(["column", "row"]),
)
def test_encode_class_runs_match_a_per_pixel_loop_in_any_layout(m: np.ndarray, order: str) -> None:
    expected = _class_runs_by_pixel_loop(m, order)
    for dtype in (np.uint8, np.uint16, np.int32, np.int64, np.float64):
        for arr in _layouts(m.astype(dtype)):
            values, starts, lengths = rle.encode_class_runs(arr, order)  # type: ignore[arg-type]
            assert list(zip(values.tolist(), starts.tolist(), lengths.tolist())) == expected, (dtype, arr.flags)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 2**63 - 1) | st.integers(0, 10**6), min_size=1, max_size=12),
    st.lists(st.sampled_from([" ", "  ", "\t", "\n", "\r\n", " \x0b", "\x0c"]), min_size=12, max_size=12),
)
def test_parse_integers_reads_every_token(values: list[int], spaces: list[str]) -> None:
    # the fast path (np.fromstring) and the exact one (values of 10**18 and more) give the tokens' values
    text = spaces[0] + "".join(f"{v}{s}" for v, s in zip(values, spaces[1:] + spaces[:1]))
    assert rle.parse_integers(text).tolist() == values


def test_parse_integers_of_blank_text_is_empty() -> None:
    assert rle.parse_integers("").size == 0 and rle.parse_integers(" \t\n").size == 0  # np.fromstring says [0]


@settings(max_examples=100, deadline=None)
@given(m=masks(), fmt=st.sampled_from(ALL_FORMATS))
def test_encoded_runs_are_canonical(m: np.ndarray, fmt: RleFormat) -> None:
    starts, lengths = rle.parse_runs(rle.encode(m, fmt), fmt, m.size)
    assert np.all(lengths >= 1)
    assert np.all(starts[1:] > starts[:-1] + lengths[:-1])  # a gap of at least one pixel: runs are maximal


# ---------------------------------------------------------------------------------------------------------------
# Agreement with pycocotools


def _coco_string_to_counts(s: bytes) -> list[int]:
    """pycocotools' compressed ``counts`` back to uncompressed counts (a port of maskApi.c ``rleFrString``)."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = s[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _counts_to_runs(counts: list[int]) -> tuple[list[int], list[int]]:
    """COCO counts (background, foreground, background, ...) to 0-based starts and lengths, run by run."""
    starts, lengths, pos = [], [], 0
    for i, n in enumerate(counts):
        if i % 2 and n:
            starts.append(pos)
            lengths.append(n)
        pos += n
    return starts, lengths


def test_coco_string_port_on_the_worked_example() -> None:
    encoded = mask_utils.encode(np.asfortranarray(M3))
    assert _coco_string_to_counts(encoded["counts"]) == [2, 3, 1, 1, 2]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on numpy 2
@settings(max_examples=150, deadline=None)
@given(m=masks(max_side=40))
def test_runs_agree_with_pycocotools(m: np.ndarray) -> None:
    encoded = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    counts = _coco_string_to_counts(encoded["counts"])
    assert sum(counts) == m.size
    starts, lengths = rle.encode_runs(m, "column")
    assert (starts.tolist(), lengths.tolist()) == _counts_to_runs(counts)
    # and the other way: our runs as COCO counts compress to exactly pycocotools' string
    ours = rle.runs_to_counts(starts, lengths, m.size)
    assert ours == counts
    h, w = m.shape
    assert mask_utils.frPyObjects({"size": [h, w], "counts": ours}, h, w)["counts"] == encoded["counts"]
    # and Kaggle text decodes to what pycocotools decodes
    np.testing.assert_array_equal(rle.decode(rle.encode(m), m.shape), mask_utils.decode(encoded).astype(bool))
