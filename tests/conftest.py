"""Puts ``tests/`` on ``sys.path`` so every test can ``import helpers``, whatever pytest's import mode."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
