"""Soft pseudo-labels (``pseudo.soft``): the mixed loss against a per-pixel NumPy computation, the dataset's soft
targets through crops and transforms, copy-paste onto soft rows, the pseudo stage's soft label, the missing-file
error."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch

from pipeline.config import LossTerm
from pipeline.data.dataset import SegDataset, SoftPaths
from pipeline.data.folds import FoldSplit
from pipeline.data.paste import paste
from pipeline.errors import UserError
from pipeline.io import write_npy, write_png
from pipeline.labels import IGNORE_INDEX as IGNORE
from pipeline.losses import SoftTarget, WeightedLoss
from pipeline.paths import PseudoSetFiles
from pipeline.pseudo import pseudo_label, soft_label

C = 3


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Per pixel over axis 1, in float64."""
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def reference(logits: torch.Tensor, t: SoftTarget) -> float:
    """The mixed loss pixel by pixel: -log p(label) on a labelled row's labelled pixels, -sum q log p on a soft row's
    unpadded pixels (q the uint8 planes over their sum), averaged over all of them together."""
    lp = log_softmax(logits.double().numpy())
    mask, soft, rows = t.mask.numpy(), t.soft.double().numpy(), t.rows.numpy()
    total, n = 0.0, 0
    for b in range(mask.shape[0]):
        for y in range(mask.shape[1]):
            for x in range(mask.shape[2]):
                if mask[b, y, x] == IGNORE:
                    continue
                if rows[b]:
                    q = soft[b, :, y, x] / max(1.0, soft[b, :, y, x].sum())
                    total -= float((q * lp[b, :, y, x]).sum())
                else:
                    total -= float(lp[b, mask[b, y, x], y, x])
                n += 1
    return total / n


def batch(seed: int, rows: list[bool]) -> tuple[torch.Tensor, SoftTarget]:
    g = torch.Generator().manual_seed(seed)
    b = len(rows)
    logits = torch.randn(b, C, 5, 6, generator=g) * 2
    mask = torch.randint(0, C, (b, 5, 6), generator=g)
    mask[torch.rand(b, 5, 6, generator=g) < 0.2] = IGNORE
    soft = torch.randint(0, 256, (b, C, 5, 6), generator=g).to(torch.uint8)
    return logits, SoftTarget(mask, soft, torch.tensor(rows))


@pytest.mark.parametrize("rows", [[False, True], [True, False, True], [True, True]])
def test_mixed_loss_matches_a_per_pixel_reference(rows: list[bool]) -> None:
    logits, t = batch(1, rows)
    got = WeightedLoss([LossTerm("ce", 1.0)])(logits, t)
    assert float(got) == pytest.approx(reference(logits, t), rel=1e-5)


def test_without_soft_rows_the_loss_is_the_recipe_s_exactly() -> None:
    logits, t = batch(2, [False, False])
    crit = WeightedLoss([LossTerm("ce", 1.0), LossTerm("dice", 0.5)])
    assert torch.equal(crit(logits, t), crit(logits, t.mask))


def test_soft_and_hard_rows_weigh_by_their_pixels() -> None:
    """Dice on the labelled rows, soft CE on the soft rows, each by its share of the labelled pixels."""
    logits, t = batch(3, [False, True])
    crit = WeightedLoss([LossTerm("ce", 1.0), LossTerm("dice", 0.5)])
    hard = t.mask.clone()
    hard[1] = IGNORE
    n_hard, n_soft = int((hard != IGNORE).sum()), int((t.mask[1] != IGNORE).sum())
    soft_only = SoftTarget(t.mask.clone(), t.soft, torch.tensor([True, True]))
    soft_only.mask[0] = IGNORE  # row 0 out: the soft term over row 1's pixels alone
    soft_ce = reference(logits, soft_only)
    want = (n_hard * float(crit(logits, hard)) + n_soft * soft_ce) / (n_hard + n_soft)
    assert float(crit(logits, t)) == pytest.approx(want, rel=1e-5)


def test_a_soft_target_equal_to_one_hot_labels_is_cross_entropy() -> None:
    logits, t = batch(4, [True, True])
    t.mask[t.mask == IGNORE] = 0
    one_hot = (torch.arange(C)[None, :, None, None] == t.mask[:, None]).to(torch.uint8) * 255
    got = WeightedLoss([LossTerm("ce", 1.0)])(logits, SoftTarget(t.mask, one_hot, t.rows))
    assert float(got) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, t.mask)), rel=1e-6)


def write_pair(root: Path, name: str, image: np.ndarray, mask: np.ndarray) -> tuple[Path, Path]:
    write_png(root / f"{name}.jpg.png", image)
    write_png(root / f"{name}.png", mask)
    return root / f"{name}.jpg.png", root / f"{name}.png"


def test_dataset_moves_soft_targets_with_the_mask(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(C), size=(6, 8)).transpose(2, 0, 1)
    soft = np.rint(probs * 255).astype(np.uint8)
    truth = rng.integers(0, C, (6, 8)).astype(np.uint8)
    i0, m0 = write_pair(tmp_path, "a", image, truth)
    i1, m1 = write_pair(tmp_path, "b", image, np.full((6, 8), IGNORE, np.uint8))  # a thresholded-away pseudo mask
    write_npy(PseudoSetFiles.soft_for(m1), soft)
    # flip, then pad to 8 x 10 (the padding is ignore): the soft planes follow the flip and stay out where padded
    tf = A.Compose(
        [A.HorizontalFlip(p=1), A.PadIfNeeded(8, 10, position="top_left", border_mode=0, fill=0, fill_mask=IGNORE)],
        additional_targets={"soft": "mask"},
    )
    ds = SegDataset([i0, i1], [m0, m1], tf, preload=True, soft=SoftPaths([None, PseudoSetFiles.soft_for(m1)], C))
    labelled, pseudo = ds[0], ds[1]
    assert not labelled["soft_row"] and pseudo["soft_row"]
    assert torch.equal(labelled["soft"], torch.zeros(C, 8, 10, dtype=torch.uint8))
    assert np.array_equal(labelled["mask"].numpy()[:6, :8], truth[:, ::-1])
    assert np.array_equal(pseudo["soft"].numpy()[:, :6, :8], soft[:, :, ::-1])
    # a soft row's labels are the teacher's argmax everywhere (not the thresholded PNG), 255 only where padded
    want = np.full((8, 10), IGNORE)
    want[:6, :8] = soft.argmax(0)[:, ::-1]
    assert np.array_equal(pseudo["mask"].numpy(), want)


def test_dataset_refuses_probabilities_of_another_shape(tmp_path: Path) -> None:
    i0, m0 = write_pair(tmp_path, "a", np.zeros((4, 5, 3), np.uint8), np.zeros((4, 5), np.uint8))
    write_npy(PseudoSetFiles.soft_for(m0), np.zeros((C, 4, 4), np.uint8))
    ds = SegDataset([i0], [m0], None, preload=False, soft=SoftPaths([PseudoSetFiles.soft_for(m0)], C))
    with pytest.raises(
        UserError, match=r"a\.soft\.npy: .* uint8 \(3, 4, 4\), expected uint8 \(3, 4, 5\) .*dvc repro pseudo"
    ):
        ds[0]


def test_missing_teacher_probabilities_name_the_file_and_the_fix(tmp_path: Path) -> None:
    split = FoldSplit([tmp_path / "t.png", tmp_path / "x.png"], [tmp_path / "m.png", tmp_path / "7.png"], [], [], [], 1)
    with pytest.raises(UserError, match=r"7\.soft\.npy not found: pseudo\.soft .*dvc repro pseudo"):
        split.soft_targets()
    write_npy(tmp_path / "7.soft.npy", np.zeros((1, 1, 1), np.uint8))
    assert split.soft_targets() == [None, tmp_path / "7.soft.npy"]
    assert FoldSplit([], [], [], [], []).soft_targets() is None


def test_paste_onto_a_soft_row_carries_the_donor_s_targets() -> None:
    rng = np.random.default_rng(5)

    def item(soft_row: bool) -> dict:
        mask = torch.from_numpy(rng.choice([0, 0, 1, 2, IGNORE], size=(4, 5)))
        soft = torch.from_numpy(rng.integers(0, 256, (C, 4, 5), dtype=np.uint8))
        image = torch.from_numpy(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
        return {"image": image, "mask": mask, "index": 0, "soft": soft, "soft_row": soft_row}

    receiver, truth_donor, soft_donor = item(True), item(False), item(True)
    for donor in (truth_donor, soft_donor):
        out = paste(receiver, donor)
        fg = ((donor["mask"] > 0) & (donor["mask"] != IGNORE)).numpy()
        for y, x in np.ndindex(4, 5):
            if not fg[y, x]:
                want = receiver["soft"][:, y, x]
            elif donor["soft_row"]:
                want = donor["soft"][:, y, x]
            else:  # a labelled donor's pixel: its class alone
                want = torch.tensor([255 if c == donor["mask"][y, x] else 0 for c in range(C)], dtype=torch.uint8)
            assert torch.equal(out["soft"][:, y, x], want), (y, x)


def test_soft_label_is_the_probabilities_except_where_the_rules_relabelled() -> None:
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(C), size=(4, 6)).transpose(2, 0, 1)
    mask, conf, pred, changed = pseudo_label(probs, 0.5, {})
    assert not changed.any() and np.array_equal(pred, probs.argmax(0))
    assert np.array_equal(soft_label(probs, pred, changed), np.rint(probs * 255).astype(np.uint8))
    changed = np.zeros((4, 6), bool)
    changed[1, 2] = changed[3, 0] = True
    pred = pred.copy()
    pred[1, 2], pred[3, 0] = 0, 2
    soft = soft_label(probs, pred, changed)
    assert soft[:, 1, 2].tolist() == [255, 0, 0] and soft[:, 3, 0].tolist() == [0, 0, 255]
    keep = ~changed
    assert np.array_equal(soft[:, keep], np.rint(probs[:, keep] * 255).astype(np.uint8))
