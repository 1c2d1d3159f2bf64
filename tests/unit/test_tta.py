"""TtaForward on fixed convolutions, whose flip behaviour is known: batching, de-augmentation, sizes, merges."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.config import TtaConfig
from pipeline.tta import TtaForward, describe

ALL = TtaConfig(flips=["hflip", "vflip"], scales=[0.75, 1.25])


class Counting(nn.Module):
    """A model that records the input shape of every forward call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return self.model(x)


def fixed_conv(symmetric: str = "", size: int = 3, seed: int = 0) -> nn.Conv2d:
    """A 3 -> 4 channel conv with fixed random weights; ``symmetric`` "w" or "h" mirrors the kernel along that axis,
    which makes the conv (zero padding, odd kernel) equivariant to the matching flip."""
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(3, 4, size, padding=size // 2, bias=False)
    w = torch.randn(conv.weight.shape, generator=g)
    if "w" in symmetric:
        w = (w + w.flip(-1)) / 2
    if "h" in symmetric:
        w = (w + w.flip(-2)) / 2
    conv.weight = nn.Parameter(w, requires_grad=False)
    return conv.eval()


def image(h: int = 16, w: int = 20, b: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_batched_equals_unbatched_with_one_forward_per_size() -> None:
    x = image()
    one, many = Counting(fixed_conv()), Counting(fixed_conv())
    a = TtaForward(one, ALL, batched=False)(x)
    b = TtaForward(many, ALL, batched=True)(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert len(one.calls) == 2 * 2 * 3  # flips x scales, one copy at a time
    assert sorted(c[0] for c in many.calls) == [8, 8, 8] and len({c[-2:] for c in many.calls}) == 3  # 4 copies per size


@torch.no_grad()
@pytest.mark.parametrize("flip, axis", [("hflip", -1), ("vflip", -2)])
def test_flip_tta_of_a_flip_equivariant_model_is_the_plain_output(flip: str, axis: int) -> None:
    x = image()
    model = fixed_conv(symmetric="w" if flip == "hflip" else "h")
    torch.testing.assert_close(model(x.flip(axis)).flip(axis), model(x))  # the model is equivariant
    out = TtaForward(model, TtaConfig(flips=[flip]), batched=True)(x)
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_flip_tta_averages_the_de_augmented_outputs() -> None:
    x, model = image(), fixed_conv()  # not equivariant: the flipped copy really differs
    plain, flipped = model(x), model(x.flip(-1)).flip(-1)
    assert (plain - flipped).abs().max() > 0.1
    out = TtaForward(model, TtaConfig(flips=["hflip"]))(x)
    torch.testing.assert_close(out, (plain + flipped) / 2)
    out_max = TtaForward(model, TtaConfig(flips=["hflip"], merge="max"))(x)
    torch.testing.assert_close(out_max, torch.maximum(plain, flipped))


@torch.no_grad()
def test_gmean_merges_probabilities_geometrically() -> None:
    x, model = image(), fixed_conv()
    plain, flipped = model(x), model(x.flip(-1)).flip(-1)
    out = TtaForward(model, TtaConfig(flips=["hflip"], merge="gmean"), batched=True)(x)
    assert torch.isfinite(out).all()  # logits are signed: their product's root is no merge
    gmean = (plain.softmax(1) * flipped.softmax(1)).sqrt()
    torch.testing.assert_close(out.softmax(1), gmean / gmean.sum(1, keepdim=True))


@torch.no_grad()
@pytest.mark.parametrize("batched", [False, True])
def test_scales_on_an_odd_size_return_exactly_the_input_size(batched: bool) -> None:
    x = image(37, 53, b=1)
    out = TtaForward(fixed_conv(), TtaConfig(scales=[0.75, 1.25]), batched=batched)(x)
    assert out.shape == (1, 4, 37, 53)
    # a pointwise model on a constant image gives the same constant at every scale
    flat = torch.ones(1, 3, 37, 53) * torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1)
    model = fixed_conv(size=1)
    out = TtaForward(model, TtaConfig(flips=["hflip", "vflip"], scales=[0.75, 1.25]), batched=batched)(flat)
    assert out.shape == (1, 4, 37, 53)
    torch.testing.assert_close(out, model(flat))


@torch.no_grad()
def test_no_tta_is_the_model_itself() -> None:
    x, model = image(), Counting(fixed_conv())
    out = TtaForward(model, TtaConfig(), batched=True)(x)
    assert torch.equal(out, model.model(x)) and model.calls == [tuple(x.shape)]


@pytest.mark.parametrize(
    "cfg, name",
    [
        (TtaConfig(), "none"),
        (TtaConfig(scales=[1.0]), "none"),
        (TtaConfig(flips=["hflip"]), "hflip"),
        (TtaConfig(flips=["hflip", "vflip"]), "hflip+vflip"),
        (TtaConfig(scales=[1.25, 0.75]), "scales(0.75,1,1.25)"),
        (TtaConfig(flips=["vflip"], scales=[1.5]), "vflip+scales(1,1.5)"),
    ],
)
def test_describe(cfg: TtaConfig, name: str) -> None:
    assert describe(cfg) == name
