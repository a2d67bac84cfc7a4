"""Token-matmul kernels on the zoo's shapes: MKL's sgemm (``F.linear``), oneDNN
(``mkldnn._linear_pointwise``) and the native packed-weight GEMM (``vitsuite.core.native``), plus
in-process A/B runs of paper-size models with and without the native GEMM.

Per shape ``(M rows, K in, N out)``: the median time of ``--repeat`` calls of each kernel (same
process, kernels interleaved call by call), GFLOP/s (2 M K N) and the max |diff| against MKL; for
fc1 shapes also MKL + GELU against the native call with the GELU in its epilogue. Per
model (``--models``, keys of ``benchmarks/models.py``): our forward with the native kernels allowed vs
suspended (core's per-shape kernel choice otherwise unchanged; each mode keeps its own choices),
alternating, ``--model-repeat`` pairs.

Usage::

    python benchmarks/gemm.py --threads 2 --repeat 20 --models vitpose_b,satmaepp_vit_l_rgb --model-repeat 8

Writes ``--out`` (default ``benchmarks/results/gemm.json``) and prints markdown tables.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from native_ab import host, interleaved, native_ab, print_table, setup, write_json
from vitsuite.core import native

# (rows, in, out, where)
SHAPES = [
    (433, 1024, 4096, "SatMAE++ ViT-L grouped (433 tokens): fc1"),
    (433, 4096, 1024, "SatMAE++ ViT-L grouped: fc2"),
    (433, 1024, 3072, "SatMAE++ ViT-L grouped: qkv"),
    (197, 1024, 4096, "ViT-L/16 at 224 (197 tokens): fc1"),
    (197, 4096, 1024, "ViT-L/16 at 224: fc2"),
    (192, 768, 3072, "ViTPose-B (192 tokens): fc1"),
    (192, 3072, 768, "ViTPose-B: fc2"),
    (192, 768, 2304, "ViTPose-B: qkv"),
    (589, 384, 1536, "ChannelViT-S/16, 3 channels (589 tokens): fc1"),
    (589, 1536, 384, "ChannelViT-S/16: fc2"),
    (325, 512, 1536, "iTransformer ECL (325 tokens): qkv"),
    (325, 512, 512, "iTransformer ECL: out / FFN"),
    (4096, 180, 576, "DRCT / HAT window tokens: qkv (padded heads)"),
]


def bench_shapes(repeat: int) -> list[dict]:
    rows = []
    for M, K, N, where in SHAPES:
        g = torch.Generator().manual_seed(M + K + N)
        x, w, b = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g), torch.randn(N, generator=g)
        packed = native.pack_linear_weight(w)
        fns = {"mkl": lambda: F.linear(x, w, b),
               "onednn": lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""),
               "native": lambda: native.linear_packed(x, packed, N, b)}
        ref = fns["mkl"]()
        diffs = {name: float((fn() - ref).abs().max()) for name, fn in fns.items()}
        times = interleaved(fns, repeat)
        flops = 2 * M * K * N
        rows.append({"shape": [M, K, N], "where": where,
                     "ms": {n: 1e3 * statistics.median(t) for n, t in times.items()},
                     "gflops": {n: flops / statistics.median(t) / 1e9 for n, t in times.items()},
                     "max_diff_vs_mkl": diffs})
    return rows


# fc1 shapes, where the native GEMM applies the exact GELU in its epilogue (one write of the output)
GELU_SHAPES = [(433, 1024, 4096), (197, 1024, 4096), (192, 768, 3072), (589, 384, 1536), (325, 512, 512)]


def bench_gelu(repeat: int) -> list[dict]:
    """fc1 + GELU: MKL then an in-place GELU (the official modules' way) against the fused native call."""
    rows = []
    for M, K, N in GELU_SHAPES:
        g = torch.Generator().manual_seed(M * K + N)
        x, w, b = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g) / K ** 0.5, torch.randn(N, generator=g)
        packed = native.pack_linear_weight(w)
        fns = {"mkl_then_gelu": lambda: torch.ops.aten.gelu_(F.linear(x, w, b)),
               "native_fused": lambda: native.linear_packed(x, packed, N, b, act="gelu")}
        diff = float((fns["native_fused"]() - F.gelu(F.linear(x, w, b))).abs().max())
        times = interleaved(fns, repeat)
        rows.append({"shape": [M, K, N], "ms": {n: 1e3 * statistics.median(t) for n, t in times.items()},
                     "max_diff": diff})
    return rows


def bench_models(keys: list[str], pairs: int) -> list[dict]:
    """Our paper-size models, native kernels allowed vs suspended, alternating in one process."""
    sys.path.insert(0, str(Path(__file__).parent))
    import models as paper  # benchmarks/models.py: the paper-size configurations and inputs
    from vitsuite.models import build_model

    out = []
    for key in keys:
        pm = paper.select(key)[0]
        torch.manual_seed(0)
        model = build_model(pm.ours, **pm.ours_overrides).eval()
        inputs, extra = pm.make_inputs(torch.Generator().manual_seed(1))
        out.append({"model": key, **native_ab(lambda m=model: m(*inputs, **pm.call_kwargs, **extra), pairs, "linear")})
        del model
    return out


def main(argv=None) -> int:
    def extra(ap):
        ap.add_argument("--models", default="vitpose_b,channelvit_s16,satmaepp_vit_l_rgb,duoformer_r50,itransformer_ecl")
        ap.add_argument("--model-repeat", type=int, default=8, help="pairs per model; 0 skips the models")

    args = setup(__doc__.splitlines()[0], 20, "gemm.json", argv, extra)
    if args is None:
        return 1
    with torch.inference_mode():
        rows = bench_shapes(args.repeat)
        gelu_rows = bench_gelu(args.repeat)
    result = {"host": host(args.threads), "shapes": rows, "gelu": gelu_rows}
    print_table(["M, K, N", "where", "MKL GFLOP/s", "oneDNN GFLOP/s", "native GFLOP/s", "native / MKL", "native max diff"],
                [[tuple(r["shape"]), r["where"], f"{r['gflops']['mkl']:.0f}", f"{r['gflops']['onednn']:.0f}",
                  f"{r['gflops']['native']:.0f}", f"{r['gflops']['native'] / r['gflops']['mkl']:.2f}x",
                  f"{r['max_diff_vs_mkl']['native']:.1e}"] for r in rows], 2)
    print()
    print_table(["M, K, N", "MKL then GELU ms", "native, GELU fused ms", "speedup", "max diff"],
                [[tuple(r["shape"]), f"{r['ms']['mkl_then_gelu']:.3f}", f"{r['ms']['native_fused']:.3f}",
                  f"{r['ms']['mkl_then_gelu'] / r['ms']['native_fused']:.2f}x", f"{r['max_diff']:.1e}"]
                 for r in gelu_rows], 1)
    if args.model_repeat and args.models:
        result["models"] = ms = bench_models([k for k in args.models.split(",") if k], args.model_repeat)
        print()
        print_table(["model", "without native s", "with native s", "speedup", "native chosen"],
                    [[m["model"], f"{m['median_s']['off']:.4f}", f"{m['median_s']['native']:.4f}", f"{m['speedup']:.2f}x",
                      f"{m['native_chosen']} of {m['shapes']} linear shapes"] for m in ms], 1)
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
