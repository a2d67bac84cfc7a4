"""Super-resolution pieces shared by the SwinIR family (HAT, DRCT): the pixel-shuffle head, the
"mean shift -> shallow conv -> body -> conv_after_body -> upsample" shell with window-multiple
padding, and a window self-attention tuned for inference on CPU.

Layout conventions: the body works on channels-last token maps ``(B, H, W, C)`` (row-major pixels,
the same memory as the official ``(B, H*W, C)`` tokens); every convolution of the shell sees the
same memory as an NCHW tensor in ``torch.channels_last`` format, so no layout copies happen between
the token body and the convolutions.

:class:`SRWindowAttention` is the (shifted) window attention of Swin / SwinIR / HAT / DRCT with
official parameter names (``qkv``, ``proj``, ``relative_position_bias_table``). Instead of rolling the
map, partitioning it, and adding a per-window ``(nW, N, N)`` mask to every head's scores, it

* gathers the tokens of all windows with one cached index (roll + partition in one copy) and
  scatters the result back with the inverse index (reverse + un-roll in one copy);
* orders the windows in at most four groups -- interior windows, the last window row, the last
  window column and the corner -- because the Swin shift mask is zero for interior windows and is
  the same ``(N, N)`` pattern for every window of the other three groups, whatever the image size;
* runs one fused SDPA call per group with a single additive ``(1, heads, N, N)`` mask = relative
  position bias + that group's shift mask, computed once and cached in eval (recomputed under
  autograd so gradients reach the table).

The results equal the official computation (mask value -100, as in Swin) up to float rounding.

Inference fast path (:func:`~vitsuite.core.layers.fast.fast_inference`: CPU float32, no autograd,
no autocast, not tracing): token matmuls go through oneDNN (``torch.ops.mkldnn._linear_pointwise``, which Inductor uses; MKL's sgemm runs
widths such as 3*180 = 540 at ~60% of its speed for 576) with GELU / LeakyReLU / residual adds
fused, and attention heads are zero-padded to multiples of 8 (qkv rows and proj columns padded
with zeros: same result; the CPU flash-attention kernel is ~25% faster at head dim 32 than 30).
Padded weights and masks are cached per module and follow in-place updates and ``.to()``.
Training, autograd and export (tracing) run the plain path, which computes the same function.
"""

from __future__ import annotations

import functools
import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import attention
from .fast import (derived, fast_inference, inference_memory, inplace_ok, keep_alive, linear, linear_add, pad_heads_in,
                   pad_heads_out, padded_head_dim, tensor_key)
from .windows import _RelPosBiasMixin, to_2tuple

__all__ = [
    "DIV2K_RGB_MEAN",
    "Upsample",
    "pad_to_multiple",
    "PatchNorm",
    "drop_path_schedule",
    "PixelShuffleSR",
    "window_plan",
    "shift_group_masks",
    "SRWindowAttention",
]

#: RGB mean of DIV2K that SwinIR / HAT / DRCT subtract from 3-channel inputs.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)

SHIFT_MASK_VALUE = -100.0  # Swin's additive value for token pairs from different pre-shift regions


class Upsample(nn.Sequential):
    """Pixel-shuffle upsampler of SwinIR/HAT/DRCT: ``log2(s)`` x [conv3x3 F->4F, PixelShuffle(2)] for
    ``s = 2^n``, or [conv3x3 F->9F, PixelShuffle(3)] for ``s = 3``. Keys ``0``, ``2``, ... as officially.
    """

    def __init__(self, scale: int, num_feat: int):
        layers: List[nn.Module] = []
        if scale >= 1 and (scale & (scale - 1)) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"upscale {scale} is not supported by the pixel-shuffle upsampler (use 2^n or 3)")
        super().__init__(*layers)

    @staticmethod
    def scale_from_state_dict(sd, prefix: str = "upsample.") -> Optional[int]:
        """The upscale factor of an ``Upsample`` whose weights are in ``sd`` (1 when it has no convs,
        ``None`` when the convs do not form one)."""
        outs = []
        i = 0
        while f"{prefix}{i}.weight" in sd:
            w = sd[f"{prefix}{i}.weight"]
            outs.append(w.shape[0] // w.shape[1])
            i += 2
        if not outs:
            return 1
        if outs == [9]:
            return 3
        if all(o == 4 for o in outs):
            return 2 ** len(outs)
        return None


def pad_to_multiple(x: Tensor, multiple: int, mode: str = "reflect") -> Tensor:
    """Pad ``(B, C, H, W)`` at the bottom/right up to multiples of ``multiple`` (HAT/DRCT test wrapper).

    ``reflect`` as the official wrappers do; where a side is too small to reflect (pad >= size) the
    padding falls back to ``replicate`` for that call.
    """
    H, W = x.shape[-2:]
    ph, pw = (-H) % multiple, (-W) % multiple
    if not (ph or pw):
        return x
    if mode == "reflect" and (ph >= H or pw >= W):
        mode = "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class PatchNorm(nn.Module):
    """Holds ``patch_embed.norm`` (the official SwinIR/HAT/DRCT PatchEmbed has no other parameters)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)


def drop_path_schedule(rate: float, n: int) -> List[float]:
    """``torch.linspace(0, rate, n)`` as Python floats (also works while building on the meta device)."""
    return [rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]


class PixelShuffleSR(nn.Module):
    """SwinIR-style shell for classical SR with the pixel-shuffle head.

    ``y = conv_last(upsample(conv_before_upsample(conv_after_body(body(f0)) + f0))) / img_range + mean``
    with ``f0 = conv_first((x - mean) * img_range)``. :meth:`forward_features` maps the shallow features
    ``(B, C, H, W)`` (channels-last memory) to the body output as a ``(B, H, W, C)`` token map (the
    official ``norm`` output before ``patch_unembed``): subclasses call :meth:`_init_token_stem` and
    build ``layers`` and ``norm``.

    Inputs whose H, W are not multiples of ``pad_multiple`` are reflect-padded at the bottom/right and
    the output is cropped to ``upscale * (H, W)`` (what the official test wrappers do around the bare
    network); for multiples the call is exactly the official forward.

    Keys: ``conv_first``, ``conv_after_body`` (``resi_connection='1conv'``), ``conv_before_upsample.0``,
    ``upsample.{0,2,..}``, ``conv_last``; the mean (DIV2K RGB, or 0 for other channel counts) is a
    constant, as officially.
    """

    def __init__(self, in_chans: int, embed_dim: int, upscale: int, img_range: float = 1.0,
                 resi_connection: str = "1conv", num_feat: int = 64, pad_multiple: int = 1,
                 pad_mode: str = "reflect"):
        super().__init__()
        if resi_connection not in ("1conv", "identity"):
            raise ValueError(f"resi_connection must be '1conv' or 'identity', got {resi_connection!r}")
        self.in_chans, self.embed_dim, self.upscale = in_chans, embed_dim, int(upscale)
        self.img_range = float(img_range)
        self.pad_multiple, self.pad_mode = int(pad_multiple), pad_mode
        # A constant, not a buffer: ``.to(bfloat16).float()`` must not round it (as officially).
        self.rgb_mean: Tuple[float, ...] = DIV2K_RGB_MEAN if in_chans == 3 else (0.0,)
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1) if resi_connection == "1conv" else nn.Identity()
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
        self.upsample = Upsample(self.upscale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)

    def _init_token_stem(self, patch_norm: bool, ape: bool, img_size: int | Tuple[int, int], drop_rate: float) -> None:
        """The official token stem before the residual groups: ``patch_embed.norm`` (if ``patch_norm``),
        a learned absolute position embedding for a fixed ``img_size`` (if ``ape``), dropout.
        Subclasses build ``layers`` (token map -> token map) and ``norm`` after calling this."""
        C = self.embed_dim
        self.patch_embed = PatchNorm(C) if patch_norm else None
        self.ape_size = to_2tuple(img_size) if ape else None
        if self.ape_size is not None:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, self.ape_size[0] * self.ape_size[1], C))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)

    def forward_features(self, x: Tensor) -> Tensor:
        """Shallow features ``(B, C, H, W)`` -> ``(B, H, W, C)``: token stem, ``layers``, ``norm``."""
        t = x.permute(0, 2, 3, 1)                       # (B, H, W, C): free for channels-last x
        t = self.patch_embed.norm(t) if self.patch_embed is not None else t.contiguous()
        if self.ape_size is not None:
            B, H, W, C = t.shape
            if (H, W) != self.ape_size:
                raise ValueError(f"ape=True fixes the input to img_size {self.ape_size}, got {H}x{W}")
            t = t + self.absolute_pos_embed.view(1, H, W, C)
        t = self.pos_drop(t)
        for layer in self.layers:
            t = layer(t)
        return self.norm(t)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_chans, H, W) -> (B, in_chans, upscale*H, upscale*W)``."""
        with inference_memory(x):  # large temporaries reuse freed blocks (no page faults) on the fast path
            return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        H, W = x.shape[-2:]
        x = pad_to_multiple(x, self.pad_multiple, self.pad_mode)
        mean = torch.tensor(self.rgb_mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = ((x - mean) * self.img_range).contiguous(memory_format=torch.channels_last)
        f0 = self.conv_first(x)
        body = self.forward_features(f0).permute(0, 3, 1, 2)  # channels-last NCHW view of the tokens
        f = self.conv_after_body(body)
        f = f.add_(f0) if inplace_ok(f, f0) else f + f0
        y = self.conv_last(self.upsample(self.conv_before_upsample(f)))
        y = y / self.img_range + mean
        s = self.upscale
        if y.shape[-2] != s * H or y.shape[-1] != s * W:
            y = y[..., : s * H, : s * W]
        return y.contiguous()


# ---------------------------------------------------------------------------------------------
# window attention


def shift_group_masks(window_size: int, shift_size: int) -> Tensor:
    """The Swin shift masks of the last window row, last window column and corner window.

    Returns float32 ``(3, N, N)`` (``N = ws^2``): 0 where query and key come from the same pre-shift
    region, -100 otherwise. Every other window of a shifted map has an all-zero mask, and these three
    patterns do not depend on the image size.
    """
    ws, s = window_size, shift_size
    r = torch.arange(ws)
    band = (r >= ws - s).long()                        # 0: [0, ws-s), 1: [ws-s, ws) inside the edge window
    rows = band[:, None].expand(ws, ws).reshape(-1)    # token label by row band
    cols = band[None, :].expand(ws, ws).reshape(-1)
    out = []
    for lab in (rows, cols, rows * 2 + cols):
        out.append(torch.zeros(ws * ws, ws * ws).masked_fill_(lab[:, None] != lab[None, :], SHIFT_MASK_VALUE))
    return torch.stack(out)


@functools.lru_cache(maxsize=64)
def window_plan(B: int, H: int, W: int, window_size: int, shift_size: int,
                device: torch.device) -> Tuple[Tensor, Tensor, Tuple[Tuple[int, int, int], ...]]:
    """Token order for (shifted) window attention over ``B`` maps of ``H x W`` (multiples of ``ws``).

    Returns ``(gather, scatter, groups)``: ``tokens.reshape(B*H*W, C)[gather]`` lists the windows of
    the map rolled by ``-shift`` (Swin's cyclic shift), group by group, batch-major inside a group,
    tokens row-major inside a window; ``[scatter]`` is the inverse permutation. ``groups`` holds
    ``(start_row, n_windows, kind)`` with kind 0 = no mask (interior), 1 = last window row,
    2 = last window column, 3 = corner (indices into ``shift_group_masks`` + 1). Without shift there
    is one group of kind 0. Cached per argument tuple; do not modify the returned tensors.
    """
    # Normal (not inference-mode) tensors, so a plan first built under torch.inference_mode() can
    # later be saved for backward by index_select during training.
    with torch.inference_mode(False):
        return _window_plan(int(B), int(H), int(W), int(window_size), int(shift_size), device)


def _window_plan(B: int, H: int, W: int, ws: int, s: int, device: torch.device):
    nh, nw = H // ws, W // ws
    N = ws * ws
    a = torch.arange(ws)
    # original pixel of token (a, b) of window (r, c) of the rolled map
    rows = (torch.arange(nh)[:, None] * ws + a[None, :] + s) % H          # (nh, ws)
    cols = (torch.arange(nw)[:, None] * ws + a[None, :] + s) % W          # (nw, ws)
    pix = rows[:, None, :, None] * W + cols[None, :, None, :]             # (nh, nw, ws, ws)
    pix = pix.reshape(nh, nw, N)
    if s > 0:
        r_last = torch.arange(nh) == nh - 1
        c_last = torch.arange(nw) == nw - 1
        kind = r_last[:, None].long() + 2 * c_last[None, :].long()        # 0 interior, 1 row, 2 col, 3 corner
    else:
        kind = torch.zeros(nh, nw, dtype=torch.long)
    batch_off = torch.arange(B)[:, None] * (H * W)
    parts, groups, start = [], [], 0
    for k in range(4):
        sel = pix[kind == k]                                              # (n_k, N) in row-major window order
        n_k = int(sel.shape[0])  # a plain int even while tracing (sizes are traced values then)
        if n_k == 0:
            continue
        parts.append((batch_off[:, :, None] + sel[None]).reshape(-1))      # batch-major inside the group
        groups.append((start, B * n_k, k))
        start = start + B * n_k * N
    gather = torch.cat(parts)
    scatter = torch.empty_like(gather)
    scatter[gather] = torch.arange(gather.numel())
    return gather.to(device), scatter.to(device), tuple(groups)


class SRWindowAttention(_RelPosBiasMixin, nn.Module):
    """Window multi-head self-attention of SwinIR/HAT/DRCT (official keys ``qkv``, ``proj``,
    ``relative_position_bias_table``), shifted or not, on whole token maps.

    Forward: ``x (B, H, W, C)`` -- the *normed* map, H and W multiples of ``window_size`` -- and
    ``shift_size`` -> attention output ``(B, H, W, C)`` in the original pixel order (already rolled
    back). See the module docstring for how windows are grouped and masks fused.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.window_size, self.num_heads = dim, int(window_size), num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self._init_rel_pos(self.window_size, num_heads, None, persistent=False)  # HAT/DRCT build the index
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self._mask_cache: Dict[int, Tuple[tuple, tuple, List[Tensor]]] = {}

    def train(self, mode: bool = True):
        self._mask_cache = {}
        return super().train(mode)

    def attention_masks(self, shift_size: int, dtype: torch.dtype) -> List[Tensor]:
        """``[bias, bias + row mask, bias + column mask, bias + corner mask]`` as ``(1, heads, N, N)``
        (only the first without shift); cached in eval while the table is unchanged."""
        table, index = self.relative_position_bias_table, self.relative_position_index
        cacheable = not self.training and not (torch.is_grad_enabled() and table.requires_grad)
        key = tensor_key(table, index) + (dtype,)
        if cacheable:
            hit = self._mask_cache.get(shift_size)
            if hit is not None and hit[0] == key:
                return hit[2]
        # not the mixin's cached bias: the masks below are this module's cache (no second copy)
        bias = self._gather_relative_position_bias().unsqueeze(0).to(dtype)          # (1, heads, N, N)
        masks = [bias.contiguous()]
        if shift_size > 0:
            shift = shift_group_masks(self.window_size, shift_size).to(device=table.device, dtype=dtype)
            masks += [bias + shift[i] for i in range(3)]
        if cacheable:
            self._mask_cache[shift_size] = (key, keep_alive(table, index), masks)
        return masks

    def forward(self, x: Tensor, shift_size: int = 0, residual: Optional[Tensor] = None) -> Tensor:
        """Attention of the normed map ``x (B, H, W, C)``; ``+ residual`` (same shape) when given."""
        B, H, W, C = (int(n) for n in x.shape)  # plain ints, also under tracing (export at fixed size)
        ws, h = self.window_size, self.num_heads
        if H % ws or W % ws:
            raise ValueError(f"map {H}x{W} is not a multiple of the window size {ws}")
        N = ws * ws
        fast = fast_inference(x) and not self.training
        gather, scatter, groups = window_plan(B, H, W, ws, int(shift_size), x.device)
        tokens = x.reshape(B * H * W, C).index_select(0, gather)
        if fast:
            d = padded_head_dim(self.head_dim)
            qkv_w, qkv_b, proj_w = self._padded_weights(d)
            qkv = linear(tokens, qkv_w, qkv_b, fast=True)
        else:
            d = self.head_dim
            qkv = self.qkv(tokens)
        masks = self.attention_masks(shift_size, qkv.dtype)
        drop = self.attn_drop if self.training else 0.0
        outs = []
        for start, n_win, kind in groups:
            part = qkv[start:start + n_win * N].view(n_win, N, 3, h, d)
            q, k, v = part.permute(2, 0, 3, 1, 4).unbind(0)
            o = attention(q, k, v, bias=masks[kind], dropout_p=drop, scale=self.scale)
            outs.append(o.transpose(1, 2).reshape(n_win * N, h * d))
        o = outs[0] if len(outs) == 1 else torch.cat(outs)
        o = o.index_select(0, scatter)                       # back to pixel order (rolled back)
        if fast:
            if residual is None:
                return linear(o, proj_w, self.proj.bias, fast=True).view(B, H, W, C)
            return linear_add(o, residual, proj_w, self.proj.bias, fast=True).view(B, H, W, C)
        o = self.proj_drop(self.proj(o)).view(B, H, W, C)
        return o if residual is None else residual + o

    def _padded_weights(self, d: int) -> Tuple[Tensor, Optional[Tensor], Tensor]:
        h, hd = self.num_heads, self.head_dim
        qkv, proj = self.qkv, self.proj
        if d == hd:
            return qkv.weight, qkv.bias, proj.weight
        srcs = [qkv.weight, proj.weight] + ([qkv.bias] if qkv.bias is not None else [])

        def make():
            b = pad_heads_out(qkv.bias, 3, h, hd, d) if qkv.bias is not None else None
            return pad_heads_out(qkv.weight, 3, h, hd, d), b, pad_heads_in(proj.weight, h, hd, d)

        return derived(self, "padded", srcs, make)
