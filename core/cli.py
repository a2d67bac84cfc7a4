"""CLI machinery shared by every console script, and the top-level ``vitsuite`` command.

Each field's script (``vitsuite-restore``, ``vitsuite-forecast``, ...) builds an argparse parser
with :func:`make_parser`, adds its sub-commands, and hands it to :func:`run`. User errors
(:class:`~vitsuite.core.errors.UserError`: missing file, wrong format, bad config, mismatched
checkpoint) print one line and exit non-zero; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from typing import Callable, Sequence

from .env import apply_offline_env
from .errors import UserError


def make_parser(prog: str, description: str) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """A parser with ``--debug`` and a required sub-command group (each sub-command sets ``func``)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    return parser, sub


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` (a YAML preset) and repeatable ``--set key.sub=value`` overrides."""
    parser.add_argument("--config", metavar="FILE", help="YAML config (presets live in configs/<field>/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, dotted keys, e.g. --set train.lr=1e-4 (repeatable)")


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--dtype``, ``--threads``, ``--channels-last``, ``--compile``."""
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bf16", "fp16"],
                        help="compute precision (bf16/fp16 use autocast)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch default)")
    parser.add_argument("--channels-last", action="store_true", help="run convolutions in channels_last layout")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")


def add_demo_arguments(parser: argparse.ArgumentParser, checkpoint_help: str) -> None:
    """A pipeline's ``demo`` command: ``--checkpoint``, ``--host`` (127.0.0.1 by default: this machine
    only), ``--port``, ``--max-file-size`` (upload limit)."""
    parser.add_argument("--checkpoint", help=checkpoint_help)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-file-size", default="20mb", help="upload size limit (gradio syntax, e.g. 5mb)")


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and call the chosen sub-command's ``func(args)``; map errors to exit codes."""
    apply_offline_env()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
        return int(result or 0)
    except UserError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def console_entry(build: Callable[[], argparse.ArgumentParser]) -> Callable[[], None]:
    """Turn a parser factory into a ``[project.scripts]`` entry point."""

    def entry() -> None:
        sys.exit(run(build()))

    return entry


# ---------------------------------------------------------------------------------------------
# the top-level ``vitsuite`` command


def _cmd_models(args: argparse.Namespace) -> int:
    from .registry import count_model_parameters, list_models, list_official

    specs = list_models(args.field)
    if args.official:
        ids = list_official()
        print("\n".join(ids) if ids else "no official models implemented yet")
        return 0
    if not specs:
        print("no models registered yet" + (f" for field '{args.field}'" if args.field else ""))
        return 0
    rows = [("name", "field", "family", "params", "description")]
    for spec in specs:
        try:
            params = f"{count_model_parameters(spec.name) / 1e6:.2f}M"
        except Exception as exc:  # a builder that cannot run on the meta device still gets listed
            params = f"? ({type(exc).__name__})"
        rows.append((spec.name, spec.field, spec.family, params, spec.description))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    return 0


def info_lines() -> list[str]:
    """Versions, devices and threads, one ``key: value`` per line."""
    import torch

    import vitsuite

    lines = [
        f"vitsuite: {vitsuite.__version__}",
        f"python: {platform.python_version()} ({sys.executable})",
        f"platform: {platform.platform()}",
        f"torch: {torch.__version__} (cuda build: {torch.version.cuda or 'none'})",
        f"cuda available: {torch.cuda.is_available()}"
        + (f" ({torch.cuda.device_count()} x {torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""),
        f"cpu threads: torch {torch.get_num_threads()} / cores {os.cpu_count()}",
    ]
    for mod in ("torchvision", "timm", "monai", "segmentation_models_pytorch", "albumentations", "pandas",
                "rasterio", "gradio", "safetensors", "numpy"):
        try:
            version = getattr(__import__(mod), "__version__", "?")
        except Exception as exc:  # report, never fail: info is for diagnosing broken installs
            version = f"not importable ({type(exc).__name__})"
        lines.append(f"{mod}: {version}")
    return lines


def _cmd_info(args: argparse.Namespace) -> int:
    print("\n".join(info_lines()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Parser of the top-level ``vitsuite`` command (``models``, ``info``)."""
    parser, sub = make_parser("vitsuite", "vitsuite: vision-transformer models of five fields on one core.")
    p = sub.add_parser("models", help="list the registered models with their parameter counts")
    p.add_argument("--field", help="only this field (restoration, forecast, medseg, rs, pose)")
    p.add_argument("--official", action="store_true", help="list the official model ids from_official() can build")
    p.set_defaults(func=_cmd_models)
    p = sub.add_parser("info", help="versions, device and threads")
    p.set_defaults(func=_cmd_info)
    return parser


main = console_entry(build_parser)

if __name__ == "__main__":
    main()
