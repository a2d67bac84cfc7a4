"""``vitsuite-restore``: train / evaluate / predict / demo / export (also ``python -m vitsuite.pipelines.restoration.cli``).

Examples::

    vitsuite-restore predict                                   # bundled HAT x2 on the bundled samples -> outputs/restoration/
    vitsuite-restore predict --task derain                     # bundled DRSformer on the rainy samples
    vitsuite-restore predict photos/ -o out/ --checkpoint HAT_SRx4_ImageNet-pretrain.pth --tile 256
    vitsuite-restore predict img.png -o out/ --self-ensemble --dtype bf16
    vitsuite-restore evaluate --checkpoint restorer.pt                       # held-out skimage photos
    vitsuite-restore evaluate --checkpoint x4.pth --lq Set5/LRbicx4 --gt Set5/GTmod12
    vitsuite-restore train --config configs/restoration/hat_light_x2.yaml --set train.max_steps=100
    torchrun --nproc_per_node 2 -m vitsuite.pipelines.restoration.cli train --config ...
    vitsuite-restore export --checkpoint restorer.pt -o hat.onnx --tile 64
    vitsuite-restore demo                                      # Gradio on http://127.0.0.1:7860
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vitsuite.core.cli import add_config_arguments, add_demo_arguments, console_entry, make_parser
from vitsuite.core.config import load_config



def _runtime(args: argparse.Namespace) -> None:
    from vitsuite.core.runtime import set_threads

    set_threads(args.threads)


def _load(args: argparse.Namespace):
    """The restorer of ``--checkpoint`` (ours or the authors'), else the bundled one for ``--task``."""
    from .predict import Restorer

    overrides = {}
    if getattr(args, "img_range", None) is not None:
        overrides["img_range"] = args.img_range
    task = args.task if (args.task_given or not args.checkpoint) else None  # a checkpoint knows its task
    return Restorer.load(args.checkpoint, task=task, model_id=args.model, scale=args.scale, device=args.device,
                         **overrides)


def _options(args: argparse.Namespace, **extra):
    from .predict import PredictOptions

    return PredictOptions(tile=args.tile, overlap=args.overlap, self_ensemble=args.self_ensemble,
                          tile_batch=args.tile_batch, dtype=args.dtype, device=args.device, **extra)


# --------------------------------------------------------------------------------------------- train


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import RestorationConfig, run_training

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.device != "auto":
        overrides.append(f"train.device={args.device}")
    _runtime(args)
    cfg = load_config(RestorationConfig, args.config, overrides)
    run_training(cfg, save=args.save)
    return 0


# --------------------------------------------------------------------------------------------- evaluate


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, format_report, write_report

    _runtime(args)
    restorer = _load(args)
    report = evaluate(restorer, lq=args.lq, gt=args.gt, lq_suffix=args.lq_suffix, options=_options(args),
                      crop_border=args.crop_border, y_channel=not args.rgb, seed=args.seed)
    print(format_report(report))
    if args.output_dir:
        paths = write_report(report, args.output_dir)
        print(f"metrics: {paths['csv']}")
    if args.json:
        print(json.dumps(report["mean"]))
    return 0


# --------------------------------------------------------------------------------------------- predict


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import SAMPLES, predict_paths

    _runtime(args)
    restorer = _load(args)
    spec = args.input or str(SAMPLES / restorer.task)
    out = Path(args.output) if args.output else Path("outputs/restoration") / restorer.task
    print(f"model: {restorer.describe()}")
    result = predict_paths(restorer, spec, out, _options(args, batch_size=args.batch, progress=False),
                           bit_depth="same" if args.bit_depth == "same" else int(args.bit_depth), ext=args.ext, suffix=args.suffix,
                           skip_existing=args.skip_existing, recursive=args.recursive)
    return 0 if result.ok else 1


# --------------------------------------------------------------------------------------------- demo / export


def _cmd_demo(args: argparse.Namespace) -> int:
    # The one upward import: the demo command starts the app, which itself only calls this pipeline.
    from vitsuite.apps.restoration import launch

    launch(checkpoint=args.checkpoint, host=args.host, port=args.port, max_file_size=args.max_file_size)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .predict import export_restorer

    restorer = _load(args)
    res = export_restorer(restorer, args.output, args.tile)
    print(f"exported {res['format']}: {res['path']} (input 1x3x{args.tile}x{args.tile}; "
          f"max |exported - eager| = {res['max_abs_diff']:.2e})" + (f"; {res['fallback']}" if res.get("fallback") else ""))
    return 0


# --------------------------------------------------------------------------------------------- parser


class _TaskAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.task_given = True


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="restorer.pt from train, or an authors' HAT / DRCT / DRSformer checkpoint "
                   "(default: the bundled model of --task)")
    p.add_argument("--task", choices=["sr", "derain"], default="sr", action=_TaskAction,
                   help="bundled model to use without --checkpoint: sr (light HAT x2) or derain (light DRSformer)")
    p.add_argument("--model", help="expected model (hat, hat_s, drct, drsformer, ...): a checkpoint of another one is refused")
    p.add_argument("--scale", type=int, help="expected SR factor: a checkpoint of another scale is refused")
    p.add_argument("--img-range", type=float, help="authors' checkpoints: img_range when not 1 (e.g. 255)")
    p.set_defaults(task_given=False)


def _add_inference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile", type=int, help="tile size in input px (0: whole image; default per model)")
    p.add_argument("--overlap", type=int, help="tile overlap in input px (default per model)")
    p.add_argument("--tile-batch", type=int, default=1, help="tiles per forward call")
    p.add_argument("--self-ensemble", action="store_true", help="average over 8 flips/rotations (x8 compute)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bf16", "fp16"], help="compute precision")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch default)")


def build_parser() -> argparse.ArgumentParser:
    parser, sub = make_parser("vitsuite-restore", "Image super-resolution (HAT, DRCT) and deraining (DRSformer).")

    p = sub.add_parser("train", help="train a restoration model (works under torchrun)")
    add_config_arguments(p)
    p.add_argument("--output-dir", help="sets train.output_dir")
    p.add_argument("--save", metavar="PATH", help="also copy the trained restorer.pt here")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch default)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="Y-channel PSNR / SSIM (crop_border = scale) against bicubic / the input")
    _add_model_args(p)
    p.add_argument("--gt", default="skimage", help="ground-truth folder (default: the held-out scikit-image photos)")
    p.add_argument("--lq", help="low-quality folder matched to --gt by file stem (default: degrade --gt as in training)")
    p.add_argument("--lq-suffix", default="", help="stripped from LQ stems before matching (e.g. x4)")
    p.add_argument("--crop-border", type=int, help="border px excluded (default: the scale; 0 for deraining)")
    p.add_argument("--rgb", action="store_true", help="score RGB instead of the Y channel")
    p.add_argument("--seed", type=int, default=1, help="seed of the synthetic rain (GT-only deraining evaluation)")
    p.add_argument("--output-dir", help="write metrics.csv and metrics.json here")
    p.add_argument("--json", action="store_true", help="also print the means as JSON")
    _add_inference_args(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="restore an image or every image of a folder")
    p.add_argument("input", nargs="?", help="image, folder, glob or @list.txt (default: the bundled samples of the task)")
    p.add_argument("-o", "--output", help="output folder (default: outputs/restoration/<task>); never the input folder")
    _add_model_args(p)
    _add_inference_args(p)
    p.add_argument("--batch", type=int, default=1, help="same-size images per forward call")
    p.add_argument("--bit-depth", default="same", choices=["same", "8", "16"], help="output bit depth (default: as input)")
    p.add_argument("--ext", help="output format, e.g. .png (default: as input)")
    p.add_argument("--suffix", default="", help="appended to output stems")
    p.add_argument("--recursive", action="store_true", help="search sub-folders of an input folder")
    p.add_argument("--skip-existing", action="store_true", help="skip inputs whose output exists (resume)")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("demo", help="Gradio demo: upload, choose model / tile, compare, download")
    add_demo_arguments(p, "an extra checkpoint offered beside the bundled models")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("export", help="export to ONNX or TorchScript for a fixed tile, with a parity check")
    _add_model_args(p)
    p.add_argument("-o", "--output", required=True, help="model.onnx or model.pt (TorchScript)")
    p.add_argument("--tile", type=int, default=64, help="fixed input tile size (default 64)")
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_export)
    return parser


main = console_entry(build_parser)

if __name__ == "__main__":
    main()
