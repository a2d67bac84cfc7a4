"""ChannelViT: paper sizes, checkpoint detection in both official layouts, channel subsets, HCS, gradients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import reference_root
from vitsuite.core.checkpoint import save_checkpoint
from vitsuite.models import count_model_parameters, detect_official, from_official, load_official_checkpoint
from vitsuite.pipelines.remote_sensing.models.channelvit import ChannelViT, ChannelViTConfig, dino_resample_pos
from vitsuite.pipelines.remote_sensing.models.channelvit import detect_official as detect

REF = reference_root()
needs_ref = pytest.mark.skipif(not (REF / "channelvit").is_dir(), reason="reference fixtures not found")

# PARAMS_remote_sensing.md, ChannelViT rows (the DINO and HCS ImageNet models count the same).
PAPER_COUNTS = [
    ("channelvit_s16", 21_470_208, "imagenet_channelvit_small_p16_{DINO,with_hcs_supervised}"),
    ("channelvit_s8_jumpcp", 21_623_040, "cpjump_cellpaint_channelvit_small_p8_with_hcs_supervised"),
    ("channelvit_s8_jumpcp_bf", 21_624_192, "cpjump_cellpaint_bf_channelvit_small_p8_with_hcs_supervised"),
    ("channelvit_s8_so2sat", 21_628_032, "so2sat_channelvit_small_p8_with_hcs_{random,hard}_split_supervised"),
    ("channelvit_s8_camelyon", 21_622_272, "camelyon_channelvit_small_p8_with_hcs_supervised"),
]


@pytest.mark.parametrize("name,expected,row", PAPER_COUNTS, ids=[r[0] for r in PAPER_COUNTS])
def test_paper_parameter_counts(name, expected, row):
    assert count_model_parameters(name) == expected, row


def _case(name: str):
    meta = json.loads((REF / "channelvit" / name / "meta.json").read_text())
    return meta, load_file(str(REF / "channelvit" / name / "state_dict.safetensors")), \
        load_file(str(REF / "channelvit" / name / "io.safetensors"))


def _tiny(**kw) -> ChannelViT:
    cfg = dict(img_size=32, patch_size=8, in_chans=5, embed_dim=32, depth=2, num_heads=2)
    return ChannelViT(ChannelViTConfig(**{**cfg, **kw})).eval()


def _official_layout(model: ChannelViT, hcs: bool) -> dict[str, torch.Tensor]:
    """Our state dict in the authors' key layout (hcs: (C, D) nn.Embedding weight; DINO: (1, D, C, 1, 1))."""
    sd = dict(model.state_dict())
    if hcs:
        emb = sd.pop("patch_embed.channel_embed")
        sd["patch_embed.channel_embed.weight"] = emb.reshape(emb.shape[1], emb.shape[2]).t().contiguous()
    return sd


# ----------------------------------------------------------------------------- checkpoints
@needs_ref
@pytest.mark.parametrize("case", ["small", "dino_layout"])
def test_hub_checkpoint_roundtrip_reproduces_fixture(tmp_path: Path, case: str):
    """A torch.hub file holds the flat backbone state dict; only num_heads is not inferable."""
    meta, sd, io = _case(case)
    path = save_checkpoint(sd, tmp_path / f"{case}.pth")
    model = load_official_checkpoint(path, num_heads=meta["official_kwargs"]["num_heads"])
    assert not model.training
    assert model.cfg.batch_channels_from_first == (case == "dino_layout")
    with torch.no_grad():
        for call in [meta] + meta["extra_calls"]:
            out = model(*[io[f"input.{n}"] for n in call["inputs"]])
            want = io[f"output.{call['outputs'][0]}"]
            torch.testing.assert_close(out, want, atol=meta["atol"], rtol=meta["rtol"])


@needs_ref
def test_detect_reads_fixture_configuration():
    for case in ("small", "dino_layout"):
        meta, sd, _ = _case(case)
        kw = detect(sd)
        official = meta["official_kwargs"]
        for key in ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "qkv_bias", "norm_layer"):
            assert kw[key] == official[key], (case, key)
        assert ("enable_sample" in kw) == ("enable_sample" in official)


@pytest.mark.parametrize("hcs_layout", [True, False])
def test_other_configurations_roundtrip(tmp_path: Path, hcs_layout: bool):
    """Non-fixture shapes (patch 4, 7 channels, 24 px table, 3 blocks, a head) are inferred from the file."""
    src = ChannelViT(ChannelViTConfig(img_size=24, patch_size=4, in_chans=7, num_classes=5, embed_dim=48, depth=3,
                                      num_heads=3, mlp_ratio=2.0, qkv_bias=False, hcs=hcs_layout,
                                      batch_channels_from_first=not hcs_layout)).eval()
    path = save_checkpoint(_official_layout(src, hcs_layout), tmp_path / "hub.pth")
    found = detect_official(load_file_or_torch(path))
    assert [f[0] for f in found] == ["channelvit"]
    kw = found[0][1]
    assert (kw["img_size"], kw["patch_size"], kw["in_chans"], kw["num_classes"], kw["embed_dim"], kw["depth"],
            kw["mlp_ratio"], kw["qkv_bias"]) == ([24], 4, 7, 5, 48, 3, 2.0, False)
    model = load_official_checkpoint(path, num_heads=3)
    x, ch = torch.randn(2, 4, 24, 24), torch.tensor([[6, 0, 3, 2]] * 2)
    with torch.no_grad():
        torch.testing.assert_close(model(x, ch), src(x, ch))


def load_file_or_torch(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


@needs_ref
def test_detector_rejects_other_families():
    others = [p.parent for p in REF.glob("*/*/state_dict.safetensors") if p.parent.parent.name != "channelvit"]
    assert others
    for case in others:
        assert detect(load_file(str(case / "state_dict.safetensors"))) is None, case


# ----------------------------------------------------------------------------- channels
def test_any_channel_subset_and_order():
    """Tokens of absent channels are just missing; the channel order does not matter (cls reads a set)."""
    torch.manual_seed(0)
    model = _tiny(img_size=48)  # 6x6 table, inputs 32 px -> 4x4 grid, always resampled
    x = torch.randn(2, 5, 32, 32)
    with torch.no_grad():
        full = model(x)
        torch.testing.assert_close(full, model(x, torch.arange(5)))
        for ids in ([0], [4], [1, 3], [0, 2, 4], [3, 1, 0, 4]):
            ids_t = torch.tensor(ids)
            out = model(x[:, ids_t], ids_t)
            assert out.shape == (2, 32) and torch.isfinite(out).all()
            perm = ids_t.flip(0)
            torch.testing.assert_close(model(x[:, perm], perm), out, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(model(x[:, :2], torch.tensor([0, 1])), model(x[:, :2], torch.tensor([2, 3])))


def test_per_sample_channel_ids_and_dino_quirk():
    torch.manual_seed(0)
    x = torch.randn(2, 2, 32, 32)
    ids = torch.tensor([[0, 1], [3, 4]])
    model = _tiny()
    with torch.no_grad():
        both = model(x, ids)
        torch.testing.assert_close(both[1:], model(x[1:], ids[1]))  # hcs class: per-sample ids
        model.cfg.batch_channels_from_first = True  # DINO class: the first sample's ids for everyone
        torch.testing.assert_close(model(x, ids)[1:], model(x[1:], ids[0]))


@pytest.mark.parametrize("s,h,w", [(4, 4, 4), (28, 4, 4), (14, 20, 20), (14, 7, 9), (3, 8, 5)])
def test_dino_resampling_equals_torch_bicubic(s, h, w):
    """The matrix form reproduces F.interpolate(bicubic, scale_factor=(g + 0.1) / s) (exactly, in float64)."""
    table = torch.randn(1, s * s, 8, dtype=torch.float64)
    ref = F.interpolate(table.reshape(1, s, s, 8).permute(0, 3, 1, 2), scale_factor=((h + 0.1) / s, (w + 0.1) / s),
                        mode="bicubic", align_corners=False)
    torch.testing.assert_close(dino_resample_pos(table, h, w), ref.permute(0, 2, 3, 1).reshape(1, h * w, 8),
                               atol=1e-12, rtol=0)


def test_position_resampling_quirk_and_exact_option():
    model = _tiny()
    table = model.pos_embed[:, 1:]
    official = model.position_embedding(2, 4, 4, 32, 32)
    assert official.shape == (1, 1, 16, 32) and not torch.allclose(official[0, 0], table[0])  # never an identity
    model.cfg.official_pos_interp = False
    torch.testing.assert_close(model.position_embedding(2, 4, 4, 32, 32)[0, 0], table[0])
    assert model.position_embedding(2, 6, 6, 48, 48).shape == (1, 1, 36, 32)
    # Official shortcut when Cin*h*w equals the table size (4 channels of a 2x2 grid on a 4x4 table): the rows
    # are added unresampled, a different row per channel (so there the channel order matters).
    model.cfg.official_pos_interp = True
    torch.testing.assert_close(model.position_embedding(4, 2, 2, 16, 16), table.view(1, 4, 4, 32))


# ----------------------------------------------------------------------------- HCS and training
def test_hierarchical_channel_sampling_picks_valid_subsets():
    torch.manual_seed(0)
    model = _tiny().train()
    ids = torch.tensor([4, 0, 2, 3])
    x = ids.float().view(1, 4, 1, 1).expand(2, 4, 32, 32)  # every channel holds its own id
    sizes = set()
    for _ in range(100):
        xs, cs = model.sample_channels(x, ids)
        k = cs.shape[-1]
        sizes.add(k)
        assert 1 <= k <= 4 and xs.shape == (2, k, 32, 32)
        assert len(set(cs.tolist())) == k and set(cs.tolist()) <= set(ids.tolist())
        assert torch.equal(xs[0, :, 0, 0], cs.float())  # the images follow their ids
    assert sizes == {1, 2, 3, 4}
    per_sample = torch.stack([ids, ids.flip(0)])  # one subset of *positions* for the whole batch
    _, cs = model.sample_channels(x, per_sample)
    positions = [ids.tolist().index(c) for c in cs[0].tolist()]
    assert torch.equal(cs[1], per_sample[1, positions])
    # train mode samples (fewer tokens on some draw), eval mode uses every channel
    counts = {model.forward_tokens(x, ids).shape[1] for _ in range(20)}
    assert len(counts) > 1 and max(counts) <= 1 + 4 * 16
    model.eval()
    assert model.forward_tokens(x, ids).shape[1] == 1 + 4 * 16


def test_no_sampling_when_disabled_and_gradients_flow():
    torch.manual_seed(0)
    model = _tiny(hcs=False).train()
    x = torch.randn(2, 5, 32, 32)
    out = model(x)
    with torch.no_grad():
        torch.testing.assert_close(out, model.eval()(x))  # no dropout configured: train == eval
    model.train()
    out.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.pos_embed.grad.abs().sum() > 0 and model.patch_embed.channel_embed.grad.abs().sum() > 0


def test_inference_mode_and_bf16_autocast():
    torch.manual_seed(0)
    model = _tiny()
    x, ids = torch.randn(2, 3, 32, 32), torch.tensor([0, 2, 4])
    with torch.inference_mode():
        ref = model(x, ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, ids)
    assert low.shape == ref.shape and torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), ref, atol=0.1, rtol=0.1)


@needs_ref
def test_from_official_channels_default_is_all():
    meta, sd, io = _case("small")
    model = from_official("channelvit", meta["official_kwargs"], sd)
    with torch.no_grad():
        torch.testing.assert_close(model(io["input.x"]), io["output.features"], atol=meta["atol"], rtol=meta["rtol"])
