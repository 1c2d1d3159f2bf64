"""Spilled arrays read back exactly as written, leave no file behind; the streamed npz reads back as np.savez's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.io import npz_writer
from pipeline.store import Lazy, SpillDict, SpillList, Subset

ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.float16, np.float32, np.uint8, np.int64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
    elements={"allow_nan": False},
)


@settings(max_examples=40, deadline=None)
@given(st.lists(ARRAYS, max_size=8))
def test_a_spill_list_reads_back_every_array_exactly(tmp_path_factory: pytest.TempPathFactory, arrays: list) -> None:
    folder = tmp_path_factory.mktemp("spill")
    with SpillList(folder) as spill:
        for i, a in enumerate(arrays):
            assert spill.append(a) == i
        assert len(spill) == len(arrays)
        assert spill.nbytes == sum(a.nbytes for a in arrays)
        for a, b in zip(arrays, spill):  # in order, any order of reads
            assert b.dtype == a.dtype and b.shape == a.shape
            np.testing.assert_array_equal(a, b)
        for i in reversed(range(len(arrays))):
            np.testing.assert_array_equal(spill[i], arrays[i])


def test_a_read_is_a_fresh_writable_copy(tmp_path: Path) -> None:
    with SpillList(tmp_path) as spill:
        spill.append(np.arange(4, dtype=np.float32))
        a = spill[0]
        a[0] = 99.0  # the caller may change what it read ...
        assert spill[0][0] == 0.0  # ... without changing what is stored


def test_a_non_contiguous_array_is_stored_by_value(tmp_path: Path) -> None:
    base = np.arange(24, dtype=np.float16).reshape(2, 3, 4)
    view = base.transpose(2, 0, 1)[:, ::2]  # (4, 1, 3), strided
    with SpillList(tmp_path) as spill:
        spill.append(view)
        np.testing.assert_array_equal(spill[0], view)


def test_the_spill_file_has_no_name_on_disk(tmp_path: Path) -> None:
    with SpillDict(tmp_path) as spill:
        spill["a"] = np.ones((100, 100), np.float16)
        assert list(tmp_path.iterdir()) == []  # unlinked at creation: a killed run leaves nothing
        assert spill.nbytes == 100 * 100 * 2


def test_a_spill_dict_keeps_the_last_value_of_a_key_and_its_keys_in_order(tmp_path: Path) -> None:
    with SpillDict(tmp_path) as d:
        d[3] = np.zeros(2, np.uint8)
        d["x"] = np.ones(2, np.uint8)
        d[3] = np.full(2, 7, np.uint8)
        assert list(d) == [3, "x"] and len(d) == 2
        assert d[3].tolist() == [7, 7]
        with pytest.raises(KeyError):
            d["missing"]
        view = Subset(d, ["x"])
        assert list(view) == ["x"] and view["x"].tolist() == [1, 1]
        with pytest.raises(KeyError):
            view[3]  # held by the source, not by the view


def test_lazy_calls_get_on_each_access_and_nothing_else() -> None:
    calls: list[int] = []

    def get(i: int) -> np.ndarray:
        calls.append(i)
        return np.full(1, i)

    seq = Lazy(3, get)
    assert len(seq) == 3 and calls == []
    assert [int(a[0]) for a in seq] == [0, 1, 2]
    assert int(seq[-1][0]) == 2 and [int(a[0]) for a in seq[1:]] == [1, 2]
    with pytest.raises(IndexError):
        seq[3]


def test_the_streamed_npz_reads_back_as_np_savez_writes_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {str(i): rng.random((3, 5, 7)).astype(np.float16) for i in range(5)}
    np.savez(tmp_path / "ref.npz", **arrays)
    with npz_writer(tmp_path / "out.npz") as w:
        for k, a in arrays.items():
            w.add(k, a)
    with np.load(tmp_path / "ref.npz") as ref, np.load(tmp_path / "out.npz") as out:
        assert out.files == ref.files
        for k in ref.files:
            assert out[k].dtype == ref[k].dtype
            np.testing.assert_array_equal(out[k], ref[k])


def test_a_failed_stream_keeps_the_previous_npz(tmp_path: Path) -> None:
    dest = tmp_path / "oof.npz"
    np.savez(dest, old=np.zeros(1))
    with pytest.raises(RuntimeError), npz_writer(dest) as w:
        w.add("1", np.ones(3))
        raise RuntimeError("killed midway")
    with np.load(dest) as z:
        assert z.files == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["oof.npz"]
