"""DRSformer (Chen et al., CVPR 2023): sparse Transformer for image deraining.

Official code: cschenxiang/DRSformer ``basicsr/models/archs/DRSformer_arch.py`` (class ``DRSformer``);
the variant without MEFC (``DRSformer_arch_200L+SPA.py``, same class name) is ``use_mefc=False``.

A Restormer-style 4-level U-Net of sparse Transformer blocks (top-k channel attention TKSA + mixed-scale
FFN MSFN) with a mixture-of-experts feature compensator (MEFC) before the encoder and after the
decoder; ``y = net(x) + x``. Parameter names and shapes are the official ones (``convert`` is the
identity). The computation is reorganised for speed (the official module spends most of its time on
layout copies, 2-input grouped convolutions and repeated small products), with the same arithmetic:

* activations live in channels-last ``(B, H, W, C)``: the channel LayerNorm is one ``F.layer_norm``
  (no ``to_3d``/``to_4d`` copies), 1x1 convolutions are ``F.linear`` GEMMs and depthwise convolutions
  run on channels-last views (oneDNN's fast path);
* TKSA: :func:`~vitsuite.core.layers.attention.topk_sparse_probs_from_gram` (one sorted top-k serves
  the four k values) gives the mixed probabilities, which are folded into ``project_out``; on large maps
  q k^T and the norms accumulate over row bands, so q and k never exist whole;
* MSFN: the 2-input grouped convolutions become depthwise convolutions plus channel-run sums, thanks to
  a channel permutation of ``project_in``; large maps are processed in row bands that stay in cache,
  each scale's two depthwise stages in one pass (:func:`~vitsuite.core.layers.fast.depthwise_chain`)
  and the member sums, bias and ReLU in another (:func:`~vitsuite.core.layers.fast.channel_run_sum`);
* MEFC: each expert's last 1x1 conv, the per-sample gate and the 8c->c output 1x1 are folded into one
  ``(c, c)`` matrix per expert and sample; the eight products accumulate in one output (no 8c concat),
  row band by row band after the experts' first halves, so their outputs are read back from cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitsuite.core.layers.attention import DRSFORMER_TOPK_RATIOS, topk_sparse_probs_from_gram
from vitsuite.core.layers.fast import (channel_run_sum, depthwise_chain, depthwise_conv2d, depthwise_rows,
                                       fast_inference, graph_capture, inference_memory, linear, linear_add)
from vitsuite.core.registry import ModelSpec, OfficialSpec, register_model, register_official

FIELD = "restoration"
_BAND_BYTES = 2 << 20  # MSFN depthwise stages run on row bands of about this many bytes per tensor
_BAND_MIN_ROWS = 8
_TKSA_BANDED_BYTES = 4 << 20  # TKSA runs on row bands when its whole-map q, k, v would exceed this
_MEFC_BAND_BYTES = 2 << 20  # MEFC experts' outputs per band: the eight of them stay in cache for their GEMMs


@dataclass
class DRSformerConfig:
    """Every hyper-parameter of DRSformer (official constructor names, ``LayerNorm_type`` lower-cased)."""

    inp_channels: int = 3
    out_channels: int = 3                     # must equal inp_channels: the input is added to the output
    dim: int = 48                             # level-1 width; levels 2..4 use 2x, 4x, 8x
    num_blocks: Sequence[int] = (4, 6, 6, 8)  # Transformer blocks per level (decoder levels mirror the encoder)
    heads: Sequence[int] = (1, 2, 4, 8)       # attention heads per level (decoder level 1 uses heads[0] on 2*dim)
    ffn_expansion_factor: float = 2.66        # MSFN hidden width int(width * factor), truncated
    bias: bool = False                        # biases of the block / reduce / output convs (patch_embed never has one)
    layernorm_type: str = "WithBias"          # "BiasFree" (x / std * w) or anything else (standard LayerNorm)
    use_mefc: bool = True                     # MEFC subnets encoder_level0 / refinement (off for Rain200L, SPA-Data)
    mefc_steps: int = 4                       # operation layers per MEFC (hard-coded 4 officially)
    pad_multiple: int = 8                     # inputs are reflect-padded to this multiple and cropped, as test.py does


# ---------------------------------------------------------------------------------------------
# layout helpers: the network runs on (B, H, W, C); convolutions see NCHW views in channels_last memory


def _nchw(x: Tensor) -> Tensor:
    """``(B, H, W, C)`` -> ``(B, C, H, W)`` view (channels_last memory when ``x`` is contiguous)."""
    return x.permute(0, 3, 1, 2)


def _nhwc(x: Tensor) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, H, W, C)``, contiguous (a free view for channels_last ``x``)."""
    return x.permute(0, 2, 3, 1).contiguous()


def _pointwise(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """A 1x1 ``conv`` applied to ``(B, H, W, Cin)`` as one GEMM -> ``(B, H, W, Cout)`` (oneDNN on the CPU
    inference fast path: ~2x MKL's sgemm for these narrow widths)."""
    return linear(x, conv.weight.flatten(1), conv.bias, fast=not conv.training and fast_inference(x))


def _avg_pool3_rows(x: Tensor, r0: int, r1: int) -> Tensor:
    """Rows r0..r1-1 of the 3x3 / stride 1 average pool of ``x (B, H, W, C)`` without padded cells in
    the count (official ``AvgPool2d(3, 1, 1, count_include_pad=False)``) -> ``(B, r1 - r0, W, C)``."""
    i0, i1 = max(r0 - 1, 0), min(r1 + 1, x.shape[1])
    y = _nhwc(F.avg_pool2d(_nchw(x[:, i0:i1]), 3, 1, 1, count_include_pad=False))  # same size as the slice
    return y[:, r0 - i0:r1 - i0]


def _row_bands(H: int, row_bytes: int, band_bytes: int) -> list[tuple[int, int]]:
    """Row ranges ``[(r0, r1), ...]`` covering ``H`` rows, about ``band_bytes`` per band (at least
    ``_BAND_MIN_ROWS`` rows)."""
    rows = max(_BAND_MIN_ROWS, band_bytes // max(row_bytes, 1))
    return [(r0, min(r0 + rows, H)) for r0 in range(0, H, rows)]


def _spatial(x: Tensor, conv: nn.Module) -> Tensor:
    """A spatial conv / pool module applied to ``(B, H, W, C)`` -> ``(B, H', W', C')`` (depthwise "same"
    convolutions through core's :func:`depthwise_conv2d`)."""
    if (isinstance(conv, nn.Conv2d) and conv.groups == conv.in_channels == conv.out_channels
            and conv.stride == (1, 1) and conv.padding_mode == "zeros" and conv.dilation[0] == conv.dilation[1]):
        return _nhwc(depthwise_conv2d(_nchw(x), conv.weight, conv.bias, conv.padding, conv.dilation[0]))
    return _nhwc(conv(_nchw(x)))


# ---------------------------------------------------------------------------------------------
# Transformer block


class BiasFreeLayerNorm(nn.Module):
    """DRSformer/Restormer ``BiasFree`` norm: ``x / sqrt(var + 1e-5) * w`` -- the variance is centred but
    the mean is *not* subtracted from x. ``(..., C)`` -> same shape."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + 1e-5) * self.weight


class ChannelNorm(nn.Module):
    """Per-pixel norm over channels of ``(B, H, W, C)`` (official ``LayerNorm``; params under ``body``)."""

    def __init__(self, dim: int, layernorm_type: str):
        super().__init__()
        self.body = BiasFreeLayerNorm(dim) if layernorm_type == "BiasFree" else nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class TopKAttention(nn.Module):
    """TKSA: channel attention keeping the top-k logits per row for four k, mixed by ``attn1..attn4``.

    ``qkv`` (1x1) and ``qkv_dwconv`` (depthwise 3x3) make q, k, v with head-major channels; the four
    keep-ratios are :data:`DRSFORMER_TOPK_RATIOS` (k = int(C * r), truncated, C = channels per head).
    Forward: ``(B, H, W, c)`` -> ``(B, H, W, c)``.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)
        # k = int(C * r), truncated, as Python ints (shapes may be tensors while tracing for export)
        self.topk = [int(dim // num_heads * r) for r in DRSFORMER_TOPK_RATIOS]
        for i in range(1, 5):
            setattr(self, f"attn{i}", nn.Parameter(torch.full((1,), 0.2)))

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """Plus ``residual (B, H, W, c)`` when given (accumulated by the last GEMM on the fast path)."""
        B, H, W, c = x.shape
        heads, C = self.num_heads, c // self.num_heads
        fast = not self.training and fast_inference(x)
        if fast and H * W * 3 * c * x.element_size() > _TKSA_BANDED_BYTES:
            gram, q_sq, k_sq, v = self._banded_gram(x)
        else:
            qkv = _spatial(_pointwise(x, self.qkv), self.qkv_dwconv)                 # (B, H, W, 3c)
            # (3, B, heads, C, HW) strided views, no copy: pixels become the feature axis.
            q, k, _ = qkv.view(B, H * W, 3, heads, C).permute(2, 0, 3, 4, 1).unbind(0)
            gram, q_sq, k_sq = q @ k.transpose(-2, -1), q.square().sum(-1), k.square().sum(-1)
            v = qkv.view(B, H * W, 3 * c)[..., 2 * c:]                                # (B, HW, c)
        # The mixed top-k probabilities sum_i attn_i P_i (B, heads, C, C) are folded into
        # project_out, so the pixels meet a single (c x c) GEMM instead of probs @ v then project_out.
        probs = topk_sparse_probs_from_gram(gram, q_sq, k_sq, self.temperature, self.topk,
                                            (self.attn1, self.attn2, self.attn3, self.attn4))
        w = torch.einsum("ohi,bhij->bhjo", self.project_out.weight.view(c, heads, C), probs).reshape(B, c, c)
        fused = residual is not None and fast  # not under autocast
        v = v.reshape(B, H * W, c)
        y = torch.baddbmm(residual.reshape(B, H * W, c), v, w) if fused else torch.bmm(v, w)  # v @ W'^T
        if self.project_out.bias is not None:
            y = y + self.project_out.bias
        y = y.view(B, H, W, c)
        return y if fused or residual is None else residual + y

    def _banded_gram(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """q k^T per head ``(B, heads, C, C)``, the squared norms of q and k ``(B, heads, C)`` and v
        ``(B, H, W, c)`` of ``x (B, H, W, c)``, computed on row bands (inference only).

        A large map's q, k and v are never whole: each band's 1x1 GEMM (plus one halo row each side) and
        3x3 depthwise conv run on cache-resident rows, q k^T and the norms accumulate band by band (the
        same sums in another order), and only v is stored. On a 128 x 128 x 96 map the whole-map path
        writes and re-reads two 19 MB tensors.
        """
        B, H, W, c = x.shape
        heads, C = self.num_heads, c // self.num_heads
        gram = x.new_zeros(B, heads, C, C)
        q_sq, k_sq = x.new_zeros(B, heads, C), x.new_zeros(B, heads, C)
        v = x.new_empty(B, H, W, c)
        w_qkv, b_qkv = self.qkv.weight.flatten(1), self.qkv.bias
        dw = self.qkv_dwconv
        for r0, r1 in _row_bands(H, W * 3 * c * x.element_size(), _BAND_BYTES):
            i0, i1 = max(r0 - 1, 0), min(r1 + 1, H)  # the 3x3 conv's halo rows, zero padding only at the image border
            t = linear(x[:, i0:i1], w_qkv, b_qkv, fast=True)                          # (B, i1 - i0, W, 3c)
            qkv = depthwise_rows(t, dw.weight, dw.bias, (r0 - i0, r1 - i0)).view(B, -1, 3, heads, C)
            q, k = qkv[:, :, 0], qkv[:, :, 1]                                            # (B, n, heads, C)
            gram += q.permute(0, 2, 3, 1) @ k.transpose(1, 2)
            q_sq += q.square().sum(1)
            k_sq += k.square().sum(1)
            v[:, r0:r1] = qkv[:, :, 2].reshape(B, r1 - r0, W, c)
        return gram, q_sq, k_sq, v


def _rows(t: Tensor, idx: Tensor, n: int) -> Tensor:
    """``t[idx]`` (rows along dim 0) followed by zero rows up to ``n`` rows."""
    r = t[idx]
    return r if r.shape[0] == n else torch.cat([r, r.new_zeros(n - r.shape[0], *r.shape[1:])])


def _pair_runs(h: int) -> tuple[tuple[int, int, int, int, int, int], ...]:
    """Where the two inputs of each 2-input group of an MSFN mixer sit after the channel permutation.

    The official mixer reads ``cat = [a3 (h), a5 (h)]``; group g sums convs of ``cat[2g]`` and
    ``cat[2g+1]``. Here ``a3`` / ``a5`` are stored with even channels first, then odd ones, which makes
    both members of consecutive groups consecutive channels. Returns runs ``(g0, g1, src_a, pos_a,
    src_b, pos_b)``: groups g0..g1-1 read tensor ``src_a`` (0 = a3, 1 = a5) from channel ``pos_a`` on
    and ``src_b`` from ``pos_b`` on (2 runs for even h, 3 for odd h: one group straddles a3 and a5).
    """
    order = list(range(0, h, 2)) + list(range(1, h, 2))
    where = {j: p for p, j in enumerate(order)}
    runs: list[list[int]] = []
    for g in range(h):
        (sa, pa), (sb, pb) = [(t >= h, where[t % h]) for t in (2 * g, 2 * g + 1)]
        r = runs[-1] if runs else None
        if r and (r[2], r[4]) == (sa, sb) and r[3] + g - r[0] == pa and r[5] + g - r[0] == pb:
            r[1] = g + 1
        else:
            runs.append([g, g + 1, int(sa), pa, int(sb), pb])
    return tuple(tuple(r) for r in runs)


class MixedScaleFFN(nn.Module):
    """MSFN: 1x1 up to 2h, parallel depthwise 3x3 / 5x5 (+ReLU), cross-mixed 2-input grouped 3x3 / 5x5
    (+ReLU), 1x1 down; h = int(dim * factor). ``(B, H, W, dim)`` -> same shape.

    Official order: with z = project_in(x) split in halves z = [z_a, z_b], the grouped 3x3
    (``dwconv3x3_1``) reads ``[relu(dw3(z))_a, relu(dw5(z))_a]`` (group g: channels 2g, 2g+1; with odd h
    one group straddles the two scales) and the grouped 5x5 reads the b halves. oneDNN runs 2-input
    grouped convs several times slower than depthwise ones, and slicing channels of a channels-last
    tensor costs a copy, so here each half is its own tensor (``project_in`` as two GEMMs) with its
    channels permuted even-first (:func:`_pair_runs`); every conv is depthwise on a whole tensor and each
    grouped conv ends in a few contiguous adds. Same arithmetic as the official module.
    """

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool):
        super().__init__()
        h = self.hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, h * 2, 1, bias=bias)
        self.dwconv3x3 = nn.Conv2d(h * 2, h * 2, 3, padding=1, groups=h * 2, bias=bias)
        self.dwconv5x5 = nn.Conv2d(h * 2, h * 2, 5, padding=2, groups=h * 2, bias=bias)
        self.dwconv3x3_1 = nn.Conv2d(h * 2, h, 3, padding=1, groups=h, bias=bias)
        self.dwconv5x5_1 = nn.Conv2d(h * 2, h, 5, padding=2, groups=h, bias=bias)
        self.project_out = nn.Conv2d(h * 2, dim, 1, bias=bias)
        order = torch.cat([torch.arange(0, h, 2), torch.arange(1, h, 2)])
        # perm[:h] / perm[h:]: z channels of half a / b in stored order; equally the mixer's flattened
        # kernel index (2g + member) of the a3 / a5 inputs in stored order.
        self.register_buffer("perm", torch.cat([order, order + h]), persistent=False)
        self.runs = _pair_runs(h)
        # the same runs over the four mixer inputs [u3_a, u5_a, u3_b, u5_b] of both halves, output channel first
        self.sum_runs = tuple((o + g0, g1 - g0, 2 * i + sa, pa, 2 * i + sb, pb)
                              for i, o in enumerate((0, h)) for g0, g1, sa, pa, sb, pb in self.runs)
        # Each half is stored with its width rounded up to 16 (zero kernels in the extra channels, never
        # read): MKL's GEMM runs ~2x slower when the output width is odd (h = 127, 255, 1021 here).
        self.stored = -(-h // 16) * 16

    def __getstate__(self) -> dict[str, Any]:  # copies and pickles leave the derived-weight cache behind
        state = super().__getstate__()
        return {k: v for k, v in state.items() if k not in ("_cache", "_cache_key")}

    def _weights(self) -> list[tuple[Tensor, ...]]:
        """Per half: project_in rows, stage-1 3x3 / 5x5 kernels (+ biases), mixer kernels for the a3 / a5
        inputs -- permuted and zero-padded to the stored width, kernels channels-last ``(k, k, stored)``.
        Cached while gradients are off (the key holds every parameter's version, so optimiser steps and
        state-dict loads invalidate it)."""
        params = [p for p in self.parameters()]
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        if not torch.is_grad_enabled() and getattr(self, "_cache_key", None) == key:
            return self._cache
        n, h, perm = self.stored, self.hidden, self.perm

        def dw(weight: Tensor, idx: Tensor) -> Tensor:  # kernels weight.flatten(0, 1)[idx], padded, as (k, k, n)
            return _rows(weight.flatten(0, 1), idx, n).permute(1, 2, 0).contiguous()

        def rows(t: Tensor | None, idx: Tensor) -> Tensor | None:
            return None if t is None else _rows(t, idx, n)

        out = []
        for o, mixer in ((0, self.dwconv3x3_1), (h, self.dwconv5x5_1)):
            idx = perm[o:o + h]
            out.append((rows(self.project_in.weight.flatten(1), idx), rows(self.project_in.bias, idx),
                        dw(self.dwconv3x3.weight, idx), rows(self.dwconv3x3.bias, idx),
                        dw(self.dwconv5x5.weight, idx), rows(self.dwconv5x5.bias, idx),
                        dw(mixer.weight, perm[:h]), dw(mixer.weight, perm[h:])))
        if not torch.is_grad_enabled():
            self._cache_key, self._cache = key, out
        return out

    def _mixed(self, zs: Sequence[Tensor], weights: list[tuple[Tensor, ...]], r0: int, r1: int) -> Tensor:
        """ReLU of both mixers' outputs for image rows r0..r1-1 -> ``(B, r1 - r0, W, 2h)``."""
        us = []
        for z, (_, _, k3, b3, k5, b5, m3, m5) in zip(zs, weights):
            # each scale's stage-1 conv (+ReLU) and its mixer conv in one pass (the 3x3 / 5x5 "a3" / "a5"
            # maps never reach memory), then every group's two members summed, biased and ReLU'd at once
            us += [depthwise_chain(z, k3, b3, m3, (r0, r1)), depthwise_chain(z, k5, b5, m5, (r0, r1))]
        bias = None
        if self.dwconv3x3_1.bias is not None:
            bias = torch.cat([self.dwconv3x3_1.bias, self.dwconv5x5_1.bias])
        return channel_run_sum(us, self.sum_runs, 2 * self.hidden, bias, relu=True)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """Plus ``residual (B, H, W, dim)`` when given (fused into ``project_out`` on the fast path)."""
        B, H, W, _ = x.shape
        weights = self._weights()
        fast = not self.training and fast_inference(x)
        zs = [linear(x, w_in, b_in, fast=fast) for w_in, b_in, *_ in weights]  # halves of z, (B, H, W, stored)
        # Large maps are processed in bands of rows (with halos) so that the depthwise stages and the
        # adds work on cache-resident data; the arithmetic is unchanged.
        w_out, b_out = self.project_out.weight.flatten(1), self.project_out.bias
        outs = []
        for r0, r1 in _row_bands(H, W * self.stored * zs[0].element_size(), _BAND_BYTES):
            pq = self._mixed(zs, weights, r0, r1)
            if fast and residual is not None:
                outs.append(linear_add(pq, residual[:, r0:r1], w_out, b_out, fast=True))
            else:
                outs.append(linear(pq, w_out, b_out, fast=fast))
        y = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
        return y if fast or residual is None else residual + y


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))``, then ``x + ffn(norm2(x))``; ``(B, H, W, C)``."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool, layernorm_type: str):
        super().__init__()
        self.norm1 = ChannelNorm(dim, layernorm_type)
        self.attn = TopKAttention(dim, num_heads, bias)
        self.norm2 = ChannelNorm(dim, layernorm_type)
        self.ffn = MixedScaleFFN(dim, ffn_expansion_factor, bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.attn(self.norm1(x), residual=x)
        return self.ffn(self.norm2(x), residual=x)


# ---------------------------------------------------------------------------------------------
# MEFC: mixture-of-experts feature compensator (official ``subnet``)

NUM_OPS = 8  # experts: sep 1/3/5/7, dilated 3/5/7, 3x3 average pool


class Expert(nn.Module):
    """Parameter container of one expert, ``op`` = the official ``nn.Sequential`` (called by
    :class:`OperationLayer`, which folds its last 1x1 conv)."""

    def __init__(self, op: nn.Sequential):
        super().__init__()
        self.op = op


def _sep_conv(c: int, k: int) -> Expert:
    # depthwise k, 1x1, ReLU, depthwise k, 1x1 (keys op.0, op.1, op.3, op.4), bias-free
    return Expert(nn.Sequential(
        nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False), nn.ReLU(),
        nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False)))


def _dil_conv(c: int, k: int) -> Expert:
    # depthwise k with dilation 2 ("same" padding k - 1), 1x1 (keys op.0, op.1), bias-free
    return Expert(nn.Sequential(nn.Conv2d(c, c, k, padding=k - 1, dilation=2, groups=c, bias=False),
                                nn.Conv2d(c, c, 1, bias=False)))


class OperationLayer(nn.Module):
    """One MEFC step: ``ReLU(out_1x1(cat_j(w_j * expert_j(x))))``.

    Forward: ``x (B, H, W, c)``, gate ``w (B, 8)`` -> ``(B, H, W, c)``.
    """

    def __init__(self, c: int):
        super().__init__()
        self._ops = nn.ModuleList([_sep_conv(c, k) for k in (1, 3, 5, 7)] + [_dil_conv(c, k) for k in (3, 5, 7)]
                                  + [nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)])
        self._out = nn.Sequential(nn.Conv2d(c * NUM_OPS, c, 1, bias=False), nn.ReLU())

    def forward(self, x: Tensor, w: Tensor, add_input: bool = False) -> Tensor:
        """``add_input``: return ``ReLU(layer(x) + x)`` (the official GroupOLs step) instead."""
        B, H, W, c = x.shape
        flat = lambda conv: conv.weight.flatten(1)  # noqa: E731  (c_out, c_in) of a 1x1 conv
        scale = lambda conv: conv.weight.flatten()  # noqa: E731  per-channel factor of a depthwise 1x1
        sep1 = self._ops[0].op
        # Expert j's output before its last (linear) 1x1 conv; sep 1x1's depthwise "convs" are channel
        # scales, folded into the neighbouring 1x1 weights. The sep k>1 experts' first halves run on the
        # whole map; everything after them runs on row bands (halo rows read, never recomputed), so the
        # eight expert outputs of a band are still in cache when the mixing GEMMs read them.
        first = flat(sep1[1]) * scale(sep1[0])
        lasts = [flat(sep1[4]) * scale(sep1[3])]
        halves = []
        for expert in self._ops[1:4]:
            op = expert.op
            halves.append(F.relu(_pointwise(_spatial(x, op[0]), op[1]), inplace=True))
            lasts.append(flat(op[4]))
        lasts += [flat(expert.op[1]) for expert in self._ops[4:7]]
        # _out(cat_j(w_j * L_j f_j)) = sum_j (w_j O_j L_j) f_j: per sample and expert one (c, c) matrix,
        # accumulated by GEMMs (no 8c-wide concatenation).
        out_w = self._out[0].weight.view(c, NUM_OPS, c)                               # O: (c_out, j, c)
        folded = torch.cat([torch.einsum("ojm,jmi->oji", out_w[:, :-1], torch.stack(lasts)), out_w[:, -1:]], 1)
        mix = (folded * w.view(B, 1, NUM_OPS, 1)).permute(0, 2, 3, 1)                 # (B, j, c_in, c_out)
        row_bands = _row_bands(H, W * c * x.element_size(), _MEFC_BAND_BYTES)
        # Several bands without autograd: each band's result is written into one output (no cat).
        fused = len(row_bands) > 1 and not (torch.is_grad_enabled() or graph_capture())
        out = x.new_empty(B, H, W, c) if fused else None
        bands = []
        for r0, r1 in row_bands:
            xb = x[:, r0:r1]
            feats = [F.relu(F.linear(xb, first))]
            feats += [depthwise_rows(t, e.op[3].weight, None, (r0, r1)) for t, e in zip(halves, self._ops[1:4])]
            feats += [depthwise_rows(x, e.op[0].weight, None, (r0, r1), dilation=2) for e in self._ops[4:7]]
            feats.append(_avg_pool3_rows(x, r0, r1))
            dt = torch.promote_types(feats[0].dtype, feats[-1].dtype)  # in-place GEMMs need one dtype (autocast)
            m, n = mix.to(dt), (r1 - r0) * W
            y = torch.bmm(feats[0].to(dt).reshape(B, n, c), m[:, 0])
            for j in range(1, NUM_OPS):
                y.baddbmm_(feats[j].to(dt).reshape(B, n, c), m[:, j])
            y = F.relu(y, inplace=True).view(B, r1 - r0, W, c)
            if out is None:
                bands.append(F.relu(y + xb, inplace=True) if add_input else y)
            elif add_input:
                F.relu(torch.add(y, xb, out=out[:, r0:r1]), inplace=True)
            else:
                out[:, r0:r1] = y
        return out if out is not None else bands[0] if len(bands) == 1 else torch.cat(bands, 1)


class OperationAttention(nn.Module):
    """OALayer: global average pool -> Linear(c, 2*steps*8) -> ReLU -> Linear(., steps*8); the
    softmax over the 8 experts (official ``subnet.forward``) is applied here. ``(B, H, W, c)`` ->
    gates ``(B, steps, 8)``."""

    def __init__(self, c: int, steps: int, num_ops: int = NUM_OPS):
        super().__init__()
        self.steps, self.num_ops = steps, num_ops
        n = steps * num_ops
        self.ca_fc = nn.Sequential(nn.Linear(c, 2 * n), nn.ReLU(), nn.Linear(2 * n, n))

    def forward(self, x: Tensor) -> Tensor:
        return self.ca_fc(x.mean((1, 2))).view(-1, self.steps, self.num_ops).softmax(-1)


class _ConvReLU(nn.Module):
    """Official ``ReLUConv`` (despite the name: 1x1 conv, then ReLU); keys ``op.0``."""

    def __init__(self, c: int):
        super().__init__()
        self.op = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(_pointwise(x, self.op[0]), inplace=True)


class OperationGroup(nn.Module):
    """GroupOLs: ``s = ReLU(1x1(x))``, then per step ``s = ReLU(step_i(s, w[:, i]) + s)``; ``(B, H, W, c)``."""

    def __init__(self, steps: int, c: int):
        super().__init__()
        self.preprocess = _ConvReLU(c)
        self._ops = nn.ModuleList(OperationLayer(c) for _ in range(steps))

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        s = self.preprocess(x)
        for i, step in enumerate(self._ops):
            s = step(s, weights[:, i], add_input=True)  # ReLU(step(s) + s)
        return s


class MEFC(nn.Module):
    """Mixture-of-experts feature compensator (official ``subnet``; ``layers = [OALayer, GroupOLs]``).

    ``(B, H, W, c)`` -> ``(B, H, W, c)``.
    """

    def __init__(self, c: int, steps: int = 4):
        super().__init__()
        self.layers = nn.ModuleList([OperationAttention(c, steps), OperationGroup(steps, c)])

    def forward(self, x: Tensor) -> Tensor:
        return self.layers[1](x, self.layers[0](x))


# ---------------------------------------------------------------------------------------------
# the U-Net


class _Proj(nn.Module):
    """Container for ``patch_embed.proj`` (3x3 conv, never biased: the official class ignores ``bias``)."""

    def __init__(self, cin: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, 3, padding=1, bias=False)


class Resample(nn.Module):
    """Downsample (3x3 conv n -> n/2, PixelUnshuffle(2)) or Upsample (3x3 conv n -> 2n, PixelShuffle(2)).

    ``(B, H, W, n)`` -> ``(B, H/2, W/2, 2n)`` or ``(B, 2H, 2W, n/2)``.
    """

    def __init__(self, n: int, down: bool):
        super().__init__()
        if down:
            self.body = nn.Sequential(nn.Conv2d(n, n // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))
        else:
            self.body = nn.Sequential(nn.Conv2d(n, n * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        return _spatial(x, self.body)


class DRSformer(nn.Module):
    """DRSformer deraining network.

    ``forward(x (B, inp_channels, H, W)) -> (B, out_channels, H, W)``: any H, W (reflect-padded
    bottom/right to ``pad_multiple`` and cropped back, as the authors' test script does; identical to
    the official module when H, W are multiples of 8).
    """

    def __init__(self, cfg: DRSformerConfig | None = None, **kwargs: Any):
        super().__init__()
        cfg = cfg or DRSformerConfig(**kwargs)
        if cfg.out_channels != cfg.inp_channels:
            raise ValueError("DRSformer adds the input to its output: out_channels must equal inp_channels")
        self.cfg = cfg
        d, nb, hd = cfg.dim, list(cfg.num_blocks), list(cfg.heads)

        def level(width: int, n: int, heads: int) -> nn.Sequential:
            return nn.Sequential(*[TransformerBlock(width, heads, cfg.ffn_expansion_factor, cfg.bias,
                                                    cfg.layernorm_type) for _ in range(n)])

        self.patch_embed = _Proj(cfg.inp_channels, d)
        if cfg.use_mefc:
            self.encoder_level0 = MEFC(d, cfg.mefc_steps)
        self.encoder_level1 = level(d, nb[0], hd[0])
        self.down1_2 = Resample(d, down=True)
        self.encoder_level2 = level(d * 2, nb[1], hd[1])
        self.down2_3 = Resample(d * 2, down=True)
        self.encoder_level3 = level(d * 4, nb[2], hd[2])
        self.down3_4 = Resample(d * 4, down=True)
        self.latent = level(d * 8, nb[3], hd[3])
        self.up4_3 = Resample(d * 8, down=False)
        self.reduce_chan_level3 = nn.Conv2d(d * 8, d * 4, 1, bias=cfg.bias)
        self.decoder_level3 = level(d * 4, nb[2], hd[2])
        self.up3_2 = Resample(d * 4, down=False)
        self.reduce_chan_level2 = nn.Conv2d(d * 4, d * 2, 1, bias=cfg.bias)
        self.decoder_level2 = level(d * 2, nb[1], hd[1])
        self.up2_1 = Resample(d * 2, down=False)
        self.decoder_level1 = level(d * 2, nb[0], hd[0])  # no channel reduction at level 1: width 2*dim
        if cfg.use_mefc:
            self.refinement = MEFC(d * 2, cfg.mefc_steps)
        self.output = nn.Conv2d(d * 2, cfg.out_channels, 3, padding=1, bias=cfg.bias)

    def _pad(self, x: Tensor) -> Tensor:
        m = self.cfg.pad_multiple
        ph, pw = -x.shape[-2] % m, -x.shape[-1] % m
        if not (ph or pw):
            return x
        mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"  # reflect needs pad < size
        return F.pad(x, (0, pw, 0, ph), mode=mode)

    def forward(self, x: Tensor) -> Tensor:
        with inference_memory(x):  # large temporaries reuse freed blocks (no page faults) on the fast path
            return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        inp = self._pad(x).contiguous(memory_format=torch.channels_last)
        e1 = _nhwc(self.patch_embed.proj(inp))
        if self.cfg.use_mefc:
            e1 = self.encoder_level0(e1)
        e1 = self.encoder_level1(e1)
        e2 = self.encoder_level2(self.down1_2(e1))
        e3 = self.encoder_level3(self.down2_3(e2))
        d = self.latent(self.down3_4(e3))
        # skip connections: [upsampled, encoder] along channels
        d = self.decoder_level3(_pointwise(torch.cat([self.up4_3(d), e3], -1), self.reduce_chan_level3))
        d = self.decoder_level2(_pointwise(torch.cat([self.up3_2(d), e2], -1), self.reduce_chan_level2))
        d = self.decoder_level1(torch.cat([self.up2_1(d), e1], -1))
        if self.cfg.use_mefc:
            d = self.refinement(d)
        y = self.output(_nchw(d)) + inp
        return y[..., :H, :W].contiguous()


# ---------------------------------------------------------------------------------------------
# official translation

_OFFICIAL_DEFAULTS = {"inp_channels": 3, "out_channels": 3, "dim": 48, "num_blocks": [4, 6, 6, 8],
                      "heads": [1, 2, 4, 8], "ffn_expansion_factor": 2.66, "bias": False,
                      "LayerNorm_type": "WithBias"}


def config_from_official(kwargs: Mapping[str, Any]) -> DRSformerConfig:
    """The authors' constructor arguments (missing ones take the class defaults) -> :class:`DRSformerConfig`.

    ``use_mefc`` is not an official argument: the no-MEFC model is another file with the same class;
    :func:`detect_official` sets it from the checkpoint keys (default True, the released model).
    """
    kw = {**_OFFICIAL_DEFAULTS, **kwargs}
    return DRSformerConfig(
        inp_channels=int(kw["inp_channels"]), out_channels=int(kw["out_channels"]), dim=int(kw["dim"]),
        num_blocks=tuple(int(n) for n in kw["num_blocks"]), heads=tuple(int(n) for n in kw["heads"]),
        ffn_expansion_factor=float(kw["ffn_expansion_factor"]), bias=bool(kw["bias"]),
        layernorm_type=str(kw["LayerNorm_type"]), use_mefc=bool(kw.get("use_mefc", True)))


def _ffn_factor(widths: Sequence[int], hidden: Sequence[int]) -> float | None:
    """A factor f with ``int(w * f) == h`` for every level: the paper's 2.66 when it fits, otherwise the
    shortest decimal that does (the exact float is not recoverable from shapes)."""
    fits = lambda f: all(int(w * f) == h for w, h in zip(widths, hidden))  # noqa: E731
    if fits(2.66):
        return 2.66
    lo = max(Fraction(h, w) for w, h in zip(widths, hidden))
    for digits in range(0, 7):
        f = round(float(lo), digits)
        for cand in (f, f + 10.0 ** -digits):
            if fits(cand):
                return cand
    return None


def detect_official(sd: Mapping[str, Tensor]) -> dict[str, Any] | None:
    """Infer the constructor arguments from an official checkpoint; ``None`` if it is not DRSformer.

    Everything is read from shapes and key presence (widths, blocks, heads from ``temperature``,
    ``bias``, ``LayerNorm_type``, MEFC on/off as the extra ``use_mefc`` argument) except
    ``ffn_expansion_factor``, of which only the truncated hidden widths are stored: 2.66 when consistent.
    """
    marks = ("patch_embed.proj.weight", "encoder_level1.0.attn.attn4", "encoder_level1.0.ffn.dwconv5x5_1.weight",
             "down1_2.body.0.weight", "up2_1.body.0.weight", "output.weight")
    if any(k not in sd for k in marks):
        return None

    def blocks(prefix: str) -> int:
        return len({k.split(".")[1] for k in sd if k.startswith(prefix + ".") and k.endswith(".attn.temperature")})

    names = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
    nb = [blocks(n) for n in names]
    decoder = [blocks(f"decoder_level{i}") for i in (1, 2, 3)]
    if min(nb) < 1 or decoder != nb[:3]:  # the official decoder mirrors the encoder
        return None
    dim, inp = sd["patch_embed.proj.weight"].shape[:2]
    widths = [dim, 2 * dim, 4 * dim, 8 * dim]
    heads = [int(sd[f"{n}.0.attn.temperature"].shape[0]) for n in names]
    hidden = [int(sd[f"{n}.0.ffn.project_in.weight"].shape[0]) // 2 for n in names]
    factor = _ffn_factor(widths, hidden)
    if factor is None:
        return None
    mefc = "encoder_level0.layers.0.ca_fc.0.weight" in sd
    steps = [sum(k.startswith(f"{n}.layers.1._ops.") and k.endswith("._out.0.weight") for k in sd)
             for n in ("encoder_level0", "refinement")]
    if steps != ([4, 4] if mefc else [0, 0]):  # both MEFCs or neither; 4 steps, hard-coded officially
        return None
    return {"inp_channels": int(inp), "out_channels": int(sd["output.weight"].shape[0]), "dim": int(dim),
            "num_blocks": nb, "heads": heads, "ffn_expansion_factor": factor,
            "bias": "encoder_level1.0.attn.qkv.bias" in sd,
            "LayerNorm_type": "WithBias" if "encoder_level1.0.norm1.body.bias" in sd else "BiasFree",
            "use_mefc": mefc}


register_official(OfficialSpec(
    model_id="drsformer", field=FIELD,
    build=lambda kw: DRSformer(config_from_official(kw)),
    convert=lambda sd, kw: dict(sd),  # parameter names and shapes are the official ones
    detect=detect_official,
    description="cschenxiang/DRSformer basicsr/models/archs/DRSformer_arch.py::DRSformer "
                "(use_mefc=False: DRSformer_arch_200L+SPA.py)",
))


def _register(name: str, description: str, **cfg: Any) -> None:
    register_model(ModelSpec(name, FIELD, "drsformer", DRSformer, cfg, description))


_register("drsformer", "DRSformer, released deraining model (Rain200H, DID-Data, DDN-Data), MEFC on")
_register("drsformer_nomefc", "DRSformer without MEFC (Rain200L and SPA-Data models)", use_mefc=False)

