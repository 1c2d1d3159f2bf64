"""The ``plan`` stage: fingerprint + machine + rules + measured step -> ``work/plan.yaml``.

For each model config in ``train.models``: a planned config (no ``decoder``, e.g. ``auto``) tries the device's
candidates (``plan.cpu_models`` / ``plan.gpu_models``) in order and keeps the first whose measured step lets
``plan.min_epochs`` fit its share of the budget (else the last, shrunk); a full config is planned on its own
architecture. The rules fill every key its file does not set; epochs (or, where even ``min_epochs`` does not fit,
samples per epoch) are sized from the measured step so the whole training fits ``plan.budget_minutes``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import Augment, ModelConfig, Params, from_dict, to_dict
from pipeline.errors import UserError
from pipeline.io import safe_join
from pipeline.labels import multilabel_masks
from pipeline.paths import Layout, weights_files
from pipeline.plan import budget as bud
from pipeline.plan import rules
from pipeline.plan.apply import (
    PLAN_INFER_KEYS,
    explicit_keys,
    fixed_config,
    is_planned,
    line,
    merge_choices,
    read_config_data,
    recipe_keys,
    record,
    show,
    write_plan,
)
from pipeline.plan.fingerprint import Fingerprint, compute_fingerprint, sample_rows
from pipeline.plan.machine import Machine, OutOfMemory, StepTiming, describe_machine, measure_step


def find_weights(cfg: ModelConfig, weights_dir: str) -> tuple[str | None, str]:
    """A local weights file for the encoder (``<weights_dir>/<encoder>.safetensors|.pth``) or the local Hugging
    Face cache; nothing is downloaded. Returns the ``pretrained`` value and why."""
    for path in weights_files(weights_dir, cfg.encoder):
        if path.is_file():
            return str(path), f"local weights {path} for {cfg.encoder}: fine-tuning from them"
    from pipeline.models.pretrained import resolve_pretrained

    try:
        found = resolve_pretrained(dataclasses.replace(cfg, pretrained="cache"))
    except UserError:
        found = None
    if found is not None:
        return "cache", f"weights for {cfg.encoder} in the local Hugging Face cache ({found}): fine-tuning from them"
    return None, (
        f"no weights for {cfg.encoder} in {weights_dir}/ or the local Hugging Face cache: training from scratch "
        "(nothing is downloaded)"
    )


@dataclasses.dataclass(frozen=True)
class Second:
    """What a second sizing of a candidate changes: the batch (:func:`pipeline.plan.rules.batch_for_steps`) and the
    geometry (:func:`pipeline.plan.rules.scale_for_steps`); ``None`` keeps the rule's own."""

    batch: rules.Choice | None = None
    geometry: rules.Geometry | None = None


def plan_choices(
    fp: Fingerprint,
    device: str,
    base: dict[str, Any],
    base_source: str,
    explicit: dict[str, Any],
    work_images: int,
    weights_dir: str,
    second: Second = Second(),
) -> tuple[list[rules.Choice], rules.Geometry]:
    """Every rule's choice for one candidate config (epochs and augmentations apart: they need the measured step),
    in the order they depend on each other."""
    geometry = second.geometry or rules.choose_geometry(fp, device, rules.fixed_size_multiple({**base, **explicit}))
    size = explicit.get("input_size", geometry.input_size)
    batch_choice = second.batch or rules.choose_batch(size, device, work_images)
    batch = explicit.get("recipe.batch_size", batch_choice.value)
    base_lr = base.get("recipe", {}).get("lr", 2e-3)
    choices = [*geometry.choices, batch_choice, rules.choose_lr(base_lr, batch, base_source)]
    choices += rules.choose_loss(fp, base.get("recipe", {}).get("loss", [{"name": "ce", "weight": 1.0}]))
    choices += rules.choose_sampling(fp, geometry, work_images, batch, recipe_keys())
    arch = from_dict(ModelConfig, {**base, **{k: v for k, v in explicit.items() if "." not in k}}, base_source)
    if "pretrained" not in explicit:
        value, why = find_weights(arch, weights_dir)
        choices.append(rules.Choice("pretrained", value, why))
    return choices, geometry


def probe_images(layout: Layout, params: Params, n: int) -> tuple[list[Path], list[Path]]:
    index = pd.read_csv(layout.train_index)
    rows = index.iloc[sample_rows(len(index), n, params.plan.seed)]
    root = params.data.images_path
    images = [safe_join(root, str(f)) for f in rows["file_name"]]
    return images, [layout.mask_path(int(i)) for i in rows["image_id"]]


def timed(  # noqa: PLR0913 - the candidate and where it is measured
    cfg: ModelConfig,
    name: str,
    num_classes: int,
    layout: Layout,
    params: Params,
    device: str,
    augment: Sequence[Any] | None = None,
) -> tuple[ModelConfig, StepTiming]:
    """Measure ``cfg``'s step (its loader with ``augment``: what the plan may add); on a CUDA out-of-memory, halve
    the batch (down to 2) and measure again."""
    while True:
        images, masks = probe_images(layout, params, cfg.recipe.batch_size * 2)
        try:
            return cfg, measure_step(
                cfg,
                name,
                num_classes,
                images,
                masks,
                device,
                params.plan.probe_steps,
                cfg.recipe.class_weights,
                augment=augment,
                scratch=layout.scratch_dir,
                multilabel=multilabel_masks(layout.mask_summary),
            )
        except OutOfMemory:
            if cfg.recipe.batch_size <= rules.MIN_BATCH:
                raise UserError(
                    f"{name}: a batch of {cfg.recipe.batch_size} at {list(cfg.input_size)} does not fit in device "
                    "memory; set a smaller input_size in its model config"
                ) from None
            half = max(rules.MIN_BATCH, cfg.recipe.batch_size // 2)
            cfg = dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, batch_size=half))


def probe_augment(cfg: ModelConfig, fp: Fingerprint, params: Params, explicit: Any) -> list[Augment] | None:
    """The augmentations the probe's loader runs: the most the plan may add (those of a training of
    ``plan.max_epochs``), so their cost is in the measured step; ``None`` (the config's own) when they are explicit."""
    if "recipe.augment" in explicit:
        return None
    value = rules.choose_augment(fp, cfg.input_size, params.plan.max_epochs).value
    return [from_dict(Augment, a, "plan: recipe.augment") for a in value]


@dataclasses.dataclass
class Sized:
    """One candidate after the probe: its config, records, timing, work, epochs and whether it fits."""

    name: str
    cfg: ModelConfig
    records: list[dict[str, Any]]
    timing: StepTiming
    work: bud.Work
    costs: bud.Costs
    epochs: int
    fits: bool
    geometry: rules.Geometry
    probed: ModelConfig  # the config as probed, before epochs and augmentations (what a re-sizing starts from)
    probe_records: list[dict[str, Any]]

    @property
    def steps(self) -> int:
        """Round 1's optimiser steps per fold."""
        return self.epochs * self.work.steps(1)


def size_epochs(
    cfg: ModelConfig,
    work: bud.Work,
    costs: bud.Costs,
    seconds: float,
    params: Params,
    explicit: dict[str, Any],
    epochs_param: int | None,
    records: list[dict[str, Any]],
) -> tuple[ModelConfig, bud.Work, int, bool]:
    """Round-1 epochs for ``seconds`` (recorded in ``records``); samples per epoch cut when even
    ``plan.min_epochs`` does not fit and the recipe has ``samples_per_epoch``."""
    pp = params.plan
    if epochs_param is not None or "recipe.epochs" in explicit:
        e = epochs_param if epochs_param is not None else int(explicit["recipe.epochs"])
        source = "params.yaml train.epochs (explicit)" if epochs_param is not None else "the config file (explicit)"
        fits = bud.total_seconds(work, costs, e) <= seconds
        why = f"the budget would allow {bud.fitting_epochs(work, costs, seconds)}"
        records.append(record("recipe.epochs", e, source, why))
        return cfg, work, e, fits
    fit = bud.fitting_epochs(work, costs, seconds)
    e = min(pp.max_epochs, max(pp.min_epochs, fit))
    fits = fit >= pp.min_epochs
    per = bud.split(work, costs, e)
    why = f"{fit} epochs fit {seconds / 60:.1f} min at {costs.step:.3f} s a step"
    why += f" ({per['seconds'] / 60:.1f} min predicted)"
    if fit > pp.max_epochs:
        why = f"{fit} would fit; capped at plan.max_epochs ({per['seconds'] / 60:.1f} min predicted)"
    if not fits and "samples_per_epoch" in recipe_keys() and "recipe.samples_per_epoch" not in explicit:
        samples = bud.fitting_samples(work, costs, seconds, e)
        if samples >= work.batch_size:
            work = dataclasses.replace(work, samples_per_epoch=samples)
            cfg = dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, samples_per_epoch=samples))
            why2 = f"{pp.min_epochs} whole epochs do not fit: {samples} samples per epoch do"
            records.append(record("recipe.samples_per_epoch", samples, "plan", why2))
            fits = True
            why = "plan.min_epochs, with fewer samples per epoch (see recipe.samples_per_epoch)"
    if not fits:
        why = f"over budget: not even plan.min_epochs ({pp.min_epochs}) fit {seconds / 60:.1f} min"
    records.append(record("recipe.epochs", e, "plan", why))
    cfg = dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, epochs=e))
    if pp.hold_budget and pp.min_epochs <= fit <= pp.max_epochs and "recipe.budget_seconds" not in explicit:
        held = round(e * bud.epoch_seconds(work, costs, 1), 1)
        why = (
            f"the {e} epochs' predicted seconds a fold: after each epoch the run's epochs are re-sized to end on it "
            "(plan.hold_budget)"
        )
        records.append(record("recipe.budget_seconds", held, "plan", why))
        cfg = dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, budget_seconds=held))
    return cfg, work, e, fits


@dataclasses.dataclass(frozen=True)
class Target:
    """The entry of ``train.models`` being planned: its file, the keys it sets, the classes, its share of the budget
    (``seconds_for(probe_seconds)``)."""

    src: str
    explicit: dict[str, Any]
    num_classes: int
    seconds_for: Any
    folds: int  # folds trained: len(train.folds), or fewer (rules.folds_for_steps)


def size_candidate(
    cand: str,
    base: dict[str, Any],
    fp: Fingerprint,
    machine: Machine,
    layout: Layout,
    params: Params,
    target: Target,
    second: Second = Second(),
) -> Sized:
    """One candidate config planned for ``target``, its step measured and its epochs sized; ``second`` overrides the
    batch or geometry rule's choice (the steps rules' second pass)."""
    src, explicit, num_classes = target.src, target.explicit, target.num_classes
    base_src = str(Layout().model_config(cand))
    k = params.folds.k
    n_fit = fp.images - int(round(fp.images / k))
    choices, geometry = plan_choices(
        fp, machine.device, base, base_src, explicit, n_fit, params.plan.weights_dir, second
    )
    # one training process per device (folds in parallel, or DDP within a fold) shares the cores
    choices.append(rules.choose_workers(machine.device, machine.cpu_cores, max(1, machine.device_count)))
    merged, records = merge_choices(base, choices, explicit, src)
    cfg = from_dict(ModelConfig, merged, f"{src} planned on {base_src}")
    cfg, timing = timed(
        cfg, cand, num_classes, layout, params, machine.device, probe_augment(cfg, fp, params, explicit)
    )
    work = bud.Work(
        images=fp.images,
        test_images=fp.test_images if params.pseudo.rounds > 0 else 0,
        k=k,
        folds=target.folds,
        rounds=1 + params.pseudo.rounds,
        batch_size=cfg.recipe.batch_size,
        samples_per_epoch=getattr(cfg.recipe, "samples_per_epoch", None),
        later_epochs=params.pseudo.epochs,
    )
    costs = bud.Costs(
        timing.step_seconds,
        timing.eval_image_seconds,
        machine.startup_seconds,
        fp.read_seconds,
        timing.build_seconds,
        timing.save_seconds,
    )
    probed = Sized(cand, cfg, [], timing, work, costs, 0, False, geometry, cfg, records)
    return resize(probed, target.folds, fp, params, target)


def resize(sized: Sized, folds: int, fp: Fingerprint, params: Params, target: Target) -> Sized:
    """``sized``'s probed config with its epochs (and the augmentations that follow from them) sized for ``folds``
    folds sharing its budget: no new probe."""
    base_src = str(Layout().model_config(sized.name))
    # from the probed epoch size: a cut of samples per epoch that an earlier sizing (more folds) needed is not kept
    work = dataclasses.replace(
        sized.work, folds=folds, samples_per_epoch=getattr(sized.probed.recipe, "samples_per_epoch", None)
    )
    records = list(sized.probe_records)
    seconds = target.seconds_for(sized.timing.probe_seconds)
    cfg, work, epochs, fits = size_epochs(
        sized.probed, work, sized.costs, seconds, params, target.explicit, params.train.epochs, records
    )
    aug = rules.choose_augment(fp, cfg.input_size, epochs)
    paste = rules.choose_copy_paste(fp, epochs, epochs * work.steps(1))
    merged, late = merge_choices(to_dict(cfg), [aug, paste], target.explicit, target.src)
    cfg = from_dict(ModelConfig, merged, f"{target.src} planned on {base_src}")
    return dataclasses.replace(sized, cfg=cfg, records=records + late, work=work, epochs=epochs, fits=fits)


def fold_count(sized: Sized, fp: Fingerprint, params: Params, target: Target) -> tuple[int, str]:
    """How many of ``train.folds`` train (:func:`pipeline.plan.rules.folds_for_steps`), from ``sized``'s probe."""
    most = len(params.train.folds)
    steps = {}
    for n in range(1, most + 1):
        s = resize(sized, n, fp, params, target)
        steps[n] = s.steps
    return rules.folds_for_steps(steps, params.plan.fold_steps)


def with_note(sized: Sized, key: str, note: str) -> Sized:
    """``sized`` with ``note`` added to the why of its record of ``key``."""
    records = [
        {**r, "why": f"{r['why']}; {note}", "line": line(r["key"], r["value"], r["source"], f"{r['why']}; {note}")}
        if r["key"] == key
        else r
        for r in sized.records
    ]
    return dataclasses.replace(sized, records=records)


def plan_model(
    name: str,
    fp: Fingerprint,
    machine: Machine,
    layout: Layout,
    params: Params,
    num_classes: int,
    seconds_for: Any,
    folds: int | None = None,
) -> tuple[Sized, list[str], tuple[int, str]]:
    """Plan one entry of ``train.models``: try its candidates until one fits. Returns it, the candidates tried, and
    how many folds train and why (``folds``: already decided by an earlier entry; ``None``: decide here).

    Unless the epochs are set explicitly, a candidate's first sizing decides the folds
    (:func:`pipeline.plan.rules.folds_for_steps`, no new probe), and :func:`steps_rules` then sizes it again where a
    fold is still left too few optimiser steps on a CPU."""
    path = layout.model_config(name)
    data = read_config_data(path)
    explicit = explicit_keys(data)
    src = str(Layout().model_config(name))  # relative to the project, as the plan records it
    if is_planned(data):
        candidates = params.plan.gpu_models if machine.device == "cuda" else params.plan.cpu_models
    else:
        candidates = [name]
    epochs_free = params.train.epochs is None and "recipe.epochs" not in explicit
    tried: list[str] = []
    sized = None
    count = (len(params.train.folds), "every fold of train.folds")
    for cand in candidates:
        base = read_config_data(layout.model_config(cand)) if cand != name else data
        if is_planned(base):
            raise UserError(
                f"plan candidate {cand!r}: {Layout().model_config(cand)} is a planned config, not a full one"
            )
        target = Target(src, explicit, num_classes, seconds_for, folds or len(params.train.folds))
        sized = size_candidate(cand, base, fp, machine, layout, params, target)
        if folds is None:
            count = decide_folds(sized, fp, params, target, epochs_free)
            target = dataclasses.replace(target, folds=count[0])
            sized = resize(sized, count[0], fp, params, target)
        if epochs_free:

            def again(second: Second, cand: str = cand, base: dict[str, Any] = base, target: Target = target) -> Sized:
                return size_candidate(cand, base, fp, machine, layout, params, target, second)

            sized = steps_rules(sized, explicit, machine.device, fp, again)
        tried.append(cand)
        if sized.fits:
            break
    assert sized is not None  # candidates is never empty (a PlanParams list of at least the fallback)
    if folds is not None:
        count = (folds, f"as {params.train.models[0]}'s plan decided")
    return sized, tried, count


def steps_rules(sized: Sized, explicit: dict[str, Any], device: str, fp: Fingerprint, again: Any) -> Sized:
    """The CPU steps rules, in turn, each measured anew by ``again(Second(...))`` (a new probe) and kept only where
    the measurement bears its premise out: a smaller batch (:func:`pipeline.plan.rules.batch_for_steps`, kept by
    :func:`pipeline.plan.rules.keep_smaller_batch`), then, at the smallest batch, smaller whole images
    (:func:`pipeline.plan.rules.scale_for_steps`, kept by :func:`pipeline.plan.rules.keep_smaller_input`). An
    explicit batch, input size or size policy turns its rule off."""
    if "recipe.batch_size" not in explicit:
        smaller = rules.batch_for_steps(device, sized.steps, sized.work.batch_size)
        if smaller is not None:
            second = again(Second(batch=smaller))
            keep, why = rules.keep_smaller_batch(sized.epochs, sized.timing, second.epochs, second.timing)
            sized = second if keep else with_note(sized, "recipe.batch_size", why)
    if "input_size" in explicit or "resize" in explicit:
        return sized
    scaled = rules.scale_for_steps(fp, sized.geometry, device, sized.steps, sized.work.batch_size)
    if scaled is None:
        return sized
    kept = next(r for r in sized.records if r["key"] == "recipe.batch_size")
    second = again(Second(batch=rules.Choice(kept["key"], kept["value"], kept["why"]), geometry=scaled))
    keep, why = rules.keep_smaller_input(sized.steps, sized.timing, second.steps, second.timing)
    return second if keep else with_note(sized, "input_size", why)


def decide_folds(sized: Sized, fp: Fingerprint, params: Params, target: Target, epochs_free: bool) -> tuple[int, str]:
    """The fold count for ``sized``: :func:`fold_count`, unless the epochs are explicit or ``plan.fold_steps`` is 0."""
    n = len(params.train.folds)
    if params.plan.fold_steps == 0:
        return n, "plan.fold_steps is 0: every fold of train.folds trains"
    if not epochs_free:
        return n, "the epochs are set explicitly: every fold of train.folds trains (fewer would not add steps)"
    return fold_count(sized, fp, params, target)


def disabled_plan(fp: Fingerprint, layout: Layout, params: Params) -> dict[str, Any]:
    models = {}
    for name in params.train.models:
        cfg = fixed_config(name, layout, params.plan.fallback)
        planned = is_planned(read_config_data(layout.model_config(name)))
        src = str(Layout().model_config(name))
        where = f"{params.plan.fallback} with {src} over it" if planned else src
        models[name] = {
            "base": params.plan.fallback if planned else name,
            "config": to_dict(cfg),
            "keys": [f"plan.enabled is false: {where}, as written"],
        }
    infer = {
        k: {"value": None, "source": "plan.enabled: false", "why": "the documented default"} for k in PLAN_INFER_KEYS
    }
    return {"enabled": False, "fingerprint": fp.to_dict(), "models": models, "infer": infer}


def planned_infer(geometry: rules.Geometry, raw_params: dict[str, Any]) -> dict[str, Any]:
    """The inference keys the plan chooses (the TTA candidates for the geometry), each with its value, its source and
    its line; a key set in params.yaml (``raw_params``, as written) wins and the line says what the plan would set."""
    infer: dict[str, Any] = {}
    raw_infer = (raw_params.get("infer") or {}) if isinstance(raw_params, dict) else {}
    for c in rules.choose_tta(geometry):
        key = c.key.removeprefix("infer.")
        if raw_infer.get(key) is not None:
            v = raw_infer[key]
            infer[key] = {
                "value": v,
                "source": "params.yaml (explicit)",
                "line": line(c.key, v, "params.yaml (explicit)", f"the plan would set {show(c.value)}"),
            }
        else:
            infer[key] = {"value": c.value, "source": "plan", "line": line(c.key, c.value, "plan", c.why)}
    return infer


def make_plan(params: Params, layout: Layout, raw_params: dict[str, Any], started: float = 0.0) -> dict[str, Any]:
    """The plan for ``params`` (``raw_params``: params.yaml as written, to tell explicit keys); writes plan.yaml.
    ``started``: seconds the stage had already run (its imports, :func:`pipeline.clock.process_seconds`), charged to
    the budget with the probes."""
    t_start = time.perf_counter() - started
    pp = params.plan
    fp = compute_fingerprint(params.data, layout, pp.fingerprint_images, pp.seed)
    if not pp.enabled:
        plan = disabled_plan(fp, layout, params)
        write_plan(layout, plan)
        return plan
    machine = describe_machine(params.train.device, params.train.threads)
    num_classes = len(fp.classes)
    budget_s = pp.budget_minutes * 60
    n_models = len(params.train.models)

    models: dict[str, Any] = {}
    sized_all: list[Sized] = []
    n_folds, folds_why = len(params.train.folds), ""
    for i, name in enumerate(params.train.models):
        spent = time.perf_counter() - t_start

        def seconds_for(this_probe: float, spent: float = spent, i: int = i) -> float:
            # the budget left once this probe is paid and every later model's probe (about as long) too
            left = budget_s - spent - this_probe * (n_models - i)
            return max(0.0, left / (n_models - i))

        sized, tried, count = plan_model(
            name, fp, machine, layout, params, num_classes, seconds_for, None if i == 0 else n_folds
        )
        if i == 0:
            n_folds, folds_why = count
        sized_all.append(sized)
        models[name] = {
            "base": sized.name,
            "candidates_tried": tried,
            "keys": [r["line"] for r in sized.records],
            "timing": dataclasses.asdict(sized.timing),
            "config": to_dict(sized.cfg),
        }
        for r in sized.records:
            if r["key"] == "pretrained":
                models[name]["normalisation"] = rules.choose_normalisation(fp, r["value"] is not None).why

    infer = planned_infer(sized_all[0].geometry, raw_params)
    probe_s = sum(s.timing.probe_seconds for s in sized_all)
    splits = {n: bud.split(s.work, s.costs, s.epochs) for n, s in zip(models, sized_all)}
    training = sum(v["seconds"] for v in splits.values())
    plan_s = time.perf_counter() - t_start
    predicted = plan_s + training
    plan = {
        "enabled": True,
        "budget": {
            "minutes": pp.budget_minutes,
            "probe_seconds": round(probe_s, 1),
            "plan_seconds": round(plan_s, 1),
            "training_seconds": round(training, 1),
            "predicted_seconds": round(predicted, 1),
            "predicted_minutes": round(predicted / 60, 2),
            "within_budget": predicted <= budget_s * 1.0001,
            "per_model": splits,
        },
        "machine": dataclasses.asdict(machine),
        "fingerprint": fp.to_dict(),
        "folds": {"trained": list(params.train.folds)[:n_folds], "of": list(params.train.folds), "why": folds_why},
        "models": models,
        "infer": infer,
    }
    write_plan(layout, plan)
    return plan
