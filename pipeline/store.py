"""Arrays spilled to an anonymous file on disk and read back one at a time, so that memory stays flat in their number.

The out-of-fold (OOF) choices (TTA, temperature, ensemble weights) re-read every OOF image's (C, H, W) probabilities
many times; held in a dict they cost O(N_train * C * H * W) of RAM (tens of GB on a 10k-image 512x512 competition).
Here each array is appended to one temporary file and read back with ``pread`` on access: resident memory is one
array at a time (plus the page cache, which the kernel reclaims), whatever the number of images.

The file is made with :func:`tempfile.TemporaryFile`, which unlinks it at once (``O_TMPFILE`` on Linux): a killed run
leaves nothing behind, and no name is written anywhere. It lives in the folder given (``Layout.scratch_dir``, on the
project's disk), not in ``/tmp``, which may be a RAM-backed tmpfs.

Example::

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d, SpillDict(d) as probs:
    ...     probs["7"] = np.arange(6, dtype=np.float16).reshape(1, 2, 3)
    ...     probs["9"] = np.ones((2, 2), np.uint8)
    ...     (sorted(probs), probs["7"].shape, probs["7"].dtype, int(probs["9"].sum()), len(probs))
    (['7', '9'], (1, 2, 3), dtype('float16'), 4, 2)
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, overload

import numpy as np


@dataclasses.dataclass(frozen=True)
class _Entry:
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


_SPILLED = [0]  # bytes this process has spilled (bench/bench_oof.py reports it: what RAM would have held)


def spilled_bytes() -> int:
    """Bytes spilled to disk by every store of this process so far."""
    return _SPILLED[0]


class SpillList(Sequence[np.ndarray]):
    """An append-only list of arrays kept on disk; ``self[i]`` reads array ``i`` back (a fresh, writable copy)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        os.makedirs(folder, exist_ok=True)
        self._file = tempfile.TemporaryFile(dir=folder)
        self._entries: list[_Entry] = []
        self._end = 0

    def append(self, array: np.ndarray) -> int:
        """Write ``array`` at the end of the file; return its index."""
        a = np.asarray(array, order="C")  # not ascontiguousarray: it makes a 0-d array 1-d
        view, done = memoryview(a.reshape(-1).view(np.uint8)), 0
        while done < a.nbytes:  # pwrite may write less than asked (over 2 GiB, or on a signal)
            done += os.pwrite(self._file.fileno(), view[done:], self._end + done)
        self._entries.append(_Entry(self._end, a.shape, a.dtype))
        self._end += a.nbytes
        _SPILLED[0] += a.nbytes
        return len(self._entries) - 1

    def _read(self, e: _Entry) -> np.ndarray:
        buf = bytearray(e.nbytes)
        got = os.preadv(self._file.fileno(), [buf], e.offset)
        if got != e.nbytes:  # the file is ours alone: a short read means the disk lost it
            raise OSError(f"spill file: read {got} of {e.nbytes} bytes at offset {e.offset}")
        return np.frombuffer(buf, e.dtype).reshape(e.shape)

    @overload
    def __getitem__(self, i: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, i: slice) -> list[np.ndarray]: ...
    def __getitem__(self, i: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(i, slice):
            return [self._read(e) for e in self._entries[i]]
        return self._read(self._entries[i])

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes on disk."""
        return self._end

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SpillList:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class SpillDict(Mapping[Hashable, np.ndarray]):
    """``key -> array`` kept on disk (a :class:`SpillList` and an index); setting a key again appends a new copy."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self._list = SpillList(folder)
        self._index: dict[Hashable, int] = {}

    def __setitem__(self, key: Hashable, array: np.ndarray) -> None:
        self._index[key] = self._list.append(array)

    def __getitem__(self, key: Hashable) -> np.ndarray:
        return self._list[self._index[key]]

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    @property
    def nbytes(self) -> int:
        return self._list.nbytes

    def close(self) -> None:
        self._list.close()

    def __enter__(self) -> SpillDict:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class Subset(Mapping[Hashable, np.ndarray]):
    """A read-only view of ``source`` restricted to ``keys`` (in their order), reading nothing until asked."""

    def __init__(self, source: Mapping[Hashable, np.ndarray], keys: Sequence[Hashable]) -> None:
        self._source, self._keys = source, list(keys)
        self._set = set(self._keys)

    def __getitem__(self, key: Hashable) -> np.ndarray:
        if key not in self._set:
            raise KeyError(key)
        return self._source[key]

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class Lazy(Sequence[np.ndarray]):
    """A sequence of ``n`` arrays, ``get(i)`` called on each access (nothing is kept)."""

    def __init__(self, n: int, get: Callable[[int], np.ndarray]) -> None:
        self._n, self._get = n, get

    @overload
    def __getitem__(self, i: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, i: slice) -> list[np.ndarray]: ...
    def __getitem__(self, i: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(i, slice):
            return [self._get(j) for j in range(*i.indices(self._n))]
        if not -self._n <= i < self._n:
            raise IndexError(i)
        return self._get(i % self._n)

    def __len__(self) -> int:
        return self._n
