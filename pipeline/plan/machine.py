"""The machine the plan sizes the training for: device, memory, cores, and a measured training step.

The step is measured, not estimated: the candidate model is built through the registry at the candidate input size
and batch, fed real training images through the training transform and loader, and a few forward + backward +
AdamW steps are timed (under the recipe's autocast: bf16 on CPU when ``cpu_bf16``), after two untimed warm-up steps
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
    step_seconds: float  # one training step: loading + forward + backward + optimizer (median of the timed)
    eval_image_seconds: float  # validation forward per image
    build_seconds: float  # building the model
    steps: int  # timed steps
    probe_seconds: float  # wall time of the whole probe of this candidate


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


def measure_step(  # noqa: PLR0915 - the timed steps read in order: build, warm up, time train, time val
    cfg: Any,
    model_name: str,
    num_classes: int,
    images: Sequence[Path],
    masks: Sequence[Path],
    device_name: str,
    steps: int = 5,
    class_weights: Sequence[float] | None = None,
) -> StepTiming:
    """Time ``steps`` training steps of ``cfg`` (a :class:`~pipeline.config.ModelConfig`) on real images.

    ``images``/``masks`` are cycled to fill ``(2 + steps)`` batches; validation is timed on one batch of them at
    their own size (the training loop validates whole images).

    Raises:
        OutOfMemory: the batch does not fit on the CUDA device.
    """
    import torch
    from torch.utils.data import DataLoader

    from pipeline.data.dataset import SegDataset, build_transform, normalize
    from pipeline.losses import WeightedLoss
    from pipeline.models.optim import param_groups
    from pipeline.models.registry import build_model
    from pipeline.predict import autocast, iter_logits

    t_probe = time.perf_counter()
    rec = cfg.recipe
    device = torch.device("cuda" if device_name == "cuda" and torch.cuda.is_available() else "cpu")
    need = rec.batch_size * (WARMUP_STEPS + steps)
    reps = -(-need // max(1, len(images)))
    train_ds = SegDataset(
        (list(images) * reps)[:need], (list(masks) * reps)[:need], build_transform(cfg, train=True, seed=0)
    )
    loader = DataLoader(train_ds, batch_size=rec.batch_size, shuffle=False, drop_last=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    try:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        model = build_model(cfg, num_classes).to(device)
        if rec.channels_last:
            model = model.to(memory_format=torch.channels_last)
        sync()
        build = time.perf_counter() - t0
        optimizer = torch.optim.AdamW(param_groups(model, rec.lr, rec.weight_decay, rec.layer_decay), lr=rec.lr)
        criterion = WeightedLoss(rec.loss, class_weights).to(device)
        model.train()
        times = []
        it = iter(loader)
        for i in range(WARMUP_STEPS + steps):
            sync()
            t0 = time.perf_counter()
            batch = next(it)
            x = normalize(batch["image"].to(device))
            y = batch["mask"].to(device)
            if rec.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, rec.amp, rec.cpu_bf16):
                loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if rec.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), rec.grad_clip)
            optimizer.step()
            sync()
            if i >= WARMUP_STEPS:
                times.append(time.perf_counter() - t0)
        model.eval()
        n_val = min(len(images), rec.batch_size)
        val_ds = SegDataset(list(images)[:n_val], None, build_transform(cfg, train=False))
        amp = lambda: autocast(device, rec.amp, rec.cpu_bf16)  # noqa: E731
        for _ in iter_logits(model, val_ds, device, rec.batch_size, amp_ctx=amp, channels_last=rec.channels_last):
            pass  # warm-up: the first eval pass allocates
        sync()
        t0 = time.perf_counter()
        for _ in iter_logits(model, val_ds, device, rec.batch_size, amp_ctx=amp, channels_last=rec.channels_last):
            pass
        sync()
        eval_image = (time.perf_counter() - t0) / n_val
    except torch.cuda.OutOfMemoryError as e:
        raise OutOfMemory(str(e)) from None
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return StepTiming(
        model=model_name,
        input_size=tuple(cfg.input_size),  # type: ignore[arg-type]
        batch_size=rec.batch_size,
        step_seconds=sorted(times)[len(times) // 2],  # the median: one step stalled by another process is noise
        eval_image_seconds=eval_image,
        build_seconds=build,
        steps=steps,
        probe_seconds=time.perf_counter() - t_probe,
    )
