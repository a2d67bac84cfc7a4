"""DRCT (restoration): paper sizes, official conversion/detection (stored masks and indices),
per-block head rule, any-size inputs, the inference fast path against the plain path, training.

Parity with the authors' code is pinned by ``shared/reference/drct/small`` (tests/test_reference_parity.py,
tests/test_official_checkpoints.py, tests/test_export.py); these tests cover what that fixture cannot.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import vitsuite.core.layers.fast as fast_path
from conftest import reference_root
from model_helpers import randomize_
from vitsuite.core.layers import relative_position_index, shifted_window_mask
from vitsuite.models import build_model, count_model_parameters, from_official, load_official_checkpoint
from vitsuite.pipelines.restoration.models import drct as drct_mod

# shared/reference/PARAMS_restoration.md, every DRCT row (name, upscale, official count)
PAPER = [
    ("drct", 2, 13_991_867), ("drct", 3, 14_176_507), ("drct", 4, 14_139_579),
    ("drct_l", 2, 27_433_007), ("drct_l", 3, 27_617_647), ("drct_l", 4, 27_580_719),
]

SMALL = dict(upscale=2, in_chans=3, img_size=16, window_size=4, compress_ratio=3, squeeze_factor=30, conv_scale=0.01,
             overlap_ratio=0.5, img_range=1.0, depths=[2, 2], embed_dim=24, num_heads=[6, 4], mlp_ratio=2,
             upsampler="pixelshuffle", resi_connection="1conv", gc=10, drop_path_rate=0.0)



def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    return randomize_(model, seed)
def _small(**over) -> torch.nn.Module:
    return _randomize(from_official("drct", {**SMALL, **over}))


def _official_sd(model: torch.nn.Module, img: int, ws: int) -> dict:
    """Our state dict plus the per-block buffers an official checkpoint carries (index, stored masks)."""
    sd = dict(model.state_dict())
    for i in range(len(model.layers)):
        for k in range(1, 6):
            sd[f"layers.{i}.swin{k}.attn.relative_position_index"] = relative_position_index(ws)
        for k in (2, 4):
            sd[f"layers.{i}.swin{k}.attn_mask"] = shifted_window_mask(img, img, ws, ws // 2)
    return sd


@pytest.mark.parametrize("name,upscale,expected", PAPER, ids=[f"{n}_x{s}" for n, s, _ in PAPER])
def test_paper_parameter_counts(name, upscale, expected):
    assert count_model_parameters(name, upscale=upscale) == expected


def test_paper_heads_and_widths():
    """Paper DRCT group: widths 180/212/244/276/308, heads 6/4/2/6/4, MLP ratio 2,2,2,1,1."""
    assert drct_mod.block_widths_heads(180, 32, 6) == [(180, 6), (212, 4), (244, 2), (276, 6), (308, 4)]
    with torch.device("meta"):
        model = build_model("drct")
    assert model.upscale == 4
    g = model.layers[0]
    assert [g.swin1.mlp.fc1.out_features, g.swin4.mlp.fc1.out_features] == [360, 276]
    kw = drct_mod.detect_official(model.state_dict())
    assert kw["upscale"] == 4 and kw["gc"] == 32 and kw["num_heads"] == [6] * 6 and len(kw["depths"]) == 6
    assert kw["window_size"] == 16 and kw["mlp_ratio"] == 2 and kw["embed_dim"] == 180


def test_fixture_checkpoint_detected():
    case = reference_root() / "drct" / "small"
    if not case.is_dir():
        pytest.skip("drct fixture not found")
    meta = json.loads((case / "meta.json").read_text())
    sd = load_file(str(case / "state_dict.safetensors"))
    kw = drct_mod.detect_official(sd)
    for k, v in meta["official_kwargs"].items():
        if k not in ("img_size", "drop_path_rate", "depths") and k not in drct_mod.IGNORED_OFFICIAL:
            assert kw[k] == v, k
    assert len(kw["depths"]) == len(meta["official_kwargs"]["depths"])
    assert any(k.endswith("attn_mask") for k in sd)
    assert not any(k.endswith(("attn_mask", "relative_position_index")) for k in drct_mod.convert_official(sd))


def test_converter_checks_index_and_drops_masks(tmp_path):
    model = _small()
    sd = _official_sd(model, 16, 4)
    out = drct_mod.convert_official(sd)
    assert set(out) == set(model.state_dict())
    bad = dict(sd)
    bad["layers.1.swin3.attn.relative_position_index"] = bad["layers.1.swin3.attn.relative_position_index"].flip(0)
    with pytest.raises(ValueError, match="relative_position_index"):
        drct_mod.convert_official(bad)
    # a checkpoint trained at img_size 16 (masks 16x16) runs at any size
    path = tmp_path / "DRCT_SRx2.pth"
    torch.save({"params_ema": sd}, path)
    loaded = load_official_checkpoint(path, img_size=16)
    x = torch.rand(1, 3, 12, 20)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)


def test_head_rule_validated():
    with pytest.raises(ValueError, match="divisible"):
        from_official("drct", {**SMALL, "embed_dim": 30, "gc": 8, "num_heads": [5, 5]})
    model = from_official("drct", {**SMALL, "embed_dim": 36, "gc": 11, "depths": [2], "num_heads": [4]})
    assert [model.layers[0].swin2.attn.num_heads, model.layers[0].swin5.attn.num_heads] == [1, 4]


def test_depth_values_do_not_change_the_architecture():
    a = from_official("drct", {**SMALL, "depths": [6, 6]})
    b = from_official("drct", {**SMALL, "depths": [1, 2]})
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


@pytest.mark.parametrize("over", [{}, {"num_heads": [3, 2], "window_size": 8},
                                  {"qkv_bias": False, "patch_norm": False, "resi_connection": "identity",
                                   "in_chans": 1, "upscale": 3, "img_range": 255.0}])
def test_fast_path_matches_plain_path(monkeypatch, over):
    model = _small(**over)
    x = torch.rand(2, model.in_chans, 16, 24)
    with torch.no_grad():
        fast = model(x)
        monkeypatch.setattr(fast_path, "_ONEDNN", False)
        plain = model(x)
    torch.testing.assert_close(fast, plain, rtol=0, atol=2e-5)
    monkeypatch.setattr(fast_path, "_ONEDNN", None)
    with torch.enable_grad():
        torch.testing.assert_close(model(x).detach(), plain, rtol=0, atol=2e-5)


@pytest.mark.parametrize("hw", [(9, 13), (4, 4), (2, 7)])
def test_any_input_size_is_padded_like_the_official_wrapper(hw):
    model = _small()
    H, W = hw
    x = torch.rand(1, 3, H, W)
    with torch.no_grad():
        y = model(x)
        ph, pw = (-H) % 4, (-W) % 4
        mode = "reflect" if ph < H and pw < W else "replicate"
        ref = model(F.pad(x, (0, pw, 0, ph), mode=mode))[..., : 2 * H, : 2 * W]
    assert y.shape == (1, 3, 2 * H, 2 * W)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-6)


def test_img_size_not_larger_than_window():
    """Official rule: the window shrinks to img_size and no block shifts."""
    model = _small(img_size=8, window_size=16, depths=[1], num_heads=[4])
    blocks = [getattr(model.layers[0], f"swin{k}") for k in range(1, 6)]
    assert all(b.attn.window_size == 8 and b.shift_size == 0 for b in blocks)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 8, 16)).shape == (1, 3, 16, 32)


def test_training_step_reaches_every_parameter():
    model = from_official("drct", {**SMALL, "drop_path_rate": 0.1}).train()
    loss = model(torch.rand(2, 3, 8, 8)).square().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_caches_follow_weight_updates():
    a, b = _small(), _randomize(from_official("drct", SMALL), seed=1)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        a(x)
        a.load_state_dict(b.state_dict())
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=1e-6)
        a.layers[1].adjust5.weight.mul_(1.5)
        a.layers[0].swin2.attn.relative_position_bias_table.add_(1.0)
        b.load_state_dict(a.state_dict())
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=1e-6)
