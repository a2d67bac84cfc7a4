"""DuoFormer: paper-size counts, fork/authors' checkpoint detection and loading, shortcuts, gradients."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import reference_root
from model_helpers import assert_detector_rejects_other_families
from vitsuite.core.checkpoint import save_checkpoint
from vitsuite.models import build_model, count_model_parameters, load_official_checkpoint
from vitsuite.pipelines.medical.models.duoformer import (
    DuoFormer,
    DuoFormerConfig,
    PatchBlock,
    ScaleBlock,
    detect_official,
)

CASE = reference_root() / "duoformer" / "small"
needs_fixture = pytest.mark.skipif(not CASE.is_dir(), reason=f"fixture missing: {CASE}")

# (name, total, trainable) from PARAMS_medical.md
PAPER = [("duoformer_r50", 139_325_514, 115_817_482), ("duoformer_r18", 25_694_026, 25_694_026),
         ("duoformer_r50_s4", 139_978_314, 139_978_314), ("duoformer_r50_s4_channel", 185_994_058, 162_486_026)]


@pytest.mark.parametrize("name,total,trainable", PAPER, ids=[p[0] for p in PAPER])
def test_paper_parameter_counts(name, total, trainable):
    assert count_model_parameters(name) == total
    with torch.device("meta"):
        model = build_model(name)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable


def _authors_keys(sd: dict) -> dict:
    """The authors' spelling of the fork's keys (scaleBlocks, chann_proj*)."""
    return {k.replace("vision_transformer.scale_blocks.", "vision_transformer.scaleBlocks.")
            .replace("channel_proj", "chann_proj", 1): v.contiguous() for k, v in sd.items()}


@needs_fixture
@pytest.mark.parametrize("wrap", ["state_dict", "model_module", "authors"])
def test_fixture_checkpoint_detected_and_reproduced(tmp_path, wrap):
    meta = json.loads((CASE / "meta.json").read_text())
    kw = meta["official_kwargs"]
    sd = load_file(str(CASE / "state_dict.safetensors"))
    found = detect_official(sd)
    for key in ("depth", "embed_dim", "num_classes", "num_layers", "proj_dim", "backbone", "scale_token",
                "hardcoded_overrides"):
        assert found[key] == kw[key], key
    obj = {"state_dict": sd} if wrap == "state_dict" else (
        {"model": {f"module.{k}": v for k, v in sd.items()}} if wrap == "model_module" else _authors_keys(sd))
    save_checkpoint(obj, tmp_path / "ckpt.pth")
    model = load_official_checkpoint(tmp_path / "ckpt.pth", num_heads=kw["num_heads"])
    io = load_file(str(CASE / "io.safetensors"))
    with torch.no_grad():
        out = model(io["input.x"])
    torch.testing.assert_close(out, io["output.logits"], atol=meta["atol"], rtol=meta["rtol"])


def test_other_configuration_round_trip(tmp_path):
    """ResNet-50 layout, 4 scales, channel scale token, q/k norms, in the authors' key spelling."""
    torch.manual_seed(1)
    cfg = DuoFormerConfig(depth=2, embed_dim=16, num_heads=2, num_classes=3, num_layers=4, backbone="r50",
                          resnet_base_width=4, scale_token="channel", channel_token_dim=16, qk_norm=True)
    ours = DuoFormer(cfg).eval()
    sd = _authors_keys(ours.state_dict())
    assert any(k.startswith("chann_proj_all.") for k in sd) and any(".scaleBlocks." in k for k in sd)
    save_checkpoint({"state_dict": sd}, tmp_path / "authors.pth")
    model = load_official_checkpoint(tmp_path / "authors.pth", model_id="duoformer", num_heads=2)
    assert model.cfg == cfg
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ours(x))


def test_detector_rejects_other_families():
    assert_detector_rejects_other_families("duoformer", detect_official)


def test_first_row_shortcuts_match_full_blocks():
    torch.manual_seed(0)
    cfg = DuoFormerConfig(embed_dim=32, num_heads=4, qk_norm=True)
    for blk in (ScaleBlock(cfg).eval(), PatchBlock(cfg).eval()):
        x = torch.randn(5, 7, 32)
        with torch.no_grad():
            torch.testing.assert_close(blk(x, first_only=True), blk(x)[:, :1], atol=1e-6, rtol=1e-5)


def test_fast_inference_path_matches_autograd_path_and_tracks_weights():
    torch.manual_seed(0)
    model = DuoFormer(DuoFormerConfig(depth=2, embed_dim=32, num_heads=4, num_classes=3, backbone="r18",
                                      resnet_base_width=4)).eval()
    x = torch.randn(1, 3, 224, 224)
    for step in range(2):
        with torch.no_grad():
            fast = model(x)  # oneDNN linears with fused GELU / residual adds
        with torch.enable_grad():
            ref = model(x).detach()  # plain F.linear
        torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
        # and again with other weights (nothing stale may be cached)
        model.load_state_dict({k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()})


def _small(**kw) -> DuoFormer:
    base = dict(depth=2, embed_dim=16, num_heads=2, num_classes=3, num_layers=2, backbone="r18", resnet_base_width=4)
    return DuoFormer(DuoFormerConfig(**{**base, **kw}))


def test_inference_mode_autocast_and_input_check():
    torch.manual_seed(0)
    model = _small(num_layers=3).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        out = model(x)
        torch.testing.assert_close(model(x[1:]), out[1:], atol=1e-5, rtol=1e-5)  # batch items never mix
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x)
    assert out.shape == half.shape == (2, 3) and torch.isfinite(half).all()
    with pytest.raises(ValueError, match="224"):
        model(torch.randn(1, 3, 192, 192))


def test_gradients_and_frozen_backbone():
    torch.manual_seed(0)
    model = _small(freeze_backbone=False, scale_token="channel", channel_token_dim=16).train()
    model(torch.randn(2, 3, 224, 224)).square().mean().backward()
    unused = ("vision_transformer.fc_norm.",)  # evaluated but discarded officially
    missing = [n for n, p in model.named_parameters()
               if not n.startswith(unused) and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, missing
    frozen = _small()
    assert not any(p.requires_grad for p in frozen.resnet_projector.parameters())
    assert all(p.requires_grad for p in frozen.vision_transformer.parameters())
