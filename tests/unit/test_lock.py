"""The lock files pin every dependency that pyproject.toml names, each to one exact version."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([a-z0-9][a-z0-9.\-]*)==([A-Za-z0-9.+!\-]+)( ; .+)?$")


def _name(requirement: str) -> str:
    """'torch>=2.2' -> 'torch' (PEP 503 normalised: lower case, runs of - _ . as -)."""
    raw = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", raw).lower()


def _pins(lock: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / lock).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"{lock}: not an exact pin: {line!r}"
        assert m.group(1) not in pins, f"{lock}: {m.group(1)} pinned twice"
        pins[m.group(1)] = m.group(2)
    return pins


def test_locks_pin_every_direct_dependency_exactly() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    dev = {_name(r) for r in project["optional-dependencies"]["dev"]}
    main, full = _pins("requirements.lock"), _pins("requirements-dev.lock")
    assert runtime <= set(main), f"requirements.lock misses {sorted(runtime - set(main))}"
    assert runtime | dev <= set(full), f"requirements-dev.lock misses {sorted(runtime | dev - set(full))}"
    # the test environment is the main one plus the dev tools: the same version of everything they share
    assert {k: v for k, v in full.items() if k in main} == main


def test_readme_and_ci_install_from_the_locks() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.+?)\n```", readme, flags=re.S)
    assert "pip install -r requirements.lock" in blocks[0] and "dvc repro" in blocks[0]
    assert "pip install -r requirements-dev.lock" in blocks[1] and "pytest" in blocks[1]
    assert "-r requirements-dev.lock" in (ROOT / ".ci" / "run").read_text()
