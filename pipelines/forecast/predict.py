"""Forecasting the real future, rolling backtests, the per-file function for ``core.batch``, export.

A trained forecaster is one file (:class:`Forecaster`, ``forecaster.pt``): the model weights plus
``meta`` -- model name and sizes, ``seq_len`` / ``pred_len``, the columns and targets it was trained
on, the training scaler, the data settings (frequency of the time marks, split) and the test
metrics. It loads with ``torch.load(weights_only=True)``. The authors' own checkpoints load too
(through :func:`vitsuite.models.load_official_checkpoint`); they carry no scaler, so the history is
standardised with its own statistics.

Applying a forecaster to other columns: iTransformer standardises every input window per variate
(``use_norm``) and its variate tokens share all weights, so it runs on any number of variates, and
a per-column affine scaling of the input does not change its output. Files whose columns differ
from the training columns are therefore scaled with their own history's statistics; the stored
scaler is used when the columns match.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from vitsuite.core.batch import save_atomic
from vitsuite.core.checkpoint import load_state_dict_checked, read_checkpoint, save_checkpoint
from vitsuite.core.config import load_config
from vitsuite.core.errors import CheckpointError, ConfigError, InputError, UserError

from .data import (TMY3_COLUMNS, DataConfig, Scaler, Series, detect_format, load_series, make_marks, prepare,
                   resolve_path, target_indices)
from .evaluate import model_forward
from .plot import plot_forecast

ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_CHECKPOINT = ASSETS / "tmy3_itransformer.pt"
BUNDLE_FORMAT = "vitsuite-forecast/1"
MAX_ROLLOUT = 16  # horizons up to 16 x pred_len are rolled out autoregressively
TABLE_SUFFIXES = (".csv", ".parquet")
# Data settings that travel with a forecaster to new files; the rest (path, format, timestamp
# column, columns, delimiter) describe the training file only.
_PORTABLE = ("seq_len", "pred_len", "split", "ratios", "time_marks", "mark_freq", "year", "fill", "freq")


@dataclass
class Forecaster:
    """A model with everything needed to forecast in original units (see the module docstring)."""

    model: nn.Module
    meta: dict[str, Any]

    @property
    def seq_len(self) -> int:
        return int(self.meta["seq_len"])

    @property
    def pred_len(self) -> int:
        return int(self.meta["pred_len"])

    @property
    def columns(self) -> list[str] | None:
        return self.meta.get("columns")

    @property
    def targets(self) -> list[str] | None:
        return self.meta.get("targets")

    def scaler_for(self, columns: Sequence[str]) -> Scaler | None:
        """The training scaler when ``columns`` are the training columns, else ``None``."""
        if self.meta.get("mean") is None or list(columns) != list(self.columns or []):
            return None
        return Scaler(np.asarray(self.meta["mean"], np.float64), np.asarray(self.meta["std"], np.float64))

    def data_config(self, path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> DataConfig:
        """The training data settings, for ``path`` (default the training file), with ``data.*`` overrides.

        For another file only the portable settings are kept (window sizes, split, time marks);
        the timestamp column, columns and format are detected afresh.
        """
        saved = dict(self.meta.get("data") or {})
        saved.update(seq_len=self.seq_len, pred_len=self.pred_len)
        if path is not None and os.fspath(path) != saved.get("path"):
            saved = {k: v for k, v in saved.items() if k in _PORTABLE}
            saved["path"] = os.fspath(path)
        overrides = [o[len("data."):] if o.startswith("data.") else o for o in overrides]
        bad = [o for o in overrides if o.split("=", 1)[0].strip() in ("seq_len", "pred_len")]
        if bad:
            raise ConfigError(f"{bad[0]}: seq_len and pred_len are fixed by the checkpoint")
        return load_config(DataConfig, None, overrides, base=saved)

    def save(self, path: str | os.PathLike) -> Path:
        """Write weights + meta atomically (``.pt``, ``weights_only``-loadable)."""
        sd = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        return save_checkpoint({"model": sd, "meta": {**self.meta, "format": BUNDLE_FORMAT}}, path)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "Forecaster":
        """Load one of our ``forecaster.pt`` files (default: the bundled TMY3 model) or an official checkpoint."""
        path = Path(path) if path is not None else BUNDLED_CHECKPOINT
        if path == BUNDLED_CHECKPOINT and not path.is_file():
            raise CheckpointError("the bundled forecaster is missing from this install", path=path)
        ckpt = read_checkpoint(path)
        meta = ckpt.get("meta")
        if isinstance(meta, dict) and meta.get("format") == BUNDLE_FORMAT:
            from vitsuite.models import build_model

            model = build_model(meta["model_name"], **meta["model_kwargs"])
            load_state_dict_checked(model, ckpt["model"], source=path)
            return cls(model.eval(), meta)
        return cls._official(path)

    @classmethod
    def _official(cls, path: Path) -> "Forecaster":
        from vitsuite.models import load_official_checkpoint

        try:
            model = load_official_checkpoint(path, "itransformer")
        except UserError as exc:
            raise CheckpointError(f"neither a vitsuite forecaster nor an official iTransformer checkpoint ({exc})",
                                  path=path) from None
        cfg = model.cfg
        # The authors' scripts compute hourly timeF marks for every data set (their --freq default).
        meta = {"model_name": "itransformer", "model_kwargs": {}, "seq_len": cfg.seq_len, "pred_len": cfg.pred_len,
                "columns": None, "targets": None, "mean": None, "std": None, "official": True,
                "data": {"time_marks": True, "mark_freq": "h"}}
        return cls(model.eval(), meta)


def load_forecaster(path: str | os.PathLike | None = None) -> Forecaster:
    """:meth:`Forecaster.load` (``None``: the bundled TMY3 model)."""
    return Forecaster.load(path)


# ---------------------------------------------------------------------------------------------
# reading inputs for a forecaster


def header_columns(cfg: DataConfig) -> list[str]:
    """The column names of ``cfg.path`` without reading its rows."""
    p = resolve_path(cfg.path)
    kind = detect_format(p, cfg.format)
    if kind == "tmy3":
        return list(TMY3_COLUMNS.values())
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(p).names)
        except Exception as exc:
            raise InputError(f"cannot read Parquet: {str(exc).strip().splitlines()[0]}", path=p) from None
    try:
        return [str(c) for c in pd.read_csv(p, sep=cfg.sep, nrows=0).columns]
    except pd.errors.EmptyDataError:
        raise InputError("the file is empty", path=p) from None
    except Exception as exc:
        raise InputError(f"cannot read CSV: {str(exc).strip().splitlines()[0]}", path=p) from None


def load_input(fc: Forecaster, path: str | os.PathLike | None = None, *, columns: Sequence[str] | None = None,
               overrides: Iterable[str] = ()) -> tuple[Series, DataConfig]:
    """Read ``path`` for ``fc``: ``columns`` if given, else the training columns when the file has them
    all, else every column but the timestamp."""
    cfg = fc.data_config(path, overrides)
    if columns:
        cfg = cfg.model_copy(update={"columns": list(columns)})
    elif cfg.columns is None and fc.columns and set(fc.columns) <= set(header_columns(cfg)):
        cfg = cfg.model_copy(update={"columns": list(fc.columns)})
    return load_series(cfg), cfg


def describe_file(fc: Forecaster, path: str | os.PathLike | None = None, overrides: Iterable[str] = ()
                  ) -> dict[str, Any]:
    """What a UI needs to offer column choices: ``{"timestamp", "numeric", "default"}`` for ``path``
    (``default``: the columns :func:`load_input` would take)."""
    from .data import TMY3_DEFAULT, _sniff_csv, detect_timestamp

    cfg = fc.data_config(path, overrides)
    p = resolve_path(cfg.path)
    kind = detect_format(p, cfg.format)
    if kind == "tmy3":
        return {"timestamp": "timestamp", "numeric": list(TMY3_COLUMNS.values()), "default": list(TMY3_DEFAULT)}
    if kind == "parquet":
        import pyarrow.parquet as pq

        head = pq.ParquetFile(p).read_row_group(0).slice(0, 200).to_pandas()
        head = head.reset_index() if isinstance(head.index, pd.DatetimeIndex) else head
    else:
        head = _sniff_csv(p, cfg.sep)
    ts = detect_timestamp(head, cfg.timestamp, p)
    numeric = [str(c) for c in head.columns if c != ts and pd.api.types.is_numeric_dtype(head[c])]
    default = list(fc.columns) if fc.columns and set(fc.columns) <= set(numeric) else numeric
    return {"timestamp": ts, "numeric": numeric, "default": default}


def _targets_for(fc: Forecaster, series: Series, targets: Sequence[str] | None) -> list[int]:
    if targets:
        return target_indices(series.columns, targets, series.source)
    if fc.targets and set(fc.targets) <= set(series.columns):
        return target_indices(series.columns, fc.targets, series.source)
    return list(range(len(series.columns)))


def _marks_fn(fc: Forecaster, series: Series):
    d = fc.meta.get("data") or {}
    return make_marks(DataConfig(time_marks=d.get("time_marks", True), mark_freq=d.get("mark_freq")), series)


# ---------------------------------------------------------------------------------------------
# forecasting


@torch.no_grad()
def forecast(fc: Forecaster, series: Series, *, horizon: int | None = None, targets: Sequence[str] | None = None,
             device: torch.device | str = "cpu") -> pd.DataFrame:
    """Forecast the ``horizon`` steps after the last timestamp (default ``pred_len``), in original units.

    Uses the last ``seq_len`` rows. Horizons beyond ``pred_len`` are rolled out: each ``pred_len``
    block of forecasts (all variates) is appended to the history and the model runs again, so the
    later steps rest on forecasts, not observations. Returns a DataFrame indexed by the future
    timestamps with one column per target variate.
    """
    L, S = fc.seq_len, fc.pred_len
    n = len(series)
    if n < L:
        raise InputError(f"needs at least seq_len = {L} rows of history, the file has {n}", path=series.source)
    h = S if horizon is None else int(horizon)
    if not 1 <= h <= MAX_ROLLOUT * S:
        raise InputError(f"horizon {h} must be between 1 and {MAX_ROLLOUT * S} ({MAX_ROLLOUT} x pred_len {S})",
                         path=series.source)
    tgt = _targets_for(fc, series, targets)
    scaler = fc.scaler_for(series.columns) or Scaler.fit(series.values)
    marks = _marks_fn(fc, series)
    blocks = math.ceil(h / S)
    future = series.future_index(blocks * S)
    future_wall = (future.tz_localize(None) if future.tz is not None else future).as_unit("ns").asi8
    x = torch.from_numpy(scaler.transform(series.values[-L:]))  # (L, N)
    t = np.concatenate([series.wall_clock()[-L:], future_wall])  # input + future wall clock
    model = fc.model.eval().to(device)
    outs = []
    for k in range(blocks):  # one model call per pred_len block
        mark = None if marks is None else torch.from_numpy(marks(t[k * S:k * S + L]))[None]
        out = model_forward(model, {"x": x[None], "x_mark": mark}, device)[0].cpu()  # (S, N)
        outs.append(out)
        x = torch.cat([x, out])[-L:]
    pred = torch.cat(outs)[:h][:, tgt]
    values = scaler.inverse(pred, tgt)
    return pd.DataFrame(values, index=future[:h], columns=[series.columns[i] for i in tgt])


@torch.no_grad()
def backtest(fc: Forecaster, series: Series, cfg: DataConfig, *, stride: int | None = None, split: str = "test",
             targets: Sequence[str] | None = None, device: torch.device | str = "cpu",
             batch_size: int = 256) -> pd.DataFrame:
    """Rolling-origin forecasts over the ``split`` part: a window every ``stride`` rows (default
    ``pred_len``: back-to-back forecasts that tile the test part).

    Returns one row per (origin, step): ``origin`` (the last input timestamp), the forecast
    timestamp, ``step`` (1..S), and ``<target>_actual`` / ``<target>_forecast`` in original units.
    """
    S = fc.pred_len
    tgt_names = [series.columns[i] for i in _targets_for(fc, series, targets)]
    cfg = cfg.model_copy(update={"targets": tgt_names, "seq_len": fc.seq_len, "pred_len": S})
    prep = prepare(series, cfg, scaler=fc.scaler_for(series.columns))
    prep.marks = _marks_fn(fc, series)
    ds = prep.dataset(split, stride or S)
    model = fc.model.eval().to(device)
    tgt = torch.as_tensor(prep.targets)
    preds = [model_forward(model, batch, device).cpu()[..., tgt] for batch in ds.batches(batch_size)]
    P = prep.scaler.inverse(torch.cat(preds), prep.targets)  # (W, S, K)
    W = P.shape[0]
    first = ds.begin + np.arange(W) * ds.stride + ds.L  # first forecast row of each window
    rows = first[:, None] + np.arange(S)  # (W, S)
    Y = series.values[rows][..., prep.targets]  # the observations themselves (not a scaled round trip)
    index = series.index
    out = pd.DataFrame({"origin": np.repeat(index[first - 1], S), index.name or "timestamp": index[rows.ravel()],
                        "step": np.tile(np.arange(1, S + 1), W)})
    for k, name in enumerate(prep.target_names):
        out[f"{name}_actual"] = Y[..., k].ravel()
        out[f"{name}_forecast"] = P[..., k].ravel()
    return out


# ---------------------------------------------------------------------------------------------
# writing


def write_frame(df: pd.DataFrame, path: str | os.PathLike, *, index: bool = True) -> Path:
    """Write a table atomically as CSV or Parquet (by suffix); timestamps in ISO format."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        return save_atomic(path, lambda p: df.to_parquet(p, index=index))
    return save_atomic(path, lambda p: df.to_csv(p, index=index, date_format="%Y-%m-%d %H:%M:%S", float_format="%.6g"))


@dataclass
class PredictOptions:
    """What :func:`predict_file` does for each input."""

    horizon: int | None = None
    columns: list[str] | None = None
    targets: list[str] | None = None
    overrides: list[str] = field(default_factory=list)  # data.* settings for the inputs (fill, freq, timestamp ...)
    plot: bool = True
    history: int | None = None  # history steps drawn before the forecast (default: seq_len)
    backtest: bool = False
    stride: int | None = None
    device: str = "cpu"


def _side_path(dst: Path, tag: str, ext: str) -> Path:
    stem = dst.name[: -len(dst.suffix)] if dst.suffix else dst.name
    if tag and stem.endswith("_forecast"):
        stem = stem[: -len("_forecast")]
    return dst.with_name(f"{stem}{tag}{ext}")


def predict_file(fc: Forecaster, src: str | os.PathLike, dst: str | os.PathLike, opts: PredictOptions) -> dict[str, Any]:
    """Forecast one file's future into ``dst`` (CSV/Parquet) with a PNG beside it; optionally a
    rolling backtest over its test part (``<stem>_backtest.csv`` + ``.png``). The per-file function
    handed to :func:`vitsuite.core.batch.run_batch`."""
    dst = Path(dst)
    series, cfg = load_input(fc, src, columns=opts.columns, overrides=opts.overrides)
    fut = forecast(fc, series, horizon=opts.horizon, targets=opts.targets, device=opts.device)
    write_frame(fut, dst)
    info: dict[str, Any] = {"rows": len(fut), "columns": list(fut.columns), "start": str(fut.index[0]),
                            "freq": series.freq}
    if opts.plot:
        hist_len = opts.history or fc.seq_len
        hist = series.frame(slice(-hist_len, None))
        png = plot_forecast(hist, fut, dst.with_suffix(".png"), title=f"{Path(str(src)).name}: forecast of "
                            f"{len(fut)} steps ({series.freq})")
        info["plot"] = str(png)
    if opts.backtest:
        bt = backtest(fc, series, cfg, stride=opts.stride, targets=list(fut.columns), device=opts.device)
        bt_path = write_frame(bt, _side_path(dst, "_backtest", dst.suffix), index=False)
        info["backtest"] = str(bt_path)
        if opts.plot:
            ts = series.index.name or "timestamp"
            first = bt.drop_duplicates(ts).set_index(ts)
            act = first[[f"{c}_actual" for c in fut.columns]].set_axis(list(fut.columns), axis=1)
            fc_df = first[[f"{c}_forecast" for c in fut.columns]].set_axis(list(fut.columns), axis=1)
            plot_forecast(act.iloc[:0], fc_df, _side_path(dst, "_backtest", ".png"), actual=act,
                          title=f"{Path(str(src)).name}: rolling backtest over the test part")
    return info


# ---------------------------------------------------------------------------------------------
# export


class _Exportable(nn.Module):
    """``(x (B, L, N), x_mark (B, L, M)) -> (B, S, N)``: the positional signature exporters trace."""

    def __init__(self, model: nn.Module, with_marks: bool):
        super().__init__()
        self.model, self.with_marks = model, with_marks

    def forward(self, x: torch.Tensor, x_mark: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x, x_mark if self.with_marks else None)


def export_forecaster(fc: Forecaster, path: str | os.PathLike, *, format: str | None = None, variates: int | None = None,
                      atol: float = 1e-4) -> dict[str, Any]:
    """Export ``fc.model`` for a fixed ``(1, seq_len, variates)`` input (ONNX or TorchScript by suffix or
    ``format``), check it against eager PyTorch, and write the meta beside it as ``<path>.json``.

    Inputs are the scaled window ``x`` and, when the model uses them, the time marks ``x_mark``
    (``meta.json`` holds the scaler, columns and mark frequency needed to build them).
    """
    import json

    from vitsuite.core.export import export_model, verify_export
    from vitsuite.core.fileio import atomic_write_text

    path = Path(path)
    fmt = format or ("onnx" if path.suffix.lower() == ".onnx" else "torchscript")
    n = variates or len(fc.columns or []) or 7
    d = fc.meta.get("data") or {}
    marks = None
    if d.get("time_marks", True):
        from .data import TimeFeatures

        tf = TimeFeatures(d.get("mark_freq") or fc.meta.get("freq") or "h")
        if tf.dim:
            stamps = pd.date_range("2020-01-01", periods=fc.seq_len, freq=tf.freq).as_unit("ns").asi8
            marks = torch.from_numpy(tf(stamps))[None]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, fc.seq_len, n, generator=gen)
    inputs = (x, marks) if marks is not None else (x,)
    wrapped = _Exportable(fc.model.eval().cpu(), marks is not None).eval()
    names = ["x", "x_mark"][: len(inputs)]
    export_model(wrapped, inputs, path, format=fmt, input_names=names, output_names=["forecast"])
    diff = verify_export(path, wrapped, inputs, atol=atol, rtol=atol)
    meta = {k: v for k, v in fc.meta.items() if k not in ("test",)}
    meta.update(export={"format": fmt, "inputs": {nm: list(t.shape) for nm, t in zip(names, inputs)},
                        "output": [1, fc.pred_len, n], "max_abs_diff": diff})
    side = path.with_name(path.name + ".json")
    atomic_write_text(side, json.dumps(meta, indent=2, default=str) + "\n")
    return {"path": str(path), "meta": str(side), "format": fmt, "max_abs_diff": diff}
