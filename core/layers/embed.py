"""Patch embeddings (plain, per-channel, grouped-channel) and position-embedding helpers."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from .windows import Size2, to_2tuple

__all__ = [
    "PatchEmbed",
    "ChannelPatchEmbed",
    "GroupChannelPatchEmbed",
    "sincos_pos_embed_1d",
    "sincos_pos_embed_2d",
    "resize_pos_embed",
]


def _pad_to_multiple(x: Tensor, patch: Tuple[int, int]) -> Tensor:
    """Zero-pad bottom/right of ``(..., H, W)`` so H, W are multiples of ``patch`` (Swin/timm)."""
    ph = (patch[0] - x.shape[-2] % patch[0]) % patch[0]
    pw = (patch[1] - x.shape[-1] % patch[1]) % patch[1]
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


class PatchEmbed(nn.Module):
    """Convolutional patch embedding (timm / MAE / Swin / ViTPose layout: ``proj`` Conv2d, ``norm``).

    Args:
        in_chans, embed_dim: input channels, token width D.
        patch_size: conv kernel. stride: conv stride (default = patch_size; ViTPose uses overlapping
            patches with ``stride < patch_size`` plus ``padding``).
        norm_layer: optional norm over D applied to the tokens (``norm``; Identity if None).
        flatten: True -> ``(B, N, D)`` tokens (row-major); False -> ``(B, D, Hp, Wp)`` map, no norm.
        pad_to_multiple: zero-pad bottom/right so H, W are multiples of the patch size first.

    Forward: ``x (B, Cin, H, W)`` -> tokens, plus ``(Hp, Wp)`` when ``return_hw=True``.
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 768, patch_size: Size2 = 16,
                 stride: Optional[Size2] = None, padding: Size2 = 0,
                 norm_layer: Optional[Callable[[int], nn.Module]] = None, flatten: bool = True,
                 pad_to_multiple: bool = False, bias: bool = True):
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.flatten = flatten
        self.pad_to_multiple = pad_to_multiple
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, stride=to_2tuple(stride or patch_size),
                              padding=to_2tuple(padding), bias=bias)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: Tensor, return_hw: bool = False):
        if self.pad_to_multiple:
            x = _pad_to_multiple(x, self.patch_size)
        x = self.proj(x)
        hw = (x.shape[-2], x.shape[-1])
        if self.flatten:
            x = self.norm(x.flatten(2).transpose(1, 2))
        return (x, hw) if return_hw else x


class ChannelPatchEmbed(nn.Module):
    """ChannelViT per-channel patch embedding (``PatchEmbedPerChannel`` layout).

    Every input channel is patchified separately by one shared projection ``proj`` (Conv3d with
    kernel ``(1, p, p)``, weight ``(D, 1, 1, p, p)``) and offset by a learned channel embedding
    ``channel_embed`` of shape ``(1, D, in_chans, 1, 1)`` selected by channel id.

    Forward: ``x (B, Cin, H, W)``, ``channels`` = ids of the Cin present channels, ``(Cin,)`` shared by
    the batch or ``(B, Cin)`` per sample (default ``arange(Cin)``) -> ``(B, Cin*Hp*Wp, D)``, tokens
    ordered channel-major then row-major; plus ``(Hp, Wp)`` with ``return_hw=True``.
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 768, patch_size: int = 16):
        super().__init__()
        self.in_chans, self.embed_dim, self.patch_size = in_chans, embed_dim, patch_size
        self.proj = nn.Conv3d(1, embed_dim, kernel_size=(1, patch_size, patch_size),
                              stride=(1, patch_size, patch_size))
        self.channel_embed = nn.Parameter(torch.zeros(1, embed_dim, in_chans, 1, 1))
        nn.init.trunc_normal_(self.channel_embed, std=0.02)

    def forward(self, x: Tensor, channels: Optional[Tensor] = None, return_hw: bool = False):
        B, Cin, H, W = x.shape
        p, D = self.patch_size, self.embed_dim
        # A (1,p,p) Conv3d over a 1-channel volume is a Conv2d applied to every channel; running it
        # as Conv2d on (B*Cin, 1, H, W) with the same weights avoids the slower 3-D kernels.
        y = F.conv2d(x.reshape(B * Cin, 1, H, W), self.proj.weight.view(D, 1, p, p), self.proj.bias, stride=p)
        hw = (y.shape[-2], y.shape[-1])
        y = y.view(B, Cin, D, -1)  # (B, Cin, D, Np)
        table = self.channel_embed.view(D, self.in_chans).t()  # (in_chans, D)
        if channels is None:
            channels = torch.arange(Cin, device=x.device)
        emb = table[channels]  # (Cin, D) or (B, Cin, D)
        y = y + emb.expand(B, Cin, D).unsqueeze(-1)
        y = y.permute(0, 1, 3, 2).reshape(B, -1, D)
        return (y, hw) if return_hw else y


class GroupChannelPatchEmbed(nn.ModuleList):
    """SatMAE grouped-channel patch embedding: one :class:`PatchEmbed` per channel group.

    It *is* the ``ModuleList``, so a model attribute ``patch_embed = GroupChannelPatchEmbed(...)``
    yields official keys ``patch_embed.{i}.proj.weight``.

    Args:
        channel_groups: e.g. ``((0, 1, 2, 6), (3, 4, 5, 7), (8, 9))``.
        embed_dim, patch_size, norm_layer: as :class:`PatchEmbed`.

    Forward: ``x (B, Cin, H, W)`` -> ``(B, G, Hp*Wp, D)``.
    """

    def __init__(self, channel_groups: Sequence[Sequence[int]], embed_dim: int = 768, patch_size: Size2 = 16,
                 norm_layer: Optional[Callable[[int], nn.Module]] = None):
        super().__init__([PatchEmbed(len(g), embed_dim, patch_size, norm_layer=norm_layer) for g in channel_groups])
        self.channel_groups = tuple(tuple(int(c) for c in g) for g in channel_groups)

    def forward(self, x: Tensor) -> Tensor:
        # One conv per group (G is small); groups may be non-contiguous channel sets.
        return torch.stack([pe(x[:, list(g)]) for pe, g in zip(self, self.channel_groups)], dim=1)


def _sincos_1d_np(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """MAE's 1-D sin-cos table in float64: ``[sin(pos*w), cos(pos*w)]``, ``w_i = 10000^(-2i/D)``."""
    if embed_dim % 2:
        raise ValueError("embed_dim must be even")
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0))
    out = np.outer(pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_pos_embed_1d(embed_dim: int, positions) -> Tensor:
    """1-D sin-cos embedding (MAE ``get_1d_sincos_pos_embed_from_grid``).

    Args:
        positions: ``(M,)`` positions (sequence, Tensor or array; any shape is flattened).

    Returns:
        float32 ``(M, embed_dim)``: first half ``sin``, second half ``cos``.
    """
    if isinstance(positions, Tensor):
        positions = positions.detach().cpu().numpy()
    return torch.from_numpy(_sincos_1d_np(embed_dim, np.asarray(positions, dtype=np.float64))).float()


def sincos_pos_embed_2d(embed_dim: int, grid_h: int, grid_w: int, cls_token: bool = False) -> Tensor:
    """2-D sin-cos embedding, numerically equal to MAE's ``get_2d_sincos_pos_embed``.

    MAE builds ``meshgrid(grid_w, grid_h)`` ('xy'), so the FIRST half of the channels encodes the
    column (w) coordinate and the second half the row (h) coordinate; tokens are row-major.
    Computed in float64 and cast to float32 like MAE's ``torch.from_numpy(...).float()``.

    Returns:
        float32 ``(grid_h*grid_w, embed_dim)``, or ``(1 + grid_h*grid_w, embed_dim)`` with a leading
        zero row when ``cls_token``.
    """
    if embed_dim % 4:
        raise ValueError("embed_dim must be divisible by 4")
    rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float32), np.arange(grid_w, dtype=np.float32),
                             indexing="ij")
    emb = np.concatenate([_sincos_1d_np(embed_dim // 2, cols), _sincos_1d_np(embed_dim // 2, rows)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, embed_dim)), emb], axis=0)
    return torch.from_numpy(emb).float()


def resize_pos_embed(pos_embed: Tensor, new_hw: Size2, old_hw: Optional[Size2] = None, num_prefix_tokens: int = 1,
                     mode: str = "bicubic", antialias: bool = False) -> Tensor:
    """Interpolate an absolute position embedding to a new patch grid.

    Args:
        pos_embed: ``(1, num_prefix_tokens + Ho*Wo, D)``; prefix (cls/register) tokens are kept as is.
        new_hw: target grid ``(Hn, Wn)``. old_hw: source grid (default: square).
        mode, antialias: ``F.interpolate`` settings (MAE/ViTPose fine-tuning uses bicubic, no antialias).

    Returns:
        ``(1, num_prefix_tokens + Hn*Wn, D)`` in the input dtype (interpolation runs in float32).
        Delegates to :func:`timm.layers.resample_abs_pos_embed`, which does exactly this.
    """
    return resample_abs_pos_embed(pos_embed, new_size=list(to_2tuple(new_hw)),
                                  old_size=None if old_hw is None else list(to_2tuple(old_hw)),
                                  num_prefix_tokens=num_prefix_tokens, interpolation=mode,
                                  antialias=antialias, verbose=False)
