"""Where training reads its decoded images from: RAM when they fit ``train.preload_mib``, else a disk cache.

``train.preload``: ``true`` decodes every image of the fold once and keeps it in RAM (3272 images of 512x512 RGB are
2.6 GB; a 20k-image competition tens of GB); ``false`` reads from the disk cache; ``auto`` (the default) keeps them
in RAM when the fold's decoded images and masks fit ``train.preload_mib``, and reads from the disk cache otherwise.

The disk cache (``Layout.decoded_dir``) holds each (image, mask) pair decoded once, as one uncompressed ``.npy`` of
(H, W, 4) uint8 (RGB, then the mask): reading it back is a file read, with no PNG / JPEG decoding, EXIF rotation or
16-bit scaling, and resident memory stays one batch. An entry is named by a digest of both sources' paths, sizes and
modification times, so an edited image or mask is decoded again; entries are written atomically, so folds and
rounds training in parallel share it safely. It is a cache: ``rm -r work/decoded`` at any time costs one decode.

    >>> preload_choice("auto", 2048, 1500 * 2**20)[0], preload_choice("auto", 2048, 3000 * 2**20)[0]
    (True, False)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.io import atomic_open, read_image, read_mask, upright_size
from pipeline.paths import Layout

MIB = 2**20


def decoded_bytes(images: Sequence[Path], masks: Sequence[Path] | None) -> int:
    """Bytes the decoded (H, W, 3) images and (H, W) masks take, from the image headers (nothing decoded)."""
    total = 0
    for path in images:
        with Image.open(path) as im:
            h, w, _ = upright_size(im)
        total += h * w * (3 + (masks is not None))
    return total


def preload_choice(preload: bool | str, budget_mib: int, nbytes: int) -> tuple[bool, str]:
    """Whether a fold's images are kept in RAM (``train.preload``, ``train.preload_mib``), and why."""
    size = f"{nbytes / MIB:.0f} MiB decoded"
    if preload is True:
        return True, f"train.preload true: in RAM ({size})"
    if preload is False:
        return False, f"train.preload false: read from the disk cache ({size})"
    if nbytes <= budget_mib * MIB:
        return True, f"train.preload auto: {size} fit train.preload_mib ({budget_mib}): in RAM"
    return False, f"train.preload auto: {size} exceed train.preload_mib ({budget_mib}): read from the disk cache"


def _stamp(path: Path) -> str:
    st = os.stat(path)
    return f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}"


@dataclasses.dataclass(frozen=True)
class DecodedCache:
    """Decoded (image, mask) pairs in ``layout.decoded_dir``, one ``.npy`` each, made on first read."""

    layout: Layout

    def entry(self, image: Path, mask: Path | None) -> Path:
        key = _stamp(image) + ("\0" + _stamp(mask) if mask is not None else "")
        return self.layout.decoded_path(hashlib.sha1(key.encode()).hexdigest())

    def read(self, image: Path, mask: Path | None) -> tuple[np.ndarray, np.ndarray | None]:
        """The (H, W, 3) image and (H, W) mask (``None`` without one), decoded once and cached."""
        path = self.entry(image, mask)
        try:
            both = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):  # not there yet (or damaged on disk): decode it again
            img = read_image(image)
            m = read_mask(mask) if mask is not None else None
            if m is not None and m.shape != img.shape[:2]:
                return img, m  # the dataset names the mismatch; nothing is cached
            both = img if m is None else np.concatenate([img, m[:, :, None]], axis=2)
            with atomic_open(path, "wb") as f:
                np.save(f, both, allow_pickle=False)
        # contiguous copies: OpenCV (the augmentations) wants them, and the file's buffer is freed at once
        return np.ascontiguousarray(both[:, :, :3]), (np.ascontiguousarray(both[:, :, 3]) if mask is not None else None)


@dataclasses.dataclass(frozen=True)
class Storage:
    """Where a fold's datasets read their images: RAM (``preload``) or ``cache``; ``why`` says which and why."""

    preload: bool
    cache: DecodedCache | None
    why: str


def fold_storage(
    preload: bool | str, budget_mib: int, images: Sequence[Path], masks: Sequence[Path], layout: Layout
) -> Storage:
    """The storage of a fold whose training and validation pairs are ``images`` / ``masks``."""
    keep, why = preload_choice(preload, budget_mib, decoded_bytes(images, masks))
    return Storage(keep, None if keep else DecodedCache(layout), why)
