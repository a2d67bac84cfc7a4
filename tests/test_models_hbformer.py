"""HBFormer: paper-size counts, official checkpoint detection/loading, shapes, autocast, gradients."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import reference_root
from model_helpers import assert_detector_rejects_other_families
from vitsuite.core.checkpoint import save_checkpoint
from vitsuite.models import count_model_parameters, load_official_checkpoint
from vitsuite.pipelines.medical.models.hbformer import HBFormer, HBFormerConfig, detect_official, official_window

CASE = reference_root() / "hbformer" / "small"
needs_fixture = pytest.mark.skipif(not CASE.is_dir(), reason=f"fixture missing: {CASE}")

PAPER = [("hbformer_synapse", 36_712_129), ("hbformer_synapse_224", 36_704_401),
         ("hbformer_lits2017", 36_711_835), ("hbformer_acdc", 36_704_107)]


@pytest.mark.parametrize("name,expected", PAPER, ids=[p[0] for p in PAPER])
def test_paper_parameter_counts(name, expected):
    assert count_model_parameters(name) == expected


def test_official_window_rule():
    assert [official_window(s) for s in (224, 256, 512, 64, 128)] == [7, 8, 8, 8, 8]
    with pytest.raises(ValueError):
        HBFormerConfig(img_size=240)  # not a multiple of 32


def _to_official(sd: dict) -> dict:
    """Our keys -> the authors' (inverse of convert_official), to fabricate released checkpoints."""
    out = {}
    for k, v in sd.items():
        if k.endswith(("dw_experts", "pw_experts")):
            for j in range(v.shape[0]):
                for i in range(v.shape[1]):
                    w = v[j, i] if k.endswith("dw_experts") else v[j, i][..., None, None]
                    out[f"{k}.{j}.{i}.weight"] = w.contiguous()
            continue
        out[k.replace("encoder.", "MWAencoder.backbone.", 1) if k.startswith("encoder.") else k] = v.contiguous()
    return out


@needs_fixture
@pytest.mark.parametrize("wrap", ["state_dict", "model_module"])
def test_fixture_checkpoint_detected_and_reproduced(tmp_path, wrap):
    meta = json.loads((CASE / "meta.json").read_text())
    sd = load_file(str(CASE / "state_dict.safetensors"))
    assert detect_official(sd) == meta["official_kwargs"]  # img_size 64 read from the clamped windows
    obj = {"state_dict": sd} if wrap == "state_dict" else {"model": {f"module.{k}": v for k, v in sd.items()}}
    save_checkpoint(obj, tmp_path / "ckpt.pth")
    model = load_official_checkpoint(tmp_path / "ckpt.pth")
    io = load_file(str(CASE / "io.safetensors"))
    with torch.no_grad():
        out = model(io["input.x"])
    torch.testing.assert_close(out, io["output.logits"], atol=meta["atol"], rtol=meta["rtol"])


def test_other_configuration_round_trip(tmp_path):
    torch.manual_seed(1)
    cfg = HBFormerConfig(img_size=224, num_classes=3, feature_size=8, embed_dim=16, depths=(1, 2, 1, 1),
                         num_heads=(1, 2, 2, 4))
    ours = HBFormer(cfg).eval()
    save_checkpoint({"model_state_dict": _to_official(ours.state_dict())}, tmp_path / "latest.pth")
    model = load_official_checkpoint(tmp_path / "latest.pth", model_id="hbformer")
    assert model.cfg == cfg  # window 7 -> img_size 224 by default, 3 classes -> dataset LiTS2017
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ours(x))


def test_detector_rejects_other_families():
    assert_detector_rejects_other_families("hbformer", detect_official)


def _small() -> HBFormer:
    return HBFormer(HBFormerConfig(img_size=64, num_classes=4, feature_size=8, embed_dim=16, depths=(1, 2, 1, 1),
                                   num_heads=(1, 2, 2, 2)))


def test_variable_sizes_inference_mode_and_autocast():
    torch.manual_seed(0)
    model = _small().eval()
    x = torch.rand(2, 3, 64, 96)  # non-square; the official class accepts img_size only
    with torch.inference_mode():
        out = model(x)
        assert out.shape == (2, 4, 64, 96) and torch.isfinite(out).all()
        # batch items never mix (the dynamic gates are per sample)
        torch.testing.assert_close(model(x[1:]), out[1:], atol=1e-5, rtol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x)
    assert half.shape == out.shape and torch.isfinite(half).all()
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.rand(1, 3, 48, 64))


def test_gradients_reach_every_used_parameter():
    torch.manual_seed(0)
    model = _small().train()
    model(torch.rand(2, 3, 64, 64)).square().mean().backward()
    unused = ("encoder.norm.", "proj_enc4.")  # official parameters the official forward never uses
    missing = [n for n, p in model.named_parameters()
               if not n.startswith(unused) and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, missing
