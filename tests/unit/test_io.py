"""Atomic writes leave either the old file or the new one, never a mix or a temp file; safe_join stays inside."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import DataError, UserError
from pipeline.io import (
    atomic_dir,
    atomic_open,
    atomic_path,
    read_json,
    safe_join,
    write_csv,
    write_json,
    write_png,
    write_text,
)


class Boom(Exception):
    pass


def test_atomic_open_that_raises_midway_keeps_the_previous_file(tmp_path: Path) -> None:
    dest = tmp_path / "out.txt"
    write_text(dest, "old\n")
    with pytest.raises(Boom), atomic_open(dest) as f:
        f.write("new, half")
        f.flush()
        raise Boom
    assert dest.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # no temp file left


def test_write_json_that_fails_midway_keeps_the_previous_file(tmp_path: Path) -> None:
    dest = tmp_path / "a.json"
    write_json(dest, {"v": 1})
    with pytest.raises(TypeError):
        write_json(dest, {"v": 2, "bad": object()})  # json.dump has written part of it when this raises
    assert read_json(dest) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_atomic_path_replaces_on_success_and_cleans_up_on_error(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "ckpt.bin"
    with atomic_path(dest) as tmp:
        assert tmp.parent == dest.parent and tmp != dest  # same folder, so os.replace is atomic
        tmp.write_bytes(b"one")
        assert not dest.exists()
    assert dest.read_bytes() == b"one"
    with pytest.raises(Boom), atomic_path(dest) as tmp:
        tmp.write_bytes(b"two")
        raise Boom
    assert dest.read_bytes() == b"one"
    assert [p.name for p in dest.parent.iterdir()] == ["ckpt.bin"]


def test_writers_produce_readable_files(tmp_path: Path) -> None:
    write_csv(tmp_path / "t.csv", ["a", "b"], [[1, "x"], [2, "y"]])
    assert (tmp_path / "t.csv").read_text() == "a,b\n1,x\n2,y\n"
    write_json(tmp_path / "n.json", {"i": np.int64(3), "f": np.float32(0.5), "a": np.arange(2), "p": Path("q")})
    assert json.loads((tmp_path / "n.json").read_text()) == {"i": 3, "f": 0.5, "a": [0, 1], "p": "q"}
    from PIL import Image

    mask = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_png(tmp_path / "m.png", mask)
    with Image.open(tmp_path / "m.png") as im:
        np.testing.assert_array_equal(np.asarray(im), mask)


def test_atomic_dir_that_raises_keeps_the_previous_folder(tmp_path: Path) -> None:
    dest = tmp_path / "masks"
    dest.mkdir()
    (dest / "1.png").write_bytes(b"old")
    with pytest.raises(Boom), atomic_dir(dest) as tmp:
        (tmp / "1.png").write_bytes(b"new")
        (tmp / "2.png").write_bytes(b"new")
        raise Boom
    assert sorted(p.name for p in dest.iterdir()) == ["1.png"]
    assert (dest / "1.png").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks"]  # no temp folder left


def test_atomic_dir_replaces_the_folder_whole(tmp_path: Path) -> None:
    dest = tmp_path / "masks"
    with atomic_dir(dest) as tmp:
        (tmp / "stale.png").write_bytes(b"x")
    with atomic_dir(dest) as tmp:
        assert not dest.joinpath("fresh.png").exists()
        (tmp / "fresh.png").write_bytes(b"y")
    assert sorted(p.name for p in dest.iterdir()) == ["fresh.png"]  # nothing of the old folder survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks"]


def test_atomic_dir_that_raises_the_first_time_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(Boom), atomic_dir(tmp_path / "new") as tmp:
        (tmp / "a").write_text("x")
        raise Boom
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("relative", ["../x", "a/../../x", "..", "sub/../../etc/passwd"])
def test_safe_join_refuses_parent_escapes(tmp_path: Path, relative: str) -> None:
    (tmp_path / "root").mkdir()
    with pytest.raises(UserError, match="escapes the data root"):
        safe_join(tmp_path / "root", relative)


def test_safe_join_refuses_absolute_paths(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="absolute path"):
        safe_join(tmp_path, str(tmp_path / "a.png"))  # absolute even though it points inside
    with pytest.raises(UserError, match="absolute path"):
        safe_join(tmp_path, "/etc/passwd")


def test_safe_join_refuses_symlinks_that_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"s")
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    (root / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(UserError, match="escapes"):
        safe_join(root, "link.png")
    with pytest.raises(UserError, match="escapes"):
        safe_join(root, "dirlink/secret.png")
    # A link that stays inside the root is fine.
    (root / "sub" / "real.png").write_bytes(b"r")
    (root / "inner.png").symlink_to(root / "sub" / "real.png")
    assert safe_join(root, "inner.png") == (root / "sub" / "real.png").resolve()


def test_safe_join_accepts_ordinary_relative_paths(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "a/b.png") == tmp_path.resolve() / "a" / "b.png"
    assert safe_join(tmp_path, "a/../b.png") == tmp_path.resolve() / "b.png"
    assert safe_join(str(tmp_path), "./c.jpg") == tmp_path.resolve() / "c.jpg"


def test_read_json_names_the_file_and_position(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="file not found") as info:
        read_json(tmp_path / "nope.json")
    assert str(tmp_path / "nope.json") in str(info.value)
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "a": 1,\n  oops\n}')
    with pytest.raises(DataError) as info2:
        read_json(bad)
    assert str(info2.value).startswith(f"{bad}: line 3 column 3: invalid JSON")
    bad.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(DataError, match="not UTF-8"):
        read_json(bad)


def test_temp_files_are_hidden_and_beside_the_destination(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # If the process is killed between write and rename, what is left is a dot-file that no glob picks up.
    seen: list[str] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append(str(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    write_text(tmp_path / "x.csv", "a\n")
    assert len(seen) == 1 and Path(seen[0]).parent == tmp_path and Path(seen[0]).name.startswith(".x.csv.")
