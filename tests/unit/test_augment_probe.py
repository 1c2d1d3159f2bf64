"""The augmentation probe on a tiny dataset whose symmetries are known by construction (real training, ~1k images
of 32x32 pixel-steps): class 1 is a triangle pointing right, class 2 one pointing left. A horizontal flip turns one
class into the other (it changes what the pixels mean: off), a vertical flip maps each triangle onto one of its own
class (on)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.augment_probe import AUGMENTS, choose_augmentations
from pipeline.config import Augment, ModelConfig, from_dict
from pipeline.errors import UserError
from pipeline.io import read_mask, write_png

SIZE = 32


def triangle(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A noisy 32x32 RGB image with one grey isosceles triangle, pointing right (class 1) or left (class 2)."""
    cls = int(rng.integers(1, 3))
    h = int(rng.integers(10, 15))
    top, left = int(rng.integers(0, SIZE - h)), int(rng.integers(0, SIZE - h))
    yy, xx = np.mgrid[0:h, 0:h]
    half = np.abs(yy - (h - 1) / 2)  # distance from the axis
    tri = half <= (xx + 0.5) / 2 if cls == 1 else half <= (h - xx - 0.5) / 2  # apex at the right / left
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[top : top + h, left : left + h][tri] = cls
    image = rng.integers(0, 60, (SIZE, SIZE, 3)).astype(np.uint8)
    image[mask > 0] = 200
    return image, mask


def write_split(root: Path, n: int, rng: np.random.Generator) -> tuple[list[Path], list[Path]]:
    images, masks = [], []
    for i in range(n):
        image, mask = triangle(rng)
        images.append(root / f"{i}.png")
        masks.append(root / f"{i}_m.png")
        write_png(images[-1], image)
        write_png(masks[-1], mask)
    return images, masks


def tiny_config() -> ModelConfig:
    return from_dict(
        ModelConfig,
        {
            "decoder": "Unet",
            "encoder": "resnet10t",
            "encoder_depth": 3,
            "decoder_kwargs": {"decoder_channels": [32, 16, 16]},
            "input_size": [SIZE, SIZE],
            "recipe": {"batch_size": 16, "lr": 3e-3, "loss": [{"name": "ce"}, {"name": "dice", "weight": 0.5}]},
        },
        "probe test",
    )


@pytest.fixture(scope="module")
def triangles(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path], list[Path], list[Path]]:
    root = tmp_path_factory.mktemp("triangles")
    rng = np.random.default_rng(0)
    (root / "train").mkdir()
    (root / "val").mkdir()
    return (*write_split(root / "train", 160, rng), *write_split(root / "val", 40, rng))  # type: ignore[return-value]


def test_the_probe_keeps_the_flip_that_preserves_labels_and_drops_the_one_that_swaps_them(triangles) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plan = choose_augmentations(tiny_config(), *triangles, num_classes=3, steps=150, candidates=["hflip", "vflip"])
    finally:
        torch.set_num_threads(threads)
    base = plan.scores["identity"]
    assert base > 0.6, plan.scores  # the probe model learnt the task, so its verdicts mean something
    # the weak-model floor: predicting background everywhere, by hand: background IoU = its pixel share, 0 for 1, 2
    truth = np.stack([read_mask(m) for m in triangles[3]])
    assert plan.scores["all_background"] == pytest.approx((truth == 0).mean() / 3, abs=1e-9)
    # the masks rule hflip out before training (each class leans one way along x), so it is never scored
    assert "hflip" not in plan.scores
    assert plan.reasons[0].startswith("hflip: off (the training masks are not closed under it: class ")
    assert plan.scores["vflip"] / base > 0.9, plan.scores
    assert plan.kept == ["vflip"]
    assert plan.augments == AUGMENTS["vflip"] == [Augment("VerticalFlip", {"p": 0.5})]
    assert [r.split(":")[0] for r in plan.reasons] == ["hflip", "vflip"]
    assert plan.reasons[1].startswith("vflip: on")
    assert f"{plan.scores['vflip']:.3f} vs {base:.3f}" in plan.reasons[1]  # the reason states the numbers


def test_a_model_trained_without_a_flip_fails_under_the_flip_that_swaps_classes(triangles) -> None:
    """The trained check scored directly (the masks check rules hflip out first in the probe): a model trained
    without flips predicts a mirrored right-pointing triangle as class 2, so both foreground IoUs collapse."""
    from pipeline.augment_probe import _fit, _flip, _identity, _score
    from pipeline.data.dataset import SegDataset, build_transform

    cfg = tiny_config()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_ds = SegDataset(triangles[0], triangles[1], build_transform(cfg, train=True, seed=0))
        val_ds = SegDataset(triangles[2], triangles[3], build_transform(cfg, train=False))
        model = _fit(cfg, train_ds, 3, 0.0, 150, torch.device("cpu"))
        base = _score(model, val_ds, 3, [(_identity, _identity)], torch.device("cpu"), False)
        flipped = _score(model, val_ds, 3, [(_flip(-1), _flip(-1))], torch.device("cpu"), False)
    finally:
        torch.set_num_threads(threads)
    assert base > 0.6 and flipped / base < 0.6, (base, flipped)


def test_shape_moments_match_scipy_and_a_mirrored_half_is_not_chiral() -> None:
    from scipy import stats

    from pipeline.plan.symmetry import chiral_classes, shape_moments

    rng = np.random.default_rng(1)
    masks = [triangle(rng)[1] for _ in range(40)]
    for c in (1, 2):
        m = next(m for m in masks if (m == c).any())
        y, x = np.nonzero(m == c)
        first = shape_moments([m])[c][0]
        np.testing.assert_allclose(first[:2], [stats.skew(x), stats.skew(y)], rtol=1e-9)
        np.testing.assert_allclose(first[2], np.log(y.std() / x.std()), rtol=1e-9)
    assert {c for c, _, _ in chiral_classes(masks, 0)} == {1, 2}  # each class leans its own way along x
    assert chiral_classes(masks, 1) == []  # symmetric about the horizontal axis
    mirrored = masks[:20] + [m[:, ::-1] for m in masks[20:]]  # each class now points both ways equally
    assert chiral_classes(mirrored, 0) == []


def test_rot90_is_only_probed_on_square_inputs_and_unknown_candidates_are_errors(triangles) -> None:
    cfg = tiny_config()
    with pytest.raises(UserError, match="unknown candidate 'mirror'"):
        choose_augmentations(cfg, *triangles, num_classes=3, steps=1, candidates=["mirror"])
    from dataclasses import replace

    wide = replace(cfg, input_size=(32, 48))
    plan = choose_augmentations(wide, *triangles, num_classes=3, steps=1, candidates=["rot90"])
    assert plan.kept == [] and plan.reasons == ["rot90: off (the input 32x48 is not square)"]
