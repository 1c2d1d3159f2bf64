"""User-facing errors: one line saying what is wrong, where, and how to fix it.

Library code raises :class:`UserError` (or a subclass) for problems in the user's input: a bad COCO file, an
unknown config key, a missing checkpoint. Entry points wrap ``main`` in :func:`run_cli`, which prints the message
without a traceback and exits with status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """An error in the user's input or setup, reported as one line without a traceback."""


class DataError(UserError):
    """Bad data: names the file and the offending entry."""

    def __init__(self, file: object, entry: str, problem: str) -> None:
        self.file = str(file)
        self.entry = entry
        self.problem = problem
        super().__init__(f"{self.file}: {entry}: {problem}")


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a CLI ``main`` and turn a :class:`UserError` into a one-line message and exit status 2."""
    try:
        code = main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
