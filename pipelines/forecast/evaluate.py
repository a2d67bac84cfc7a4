"""Forecast metrics: MSE / MAE of the model and the baselines on the same windows, in one pass.

The papers' tables report MSE and MAE on the *normalised* scale (each variate standardised with
the training part's mean and std), averaged over every test window (stride 1), horizon step and
target variate; that is ``mse`` / ``mae`` here. ``mse_orig`` / ``mae_orig`` are the same errors in
each variate's original units (the mean over variates of per-variate errors, so with mixed units
read the per-variate numbers). Per-horizon and per-variate breakdowns come with both.

Errors are accumulated as per-(step, variate) sums over batches, so memory does not grow with the
number of windows (ECL's test part is 5,000+ windows x 96 steps x 321 variates).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from vitsuite.core.config import Config
from vitsuite.core.errors import ConfigError
from vitsuite.core.fileio import atomic_write_text

from .baselines import BASELINES, DLinearLS, last_value, seasonal_naive
from .data import Prepared, default_season


class EvalConfig(Config):
    """The ``eval`` section."""

    split: Literal["val", "test"] = "test"
    batch_size: int = 256
    baselines: list[Literal["last_value", "seasonal_naive", "dlinear"]] = list(BASELINES)
    season: int | None = None  # seasonal-naive period in steps; None: one day (sub-daily), a week (daily), ...
    ridge: float = 1e-4  # relative ridge of the closed-form DLinear fit


@dataclass
class ErrorSums:
    """Running sums of squared / absolute errors per (horizon step, variate) on the normalised scale."""

    sse: np.ndarray  # (S, K) float64
    sae: np.ndarray  # (S, K) float64
    windows: int = 0

    @classmethod
    def zeros(cls, steps: int, variates: int) -> "ErrorSums":
        return cls(np.zeros((steps, variates)), np.zeros((steps, variates)))

    def add(self, pred: Tensor, true: Tensor) -> None:
        """pred, true (B, S, K) on the normalised scale."""
        err = (pred.float() - true.float()).double()
        self.sse += (err**2).sum(0).cpu().numpy()
        self.sae += err.abs().sum(0).cpu().numpy()
        self.windows += pred.shape[0]

    def metrics(self, std: np.ndarray, names: list[str]) -> dict[str, Any]:
        """Overall, per-horizon and per-variate MSE/MAE; ``std`` (K,) converts to original units."""
        n = max(self.windows, 1)
        mse, mae = self.sse / n, self.sae / n  # (S, K)
        mse_o, mae_o = mse * std**2, mae * std
        return {
            "mse": float(mse.mean()), "mae": float(mae.mean()),
            "mse_orig": float(mse_o.mean()), "mae_orig": float(mae_o.mean()),
            "per_horizon": {"mse": _floats(mse.mean(1)), "mae": _floats(mae.mean(1)),
                            "mse_orig": _floats(mse_o.mean(1)), "mae_orig": _floats(mae_o.mean(1))},
            "per_variate": {k: dict(zip(names, _floats(v.mean(0))))
                            for k, v in (("mse", mse), ("mae", mae), ("mse_orig", mse_o), ("mae_orig", mae_o))},
        }


def _floats(a: np.ndarray) -> list[float]:
    return [float(x) for x in a]


def model_forward(model: nn.Module, batch: Mapping[str, Any], device: torch.device | str = "cpu") -> Tensor:
    """The model's forecast (B, S, N) for a batch from :class:`~.data.WindowDataset`."""
    x = batch["x"].to(device)
    mark = batch.get("x_mark")
    return model(x, mark.to(device) if mark is not None else None)


def fit_baselines(prep: Prepared, cfg: EvalConfig) -> dict[str, Callable[[Tensor], Tensor]]:
    """The chosen baselines as functions ``x (B, L, K) -> (B, S, K)`` (targets only); DLinear is fitted
    here on the training rows of the target variates."""
    L, S = prep.seq_len, prep.pred_len
    out: dict[str, Callable[[Tensor], Tensor]] = {}
    for name in cfg.baselines:
        if name == "last_value":
            out[name] = lambda x: last_value(x, S)
        elif name == "seasonal_naive":
            period = cfg.season or default_season(prep.series.offset)
            if period > L:
                if cfg.season is None:  # e.g. a day of 5-minute data does not fit 96 input steps: no baseline
                    continue
                raise ConfigError(f"eval.season: period {period} is longer than seq_len {L}")
            out[name] = lambda x, p=period: seasonal_naive(x, S, p)
        elif name == "dlinear":
            b0, b1 = prep.borders["train"]
            dl = DLinearLS.fit(prep.data[b0:b1, prep.targets], L, S, ridge=cfg.ridge)
            out[name] = dl
    return out


@torch.no_grad()
def evaluate(model: nn.Module | None, prep: Prepared, cfg: EvalConfig | None = None, *, model_name: str = "itransformer",
             device: torch.device | str = "cpu") -> dict[str, Any]:
    """Score ``model`` (skipped when ``None``) and the baselines on every window of ``cfg.split``.

    Returns ``{"split", "windows", "seq_len", "pred_len", "targets", "season", "models": {name: metrics}}``
    with :meth:`ErrorSums.metrics` per model.
    """
    cfg = cfg or EvalConfig()
    ds = prep.dataset(cfg.split)
    names = prep.target_names
    K, S = len(names), prep.pred_len
    tgt = torch.as_tensor(prep.targets)
    baselines = fit_baselines(prep, cfg)
    sums = {n: ErrorSums.zeros(S, K) for n in ([model_name] if model is not None else []) + list(baselines)}
    if model is not None:
        model.eval().to(device)
    for batch in ds.batches(cfg.batch_size):
        y = batch["y"]
        if model is not None:
            pred = model_forward(model, batch, device).cpu()[..., tgt]
            sums[model_name].add(pred, y)
        x = batch["x"][..., tgt]
        for name, fn in baselines.items():
            sums[name].add(fn(x), y)
    std = prep.scaler.std[prep.targets]
    season = cfg.season or default_season(prep.series.offset)
    return {"split": cfg.split, "windows": len(ds), "seq_len": prep.seq_len, "pred_len": S, "targets": names,
            "season": season, "source": prep.series.source, "split_scheme": prep.split_scheme,
            "borders": {k: list(v) for k, v in prep.borders.items()},
            "models": {n: s.metrics(std, names) for n, s in sums.items()}}


def summary_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per model: name, mse, mae, mse_orig, mae_orig."""
    return [{"model": n, **{k: m[k] for k in ("mse", "mae", "mse_orig", "mae_orig")}}
            for n, m in report["models"].items()]


def format_table(report: Mapping[str, Any]) -> str:
    """A plain-text table of the overall numbers, best MSE marked."""
    rows = summary_rows(report)
    best = min(rows, key=lambda r: r["mse"])["model"] if rows else None
    head = (f"{report['split']}: {report['windows']} windows, seq_len {report['seq_len']}, pred_len {report['pred_len']}, "
            f"{len(report['targets'])} target variate(s)")
    lines = [head, f"{'model':<16}{'MSE':>10}{'MAE':>10}{'MSE orig':>14}{'MAE orig':>12}"]
    for r in rows:
        mark = "  <- best MSE" if r["model"] == best else ""
        lines.append(f"{r['model']:<16}{r['mse']:>10.4f}{r['mae']:>10.4f}{r['mse_orig']:>14.4g}{r['mae_orig']:>12.4g}{mark}")
    return "\n".join(lines)


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def write_report(report: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``metrics.json`` (everything), ``per_variate.csv`` and ``per_horizon.csv`` (long format), atomically."""
    out = Path(out_dir)
    per_var, per_h = [], []
    for name, m in report["models"].items():
        for v in report["targets"]:
            per_var.append({"model": name, "variate": v, **{k: m["per_variate"][k][v] for k in m["per_variate"]}})
        for i in range(report["pred_len"]):
            per_h.append({"model": name, "step": i + 1, **{k: m["per_horizon"][k][i] for k in m["per_horizon"]}})
    paths = {"metrics": out / "metrics.json", "per_variate": out / "per_variate.csv", "per_horizon": out / "per_horizon.csv"}
    atomic_write_text(paths["metrics"], json.dumps(report, indent=2) + "\n")
    atomic_write_text(paths["per_variate"], _csv(per_var))
    atomic_write_text(paths["per_horizon"], _csv(per_h))
    return paths
