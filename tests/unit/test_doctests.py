"""The worked examples in docstrings (``>>>``) are tests too: every module of ``pipeline/`` that has one runs here."""

from __future__ import annotations

import doctest
import importlib

import pytest
from helpers import REPO

MODULES = sorted(
    ".".join(p.relative_to(REPO).with_suffix("").parts)
    for p in (REPO / "pipeline").rglob("*.py")
    if ">>>" in p.read_text()
)


def test_modules_with_examples_are_found() -> None:
    assert {"pipeline.metrics", "pipeline.repeats"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_worked_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, result
