"""HAT, the Hybrid Attention Transformer for super-resolution (Chen et al., CVPR 2023).

Official code: XPixelGroup/HAT ``hat/archs/hat_arch.py`` (class ``HAT``). Parameter names are the
official ones, so official checkpoints load after dropping the two model-level index buffers
(``relative_position_index_SA`` / ``_OCA``, verified against ours). Differences in execution, not in
math (see ``vitsuite.core.layers.sr``):

* the body runs on channels-last ``(B, H, W, C)`` token maps; the CAB convolutions see the same
  memory as channels-last NCHW tensors (no permute copies);
* window attention is one cached gather + grouped SDPA calls with the relative-position bias and
  the shift mask fused into one cached additive mask per window group (no per-forward
  ``calculate_mask``);
* OCAB's overlapping key/value windows come from a zero-padded channels-last map unfolded in place
  (identical to ``nn.Unfold`` on the projected k/v, zeros outside the image), with the OCA relative
  index kept with its negative (wrapping) entries, as the official table layout requires;
* inputs whose sides are not multiples of ``window_size`` are reflect-padded and the output cropped,
  as the official test wrapper does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from vitsuite.core.layers.attention import ChannelAttention, attention
from vitsuite.core.layers.blocks import DropPath, Mlp, init_vit_weights_
from vitsuite.core.layers.fast import (
    derived,
    fast_inference,
    inplace_ok,
    keep_alive,
    linear,
    linear_add,
    mlp_residual,
    pad_heads_in,
    pad_heads_out,
    padded_head_dim,
    tensor_key,
)
from vitsuite.core.layers.sr import (
    PixelShuffleSR,
    SRWindowAttention,
    Upsample,
    drop_path_schedule,
)
from vitsuite.core.layers.windows import (
    overlapping_relative_position_index,
    relative_position_index,
    to_2tuple,
)
from vitsuite.core.registry import ModelSpec, OfficialSpec, register_model, register_official

FIELD = "restoration"


@dataclass
class HATConfig:
    """Every hyper-parameter of HAT (names as in the official constructor)."""

    upscale: int = 4
    in_chans: int = 3
    img_size: int = 64                 # only decides the official "window >= image" special case
    embed_dim: int = 180
    depths: Tuple[int, ...] = (6, 6, 6, 6, 6, 6)    # RHAG groups x HAB blocks
    num_heads: Tuple[int, ...] = (6, 6, 6, 6, 6, 6)  # per group (HABs and the OCAB)
    window_size: int = 16
    compress_ratio: int = 3            # CAB bottleneck C // compress_ratio
    squeeze_factor: int = 30           # channel attention bottleneck C // squeeze_factor
    conv_scale: float = 0.01           # weight of the CAB branch
    overlap_ratio: float = 0.5         # OCAB key window int(ws * ratio) + ws
    mlp_ratio: float = 2.0
    qkv_bias: bool = True
    qk_scale: Optional[float] = None
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    ape: bool = False                  # learned absolute position embedding (fixes the input to img_size)
    patch_norm: bool = True
    img_range: float = 1.0
    resi_connection: str = "1conv"     # '1conv' or 'identity'
    num_feat: int = 64                 # width of the reconstruction head (64 officially)
    pad_mode: str = "reflect"          # padding of inputs that are not window multiples

    def __post_init__(self):
        self.depths, self.num_heads = tuple(int(d) for d in self.depths), tuple(int(h) for h in self.num_heads)
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} differ in length")
        ws = self.window_size
        ow = int(ws * self.overlap_ratio) + ws
        if (ow - ws) % 2:
            raise ValueError(f"overlap window {ow} - window {ws} must be even (window_size={ws}, "
                             f"overlap_ratio={self.overlap_ratio}); the official OCAB fails otherwise")
        if self.embed_dim // self.compress_ratio < 1 or self.embed_dim // self.squeeze_factor < 1:
            raise ValueError("embed_dim // compress_ratio and embed_dim // squeeze_factor must be >= 1")
        for h in self.num_heads:
            if self.embed_dim % h:
                raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {h}")
        if min(to_2tuple(self.img_size)) < ws:
            raise ValueError(f"img_size {self.img_size} smaller than window_size {ws} is inconsistent in the "
                             "official HAT (the blocks shrink their window, the index buffers do not)")

    @property
    def overlap_window(self) -> int:
        return int(self.window_size * self.overlap_ratio) + self.window_size


class CAB(nn.Module):
    """Channel attention block: conv3x3 C->C/cr, GELU, conv3x3 C/cr->C, SE channel attention.

    Keys ``cab.0``, ``cab.2``, ``cab.3.attention.{1,3}`` as officially. :meth:`branch` returns the
    pre-attention features and the ``(B, C, 1, 1)`` channel weights separately, so HAB can fold its
    ``conv_scale`` into the weights and add the branch in one pass.
    """

    def __init__(self, num_feat: int, compress_ratio: int = 3, squeeze_factor: int = 30):
        super().__init__()
        self.cab = nn.Sequential(
            nn.Conv2d(num_feat, num_feat // compress_ratio, 3, 1, 1),
            nn.GELU(),
            nn.Conv2d(num_feat // compress_ratio, num_feat, 3, 1, 1),
            ChannelAttention(num_feat, squeeze_factor),
        )

    def branch(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        y = self.cab[2](self.cab[1](self.cab[0](x)))
        return y, self.cab[3].attention(y)

    def forward(self, x: Tensor) -> Tensor:
        return self.cab(x)


class HAB(nn.Module):
    """Hybrid attention block on a ``(B, H, W, C)`` map:
    ``t + W-MSA(norm1 t) + conv_scale * CAB(norm1 t)``, then ``+ MLP(norm2 .)``."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, compress_ratio: int,
                 squeeze_factor: int, conv_scale: float, mlp_ratio: float, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0):
        super().__init__()
        self.shift_size, self.conv_scale = shift_size, conv_scale
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SRWindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.conv_block = CAB(dim, compress_ratio, squeeze_factor)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        fast = fast_inference(x) and not self.training
        u = self.norm1(x)
        y, ca = self.conv_block.branch(u.permute(0, 3, 1, 2))      # channels-last NCHW view of u
        y, ca = y.permute(0, 2, 3, 1), (ca * self.conv_scale).view(B, 1, 1, C)
        if fast:  # t = x + conv_scale * CAB(u) + attn(u): the attention's proj adds the residual
            t = self.attn(u, self.shift_size, residual=torch.addcmul(x, y, ca))
            return mlp_residual(self.mlp, self.norm2(t), t, fast=True)
        t = x + self.drop_path(self.attn(u, self.shift_size))
        t = t.addcmul_(y, ca) if inplace_ok(t, y, ca) else torch.addcmul(t, y, ca)
        m = self.drop_path(self.mlp(self.norm2(t)))
        return t.add_(m) if inplace_ok(t, m) else t + m


class OCAB(nn.Module):
    """Overlapping cross-attention block: ``ws x ws`` query windows attend to ``ow x ow`` key/value
    windows centred on them (zero padded at the border, after the projection)."""

    def __init__(self, dim: int, window_size: int, overlap_ratio: float, num_heads: int, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, mlp_ratio: float = 2.0):
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.overlap_win_size = ow = int(window_size * overlap_ratio) + window_size
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((window_size + ow - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index",
                             overlapping_relative_position_index(window_size, ow), persistent=False)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self._bias_cache: Optional[Tuple[tuple, tuple, Tensor]] = None

    def train(self, mode: bool = True):
        self._bias_cache = None
        return super().train(mode)

    def attention_bias(self, dtype: torch.dtype) -> Tensor:
        """``(1, heads, ws^2, ow^2)``; negative OCA indices wrap around the table as officially."""
        table, idx = self.relative_position_bias_table, self.relative_position_index
        cacheable = not self.training and not (torch.is_grad_enabled() and table.requires_grad)
        key = tensor_key(table, idx) + (dtype,)
        if cacheable and self._bias_cache is not None and self._bias_cache[0] == key:
            return self._bias_cache[2]
        bias = table[idx.reshape(-1)].view(*idx.shape, -1).permute(2, 0, 1).unsqueeze(0).to(dtype).contiguous()
        self._bias_cache = (key, keep_alive(table, idx), bias) if cacheable else None
        return bias

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = (int(n) for n in x.shape)
        ws, ow, h = self.window_size, self.overlap_win_size, self.num_heads
        nh, nw, p = H // ws, W // ws, (ow - ws) // 2
        fast = fast_inference(x) and not self.training
        u = self.norm1(x)
        if fast:  # heads padded to multiples of 8 with zero weights (same result, faster SDPA)
            d = padded_head_dim(self.head_dim)
            qkv_w, qkv_b, proj_w = self._padded_weights(d)
            qkv = linear(u, qkv_w, qkv_b, fast=True)                           # (B, H, W, 3 h d)
        else:
            d = self.head_dim
            qkv = self.qkv(u)
        hd = h * d
        q = qkv[..., :hd].reshape(B, nh, ws, nw, ws, hd).permute(0, 1, 3, 2, 4, 5)
        q = q.reshape(B * nh * nw, ws * ws, h, d).transpose(1, 2)
        kv = qkv.new_zeros(B, H + 2 * p, W + 2 * p, 2 * hd)                   # zeros after the projection
        kv[:, p:p + H, p:p + W] = qkv[..., hd:]
        # (B, nh, nw, 2hd, ow, ow) views of the overlapping windows -> (B*nW, ow*ow, 2, h, d)
        kv = kv.unfold(1, ow, ws).unfold(2, ow, ws).permute(0, 1, 2, 4, 5, 3).reshape(B * nh * nw, ow * ow, 2, h, d)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        o = attention(q, k, v, bias=self.attention_bias(q.dtype), scale=self.scale)   # (B nW, h, ws ws, d)
        # token-major first: free when the native kernel ran (its output is (B nW, ws ws, h, d) in memory)
        o = o.transpose(1, 2).reshape(B, nh, nw, ws, ws, hd).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, hd)
        if fast:
            t = linear_add(o, x, proj_w, self.proj.bias, fast=True)
        else:
            o = self.proj(o)
            t = o.add_(x) if inplace_ok(o, x) else o + x
        return mlp_residual(self.mlp, self.norm2(t), t, fast)

    def _padded_weights(self, d: int):
        h, hd = self.num_heads, self.head_dim
        if d == hd:
            return self.qkv.weight, self.qkv.bias, self.proj.weight
        srcs = [self.qkv.weight, self.proj.weight] + ([self.qkv.bias] if self.qkv.bias is not None else [])

        def make():
            b = pad_heads_out(self.qkv.bias, 3, h, hd, d) if self.qkv.bias is not None else None
            return pad_heads_out(self.qkv.weight, 3, h, hd, d), b, pad_heads_in(self.proj.weight, h, hd, d)

        return derived(self, "padded", srcs, make)


class AttenBlocks(nn.Module):
    """The HABs of one group (alternating shift 0 / ws // 2) followed by the OCAB; key names as officially."""

    def __init__(self, cfg: HATConfig, num_heads: int, depth: int, drop_path: Sequence[float], shift: bool):
        super().__init__()
        ws = cfg.window_size
        self.blocks = nn.ModuleList(
            HAB(cfg.embed_dim, num_heads, ws, (ws // 2 if shift and j % 2 else 0), cfg.compress_ratio,
                cfg.squeeze_factor, cfg.conv_scale, cfg.mlp_ratio, cfg.qkv_bias, cfg.qk_scale, cfg.drop_rate,
                cfg.attn_drop_rate, drop_path[j])
            for j in range(depth))
        self.overlap_attn = OCAB(cfg.embed_dim, ws, cfg.overlap_ratio, num_heads, cfg.qkv_bias, cfg.qk_scale,
                                 cfg.mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.overlap_attn(x)


class RHAG(nn.Module):
    """Residual hybrid attention group: ``t + conv3x3(AttenBlocks(t))`` (``conv`` absent for 'identity')."""

    def __init__(self, cfg: HATConfig, num_heads: int, depth: int, drop_path: Sequence[float], shift: bool):
        super().__init__()
        self.residual_group = AttenBlocks(cfg, num_heads, depth, drop_path, shift)
        d = cfg.embed_dim
        self.conv = nn.Conv2d(d, d, 3, 1, 1) if cfg.resi_connection == "1conv" else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(self.residual_group(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return y.add_(x) if inplace_ok(y, x) and y.data_ptr() != x.data_ptr() else y + x


class HAT(PixelShuffleSR):
    """HAT for classical SR. ``forward(x (B, in_chans, H, W)) -> (B, in_chans, s*H, s*W)``.

    Any H, W works (non-multiples of ``window_size`` are reflect-padded, output cropped). Keys are the
    official ones minus the two index buffers.
    """

    def __init__(self, cfg: HATConfig | None = None, **kwargs: Any):
        cfg = cfg or HATConfig(**kwargs)
        super().__init__(cfg.in_chans, cfg.embed_dim, cfg.upscale, cfg.img_range, cfg.resi_connection,
                         cfg.num_feat, pad_multiple=cfg.window_size, pad_mode=cfg.pad_mode)
        self.cfg = cfg
        self._init_token_stem(cfg.patch_norm, cfg.ape, cfg.img_size, cfg.drop_rate)
        img = to_2tuple(cfg.img_size)
        # The official blocks drop the shift when the image is not larger than the window.
        shift = min(img) > cfg.window_size
        dpr = drop_path_schedule(cfg.drop_path_rate, sum(cfg.depths))
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
            s = sum(cfg.depths[:i])
            self.layers.append(RHAG(cfg, heads, depth, dpr[s:s + depth], shift))
        self.norm = nn.LayerNorm(cfg.embed_dim)
        init_vit_weights_(self)  # official init: Linear trunc-normal(0.02), LayerNorm (1, 0)


# ---------------------------------------------------------------------------------------------
# official translation

_DEFAULTS = dict(img_size=64, in_chans=3, embed_dim=96, depths=(6, 6, 6, 6), num_heads=(6, 6, 6, 6), window_size=7,
                 compress_ratio=3, squeeze_factor=30, conv_scale=0.01, overlap_ratio=0.5, mlp_ratio=4.0,
                 qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1, ape=False,
                 patch_norm=True, upscale=2, img_range=1.0, resi_connection="1conv")


def check_official_kwargs(kwargs: Mapping[str, Any], name: str) -> None:
    """Reject official constructor arguments whose behaviour is not reproduced (shared with DRCT)."""
    if kwargs.get("upsampler", "") != "pixelshuffle":
        raise ValueError(f"{name}: only upsampler='pixelshuffle' is implemented (got {kwargs.get('upsampler', '')!r}; "
                         "the official class returns its input unchanged for any other value)")
    if to_2tuple(kwargs.get("patch_size", 1)) != (1, 1):
        raise ValueError(f"{name}: patch_size must be 1")
    norm = kwargs.get("norm_layer")
    if norm is not None and norm not in ("LayerNorm", nn.LayerNorm):
        raise ValueError(f"{name}: only norm_layer=LayerNorm is supported")


def official_config(kwargs: Mapping[str, Any], defaults: Mapping[str, Any], config_cls: type, name: str):
    """Official constructor ``kwargs`` -> ``config_cls`` (the official class ``defaults`` fill gaps, a
    square ``img_size`` pair becomes an int); shared by the SwinIR-family converters (HAT, DRCT)."""
    check_official_kwargs(kwargs, name)
    cfg = {k: kwargs.get(k, v) for k, v in defaults.items()}
    img = to_2tuple(cfg["img_size"])
    cfg["img_size"] = img[0] if img[0] == img[1] else img
    return config_cls(**cfg)


def config_from_official(kwargs: Mapping[str, Any]) -> HATConfig:
    """The official ``HAT(**kwargs)`` arguments -> :class:`HATConfig` (class defaults fill gaps)."""
    return official_config(kwargs, _DEFAULTS, HATConfig, "HAT")


def convert_official(sd: Mapping[str, Tensor], kwargs: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
    """Official keys are kept; the model-level index buffers are checked against ours and dropped."""
    out = dict(sd)
    sa, oca = out.pop("relative_position_index_SA", None), out.pop("relative_position_index_OCA", None)
    table = next((v for k, v in sd.items() if k.endswith("blocks.0.attn.relative_position_bias_table")), None)
    if table is not None and sa is not None:
        ws = (math.isqrt(table.shape[0]) + 1) // 2
        if sa.shape != (ws * ws, ws * ws) or not torch.equal(sa.long(), relative_position_index(ws)):
            raise ValueError("relative_position_index_SA differs from the standard Swin index for window "
                             f"{ws}; not an official HAT checkpoint")
        otable = next((v for k, v in sd.items() if k.endswith("overlap_attn.relative_position_bias_table")), None)
        if oca is not None and otable is not None:
            ow = math.isqrt(otable.shape[0]) - ws + 1
            want = overlapping_relative_position_index(ws, ow)
            if oca.shape != want.shape or not torch.equal(oca.long(), want):
                raise ValueError("relative_position_index_OCA differs from HAT's OCA index (negative entries "
                                 "included); not an official HAT checkpoint")
    return out


def _ratio_for(n: int, base: int) -> float:
    """The float r with ``int(base * r) == n`` closest to ``n / base`` (exact for the usual ratios)."""
    r = n / base
    while int(base * r) < n:
        r = math.nextafter(r, math.inf)
    return r


def _divisor_for(total: int, hidden: int) -> int:
    """An ``f`` with ``total // f == hidden``: ``total / hidden`` when exact, else the smallest."""
    if hidden and total % hidden == 0:
        return total // hidden
    for f in range(1, total + 1):
        if total // f == hidden:
            return f
    raise ValueError(f"no factor maps {total} channels to {hidden}")


def detect_official(sd: Mapping[str, Tensor]) -> dict[str, Any] | None:
    """Infer the official constructor arguments from a HAT checkpoint's tensor shapes.

    Everything is inferable except ``img_range`` (1.0 in every release) and ``img_size`` (only its
    special case "image not larger than the window" matters; 64 as in every option file).
    Heads come from the last dim of each group's bias tables.
    """
    required = ("conv_first.weight", "conv_last.weight",
                "layers.0.residual_group.overlap_attn.relative_position_bias_table")
    if any(k not in sd for k in required):
        return None
    embed_dim, in_chans = sd["conv_first.weight"].shape[:2]
    n_groups = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
    depths, heads = [], []
    for i in range(n_groups):
        p = f"layers.{i}.residual_group."
        depths.append(len({k.split(".")[4] for k in sd if k.startswith(p + "blocks.")}))
        heads.append(int(sd[p + "overlap_attn.relative_position_bias_table"].shape[1]))
    p = "layers.0.residual_group.blocks.0."
    ws = (math.isqrt(sd[p + "attn.relative_position_bias_table"].shape[0]) + 1) // 2
    ow = math.isqrt(sd["layers.0.residual_group.overlap_attn.relative_position_bias_table"].shape[0]) - ws + 1
    upscale = Upsample.scale_from_state_dict(sd)
    if upscale is None:
        return None
    return {
        "upscale": upscale, "in_chans": int(in_chans), "img_size": 64, "window_size": ws,
        "compress_ratio": _divisor_for(int(embed_dim), sd[p + "conv_block.cab.0.weight"].shape[0]),
        "squeeze_factor": _divisor_for(int(embed_dim), sd[p + "conv_block.cab.3.attention.1.weight"].shape[0]),
        "conv_scale": 0.01, "overlap_ratio": _ratio_for(ow - ws, ws), "img_range": 1.0,
        "depths": depths, "embed_dim": int(embed_dim), "num_heads": heads,
        "mlp_ratio": _ratio_for(sd[p + "mlp.fc1.weight"].shape[0], int(embed_dim)),
        "qkv_bias": p + "attn.qkv.bias" in sd, "ape": "absolute_pos_embed" in sd,
        "patch_norm": "patch_embed.norm.weight" in sd, "upsampler": "pixelshuffle",
        "resi_connection": "1conv" if "conv_after_body.weight" in sd else "identity",
    }


register_official(OfficialSpec(
    model_id="hat", field=FIELD,
    build=lambda kw: HAT(config_from_official(kw)),
    convert=convert_official, detect=detect_official, uninferable=("img_range", "conv_scale", "img_size"),
    description="XPixelGroup/HAT hat/archs/hat_arch.py::HAT",
))


def _register(name: str, description: str, **cfg: Any) -> None:
    register_model(ModelSpec(name, FIELD, "hat", HAT, cfg, description))


# Option files (window 16, mlp_ratio 2, overlap 0.5, conv_scale 0.01); upscale 2/3/4, default 4.
_register("hat_s", "HAT-S (embed 144, 6x6 HABs, compress 24 / squeeze 24), upscale 2/3/4",
          embed_dim=144, depths=(6,) * 6, num_heads=(6,) * 6, compress_ratio=24, squeeze_factor=24)
_register("hat", "HAT (embed 180, 6x6 HABs), upscale 2/3/4", embed_dim=180, depths=(6,) * 6, num_heads=(6,) * 6)
_register("hat_l", "HAT-L (embed 180, 12x6 HABs), upscale 2/3/4", embed_dim=180, depths=(6,) * 12,
          num_heads=(6,) * 12)
