"""U²-Net (configs/models/u2net.yaml, pipeline/models/u2net.py): sizes off the stride, deep supervision's loss, plain
logits in eval mode, the paper's two variants, and one-line errors. The shipped config's one-step test is in
tests/unit/test_models.py with every other config's.
"""

from __future__ import annotations

import dataclasses

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from helpers import REPO

from pipeline.config import LossTerm, load_model_config, tiny_variant
from pipeline.errors import UserError
from pipeline.labels import IGNORE_INDEX
from pipeline.losses import WeightedLoss
from pipeline.models.registry import build_model
from pipeline.models.u2net import U2Net, build_u2net
from pipeline.predict import iter_logits

TINY = tiny_variant(load_model_config(REPO / "configs" / "models" / "u2net.yaml"))
C = 3  # classes
H, W = 50, 71  # neither a multiple of 32: padded to 64 x 96


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_outputs_have_the_input_size_off_the_stride() -> None:
    model = build_model(TINY, C)
    assert model.stride == 32 and isinstance(model.net, U2Net)
    seen = []
    model.net.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape[-2:])))
    outputs = model.train()(torch.randn(2, 3, H, W))
    assert isinstance(outputs, tuple) and len(outputs) == 7  # fused, then side outputs 1..6
    assert all(o.shape == (2, C, H, W) for o in outputs)
    assert model.eval()(torch.randn(2, 3, H, W)).shape == (2, C, H, W)
    assert seen == [(64, 96), (64, 96)]  # padded to the stride on the way in, cropped on the way out


def test_fused_output_is_the_1x1_fusion_of_the_side_outputs() -> None:
    model = build_model(TINY, C).train()
    fused, *sides = model(torch.randn(2, 3, H, W))
    torch.testing.assert_close(fused, model.net.fuse(torch.cat(sides, dim=1)))  # a 1x1 conv commutes with the crop


def test_deep_supervision_loss_is_the_sum_of_the_base_loss_over_every_output() -> None:
    model = build_model(TINY, C).train()
    x, y = torch.randn(2, 3, H, W), torch.randint(0, C, (2, H, W))
    y[:, :5] = IGNORE_INDEX
    outputs = model(x)
    loss = WeightedLoss([LossTerm("ce", 1.0), LossTerm("dice", 0.5)])(outputs, y)
    dice = smp.losses.DiceLoss("multiclass", ignore_index=IGNORE_INDEX)
    by_hand = sum(F.cross_entropy(o, y, ignore_index=IGNORE_INDEX) + 0.5 * dice(o, y) for o in outputs)
    torch.testing.assert_close(loss, by_hand)
    loss.backward()
    assert all(side.weight.grad.abs().sum() > 0 for side in model.net.sides)


def test_eval_mode_returns_plain_fused_logits() -> None:
    model = build_model(TINY, C).eval()
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        logits = model(x)
        assert type(logits) is torch.Tensor and logits.shape == (2, C, H, W)
        padded = F.pad(x, (0, 96 - W, 0, 64 - H))
        torch.testing.assert_close(logits, model.net.outputs(padded)[0][..., :H, :W])
    images = [{"image": torch.randint(0, 256, (H, W, 3), dtype=torch.uint8), "index": i} for i in range(3)]
    for idx, batch in iter_logits(model, images, torch.device("cpu"), batch_size=2):  # what validation sees
        assert type(batch) is torch.Tensor and batch.shape == (len(idx), C, H, W)


def test_without_deep_supervision_training_sees_the_fused_output_only() -> None:
    cfg = dataclasses.replace(TINY, decoder_kwargs={**TINY.decoder_kwargs, "deep_supervision": False})
    out = build_model(cfg, C).train()(torch.randn(2, 3, H, W))
    assert type(out) is torch.Tensor and out.shape == (2, C, H, W)


def test_sigmoid_head_gives_two_class_logits_for_every_output() -> None:
    outputs = build_model(dataclasses.replace(TINY, head="sigmoid"), 2).train()(torch.randn(2, 3, H, W))
    assert len(outputs) == 7 and all(o.shape == (2, 2, H, W) and not o[:, 0].any() for o in outputs)


@pytest.mark.parametrize(("variant", "params"), [("u2net", 44_009_869), ("u2netp", 1_131_181)])
def test_variants_have_the_papers_size(variant: str, params: int) -> None:
    """The paper's 44.0 M (176.3 MB) and 1.1 M (4.7 MB) parameters, as the authors' U2NET and U2NETP (one output)."""
    assert sum(p.numel() for p in build_u2net(variant, 3, 1, {}).parameters()) == params


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"decoder": "Unet"}, "decoder: adapter u2net builds U2Net only"),
        ({"encoder": "u2net_small"}, "encoder: adapter u2net has no variant 'u2net_small'; valid: u2net: "),
        ({"encoder": "u2net"}, "decoder_kwargs.mid_channels: not an option of adapter u2net, encoder u2net"),
        ({"decoder_kwargs": {"out_channels": 0}}, "decoder_kwargs.out_channels: expected a channel count"),
        ({"decoder_kwargs": {"deep_supervision": "yes"}}, "decoder_kwargs.deep_supervision: expected true or false"),
        ({"refine": 8}, "refine: not used by adapter u2net"),
        ({"pretrained": "cache"}, "pretrained: not used by adapter u2net: U²-Net trains from scratch"),
        ({"encoder_kwargs": {"depth": 2}}, "encoder_kwargs: not used by adapter u2net"),
    ],
)
def test_bad_settings_are_one_line_user_errors(change: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        build_model(dataclasses.replace(TINY, **change), C)
    assert "\n" not in str(info.value)
