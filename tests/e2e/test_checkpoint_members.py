"""``python -m pipeline.infer --checkpoint A --checkpoint B``: every checkpoint is a member with the model, fold and
round it records itself, and the report and the ledger list those members (not the params' folds)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
import torch

from pipeline import infer
from pipeline.errors import UserError
from pipeline.io import read_json

if TYPE_CHECKING:
    from e2e.conftest import Project  # tests/ is on sys.path (tests/conftest.py); annotations only

pytestmark = pytest.mark.slow


def run_infer(p: Project, tmp_path: Path, name: str, *args: str) -> tuple[Path, dict, pd.Series]:
    """Run the CLI in-process from the project folder; return the submission, the report and the ledger row."""
    out, report = tmp_path / f"{name}.csv", tmp_path / f"{name}.json"
    assert infer.main([*args, "--tta", "none", "--overlays", "0", "--output", str(out), "--report", str(report)]) == 0
    ledger = pd.read_csv(p.layout.ledger, dtype=str, keep_default_na=False)
    return out, read_json(report), ledger.iloc[-1]


def test_two_fold_checkpoints_make_a_two_member_ensemble(
    trained: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = trained
    monkeypatch.chdir(p.root)
    # copied to names that say nothing: model, fold and round must come from inside the files
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    shutil.copy2(p.layout.checkpoint(p.model, 0), a)
    shutil.copy2(p.layout.checkpoint(p.model, 1), b)

    sub, report, row = run_infer(p, tmp_path, "two", "--checkpoint", str(a), "--checkpoint", str(b))
    members = [{"model": p.model, "fold": 0, "round": 1}, {"model": p.model, "fold": 1, "round": 1}]
    assert report["members"] == members and report["folds"] == [0, 1] and report["round"] == 1
    assert row["members"] == f"{p.model}/fold0/r1 {p.model}/fold1/r1" and row["models"] == p.model
    assert row["file"] == str(sub)

    # the same two fold models through --ensemble (params: train.folds [0, 1], round 1, no TTA, one model config
    # so weight 1.0) must write the very same submission; a run that kept only one of them would not
    same, ens_report, ens_row = run_infer(p, tmp_path, "ensemble", "--ensemble")
    assert ens_report["members"] == members and ens_row["members"] == row["members"]
    assert sub.read_bytes() == same.read_bytes()
    one, one_report, one_row = run_infer(p, tmp_path, "one", "--checkpoint", str(b))
    assert one_report["members"] == [members[1]] and one_row["members"] == f"{p.model}/fold1/r1"
    assert one.read_bytes() != sub.read_bytes(), "one fold model predicted exactly like two: the test proves nothing"


def test_checkpoints_that_cannot_be_members_are_one_line_errors(trained: Project, tmp_path: Path) -> None:
    p = trained
    first = p.layout.checkpoint(p.model, 0)
    with pytest.raises(UserError, match=r"both tiny fold 0 \(rounds 1 and 1\)"):
        infer.members_from_checkpoints([first, p.layout.checkpoint(p.model, 0, which="last")])
    bare = tmp_path / "bare.pt"
    ck = torch.load(first, map_location="cpu", weights_only=True)
    torch.save({k: v for k, v in ck.items() if k not in ("fold", "round")}, bare)
    with pytest.raises(UserError, match=r"bare\.pt: the checkpoint does not record its fold, round"):
        infer.members_from_checkpoints([bare])
