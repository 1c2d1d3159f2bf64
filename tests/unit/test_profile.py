"""Profiles are overlays: only the keys they change, written into params.yaml line by line (comments kept)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import REPO

from pipeline.config import load_params
from pipeline.errors import UserError
from pipeline.profile import apply_profile, main, overlay_params

PROFILES = sorted((REPO / "profiles").glob("*.yaml"))


def test_there_is_a_profile() -> None:
    assert [p.name for p in PROFILES] == ["fast.yaml"]


@pytest.mark.parametrize("profile", PROFILES, ids=[p.stem for p in PROFILES])
def test_a_profile_is_its_changes_and_applies_with_every_comment_kept(profile: Path, tmp_path: Path) -> None:
    base_text = (REPO / "params.yaml").read_text()
    base, overlay = yaml.safe_load(base_text), yaml.safe_load(profile.read_text())
    for section, keys in overlay.items():  # every key exists in params.yaml and changes its value
        assert all(k in base[section] and base[section][k] != v for k, v in keys.items()), section
    out = apply_profile(profile, REPO / "params.yaml")
    merged = yaml.safe_load(out)
    expected = {s: {**v, **overlay.get(s, {})} for s, v in base.items()}
    assert merged == expected
    # the lines the overlay does not touch are unchanged, and so is every comment
    changed = [(a, b) for a, b in zip(base_text.splitlines(), out.splitlines(), strict=True) if a != b]
    assert len(changed) == sum(len(k) for k in overlay.values())
    assert [a.partition("#")[2] for a, _ in changed] == [b.partition("#")[2] for _, b in changed]
    # the loader reads an overlay as params.yaml + its changes: code defaults are params.yaml's
    (tmp_path / "params.yaml").write_text(out)
    assert load_params(profile) == load_params(tmp_path / "params.yaml")


def test_an_overlay_key_must_exist_and_change() -> None:
    base = {"train": {"epochs": None, "folds": [0, 1]}}
    assert overlay_params(base, {"train": {"epochs": 3}}, "p.yaml") == {"train": {"epochs": 3, "folds": [0, 1]}}
    with pytest.raises(UserError, match=r"^p\.yaml: train\.epoch: not in params\.yaml"):
        overlay_params(base, {"train": {"epoch": 3}}, "p.yaml")
    with pytest.raises(UserError, match=r"^p\.yaml: train\.folds: already \[0, 1\] in params\.yaml; drop it"):
        overlay_params(base, {"train": {"folds": [0, 1]}}, "p.yaml")
    with pytest.raises(UserError, match=r"^p\.yaml: trian: not a section of params\.yaml"):
        overlay_params(base, {"trian": {"epochs": 3}}, "p.yaml")


def test_the_cli_writes_params_and_names_an_unknown_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "profiles" / "two.yaml").write_text("folds:\n  k: 2\ntrain:\n  folds: [0, 1]\n")
    monkeypatch.chdir(tmp_path)
    assert main(["two"]) == 0
    params = load_params(tmp_path / "params.yaml")
    assert params.folds.k == 2 and params.train.folds == [0, 1]
    with pytest.raises(UserError, match=r"^profiles/nope\.yaml: no such profile \(profiles/: two\)$"):
        main(["nope"])
    (tmp_path / "profiles" / "bad.yaml").write_text("train:\n  epochz: 2\n")
    before = (tmp_path / "params.yaml").read_text()
    with pytest.raises(UserError, match=r"train\.epochz: not in params\.yaml"):
        main(["bad"])
    assert (tmp_path / "params.yaml").read_text() == before  # nothing written
