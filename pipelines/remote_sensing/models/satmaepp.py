"""SatMAE++ (Noman et al., CVPR 2024) fine-tuning classifiers: grouped-band ViT and plain (RGB) ViT.

Official code: techmn/satmae_pp, ``models_vit_group_channels.py`` (``GroupChannelsVisionTransformer``,
model id ``satmaepp_vit``) and ``models_vit.py`` (``VisionTransformer``, ``satmaepp_vit_rgb``), both
subclasses of the timm 0.3.2 ViT whose ``forward`` is ``head(forward_features(x))``. The official key
names are kept, so released checkpoints load unchanged. The pretraining MAE is in
:mod:`.satmaepp_mae`.

Grouped-band tokens (``channel_groups`` set): every band group has its own conv patch embedding; token
``(g, l)`` gets the *concatenation* ``[pos_embed[1 + l] (D - Dc), channel_embed[g] (Dc)]`` and the
class token ``[pos_embed[0], channel_cls_embed]``; tokens are ordered group-major.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from vitsuite.core.layers import (
    init_vit_weights_,
    GroupChannelPatchEmbed,
    PatchEmbed,
    ViTBlock,
    sincos_pos_embed_1d,
    sincos_pos_embed_2d,
    trunc_normal_,
)
from vitsuite.core.checkpoint import builds_layout
from vitsuite.core.registry import ModelSpec, OfficialSpec, register_model, register_official

from .channelvit import official_norm_eps, vit_block_cls_only

FIELD = "remote_sensing"

#: fMoW-Sentinel band groups after dropping bands 0, 9, 10 of the 13 Sentinel-2 bands (the paper's).
PAPER_GROUPS: tuple[tuple[int, ...], ...] = ((0, 1, 2, 6), (3, 4, 5, 7), (8, 9))

Groups = tuple[tuple[int, ...], ...]


def as_groups(groups: Sequence[Sequence[int]] | None) -> Groups | None:
    """JSON lists (or tuples) of band indices -> a tuple of int tuples (``None`` stays ``None``)."""
    return None if groups is None else tuple(tuple(int(c) for c in g) for g in groups)


def group_pos_embed(pos: Tensor, chan: Tensor) -> Tensor:
    """Concatenated position/group embedding: ``pos (1, L, Dp)``, ``chan (1, G, Dc)`` -> ``(1, G, L, Dp + Dc)``.

    Entry ``(g, l)`` is ``[pos[0, l], chan[0, g]]`` (position part first, as officially).
    """
    G, L = chan.shape[1], pos.shape[1]
    return torch.cat((pos.unsqueeze(1).expand(-1, G, -1, -1), chan.unsqueeze(2).expand(-1, -1, L, -1)), dim=-1)


def groups_from_sizes(sizes: Sequence[int]) -> Groups:
    """Band groups for checkpoint detection: the paper's groups when the sizes are theirs, else contiguous runs."""
    if tuple(sizes) == tuple(len(g) for g in PAPER_GROUPS):
        return PAPER_GROUPS
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return tuple(tuple(range(s, s + n)) for s, n in zip(starts, sizes))


def copy_table_(param: Tensor, table: Tensor) -> None:
    """Write a sin-cos table into ``param`` (skipped on the meta device, where there is no data)."""
    if not param.is_meta:
        with torch.no_grad():
            param.copy_(table.reshape(param.shape))


@dataclass
class SatMAEPPViTConfig:
    """Every hyper-parameter of the SatMAE++ fine-tuning ViTs (official constructor names).

    ``channel_groups=None`` is the plain ViT of ``models_vit.py`` (one patch embedding over all
    ``in_chans`` bands, full-width position table); otherwise the grouped-band ViT.
    """

    img_size: int = 96                       # square input side; the token grid is (img_size // patch_size)^2
    patch_size: int = 8
    in_chans: int = 10
    channel_groups: Groups | None = PAPER_GROUPS
    channel_embed: int = 256                 # Dc: width of the group-identity part of each token embedding
    num_classes: int = 62
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_scale: float | None = None
    norm_eps: float = 1e-6
    global_pool: bool = True                 # mean of the patch tokens -> fc_norm; False: norm -> class token
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.2              # the paper's fine-tuning value (inactive in eval)

    def __post_init__(self) -> None:
        self.channel_groups = as_groups(self.channel_groups)
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.channel_groups is not None and (self.embed_dim - self.channel_embed) % 4:
            raise ValueError("embed_dim - channel_embed must be divisible by 4 (2-D sin-cos table)")


class SatMAEPPViT(nn.Module):
    """SatMAE++ fine-tuning classifier.

    ``forward(x (B, C, img_size, img_size)) -> logits (B, num_classes)``; :meth:`forward_features` gives
    the pooled ``(B, D)`` features. ``C`` is ``in_chans`` (the groups index into it). Sequence length
    ``1 + G * L`` (grouped) or ``1 + L``.
    """

    def __init__(self, cfg: SatMAEPPViTConfig | None = None, **kwargs: Any):
        super().__init__()
        cfg = cfg or SatMAEPPViTConfig(**kwargs)
        self.cfg = cfg
        D, p, grid = cfg.embed_dim, cfg.patch_size, cfg.img_size // cfg.patch_size
        self.grid = grid
        if cfg.channel_groups is None:
            self.patch_embed = PatchEmbed(cfg.in_chans, D, p)
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, D))
        else:
            G, Dc = len(cfg.channel_groups), cfg.channel_embed
            self.patch_embed = GroupChannelPatchEmbed(cfg.channel_groups, D, p)
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, D - Dc))
            self.channel_embed = nn.Parameter(torch.zeros(1, G, Dc))
            self.channel_cls_embed = nn.Parameter(torch.zeros(1, 1, Dc))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        norm = partial(nn.LayerNorm, eps=cfg.norm_eps)
        dpr = torch.linspace(0, cfg.drop_path_rate, cfg.depth, device="cpu").tolist()  # cpu: also under meta
        self.blocks = nn.ModuleList(
            ViTBlock(D, cfg.num_heads, cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, qk_scale=cfg.qk_scale,
                     drop=cfg.drop_rate, attn_drop=cfg.attn_drop_rate, drop_path=dpr[i], norm_layer=norm)
            for i in range(cfg.depth))
        # timm 0.3.2 + the subclass: with global pooling the final ``norm`` is deleted and ``fc_norm`` added.
        if cfg.global_pool:
            self.fc_norm = norm(D)
        else:
            self.norm = norm(D)
        self.head = nn.Linear(D, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """timm 0.3.2 init (trunc-normal 0.02 Linear/cls, LayerNorm 1/0), then the sin-cos tables."""
        trunc_normal_(self.cls_token, std=0.02)
        init_vit_weights_(self)
        copy_table_(self.pos_embed, sincos_pos_embed_2d(self.pos_embed.shape[-1], self.grid, self.grid, cls_token=True))
        if self.cfg.channel_groups is not None:
            groups = range(len(self.cfg.channel_groups))
            copy_table_(self.channel_embed, sincos_pos_embed_1d(self.cfg.channel_embed, groups))
            nn.init.zeros_(self.channel_cls_embed)

    def embed(self, x: Tensor) -> Tensor:
        """Tokens with position (and group) embeddings, class token first: ``(B, 1 + G*L, D)``."""
        B, _, H, W = x.shape
        if (H // self.cfg.patch_size, W // self.cfg.patch_size) != (self.grid, self.grid):
            raise ValueError(f"input {H}x{W} does not match the model's img_size {self.cfg.img_size}")
        if self.cfg.channel_groups is None:
            tokens = self.patch_embed(x) + self.pos_embed[:, 1:]
            cls = self.cls_token + self.pos_embed[:, :1]
        else:
            tokens = self.patch_embed(x) + group_pos_embed(self.pos_embed[:, 1:], self.channel_embed)  # (B, G, L, D)
            tokens = tokens.flatten(1, 2)
            cls = self.cls_token + torch.cat((self.pos_embed[:, :1], self.channel_cls_embed), dim=-1)
        return self.pos_drop(torch.cat((cls.expand(B, -1, -1), tokens), dim=1))

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled features ``(B, D)``: ``fc_norm(mean of patch tokens)`` or ``norm(class token)``."""
        x = self.embed(x)
        if self.cfg.global_pool:
            for blk in self.blocks:
                x = blk(x)
            return self.fc_norm(x[:, 1:].mean(dim=1))
        for blk in self.blocks[:-1]:
            x = blk(x)
        if len(self.blocks):
            x = vit_block_cls_only(self.blocks[-1], x)  # only the class token is read
        return self.norm(x[:, 0])

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, C, img_size, img_size)`` -> logits ``(B, num_classes)`` (features if ``num_classes == 0``)."""
        return self.head(self.forward_features(x))


# ---------------------------------------------------------------------------------------------
# official translation

def _timm_vit_kwargs(kw: Mapping[str, Any]) -> dict[str, Any]:
    """Arguments of the timm 0.3.2 ``VisionTransformer`` with its defaults (LayerNorm eps 1e-5 if not given)."""
    if kw.get("representation_size") or kw.get("hybrid_backbone"):
        raise ValueError("representation_size / hybrid_backbone are not used by SatMAE++ and not supported")
    return dict(
        img_size=int(kw.get("img_size", 224)), patch_size=int(kw.get("patch_size", 16)),
        in_chans=int(kw.get("in_chans", 3)), num_classes=int(kw.get("num_classes", 1000)),
        embed_dim=int(kw.get("embed_dim", 768)), depth=int(kw.get("depth", 12)),
        num_heads=int(kw.get("num_heads", 12)), mlp_ratio=float(kw.get("mlp_ratio", 4.0)),
        qkv_bias=bool(kw.get("qkv_bias", False)), qk_scale=kw.get("qk_scale"),
        norm_eps=official_norm_eps(kw), global_pool=bool(kw.get("global_pool", False)),
        drop_rate=float(kw.get("drop_rate", 0.0)), attn_drop_rate=float(kw.get("attn_drop_rate", 0.0)),
        drop_path_rate=float(kw.get("drop_path_rate", 0.0)),
    )


def config_from_official(kw: Mapping[str, Any]) -> SatMAEPPViTConfig:
    """``GroupChannelsVisionTransformer`` kwargs -> config (class defaults: paper groups, ``channel_embed`` 256)."""
    return SatMAEPPViTConfig(**_timm_vit_kwargs(kw), channel_groups=kw.get("channel_groups", PAPER_GROUPS),
                             channel_embed=int(kw.get("channel_embed", 256)))


def config_from_official_rgb(kw: Mapping[str, Any]) -> SatMAEPPViTConfig:
    """``models_vit.VisionTransformer`` kwargs -> config with ``channel_groups=None``."""
    return SatMAEPPViTConfig(**_timm_vit_kwargs(kw), channel_groups=None)


def _count_blocks(sd: Mapping[str, Tensor], prefix: str = "blocks.") -> int:
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


def detect_official(sd: Mapping[str, Tensor]) -> dict[str, Any] | None:
    """Infer ``GroupChannelsVisionTransformer`` kwargs from a fine-tuned checkpoint; ``None`` otherwise.

    Read from shapes: embed_dim, depth, patch_size, group count and sizes, ``in_chans`` (their sum),
    ``channel_embed``, ``img_size`` (position table), num_classes, mlp_ratio, qkv_bias and
    ``global_pool`` (``fc_norm`` present). Not inferable: ``num_heads`` (default ``embed_dim // 64``:
    ViT-B 12, ViT-L 16) and which bands each group holds (the paper's groups when the sizes are 4/4/2,
    else contiguous runs; override with ``channel_groups=``). LayerNorm eps is the factories' 1e-6.
    """
    if "patch_embed.0.proj.weight" not in sd or "channel_cls_embed" not in sd or "pos_embed" not in sd:
        return None
    sizes, g = [], 0
    while f"patch_embed.{g}.proj.weight" in sd:
        sizes.append(int(sd[f"patch_embed.{g}.proj.weight"].shape[1]))
        g += 1
    w0, D = sd["patch_embed.0.proj.weight"], int(sd["patch_embed.0.proj.weight"].shape[0])
    kw = _common_vit_detect(sd, D, int(w0.shape[-1]))
    if kw is None:
        return None
    kw.update(in_chans=sum(sizes), channel_groups=[list(g) for g in groups_from_sizes(sizes)],
              channel_embed=int(sd["channel_cls_embed"].shape[-1]))
    return kw if layout_fits(SatMAEPPViT, config_from_official, kw, sd) else None


def detect_official_rgb(sd: Mapping[str, Tensor]) -> dict[str, Any] | None:
    """Infer ``models_vit.VisionTransformer`` kwargs from a fine-tuned checkpoint; ``None`` otherwise.

    Read from shapes: embed_dim, depth, patch_size, in_chans, ``img_size``, num_classes, mlp_ratio,
    qkv_bias, ``global_pool``. Not inferable: ``num_heads`` (default ``embed_dim // 64``). The key set must
    be exactly this model's (no decoder, no group/channel tables, no ``backbone.`` prefix), so MAE
    pretraining, ChannelViT, ViTPose and grouped checkpoints are rejected.
    """
    w = sd.get("patch_embed.proj.weight")
    if w is None or w.ndim != 4 or "pos_embed" not in sd or "head.weight" not in sd:
        return None
    kw = _common_vit_detect(sd, int(w.shape[0]), int(w.shape[-1]))
    if kw is None:
        return None
    kw["in_chans"] = int(w.shape[1])
    return kw if layout_fits(SatMAEPPViT, config_from_official_rgb, kw, sd) else None


def _common_vit_detect(sd: Mapping[str, Tensor], D: int, patch: int) -> dict[str, Any] | None:
    pos, fc1 = sd["pos_embed"], sd.get("blocks.0.mlp.fc1.weight")
    grid = math.isqrt(int(pos.shape[1]) - 1)
    if pos.ndim != 3 or grid * grid != pos.shape[1] - 1 or fc1 is None:
        return None
    return {
        "img_size": grid * patch, "patch_size": patch,
        "num_classes": int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0,
        "embed_dim": D, "depth": _count_blocks(sd), "num_heads": max(1, D // 64),
        "mlp_ratio": fc1.shape[0] / D, "qkv_bias": "blocks.0.attn.qkv.bias" in sd,
        "global_pool": "fc_norm.weight" in sd, "norm_layer": {"type": "LayerNorm", "eps": 1e-6},
    }


def layout_fits(cls: type, to_config, kw: Mapping[str, Any], sd: Mapping[str, Tensor]) -> bool:
    """Whether the model built (on the meta device) from ``kw`` has exactly ``sd``'s keys and shapes."""
    return builds_layout(lambda: cls(to_config(kw)), sd)


register_official(OfficialSpec(
    model_id="satmaepp_vit", field=FIELD,
    build=lambda kw: SatMAEPPViT(config_from_official(kw)), convert=None, detect=detect_official,
    uninferable=("num_heads", "channel_groups"),
    description="techmn/satmae_pp models_vit_group_channels.py::GroupChannelsVisionTransformer (timm 0.3.2)",
))
register_official(OfficialSpec(
    model_id="satmaepp_vit_rgb", field=FIELD,
    build=lambda kw: SatMAEPPViT(config_from_official_rgb(kw)), convert=None, detect=detect_official_rgb,
    uninferable=("num_heads",),
    description="techmn/satmae_pp models_vit.py::VisionTransformer (timm 0.3.2)",
))

_LARGE = dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0, qkv_bias=True, norm_eps=1e-6)
register_model(ModelSpec(
    "satmaepp_vit_large_group", FIELD, "satmaepp_vit", SatMAEPPViT,
    dict(img_size=96, patch_size=8, in_chans=10, channel_groups=PAPER_GROUPS, channel_embed=256, num_classes=62,
         global_pool=True, drop_path_rate=0.2, **_LARGE),
    "SatMAE++ ViT-L/8 fMoW-Sentinel fine-tune, 10 bands in 3 groups, 96 px, 62 classes"))
register_model(ModelSpec(
    "satmaepp_vit_large_rgb", FIELD, "satmaepp_vit", SatMAEPPViT,
    dict(img_size=224, patch_size=16, in_chans=3, channel_groups=None, num_classes=62, global_pool=True,
         drop_path_rate=0.2, **_LARGE),
    "SatMAE++ ViT-L/16 fMoW-RGB fine-tune, 224 px, 62 classes"))
