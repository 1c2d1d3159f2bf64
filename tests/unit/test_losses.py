"""WeightedLoss: hand-computed values, term weights, ignore (255) for every loss, kwargs errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import LossTerm
from pipeline.errors import UserError
from pipeline.labels import IGNORE_INDEX as IGNORE
from pipeline.losses import WeightedLoss

NAMES = ["ce", "dice", "focal", "lovasz", "jaccard"]


def batch(seed: int = 0, c: int = 4, ignore_share: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (2, C, 8, 8) logits and (2, 8, 8) targets with about ``ignore_share`` of the pixels 255."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, c, 8, 8, generator=g) * 2
    target = torch.randint(0, c, (2, 8, 8), generator=g)
    target[torch.rand(2, 8, 8, generator=g) < ignore_share] = IGNORE
    return logits, target


def loss(*terms: LossTerm, class_weights: list[float] | None = None):
    return WeightedLoss(list(terms), class_weights)


@pytest.mark.parametrize(
    "target, ce, dice",
    [
        # zero logits: p = 1/2 everywhere, so CE is ln 2. Dice per class is 2 sum(p t) / (sum p + sum t), averaged
        # over classes, a class absent from the target contributing 0 (SMP's convention)
        ([[0, 0], [0, 0]], math.log(2), (1 - 2 * 2 / (2 + 4)) / 2),  # class 0: 1 - 2/3; class 1 absent
        ([[0, 1], [0, 1]], math.log(2), 1 - 2 * 1 / (2 + 2)),  # each class: 1 - 2*1/(2+2) = 1/2
        ([[0, 1], [IGNORE, IGNORE]], math.log(2), 1 - 2 * 0.5 / (1 + 1)),  # ignored pixels count nowhere
    ],
)
def test_hand_computed_values(target: list[list[int]], ce: float, dice: float) -> None:
    logits, y = torch.zeros(1, 2, 2, 2), torch.tensor([target])
    assert loss(LossTerm("ce")).forward(logits, y).item() == pytest.approx(ce, abs=1e-6)
    assert loss(LossTerm("dice")).forward(logits, y).item() == pytest.approx(dice, abs=1e-6)
    both = loss(LossTerm("ce", 1.0), LossTerm("dice", 0.5)).forward(logits, y)
    assert both.item() == pytest.approx(ce + 0.5 * dice, abs=1e-6)


def test_weights_scale_their_terms() -> None:
    logits, y = batch()
    ce = loss(LossTerm("ce")).forward(logits, y)
    dice = loss(LossTerm("dice")).forward(logits, y)
    lovasz = loss(LossTerm("lovasz")).forward(logits, y)
    mixed = loss(LossTerm("ce", 2.0), LossTerm("dice", 3.0), LossTerm("lovasz", 0.25)).forward(logits, y)
    torch.testing.assert_close(mixed, 2 * ce + 3 * dice + 0.25 * lovasz)
    torch.testing.assert_close(loss(LossTerm("ce", 0.0), LossTerm("dice")).forward(logits, y), dice)


def test_cross_entropy_class_weights_and_kwargs_are_passed_on() -> None:
    logits, y = batch()
    weights = [0.5, 1.0, 2.0, 4.0]
    got = loss(LossTerm("ce", kwargs={"label_smoothing": 0.1}), class_weights=weights).forward(logits, y)
    want = F.cross_entropy(logits, y, weight=torch.tensor(weights), ignore_index=IGNORE, label_smoothing=0.1)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("terms", [[n] for n in NAMES] + [["ce", "dice"]], ids=lambda t: "+".join(t))
def test_ignored_pixels_do_not_change_the_loss(terms: list[str]) -> None:
    criterion = loss(*(LossTerm(n) for n in terms))  # type: ignore[arg-type]
    logits, y = batch()
    ignored = (y == IGNORE).unsqueeze(1).expand_as(logits)
    assert 0 < ignored.float().mean() < 0.6
    base = criterion(logits, y)
    noise = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1)) * 10
    torch.testing.assert_close(criterion(torch.where(ignored, logits + noise, logits), y), base)
    # the same change at labelled pixels does change it: the check above can fail
    assert not torch.allclose(criterion(torch.where(ignored, logits, logits + noise), y), base)


def test_deep_supervision_tuple_sums_the_loss_over_its_members() -> None:
    # zero logits over 2 classes: CE is ln 2 per output, so (output, 6 side outputs) is 7 ln 2
    zeros, y = torch.zeros(1, 2, 2, 2), torch.tensor([[[0, 1], [1, IGNORE]]])
    assert loss(LossTerm("ce")).forward((zeros,) * 7, y).item() == pytest.approx(7 * math.log(2), abs=1e-6)
    (a, y), (b, _) = batch(0), batch(1)
    mixed = loss(LossTerm("ce"), LossTerm("dice", 0.5))
    torch.testing.assert_close(mixed.forward((a, b), y), mixed.forward(a, y) + mixed.forward(b, y))


def test_loss_is_float32_and_differentiable_from_half_logits() -> None:
    logits, y = batch()
    x = logits.to(torch.bfloat16).requires_grad_()
    out = loss(LossTerm("ce"), LossTerm("dice")).forward(x, y)
    assert out.dtype == torch.float32
    out.backward()
    assert x.grad is not None and torch.isfinite(x.grad.float()).all()


@pytest.mark.parametrize("name", NAMES)
def test_an_unknown_kwarg_is_a_user_error(name: str) -> None:
    with pytest.raises(UserError, match=rf"loss {name}: bad kwargs .*smoothh"):
        WeightedLoss([LossTerm(name, kwargs={"smoothh": 1.0})])  # type: ignore[arg-type]


def test_no_terms_is_a_user_error() -> None:
    with pytest.raises(UserError, match="at least one loss term"):
        WeightedLoss([])
