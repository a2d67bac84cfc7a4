"""Restoration inference benchmarks (JSON out; not unit tests, never run by them).

* ``--psnr``: PSNR(tiled, untiled) of the restoration predictor (``pipelines/restoration/predict.py``)
  on a real photo crop (``skimage.data.astronaut()`` when scikit-image is installed, else a
  synthetic natural-ish image): paper-size HAT x4 (``build_model("hat", upscale=4)``, random init or
  ``--checkpoint``) on a ``--crop`` px crop at the default overlap / margin / alignment with tiles
  smaller than the crop (``--hat-tiles``; the default tile is larger than a crop that fits untiled
  in memory, so smaller tiles -- more seams per pixel -- bound its error from below), the same
  without alignment, and paper-size DRSformer (``--drs-tiles`` on a ``--drs-size`` image).
* ``--rss``: peak RSS (``VmHWM``, a fresh subprocess per size) of ``predict_paths`` on one
  ``size x size`` PNG x4 with paper-size HAT at the default tile (``--rss-sizes``). The model part is
  bounded by the tile; what grows with the image is the input, the float32 output canvas and the
  encoded output, reported beside the peak so the extrapolation to 2048 px is explicit.
* ``--throughput``: images/s of ``predict_paths`` on a folder of ``--images`` PNGs of ``--size`` px x4
  with paper-size HAT (``--threads`` threads), per ``--dtypes``, with the time split between model
  calls (timed by forward hooks inside the tile function) and everything else (reading, tiling,
  blending, channel handling, writing).

No flag: all three. ``--light`` swaps in small models for a smoke run of the script itself.

    .venv/bin/python benchmarks/restoration.py --psnr
    .venv/bin/python benchmarks/restoration.py --rss --rss-sizes 512,1024
    .venv/bin/python benchmarks/restoration.py --throughput --images 4 --size 512 --dtypes float32,bf16
    .venv/bin/python benchmarks/restoration.py --light --images 2 --size 96 --rss-sizes 96,192   # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import peak_rss_mb, rss_mb  # noqa: E402

HERE = Path(__file__).resolve()
DEFAULT_OUT = HERE.parent / "results" / "restoration.json"
LIGHT_HAT = dict(embed_dim=60, depths=(2, 2, 2, 2), num_heads=(6, 6, 6, 6))
LIGHT_DRS = dict(dim=24, num_blocks=(1, 1, 1, 2))


def photo(size: int | tuple[int, int] | None = None):
    """A real photo as float32 (H, W, 3) in [0, 1]: astronaut (512 x 512), resized by bicubic when
    ``size`` is given; without scikit-image a smooth synthetic image with edges and texture."""
    import numpy as np

    try:
        from skimage import data

        img = data.astronaut().astype(np.float32) / 255
        source = "skimage.data.astronaut"
    except ImportError:  # pragma: no cover - depends on the environment
        yy, xx = np.mgrid[0:512, 0:512] / 512.0
        rng = np.random.default_rng(0)
        base = np.stack([np.sin(7 * xx + 3 * yy), np.cos(5 * yy * xx * 4), (xx > 0.5) ^ (yy > 0.3)], -1)
        img = (0.5 + 0.4 * base + 0.05 * rng.standard_normal((512, 512, 3))).clip(0, 1).astype(np.float32)
        source = "synthetic"
    if size is not None:
        import cv2

        h, w = (size, size) if isinstance(size, int) else size
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC if h > 512 else cv2.INTER_AREA).clip(0, 1)
    return img, source


def _psnr(a, b) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def _restorer(kind: str, light: bool, checkpoint: str | None = None, scale: int = 4):
    import torch

    from vitsuite.pipelines.restoration.predict import Restorer

    if checkpoint:
        return Restorer.load(checkpoint)
    torch.manual_seed(0)
    if kind == "hat":
        return Restorer.build("hat", upscale=scale, **(LIGHT_HAT if light else {}))
    return Restorer.build("drsformer", **(LIGHT_DRS if light else {}))


# --------------------------------------------------------------------------------------------- psnr


def psnr_bench(args) -> dict:
    import torch

    from vitsuite.core.errors import UserError
    from vitsuite.core.tiling import plan_tiles
    from vitsuite.pipelines.restoration.predict import PredictOptions

    torch.set_num_threads(args.threads)
    rows = []
    for kind in [k for k in args.models.split(",") if k]:
        r = _restorer(kind, args.light, args.checkpoint if kind == "hat" else args.drs_checkpoint)
        if kind == "hat":
            img, source = photo()
            y0, x0 = 40, 150  # face and helmet: edges, texture, flat areas
            img = img[y0:y0 + args.crop, x0:x0 + args.crop]
            tiles = [int(t) for t in args.hat_tiles.split(",") if t]
        else:
            img, source = photo(args.drs_size)
            tiles = [int(t) for t in args.drs_tiles.split(",") if t]
        x = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()
        ts = r.tile_settings()
        t0 = time.perf_counter()
        ref = r.restore_tensor(x, PredictOptions(tile=0))
        t_ref = time.perf_counter() - t0
        print(f"{r.describe()} on {tuple(x.shape[2:])}: untiled {t_ref:.1f} s", flush=True)
        configs = [dict(tile=t) for t in tiles]
        if kind == "hat" and tiles:
            configs.append(dict(tile=tiles[0], align=1))  # what unaligned tiles cost
        if kind == "hat" and args.hat_sweep and tiles:
            pairs = [tuple(int(v) for v in pair.split(":")) for pair in args.hat_sweep.split(",") if pair]
            configs += [dict(tile=tiles[0], overlap=o, margin=m) for o, m in pairs]
        for cfg in configs:
            opts = PredictOptions(**cfg)
            try:
                s = r.tile_settings(opts)
            except UserError as exc:
                rows.append({"family": kind, "model": r.describe(), **cfg, "error": str(exc)})
                print(f"  {cfg}: skipped ({exc})", flush=True)
                continue
            plan = plan_tiles(x.shape[2:], s.tile, s.overlap, multiple_of=s.multiple_of, align=s.align)
            t0 = time.perf_counter()
            y = r.restore_tensor(x, opts)
            dt = time.perf_counter() - t0
            params = sum(p.numel() for p in r.model.parameters())
            row = {"family": kind, "model": r.describe(), "params_m": round(params / 1e6, 2),
                   "image": source, "size": list(x.shape[2:]), "tile": s.tile, "overlap": s.overlap,
                   "margin": s.margin, "align": s.align, "tiles": len(plan),
                   "psnr_db": round(_psnr(y, ref), 2), "max_abs_diff": float((y - ref).abs().max()),
                   "seconds": round(dt, 1), "untiled_seconds": round(t_ref, 1),
                   "default_tiling": dict(tile=ts.tile, overlap=ts.overlap, margin=ts.margin, align=ts.align)}
            rows.append(row)
            print(f"  tile {s.tile} overlap {s.overlap} margin {s.margin} align {s.align} ({len(plan)} tiles): "
                  f"PSNR {row['psnr_db']} dB, max |diff| {row['max_abs_diff']:.2e}, {dt:.1f} s", flush=True)
    return {"rows": rows, "light": args.light, "checkpoint": args.checkpoint}


# --------------------------------------------------------------------------------------------- rss


def _rss_child(args) -> None:
    """One predict_paths run on one size x size PNG in this fresh process; prints a JSON line."""
    import torch

    from vitsuite.core.imageio import write_image
    from vitsuite.pipelines.restoration.predict import PredictOptions, predict_paths

    torch.set_num_threads(args.threads)
    size = args.rss_child
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp, "in"), Path(tmp, "out")
        src.mkdir()
        img, _ = photo(size)
        write_image(src / "img.png", img)
        del img
        r = _restorer("hat", args.light, args.checkpoint)
        base = rss_mb()
        before = peak_rss_mb()
        t0 = time.perf_counter()
        res = predict_paths(r, src, out, PredictOptions(tile=args.tile), progress=False)
        dt = time.perf_counter() - t0
        ok = res.ok
        ts = r.tile_settings(PredictOptions(tile=args.tile))
    s = r.scale
    print(json.dumps({"size": size, "scale": s, "tile": ts.tile, "overlap": ts.overlap, "ok": ok,
                      "seconds": round(dt, 1), "rss_after_model_mb": round(base, 1),
                      "peak_before_predict_mb": round(before, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
                      "output_float32_mb": round((size * s) ** 2 * 3 * 4 / 2**20, 1),
                      "output_uint8_mb": round((size * s) ** 2 * 3 / 2**20, 1)}), flush=True)


def rss_bench(args) -> dict:
    rows = []
    for size in [int(s) for s in args.rss_sizes.split(",") if s]:
        cmd = [sys.executable, str(HERE), "--rss-child", str(size), "--threads", str(args.threads)]
        if args.tile is not None:
            cmd += ["--tile", str(args.tile)]
        if args.light:
            cmd.append("--light")
        if args.checkpoint:
            cmd += ["--checkpoint", args.checkpoint]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            rows.append({"size": size, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]})
        else:
            rows.append(json.loads(lines[-1]))
        print(f"  rss {size}px: {rows[-1]}", flush=True)
    return {"rows": rows, "light": args.light}


# --------------------------------------------------------------------------------------------- throughput


def throughput_bench(args) -> dict:
    import numpy as np
    import torch

    from vitsuite.core.imageio import write_image
    from vitsuite.pipelines.restoration.predict import PredictOptions, predict_paths

    torch.set_num_threads(args.threads)
    r = _restorer("hat", args.light, args.checkpoint)
    model_time = [0.0]
    calls = [0]
    start = [0.0]

    def pre(module, inputs):
        start[0] = time.perf_counter()

    def post(module, inputs, output):
        model_time[0] += time.perf_counter() - start[0]
        calls[0] += 1

    r.model.register_forward_pre_hook(pre)
    r.model.register_forward_hook(post)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "in")
        src.mkdir()
        base, _ = photo(args.size)
        for i in range(args.images):  # distinct images: flips / rotations of the photo
            img = np.rot90(base[:, ::-1] if i % 2 else base, i // 2)
            write_image(src / f"img_{i:03d}.png", np.ascontiguousarray(img))
        warm = Path(tmp, "warm")
        warm.mkdir()
        write_image(warm / "w.png", base[:64, :64])
        for dtype in [d for d in args.dtypes.split(",") if d]:
            opts = PredictOptions(tile=args.tile, dtype=dtype)
            predict_paths(r, warm, Path(tmp, f"wout_{dtype}"), opts, progress=False)  # first-call caches
            model_time[0], calls[0] = 0.0, 0
            t0 = time.perf_counter()
            res = predict_paths(r, src, Path(tmp, f"out_{dtype}"), opts, progress=False)
            total = time.perf_counter() - t0
            ts = r.tile_settings(opts)
            row = {"dtype": dtype, "images": args.images, "size": args.size, "scale": r.scale, "tile": ts.tile,
                   "overlap": ts.overlap, "threads": args.threads, "ok": res.ok, "seconds": round(total, 2),
                   "images_per_s": round(args.images / total, 4), "model_calls": calls[0],
                   "model_seconds": round(model_time[0], 2), "other_seconds": round(total - model_time[0], 2),
                   "other_share": round(1 - model_time[0] / total, 4)}
            rows.append(row)
            print(f"  {dtype}: {row['images_per_s']} images/s, model {row['model_seconds']} s, "
                  f"other {row['other_seconds']} s ({100 * row['other_share']:.1f} %)", flush=True)
    return {"rows": rows, "model": r.describe(), "light": args.light}


# --------------------------------------------------------------------------------------------- main


def _table(results: dict) -> str:
    out = []
    if "psnr" in results:
        out += ["| model | size | tile | overlap | margin | align | tiles | PSNR dB | max diff | s |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['model']} | {r['size'][0]}x{r['size'][1]} | {r['tile']} | {r['overlap']} | {r['margin']} | "
                f"{r['align']} | {r['tiles']} | {r['psnr_db']} | {r['max_abs_diff']:.1e} | {r['seconds']} |"
                for r in results["psnr"]["rows"] if "error" not in r]
    if "rss" in results:
        out += ["", "| input px | x | tile | peak RSS MB | after model MB | output f32 MB | s |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {r['size']} | {r.get('scale', '')} | {r.get('tile', '')} | "
                f"{r.get('peak_rss_mb', r.get('error'))} | "
                f"{r.get('rss_after_model_mb', '')} | {r.get('output_float32_mb', '')} | {r.get('seconds', '')} |"
                for r in results["rss"]["rows"]]
    if "throughput" in results:
        out += ["", "| dtype | images | px | images/s | model s | other s | other % |", "|---|---|---|---|---|---|---|"]
        out += [f"| {r['dtype']} | {r['images']} | {r['size']} | {r['images_per_s']} | {r['model_seconds']} | "
                f"{r['other_seconds']} | {100 * r['other_share']:.1f} |" for r in results["throughput"]["rows"]]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--psnr", action="store_true", help="tiled vs untiled PSNR (HAT x4, DRSformer)")
    p.add_argument("--rss", action="store_true", help="peak RSS of predict per image size (subprocesses)")
    p.add_argument("--throughput", action="store_true", help="images/s on a folder, model vs other time")
    p.add_argument("--light", action="store_true", help="small models (smoke run of this script)")
    p.add_argument("--checkpoint", help="HAT-family restorer / authors' checkpoint instead of random init")
    p.add_argument("--drs-checkpoint", help="DRSformer checkpoint for --psnr instead of random init")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--crop", type=int, default=200,
                   help="--psnr: HAT input crop (untiled must fit in memory; not a multiple of 16 on purpose)")
    p.add_argument("--hat-tiles", default="64,96", help="--psnr: HAT tile sizes to compare (default overlap/margin)")
    p.add_argument("--models", default="hat,drsformer", help="--psnr: which models (hat, drsformer)")
    p.add_argument("--hat-sweep", default="", metavar="O:M,...",
                   help="--psnr: also these overlap:margin pairs at the first HAT tile, e.g. 16:8,48:16")
    p.add_argument("--drs-size", type=int, default=512, help="--psnr: DRSformer input size")
    p.add_argument("--drs-tiles", default="256,384", help="--psnr: DRSformer tile sizes")
    p.add_argument("--rss-sizes", default="512,1024", help="--rss: input sizes (x4; 2048 takes hours on 2 cores)")
    p.add_argument("--tile", type=int, default=None, help="--rss/--throughput: tile (default: the model's)")
    p.add_argument("--images", type=int, default=4, help="--throughput: number of images")
    p.add_argument("--size", type=int, default=512, help="--throughput: image size")
    p.add_argument("--dtypes", default="float32,bf16", help="--throughput: autocast dtypes")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results (sections not rerun are kept)")
    p.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rss_child is not None:
        _rss_child(args)
        return 0
    if not (args.psnr or args.rss or args.throughput):
        args.psnr = args.rss = args.throughput = True
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    import torch

    results["machine"] = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                          "threads": args.threads, "processor": platform.processor() or platform.machine(),
                          "load_avg_at_start": [round(v, 2) for v in os.getloadavg()]}  # shared machines: timings vary
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, bench in (("psnr", psnr_bench), ("rss", rss_bench), ("throughput", throughput_bench)):
        if getattr(args, name):
            new = bench(args)
            if name == "psnr" and "psnr" in results:  # keep the rows of models not measured this time
                kept = [r for r in results["psnr"].get("rows", []) if r.get("family") not in args.models.split(",")]
                new["rows"] = kept + new["rows"]
            results[name] = new
            out.write_text(json.dumps(results, indent=2) + "\n")  # after each section: a crash keeps the others
    print(_table({k: v for k, v in results.items() if k in ("psnr", "rss", "throughput") and
                  getattr(args, k)}))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
