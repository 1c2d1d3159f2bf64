"""One line per planned model: what a table row (the zoo bench, the report) shows of ``work/plan.yaml``.

>>> plan = {"enabled": True, "budget": {"minutes": 21.0, "predicted_minutes": 20.0, "per_model": {"auto": {
...     "rounds": {"round1": {"epochs": 5}, "round2": {"epochs": 2}}}}}, "models": {"auto": {"base": "cnn_default",
...     "config": {"input_size": [64, 84], "resize": "pad", "pretrained": None, "recipe": {"batch_size": 32,
...     "lr": 0.003, "foreground_share": 0.0, "samples_per_epoch": None, "class_weights": None, "augment": []}}}}}
>>> plan_summary(plan)
'auto=cnn_default 64x84 pad, batch 32, lr 0.003, epochs 5+2, from scratch; 20.0 of 21 min'
>>> plan_summary({**plan, "fingerprint": {"modal_size": [160, 160]}}).split(",")[0]  # random crops of larger images
'auto=cnn_default 64x84 crops of 160x160'
"""

from __future__ import annotations

from typing import Any


def model_summary(name: str, entry: dict[str, Any], rounds: dict[str, Any], modal: list[int] | None = None) -> str:
    """One model's line; ``modal``: the images' most common (H, W), to tell crops (``pad`` smaller than it) apart."""
    cfg = entry.get("config", {})
    rec = cfg.get("recipe", {})
    h, w = cfg.get("input_size", ["?", "?"])
    policy = cfg.get("resize", "")
    if policy == "pad" and modal and isinstance(h, int) and (h < modal[0] or w < modal[1]):
        policy = f"crops of {modal[0]}x{modal[1]}"
    parts = [f"{name}={entry.get('base', '?')} {h}x{w} {policy}".rstrip()]
    parts.append(f"batch {rec.get('batch_size')}, lr {rec.get('lr'):g}" if rec.get("lr") else "")
    epochs = "+".join(str(r.get("epochs")) for _, r in sorted(rounds.items()))
    parts.append(f"epochs {epochs}" if epochs else "")
    if rec.get("samples_per_epoch"):
        parts.append(f"{rec['samples_per_epoch']} samples/epoch")
    if rec.get("foreground_share"):
        parts.append(f"foreground {rec['foreground_share']:g}")
    if rec.get("class_weights"):
        parts.append("class weights")
    if rec.get("augment"):
        parts.append("aug " + "+".join(a.get("name", "?") for a in rec["augment"]))
    if rec.get("paste"):
        parts.append(f"paste {rec['paste']:g}")
    parts.append(f"pretrained {cfg['pretrained']}" if cfg.get("pretrained") else "from scratch")
    return ", ".join(p for p in parts if p)


def plan_summary(plan: dict[str, Any]) -> str:
    """The planned models' key choices and the budget, on one line ('' when the plan was switched off)."""
    if not plan.get("enabled", False):
        return "no plan (plan.enabled: false)"
    budget = plan.get("budget", {})
    per_model = budget.get("per_model", {})
    models = [
        model_summary(
            name, entry, per_model.get(name, {}).get("rounds", {}), plan.get("fingerprint", {}).get("modal_size")
        )
        for name, entry in plan.get("models", {}).items()
    ]
    minutes = f"{budget.get('predicted_minutes')} of {budget.get('minutes'):g} min" if budget.get("minutes") else ""
    return "; ".join([*models, minutes]) if minutes else "; ".join(models)
