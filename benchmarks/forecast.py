"""Forecasting benchmarks (JSON out; not unit tests).

* ``throughput``: windows/s of the whole training loop (:class:`vitsuite.core.train.Trainer`: data
  path, forward, backward, optimizer step) at the authors' ECL configuration -- 321 variates,
  ``seq_len`` 96, ``pred_len`` 96, iTransformer 3 layers x 512, batch 16, hourly time marks -- on
  synthetic data of that shape, on CPU; plus the share of the wall time spent fetching batches
  (window gather + time marks; target < 10 %).
* ``memory``: peak RSS of reading a large CSV (default 10 million rows x 7 variates, written here
  first) into the float32 array, validating it, scaling it in place, and building the window
  dataset and fetching batches from it -- windows are views, so the peak stays near the data size
  (target: increase over the interpreter's baseline < 2x the data).

    python benchmarks/forecast.py throughput --steps 20
    python benchmarks/forecast.py memory --rows 10000000
    python benchmarks/forecast.py all --out benchmarks/results/forecast.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import peak_rss_mb, rss_mb  # noqa: E402


# --------------------------------------------------------------------------------------------- throughput


def throughput(steps: int = 20, warmup: int = 3, threads: int = 2, rows: int = 3000, variates: int = 321,
               batch_size: int = 16) -> dict:
    """Training-loop windows/s at the ECL configuration and the data path's share of the time."""
    import numpy as np
    import torch

    from vitsuite.core.train import Trainer
    from vitsuite.pipelines.forecast.data import DataConfig, Series, _already_batched, prepare
    from vitsuite.pipelines.forecast.train import ForecastConfig, TargetMSE, build_forecast_model, trainer_config

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    values = rng.standard_normal((rows, variates)).astype(np.float32).cumsum(0)
    stamps = (np.datetime64("2016-07-01T00:00", "ns").astype(np.int64) + np.arange(rows, dtype=np.int64) * 3600 * 10**9)
    series = Series(np.ascontiguousarray(values), stamps, [f"MT_{i:03d}" for i in range(variates)], "h", "<synthetic ECL>")
    cfg = ForecastConfig(data=DataConfig(seq_len=96, pred_len=96, split="ratio", mark_freq="h"))
    cfg.model.name = "itransformer"  # ECL sizes: 3 layers, d_model = d_ff = 512, 8 heads
    cfg.train.batch_size, cfg.train.lr, cfg.train.log_every = batch_size, 5e-4, 10**9
    cfg.train.max_steps, cfg.train.progress, cfg.train.device = warmup + steps, False, "cpu"
    prep = prepare(series, cfg.data, inplace=True)
    ds = prep.dataset("train")
    model = build_forecast_model(cfg)

    class TimedTrainer(Trainer):
        """Records the time spent fetching each batch and the end time of every step (benchmark only)."""

        fetch: list[float] = []
        ends: list[float] = []

        def _batches(self, epoch, skip):
            inner = iter(super()._batches(epoch, skip))

            def timed():
                while True:
                    t0 = time.perf_counter()
                    try:
                        batch = next(inner)
                    except StopIteration:
                        return
                    self.fetch.append(time.perf_counter() - t0)
                    yield batch

            return timed()

        def _after_step(self, log, bar, stop, t0):
            super()._after_step(log, bar, stop, t0)
            self.ends.append(time.perf_counter())

        def _save(self, names):  # the end-of-run checkpoint is not part of the loop being measured
            pass

    with tempfile.TemporaryDirectory() as tmp:
        cfg.train.output_dir = tmp
        tcfg = trainer_config(cfg.train, max(1, len(ds) // batch_size))
        trainer = TimedTrainer(model, ds, TargetMSE(prep.targets, variates), tcfg, collate_fn=_already_batched)
        trainer.fit()
    ends, fetch = trainer.ends, trainer.fetch
    wall = ends[-1] - ends[warmup - 1]
    data = sum(fetch[warmup:warmup + steps])
    from vitsuite.core.registry import count_parameters

    return {"config": {"variates": variates, "seq_len": 96, "pred_len": 96, "model": "itransformer (3 x 512, 8 heads)",
                       "params": count_parameters(model), "batch_size": batch_size, "time_marks": 4,
                       "threads": threads, "steps_timed": steps, "warmup_steps": warmup},
            "windows_per_s": round(steps * batch_size / wall, 2), "seconds_per_step": round(wall / steps, 4),
            "data_path_seconds_per_step": round(data / steps, 5), "data_path_share": round(data / wall, 4)}


# --------------------------------------------------------------------------------------------- memory


def write_csv(path: Path, rows: int, variates: int, chunk: int = 1_000_000) -> int:
    """A minutely CSV (``date`` + ``v0..``; 10 M minutes fit the ns timestamp range, 10 M hours would not)
    written chunk by chunk with pyarrow; returns its size in bytes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(0)
    start = np.datetime64("2000-01-01T00:00:00", "s").astype(np.int64)
    schema = pa.schema([("date", pa.timestamp("s"))] + [(f"v{i}", pa.float32()) for i in range(variates)])
    with pacsv.CSVWriter(str(path), schema) as writer:
        for a in range(0, rows, chunk):
            n = min(chunk, rows - a)
            cols = [pa.array(start + (a + np.arange(n)) * 60, pa.timestamp("s"))]
            cols += [pa.array(rng.standard_normal(n).astype(np.float32).round(3)) for _ in range(variates)]
            writer.write_table(pa.Table.from_arrays(cols, schema=schema))
    return path.stat().st_size


def memory_child(path: str, batches: int = 200, batch_size: int = 32) -> dict:
    """Runs in a fresh process: load -> validate -> scale in place -> windows -> batches; peak RSS."""
    import numpy as np
    import torch

    from vitsuite.pipelines.forecast.data import DataConfig, load_series, prepare

    torch.set_num_threads(1)
    base = rss_mb()
    t0 = time.perf_counter()
    cfg = DataConfig(path=path, seq_len=96, pred_len=96)
    series = load_series(cfg)
    t_load = time.perf_counter() - t0
    prep = prepare(series, cfg, inplace=True)  # the scaled tensor *is* series.values
    ds = prep.dataset("train")
    rng = np.random.default_rng(0)
    t1 = time.perf_counter()
    for _ in range(batches):
        b = ds.__getitems__(rng.integers(0, len(ds), batch_size).tolist())
    t_batches = time.perf_counter() - t1
    data_mb = (series.values.nbytes + series.timestamps.nbytes) / 2**20
    peak = peak_rss_mb()
    return {"rows": len(series), "variates": len(series.columns), "windows_train": len(ds),
            "data_mb": round(data_mb, 1), "baseline_rss_mb": round(base, 1), "peak_rss_mb": round(peak, 1),
            "peak_increase_mb": round(peak - base, 1), "peak_increase_over_data": round((peak - base) / data_mb, 3),
            "shares_memory": bool(prep.data.data_ptr() == series.values.ctypes.data),
            "load_validate_seconds": round(t_load, 2), "batch_fetch_ms": round(1e3 * t_batches / batches, 3),
            "batch_shape": list(b["x"].shape)}


def memory(rows: int = 10_000_000, variates: int = 7, keep: str | None = None) -> dict:
    """Write the CSV (in a child, so its memory is not counted), then measure loading in another child."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(keep) if keep else Path(tmp) / "big.csv"
        t0 = time.perf_counter()
        if not path.is_file():
            subprocess.run([sys.executable, __file__, "_write", str(path), str(rows), str(variates)], check=True)
        t_write = time.perf_counter() - t0
        out = subprocess.run([sys.executable, __file__, "_memory_child", str(path)], check=True, capture_output=True,
                             text=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        res.update(csv_mb=round(path.stat().st_size / 2**20, 1), csv_write_seconds=round(t_write, 1))
        return res


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("throughput", "memory", "all"):
        p = sub.add_parser(name)
        p.add_argument("--out", help="also write the JSON here")
        if name in ("throughput", "all"):
            p.add_argument("--steps", type=int, default=20)
            p.add_argument("--warmup", type=int, default=3)
            p.add_argument("--threads", type=int, default=2)
        if name in ("memory", "all"):
            p.add_argument("--rows", type=int, default=10_000_000)
            p.add_argument("--variates", type=int, default=7)
            p.add_argument("--keep-csv", help="write (or reuse) the CSV here instead of a temp file")
    w = sub.add_parser("_write")
    w.add_argument("path")
    w.add_argument("rows", type=int)
    w.add_argument("variates", type=int)
    c = sub.add_parser("_memory_child")
    c.add_argument("path")
    args = parser.parse_args(argv)
    if args.what == "_write":
        write_csv(Path(args.path), args.rows, args.variates)
        return
    if args.what == "_memory_child":
        print(json.dumps(memory_child(args.path)))
        return
    import torch

    result: dict = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                                "torch": torch.__version__, "cpus": os.cpu_count(),
                                "load_avg_1min": round(os.getloadavg()[0], 2)}}
    if args.what in ("throughput", "all"):
        result["throughput"] = throughput(args.steps, args.warmup, args.threads)
    if args.what in ("memory", "all"):
        result["memory"] = memory(args.rows, args.variates, args.keep_csv)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
