"""Transformer blocks (ViT, Swin) plus re-exported timm building blocks.

``Mlp`` (``fc1``/``act``/``fc2``), ``DropPath``, ``LayerScale`` and ``trunc_normal_`` come from timm so
checkpoint keys and numerics match timm/MAE/ViTPose/Swin without carrying copies.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp, trunc_normal_
from torch import Tensor, nn

from .attention import Attention
from .fast import fast_inference, mlp_residual
from .windows import Size2, WindowAttention, shifted_window_mask, to_2tuple, window_partition, window_reverse

__all__ = ["Mlp", "DropPath", "LayerScale", "trunc_normal_", "init_vit_weights_", "ViTBlock", "SwinBlock"]


def init_vit_weights_(module: nn.Module, std: float = 0.02) -> None:
    """timm's classic ViT init, in place: Linear weights trunc-normal(``std``) with zero bias,
    LayerNorm weight 1 / bias 0 (what the ViT-family official repos apply before training)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _gelu_mlp(mlp: nn.Module) -> bool:
    """A timm ``Mlp`` = fc1 -> exact GELU -> fc2 (no norm), which :func:`mlp_residual` may fuse."""
    act, norm = getattr(mlp, "act", None), getattr(mlp, "norm", None)  # (no module built per call)
    return (type(act) is nn.GELU and act.approximate == "none" and (norm is None or isinstance(norm, nn.Identity))
            and isinstance(getattr(mlp, "fc1", None), nn.Linear) and isinstance(getattr(mlp, "fc2", None), nn.Linear))


class ViTBlock(nn.Module):
    """Pre-norm ViT block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``.

    Keys: ``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2`` (timm/MAE/ViTPose),
    plus ``ls1.gamma``/``ls2.gamma`` when ``init_values`` enables LayerScale.

    Forward: ``x (B, N, C)``, optional additive attention ``bias``/``mask`` (see
    :class:`Attention`) -> ``(B, N, C)``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 qk_scale: Optional[float] = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, init_values: Optional[float] = None,
                 act_layer: Callable[..., nn.Module] = nn.GELU,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop,
                              proj_drop=drop)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: Tensor, bias: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        if not self.training and fast_inference(x) and self._fusable():
            # CPU fp32 inference: residual adds fused into proj / fc2, GELU into fc1 (oneDNN epilogues)
            x = self.attn(self.norm1(x), bias=bias, mask=mask, residual=x)
            return mlp_residual(self.mlp, self.norm2(x), x, fast=True)
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), bias=bias, mask=mask)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))

    def _fusable(self) -> bool:
        """Whether the fused fast path computes this block: no LayerScale, timm ``Mlp`` with exact GELU."""
        return isinstance(self.ls1, nn.Identity) and isinstance(self.ls2, nn.Identity) and _gelu_mlp(self.mlp)


class SwinBlock(nn.Module):
    """Swin Transformer block (W-MSA / SW-MSA), working for any input size.

    Keys: ``norm1``, ``attn.{qkv,proj,relative_position_bias_table,relative_position_index}``,
    ``norm2``, ``mlp.fc1``, ``mlp.fc2``.

    Args:
        dim, num_heads, window_size (int or ``(Wh, Ww)``), shift_size (0 = W-MSA; usually ws // 2).
        input_resolution: if given and not larger than the window, the window shrinks to the
            resolution and shifting is disabled (Swin's rule; fixed at construction because the bias
            table size depends on it).
        persistent_index: see :class:`WindowAttention`.

    Forward: ``x (B, H*W, C)``, ``hw = (H, W)`` -> ``(B, H*W, C)``. H, W need not be multiples of the
    window: the normed map is zero-padded bottom/right (as Swin's detection/segmentation code and
    HBFormer do) and the SW-MSA mask comes from the cached :func:`shifted_window_mask`.
    Subclasses (e.g. HAT's HAB, which adds a conv branch) can reuse :meth:`window_attention`.
    """

    def __init__(self, dim: int, num_heads: int, window_size: Size2 = 7, shift_size: Size2 = 0,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 input_resolution: Optional[Size2] = None, persistent_index: bool = True,
                 act_layer: Callable[..., nn.Module] = nn.GELU,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        ws, ss = to_2tuple(window_size), to_2tuple(shift_size)
        if input_resolution is not None and min(to_2tuple(input_resolution)) <= min(ws):
            ws, ss = (min(to_2tuple(input_resolution)),) * 2, (0, 0)
        if not all(0 <= s < w for s, w in zip(ss, ws)):
            raise ValueError(f"shift_size {ss} must lie in [0, window_size {ws})")
        self.window_size, self.shift_size = ws, ss
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, ws, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop,
                                    proj_drop=drop, persistent_index=persistent_index)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def window_attention(self, x: Tensor) -> Tensor:
        """(Shifted) window attention on a normed channels-last map ``(B, H, W, C)`` -> same shape."""
        B, H, W, C = x.shape
        (wh, ww), (sh, sw) = self.window_size, self.shift_size
        ph, pw = (wh - H % wh) % wh, (ww - W % ww) % ww
        if ph or pw:
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
        Hp, Wp = H + ph, W + pw
        shifted = sh > 0 or sw > 0
        mask = None
        if shifted:
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
            mask = shifted_window_mask(Hp, Wp, (wh, ww), (sh, sw), x.device)
        x = self.attn(window_partition(x, (wh, ww)), mask=mask)
        x = window_reverse(x, (wh, ww), Hp, Wp)
        if shifted:
            x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))
        return x[:, :H, :W, :] if (ph or pw) else x

    def forward(self, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        H, W = hw
        B, L, C = x.shape
        if L != H * W:
            raise ValueError(f"got {L} tokens for a {H}x{W} map")
        y = self.window_attention(self.norm1(x).view(B, H, W, C)).reshape(B, L, C)
        x = x + self.drop_path(y)
        if not self.training and fast_inference(x) and _gelu_mlp(self.mlp):
            return mlp_residual(self.mlp, self.norm2(x), x, fast=True)  # GELU / residual fused (oneDNN)
        return x + self.drop_path(self.mlp(self.norm2(x)))
