"""Fuzzing the COCO side: hypothesis properties of polygon / RLE decoding, and the loader over mutated real files.

A crash here is anything but the clear :class:`UserError`: a traceback, a hang, or (the worst) pycocotools
segfaulting the test process on input that validation let through.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import compressed_rle, uncompressed_rle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.config import DemoParams
from pipeline.data.coco import (
    ann_to_mask,
    check_image_file,
    check_segmentation,
    load_coco,
    paint_mask,
    rle_string_counts,
)
from pipeline.data.demo import generate_demo
from pipeline.errors import UserError

# --------------------------------------------------------------------------------------------------------------
# Properties of decoding


@st.composite
def masks(draw: st.DrawFn) -> np.ndarray:
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    return draw(arrays(np.uint8, (h, w), elements=st.integers(0, 1)))


@settings(max_examples=200, deadline=None)
@given(masks())
def test_rle_of_any_mask_decodes_to_it_and_its_runs_are_the_column_major_runs(m: np.ndarray) -> None:
    h, w = m.shape
    comp, raw = compressed_rle(m), uncompressed_rle(m)  # encoders independent of pipeline
    for seg in (comp, raw):
        assert check_segmentation(seg, h, w) is None
        np.testing.assert_array_equal(ann_to_mask(seg, h, w), m)
    assert rle_string_counts(comp["counts"]) == raw["counts"]


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 15),
    st.integers(1, 15),
    st.data(),
)
def test_integer_rectangles_paint_their_clipped_pixels(h: int, w: int, data: st.DataObject) -> None:
    x0 = data.draw(st.integers(-w, 2 * w - 1))
    x1 = data.draw(st.integers(x0 + 1, 2 * w))
    y0 = data.draw(st.integers(-h, 2 * h - 1))
    y1 = data.draw(st.integers(y0 + 1, 2 * h))
    poly = [[x0, y0, x1, y0, x1, y1, x0, y1]]
    assert check_segmentation(poly, h, w) is None
    want = np.zeros((h, w), np.uint8)
    want[max(y0, 0) : max(min(y1, h), 0), max(x0, 0) : max(min(x1, w), 0)] = 1  # pixels x0 <= x < x1, clipped
    np.testing.assert_array_equal(ann_to_mask(poly, h, w), want)


NASTY_NUMBERS = st.one_of(
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 2**31, 2**32, 2**63, 10**400, 1e7, 1e8, 1e12, -1e12, 0.5]),
)
JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), NASTY_NUMBERS, st.text(max_size=8)),
    lambda children: st.one_of(
        st.lists(children, max_size=10),
        st.dictionaries(st.sampled_from(["size", "counts", "x"]), children, max_size=3),
    ),
    max_leaves=30,
)
SEGMENTATIONS = st.one_of(
    JSONISH,
    st.lists(st.lists(NASTY_NUMBERS, min_size=0, max_size=12), max_size=3),  # polygon-shaped
    st.fixed_dictionaries(
        {
            "size": st.lists(NASTY_NUMBERS, max_size=3),
            "counts": st.one_of(st.lists(NASTY_NUMBERS, max_size=8), st.text(max_size=12)),
        }
    ),
    st.fixed_dictionaries(
        {"size": st.just([7, 9]), "counts": st.one_of(st.lists(st.integers(-3, 70), max_size=8), st.text(max_size=12))}
    ),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SEGMENTATIONS)
def test_what_validation_lets_through_decodes_to_a_binary_mask(seg: Any) -> None:
    h, w = 7, 9
    reason = check_segmentation(seg, h, w)  # never raises
    assert reason is None or isinstance(reason, str)
    if reason is None:
        m = ann_to_mask(seg, h, w)  # must not crash, hang or read outside the mask
        assert m.shape == (h, w) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}


# --------------------------------------------------------------------------------------------------------------
# The loader over mutated real files


NASTY_VALUES: list[Any] = [
    None,
    True,
    False,
    "0",
    "",
    "x" * 300,
    -1,
    0,
    1,
    2,
    10**400,
    1e12,
    -1e12,
    math.nan,
    math.inf,
    [],
    {},
    [[]],
    [1, 2, 3],
    [[1e12, 2, 3, 4, 5, 6]],
    {"size": [64, 84], "counts": "0"},
    {"size": [64, 84], "counts": [1, 2]},
    "./a.png",
    "/etc/passwd",
    "../x.png",
    "a\x00b",
    "é 猫.png",
    [[0, 0, 0]] * 3,
]


def _nodes(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _nodes(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _nodes(v, (*path, i))
    return out


def _mutate_structure(data: Any, rng: random.Random) -> Any:
    data = copy.deepcopy(data)
    for _ in range(rng.randint(1, 3)):
        nodes = _nodes(data)
        path = rng.choice(nodes[1:]) if len(nodes) > 1 else ()
        if not path:
            return rng.choice(NASTY_VALUES)
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        key, action = path[-1], rng.random()
        if action < 0.15:
            del parent[key]
        elif action < 0.3 and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))  # a duplicate: same id, same file
        elif action < 0.45 and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
            parent[key] = parent[key] * rng.choice([-1, 10**6, 1e9, 0, 0.5])
        elif action < 0.55 and isinstance(parent[key], str):
            parent[key] = rng.choice(["./", "/", "../", " ", "sub//"]) + parent[key]
        else:
            parent[key] = copy.deepcopy(rng.choice(NASTY_VALUES))
    return data


def _mutate_bytes(text: str, rng: random.Random) -> str:
    b = bytearray(text.encode("utf-8"))
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(b))
        op = rng.random()
        if op < 0.3:
            b[i] = rng.randrange(256)
        elif op < 0.5:
            del b[i : i + rng.randint(1, 20)]
        elif op < 0.7:
            b[i:i] = rng.choice([b"[", b"{", b'"', b",", b"NaN", b"-1e400", b'"annotations": [],', b"\\u0000"])
        elif op < 0.85:
            j = rng.randrange(len(b))
            b[i:i] = b[j : j + rng.randint(1, 60)]  # a copied chunk: duplicate keys, entries
        else:
            b = b[:i]  # truncated
    return b.decode("utf-8", errors="replace") if rng.random() < 0.8 else b.decode("latin-1")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    generate_demo(DemoParams(n_train=10, n_test=2, seed=3), root / "competition", root / "truth")
    return root / "competition"


def run_loader(path: Path, images_root: Path, on_error: str) -> None:
    """The masks stage's steps in-process: load, check each image file, paint (a segfault would kill the test)."""
    coco = load_coco(path, require_annotations=True, on_error=on_error)  # type: ignore[arg-type]
    for im in coco.images:
        try:
            check_image_file(images_root, im, path)
        except UserError:
            if on_error == "fail":
                raise
            continue
        mask = paint_mask(im, coco.categories)
        assert mask.shape == (im.height, im.width)


def test_the_coco_loader_over_mutated_demo_files_only_ever_raises_user_errors(demo: Path, tmp_path: Path) -> None:
    source = (demo / "train.json").read_text(encoding="utf-8")
    data = json.loads(source)
    rng = random.Random(19)
    target = tmp_path / "train.json"
    cases = errors = 0
    t0 = time.monotonic()
    for i in range(600):
        if i % 3 == 2:
            target.write_text(_mutate_bytes(source, rng), encoding="utf-8", errors="surrogateescape")
        else:
            target.write_text(json.dumps(_mutate_structure(data, rng)), encoding="utf-8")
        for on_error in ("fail", "skip"):
            cases += 1
            try:
                run_loader(target, demo / "images", on_error)
            except UserError as e:
                errors += 1
                assert "\n" not in str(e) and str(e).startswith(str(target)), str(e)
    elapsed = time.monotonic() - t0
    print(f"{cases} loader cases ({errors} clear errors) in {elapsed:.1f} s")
    assert cases == 1200 and errors > 300  # most mutations are caught; the rest load and paint
    assert elapsed < 60
