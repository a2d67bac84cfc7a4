"""ViTPose: paper-size counts, config detection from official-layout checkpoints, training and dtype paths.

The fixture parity itself runs in ``test_reference_parity.py``; here the detector is exercised on the
fixture and on other head/backbone configurations saved the way MMPose saves them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import reference_root
from vitsuite.models import count_model_parameters, detect_official, load_official_checkpoint
from vitsuite.pipelines.pose.models.vitpose import (
    ViTPose,
    ViTPoseConfig,
    _grid_from_count,
    config_from_official,
    default_num_heads,
    detect_official as detect_vitpose,
)

FIXTURE = reference_root() / "vitpose" / "small"

# (name, overrides, official count, PARAMS_pose.md row)
PAPER_COUNTS = [
    ("vitpose_s", {}, 24_290_577, "ViTPose-S"),
    ("vitpose_s", {}, 24_290_577, "ViTPose-S 'simple' (official config is the classic head)"),
    ("vitpose_b", {}, 89_994_513, "ViTPose-B"),
    ("vitpose_b_simple", {}, 85_912_337, "ViTPose-B simple"),
    ("vitpose_l", {}, 308_544_785, "ViTPose-L"),
    ("vitpose_l_simple", {}, 303_453_201, "ViTPose-L simple"),
    ("vitpose_h", {}, 637_208_849, "ViTPose-H"),
    ("vitpose_h_simple", {}, 631_107_857, "ViTPose-H simple"),
    ("vitpose_s", {"decoder": "simple"}, 21_722_513, "ViTPose-S with a real simple decoder (PARAMS note)"),
    ("vitpose_b", {"decoder": "simple"}, 85_912_337, "decoder override = vitpose_b_simple"),
]


@pytest.mark.parametrize("name,overrides,expected,row", PAPER_COUNTS, ids=[r[3] for r in PAPER_COUNTS])
def test_paper_parameter_counts(name, overrides, expected, row):
    assert count_model_parameters(name, **overrides) == expected, row


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial norms and BN statistics so a wrong layer order or eps would show in the output."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.weight.copy_(0.05 * torch.randn(m.weight.shape, generator=g))
        model.backbone.pos_embed.normal_(0, 0.1, generator=g)
    return model.eval()


def _save_mmpose(sd: dict, path: Path) -> Path:
    torch.save({"meta": {"mmpose_version": "0.24.0", "epoch": 210}, "state_dict": sd}, path)
    return path


def _fixture_sd() -> dict:
    if not FIXTURE.is_dir():
        pytest.skip(f"vitpose fixture not found at {FIXTURE}")
    return load_file(str(FIXTURE / "state_dict.safetensors"))


def test_fixture_checkpoint_is_detected(tmp_path):
    sd = _fixture_sd()
    meta = json.loads((FIXTURE / "meta.json").read_text())
    kw = detect_vitpose(sd)
    assert kw is not None
    want = meta["official_kwargs"]
    for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "ratio", "qkv_bias"):
        assert kw["backbone"][k] == want["backbone"][k], k
    assert kw["backbone"]["mlp_ratio"] == want["backbone"]["mlp_ratio"]
    for k in ("num_deconv_layers", "num_deconv_filters", "num_deconv_kernels", "extra", "out_channels"):
        assert kw["keypoint_head"][k] == want["keypoint_head"][k], k
    # only ViTPose's detector claims it
    assert [m for m, _ in detect_official(sd)] == ["vitpose"]
    model = load_official_checkpoint(_save_mmpose(sd, tmp_path / "vitpose.pth"))
    io = load_file(str(FIXTURE / "io.safetensors"))
    with torch.no_grad():
        out = model(io["input.img"])
    torch.testing.assert_close(out, io["output.heatmaps"], atol=meta["atol"], rtol=meta["rtol"])


# Configurations the released checkpoints (and MMPose heads generally) come in, shrunk.
OTHER_CONFIGS = {
    "simple_decoder": dict(embed_dim=96, depth=2, num_heads=6, num_deconv_filters=(), num_deconv_kernels=(),
                           final_conv_kernel=3, upsample=4),
    "wholebody_133_384x288": dict(img_size=(384, 288), embed_dim=48, depth=1, num_heads=3, num_keypoints=133,
                                  num_deconv_filters=(32, 32), num_deconv_kernels=(4, 4)),
    "mpii_like_14_square_k3k2": dict(img_size=(128, 128), embed_dim=64, depth=2, num_heads=2, num_keypoints=14,
                                     num_deconv_filters=(32, 16), num_deconv_kernels=(3, 2)),
    "extra_convs_final3": dict(embed_dim=32, depth=1, num_heads=2, num_deconv_filters=(16, 8),
                               num_deconv_kernels=(4, 4),
                               num_conv_kernels=(3, 1), final_conv_kernel=3, mlp_ratio=2.0),
}


@pytest.mark.parametrize("name", sorted(OTHER_CONFIGS))
def test_other_configurations_round_trip(tmp_path, name):
    cfg = ViTPoseConfig(**OTHER_CONFIGS[name])
    torch.manual_seed(0)
    src = _randomise(ViTPose(cfg))
    path = _save_mmpose(src.state_dict(), tmp_path / f"{name}.pth")
    model = load_official_checkpoint(path, num_heads=cfg.num_heads)
    assert model.cfg == cfg, (model.cfg, cfg)
    x = torch.randn(2, 3, *cfg.img_size)
    with torch.no_grad():
        want, got = src(x), model(x)
    assert got.shape == (2, cfg.num_keypoints, cfg.img_size[0] // 4, cfg.img_size[1] // 4)
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_img_size_override_for_ambiguous_grids(tmp_path):
    # 256 tokens are read as a 16x16 grid; a 512x128 crop (32x8) needs img_size=.
    cfg = ViTPoseConfig(img_size=(512, 128), embed_dim=32, depth=1, num_heads=2, num_deconv_filters=(16,),
                        num_deconv_kernels=(4,))
    src = _randomise(ViTPose(cfg))
    path = _save_mmpose(src.state_dict(), tmp_path / "tall.pth")
    assert detect_vitpose(src.state_dict())["backbone"]["img_size"] == [256, 256]
    model = load_official_checkpoint(path, num_heads=2, img_size=(512, 128))
    x = torch.randn(1, 3, 512, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x), atol=0, rtol=0)


def test_uninferable_defaults():
    assert [default_num_heads(d) for d in (384, 768, 1024, 1280)] == [12, 12, 16, 16]
    assert default_num_heads(64) == 4 and default_num_heads(48) == 2
    assert _grid_from_count(192) == (16, 12) and _grid_from_count(432) == (24, 18)
    assert _grid_from_count(256) == (16, 16) and _grid_from_count(972) == (36, 27)


def _other_fixture_state_dicts():
    root = reference_root()
    return sorted(p for p in root.glob("*/*/state_dict.safetensors") if p.parent.parent.name != "vitpose")


@pytest.mark.parametrize("path", _other_fixture_state_dicts(), ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_detector_rejects_other_families(path):
    assert detect_vitpose(load_file(str(path))) is None


def test_detector_rejects_near_misses():
    sd = _fixture_sd()
    assert detect_vitpose({k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}) is None
    assert detect_vitpose({**sd, "neck.conv.weight": torch.zeros(1)}) is None  # not a TopDown(ViT, head) model
    moe = {**sd, "backbone.blocks.0.mlp.experts.0.weight": torch.zeros(4, 4)}  # ViTPose+ MoE layout
    assert detect_vitpose(moe) is None
    bad = dict(sd)
    bad["backbone.blocks.1.attn.qkv.weight"] = torch.zeros(3 * 64, 32)  # inconsistent widths
    assert detect_vitpose(bad) is None


def test_official_kwargs_defaults_and_errors():
    # the authors' class defaults: qkv_bias False, 3 deconvs of 256, 1x1 final conv
    cfg = config_from_official({"backbone": {"img_size": (256, 192), "embed_dim": 64, "num_heads": 4},
                                "keypoint_head": {"in_channels": 64, "out_channels": 17}})
    assert not cfg.qkv_bias and cfg.num_deconv_filters == (256, 256, 256) and cfg.final_conv_kernel == 1
    with pytest.raises(ValueError):
        config_from_official({"backbone": {"embed_dim": 64}, "keypoint_head": {"in_channels": 32}})
    with pytest.raises(ValueError):
        config_from_official({"backbone": {}, "keypoint_head": {"input_transform": "resize_concat"}})


def _tiny(**kw) -> ViTPose:
    return ViTPose(ViTPoseConfig(img_size=(64, 48), embed_dim=32, depth=2, num_heads=2, num_deconv_filters=(16, 16),
                                 **kw))


@pytest.mark.parametrize("use_checkpoint", [False, True])
def test_gradients_flow_in_train_mode(use_checkpoint):
    model = _tiny(drop_path_rate=0.2, use_checkpoint=use_checkpoint).train()
    torch.nn.init.normal_(model.keypoint_head.final_layer.weight, std=0.1)  # the 1e-3 init makes grads tiny
    out = model(torch.randn(2, 3, 64, 48))
    assert out.shape == (2, 17, 16, 12)
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_other_input_sizes_resize_the_position_table():
    model = _randomise(_tiny())
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 64))
        same = model.backbone.position_embedding((4, 3))
    assert out.shape == (1, 17, 24, 16)
    pos = model.backbone.pos_embed
    torch.testing.assert_close(same, pos[:, 1:] + pos[:, :1])


def test_inference_mode_and_bf16_autocast():
    model = _randomise(_tiny())
    x = torch.randn(1, 3, 64, 48)
    with torch.inference_mode():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.shape == ref.shape and torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max() + 1e-3
