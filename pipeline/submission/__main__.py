"""``python -m pipeline.submission validate ...``: see :mod:`pipeline.submission.cli`."""

import sys

from pipeline.errors import run_cli
from pipeline.submission.cli import main

if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
