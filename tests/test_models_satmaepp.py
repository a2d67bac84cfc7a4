"""SatMAE++: paper sizes, checkpoint detection (MAE-style ``{"model": sd}`` files), masking, losses, gradients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import reference_root
from vitsuite.core.checkpoint import save_checkpoint
from vitsuite.core.registry import get_official_spec
from vitsuite.models import build_model, count_model_parameters, detect_official, load_official_checkpoint
from vitsuite.pipelines.remote_sensing.models import satmaepp, satmaepp_mae
from vitsuite.pipelines.remote_sensing.models.satmaepp import SatMAEPPViT, SatMAEPPViTConfig
from vitsuite.pipelines.remote_sensing.models.satmaepp_mae import (
    SatMAEPPGroupMAE,
    SatMAEPPMAE,
    SatMAEPPMAEConfig,
    random_masking,
)

REF = reference_root()
MY_IDS = ("satmaepp_mae", "satmaepp_vit", "satmaepp_vit_rgb")
DETECTORS = {"satmaepp_vit": satmaepp.detect_official, "satmaepp_vit_rgb": satmaepp.detect_official_rgb,
             "satmaepp_mae": satmaepp_mae.detect_official, "satmaepp_mae_rgb": satmaepp_mae.detect_official_rgb}
needs_ref = pytest.mark.skipif(not all((REF / m).is_dir() for m in MY_IDS), reason="reference fixtures not found")

# PARAMS_remote_sensing.md, SatMAE++ rows: (name, total, trainable).
PAPER_COUNTS = [
    ("satmaepp_mae_vit_large_group", 329_330_028, 329_161_708),
    ("satmaepp_vit_large_group", 303_146_814, 303_146_814),
    ("satmaepp_mae_vit_large_rgb", 329_547_267, 329_244_675),
    ("satmaepp_vit_large_rgb", 303_365_182, 303_365_182),
]


@pytest.mark.parametrize("name,total,trainable", PAPER_COUNTS, ids=[r[0] for r in PAPER_COUNTS])
def test_paper_parameter_counts(name, total, trainable):
    assert count_model_parameters(name) == total
    with torch.device("meta"):
        model = build_model(name)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable


# ----------------------------------------------------------------------------- checkpoints
def _run(model, meta, io):
    kwargs = dict(meta.get("call_kwargs", {}))
    kwargs.update({k: io[v] for k, v in meta.get("tensor_call_kwargs", {}).items()})
    with torch.no_grad():
        out = model(*[io[f"input.{n}"] for n in meta["inputs"]], **kwargs)
    return out if isinstance(out, tuple) else (out,)


@needs_ref
@pytest.mark.parametrize("model_id", MY_IDS)
def test_mae_style_checkpoint_roundtrip_reproduces_fixture(tmp_path: Path, model_id: str):
    """Saved as main_pretrain/main_finetune do (``{"model": state_dict, "epoch": ...}``); only the declared
    uninferable arguments are passed."""
    case = REF / model_id / "small"
    meta = json.loads((case / "meta.json").read_text())
    sd, io = load_file(str(case / "state_dict.safetensors")), load_file(str(case / "io.safetensors"))
    path = save_checkpoint({"model": sd, "epoch": 7}, tmp_path / "checkpoint-7.pth")
    kw = meta["official_kwargs"]
    overrides = {k: kw[k] for k in get_official_spec(model_id).uninferable if k in kw}
    model = load_official_checkpoint(path, **overrides)
    for name, got in zip(meta["outputs"], _run(model, meta, io)):
        torch.testing.assert_close(got.float(), io[f"output.{name}"], atol=meta["atol"], rtol=meta["rtol"])
    inferred = DETECTORS[model_id](sd)
    for key, value in kw.items():  # everything but the head counts is read from the shapes
        if key not in ("num_heads", "decoder_num_heads"):
            assert inferred.get(key, value) == value, key


@needs_ref
def test_detectors_are_exclusive_on_every_fixture():
    cases = sorted(p.parent for p in REF.glob("*/*/state_dict.safetensors"))
    for case in cases:
        sd = load_file(str(case / "state_dict.safetensors"))
        model_id = case.parent.name
        hits = [name for name, det in DETECTORS.items() if det(sd) is not None]
        assert hits == ([model_id] if model_id in DETECTORS else []), case
        if model_id in MY_IDS:
            assert [f[0] for f in detect_official(sd)] == [model_id], case


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


FINETUNE_CONFIGS = [
    dict(img_size=16, patch_size=4, in_chans=6, channel_groups=((0, 1, 2), (3,), (4, 5)), channel_embed=8, num_classes=3,
         embed_dim=40, depth=3, num_heads=2, global_pool=False, qkv_bias=False, mlp_ratio=2.0),
    dict(img_size=16, patch_size=4, in_chans=4, channel_groups=None, num_classes=5, embed_dim=32, depth=2, num_heads=2,
         global_pool=False),
]


@pytest.mark.parametrize("cfg", FINETUNE_CONFIGS, ids=["group_cls_token", "rgb_cls_token"])
def test_other_finetune_configurations_roundtrip(tmp_path: Path, cfg):
    src = _perturbed(SatMAEPPViT(SatMAEPPViTConfig(**cfg)))
    path = save_checkpoint({"model": src.state_dict()}, tmp_path / "finetuned.pth")
    found = detect_official(torch.load(path, weights_only=True)["model"])
    expect = "satmaepp_vit" if cfg["channel_groups"] else "satmaepp_vit_rgb"
    assert [f[0] for f in found] == [expect]
    kw = found[0][1]
    assert (kw["img_size"], kw["patch_size"], kw["in_chans"], kw["num_classes"], kw["global_pool"]) == (
        16, 4, cfg["in_chans"], cfg["num_classes"], False)
    if cfg["channel_groups"]:  # non-paper sizes -> contiguous runs, which these groups are
        assert kw["channel_groups"] == [[0, 1, 2], [3], [4, 5]] and kw["channel_embed"] == 8
    model = load_official_checkpoint(path, num_heads=2)
    x = torch.rand(2, cfg["in_chans"], 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x))


MAE_CONFIGS = [
    dict(img_size=16, patch_size=4, in_chans=4, channel_groups=((0, 1), (2, 3)), channel_embed=8, embed_dim=32, depth=2,
         num_heads=2, decoder_channel_embed=4, decoder_embed_dim=16, decoder_depth=2, decoder_num_heads=2, proj_ratio=2),
    dict(img_size=16, patch_size=4, in_chans=3, channel_groups=None, embed_dim=32, depth=1, num_heads=2,
         decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, proj_ratio=3),
]


@pytest.mark.parametrize("cfg", MAE_CONFIGS, ids=["group", "rgb"])
def test_other_mae_configurations_roundtrip(tmp_path: Path, cfg):
    grouped = cfg["channel_groups"] is not None
    src = _perturbed((SatMAEPPGroupMAE if grouped else SatMAEPPMAE)(SatMAEPPMAEConfig(**cfg)))
    path = save_checkpoint({"model": src.state_dict(), "epoch": 1}, tmp_path / "pretrain.pth")
    model = load_official_checkpoint(path, num_heads=2, decoder_num_heads=2)
    assert type(model) is type(src) and model.cfg.proj_ratio == cfg["proj_ratio"]
    n_tok = (len(cfg["channel_groups"]) if grouped else 1) * 16
    x, noise = torch.rand(2, cfg["in_chans"], 16, 16), torch.rand(2, n_tok)
    ups = [torch.rand(2, cfg["in_chans"], 16 * s, 16 * s) for s in ((2, 4) if grouped else (2,))]
    with torch.no_grad():
        for a, b in zip(model(x, *ups, mask_ratio=0.5, noise=noise), src(x, *ups, mask_ratio=0.5, noise=noise)):
            torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- masking and losses
def test_random_masking_keeps_lowest_noise_and_floors():
    x = torch.arange(2 * 100 * 3, dtype=torch.float32).view(2, 100, 3)
    noise = torch.rand(2, 100)
    kept, mask, ids_restore = random_masking(x, 0.9, noise)
    assert kept.shape == (2, 9, 3)  # int(100 * (1 - 0.9)) = 9, not 10
    assert mask.dtype == torch.float32 and mask.sum(1).tolist() == [91.0, 91.0]
    for b in range(2):
        lowest = noise[b].argsort()[:9]
        assert torch.equal(kept[b], x[b, lowest]) and (mask[b, lowest] == 0).all()
        assert torch.equal(noise[b].argsort()[ids_restore[b]], torch.arange(100))
    assert random_masking(x[:, :48], 0.6, noise[:, :48])[0].shape[1] == 19


def _tiny_group_mae(**kw) -> SatMAEPPGroupMAE:
    cfg = dict(img_size=16, patch_size=4, in_chans=5, channel_groups=((0, 3), (1, 2, 4)), channel_embed=8, embed_dim=32,
               depth=1, num_heads=2, decoder_channel_embed=4, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    return SatMAEPPGroupMAE(SatMAEPPMAEConfig(**{**cfg, **kw})).eval()


def test_spatial_mask_masks_positions_in_all_groups():
    torch.manual_seed(0)
    model = _tiny_group_mae(spatial_mask=True)
    x = torch.rand(2, 5, 16, 16)
    latent, mask, _ = model.forward_encoder(x, 0.75, torch.rand(2, 16))
    assert latent.shape == (2, 1 + 2 * 4, 32) and mask.shape == (2, 2, 16)
    assert torch.equal(mask[:, 0], mask[:, 1]) and mask[:, 0].sum(1).tolist() == [12.0, 12.0]


def test_loss_band_order_quirk_and_fixed_option():
    """``pred`` lists bands group by group (0, 3, 1, 2, 4); the official loss compares it with bands 0..4."""
    torch.manual_seed(0)
    x = torch.rand(2, 5, 16, 16)
    mask = torch.ones(2, 2, 16)
    order = [0, 3, 1, 2, 4]
    perfect = x[:, order].reshape(2, 5, 4, 4, 4, 4).transpose(3, 4).reshape(2, 5, 16, 16)  # (B, C, L, p*p)
    fixed = _tiny_group_mae(official_loss_order=False)
    assert fixed.forward_loss(x, perfect, mask).item() == pytest.approx(0.0, abs=1e-12)
    official = _tiny_group_mae()
    assert official.forward_loss(x, perfect, mask).item() > 1e-3
    in_band_order = x.reshape(2, 5, 4, 4, 4, 4).transpose(3, 4).reshape(2, 5, 16, 16)
    assert official.forward_loss(x, in_band_order, mask).item() == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(official.pred_to_image(perfect), x[:, order])  # unpatchify inverts the layout


def test_mae_forward_shapes_list_form_and_gradients():
    torch.manual_seed(0)
    model = _tiny_group_mae().train()
    x, up2, up4 = torch.rand(2, 5, 16, 16), torch.rand(2, 5, 32, 32), torch.rand(2, 5, 64, 64)
    loss, ms_loss, pred, mask = model(x, [up2, up4], mask_ratio=0.5)
    assert pred.shape == (2, 5, 16, 16) and mask.shape == (2, 2, 16) and loss.ndim == 0 and ms_loss.ndim == 0
    (0.6 * loss + 0.4 * ms_loss).backward()
    frozen = {"pos_embed", "channel_embed", "decoder_pos_embed", "decoder_channel_embed"}
    for name, p in model.named_parameters():
        if name in frozen:
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    with pytest.raises(ValueError, match="upscaled"):
        model(x, up2)


def test_finetune_gradients_input_check_and_bf16():
    torch.manual_seed(0)
    model = SatMAEPPViT(SatMAEPPViTConfig(img_size=16, patch_size=4, in_chans=10, channel_embed=8, num_classes=3,
                                          embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.1)).train()
    x = torch.rand(2, 10, 16, 16)
    model(x).logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.eval()
    with pytest.raises(ValueError, match="img_size"):
        model(torch.rand(1, 10, 20, 20))
    with torch.inference_mode():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    torch.testing.assert_close(low.float(), ref, atol=0.05, rtol=0.05)


def test_mae_inference_mode_and_bf16_autocast():
    torch.manual_seed(0)
    model = _tiny_group_mae()
    x, up2, up4, noise = torch.rand(1, 5, 16, 16), torch.rand(1, 5, 32, 32), torch.rand(1, 5, 64, 64), torch.rand(1, 32)
    with torch.inference_mode():
        ref = model(x, up2, up4, noise=noise)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, up2, up4, noise=noise)
    assert torch.equal(low[3], ref[3])
    for a, b in zip(low[:3], ref[:3]):
        torch.testing.assert_close(a.float(), b, atol=0.05, rtol=0.05)
