"""Atomic writes and safe reads.

Every artifact is written to a temporary file in the destination folder and then ``os.replace``d into place, so a
killed run never leaves a half-written file that a later stage could read.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from pipeline.errors import DataError, UserError


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it replaces ``dest``, on error it is removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; artifacts are ordinary files
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(dest: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``dest`` for writing; it replaces ``dest`` only when the block succeeds."""
    with atomic_path(dest) as tmp, open(tmp, mode, **kwargs) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_json(dest: str | os.PathLike[str], obj: Any) -> None:
    with atomic_open(dest, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_text(dest: str | os.PathLike[str], text: str) -> None:
    with atomic_open(dest, "w", encoding="utf-8") as f:
        f.write(text)


def write_csv(dest: str | os.PathLike[str], header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with atomic_open(dest, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def write_png(dest: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write a uint8 (H, W) or (H, W, 3) array as PNG, atomically."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    with atomic_open(dest, "wb") as f:
        f.write(buf.getvalue())


def write_npz(dest: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    with atomic_open(dest, "wb") as f:
        np.savez(f, **arrays)


def save_torch(dest: str | os.PathLike[str], obj: Any) -> None:
    """``torch.save`` to a temp file, then rename (timm's checkpoint saver habit)."""
    import torch

    with atomic_path(dest) as tmp:
        torch.save(obj, tmp)


def load_torch(src: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only, never code."""
    import torch

    src = Path(src)
    if not src.is_file():
        raise UserError(f"{src}: checkpoint not found")
    return torch.load(src, map_location=map_location, weights_only=True)


def read_json(src: str | os.PathLike[str]) -> Any:
    """Read JSON, turning a missing file or a syntax error into a one-line error that names the file."""
    src = Path(src)
    if not src.is_file():
        raise UserError(f"{src}: file not found")
    try:
        with open(src, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(src, f"line {e.lineno} column {e.colno}", f"invalid JSON: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DataError(src, f"byte {e.start}", "not UTF-8 text") from None


def safe_join(root: str | os.PathLike[str], relative: str) -> Path:
    """Join ``relative`` under ``root`` and refuse a result that escapes ``root`` (``..``, absolute paths, links)."""
    root_res = Path(root).resolve()
    if os.path.isabs(relative):
        raise UserError(f"{relative!r} is an absolute path; paths must be relative to {root}")
    path = (root_res / relative).resolve()
    if path != root_res and root_res not in path.parents:
        raise UserError(f"{relative!r} escapes the data root {root}")
    return path


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image as uint8 (H, W, 3) RGB; grayscale and palette images are converted."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))  # a writable copy (np.asarray of a PIL image is read-only)
    except FileNotFoundError:
        raise UserError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: unreadable or corrupt image ({e})") from None


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a single-channel uint8 class mask PNG (palette indices are kept as they are)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                raise UserError(f"{path}: mask must be a single-channel PNG (mode L or P), got mode {im.mode}")
            return np.array(im)
    except FileNotFoundError:
        raise UserError(f"{path}: mask file not found") from None
    except (OSError, SyntaxError) as e:
        raise UserError(f"{path}: unreadable or corrupt mask ({e})") from None


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``dest``; on success it replaces ``dest`` whole, on error it is removed."""
    import shutil

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
