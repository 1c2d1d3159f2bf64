"""How a plan merges into a model config and into the inference params, and what wins over it.

Precedence, highest first:

1. a key present in the model config file (``configs/models/<name>.yaml``; ``recipe`` and ``tta`` count key by
   key, so ``recipe: {lr: 1e-3}`` fixes the learning rate and leaves the rest of the recipe to the plan), and a
   non-null key in ``params.yaml`` (``train.epochs``, ``infer.sliding``, ...);
2. the plan (``work/plan.yaml``, when ``plan.enabled``);
3. the base config: for a *planned* config (a file without ``decoder``, such as ``configs/models/auto.yaml``) the
   config the plan chose (without a plan: ``plan.fallback``); for a full config, the file itself.

So ``plan.enabled: false`` is the fixed recipe exactly: ``auto`` is ``plan.fallback`` (``cnn_default``) plus its own
keys, a full config is what its file says, and a null inference key takes its documented default.
This module reads YAML only: the train and infer stages call it before importing torch.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import InferParams, ModelConfig, Params, Recipe, from_dict, read_yaml
from pipeline.errors import UserError
from pipeline.io import write_text
from pipeline.paths import Layout

NESTED = ("recipe", "tta")  # mappings whose keys count one by one as explicit
PLAN_INFER_KEYS = ("sliding", "tta_flips", "tta_scales")  # null in params.yaml: the plan decides
# ... and what they are without a plan (plan.enabled: false, or a plan that left one out)
UNPLANNED_INFER = {"sliding": False, "tta_flips": ["hflip", "vflip"], "tta_scales": [0.75, 1.25]}
PLAN_VERSION = 1


def recipe_keys() -> set[str]:
    """The recipe keys this build knows (a plan only sets those)."""
    return {f.name for f in dataclasses.fields(Recipe)}


def is_planned(data: dict[str, Any]) -> bool:
    """A planned config names no architecture: the plan (or ``plan.fallback``) supplies it."""
    return "decoder" not in data


def read_config_data(path: Path) -> dict[str, Any]:
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of model config keys, got {type(data).__name__}")
    return data


def explicit_keys(data: dict[str, Any]) -> dict[str, Any]:
    """The keys a config file sets, ``recipe`` and ``tta`` key by key (``recipe.lr``); values as written."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in NESTED and isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def get_dotted(data: dict[str, Any], key: str) -> Any:
    head, _, tail = key.partition(".")
    return data.get(head, {}).get(tail) if tail else data.get(head)


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    head, _, tail = key.partition(".")
    if tail:
        data.setdefault(head, {})[tail] = copy.deepcopy(value)
    else:
        data[head] = copy.deepcopy(value)


def overlay(base: dict[str, Any], explicit: dict[str, Any]) -> dict[str, Any]:
    """``base`` with every explicit key set over it (nested recipe/tta keys one by one)."""
    data = copy.deepcopy(base)
    for key, value in explicit.items():
        set_dotted(data, key, value)
    return data


def show(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1_000_000).strip().removesuffix("...").strip()


def merge_choices(
    base: dict[str, Any], choices: list[Any], explicit: dict[str, Any], explicit_source: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Apply the plan's ``choices`` (:class:`~pipeline.plan.rules.Choice`) to ``base``, explicit keys winning.

    Returns:
        The merged config data and one record per choice: key, value, source and a line saying where it came from.
    """
    data = copy.deepcopy(base)
    records = []
    for c in choices:
        if c.key in explicit:
            value, source = explicit[c.key], f"{explicit_source} (explicit)"
            why = f"the plan would set {show(c.value)}: {c.why}"
        else:
            value, source, why = c.value, "plan", c.why
            set_dotted(data, c.key, value)
        records.append(
            {"key": c.key, "value": value, "source": source, "why": why, "line": line(c.key, value, source, why)}
        )
    return overlay(data, explicit), records


def record(key: str, value: Any, source: str, why: str) -> dict[str, Any]:
    """One planned key as plan.yaml lists it."""
    return {"key": key, "value": value, "source": source, "why": why, "line": line(key, value, source, why)}


def line(key: str, value: Any, source: str, why: str = "") -> str:
    """``input_size: [64, 84] from plan: every image is 64x84 ...`` (what plan.yaml lists per key)."""
    return f"{key}: {show(value)} from {source}" + (f" ({why})" if why else "")


# --------------------------------------------------------------------------------------------------------------
# What training and inference call


def read_plan(layout: Layout) -> dict[str, Any]:
    path = layout.plan_yaml
    if not path.is_file():
        raise UserError(f"{path} not found: run the plan stage first (dvc repro plan), or set plan.enabled: false")
    data = read_yaml(path)
    if not isinstance(data, dict) or data.get("version") != PLAN_VERSION:
        raise UserError(f"{path}: not a plan of version {PLAN_VERSION}; run the plan stage again (dvc repro plan)")
    return data


def fixed_config(name: str, layout: Layout, fallback: str) -> ModelConfig:
    """The config without a plan: the file, or for a planned file ``fallback`` with the file's keys over it."""
    path = layout.model_config(name)
    data = read_config_data(path)
    if is_planned(data):
        data = overlay(read_config_data(layout.model_config(fallback)), explicit_keys(data))
    return from_dict(ModelConfig, data, str(path))


def planned_config(name: str, layout: Layout, params: Params) -> ModelConfig:
    """The model config ``name`` trains with: the plan's, with the file's explicit keys over it (see module doc).

    ``params.train.epochs``, when set, still overrides ``recipe.epochs`` in the training loop, as without a plan.
    """
    if not params.plan.enabled:
        return fixed_config(name, layout, params.plan.fallback)
    plan = read_plan(layout)
    entry = plan.get("models", {}).get(name)
    if entry is None:
        raise UserError(
            f"{layout.plan_yaml}: no plan for model {name!r} (planned: {', '.join(plan.get('models', {}))}); run the "
            "plan stage again (dvc repro plan)"
        )
    path = layout.model_config(name)
    return from_dict(ModelConfig, overlay(entry["config"], explicit_keys(read_config_data(path))), str(path))


def plan_fold_list(params: Params, layout: Layout) -> list[int] | None:
    """The folds the plan trains (``work/plan.yaml``: ``folds.trained``); ``None`` without a plan: every fold."""
    if not params.plan.enabled:
        return None
    trained = read_plan(layout).get("folds", {}).get("trained")
    return None if trained is None else [int(f) for f in trained]


def planned_folds(params: Params, layout: Layout) -> list[int]:
    """The folds of ``train.folds`` that train: every one, or the fewer the plan chose where the budget cannot give
    each enough optimiser steps (``plan.fold_steps``; the others' stages write ``skipped.txt``)."""
    trained = plan_fold_list(params, layout)
    return list(params.train.folds) if trained is None else [f for f in params.train.folds if f in trained]


def planned_params(params: Params, layout: Layout) -> Params:
    """``params`` as the plan completes them: ``train.folds`` the folds that train (:func:`planned_folds`), and the
    inference keys left null (``infer.sliding``, ``tta_flips``, ``tta_scales``) filled from the plan when
    ``plan.enabled``, else with ``UNPLANNED_INFER``. Explicit values are kept as they are."""
    folds = planned_folds(params, layout)
    if folds != list(params.train.folds):
        params = dataclasses.replace(params, train=dataclasses.replace(params.train, folds=folds))
    p = params.infer
    unset = [k for k in PLAN_INFER_KEYS if getattr(p, k) is None]
    if not unset:
        return params
    planned = read_plan(layout).get("infer", {}) if params.plan.enabled else {}
    values = {k: planned[k]["value"] if k in planned else UNPLANNED_INFER[k] for k in unset}
    checked = from_dict(InferParams, values, f"{layout.plan_yaml}: infer")  # only the unset keys are read and set
    return dataclasses.replace(params, infer=dataclasses.replace(p, **{k: getattr(checked, k) for k in unset}))


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # a value used twice is written twice, not as &id001 / *id001
        return True


def write_plan(layout: Layout, plan: dict[str, Any]) -> None:
    text = yaml.dump({"version": PLAN_VERSION, **plan}, Dumper=_NoAliases, sort_keys=False, width=120)
    write_text(layout.plan_yaml, text)
