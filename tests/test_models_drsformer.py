"""DRSformer (restoration): paper sizes, official detection and loading of other configurations, any-size
inputs, the fast paths (channel permutation, row bands, out= writes, weight cache, folded MEFC / TKSA)
against plain formulations, bf16 autocast and training.

Parity with the authors' code is pinned by ``shared/reference/drsformer/small`` (tests/test_reference_parity.py,
tests/test_official_checkpoints.py, tests/test_export.py); these tests cover what that fixture cannot
(biases, BiasFree norm, no-MEFC variant, other widths, sizes that are not multiples of 8).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import reference_root
from model_helpers import randomize_
from vitsuite.core import native
from vitsuite.core.checkpoint import save_checkpoint
from vitsuite.core.registry import detect_official as detect_all
from vitsuite.models import count_model_parameters, from_official, load_official_checkpoint
from vitsuite.pipelines.restoration.models import drsformer as drs

FIXTURE = reference_root() / "drsformer" / "small"
needs_fixture = pytest.mark.skipif(not FIXTURE.is_dir(), reason="drsformer fixture not found")

# shared/reference/PARAMS_restoration.md, both DRSformer rows
PAPER = [("drsformer", 33_655_424), ("drsformer_nomefc", 32_610_304)]

# Official-constructor configurations besides the fixture's (use_mefc: which of the two official files).
OTHER = [
    dict(inp_channels=1, out_channels=1, dim=16, num_blocks=[1, 1, 2, 1], heads=[2, 1, 4, 2],
         ffn_expansion_factor=2.0, bias=True, LayerNorm_type="BiasFree", use_mefc=False),
    dict(inp_channels=3, out_channels=3, dim=12, num_blocks=[2, 1, 1, 1], heads=[1, 3, 1, 2],
         ffn_expansion_factor=2.66, bias=True, LayerNorm_type="WithBias", use_mefc=True),
]



def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    return randomize_(model, seed, vector_scale=0.2)
def _small(seed: int = 0, **over) -> drs.DRSformer:
    kw = {**OTHER[1], **over}
    return _randomize(from_official("drsformer", kw), seed)


@pytest.mark.parametrize("name,expected", PAPER, ids=[p[0] for p in PAPER])
def test_paper_parameter_counts(name, expected):
    assert count_model_parameters(name) == expected


@pytest.mark.parametrize("name,mefc", [("drsformer", True), ("drsformer_nomefc", False)])
def test_paper_configs_are_detected(name, mefc):
    from vitsuite.models import build_model

    with torch.device("meta"):
        sd = build_model(name).state_dict()
    assert drs.detect_official(sd) == {**drs._OFFICIAL_DEFAULTS, "use_mefc": mefc}


@needs_fixture
def test_fixture_checkpoint_is_detected_only_as_drsformer(tmp_path):
    meta = json.loads((FIXTURE / "meta.json").read_text())
    sd = load_file(str(FIXTURE / "state_dict.safetensors"))
    assert [m for m, _ in detect_all(sd)] == ["drsformer"]
    save_checkpoint({"params": sd}, tmp_path / "drs.pth")
    model = load_official_checkpoint(tmp_path / "drs.pth")
    assert drs.detect_official(sd) == {**meta["official_kwargs"], "use_mefc": True}
    io = load_file(str(FIXTURE / "io.safetensors"))
    with torch.no_grad():
        assert torch.allclose(model(io["input.x"]), io["output.y"], atol=meta["atol"], rtol=0)


@pytest.mark.parametrize("kwargs", OTHER, ids=["nomefc_biasfree_bias", "mefc_bias"])
def test_other_configurations_round_trip(tmp_path, kwargs):
    model = _randomize(from_official("drsformer", kwargs), seed=1)
    sd = model.state_dict()  # official key names and shapes
    assert drs.detect_official(sd) == kwargs
    save_checkpoint({"params_ema": sd}, tmp_path / "other.pth")
    loaded = load_official_checkpoint(tmp_path / "other.pth", model_id="drsformer")
    assert loaded.cfg == model.cfg
    loaded_sd = loaded.state_dict()
    assert loaded_sd.keys() == sd.keys() and all(torch.equal(v, sd[k]) for k, v in loaded_sd.items())
    if not kwargs["use_mefc"]:  # the only forward of the no-MEFC / BiasFree variant in this file
        x = torch.rand(1, kwargs["inp_channels"], 16, 8)
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))


def test_ffn_factor_detection_returns_a_factor_reproducing_the_widths():
    widths = [20, 40, 80, 160]
    for factor in (2.66, 2.0, 3.0, 1.5, 2.2):
        hidden = [int(w * factor) for w in widths]
        got = drs._ffn_factor(widths, hidden)
        assert [int(w * got) for w in widths] == hidden


@pytest.mark.parametrize("family", ["hat", "drct", "channelvit", "vitpose", "itransformer", "hbformer"])
def test_detector_rejects_other_families(family):
    files = sorted((reference_root() / family).glob("*/state_dict.safetensors"))
    if not files:
        pytest.skip(f"no {family} fixture")
    assert drs.detect_official(load_file(str(files[0]))) is None


def test_detector_rejects_truncated_or_restormer_like_state_dicts():
    sd = _small().state_dict()
    restormer_like = {k: v for k, v in sd.items() if not k.split(".")[-1].startswith("attn")}
    assert drs.detect_official(restormer_like) is None
    no_decoder = {k: v for k, v in sd.items() if not k.startswith("decoder_level2.")}
    assert drs.detect_official(no_decoder) is None


def _reference_msfn(m: drs.MixedScaleFFN, x: torch.Tensor) -> torch.Tensor:
    """The MSFN as the authors write it, NCHW, with the module's own (grouped) convs."""
    z = m.project_in(x)
    a3, b3 = F.relu(m.dwconv3x3(z)).chunk(2, 1)
    a5, b5 = F.relu(m.dwconv5x5(z)).chunk(2, 1)
    p = F.relu(m.dwconv3x3_1(torch.cat([a3, a5], 1)))
    q = F.relu(m.dwconv5x5_1(torch.cat([b3, b5], 1)))
    return m.project_out(torch.cat([p, q], 1))


def _reference_tksa(m: drs.TopKAttention, x: torch.Tensor) -> torch.Tensor:
    """TKSA as the authors write it: four explicit top-k masks, four softmaxes, four products with v."""
    b, c, h, w = x.shape
    q, k, v = m.qkv_dwconv(m.qkv(x)).reshape(b, 3, m.num_heads, c // m.num_heads, h * w).unbind(1)
    logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * m.temperature
    C = logits.shape[-1]
    out = 0
    ks = [int(C / 2), int(C * 2 / 3), int(C * 3 / 4), int(C * 4 / 5)]
    for kk, wk in zip(ks, [m.attn1, m.attn2, m.attn3, m.attn4]):
        keep = torch.zeros_like(logits).scatter_(-1, logits.topk(kk, -1).indices, 1.0) > 0
        out = out + wk * (torch.where(keep, logits, float("-inf")).softmax(-1) @ v)
    return m.project_out(out.reshape(b, c, h, w))


@pytest.mark.parametrize("dim", [8, 16, 48])  # hidden widths 21 / 42 / 127: odd and even
@pytest.mark.parametrize("bias", [False, True])
def test_msfn_matches_grouped_convolutions(dim, bias, monkeypatch):
    m = _randomize(drs.MixedScaleFFN(dim, 2.66, bias))
    x = torch.randn(2, dim, 13, 10)
    with torch.no_grad():
        want = _reference_msfn(m, x).permute(0, 2, 3, 1)
        got_plain = m(x.permute(0, 2, 3, 1).contiguous())
        monkeypatch.setattr(drs, "_BAND_BYTES", 1)   # bands of 3 rows (with halos)
        monkeypatch.setattr(drs, "_BAND_MIN_ROWS", 3)
        got_banded = m(x.permute(0, 2, 3, 1).contiguous())
        res = torch.randn_like(want)
        got_res_banded = m(x.permute(0, 2, 3, 1).contiguous(), residual=res) - res  # fused into project_out
    got_grad = m(x.permute(0, 2, 3, 1).contiguous().requires_grad_())  # the autograd (cat) path, banded
    got_res_grad = m(x.permute(0, 2, 3, 1).contiguous().requires_grad_(), residual=res) - res
    scale = want.abs().max()
    for got in (got_plain, got_banded, got_grad, got_res_banded, got_res_grad):
        assert (got - want).abs().max() <= 1e-5 * scale


def _reference_operation_layer(m: drs.OperationLayer, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """One MEFC step as the authors write it, NCHW: every expert in full, weighted, concatenated, 8c -> c."""
    feats = [op(x) if isinstance(op, torch.nn.AvgPool2d) else op.op(x) for op in m._ops]
    return m._out(torch.cat([w[:, j].view(-1, 1, 1, 1) * f for j, f in enumerate(feats)], 1))


@pytest.mark.parametrize("band_rows", [None, 3, 5])  # whole map; bands thinner than the 7x7 dilated halo
def test_mefc_step_matches_the_concatenated_experts(band_rows, monkeypatch):
    m = _randomize(drs.OperationLayer(8))
    x, w = torch.rand(2, 8, 13, 10), torch.softmax(torch.randn(2, drs.NUM_OPS), -1)
    if band_rows:
        monkeypatch.setattr(drs, "_MEFC_BAND_BYTES", 1)
        monkeypatch.setattr(drs, "_BAND_MIN_ROWS", band_rows)
    want = _reference_operation_layer(m, x, w).permute(0, 2, 3, 1)
    xh = x.permute(0, 2, 3, 1).contiguous()
    with torch.no_grad():
        got = m(xh, w)
        got_step = m(xh, w, add_input=True)  # ReLU(step(x) + x), written band by band
    got_grad = m(xh.clone().requires_grad_(), w, add_input=True)  # autograd path (bands concatenated)
    scale = want.abs().max()
    assert (got - want).abs().max() <= 1e-5 * scale
    for g in (got_step, got_grad):
        assert (g - F.relu(want + xh)).abs().max() <= 1e-5 * scale


@pytest.mark.parametrize("kernel", ["direct", "polyphase", "native"])
@pytest.mark.parametrize("band_rows", [None, 3])
def test_mefc_fast_path_dilated_kernels_match(kernel, band_rows, monkeypatch):
    """float32 inference: the dilated experts through each kernel of the timed choice (direct oneDNN, the
    polyphase form, the native AVX2 kernel), whole map and thin bands, equal the authors' formulation."""
    if kernel == "native" and not native.available():
        pytest.skip(f"native kernels unavailable here: {native.why_unavailable()}")
    m = _randomize(drs.OperationLayer(16 if kernel == "native" else 8)).float()  # native: C % 8 == 0
    x, w = torch.rand(2, m._out[0].out_channels, 13, 10), torch.softmax(torch.randn(2, drs.NUM_OPS), -1).float()
    if band_rows:
        monkeypatch.setattr(drs, "_MEFC_BAND_BYTES", 1)
        monkeypatch.setattr(drs, "_BAND_MIN_ROWS", band_rows)
    used = []
    import importlib

    fast_path = importlib.import_module("vitsuite.core.layers.fast")  # depthwise_conv2d's timed choice
    real_choose = fast_path.choose_kernel

    def choose(key, candidates):  # the dilated depthwise choice is forced; other choices stay timed
        if key[0] != "depthwise" or key[5] == 1:
            return real_choose(key, candidates)
        used.append(key)
        return candidates[kernel]()

    monkeypatch.setattr(fast_path, "choose_kernel", choose)
    with torch.no_grad():
        want = _reference_operation_layer(m, x, w).permute(0, 2, 3, 1)
        got = m(x.permute(0, 2, 3, 1).contiguous(), w)
    assert used and all(k[0] == "depthwise" and k[5] == 2 for k in used)  # the three dilated experts, every band
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
def test_tksa_matches_explicit_topk_masks(heads, bias, monkeypatch):
    m = _randomize(drs.TopKAttention(16, heads, bias))  # C 16 or 8 per head: k = 8,10,12,12 / 4,5,6,6
    x = torch.randn(2, 16, 9, 11)
    with torch.no_grad():
        want = _reference_tksa(m, x).permute(0, 2, 3, 1)
        got = m(x.permute(0, 2, 3, 1).contiguous())
        res = torch.randn_like(want)
        got_res = m(x.permute(0, 2, 3, 1).contiguous(), residual=res) - res  # accumulated by the last GEMM
        # the row-band path of large maps (q k^T and the norms accumulated band by band, v stored)
        monkeypatch.setattr(drs, "_TKSA_BANDED_BYTES", 0)
        monkeypatch.setattr(drs, "_BAND_BYTES", 1)   # bands of 2 rows (with halos)
        monkeypatch.setattr(drs, "_BAND_MIN_ROWS", 2)
        got_banded = m(x.permute(0, 2, 3, 1).contiguous())
        got_res_banded = m(x.permute(0, 2, 3, 1).contiguous(), residual=res) - res
    got_res_grad = m(x.permute(0, 2, 3, 1).contiguous().requires_grad_(), residual=res) - res  # never banded
    for g in (got, got_res, got_res_grad, got_banded, got_res_banded):
        assert (g - want).abs().max() <= 1e-5 * want.abs().max()


def test_bias_free_norm_does_not_subtract_the_mean():
    norm = _randomize(drs.ChannelNorm(6, "BiasFree"))
    x = torch.randn(2, 3, 4, 6) + 3.0
    want = x / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + 1e-5) * norm.body.weight
    assert torch.allclose(norm(x), want, atol=1e-5)


def test_any_input_size_is_padded_like_the_authors_test_script():
    model = _small()
    x = torch.rand(1, 3, 13, 21)
    with torch.no_grad():
        y = model(x)
        padded = model(F.pad(x, (0, 3, 0, 3), mode="reflect"))[..., :13, :21]
        tiny = model(torch.rand(1, 3, 5, 6))  # pad larger than the image: replicate
    assert y.shape == x.shape and tiny.shape == (1, 3, 5, 6)
    assert torch.allclose(y, padded, atol=1e-6)


def test_batches_bands_and_grad_mode_agree(monkeypatch):
    model = _small()
    x = torch.rand(2, 3, 40, 24)
    with torch.inference_mode():
        y = model(x)
        single = model(x[1:])
        monkeypatch.setattr(drs, "_BAND_BYTES", 1)
        monkeypatch.setattr(drs, "_MEFC_BAND_BYTES", 1)
        monkeypatch.setattr(drs, "_TKSA_BANDED_BYTES", 0)
        banded = model(x)
    y_grad = model(x)  # gradients on: no weight cache, no out= writes
    assert torch.allclose(y[1:], single, atol=1e-5)
    assert torch.allclose(y, banded, atol=1e-5)
    assert torch.allclose(y, y_grad.detach(), atol=1e-5)


def test_weight_cache_follows_state_dict_loads():
    model, other = _small(seed=0), _small(seed=3)
    x = torch.rand(1, 3, 16, 16)
    with torch.inference_mode():
        model(x)  # fills the cache
        model.load_state_dict(other.state_dict())
        assert torch.allclose(model(x), other(x), atol=1e-6)


def test_bf16_autocast_runs_and_stays_close():
    model = _small()
    x = torch.rand(1, 3, 16, 16)
    with torch.inference_mode():
        want = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
    assert torch.isfinite(got).all()
    assert (got.float() - want).abs().max() <= 0.05 * want.abs().max()


def test_gradients_reach_every_parameter():
    model = _small().train()
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    model(x).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert x.grad.abs().sum() > 0
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("project_in.weight"))
