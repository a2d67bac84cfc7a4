"""DuoFormer (Tang et al., MIDL 2025): multi-scale ResNet tokens with scale attention, then patch attention.

Reference: the refactored fork AliSerwat/Refactored-DuoFormer, class ``MyModel_no_extra_params``
(``src/duoformer/models/model_wo_extra_params.py``) with ``MultiscaleFormer``; its compute classes are
identical to the authors' (xiaoyatang/duoformer_TCGA). Module names follow the fork; the authors'
spellings (``scaleBlocks``, ``chann_proj*``) are mapped by :func:`convert_official`.

Behaviour reproduced on purpose (see ``ARCH.md``):

* the authors' ``get_features`` rule (backbone children 4..7 are stages 0..3), which the fork broke
  for ResNet-50;
* timm 0.9's positional ``Attention(dim, heads, qkv_bias, qk_norm, attn_drop, proj_drop)`` call: the
  official ``attn_drop_rate`` only switches per-head q/k LayerNorms on (applied in the patch blocks,
  present but unused in the scale blocks) and ``proj_drop_rate`` becomes the attention dropout;
* patch blocks are bare attention layers (no norm, residual or MLP), and the head reads the
  *un-normalised* CLS token (``fc_norm`` exists, its result is discarded).

Speed: region tokens are gathered with reshapes instead of index tables; attention runs through SDPA;
the last scale block and the last patch block compute only the row their consumer reads; on CPU
float32 inference the projections run on oneDNN with GELU and residual adds fused (core
``layers.fast.fast_inference``); the ResNet runs channels-last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from vitsuite.core.checkpoint import builds_layout
from vitsuite.core.layers import attention, trunc_normal_
from vitsuite.core.layers.fast import fast_inference, linear, linear_add, mlp_residual
from vitsuite.core.layers.resnet import channels_last_safe, init_resnet_, resnet_stage
from vitsuite.core.registry import ModelSpec, OfficialSpec, register_model, register_official

FIELD = "medical"
GRID = 7                                   # layer4 map of a 224 x 224 input: 49 regions
_RESNETS = {"r18": (BasicBlock, (2, 2, 2, 2)), "r50": (Bottleneck, (3, 4, 6, 3))}
_TOKENS = {2: 6, 3: 22, 4: 86}             # scale token + 1 + 4 (+ 16 (+ 64)) tokens per region


@dataclass
class DuoFormerConfig:
    """Every hyper-parameter of DuoFormer (the fork's ``default_config.yaml`` values as defaults).

    ``num_layers`` S (2-4) is how many ResNet stages are tokenised (layer4, layer3, layer2, layer1).
    ``resnet_base_width`` (64) and ``channel_token_dim`` (768) are hard-coded in the official classes.
    ``qk_norm``/``attn_drop``/``mlp_drop`` are the effective values of the official
    ``attn_drop_rate``/``proj_drop_rate`` under timm 0.9 (see the module docstring).

    Two official configurations cannot run and are built as intended instead: ResNet-18 with 3 scales
    (the official class creates ``proj_heads0..2`` but projects stages 1..3) and ResNet-18 with the
    channel token (its fusion conv expects 384 inputs, 960 arrive); here the heads follow the used
    stages and the fusion conv takes the sum of the stage widths.
    """

    depth: int = 12
    embed_dim: int = 768                    # E = the official proj_dim
    num_heads: int = 12
    num_classes: int = 10
    num_layers: int = 2
    mlp_ratio: float = 4.0
    backbone: str = "r50"                   # "r50" or "r18" (torchvision layouts)
    resnet_base_width: int = 64
    scale_token: str = "random"             # "random" (learned) or "channel" (built from all 4 stages)
    channel_token_dim: int = 768            # output width of channel_proj_all; must equal embed_dim
    freeze_backbone: bool = True
    qk_norm: bool = False
    attn_drop: float = 0.0
    mlp_drop: float = 0.0

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"depth must be positive, got {self.depth}")
        if self.backbone not in _RESNETS:
            raise ValueError(f"backbone must be one of {sorted(_RESNETS)}, got {self.backbone!r}")
        if self.num_layers not in _TOKENS:
            raise ValueError(f"num_layers must be 2, 3 or 4, got {self.num_layers}")
        if self.scale_token not in ("random", "channel"):
            raise ValueError(f"scale_token must be 'random' or 'channel', got {self.scale_token!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} not divisible by num_heads {self.num_heads}")
        if self.scale_token == "channel" and self.channel_token_dim != self.embed_dim:
            raise ValueError(f"channel scale token width {self.channel_token_dim} != embed_dim {self.embed_dim}")

    @property
    def stage_widths(self) -> tuple[int, ...]:
        """Output widths of layer1..layer4."""
        expansion = _RESNETS[self.backbone][0].expansion
        return tuple(self.resnet_base_width * expansion * 2 ** i for i in range(4))


class DuoAttention(nn.Module):
    """Multi-head self-attention with timm 0.9's layout: ``qkv`` (bias), optional per-head ``q_norm`` /
    ``k_norm`` (LayerNorm, eps 1e-5), ``proj``; the product runs in SDPA (core ``attention``).

    ``apply_qk_norm`` is False for the scale blocks: the official scale attention owns the norms
    but never calls them. Forward: x (B, N, E) -> (B, N, E), plus ``residual`` when given (fused into
    ``proj``); with ``first_only`` just the first query -> (B, 1, E) (the only row the last block's
    consumer reads). CPU float32 inference runs the projections on oneDNN (core ``fast_inference``).
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, apply_qk_norm: bool, attn_drop: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.apply_qk_norm = apply_qk_norm
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, first_only: bool = False, residual: Tensor | None = None) -> Tensor:
        B, N, E = x.shape
        H, d = self.num_heads, self.head_dim
        fast = fast_inference(x)
        w, b = self.qkv.weight, self.qkv.bias
        if first_only:  # keys/values of every token, the query of token 0 only
            q = linear(x[:, :1], w[:E], b[:E], fast=fast).view(B, 1, H, d).transpose(1, 2)
            k, v = linear(x, w[E:], b[E:], fast=fast).view(B, N, 2, H, d).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = linear(x, w, b, fast=fast).view(B, N, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)
        if self.apply_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        x = attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, -1, E)
        if residual is None:
            return linear(x, self.proj.weight, self.proj.bias, fast=fast)
        return linear_add(x, residual, self.proj.weight, self.proj.bias, fast=fast)


class ScaleBlock(nn.Module):
    """Pre-norm transformer block over the T tokens of each region (official ``ScaleBlock``).

    x (B', T, E) -> (B', T, E), regions folded into the batch; ``first_only`` -> (B', 1, E), token 0.
    """

    def __init__(self, cfg: DuoFormerConfig):
        super().__init__()
        E = cfg.embed_dim
        self.norm1 = nn.LayerNorm(E, eps=1e-6)
        self.attn = DuoAttention(E, cfg.num_heads, cfg.qk_norm, False, cfg.attn_drop)
        self.norm2 = nn.LayerNorm(E, eps=1e-6)
        self.mlp = Mlp(E, int(E * cfg.mlp_ratio), drop=cfg.mlp_drop)

    def forward(self, x: Tensor, first_only: bool = False) -> Tensor:
        x = self.attn(self.norm1(x), first_only, residual=x[:, :1] if first_only else x)
        return mlp_residual(self.mlp, self.norm2(x), x, fast_inference(x))


class PatchBlock(nn.Module):
    """Official ``PatchBlock``: bare attention (no norm, residual or MLP); keeps ``blocks.{i}.attn.*``."""

    def __init__(self, cfg: DuoFormerConfig):
        super().__init__()
        self.attn = DuoAttention(cfg.embed_dim, cfg.num_heads, cfg.qk_norm, True, cfg.attn_drop)

    def forward(self, x: Tensor, first_only: bool = False) -> Tensor:
        return self.attn(x, first_only)


class MultiscaleFormer(nn.Module):
    """Scale attention inside each region, then patch attention across regions, then the head.

    Forward: x (B, 49, T, E) region tokens (scale token first) -> logits (B, num_classes).
    """

    def __init__(self, cfg: DuoFormerConfig):
        super().__init__()
        E, T = cfg.embed_dim, _TOKENS[cfg.num_layers]
        self.scale_blocks = nn.Sequential(*(ScaleBlock(cfg) for _ in range(cfg.depth)))
        self.blocks = nn.Sequential(*(PatchBlock(cfg) for _ in range(cfg.depth)))
        self.pos_embed_for_scale = nn.Parameter(torch.zeros(1, 1, T, E))   # shared by all regions
        self.cls_token = nn.Parameter(torch.zeros(1, 1, E))
        self.pos_embed = nn.Parameter(torch.zeros(1, GRID * GRID + 1, E))
        self.fc_norm = nn.LayerNorm(E, eps=1e-6)  # official parameter; its output is discarded
        self.head = nn.Linear(E, cfg.num_classes)
        trunc_normal_(self.pos_embed_for_scale, std=0.036)
        trunc_normal_(self.pos_embed, std=0.036)
        nn.init.normal_(self.cls_token, std=0.036)
        for m in (*self.scale_blocks.modules(), *self.blocks.modules()):  # timm ViT init
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        B, R, T, E = x.shape
        t = (x + self.pos_embed_for_scale).reshape(B * R, T, E)
        for blk in self.scale_blocks[:-1]:
            t = blk(t)
        # Only each region's scale token (token 0) leaves the scale blocks: it becomes the region's
        # patch token; the last block computes just that row. Likewise only the CLS row of the last
        # patch block reaches the head.
        t = self.scale_blocks[-1](t, first_only=True).view(B, R, E)
        p = torch.cat([self.cls_token.expand(B, -1, -1), t], 1) + self.pos_embed
        for blk in self.blocks[:-1]:
            p = blk(p)
        return self.head(self.blocks[-1](p, first_only=True)[:, 0])  # un-normalised CLS, as officially


class Projection(nn.Module):
    """1x1 conv per tokenised stage, ``proj_heads{k}`` (k = 3 - S + 1 .. 3): (B, C_k, h, w) -> (B, E, h, w)."""

    def __init__(self, cfg: DuoFormerConfig):
        super().__init__()
        self.stages = tuple(range(4 - cfg.num_layers, 4))
        for k in self.stages:
            conv = nn.Conv2d(cfg.stage_widths[k], cfg.embed_dim, 1)
            nn.init.kaiming_normal_(conv.weight)
            nn.init.normal_(conv.bias, std=1e-6)
            setattr(self, f"proj_heads{k}", conv)

    def forward(self, feats: list[Tensor]) -> dict[int, Tensor]:
        return {k: getattr(self, f"proj_heads{k}")(feats[k]) for k in self.stages}


class ConvBatchNorm(nn.Module):
    """conv 3x3 (pad 1, bias) -> BN -> ReLU. (B, Cin, H, W) -> (B, Cout, H, W)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm2d(cout)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.norm(self.conv(x)))


def _region_tokens(f: Tensor, col_major: bool = False) -> Tensor:
    """(B, E, 7m, 7m) -> (B, 49, m*m, E): the m x m block under each layer4 cell, regions row-major.

    Inside a block tokens are row-major, except layer3 (m = 2) whose official table is column-major.
    """
    B, E, H, _ = f.shape
    m = H // GRID
    f = f.view(B, E, GRID, m, GRID, m)
    f = f.permute(0, 2, 4, 5, 3, 1) if col_major else f.permute(0, 2, 4, 3, 5, 1)
    return f.reshape(B, GRID * GRID, m * m, E)


class DuoFormer(nn.Module):
    """DuoFormer classifier.

    Forward: x (B, 3, 224, 224) -> logits (B, num_classes). The input size is fixed by the 7 x 7
    region grid, the hard-coded token layout and the 50-token patch attention.
    """

    def __init__(self, cfg: DuoFormerConfig | None = None, **kwargs: Any):
        super().__init__()
        cfg = cfg or DuoFormerConfig(**kwargs)
        self.cfg = cfg
        block, layers = _RESNETS[cfg.backbone]
        w = cfg.resnet_base_width
        stages, inplanes = [], w
        for i, n in enumerate(layers):
            stages.append(resnet_stage(block, inplanes, w * 2 ** i, n, 1 if i == 0 else 2))
            inplanes = w * 2 ** i * block.expansion
        # torchvision's ResNet without avgpool/fc, as an nn.Sequential (official names 0..7).
        self.resnet_projector = nn.Sequential(nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(w),
                                              nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1), *stages)
        init_resnet_(self.resnet_projector)
        if cfg.freeze_backbone:
            self.resnet_projector.requires_grad_(False)
        if cfg.scale_token == "random":
            self.channel_token = nn.Parameter(torch.zeros(1, 1, 1, cfg.embed_dim))
            nn.init.normal_(self.channel_token, std=0.036)
        else:
            c0, c1 = cfg.stage_widths[:2]
            self.channel_proj1 = nn.Module()
            self.channel_proj1.conv1 = nn.Conv2d(c0, c0, 3, stride=2, padding=1)
            self.channel_proj1.conv2 = nn.Conv2d(c0, c0, 3, stride=2, padding=1)
            self.channel_proj2 = nn.Module()
            self.channel_proj2.conv1 = nn.Conv2d(c1, c1, 3, stride=2, padding=1)
            for conv in (self.channel_proj1.conv1, self.channel_proj1.conv2, self.channel_proj2.conv1):
                nn.init.kaiming_normal_(conv.weight)
                nn.init.normal_(conv.bias, std=1e-6)
            D = cfg.channel_token_dim
            self.channel_proj_all = nn.Module()
            self.channel_proj_all.nConvs = nn.Sequential(ConvBatchNorm(sum(cfg.stage_widths), D),
                                                         *(ConvBatchNorm(D, D) for _ in range(3)))
        self.projection = Projection(cfg)
        self.vision_transformer = MultiscaleFormer(cfg)
        # The CNN runs channels-last (oneDNN's native layout, no activation re-layouts per conv); weights
        # are stored so to avoid per-call copies.
        self.memory_format = torch.channels_last if channels_last_safe(self) else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def features(self, x: Tensor) -> list[Tensor]:
        """Backbone stage maps [layer1 .. layer4] (the authors' rule: children 4..7), (B, C_k, 56/2^k, ...)."""
        feats = []
        for i, module in enumerate(self.resnet_projector):
            x = module(x)
            if i >= 4:
                feats.append(x)
        return feats

    def channel_scale_token(self, feats: list[Tensor]) -> Tensor:
        """Scale token built from the unprojected stage maps: (B, 49, 1, D)."""
        p1, p2 = self.channel_proj1, self.channel_proj2
        f0 = F.max_pool2d(p1.conv2(p1.conv1(feats[0])), 2)  # no activation between, as officially
        f1 = F.max_pool2d(p2.conv1(feats[1]), 2)
        f2 = F.max_pool2d(feats[2], 2)
        t = self.channel_proj_all.nConvs(torch.cat([f0, f1, f2, feats[3]], 1))  # (B, D, 7, 7)
        return t.flatten(2).transpose(1, 2).unsqueeze(2)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (224, 224):
            raise ValueError(f"DuoFormer needs 224 x 224 inputs (a 7 x 7 region grid), got {tuple(x.shape[-2:])}")
        feats = self.features(x.contiguous(memory_format=self.memory_format))
        proj = self.projection(feats)
        B = x.shape[0]
        token = (self.channel_scale_token(feats) if self.cfg.scale_token == "channel"
                 else self.channel_token.expand(B, GRID * GRID, 1, -1))
        # Per region: [scale token, layer4, layer3 (2x2, column-major), layer2 (4x4), layer1 (8x8)].
        parts = [token] + [_region_tokens(proj[k], col_major=(k == 2)) for k in sorted(proj, reverse=True)]
        return self.vision_transformer(torch.cat(parts, 2))


# ---------------------------------------------------------------------------------------------
# official translation

OFFICIAL_RESNET_WIDTH, OFFICIAL_CHANNEL_DIM = 64, 768
_AUTHOR_RENAMES = (("vision_transformer.scaleBlocks.", "vision_transformer.scale_blocks."),
                   ("chann_proj", "channel_proj"))


def config_from_official(kwargs: Mapping[str, Any]) -> DuoFormerConfig:
    """``MyModel_no_extra_params(...)`` arguments (+ ``hardcoded_overrides``) -> :class:`DuoFormerConfig`.

    ``pretrained`` never downloads (load a checkpoint instead); ``init_values`` and ``patch_attn`` are
    ignored as officially; ``backbone="r50_Swav"`` is built as the torchvision ResNet-50 layout the fork
    substitutes. ``proj_dim`` must equal ``embed_dim`` and ``num_patches`` must be 49.
    """
    overrides = dict(kwargs.get("hardcoded_overrides") or {})
    unknown = set(overrides) - {"resnet_base_width", "channel_proj_all_out_dim"}
    if unknown:
        raise ValueError(f"unknown DuoFormer hardcoded_overrides: {sorted(unknown)}")
    if kwargs.get("depth") is None:
        raise ValueError("DuoFormer needs depth")
    E = int(kwargs.get("embed_dim", 768))
    if int(kwargs.get("proj_dim", 768)) != E or int(kwargs.get("num_patches", 49)) != GRID * GRID:
        raise ValueError("DuoFormer needs proj_dim == embed_dim and num_patches == 49")
    backbone = kwargs.get("backbone", "r50")
    drop = float(kwargs.get("proj_drop_rate", 0.0))
    return DuoFormerConfig(
        depth=int(kwargs["depth"]), embed_dim=E, num_heads=int(kwargs.get("num_heads", 12)),
        num_classes=int(kwargs.get("num_classes", 2)), num_layers=int(kwargs.get("num_layers", 4)),
        mlp_ratio=float(kwargs.get("mlp_ratio", 4.0)), backbone="r50" if backbone == "r50_Swav" else backbone,
        resnet_base_width=int(overrides.get("resnet_base_width", OFFICIAL_RESNET_WIDTH)),
        scale_token=kwargs.get("scale_token", "random"),
        channel_token_dim=int(overrides.get("channel_proj_all_out_dim", OFFICIAL_CHANNEL_DIM)),
        freeze_backbone=bool(kwargs.get("freeze_backbone", True)),
        # timm 0.9 positional quirk: attn_drop_rate -> qk_norm, proj_drop_rate -> attention dropout.
        qk_norm=bool(kwargs.get("attn_drop_rate", 0.0)), attn_drop=drop, mlp_drop=drop)


def convert_official(sd: Mapping[str, Tensor], kwargs: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
    """Fork keys are ours; the authors' ``scaleBlocks`` / ``chann_proj*`` are renamed to the fork's."""
    out = {}
    for k, v in sd.items():
        for old, new in _AUTHOR_RENAMES:
            if k.startswith(old):
                k = new + k[len(old):]
        out[k] = v
    return out


def detect_official(sd: Mapping[str, Tensor]) -> dict[str, Any] | None:
    """Infer the constructor arguments from a fork or authors' checkpoint; ``None`` if not DuoFormer.

    Read from shapes: backbone (Bottleneck ``conv3`` -> r50) and its width, ``num_layers`` (tokens in
    ``pos_embed_for_scale``), ``depth``, ``embed_dim``, ``mlp_ratio``, ``num_classes``, the scale-token
    kind and width, and whether q/k norms exist (then ``attn_drop_rate`` is set to 0.1: under timm 0.9
    any non-zero value only switches them on; their width also gives ``num_heads``). Not in the tensors:
    ``num_heads`` without q/k norms (default ``embed_dim // 64``: 12 for 768, 6 for 384, the published
    profiles), ``freeze_backbone`` (default True, training only) and ``proj_drop_rate`` (dropout, default 0).
    """
    sd = convert_official(sd)
    vt = "vision_transformer."
    need = ("resnet_projector.0.weight", vt + "pos_embed_for_scale", vt + "cls_token", vt + "head.weight",
            vt + "scale_blocks.0.attn.qkv.weight", vt + "blocks.0.attn.qkv.weight")
    if not all(k in sd for k in need):
        return None
    T, E = (int(s) for s in sd[vt + "pos_embed_for_scale"].shape[-2:])
    num_layers = {t: s for s, t in _TOKENS.items()}.get(T)
    if num_layers is None:
        return None
    depth = len({k.split(".")[2] for k in sd if k.startswith(vt + "scale_blocks.")})
    kwargs: dict[str, Any] = {
        "depth": depth, "embed_dim": E, "num_heads": max(1, E // 64),
        "num_classes": int(sd[vt + "head.weight"].shape[0]), "num_layers": num_layers, "num_patches": GRID * GRID,
        "mlp_ratio": sd[vt + "scale_blocks.0.mlp.fc1.weight"].shape[0] / E, "proj_dim": E,
        "backbone": "r50" if "resnet_projector.4.0.conv3.weight" in sd else "r18",
        "scale_token": "random" if "channel_token" in sd else "channel", "patch_attn": True,
        "freeze_backbone": True, "pretrained": False,
    }
    q_norm = sd.get(vt + "blocks.0.attn.q_norm.weight")
    if q_norm is not None:  # per-head norms also tell the head count
        kwargs["attn_drop_rate"], kwargs["num_heads"] = 0.1, E // int(q_norm.shape[0])
    overrides = {}
    width = int(sd["resnet_projector.0.weight"].shape[0])
    if width != OFFICIAL_RESNET_WIDTH:
        overrides["resnet_base_width"] = width
    if kwargs["scale_token"] == "channel":
        dim = int(sd["channel_proj_all.nConvs.0.conv.weight"].shape[0])
        if dim != OFFICIAL_CHANNEL_DIM:
            overrides["channel_proj_all_out_dim"] = dim
    if overrides:
        kwargs["hardcoded_overrides"] = overrides
    # the inferred model must have exactly these keys and shapes
    if not builds_layout(lambda: DuoFormer(config_from_official(kwargs)), sd):
        return None
    return kwargs


register_official(OfficialSpec(
    model_id="duoformer", field=FIELD,
    build=lambda kw: DuoFormer(config_from_official(kw)),
    convert=convert_official, detect=detect_official, uninferable=("num_heads", "freeze_backbone", "proj_drop_rate"),
    description="AliSerwat/Refactored-DuoFormer model_wo_extra_params.py::MyModel_no_extra_params "
                "(= xiaoyatang/duoformer_TCGA with renamed attributes)",
))


def _register(name: str, description: str, **cfg: Any) -> None:
    register_model(ModelSpec(name, FIELD, "duoformer", DuoFormer, cfg, description))


# The fork's profiles (src/duoformer/config/*.yaml); 10 classes as in its default config.
_register("duoformer_r50", "DuoFormer default: ResNet-50 (frozen), 2 scales, 12 x 768 / 12 heads", backbone="r50",
          num_layers=2, depth=12, embed_dim=768, num_heads=12, freeze_backbone=True)
_register("duoformer_r18", "DuoFormer lightweight: ResNet-18, 2 scales, 6 x 384 / 6 heads", backbone="r18",
          num_layers=2, depth=6, embed_dim=384, num_heads=6, freeze_backbone=False)
_register("duoformer_r50_s4", "DuoFormer performance: ResNet-50, 4 scales, 12 x 768 / 12 heads", backbone="r50",
          num_layers=4, depth=12, embed_dim=768, num_heads=12, freeze_backbone=False)
_register("duoformer_r50_s4_channel", "DuoFormer: ResNet-50 (frozen), 4 scales, channel scale token, 12 x 768",
          backbone="r50", num_layers=4, depth=12, embed_dim=768, num_heads=12, scale_token="channel",
          freeze_backbone=True)

__all__ = ["DuoFormerConfig", "DuoFormer", "MultiscaleFormer", "ScaleBlock", "PatchBlock", "DuoAttention",
           "Projection", "config_from_official", "convert_official", "detect_official"]
