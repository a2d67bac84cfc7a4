"""The Gradio forecasting demo, driven through gradio_client on 127.0.0.1 (offline env from conftest)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402

from vitsuite.apps.forecast import DEFAULT_HOST, launch  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app():
    port = _free_port()
    demo = launch(port=port, max_file_size="200kb", prevent_thread_lock=True, quiet=True)
    try:
        yield demo, Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


def _csv(path: Path, n: int, cols=("alpha", "beta"), label: bool = True) -> Path:
    t = np.arange(n)
    df = pd.DataFrame({"when": pd.date_range("2023-05-01", periods=n, freq="30min").strftime("%Y-%m-%d %H:%M"),
                       **{c: np.sin(2 * np.pi * t / 48 + i) + i for i, c in enumerate(cols)}})
    if label:
        df["label"] = "x"  # a text column the demo must not offer
    df.to_csv(path, index=False)
    return path


def test_binds_loopback_by_default(app):
    demo, _ = app
    assert DEFAULT_HOST == "127.0.0.1" and demo.server_name == "127.0.0.1"


def test_upload_pick_columns_and_forecast(app, tmp_path):
    _, client = app
    src = _csv(tmp_path / "upload.csv", 300)
    update = client.predict(handle_file(str(src)), api_name="/columns")
    choices = {c[0] if isinstance(c, (list, tuple)) else c for c in update["choices"]}
    assert choices == {"alpha", "beta"} and set(update["value"]) == choices  # the text column is not offered
    plot, table, note = client.predict(handle_file(str(src)), ["beta"], 30, api_name="/forecast")
    assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fut = pd.read_csv(table, parse_dates=["when"])
    assert list(fut.columns) == ["when", "beta"] and len(fut) == 30
    assert fut["when"].iloc[0] == pd.Timestamp("2023-05-01") + 300 * pd.Timedelta("30min")
    assert "30" in note and "rolled out" in note  # 30 > the bundled model's 24-step horizon


def test_no_upload_forecasts_the_bundled_data(app):
    _, client = app
    plot, table, note = client.predict(None, [], 24, api_name="/forecast")
    fut = pd.read_csv(table)
    assert len(fut) == 24 and "temp_air" in fut.columns and fut["timestamp"].iloc[0] == "1991-01-01 01:00:00"


def test_bad_upload_is_a_readable_error(app, tmp_path):
    _, client = app
    short = _csv(tmp_path / "short.csv", 20)
    with pytest.raises(Exception, match="needs at least seq_len = 168 rows"):
        client.predict(handle_file(str(short)), ["alpha"], 10, api_name="/forecast")


def test_upload_size_is_limited(app, tmp_path):
    _, client = app
    big = _csv(tmp_path / "big.csv", 6000, cols=[f"c{i}" for i in range(8)], label=False)
    assert big.stat().st_size > 200_000
    with pytest.raises(Exception, match="exceeds the maximum file size"):
        client.predict(handle_file(str(big)), [], 24, api_name="/forecast")
