"""Refresh the lock files: ``python tools/lock.py`` (about 2 minutes; needs the package registry, installs nothing).

pip resolves ``pyproject.toml`` as a fresh install would (``pip install --dry-run --ignore-installed --report``) and
every resolved distribution, direct or transitive, is pinned to its exact version:

    requirements.lock       what ``pip install -e .`` needs (the main job: ``dvc repro``)
    requirements-dev.lock   the same plus the ``dev`` extra (the tests)

The README's two set-up commands and ``.ci/run`` install from these files, then the project itself with
``--no-deps``. The CUDA runtime wheels that PyPI's Linux torch pulls (``nvidia-*``, ``cuda-*``, ``triton``) carry a
Linux x86-64 marker, so the same lock also installs on machines where torch has no such dependency.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINUX_ONLY = ("nvidia-", "cuda-", "triton")
MARKER = 'sys_platform == "linux" and platform_machine == "x86_64"'


def _normalise(name: str) -> str:
    """PEP 503 name: lower case, runs of - _ . as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve(target: str) -> list[tuple[str, str]]:
    """(name, version) of every distribution a fresh ``pip install <target>`` would install, the project excluded."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed"]
        subprocess.run([*cmd, "--report", str(report), target], cwd=ROOT, check=True)
        installs = json.loads(report.read_text())["install"]
    pins = {(_normalise(i["metadata"]["name"]), i["metadata"]["version"]) for i in installs if not i.get("is_direct")}
    return sorted(pins)


def lock_text(pins: list[tuple[str, str]], target: str) -> str:
    lines = [f"# Pinned by tools/lock.py from pyproject.toml ({target}); refresh: python tools/lock.py", ""]
    for name, version in pins:
        marker = f" ; {MARKER}" if name.startswith(LINUX_ONLY) else ""
        lines.append(f"{name}=={version}{marker}")
    return "\n".join(lines) + "\n"


def main() -> int:
    for target, out in ((".", "requirements.lock"), (".[dev]", "requirements-dev.lock")):
        text = lock_text(resolve(target), target)
        tmp = ROOT / f".{out}.tmp"
        tmp.write_text(text)
        os.replace(tmp, ROOT / out)
        print(f"{out}: {text.count(chr(10)) - 2} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
