"""``vitsuite-forecast``: train / evaluate / predict / demo / export (also ``python -m vitsuite.pipelines.forecast.cli``).

Examples::

    vitsuite-forecast predict                                  # bundled model, bundled TMY3 data -> outputs/forecast/
    vitsuite-forecast predict data.csv -o out/ --horizon 48 --backtest
    vitsuite-forecast predict folder/ -o out/                  # every CSV / Parquet file (core.batch)
    vitsuite-forecast train --config configs/forecast/tmy3.yaml --set train.epochs=3
    torchrun --nproc_per_node 2 -m vitsuite.pipelines.forecast.cli train --config ...
    vitsuite-forecast evaluate --checkpoint runs/forecast/tmy3/forecaster.pt
    vitsuite-forecast export --checkpoint forecaster.pt -o model.onnx
    vitsuite-forecast demo                                     # Gradio on http://127.0.0.1:7860
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vitsuite.core.cli import add_config_arguments, add_demo_arguments, console_entry, make_parser
from vitsuite.core.config import load_config
from vitsuite.core.errors import ConfigError, InputError, UserError

TABLE_EXTS = (".csv", ".parquet", ".pq", ".txt", ".csv.gz")


def _split_list(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


def _runtime(args: argparse.Namespace) -> str:
    from vitsuite.core.runtime import resolve_device, set_threads

    set_threads(args.threads)
    return str(resolve_device(args.device))


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch default)")


def _add_data_shortcuts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timestamp", help="timestamp column (default: detected)")
    p.add_argument("--freq", help="pandas frequency, e.g. h, 15min, D (default: inferred)")
    p.add_argument("--fill", choices=["none", "ffill", "interpolate", "zero"],
                   help="fill missing values / rows instead of failing")


def _data_overrides(args: argparse.Namespace) -> list[str]:
    """``--set data.*`` overrides plus the shortcuts (``--timestamp``, ``--freq``, ``--fill``)."""
    out = [o for o in args.overrides if o.startswith("data.")]
    for key in ("timestamp", "freq", "fill"):
        if getattr(args, key, None):
            out.append(f"data.{key}={getattr(args, key)}")
    return out


def _check_sections(overrides: list[str], allowed: tuple[str, ...]) -> None:
    for o in overrides:
        if not o.split("=", 1)[0].startswith(tuple(f"{a}." for a in allowed)):
            raise ConfigError(f"--set '{o}': only {', '.join(a + '.*' for a in allowed)} can be set here")


# --------------------------------------------------------------------------------------------- train


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import ForecastConfig, run_training

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.path={args.data}")
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.device != "auto":
        overrides.append(f"train.device={args.device}")
    if args.threads:
        from vitsuite.core.runtime import set_threads

        set_threads(args.threads)
    cfg = load_config(ForecastConfig, args.config, overrides)
    run_training(cfg, save=args.save)
    return 0


# --------------------------------------------------------------------------------------------- evaluate


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import prepare
    from .evaluate import EvalConfig, evaluate, format_table, write_report
    from .predict import load_forecaster, load_input

    _check_sections(args.overrides, ("data", "eval"))
    device = _runtime(args)
    fc = load_forecaster(args.checkpoint)
    ecfg = load_config(EvalConfig, None, [o[len("eval."):] for o in args.overrides if o.startswith("eval.")])
    series, dcfg = load_input(fc, args.data, columns=_split_list(args.columns), overrides=_data_overrides(args))
    if args.targets:
        dcfg = dcfg.model_copy(update={"targets": _split_list(args.targets)})
    elif fc.targets and set(fc.targets) <= set(series.columns):
        dcfg = dcfg.model_copy(update={"targets": fc.targets})
    prep = prepare(series, dcfg, inplace=True)
    report = evaluate(fc.model, prep, ecfg, model_name=fc.meta.get("model_name", "model"), device=device)
    print(format_table(report))
    if args.output_dir:
        paths = write_report(report, args.output_dir)
        print(f"metrics: {paths['metrics']}")
    if args.json:
        print(json.dumps({n: {k: m[k] for k in ("mse", "mae", "mse_orig", "mae_orig")}
                          for n, m in report["models"].items()}))
    return 0


# --------------------------------------------------------------------------------------------- predict


def _default_input(fc) -> str:
    path = (fc.meta.get("data") or {}).get("path")
    if not path:
        raise InputError("no input given and the checkpoint names no training file; pass a CSV / Parquet file or folder")
    return path


def _cmd_predict(args: argparse.Namespace) -> int:
    from vitsuite.core.batch import list_inputs, run_batch, split_ext

    from .data import BUNDLED_PREFIX, resolve_path
    from .predict import PredictOptions, load_forecaster, predict_file

    _check_sections(args.overrides, ("data",))
    device = _runtime(args)
    fc = load_forecaster(args.checkpoint)
    opts = PredictOptions(horizon=args.horizon, columns=_split_list(args.columns), targets=_split_list(args.targets),
                          overrides=_data_overrides(args), plot=not args.no_plot, history=args.history,
                          backtest=args.backtest, stride=args.stride, device=device)
    spec = args.input or _default_input(fc)
    ext = "." + args.format
    out = Path(args.output)
    single = spec.startswith(BUNDLED_PREFIX) or Path(spec).is_file()
    if single:
        src = resolve_path(spec)
        if out.suffix.lower() in (".csv", ".parquet"):
            dst = out
        else:
            dst = out / f"{split_ext(src.name)[0]}_forecast{ext}"  # named as run_batch names folder outputs
        if dst.resolve() == src.resolve():
            raise InputError(f"{dst}: output would overwrite the input")
        info = predict_file(fc, src, dst, opts)
        print(f"forecast: {dst} ({info['rows']} steps of {', '.join(info['columns'][:6])}"
              + (", ..." if len(info["columns"]) > 6 else "") + ")")
        for key in ("plot", "backtest"):
            if key in info:
                print(f"{key}: {info[key]}")
        return 0
    if out.suffix.lower() in (".csv", ".parquet"):
        raise UserError(f"{out}: with several inputs the output must be a folder")
    inputs = list_inputs(spec, extensions=TABLE_EXTS, recursive=args.recursive)
    result = run_batch(inputs, out, lambda s, d: predict_file(fc, s, d, opts), suffix="_forecast", ext=ext,
                       skip_existing=args.skip_existing, debug=args.debug)
    return 0 if result.ok else 1


# --------------------------------------------------------------------------------------------- demo / export


def _cmd_demo(args: argparse.Namespace) -> int:
    # The one upward import: the demo command starts the app, which itself only calls this pipeline.
    from vitsuite.apps.forecast import launch

    launch(checkpoint=args.checkpoint, host=args.host, port=args.port, max_file_size=args.max_file_size)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .predict import export_forecaster, load_forecaster

    fc = load_forecaster(args.checkpoint)
    res = export_forecaster(fc, args.output, format=args.format, variates=args.variates)
    print(f"exported {res['format']}: {res['path']} (max |exported - eager| = {res['max_abs_diff']:.2e}); meta: {res['meta']}")
    return 0


# --------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser, sub = make_parser("vitsuite-forecast", "Multivariate time-series forecasting with iTransformer.")
    ckpt_help = "forecaster.pt from train, or an official iTransformer checkpoint (default: the bundled TMY3 model)"

    p = sub.add_parser("train", help="train a forecaster (works under torchrun)")
    add_config_arguments(p)
    p.add_argument("--data", help="CSV / Parquet file (sets data.path)")
    p.add_argument("--output-dir", help="sets train.output_dir")
    p.add_argument("--save", metavar="PATH", help="also copy the trained forecaster.pt here")
    _add_runtime(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="test MSE/MAE of a forecaster and the baselines")
    p.add_argument("--checkpoint", help=ckpt_help)
    p.add_argument("--data", help="file to evaluate on (default: the checkpoint's training file)")
    p.add_argument("--columns", help="comma-separated variates (default: the checkpoint's, else all)")
    p.add_argument("--targets", help="comma-separated target variates")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="data.* / eval.* overrides, e.g. --set data.split=ett --set eval.season=24")
    p.add_argument("--output-dir", help="write metrics.json, per_variate.csv, per_horizon.csv here")
    p.add_argument("--json", action="store_true", help="also print the overall numbers as JSON")
    _add_data_shortcuts(p)
    _add_runtime(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="forecast the future of a file (or every file of a folder)")
    p.add_argument("input", nargs="?", help="CSV / Parquet file, folder, glob or @list.txt "
                   "(default: the checkpoint's training file)")
    p.add_argument("-o", "--output", default="outputs/forecast", help="output folder, or a .csv/.parquet file for one input")
    p.add_argument("--checkpoint", help=ckpt_help)
    p.add_argument("--horizon", type=int, help="steps to forecast (default: the model's pred_len; longer is rolled out)")
    p.add_argument("--columns", help="comma-separated input variates (default: the checkpoint's, else all numeric)")
    p.add_argument("--targets", help="comma-separated variates to forecast (default: the checkpoint's, else all)")
    p.add_argument("--format", choices=["csv", "parquet"], default="csv", help="forecast table format")
    p.add_argument("--backtest", action="store_true", help="also write a rolling backtest over the test part")
    p.add_argument("--stride", type=int, help="backtest stride in steps (default: pred_len)")
    p.add_argument("--history", type=int, help="history steps shown in the plot (default: seq_len)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    p.add_argument("--recursive", action="store_true", help="search sub-folders of an input folder")
    p.add_argument("--skip-existing", action="store_true", help="skip inputs whose forecast exists (folder runs)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="data.* overrides for reading the inputs, e.g. --set data.sep=';'")
    _add_data_shortcuts(p)
    _add_runtime(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("demo", help="Gradio demo: upload a CSV, pick columns and horizon")
    add_demo_arguments(p, ckpt_help)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("export", help="export to ONNX or TorchScript with a parity check")
    p.add_argument("--checkpoint", help=ckpt_help)
    p.add_argument("-o", "--output", required=True, help="model.onnx or model.pt (TorchScript)")
    p.add_argument("--format", choices=["onnx", "torchscript"], help="default: by the output's suffix")
    p.add_argument("--variates", type=int, help="number of variates the export is fixed to (default: the checkpoint's)")
    p.set_defaults(func=_cmd_export)
    return parser


main = console_entry(build_parser)

if __name__ == "__main__":
    main()
