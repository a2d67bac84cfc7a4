"""Gradio demo of the forecasting pipeline: upload a CSV / Parquet file, pick columns and a horizon,
see the plot and download the forecast.

Thin by design: every step is a public function of :mod:`vitsuite.pipelines.forecast.predict`.
Binds 127.0.0.1 by default and limits uploads (``max_file_size``). Without an upload the bundled
NREL TMY3 weather data is forecast.

    python -m vitsuite.apps.forecast            # or: vitsuite-forecast demo
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from vitsuite.core.env import apply_offline_env

apply_offline_env()  # before gradio is imported: no analytics, no hub calls

DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_FILE_SIZE = "20mb"


def _path_of(file: Any) -> str | None:
    """Gradio hands uploads over as a path string (or an object with ``.name`` in older versions)."""
    if file is None:
        return None
    return str(getattr(file, "name", file))


def build_demo(checkpoint: str | os.PathLike | None = None):
    """The Gradio Blocks app (not launched). API names: ``/columns`` and ``/forecast``."""
    import gradio as gr

    from vitsuite.core.batch import split_ext
    from vitsuite.core.errors import UserError
    from vitsuite.pipelines.forecast.predict import (MAX_ROLLOUT, PredictOptions, describe_file, load_forecaster,
                                                     predict_file)

    fc = load_forecaster(checkpoint)
    S = fc.pred_len

    def columns(file: Any):
        """Offer the numeric columns of the uploaded file (the checkpoint's own when it has them)."""
        try:
            info = describe_file(fc, _path_of(file))
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        return gr.update(choices=info["numeric"], value=info["default"])

    def forecast(file: Any, cols: list[str] | None, horizon: float | None):
        """Forecast -> (plot PNG, forecast CSV, summary text)."""
        src = _path_of(file)
        h = int(horizon) if horizon else S
        out_dir = Path(tempfile.mkdtemp(prefix="vitsuite-forecast-"))
        stem = split_ext(Path(src).name)[0] if src else "tmy3"
        dst = out_dir / f"{stem}_forecast.csv"
        opts = PredictOptions(horizon=h, columns=list(cols) if cols else None, targets=list(cols) if cols else None)
        try:
            info = predict_file(fc, src if src else fc.meta["data"]["path"], dst, opts)
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        note = (f"Forecast of **{info['rows']}** steps ({info['freq']}) from {info['start']} for "
                f"{len(info['columns'])} variate(s): {', '.join(info['columns'][:12])}"
                + (" ..." if len(info["columns"]) > 12 else ""))
        if h > S:
            note += f"  \nSteps beyond {S} (the model's horizon) are rolled out from its own forecasts."
        return info["plot"], str(dst), note

    data_name = (fc.meta.get("data") or {}).get("path", "")
    with gr.Blocks(title="vitsuite forecast") as demo:
        gr.Markdown(
            "## Time-series forecast (iTransformer)\n"
            f"Upload a CSV or Parquet file with a timestamp column and numeric columns, or leave it empty "
            f"to forecast the bundled NREL TMY3 weather data (`{data_name}`). The model reads the last "
            f"{fc.seq_len} steps and forecasts {S} at once.")
        with gr.Row():
            with gr.Column(scale=1):
                file = gr.File(label="CSV / Parquet", file_types=[".csv", ".parquet"], type="filepath")
                cols = gr.Dropdown(label="Columns (empty: all numeric)", multiselect=True, allow_custom_value=True,
                                   choices=[])
                horizon = gr.Number(label="Horizon (steps)", value=S, precision=0, minimum=1, maximum=MAX_ROLLOUT * S)
                run = gr.Button("Forecast", variant="primary")
            with gr.Column(scale=2):
                plot = gr.Image(label="History and forecast", type="filepath", format="png")
                out_file = gr.File(label="Forecast (CSV)")
                info = gr.Markdown()
        file.upload(columns, file, cols, api_name="columns")
        run.click(forecast, [file, cols, horizon], [plot, out_file, info], api_name="forecast")
    return demo


def launch(checkpoint: str | os.PathLike | None = None, host: str = DEFAULT_HOST, port: int | None = 7860,
           max_file_size: str | int | None = DEFAULT_MAX_FILE_SIZE, prevent_thread_lock: bool = False,
           quiet: bool = False):
    """Build and launch the demo; returns the Blocks (useful with ``prevent_thread_lock=True`` in tests)."""
    demo = build_demo(checkpoint)
    demo.launch(server_name=host, server_port=port, max_file_size=max_file_size,
                prevent_thread_lock=prevent_thread_lock, quiet=quiet, show_error=True)
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vitsuite.apps.forecast", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="forecaster.pt (default: the bundled TMY3 model)")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-file-size", default=DEFAULT_MAX_FILE_SIZE)
    args = parser.parse_args(argv)
    launch(args.checkpoint, args.host, args.port, args.max_file_size)


if __name__ == "__main__":
    main()
