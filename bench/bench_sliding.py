"""Peak memory and time of predicting one large image: the sliding window against the whole image in one pass.

Builds ``configs/models/cnn_default.yaml`` (random weights, CPU, the config's autocast and channels-last, as
inference loads it) and predicts one random ``--size`` x ``--size`` image (2048 by default) down to its class
mask, once per mode, each mode in a fresh subprocess:

* ``whole``: the image through the model in one pass (the ``pad`` policy: padded to the stride, cropped back);
* ``sliding``: :class:`pipeline.sliding.SlidingWindow` with tiles of the config's ``input_size`` (or ``--tile``),
  ``--overlap``, Gaussian blending and ``--tile-batch`` tiles per call.

Each child measures its own resident set size (RSS, from ``/proc/self/status``): after setup (imports, model,
input image) it resets the kernel's peak-RSS mark (``/proc/self/clear_refs``; the peak ``getrusage`` reports too)
and records the RSS, so the peak read after the prediction is the prediction's own; "peak - before" is what
predicting needed on top of the set-up process. The process's overall peak (setup included) is printed too.
Seconds are the prediction alone, one run (no warm-up: both modes pay the same first-call costs).

    python bench/bench_sliding.py [--size 2048] [--overlap 0.25] [--tile-batch 16] [--tile 64 84]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script from anywhere

from rss import reset_peak_rss, rss_mib  # noqa: E402  (bench/ is the script's folder, first on sys.path)

from pipeline.config import load_model_config  # noqa: E402
from pipeline.data.dataset import normalize  # noqa: E402
from pipeline.models.registry import build_model  # noqa: E402
from pipeline.predict import SizedModel, autocast  # noqa: E402
from pipeline.sliding import SlidingWindow, tile_boxes  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 11  # the embedded default: background + 10 digits


@torch.no_grad()
def child(args: argparse.Namespace) -> dict[str, Any]:
    """One mode in this (fresh) process: set up, predict, report."""
    cfg = load_model_config(REPO / "configs" / "models" / f"{args.model}.yaml")
    torch.manual_seed(0)
    model = build_model(cfg, NUM_CLASSES).eval()
    if cfg.recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = SizedModel(model, tuple(cfg.input_size) if cfg.resize == "resize" else None)  # as load_member
    tile = (args.tile or cfg.input_size)[0], (args.tile or cfg.input_size)[1]
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (1, args.size, args.size, 3), dtype=torch.uint8, generator=g)
    x = normalize(image)  # (1, 3, H, W) float32, as iter_logits gives it to the forward in run_ensemble
    forward = model if args.child == "whole" else SlidingWindow(model, tile, args.overlap, "gaussian", args.tile_batch)
    setup_peak = rss_mib("VmHWM")
    reset_peak_rss()  # from here the peak is the prediction's: setup's transients (imports, model) no longer count
    before = rss_mib()
    t0 = time.perf_counter()
    with autocast(torch.device("cpu"), cfg.recipe.amp, cfg.recipe.cpu_bf16):
        logits = forward(x).float()  # (1, C, H, W)
    mask = logits.argmax(1).to(torch.uint8)  # (1, H, W): what inference keeps of an image
    seconds = time.perf_counter() - t0
    assert mask.shape == (1, args.size, args.size)
    tiles = 1 if args.child == "whole" else len(tile_boxes(args.size, args.size, tile, args.overlap))
    return {
        "mode": args.child,
        "tiles": tiles,
        "tile": list(tile) if args.child == "sliding" else None,
        "seconds": seconds,
        "before_mib": before,
        "peak_mib": rss_mib("VmHWM"),
        "process_peak_mib": max(setup_peak, rss_mib("VmHWM")),
        "threads": torch.get_num_threads(),
        "amp": "bf16 autocast" if cfg.recipe.cpu_bf16 else "fp32, no autocast",
    }


def run_child(mode: str, argv: list[str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *argv, "--child", mode], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=2048, help="the image is size x size")
    ap.add_argument("--model", default="cnn_default", help="configs/models/<name>.yaml")
    ap.add_argument("--tile", type=int, nargs=2, metavar=("H", "W"), help="default: the config's input_size")
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--tile-batch", type=int, default=16)
    ap.add_argument("--child", choices=["whole", "sliding"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    argv = sys.argv[1:]
    rows = [run_child("sliding", argv), run_child("whole", argv)]
    s, w = rows
    print(
        f"model {args.model} (random weights, {s['amp']}, {s['threads']} threads), one {args.size}x"
        f"{args.size} image, {NUM_CLASSES} classes; sliding: tile {s['tile']}, overlap {args.overlap}, Gaussian "
        f"blend, {args.tile_batch} tiles per call; each mode in a fresh process"
    )
    print("RSS in MiB: before = after setup; peak = during the prediction; process peak = setup included")
    print(f"{'mode':<9}{'tiles':>7}{'seconds':>9}{'before':>9}{'peak':>8}{'peak - before':>15}{'process peak':>14}")
    for r in rows:
        r["delta_mib"] = r["peak_mib"] - r["before_mib"]
        print(
            f"{r['mode']:<9}{r['tiles']:>7}{r['seconds']:>9.1f}{r['before_mib']:>9.0f}{r['peak_mib']:>8.0f}"
            f"{r['delta_mib']:>15.0f}{r['process_peak_mib']:>14.0f}"
        )
    print(
        f"whole / sliding: prediction memory (peak - before) {w['delta_mib'] / max(1.0, s['delta_mib']):.1f}x, "
        f"peak RSS {w['peak_mib'] / s['peak_mib']:.2f}x, time {w['seconds'] / s['seconds']:.2f}x"
    )


if __name__ == "__main__":
    main()
