"""Paper-size models: the authors' module against ours, speed and accuracy, one process per model.

For each model below: ``torch.manual_seed(0)``, build the official module (``official.py``,
read from ``--official-root``), take its ``state_dict``, build ours with
``vitsuite.models.from_official(model_id, official_kwargs, state_dict)``, then in the same
process, with ``torch.set_num_threads(--threads)``, ``eval()`` and ``torch.inference_mode()``:
``--warmup`` calls, then official and ours (fp32) alternate, at least ``--repeat`` times each and
until each has run ``--min-time`` seconds (medians reported, and the median of the per-pair
ratios), then the median of ``--repeat`` timed forwards of ours under ``torch.autocast("cpu", dtype=torch.bfloat16)`` and,
with ``--compile``, of ``torch.compile(ours)``; each of ours is compared with the official fp32
output (max |diff|). FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one
forward of our model (of the official one when ours is missing); the physical limit is those
FLOPs divided by the fp32 matrix-multiply throughput of the same process (2048x2048 ``a @ b``,
same threads). Each model runs in a fresh worker process (``--in-process`` to disable), so
peak RSS is per model and one model's allocator state does not slow the next; with ``--processes N``
in N of them, one after the other, and their calls are pooled (:func:`merge_processes`).

| key | model_id | ours (registered name + overrides) | official configuration | input | official ref. (OFFICIAL_TIMINGS.md) |
| --- | --- | --- | --- | --- | ---: |
| hat_s_x4 | hat | hat_s (upscale 4) | HAT-S_SRx4.yml: embed 144, 6x6 blocks, heads 6, window 16, compress 24, squeeze 24, x4 | 1x3x64x64 | 2.16 s |
| hat_x4 | hat | hat (upscale 4) | HAT_SRx4.yml: embed 180, 6x6 blocks, heads 6, window 16, compress 3, squeeze 30, x4 | 1x3x64x64 | 2.82 s |
| drct_x4 | drct | drct (upscale 4) | DRCT_SRx4.yml: embed 180, 6 groups, heads 6, window 16, gc 32, x4 | 1x3x64x64 | 1.92 s |
| drsformer | drsformer | drsformer | Deraining.yml: dim 48, blocks [4,6,6,8], heads [1,2,4,8], ffn 2.66, WithBias | 1x3x128x128 | 2.79 s |
| vitpose_b | vitpose | vitpose_b | ViTPose_base_coco_256x192.py: ViT 768/12/12 + classic head (2 deconv 256 + 1x1, 17 kpts) | 1x3x256x192 | 0.303 s |
| channelvit_s16 | channelvit | channelvit_s16 | hcs_channel_vit.py, ChannelViT-S/16 (384/12/6), in_chans 3, img 224 | 1x3x224x224 + channels [0,1,2] | 0.258 s |
| channelvit_s16_dino | channelvit | channelvit_s16 | channel_vit.py (DINO class), same size | 1x3x224x224 + channels [0,1,2] | 0.227 s |
| satmaepp_vit_l_group | satmaepp_vit | satmaepp_vit_large_group | vit_large_patch16, patch 8, img 96, 10 bands in 3 groups, channel_embed 256, 62 classes, global pool | 1x10x96x96 | 2.16 s |
| satmaepp_vit_l_rgb | satmaepp_vit_rgb | satmaepp_vit_large_rgb | vit_large_patch16, patch 16, img 224, 62 classes, global pool | 1x3x224x224 | 1.24 s |
| satmaepp_mae_l_group | satmaepp_mae | satmaepp_mae_vit_large_group | mae_vit_large_patch16 (dec 512/8/16), patch 8, img 96, mask 0.75 | 1x10x96x96 (+192, 384 pyramid, noise) | 0.97 s |
| satmaepp_mae_l_rgb | satmaepp_mae_rgb | satmaepp_mae_vit_large_rgb | models_mae mae_vit_large_patch16, patch 16, img 224, one 2x upsampler, mask 0.75 | 1x3x224x224 (+448, noise) | – |
| hbformer_synapse | hbformer | hbformer_synapse_224 | Synapse, img 224 (window 7), feature_size 48, Swin-T | 1x3x224x224 | 0.192 s |
| paratranscnn_synapse | paratranscnn | paratranscnn_synapse | Synapse: heads 8, dim 320, depth (3,3,3), patch 2, 9 classes | 1x3x224x224 | 3.97 s |
| duoformer_r50 | duoformer | duoformer_r50 | fork default: r50, 2 scales, depth 12, 768/12, random scale token, 10 classes, frozen | 1x3x224x224 | 0.430 s |
| itransformer_ecl | itransformer | itransformer (seq_len 96, pred_len 96) | ECL: seq 96, pred 96, d_model 512, d_ff 512, 3 layers, 8 heads | 1x96x321 + marks 1x96x4 | 0.029 s |

Usage::

    python benchmarks/models.py --official-root /work/official --threads 2 --repeat 3
    python benchmarks/models.py --models hat,drct --threads 1 --repeat 1   # substring filter on key/model_id

Writes ``--out`` (default ``benchmarks/results/models.json``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

# Kernel choices are timed in each worker process, as they were for every table in docs/models.md, not
# taken from the kernel choice cache of earlier runs (set VITSUITE_KERNEL_CACHE to a file to use one).
os.environ.setdefault("VITSUITE_KERNEL_CACHE", "0")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import official as _official  # noqa: E402  (benchmarks/official.py)

from vitsuite.core.env import cpu_model  # noqa: E402
from vitsuite.core.layers import fast as fast_path  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "models.json"

LN6 = {"type": "LayerNorm", "eps": 1e-6}
SATMAE_GROUPS = [[0, 1, 2, 6], [3, 4, 5, 7], [8, 9]]


@dataclass
class PaperModel:
    key: str
    model_id: str
    ours: str
    official_kwargs: dict[str, Any]
    input_desc: str
    make_inputs: Callable[[torch.Generator], tuple[list[torch.Tensor], dict[str, torch.Tensor]]]
    ours_overrides: dict[str, Any] = field(default_factory=dict)
    official_file: str | None = None
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    reference_official_s: float | None = None


def _image(*shape: int, uniform: bool = False) -> Callable:
    def make(g: torch.Generator):
        x = torch.rand(*shape, generator=g) if uniform else torch.randn(*shape, generator=g)
        return [x], {}

    return make


def _channelvit_inputs(g: torch.Generator):
    x = torch.randn(1, 3, 224, 224, generator=g)
    return [x, torch.arange(3, dtype=torch.int64).unsqueeze(0)], {}


def _satmae_pyramid(g: torch.Generator):
    up4 = torch.rand(1, 10, 384, 384, generator=g)
    up2 = F.interpolate(up4, scale_factor=0.5, mode="bilinear", align_corners=False)
    imgs = F.interpolate(up2, scale_factor=0.5, mode="bilinear", align_corners=False)
    noise = torch.rand(1, 3 * (96 // 8) ** 2, generator=g)
    return [imgs, up2, up4], {"noise": noise}


def _satmae_rgb_pair(g: torch.Generator):
    up = torch.randn(1, 3, 448, 448, generator=g)
    imgs = F.interpolate(up, scale_factor=0.5, mode="bilinear", align_corners=False)
    noise = torch.rand(1, (224 // 16) ** 2, generator=g)
    return [imgs, up], {"noise": noise}


def _itransformer_inputs(g: torch.Generator):
    x_enc = torch.randn(1, 96, 321, generator=g).cumsum(1)
    mark_enc = torch.rand(1, 96, 4, generator=g) - 0.5
    x_dec = torch.cat([x_enc[:, -48:], torch.zeros(1, 96, 321)], dim=1)
    mark_dec = torch.rand(1, 144, 4, generator=g) - 0.5
    return [x_enc, mark_enc, x_dec, mark_dec], {}


_HAT_COMMON = dict(
    upscale=4, in_chans=3, img_size=64, window_size=16, conv_scale=0.01, overlap_ratio=0.5, img_range=1.0,
    depths=[6] * 6, num_heads=[6] * 6, mlp_ratio=2, upsampler="pixelshuffle", resi_connection="1conv",
)

PAPER_MODELS: list[PaperModel] = [
    PaperModel("hat_s_x4", "hat", "hat_s", {**_HAT_COMMON, "embed_dim": 144, "compress_ratio": 24, "squeeze_factor": 24},
               "1x3x64x64", _image(1, 3, 64, 64, uniform=True), ours_overrides={"upscale": 4},
               reference_official_s=2.16),
    PaperModel("hat_x4", "hat", "hat", {**_HAT_COMMON, "embed_dim": 180, "compress_ratio": 3, "squeeze_factor": 30},
               "1x3x64x64", _image(1, 3, 64, 64, uniform=True), ours_overrides={"upscale": 4},
               reference_official_s=2.82),
    PaperModel("drct_x4", "drct", "drct", {**_HAT_COMMON, "embed_dim": 180, "compress_ratio": 3, "squeeze_factor": 30},
               "1x3x64x64", _image(1, 3, 64, 64, uniform=True), ours_overrides={"upscale": 4},
               reference_official_s=1.92),
    PaperModel("drsformer", "drsformer", "drsformer",
               dict(inp_channels=3, out_channels=3, dim=48, num_blocks=[4, 6, 6, 8], heads=[1, 2, 4, 8],
                    ffn_expansion_factor=2.66, bias=False, LayerNorm_type="WithBias"),
               "1x3x128x128", _image(1, 3, 128, 128, uniform=True), reference_official_s=2.79),
    PaperModel("vitpose_b", "vitpose", "vitpose_b",
               dict(backbone=dict(type="ViT", img_size=[256, 192], patch_size=16, embed_dim=768, depth=12, num_heads=12,
                                  ratio=1, use_checkpoint=False, mlp_ratio=4, qkv_bias=True, drop_path_rate=0.3),
                    keypoint_head=dict(type="TopdownHeatmapSimpleHead", in_channels=768, num_deconv_layers=2,
                                       num_deconv_filters=[256, 256], num_deconv_kernels=[4, 4],
                                       extra={"final_conv_kernel": 1}, out_channels=17)),
               "1x3x256x192", _image(1, 3, 256, 192), reference_official_s=0.303),
    PaperModel("channelvit_s16", "channelvit", "channelvit_s16",
               dict(img_size=[224], patch_size=16, in_chans=3, num_classes=0, embed_dim=384, depth=12, num_heads=6,
                    mlp_ratio=4, qkv_bias=True, enable_sample=True, norm_layer=LN6),
               "1x3x224x224 + channels", _channelvit_inputs, official_file="channelvit/backbone/hcs_channel_vit.py",
               reference_official_s=0.258),
    PaperModel("channelvit_s16_dino", "channelvit", "channelvit_s16",
               dict(img_size=[224], patch_size=16, in_chans=3, num_classes=0, embed_dim=384, depth=12, num_heads=6,
                    mlp_ratio=4, qkv_bias=True, norm_layer=LN6),
               "1x3x224x224 + channels", _channelvit_inputs, official_file="channelvit/backbone/channel_vit.py",
               reference_official_s=0.227),
    PaperModel("satmaepp_vit_l_group", "satmaepp_vit", "satmaepp_vit_large_group",
               dict(img_size=96, patch_size=8, in_chans=10, num_classes=62, embed_dim=1024, depth=24, num_heads=16,
                    mlp_ratio=4, qkv_bias=True, drop_path_rate=0.2, global_pool=True, channel_embed=256,
                    channel_groups=SATMAE_GROUPS, norm_layer=LN6),
               "1x10x96x96", _image(1, 10, 96, 96, uniform=True), reference_official_s=2.16),
    PaperModel("satmaepp_vit_l_rgb", "satmaepp_vit_rgb", "satmaepp_vit_large_rgb",
               dict(img_size=224, patch_size=16, in_chans=3, num_classes=62, embed_dim=1024, depth=24, num_heads=16,
                    mlp_ratio=4, qkv_bias=True, drop_path_rate=0.2, global_pool=True, norm_layer=LN6),
               "1x3x224x224", _image(1, 3, 224, 224), reference_official_s=1.24),
    PaperModel("satmaepp_mae_l_group", "satmaepp_mae", "satmaepp_mae_vit_large_group",
               dict(img_size=96, patch_size=8, in_chans=10, spatial_mask=False, channel_groups=SATMAE_GROUPS,
                    channel_embed=256, embed_dim=1024, depth=24, num_heads=16, decoder_channel_embed=128,
                    decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4, norm_pix_loss=False,
                    proj_ratio=4, norm_layer=LN6),
               "1x10x96x96 (+192/384 pyramid, noise)", _satmae_pyramid, call_kwargs={"mask_ratio": 0.75},
               reference_official_s=0.97),
    PaperModel("satmaepp_mae_l_rgb", "satmaepp_mae_rgb", "satmaepp_mae_vit_large_rgb",
               dict(img_size=224, patch_size=16, in_chans=3, embed_dim=1024, depth=24, num_heads=16,
                    decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4, norm_pix_loss=False,
                    proj_ratio=4, norm_layer=LN6),
               "1x3x224x224 (+448, noise)", _satmae_rgb_pair, call_kwargs={"mask_ratio": 0.75}),
    PaperModel("hbformer_synapse", "hbformer", "hbformer_synapse_224",
               dict(args={"dataset": "Synapse", "swin_pretrained_path": None}, img_size=[224, 224], feature_size=48),
               "1x3x224x224", _image(1, 3, 224, 224, uniform=True), reference_official_s=0.192),
    PaperModel("paratranscnn_synapse", "paratranscnn", "paratranscnn_synapse",
               dict(n_channels=3, num_classes=9, heads=8, dim=320, depth=[3, 3, 3], patch_size=2),
               "1x3x224x224", _image(1, 3, 224, 224, uniform=True), reference_official_s=3.97),
    PaperModel("duoformer_r50", "duoformer", "duoformer_r50",
               dict(depth=12, embed_dim=768, num_heads=12, num_classes=10, num_layers=2, num_patches=49, proj_dim=768,
                    backbone="r50", scale_token="random", patch_attn=True, freeze_backbone=True, pretrained=False),
               "1x3x224x224", _image(1, 3, 224, 224), reference_official_s=0.430),
    PaperModel("itransformer_ecl", "itransformer", "itransformer",
               dict(task_name="long_term_forecast", seq_len=96, label_len=48, pred_len=96, enc_in=321, dec_in=321,
                    c_out=321, d_model=512, n_heads=8, e_layers=3, d_layers=1, d_ff=512, factor=1, dropout=0.1,
                    embed="timeF", freq="h", activation="gelu", output_attention=False, use_norm=1,
                    class_strategy="projection", features="M"),
               "1x96x321 + marks 1x96x4", _itransformer_inputs, ours_overrides={"seq_len": 96, "pred_len": 96},
               reference_official_s=0.029),
]
BY_KEY = {m.key: m for m in PAPER_MODELS}


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def matmul_gflops(n: int = 2048, repeat: int = 5) -> float:
    """fp32 ``a @ b`` throughput (GFLOP/s) on the current threads: 2 n^3 / median time of ``repeat`` calls."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    with torch.inference_mode():
        for _ in range(2):
            a @ b
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


WARMUP_S = 2.5  # > RETUNE_AFTER_S of the fast path


def warm_up(fns: Sequence[Callable[[], Any]], warmup: int) -> list[Any]:
    """Call ``fns`` in turn, at least ``warmup`` and two rounds and WARMUP_S seconds; the last outputs.

    The fast path times each matmul / attention shape on its first call and close calls once more a
    second later (``vitsuite.core.layers.fast.RETUNE_AFTER_S``): both belong to the warm-up, not to the
    timed calls."""
    outs: list[Any] = [None] * len(fns)
    start, done = time.perf_counter(), 0
    while done < max(warmup, 2) or time.perf_counter() - start < WARMUP_S:
        outs = [fn() for fn in fns]
        done += 1
    return outs


def timed(fn: Callable[[], Any], warmup: int, repeat: int) -> tuple[float, list[float], Any]:
    """Median wall time of ``repeat`` calls after the warm-up (:func:`warm_up`); also the last output."""
    out, = warm_up([fn], warmup)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def timed_pair(fa: Callable[[], Any], fb: Callable[[], Any], warmup: int, repeat: int,
               min_time: float) -> tuple[list[float], Any, list[float], Any]:
    """Interleaved timing of two implementations: ``a, b, a, b, ...`` after the warm-up (:func:`warm_up`).

    At least ``repeat`` pairs, more while either side has spent under ``min_time`` seconds, so that
    a 30 ms forward is measured over dozens of calls. Alternating makes a change of machine load
    (another process, the allocator's state) fall on both sides alike. Returns (times a, last output
    a, times b, last output b).
    """
    out_a, out_b = warm_up([fa, fb], warmup)
    times_a: list[float] = []
    times_b: list[float] = []
    while len(times_a) < repeat or min(sum(times_a), sum(times_b)) < min_time:
        for fn, times in ((fa, times_a), (fb, times_b)):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
            if fn is fa:
                out_a = out
            else:
                out_b = out
    return times_a, out_a, times_b, out_b


def as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def max_abs_diff(outs: Sequence[torch.Tensor], refs: Sequence[torch.Tensor]) -> tuple[float, float]:
    """(max |out - ref| over all outputs, that divided by max |ref|) in float64."""
    if len(outs) != len(refs):
        raise RuntimeError(f"{len(outs)} outputs vs {len(refs)} official outputs")
    diff, scale = 0.0, 0.0
    for o, r in zip(outs, refs):
        o, r = o.detach().to(torch.float64), r.detach().to(torch.float64)
        if o.shape != r.shape:
            raise RuntimeError(f"output shape {tuple(o.shape)} vs official {tuple(r.shape)}")
        if r.numel():
            diff = max(diff, float((o - r).abs().max()))
            scale = max(scale, float(r.abs().max()))
    return diff, (diff / scale if scale else float("nan"))


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _linear_pointwise_flop(*args, out_val=None, **kwargs) -> int:
    """oneDNN linear (``mkldnn._linear_pointwise`` and its ``.binary`` overload): 2 * out elements * K."""
    return 2 * out_val.numel() * args[0].shape[-1]


_linear_pointwise_flop._get_raw = True  # FlopCounterMode passes the raw tensors (both overloads)


def _native_depthwise_flop(*args, out_val=None, **kwargs) -> int:
    """vitsuite's native depthwise conv (``vitsuite_native.depthwise_nhwc``): 2 * out elements * kh * kw,
    the count torch gives a depthwise ``aten.convolution``."""
    return 2 * out_val.numel() * args[1].shape[0] * args[1].shape[1]


_native_depthwise_flop._get_raw = True


def _native_depthwise_chain_flop(x, w1, b1, w2, row0, row1, out_val=None, **kwargs) -> int:
    """``vitsuite_native.depthwise_chain``: the first convolution on the intermediate rows the second
    reads (its halo rows inside the image), then the second on the output rows."""
    B, H, W, C = x.shape
    halo = w2.shape[0] // 2
    rows1 = min(row1 + halo, H) - max(row0 - halo, 0)
    return 2 * B * rows1 * W * C * w1.shape[0] * w1.shape[1] + 2 * out_val.numel() * w2.shape[0] * w2.shape[1]


_native_depthwise_chain_flop._get_raw = True


def count_flops(fn: Callable[[], Any], module: torch.nn.Module) -> int:
    """Forward FLOPs of ``fn()`` (FlopCounterMode: matmuls, convolutions, attention).

    torch's registry has no formula for the CPU flash-attention kernel that
    ``F.scaled_dot_product_attention`` dispatches to on CPU, nor for the oneDNN fused linear
    ``torch.ops.mkldnn._linear_pointwise`` (which some of our layers call directly), nor for our native
    depthwise convolution, GEMM and attention, so they are added here (attention: same formula as the CUDA kernels,
    4 * B * H * Lq * Lk * D); without them those ops would count as free.
    ``module``'s parameters are frozen while counting: the counter's module tracker would otherwise
    try to hook the backward of parameters passed as submodule inputs, which fails without autograd.
    """
    from torch.utils.flop_counter import FlopCounterMode

    custom = {}
    if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flop
    with contextlib.suppress(AttributeError, RuntimeError):
        custom[torch.ops.mkldnn._linear_pointwise] = _linear_pointwise_flop
    from vitsuite.core import native

    if native.available():
        custom[torch.ops.vitsuite_native.depthwise_nhwc] = _native_depthwise_flop
        custom[torch.ops.vitsuite_native.depthwise_chain] = _native_depthwise_chain_flop
        custom[torch.ops.vitsuite_native.linear_packed] = _linear_pointwise_flop  # same formula
        custom[torch.ops.vitsuite_native.attention] = _sdpa_cpu_flop  # q / k / v as SDPA's
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with FlopCounterMode(display=False, custom_mapping=custom) as counter:
            fn()
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return int(counter.get_total_flops())


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:  # pragma: no cover - psutil is a dependency
        return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def run_model(pm: PaperModel, args: argparse.Namespace) -> dict[str, Any]:
    """Everything for one model, in this process."""
    from vitsuite.models import UnknownModelError, count_model_parameters, from_official, list_models, list_official

    torch.set_num_threads(args.threads)
    _official.quiet_official_warnings()
    row: dict[str, Any] = {
        "key": pm.key, "model_id": pm.model_id, "ours": pm.ours, "ours_overrides": pm.ours_overrides,
        "official_file": pm.official_file, "input": pm.input_desc, "official_kwargs": pm.official_kwargs,
        "reference_official_s": pm.reference_official_s, "threads": args.threads, "status": "ok",
    }
    implemented = pm.model_id in list_official()
    if not implemented and not args.time_missing:
        row["status"] = "not implemented"
        return row

    row["matmul_gflops"] = matmul_gflops()
    g = torch.Generator().manual_seed(1)
    inputs, tensor_kwargs = pm.make_inputs(g)

    def in_mode(fn):
        def call():
            with torch.inference_mode():
                return fn()

        return call

    # ---- official ------------------------------------------------------------------------
    rss0 = rss_mb()
    official = state_dict = None
    try:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        official = _official.load_official(pm.model_id, pm.official_kwargs, args.official_root, pm.official_file)
        row["official_build_s"] = time.perf_counter() - t0
        state_dict = official.state_dict()
        row["official_params"] = sum(p.numel() for p in official.parameters())
        row["official_rss_mb"] = rss_mb() - rss0
    except Exception as exc:
        row["official_error"] = _short(exc)
        print(f"[{pm.key}] official module not available: {row['official_error']}", file=sys.stderr, flush=True)

    # ---- ours ----------------------------------------------------------------------------
    ours = None
    rss1 = rss_mb()
    try:
        ours = from_official(pm.model_id, pm.official_kwargs, state_dict).eval()
        row["ours_params"] = sum(p.numel() for p in ours.parameters())
        row["ours_rss_mb"] = rss_mb() - rss1
        if any(s.name == pm.ours for s in list_models()):
            try:  # the registered preset (meta device) should count what from_official built
                preset = count_model_parameters(pm.ours, **pm.ours_overrides)
                row["preset_params"] = preset
                row["preset_matches"] = preset == row["ours_params"]
            except Exception as exc:
                row["preset_matches"] = None
                row["preset_error"] = _short(exc)
        else:
            row["preset_matches"] = None  # registered name not (yet) in the registry
    except UnknownModelError:
        row["status"] = "not implemented"
    except Exception as exc:
        row["status"] = "ours failed"
        row["ours_error"] = _short(exc)
        traceback.print_exc()
    del state_dict

    def call_ours(model):
        return lambda: as_tuple(model(*inputs, **pm.call_kwargs, **tensor_kwargs))

    # ---- timings -------------------------------------------------------------------------
    ref = None
    paired = False
    if official is not None:
        fn = in_mode(lambda: _official.call_official(
            pm.model_id, official, inputs, "forward", pm.call_kwargs, tensor_kwargs))
        if ours is not None:  # interleaved with ours (see timed_pair)
            try:
                times_o, ref, times_u, out = timed_pair(fn, in_mode(call_ours(ours)), args.warmup, args.repeat,
                                                        args.min_time)
                paired = True
                row["official_s"], row["official_times"] = statistics.median(times_o), times_o
                row["ours_s"], row["ours_times"] = statistics.median(times_u), times_u
                row["ratio_paired_median"] = statistics.median(o / u for o, u in zip(times_o, times_u))
                row["max_diff"], row["rel_diff"] = max_abs_diff(out, ref)
            except Exception:  # one side failed: time them apart below, which names the culprit
                traceback.print_exc()
        if not paired:
            try:
                row["official_s"], row["official_times"], ref = timed(fn, args.warmup, args.repeat)
            except Exception as exc:
                row["official_error"] = _short(exc)
                traceback.print_exc()
        if ours is None or args.official_flops:
            try:
                row["official_gflops"] = count_flops(in_mode(lambda: _official.call_official(
                    pm.model_id, official, inputs, "forward", pm.call_kwargs, tensor_kwargs)), official) / 1e9
            except Exception as exc:
                row["flops_error"] = _short(exc)
        del official

    if ours is not None:
        try:
            row["gflops"] = count_flops(in_mode(call_ours(ours)), ours) / 1e9
            row["flops_counted_on"] = "ours"
            if not paired:
                row["ours_s"], row["ours_times"], out = timed(in_mode(call_ours(ours)), args.warmup, args.repeat)
                if ref is not None:
                    row["max_diff"], row["rel_diff"] = max_abs_diff(out, ref)
        except Exception as exc:
            row["status"] = "ours failed"
            row["ours_error"] = _short(exc)
            traceback.print_exc()

        row["kernel_choices"] = kernel_choices(fast_path._CHOICE)  # fp32 fast path (bf16 / compile make none)

        def bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return call_ours(ours)()

        from vitsuite.core.runtime import cpu_has_native

        # Without native bf16 (AVX2-only CPUs) autocast is emulated, 5-30x slower than fp32 (measured on
        # an AVX2 EPYC: DRSformer 64 s, ParaTransCNN 96 s per call): not timed unless asked for.
        if args.bf16 == "never" or (args.bf16 == "auto" and not cpu_has_native(torch.bfloat16)):
            row["bf16_error"] = f"not timed: no native bf16 on this CPU ({torch.backends.cpu.get_cpu_capability()})"
        else:
            try:
                row["ours_bf16_s"], row["ours_bf16_times"], out = timed(in_mode(bf16), args.warmup, args.repeat)
                if ref is not None:
                    row["bf16_max_diff"], row["bf16_rel_diff"] = max_abs_diff(out, ref)
            except Exception as exc:
                row["bf16_error"] = _short(exc)

        if args.compile:
            try:
                compiled = torch.compile(ours)
                t0 = time.perf_counter()
                in_mode(call_ours(compiled))()
                row["compile_first_call_s"] = time.perf_counter() - t0
                row["ours_compile_s"], row["ours_compile_times"], out = timed(
                    in_mode(call_ours(compiled)), args.warmup, args.repeat)
                if ref is not None:
                    row["compile_max_diff"], row["compile_rel_diff"] = max_abs_diff(out, ref)
            except Exception as exc:
                row["compile_error"] = _short(exc)

    # ---- derived -------------------------------------------------------------------------
    if "gflops" not in row and "official_gflops" in row:
        row["gflops"], row["flops_counted_on"] = row["official_gflops"], "official"
    if "gflops" in row and "official_gflops" in row and row.get("flops_counted_on") == "ours":
        # not an error by itself: ours may do other arithmetic (e.g. Winograd 3x3 convolutions)
        row["flops_differ"] = abs(row["gflops"] - row["official_gflops"]) > 0.01 * row["official_gflops"]
    # throughput measured again after the timings; the better of the two is the machine's capability
    # (the first one may have been taken while another process held the cores)
    row["matmul_gflops_end"] = matmul_gflops()
    row["matmul_gflops_start"] = row["matmul_gflops"]
    row["matmul_gflops"] = max(row["matmul_gflops_start"], row["matmul_gflops_end"])
    derive_ratios(row)
    if "official_params" in row and "ours_params" in row and row["official_params"] != row["ours_params"]:
        row["status"] = "param mismatch"
    if "official_error" in row and row["status"] == "ok":
        row["status"] = "official unavailable"
    row["peak_rss_mb"] = peak_rss_mb()
    return row


def derive_ratios(row: dict[str, Any]) -> None:
    """The physical limit and the ratios of a row from its times, FLOPs and matmul throughput (in place)."""
    if "gflops" in row:
        row["limit_s"] = row["gflops"] / row["matmul_gflops"]
    if row.get("official_s") and row.get("ours_s"):
        row["ratio_official_over_ours"] = row["official_s"] / row["ours_s"]
    if row.get("ours_s") and row.get("limit_s"):
        row["ours_over_limit"] = row["ours_s"] / row["limit_s"]
    if "official_gflops" in row:
        row["official_limit_s"] = row["official_gflops"] / row["matmul_gflops"]
    if row.get("official_s") and (row.get("official_limit_s") or row.get("limit_s")):
        row["official_over_limit"] = row["official_s"] / (row.get("official_limit_s") or row["limit_s"])


def kernel_choices(choices: Mapping[tuple, str]) -> dict[str, dict[str, int]]:
    """How many shapes of each fast-path op went to each kernel in this process, e.g. ``{"linear":
    {"native": 4, "mkl": 2}, "attention": {"native": 1}}`` (``core.layers.fast._CHOICE``): a choice made in a
    slow phase of the machine can differ between processes, and with it a model's time."""
    counts: dict[str, dict[str, int]] = {}
    for key, name in choices.items():
        op = counts.setdefault(str(key[0]) if key else "?", {})
        op[name] = op.get(name, 0) + 1
    return {op: dict(sorted(c.items())) for op, c in sorted(counts.items())}


def merge_processes(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One row from the same model measured in several fresh processes (``--processes``).

    A process carries state that holds for all its calls - the kernels the fast path chose, where the
    allocator put the weights, the official module's oneDNN primitives - so the two implementations'
    ratio moves between processes by more than within one (on the benchmark VM, DRCT's official forward ran
    1.55-1.69 s in all calls of one process against 1.70-2.32 s in every other). The calls of all processes
    are pooled: medians of all official and all our calls, the median of all per-pair ratios, and each
    process's own ratio kept in ``process_ratios`` (its kernel choices in ``kernel_choices``); max |diff|,
    peak RSS and matmul throughput are the largest seen.
    """
    timed = [r for r in rows if r.get("official_times") and r.get("ours_times")]
    if len(timed) < 2:
        return dict(timed[0] if timed else rows[0])
    row = dict(timed[0])
    row["processes"] = len(timed)
    row["process_ratios"] = [r["ratio_official_over_ours"] for r in timed]
    row["kernel_choices"] = [r.get("kernel_choices", {}) for r in timed]  # per process
    row["official_times"] = [t for r in timed for t in r["official_times"]]
    row["ours_times"] = [t for r in timed for t in r["ours_times"]]
    row["official_s"], row["ours_s"] = statistics.median(row["official_times"]), statistics.median(row["ours_times"])
    row["ratio_paired_median"] = statistics.median(o / u for r in timed for o, u in zip(r["official_times"], r["ours_times"]))
    for key in ("max_diff", "rel_diff", "peak_rss_mb", "matmul_gflops"):
        if all(key in r for r in timed):
            row[key] = max(r[key] for r in timed)
    derive_ratios(row)
    return row


# --------------------------------------------------------------------------------------------
# Orchestration and report
# --------------------------------------------------------------------------------------------


def run_worker(pm: PaperModel, args: argparse.Namespace) -> dict[str, Any]:
    """``run_model`` in a fresh interpreter; the row comes back as the last stdout line (JSON)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", pm.key, "--threads", str(args.threads),
           "--repeat", str(args.repeat), "--min-time", str(args.min_time), "--warmup", str(args.warmup), "--official-root", str(args.official_root)]
    if args.compile:
        cmd.append("--compile")
    if args.time_missing:
        cmd.append("--time-missing")
    if not args.official_flops:
        cmd.append("--no-official-flops")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"key": pm.key, "model_id": pm.model_id, "input": pm.input_desc,
                "status": f"worker failed (exit {proc.returncode})"}
    return json.loads(lines[-1])


def _fmt(value: Any, spec: str = ".3f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:{spec}}{suffix}"


def _gflops(row: Mapping[str, Any]) -> str:
    text = _fmt(row.get("gflops"), ".1f")
    if row.get("flops_differ"):
        text += f" ({row['official_gflops']:.1f})"
    return text


def _diff(row: Mapping[str, Any], prefix: str) -> str:
    if f"{prefix}max_diff" not in row:
        return "–"
    return f"{row[f'{prefix}max_diff']:.1e} ({row[f'{prefix}rel_diff']:.1e})"


def format_table(rows: Sequence[Mapping[str, Any]], with_compile: bool) -> str:
    head = ["model", "input", "params M", "GFLOPs (official)", "official s", "ours s", "official/ours", "pairs (paired)",
            "max diff (rel)", "ours bf16 s", "bf16 diff (rel)"]
    if with_compile:
        head += ["compiled s", "compiled diff (rel)"]
    head += ["limit s", "official/limit", "ours/limit", "peak RSS MB", "status"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] * 2 + ["---:"] * (len(head) - 3) + ["---"]) + " |"]
    for r in rows:
        params = r.get("ours_params", r.get("official_params"))
        cells = [
            r["key"], r.get("input", ""), _fmt(params / 1e6 if params else None, ".2f"), _gflops(r),
            _fmt(r.get("official_s")), _fmt(r.get("ours_s")), _fmt(r.get("ratio_official_over_ours"), ".2f", "x"),
            (f"{len(r['ours_times'])} ({r['ratio_paired_median']:.2f}x)" if "ratio_paired_median" in r else "–"),
            _diff(r, ""), _fmt(r.get("ours_bf16_s")), _diff(r, "bf16_"),
        ]
        if with_compile:
            cells += [_fmt(r.get("ours_compile_s")), _diff(r, "compile_")]
        status = r.get("status", "")
        for key in ("official_error", "ours_error"):
            if key in r:
                status += f" ({r[key]})"
        cells += [_fmt(r.get("limit_s")), _fmt(r.get("official_over_limit"), ".2f", "x"),
                  _fmt(r.get("ours_over_limit"), ".2f", "x"), _fmt(r.get("peak_rss_mb"), ".0f"), status.replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def select(spec: str) -> list[PaperModel]:
    if not spec:
        return list(PAPER_MODELS)
    wanted = [s.strip().lower() for s in spec.split(",") if s.strip()]
    chosen = [m for m in PAPER_MODELS if any(w == m.model_id or w in m.key for w in wanted)]
    unknown = [w for w in wanted if not any(w == m.model_id or w in m.key for m in PAPER_MODELS)]
    if unknown:
        raise SystemExit(f"unknown model(s): {', '.join(unknown)} (keys: {', '.join(BY_KEY)})")
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="", help="comma-separated filters on key / model_id (default: all)")
    parser.add_argument("--official-root", type=Path, default=_official.DEFAULT_OFFICIAL_ROOT)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="timed forwards per measurement (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards before timing")
    parser.add_argument("--min-time", type=float, default=2.0,
                        help="official and ours alternate until each has run at least this many seconds "
                             "(and at least --repeat times)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(ours)")
    parser.add_argument("--bf16", choices=("auto", "always", "never"), default="auto",
                        help="time bf16 autocast: auto = only where the CPU has native bf16 (AVX512-BF16 / AMX)")
    parser.add_argument("--time-missing", action="store_true",
                        help="time the official module even when ours is not implemented")
    parser.add_argument("--no-official-flops", dest="official_flops", action="store_false",
                        help="do not count the official module's FLOPs (cross-check of ours; one extra forward)")
    parser.add_argument("--in-process", action="store_true", help="run every model in this process")
    parser.add_argument("--processes", type=int, default=1,
                        help="measure each model in this many fresh processes, calls pooled (each runs --min-time)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:  # child process: one model, JSON on stdout
        row = run_model(BY_KEY[args.worker], args)
        print(json.dumps(row), flush=True)
        return 0

    if not args.official_root.is_dir():
        print(f"official root {args.official_root} does not exist: official modules will be missing "
              f"(see benchmarks/README.md)", file=sys.stderr)
    models = select(args.models)
    torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    load_before = os.getloadavg()
    rows = []
    for pm in models:
        print(f"[{pm.key}] ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        if args.in_process:
            row = run_model(pm, args)
        else:
            row = merge_processes([run_worker(pm, args) for _ in range(max(1, args.processes))])
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        print(f"[{pm.key}] {row.get('status')} ({row['wall_s']:.1f} s)", file=sys.stderr, flush=True)

    import timm

    report = {
        "started": started,
        "host": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                 "cpu_model": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                 # which matmul kernel the fast path chose per shape depends on the CPU (core/layers/fast.py)
                 "linear_kernel": os.environ.get("VITSUITE_LINEAR_KERNEL", "auto"),
                 "kernel_cache": os.environ.get("VITSUITE_KERNEL_CACHE", ""),
                 "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__},
        "settings": {"threads": args.threads, "repeat": args.repeat, "min_time": args.min_time, "warmup": args.warmup,
                     "compile": args.compile, "bf16": args.bf16,
                     "official_root": str(args.official_root), "in_process": args.in_process,
                     "processes": 1 if args.in_process else max(1, args.processes)},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(format_table(rows, args.compile))
    print("\nmatmul fp32 GFLOP/s per row: "
          + ", ".join(f"{r['key']}={r['matmul_gflops']:.0f}" for r in rows if "matmul_gflops" in r))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
