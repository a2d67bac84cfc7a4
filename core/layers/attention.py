"""Attention primitives shared by the model zoo.

Everything that is a plain ``softmax(q k^T * scale + bias) v`` goes through
:func:`torch.nn.functional.scaled_dot_product_attention` (SDPA) so fused kernels are used where
the backend offers them. Shapes follow the SDPA convention ``(B, heads, N, head_dim)``.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitsuite.core import native

from .fast import choose_kernel, fast_inference, linear, linear_add

__all__ = [
    "attention",
    "Attention",
    "transposed_attention",
    "TransposedAttention",
    "topk_sparse_attention",
    "topk_sparse_probs",
    "topk_sparse_probs_from_gram",
    "DRSFORMER_TOPK_RATIOS",
    "ChannelAttention",
]


def _combine_masks(bias: Optional[Tensor], mask: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """Fold an additive ``bias`` and an additive/bool ``mask`` into one SDPA ``attn_mask``.

    A bool mask alone is passed through unchanged (SDPA semantics: True = may attend), so the
    fused kernels that accept bool masks stay eligible. Otherwise the result is additive, in
    ``dtype`` (SDPA requires a float mask to match the query dtype).
    """
    if bias is None and mask is None:
        return None
    if mask is not None and mask.dtype == torch.bool:
        if bias is None:
            return mask
        # -inf where attention is forbidden; broadcasting happens inside masked_fill's output.
        return bias.to(dtype).masked_fill(~mask, float("-inf"))
    if bias is None:
        return mask.to(dtype)
    if mask is None:
        return bias.to(dtype)
    return bias.to(dtype) + mask.to(dtype)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
) -> Tensor:
    """Scaled dot-product attention with an optional additive bias and mask.

    Args:
        q: ``(..., Nq, D)``; k: ``(..., Nk, D)``; v: ``(..., Nk, Dv)`` (typically ``(B, heads, N, D)``).
        bias: additive bias broadcastable to ``(..., Nq, Nk)``, e.g. a relative-position bias
            ``(heads, Nq, Nk)``.
        mask: additive float mask (``-inf``/``-100`` for blocked pairs) or bool mask
            (True = may attend), broadcastable to ``(..., Nq, Nk)``.
        dropout_p: attention-probability dropout; pass 0 in eval (this function does not know
            the module's training flag).
        scale: logit scale; default ``D ** -0.5``.

    Returns:
        ``(..., Nq, Dv)`` = ``softmax(q k^T * scale + bias + mask) v``.
    """
    attn_mask = _combine_masks(bias, mask, q.dtype)
    scale_value = q.shape[-1] ** -0.5 if scale is None else scale
    if _short_keys(q, k, attn_mask, dropout_p):
        def reference() -> Tensor:
            return _explicit_attention(q, k, v, attn_mask, scale_value)
    else:
        def reference() -> Tensor:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    # (a bool ``mask`` may forbid whole rows: SDPA's semantics then, not the kernel's)
    if dropout_p == 0.0 and (mask is None or mask.dtype != torch.bool) and _native_attention_ok(q, k, v, attn_mask):
        # timed per shape against the PyTorch path; the native output is (B, N, heads, Dv), returned as a
        # (B, heads, N, Dv) view so the caller's transpose back to tokens is free
        key = ("attention", tuple(q.shape), tuple(k.shape), tuple(v.shape), q.stride(), k.stride(), v.stride(),
               None if attn_mask is None else (tuple(attn_mask.shape), attn_mask.stride()))
        return choose_kernel(key, {"pytorch": reference, "native": lambda: native.attention(
            q, k, v, scale_value, attn_mask).transpose(1, 2)})
    return reference()


def _native_attention_ok(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor]) -> bool:
    """Whether :func:`vitsuite.core.native.attention` may take this call: CPU float32 inference
    (:func:`~vitsuite.core.layers.fast.fast_inference`), 4-D q / k / v with a contiguous last dimension, at
    most 4096 keys (the kernel keeps 48 rows of scores in cache), an additive float mask broadcastable
    to ``(B, heads, Nq, Nk)`` whose -inf entries never cover a whole row (bool masks keep SDPA's semantics:
    not taken)."""
    if q.dim() != 4 or not fast_inference(q) or k.shape[-2] > 4096:
        return False
    if any(t.dtype != torch.float32 or t.stride(-1) != 1 for t in (q, k, v)):
        return False
    if attn_mask is not None and (attn_mask.dtype != torch.float32 or attn_mask.dim() > 4):
        return False
    return native.available()


# CPU SDPA (the flash kernel) pays a fixed cost per (batch, head) block, so for short key sequences a
# batched GEMM + softmax is several times faster; measured on an AVX2 EPYC, 2 threads (batch x heads of
# keys: SDPA vs explicit): 588 of 6 (DuoFormer's per-patch scale tokens) 2.09 vs 0.49 ms, 384 of 16
# 1.33 vs 0.27 ms, 96 of 64 1.12 vs 0.66 ms, 12 of 50 0.18 vs 0.13 ms; equal near 200 keys, SDPA 2.5x
# faster from 325 keys on. CUDA keeps SDPA (its kernels have no such per-block cost).
SHORT_KEYS = 64


def _short_keys(q: Tensor, k: Tensor, attn_mask: Optional[Tensor], dropout_p: float) -> bool:
    """Whether :func:`attention` takes the explicit path: CPU, at most :data:`SHORT_KEYS` keys, no
    dropout, no bool mask (SDPA's semantics for fully masked rows stay SDPA's)."""
    return (q.device.type == "cpu" and k.shape[-2] <= SHORT_KEYS and dropout_p == 0.0
            and (attn_mask is None or attn_mask.dtype != torch.bool))


def _explicit_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor], scale: float) -> Tensor:
    """``softmax(q k^T * scale + attn_mask) v`` as two batched GEMMs; shapes as :func:`attention`."""
    logits = torch.matmul(q, k.transpose(-2, -1)) * scale
    if attn_mask is not None:
        logits = logits + attn_mask
    return torch.matmul(logits.softmax(-1), v)


class Attention(nn.Module):
    """ViT multi-head self-attention (timm / MAE / ViTPose layout: fused ``qkv`` + ``proj``).

    Args:
        dim: token width C. num_heads: heads (C must be divisible).
        qkv_bias: bias on the fused ``qkv`` Linear. qk_scale: override ``head_dim ** -0.5``.
        attn_drop: dropout on attention probabilities. proj_drop: dropout after ``proj``.

    Forward: ``x (B, N, C)``, optional additive ``bias`` broadcastable to ``(B, heads, N, N)``
    and ``mask`` (additive or bool) -> ``(B, N, C)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: Optional[float] = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop  # a float: SDPA applies the dropout itself
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, bias: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                residual: Optional[Tensor] = None) -> Tensor:
        """``x (B, N, C)`` -> ``(B, N, C)``; plus ``residual (B, N, C)`` when given (fused into ``proj``
        on the CPU inference fast path, see :mod:`vitsuite.core.layers.fast`)."""
        fast = not self.training and fast_inference(x)
        qkv = linear(x, self.qkv.weight, self.qkv.bias, fast=fast) if fast else self.qkv(x)
        return self._attend(qkv, bias, mask, residual, fast)

    def attend(self, qkv: Tensor, bias: Optional[Tensor] = None, mask: Optional[Tensor] = None,
               residual: Optional[Tensor] = None) -> Tensor:
        """The attention after the ``qkv`` projection: ``qkv (B, N, 3C)`` (q, k, v in that order, heads
        inside each) -> ``(B, N, C)``, plus ``residual`` as in :meth:`forward`. For callers that
        computed the projection another way (e.g. folded into a preceding linear map)."""
        return self._attend(qkv, bias, mask, residual, not self.training and fast_inference(qkv))

    def _attend(self, qkv: Tensor, bias: Optional[Tensor], mask: Optional[Tensor], residual: Optional[Tensor],
                fast: bool) -> Tensor:
        B, N, C3 = qkv.shape
        C = C3 // 3
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = attention(q, k, v, bias=bias, mask=mask, scale=self.scale,
                      dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, C)
        if fast and residual is not None:  # proj_drop is inactive in eval
            return linear_add(x, residual, self.proj.weight, self.proj.bias, fast=True)
        x = self.proj_drop(self.proj(x))
        return x if residual is None else residual + x


def transposed_attention(q: Tensor, k: Tensor, v: Tensor, temperature: Union[Tensor, float]) -> Tensor:
    """Restormer-style channel ("transposed") attention.

    Args:
        q, k, v: ``(B, heads, C_head, HW)`` -- channels act as tokens, pixels as features.
        temperature: learnable per-head scale, ``(heads, 1, 1)`` (or a scalar).

    Returns:
        ``(B, heads, C_head, HW)`` = ``softmax(norm(q) norm(k)^T * temperature) v`` where ``norm`` is
        L2-normalisation along the spatial dim.
    """
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1)
    # The per-head temperature is folded into q so SDPA (which only takes a scalar scale) applies.
    return F.scaled_dot_product_attention(q * temperature, k, v, scale=1.0)


class TransposedAttention(nn.Module):
    """Module form of :func:`transposed_attention` owning the ``temperature`` ``(heads, 1, 1)``.

    Models keep their own q/k/v projections (conv layouts differ between Restormer variants) and
    call ``forward(q, k, v)`` with ``(B, heads, C_head, HW)`` tensors; output has the same shape.
    """

    def __init__(self, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return transposed_attention(q, k, v, self.temperature)


#: DRSformer's four keep-ratios. Fractions reproduce the official ``int(C*2/3)`` etc. exactly
#: (a float 2/3 could round ``C*(2/3)`` just below an integer).
DRSFORMER_TOPK_RATIOS = (Fraction(1, 2), Fraction(2, 3), Fraction(3, 4), Fraction(4, 5))


def topk_sparse_probs(
    q: Tensor,
    k: Tensor,
    temperature: Union[Tensor, float],
    k_values: Sequence[Union[int, float, Fraction]] = DRSFORMER_TOPK_RATIOS,
    weights: Optional[Sequence[Union[Tensor, float]]] = None,
) -> Tensor:
    """The mixed attention matrix of DRSformer's top-k sparse attention, ``sum_i w_i P_i``.

    ``logits = norm(q) norm(k)^T * temperature`` (``C x C`` per head); branch ``i`` keeps the top-k
    logits of every row (others ``-inf``) and takes a softmax ``P_i``.

    Args:
        q, k: ``(B, heads, C, HW)``.
        temperature: ``(heads, 1, 1)`` or scalar.
        k_values: per branch either an ``int`` count k, or a keep-ratio (float / Fraction) giving
            ``k = int(C * ratio)`` as in the official code.
        weights: per-branch scalars (e.g. DRSformer's ``attn1..attn4`` params of shape ``(1,)``);
            default 1 each.

    Returns:
        ``(B, heads, C, C)``; a model may fold it into its output projection instead of ``@ v``.
    """
    # Logits are needed explicitly for top-k, so this path computes softmax by hand instead of SDPA.
    # cos(q_i, k_j) as (q k^T) / (|q_i| |k_j|): the same value as normalising q and k first (up to float
    # rounding), without two normalised (C, HW) copies -- q, k are usually strided views of one qkv.
    # Norms as sqrt of summed squares: on the strided q, k views linalg.vector_norm's reduction runs ~3x
    # slower (5.4 vs 1.4 ms for both at 128x128x96).
    return topk_sparse_probs_from_gram(q @ k.transpose(-2, -1), q.square().sum(-1), k.square().sum(-1),
                                       temperature, k_values, weights)


def topk_sparse_probs_from_gram(
    gram: Tensor,
    q_sq: Tensor,
    k_sq: Tensor,
    temperature: Union[Tensor, float],
    k_values: Sequence[Union[int, float, Fraction]] = DRSFORMER_TOPK_RATIOS,
    weights: Optional[Sequence[Union[Tensor, float]]] = None,
) -> Tensor:
    """:func:`topk_sparse_probs` from ``gram = q k^T (B, heads, C, C)`` and the squared norms ``q_sq``,
    ``k_sq (B, heads, C)`` (sums of squares over the pixels), e.g. accumulated over row bands of a large
    map so that q and k never exist whole. Returns ``(B, heads, C, C)``."""
    C = int(gram.shape[-1])  # a Python int also while tracing for export
    counts = [kv if isinstance(kv, int) else int(C * kv) for kv in k_values]
    if not counts or min(counts) < 1 or max(counts) > C:
        raise ValueError(f"top-k counts {counts} must lie in [1, {C}]")
    if weights is None:
        weights = [1.0] * len(counts)
    eps = 1e-12  # F.normalize's default
    q_norm = q_sq.sqrt().clamp_min(eps)
    k_norm = k_sq.sqrt().clamp_min(eps)
    logits = gram / q_norm.unsqueeze(-1) / k_norm.unsqueeze(-2) * temperature
    # One sorted top-k with the largest k gives every smaller top-k as a prefix. Scatter each
    # selected column's rank; "column j is in the top-k" is then simply rank < k.
    kmax = max(counts)
    idx = logits.topk(kmax, dim=-1, largest=True, sorted=True).indices
    rank = torch.full(logits.shape, kmax, dtype=torch.long, device=logits.device)
    rank.scatter_(-1, idx, torch.arange(kmax, device=logits.device).expand_as(idx))
    neg_inf = logits.new_tensor(float("-inf"))
    return sum(w * torch.where(rank < c, logits, neg_inf).softmax(dim=-1) for c, w in zip(counts, weights))


def topk_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    temperature: Union[Tensor, float],
    k_values: Sequence[Union[int, float, Fraction]] = DRSFORMER_TOPK_RATIOS,
    weights: Optional[Sequence[Union[Tensor, float]]] = None,
) -> Tensor:
    """DRSformer top-k sparse channel attention (TKSA): ``sum_i w_i (P_i v)``.

    q, k, v ``(B, heads, C, HW)`` -> ``(B, heads, C, HW)``. The weighted probability matrices are
    summed first (:func:`topk_sparse_probs`), then one ``(C x C) @ (C x HW)`` product: the same
    maths as summing the branches, with one big matmul instead of ``len(k_values)``.
    """
    return topk_sparse_probs(q, k, temperature, k_values, weights) @ v


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel attention (RCAN / HAT's CAB).

    ``attention`` is an ``nn.Sequential`` (pool, conv1x1 C->C/s, ReLU, conv1x1 C/s->C, Sigmoid) so
    official keys ``attention.1.weight`` / ``attention.3.weight`` load unchanged.

    Forward: ``x (B, C, H, W)`` -> ``x * attention(x)``, same shape.
    """

    def __init__(self, num_feat: int, squeeze_factor: int = 16):
        super().__init__()
        hidden = num_feat // squeeze_factor
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(num_feat, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_feat, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)
