"""HAT (restoration): paper sizes, official conversion/detection, any-size inputs, the inference fast
path against the plain path, the window grouping against Swin's mask, caches and training.

Parity with the authors' code is pinned by ``shared/reference/hat/small`` (tests/test_reference_parity.py,
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
from vitsuite.core.layers import overlapping_relative_position_index, relative_position_index, shifted_window_mask
from vitsuite.core.layers.sr import shift_group_masks, window_plan
from vitsuite.models import build_model, count_model_parameters, from_official, load_official_checkpoint
from vitsuite.pipelines.restoration.models import hat as hat_mod

# shared/reference/PARAMS_restoration.md, every HAT row (name, upscale, official count)
PAPER = [
    ("hat_s", 2, 9_473_471), ("hat_s", 3, 9_658_111), ("hat_s", 4, 9_621_183),
    ("hat", 2, 20_624_795), ("hat", 3, 20_809_435), ("hat", 4, 20_772_507),
    ("hat_l", 2, 40_698_863), ("hat_l", 3, 40_883_503), ("hat_l", 4, 40_846_575),
]

SMALL = dict(upscale=4, in_chans=3, img_size=16, window_size=4, compress_ratio=3, squeeze_factor=6, conv_scale=0.01,
             overlap_ratio=0.5, img_range=1.0, depths=[2, 2], embed_dim=24, num_heads=[2, 4], mlp_ratio=2,
             upsampler="pixelshuffle", resi_connection="1conv", drop_path_rate=0.0)



def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    return randomize_(model, seed)
def _small(**over) -> torch.nn.Module:
    return _randomize(from_official("hat", {**SMALL, **over}))


def _official_sd(model: torch.nn.Module, ws: int, ow: int) -> dict:
    """Our state dict plus the two model-level index buffers an official checkpoint carries."""
    sd = dict(model.state_dict())
    sd["relative_position_index_SA"] = relative_position_index(ws)
    sd["relative_position_index_OCA"] = overlapping_relative_position_index(ws, ow)
    return sd


@pytest.mark.parametrize("name,upscale,expected", PAPER, ids=[f"{n}_x{s}" for n, s, _ in PAPER])
def test_paper_parameter_counts(name, upscale, expected):
    assert count_model_parameters(name, upscale=upscale) == expected


def test_paper_default_is_x4_and_detectable():
    with torch.device("meta"):
        model = build_model("hat_s")
    assert model.upscale == 4
    kw = hat_mod.detect_official(model.state_dict())
    assert kw["upscale"] == 4 and kw["embed_dim"] == 144 and kw["window_size"] == 16
    assert kw["compress_ratio"] == 24 and kw["squeeze_factor"] == 24 and kw["mlp_ratio"] == 2
    assert kw["overlap_ratio"] == 0.5 and kw["depths"] == [6] * 6 and kw["num_heads"] == [6] * 6
    with torch.device("meta"):
        again = hat_mod.HAT(hat_mod.config_from_official(kw))
    assert sum(p.numel() for p in again.parameters()) == 9_621_183


@pytest.mark.parametrize("upscale", [1, 2, 3, 4, 8])
def test_detect_recovers_config(upscale):
    cfg = {**SMALL, "upscale": upscale, "depths": [2, 3, 1], "num_heads": [2, 3, 6], "mlp_ratio": 1.5,
           "compress_ratio": 4, "squeeze_factor": 8, "window_size": 8, "overlap_ratio": 0.25,
           "resi_connection": "identity"}
    with torch.device("meta"):
        model = from_official("hat", cfg)
    kw = hat_mod.detect_official(model.state_dict())
    for k in ("upscale", "depths", "num_heads", "mlp_ratio", "compress_ratio", "squeeze_factor", "window_size",
              "overlap_ratio", "embed_dim", "in_chans", "resi_connection"):
        assert kw[k] == cfg[k], k
    assert hat_mod.detect_official({"conv_first.weight": torch.zeros(3, 3, 3, 3)}) is None


def test_fixture_checkpoint_detected():
    case = reference_root() / "hat" / "small"
    if not case.is_dir():
        pytest.skip("hat fixture not found")
    meta = json.loads((case / "meta.json").read_text())
    kw = hat_mod.detect_official(load_file(str(case / "state_dict.safetensors")))
    for k, v in meta["official_kwargs"].items():
        if k not in ("img_size", "drop_path_rate"):
            assert kw[k] == v, k


def test_converter_checks_and_drops_index_buffers():
    model = _small()
    sd = _official_sd(model, 4, 6)
    out = hat_mod.convert_official(sd)
    assert "relative_position_index_SA" not in out and "relative_position_index_OCA" not in out
    bad = dict(sd)
    bad["relative_position_index_OCA"] = bad["relative_position_index_OCA"] % 81   # "fixed" negatives: wrong
    with pytest.raises(ValueError, match="OCA"):
        hat_mod.convert_official(bad)


def test_load_official_checkpoint_file(tmp_path):
    model = _small()
    path = tmp_path / "HAT_SRx4.pth"
    torch.save({"params_ema": {f"module.{k}": v for k, v in _official_sd(model, 4, 6).items()}}, path)
    loaded = load_official_checkpoint(path, img_size=16)
    x = torch.rand(1, 3, 8, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)


def test_window_groups_reproduce_swin_shift_mask():
    """Grouped windows + one mask per group == Swin's per-window mask on the rolled map."""
    for H, W, ws, s in [(12, 16, 4, 2), (8, 8, 8, 4), (4, 12, 4, 1), (16, 8, 4, 3)]:
        gather, scatter, groups = window_plan(2, H, W, ws, s, torch.device("cpu"))
        assert torch.equal(gather[scatter], torch.arange(2 * H * W))
        ref = shifted_window_mask(H, W, ws, s)                     # (nW, N, N) in row-major window order
        masks = torch.cat([torch.zeros(1, ws * ws, ws * ws), shift_group_masks(ws, s)])
        N = ws * ws
        # pixel (after the roll) of the first token of every gathered window identifies it
        for start, n_win, kind in groups:
            for w in range(n_win):
                pix = int(gather[start + w * N]) % (H * W)
                r, c = ((pix // W - s) % H) // ws, ((pix % W - s) % W) // ws
                assert torch.equal(ref[r * (W // ws) + c], masks[kind]), (H, W, ws, s, r, c)


@pytest.mark.parametrize("over", [{}, {"num_heads": [3, 6], "window_size": 8, "overlap_ratio": 0.25},
                                  {"qkv_bias": False, "patch_norm": False, "resi_connection": "identity",
                                   "in_chans": 1, "upscale": 3, "img_range": 255.0}])
def test_fast_path_matches_plain_path(monkeypatch, over):
    """The oneDNN + padded-head inference path computes the same function as the plain path."""
    model = _small(**over)
    c = model.in_chans
    x = torch.rand(2, c, 16, 24)
    with torch.no_grad():
        fast = model(x)
        monkeypatch.setattr(fast_path, "_ONEDNN", False)
        plain = model(x)
    torch.testing.assert_close(fast, plain, rtol=0, atol=2e-5)
    monkeypatch.setattr(fast_path, "_ONEDNN", None)
    with torch.enable_grad():  # eval with autograd also takes the plain path
        torch.testing.assert_close(model(x).detach(), plain, rtol=0, atol=2e-5)


@pytest.mark.parametrize("hw", [(9, 13), (4, 4), (3, 5), (17, 8)])
def test_any_input_size_is_padded_like_the_official_wrapper(hw):
    model = _small()
    H, W = hw
    x = torch.rand(1, 3, H, W)
    with torch.no_grad():
        y = model(x)
        ph, pw = (-H) % 4, (-W) % 4
        mode = "reflect" if ph < H and pw < W else "replicate"
        ref = model(F.pad(x, (0, pw, 0, ph), mode=mode))[..., : 4 * H, : 4 * W]
    assert y.shape == (1, 3, 4 * H, 4 * W) and y.is_contiguous()
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-6)


def test_batch_independent_and_deterministic():
    model = _small()
    x = torch.rand(3, 3, 8, 16)
    with torch.no_grad():
        y = model(x)
        torch.testing.assert_close(model(x[1:2]), y[1:2], rtol=0, atol=1e-5)
        assert torch.equal(model(x), y)


def test_caches_follow_weight_updates():
    """Cached masks and padded weights are rebuilt after load_state_dict / in-place edits."""
    a, b = _small(), _randomize(from_official("hat", SMALL), seed=1)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        a(x)                                        # fill the caches
        a.load_state_dict(b.state_dict())
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=1e-6)
        a.layers[0].residual_group.blocks[1].attn.relative_position_bias_table.add_(1.0)
        a.layers[1].residual_group.overlap_attn.qkv.weight.mul_(1.1)
        b.load_state_dict(a.state_dict())
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=1e-6)
        a.to(torch.bfloat16).float()                # new storages (rounded weights): caches must follow
        b.load_state_dict(a.state_dict())
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=1e-6)


def test_training_step_reaches_every_parameter():
    model = from_official("hat", {**SMALL, "drop_path_rate": 0.1}).train()
    x = torch.rand(2, 3, 8, 8)
    loss = model(x).square().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_invalid_configurations():
    with pytest.raises(ValueError, match="pixelshuffle"):
        from_official("hat", {**SMALL, "upsampler": ""})
    with pytest.raises(ValueError, match="even"):
        from_official("hat", {**SMALL, "window_size": 6, "overlap_ratio": 0.5})
    with pytest.raises(ValueError, match="img_size"):
        from_official("hat", {**SMALL, "img_size": 2})
    with pytest.raises(ValueError, match="upscale"):
        from_official("hat", {**SMALL, "upscale": 5})
    with pytest.raises(ValueError, match="divisible"):
        from_official("hat", {**SMALL, "num_heads": [5, 4]})


def test_img_size_equal_to_window_disables_shift():
    """Official rule: blocks do not shift when the image is not larger than the window."""
    model = from_official("hat", {**SMALL, "img_size": 4})
    assert all(blk.shift_size == 0 for layer in model.layers for blk in layer.residual_group.blocks)


@pytest.mark.parametrize("family", ["hat", "drct"])
def test_absolute_position_embedding_fixes_the_input_size(family):
    """``ape=True`` (official option, off in the paper models): the embedding is added to the tokens and
    only the configured ``img_size`` is accepted, with a one-line error otherwise."""
    kw = {**SMALL} if family == "hat" else dict(upscale=2, in_chans=3, img_size=16, window_size=4, depths=[2],
                                                 embed_dim=12, num_heads=[2], gc=4, upsampler="pixelshuffle")
    model = _randomize(from_official(family, {**kw, "ape": True})).eval()
    assert model.absolute_pos_embed.shape == (1, 16 * 16, model.embed_dim)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        y = model(x)
        model.absolute_pos_embed.zero_()
        assert not torch.allclose(model(x), y)  # the embedding is used
        with pytest.raises(ValueError, match=r"ape=True fixes the input to img_size \(16, 16\), got 24x24"):
            model(torch.rand(1, 3, 24, 24))
