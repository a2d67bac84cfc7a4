"""Depthwise convolution kernels on DRSformer's shapes: oneDNN (``F.conv2d``, channels-last), the
polyphase form (dilated kernels) and the native AVX2 kernel (``vitsuite.core.native``), plus an
in-process A/B of the whole paper-size DRSformer with and without the native kernel.

Per shape: the median time of ``--repeat`` calls of each kernel after a warm-up (same input, same
process, kernels interleaved call by call), GFLOP/s (2 * out * kh * kw) and the max |diff| against
oneDNN. Whole model: DRSformer 1x3x128x128 forward, the native kernels allowed vs suspended
(core's per-shape choice otherwise unchanged), alternating, ``--model-repeat`` pairs.

Usage::

    python benchmarks/depthwise.py --threads 2 --repeat 30 --model-repeat 6

Writes ``--out`` (default ``benchmarks/results/depthwise.json``) and prints a markdown table.
"""

from __future__ import annotations

import statistics
import sys

import torch
import torch.nn.functional as F

from native_ab import host, interleaved, native_ab, print_table, setup, write_json
from vitsuite.core import native
import vitsuite.core.layers.fast as fast

# (channels, rows, cols, kernel, dilation, where in DRSformer)
SHAPES = [
    (256, 20, 128, 5, 1, "MSFN 5x5, level 1 band (128-wide, h = 127 stored 128, per half)"),
    (256, 18, 128, 3, 1, "MSFN 3x3, level 1 band"),
    (256, 34, 64, 5, 1, "MSFN 5x5, level 2 band"),
    (512, 32, 32, 5, 1, "MSFN 5x5, level 3"),
    (512, 32, 32, 3, 1, "MSFN 3x3, level 3"),
    (1024, 16, 16, 5, 1, "MSFN 5x5, level 4"),
    (288, 128, 128, 3, 1, "TKSA qkv 3x3, decoder level 1 (96 channels)"),
    (144, 128, 128, 3, 1, "TKSA qkv 3x3, encoder level 1"),
    (96, 128, 128, 7, 1, "MEFC sep 7x7 (refinement, 96 channels)"),
    (96, 128, 128, 7, 2, "MEFC dilated 7x7"),
    (96, 128, 128, 3, 2, "MEFC dilated 3x3"),
]


def bench_shapes(repeat: int) -> list[dict]:
    rows = []
    for C, H, W, k, d, where in SHAPES:
        g = torch.Generator().manual_seed(C + k + d)
        x = torch.randn(1, H, W, C, generator=g).permute(0, 3, 1, 2)  # channels-last (B, C, H, W) view
        weight, pad = torch.randn(C, 1, k, k, generator=g), d * (k // 2)
        wt = weight[:, 0].permute(1, 2, 0).contiguous()
        fns = {"onednn": lambda: F.conv2d(x, weight, None, 1, pad, d, C),
               "native": lambda: native.depthwise_nhwc(x.permute(0, 2, 3, 1), wt, None, (pad, pad), d)}
        if d > 1:
            fns["polyphase"] = lambda: fast.polyphase_depthwise_conv2d(x, weight, (pad, pad), d)
        ref = fns["onednn"]()
        diffs = {name: float((fn().reshape(ref.shape) if name != "native" else fn().permute(0, 3, 1, 2)).sub(ref)
                             .abs().max()) for name, fn in fns.items()}
        t = {name: statistics.median(v) for name, v in interleaved(fns, repeat, warmup=3).items()}
        flops = 2 * ref.numel() * k * k
        rows.append({"shape": [C, H, W], "kernel": k, "dilation": d, "where": where,
                     "ms": {n: 1e3 * s for n, s in t.items()},
                     "gflops": {n: flops / s / 1e9 for n, s in t.items()},
                     "max_diff_vs_onednn": diffs})
    return rows


def bench_model(pairs: int) -> dict:
    """DRSformer paper size, native kernels allowed vs suspended, alternating in one process."""
    from vitsuite.models import build_model

    torch.manual_seed(0)
    model = build_model("drsformer").eval()
    x = torch.rand(1, 3, 128, 128)
    return native_ab(lambda: model(x), pairs, "depthwise")


def main(argv=None) -> int:
    args = setup(__doc__.splitlines()[0], 30, "depthwise.json", argv, lambda ap: ap.add_argument(
        "--model-repeat", type=int, default=6, help="whole-model pairs; 0 skips the model"))
    if args is None:
        return 1
    with torch.inference_mode():
        rows = bench_shapes(args.repeat)
    result = {"host": host(args.threads), "shapes": rows}
    print_table(["shape (C, H, W)", "k", "dil", "oneDNN GFLOP/s", "native GFLOP/s", "polyphase GFLOP/s", "native max diff"],
                [[tuple(r["shape"]), r["kernel"], r["dilation"], f"{r['gflops']['onednn']:.1f}",
                  f"{r['gflops']['native']:.1f}",
                  f"{r['gflops']['polyphase']:.1f}" if "polyphase" in r["gflops"] else "–",
                  f"{r['max_diff_vs_onednn']['native']:.1e}"] for r in rows], 1)
    if args.model_repeat:
        result["drsformer"] = m = bench_model(args.model_repeat)
        print(f"\nDRSformer 1x3x128x128: without native {m['median_s']['off']:.3f} s, with "
              f"{m['median_s']['native']:.3f} s ({m['speedup']:.2f}x; native chosen for {m['native_chosen']} "
              f"of {m['shapes']} depthwise shapes)")
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
