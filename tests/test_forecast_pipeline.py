"""vitsuite-forecast end to end on CSVs written here and on the bundled TMY3 data: train, evaluate,
predict (file, folder, rollout, backtest), export, presets, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vitsuite.core.cli import run
from vitsuite.core.config import load_config
from vitsuite.pipelines.forecast.cli import build_parser
from vitsuite.pipelines.forecast.predict import BUNDLED_CHECKPOINT, Forecaster, load_forecaster
from vitsuite.pipelines.forecast.train import ForecastConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs" / "forecast").glob("*.yaml"))
TINY = ["--set", "model.d_model=32", "--set", "model.n_heads=4", "--set", "model.e_layers=1", "--set", "model.d_ff=32",
        "--set", "model.dropout=0.0", "--set", "train.progress=false", "--set", "train.log_every=10"]


def seasonal_csv(path: Path, n: int = 1200, cols=("load", "temp", "price"), freq="h", seed=0) -> Path:
    """Daily + weekly cycles with noise: the last value is a poor forecast, the cycle a good one."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    data = {c: (i + 1) * np.sin(2 * np.pi * t / 24 + i) + 0.5 * np.sin(2 * np.pi * t / 168) + 5 * i
            + 0.1 * rng.standard_normal(n) for i, c in enumerate(cols)}
    df = pd.DataFrame({"date": pd.date_range("2022-01-01", periods=n, freq=freq).strftime("%Y-%m-%d %H:%M:%S"), **data})
    df.to_csv(path, index=False)
    return path


def cli(*argv: str) -> int:
    return run(build_parser(), list(argv))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny model trained through the CLI on a synthetic hourly CSV (shared by the tests below)."""
    root = tmp_path_factory.mktemp("fc")
    csv = seasonal_csv(root / "series.csv")
    out = root / "run"
    code = cli("train", "--data", str(csv), "--output-dir", str(out), "--device", "cpu", *TINY,
               "--set", "data.seq_len=48", "--set", "data.pred_len=24", "--set", "train.max_steps=60",
               "--set", "train.lr=0.003", "--set", "train.lradj=constant", "--set", "train.batch_size=16",
               "--set", "eval.season=24")
    assert code == 0
    return root, csv, out


def test_train_writes_forecaster_and_beats_naive_baselines(trained):
    root, csv, out = trained
    for name in ("forecaster.pt", "best.pt", "last.pt", "metrics.json", "per_variate.csv", "per_horizon.csv"):
        assert (out / name).is_file(), name
    report = json.loads((out / "metrics.json").read_text())
    models = report["models"]
    assert set(models) == {"itransformer", "last_value", "seasonal_naive", "dlinear"}
    assert report["windows"] == int(1200 * 0.2) - 24 + 1  # every test window, stride 1
    assert models["itransformer"]["mse"] < 0.5 * models["last_value"]["mse"]  # it learned the cycle
    assert len(models["itransformer"]["per_horizon"]["mse"]) == 24
    assert set(models["dlinear"]["per_variate"]["mse_orig"]) == {"load", "temp", "price"}
    # original units = normalised x std^2 per variate
    fc = load_forecaster(out / "forecaster.pt")
    std = np.asarray(fc.meta["std"])
    pv = models["last_value"]["per_variate"]
    np.testing.assert_allclose([pv["mse_orig"][c] for c in fc.columns], np.array([pv["mse"][c] for c in fc.columns]) * std**2,
                               rtol=1e-6)
    assert fc.seq_len == 48 and fc.pred_len == 24 and fc.meta["test"]["itransformer"]["mse"] == models["itransformer"]["mse"]
    per_var = pd.read_csv(out / "per_variate.csv")
    assert len(per_var) == 4 * 3 and {"model", "variate", "mse", "mae", "mse_orig", "mae_orig"} <= set(per_var.columns)


def test_evaluate_reproduces_the_training_report(trained, capsys):
    root, csv, out = trained
    capsys.readouterr()
    assert cli("evaluate", "--checkpoint", str(out / "forecaster.pt"), "--output-dir", str(root / "eval"),
               "--json", "--device", "cpu") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    got = json.loads(lines[-1])
    want = json.loads((out / "metrics.json").read_text())["models"]
    for name in want:
        assert got[name]["mse"] == pytest.approx(want[name]["mse"], rel=1e-5)
    assert any("<- best MSE" in line for line in lines)


def test_predict_writes_future_forecast_plot_and_backtest(trained, capsys):
    root, csv, out = trained
    dest = root / "pred"
    assert cli("predict", str(csv), "-o", str(dest), "--checkpoint", str(out / "forecaster.pt"), "--backtest",
               "--device", "cpu") == 0
    fut = pd.read_csv(dest / "series_forecast.csv", parse_dates=["date"])
    hist = pd.read_csv(csv, parse_dates=["date"])
    assert list(fut.columns) == ["date", "load", "temp", "price"] and len(fut) == 24
    assert fut["date"].iloc[0] == hist["date"].iloc[-1] + pd.Timedelta("1h")
    assert (fut["date"].diff().dropna() == pd.Timedelta("1h")).all()
    # original units: the forecast follows the daily cycle of the data, offset by 5 per column
    assert abs(fut["price"].mean() - 10) < 2.0 and fut["load"].std() > 0.3
    png = (dest / "series_forecast.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    bt = pd.read_csv(dest / "series_backtest.csv", parse_dates=["origin", "date"])
    assert (dest / "series_backtest.png").is_file()
    assert set(bt["step"]) == set(range(1, 25)) and {"load_actual", "load_forecast"} <= set(bt.columns)
    first = bt[bt["step"] == 1].iloc[0]
    np.testing.assert_allclose(first["load_actual"], hist.set_index("date").loc[first["date"], "load"], rtol=1e-5)
    assert (bt["date"] - bt["origin"] == pd.to_timedelta(bt["step"], unit="h")).all()


def test_predict_rollout_targets_and_parquet(trained):
    root, csv, out = trained
    dst = root / "roll.parquet"
    assert cli("predict", str(csv), "-o", str(dst), "--checkpoint", str(out / "forecaster.pt"), "--horizon", "60",
               "--targets", "temp", "--no-plot", "--device", "cpu") == 0
    fut = pd.read_parquet(dst)
    assert list(fut.columns) == ["temp"] and len(fut) == 60 and not (root / "roll.png").exists()
    fc = load_forecaster(out / "forecaster.pt")
    from vitsuite.pipelines.forecast.predict import forecast, load_input

    series, _ = load_input(fc, csv)
    short = forecast(fc, series, horizon=24)
    np.testing.assert_allclose(fut["temp"].to_numpy()[:24], short["temp"].to_numpy(), rtol=1e-5, atol=1e-5)


def test_predict_folder_via_batch_runner(trained, tmp_path, capsys):
    root, csv, out = trained
    src = tmp_path / "in"
    src.mkdir()
    seasonal_csv(src / "a.csv", n=200, seed=1)
    seasonal_csv(src / "b.csv", n=200, cols=("x", "y"), seed=2)  # other columns: scaled by their own history
    pd.DataFrame({"date": ["2020-01-01", "2020-01-01"], "v": [1, 2]}).to_csv(src / "dup.csv", index=False)
    code = cli("predict", str(src), "-o", str(tmp_path / "out"), "--checkpoint", str(out / "forecaster.pt"),
               "--device", "cpu")
    assert code == 1  # one file failed, the others were written
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["counts"]["processed"] == 2 and summary["counts"]["failed"] == 1
    failed = [f for f in summary["files"] if f["status"] == "failed"][0]
    assert "dup.csv" in failed["error"] and "duplicate timestamps" in failed["error"]
    assert list(pd.read_csv(tmp_path / "out" / "b_forecast.csv").columns) == ["date", "x", "y"]
    assert (tmp_path / "out" / "a_forecast.png").is_file()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_parity(trained, fmt, capsys):
    root, csv, out = trained
    dst = root / ("model.onnx" if fmt == "onnx" else "model.ts")
    assert cli("export", "--checkpoint", str(out / "forecaster.pt"), "-o", str(dst), "--format", fmt) == 0
    meta = json.loads(Path(str(dst) + ".json").read_text())
    assert meta["export"]["inputs"] == {"x": [1, 48, 3], "x_mark": [1, 48, 4]} and meta["export"]["max_abs_diff"] < 1e-4
    from vitsuite.core.export import run_exported

    fc = load_forecaster(out / "forecaster.pt")
    x, mark = torch.randn(1, 48, 3), torch.rand(1, 48, 4) - 0.5
    got = run_exported(dst, (x, mark))[0]
    with torch.no_grad():
        want = fc.model(x, mark).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


# --------------------------------------------------------------------------------------------- presets


def _preset_data(name: str, tmp: Path) -> list[str]:
    if name == "tmy3":
        return []  # the preset's own data: the bundled TMY3 file
    if name == "etth1":  # ETT-shaped: the 12/4/4-month split needs 14,400 hourly rows
        return ["--data", str(seasonal_csv(tmp / "ETTh1.csv", n=14400, cols=("HUFL", "HULL", "MUFL", "MULL", "LUFL",
                                                                          "LULL", "OT")))]
    if name == "ecl":  # ECL-shaped: 321 variates
        return ["--data", str(seasonal_csv(tmp / "electricity.csv", n=900, cols=[f"MT_{i:03d}" for i in range(320)]
                                           + ["OT"]))]
    raise AssertionError(f"preset {name} has no test data; add it here")


@pytest.mark.parametrize("preset", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_preset_loads_and_trains_a_step(preset, tmp_path):
    cfg = load_config(ForecastConfig, preset)
    assert cfg.model.name.startswith("itransformer")
    from vitsuite.core.registry import count_model_parameters
    from vitsuite.pipelines.forecast.train import model_kwargs

    assert count_model_parameters(cfg.model.name, **model_kwargs(cfg)) > 0  # the preset's own size builds
    extra = []
    if preset.stem != "tmy3":  # paper sizes: the run itself uses a narrow model to stay fast on 2 CPU cores
        extra = ["--set", "model.d_model=32", "--set", "model.d_ff=32", "--set", "model.n_heads=4"]
    if preset.stem == "ecl":
        extra += ["--set", "data.pred_len=24", "--set", "data.seq_len=48"]
    code = cli("train", "--config", str(preset), *_preset_data(preset.stem, tmp_path), "--output-dir",
               str(tmp_path / "run"), "--device", "cpu", "--set", "train.max_steps=2", "--set", "train.progress=false",
               "--set", "eval.batch_size=512", *extra)
    assert code == 0
    fc = load_forecaster(tmp_path / "run" / "forecaster.pt")
    assert fc.meta["config"]["train"] == {**cfg.train.model_dump(), "max_steps": 2, "progress": False,
                                          "output_dir": str(tmp_path / "run"), "device": "cpu"}
    if preset.stem == "etth1":
        assert json.loads((tmp_path / "run" / "metrics.json").read_text())["borders"]["test"] == [11520 - 96, 14400]


# --------------------------------------------------------------------------------------------- bundled model


def test_bundled_forecaster_is_small_and_forecasts_the_bundled_data(tmp_path):
    assert BUNDLED_CHECKPOINT.is_file() and BUNDLED_CHECKPOINT.stat().st_size < 2 * 1024 * 1024
    fc = Forecaster.load()
    assert fc.meta["data"]["path"] == "pvlib:723170TYA.CSV" and len(fc.columns) == 11
    # the `make demo` command (`python -m vitsuite.pipelines.forecast.cli predict -o DIR`), in process
    assert cli("predict", "-o", str(tmp_path)) == 0
    fut = pd.read_csv(tmp_path / "723170TYA_forecast.csv", parse_dates=["timestamp"])
    assert fut["timestamp"].iloc[0] == pd.Timestamp("1991-01-01 01:00") and len(fut) == fc.pred_len
    assert (fut["relative_humidity"].between(0, 110)).all() and (fut["pressure"].between(950, 1030)).all()
    assert (tmp_path / "723170TYA_forecast.png").stat().st_size > 10_000


def test_cli_module_is_runnable():
    proc = subprocess.run([sys.executable, "-m", "vitsuite.pipelines.forecast.cli", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and all(c in proc.stdout for c in ("train", "evaluate", "predict", "demo", "export"))


def test_official_checkpoint_loads_for_prediction(tmp_path):
    ref = REPO.parent / "shared" / "reference" / "itransformer" / "small" / "state_dict.safetensors"
    if not ref.is_file():
        pytest.skip("shared/reference/itransformer not present")
    fc = Forecaster.load(ref)
    assert fc.meta.get("official") and fc.seq_len == 48 and fc.pred_len == 24
    csv = seasonal_csv(tmp_path / "s.csv", n=100, cols=("a", "b", "c", "d", "e"))
    assert cli("predict", str(csv), "-o", str(tmp_path / "o"), "--checkpoint", str(ref), "--no-plot") == 0
    assert len(pd.read_csv(tmp_path / "o" / "s_forecast.csv")) == 24


# --------------------------------------------------------------------------------------------- one-line errors


def _write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def _hourly(n: int, extra: str = "") -> str:
    rows = [f"2021-01-01 {h:02d}:00:00,{h}.5,{h}" for h in range(min(n, 24))]
    rows += [f"2021-01-02 {h:02d}:00:00,{h}.5,{h}" for h in range(max(0, n - 24))]
    return "date,a,b\n" + "\n".join(rows) + "\n" + extra


@pytest.mark.parametrize("case, content, pattern", [
    ("no_timestamp", "a,b\n1,2\n3,4\n", "no timestamp column found"),
    ("duplicates", _hourly(30) + "2021-01-02 05:00:00,1,1\n", "duplicate timestamps"),
    ("non_numeric", _hourly(30).replace("3.5,3", "three,3"), "column 'a' is not numeric"),
    ("nan", _hourly(30).replace("3.5,3", ",3"), "missing values"),
    ("short", _hourly(30), r"needs at least seq_len = 168 rows of history, the file has 30"),
])
def test_cli_bad_inputs_give_one_line_errors(tmp_path, capsys, case, content, pattern):
    path = _write(tmp_path, f"{case}.csv", content)
    code = cli("predict", str(path), "-o", str(tmp_path / "out"), "--device", "cpu")
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and str(path) in err
    assert pytest.importorskip("re").search(pattern, err), err


def test_cli_bad_config_and_horizon(tmp_path, capsys):
    csv = seasonal_csv(tmp_path / "s.csv", n=200)
    assert cli("train", "--data", str(csv), "--set", "data.pred_len=96", "--device", "cpu",
               "--output-dir", str(tmp_path / "r")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "horizon too long" in err and "s.csv" in err
    assert cli("train", "--set", "data.fill=sometimes") == 2
    assert "data.fill" in capsys.readouterr().err
    assert cli("predict", str(csv), "--horizon", "100000", "-o", str(tmp_path / "o")) == 2
    assert "horizon 100000" in capsys.readouterr().err
