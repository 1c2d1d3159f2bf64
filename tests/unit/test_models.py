"""The model layer: every shipped config builds and trains, pad/crop, the ViT pyramid, pretrained loading, param groups.

Everything runs on CPU at 64x84 (the embedded competition's canvas) and never downloads weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml

from pipeline.config import ModelConfig, load_model_config, tiny_variant
from pipeline.errors import UserError
from pipeline.losses import WeightedLoss
from pipeline.models import registry
from pipeline.models.optim import param_groups
from pipeline.models.registry import PadCropWrapper, build_model, list_adapters, register_adapter
from pipeline.models.sides import DecoderSides
from pipeline.models.vit_pyramid import ViTPyramidSegmenter, default_feature_blocks

# Full configs only: a planned config (no decoder, e.g. auto.yaml) is completed by the plan (tests/unit/test_plan.py)
CONFIGS = sorted(
    p
    for p in (Path(__file__).resolve().parents[2] / "configs" / "models").glob("*.yaml")
    if "decoder" in (yaml.safe_load(p.read_text()) or {})
)
NUM_CLASSES = 11  # background + 10 digits
H, W = 64, 84


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# Small configs of each kind, owned by these tests (the shipped configs get tuned; these stay put).
CNN = ModelConfig(
    decoder="Unet",
    encoder="resnet18",
    encoder_kwargs={"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "stem_width": 16},
    decoder_kwargs={"decoder_channels": [16, 16, 16, 8, 8]},
)
SWIN = ModelConfig(
    decoder="UPerNet",
    encoder="swin_tiny_patch4_window7_224",
    encoder_kwargs={"window_size": 8, "embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]},
    decoder_kwargs={"decoder_channels": 16},
)
BEIT = ModelConfig(
    decoder="UPerNet",
    encoder="beit_base_patch16_224",
    adapter="vit_pyramid",
    encoder_kwargs={"depth": 2, "embed_dim": 32, "num_heads": 2},
    decoder_kwargs={"decoder_channels": 16},
)


def test_configs_are_shipped() -> None:
    assert {p.stem for p in CONFIGS} >= {"cnn_default", "upernet_convnext", "upernet_swin", "upernet_beit", "u2net"}
    for path in CONFIGS:
        assert load_model_config(path).pretrained is None, f"{path.name} must not need weights"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_forward_backward_at_canvas_size(path: Path) -> None:
    model = build_model(load_model_config(path), NUM_CLASSES)
    x = torch.randn(2, 3, H, W)  # (B, C, H, W); batch 2: UPerNet's PSP BatchNorm on a 1x1 pool needs B > 1
    out = model(x)  # in training a deep-supervised model (u2net) returns (output, *side outputs)
    outputs = out if isinstance(out, tuple) else (out,)
    assert all(logits.shape == (2, NUM_CLASSES, H, W) for logits in outputs)
    sum(logits.float().square().mean() for logits in outputs).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_tiny_variant_trains_one_step(path: Path) -> None:
    cfg = tiny_variant(load_model_config(path))
    model = build_model(cfg, NUM_CLASSES).train()
    rec = cfg.recipe
    opt = torch.optim.AdamW(param_groups(model, rec.lr, rec.weight_decay, rec.layer_decay), lr=rec.lr)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = torch.randn(2, 3, H, W), torch.randint(0, NUM_CLASSES, (2, H, W))
    loss = WeightedLoss(rec.loss, rec.class_weights)(model(x), y)  # the config's own loss, as training computes it
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) > len(before) // 2, "most parameters should move after one AdamW step"


# --------------------------------------------------------------------------------------------------------------
# Pad / crop wrapper


@pytest.mark.parametrize("size", [(64, 84), (37, 53), (33, 31), (1, 1), (96, 128)])
def test_wrapper_returns_input_size(size: tuple[int, int]) -> None:
    model = build_model(CNN, NUM_CLASSES).eval()
    assert model.stride == 32 and model.fixed_size is None
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, NUM_CLASSES, *size)


def test_wrapper_pads_fixed_size_encoders_to_input_size() -> None:
    model = build_model(SWIN, NUM_CLASSES).eval()
    assert model.fixed_size == (64, 96)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 50, 71)).shape == (1, NUM_CLASSES, 50, 71)
    with pytest.raises(UserError, match="larger than the model's fixed input_size 64x96"):
        model(torch.randn(1, 3, 65, 84))


def test_wrapper_crops_what_it_padded() -> None:
    seen = []

    def net(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[-2:])
        return x  # identity: the crop must give the input back, untouched

    x = torch.randn(1, 2, 37, 53)
    wrapper = PadCropWrapper(net, stride=16)  # type: ignore[arg-type]
    assert torch.equal(wrapper(x), x)
    assert seen == [(48, 64)]


def test_fixed_input_size_must_be_a_stride_multiple() -> None:
    cfg = dataclasses.replace(SWIN, input_size=(64, 84))
    with pytest.raises(UserError, match=r"input_size: \[64, 96\]"):
        build_model(cfg, NUM_CLASSES)


# --------------------------------------------------------------------------------------------------------------
# ViT pyramid


def test_vit_pyramid_levels_have_strides_4_8_16_32() -> None:
    model = build_model(BEIT, NUM_CLASSES)
    net = model.net
    assert isinstance(net, ViTPyramidSegmenter)
    levels = net.forward_features(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in levels] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert all(f.shape[:2] == (2, net.encoder.embed_dim) for f in levels)


def test_vit_pyramid_dynamic_size_vit_takes_any_size() -> None:
    cfg = dataclasses.replace(
        BEIT,
        encoder="vit_tiny_patch16_224",
        encoder_kwargs={"depth": 4, "embed_dim": 32, "num_heads": 2, "dynamic_img_size": True},
    )
    model = build_model(cfg, NUM_CLASSES)
    assert model.fixed_size is None and model.net.feature_blocks == (0, 1, 2, 3)
    assert model(torch.randn(2, 3, 100, 130)).shape == (2, NUM_CLASSES, 100, 130)


def test_default_feature_blocks() -> None:
    assert default_feature_blocks(12) == (2, 5, 8, 11)
    assert default_feature_blocks(24) == (5, 11, 17, 23)
    assert default_feature_blocks(2) == (0, 0, 1, 1)


# --------------------------------------------------------------------------------------------------------------
# Errors for people


def test_unknown_adapter_lists_valid_ones() -> None:
    cfg = dataclasses.replace(CNN, adapter="nope")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="valid adapters: smp, u2net, vit_pyramid"):
        build_model(cfg, NUM_CLASSES)


def test_unknown_decoder_lists_valid_ones() -> None:
    cfg = dataclasses.replace(CNN, decoder="Unett")
    with pytest.raises(UserError, match="unknown SMP decoder 'Unett'; valid decoders: Unet, UnetPlusPlus.*UPerNet"):
        build_model(cfg, NUM_CLASSES)
    cfg = dataclasses.replace(BEIT, decoder="Unet")
    with pytest.raises(UserError, match="supports UPerNet only"):
        build_model(cfg, NUM_CLASSES)


def test_unknown_encoder_suggests_list_models() -> None:
    cfg = dataclasses.replace(CNN, encoder="resnet181")
    with pytest.raises(
        UserError, match=r"unknown timm model 'resnet181'; did you mean .*timm.list_models\('\*resnet\*'\)"
    ):
        build_model(cfg, NUM_CLASSES)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"decoder_kwargs": {"decoder_chanels": [16] * 5}},
            "decoder_kwargs.decoder_chanels: not an argument of SMP Unet",
        ),
        ({"decoder_kwargs": {"activation": "softmax"}}, "decoder_kwargs.activation: the pipeline applies softmax"),
        ({"encoder_kwargs": {"in_chans": 1}}, "encoder_kwargs.in_chans: is set by the pipeline"),
        ({"encoder_kwargs": {"decoder_channels": 1}}, "encoder_kwargs.decoder_channels: is an argument of SMP Unet"),
        ({"encoder_kwargs": {"depthz": 1}}, "cannot build SMP Unet on timm encoder 'resnet18'.*depthz"),
        ({"encoder": "vit_tiny_patch16_224", "encoder_kwargs": {}}, "use adapter: vit_pyramid"),
    ],
)
def test_bad_kwargs_are_user_errors(change: dict, message: str) -> None:
    cfg = dataclasses.replace(CNN, **change)
    with pytest.raises(UserError, match=message):
        build_model(cfg, NUM_CLASSES)


def test_refine_head_starts_as_the_identity_and_learns_from_pixels() -> None:
    plain = build_model(CNN, NUM_CLASSES).eval()
    torch.manual_seed(0)
    refined = build_model(dataclasses.replace(CNN, refine=8), NUM_CLASSES).eval()
    assert isinstance(refined.net, registry.RefineHead)
    refined.net.net.load_state_dict(plain.net.state_dict())
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        assert torch.allclose(refined(x), plain(x))  # zero-initialised last conv: the head adds nothing yet
    refined.train()
    loss = refined(x).logsumexp(1).mean()
    loss.backward()
    first = refined.net.head[0].weight.grad
    assert first is not None and first[:, NUM_CLASSES:].abs().sum() == 0  # zero last conv: no signal through yet
    assert refined.net.head[-1].weight.grad.abs().sum() > 0  # ... but the last conv learns at once


def test_sigmoid_head_is_a_two_class_softmax_with_the_sigmoid_probabilities() -> None:
    model = build_model(dataclasses.replace(CNN, head="sigmoid"), 2)
    assert isinstance(model.net, registry.SigmoidAsTwoClass)
    x = torch.randn(2, 3, H, W)
    out = model(x)
    assert out.shape == (2, 2, H, W) and torch.equal(out[:, 0], torch.zeros_like(out[:, 0]))
    z = out[:, 1]
    assert torch.allclose(out.softmax(1)[:, 1], torch.sigmoid(z), atol=1e-6)
    target = (torch.rand(2, H, W) > 0.5).long()
    ce = F.cross_entropy(out, target)
    bce = F.binary_cross_entropy_with_logits(z, target.float())
    assert torch.allclose(ce, bce, atol=1e-6)  # cross-entropy on (0, z) is BCE on z
    ce.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_sigmoid_head_needs_a_binary_task() -> None:
    with pytest.raises(UserError, match="head: sigmoid is for binary tasks.*11 classes"):
        build_model(dataclasses.replace(CNN, head="sigmoid"), NUM_CLASSES)


@pytest.mark.parametrize("which", ["smp", "vit_pyramid"])
def test_presence_head_trains_on_the_classes_each_mask_holds_and_leaves_eval_unchanged(which: str) -> None:
    base = CNN if which == "smp" else BEIT
    torch.manual_seed(0)
    plain = build_model(base, NUM_CLASSES).eval()
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(base, presence_head=0.4), NUM_CLASSES)
    assert isinstance(model.net, registry.PresenceHead)
    model.net.net.load_state_dict(plain.net.state_dict())  # the same network under the head
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), plain(x))  # eval: the logits alone
    out = model.train()(x)
    assert isinstance(out, registry.WithPresence) and out.logits.shape == (2, NUM_CLASSES, H, W)
    assert out.presence.shape == (2, NUM_CLASSES)
    target = torch.zeros(2, H, W, dtype=torch.long)
    target[0, :5, :5], target[1, -3:, -3:], target[1, 0, 0] = 3, 7, 255  # image 0: {0, 3}; image 1: {0, 7}
    loss = WeightedLoss.for_config(dataclasses.replace(base, presence_head=0.4))
    seg = WeightedLoss(base.recipe.loss, base.recipe.class_weights)(out.logits, target)
    # BCE written out by hand: -(y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))), y from the pixels above
    y = torch.zeros(2, NUM_CLASSES)
    y[0, [0, 3]], y[1, [0, 7]] = 1.0, 1.0
    p = torch.sigmoid(out.presence.float())
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    total = loss(out, target)
    assert torch.allclose(total, seg + 0.4 * bce, atol=1e-5)
    total.backward()
    assert model.net.head[-1].weight.grad.abs().sum() > 0


def test_presence_head_needs_encoder_features() -> None:
    u2 = load_model_config(Path(__file__).resolve().parents[2] / "configs" / "models" / "u2net.yaml")
    with pytest.raises(UserError, match="presence_head: adapter u2net has no encoder features"):
        build_model(dataclasses.replace(tiny_variant(u2), presence_head=0.5), NUM_CLASSES)
    with pytest.raises(UserError, match="presence_head must be 0"):
        dataclasses.replace(CNN, presence_head=-1.0)


@pytest.mark.parametrize("refine", [0, 8])
def test_deep_supervision_sides_train_at_full_size_and_leave_eval_unchanged(refine: int) -> None:
    base = dataclasses.replace(CNN, refine=refine)
    torch.manual_seed(0)
    plain = build_model(base, NUM_CLASSES).eval()
    torch.manual_seed(0)
    cfg = dataclasses.replace(base, deep_supervision=0.6)
    model = build_model(cfg, NUM_CLASSES)
    sides = model.net.net if refine else model.net
    assert isinstance(sides, DecoderSides) and len(sides.heads) == 3
    # CNN's decoder_channels [16, 16, 16, 8, 8]: the three stages before the output, finest first
    assert [h.in_channels for h in sides.heads] == [8, 16, 16]
    inner = {k: v for k, v in model.state_dict().items() if ".heads." not in k}
    plain_keys = plain.state_dict()
    assert {k.replace("net.net.net.", "net.net.") if refine else k.replace("net.net.", "net.") for k in inner} == set(
        plain_keys
    )
    x = torch.randn(2, 3, H, W)
    for key, value in inner.items():  # the same network under the side heads
        value.copy_(plain_keys[key.replace("net.net.net.", "net.net.") if refine else key.replace("net.net.", "net.")])
    with torch.no_grad():
        assert torch.equal(model.eval()(x), plain(x))  # eval: the output alone, unchanged
    out = model.train()(x)
    assert isinstance(out, tuple) and len(out) == 4
    assert all(z.shape == (2, NUM_CLASSES, H, W) for z in out)

    target = torch.randint(0, NUM_CLASSES, (2, H, W))
    target[0, :4, :4] = 255
    total = WeightedLoss.for_config(cfg)(out, target)

    seg = WeightedLoss(cfg.recipe.loss, cfg.recipe.class_weights)  # each member's own loss, as without sides
    weights = [4 / 7, 2 / 7, 1 / 7]  # nnU-Net: halving per stage, summing to 1
    expected = seg(out[0], target) + 0.6 * sum(a * seg(z, target) for a, z in zip(weights, out[1:]))
    assert torch.allclose(total, expected, atol=1e-5)
    total.backward()
    assert all(h.weight.grad.abs().sum() > 0 for h in sides.heads)


def test_deep_supervision_needs_a_decoder_stage_list() -> None:
    with pytest.raises(UserError, match="deep_supervision: smp decoder FPN has no list of decoder stages"):
        build_model(dataclasses.replace(CNN, decoder="FPN", decoder_kwargs={}, deep_supervision=0.5), NUM_CLASSES)
    u2 = load_model_config(Path(__file__).resolve().parents[2] / "configs" / "models" / "u2net.yaml")
    with pytest.raises(UserError, match="deep_supervision: not used by adapter u2net"):
        build_model(dataclasses.replace(tiny_variant(u2), deep_supervision=0.5), NUM_CLASSES)
    with pytest.raises(UserError, match="deep_supervision must be 0"):
        dataclasses.replace(CNN, deep_supervision=-0.1)


def test_refine_must_not_be_negative() -> None:
    with pytest.raises(UserError, match="refine: must be 0"):
        build_model(dataclasses.replace(CNN, refine=-1), NUM_CLASSES)


def test_registry_refuses_a_second_registration() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_adapter("smp")(registry.smp_adapter)
    assert list_adapters() == ["smp", "u2net", "vit_pyramid"]


# --------------------------------------------------------------------------------------------------------------
# Pretrained weights, from local files only


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_from_local_file_smp(tmp_path: Path, suffix: str) -> None:
    cfg = CNN
    saved = timm.create_model(cfg.encoder, **cfg.encoder_kwargs).state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(saved, path)
    else:
        from safetensors.torch import save_file

        save_file(saved, str(path))
    model = build_model(dataclasses.replace(cfg, pretrained=str(path)), NUM_CLASSES)
    encoder = model.net.encoder.model.state_dict()
    for key in ("conv1.weight", "layer4.0.conv2.weight", "layer2.0.bn1.running_var"):
        assert torch.equal(encoder[key], saved[key]), key
    assert "state_dict" not in model.net.encoder.model.pretrained_cfg  # no second copy kept around


def test_pretrained_rgb_weights_into_grayscale_encoder(tmp_path: Path) -> None:
    cfg = dataclasses.replace(CNN, in_channels=1, pretrained=str(tmp_path / "w.pth"))
    saved = timm.create_model(cfg.encoder, **cfg.encoder_kwargs).state_dict()
    torch.save(saved, tmp_path / "w.pth")
    model = build_model(cfg, NUM_CLASSES)
    stem = model.net.encoder.model.state_dict()["conv1.weight"]
    assert stem.shape[1] == 1
    torch.testing.assert_close(stem, saved["conv1.weight"].sum(dim=1, keepdim=True))
    assert model(torch.randn(2, 1, H, W)).shape == (2, NUM_CLASSES, H, W)


@pytest.mark.parametrize("encoder", ["vit_tiny_patch16_224", "beit_base_patch16_224"])
def test_pretrained_224_checkpoint_into_vit_pyramid_at_64x96(tmp_path: Path, encoder: str) -> None:
    kwargs = {"depth": 2, "embed_dim": 32, "num_heads": 2}
    source = timm.create_model(encoder, **kwargs)  # at 224x224: 14x14 tokens
    torch.save({"model": source.state_dict()}, tmp_path / "ckpt.pth")  # wrapped, as training scripts save them
    cfg = dataclasses.replace(BEIT, encoder=encoder, encoder_kwargs=kwargs, pretrained=str(tmp_path / "ckpt.pth"))
    model = build_model(cfg, NUM_CLASSES)
    enc = model.net.encoder
    assert torch.equal(enc.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight)
    assert torch.equal(enc.patch_embed.proj.weight, source.patch_embed.proj.weight)
    if enc.pos_embed is not None:  # ViT: absolute position embeddings resampled from 14x14 to 4x6 (+ class token)
        assert source.pos_embed.shape == (1, 1 + 14 * 14, 32) and enc.pos_embed.shape == (1, 1 + 4 * 6, 32)
    else:  # BEiT: relative position tables resized from 14x14 to 4x6 windows
        assert enc.blocks[0].attn.relative_position_bias_table.shape == (7 * 11 + 3, 2)
    assert model(torch.randn(2, 3, H, W)).shape == (2, NUM_CLASSES, H, W)


def test_pretrained_of_another_shape_names_the_tensor(tmp_path: Path) -> None:
    cfg = BEIT
    torch.save(timm.create_model(cfg.encoder, depth=2, embed_dim=48, num_heads=2).state_dict(), tmp_path / "w.pth")
    with pytest.raises(UserError, match=r"w.pth: tensor '.*' has shape .*48.* but encoder 'beit_base_patch16_224'"):
        build_model(dataclasses.replace(cfg, pretrained=str(tmp_path / "w.pth")), NUM_CLASSES)


def test_pretrained_missing_file_says_what_to_download(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "resnet18.safetensors"
    cfg = dataclasses.replace(CNN, pretrained=str(missing))
    with pytest.raises(UserError) as info:
        build_model(cfg, NUM_CLASSES)
    message = str(info.value)
    assert str(missing) in message and "huggingface.co/timm/resnet18" in message and "\n" not in message


def test_pretrained_cache_is_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_hub"))
    cfg = dataclasses.replace(CNN, pretrained="cache")
    with pytest.raises(UserError, match=r"pretrained: cache: no weights for encoder 'resnet18'.*huggingface.co/timm/"):
        build_model(cfg, NUM_CLASSES)

    # A file laid out as huggingface_hub caches it is found without any network access.
    hub_id = timm.models.get_pretrained_cfg(cfg.encoder).hf_hub_id
    repo = tmp_path / "hub" / ("models--" + hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    saved = timm.create_model(cfg.encoder, **cfg.encoder_kwargs).state_dict()
    torch.save(saved, repo / "snapshots" / "abc123" / "pytorch_model.bin")
    model = build_model(cfg, NUM_CLASSES)
    assert torch.equal(model.net.encoder.model.state_dict()["layer3.0.conv1.weight"], saved["layer3.0.conv1.weight"])


# --------------------------------------------------------------------------------------------------------------
# Parameter groups


def _lr_and_wd_by_name(model: torch.nn.Module, groups: list[dict]) -> dict[str, tuple[float, float]]:
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters()}


def test_param_groups_layer_decay_follows_beit_recipe() -> None:
    model = build_model(BEIT, NUM_CLASSES)  # 2 blocks: layers 0 (stem), 1, 2, 3 (rest)
    lr, wd, ld = 1e-3, 0.05, 0.5
    groups = param_groups(model, lr, wd, ld)
    got = _lr_and_wd_by_name(model, groups)
    assert len(got) == len(list(model.parameters()))
    expected = {
        "net.encoder.patch_embed.proj.weight": (lr * ld**3, wd),
        "net.encoder.patch_embed.proj.bias": (lr * ld**3, 0.0),
        "net.encoder.cls_token": (lr * ld**3, 0.0),
        "net.encoder.blocks.0.attn.qkv.weight": (lr * ld**2, wd),
        "net.encoder.blocks.0.attn.relative_position_bias_table": (lr * ld**2, 0.0),
        "net.encoder.blocks.0.norm1.weight": (lr * ld**2, 0.0),
        "net.encoder.blocks.1.mlp.fc2.weight": (lr * ld**1, wd),
        "net.pyramid.up2.weight": (lr, wd),
        "net.decoder.fusion_block.0.weight": (lr, wd),
        "net.segmentation_head.0.weight": (lr, wd),
        "net.segmentation_head.0.bias": (lr, 0.0),
    }
    for name, (want_lr, want_wd) in expected.items():
        assert got[name] == pytest.approx((want_lr, want_wd)), name
    assert groups[-1]["lr"] == lr and all(g["lr"] == pytest.approx(lr * g["lr_scale"]) for g in groups)


def test_param_groups_without_layer_decay() -> None:
    model = build_model(CNN, NUM_CLASSES)
    got = _lr_and_wd_by_name(model, param_groups(model, 2e-3, 1e-4, None))
    assert {lr for lr, _ in got.values()} == {2e-3}
    assert got["net.encoder.model.conv1.weight"][1] == 1e-4
    assert got["net.encoder.model.bn1.weight"][1] == 0.0  # BatchNorm
    with pytest.raises(UserError, match="recipe.layer_decay: needs a ViT/BEiT-style encoder"):
        param_groups(model, 2e-3, 1e-4, 0.65)
