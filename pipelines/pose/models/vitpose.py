"""ViTPose (Xu et al., NeurIPS 2022): a plain ViT backbone plus a heatmap decoder, top-down pose.

Official code: ViTAE-Transformer/ViTPose (an MMPose 0.x fork), ``mmpose/models/backbones/vit.py``
(``ViT``), ``mmpose/models/heads/topdown_heatmap_simple_head.py`` (``TopdownHeatmapSimpleHead``),
held by ``TopDown`` as ``backbone`` / ``keypoint_head``. This module keeps those attribute names, so
a released checkpoint's ``backbone.*`` / ``keypoint_head.*`` keys load unchanged.

Authors' behaviour kept on purpose (see ``shared/reference/vitpose/ARCH.md``):

* the patch conv has ``padding=2`` for ``ratio=1`` (derived from ``ratio`` by the authors' formula),
  so the token grid is shifted two pixels up/left and the last two rows/columns are never read;
* ``pos_embed`` keeps MAE's unused class-token slot 0, and that vector is added to *every* token.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vitsuite.core.layers import init_vit_weights_, PatchEmbed, ViTBlock, resize_pos_embed, to_2tuple, trunc_normal_
from vitsuite.core.checkpoint import builds_layout
from vitsuite.core.registry import ModelSpec, OfficialSpec, register_model, register_official

FIELD = "pose"
MODEL_ID = "vitpose"

# ConvTranspose2d (padding, output_padding) per kernel so that each deconv exactly doubles H and W.
_DECONV_PADDING = {4: (1, 0), 3: (1, 1), 2: (0, 0)}

# Decoder presets (the ViTPose configs): classic = 2 x (deconv 4x4 + BN + ReLU) + 1x1 conv;
# simple = ReLU + bilinear x4 + 3x3 conv.
DECODERS: dict[str, dict[str, Any]] = {
    "classic": dict(num_deconv_filters=(256, 256), num_deconv_kernels=(4, 4), final_conv_kernel=1, upsample=0),
    "simple": dict(num_deconv_filters=(), num_deconv_kernels=(), final_conv_kernel=3, upsample=4),
}


@dataclass
class ViTPoseConfig:
    """Every hyper-parameter of ViTPose (backbone names as in the authors' ``ViT``, head as in their head)."""

    # backbone
    img_size: tuple[int, int] = (256, 192)  # (H, W) the position table is sized for
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True                   # the authors' class default is False, every config sets True
    qk_scale: float | None = None
    ratio: int = 1                          # stride patch_size // ratio, padding 4 + 2 * (ratio // 2 - 1)
    last_norm: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0             # linear 0 .. rate over the blocks
    use_checkpoint: bool = False            # activation checkpointing of the blocks while training
    # keypoint head
    num_keypoints: int = 17
    num_deconv_filters: tuple[int, ...] = (256, 256)
    num_deconv_kernels: tuple[int, ...] = (4, 4)
    num_conv_kernels: tuple[int, ...] = ()  # extra [conv, BN, ReLU] before the final conv (``extra.num_conv_*``)
    final_conv_kernel: int = 1              # 1, 3, or 0 = no final conv
    upsample: int = 0                       # > 0: ReLU + bilinear resize by this factor before the deconvs
    align_corners: bool = False

    def __post_init__(self) -> None:
        self.img_size = to_2tuple(self.img_size)
        self.num_deconv_filters = tuple(self.num_deconv_filters)
        self.num_deconv_kernels = tuple(self.num_deconv_kernels)
        self.num_conv_kernels = tuple(self.num_conv_kernels)
        if len(self.num_deconv_filters) != len(self.num_deconv_kernels):
            raise ValueError(f"deconv filters {self.num_deconv_filters} and kernels {self.num_deconv_kernels} differ "
                             "in length")
        bad = [k for k in self.num_deconv_kernels if k not in _DECONV_PADDING]
        if bad:
            raise ValueError(f"deconv kernels must be 2, 3 or 4, got {bad}")
        if self.final_conv_kernel not in (0, 1, 3):
            raise ValueError(f"final_conv_kernel must be 0, 1 or 3, got {self.final_conv_kernel}")

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid ``(Hp0, Wp0)`` of the position table."""
        return (self.img_size[0] // self.patch_size * self.ratio, self.img_size[1] // self.patch_size * self.ratio)


class ViTPoseBackbone(nn.Module):
    """Plain ViT returning one feature map (the authors' ``ViT``).

    ``forward(x (B, 3, H, W)) -> (B, D, Hp, Wp)``, ``Hp = floor((H + 2p - k) / s) + 1`` (16 for H=256 at
    patch 16). Inputs whose grid differs from ``img_size``'s get a bicubically resized position table
    (the authors' code requires the configured size exactly).
    """

    def __init__(self, cfg: ViTPoseConfig):
        super().__init__()
        self.grid = cfg.grid
        self.use_checkpoint = cfg.use_checkpoint
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.patch_embed = PatchEmbed(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size // cfg.ratio,
                                      padding=4 + 2 * (cfg.ratio // 2 - 1))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], cfg.embed_dim))
        dpr = torch.linspace(0, cfg.drop_path_rate, cfg.depth, device="cpu").tolist()  # cpu: also under meta
        # Official Mlp drops once after fc2, timm's also after the activation: differs only if drop_rate > 0
        # (0 in every config).
        self.blocks = nn.ModuleList(
            ViTBlock(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, qk_scale=cfg.qk_scale,
                     drop=cfg.drop_rate, attn_drop=cfg.attn_drop_rate, drop_path=dpr[i], norm_layer=norm)
            for i in range(cfg.depth))
        self.last_norm = norm(cfg.embed_dim) if cfg.last_norm else nn.Identity()

    def position_embedding(self, hw: tuple[int, int]) -> Tensor:
        """Per-token position term ``(1, Hp*Wp, D)`` for grid ``hw``: own entry + the class-slot vector.

        The authors add ``pos_embed[:, :1]`` to every token assuming it is MAE's zero sin-cos slot, but it
        is trained and non-zero in released checkpoints, so it must be added (ARCH 2.2).
        """
        pos = self.pos_embed
        if tuple(hw) != self.grid:
            pos = resize_pos_embed(pos, hw, old_hw=self.grid, num_prefix_tokens=1)
        return pos[:, 1:] + pos[:, :1]  # summed once on the small table instead of twice on the tokens

    def forward(self, x: Tensor) -> Tensor:
        x, (hp, wp) = self.patch_embed(x, return_hw=True)  # (B, Hp*Wp, D), row-major
        x = x + self.position_embedding((hp, wp)).to(x.dtype)
        for blk in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        x = self.last_norm(x)
        return x.transpose(1, 2).reshape(x.shape[0], -1, hp, wp)


class HeatmapHead(nn.Module):
    """The authors' ``TopdownHeatmapSimpleHead`` for one feature map.

    ``[ReLU + bilinear x upsample] -> deconv_layers ([ConvT s2, BN, ReLU] each) -> final_layer``.
    Keys: ``deconv_layers.{3i, 3i+1}`` (ConvT, BN), ``final_layer`` (a Conv2d, or a Sequential
    ``final_layer.{j}`` when extra convs are configured).

    ``forward(x (B, C, h, w)) -> (B, K, h * upsample * 2**n_deconv, ...)`` (``upsample`` counts as 1 when 0).
    """

    def __init__(self, in_channels: int, cfg: ViTPoseConfig):
        super().__init__()
        self.upsample, self.align_corners = cfg.upsample, cfg.align_corners
        layers: list[nn.Module] = []
        c = in_channels
        for planes, k in zip(cfg.num_deconv_filters, cfg.num_deconv_kernels):
            pad, out_pad = _DECONV_PADDING[k]
            layers += [nn.ConvTranspose2d(c, planes, k, stride=2, padding=pad, output_padding=out_pad, bias=False),
                       nn.BatchNorm2d(planes), nn.ReLU(inplace=True)]
            c = planes
        self.deconv_layers = nn.Sequential(*layers) if layers else nn.Identity()
        if cfg.final_conv_kernel == 0:
            self.final_layer = nn.Identity()
        else:
            final: list[nn.Module] = []
            for k in cfg.num_conv_kernels:
                final += [nn.Conv2d(c, c, k, padding=(k - 1) // 2), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            final.append(nn.Conv2d(c, cfg.num_keypoints, cfg.final_conv_kernel, padding=cfg.final_conv_kernel // 2))
            self.final_layer = nn.Sequential(*final) if len(final) > 1 else final[0]

    def forward(self, x: Tensor) -> Tensor:
        if self.upsample > 0:
            x = F.interpolate(F.relu(x), scale_factor=self.upsample, mode="bilinear", align_corners=self.align_corners)
        return self.final_layer(self.deconv_layers(x))


class ViTPose(nn.Module):
    """Top-down ViTPose: ``forward(img (B, 3, H, W)) -> heatmaps (B, K, H/4, W/4)`` (for the paper heads).

    ``img`` is an RGB person crop normalised with ImageNet mean/std; ``H, W`` default 256 x 192.
    Attributes ``backbone`` (:class:`ViTPoseBackbone`) and ``keypoint_head`` (:class:`HeatmapHead`)
    give the released checkpoints' key names.
    """

    def __init__(self, cfg: ViTPoseConfig | None = None, **kwargs: Any):
        super().__init__()
        cfg = cfg or ViTPoseConfig(**kwargs)
        self.cfg = cfg
        self.backbone = ViTPoseBackbone(cfg)
        self.keypoint_head = HeatmapHead(cfg.embed_dim, cfg)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The authors' training init (no-op cost on the meta device); released weights overwrite it.

        Backbone Linear trunc-normal std 0.02 with zero bias, LayerNorm (1, 0), ``pos_embed`` trunc-normal
        std 0.02; head deconv and conv weights normal std 0.001 (conv bias 0), BatchNorm (1, 0).
        """
        trunc_normal_(self.backbone.pos_embed, std=0.02)
        init_vit_weights_(self.backbone)
        for m in self.keypoint_head.modules():
            if isinstance(m, (nn.ConvTranspose2d, nn.Conv2d)):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, img: Tensor) -> Tensor:
        return self.keypoint_head(self.backbone(img))


def vitpose(decoder: str | None = "classic", **kwargs: Any) -> ViTPose:
    """Build ViTPose with a decoder preset (``"classic"``, ``"simple"``, or None = config defaults).

    Explicit head arguments in ``kwargs`` (e.g. ``num_deconv_filters``) override the preset.
    """
    if decoder is not None and decoder not in DECODERS:
        raise ValueError(f"unknown decoder '{decoder}' (use {', '.join(DECODERS)})")
    return ViTPose(ViTPoseConfig(**{**(DECODERS[decoder] if decoder else {}), **kwargs}))


# ---------------------------------------------------------------------------------------------
# official translation

_BACKBONE_ARGS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
                  "qk_scale", "ratio", "last_norm", "drop_rate", "attn_drop_rate", "drop_path_rate", "use_checkpoint")
# Arguments of the authors' ViT that do not change the forward maths (training/freezing/MAE-loading options).
_BACKBONE_IGNORED = ("type", "num_classes", "frozen_stages", "freeze_attn", "freeze_ffn", "patch_padding",
                     "pretrained", "init_cfg")
_HEAD_IGNORED = ("type", "loss_keypoint", "train_cfg", "test_cfg", "in_channels")
# The authors' class defaults where they differ from ViTPoseConfig's.
_OFFICIAL_BACKBONE_DEFAULTS = dict(img_size=224, embed_dim=768, depth=12, num_heads=12, qkv_bias=False)


def config_from_official(kwargs: Mapping[str, Any]) -> ViTPoseConfig:
    """``{"backbone": {...}, "keypoint_head": {...}}`` (MMPose config form) -> :class:`ViTPoseConfig`.

    Missing arguments take the authors' class defaults (e.g. ``qkv_bias=False``, 3 deconvs). Top-level
    keys other than the two sub-dicts override them: backbone argument names (``num_heads``,
    ``img_size``...) or ``out_channels`` / ``upsample`` of the head, which is how
    ``load_official_checkpoint(path, num_heads=...)`` sets what shapes cannot tell.
    """
    bb = dict(kwargs.get("backbone", {}))
    head = dict(kwargs.get("keypoint_head", {}))
    for k, v in kwargs.items():
        if k in ("backbone", "keypoint_head"):
            continue
        if k in _BACKBONE_ARGS:
            bb[k] = v
        elif k in ("out_channels", "upsample", "align_corners"):
            head[k] = v
        else:
            raise ValueError(f"vitpose: unknown top-level argument '{k}'")
    if bb.get("type", "ViT") != "ViT" or bb.get("hybrid_backbone") is not None:
        raise ValueError(f"vitpose: only the plain ViT backbone is supported, got {bb.get('type')}")
    if head.get("type", "TopdownHeatmapSimpleHead") != "TopdownHeatmapSimpleHead":
        raise ValueError(f"vitpose: only TopdownHeatmapSimpleHead is supported, got {head.get('type')}")
    if head.get("input_transform") is not None or head.get("in_index", 0) != 0:
        raise ValueError("vitpose: the head takes the single backbone map (input_transform None, in_index 0)")
    unknown = set(bb) - set(_BACKBONE_ARGS) - set(_BACKBONE_IGNORED) - {"hybrid_backbone", "norm_layer"}
    if unknown:
        raise ValueError(f"vitpose: unsupported backbone arguments {sorted(unknown)}")
    cfg = {**_OFFICIAL_BACKBONE_DEFAULTS, **{k: bb[k] for k in _BACKBONE_ARGS if k in bb}}
    if "in_channels" in head and head["in_channels"] != cfg["embed_dim"]:
        raise ValueError(f"vitpose: head in_channels {head['in_channels']} != embed_dim {cfg['embed_dim']}")
    n = head.get("num_deconv_layers", 3)
    if n < 0:
        raise ValueError(f"num_deconv_layers ({n}) should be >= 0")
    filters = tuple(head.get("num_deconv_filters", (256, 256, 256))) if n else ()
    kernels = tuple(head.get("num_deconv_kernels", (4, 4, 4))) if n else ()
    if n and (len(filters) != n or len(kernels) != n):
        raise ValueError(f"num_deconv_layers {n} does not match filters {filters} / kernels {kernels}")
    extra = head.get("extra") or {}
    n_conv = extra.get("num_conv_layers", 0)
    return ViTPoseConfig(
        **cfg, num_keypoints=head.get("out_channels", 17), num_deconv_filters=filters, num_deconv_kernels=kernels,
        num_conv_kernels=tuple(extra.get("num_conv_kernels", [1] * n_conv))[:n_conv],
        final_conv_kernel=extra.get("final_conv_kernel", 1), upsample=head.get("upsample", 0),
        align_corners=head.get("align_corners", False))


def convert_official(sd: Mapping[str, Tensor], kwargs: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
    """Official keys are kept; only checkpoints saved without BN ``num_batches_tracked`` get it back (0)."""
    out = dict(sd)
    for k in sd:
        if k.startswith("keypoint_head.") and k.endswith(".running_var"):
            out.setdefault(k[: -len("running_var")] + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
    return out


# Heads of the paper sizes (embed dim -> heads). Shapes cannot tell the head count.
PAPER_HEADS = {384: 12, 768: 12, 1024: 16, 1280: 16}


def default_num_heads(embed_dim: int) -> int:
    """Paper head count for the ViTPose widths; otherwise the largest of 16/12/8/6/4/2/1 dividing D with
    ``head_dim >= 16`` (a convention for non-paper widths, override with ``num_heads=``)."""
    if embed_dim in PAPER_HEADS:
        return PAPER_HEADS[embed_dim]
    return next((h for h in (16, 12, 8, 6, 4, 2) if embed_dim % h == 0 and embed_dim // h >= 16), 1)


def _grid_from_count(n: int) -> tuple[int, int]:
    """(Hp0, Wp0) with Hp0 * Wp0 = n: 4:3 (H:W, the COCO crops) first, then square, else the factor pair
    closest to 4:3 with Hp0 >= Wp0."""
    for t in range(1, n + 1):
        if 12 * t * t == n:
            return 4 * t, 3 * t
        if 12 * t * t > n:
            break
    s = round(n**0.5)
    if s * s == n:
        return s, s
    pairs = [(n // w, w) for w in range(1, s + 1) if n % w == 0]
    return min(pairs, key=lambda hw: abs(hw[0] / hw[1] - 4 / 3))


def detect_official(sd: Mapping[str, Tensor]) -> dict[str, Any] | None:
    """Infer MMPose-form ``official_kwargs`` from a ViTPose checkpoint; ``None`` for anything else.

    Read from shapes: embed_dim, depth, patch_size, mlp_ratio, qkv_bias, last_norm, the deconv filters
    and kernels, extra convs, the final conv kernel, the number of keypoints, and the token grid's size.
    Not inferable, with their defaults (override via ``load_official_checkpoint(path, name=value)``):

    * ``num_heads``: :func:`default_num_heads` (S/B 12, L/H 16);
    * ``img_size``: ``16 * grid``, the grid factorised by :func:`_grid_from_count` (a 192-token table is
      16 x 12 -> 256 x 192; 432 -> 384 x 288; square tables -> square crops);
    * ``ratio``: 1 (every config); ``upsample``: 4 when there are no deconvs (the simple decoder), else 0.

    Strict: every key must be a ViTPose ``backbone.*``/``keypoint_head.*`` key and the shapes must fit the
    model built from the inferred arguments (ViTPose+ MoE and other families are rejected).
    """
    need = ("backbone.pos_embed", "backbone.patch_embed.proj.weight", "backbone.blocks.0.attn.qkv.weight",
            "backbone.blocks.0.mlp.fc1.weight")
    if not all(k in sd for k in need) or not all(k.startswith(("backbone.", "keypoint_head.")) for k in sd):
        return None
    pos, proj = sd["backbone.pos_embed"], sd["backbone.patch_embed.proj.weight"]
    if pos.ndim != 3 or proj.ndim != 4 or proj.shape[2] != proj.shape[3]:
        return None
    D, patch = int(pos.shape[2]), int(proj.shape[2])
    depth = len({k.split(".")[2] for k in sd if k.startswith("backbone.blocks.")})
    grid = _grid_from_count(int(pos.shape[1]) - 1)
    # Deconvs: ConvTranspose2d weights (in, out, k, k) at indices 0, 3, 6...
    filters, kernels = [], []
    while f"keypoint_head.deconv_layers.{3 * len(filters)}.weight" in sd:
        w = sd[f"keypoint_head.deconv_layers.{3 * len(filters)}.weight"]
        filters.append(int(w.shape[1]))
        kernels.append(int(w.shape[2]))
    if "keypoint_head.final_layer.weight" in sd:
        final, conv_kernels = sd["keypoint_head.final_layer.weight"], []
    else:  # Sequential: [conv, BN, ReLU] * n + conv
        convs = sorted(int(k.split(".")[2]) for k in sd if k.startswith("keypoint_head.final_layer.")
                       and k.endswith(".weight") and sd[k].ndim == 4)
        if not convs:
            return None
        conv_kernels = [int(sd[f"keypoint_head.final_layer.{j}.weight"].shape[-1]) for j in convs[:-1]]
        final = sd[f"keypoint_head.final_layer.{convs[-1]}.weight"]
    head: dict[str, Any] = {
        "type": "TopdownHeatmapSimpleHead", "in_channels": D, "out_channels": int(final.shape[0]),
        "num_deconv_layers": len(filters), "num_deconv_filters": filters, "num_deconv_kernels": kernels,
        "extra": {"final_conv_kernel": int(final.shape[-1])},
    }
    if conv_kernels:
        head["extra"].update(num_conv_layers=len(conv_kernels), num_conv_kernels=conv_kernels)
    if not filters:
        head["upsample"] = 4
    kwargs = {
        "backbone": {
            "type": "ViT", "img_size": [grid[0] * patch, grid[1] * patch], "patch_size": patch, "embed_dim": D,
            "depth": depth, "num_heads": default_num_heads(D), "ratio": 1,
            "mlp_ratio": sd["backbone.blocks.0.mlp.fc1.weight"].shape[0] / D,
            "qkv_bias": "backbone.blocks.0.attn.qkv.bias" in sd, "last_norm": "backbone.last_norm.weight" in sd,
        },
        "keypoint_head": head,
    }
    # the inferred model must have exactly these keys and shapes
    if not builds_layout(lambda: ViTPose(config_from_official(kwargs)), convert_official(sd)):
        return None
    return kwargs


register_official(OfficialSpec(
    model_id=MODEL_ID, field=FIELD,
    build=lambda kw: ViTPose(config_from_official(kw)),
    convert=convert_official, detect=detect_official, uninferable=("num_heads", "img_size"),
    description="ViTAE-Transformer/ViTPose mmpose TopDown(ViT, TopdownHeatmapSimpleHead)",
))


# ---------------------------------------------------------------------------------------------
# paper sizes (COCO 256x192, K=17; drop_path_rate is the paper's training value)

_SIZES = {
    "s": dict(embed_dim=384, depth=12, num_heads=12, drop_path_rate=0.1),
    "b": dict(embed_dim=768, depth=12, num_heads=12, drop_path_rate=0.3),
    "l": dict(embed_dim=1024, depth=24, num_heads=16, drop_path_rate=0.5),
    "h": dict(embed_dim=1280, depth=32, num_heads=16, drop_path_rate=0.55),
}
for _size, _cfg in _SIZES.items():
    register_model(ModelSpec(f"vitpose_{_size}", FIELD, "vitpose", vitpose, {"decoder": "classic", **_cfg},
                             f"ViTPose-{_size.upper()} 256x192, classic decoder (2 deconvs + 1x1 conv)"))
    if _size != "s":  # the official "small simple" config is the classic one; use vitpose_s(decoder="simple")
        register_model(ModelSpec(f"vitpose_{_size}_simple", FIELD, "vitpose", vitpose, {"decoder": "simple", **_cfg},
                                 f"ViTPose-{_size.upper()} 256x192, simple decoder (bilinear x4 + 3x3 conv)"))

__all__ = ["ViTPoseConfig", "ViTPoseBackbone", "HeatmapHead", "ViTPose", "vitpose", "DECODERS",
           "config_from_official", "convert_official", "detect_official", "default_num_heads"]
