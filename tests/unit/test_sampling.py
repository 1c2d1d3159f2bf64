"""Epochs as sampled crops: counts, crops inside the images, the foreground share, class balance, determinism."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import Recipe
from pipeline.data.dataset import SegDataset
from pipeline.data.sampling import NO_CENTRE, CropSampler, Extra, centred_window, foreground_points
from pipeline.errors import UserError
from pipeline.io import write_png

H, W, CROP = 96, 128, (32, 32)


def tiny_dataset(tmp_path: Path) -> tuple[SegDataset, list[np.ndarray]]:
    """Three 96x128 images: a common class 1 (a 20x20 square in each) and a rare class 2 (one 2x2 square)."""
    rng = np.random.default_rng(0)
    images, masks, arrays = [], [], []
    for i in range(3):
        m = np.zeros((H, W), np.uint8)
        m[10 + 20 * i : 30 + 20 * i, 50:70] = 1
        if i == 2:
            m[80:82, 5:7] = 2
        img = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        write_png(tmp_path / f"i{i}.png", img)
        write_png(tmp_path / f"m{i}.png", m)
        images.append(tmp_path / f"i{i}.png")
        masks.append(tmp_path / f"m{i}.png")
        arrays.append(m)
    return SegDataset(images, masks, transform=None, crop=CROP), arrays


def test_foreground_points_list_every_pixel_of_each_class(tmp_path: Path) -> None:
    _, masks = tiny_dataset(tmp_path)
    points = foreground_points(masks)
    assert sorted(points) == [1, 2]
    assert [i for i, _ in points[1]] == [0, 1, 2] and [i for i, _ in points[2]] == [2]
    for c, holders in points.items():
        for i, yx in holders:
            assert len(yx) == (masks[i] == c).sum()  # 400 or 4 pixels: under MAX_POINTS, so all of them
            assert (masks[i][yx[:, 0], yx[:, 1]] == c).all()


def test_samples_per_epoch_sets_the_count_and_ddp_splits_it(tmp_path: Path) -> None:
    _, masks = tiny_dataset(tmp_path)
    points = foreground_points(masks)
    s = CropSampler(3, points, samples=50, foreground_share=0.0, seed=0)
    assert len(s) == 50 and len(list(s)) == 50
    assert all(y == x == NO_CENTRE and 0 <= i < 3 for i, y, x in s)
    # null: one pass over the files, each image once
    one_pass = CropSampler(3, points, samples=None, foreground_share=0.0, seed=0)
    assert sorted(i for i, _, _ in one_pass) == [0, 1, 2]
    # two processes take alternate samples of the same draw: together they are the first 2 * (50 // 2) samples
    ranks = [list(CropSampler(3, points, 51, 0.33, seed=0, rank=r, world=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 25
    full = [tuple(int(v) for v in row) for row in CropSampler(3, points, 51, 0.33, seed=0).draw(0)]
    assert ranks[0] == full[0:50:2] and ranks[1] == full[1:50:2]


def test_crops_lie_inside_the_image_and_hold_their_centre_pixel(tmp_path: Path) -> None:
    ds, masks = tiny_dataset(tmp_path)
    s = CropSampler(3, foreground_points(masks), samples=200, foreground_share=0.5, seed=3)
    centred = 0
    for i, y, x in s:
        item = ds[(i, y, x)]
        image, mask = item["image"].numpy(), item["mask"].numpy()
        if y == NO_CENTRE:
            assert image.shape == (H, W, 3)  # no transform here: the random crop is the transform's job
            continue
        centred += 1
        assert image.shape == (*CROP, 3) and mask.shape == CROP
        # the window is where the original pixels are: find it independently by matching the crop in the image
        top, left = y - CROP[0] // 2, x - CROP[1] // 2
        top, left = min(max(0, top), H - CROP[0]), min(max(0, left), W - CROP[1])
        full = ds[i]["image"].numpy()
        np.testing.assert_array_equal(image, full[top : top + CROP[0], left : left + CROP[1]])
        np.testing.assert_array_equal(mask, masks[i][top : top + CROP[0], left : left + CROP[1]])
        assert masks[i][y, x] in (1, 2) and mask[y - top, x - left] == masks[i][y, x]
    assert centred == 100


@pytest.mark.parametrize(
    ("shape", "size", "centre", "expected"),
    [
        ((96, 128), (32, 32), (0, 0), (0, 0, 32, 32)),  # shifted in at the top-left corner
        ((96, 128), (32, 32), (95, 127), (64, 96, 32, 32)),  # and at the bottom-right
        ((96, 128), (32, 32), (50, 60), (34, 44, 32, 32)),  # centred: 50 - 16, 60 - 16
        ((20, 128), (32, 32), (10, 60), (0, 44, 20, 32)),  # image shorter than the window: all its rows
    ],
)
def test_centred_window(shape, size, centre, expected) -> None:
    assert centred_window(shape, size, *centre) == expected


def test_foreground_share_is_a_third_of_crops_measured_on_the_pixels(tmp_path: Path) -> None:
    """One 3x3 object in a 256x256 image, 32x32 crops: a random crop holds a pixel of it with probability
    ((32 + 3 - 1) / (256 - 32 + 1))^2 (its top-left corner within 33 rows and columns of 225 positions); centred
    crops always do. So the share of crops holding foreground is 1/3 + 2/3 * that, counted on the crops' pixels."""
    import albumentations as A

    m = np.zeros((256, 256), np.uint8)
    m[100:103, 200:203] = 1
    write_png(tmp_path / "i.png", np.zeros((256, 256, 3), np.uint8))
    write_png(tmp_path / "m.png", m)
    transform = A.Compose([A.RandomCrop(32, 32)], seed=0)
    ds = SegDataset([tmp_path / "i.png"], [tmp_path / "m.png"], transform=transform, crop=(32, 32))
    s = CropSampler(1, foreground_points([m]), samples=3000, foreground_share=1 / 3, seed=0)
    holds = np.array([(ds[item]["mask"].numpy() > 0).any() for item in s])
    p_random = ((32 + 3 - 1) / (256 - 32 + 1)) ** 2
    expected = 1 / 3 + 2 / 3 * p_random
    sd = np.sqrt(expected * (1 - expected) / len(holds))  # the random part makes it binomial-ish; 4 sd is loose
    assert abs(holds.mean() - expected) < 4 * sd, (holds.mean(), expected)


def test_rare_classes_get_as_many_centred_crops_as_common_ones(tmp_path: Path) -> None:
    _, masks = tiny_dataset(tmp_path)  # class 2 is 4 pixels of 3 * 400 + 4
    s = CropSampler(3, foreground_points(masks), samples=3000, foreground_share=1.0, seed=0)
    centre_class = np.array([masks[i][y, x] for i, y, x in s])
    assert (centre_class == 2).mean() == pytest.approx(0.5, abs=0.04)  # uniform over the 2 classes present


def test_draws_repeat_for_a_seed_and_epoch_and_change_with_either(tmp_path: Path) -> None:
    _, masks = tiny_dataset(tmp_path)
    points = foreground_points(masks)
    a, b = CropSampler(3, points, 64, 0.33, seed=5), CropSampler(3, points, 64, 0.33, seed=5)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    assert not np.array_equal(a.draw(2), CropSampler(3, points, 64, 0.33, seed=6).draw(2))
    assert (a.draw(2)[:, 1] != NO_CENTRE).sum() == round(64 * 0.33)


def test_recipe_rejects_bad_sampling_values() -> None:
    with pytest.raises(UserError, match="samples_per_epoch"):
        Recipe(samples_per_epoch=0)
    with pytest.raises(UserError, match="foreground_share"):
        Recipe(foreground_share=1.5)


def test_pseudo_share_draws_that_share_from_the_extra_images_every_epoch() -> None:
    """10 labelled images then 30 pseudo-labelled ones: a share of 0.12 gives round(40 x 0.12) = 5 extra samples an
    epoch, the labelled 35 cover the 10 images (3 whole passes, then 5 distinct), shuffled together."""
    s = CropSampler(40, {}, samples=None, foreground_share=0.0, seed=0, extra=Extra(30, 0.12))
    for epoch in (0, 1):
        images = s.draw(epoch)[:, 0]
        assert len(images) == 40 and (images >= 10).sum() == 5
        counts = np.bincount(images[images < 10], minlength=10)
        assert sorted(counts.tolist()) == [3] * 5 + [4] * 5
    assert not np.array_equal(np.sort(s.draw(0)[:, 0]), np.sort(s.draw(1)[:, 0]))  # other extra images each epoch
    # without extra images (round 1) the share changes nothing: one pass over the files
    plain = CropSampler(40, {}, samples=None, foreground_share=0.0, seed=0, extra=Extra(0, 0.12))
    assert sorted(plain.draw(0)[:, 0].tolist()) == list(range(40))


def test_pseudo_pretraining_draws_only_extra_then_only_labelled_images() -> None:
    s = CropSampler(12, {}, samples=None, foreground_share=0.0, seed=0, extra=Extra(8, first=2))
    assert [s.extra.share_at(e, 12) for e in range(4)] == [1.0, 1.0, 0.0, 0.0]
    for e in (0, 1):  # 12 samples of the 8 extra images: each once, then 4 distinct
        assert (s.draw(e)[:, 0] >= 4).all() and sorted(np.bincount(s.draw(e)[:, 0])[4:].tolist()) == [1] * 4 + [2] * 4
    for e in (2, 3):  # 12 samples of the 4 labelled images: 3 whole passes
        assert np.bincount(s.draw(e)[:, 0], minlength=12).tolist() == [3] * 4 + [0] * 8


def test_pseudo_variants_reach_the_round_recipe_and_bad_values_stop() -> None:
    from pipeline.config import ModelConfig, Params, PseudoParams
    from pipeline.training.recipe import round_config

    cfg = ModelConfig(decoder="Unet", encoder="resnet10t")
    params = Params()
    mixed = dataclasses.replace(params, pseudo=dataclasses.replace(params.pseudo, share=0.5))
    r2, _ = round_config(cfg, mixed)
    assert (r2.recipe.pseudo_share, r2.recipe.pseudo_pretrain, r2.recipe.epochs) == (0.5, 0, 2)
    pre = dataclasses.replace(params, pseudo=dataclasses.replace(params.pseudo, pretrain_epochs=1))
    assert round_config(cfg, pre)[0].recipe.pseudo_pretrain == 1
    assert cfg.recipe.pseudo_share is None and cfg.recipe.pseudo_pretrain == 0  # round 1 untouched
    with pytest.raises(UserError, match="no epoch to fine-tune"):
        round_config(cfg, dataclasses.replace(params, pseudo=dataclasses.replace(params.pseudo, pretrain_epochs=2)))
    with pytest.raises(UserError, match="pseudo.share must be in"):
        PseudoParams(share=1.5)
    with pytest.raises(UserError, match="exclude each other"):
        PseudoParams(share=0.5, pretrain_epochs=1)
