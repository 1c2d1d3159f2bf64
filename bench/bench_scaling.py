"""Scaling table (issue 18 item 3): time and peak RSS of each stage at 1x, 2x, 4x the images and 2x, 4x the side.

For each scale it makes the project of ``bench/project.py`` in its own folder: the embedded demo with N train and N
test canvases (one digit each; N = ``--images`` times the image scale, the side ``--height`` x ``--width`` times the
side scale). Then each stage runs through its real library function, each (stage, scale) in a fresh interpreter
(the stage's imports only; ``--threads`` torch threads and ``OMP_NUM_THREADS``), as the DVC stage would:

- ``masks``: :func:`pipeline.data.masks.build_masks` (one worker process: its peak is the ``workers`` column);
- ``folds``: :func:`pipeline.data.folds.build_folds` (2 folds; it reads the index only, so its data ratio counts
  images, not pixels);
- ``train epoch`` and ``train_fold``: :func:`pipeline.train.train_fold` on fold 0 with ``train.epochs: 1`` and
  ``cnn_default`` (``--tiny``: its tiny variant) at ``input_size`` = the canvas, so the model sees every pixel;
  ``train epoch`` is the one ``train_one_epoch`` call inside it, ``train_fold`` the whole call (loaders, the
  epoch, validation, the checkpoint, the out-of-fold probabilities);
- ``OOF fit``, ``test inference`` and ``run_ensemble``: :func:`pipeline.infer.run_ensemble` with one random-weight
  checkpoint per fold (``infer.tta: auto`` over hflip, ``infer.calibrate``, weights fitted, cross-fitted);
  ``OOF fit`` is its ``plan_ensemble`` call (every OOF image predicted per TTA set, the choices), ``test
  inference`` its ``predict_test`` call (the test set streamed into the submission), ``run_ensemble`` the whole
  call (also loading the members, scoring and the ledger).

A piece inside a call is measured by wrapping the function the stage looks up (``pipeline.train.train_one_epoch``,
``pipeline.infer.plan_ensemble``, ``pipeline.infer.predict_test``), in the child only; the stage code is not changed.
Each measured span resets the kernel's peak-RSS mark when it starts (``bench/rss.py``), so its peak is its own, and
the span around it keeps its peak (the mark is read into every open span before each reset). ``start`` is the
process's RSS when the span starts (the interpreter and the stage's imports: about 850 MiB once torch, timm and SMP are
in), which the peak includes; ``grown`` is peak - start, what the stage itself added.

Ratios are against the 1x row of the same stage. The data ratio is the stage's measured images times the pixels of
one image against 1x (the train epoch drops the last partial batch, so its images are what it trained on), times the
TTA copies of an image for the test pass (the OOF fit chooses the set, which with random weights differs by scale).
A time ratio above 1.3 x the data ratio is flagged super-linear, when both runs take 0.5 s or more (shorter times are
mostly process start and noise on shared cores; the margin is the noise of one run on 2 shared cores, about 30%).

Reading it (measured 2026-12-03 and, after the fix below, 2026-12-04, at the defaults on 2 quiet cores):

- ``OOF fit`` grew faster than its images up to ~400 images at 64x84 (peak 1.27-1.46x at 4x images over four runs;
  61 s at 400 images), through ``infer.calibrate``: :func:`pipeline.ensemble.fit.fit_temperature` gathered the first
  2M OOF pixels into (N, C) float32 arrays and evaluated the NLL over all of them ~25 times a fit, for 3 fits. It now
  draws a fixed-size sample spread over every image (at most 1M pixels) and sums the NLL in chunks: 4x images peak
  1.081x, 16.4 s at 400 images (2026-12-04).
- The rest of the growth of the OOF fit and test inference peaks (under 1.1x) is glibc keeping freed blocks:
  with ``MALLOC_MMAP_THRESHOLD_=131072`` the test pass is 995 vs 1016 MiB at 1x and 4x images.
- Random weights make the OOF fit choose hflip at some scales: the test pass then does twice the work per image,
  which the data ratio counts.
- The training peak grows with the side (activations of a batch: linear in its pixels), not with the image count.
- A 1x run of about a second varies by ~30% between runs (the test pass at 1x took 1.02-1.77 s over four runs), so a
  2x figure can pass 1.3x the data while 4x does not (2x images 2.62x, 4x images 3.20x in one run): noise, not a
  trend.

    python bench/bench_scaling.py [--images 100] [--scales 1,2,4] [--sides 2,4] [--out FILE] [--work DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere
sys.path.insert(0, str(REPO / "bench"))

# Only light imports here: every child process runs this module, and what it imports is in the RSS it measures.
from project import (  # noqa: E402
    FOLDS,
    FOLDS_PARAMS,
    MASKS,
    MODEL,
    demo_params,
    model_config,
    project_params,
    random_checkpoints,
)
from rss import reset_peak_rss, rss_mib  # noqa: E402

from pipeline.config import ModelConfig  # noqa: E402
from pipeline.io import write_text  # noqa: E402
from pipeline.paths import Layout  # noqa: E402

SUPER_LINEAR = 1.3  # a time ratio above this x the data ratio is flagged
# a ratio is judged only when both runs take this long: shorter ones are mostly process start and noise on shared
# cores (masks at 100 images takes 0.2-0.3 s; at 400 it once took 1.65 s against its usual 0.88 s)
JUDGED_SECONDS = 0.5
# row label -> whether its work grows with the pixels of an image (folds reads the index only)
STAGES = {
    "masks": True,
    "folds": False,
    "train epoch": True,
    "train_fold": True,
    "OOF fit": True,
    "test inference": True,
    "run_ensemble": True,
}


@dataclasses.dataclass(frozen=True)
class Scale:
    """One run: ``images`` train (and test) canvases of ``height`` x ``width``, in ``folder`` of the work dir."""

    name: str
    folder: str
    images: int
    height: int
    width: int


def scales_of(images: int, height: int, width: int, image_scales: list[int], side_scales: list[int]) -> list[Scale]:
    """The 1x run first, then the image scales at the base side, then the side scales at the base count."""
    out = [Scale("1x", "x1", images, height, width)]
    out += [Scale(f"{k}x images", f"images{k}", k * images, height, width) for k in image_scales if k != 1]
    out += [Scale(f"{k}x side", f"side{k}", images, k * height, k * width) for k in side_scales if k != 1]
    return out


# --------------------------------------------------------------------------------------------------------------
# In the child: measured spans


class Meter:
    """Wall seconds and peak RSS (MiB) of nested spans of this process, by name."""

    def __init__(self) -> None:
        self.spans: dict[str, dict[str, Any]] = {}
        self._open: list[dict[str, Any]] = []

    def _read_peak(self) -> None:
        hwm = rss_mib("VmHWM")
        for s in self._open:
            s["peak_mib"] = max(s["peak_mib"], hwm)

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[dict[str, Any]]:
        self._read_peak()  # the open spans keep the peak so far: the reset below starts the mark again
        reset_peak_rss()
        s = {"start_mib": rss_mib(), "peak_mib": 0.0}
        self._open.append(s)
        t0 = time.perf_counter()
        try:
            yield s
        finally:
            s["seconds"] = time.perf_counter() - t0
            self._read_peak()
            self._open.pop()
            self.spans[name] = s

    def wrap(
        self, module: ModuleType, attr: str, name: str, read: Callable[[Any], dict[str, Any]] | None = None
    ) -> None:
        """Measure each call of ``module.attr`` as the stage makes it as span ``name``; ``read`` takes figures for
        the span (its image count) from the call's result."""
        fn = getattr(module, attr)

        @functools.wraps(fn)
        def measured(*args: Any, **kwargs: Any) -> Any:
            with self.span(name) as s:
                out = fn(*args, **kwargs)
                s.update(read(out) if read is not None else {})
                return out

        setattr(module, attr, measured)


@dataclasses.dataclass(frozen=True)
class Job:
    """What a child needs: the scale's project folder, its canvas side, the model variant, torch threads."""

    root: Path
    height: int
    width: int
    tiny: bool
    threads: int

    def cfg(self) -> ModelConfig:
        return model_config(self.height, self.width, self.tiny)


def oof_images(layout: Layout) -> int:
    from pipeline.data.folds import read_folds

    return int(read_folds(layout)["fold"].isin(FOLDS).sum())


def run_masks(meter: Meter, job: Job) -> None:
    from pipeline.data.masks import build_masks

    with meter.span("masks") as s:
        summary = build_masks(project_params(job.root).data, MASKS, Layout(job.root))
    s["images"] = summary["images"]
    # the pool's worker, joined when the pool shut down (the kernel reports the largest waited-for child)
    s["workers_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def run_folds(meter: Meter, job: Job) -> None:
    from pipeline.data.folds import build_folds

    with meter.span("folds") as s:
        folds, _ = build_folds(FOLDS_PARAMS, Layout(job.root))
    s["images"] = len(folds)


def run_train(meter: Meter, job: Job) -> None:
    import pipeline.train as train

    params, layout = project_params(job.root), Layout(job.root)
    tp = dataclasses.replace(params.train, epochs=1, threads=job.threads)
    meter.wrap(train, "train_one_epoch", "train epoch", read=lambda out: {"images": out[1]})  # (loss, images, skipped)
    with meter.span("train_fold") as s:
        train.train_fold(job.cfg(), MODEL, 0, layout, params.data, tp, progress=False, metric=params.metric.name)
    s["images"] = len(train.fold_split(layout, params.data, 0).train_images)


def run_infer(meter: Meter, job: Job) -> None:
    import torch

    import pipeline.infer as infer
    from pipeline.store import spilled_bytes
    from pipeline.tta import tta_transforms

    params, layout = project_params(job.root), Layout(job.root)
    random_checkpoints(layout, job.cfg())  # over the trained fold 0: every scale infers with the same kind of model
    torch.set_num_threads(job.threads)
    # the copies of each image the chosen TTA set puts through the model: the test pass's work is images x copies
    meter.wrap(infer, "plan_ensemble", "OOF fit", read=lambda plan: {"copies": len(tta_transforms(plan.ttas[MODEL]))})
    meter.wrap(infer, "predict_test", "test inference", read=lambda n: {"images": n})
    with meter.span("run_ensemble") as s:
        report = infer.run_ensemble(params, layout, write_leaderboard=False)
    s["images"] = report["test_images"]
    tta, oof, test = report["per_model"][MODEL]["tta"], meter.spans["OOF fit"], meter.spans["test inference"]
    oof["images"], test["copies"] = oof_images(layout), oof.pop("copies")
    oof["note"] = f"TTA chosen: {tta}; {spilled_bytes() / 2**20:.0f} MiB spilled to disk"
    test["note"] = f"TTA {tta}: {test['copies']} cop{'y' if test['copies'] == 1 else 'ies'} an image"


RUNNERS: dict[str, Callable[[Meter, Job], None]] = {
    "masks": run_masks,
    "folds": run_folds,
    "train": run_train,
    "infer": run_infer,
}


def child(stage: str, job: Job) -> dict[str, Any]:
    """Run ``stage`` on ``job``: its spans, and for infer the machine line (bench_gpu's; it imports torch, which an
    infer process holds already, so it is asked there, after the measurements)."""
    meter = Meter()
    RUNNERS[stage](meter, job)
    out: dict[str, Any] = {"spans": meter.spans}
    if stage == "infer":
        from bench_gpu import machine_line

        out["machine"] = machine_line("cpu")
    return out


# --------------------------------------------------------------------------------------------------------------
# In the parent: the projects, the children, the table


def run_fresh(stage: str, job: Job, env: dict[str, str]) -> dict[str, Any]:
    """Run ``stage`` in a fresh interpreter; what :func:`child` returned there."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", stage, "--root", str(job.root)]
    cmd += ["--height", str(job.height), "--width", str(job.width), "--threads", str(job.threads)]
    cmd += ["--tiny"] if job.tiny else []
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{stage} in {job.root} failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(scale: Scale, job: Job, env: dict[str, str]) -> tuple[dict[str, dict[str, Any]], str]:
    """Make the scale's demo in ``job.root`` (afresh), then run each stage in a fresh interpreter: the spans by name
    and the machine line."""
    from pipeline.data.demo import generate_demo

    shutil.rmtree(job.root, ignore_errors=True)  # a kept folder of an earlier run: training would resume, not train
    params = project_params(job.root)
    generate_demo(demo_params(scale.images, scale.height, scale.width), params.data.root, params.data.truth_dir)
    spans: dict[str, dict[str, Any]] = {}
    machine = ""
    for stage in RUNNERS:
        t0 = time.perf_counter()
        out = run_fresh(stage, job, env)
        spans.update(out["spans"])
        machine = out.get("machine", machine)
        print(f"{scale.name}: {stage} done ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
    return spans, machine


def row_figures(stage: str, scale: Scale, span: dict[str, Any], base: Scale, base_span: dict[str, Any]) -> dict:
    """The ratios of one row against the 1x row of the same stage, and whether its time is super-linear."""
    pixels = scale.height * scale.width / (base.height * base.width) if STAGES[stage] else 1.0
    data = span["images"] / base_span["images"] * pixels * span.get("copies", 1) / base_span.get("copies", 1)
    time_x = span["seconds"] / base_span["seconds"]
    judged = min(span["seconds"], base_span["seconds"]) >= JUDGED_SECONDS and scale != base
    return {
        "data": data,
        "time": time_x,
        "rss": span["peak_mib"] / base_span["peak_mib"],
        "super_linear": judged and time_x > SUPER_LINEAR * data,
    }


def render(scales: list[Scale], results: dict[str, dict[str, dict[str, Any]]], head: str) -> tuple[str, list[str]]:
    """The markdown table (after ``head``) and the rows flagged super-linear."""
    lines = [
        head,
        "",
        "| stage | scale | images | side | data × | seconds | time × | start MiB | peak MiB | grown MiB | RSS × "
        "| workers MiB | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    flagged, base = [], scales[0]
    for stage in STAGES:
        for scale in scales:
            span, base_span = results[scale.name][stage], results[base.name][stage]
            f = row_figures(stage, scale, span, base, base_span)
            note = span.get("note", "")
            if f["super_linear"]:
                flagged.append(f"{stage} at {scale.name}: time {f['time']:.2f}x for data {f['data']:.2f}x")
                note = f"**super-linear** {note}".strip()
            workers = f"{span['workers_mib']:.0f}" if "workers_mib" in span else "-"
            lines.append(
                f"| {stage} | {scale.name} | {span['images']} | {scale.height}x{scale.width} | {f['data']:.2f} | "
                f"{span['seconds']:.2f} | {f['time']:.2f} | {span['start_mib']:.0f} | {span['peak_mib']:.0f} | "
                f"{span['peak_mib'] - span['start_mib']:.0f} | "
                f"{f['rss']:.3f} | {workers} | {note} |"
            )
    lines.append("")
    lines.append(
        f"super-linear (time × above {SUPER_LINEAR} × data ×, both runs {JUDGED_SECONDS} s or more): "
        + ("; ".join(flagged) if flagged else "none")
    )
    four = [s for s in scales if s.name == "4x images"]
    if four:
        ratios = [
            f"{stage} {results[four[0].name][stage]['peak_mib'] / results[base.name][stage]['peak_mib']:.3f}"
            for stage in ("OOF fit", "test inference")
        ]
        lines.append(f"peak RSS at 4x images / 1x: {', '.join(ratios)} (flat: <= 1.1)")
    return "\n".join(lines) + "\n", flagged


def header(command: str, machine: str, threads: int, tiny: bool, loads: tuple[float, float]) -> str:
    model = f"{MODEL}{' (tiny variant)' if tiny else ''}"
    return (
        f"`{command}` on {machine}; load average {loads[0]:.2f} at the start, {loads[1]:.2f} at the end; "
        f"{threads} torch thread(s) per process, each (stage, scale) in a fresh process.\n\n"
        f"Demo canvases, one digit each, N train and N test; {model} at input_size = the canvas, 2 folds; train: "
        "fold 0, 1 epoch; infer: random weights, TTA auto over hflip, calibrate. Ratios against 1x; data × = images × "
        "pixels per image (images only for folds; x TTA copies for the test pass)."
    )


def parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=100, help="N at 1x: train and test canvases")
    ap.add_argument("--scales", default="1,2,4", help="image-count scales (comma-separated)")
    ap.add_argument("--sides", default="2,4", help="side scales at N images (comma-separated; '' for none)")
    ap.add_argument("--height", type=int, default=64, help="canvas height at 1x")
    ap.add_argument("--width", type=int, default=84, help="canvas width at 1x")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (and OMP_NUM_THREADS) of every process")
    ap.add_argument("--tiny", action="store_true", help="cnn_default's tiny variant (a smoke run)")
    ap.add_argument("--work", type=Path, default=None, help="make and keep the projects in DIR/<scale>")
    ap.add_argument("--out", type=Path, default=None, help="also write the table (markdown) to this file")
    ap.add_argument("--child", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        job = Job(args.root, args.height, args.width, args.tiny, args.threads)
        print(json.dumps(child(args.child, job)))
        return 0

    scales = scales_of(args.images, args.height, args.width, parse_ints(args.scales), parse_ints(args.sides))
    command = shlex.join(["python", "bench/bench_scaling.py", *(sys.argv[1:] if argv is None else argv)])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    load_start = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        # a temp folder on the project's disk (the OOF probabilities spill there), unless --work keeps them
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(dir=REPO)))
        results = {}
        for s in scales:
            job = Job(work / s.folder, s.height, s.width, args.tiny, args.threads)
            results[s.name], machine = measure(s, job, env)
    loads = (load_start, os.getloadavg()[0])
    table, _ = render(scales, results, header(command, machine, args.threads, args.tiny, loads))
    print(table)
    if args.out is not None:
        write_text(args.out, table)  # atomic
    return 0


if __name__ == "__main__":
    sys.exit(main())
