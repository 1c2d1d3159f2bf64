"""The zoo's competitions by name: generator, default and small sizes, and the submission format each expects."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from pipeline.data.zoo import aerial, attributes, manyclass, objects, scenes, silhouette, textures, thin
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
    masks: dict[str, Any] = dataclasses.field(default_factory=dict)  # the ``masks`` params it is meant for


ZOO: dict[str, Competition] = {
    c.name: c
    for c in (
        Competition("objects", objects.generate, 900, 200, (160, 40), "coloured MNIST digits on photos, RGB 96x128"),
        Competition("textures", textures.generate, 700, 150, (160, 40), "5 real textures as classes, RGB 128x160"),
        Competition("scenes", scenes.generate, 400, 100, (64, 16), "6 classes on photos, one under 1%, RGB 256x256"),
        Competition("aerial", aerial.generate, 12, 4, (4, 2), "2048x2048 tiles, ~600 small objects each, 4 classes"),
        Competition(
            "silhouette",
            silhouette.generate,
            300,
            80,
            (80, 20),
            "binary: one drawn horse per image, fine legs and tail, RGB 120x160",
            {"class_column": None},  # the sample submission is id,predicted: one row per image
        ),
        Competition("manyclass", manyclass.generate, 600, 150, (120, 30), "45 classes (shape x colour), long tail"),
        Competition("thin", thin.generate, 400, 100, (80, 20), "grayscale 160x160, vessels and wires 1-3 px wide"),
        Competition(
            "attributes",
            attributes.generate,
            600,
            150,
            (120, 30),
            "multilabel: the objects digits as 3 overlapping classes (digit, odd, loop), RGB 96x128",
            masks={"overlap": "multilabel"},
        ),
    )
}


def get(name: str) -> Competition:
    """The zoo competition ``name``; an unknown name is a one-line error listing the valid ones."""
    if name not in ZOO:
        raise UserError(f"zoo: unknown competition {name!r} (choose from {', '.join(ZOO)})")
    return ZOO[name]
