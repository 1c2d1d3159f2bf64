"""Copy-paste: the pasted pixels and labels against a per-pixel loop, the donors' draw, and the training wiring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import Recipe
from pipeline.data.dataset import SegDataset
from pipeline.data.paste import NO_DONOR, PastedDataset, PasteSampler, paste
from pipeline.errors import UserError
from pipeline.io import write_png


def item(rng: np.random.Generator, index: int) -> dict:
    mask = rng.choice([0, 0, 0, 1, 2, 255], size=(6, 7)).astype(np.int64)
    image = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    return {"image": torch.from_numpy(image), "mask": torch.from_numpy(mask), "index": index}


def test_paste_matches_a_per_pixel_loop() -> None:
    rng = np.random.default_rng(3)
    a, b = item(rng, 0), item(rng, 1)
    out = paste(a, b)
    want_img, want_mask = a["image"].numpy().copy(), a["mask"].numpy().copy()
    for y in range(6):
        for x in range(7):
            label = int(b["mask"][y, x])
            if label not in (0, 255):  # background and ignore of the donor leave the receiver as it was
                want_img[y, x] = b["image"][y, x].numpy()
                want_mask[y, x] = label
    np.testing.assert_array_equal(out["image"].numpy(), want_img)
    np.testing.assert_array_equal(out["mask"].numpy(), want_mask)
    assert out["index"] == 0
    assert int((a["mask"] != torch.from_numpy(want_mask)).sum()) > 0  # the receiver itself is untouched


def test_paste_refuses_different_sizes() -> None:
    rng = np.random.default_rng(0)
    a, b = item(rng, 0), item(rng, 1)
    b["mask"] = b["mask"][:5]
    with pytest.raises(ValueError, match="differs"):
        paste(a, b)


def test_sampler_draws_donors_at_the_rate_and_repeats_per_epoch() -> None:
    s = PasteSampler(None, 400, 0.5, seed=7)
    s.set_epoch(3)
    first = list(s)
    assert sorted(i for i, _ in first) == list(range(400))  # one shuffled pass
    share = np.mean([d != NO_DONOR for _, d in first])
    assert abs(share - 0.5) < 0.1  # 400 draws: sd 0.025
    assert list(s) == first  # same epoch, same pairs (a resumed run)
    s.set_epoch(4)
    assert list(s) != first
    assert all(d == NO_DONOR for _, d in PasteSampler(None, 50, 0.0, 0))


def test_pasted_dataset_reads_both_items(tmp_path: Path) -> None:
    images, masks = [], []
    for i in range(2):
        m = np.zeros((8, 8), np.uint8)
        m[i * 4 : i * 4 + 4, :] = i + 1  # image 0: class 1 on top; image 1: class 2 at the bottom
        write_png(tmp_path / f"i{i}.png", np.full((8, 8, 3), 50 * (i + 1), np.uint8))
        write_png(tmp_path / f"m{i}.png", m)
        images.append(tmp_path / f"i{i}.png")
        masks.append(tmp_path / f"m{i}.png")
    ds = PastedDataset(SegDataset(images, masks))
    out = ds[(0, 1)]
    assert out["mask"][:4].eq(1).all() and out["mask"][4:].eq(2).all()
    assert out["image"][4:].eq(100).all() and out["image"][:4].eq(50).all()
    assert torch.equal(ds[(0, NO_DONOR)]["mask"], ds.dataset[0]["mask"])
    assert torch.equal(ds[(1, 1)]["mask"], ds.dataset[1]["mask"])  # its own donor: unchanged


def test_recipe_paste_is_a_share() -> None:
    with pytest.raises(UserError, match="recipe.paste"):
        Recipe(paste=1.5)
