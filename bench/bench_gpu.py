"""The GPU benchmark (issue 18 item 7): training, loader and TTA-inference throughput and peak memory per model.

Makes the zoo's ``scenes`` competition at ``--size`` (RGB, 6 classes on photographs; 512x512 by default) under a
temporary folder, its masks and 2 folds through the stage code, then for each model config of ``--models``, on fold
0's training images, with the config's own recipe at ``input_size = (size, size)``, batch ``--batch``, bf16
autocast and channels-last:

- **training images/s**, ``torch.compile`` off and on: the plan's probe of the training step
  (:func:`pipeline.plan.machine.measure_step`: the loader, forward, backward, AdamW, EMA, as ``train_fold`` steps);
- **loader images/s**: one epoch of the training loader ``train_fold`` iterates
  (:func:`pipeline.training.setup.build_loaders`, with Affine + ColorJitter) at ``--workers`` workers, nothing else
  running;
- **inference images/s** with TTA (hflip + vflip, batched: one forward over the three copies), through
  :func:`pipeline.predict.iter_logits` as ``infer`` runs it;
- **peak GPU memory** of the training step and of inference (``torch.cuda.max_memory_allocated``).

It runs on the CPU as well (``--device cpu --tiny``: the configs' ``tiny`` variants at a small size), which is how the
test suite checks that it still runs; the figures that matter are the GPU's. The GPU-against-CPU metric checks are
the ``gpu``-marked tests (``tests/e2e/test_cuda.py``), which ``bench/gpu.sh`` runs after this script.

    python bench/bench_gpu.py [--size 512] [--batch 8] [--models cnn_default,upernet_convnext,...] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere
sys.path.insert(0, str(REPO / "bench"))

from bench_loader import AUGMENT, epoch_images_per_second  # noqa: E402

from pipeline.config import (  # noqa: E402
    DataParams,
    FoldsParams,
    MasksParams,
    ModelConfig,
    TrainParams,
    TtaConfig,
    load_model_config,
    tiny_variant,
)
from pipeline.data.cache import Storage  # noqa: E402
from pipeline.data.dataset import SegDataset  # noqa: E402
from pipeline.data.folds import build_folds, fold_split  # noqa: E402
from pipeline.data.masks import build_masks  # noqa: E402
from pipeline.data.zoo import scenes  # noqa: E402
from pipeline.io import read_json, write_text  # noqa: E402
from pipeline.models.registry import build_model  # noqa: E402
from pipeline.paths import Layout  # noqa: E402
from pipeline.plan.machine import OutOfMemory, measure_step  # noqa: E402
from pipeline.predict import autocast, iter_logits  # noqa: E402
from pipeline.training.context import RunId, make_context  # noqa: E402
from pipeline.training.setup import build_loaders  # noqa: E402
from pipeline.tta import TtaForward  # noqa: E402

MODELS = "cnn_default,upernet_convnext,upernet_swin,upernet_beit"


def bench_config(name: str, size: int, batch: int, tiny: bool, compile_: bool = False) -> ModelConfig:
    """The shipped config ``name`` at ``size`` x ``size``, batch ``batch``, bf16 autocast (CUDA and CPU),
    channels-last, the augmentations of the loader figure, ``torch.compile`` as asked; trained from scratch."""
    cfg = load_model_config(REPO / "configs" / "models" / f"{name}.yaml")
    if tiny:
        cfg = tiny_variant(cfg)
    rec = dataclasses.replace(
        cfg.recipe, batch_size=batch, amp="bf16", cpu_bf16=True, channels_last=True, compile=compile_, augment=AUGMENT
    )
    return dataclasses.replace(cfg, input_size=(size, size), resize="pad", pretrained=None, recipe=rec)


def peak_mib(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float | None]:
    """``fn()`` and the peak GPU memory it allocated, in MiB (None on the CPU)."""
    if device.type != "cuda":
        return fn(), None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    return out, torch.cuda.max_memory_allocated() / 2**20


def train_rate(cfg: ModelConfig, name: str, classes: int, split: Any, device: str, steps: int) -> tuple[str, str]:
    """(training images/s, peak MiB) of the probe's step, as text ('OOM' where the batch does not fit)."""
    n = min(len(split.train_images), 2 * cfg.recipe.batch_size)
    try:
        timing, peak = peak_mib(
            torch.device(device),
            lambda: measure_step(cfg, name, classes, split.train_images[:n], split.train_masks[:n], device, steps),
        )
    except OutOfMemory:
        return "OOM", "-"
    return f"{cfg.recipe.batch_size / timing.step_seconds:.1f}", "-" if peak is None else f"{peak:.0f}"


def infer_rate(cfg: ModelConfig, classes: int, images: list[Path], device: torch.device) -> tuple[float, float | None]:
    """(images/s, peak MiB) of TTA inference (hflip + vflip, batched) over ``images``, after one untimed batch."""
    model = build_model(cfg, classes).to(device).eval()
    if cfg.recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = TtaForward(model, TtaConfig(flips=["hflip", "vflip"]), batched=True)
    ds = SegDataset(images, None, None, preload=False)
    amp = lambda: autocast(device, cfg.recipe.amp, cfg.recipe.cpu_bf16)  # noqa: E731
    batch = cfg.recipe.batch_size

    def run() -> float:
        warm = SegDataset(images[:batch], None, None, preload=False)
        for _ in iter_logits(forward, warm, device, batch, amp_ctx=amp, channels_last=cfg.recipe.channels_last):
            pass
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in iter_logits(forward, ds, device, batch, amp_ctx=amp, channels_last=cfg.recipe.channels_last):
            pass
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(images) / (time.perf_counter() - t0)

    return peak_mib(device, run)


def machine_line(device: str) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    what = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    return (
        f"{what}, torch {torch.__version__}, {datetime.date.today().isoformat()}, commit "
        f"{commit.stdout.strip() or 'unknown'}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--size", type=int, default=512, help="image side (the competition and input_size)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=48, help="training images of the generated competition")
    ap.add_argument("--models", default=MODELS, help="comma-separated configs/models names")
    ap.add_argument("--workers", type=int, default=4, help="loader workers of the loader figure")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per figure")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile figure")
    ap.add_argument("--tiny", action="store_true", help="the configs' tiny variants (a CPU smoke run)")
    ap.add_argument("--out", type=Path, default=None, help="also write the table (markdown) to this file")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA device here; run with --device cpu --tiny for a smoke run")
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        layout = Layout(root)
        data = DataParams(root=str(root / "data" / "competition"), truth_dir=str(root / "data" / "truth"))
        scenes.generate(data.root, data.truth_dir, n_train=args.images, n_test=8, height=args.size, width=args.size)
        build_masks(data, MasksParams(workers=1), layout)
        build_folds(FoldsParams(k=2, seed=0), layout)
        split = fold_split(layout, data, 0)
        classes = read_json(layout.classes_json)
        train = TrainParams(models=["bench"], folds=[0], device=args.device)
        rows = []
        for name in args.models.split(","):
            cfg = bench_config(name, args.size, args.batch, args.tiny)
            t_off, mem_train = train_rate(cfg, name, len(classes), split, args.device, args.steps)
            t_on = "-"
            if not args.no_compile:
                compiled = bench_config(name, args.size, args.batch, args.tiny, compile_=True)
                t_on = train_rate(compiled, name, len(classes), split, args.device, args.steps)[0]
            wcfg = dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, num_workers=args.workers))
            ctx = make_context(wcfg, train, RunId(layout, "bench", 0), classes, "miou", progress=False)
            loaders = build_loaders(wcfg, split, Storage(True, None, ""), ctx)
            loader = epoch_images_per_second(loaders, 1)
            del loaders
            infer, mem_infer = infer_rate(cfg, len(classes), split.val_images, device)
            rows.append(
                f"| {name} | {t_off} | {t_on} | {loader:.0f} | {infer:.1f} | {mem_train} | "
                f"{'-' if mem_infer is None else f'{mem_infer:.0f}'} |"
            )
            print(rows[-1], flush=True)
    head = (
        f"`python bench/bench_gpu.py --size {args.size} --batch {args.batch}{' --tiny' if args.tiny else ''}` on "
        f"{machine_line(args.device)}: scenes {args.size}x{args.size}, batch {args.batch}, bf16 autocast, "
        f"channels-last, from scratch; loader at {args.workers} workers with Affine + ColorJitter; TTA hflip + vflip "
        "batched.\n\n"
        "| model | train img/s | train img/s (compile) | loader img/s | infer img/s (TTA x3) | train peak MiB | "
        "infer peak MiB |\n|---|---|---|---|---|---|---|\n"
    )
    table = head + "\n".join(rows) + "\n"
    print("\n" + table)
    if args.out is not None:
        write_text(args.out, table)  # atomic


if __name__ == "__main__":
    main()
