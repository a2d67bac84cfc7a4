"""ParaTransCNN: paper-size counts, official checkpoint detection/loading, Winograd path, shapes, gradients."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import reference_root
from model_helpers import assert_detector_rejects_other_families
from vitsuite.core.checkpoint import save_checkpoint
from vitsuite.models import count_model_parameters, load_official_checkpoint
from vitsuite.pipelines.medical.models.paratranscnn import (
    ParaTransCNN,
    ParaTransCNNConfig,
    detect_official,
)
from vitsuite.core.layers.fast import winograd_conv3x3

CASE = reference_root() / "paratranscnn" / "small"
needs_fixture = pytest.mark.skipif(not CASE.is_dir(), reason=f"fixture missing: {CASE}")


@pytest.mark.parametrize("name,expected", [("paratranscnn_synapse", 245_468_937), ("paratranscnn_avt", 245_466_690)])
def test_paper_parameter_counts(name, expected):
    assert count_model_parameters(name) == expected


def _to_official(sd: dict) -> dict:
    """Our keys -> the authors' (inverse of convert_official), to fabricate released checkpoints."""
    names = {"norm1": (0, "norm"), "attn.qkv": (0, "fn.qkv"), "attn.proj": (0, "fn.proj"),
             "norm2": (1, "norm"), "mlp.fc1": (1, "fn.net.0"), "mlp.fc2": (1, "fn.net.3")}
    out = {}
    for k, v in sd.items():
        m = re.match(r"^(vit_[123])\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(\w+)$", k)
        if m:
            parity, name = names[m.group(3)]
            k = f"{m.group(1)}.net.{2 * int(m.group(2)) + parity}.fn.{name}.{m.group(4)}"
        out[k] = v.contiguous()
    return out


def _small(**kw) -> ParaTransCNN:
    cfg = dict(n_channels=3, num_classes=3, heads=2, dim=8, depth=(1, 2, 1), resnet_base_width=4)
    return ParaTransCNN(ParaTransCNNConfig(**{**cfg, **kw}))


@needs_fixture
@pytest.mark.parametrize("wrap", ["state_dict", "model_module"])
def test_fixture_checkpoint_detected_and_reproduced(tmp_path, wrap):
    meta = json.loads((CASE / "meta.json").read_text())
    sd = load_file(str(CASE / "state_dict.safetensors"))
    kwargs = detect_official(sd)
    assert kwargs == {**meta["official_kwargs"], "heads": 8}  # heads is not in the shapes
    obj = {"state_dict": sd} if wrap == "state_dict" else {"model": {f"module.{k}": v for k, v in sd.items()}}
    save_checkpoint(obj, tmp_path / "ckpt.pth")
    model = load_official_checkpoint(tmp_path / "ckpt.pth", heads=meta["official_kwargs"]["heads"])
    io = load_file(str(CASE / "io.safetensors"))
    with torch.no_grad():
        out = model(io["input.x"])
    torch.testing.assert_close(out, io["output.logits"], atol=meta["atol"], rtol=meta["rtol"])


def test_other_configuration_round_trip(tmp_path):
    torch.manual_seed(1)
    ours = _small(n_channels=3, num_classes=4, dim=16, depth=(2, 1, 1), resnet_base_width=8).eval()
    save_checkpoint({"model": _to_official(ours.state_dict())}, tmp_path / "other.pth")
    model = load_official_checkpoint(tmp_path / "other.pth", model_id="paratranscnn", heads=2)
    assert model.cfg == ours.cfg
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ours(x))


def test_detector_rejects_other_families():
    assert_detector_rejects_other_families("paratranscnn", detect_official)


def test_winograd_matches_convolution():
    torch.manual_seed(0)
    for B, C, Co, H, W in [(2, 5, 7, 9, 6), (1, 16, 8, 14, 15), (1, 4, 4, 1, 1)]:
        x, w, b = torch.randn(B, C, H, W), torch.randn(Co, C, 3, 3), torch.randn(Co)
        ref = F.conv2d(x.double(), w.double(), b.double(), padding=1).float()
        for fmt in (torch.contiguous_format, torch.channels_last):
            got = winograd_conv3x3(x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt), b)
            torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)


def test_inference_paths_agree_and_variable_sizes():
    torch.manual_seed(0)
    model = _small().eval()
    x = torch.rand(1, 3, 96, 112)  # decoder3 runs at 24x28 >= the Winograd threshold; non-square
    with torch.no_grad():
        fast = model(x)
    with torch.enable_grad():
        ref = model(x)  # library convolutions
    assert fast.shape == (1, 3, 96, 112)
    torch.testing.assert_close(fast, ref.detach(), atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), fast)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x)
    assert half.shape == fast.shape and torch.isfinite(half).all()
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.rand(1, 3, 40, 48))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = _small().train()
    out = model(torch.rand(2, 3, 32, 32))
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
