"""``torch.compile`` of models that use the CPU inference fast path (oneDNN calls, packed weights,
``out=`` writes): the compiler gets the plain ops (``graph_capture``) and matches eager output."""

from __future__ import annotations

import pytest
import torch

from vitsuite.core.layers import fast
from vitsuite.models import build_model

CASES = {
    # Attention + fused MLP + packed small weights (forecasting)
    "itransformer": (dict(seq_len=16, pred_len=8, d_model=32, n_heads=4, e_layers=2, d_ff=32), (2, 16, 5)),
    # shifted-window attention with cached masks and fused linears (restoration)
    "hat_s": (dict(embed_dim=24, depths=(2,), num_heads=(2,), window_size=4, upscale=2), (1, 3, 16, 16)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_compiled_model_matches_eager(name):
    kwargs, shape = CASES[name]
    model = build_model(name, **kwargs).eval()
    x = torch.rand(*shape)
    with torch.inference_mode():
        assert fast.fast_inference(x) == fast._onednn_available()  # eager really takes the fast path
        eager = model(x)
        torch._dynamo.reset()
        compiled = torch.compile(model)(x)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)


def test_graph_capture_is_seen_inside_compiled_code():
    seen = []

    def probe(x):
        seen.append(fast.graph_capture())
        return x + 1

    assert not fast.graph_capture()
    torch._dynamo.reset()
    torch.compile(probe, backend="eager")(torch.zeros(2))
    assert seen == [True]
