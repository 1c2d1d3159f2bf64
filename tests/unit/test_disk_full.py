"""A disk that fills up while an artifact is written (issue 19): one line, the previous file intact, no temp file.

The disk is filled at the lowest write there is: every atomic writer opens its temp file through
``pipeline.io._open_temp``, replaced here by a real file whose raw ``write`` stores the first ``budget`` bytes and
then raises ``OSError(ENOSPC)``, as a file system does when it runs out of blocks mid-file. Everything above it
(buffering, text encoding, ``json``, ``csv``, PIL, ``np.savez``'s zip writer, ``torch.save``'s writer, the
submission writer, the ledger) is the real code.
"""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import REPO, write_competition

import pipeline.io as pio
from pipeline.config import DataParams, MasksParams
from pipeline.data.masks import build_masks
from pipeline.errors import DiskFullError, UserError
from pipeline.submission.ledger import append_ledger
from pipeline.submission.writer import write_submission

CLASSES = [{"index": 0, "name": "background"}, {"index": 1, "name": "cat"}, {"index": 2, "name": "dog"}]


class FillingFile(io.FileIO):
    """A real file on a disk with ``budget`` bytes left: writes past it store what fits, then fail with ENOSPC."""

    def __init__(self, path: Path, budget: int) -> None:
        super().__init__(path, "w")
        self.budget = budget

    def write(self, data: Any) -> int:  # type: ignore[override]
        data = bytes(data)
        fits = data[: self.budget]
        if fits:
            super().write(fits)
            self.budget -= len(fits)
        if len(fits) < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.name)
        return len(data)


def fill_disk(monkeypatch: pytest.MonkeyPatch, budget: int) -> None:
    def open_temp(path: Path, mode: str, **kwargs: Any) -> Any:
        raw = io.BufferedWriter(FillingFile(path, budget))
        if "b" in mode:
            return raw
        return io.TextIOWrapper(raw, encoding=kwargs.get("encoding"), newline=kwargs.get("newline"))

    monkeypatch.setattr(pio, "_open_temp", open_temp)


def tiny_checkpoint(seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 3, 1))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": seed}


def submission(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = [(str(i), rng.integers(0, 3, (6, 7)).astype(np.uint8)) for i in range(3)]
    write_submission(masks, CLASSES, path)


def ledger(path: Path, seed: int) -> None:
    append_ledger(path, {"file": f"submissions/s{seed}.csv", "models": "tiny", "oof_miou": 0.1 * seed})


# name -> (file name, writer(dest, version)): every artifact kind a stage writes, through its real writer
WRITERS: dict[str, tuple[str, Callable[[Path, int], None]]] = {
    "json": ("metrics.json", lambda d, v: pio.write_json(d, {"val_mIoU": v / 7, "per_class": list(range(50 * v))})),
    "text": ("config.yaml", lambda d, v: pio.write_text(d, f"recipe:\n  lr: {v}\n" * 40)),
    "csv": ("curves.csv", lambda d, v: pio.write_csv(d, ["epoch", "loss"], [[e, v / (e + 1)] for e in range(60)])),
    "png": ("mask.png", lambda d, v: pio.write_png(d, np.random.default_rng(v).integers(0, 9, (40, 50), np.uint8))),
    "oof npz": ("oof.npz", lambda d, v: pio.write_npz(d, **{i: np.full((3, 20, 20), v, np.float16) for i in "12"})),
    "checkpoint": ("last.pt", lambda d, v: pio.save_torch(d, tiny_checkpoint(v))),
    "submission": ("submission.csv", submission),
    "ledger": ("ledger.csv", ledger),
}


@pytest.mark.parametrize("where", ["at once", "midway"])
@pytest.mark.parametrize("kind", list(WRITERS))
def test_a_full_disk_keeps_the_previous_file_and_says_so(
    kind: str, where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, write = WRITERS[kind]
    dest, sizing = tmp_path / "out" / name, tmp_path / "sizing" / name
    write(dest, 1)
    old = dest.read_bytes()
    write(sizing, 2)  # the new file's size, for a disk that fills halfway through it
    budget = 0 if where == "at once" else sizing.stat().st_size // 2

    fill_disk(monkeypatch, budget)
    with pytest.raises(DiskFullError) as e:
        write(dest, 2)
    assert str(e.value) == f"disk full writing {dest}; the previous file is intact; free space and re-run"
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)
    assert dest.read_bytes() == old  # byte for byte
    assert sorted(p.name for p in dest.parent.iterdir()) == [name]  # no .<name>.<pid>.<random>.tmp left

    monkeypatch.undo()  # space freed: the same write now succeeds
    write(dest, 2)
    assert dest.read_bytes() == sizing.read_bytes() or kind in ("checkpoint", "ledger")  # (both hold a time/pickle id)


def test_a_full_disk_on_a_first_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "best.pt"
    fill_disk(monkeypatch, 1000)
    with pytest.raises(DiskFullError, match=r"^disk full writing .*best\.pt; no partial file was left; free space"):
        pio.save_torch(dest, tiny_checkpoint(0))
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_inside_a_folder_swap_keeps_the_previous_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pseudo-label sets and the masks folder are written whole: the error names the folder, which is as it was."""
    dest = tmp_path / "pseudo" / "0"
    with pio.atomic_dir(dest) as d:
        for i in range(3):
            pio.write_png(d / f"{i}.png", np.full((8, 8), i, np.uint8))
    old = pio.tree_digest(dest)
    fill_disk(monkeypatch, 150)
    with pytest.raises(DiskFullError) as e, pio.atomic_dir(dest) as d:
        for i in range(3):
            pio.write_png(d / f"{i}.png", np.random.default_rng(i).integers(0, 9, (30, 30), np.uint8))
    assert str(e.value) == f"disk full writing {dest}; the previous folder is intact; free space and re-run"
    assert pio.tree_digest(dest) == old
    assert sorted(p.name for p in dest.parent.iterdir()) == ["0"]


def test_other_write_errors_are_not_called_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "a.json"
    pio.write_json(dest, {"v": 1})

    def read_only(path: Path, mode: str, **kwargs: Any) -> Any:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(pio, "_open_temp", read_only)
    with pytest.raises(OSError) as e:
        pio.write_json(dest, {"v": 2})
    assert e.value.errno == errno.EROFS and not isinstance(e.value, UserError)
    assert pio.read_json(dest) == {"v": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_killed_writers_temp_file_is_removed_by_the_next_write_into_its_folder(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited: what a SIGKILLed writer leaves is named after it
    leftover = tmp_path / f".last.pt.{pid}.abc_1234.tmp"
    leftover.write_bytes(b"half a checkpoint")
    live = tmp_path / f".other.csv.{os.getpid()}.xyz_9876.tmp"  # this process's own: a write in progress
    live.write_bytes(b"")
    pio._SWEPT.discard(os.path.abspath(tmp_path))
    pio.write_json(tmp_path / "metrics.json", {"v": 1})
    assert not leftover.exists() and live.exists()


# The masks stage with the disk filling up at its first write: the real CLI, in a subprocess.
FULL_DISK_STAGE = """
import errno, io, os, runpy, sys
import pipeline.io as pio
class Full(io.FileIO):
    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.name)
pio._open_temp = lambda path, mode, **kw: io.BufferedWriter(Full(path, "w")) if "b" in mode else io.TextIOWrapper(
    io.BufferedWriter(Full(path, "w")), encoding=kw.get("encoding"), newline=kw.get("newline"))
sys.argv = ["stages.masks"]
runpy.run_module("stages.masks", run_name="__main__")
"""


def test_a_stage_on_a_full_disk_prints_one_line_and_keeps_its_outputs(tmp_path: Path) -> None:
    comp = tmp_path / "comp"
    images = [{"id": i, "file_name": f"{i}.png", "height": 16, "width": 20} for i in (1, 2)]
    anns = [
        {"id": i, "image_id": i, "category_id": 1, "segmentation": [[2, 2, 12, 2, 12, 10, 2, 10]], "iscrowd": 0}
        for i in (1, 2)
    ]
    write_competition(comp, images, anns, [{"id": 1, "name": "cat"}])
    (tmp_path / "params.yaml").write_text(f"data:\n  root: {comp}\nmasks:\n  workers: 1\n")
    from pipeline.paths import Layout

    layout = Layout(tmp_path)
    build_masks(DataParams(root=str(comp)), MasksParams(workers=1), layout)
    before = {p: p.read_bytes() for p in sorted((tmp_path / "work").rglob("*")) if p.is_file()}

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", FULL_DISK_STAGE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("masks:")]  # (tqdm's bar)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0] == "error: disk full writing work/masks; the previous folder is intact; free space and re-run"
    after = {p: p.read_bytes() for p in sorted((tmp_path / "work").rglob("*")) if p.is_file()}
    assert after == before
    assert not [p for p in (tmp_path / "work").rglob(".*")]
    assert pd.read_csv(layout.train_index)["image_id"].tolist() == [1, 2]


def test_errors_with_their_own_arguments_cross_process_boundaries() -> None:
    """A worker's error reaches the parent whole: unpickling DataError(message) used to fail and break the pool."""
    import pickle

    from pipeline.errors import DataError

    for e in (DiskFullError("work/masks", True, "folder"), DataError("train.json", "annotation 3", "bad bbox")):
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and str(back) == str(e)
