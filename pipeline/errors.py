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

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        # pickled by its own arguments: a worker process's error must reach the parent (a ProcessPoolExecutor that
        # cannot unpickle a result breaks, and the one-line message turns into "a worker died")
        return (type(self), (self.file, self.entry, self.problem))


class DiskFullError(UserError):
    """A write that ran out of disk space (ENOSPC, or over quota): the destination keeps its previous content and no
    temp file is left (:mod:`pipeline.io`)."""

    def __init__(self, dest: object, existed: bool, what: str = "file") -> None:
        self.dest = str(dest)
        self.existed, self.what = existed, what
        kept = f"the previous {what} is intact" if existed else f"no partial {what} was left"
        super().__init__(f"disk full writing {self.dest}; {kept}; free space and re-run")

    def __reduce__(self) -> tuple[type, tuple[str, bool, str]]:
        return (type(self), (self.dest, self.existed, self.what))  # as DataError: it crosses process boundaries


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a CLI ``main`` and turn a :class:`UserError` into a one-line message and exit status 2."""
    try:
        code = main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
