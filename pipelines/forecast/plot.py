"""PNG plots of history and forecast, one panel per variate.

Figures are drawn on matplotlib's Agg canvas directly (``matplotlib.figure.Figure`` +
``FigureCanvasAgg``), never through ``pyplot``: no global backend switch, no GUI, thread-safe for
the demo server.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from vitsuite.core.fileio import atomic_path

MAX_PANELS = 12


def _figure(n_panels: int, width: float = 11.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = 1 if n_panels <= 4 else 2
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(width, 1.9 * rows + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def plot_forecast(history: pd.DataFrame, forecast: pd.DataFrame, path: str | os.PathLike, *, title: str = "",
                  actual: pd.DataFrame | None = None, max_panels: int = MAX_PANELS) -> Path:
    """Write a PNG with, per forecast column, the ``history`` tail and the ``forecast`` (and ``actual`` if given).

    ``history`` and ``forecast`` are indexed by timestamp; only columns present in ``forecast`` are drawn,
    the first ``max_panels`` of them (the title says how many were left out).
    """
    cols = list(forecast.columns)[:max_panels]
    fig, axes = _figure(len(cols))
    for ax, c in zip(axes, cols):
        if c in history and len(history):
            ax.plot(history.index, history[c].to_numpy(), color="0.35", lw=1.0, label="history")
        if actual is not None and c in actual:
            ax.plot(actual.index, actual[c].to_numpy(), color="tab:blue", lw=1.0, label="actual")
        ax.plot(forecast.index, forecast[c].to_numpy(), color="tab:orange", lw=1.3, label="forecast")
        if len(history):
            ax.axvline(history.index[-1], color="0.6", lw=0.8, ls="--")
        ax.set_title(str(c), fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7, loc="upper left")
    more = len(forecast.columns) - len(cols)
    fig.suptitle(title + (f" (first {len(cols)} of {len(forecast.columns)} variates)" if more > 0 else ""), fontsize=10)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
