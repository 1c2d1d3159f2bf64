"""Run-length encoding of binary masks as ``start length`` pairs, pure numpy and vectorised.

Pixel order. Pixels are numbered along the flattened image: ``order="column"`` (the Kaggle and COCO default)
walks each column top to bottom, then the columns left to right (Fortran order, ``mask.ravel(order="F")``);
``order="row"`` walks each row left to right, then the rows top to bottom (C order).

Indexing. ``start_index=1`` (the default) numbers the first pixel 1, ``start_index=0`` numbers it 0. A run is the
pair ``start length``: ``length`` consecutive foreground pixels beginning at pixel ``start``. With
``starts="absolute"`` (the default) every start is a pixel number; with ``starts="relative"`` (the SIIM-ACR style)
the first start is a pixel number and every later start counts the background pixels between the end of the
previous run and the beginning of this one. A mask without foreground is written as ``empty`` (``""`` or ``"-1"``).

Worked 3x3 example::

    mask        column-major numbers (1-based)    row-major numbers (1-based)
    0 1 1       1 4 7                             1 2 3
    0 1 0       2 5 8                             4 5 6
    1 0 0       3 6 9                             7 8 9

    column, 1-based, absolute (Kaggle/COCO):  "3 3 7 1"      pixels 3,4,5 and 7
    column, 0-based, absolute:                "2 3 6 1"
    column, 1-based, relative:                "3 3 1 1"      one background pixel (6) before the second run
    column, 0-based, relative (SIIM):         "2 3 1 1"
    row,    1-based, absolute:                "2 2 5 1 7 1"  pixels 2,3 and 5 and 7

:func:`encode` always writes canonical runs (maximal, sorted, separated by at least one background pixel).
:func:`decode` and :func:`parse_runs` check the text and raise :class:`RleError` (a ``ValueError``) with the
reason; runs that touch without a gap are accepted since they still describe one mask unambiguously. Arrays
returned by the array-level functions hold 0-based pixel numbers in the given order.

Speed. Nothing is transposed: runs are found by comparing each pixel with the one before it in pixel order (for a
C-ordered mask in column order, each row with the row above), 8 bytes at a time, and a decoded mask is filled in
pixel order, so a column-order mask comes back Fortran-ordered, as pycocotools returns it. ``bench/bench_rle.py``
times both ways against pycocotools.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

import numpy as np

Order = Literal["column", "row"]

# One character class, no nesting: the match is linear in the text (a nested ``(?:-?[0-9]+\s*)*`` backtracked
# exponentially on a long run of digits followed by a bad character).
_INTEGER_CHARS = re.compile(r"[0-9 \t\n\r\f\v-]*")
_INTEGER = re.compile(r"-?[0-9]+", re.ASCII)
_NOT_INTEGER_CHAR = re.compile(r"[^0-9 \t\n\r\f\v-]")
_DIGITS_AND_SPACE = b"0123456789 \t\n\r\f\v"
_FAST_PARSE_LIMIT = 10**18  # below int64's limit: a larger value takes the exact path and its overflow message
MAX_PIXELS = 2**40
"""The largest pixel number or run length accepted when the image size is not known (sums of such values stay far
from int64 overflow)."""


class RleError(ValueError):
    """A run-length string that does not describe a mask; the message is the reason, the caller adds file/row."""


@dataclasses.dataclass(frozen=True)
class RleFormat:
    """How a mask is written as text; see the module docstring for each option."""

    order: Order = "column"
    start_index: Literal[0, 1] = 1
    starts: Literal["absolute", "relative"] = "absolute"
    empty: Literal["", "-1"] = ""

    def __post_init__(self) -> None:
        for name, valid in (
            ("order", ("column", "row")),
            ("start_index", (0, 1)),
            ("starts", ("absolute", "relative")),
            ("empty", ("", "-1")),
        ):
            value = getattr(self, name)
            # bool is an int: reject True/False explicitly so start_index=True is not silently 1
            if value not in valid or isinstance(value, bool):
                raise ValueError(f"RleFormat.{name}: {value!r} is not one of {', '.join(repr(v) for v in valid)}")


KAGGLE = RleFormat()
"""Column-major, 1-based absolute starts, empty mask as ``""`` (also COCO's pixel order)."""

SIIM = RleFormat(order="column", start_index=0, starts="relative", empty="-1")
"""SIIM-ACR pneumothorax: column-major, 0-based, each start relative to the end of the previous run, ``-1``."""


def _pixel_grid(mask: np.ndarray, order: Order) -> tuple[np.ndarray, bool]:
    """``(grid, down)``: a C-contiguous 2-D array holding the pixels, and whether pixel order walks down its columns
    (``down``) or along its memory. No copy when the mask is C- or F-contiguous: a transposed copy of a large mask
    costs more than finding its runs."""
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D (H, W) mask, got shape {mask.shape}")
    if order not in ("column", "row"):
        raise ValueError(f"order must be 'column' or 'row', got {order!r}")
    fortran = mask.flags.f_contiguous and not mask.flags.c_contiguous
    if order == "column":
        return (mask.T, False) if fortran else (np.ascontiguousarray(mask), True)
    return (mask.T, True) if fortran else (np.ascontiguousarray(mask), False)


def _differ(a: np.ndarray, b: np.ndarray, binary: bool) -> np.ndarray:
    return (a != 0) != (b != 0) if binary and a.dtype != bool else a != b


def _changed(flat: np.ndarray, shift: int, binary: bool) -> np.ndarray:
    """Sorted indices ``i >= shift`` of a contiguous 1-D array where ``flat[i]`` differs from ``flat[i - shift]``
    (as foreground or background if ``binary``, else by value).

    Integer and bool pixels are compared 8 bytes at a time (equal bytes mean equal pixels; floats are not, since
    ``-0.0 == 0.0``), then pixel by pixel only inside the words that differ: a mask of a few blobs has a few thousand
    such words among millions.
    """
    pairs = flat.size - shift
    if pairs <= 0:
        return np.zeros(0, np.int64)
    if flat.dtype.kind not in "biu":
        return np.flatnonzero(_differ(flat[shift:], flat[:-shift], binary)) + shift
    per_word = 8 // flat.itemsize
    whole = pairs - pairs % per_word
    words = np.flatnonzero(flat[:whole].view(np.uint64) != flat[shift : shift + whole].view(np.uint64))
    i = np.concatenate(((words[:, None] * per_word + np.arange(per_word)).ravel(), np.arange(whole, pairs)))
    return i[_differ(flat[i + shift], flat[i], binary)] + shift


def _changes(grid: np.ndarray, down: bool, binary: bool) -> np.ndarray:
    """Sorted 0-based pixel numbers ``p >= 1`` where pixel ``p`` differs from pixel ``p - 1``, for the
    ``(grid, down)`` of :func:`_pixel_grid`."""
    flat = grid.reshape(-1)
    if not down:
        return _changed(flat, 1, binary)
    # pixel p is grid[p % H, p // H]: compare each row with the row above (one image-wide shifted compare, no
    # transpose), then the first pixel of each column with the last pixel of the column before
    height, width = grid.shape
    rows, cols = np.divmod(_changed(flat, width, binary), width)
    wrap = np.flatnonzero(_differ(grid[0, 1:], grid[-1, :-1], binary)) + 1
    out = np.concatenate((cols * height + rows, wrap * height))
    out.sort()
    return out


def _pixel_values(grid: np.ndarray, down: bool, pixels: np.ndarray) -> np.ndarray:
    if down:
        return grid[pixels % grid.shape[0], pixels // grid.shape[0]]
    return grid.reshape(-1)[pixels]


def encode_class_runs(class_mask: np.ndarray, order: Order = "column") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of equal values in a (H, W) integer mask, in pixel order.

    Returns:
        ``(values, starts, lengths)``: int64 arrays, one entry per run, with 0-based ``starts``. Background runs
        are included; select ``values == c`` for the runs of class ``c``.
    """
    grid, down = _pixel_grid(np.asarray(class_mask), order)
    if grid.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    starts = np.concatenate(([0], _changes(grid, down, binary=False))).astype(np.int64)
    lengths = np.diff(starts, append=grid.size)
    return _pixel_values(grid, down, starts).astype(np.int64), starts, lengths


def encode_runs(mask: np.ndarray, order: Order = "column") -> tuple[np.ndarray, np.ndarray]:
    """Foreground runs of a (H, W) mask (nonzero = foreground).

    Returns:
        ``(starts, lengths)``: int64 arrays with 0-based starts, sorted, each run maximal.
    """
    grid, down = _pixel_grid(np.asarray(mask), order)
    if grid.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if grid.dtype.kind not in "biu":
        grid = grid != 0  # nonzero is foreground, NaN included (as astype(bool))
    # every change opens or closes a run; a run touching either end of the image opens/closes there
    first, last = int(bool(grid[0, 0])), int(bool(grid[-1, -1]))
    changes = _changes(grid, down, binary=True)
    edges = np.concatenate((np.zeros(first, np.int64), changes, np.full(last, grid.size, np.int64)))
    starts = edges[0::2].astype(np.int64, copy=False)
    return starts, edges[1::2] - starts


def runs_to_text(starts: np.ndarray, lengths: np.ndarray, fmt: RleFormat = KAGGLE) -> str:
    """Format 0-based ``starts`` and ``lengths`` (sorted, non-overlapping) as text in ``fmt``."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if starts.size == 0:
        return fmt.empty
    if fmt.starts == "relative":
        written = starts - np.concatenate(([-fmt.start_index], starts[:-1] + lengths[:-1]))
    else:
        written = starts + fmt.start_index
    pairs = np.empty(2 * starts.size, dtype=np.int64)
    pairs[0::2], pairs[1::2] = written, lengths
    # one %-format of the whole tuple: about twice as fast as " ".join(map(str, ...)), the same text
    return ("%d " * pairs.size % tuple(pairs.tolist()))[:-1]


def encode(mask: np.ndarray, fmt: RleFormat = KAGGLE) -> str:
    """A binary (H, W) mask (nonzero = foreground) as ``start length`` text in ``fmt``."""
    return runs_to_text(*encode_runs(mask, fmt.order), fmt)


def parse_integers(text: str) -> np.ndarray:
    """Whitespace-separated ASCII integers as an int64 array; raises :class:`RleError` naming the first bad value.

    Linear in the length of ``text``: one character-class scan, then numpy's conversion of the tokens.
    """
    if text.isascii() and not text.encode("ascii").translate(None, _DIGITS_AND_SPACE):
        # only digits and ASCII whitespace: every token is a non-negative integer and np.fromstring reads them all,
        # 5x faster than converting the split tokens (but it reads "   " as [0] and saturates on overflow)
        stripped = text.strip()
        if not stripped:
            return np.zeros(0, np.int64)
        values = np.fromstring(stripped, dtype=np.int64, sep=" ")
        if not values.size or values.max() < _FAST_PARSE_LIMIT:
            return values
    if _INTEGER_CHARS.fullmatch(text):
        tokens = text.split()  # only ASCII whitespace can be in the text here
        try:
            return np.array(tokens, dtype=np.int64)
        except OverflowError:
            raise RleError("a value is too large for a pixel number") from None
        except ValueError:
            pass  # a misplaced '-': found below
    for i, token in enumerate(text.split()):
        if not _INTEGER.fullmatch(token):
            raise RleError(f"value {i + 1} ({token[:20]!r}) is not an integer")
    bad = _NOT_INTEGER_CHAR.search(text)  # e.g. a non-ASCII space between two numbers
    raise RleError(f"character {bad.group(0) if bad else text[:1]!r} is not an ASCII digit, '-' or space")


def parse_runs(  # noqa: C901 - one check per way a run-length string is malformed, each with its message
    text: str, fmt: RleFormat = KAGGLE, size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Parse and check ``start length`` text.

    Args:
        text: the run-length string.
        fmt: how it is written.
        size: number of pixels (H * W); when given, every run must end inside the image.

    Returns:
        ``(starts, lengths)``: int64 arrays, 0-based starts in pixel order.

    Raises:
        RleError: not pairs of integers, a run of length < 1, starts out of order, overlapping runs, a run
            outside the image, or the wrong empty-mask token.
    """
    if not isinstance(text, str):
        raise RleError(f"expected run-length text, got {type(text).__name__} {text!r}")
    stripped = text.strip()
    if stripped == fmt.empty:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if stripped in ("", "-1"):
        raise RleError(f"{stripped!r} is not this format's empty-mask token; an empty mask is written {fmt.empty!r}")
    values = parse_integers(stripped)
    if values.size % 2:
        raise RleError(f"odd number of values ({values.size}); expected 'start length' pairs")
    written, lengths = values[0::2], values[1::2]
    # refuse huge values before any arithmetic: a start + length beyond int64 would wrap to a small number (a value
    # merely past the image gets the message below that says where its run ends)
    limit = min(MAX_PIXELS, 2**62 // max(1, values.size))
    big = np.flatnonzero(values > limit)
    if big.size:
        i = int(big[0])
        raise RleError(f"value {i + 1} ({values[i]}) is beyond any image ({limit} pixels at most)")
    bad = np.flatnonzero(lengths < 1)
    if bad.size:
        i = int(bad[0])
        raise RleError(f"run {i + 1} (start {written[i]}) has length {lengths[i]}; lengths must be at least 1")
    if written[0] < fmt.start_index:
        raise RleError(
            f"run 1 starts at {written[0]}, before the first pixel ({fmt.start_index} with "
            f"{fmt.start_index}-based starts)"
        )
    if fmt.starts == "relative":
        bad = np.flatnonzero(written[1:] < 0)
        if bad.size:
            i = int(bad[0]) + 1
            raise RleError(f"run {i + 1} has a negative relative start {written[i]}: it overlaps run {i}")
        # start_i = (gaps so far) + (lengths of the earlier runs), shifted to 0-based
        starts = np.cumsum(written) + np.concatenate(([0], np.cumsum(lengths[:-1]))) - fmt.start_index
    else:
        starts = written - fmt.start_index
        ends = starts + lengths
        bad = np.flatnonzero(starts[1:] < ends[:-1])
        if bad.size:
            i = int(bad[0]) + 1
            if written[i] < written[i - 1]:
                raise RleError(
                    f"run {i + 1} starts at {written[i]}, before run {i} at {written[i - 1]}: starts must be sorted"
                )
            raise RleError(
                f"run {i + 1} (start {written[i]}) overlaps run {i} (start {written[i - 1]}, length {lengths[i - 1]})"
            )
    if size is not None and starts[-1] + lengths[-1] > size:
        i = int(np.flatnonzero(starts + lengths > size)[0])
        end = int(starts[i] + lengths[i]) - 1 + fmt.start_index
        raise RleError(
            f"run {i + 1} ends at pixel {end}, past the last pixel {size - 1 + fmt.start_index} of the image"
        )
    return starts, lengths


def decode_runs(starts: np.ndarray, lengths: np.ndarray, shape: tuple[int, int], order: Order = "column") -> np.ndarray:
    """A (H, W) bool mask from 0-based ``starts`` and ``lengths`` (sorted, non-overlapping, inside the image).

    The pixels are written in pixel order, so with ``order="column"`` the mask is Fortran-ordered (a transposed
    view, as pycocotools returns masks); ``np.ascontiguousarray`` makes a C-ordered copy where one is needed.
    """
    height, width = shape
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    # alternate background and foreground runs: gap, run, gap, run, ..., the background after the last run
    counts = np.empty(2 * starts.size + 1, dtype=np.int64)
    counts[1::2] = lengths
    counts[0:-1:2] = starts
    counts[2:-1:2] -= starts[:-1] + lengths[:-1]
    counts[-1] = height * width - (starts[-1] + lengths[-1] if starts.size else 0)
    flat = np.repeat(np.arange(counts.size) % 2 == 1, counts)
    if order == "column":
        return flat.reshape((width, height)).T
    return flat.reshape((height, width))


def decode(text: str, shape: tuple[int, int], fmt: RleFormat = KAGGLE) -> np.ndarray:
    """A (H, W) bool mask from ``start length`` text in ``fmt``; raises :class:`RleError` with the reason.

    Fortran-ordered when ``fmt.order`` is ``"column"`` (see :func:`decode_runs`).
    """
    height, width = (int(v) for v in shape)
    if height < 0 or width < 0:
        raise ValueError(f"shape must be non-negative, got {shape}")
    starts, lengths = parse_runs(text, fmt, height * width)
    return decode_runs(starts, lengths, (height, width), fmt.order)


def runs_to_counts(starts: np.ndarray, lengths: np.ndarray, size: int) -> list[int]:
    """COCO uncompressed RLE ``counts`` (alternating background/foreground run lengths, starting with
    background) from 0-based column-major runs of an image with ``size`` pixels."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    ends = starts + lengths
    counts = np.empty(2 * starts.size + 1, dtype=np.int64)
    counts[0:-1:2] = starts - np.concatenate(([0], ends[:-1]))
    counts[1::2] = lengths
    counts[-1] = size - (ends[-1] if ends.size else 0)
    if counts[-1] == 0 and counts.size > 1:
        counts = counts[:-1]  # COCO drops a trailing empty background run
    return counts.tolist()
