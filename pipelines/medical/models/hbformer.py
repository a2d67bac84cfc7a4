"""HBFormer (Zheng et al., BIBM 2025): a Swin-T encoder with a CNN decoder of multi-scale fusion blocks.

Official code: lzeeorno/HBFormer ``models/HBFormer.py`` (class ``HBFormer``) whose encoder is timm's
``SwinTransformer`` wrapped by ``models/swin_backbone.py``; the many other classes of that file are
never built. Layout differences, not maths:

* the encoder is built from :class:`~vitsuite.core.layers.SwinBlock` (SDPA window attention with cached
  bias and shift masks) and lives at ``encoder.*`` instead of ``MWAencoder.backbone.*``;
* ``Med_DSPP``'s four "experts" are mixtures of linear convolutions with per-sample weights, so the
  weights are mixed first and one convolution runs per branch (CondConv style) instead of four; the
  expert kernels are stored stacked (``dw_experts (R, E, C, 1, 3, 3)``, ``pw_experts (R, E, C, C)``).

:func:`convert_official` maps the official keys. The encoder's final ``norm`` and ``proj_enc4`` are
kept (they are parameters of the official module) although the forward never uses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import PatchMerging
from torch import Tensor, nn

from vitsuite.core.checkpoint import builds_layout
from vitsuite.core.layers import PatchEmbed, SwinBlock, trunc_normal_
from vitsuite.core.registry import ModelSpec, OfficialSpec, register_model, register_official

FIELD = "medical"
_WINDOW_CANDIDATES = (7, 8, 6, 5, 4)  # the official order of preference


def official_window(img_size: int) -> int:
    """The Swin window the official class picks: the first of 7, 8, 6, 5, 4 dividing ``img_size // 4``."""
    for w in _WINDOW_CANDIDATES:
        if (img_size // 4) % w == 0:
            return w
    raise ValueError(f"no Swin window of {_WINDOW_CANDIDATES} divides img_size/4 = {img_size // 4}")


@dataclass
class HBFormerConfig:
    """Every hyper-parameter of HBFormer.

    ``img_size`` is the construction size: it picks the window (when ``window_size`` is None) and, per
    stage, whether the window is clamped to the stage resolution and the shift dropped (timm's rule).
    The Swin-T widths are hard-coded in the official class (``embed_dim`` 96, ``depths``, ``num_heads``);
    ``feature_size`` must be ``embed_dim / 2`` because decoder 4 concatenates raw stage-3 features.
    """

    img_size: int = 256
    num_classes: int = 9                 # official: 3 for LiTS2017 / ACDC, 9 otherwise
    feature_size: int = 48
    in_chans: int = 3                    # fixed at 3 in the official class
    embed_dim: int = 96
    depths: Sequence[int] = (2, 2, 6, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    window_size: int | None = None       # None: official_window(img_size)
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.2
    dspp_rates: Sequence[int] = (1, 4, 8)
    dspp_experts: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.img_size, (tuple, list)):
            self.img_size = int(self.img_size[0])  # the official class only reads img_size[0]
        self.depths, self.num_heads = tuple(self.depths), tuple(self.num_heads)
        self.dspp_rates = tuple(self.dspp_rates)
        if self.window_size is None:
            self.window_size = official_window(self.img_size)
        if self.img_size % 32:
            raise ValueError(f"img_size must be a multiple of 32 (every stage map even), got {self.img_size}")
        if len(self.depths) != 4 or len(self.num_heads) != 4:
            raise ValueError("HBFormer's decoder needs exactly 4 Swin stages")
        if 2 * self.feature_size != self.embed_dim:
            raise ValueError(f"feature_size ({self.feature_size}) must be embed_dim / 2 ({self.embed_dim / 2})")


class SwinStage(nn.Module):
    """One timm-layout Swin stage: optional patch merging (``downsample``) then ``blocks``.

    Forward: x (B, H, W, C_in) channels-last -> (B, H', W', C) (H' = H/2 after merging).
    """

    def __init__(self, dim_in: int, dim: int, depth: int, heads: int, window: int, resolution: int,
                 mlp_ratio: float, drop_path: Sequence[float]):
        super().__init__()
        self.downsample = PatchMerging(dim_in, dim) if dim_in != dim else nn.Identity()
        # timm's rule, fixed at construction: the window shrinks to a resolution <= window and then
        # no shift is used (SwinBlock's input_resolution does exactly that).
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, window, shift_size=0 if i % 2 == 0 else window // 2, mlp_ratio=mlp_ratio,
                      drop_path=drop_path[i], input_resolution=resolution, persistent_index=False)
            for i in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        B, H, W, C = x.shape
        t = x.reshape(B, H * W, C)
        for blk in self.blocks:
            t = blk(t, (H, W))
        return t.view(B, H, W, C)


class SwinEncoder(nn.Module):
    """timm Swin encoder (``patch_embed``, ``layers``, unused final ``norm``) returning the 4 stage maps.

    Forward: x (B, 3, H, W) -> [c1 (B, E, H/4, W/4), c2 (2E, H/8), c3 (4E, H/16), c4 (8E, H/32)], NCHW
    views of channels-last memory. The patch-embedding output and ``norm`` are not used (as officially).
    """

    def __init__(self, cfg: HBFormerConfig):
        super().__init__()
        E = cfg.embed_dim
        self.patch_embed = PatchEmbed(3, E, 4, norm_layer=nn.LayerNorm)  # after input_proj (3 channels)
        dpr = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths), device="cpu").tolist()  # timm's schedule
        self.layers = nn.ModuleList()
        for s, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
            first = sum(cfg.depths[:s])
            self.layers.append(SwinStage(E * 2 ** max(s - 1, 0), E * 2 ** s, depth, heads, cfg.window_size,
                                         cfg.img_size // 2 ** (s + 2), cfg.mlp_ratio, dpr[first:first + depth]))
        self.norm = nn.LayerNorm(E * 8)  # official parameter, unused by the forward
        self.apply(_init_timm)

    def forward(self, x: Tensor) -> list[Tensor]:
        t, (h, w) = self.patch_embed(x, return_hw=True)
        t = t.view(x.shape[0], h, w, -1)
        feats = []
        for layer in self.layers:
            t = layer(t)
            feats.append(t.permute(0, 3, 1, 2))
        return feats


def _init_timm(m: nn.Module) -> None:
    # timm's Swin initialisation (the official run then loads ImageNet Swin-T weights).
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class LRDBlock(nn.Module):
    """Residual block: conv3x3-BN-LeakyReLU-conv1x1-BN plus a 1x1-conv shortcut, then LeakyReLU.

    x (B, Cin, H, W) -> (B, Cout, H, W). Official ``LRD_Block`` with its default BatchNorm.
    """

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv_skip = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(F.leaky_relu(self.bn1(self.conv1(x)), 0.01)))
        return F.leaky_relu(y + self.conv_skip(x), 0.01)


class MedDSPP(nn.Module):
    """Dynamic dilated depth-wise pyramid (official ``Med_DSPP``), x (B, C, H, W) -> (B, C, H, W).

    Per sample, gates from the pooled input give branch weights ``a_b (B, R)`` and expert weights
    ``a_e (B, E)``; branch j (dilation r_j) is ``a_b[j] * SiLU(BN_j(PW_j(DW_j(x))))`` with
    ``DW_j = sum_i a_e[i] DW_{j,i}`` and ``PW_j = sum_i a_e[i] PW_{j,i}`` (one expert weighting for all).
    The branches are concatenated, re-weighted by ECA (1-D conv over pooled channels) and fused by
    a 1x1 conv + BN. Convolutions are linear, so mixing the kernels first is the same mixture.
    """

    def __init__(self, channels: int, rates: Sequence[int] = (1, 4, 8), num_experts: int = 4):
        super().__init__()
        C, R = channels, len(rates)
        self.rates = tuple(rates)
        # Index 0 is the official AdaptiveAvgPool2d (pooled once here and shared), 4 the softmax.
        self.branch_attention = nn.Sequential(nn.Identity(), nn.Conv2d(C, C // 8, 1), nn.ReLU(inplace=True),
                                              nn.Conv2d(C // 8, R, 1))
        self.expert_attention = nn.Sequential(nn.Identity(), nn.Conv2d(C, C // 8, 1), nn.ReLU(inplace=True),
                                              nn.Conv2d(C // 8, num_experts, 1))
        self.dw_experts = nn.Parameter(torch.empty(R, num_experts, C, 1, 3, 3))
        self.pw_experts = nn.Parameter(torch.empty(R, num_experts, C, C))
        for w, fan_in in ((self.dw_experts, 9), (self.pw_experts, C)):  # nn.Conv2d's default init
            nn.init.uniform_(w, -fan_in ** -0.5, fan_in ** -0.5)
        self.bns = nn.ModuleList(nn.BatchNorm2d(C) for _ in rates)
        self.eca = nn.Module()
        self.eca.conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.fuse = nn.Conv2d(R * C, C, 1, bias=False)
        self.fuse_bn = nn.BatchNorm2d(C)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        pooled = x.mean((2, 3), keepdim=True)
        a_b = self.branch_attention(pooled).softmax(1).flatten(1)   # (B, R)
        a_e = self.expert_attention(pooled).softmax(1).flatten(1)   # (B, E)
        pw = torch.einsum("be,reoc->broc", a_e, self.pw_experts)               # (B, R, C, C)
        tracing = torch.jit.is_tracing()  # ONNX needs constant conv kernels: mix the expert outputs instead
        if not tracing:  # per-sample kernels: one grouped conv over the whole batch
            dw = torch.einsum("be,reck->brck", a_e, self.dw_experts.flatten(3))  # (B, R, C, 9)
            xg = x.reshape(1, B * C, H, W)
        feats = []
        for j, r in enumerate(self.rates):
            if tracing:
                d = F.conv2d(x, self.dw_experts[j].transpose(0, 1).reshape(-1, 1, 3, 3), padding=r, dilation=r,
                             groups=C)  # (B, C*E, H, W), channel = c*E + e
                d = torch.einsum("bcehw,be->bchw", d.view(B, C, -1, H, W), a_e)
            else:
                d = F.conv2d(xg, dw[:, j].reshape(B * C, 1, 3, 3), padding=r, dilation=r, groups=B * C)
            # Point-wise mixture as a token matmul (B, HW, C) @ (B, C, C); channels-last result.
            p = torch.bmm(d.view(B, C, H, W).permute(0, 2, 3, 1).reshape(B, H * W, C), pw[:, j].transpose(1, 2))
            feats.append(F.silu(self.bns[j](p.view(B, H, W, C).permute(0, 3, 1, 2))))
        f = torch.cat(feats, 1)                                      # (B, R*C, H, W), before a_b
        gate = a_b.repeat_interleave(C, 1)                           # (B, R*C)
        # ECA on the pooled branch-weighted concatenation, a 1-D conv sliding over channels.
        eca = torch.sigmoid(self.eca.conv((f.mean((2, 3)) * gate)[:, None]))[:, 0]
        # Both channel gates fold into per-sample fuse weights: fuse(g * f) = (W * g) f.
        wf = self.fuse.weight.flatten(1)[None] * (gate * eca)[:, None]  # (B, C, R*C)
        y = torch.bmm(f.permute(0, 2, 3, 1).reshape(B, H * W, -1), wf.transpose(1, 2))
        return self.fuse_bn(y.view(B, H, W, C).permute(0, 3, 1, 2))


class MFFDecoder(nn.Module):
    """Official ``MFF_Decoder``: 2x transposed conv of the deep input, concat [deep, skip], LRD block,
    Med_DSPP, then BN(ReLU(.)). deep (B, Cin, h, w), skip (B, Cin - Cout, 2h, 2w) -> (B, Cout, 2h, 2w)."""

    def __init__(self, cin: int, cout: int, rates: Sequence[int], experts: int):
        super().__init__()
        self.transp_conv = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.LRD_block = LRDBlock(cin, cout)
        self.Med_DSPP = MedDSPP(cout, rates, experts)
        self.BN = nn.BatchNorm2d(cout)

    def forward(self, deep: Tensor, skip: Tensor) -> Tensor:
        x = self.LRD_block(torch.cat([self.transp_conv(deep), skip], 1))
        return self.BN(torch.relu(self.Med_DSPP(x)))


def _up2(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class HBFormer(nn.Module):
    """HBFormer segmentation network.

    Forward: x (B, 3, H, W) -> logits (B, num_classes, H, W). H, W must be multiples of 32; at
    ``cfg.img_size`` the result equals the official model's (which accepts only that size). Other sizes
    run with the construction-time stage windows and shifts, padding maps to window multiples.
    """

    def __init__(self, cfg: HBFormerConfig | None = None, **kwargs: Any):
        super().__init__()
        cfg = cfg or HBFormerConfig(**kwargs)
        self.cfg = cfg
        E, Fs = cfg.embed_dim, cfg.feature_size
        self.input_proj = nn.Conv2d(cfg.in_chans, 3, 1)
        self.encoder = SwinEncoder(cfg)
        self.proj_enc1 = nn.Conv2d(E, Fs, 1)
        self.proj_enc2 = nn.Conv2d(2 * E, 2 * Fs, 1)
        self.proj_enc3 = nn.Conv2d(4 * E, 4 * Fs, 1)
        self.proj_enc4 = nn.Conv2d(8 * E, 8 * Fs, 1)  # official parameter, unused by the forward
        args = (cfg.dspp_rates, cfg.dspp_experts)
        self.MFF_decoder4 = MFFDecoder(16 * Fs, 8 * Fs, *args)
        self.MFF_decoder3 = MFFDecoder(8 * Fs, 4 * Fs, *args)
        self.MFF_decoder2 = MFFDecoder(4 * Fs, 2 * Fs, *args)
        self.MFF_decoder1 = MFFDecoder(2 * Fs, Fs, *args)
        self.out = nn.Sequential(nn.ConvTranspose2d(Fs, Fs, 4, stride=2, padding=1, bias=False),
                                 nn.Conv2d(Fs, cfg.num_classes, 1))
        # The decoder runs channels-last (oneDNN's faster layout for its convolutions; the Swin maps and
        # the token matmuls are channels-last already); weights are stored so, avoiding per-call copies.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"HBFormer needs H and W multiples of 32, got {tuple(x.shape[-2:])}")
        c1, c2, c3, c4 = self.encoder(self.input_proj(x.contiguous(memory_format=torch.channels_last)))
        d = self.MFF_decoder4(c4, c3)  # raw stage-3 features are the first skip
        d = self.MFF_decoder3(d, _up2(self.proj_enc3(c3)))
        d = self.MFF_decoder2(d, _up2(self.proj_enc2(c2)))
        d = self.MFF_decoder1(d, _up2(self.proj_enc1(c1)))
        return self.out(d).contiguous()


# ---------------------------------------------------------------------------------------------
# official translation

_NUM_CLASSES = {"LiTS2017": 3, "ACDC": 3, "Synapse": 9}  # anything else: 9
_SWIN_T = {"swin_embed_dim": 96, "swin_depths": [2, 2, 6, 2], "swin_num_heads": [3, 6, 12, 24]}


def config_from_official(kwargs: Mapping[str, Any]) -> HBFormerConfig:
    """The authors' ``HBFormer(args, img_size, feature_size, ...)`` arguments -> :class:`HBFormerConfig`.

    ``args`` is a dict (only ``dataset`` matters; ``swin_pretrained_path`` is ignored: nothing is
    downloaded or read, load a checkpoint instead). ``num_heads``, ``norm_name`` and ``dropout_rate`` are
    ignored as officially. ``hardcoded_overrides`` may replace the Swin-T constants. ``num_classes`` is
    accepted as an extension for class counts the official ``dataset`` switch cannot express.
    """
    overrides = {**_SWIN_T, **(kwargs.get("hardcoded_overrides") or {})}
    unknown = set(overrides) - set(_SWIN_T)
    if unknown:
        raise ValueError(f"unknown HBFormer hardcoded_overrides: {sorted(unknown)}")
    args = kwargs.get("args") or {}
    num_classes = kwargs.get("num_classes", _NUM_CLASSES.get(args.get("dataset"), 9))
    img = kwargs.get("img_size", (512, 512))
    return HBFormerConfig(img_size=img, num_classes=int(num_classes), feature_size=int(kwargs.get("feature_size", 48)),
                          embed_dim=int(overrides["swin_embed_dim"]), depths=overrides["swin_depths"],
                          num_heads=overrides["swin_num_heads"])


_ENC = "MWAencoder.backbone."


def convert_official(sd: Mapping[str, Tensor], kwargs: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
    """Official keys -> ours: ``MWAencoder.backbone.`` -> ``encoder.``; ``Med_DSPP.{dw,pw}_experts.{j}.{i}.weight``
    stacked into ``(R, E, ...)`` tensors; ``eca.conv`` kept; timm's non-persistent ``relative_position_index``
    / ``attn_mask`` dropped if a checkpoint carries them. Keys already in our layout pass through."""
    out: dict[str, Tensor] = {}
    experts: dict[str, dict[tuple[int, int], Tensor]] = {}
    for k, v in sd.items():
        if k.endswith(("relative_position_index", "attn_mask")):
            continue
        if k.startswith(_ENC):
            k = "encoder." + k[len(_ENC):]
        parts = k.split(".")
        if len(parts) == 6 and parts[1] == "Med_DSPP" and parts[2] in ("dw_experts", "pw_experts"):
            experts.setdefault(".".join(parts[:3]), {})[(int(parts[3]), int(parts[4]))] = v
            continue
        out[k] = v
    for name, parts in experts.items():
        R, E = (max(idx) + 1 for idx in zip(*parts))
        w = torch.stack([torch.stack([parts[(j, i)] for i in range(E)]) for j in range(R)])
        out[name] = w[..., 0, 0] if name.endswith("pw_experts") else w  # 1x1 conv weights -> matrices
    return out


def detect_official(sd: Mapping[str, Tensor]) -> dict[str, Any] | None:
    """Infer the constructor arguments from an official checkpoint; ``None`` if it is not HBFormer.

    Read from shapes: Swin width/depths/heads (patch embedding, block counts, bias-table columns),
    ``feature_size`` (``proj_enc1``), the class count (``out.1``; 3 -> ``dataset="LiTS2017"``, 9 ->
    ``"Synapse"``), and the window from the stage-0 bias table. ``img_size`` is exact when a stage's
    table shows a window clamped to its resolution; otherwise it cannot be told from the weights
    (256 and 512 give identical tensors) and defaults to ``32 * window`` -- 224 for window 7 and 256
    for window 8, the repository configs. Pass ``img_size=`` when the model was trained larger.
    """
    need = ("input_proj.weight", _ENC + "patch_embed.proj.weight", "proj_enc1.weight", "out.1.weight",
            "MFF_decoder4.Med_DSPP.fuse.weight", _ENC + "layers.0.blocks.0.attn.relative_position_bias_table")
    if not all(k in sd for k in need):
        return None
    E = int(sd[_ENC + "patch_embed.proj.weight"].shape[0])
    depths, heads, windows = [], [], []
    for s in range(4):
        blocks = {int(k.split(".")[5]) for k in sd if k.startswith(f"{_ENC}layers.{s}.blocks.")}
        if not blocks:
            return None
        table = sd[f"{_ENC}layers.{s}.blocks.0.attn.relative_position_bias_table"]
        depths.append(len(blocks))
        heads.append(int(table.shape[1]))
        windows.append((round(table.shape[0] ** 0.5) + 1) // 2)
    window = windows[0]
    img = 32 * window
    for s, w in enumerate(windows):
        if w < window:  # clamped: this stage's resolution equals its window
            img = w * 4 * 2 ** s
            break
    K = int(sd["out.1.weight"].shape[0])
    kwargs: dict[str, Any] = {"args": {"dataset": "Synapse" if K == 9 else "LiTS2017", "swin_pretrained_path": None},
                              "img_size": [img, img], "feature_size": int(sd["proj_enc1.weight"].shape[0])}
    if K not in (3, 9):
        kwargs["num_classes"] = K
    swin = {"swin_embed_dim": E, "swin_depths": depths, "swin_num_heads": heads}
    if swin != _SWIN_T:
        kwargs["hardcoded_overrides"] = swin
    # the inferred model must have exactly these keys and shapes
    if not builds_layout(lambda: HBFormer(config_from_official(kwargs)), convert_official(sd)):
        return None
    return kwargs


register_official(OfficialSpec(
    model_id="hbformer", field=FIELD,
    build=lambda kw: HBFormer(config_from_official(kw)),
    convert=convert_official, detect=detect_official, uninferable=("img_size",),
    description="lzeeorno/HBFormer models/HBFormer.py::HBFormer (timm Swin-T encoder)",
))


def _register(name: str, description: str, **cfg: Any) -> None:
    register_model(ModelSpec(name, FIELD, "hbformer", HBFormer, cfg, description))


# Repository configs (configs/config_setting_*.py); Swin-T encoder, feature_size 48.
_register("hbformer_synapse", "HBFormer, Synapse multi-organ CT, 256 x 256 (window 8, 9 classes)",
          img_size=256, num_classes=9)
_register("hbformer_synapse_224", "HBFormer, Synapse at 224 x 224 (window 7, 9 classes)", img_size=224, num_classes=9)
_register("hbformer_lits2017", "HBFormer, LiTS2017 liver/tumour, 256 x 256 (window 8, 3 classes)",
          img_size=256, num_classes=3)
_register("hbformer_acdc", "HBFormer, ACDC cardiac MRI, 224 x 224 (window 7, 3 classes)", img_size=224, num_classes=3)

__all__ = ["HBFormerConfig", "HBFormer", "SwinEncoder", "SwinStage", "LRDBlock", "MedDSPP", "MFFDecoder",
           "official_window", "config_from_official", "convert_official", "detect_official"]
