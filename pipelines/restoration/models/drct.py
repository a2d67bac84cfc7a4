"""DRCT, the Dense-residual-connected Transformer for super-resolution (Hsu et al., CVPRW 2024).

Official code: ming053l/DRCT ``drct/archs/DRCT_arch.py`` (class ``DRCT``). Parameter names are the
official ones; official checkpoints carry per-block ``attn.relative_position_index`` buffers and the
shifted blocks' ``attn_mask`` buffers sized for the training ``img_size``, which the converter checks
(index) and drops (masks): this model computes its shift masks for any input size (see
``vitsuite.core.layers.sr.SRWindowAttention``: the bias and the shift mask are fused into one cached
additive mask per window group, never rebuilt per forward).

Other differences in execution, not in math: the body runs on channels-last ``(B, H, W, C)`` token
maps; the 1x1 ``adjust`` convolutions run as token-wise matrix products on that layout (LeakyReLU
and the final ``0.2 * x5 + t`` fused into them on the inference fast path); inputs that are not
window multiples are reflect-padded (as the official wrapper).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from vitsuite.core.layers.blocks import DropPath, Mlp, init_vit_weights_
from vitsuite.core.layers.fast import (
    derived,
    fast_inference,
    inplace_ok,
    linear,
    linear_add,
    mlp_residual,
)
from vitsuite.core.layers.sr import (
    PixelShuffleSR,
    SRWindowAttention,
    Upsample,
    drop_path_schedule,
)
from vitsuite.core.layers.windows import relative_position_index, to_2tuple
from vitsuite.core.registry import ModelSpec, OfficialSpec, register_model, register_official

from .hat import _ratio_for, official_config

FIELD = "restoration"


@dataclass
class DRCTConfig:
    """Every hyper-parameter of DRCT (names as in the official constructor).

    ``depths``: only its *length* (the number of dense groups) shapes the network -- each group has
    five Swin blocks -- its values only feed the drop-path schedule, exactly as officially.
    ``num_heads[i]`` is the base head count h of group i: block k uses ``h - (C_k mod h)`` heads on
    its width ``C_k = embed_dim + (k-1) * gc``.
    """

    upscale: int = 4
    in_chans: int = 3
    img_size: int = 64                 # only decides the official "window >= image" special case
    embed_dim: int = 180
    depths: Tuple[int, ...] = (6, 6, 6, 6, 6, 6)
    num_heads: Tuple[int, ...] = (6, 6, 6, 6, 6, 6)
    window_size: int = 16
    mlp_ratio: float = 2.0             # blocks 1-3 of a group; blocks 4-5 use 1
    gc: int = 32                       # growth channels of the dense connections
    qkv_bias: bool = True
    qk_scale: Optional[float] = None
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    ape: bool = False
    patch_norm: bool = True
    img_range: float = 1.0
    resi_connection: str = "1conv"
    num_feat: int = 64
    pad_mode: str = "reflect"

    def __post_init__(self):
        self.depths, self.num_heads = tuple(int(d) for d in self.depths), tuple(int(h) for h in self.num_heads)
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} differ in length")
        for h in self.num_heads:
            for k, (width, heads) in enumerate(block_widths_heads(self.embed_dim, self.gc, h), 1):
                if width % heads:
                    raise ValueError(f"DRCT block {k} of a group with num_heads={h}: width {width} is not divisible "
                                     f"by its {heads} heads (embed_dim={self.embed_dim}, gc={self.gc}); the "
                                     "official model fails in its forward for this configuration")


def block_widths_heads(embed_dim: int, gc: int, num_heads: int) -> list[tuple[int, int]]:
    """``[(C_k, heads_k)]`` for the five blocks of a group (official rule ``h - C_k % h`` for k >= 2)."""
    out = [(embed_dim, num_heads)]
    for k in range(1, 5):
        c = embed_dim + k * gc
        out.append((c, num_heads - c % num_heads))
    return out


class SwinBlock(nn.Module):
    """SwinIR block on a ``(B, H, W, C)`` map: ``t + (S)W-MSA(norm1 t)``, then ``+ MLP(norm2 .)``.

    Keys ``norm1``, ``attn.{qkv,proj,relative_position_bias_table}``, ``norm2``, ``mlp.fc{1,2}``.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, mlp_ratio: float,
                 qkv_bias: bool = True, qk_scale: Optional[float] = None, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SRWindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: Tensor) -> Tensor:
        if fast_inference(x) and not self.training:  # residual adds fused into proj / fc2
            t = self.attn(self.norm1(x), self.shift_size, residual=x)
            return mlp_residual(self.mlp, self.norm2(t), t, fast=True)
        t = x + self.drop_path(self.attn(self.norm1(x), self.shift_size))
        m = self.drop_path(self.mlp(self.norm2(t)))
        return t.add_(m) if inplace_ok(t, m) else t + m


class RDG(nn.Module):
    """Residual dense group: five Swin blocks on the growing concatenation ``[t, x1, .., x_{k-1}]``,
    1x1 ``adjust`` convs (LeakyReLU 0.2 on the first four), output ``0.2 * x5 + t``."""

    def __init__(self, cfg: DRCTConfig, num_heads: int, window_size: int, shift: int, drop_path: float):
        super().__init__()
        C, gc = cfg.embed_dim, cfg.gc
        self.dim, self.gc = C, gc
        for k, (width, heads) in enumerate(block_widths_heads(C, gc, num_heads), 1):
            blk = SwinBlock(width, heads, window_size, shift if k in (2, 4) else 0,
                            cfg.mlp_ratio if k <= 3 else 1.0, cfg.qkv_bias, cfg.qk_scale, cfg.drop_rate,
                            cfg.attn_drop_rate, drop_path)
            self.add_module(f"swin{k}", blk)
            self.add_module(f"adjust{k}", nn.Conv2d(width, gc if k < 5 else C, 1))

    def _adjust(self, k: int, t: Tensor, fast: bool = False) -> Tensor:
        conv = getattr(self, f"adjust{k}")           # a 1x1 conv on a channels-last map is a token matmul
        if k < 5:
            return linear(t, conv.weight.flatten(1), conv.bias, "leaky_relu", 0.2, fast=fast)
        return linear(t, conv.weight.flatten(1), conv.bias, fast=fast)

    def forward(self, x: Tensor) -> Tensor:
        # Each block reads the concatenation once (LayerNorm and the fused residual add want a
        # contiguous input anyway, so a preallocated strided buffer would not save the copy).
        fast = fast_inference(x) and not self.training
        feats = [x]
        for k in range(1, 5):
            feats.append(self._adjust(k, getattr(self, f"swin{k}")(torch.cat(feats, -1) if k > 1 else x), fast))
        s5 = self.swin5(torch.cat(feats, -1))
        if fast:
            conv = self.adjust5
            w5, b5 = derived(self, "adjust5x0.2", [conv.weight, conv.bias],
                             lambda: (conv.weight.flatten(1) * 0.2, conv.bias * 0.2))
            return linear_add(s5, x, w5, b5, fast=True)   # x + 0.2 * adjust5(swin5(.)) in one call
        return torch.add(x, self._adjust(5, s5), alpha=0.2)


class DRCT(PixelShuffleSR):
    """DRCT for classical SR. ``forward(x (B, in_chans, H, W)) -> (B, in_chans, s*H, s*W)``.

    Any H, W works (non-multiples of ``window_size`` are reflect-padded, output cropped).
    """

    def __init__(self, cfg: DRCTConfig | None = None, **kwargs: Any):
        cfg = cfg or DRCTConfig(**kwargs)
        ws = cfg.window_size
        img = to_2tuple(cfg.img_size)
        shift = ws // 2
        if min(img) <= ws:  # official rule: the blocks shrink the window to the image and stop shifting
            ws, shift = min(img), 0
        super().__init__(cfg.in_chans, cfg.embed_dim, cfg.upscale, cfg.img_range, cfg.resi_connection,
                         cfg.num_feat, pad_multiple=ws, pad_mode=cfg.pad_mode)
        self.cfg = cfg
        self._init_token_stem(cfg.patch_norm, cfg.ape, cfg.img_size, cfg.drop_rate)
        dpr = drop_path_schedule(cfg.drop_path_rate, sum(cfg.depths))
        self.layers = nn.ModuleList(
            RDG(cfg, heads, ws, shift, dpr[sum(cfg.depths[:i])] if sum(cfg.depths) else 0.0)
            for i, heads in enumerate(cfg.num_heads))
        self.norm = nn.LayerNorm(cfg.embed_dim)
        init_vit_weights_(self)  # official init: Linear trunc-normal(0.02), LayerNorm (1, 0)


# ---------------------------------------------------------------------------------------------
# official translation

_DEFAULTS = dict(img_size=64, in_chans=3, embed_dim=96, depths=(6, 6, 6, 6), num_heads=(6, 6, 6, 6), window_size=7,
                 mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1,
                 ape=False, patch_norm=True, upscale=2, img_range=1.0, resi_connection="1conv", gc=32)
# Accepted and ignored by the official class (HAT leftovers in every option file).
IGNORED_OFFICIAL = ("compress_ratio", "squeeze_factor", "conv_scale", "overlap_ratio")


def config_from_official(kwargs: Mapping[str, Any]) -> DRCTConfig:
    """The official ``DRCT(**kwargs)`` arguments -> :class:`DRCTConfig` (class defaults fill gaps)."""
    return official_config(kwargs, _DEFAULTS, DRCTConfig, "DRCT")


def convert_official(sd: Mapping[str, Tensor], kwargs: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
    """Official keys are kept; per-block index buffers are checked and dropped, stored masks dropped."""
    out = {}
    for k, v in sd.items():
        if k.endswith(".attn_mask"):
            continue  # sized for the training img_size; recomputed (and cached) for any input size
        if k.endswith(".attn.relative_position_index"):
            ws = math.isqrt(v.shape[0])
            if v.shape != (ws * ws, ws * ws) or not torch.equal(v.long(), relative_position_index(ws)):
                raise ValueError(f"{k} differs from the standard Swin index; not an official DRCT checkpoint")
            continue
        out[k] = v
    return out


def detect_official(sd: Mapping[str, Tensor]) -> dict[str, Any] | None:
    """Infer the official constructor arguments from a DRCT checkpoint's tensor shapes.

    Not inferable: ``img_range`` (1.0 in every release), ``img_size`` (64 in every option file; only
    its "image not larger than the window" case matters) and the ``depths`` values (training only;
    6 per group as in the option files). Base heads come from block 1's bias table of each group.
    """
    required = ("conv_first.weight", "conv_last.weight", "layers.0.swin1.attn.qkv.weight", "layers.0.adjust5.weight")
    if any(k not in sd for k in required):
        return None
    embed_dim, in_chans = (int(n) for n in sd["conv_first.weight"].shape[:2])
    n_groups = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
    heads = [int(sd[f"layers.{i}.swin1.attn.relative_position_bias_table"].shape[1]) for i in range(n_groups)]
    ws = (math.isqrt(sd["layers.0.swin1.attn.relative_position_bias_table"].shape[0]) + 1) // 2
    upscale = Upsample.scale_from_state_dict(sd)
    if upscale is None:
        return None
    return {
        "upscale": upscale, "in_chans": in_chans, "img_size": 64, "window_size": ws, "img_range": 1.0,
        "depths": [6] * n_groups, "embed_dim": embed_dim, "num_heads": heads,
        "mlp_ratio": _ratio_for(sd["layers.0.swin1.mlp.fc1.weight"].shape[0], embed_dim),
        "gc": int(sd["layers.0.adjust1.weight"].shape[0]),
        "qkv_bias": "layers.0.swin1.attn.qkv.bias" in sd, "ape": "absolute_pos_embed" in sd,
        "patch_norm": "patch_embed.norm.weight" in sd, "upsampler": "pixelshuffle",
        "resi_connection": "1conv" if "conv_after_body.weight" in sd else "identity",
    }


register_official(OfficialSpec(
    model_id="drct", field=FIELD,
    build=lambda kw: DRCT(config_from_official(kw)),
    convert=convert_official, detect=detect_official, uninferable=("img_range", "img_size"),
    description="ming053l/DRCT drct/archs/DRCT_arch.py::DRCT",
))


def _register(name: str, description: str, **cfg: Any) -> None:
    register_model(ModelSpec(name, FIELD, "drct", DRCT, cfg, description))


# Option files (embed 180, window 16, mlp_ratio 2, gc 32); upscale 2/3/4, default 4.
_register("drct", "DRCT (embed 180, 6 dense groups, gc 32), upscale 2/3/4", embed_dim=180, depths=(6,) * 6,
          num_heads=(6,) * 6)
_register("drct_l", "DRCT-L (embed 180, 12 dense groups, gc 32), upscale 2/3/4", embed_dim=180, depths=(6,) * 12,
          num_heads=(6,) * 12)
