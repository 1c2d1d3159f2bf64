"""Training's image storage: the disk cache gives what decoding gives, is decoded once, follows edits; auto's choice."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import Augment, ModelConfig, Recipe
from pipeline.data.cache import DecodedCache, decoded_bytes, fold_storage, preload_choice
from pipeline.data.dataset import SegDataset, build_transform
from pipeline.errors import UserError
from pipeline.paths import Layout


def pairs(tmp_path: Path, n: int = 3) -> tuple[list[Path], list[Path], list[np.ndarray], list[np.ndarray]]:
    """``n`` pairs of different sizes: an RGB PNG, a 16-bit grey PNG and an EXIF-rotated JPEG (PIL writes them;
    the expected arrays are decoded here, independently of pipeline.io)."""
    rng = np.random.default_rng(0)
    images, masks, want_img, want_mask = [], [], [], []
    for i in range(n):
        h, w = 20 + 4 * i, 30 + 2 * i
        m = rng.integers(0, 4, (h, w), dtype=np.uint8)
        Image.fromarray(m).save(tmp_path / f"m{i}.png")
        kind = i % 3
        if kind == 0:
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(tmp_path / f"i{i}.png")
            want = rgb
            path = tmp_path / f"i{i}.png"
        elif kind == 1:
            wide = rng.integers(0, 65536, (h, w)).astype(np.uint16)
            Image.fromarray(wide).save(tmp_path / f"i{i}.png")
            grey = np.round(wide.astype(np.float64) * 255 / 65535).astype(np.uint8)
            want = np.repeat(grey[:, :, None], 3, axis=2)
            path = tmp_path / f"i{i}.png"
        else:  # stored (w, h), EXIF orientation 6 (rotate 90 degrees clockwise to view): viewed (h, w)
            stored = rng.integers(0, 256, (w, h, 3), dtype=np.uint8)
            exif = Image.Exif()
            exif[0x0112] = 6
            path = tmp_path / f"i{i}.jpg"
            Image.fromarray(stored).save(path, quality=95, exif=exif)
            with Image.open(path) as im:
                want = np.rot90(np.asarray(im.convert("RGB")), k=-1)  # the decoded JPEG, turned by hand
        images.append(path)
        masks.append(tmp_path / f"m{i}.png")
        want_img.append(want)
        want_mask.append(m)
    return images, masks, want_img, want_mask


def test_the_cache_gives_what_decoding_gives_and_decodes_once(tmp_path: Path) -> None:
    images, masks, want_img, want_mask = pairs(tmp_path)
    cache = DecodedCache(Layout(tmp_path / "project"))
    for img, m, wi, wm in zip(images, masks, want_img, want_mask):
        got_img, got_mask = cache.read(img, m)
        np.testing.assert_array_equal(got_img, wi)
        np.testing.assert_array_equal(got_mask, wm)
        assert got_img.flags.c_contiguous and got_mask.flags.c_contiguous
    entries = sorted(Layout(tmp_path / "project").decoded_dir.iterdir())
    assert len(entries) == 3 and all(e.suffix == ".npy" for e in entries)
    np.testing.assert_array_equal(np.load(cache.entry(images[1], masks[1]))[:, :, 3], want_mask[1])
    marker = np.full_like(np.load(cache.entry(images[0], masks[0])), 7)
    np.save(cache.entry(images[0], masks[0]), marker)  # the entry, not the source, answers a second read
    assert (cache.read(images[0], masks[0])[0] == 7).all()


def test_an_edited_source_is_decoded_again(tmp_path: Path) -> None:
    images, masks, _, _ = pairs(tmp_path, 1)
    cache = DecodedCache(Layout(tmp_path / "project"))
    first = cache.entry(images[0], masks[0])
    cache.read(images[0], masks[0])
    new = np.full((20, 30), 3, np.uint8)
    Image.fromarray(new).save(masks[0])
    st = os.stat(masks[0])
    os.utime(masks[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a later mtime, whatever the clock's step
    assert cache.entry(images[0], masks[0]) != first
    np.testing.assert_array_equal(cache.read(images[0], masks[0])[1], new)


def test_a_damaged_entry_is_decoded_again(tmp_path: Path) -> None:
    images, masks, want_img, _ = pairs(tmp_path, 1)
    cache = DecodedCache(Layout(tmp_path / "project"))
    cache.read(images[0], masks[0])
    cache.entry(images[0], masks[0]).write_bytes(b"\x93NUMPY truncated")
    np.testing.assert_array_equal(cache.read(images[0], masks[0])[0], want_img[0])


def test_a_cached_dataset_yields_what_a_preloaded_one_yields(tmp_path: Path) -> None:
    images, masks, _, _ = pairs(tmp_path)
    recipe = Recipe(augment=[Augment(name="HorizontalFlip", kwargs={"p": 0.5})])
    cfg = ModelConfig(decoder="Unet", encoder="resnet18", input_size=(16, 16), recipe=recipe)
    cache = DecodedCache(Layout(tmp_path / "project"))
    a = SegDataset(images, masks, build_transform(cfg, True, seed=3), preload=True)
    b = SegDataset(images, masks, build_transform(cfg, True, seed=3), preload=False, cache=cache)
    for _ in range(2):  # the second pass reads the entries the first one wrote
        for i in range(len(a)):
            x, y = a[i], b[i]
            assert torch_equal(x["image"], y["image"]) and torch_equal(x["mask"], y["mask"])
        assert all(np.array_equal(a.original_mask(i), b.original_mask(i)) for i in range(len(a)))


def torch_equal(x: object, y: object) -> bool:
    import torch

    return bool(torch.equal(x, y))  # type: ignore[arg-type]


def test_a_mismatched_mask_is_still_named_and_not_cached(tmp_path: Path) -> None:
    images, masks, _, _ = pairs(tmp_path, 1)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(masks[0])
    layout = Layout(tmp_path / "project")
    ds = SegDataset(images, masks, None, preload=False, cache=DecodedCache(layout))
    with pytest.raises(UserError, match="mask is"):
        ds[0]
    assert not layout.decoded_dir.exists() or not any(layout.decoded_dir.iterdir())


def test_decoded_bytes_is_the_sum_of_the_arrays_sizes(tmp_path: Path) -> None:
    images, masks, want_img, want_mask = pairs(tmp_path)
    assert decoded_bytes(images, masks) == sum(a.nbytes for a in want_img) + sum(m.nbytes for m in want_mask)
    assert decoded_bytes(images, None) == sum(a.nbytes for a in want_img)


@pytest.mark.parametrize(
    ("preload", "budget", "nbytes", "ram"),
    [(True, 0, 10**12, True), (False, 10**6, 1, False), ("auto", 1, 2**20, True), ("auto", 1, 2**20 + 1, False)],
)
def test_preload_choice(preload: bool | str, budget: int, nbytes: int, ram: bool) -> None:
    keep, why = preload_choice(preload, budget, nbytes)
    assert keep is ram and f"train.preload {str(preload).lower()}" in why


def test_fold_storage_of_auto_with_a_small_budget_is_the_disk_cache(tmp_path: Path) -> None:
    images, masks, _, _ = pairs(tmp_path)
    layout = Layout(tmp_path / "project")
    s = fold_storage("auto", 0, images, masks, layout)
    assert not s.preload and s.cache == DecodedCache(layout) and "exceed train.preload_mib (0)" in s.why
    s = fold_storage("auto", 1, images, masks, layout)
    assert s.preload and s.cache is None
