"""Baselines scored next to the transformer in the same run: last value, seasonal naive, DLinear.

All three work per variate on the (scaled) input window ``x (B, L, K)`` and return ``(B, S, K)``.

DLinear (Zeng et al., AAAI 2023, "Are Transformers Effective for Time Series Forecasting?") splits
the window into a moving-average trend ``A x`` and the remainder ``(I - A) x`` and maps each with a
Linear ``L -> S`` shared by all variates: ``y = W_s (I - A) x + W_t A x + b``. That is linear in
``x``, and every linear map ``W`` is reachable (``W_s = W_t = W``), so DLinear's function class is
exactly the affine maps ``y = W x + b``. :class:`DLinearLS` therefore fits DLinear in closed form:
the ridge least-squares optimum of that class over every training window and variate (the
decomposition changes the parametrisation, not the optimum). The tiny ridge (``ridge * trace / L``)
only keeps the solve well-conditioned.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

BASELINES = ("last_value", "seasonal_naive", "dlinear")


def last_value(x: Tensor, pred_len: int) -> Tensor:
    """Repeat the last observation: x (B, L, K) -> (B, S, K)."""
    return x[:, -1:].expand(-1, pred_len, -1)


def seasonal_naive(x: Tensor, pred_len: int, period: int) -> Tensor:
    """Repeat the last full season: ``y[t] = x[L - period + (t mod period)]``; x (B, L, K) -> (B, S, K).

    ``period`` must be in ``[1, L]``; period 1 is the last value.
    """
    L = x.shape[1]
    if not 1 <= period <= L:
        raise ValueError(f"seasonal period {period} must be between 1 and seq_len {L}")
    idx = L - period + torch.arange(pred_len, device=x.device) % period
    return x[:, idx]


class DLinearLS:
    """DLinear fitted in closed form (see the module docstring): ``y = x @ W + b`` per variate.

    ``W`` (L, S) and ``b`` (S,) are shared by all variates, as in DLinear with ``individual=False``.
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        self.weight = torch.as_tensor(weight, dtype=torch.float32)  # (L, S)
        self.bias = torch.as_tensor(bias, dtype=torch.float32)  # (S,)

    @classmethod
    def fit(cls, series: np.ndarray | Tensor, seq_len: int, pred_len: int, ridge: float = 1e-4,
            chunk_rows: int = 1 << 16) -> "DLinearLS":
        """Least squares over every window (stride 1) and variate of ``series`` (T, K), scaled.

        The Gram matrix of ``[x, y, 1]`` (L + S + 1 square) is accumulated over chunks of windows taken
        from a strided view, so the windows are never all materialised.
        """
        z = series.detach().cpu().numpy() if torch.is_tensor(series) else np.asarray(series)
        L, S = seq_len, pred_len
        width = L + S
        if len(z) < width:
            raise ValueError(f"DLinear needs at least seq_len + pred_len = {width} training rows, got {len(z)}")
        view = np.lib.stride_tricks.sliding_window_view(z, width, axis=0)  # (W, K, L + S), no copy
        gram = np.zeros((width + 1, width + 1))
        per = max(1, chunk_rows // max(1, z.shape[1]))
        for a in range(0, len(view), per):  # a loop over chunks of windows, each chunk one matmul
            block = view[a:a + per].reshape(-1, width).astype(np.float64)
            block = np.concatenate([block, np.ones((len(block), 1))], 1)
            gram += block.T @ block
        xi = np.r_[np.arange(L), width]  # inputs and the bias column
        gxx = gram[np.ix_(xi, xi)]
        gxy = gram[np.ix_(xi, np.arange(L, width))]
        reg = ridge * np.trace(gxx[:L, :L]) / L
        gxx[np.arange(L), np.arange(L)] += reg  # the bias is not shrunk
        sol = np.linalg.solve(gxx, gxy)  # (L + 1, S)
        return cls(sol[:L], sol[L])

    def __call__(self, x: Tensor) -> Tensor:
        """x (B, L, K) -> (B, S, K)."""
        w, b = self.weight.to(x.device, x.dtype), self.bias.to(x.device, x.dtype)
        return torch.einsum("blk,ls->bsk", x, w) + b[None, :, None]

    def state(self) -> dict[str, list]:
        return {"weight": self.weight.tolist(), "bias": self.bias.tolist()}
