"""Helpers shared by the native-kernel benchmarks (``attention.py``, ``depthwise.py``, ``gemm.py``): interleaved timing,
a host description, and an in-process A/B of a model with the native kernels allowed vs suspended."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from vitsuite.core import native
import vitsuite.core.layers.fast as fast


def interleaved(fns: dict[str, Callable[[], Any]], repeat: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each function, called in turn ``repeat`` times after ``warmup`` calls each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def host(threads: int) -> dict[str, Any]:
    return {"cpu": platform.processor() or platform.machine(), "threads": threads, "torch": torch.__version__,
            "capability": torch.backends.cpu.get_cpu_capability()}


def native_ab(forward: Callable[[], Any], pairs: int, op: str) -> dict[str, Any]:
    """``forward()`` with the native kernels allowed vs suspended (:func:`vitsuite.core.native.suspended`),
    alternating ``pairs`` times after two warm calls each, under ``inference_mode``. Each mode keeps its
    own per-shape kernel choices; ``op`` names the choice keys to report (``"depthwise"``, ``"linear"``)."""
    choices: dict[str, dict] = {"native": {}, "off": {}}
    saved = fast._CHOICE

    def in_mode(name: str) -> Callable[[], Any]:
        def call():
            fast._CHOICE = choices[name]
            if name == "native":
                return forward()
            with native.suspended():
                return forward()
        return call

    try:
        with torch.inference_mode():
            times = interleaved({name: in_mode(name) for name in choices}, pairs)
    finally:
        fast._CHOICE = saved
    picked = [v for key, v in choices["native"].items() if str(key[0]).startswith(op)]
    med = {name: statistics.median(t) for name, t in times.items()}
    return {"seconds": times, "median_s": med, "speedup": med["off"] / med["native"],
            "shapes": len(picked), "native_chosen": picked.count("native")}


def write_json(path: str, result: dict[str, Any]) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"written {out}")


def setup(description: str, repeat: int, out_name: str, argv: Optional[Sequence[str]] = None,
          add_args: Optional[Callable[[argparse.ArgumentParser], None]] = None) -> Optional[argparse.Namespace]:
    """The common command line (``--threads``, ``--repeat``, ``--out`` under ``benchmarks/results``, plus
    ``add_args``), torch's thread count set; None (with the reason on stderr) without the native kernels."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=repeat)
    if add_args is not None:
        add_args(ap)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / out_name))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not native.available():
        print(f"native kernels unavailable: {native.why_unavailable()}", file=sys.stderr)
        return None
    return args


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int) -> None:
    """A markdown table; columns from ``numeric_from`` on are right-aligned."""
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---:" if i >= numeric_from else "---" for i in range(len(header))) + " |")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
