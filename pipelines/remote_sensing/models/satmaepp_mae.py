"""SatMAE++ multi-scale masked autoencoders (pretraining): grouped bands and RGB.

Official code: techmn/satmae_pp ``models_mae_group_channels.py`` (``MaskedAutoencoderGroupChannelViT``,
model id ``satmaepp_mae``) and ``models_mae.py`` (``MaskedAutoencoderViT``, the RGB model). Both are an
MAE whose full prediction is also unpatchified and upsampled by convolutional blocks (2x and 4x for the
grouped model, 2x for RGB) and compared (L1) with the image at those scales. The official key names
are kept.

``forward(imgs, *imgs_up, mask_ratio=0.75, noise=None) -> (loss, ms_loss, pred, mask)``; the training
engine optimises ``0.6 * loss + 0.4 * ms_loss``. ``noise`` (uniform ``[0, 1)``, one value per maskable
token) makes the masking reproducible; ``None`` draws it with ``torch.rand``, as officially.

Authors' behaviour kept (``shared/reference/satmaepp_mae/ARCH.md``): the grouped ``pred`` lists bands in
group-concatenated order (0,1,2,6,3,4,5,7,8,9 for the paper's groups) but the official loss compares it
row by row with the band-ordered target. That is a bug inherited from SatMAE; ``official_loss_order=True``
(default, what the released weights were trained with) reproduces it, ``False`` compares every
prediction with its own band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from vitsuite.core.layers import (
    GroupChannelPatchEmbed,
    PatchEmbed,
    ViTBlock,
    sincos_pos_embed_1d,
    sincos_pos_embed_2d,
)
from vitsuite.core.registry import ModelSpec, OfficialSpec, register_model, register_official

from .channelvit import official_norm_eps
from .satmaepp import PAPER_GROUPS, Groups, as_groups, copy_table_, group_pos_embed, groups_from_sizes, layout_fits

FIELD = "remote_sensing"


@dataclass
class SatMAEPPMAEConfig:
    """Every hyper-parameter of the SatMAE++ MAEs (official constructor names).

    ``channel_groups=None`` is the RGB model of ``models_mae.py`` (one patch embedding, full-width
    tables, one 2x upsampling block); otherwise the grouped-band model (two blocks, 2x and 4x).
    """

    img_size: int = 96
    patch_size: int = 8
    in_chans: int = 10
    channel_groups: Groups | None = PAPER_GROUPS
    spatial_mask: bool = False            # True: a patch position is masked in all groups at once
    channel_embed: int = 256              # group-identity width in the encoder (grouped model)
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    decoder_channel_embed: int = 128      # group-identity width in the decoder (grouped model)
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    norm_pix_loss: bool = False           # normalise every target patch (mean / unbiased std)
    proj_ratio: int = 4                   # upsampler width = in_chans * proj_ratio
    official_loss_order: bool = True      # reproduce the band-order mismatch of the official loss

    def __post_init__(self) -> None:
        self.channel_groups = as_groups(self.channel_groups)
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.channel_groups is not None and sorted(c for g in self.channel_groups for c in g) != list(
                range(self.in_chans)):
            raise ValueError(f"channel_groups {self.channel_groups} must cover bands 0..{self.in_chans - 1} once each")

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size


# ---------------------------------------------------------------------------------------------
# pieces

def random_masking(x: Tensor, mask_ratio: float, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """MAE per-sample random masking by argsort of ``noise``.

    ``x (B, N, D)``; ``noise (B, N)`` (default ``torch.rand``): the ``int(N * (1 - mask_ratio))`` tokens with
    the smallest noise are kept. Returns the kept tokens ``(B, K, D)`` in noise order, ``mask (B, N)``
    (float32, 1 = removed, original order) and ``ids_restore (B, N)`` (the inverse permutation).
    """
    B, N, D = x.shape
    keep = int(N * (1 - mask_ratio))  # Python float arithmetic, as officially (0.9 keeps 9 of 100)
    if noise is None:
        noise = torch.rand(B, N, device=x.device)
    elif noise.shape != (B, N):
        raise ValueError(f"noise must be {(B, N)}, got {tuple(noise.shape)}")
    ids_shuffle = torch.argsort(noise.to(x.device), dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    kept = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, D))
    return kept, (ids_restore >= keep).float(), ids_restore


def unshuffle_with_mask_tokens(vis: Tensor, mask_token: Tensor, ids_restore: Tensor) -> Tensor:
    """Append mask tokens to the visible ``vis (B, K, E)`` and undo the shuffle -> ``(B, N, E)``.

    ``N = ids_restore.shape[1]``; ``mask_token (1, 1, E)``.
    """
    B, K, E = vis.shape
    full = torch.cat((vis, mask_token.expand(B, ids_restore.shape[1] - K, E)), dim=1)
    return torch.gather(full, 1, ids_restore[..., None].expand(-1, -1, E))


class ResidualBlock(nn.Module):
    """``x + 0.5 * conv2(relu(conv1(x)))`` with 3x3 convs; ``(B, C, H, W)`` -> same."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x))) * 0.5


class UpsampleBlock(nn.Module):
    """SatMAE++ 2x upsampling block: ``(B, Cm, H, W)`` -> features ``(B, Cm, 2H, 2W)``, output ``(B, Cout, 2H, 2W)``.

    Transposed conv (k4 s2 p1) -> channels-first LayerNorm -> leaky ReLU -> residual block -> LayerNorm
    = features; a 3x3 ``proj_out`` conv of the features = output.
    """

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.up_conv = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)
        self.up_norm = LayerNorm2d(channels, eps=1e-6)
        self.res_block = ResidualBlock(channels)
        self.res_norm = LayerNorm2d(channels, eps=1e-6)
        self.proj_out = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.res_norm(self.res_block(F.leaky_relu(self.up_norm(self.up_conv(x)))))
        return x, self.proj_out(x)


# ---------------------------------------------------------------------------------------------
# models

class _MultiScaleMAE(nn.Module):
    """What both SatMAE++ MAEs share: transformers, upsampler, masking and the two losses.

    Subclasses build ``patch_embed``, the position tables and ``decoder_pred`` and define
    :meth:`forward_encoder`, :meth:`forward_decoder`, :meth:`pred_to_image` and :meth:`forward_loss`.
    """

    def __init__(self, cfg: SatMAEPPMAEConfig, up_names: Sequence[str]):
        super().__init__()
        self.cfg = cfg
        C, Cm = cfg.in_chans, cfg.in_chans * cfg.proj_ratio
        self.proj_up_conv = nn.Conv2d(C, Cm, 1)
        self.proj_up_norm = LayerNorm2d(Cm, eps=1e-6)
        self.up_names = tuple(up_names)
        for name in self.up_names:
            self.add_module(name, UpsampleBlock(Cm, C))
        norm = partial(nn.LayerNorm, eps=cfg.norm_eps)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            ViTBlock(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, qkv_bias=True, norm_layer=norm)
            for _ in range(cfg.depth))
        self.norm = norm(cfg.embed_dim)
        self.decoder_embed = nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList(
            ViTBlock(cfg.decoder_embed_dim, cfg.decoder_num_heads, cfg.mlp_ratio, qkv_bias=True, norm_layer=norm)
            for _ in range(cfg.decoder_depth))
        self.decoder_norm = norm(cfg.decoder_embed_dim)

    def _frozen_table(self, *shape: int) -> nn.Parameter:
        # Fixed sin-cos tables are parameters with requires_grad=False, as officially (they count and load).
        return nn.Parameter(torch.zeros(*shape), requires_grad=False)

    def init_weights(self) -> None:
        """Official init: xavier-uniform Linear / patch convs / upsampler convs, zero biases, tokens N(0, 0.02)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for name in self.up_names:  # the blocks' Conv2d only (the transposed conv keeps PyTorch's init)
            for m in getattr(self, name).modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)
        pe = self.patch_embed if isinstance(self.patch_embed, nn.ModuleList) else [self.patch_embed]
        for p in pe:  # like a Linear over the flattened patch
            nn.init.xavier_uniform_(p.proj.weight.view(p.proj.weight.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def run_encoder(self, x: Tensor) -> Tensor:
        """Encoder blocks + ``norm``: ``(B, 1 + K, D)`` -> same."""
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def run_decoder(self, x: Tensor) -> Tensor:
        """Decoder blocks + ``decoder_norm``: ``(B, 1 + N, Dd)`` -> same."""
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_norm(x)

    def forward_multiscale(self, pred: Tensor) -> list[Tensor]:
        """The upsampler on the whole prediction: ``[(B, C, 2H, 2W), (B, C, 4H, 4W)]`` (one entry for RGB).

        Each block upsamples the previous block's *features*; its ``proj_out`` gives that scale's image.
        """
        f = self.proj_up_norm(F.gelu(self.proj_up_conv(self.pred_to_image(pred))))
        outs = []
        for name in self.up_names:
            f, out = getattr(self, name)(f)
            outs.append(out)
        return outs

    def target_patches(self, imgs: Tensor) -> Tensor:
        """Check the input size; ``(B, C, H, W)`` -> ``(B, C, h, p, w, p)`` view of the patches."""
        B, C, H, W = imgs.shape
        p, g = self.cfg.patch_size, self.cfg.grid
        if (H, W) != (g * p, g * p) or C != self.cfg.in_chans:
            raise ValueError(f"expected imgs (B, {self.cfg.in_chans}, {g * p}, {g * p}), got {tuple(imgs.shape)}")
        return imgs.reshape(B, C, g, p, g, p)

    def forward(self, imgs: Tensor, *imgs_up: Tensor | Sequence[Tensor], mask_ratio: float = 0.75,
                noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``imgs (B, C, S, S)``, ``imgs_up`` = the image at 2S (and 4S for the grouped model), also as one list.

        Returns ``loss`` (masked-patch MSE), ``ms_loss`` (mean of the per-scale L1 losses), ``pred`` and
        ``mask`` (see the subclasses for their shapes).
        """
        if len(imgs_up) == 1 and isinstance(imgs_up[0], (list, tuple)):
            imgs_up = tuple(imgs_up[0])
        if len(imgs_up) != len(self.up_names):
            scales = ", ".join(f"{2 ** (i + 1)}x" for i in range(len(self.up_names)))
            raise ValueError(f"expected {len(self.up_names)} upscaled images ({scales}), got {len(imgs_up)}")
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        ups = self.forward_multiscale(pred)
        loss = self.forward_loss(imgs, pred, mask)
        ms_loss = sum(F.l1_loss(o, t) for o, t in zip(ups, imgs_up)) / len(ups)
        return loss, ms_loss, pred, mask


class SatMAEPPGroupMAE(_MultiScaleMAE):
    """Grouped-band SatMAE++ MAE (``MaskedAutoencoderGroupChannelViT``).

    ``forward(imgs (B, C, S, S), imgs_2x (B, C, 2S, 2S), imgs_4x (B, C, 4S, 4S), mask_ratio, noise)``;
    ``noise`` is ``(B, G*L)`` (group-major, row-major patches) or ``(B, L)`` with ``spatial_mask``.
    Returns ``loss``, ``ms_loss``, ``pred (B, C, L, p*p)`` with bands in group-concatenated order, and
    ``mask (B, G, L)`` (1 = removed).
    """

    def __init__(self, cfg: SatMAEPPMAEConfig | None = None, **kwargs: Any):
        cfg = cfg or SatMAEPPMAEConfig(**kwargs)
        if cfg.channel_groups is None:
            raise ValueError("SatMAEPPGroupMAE needs channel_groups (use SatMAEPPMAE for RGB)")
        super().__init__(cfg, ("up_block1", "up_block2"))
        G, L, p = len(cfg.channel_groups), cfg.grid ** 2, cfg.patch_size
        self.patch_embed = GroupChannelPatchEmbed(cfg.channel_groups, cfg.embed_dim, p)
        self.pos_embed = self._frozen_table(1, 1 + L, cfg.embed_dim - cfg.channel_embed)
        self.channel_embed = self._frozen_table(1, G, cfg.channel_embed)
        self.decoder_pos_embed = self._frozen_table(1, 1 + L, cfg.decoder_embed_dim - cfg.decoder_channel_embed)
        self.decoder_channel_embed = self._frozen_table(1, G + 1, cfg.decoder_channel_embed)  # last row: cls
        self.decoder_pred = nn.ModuleList(nn.Linear(cfg.decoder_embed_dim, len(g) * p * p) for g in cfg.channel_groups)
        # Loss: row i of the per-band error belongs to group g with weight 1/|g| (rows = band ids, officially).
        order = [c for g in cfg.channel_groups for c in g]
        rows = [list(g) for g in cfg.channel_groups] if cfg.official_loss_order else \
            [[order.index(c) for c in g] for g in cfg.channel_groups]
        avg = torch.zeros(G, cfg.in_chans)
        for i, r in enumerate(rows):
            avg[i, r] = 1.0 / len(r)
        self.register_buffer("group_average", avg, persistent=False)
        self.register_buffer("band_order", torch.tensor(order), persistent=False)
        self.init_weights()

    def init_weights(self) -> None:
        super().init_weights()
        cfg, G = self.cfg, len(self.cfg.channel_groups)
        copy_table_(self.pos_embed, sincos_pos_embed_2d(self.pos_embed.shape[-1], cfg.grid, cfg.grid, cls_token=True))
        copy_table_(self.channel_embed, sincos_pos_embed_1d(cfg.channel_embed, range(G)))
        copy_table_(self.decoder_pos_embed,
                    sincos_pos_embed_2d(self.decoder_pos_embed.shape[-1], cfg.grid, cfg.grid, cls_token=True))
        copy_table_(self.decoder_channel_embed, sincos_pos_embed_1d(cfg.decoder_channel_embed, range(G + 1)))

    def forward_encoder(self, imgs: Tensor, mask_ratio: float = 0.75, noise: Tensor | None = None):
        """``imgs (B, C, S, S)`` -> latent ``(B, 1 + K, D)``, ``mask (B, G, L)``, ``ids_restore``."""
        self.target_patches(imgs)  # size check
        x = self.patch_embed(imgs) + group_pos_embed(self.pos_embed[:, 1:], self.channel_embed)  # (B, G, L, D)
        B, G, L, D = x.shape
        if self.cfg.spatial_mask:  # mask positions jointly: one token of G*D per position
            x, mask, ids_restore = random_masking(x.transpose(1, 2).reshape(B, L, G * D), mask_ratio, noise)
            x = x.view(B, -1, G, D).transpose(1, 2).reshape(B, -1, D)
            mask = mask.unsqueeze(1).expand(B, G, L)
        else:
            x, mask, ids_restore = random_masking(x.reshape(B, G * L, D), mask_ratio, noise)
            mask = mask.view(B, G, L)
        # The class token gets no position/group embedding here (unlike the fine-tune ViT).
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        return self.run_encoder(x), mask, ids_restore

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """Latent ``(B, 1 + K, D)`` -> ``pred (B, C, L, p*p)``, bands in group-concatenated order."""
        x = self.decoder_embed(latent)
        B, _, E = x.shape
        groups, L = self.cfg.channel_groups, self.cfg.grid ** 2
        G = len(groups)
        vis = x[:, 1:]
        if self.cfg.spatial_mask:
            K = vis.shape[1] // G
            vis = vis.view(B, G, K, E).transpose(1, 2).reshape(B, K, G * E)
            full = unshuffle_with_mask_tokens(vis, self.mask_token.repeat(1, 1, G), ids_restore)
            full = full.view(B, L, G, E).transpose(1, 2).reshape(B, G * L, E)
        else:
            full = unshuffle_with_mask_tokens(vis, self.mask_token, ids_restore)
        pos = group_pos_embed(self.decoder_pos_embed[:, 1:], self.decoder_channel_embed[:, :-1]).reshape(1, G * L, E)
        cls_pos = torch.cat((self.decoder_pos_embed[:, :1], self.decoder_channel_embed[:, -1:]), dim=-1)
        x = self.run_decoder(torch.cat((x[:, :1] + cls_pos, full + pos), dim=1))
        x = x[:, 1:].view(B, G, L, E)
        p2 = self.cfg.patch_size ** 2
        return torch.cat([head(x[:, i]).view(B, L, len(g), p2).transpose(1, 2)
                          for i, (head, g) in enumerate(zip(self.decoder_pred, groups))], dim=1)

    def pred_to_image(self, pred: Tensor) -> Tensor:
        """``(B, C, L, p*p)`` -> ``(B, C, S, S)`` (band axis stays in ``pred``'s order)."""
        B, C = pred.shape[:2]
        g, p = self.cfg.grid, self.cfg.patch_size
        return pred.reshape(B, C, g, g, p, p).transpose(3, 4).reshape(B, C, g * p, g * p)

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean over removed (group, patch) tokens of the group-averaged per-band patch MSE."""
        B, C = imgs.shape[:2]
        L, p2 = self.cfg.grid ** 2, self.cfg.patch_size ** 2
        target = self.target_patches(imgs).transpose(3, 4).reshape(B, C, L, p2)  # (band, row, col) per patch
        if self.cfg.norm_pix_loss:  # over all C*p*p values of a patch, unbiased variance
            mean = target.mean(dim=(1, 3), keepdim=True)
            target = (target - mean) / (target.var(dim=(1, 3), keepdim=True) + 1e-6) ** 0.5
        if not self.cfg.official_loss_order:
            target = target[:, self.band_order]  # compare every predicted row with its own band
        err = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (B, C, L)
        group_err = torch.einsum("gc,bcl->bgl", self.group_average.float(), err)
        return (group_err * mask).sum() / mask.sum()


class SatMAEPPMAE(_MultiScaleMAE):
    """RGB SatMAE++ MAE (``models_mae.MaskedAutoencoderViT``), one 2x upsampling stage.

    ``forward(imgs (B, C, S, S), imgs_2x (B, C, 2S, 2S), mask_ratio, noise (B, L))`` -> ``loss``, ``ms_loss``,
    ``pred (B, L, p*p*C)`` (per patch: row, column, band innermost) and ``mask (B, L)``.
    """

    def __init__(self, cfg: SatMAEPPMAEConfig | None = None, **kwargs: Any):
        cfg = cfg or SatMAEPPMAEConfig(**{"channel_groups": None, **kwargs})
        if cfg.channel_groups is not None:
            raise ValueError("SatMAEPPMAE is the RGB model: channel_groups must be None")
        super().__init__(cfg, ("up_block",))
        L, p = cfg.grid ** 2, cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.in_chans, cfg.embed_dim, p)
        self.pos_embed = self._frozen_table(1, 1 + L, cfg.embed_dim)
        self.decoder_pos_embed = self._frozen_table(1, 1 + L, cfg.decoder_embed_dim)
        self.decoder_pred = nn.Linear(cfg.decoder_embed_dim, p * p * cfg.in_chans)
        self.init_weights()

    def init_weights(self) -> None:
        super().init_weights()
        g = self.cfg.grid
        copy_table_(self.pos_embed, sincos_pos_embed_2d(self.cfg.embed_dim, g, g, cls_token=True))
        copy_table_(self.decoder_pos_embed, sincos_pos_embed_2d(self.cfg.decoder_embed_dim, g, g, cls_token=True))

    def forward_encoder(self, imgs: Tensor, mask_ratio: float = 0.75, noise: Tensor | None = None):
        """``imgs (B, C, S, S)`` -> latent ``(B, 1 + K, D)``, ``mask (B, L)``, ``ids_restore (B, L)``."""
        self.target_patches(imgs)
        x, mask, ids_restore = random_masking(self.patch_embed(imgs) + self.pos_embed[:, 1:], mask_ratio, noise)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return self.run_encoder(torch.cat((cls, x), dim=1)), mask, ids_restore

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """Latent ``(B, 1 + K, D)`` -> ``pred (B, L, p*p*C)``."""
        x = self.decoder_embed(latent)
        x = torch.cat((x[:, :1], unshuffle_with_mask_tokens(x[:, 1:], self.mask_token, ids_restore)), dim=1)
        x = self.run_decoder(x + self.decoder_pos_embed)
        return self.decoder_pred(x[:, 1:])  # the class token's prediction is dropped anyway

    def pred_to_image(self, pred: Tensor) -> Tensor:
        """``(B, L, p*p*C)`` -> ``(B, C, S, S)``."""
        B = pred.shape[0]
        g, p, C = self.cfg.grid, self.cfg.patch_size, self.cfg.in_chans
        return pred.reshape(B, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, g * p, g * p)

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean over removed patches of the per-patch MSE."""
        B, C = imgs.shape[:2]
        target = self.target_patches(imgs).permute(0, 2, 4, 3, 5, 1).reshape(B, self.cfg.grid ** 2, -1)
        if self.cfg.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            target = (target - mean) / (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
        err = (pred.float() - target.float()).pow(2).mean(dim=-1)
        return (err * mask).sum() / mask.sum()


# ---------------------------------------------------------------------------------------------
# official translation

def _mae_kwargs(kw: Mapping[str, Any], grouped: bool) -> dict[str, Any]:
    """Official MAE kwargs with the class defaults (grouped: 96/8/10 bands; RGB: 224/16/3)."""
    out = dict(
        img_size=int(kw.get("img_size", 96 if grouped else 224)),
        patch_size=int(kw.get("patch_size", 8 if grouped else 16)),
        in_chans=int(kw.get("in_chans", 10 if grouped else 3)), embed_dim=int(kw.get("embed_dim", 1024)),
        depth=int(kw.get("depth", 24)), num_heads=int(kw.get("num_heads", 16)),
        decoder_embed_dim=int(kw.get("decoder_embed_dim", 512)), decoder_depth=int(kw.get("decoder_depth", 8)),
        decoder_num_heads=int(kw.get("decoder_num_heads", 16)), mlp_ratio=float(kw.get("mlp_ratio", 4.0)),
        norm_eps=official_norm_eps(kw), norm_pix_loss=bool(kw.get("norm_pix_loss", False)),
        proj_ratio=int(kw.get("proj_ratio", 4)),
    )
    if grouped:
        out.update(channel_groups=kw.get("channel_groups", PAPER_GROUPS),
                   spatial_mask=bool(kw.get("spatial_mask", False)),
                   channel_embed=int(kw.get("channel_embed", 256)),
                   decoder_channel_embed=int(kw.get("decoder_channel_embed", 128)))
    else:
        out["channel_groups"] = None
    return out


def config_from_official(kw: Mapping[str, Any]) -> SatMAEPPMAEConfig:
    """``MaskedAutoencoderGroupChannelViT`` kwargs -> config."""
    return SatMAEPPMAEConfig(**_mae_kwargs(kw, grouped=True))


def config_from_official_rgb(kw: Mapping[str, Any]) -> SatMAEPPMAEConfig:
    """``models_mae.MaskedAutoencoderViT`` kwargs -> config (``channel_groups=None``)."""
    return SatMAEPPMAEConfig(**_mae_kwargs(kw, grouped=False))


def _detect_common(sd: Mapping[str, Tensor], D: int, patch: int) -> dict[str, Any] | None:
    need = ("pos_embed", "decoder_embed.weight", "decoder_pos_embed", "proj_up_conv.weight", "blocks.0.mlp.fc1.weight")
    if not all(k in sd for k in need):
        return None
    rows = int(sd["pos_embed"].shape[1]) - 1
    grid = math.isqrt(rows)
    if grid * grid != rows:
        return None
    C = int(sd["proj_up_conv.weight"].shape[1])
    return {
        "img_size": grid * patch, "patch_size": patch, "in_chans": C, "embed_dim": D,
        "depth": len({k.split(".")[1] for k in sd if k.startswith("blocks.")}), "num_heads": max(1, D // 64),
        "decoder_embed_dim": int(sd["decoder_embed.weight"].shape[0]),
        "decoder_depth": len({k.split(".")[1] for k in sd if k.startswith("decoder_blocks.")}),
        "decoder_num_heads": 16, "mlp_ratio": sd["blocks.0.mlp.fc1.weight"].shape[0] / D,
        "norm_layer": {"type": "LayerNorm", "eps": 1e-6}, "norm_pix_loss": False,
        "proj_ratio": int(sd["proj_up_conv.weight"].shape[0]) // C,
    }


def detect_official(sd: Mapping[str, Tensor]) -> dict[str, Any] | None:
    """Infer ``MaskedAutoencoderGroupChannelViT`` kwargs from a pretraining checkpoint; ``None`` otherwise.

    Read from shapes: encoder/decoder widths and depths, group count and sizes, ``in_chans``, both
    group-embedding widths, patch size, ``img_size``, mlp_ratio and ``proj_ratio``. Not inferable, with
    defaults: ``num_heads`` (``embed_dim // 64``), ``decoder_num_heads`` (16, every factory),
    ``channel_groups`` membership (paper groups for sizes 4/4/2, else contiguous runs), ``spatial_mask``
    and ``norm_pix_loss`` (False, the paper's). The key set must be exactly this model's.
    """
    if "patch_embed.0.proj.weight" not in sd or "decoder_channel_embed" not in sd or "channel_embed" not in sd:
        return None
    sizes, g = [], 0
    while f"patch_embed.{g}.proj.weight" in sd:
        sizes.append(int(sd[f"patch_embed.{g}.proj.weight"].shape[1]))
        g += 1
    w = sd["patch_embed.0.proj.weight"]
    kw = _detect_common(sd, int(w.shape[0]), int(w.shape[-1]))
    if kw is None:
        return None
    kw.update(channel_groups=[list(g) for g in groups_from_sizes(sizes)], spatial_mask=False,
              channel_embed=int(sd["channel_embed"].shape[-1]),
              decoder_channel_embed=int(sd["decoder_channel_embed"].shape[-1]))
    return kw if layout_fits(SatMAEPPGroupMAE, config_from_official, kw, sd) else None


def detect_official_rgb(sd: Mapping[str, Tensor]) -> dict[str, Any] | None:
    """Infer ``models_mae.MaskedAutoencoderViT`` kwargs from an RGB pretraining checkpoint; ``None`` otherwise.

    As :func:`detect_official` without groups; the ``up_block.*`` upsampler tells it from a plain MAE.
    """
    w = sd.get("patch_embed.proj.weight")
    if w is None or w.ndim != 4 or "up_block.up_conv.weight" not in sd:
        return None
    kw = _detect_common(sd, int(w.shape[0]), int(w.shape[-1]))
    return kw if kw is not None and layout_fits(SatMAEPPMAE, config_from_official_rgb, kw, sd) else None


register_official(OfficialSpec(
    model_id="satmaepp_mae", field=FIELD,
    build=lambda kw: SatMAEPPGroupMAE(config_from_official(kw)), convert=None, detect=detect_official,
    uninferable=("num_heads", "decoder_num_heads", "channel_groups", "spatial_mask", "norm_pix_loss"),
    description="techmn/satmae_pp models_mae_group_channels.py::MaskedAutoencoderGroupChannelViT",
))
register_official(OfficialSpec(
    model_id="satmaepp_mae_rgb", field=FIELD,
    build=lambda kw: SatMAEPPMAE(config_from_official_rgb(kw)), convert=None, detect=detect_official_rgb,
    uninferable=("num_heads", "decoder_num_heads", "norm_pix_loss"),
    description="techmn/satmae_pp models_mae.py::MaskedAutoencoderViT (no reference fixture)",
))

_LARGE = dict(embed_dim=1024, depth=24, num_heads=16, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
              mlp_ratio=4.0, norm_eps=1e-6, proj_ratio=4)
register_model(ModelSpec(
    "satmaepp_mae_vit_large_group", FIELD, "satmaepp_mae", SatMAEPPGroupMAE,
    dict(img_size=96, patch_size=8, in_chans=10, channel_groups=PAPER_GROUPS, spatial_mask=False, channel_embed=256,
         decoder_channel_embed=128, norm_pix_loss=False, **_LARGE),
    "SatMAE++ MAE ViT-L/8 fMoW-Sentinel pretraining, 10 bands in 3 groups, 96/192/384 px pyramid"))
register_model(ModelSpec(
    "satmaepp_mae_vit_large_rgb", FIELD, "satmaepp_mae", SatMAEPPMAE,
    dict(img_size=224, patch_size=16, in_chans=3, channel_groups=None, norm_pix_loss=False, **_LARGE),
    "SatMAE++ MAE ViT-L/16 fMoW-RGB pretraining, 224/448 px"))
