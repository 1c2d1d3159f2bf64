"""Atomic writes and safe reads.

Every artifact is written to a temporary file in the destination folder and then ``os.replace``d into place, so a
killed run never leaves a half-written file that a later stage could read. The temp files a killed run leaves are
removed by the next process that writes into that folder. A full disk (ENOSPC, or over quota) while writing is a
one-line :class:`~pipeline.errors.DiskFullError` ("disk full writing <path>; the previous file is intact; free space
and re-run"): the temp file is removed and the destination keeps its previous content.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps

from pipeline.errors import DataError, DiskFullError, UserError

_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def _tmp_prefix(dest: Path) -> str:
    """``.<name>.<pid>.``: the temp name says which process owns it, so a later run can tell a killed run's leftover
    (its process is gone) from a live writer's."""
    return f".{dest.name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    try:  # a zombie (killed, not yet reaped) is gone for our purposes
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def clean_stale_tmp(dest: str | os.PathLike[str]) -> list[Path]:
    """Remove the temp files and folders that killed runs left beside ``dest``; return what was removed.

    A temp name is ``.<name>.<pid>.<random>.tmp`` (or ``.<name>.old``): one whose process no longer runs is a
    leftover of a killed run. Names without a pid (older versions) are leftovers too.
    """
    import shutil

    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    removed = []
    prefix = f".{dest.name}."
    for p in dest.parent.iterdir():
        name = p.name
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix) :]
        if rest == "old":
            stale = True
        elif rest.endswith(".tmp"):
            pid = rest.split(".", 1)[0]
            stale = not (pid.isdigit() and "." in rest[len(pid) :] and _pid_alive(int(pid)))
        else:
            continue
        if stale:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def clean_stale_in(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temp files (``.<name>.<pid>.<random>.tmp``) that killed processes left in ``folder``."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        name = entry.name
        if not (name.startswith(".") and name.endswith(".tmp")) or entry.is_dir(follow_symlinks=False):
            continue
        parts = name[1:-4].rsplit(".", 2)  # name, pid, mkstemp's random part (which has no dot)
        if len(parts) == 3 and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed


_SWEPT: set[str] = set()  # folders this process has cleaned: a folder of 10,000 masks is scanned once, not per write


def _sweep_once(folder: Path) -> None:
    key = os.path.abspath(folder)
    if key not in _SWEPT:
        _SWEPT.add(key)
        clean_stale_in(folder)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it replaces ``dest``, on error it is removed.

    Killed runs' temp files in the folder are removed first (once per folder and process). A full disk anywhere in
    the block raises :class:`~pipeline.errors.DiskFullError`, with ``dest`` as it was.
    """
    dest = Path(dest)
    existed = dest.exists()
    tmp_path = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _sweep_once(dest.parent)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(dest), suffix=".tmp", dir=dest.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; artifacts are ordinary files
        yield tmp_path
        os.replace(tmp_path, dest)
    except OSError as e:
        if e.errno in _DISK_FULL:
            raise DiskFullError(dest, existed) from e
        raise
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def _open_temp(path: Path, mode: str, **kwargs: Any) -> IO[Any]:
    """Open a temp file for writing: the one place every atomic file writer opens its file (tests fill the disk
    here)."""
    return open(path, mode, **kwargs)


@contextlib.contextmanager
def atomic_open(dest: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``dest`` for writing; it replaces ``dest`` only when the block succeeds."""
    with atomic_path(dest) as tmp, _open_temp(tmp, mode, **kwargs) as f:
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


def write_npy(dest: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write one array as ``.npy`` (no pickles), atomically."""
    with atomic_open(dest, "wb") as f:
        np.save(f, array, allow_pickle=False)


def read_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an ``.npy`` written by :func:`write_npy`; a :class:`UserError` naming the file when it is missing or
    unreadable (pickled objects are refused)."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"{path}: unreadable .npy ({e})") from None


def write_npz(dest: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    with atomic_open(dest, "wb") as f:
        np.savez(f, **arrays)


class NpzWriter:
    """An ``.npz`` written one array at a time (what :func:`numpy.savez` writes, uncompressed), atomically: memory
    stays one array, however many there are; ``dest`` appears only when the block succeeds.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with npz_writer(Path(d) / "a.npz") as w:
    ...         w.add("3", np.zeros((2, 2), np.float16))
    ...         w.add("5", np.ones(3, np.uint8))
    ...     with np.load(Path(d) / "a.npz") as z:
    ...         (z.files, z["5"].tolist(), z["3"].dtype)
    (['3', '5'], [1, 1, 1], dtype('float16'))
    """

    def __init__(self, f: IO[bytes]) -> None:
        import zipfile

        self._zip = zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def add(self, key: str, array: np.ndarray) -> None:
        with self._zip.open(key + ".npy", "w", force_zip64=True) as out:
            np.lib.format.write_array(out, np.asanyarray(array), allow_pickle=False)

    def close(self) -> None:
        self._zip.close()


@contextlib.contextmanager
def npz_writer(dest: str | os.PathLike[str]) -> Iterator[NpzWriter]:
    """Yield an :class:`NpzWriter` onto a temp file that replaces ``dest`` when the block succeeds."""
    with atomic_open(dest, "wb") as f:
        w = NpzWriter(f)
        try:
            yield w
        except BaseException:
            with contextlib.suppress(Exception):  # the temp file is removed anyway; the first error is the one told
                w.close()
            raise
        w.close()


class _KeepWriteError:
    """A write-only file proxy that keeps the ``OSError`` of a failed write: ``torch.save`` reports a failing write as
    a ``RuntimeError`` that has lost the errno, and a full disk must still read as one."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_torch(dest: str | os.PathLike[str], obj: Any) -> None:
    """``torch.save`` to a temp file, then rename (timm's checkpoint saver habit); a full disk is a
    :class:`~pipeline.errors.DiskFullError` and leaves the previous checkpoint as it was."""
    import torch

    with atomic_open(dest, "wb") as f:
        out = _KeepWriteError(f)
        try:
            torch.save(obj, out)  # type: ignore[arg-type]
        except RuntimeError:
            if out.error is not None:
                raise out.error from None
            raise


def load_torch(
    src: str | os.PathLike[str], map_location: Any = "cpu", required: Sequence[str] = (), corrupt_ok: bool = False
) -> Any:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only, never code.

    Every failure is a one-line :class:`UserError` naming the file: not found, empty, truncated or not a torch file,
    a pickle of custom classes (refused: unpickling them would run code from the file), or a checkpoint that lacks
    one of the ``required`` top-level keys. With ``corrupt_ok`` an unreadable file (a half-written ``last.pt``
    copied from elsewhere, a truncated download) gives None and a warning instead, for callers that can start afresh.
    """
    import pickle
    import sys
    import warnings
    import zipfile

    import torch

    src = Path(src)
    if not src.is_file():
        raise UserError(f"{src}: checkpoint not found")
    problem = None
    if src.stat().st_size == 0:
        problem = "is empty (0 bytes): a write that never finished"
    else:
        try:
            with warnings.catch_warnings():  # a plain pickle's protocol warning would break the one-line error
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                obj = torch.load(src, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            # torch's text advises weights_only=False (run the file's code): never passed on; only its reason is.
            text = str(e)
            reason = text.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation")[0]
            reason = " ".join(reason.split())[:160] or "not a pickle"
            if "Unsupported global" in reason:
                what = reason.split("Unsupported global:", 1)[1].split(" was not an allowed global")[0]
                what = what.replace("GLOBAL", "").strip(" .")
                raise UserError(
                    f"{src}: refused: the checkpoint pickles a Python object ({what}) that only running code from "
                    "the file could rebuild, and checkpoints load with weights_only=True; re-save it as plain "
                    "tensors and containers, e.g. torch.save({'model': model.state_dict(), ...})"
                ) from None
            problem = f"is not a torch checkpoint (unpickling refused: {reason})"
        except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError, IndexError) as e:
            first = (str(e).splitlines() or [type(e).__name__])[0][:160]
            problem = f"is truncated or not a torch checkpoint ({type(e).__name__}: {first})"
    if problem is not None:
        if corrupt_ok:
            print(f"warning: {src} {problem}; ignoring it", file=sys.stderr)
            return None
        raise UserError(f"{src}: checkpoint {problem}; delete it and re-run the stage that writes it")
    if required:
        missing = [k for k in required if not isinstance(obj, dict) or k not in obj]
        if missing:
            raise UserError(
                f"{src}: checkpoint lacks {', '.join(repr(k) for k in missing)}: it was not written by this "
                "pipeline's train stage; re-run training for it (dvc repro train) or remove it"
            )
    return obj


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # the json module silently keeps the last of a duplicated key
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return out


def _duplicate_line(text: str, key: str) -> int | None:
    """The line of the second ``"key":`` in ``text`` (good enough to point a person at it)."""
    needle = json.dumps(key) + ":"
    compact = text.replace('" :', '":')
    first = compact.find(needle)
    second = compact.find(needle, first + 1) if first >= 0 else -1
    return compact.count("\n", 0, second) + 1 if second >= 0 else None


def read_json(src: str | os.PathLike[str]) -> Any:
    """Read JSON, turning every unreadable file into a one-line error that names the file.

    Refused: syntax errors, non-UTF-8 text, a key given twice in one object (the json module would silently keep
    the last: two ``"annotations"`` lists lose one), and nesting too deep for the parser.
    """
    src = Path(src)
    if not src.is_file():
        raise UserError(f"{src}: file not found")
    try:
        with open(src, encoding="utf-8") as f:
            text = f.read()
        return json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
    except json.JSONDecodeError as e:
        raise DataError(src, f"line {e.lineno} column {e.colno}", f"invalid JSON: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DataError(src, f"byte {e.start}", "not UTF-8 text") from None
    except _DuplicateKey as e:
        line = _duplicate_line(text, e.key)
        where = f"line {line}" if line else "an object"
        raise DataError(
            src, where, f"key {e.key!r} appears twice in one object (JSON keeps only the last); merge or rename them"
        ) from None
    except RecursionError:
        raise DataError(src, "top level", "JSON nested too deeply to read; this is not a COCO file") from None


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
    """Read an image as uint8 (H, W, 3) RGB, upright.

    Grayscale, palette, RGBA (alpha dropped) and CMYK images are converted; an EXIF orientation is applied (the
    annotations of a photo are made on the view a viewer shows, :func:`upright_size`); a 16-bit image is scaled to
    8 bits over its full range (``round(v * 255 / 65535)``: the same scale for every image, not stretched per image;
    Pillow's own conversion would clip every value over 255).
    """
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in _WIDE_MODES:
                wide = np.asarray(im).astype(np.int64)  # I;16* are uint16, I is int32
                grey = ((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
                return np.repeat(grey[:, :, None], 3, axis=2)
            return np.array(im.convert("RGB"))  # a writable copy (np.asarray of a PIL image is read-only)
    except FileNotFoundError:
        raise UserError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: unreadable or corrupt image ({e})") from None


_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_TRANSPOSING = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def upright_size(im: Image.Image) -> tuple[int, int, bool]:
    """(width, height, swapped) of ``im`` as shown upright: EXIF orientations 5-8 swap the stored width and height."""
    try:
        orientation = im.getexif().get(0x0112, 1)  # 0x0112: the EXIF Orientation tag
    except Exception:  # noqa: BLE001 - a broken EXIF block is ignored, as exif_transpose ignores it
        orientation = 1
    w, h = im.size
    return (h, w, True) if orientation in _TRANSPOSING else (w, h, False)


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
    """Yield a fresh temporary folder beside ``dest``; on success it replaces ``dest`` whole, on error it is removed.

    The swap leaves no moment without a complete ``dest``: on Linux the two folders trade places in one
    ``renameat2(RENAME_EXCHANGE)``; elsewhere (or on a file system without it) two renames leave a short gap in which
    ``dest`` is missing, never half-old. Leftovers of killed runs beside ``dest`` are removed first.
    """
    dest = Path(dest)
    existed = dest.is_dir()
    try:
        with _atomic_dir(dest) as tmp:
            yield tmp
    except DiskFullError:
        raise DiskFullError(dest, existed, "folder") from None  # named by the folder, not the temp file inside it
    except OSError as e:
        if e.errno in _DISK_FULL:
            raise DiskFullError(dest, existed, "folder") from e
        raise


@contextlib.contextmanager
def _atomic_dir(dest: Path) -> Iterator[Path]:
    import shutil

    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(dest)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(dest), suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; artifacts are ordinary folders
        if dest.exists() and dest.is_dir() and not dest.is_symlink():
            if not _rename_exchange(tmp, dest):
                old = dest.with_name(f".{dest.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(dest, old)
                os.replace(tmp, dest)
                shutil.rmtree(old, ignore_errors=True)
            # after an exchange, tmp holds the previous folder: removed below
        else:
            if dest.is_symlink() or dest.is_file():
                dest.unlink()
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False where unsupported."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # glibc before 2.28, musl
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):  # a file system that cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def tree_digest(folder: str | os.PathLike[str]) -> str:
    """sha256 over the sorted relative names and contents of every file under ``folder``: the folder's identity."""
    import hashlib

    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*"), key=lambda q: q.relative_to(folder).as_posix()):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode("utf-8") + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def file_digest(path: str | os.PathLike[str]) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def digest_set(paths: Sequence[Path]) -> dict[str, str]:
    """``{name: sha256}`` of files and folders that were written as one set (a record the reader can check)."""
    return {p.name: tree_digest(p) if p.is_dir() else file_digest(p) for p in paths}
