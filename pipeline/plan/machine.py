"""The machine the plan sizes the training for: device, memory, cores, and a measured training step.

The step is measured, not estimated: the candidate model and its optimiser are built by the training loop's own
:func:`pipeline.training.setup.build_optimisation` at the candidate input size and batch, fed real training images
through the training transform and loader, and a few of the loop's steps (forward, loss, :meth:`Optimisation.step`)
are timed (under the recipe's autocast: bf16 on CPU when ``cpu_bf16``), after two untimed warm-up steps
(the first steps allocate memory and pick kernels). Validation is timed the same way: forward passes of whole
validation images through :func:`pipeline.predict.iter_logits`, what the training loop's ``evaluate`` runs.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STARTUP_MODULES = ("torch", "timm", "segmentation_models_pytorch", "albumentations")
WARMUP_STEPS = 2


@dataclasses.dataclass(frozen=True)
class Machine:
    """Where training will run."""

    device: str  # "cpu" or "cuda"
    device_name: str
    device_count: int
    device_memory_gib: float | None  # per CUDA device; None on CPU
    memory_gib: float  # host RAM
    cpu_cores: int  # cores this process may use
    threads: int  # torch intra-op threads training uses
    startup_seconds: float  # importing torch, timm, SMP and albumentations (what every training process pays)


@dataclasses.dataclass(frozen=True)
class StepTiming:
    """One candidate's measured costs."""

    model: str  # the model config's name
    input_size: tuple[int, int]
    batch_size: int
    step_seconds: float  # one training step: loading + forward + backward + optimizer (trimmed mean of the timed)
    eval_image_seconds: float  # validation per image: forward and the epoch's metrics (confusion, Boundary IoU)
    build_seconds: float  # building the model
    steps: int  # timed steps
    probe_seconds: float  # wall time of the whole probe of this candidate
    save_seconds: float = 0.0  # one checkpoint write (model, EMA, optimiser, scheduler; fsync'd), as each epoch does


def host_memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):  # not POSIX
        return 0.0


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def describe_machine(device: str = "auto", threads: int = 0) -> Machine:
    """The device training would use for ``train.device`` and ``train.threads``; times the heavy imports."""
    t0 = time.perf_counter()
    already = all(m in sys.modules for m in STARTUP_MODULES)
    import albumentations  # noqa: F401
    import segmentation_models_pytorch  # noqa: F401
    import timm  # noqa: F401
    import torch

    startup = time.perf_counter() - t0
    if already:  # imported earlier in this process (tests): a fresh training process still pays it
        startup = 0.0
    if threads > 0:
        torch.set_num_threads(threads)
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        props = torch.cuda.get_device_properties(0)
        return Machine(
            device="cuda",
            device_name=props.name,
            device_count=torch.cuda.device_count(),
            device_memory_gib=round(props.total_memory / 2**30, 1),
            memory_gib=round(host_memory_gib(), 1),
            cpu_cores=cpu_cores(),
            threads=torch.get_num_threads(),
            startup_seconds=round(startup, 2),
        )
    return Machine(
        device="cpu",
        device_name="cpu",
        device_count=1,
        device_memory_gib=None,
        memory_gib=round(host_memory_gib(), 1),
        cpu_cores=cpu_cores(),
        threads=torch.get_num_threads(),
        startup_seconds=round(startup, 2),
    )


class OutOfMemory(Exception):
    """The candidate batch does not fit in device memory."""


def _probe_context(cfg: Any, model_name: str, num_classes: int, device: Any, multilabel: bool = False) -> Any:
    """A single-process training :class:`~pipeline.training.context.Context` for the probe (it writes nothing: the
    run id only names it in messages)."""
    from pipeline.distributed import Dist
    from pipeline.paths import Layout
    from pipeline.training.context import Context, RunId

    rec = cfg.recipe
    return Context(
        run=RunId(Layout(), model_name, 0),
        device=device,
        ddp=Dist(),
        amp=rec.amp,
        cpu_bf16=rec.cpu_bf16,
        channels_last=rec.channels_last,
        batch_size=rec.batch_size,
        classes=[{"name": str(i)} for i in range(num_classes)],
        metric="miou",
        multilabel=multilabel,
    )


def _eval_seconds(cfg: Any, model: Any, images: Sequence[Path], masks: Sequence[Path], ctx: Any, sync: Any) -> float:
    """Seconds per image of the training loop's validation (:func:`pipeline.training.epoch.evaluate`: forward at
    each image's own size, confusion matrix, Boundary IoU) over ``images`` (after one untimed pass)."""
    from pipeline.data.dataset import SegDataset, build_transform
    from pipeline.training.epoch import evaluate

    val_ds = SegDataset(list(images), list(masks), build_transform(cfg, train=False))
    for _ in range(2):  # the first pass allocates; the second is timed
        sync()
        t0 = time.perf_counter()
        evaluate(model, val_ds, ctx)
        sync()
    return (time.perf_counter() - t0) / len(images)


def measure_step(  # noqa: PLR0913 - the candidate, its images and how its step is measured
    cfg: Any,
    model_name: str,
    num_classes: int,
    images: Sequence[Path],
    masks: Sequence[Path],
    device_name: str,
    steps: int = 5,
    class_weights: Sequence[float] | None = None,
    augment: Sequence[Any] | None = None,
    scratch: Path | None = None,
    multilabel: bool = False,
) -> StepTiming:
    """Time ``steps`` training steps of ``cfg`` (a :class:`~pipeline.config.ModelConfig`) on real images.

    The steps are the training loop's own: the loader (the training transform, with ``augment`` when given: the
    augmentations the plan may add, whose cost the loader pays), the model, AdamW, schedule, scaler and loss from
    :func:`pipeline.training.setup.build_optimisation`, the batch moved by :meth:`Context.inputs`, and
    :meth:`Optimisation.step` (backward, clipping, optimiser, EMA) under the recipe's autocast; each timed step runs
    from fetching its batch to the end of the optimiser step, and the step time is the mean without the slowest (one
    stalled by another process). ``images``/``masks`` are cycled to fill ``(2 + steps)`` batches; validation is timed
    with the loop's own ``evaluate`` (forward at each image's own size, then the confusion matrix and Boundary IoU)
    on one batch of them. One checkpoint write of the optimisation's state is timed into an unnamed file in
    ``scratch`` (the project's disk; skipped without one). ``class_weights`` are the cross-entropy's (they change no
    cost; kept so the probe builds the loss the run will), and so is ``multilabel`` (bit-field masks).

    Raises:
        OutOfMemory: the batch does not fit on the CUDA device.
    """
    import torch
    from torch.utils.data import DataLoader

    from pipeline.data.dataset import SegDataset, build_transform
    from pipeline.training.setup import build_optimisation

    t_probe = time.perf_counter()
    if class_weights is not None:
        cfg = dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, class_weights=list(class_weights)))
    rec = cfg.recipe
    device = torch.device("cuda" if device_name == "cuda" and torch.cuda.is_available() else "cpu")
    ctx = _probe_context(cfg, model_name, num_classes, device, multilabel)
    need = rec.batch_size * (WARMUP_STEPS + steps)
    reps = -(-need // max(1, len(images)))
    loaded = cfg if augment is None else dataclasses.replace(cfg, recipe=dataclasses.replace(rec, augment=augment))
    train_ds = SegDataset(
        (list(images) * reps)[:need], (list(masks) * reps)[:need], build_transform(loaded, train=True, seed=0)
    )
    loader = DataLoader(train_ds, batch_size=rec.batch_size, shuffle=False, drop_last=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    try:
        t0 = time.perf_counter()
        opt = build_optimisation(cfg, ctx, steps_per_epoch=WARMUP_STEPS + steps)
        sync()
        build = time.perf_counter() - t0
        times = _time_steps(opt, loader, ctx, sync)
        model = opt.eval_model
        model.eval()
        n_val = min(len(images), rec.batch_size)
        eval_image = _eval_seconds(cfg, model, list(images)[:n_val], list(masks)[:n_val], ctx, sync)
        save = _save_seconds(opt.state_dict(), scratch) if scratch is not None else 0.0
    except torch.cuda.OutOfMemoryError as e:
        raise OutOfMemory(str(e)) from None
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return StepTiming(
        model=model_name,
        input_size=tuple(cfg.input_size),  # type: ignore[arg-type]
        batch_size=rec.batch_size,
        step_seconds=trimmed_mean(times),
        eval_image_seconds=eval_image,
        build_seconds=build,
        steps=steps,
        probe_seconds=time.perf_counter() - t_probe,
        save_seconds=save,
    )


def _time_steps(opt: Any, loader: Any, ctx: Any, sync: Any) -> list[float]:
    """Seconds of each training step after the warm-up, each from fetching its batch to the end of the step."""
    opt.net.train()
    times = []
    batches = iter(loader)
    for i in range(len(loader)):
        sync()
        t0 = time.perf_counter()
        batch = next(batches)
        opt.step(opt.loss(*ctx.inputs(batch), ctx.autocast), i)
        sync()
        if i >= WARMUP_STEPS:
            times.append(time.perf_counter() - t0)
    return times


def trimmed_mean(times: Sequence[float]) -> float:
    """The mean without the slowest (a step stalled by another process); the mean of the rest is what an epoch of
    many steps costs, where the median would leave out their spread.

    >>> trimmed_mean([0.30, 0.28, 0.29, 0.33, 1.5])
    0.3
    >>> trimmed_mean([0.2])
    0.2
    """
    kept = sorted(times)[:-1] if len(times) > 1 else list(times)
    return round(sum(kept) / len(kept), 9)


def _save_seconds(state: dict[str, Any], scratch: Path) -> float:
    """Seconds to write ``state`` as training writes a checkpoint (torch.save, flush, fsync), into an unnamed file."""
    import tempfile

    import torch

    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=scratch) as f:
        t0 = time.perf_counter()
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
        return time.perf_counter() - t0
