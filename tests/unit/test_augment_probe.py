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
from pipeline.io import write_png

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
    # a flipped right-pointing triangle is predicted as class 2: both foreground IoUs collapse, background remains
    assert plan.scores["hflip"] / base < 0.6, plan.scores
    assert plan.scores["vflip"] / base > 0.9, plan.scores
    assert plan.kept == ["vflip"]
    assert plan.augments == AUGMENTS["vflip"] == [Augment("VerticalFlip", {"p": 0.5})]
    assert [r.split(":")[0] for r in plan.reasons] == ["hflip", "vflip"]
    assert plan.reasons[0].startswith("hflip: off") and plan.reasons[1].startswith("vflip: on")
    assert f"{plan.scores['vflip']:.3f} vs {base:.3f}" in plan.reasons[1]  # the reason states the numbers


def test_rot90_is_only_probed_on_square_inputs_and_unknown_candidates_are_errors(triangles) -> None:
    cfg = tiny_config()
    with pytest.raises(UserError, match="unknown candidate 'mirror'"):
        choose_augmentations(cfg, *triangles, num_classes=3, steps=1, candidates=["mirror"])
    from dataclasses import replace

    wide = replace(cfg, input_size=(32, 48))
    plan = choose_augmentations(wide, *triangles, num_classes=3, steps=1, candidates=["rot90"])
    assert plan.kept == [] and plan.reasons == ["rot90: off (the input 32x48 is not square)"]
