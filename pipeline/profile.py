"""Profiles: overlays of ``params.yaml`` that hold only the keys they change (``profiles/<name>.yaml``).

``python -m pipeline.profile fast`` writes ``params.yaml`` with the overlay applied, line by line, so every comment
and every key the overlay leaves alone stay as they are; ``dvc repro`` then runs the profile, and ``git checkout
params.yaml`` goes back. ``--print`` shows the result instead of writing it. An overlay key that ``params.yaml``
does not have, or that sets the value it already has, is an error naming it: a profile is exactly its changes.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import DEFAULT_PARAMS, Params, from_dict, read_yaml
from pipeline.errors import UserError, run_cli
from pipeline.io import write_text
from pipeline.paths import Layout


def overlay_params(base: dict[str, Any], overlay: dict[str, Any], where: str) -> dict[str, Any]:
    """``base`` with each ``section.key`` of ``overlay`` replaced; unknown or unchanged keys are errors."""
    merged = {s: dict(v) if isinstance(v, dict) else v for s, v in base.items()}
    for section, keys in (overlay or {}).items():
        if not isinstance(keys, dict) or not isinstance(base.get(section), dict):
            raise UserError(f"{where}: {section}: not a section of params.yaml (an overlay holds section: key: value)")
        for key, value in keys.items():
            if key not in base[section]:
                raise UserError(f"{where}: {section}.{key}: not in params.yaml; a profile only changes existing keys")
            if base[section][key] == value:
                raise UserError(f"{where}: {section}.{key}: already {value!r} in params.yaml; drop it from the profile")
            merged[section][key] = value
    return merged


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def apply_overlay_text(text: str, overlay: dict[str, Any], where: str) -> str:
    """``params.yaml``'s text with the overlay's values written in place (comments kept, aligned as before)."""
    lines = text.splitlines(keepends=True)
    section = None
    done: set[tuple[str, str]] = set()
    for i, line in enumerate(lines):
        top = re.match(r"^([A-Za-z_]\w*):", line)
        if top:
            section = top[1]
            continue
        m = re.match(r"^(  (\w+):)( *)([^#\n]*?)([ \t]*)(#.*)?(\n?)$", line)
        if not m or section not in overlay or m[2] not in overlay[section]:
            continue
        new = f"{m[1]} {_flow(overlay[section][m[2]])}"
        if m[6]:  # the comment stays in its column (or one space after a longer value)
            column = len(m[1]) + len(m[3]) + len(m[4]) + len(m[5])
            new = (new.ljust(column) if len(new) < column else new + " ") + m[6]
        lines[i] = new + m[7]
        done.add((section, m[2]))
    missing = [f"{s}.{k}" for s, keys in overlay.items() for k in keys if (s, k) not in done]
    if missing:
        raise UserError(f"{where}: {', '.join(missing)}: no such line in params.yaml to change")
    return "".join(lines)


def apply_profile(profile: Path, params_path: Path) -> str:
    """The text of ``params_path`` with ``profile`` applied, checked: it parses to the merged params, strictly."""
    overlay = read_yaml(profile) or {}
    text = params_path.read_text(encoding="utf-8")
    merged = overlay_params(yaml.safe_load(text), overlay, str(profile))
    out = apply_overlay_text(text, overlay, str(profile))
    if yaml.safe_load(out) != merged:
        raise UserError(f"{profile}: the overlay could not be written into {params_path} line by line; edit it by hand")
    from_dict(Params, merged, f"{params_path} + {profile}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("name", help="profiles/<name>.yaml (or a path to an overlay file)")
    ap.add_argument("--params", default=DEFAULT_PARAMS, help=f"the params file to change (default {DEFAULT_PARAMS})")
    ap.add_argument("--print", action="store_true", help="print the result instead of writing it")
    args = ap.parse_args(argv)
    layout = Layout()
    profile = Path(args.name) if args.name.endswith((".yaml", ".yml")) else layout.profile(args.name)
    if not profile.is_file():
        known = ", ".join(sorted(p.stem for p in layout.profiles_dir.glob("*.yaml"))) or "none"
        raise UserError(f"{profile}: no such profile (profiles/: {known})")
    out = apply_profile(profile, Path(args.params))
    if args.print:
        print(out, end="")
    else:
        write_text(Path(args.params), out)
        print(f"{args.params}: {profile} applied (git checkout {args.params} to go back)")
    return 0


if __name__ == "__main__":
    run_cli(main)
