"""TTA + ensemble inference: images/s and peak memory, at N and 4N test images (streaming keeps memory flat).

Writes an embedded-default test set of 4N canvases (64x84 PNGs) to a temp folder, then runs the library's
inference path on the first N and on all 4N images, each in a fresh subprocess: ``--folds`` fold models of
``cnn_default`` (random weights, the config's autocast and channels-last, wrapped as ``load_member`` wraps
them), one :class:`~pipeline.ensemble.members.GroupForward` with hflip + vflip TTA (batched), an
:class:`~pipeline.ensemble.members.EnsembleForward`, :func:`~pipeline.predict.iter_logits` over a
:class:`~pipeline.data.dataset.SegDataset` read from disk (not preloaded), and each batch's argmax handed to a
:class:`~pipeline.submission.writer.SubmissionWriter`, finalised to a CSV at the end, as ``run_ensemble`` does.

Each child reports images/s (the prediction loop alone, first batch included) and its resident set size (RSS,
from ``/proc/self/status``): after setup (imports, models, writer) it resets the kernel's peak-RSS mark
(``/proc/self/clear_refs``; the peak ``getrusage`` reports too) and records the RSS, so the peak read after the
loop and the finalised submission is inference's own. If inference streams, the 4N run's peak exceeds the N run's
by no more than the submission's strings.

    python bench/bench_infer.py [--images 200] [--folds 5] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script from anywhere

from rss import reset_peak_rss, rss_mib  # noqa: E402  (bench/ is the script's folder, first on sys.path)

from pipeline.config import DemoParams, TtaConfig, load_model_config  # noqa: E402
from pipeline.data.dataset import SegDataset  # noqa: E402
from pipeline.data.demo import generate_demo  # noqa: E402
from pipeline.ensemble.members import EnsembleForward, GroupForward  # noqa: E402
from pipeline.io import read_json  # noqa: E402
from pipeline.models.registry import build_model  # noqa: E402
from pipeline.predict import SizedModel, autocast, iter_logits  # noqa: E402
from pipeline.submission.format import PER_CLASS  # noqa: E402
from pipeline.submission.writer import SubmissionWriter  # noqa: E402
from pipeline.tta import describe, tta_transforms  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TTA = TtaConfig(flips=["hflip", "vflip"])


@torch.no_grad()
def child(args: argparse.Namespace) -> dict[str, Any]:
    """Predict the first ``args.n`` test images of ``args.data`` in this (fresh) process; report."""
    comp = Path(args.data) / "competition"
    images = [comp / "images" / im["file_name"] for im in read_json(comp / "test.json")["images"]][: args.n]
    classes = read_json(Path(args.data) / "truth" / "classes.json")
    cfg = load_model_config(REPO / "configs" / "models" / f"{args.model}.yaml")
    device = torch.device("cpu")
    models = []
    for fold in range(args.folds):
        torch.manual_seed(fold)
        model = build_model(cfg, len(classes)).eval()
        if cfg.recipe.channels_last:
            model = model.to(memory_format=torch.channels_last)
        models.append(SizedModel(model, tuple(cfg.input_size) if cfg.resize == "resize" else None))
    ensemble = EnsembleForward([GroupForward(models, TTA, "prob", batched=True)], [1.0], "prob")
    ds = SegDataset(images, None, None, preload=False)
    writer = SubmissionWriter(classes, PER_CLASS)
    amp_ctx = lambda: autocast(device, cfg.recipe.amp, cfg.recipe.cpu_bf16)  # noqa: E731
    setup_peak = rss_mib("VmHWM")
    reset_peak_rss()  # from here the peak is inference's: setup's transients (imports, models) no longer count
    before = rss_mib()

    t0 = time.perf_counter()
    for idx, logp in iter_logits(ensemble, ds, device, args.batch_size, amp_ctx=amp_ctx):  # as run_ensemble calls it
        pred = logp.argmax(1).to(torch.uint8).numpy()  # (B, H, W) class indices
        for j, i in enumerate(idx.tolist()):
            writer.add(PER_CLASS.image_key(i + 1), pred[j])
    seconds = time.perf_counter() - t0
    writer.finalize(Path(args.data) / f"submission_{args.n}.csv")
    return {
        "images": len(ds),
        "seconds": seconds,
        "img_s": len(ds) / seconds,
        "before_mib": before,
        "peak_mib": rss_mib("VmHWM"),
        "process_peak_mib": max(setup_peak, rss_mib("VmHWM")),
        "threads": torch.get_num_threads(),
        "amp": "bf16 autocast" if cfg.recipe.cpu_bf16 else "fp32, no autocast",
    }


def run_child(n: int, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    argv = ["--child", "--n", str(n), "--data", str(data), "--folds", str(args.folds)]
    argv += ["--batch-size", str(args.batch_size), "--model", args.model]
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"run with {n} images failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=200, help="N: the runs predict N and 4N test images")
    ap.add_argument("--folds", type=int, default=5, help="fold models in the ensemble")
    ap.add_argument("--batch-size", type=int, default=64, help="images per batch (infer.batch_size)")
    ap.add_argument("--model", default="cnn_default", help="configs/models/<name>.yaml")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        generate_demo(
            DemoParams(n_train=1, n_test=4 * args.images, test_digit_share=0.6), data / "competition", data / "truth"
        )
        rows = [run_child(n, data, args) for n in (args.images, 4 * args.images)]
    one, four = rows
    copies = len(list(tta_transforms(TTA)))
    print(
        f"model {args.model} x {args.folds} folds (random weights, {one['amp']}, {one['threads']} threads), "
        f"TTA {describe(TTA)} batched ({copies} copies), batch {args.batch_size}, 64x84 images from disk; each run "
        "in a fresh process"
    )
    print("RSS in MiB: before = after setup; peak = during inference; process peak = setup included")
    head = f"{'test images':>11}{'seconds':>9}{'img/s':>8}{'before':>9}{'peak':>8}"
    print(f"{head}{'peak - before':>15}{'process peak':>14}")
    for r in rows:
        print(
            f"{r['images']:>11}{r['seconds']:>9.1f}{r['img_s']:>8.1f}{r['before_mib']:>9.0f}{r['peak_mib']:>8.0f}"
            f"{r['peak_mib'] - r['before_mib']:>15.0f}{r['process_peak_mib']:>14.0f}"
        )
    grow = (four["peak_mib"] - four["before_mib"]) - (one["peak_mib"] - one["before_mib"])
    print(
        f"4x / 1x test images: peak RSS {four['peak_mib'] / one['peak_mib']:.3f}x, process peak "
        f"{four['process_peak_mib'] / one['process_peak_mib']:.3f}x; inference memory (peak - before) "
        f"{grow:+.0f} MiB for {four['images'] - one['images']} more images"
    )


if __name__ == "__main__":
    main()
