"""iTransformer's inference fast path against its plain path (the fixtures pin the plain path to the
authors' code in test_reference_parity.py)."""

from __future__ import annotations

import pytest
import torch

from vitsuite.pipelines.forecast.models.itransformer import ITransformer


def _model(seq_len: int, d_model: int = 32) -> ITransformer:
    torch.manual_seed(0)
    return ITransformer(seq_len=seq_len, pred_len=8, d_model=d_model, n_heads=4, e_layers=2, d_ff=48).eval()


@pytest.mark.parametrize("marks", [True, False])
@pytest.mark.parametrize("seq_len", [16, 48])
def test_fast_path_matches_plain_path_with_and_without_the_embedding_fold(seq_len, marks):
    model = _model(seq_len)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, seq_len, 5, generator=g) * 3 + 1
    x_mark = torch.randn(2, seq_len, 4, generator=g) if marks else None
    plain = model(x, x_mark)  # autograd on: the plain path
    with torch.inference_mode():
        fast = model(x, x_mark)
    torch.testing.assert_close(fast, plain, atol=2e-5, rtol=2e-5)
    folded = "embed_qkv" in model.__dict__.get("_derived_cache", {})
    assert folded == (seq_len < model.cfg.d_model)  # folding only pays with fewer steps than channels


def test_embedding_fold_follows_weight_updates():
    model = _model(16)
    x = torch.randn(1, 16, 3)
    with torch.inference_mode():
        model(x)
    with torch.no_grad():
        model.embed.weight.mul_(1.5)
        model.layers[0].attn.qkv.bias.add_(0.25)
    plain = model(x)
    with torch.inference_mode():
        fast = model(x)
    torch.testing.assert_close(fast, plain, atol=2e-5, rtol=2e-5)
