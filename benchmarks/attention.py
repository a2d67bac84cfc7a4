"""Attention kernels on the zoo's shapes: PyTorch's SDPA (the CPU flash kernel) against the native
attention kernel (``vitsuite.core.native.attention``), both ending in the token-major layout the output
projection reads (SDPA's ``(B, heads, N, D)`` output transposed and copied, the native one's is already
``(B, N, heads, D)``).

Per shape: the median time of ``--repeat`` calls of each (interleaved call by call, q / k / v as the
strided views of one fused qkv projection, as in the models), GFLOP/s (4 B heads Nq Nk D) and the max
|diff| of the native output against SDPA's.

Usage::

    python benchmarks/attention.py --threads 2 --repeat 50

Writes ``--out`` (default ``benchmarks/results/attention.json``) and prints a markdown table.
"""

from __future__ import annotations

import statistics
import sys

import torch
import torch.nn.functional as F

from native_ab import host, interleaved, print_table, setup, write_json
from vitsuite.core import native

# (batch, heads, queries, keys, head dim, additive mask shape or None, where)
SHAPES = [
    (1, 8, 325, 325, 64, None, "iTransformer ECL (321 variates + 4 time tokens)"),
    (1, 12, 192, 192, 64, None, "ViTPose-B, 256x192"),
    (1, 6, 589, 589, 64, None, "ChannelViT-S/16, 3 channels"),
    (1, 16, 433, 433, 64, None, "SatMAE++ ViT-L grouped, 96x96 (3 groups)"),
    (1, 16, 197, 197, 64, None, "ViT-L/16 at 224"),
    (16, 6, 256, 256, 32, (1, 6, 256, 256), "HAT / DRCT 16x16 windows at 64x64, bias (head dim 30 padded to 32)"),
    (16, 6, 256, 576, 32, (1, 6, 256, 576), "HAT OCAB: 16x16 queries, 24x24 overlapping keys"),
]


def bench_shapes(repeat: int) -> list[dict]:
    rows = []
    for B, H, Nq, Nk, D, mask_shape, where in SHAPES:
        g = torch.Generator().manual_seed(B + H + Nq + Nk + D)
        q = torch.randn(B, Nq, 3, H, D, generator=g).permute(2, 0, 3, 1, 4)[0]    # strided, as from a qkv Linear
        k, v = torch.randn(B, Nk, 2, H, D, generator=g).permute(2, 0, 3, 1, 4).unbind(0)
        mask = None if mask_shape is None else torch.randn(mask_shape, generator=g)
        scale = D ** -0.5
        fns = {
            "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
            .transpose(1, 2).reshape(B, Nq, H * D),
            "native": lambda: native.attention(q, k, v, scale, mask).reshape(B, Nq, H * D),
        }
        diff = float((fns["native"]() - fns["sdpa"]()).abs().max())
        times = interleaved(fns, repeat)
        flops = 4 * B * H * Nq * Nk * D
        rows.append({"shape": [B, H, Nq, Nk, D], "mask": mask_shape, "where": where,
                     "ms": {n: 1e3 * statistics.median(t) for n, t in times.items()},
                     "gflops": {n: flops / statistics.median(t) / 1e9 for n, t in times.items()},
                     "max_diff_vs_sdpa": diff})
    return rows


def main(argv=None) -> int:
    args = setup(__doc__.splitlines()[0], 50, "attention.json", argv)
    if args is None:
        return 1
    with torch.inference_mode():
        rows = bench_shapes(args.repeat)
    print_table(["B, heads, Nq, Nk, D", "mask", "where", "SDPA GFLOP/s", "native GFLOP/s", "native / SDPA", "max diff"],
                [[tuple(r["shape"]), r["mask"] or "-", r["where"], f"{r['gflops']['sdpa']:.0f}",
                  f"{r['gflops']['native']:.0f}", f"{r['gflops']['native'] / r['gflops']['sdpa']:.2f}x",
                  f"{r['max_diff_vs_sdpa']:.1e}"] for r in rows], 3)
    write_json(args.out, {"host": host(args.threads), "shapes": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
