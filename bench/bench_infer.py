"""TTA + ensemble inference: images/s and peak memory, at N and 4N test images (streaming keeps memory flat).

Writes an embedded-default test set of 4N canvases (64x84 PNGs) to a temp folder, then runs the library's
inference path on the first N and on all 4N images, each in a fresh subprocess: ``--folds`` fold models of
``cnn_default`` (random weights, the config's autocast and channels-last, wrapped as ``infer.load_member`` wraps
them), one :class:`~pipeline.infer.GroupForward` with hflip + vflip TTA (batched), an
:class:`~pipeline.infer.EnsembleForward`, :func:`~pipeline.predict.iter_logits` over a
:class:`~pipeline.data.dataset.SegDataset` read from disk (not preloaded), and each batch's argmax handed to a
:class:`~pipeline.submission.SubmissionWriter`, finalised to a CSV at the end, as ``run_ensemble`` does.

Each child reports images/s (the prediction loop alone, first batch included) and its peak resident set size
(``getrusage(RUSAGE_SELF).ru_maxrss``, the whole process: imports, models, loop and the written submission) with
its RSS after setup. If inference streams, the 4N run's peak RSS is the N run's plus only the submission's
strings.

    python bench/bench_infer.py [--images 200] [--folds 5] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script from anywhere

from pipeline.config import DemoParams, TtaConfig, load_model_config  # noqa: E402
from pipeline.data.dataset import SegDataset  # noqa: E402
from pipeline.data.demo import generate_demo  # noqa: E402
from pipeline.infer import EnsembleForward, GroupForward  # noqa: E402
from pipeline.io import read_json  # noqa: E402
from pipeline.models.registry import build_model  # noqa: E402
from pipeline.predict import SizedModel, autocast, iter_logits  # noqa: E402
from pipeline.submission import PER_CLASS, SubmissionWriter  # noqa: E402
from pipeline.tta import describe, tta_transforms  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TTA = TtaConfig(flips=["hflip", "vflip"])


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


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
    setup = peak_rss_mib()

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
        "setup_mib": setup,
        "peak_mib": peak_rss_mib(),
        "threads": torch.get_num_threads(),
        "amp": "bf16" if cfg.recipe.cpu_bf16 else "fp32",
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
        generate_demo(DemoParams(n_train=1, n_test=4 * args.images), data / "competition", data / "truth")
        rows = [run_child(n, data, args) for n in (args.images, 4 * args.images)]
    one, four = rows
    copies = len(list(tta_transforms(TTA)))
    print(
        f"model {args.model} x {args.folds} folds (random weights, {one['amp']} autocast, {one['threads']} threads), "
        f"TTA {describe(TTA)} batched ({copies} copies), batch {args.batch_size}, 64x84 images from disk; each run "
        "in a fresh process"
    )
    print(f"{'test images':>11}{'seconds':>9}{'img/s':>8}{'setup RSS MiB':>15}{'peak RSS MiB':>14}")
    for r in rows:
        print(f"{r['images']:>11}{r['seconds']:>9.1f}{r['img_s']:>8.1f}{r['setup_mib']:>15.0f}{r['peak_mib']:>14.0f}")
    print(
        f"4x / 1x test images: peak RSS {four['peak_mib'] / one['peak_mib']:.3f}x "
        f"(+{four['peak_mib'] - one['peak_mib']:.0f} MiB for {four['images'] - one['images']} more images)"
    )


if __name__ == "__main__":
    main()
