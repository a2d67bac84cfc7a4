"""ParaTransCNN (Sun et al., 2024): a ViT pyramid and a ResNet-34 encoder in parallel, SE fusion, CNN decoder.

Official code: HongkunSun/ParaTransCNN ``model/ParaTransCNN.py`` (+ ``model/transformer.py``). Layout
differences only: the transformer stages are :class:`~vitsuite.core.layers.ViTBlock` stacks (SDPA
attention) instead of the authors' ``Residual(PreNormDrop(...))`` chains; :func:`convert_official`
renames those keys, every other official name (``firstconv``, ``encoder1..4``, ``SE_k``, ``decoderk``,
``up3_1``...) is kept. The CNN branch is torchvision's ResNet-34 ``BasicBlock`` layout (no max-pool).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from vitsuite.core.checkpoint import builds_layout
from vitsuite.core.layers import ViTBlock
from vitsuite.core.layers.fast import inference_memory, use_winograd, winograd_conv3x3
from vitsuite.core.layers.resnet import channels_last_safe, init_resnet_, resnet_stage
from vitsuite.core.registry import ModelSpec, OfficialSpec, register_model, register_official

FIELD = "medical"


@dataclass
class ParaTransCNNConfig:
    """Every hyper-parameter of ParaTransCNN (names as in the authors' constructor).

    ``resnet_base_width`` (64 in the official class, where it is hard-coded) sets the ResNet widths
    w/2w/4w/8w and the literals 2w/4w/8w (128/256/512) of the SE, decoder and up-sampling widths.
    """

    n_channels: int = 3                 # input channels of the transformer branch; the ResNet stem is 3-channel
    num_classes: int = 9
    heads: int = 8
    dim: int = 320                      # D: transformer widths D, 2D, 4D; MLP widths 2D, 4D, 8D
    depth: Sequence[int] = (3, 3, 3)
    patch_size: int = 2                 # must be 2: the ViT and CNN maps have to align for concatenation
    resnet_base_width: int = 64
    resnet_layers: Sequence[int] = (3, 4, 6, 3)  # ResNet-34
    se_reduction: int = 16
    drop_rate: float = 0.1              # hard-coded in the authors' TransformerModel
    attn_drop_rate: float = 0.1

    def __post_init__(self) -> None:
        self.depth = tuple(int(d) for d in self.depth)
        self.resnet_layers = tuple(int(n) for n in self.resnet_layers)
        if len(self.depth) != 3 or len(self.resnet_layers) != 4:
            raise ValueError("depth needs 3 entries (ViT stages) and resnet_layers 4 (ResNet stages)")
        if self.patch_size != 2:
            raise ValueError(f"patch_size must be 2 (got {self.patch_size}): the ViT maps must match the ResNet maps")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} not divisible by heads {self.heads}")


class SEBlock(nn.Module):
    """Squeeze-and-excitation with bias-free Linears (official ``SE_k.fc.{0,2}``).

    x (B, C, H, W) -> x * sigmoid(fc(mean_hw(x))), same shape.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(channels // reduction, channels, bias=False), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.fc(x.mean((2, 3)))[:, :, None, None]


class DecoderBottleneckLayer(nn.Module):
    """Two (conv 3x3 with bias -> BN -> ReLU) at constant width. x (B, C, H, W) -> (B, C, H, W).

    On CPU inference with large maps the convolutions run as :func:`winograd_conv3x3`: these layers
    hold ~60 % of the model's arithmetic at 1344-1792 channels.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm3 = nn.BatchNorm2d(channels)

    @staticmethod
    def _conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
        return winograd_conv3x3(x, conv.weight, conv.bias) if use_winograd(x) else conv(x)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu_(self.norm1(self._conv(self.conv1, x)))
        return torch.relu_(self.norm3(self._conv(self.conv3, x)))


class TransformerStage(nn.ModuleList):
    """``depth`` pre-norm ViT blocks on a feature map.

    The authors apply an extra dropout to the attention branch (``PreNormDrop``) on top of the
    attention's own output dropout; ``ls1`` (an identity slot in :class:`ViTBlock`) carries it.

    Forward: map (B, D, h, w) -> map (B, D, h, w); tokens are row-major (h before w).
    """

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float, drop: float, attn_drop: float):
        blocks = []
        for _ in range(depth):
            blk = ViTBlock(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=False, drop=drop, attn_drop=attn_drop)
            blk.ls1 = nn.Dropout(drop)
            blocks.append(blk)
        super().__init__(blocks)

    def forward(self, x: Tensor) -> Tensor:
        B, D, h, w = x.shape
        # (B, h, w, D) tokens; a view (no copy) when x is channels-last.
        t = x.permute(0, 2, 3, 1).reshape(B, h * w, D)
        for blk in self:
            t = blk(t)
        return t.view(B, h, w, D).permute(0, 3, 1, 2)  # channels-last view of the token grid


class ParaTransCNN(nn.Module):
    """ParaTransCNN segmentation network.

    Forward: x (B, 3, H, W) with H, W multiples of 16 -> logits (B, num_classes, H, W). Internally
    the ViT pyramid runs at H/4, H/8, H/16 (widths D, 2D, 4D) and the ResNet (stem stride 2, no
    max-pool) gives e2 (2w, H/4), e3 (4w, H/8), e4 (8w, H/16); each pair is concatenated (ViT first),
    SE-weighted and decoded coarse to fine.
    """

    def __init__(self, cfg: ParaTransCNNConfig | None = None, **kwargs: Any):
        super().__init__()
        cfg = cfg or ParaTransCNNConfig(**kwargs)
        self.cfg = cfg
        D, w, r = cfg.dim, cfg.resnet_base_width, cfg.se_reduction
        self.patch_embed_1 = nn.Conv2d(cfg.n_channels, D, 2 * cfg.patch_size, stride=2 * cfg.patch_size)
        self.patch_embed_2 = nn.Conv2d(D, 2 * D, cfg.patch_size, stride=cfg.patch_size)
        self.patch_embed_3 = nn.Conv2d(2 * D, 4 * D, cfg.patch_size, stride=cfg.patch_size)
        self.vit_1, self.vit_2, self.vit_3 = (
            TransformerStage(D * m, d, cfg.heads, 2.0, cfg.drop_rate, cfg.attn_drop_rate)
            for m, d in zip((1, 2, 4), cfg.depth))
        # ResNet-34 without max-pool (official names: firstconv/firstbn/encoderN = conv1/bn1/layerN).
        self.firstconv = nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False)
        self.firstbn = nn.BatchNorm2d(w)
        self.encoder1 = resnet_stage(BasicBlock, w, w, cfg.resnet_layers[0], 1)
        self.encoder2 = resnet_stage(BasicBlock, w, 2 * w, cfg.resnet_layers[1], 2)
        self.encoder3 = resnet_stage(BasicBlock, 2 * w, 4 * w, cfg.resnet_layers[2], 2)
        self.encoder4 = resnet_stage(BasicBlock, 4 * w, 8 * w, cfg.resnet_layers[3], 2)
        c1, c2, c3 = 4 * D + 8 * w, 2 * D + 4 * w, D + 2 * w  # fused widths at H/16, H/8, H/4
        self.SE_1, self.SE_2, self.SE_3 = SEBlock(c1, r), SEBlock(c2, r), SEBlock(c3, r)
        self.decoder1 = DecoderBottleneckLayer(c1)
        self.decoder2 = DecoderBottleneckLayer(2 * c2)
        self.decoder3 = DecoderBottleneckLayer(c3 + c2)
        self.up3_1 = nn.ConvTranspose2d(c1, c2, 2, stride=2)
        self.up2_1 = nn.ConvTranspose2d(2 * c2, c2, 2, stride=2)
        self.up1_1 = nn.ConvTranspose2d(c3 + c2, D, 4, stride=4)
        self.out = nn.Conv2d(D, cfg.num_classes, 1)
        for m in (self.firstconv, self.firstbn, self.encoder1, self.encoder2, self.encoder3, self.encoder4):
            init_resnet_(m)
        # Convolutions run channels-last (oneDNN's fast layout; the ViT token grids are channels-last
        # views already). Weights are stored that way too, so no per-call weight re-layout copies;
        # load_state_dict copies into these strides.
        self.memory_format = torch.channels_last if channels_last_safe(self) else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def forward(self, x: Tensor) -> Tensor:
        with inference_memory(x):  # large temporaries reuse freed blocks (no page faults) on the fast path
            return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        if H % 16 or W % 16 or x.shape[1] != 3:
            raise ValueError(f"ParaTransCNN needs a (B, 3, H, W) input with H, W multiples of 16, got {tuple(x.shape)}")
        x = x.contiguous(memory_format=self.memory_format)
        e = torch.relu_(self.firstbn(self.firstconv(x)))
        e2 = self.encoder2(self.encoder1(e))
        e3 = self.encoder3(e2)
        e4 = self.encoder4(e3)
        t1 = self.vit_1(self.patch_embed_1(x))
        t2 = self.vit_2(self.patch_embed_2(t1))
        t3 = self.vit_3(self.patch_embed_3(t2))
        d = self.up3_1(self.decoder1(self.SE_1(torch.cat([t3, e4], 1))))
        d = self.up2_1(self.decoder2(torch.cat([self.SE_2(torch.cat([t2, e3], 1)), d], 1)))
        d = self.up1_1(self.decoder3(torch.cat([self.SE_3(torch.cat([t1, e2], 1)), d], 1)))
        return self.out(d).contiguous()


# ---------------------------------------------------------------------------------------------
# official translation

OFFICIAL_RESNET_WIDTH = 64
_OFFICIAL_ARGS = ("n_channels", "num_classes", "heads", "dim", "depth", "patch_size")


def config_from_official(kwargs: Mapping[str, Any]) -> ParaTransCNNConfig:
    """The authors' constructor arguments (+ ``hardcoded_overrides``) -> :class:`ParaTransCNNConfig`."""
    overrides = dict(kwargs.get("hardcoded_overrides") or {})
    unknown = set(overrides) - {"resnet_base_width"}
    if unknown:
        raise ValueError(f"unknown ParaTransCNN hardcoded_overrides: {sorted(unknown)}")
    cfg = {k: kwargs[k] for k in _OFFICIAL_ARGS if k in kwargs}
    return ParaTransCNNConfig(**cfg, resnet_base_width=int(overrides.get("resnet_base_width", OFFICIAL_RESNET_WIDTH)))


_VIT_KEY = re.compile(r"^(vit_[123])\.net\.(\d+)\.fn\.(.+)$")
_VIT_RENAMES = (  # (sub-layer parity, official suffix, ours)
    (0, "norm.", "norm1."), (0, "fn.qkv.", "attn.qkv."), (0, "fn.proj.", "attn.proj."),
    (1, "norm.", "norm2."), (1, "fn.net.0.", "mlp.fc1."), (1, "fn.net.3.", "mlp.fc2."),
)


def convert_official(sd: Mapping[str, Tensor], kwargs: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
    """Official keys -> ours: ``vit_k.net.{2i}.fn.{norm,fn.qkv,fn.proj}`` -> ``vit_k.{i}.{norm1,attn.qkv,attn.proj}``
    and ``vit_k.net.{2i+1}.fn.{norm,fn.net.0,fn.net.3}`` -> ``vit_k.{i}.{norm2,mlp.fc1,mlp.fc2}``; the rest is
    unchanged (keys already in our layout pass through)."""
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        m = _VIT_KEY.match(k)
        if m:
            stage, j, rest = m.group(1), int(m.group(2)), m.group(3)
            for parity, old, new in _VIT_RENAMES:
                if j % 2 == parity and rest.startswith(old):
                    k = f"{stage}.{j // 2}.{new}{rest[len(old):]}"
                    break
        out[k] = v
    return out


def detect_official(sd: Mapping[str, Tensor]) -> dict[str, Any] | None:
    """Infer the constructor arguments from an official checkpoint; ``None`` if it is not ParaTransCNN.

    Read from shapes: ``n_channels``, ``dim``, ``patch_size`` (``patch_embed_1``), ``depth`` (blocks per
    ``vit_k``), ``num_classes`` (``out``), the ResNet width (``firstconv``; emitted as
    ``hardcoded_overrides`` when it is not the official 64). ``heads`` cannot be read from shapes and
    defaults to 8, the value of the authors' scripts.
    """
    need = ("patch_embed_1.weight", "firstconv.weight", "SE_1.fc.0.weight", "up1_1.weight", "out.weight",
            "vit_1.net.0.fn.fn.qkv.weight")
    if not all(k in sd for k in need):
        return None
    pe = sd["patch_embed_1.weight"]
    dim, n_channels, k = (int(s) for s in pe.shape[:3])
    depth = []
    for stage in ("vit_1", "vit_2", "vit_3"):
        ids = {int(m.group(2)) for key in sd if (m := _VIT_KEY.match(key)) and m.group(1) == stage}
        depth.append(len(ids) // 2)
    kwargs: dict[str, Any] = {"n_channels": n_channels, "num_classes": int(sd["out.weight"].shape[0]), "heads": 8,
                              "dim": dim, "depth": depth, "patch_size": k // 2}
    width = int(sd["firstconv.weight"].shape[0])
    if width != OFFICIAL_RESNET_WIDTH:
        kwargs["hardcoded_overrides"] = {"resnet_base_width": width}
    # the inferred model must have exactly these keys and shapes
    if not builds_layout(lambda: ParaTransCNN(config_from_official(kwargs)), convert_official(sd)):
        return None
    return kwargs


register_official(OfficialSpec(
    model_id="paratranscnn", field=FIELD,
    build=lambda kw: ParaTransCNN(config_from_official(kw)),
    convert=convert_official, detect=detect_official, uninferable=("heads",),
    description="HongkunSun/ParaTransCNN model/ParaTransCNN.py::ParaTransCNN",
))


def _register(name: str, description: str, **cfg: Any) -> None:
    register_model(ModelSpec(name, FIELD, "paratranscnn", ParaTransCNN, cfg, description))


# Paper configurations (train.py): dim 320, heads 8, depth (3, 3, 3), input 224 x 224.
_register("paratranscnn_synapse", "ParaTransCNN, Synapse multi-organ CT (9 classes)", num_classes=9)
_register("paratranscnn_avt", "ParaTransCNN, AVT aortic vessel tree (2 classes)", num_classes=2)

__all__ = ["ParaTransCNNConfig", "ParaTransCNN", "SEBlock", "DecoderBottleneckLayer", "TransformerStage",
           "config_from_official", "convert_official", "detect_official"]
