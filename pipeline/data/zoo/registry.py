"""The zoo's competitions by name: generator, default and small sizes, and the submission format each expects."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from pipeline.data.zoo import objects, textures
from pipeline.errors import UserError


@dataclasses.dataclass(frozen=True)
class Competition:
    """One zoo member. ``submission`` is the ``infer.submission`` params that match its sample submission."""

    name: str
    generate: Callable[..., dict[str, Any]]
    n_train: int
    n_test: int
    small: tuple[int, int]  # (n_train, n_test) of bench/zoo.py --small
    summary: str
    submission: dict[str, Any] = dataclasses.field(default_factory=dict)


ZOO: dict[str, Competition] = {
    c.name: c
    for c in (
        Competition("objects", objects.generate, 900, 200, (160, 40), "coloured MNIST digits on photos, RGB 96x128"),
        Competition("textures", textures.generate, 700, 150, (160, 40), "5 real textures as classes, RGB 128x160"),
    )
}


def get(name: str) -> Competition:
    """The zoo competition ``name``; an unknown name is a one-line error listing the valid ones."""
    if name not in ZOO:
        raise UserError(f"zoo: unknown competition {name!r} (choose from {', '.join(ZOO)})")
    return ZOO[name]
