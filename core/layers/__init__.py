"""Shared transformer layers: attention variants, windowing, embeddings and blocks.

Parameter names follow the official checkpoints (timm/MAE/ViTPose ``qkv``/``proj``/``fc1``/``fc2``,
Swin/HAT ``relative_position_bias_table``/``relative_position_index``, Restormer/DRSformer
``temperature``, ChannelViT ``proj``/``channel_embed``, SatMAE ``patch_embed.{i}``).
"""

from .attention import (
    DRSFORMER_TOPK_RATIOS,
    Attention,
    ChannelAttention,
    TransposedAttention,
    attention,
    topk_sparse_attention,
    topk_sparse_probs,
    transposed_attention,
)
from .blocks import DropPath, LayerScale, Mlp, SwinBlock, ViTBlock, init_vit_weights_, trunc_normal_
from .embed import (
    ChannelPatchEmbed,
    GroupChannelPatchEmbed,
    PatchEmbed,
    resize_pos_embed,
    sincos_pos_embed_1d,
    sincos_pos_embed_2d,
)
from .windows import (
    RelativePositionBias,
    WindowAttention,
    overlapping_relative_position_index,
    overlapping_windows,
    relative_position_index,
    shifted_window_mask,
    to_2tuple,
    window_partition,
    window_reverse,
)

__all__ = [
    "attention", "Attention", "transposed_attention", "TransposedAttention", "topk_sparse_attention", "topk_sparse_probs",
    "DRSFORMER_TOPK_RATIOS", "ChannelAttention",
    "to_2tuple", "window_partition", "window_reverse", "relative_position_index",
    "overlapping_relative_position_index", "RelativePositionBias", "shifted_window_mask", "WindowAttention",
    "overlapping_windows",
    "PatchEmbed", "ChannelPatchEmbed", "GroupChannelPatchEmbed", "sincos_pos_embed_1d", "sincos_pos_embed_2d",
    "resize_pos_embed",
    "Mlp", "DropPath", "LayerScale", "trunc_normal_", "init_vit_weights_", "ViTBlock", "SwinBlock",
]
