"""Window partitioning, relative-position bias and (shifted / overlapping) window attention.

Conventions (Swin / SwinIR / HAT): feature maps are channels-last ``(B, H, W, C)`` when windowed;
windows are enumerated batch-major, then row-major over the window grid; tokens inside a window
are row-major. Window sizes may be an int or an ``(Wh, Ww)`` tuple everywhere.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import attention
from .fast import fast_inference, keep_alive, linear, tensor_key

__all__ = [
    "to_2tuple",
    "window_partition",
    "window_reverse",
    "relative_position_index",
    "overlapping_relative_position_index",
    "RelativePositionBias",
    "shifted_window_mask",
    "WindowAttention",
    "overlapping_windows",
]

Size2 = Union[int, Tuple[int, int]]


def to_2tuple(x: Size2) -> Tuple[int, int]:
    """``7 -> (7, 7)``; tuples/lists pass through as a 2-tuple."""
    if isinstance(x, (tuple, list)):
        return int(x[0]), int(x[1])
    return int(x), int(x)


def window_partition(x: Tensor, window_size: Size2, flatten: bool = True) -> Tensor:
    """Split a channels-last map into non-overlapping windows.

    Args:
        x: ``(B, H, W, C)`` with H, W multiples of the window size.
        window_size: ``ws`` or ``(Wh, Ww)``.
        flatten: True -> ``(B*nW, Wh*Ww, C)``; False -> ``(B*nW, Wh, Ww, C)`` (Swin's layout).

    ``nW = (H/Wh) * (W/Ww)``; window index = ``b * nW + row * (W/Ww) + col``.
    """
    wh, ww = to_2tuple(window_size)
    B, H, W, C = x.shape
    x = x.reshape(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, C) if flatten else x.reshape(-1, wh, ww, C)


def window_reverse(windows: Tensor, window_size: Size2, H: int, W: int) -> Tensor:
    """Inverse of :func:`window_partition`.

    Args:
        windows: ``(B*nW, Wh*Ww, C)`` or ``(B*nW, Wh, Ww, C)``.
        H, W: size of the (padded) map.

    Returns:
        ``(B, H, W, C)``.
    """
    wh, ww = to_2tuple(window_size)
    C = windows.shape[-1]
    x = windows.reshape(-1, H // wh, W // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def _grid_coords(h: int, w: int) -> Tensor:
    """``(2, h*w)`` row/col coordinates of a row-major ``h x w`` grid."""
    return torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).flatten(1)


def relative_position_index(window_size: Size2) -> Tensor:
    """Swin relative-position index for a ``(Wh, Ww)`` window.

    Returns:
        LongTensor ``(Wh*Ww, Wh*Ww)``; entry ``[i, j] = (dh + Wh-1) * (2Ww-1) + (dw + Ww-1)`` with
        ``d = coord_i - coord_j``, indexing a table of ``(2Wh-1)*(2Ww-1)`` rows.
    """
    wh, ww = to_2tuple(window_size)
    c = _grid_coords(wh, ww)
    rel = c[:, :, None] - c[:, None, :]  # (2, N, N): query minus key
    return (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)


def overlapping_relative_position_index(window_size: Size2, overlap_window_size: Size2) -> Tensor:
    """HAT OCAB relative-position index (queries ``ws x ws``, keys ``ows x ows``).

    Reproduces HAT's ``calculate_rpi_oca`` values exactly: ``d = key_coord - query_coord`` (note:
    the opposite sign to :func:`relative_position_index`), shifted by ``ws - ows + 1`` per axis, row
    part multiplied by ``ws_w + ows_w - 1``. The offset does not make every entry non-negative; the
    official model relies on negative indices wrapping around the
    ``(ws_h+ows_h-1)*(ws_w+ows_w-1)``-row table, so negative values are kept here and the table
    must be indexed with Python-style wrap-around (``table[index]`` does that).

    Returns:
        LongTensor ``(ws_h*ws_w, ows_h*ows_w)``, values possibly negative.
    """
    wh, ww = to_2tuple(window_size)
    oh, ow = to_2tuple(overlap_window_size)
    cq, ck = _grid_coords(wh, ww), _grid_coords(oh, ow)
    rel = ck[:, None, :] - cq[:, :, None]  # (2, Nq, Nk): key minus query
    return (rel[0] + wh - oh + 1) * (ww + ow - 1) + (rel[1] + ww - ow + 1)


class _RelPosBiasMixin:
    """Owns ``relative_position_bias_table`` / ``relative_position_index`` directly on the module, so
    :class:`RelativePositionBias`, :class:`WindowAttention` and the SR models' whole-map window attention
    (:class:`~vitsuite.core.layers.sr.SRWindowAttention`) keep official flat names."""

    relative_position_bias_table: nn.Parameter
    relative_position_index: Tensor

    def _init_rel_pos(self, window_size: Size2, num_heads: int, overlap_window_size: Optional[Size2],
                      persistent: bool) -> None:
        wh, ww = to_2tuple(window_size)
        if overlap_window_size is None:
            rows, index = (2 * wh - 1) * (2 * ww - 1), relative_position_index((wh, ww))
        else:
            oh, ow = to_2tuple(overlap_window_size)
            rows = (wh + oh - 1) * (ww + ow - 1)
            index = overlapping_relative_position_index((wh, ww), (oh, ow))
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", index, persistent=persistent)
        self._bias_cache: Optional[Tuple[tuple, tuple, Tensor]] = None

    def relative_position_bias(self) -> Tensor:
        """``(heads, Nq, Nk)`` bias gathered from the table.

        In eval mode without autograd the result is cached under :func:`~vitsuite.core.layers.fast.tensor_key`
        of table and index, so in-place updates (optimizer steps, ``load_state_dict``'s ``copy_``)
        and ``.to()`` moves invalidate it. Under grad / training it is always recomputed so gradients
        reach the table.
        """
        table, index = self.relative_position_bias_table, self.relative_position_index
        cacheable = not self.training and not (torch.is_grad_enabled() and table.requires_grad)
        key = tensor_key(table, index)
        if cacheable and self._bias_cache is not None and self._bias_cache[0] == key:
            return self._bias_cache[2]
        bias = self._gather_relative_position_bias()
        self._bias_cache = (key, keep_alive(table, index), bias) if cacheable else None
        return bias

    def _gather_relative_position_bias(self) -> Tensor:
        """``(heads, Nq, Nk)`` gathered from the table, never cached (for callers with their own cache)."""
        table, index = self.relative_position_bias_table, self.relative_position_index
        nq, nk = index.shape
        # Plain indexing (not index_select) so HAT's negative OCA indices wrap like in the original.
        return table[index.reshape(-1)].view(nq, nk, -1).permute(2, 0, 1).contiguous()

    def train(self, mode: bool = True):
        self._bias_cache = None
        return super().train(mode)


class RelativePositionBias(_RelPosBiasMixin, nn.Module):
    """Learned relative-position bias for (overlapping) window attention.

    Args:
        window_size: query window ``ws`` / ``(Wh, Ww)``.
        num_heads: heads.
        overlap_window_size: if given, HAT OCA variant: keys come from an ``ows`` window, table has
            ``(Wh+Oh-1)*(Ww+Ow-1)`` rows and the index is :func:`overlapping_relative_position_index`.
        persistent: whether ``relative_position_index`` goes into the state dict (Swin stores it
            per block; HAT/DRCT compute it in the model, so pass False there).

    Parameters/buffers: ``relative_position_bias_table (rows, heads)``,
    ``relative_position_index (Nq, Nk)``. ``forward()`` -> ``(heads, Nq, Nk)``.
    """

    def __init__(self, window_size: Size2, num_heads: int, overlap_window_size: Optional[Size2] = None,
                 persistent: bool = True):
        super().__init__()
        self.window_size = to_2tuple(window_size)
        self.num_heads = num_heads
        self._init_rel_pos(window_size, num_heads, overlap_window_size, persistent)

    def forward(self) -> Tensor:
        return self.relative_position_bias()


@functools.lru_cache(maxsize=64)
def _shifted_window_mask(H: int, W: int, ws: Tuple[int, int], shift: Tuple[int, int],
                         device: torch.device) -> Tensor:
    def labels(n: int, w: int, s: int) -> Tensor:
        # Swin's three slices (0:-w, -w:-s, -s:) per axis, labelled 0/1/2 without Python loops.
        r = torch.arange(n, device=device)
        return (r >= n - w).long() + (r >= n - s).long() if s > 0 else torch.zeros_like(r)

    region = labels(H, ws[0], shift[0])[:, None] * 3 + labels(W, ws[1], shift[1])[None, :]
    win = window_partition(region[None, :, :, None], ws).squeeze(-1)  # (nW, N)
    diff = win[:, None, :] != win[:, :, None]
    return torch.zeros(diff.shape, dtype=torch.float32, device=device).masked_fill_(diff, -100.0)


def shifted_window_mask(H: int, W: int, window_size: Size2, shift_size: Size2,
                        device: Union[torch.device, str, None] = None) -> Tensor:
    """Swin SW-MSA mask for a (padded) ``H x W`` map after a cyclic shift of ``-shift_size``.

    Returns:
        float32 ``(nW, N, N)`` with ``N = Wh*Ww``: 0 for token pairs from the same pre-shift region,
        -100.0 otherwise (Swin convention). Cached per ``(H, W, ws, shift, device)``: the same
        tensor object is returned every time, so callers must not modify it in place.
    """
    device = torch.device(device if device is not None else "cpu")
    return _shifted_window_mask(int(H), int(W), to_2tuple(window_size), to_2tuple(shift_size), device)


class WindowAttention(_RelPosBiasMixin, nn.Module):
    """Swin window multi-head self-attention with relative-position bias.

    Args:
        dim: C. window_size: ``ws`` / ``(Wh, Ww)``. num_heads: heads.
        qkv_bias, qk_scale, attn_drop, proj_drop: as in Swin.
        persistent_index: store ``relative_position_index`` in the state dict (Swin: yes;
            HAT/DRCT keep it in the model: no).

    Keys: ``qkv``, ``proj``, ``relative_position_bias_table ((2Wh-1)(2Ww-1), heads)``,
    ``relative_position_index``.

    Forward: ``x (B*nW, N, C)``, optional additive ``mask (nW, N, N)`` (e.g.
    :func:`shifted_window_mask`) -> ``(B*nW, N, C)``. Bias and mask are fused into one SDPA mask.
    """

    def __init__(self, dim: int, window_size: Size2, num_heads: int, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 persistent_index: bool = True):
        super().__init__()
        self.dim, self.num_heads = dim, num_heads
        self.window_size = to_2tuple(window_size)
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim**-0.5
        self._init_rel_pos(window_size, num_heads, None, persistent_index)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        B_, N, C = x.shape
        fast = not self.training and fast_inference(x)  # oneDNN linears on CPU fp32 inference
        qkv = linear(x, self.qkv.weight, self.qkv.bias, fast=True) if fast else self.qkv(x)
        q, k, v = qkv.reshape(B_, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias()  # (heads, N, N)
        if mask is not None:
            nW = mask.shape[0]
            # Window w of every image gets mask[w]; materialise (B_, heads, N, N) so SDPA sees 4-D
            # inputs (the same memory as the explicit attention matrix in the official code).
            full = (bias.to(q.dtype)[None] + mask.to(q.dtype)[:, None])  # (nW, heads, N, N)
            bias = full.unsqueeze(0).expand(B_ // nW, -1, -1, -1, -1).reshape(B_, self.num_heads, N, N)
        x = attention(q, k, v, bias=bias, scale=self.scale, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B_, N, C)
        if fast:
            return linear(x, self.proj.weight, self.proj.bias, fast=True)
        return self.proj_drop(self.proj(x))


def overlapping_windows(x: Tensor, window_size: Size2, overlap_window_size: Size2) -> Tensor:
    """HAT OCAB key/value windows: overlapping ``ows x ows`` patches centred on each ``ws`` window.

    Equivalent to ``nn.Unfold(kernel=ows, stride=ws, padding=(ows-ws)//2)`` followed by HAT's
    ``'b (c owh oww) nw -> (b nw) (owh oww) c'`` rearrange: windows are batch-major then row-major
    (aligned with :func:`window_partition` of the queries), tokens row-major inside the window,
    zero padding at the border. HAT applies it to ``cat([k, v], 1)``; doing so here and splitting
    the last dim with ``chunk(2, -1)`` gives the same k / v windows.

    Args:
        x: ``(B, C, H, W)`` channels-first (H, W multiples of ws; ``ows - ws`` even, as in HAT's
            configs, otherwise the unfold grid does not line up with the query windows).

    Returns:
        ``(B*nW, Oh*Ow, C)``.
    """
    wh, ww = to_2tuple(window_size)
    oh, ow = to_2tuple(overlap_window_size)
    B, C, H, W = x.shape
    cols = F.unfold(x, kernel_size=(oh, ow), stride=(wh, ww), padding=((oh - wh) // 2, (ow - ww) // 2))
    nW = cols.shape[-1]
    if nW != (H // wh) * (W // ww):
        raise ValueError(f"unfold gives {nW} windows, expected {(H // wh) * (W // ww)} for {H}x{W} / {wh}x{ww}")
    # unfold rows are ordered (c, kh, kw): split c out, then move windows to the batch axis.
    return cols.view(B, C, oh * ow, nW).permute(0, 3, 2, 1).reshape(B * nW, oh * ow, C)
