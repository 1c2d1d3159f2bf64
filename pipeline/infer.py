"""TTA + ensemble inference and the submission: ``python -m pipeline.infer --ensemble``.

The flow, every choice made on out-of-fold (OOF) predictions and never on test truth:

1. members: the best checkpoint of every (model config, fold) of a round;
2. TTA per model config (``infer.tta: auto``): starting from no TTA, each candidate transform (hflip, vflip, each
   extra scale) is kept only if the OOF mIoU of that config rises; every candidate's OOF mIoU is reported;
3. optional per-model temperature (``calibrate``) fitted on OOF log-probabilities;
4. ensemble weights across model configs (``weights: fit``) by coordinate ascent on OOF mIoU (see
   :mod:`pipeline.ensemble`), reported beside the equal-weight result;
5. test images stream through in batches: each config averages its fold models (with its TTA) in the chosen
   space, configs are combined with their weights, the argmax goes to the submission writer as a class mask at
   the image's original size, and nothing is kept for the whole test set but the short RLE strings. With
   ``infer.sliding`` each image instead goes alone through :class:`pipeline.sliding.SlidingWindow` (overlapping
   tiles of the configs' input size, blended back at full size); the OOF predictions of steps 2-4 then do too.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.config import InferParams, ModelConfig, Params, TtaConfig, from_dict, load_params
from pipeline.data.coco import load_coco
from pipeline.data.dataset import SegDataset
from pipeline.data.folds import read_folds
from pipeline.ensemble import EPS, fit_temperature, fit_weights, temper
from pipeline.errors import UserError, run_cli
from pipeline.io import load_torch, read_mask, safe_join, write_json
from pipeline.metrics import ConfusionMatrix, mean_iou
from pipeline.models.registry import build_model
from pipeline.paths import Layout
from pipeline.plan.apply import planned_params
from pipeline.predict import SizedModel, autocast, iter_logits
from pipeline.sliding import SlidingWindow, check_window
from pipeline.submission import SubmissionFormat, SubmissionWriter, append_ledger
from pipeline.tta import TtaForward, describe


@dataclasses.dataclass
class Member:
    """One trained fold model."""

    model: str
    fold: int
    round: int
    path: Path


def find_members(layout: Layout, models: Sequence[str], folds: Sequence[int], round_: int) -> list[Member]:
    """The best checkpoints of ``models`` x ``folds`` in ``round_``; a missing one is an error saying what to run."""
    members = []
    for m in models:
        for f in folds:
            path = layout.checkpoint(m, f, round_)
            if not path.is_file():
                raise UserError(
                    f"{path} not found: train it first (dvc repro, or python -m stages.train --model {m} "
                    f"--fold {f} --round {round_})"
                )
            members.append(Member(m, f, round_, path))
    return members


def load_member(member: Member, device: torch.device) -> tuple[nn.Module, ModelConfig, list[dict[str, Any]]]:
    """Rebuild a fold model from its checkpoint (weights_only); EMA weights when it has them."""
    ck = load_torch(member.path)
    cfg = from_dict(ModelConfig, ck["config"], f"{member.path}: config")
    model = build_model(cfg, len(ck["classes"]))
    model.load_state_dict(ck["ema"] if ck.get("ema") is not None else ck["model"])
    model = model.to(device).eval()
    if cfg.recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    size = tuple(cfg.input_size) if cfg.resize == "resize" else None
    return SizedModel(model, size), cfg, ck["classes"]  # type: ignore[arg-type]


class GroupForward(nn.Module):
    """One model config's fold models with a TTA set: (B, 3, H, W) -> (B, C, H, W) log-probabilities.

    Fold models are averaged in probability or logit (log-probability) space; the temperature re-scales the
    result. Log-probabilities come out so the caller can resize them like logits.
    """

    def __init__(
        self, models: Sequence[nn.Module], tta: TtaConfig, space: str, temperature: float = 1.0, batched: bool = True
    ) -> None:
        super().__init__()
        self.models = nn.ModuleList(TtaForward(m, tta, batched) for m in models)
        self.space, self.temperature = space, temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [m(x).float() for m in self.models]
        if self.space == "prob":
            logp = torch.log(torch.stack([o.softmax(1) for o in outs]).mean(0) + EPS)
        else:
            logp = torch.stack([o.log_softmax(1) for o in outs]).mean(0).log_softmax(1)
        return (logp / self.temperature).log_softmax(1) if self.temperature != 1.0 else logp


class EnsembleForward(nn.Module):
    """Weighted combination of model-config groups: (B, 3, H, W) -> (B, C, H, W) log-probabilities."""

    def __init__(self, groups: Sequence[GroupForward], weights: Sequence[float], space: str) -> None:
        super().__init__()
        self.groups, self.space = nn.ModuleList(groups), space
        w = torch.tensor(weights, dtype=torch.float32)
        self.register_buffer("weights", w / w.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logps = torch.stack([g(x) for g in self.groups])  # (G, B, C, H, W)
        w = self.weights.view(-1, 1, 1, 1, 1)
        if self.space == "prob":
            return torch.log((logps.exp() * w).sum(0) + EPS)
        return (logps * w).sum(0).log_softmax(1)


def inference_tile(p: InferParams, cfgs: Sequence[ModelConfig]) -> tuple[int, int] | None:
    """The sliding-window tile (H, W), or ``None`` without ``infer.sliding``.

    ``infer.tile``, else the model configs' common ``input_size`` (the size they trained on): one tile is cut for
    the whole ensemble, so configs of different input sizes need ``infer.tile`` set.
    """
    if not p.sliding:
        return None
    if p.tile is not None:
        return check_window(p.tile, p.tile_overlap, p.tile_blend, p.tile_batch)
    sizes = sorted({tuple(c.input_size) for c in cfgs})
    if len(sizes) != 1:
        raise UserError(
            f"infer.tile: the model configs have different input sizes {[list(s) for s in sizes]}; set infer.tile "
            "to the tile the sliding window should cut (e.g. tile: [512, 512])"
        )
    return check_window(sizes[0], p.tile_overlap, p.tile_blend, p.tile_batch)


def windowed(forward: nn.Module, p: InferParams, tile: tuple[int, int] | None) -> nn.Module:
    """``forward`` itself, or with a ``tile`` a :class:`~pipeline.sliding.SlidingWindow` over it."""
    if tile is None:
        return forward
    return SlidingWindow(forward, tile, p.tile_overlap, p.tile_blend, p.tile_batch)


def image_batch(p: InferParams, tile: tuple[int, int] | None) -> int:
    """Images per batch: ``infer.batch_size``, or 1 through the sliding window (each image has its own full-size
    accumulator, so memory is one image's accumulator plus ``infer.tile_batch`` tiles)."""
    return p.batch_size if tile is None else 1


# --------------------------------------------------------------------------------------------------------------
# Out-of-fold analysis


@dataclasses.dataclass
class OofData:
    """Per-fold validation images of the train set (paths and ids) with their truth masks."""

    ids: dict[int, list[int]]
    images: dict[int, list[Path]]

    def truth(self, image_id: int, layout: Layout) -> np.ndarray:
        return read_mask(layout.mask_path(image_id))


def oof_data(layout: Layout, params: Params, folds: Sequence[int]) -> OofData:
    df = read_folds(layout)
    root = Path(params.data.root) / params.data.images_dir
    ids, images = {}, {}
    for f in folds:
        sel = df[df["fold"] == f]
        ids[f] = [int(i) for i in sel["image_id"]]
        images[f] = [safe_join(root, n) for n in sel["file_name"]]
    return OofData(ids, images)


def predict_oof(
    forward_by_fold: dict[int, nn.Module],
    data: OofData,
    device: torch.device,
    batch_size: int,
    amp_ctx: Any,
    limit: dict[int, int] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (image id, (C, H, W) float32 probabilities) for each fold's validation images with its model."""
    for f, forward in forward_by_fold.items():
        n = limit[f] if limit else len(data.ids[f])
        ds = SegDataset(data.images[f][:n], None, None, preload=False)
        for idx, logp in iter_logits(forward, ds, device, batch_size, amp_ctx=amp_ctx):
            probs = logp.softmax(1).cpu().numpy()
            for j, i in enumerate(idx.tolist()):
                yield data.ids[f][i], probs[j]


def oof_score(probs: Iterator[tuple[int, np.ndarray]], layout: Layout, num_classes: int) -> float:
    cm = ConfusionMatrix(num_classes)
    for image_id, p in probs:
        cm.update(p.argmax(0), read_mask(layout.mask_path(image_id)))
    return float(mean_iou(cm))


def tta_candidates(base: TtaConfig, p: InferParams) -> list[tuple[str, TtaConfig]]:
    """The greedy search's steps: each flip, then each extra scale, as an addition to the current set."""
    steps: list[tuple[str, TtaConfig]] = [
        (f, TtaConfig(flips=[f], scales=[1.0], merge=p.tta_merge)) for f in p.tta_flips
    ]
    steps += [(f"scale {s:g}", TtaConfig(flips=[], scales=[1.0, s], merge=p.tta_merge)) for s in p.tta_scales]
    return steps


def _merge_tta(a: TtaConfig, b: TtaConfig) -> TtaConfig:
    flips = list(dict.fromkeys([*a.flips, *b.flips]))
    scales = sorted(set(a.scales) | set(b.scales))
    return TtaConfig(flips=flips, scales=scales, merge=a.merge)  # type: ignore[arg-type]


def choose_tta(
    models_by_fold: dict[int, nn.Module],
    data: OofData,
    layout: Layout,
    p: InferParams,
    num_classes: int,
    device: torch.device,
    amp_ctx: Any,
    tile: tuple[int, int] | None = None,
) -> tuple[TtaConfig, list[dict[str, Any]]]:
    """Greedy TTA selection on OOF mIoU (with a ``tile``: through the sliding window); returns the chosen set and the
    score of every candidate tried."""
    total = sum(len(v) for v in data.ids.values())
    share = 1.0 if p.tta_select_images <= 0 else min(1.0, p.tta_select_images / max(1, total))
    limit = {f: max(1, int(round(len(data.ids[f]) * share))) for f in data.ids}

    def score(tta: TtaConfig) -> float:
        fwd = {f: windowed(GroupForward([m], tta, "prob", p.batched_tta), p, tile) for f, m in models_by_fold.items()}
        return oof_score(predict_oof(fwd, data, device, image_batch(p, tile), amp_ctx, limit), layout, num_classes)

    current = TtaConfig(flips=[], scales=[1.0], merge=p.tta_merge)
    best = score(current)
    report = [{"tta": "none", "oof_mIoU": best, "kept": True}]
    for name, step in tta_candidates(current, p):
        cand = _merge_tta(current, step)
        s = score(cand)
        kept = s > best
        report.append({"tta": describe(cand), "added": name, "oof_mIoU": s, "kept": kept})
        print(f"  TTA {describe(cand):<28} OOF mIoU {s:.5f} {'kept' if kept else 'dropped'}")
        if kept:
            current, best = cand, s
    return current, report


# --------------------------------------------------------------------------------------------------------------
# The whole run


@dataclasses.dataclass
class TestSet:
    ids: list[int]
    file_names: list[str]
    paths: list[Path]
    sizes: list[tuple[int, int]]


def test_set(params: Params, images_dir: str | None = None) -> TestSet:
    """The competition's test images (test.json), or every image in a folder (``--images``)."""
    if images_dir is not None:
        folder = Path(images_dir)
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".tif", ".bmp"})
        if not files:
            raise UserError(f"{folder}: no images found")
        sizes = []
        from PIL import Image

        for f in files:
            with Image.open(f) as im:
                sizes.append((im.height, im.width))
        names = [str(f.relative_to(folder)) for f in files]
        return TestSet(list(range(1, len(files) + 1)), names, files, sizes)
    root = Path(params.data.root)
    coco = load_coco(root / params.data.test_json, require_annotations=False, on_error=params.data.on_error)
    images_root = root / params.data.images_dir
    return TestSet(
        [im.id for im in coco.images],
        [im.file_name for im in coco.images],
        [safe_join(images_root, im.file_name) for im in coco.images],
        [(im.height, im.width) for im in coco.images],
    )


def resolve_device(name: str = "auto") -> torch.device:
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def run_ensemble(
    params: Params,
    layout: Layout,
    output: str | None = None,
    images_dir: str | None = None,
    checkpoints: Sequence[str] = (),
    tta_mode: str | None = None,
    overlays: int | None = None,
    write_leaderboard: bool = True,
) -> dict[str, Any]:
    """Choose TTA and weights on OOF, predict the test set streaming, write and validate the submission.

    ``write_leaderboard=False`` keeps the local-leaderboard score in the returned report only (side runs such as the
    ablation must not overwrite the stage's ``metrics/leaderboard.json``).
    """
    params = planned_params(params, layout)  # infer keys left null: the plan's sliding window and TTA candidates
    p = params.infer
    if tta_mode is not None:
        p = dataclasses.replace(p, tta=tta_mode)  # type: ignore[arg-type]
    fmt = from_dict(SubmissionFormat, p.submission, "params.yaml: infer.submission")
    device = resolve_device(params.train.device)
    round_ = p.round if p.round is not None else 1 + _pseudo_rounds(params)
    models = p.models or params.train.models
    if checkpoints:
        members = [Member(Path(c).parent.parent.name, -1, round_, Path(c)) for c in checkpoints]
    else:
        members = find_members(layout, models, params.train.folds, round_)
    t0 = time.time()

    # load every member, grouped by model config
    groups: dict[str, dict[int, nn.Module]] = {}
    cfgs: dict[str, ModelConfig] = {}
    classes: list[dict[str, Any]] = []
    for m in members:
        model, cfg, classes = load_member(m, device)
        groups.setdefault(m.model, {})[m.fold] = model
        cfgs[m.model] = cfg
    num_classes = len(classes)
    tile = inference_tile(p, list(cfgs.values()))
    amp_name = next(iter(cfgs.values())).recipe
    amp_ctx = lambda: autocast(device, amp_name.amp, amp_name.cpu_bf16)  # noqa: E731

    have_oof = not checkpoints and all(layout.oof_path(m.model, m.fold, round_).is_file() for m in members)
    data = oof_data(layout, params, params.train.folds) if have_oof else None
    report: dict[str, Any] = {
        "round": round_,
        "models": list(groups),
        "folds": list(params.train.folds),
        "space": p.space,
        "per_model": {},
    }
    if tile is not None:
        report["sliding"] = {"tile": list(tile), "overlap": p.tile_overlap, "blend": p.tile_blend}
    ttas: dict[str, TtaConfig] = {}
    temps: dict[str, float] = {}
    oof_probs: dict[str, dict[str, np.ndarray]] = {}
    for name, by_fold in groups.items():
        entry: dict[str, Any] = {}
        if p.tta == "none":
            ttas[name] = TtaConfig(flips=[], scales=[1.0])
        elif p.tta == "config":
            ttas[name] = cfgs[name].tta
        elif data is None:
            print(f"{name}: no out-of-fold predictions to choose TTA on; using the config's TTA set")
            ttas[name] = cfgs[name].tta
        else:
            print(f"{name}: choosing TTA on out-of-fold predictions")
            ttas[name], entry["tta_candidates"] = choose_tta(
                by_fold, data, layout, p, num_classes, device, amp_ctx, tile
            )
        entry["tta"] = describe(ttas[name])
        if data is not None:
            fwd = {
                f: windowed(GroupForward([m], ttas[name], "prob", p.batched_tta), p, tile) for f, m in by_fold.items()
            }
            probs = predict_oof(fwd, data, device, image_batch(p, tile), amp_ctx)
            oof = {str(i): pr.astype(np.float16) for i, pr in probs}
            oof_probs[name] = oof
            entry["oof_mIoU"] = _score_dict(oof, layout, num_classes)
            if p.calibrate:
                truth = {k: read_mask(layout.mask_path(int(k))) for k in oof}
                temps[name] = fit_temperature(oof, truth)
                oof_probs[name] = {k: temper(v, temps[name]).astype(np.float16) for k, v in oof.items()}
                entry["temperature"] = temps[name]
                entry["oof_mIoU_calibrated"] = _score_dict(oof_probs[name], layout, num_classes)
        report["per_model"][name] = entry
        print(f"{name}: TTA {entry['tta']}" + (f", OOF mIoU {entry['oof_mIoU']:.5f}" if "oof_mIoU" in entry else ""))

    names = list(groups)
    weights = [1.0 / len(names)] * len(names)
    if oof_probs:
        keys = sorted(set.intersection(*(set(v) for v in oof_probs.values())))
        truth = {k: read_mask(layout.mask_path(int(k))) for k in keys}
        per_model = [oof_probs[n] for n in names]
        if p.weights == "fit":
            weights, fitted, equal = fit_weights(per_model, truth, p.space, num_classes)
        else:
            from pipeline.ensemble import oof_miou

            equal = fitted = oof_miou(per_model, truth, weights, p.space, num_classes)
        report["oof_mIoU_equal_weights"] = equal
        report["oof_mIoU"] = fitted
        print(f"ensemble OOF mIoU: equal weights {equal:.5f}, {p.weights} weights {fitted:.5f}")
    report["weights"] = dict(zip(names, weights))
    del oof_probs

    # stream the test set
    tests = test_set(params, images_dir)
    ensemble = EnsembleForward(
        [GroupForward(list(groups[n].values()), ttas[n], p.space, temps.get(n, 1.0), p.batched_tta) for n in names],
        weights,
        p.space,
    ).to(device)
    sample = Path(params.data.root) / params.data.sample_submission
    writer = SubmissionWriter(classes, fmt, sample=sample if sample.is_file() and images_dir is None else None)
    ds = SegDataset(tests.paths, None, None, preload=False)
    overlay_n = p.overlays if overlays is None else overlays
    overlay_dir = layout.reports_dir / "overlays"
    bar = tqdm(total=len(ds), desc="infer", unit="img", mininterval=1.0)
    forward, batch = windowed(ensemble, p, tile), image_batch(p, tile)
    for idx, logp in iter_logits(forward, ds, device, batch, sizes=lambda i: tests.sizes[i], amp_ctx=amp_ctx):
        pred = logp.argmax(1).to(torch.uint8).cpu().numpy()  # (B, H, W) class indices at original size
        for j, i in enumerate(idx.tolist()):
            writer.add(fmt.image_key(tests.ids[i], tests.file_names[i]), pred[j])
            if i < overlay_n:
                _write_overlay(overlay_dir / f"{Path(tests.file_names[i]).stem}.png", tests.paths[i], pred[j])
        bar.update(len(idx))
    bar.close()
    out = Path(output or p.output)
    writer.finalize(out)
    report["submission"] = str(out)
    report["test_images"] = len(ds)
    report["seconds"] = round(time.time() - t0, 1)
    print(f"wrote {out} ({len(ds)} images, {report['seconds']} s)")

    lb = None
    truth_dir = Path(params.data.truth_dir)
    if images_dir is None and truth_dir.is_dir():
        from pipeline.leaderboard import score_submission

        lb = score_submission(out, truth_dir, Path(params.data.root) / params.data.test_json, fmt)
        report["leaderboard"] = {k: lb[k] for k in ("mIoU", "mBIoU", "aAcc")}
        if write_leaderboard:
            write_json(layout.leaderboard_json, lb)
        print(f"local leaderboard: mIoU {lb['mIoU']:.5f}, mBIoU {lb['mBIoU']:.5f}, aAcc {lb['aAcc']:.5f}")
    append_ledger(
        layout.ledger,
        {
            "file": str(out),
            "time": datetime.datetime.now().isoformat(timespec="seconds"),
            "git_commit": git_commit(),
            "models": " ".join(names),
            "folds": " ".join(map(str, params.train.folds)),
            "tta": "; ".join(f"{n}: {describe(ttas[n])}" for n in names),
            "ensemble_weights": " ".join(f"{n}={w:.3f}" for n, w in zip(names, weights)),
            "oof_miou": report.get("oof_mIoU", ""),
            "lb_miou": lb["mIoU"] if lb else "",
            "public_score": "",
        },
    )
    return report


def _score_dict(probs: dict[str, np.ndarray], layout: Layout, num_classes: int) -> float:
    return oof_score(((int(k), v) for k, v in probs.items()), layout, num_classes)


def _pseudo_rounds(params: Params) -> int:
    pseudo = getattr(params, "pseudo", None)
    return int(getattr(pseudo, "rounds", 0)) if pseudo is not None else 0


def _write_overlay(dest: Path, image_path: Path, pred: np.ndarray) -> None:
    from pipeline.io import read_image, write_png
    from pipeline.report import colorize

    image = read_image(image_path)
    color = colorize(pred)
    blend = np.where(pred[..., None] > 0, (0.5 * image + 0.5 * color).astype(np.uint8), image)
    write_png(dest, np.concatenate([image, blend], axis=1))


# --------------------------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m pipeline.infer",
        description="TTA + ensemble inference: writes a validated RLE submission, scores it on the local "
        "leaderboard when test truth exists, and adds a row to submissions/ledger.csv. After uploading, paste the "
        "public score into that row's public_score column to compare CV (oof_miou) with LB.",
    )
    ap.add_argument(
        "--ensemble",
        action="store_true",
        help="ensemble the trained models listed in params (infer.models or train.models, every fold in train.folds)",
    )
    ap.add_argument("--params", default="params.yaml", help="params file (sections: data, train, infer)")
    ap.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="PT",
        help="use these checkpoints instead (repeatable); no OOF selection then",
    )
    ap.add_argument("--tta", choices=["auto", "config", "none"], help="override infer.tta")
    ap.add_argument("--output", help="submission CSV to write (default infer.output)")
    ap.add_argument("--images", help="a folder of new images to predict instead of the competition's test set")
    ap.add_argument("--overlays", type=int, help="write PNG overlays of the first N predictions to reports/overlays")
    ap.add_argument("--report", help="write the run's JSON report here (default metrics/infer.json)")
    args = ap.parse_args(argv)
    if not args.ensemble and not args.checkpoint:
        ap.error("give --ensemble (models from params) or --checkpoint PT")
    params = load_params(args.params)
    layout = Layout()
    report = run_ensemble(params, layout, args.output, args.images, args.checkpoint, args.tta, args.overlays)
    write_json(args.report or layout.infer_json, report)
    return 0


if __name__ == "__main__":
    run_cli(main)
