"""iTransformer (Liu et al., ICLR 2024): attention across variates, each variate's history one token.

Official code: thuml/iTransformer ``model/iTransformer.py``. Differences in layout, not in math:
the separate q/k/v projections are fused into one ``qkv`` Linear and the 1x1 ``Conv1d`` feed-forward
is a token-wise ``Linear`` (timm ``Mlp``); :func:`convert_official` maps the official keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from timm.layers import Mlp
from torch import Tensor, nn

from vitsuite.core.layers.attention import Attention
from vitsuite.core.layers.fast import derived, fast_inference, layer_norm, linear, mlp_residual
from vitsuite.core.registry import ModelSpec, OfficialSpec, register_model, register_official

FIELD = "forecast"


@dataclass
class ITransformerConfig:
    """Every hyper-parameter of iTransformer (names as in the authors' ``configs``)."""

    seq_len: int = 96          # L: input steps; one Linear maps a variate's whole history to a token
    pred_len: int = 96         # S: forecast steps
    d_model: int = 512         # E: token width
    n_heads: int = 8
    e_layers: int = 2
    d_ff: int = 2048
    dropout: float = 0.1
    activation: str = "gelu"   # "relu" or anything else -> exact GELU, as officially
    use_norm: bool = True      # per-sample, per-variate instance normalisation (RevIN without affine)


class EncoderLayer(nn.Module):
    """Post-norm transformer layer over variate tokens: ``norm1(x + attn(x))``, ``norm2(x + mlp(x))``.

    x (B, T, E) -> (B, T, E).
    """

    def __init__(self, cfg: ITransformerConfig):
        super().__init__()
        self.gelu = cfg.activation != "relu"
        act = nn.GELU if self.gelu else nn.ReLU
        self.attn = Attention(cfg.d_model, cfg.n_heads, qkv_bias=True, attn_drop=cfg.dropout, proj_drop=cfg.dropout)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.mlp = Mlp(cfg.d_model, cfg.d_ff, act_layer=act, drop=cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.d_model)

    def forward(self, x: Tensor, qkv: Tensor | None = None) -> Tensor:
        """``qkv (B, T, 3E)``: this layer's q/k/v projection of ``x`` when the caller computed it already
        (see :meth:`ITransformer.forward`)."""
        fast = not self.training and fast_inference(x)
        attended = self.attn(x, residual=x) if qkv is None else self.attn.attend(qkv, residual=x)
        x = layer_norm(attended, self.norm1, fast)
        if self.gelu and fast:
            # fc1 + GELU and fc2 + residual as two fused calls (CPU fp32 inference only)
            return layer_norm(mlp_residual(self.mlp, x, x, fast=True), self.norm2, fast)
        return self.norm2(x + self.mlp(x))


class ITransformer(nn.Module):
    """iTransformer forecaster.

    ``forward(x_enc (B, L, N), x_mark_enc (B, L, M) | None) -> (B, S, N)``. Time marks become M
    extra tokens after the N variate tokens and are dropped from the output. ``x_dec``,
    ``x_mark_dec`` and ``mask`` are accepted (and ignored) for the authors' call convention.
    """

    def __init__(self, cfg: ITransformerConfig | None = None, **kwargs: Any):
        super().__init__()
        cfg = cfg or ITransformerConfig(**kwargs)
        self.cfg = cfg
        self.embed = nn.Linear(cfg.seq_len, cfg.d_model)
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.e_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.pred_len)

    def forward(self, x_enc: Tensor, x_mark_enc: Tensor | None = None, x_dec: Tensor | None = None,
                x_mark_dec: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        n_vars = x_enc.shape[-1]
        if self.cfg.use_norm:
            # Statistics detached and the 1e-5 inside the root, as the authors do (biased variance).
            mean = x_enc.mean(1, keepdim=True).detach()
            centred = x_enc - mean
            # mean of squares of the centred values = the biased variance (torch.var over this strided
            # axis is ~20x slower on CPU: 200 vs 9 us for 96x321)
            std = torch.sqrt(centred.square().mean(1, keepdim=True) + 1e-5).detach()
            x_enc = centred / std
        tokens = x_enc.transpose(1, 2)                                  # (B, N, L)
        if x_mark_enc is not None:
            tokens = torch.cat([tokens, x_mark_enc.transpose(1, 2)], 1)  # (B, N + M, L)
        fast = not self.training and fast_inference(tokens)  # oneDNN, packed weights (core.layers.fast)
        tokens = tokens.contiguous()
        x = self.embed_drop(linear(tokens, self.embed.weight, self.embed.bias, fast=fast))
        qkv = None
        if fast and self.layers and self.cfg.seq_len < self.cfg.d_model:
            # The first layer's q/k/v projection reads the embedding through no nonlinearity (post-norm;
            # dropout is off in inference), so it is one linear map of the L-step tokens: L x 3E weights
            # instead of E x 3E (ECL: 96 vs 512 inputs, 11 % of the forward's FLOPs saved). The folded
            # weights are formed in float64; the result differs from the two-step product by rounding only.
            w, b = derived(self, "embed_qkv", [p for p in (self.embed.weight, self.embed.bias,
                                                           self.layers[0].attn.qkv.weight,
                                                           self.layers[0].attn.qkv.bias) if p is not None],
                           self._embed_qkv_weights)
            qkv = linear(tokens, w, b, fast=True)
        for i, layer in enumerate(self.layers):
            x = layer(x, qkv if i == 0 else None)
        # time-mark tokens are dropped before the head
        out = linear(layer_norm(x[:, :n_vars], self.norm, fast), self.head.weight, self.head.bias, fast=fast)
        out = out.transpose(1, 2)                                       # (B, S, N)
        if self.cfg.use_norm:
            out = out * std + mean
        return out

    def _embed_qkv_weights(self) -> tuple[Tensor, Tensor]:
        """The embedding followed by the first layer's ``qkv`` Linear as one Linear: weight ``(3E, L)``,
        bias ``(3E,)`` (computed in float64, returned in the weights' dtype)."""
        qkv, embed = self.layers[0].attn.qkv, self.embed
        w_qkv = qkv.weight.detach().double()
        weight = w_qkv @ embed.weight.detach().double()
        bias = w_qkv @ embed.bias.detach().double() if embed.bias is not None else weight.new_zeros(weight.shape[0])
        if qkv.bias is not None:
            bias = bias + qkv.bias.detach().double()
        return weight.to(qkv.weight.dtype).contiguous(), bias.to(qkv.weight.dtype)


# ---------------------------------------------------------------------------------------------
# official translation

_OFFICIAL_FIELDS = ("seq_len", "pred_len", "d_model", "n_heads", "e_layers", "d_ff", "dropout", "activation", "use_norm")


def config_from_official(kwargs: Mapping[str, Any]) -> ITransformerConfig:
    """The authors' ``configs`` namespace (as a dict) -> :class:`ITransformerConfig` (run.py defaults fill gaps)."""
    if kwargs.get("output_attention"):
        raise ValueError("output_attention=True is not supported: attention runs in fused SDPA kernels")
    defaults = asdict(ITransformerConfig())
    cfg = {k: kwargs.get(k, defaults[k]) for k in _OFFICIAL_FIELDS}
    cfg["use_norm"] = bool(cfg["use_norm"])
    return ITransformerConfig(**cfg)


def convert_official(sd: Mapping[str, Tensor], kwargs: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
    """Official state-dict keys -> ours (q/k/v fused into ``qkv``, 1x1 convs squeezed to Linear)."""
    out: dict[str, Tensor] = {}
    layer_ids = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.attn_layers.")})
    for i in layer_ids:
        p, q = f"encoder.attn_layers.{i}.", f"layers.{i}."
        for kind in ("weight", "bias"):
            out[q + f"attn.qkv.{kind}"] = torch.cat(
                [sd[p + f"attention.{n}_projection.{kind}"] for n in ("query", "key", "value")], 0)
            out[q + f"attn.proj.{kind}"] = sd[p + f"attention.out_projection.{kind}"]
            out[q + f"norm1.{kind}"] = sd[p + f"norm1.{kind}"]
            out[q + f"norm2.{kind}"] = sd[p + f"norm2.{kind}"]
        out[q + "mlp.fc1.weight"] = sd[p + "conv1.weight"].squeeze(-1)
        out[q + "mlp.fc1.bias"] = sd[p + "conv1.bias"]
        out[q + "mlp.fc2.weight"] = sd[p + "conv2.weight"].squeeze(-1)
        out[q + "mlp.fc2.bias"] = sd[p + "conv2.bias"]
    renames = {"enc_embedding.value_embedding.": "embed.", "encoder.norm.": "norm.", "projector.": "head."}
    for k, v in sd.items():
        for old, new in renames.items():
            if k.startswith(old):
                out[new + k[len(old):]] = v
    return out


def detect_official(sd: Mapping[str, Tensor]) -> dict[str, Any] | None:
    """Infer the constructor arguments from an official checkpoint; ``None`` if it is not iTransformer.

    ``n_heads`` cannot be read from shapes; it is taken as 8, the value of every published script
    (pass ``n_heads=`` to :func:`~vitsuite.models.load_official_checkpoint` otherwise).
    """
    if "enc_embedding.value_embedding.weight" not in sd or "projector.weight" not in sd:
        return None
    d_model, seq_len = sd["enc_embedding.value_embedding.weight"].shape
    layers = {int(k.split(".")[2]) for k in sd if k.startswith("encoder.attn_layers.")}
    d_ff = sd["encoder.attn_layers.0.conv1.weight"].shape[0] if layers else 4 * d_model
    return {"seq_len": int(seq_len), "pred_len": int(sd["projector.weight"].shape[0]), "d_model": int(d_model),
            "n_heads": 8, "e_layers": len(layers), "d_ff": int(d_ff), "dropout": 0.1, "activation": "gelu",
            "use_norm": True}


register_official(OfficialSpec(
    model_id="itransformer", field=FIELD,
    build=lambda kw: ITransformer(config_from_official(kw)),
    convert=convert_official, detect=detect_official, uninferable=("n_heads",),
    description="thuml/iTransformer model/iTransformer.py::Model",
))


def _register(name: str, description: str, **cfg: Any) -> None:
    register_model(ModelSpec(name, FIELD, "itransformer", ITransformer, cfg, description))


# Paper configurations (scripts/multivariate_forecasting, seq_len 96, n_heads 8); pred_len is free.
_register("itransformer", "iTransformer, ECL/Weather config (3 layers, 512/512)", e_layers=3, d_model=512, d_ff=512)
_register("itransformer_etth1", "iTransformer, ETTh1 config for horizons 96/192 (2 layers, 256/256)",
          e_layers=2, d_model=256, d_ff=256)
_register("itransformer_etth1_long", "iTransformer, ETTh1 config for horizons 336/720 (2 layers, 512/512)",
          e_layers=2, d_model=512, d_ff=512)
_register("itransformer_traffic", "iTransformer, Traffic config (4 layers, 512/512)", e_layers=4, d_model=512, d_ff=512)
