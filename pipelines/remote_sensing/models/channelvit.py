"""ChannelViT (Bao et al., ICLR 2024): one token per (channel, patch), channel embeddings, any channel subset.

Official code: insitro/ChannelViT, ``channelvit/backbone/hcs_channel_vit.py`` (supervised "with_hcs"
releases) and ``channelvit/backbone/channel_vit.py`` (the DINO release). Both are the same network; the
released state dicts differ only in the channel-embedding layout, which :func:`convert_official` maps
onto the one of :class:`~vitsuite.core.layers.ChannelPatchEmbed` (``(1, D, C, 1, 1)``).

Authors' behaviour kept (see ``shared/reference/channelvit/ARCH.md``):

* the position table is *always* resampled with DINO's scale-factor bicubic interpolation, even when
  the grid already matches (then it is not an identity). The released weights were trained that way,
  so it is the default; ``official_pos_interp=False`` switches to the exact size-based resize;
* the DINO class uses only the first sample's channel ids for the whole batch
  (``batch_channels_from_first``, set by the official loader for that class only).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitsuite.core.layers import init_vit_weights_, ChannelPatchEmbed, ViTBlock, attention, resize_pos_embed, trunc_normal_
from vitsuite.core.checkpoint import builds_layout
from vitsuite.core.registry import ModelSpec, OfficialSpec, register_model, register_official

FIELD = "remote_sensing"
MODEL_ID = "channelvit"


@dataclass
class ChannelViTConfig:
    """Every hyper-parameter of ChannelViT (official constructor names; ``img_size`` is an int here)."""

    img_size: int = 224            # the position table covers (img_size // patch_size)^2 patches
    patch_size: int = 16
    in_chans: int = 3              # number of channel embeddings = channels the model knows
    num_classes: int = 0           # > 0 adds ``head`` (kept for checkpoints; forward returns features)
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_scale: float | None = None
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-6
    hcs: bool = True                        # Hierarchical Channel Sampling in train mode (enable_sample)
    official_pos_interp: bool = True        # DINO scale-factor resampling of the position table (see above)
    batch_channels_from_first: bool = False  # DINO-class quirk: channels[0] is used for every sample


def vit_block_cls_only(blk: ViTBlock, x: Tensor) -> Tensor:
    """``blk(x)[:, :1]`` at a fraction of the cost: keys/values for all tokens, the rest for token 0 only.

    For a last block whose output is read only at the class token. ``x (B, N, C)`` -> ``(B, 1, C)``.
    """
    attn = blk.attn
    B, N, C = x.shape
    h = blk.norm1(x)
    w, b = attn.qkv.weight, attn.qkv.bias
    q = F.linear(h[:, :1], w[:C], None if b is None else b[:C]).view(B, 1, attn.num_heads, attn.head_dim)
    k, v = F.linear(h, w[C:], None if b is None else b[C:]).view(B, N, 2, attn.num_heads, attn.head_dim).permute(
        2, 0, 3, 1, 4).unbind(0)
    o = attention(q.transpose(1, 2), k, v, scale=attn.scale, dropout_p=attn.attn_drop if blk.training else 0.0)
    o = attn.proj_drop(attn.proj(o.transpose(1, 2).reshape(B, 1, C)))
    x0 = x[:, :1] + blk.drop_path(blk.ls1(o))
    return x0 + blk.drop_path(blk.ls2(blk.mlp(blk.norm2(x0))))


@functools.lru_cache(maxsize=64)
def bicubic_matrix(n_out: int, n_in: int, factor: float) -> Tensor:
    """``(n_out, n_in)`` float64 weights of PyTorch's bicubic resampling along one axis.

    As ``F.interpolate(mode="bicubic", align_corners=False, scale_factor=factor)``: output ``j`` samples source
    coordinate ``(j + 0.5) / factor - 0.5`` with the cubic-convolution kernel (a = -0.75), border indices
    clamped. A matrix (instead of ``F.interpolate``) keeps the result exact in ONNX exports too.
    """
    A = -0.75
    src = (torch.arange(n_out, dtype=torch.float64) + 0.5) / factor - 0.5
    i0 = src.floor()
    t = src - i0
    near = lambda x: ((A + 2) * x - (A + 3)) * x * x + 1  # noqa: E731  |x| <= 1
    far = lambda x: ((A * x - 5 * A) * x + 8 * A) * x - 4 * A  # noqa: E731  1 < |x| < 2
    weights = torch.stack((far(t + 1), near(t), near(1 - t), far(2 - t)), dim=1)  # taps i0-1 .. i0+2
    cols = (i0.long().unsqueeze(1) + torch.arange(-1, 3)).clamp(0, n_in - 1)
    return torch.zeros(n_out, n_in, dtype=torch.float64).scatter_add_(1, cols, weights)


def dino_resample_pos(patch_pos: Tensor, h: int, w: int) -> Tensor:
    """DINO's ``interpolate_pos_encoding`` resampling: ``(1, s*s, D)`` table -> ``(1, h*w, D)``.

    Bicubic with the explicit scale factor ``(h + 0.1) / s`` (and ``(w + 0.1) / s``): the sampling grid then
    moves even when ``h == s``, so the table is never left unchanged (the official quirk).
    """
    D, s = patch_pos.shape[-1], math.isqrt(patch_pos.shape[1])
    h, w = int(h), int(w)  # plain numbers (also when traced for export): the weights are constants
    mh = bicubic_matrix(h, s, (h + 0.1) / s).to(patch_pos)
    mw = bicubic_matrix(w, s, (w + 0.1) / s).to(patch_pos)
    return torch.einsum("ya,xb,abd->yxd", mh, mw, patch_pos.reshape(s, s, D)).reshape(1, h * w, D)


class ChannelViT(nn.Module):
    """Channel Vision Transformer backbone.

    ``forward(x (B, Cin, H, W), channels) -> (B, D)`` class-token features after the final norm.
    ``channels`` holds the ids (``0..in_chans-1``) of the ``Cin`` channels present in ``x``, in ``x``'s
    order: ``(Cin,)`` for the batch or ``(B, Cin)`` per sample; ``None`` means ``arange(Cin)``. Any subset
    of the known channels works at inference: the tokens of absent channels are simply not there.

    Hierarchical Channel Sampling (``hcs=True``, training mode only): per batch, draw ``k ~ U{1..Cin}``
    and keep a uniformly random ``k``-subset of the given channels (see :meth:`sample_channels`); this is
    the paper's training recipe for robustness to missing channels. Evaluation always uses every given
    channel. The optional ``head`` (``num_classes > 0``) is never applied by ``forward``, as officially:
    call ``model.head(features)`` for logits.
    """

    def __init__(self, cfg: ChannelViTConfig | None = None, **kwargs: Any):
        super().__init__()
        cfg = cfg or ChannelViTConfig(**kwargs)
        self.cfg = cfg
        D, grid = cfg.embed_dim, cfg.img_size // cfg.patch_size
        self.patch_embed = ChannelPatchEmbed(cfg.in_chans, D, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, D))  # one table shared by all channels
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        dpr = torch.linspace(0, cfg.drop_path_rate, cfg.depth, device="cpu").tolist()  # cpu: also under meta
        norm = partial(nn.LayerNorm, eps=cfg.norm_eps)
        self.blocks = nn.ModuleList(
            ViTBlock(D, cfg.num_heads, cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, qk_scale=cfg.qk_scale,
                     drop=cfg.drop_rate, attn_drop=cfg.attn_drop_rate, drop_path=dpr[i], norm_layer=norm)
            for i in range(cfg.depth))
        self.norm = norm(D)
        self.head = nn.Linear(D, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """Official init: trunc-normal(0.02) tables/tokens/Linear weights, zero biases, LayerNorm (1, 0)."""
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.patch_embed.channel_embed, std=0.02)
        init_vit_weights_(self)

    def sample_channels(self, x: Tensor, channels: Tensor) -> tuple[Tensor, Tensor]:
        """Hierarchical Channel Sampling: a random ``k``-subset (``k ~ U{1..Cin}``) of ``x``'s channels.

        ``x (B, Cin, H, W)``, ``channels (Cin,) | (B, Cin)`` -> ``(B, k, H, W)``, ``(k,) | (B, k)``; one
        subset for the whole batch (kept in the given order), drawn from torch's RNG.
        """
        cin = x.shape[1]
        k = int(torch.randint(1, cin + 1, ()))
        keep = torch.randperm(cin)[:k].sort().values.to(x.device)
        return x[:, keep], channels[..., keep]

    def position_embedding(self, cin: int, h: int, w: int, H: int, W: int) -> Tensor:
        """Patch-position rows for a ``Cin x h x w`` token grid of an ``H x W`` image.

        Returns ``(1, 1, h*w, D)`` (broadcast over channels) or, in the official shortcut,
        ``(1, Cin, h*w, D)``.
        """
        table = self.pos_embed[:, 1:]
        n = table.shape[1]
        if self.cfg.official_pos_interp:
            if cin * h * w == n and H == W:
                # Official shortcut (a bug for cin > 1): the table is added row for row, unresampled.
                return table.view(1, cin, h * w, -1)
            return dino_resample_pos(table, h, w).unsqueeze(1)
        s = math.isqrt(n)
        if (h, w) != (s, s):
            table = resize_pos_embed(table, (h, w), (s, s), num_prefix_tokens=0)
        return table.unsqueeze(1)

    def forward_tokens(self, x: Tensor, channels: Tensor | None = None) -> Tensor:
        """Embedded tokens before the blocks: ``(B, 1 + Cin'*h*w, D)`` (``Cin'`` after sampling)."""
        B, cin, H, W = x.shape
        if channels is None:
            channels = torch.arange(cin, device=x.device)
        elif channels.dim() == 2 and self.cfg.batch_channels_from_first:
            channels = channels[0]
        if channels.shape[-1] != cin:
            raise ValueError(f"x has {cin} channels but {channels.shape[-1]} channel ids were given")
        if self.training and self.cfg.hcs:
            x, channels = self.sample_channels(x, channels)
            cin = x.shape[1]
        tokens, (h, w) = self.patch_embed(x, channels, return_hw=True)  # (B, Cin*h*w, D), channel-major
        D = tokens.shape[-1]
        tokens = (tokens.view(B, cin, h * w, D) + self.position_embedding(cin, h, w, H, W)).view(B, -1, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)
        return self.pos_drop(torch.cat((cls, tokens), dim=1))

    def forward(self, x: Tensor, channels: Tensor | None = None) -> Tensor:
        """``x (B, Cin, H, W)``, ``channels (Cin,) | (B, Cin) | None`` -> class-token features ``(B, D)``."""
        x = self.forward_tokens(x, channels)
        for blk in self.blocks[:-1]:
            x = blk(x)
        if len(self.blocks):
            x = vit_block_cls_only(self.blocks[-1], x)  # only the class token is read
        return self.norm(x[:, 0])


# ---------------------------------------------------------------------------------------------
# official translation

def official_norm_eps(kwargs: Mapping[str, Any], default: float = 1e-5) -> float:
    """``norm_layer`` as the fixtures encode it (``{"type": "LayerNorm", "eps": e}``); class default 1e-5."""
    norm = kwargs.get("norm_layer")
    if norm is None:
        return default
    if not isinstance(norm, Mapping) or norm.get("type", "LayerNorm") != "LayerNorm":
        raise ValueError(f"unsupported norm_layer {norm!r} (only LayerNorm)")
    return float(norm.get("eps", default))


def config_from_official(kwargs: Mapping[str, Any]) -> ChannelViTConfig:
    """Official ``ChannelVisionTransformer`` kwargs -> :class:`ChannelViTConfig`.

    ``enable_sample`` present means the hcs class (per-sample channel ids); absent means the DINO class
    (first sample's ids for the batch, no channel sampling). Unspecified arguments take the class defaults.
    """
    img = kwargs.get("img_size", [224])
    hcs_class = "enable_sample" in kwargs
    return ChannelViTConfig(
        img_size=int(img[0] if isinstance(img, (list, tuple)) else img),
        patch_size=int(kwargs.get("patch_size", 16)), in_chans=int(kwargs.get("in_chans", 3)),
        num_classes=int(kwargs.get("num_classes", 0)), embed_dim=int(kwargs.get("embed_dim", 768)),
        depth=int(kwargs.get("depth", 12)), num_heads=int(kwargs.get("num_heads", 12)),
        mlp_ratio=float(kwargs.get("mlp_ratio", 4.0)), qkv_bias=bool(kwargs.get("qkv_bias", False)),
        qk_scale=kwargs.get("qk_scale"), drop_rate=float(kwargs.get("drop_rate", 0.0)),
        attn_drop_rate=float(kwargs.get("attn_drop_rate", 0.0)),
        drop_path_rate=float(kwargs.get("drop_path_rate", 0.0)), norm_eps=official_norm_eps(kwargs),
        hcs=bool(kwargs.get("enable_sample", True)) and hcs_class,
        official_pos_interp=True, batch_channels_from_first=not hcs_class,
    )


def convert_official(sd: Mapping[str, Tensor], kwargs: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
    """hcs layout ``patch_embed.channel_embed.weight (C, D)`` -> ``patch_embed.channel_embed (1, D, C, 1, 1)``."""
    out = dict(sd)
    emb = out.pop("patch_embed.channel_embed.weight", None)
    if emb is not None:
        out["patch_embed.channel_embed"] = emb.t().reshape(1, emb.shape[1], emb.shape[0], 1, 1)
    return out


def detect_official(sd: Mapping[str, Tensor]) -> dict[str, Any] | None:
    """Infer ``ChannelVisionTransformer`` kwargs from a released backbone state dict; ``None`` otherwise.

    Read from shapes: embed_dim, depth, patch_size, in_chans, mlp_ratio, qkv_bias, num_classes (``head``),
    ``img_size = [grid * patch]`` from the position table, and the class (the ``(C, D)`` embedding
    weight is the hcs class -> ``enable_sample=True``; the ``(1, D, C, 1, 1)`` parameter the DINO class).
    Not inferable: ``num_heads`` (default ``embed_dim // 64``, which every official factory uses);
    LayerNorm eps is the factories' 1e-6. The Conv3d patch weight ``(D, 1, 1, p, p)`` and the exact key
    set (checked against a meta-device build) tell ChannelViT apart from every other ViT layout.
    """
    proj = sd.get("patch_embed.proj.weight")
    pos = sd.get("pos_embed")
    if proj is None or pos is None or proj.ndim != 5 or tuple(proj.shape[1:3]) != (1, 1) or pos.ndim != 3:
        return None
    if "patch_embed.channel_embed.weight" in sd:
        in_chans, hcs = int(sd["patch_embed.channel_embed.weight"].shape[0]), True
    elif "patch_embed.channel_embed" in sd and sd["patch_embed.channel_embed"].ndim == 5:
        in_chans, hcs = int(sd["patch_embed.channel_embed"].shape[2]), False
    else:
        return None
    D, patch = int(proj.shape[0]), int(proj.shape[-1])
    grid = math.isqrt(int(pos.shape[1]) - 1)
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    kwargs: dict[str, Any] = {
        "img_size": [grid * patch], "patch_size": patch, "in_chans": in_chans,
        "num_classes": int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0,
        "embed_dim": D, "depth": len({k.split(".")[1] for k in sd if k.startswith("blocks.")}),
        "num_heads": max(1, D // 64), "mlp_ratio": (fc1.shape[0] / D) if fc1 is not None else 4.0,
        "qkv_bias": "blocks.0.attn.qkv.bias" in sd, "norm_layer": {"type": "LayerNorm", "eps": 1e-6},
    }
    if hcs:
        kwargs["enable_sample"] = True
    if not builds_layout(lambda: ChannelViT(config_from_official(kwargs)), convert_official(sd)):
        return None
    return kwargs


register_official(OfficialSpec(
    model_id=MODEL_ID, field=FIELD,
    build=lambda kw: ChannelViT(config_from_official(kw)),
    convert=convert_official, detect=detect_official, uninferable=("num_heads",),
    description="insitro/ChannelViT channelvit/backbone/{hcs_channel_vit,channel_vit}.py::ChannelVisionTransformer",
))


def _register(name: str, description: str, **cfg: Any) -> None:
    register_model(ModelSpec(name, FIELD, "channelvit", ChannelViT, cfg, description))


# The torch.hub releases: ChannelViT-S (384 wide, 12 blocks, 6 heads), img_size left at 224.
_S = dict(embed_dim=384, depth=12, num_heads=6)
_register("channelvit_s16", "ChannelViT-S/16, ImageNet RGB (hub: imagenet_channelvit_small_p16_*)",
          patch_size=16, in_chans=3, **_S)
_register("channelvit_s8_jumpcp", "ChannelViT-S/8, JUMP-CP Cell Painting, 5 channels", patch_size=8, in_chans=5, **_S)
_register("channelvit_s8_jumpcp_bf", "ChannelViT-S/8, JUMP-CP Cell Painting + brightfield, 8 channels",
          patch_size=8, in_chans=8, **_S)
_register("channelvit_s8_so2sat", "ChannelViT-S/8, So2Sat Sentinel-1 + Sentinel-2, 18 channels",
          patch_size=8, in_chans=18, **_S)
_register("channelvit_s8_camelyon", "ChannelViT-S/8, Camelyon17 RGB, 3 channels", patch_size=8, in_chans=3, **_S)
