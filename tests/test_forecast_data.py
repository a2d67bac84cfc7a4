"""Forecast data path: readers, TMY3 quirks, validation errors, fills, splits, scaler, time marks, windows, baselines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from vitsuite.core.errors import ConfigError, InputError
from vitsuite.pipelines.forecast.baselines import DLinearLS, last_value, seasonal_naive
from vitsuite.pipelines.forecast.data import (TMY3_DEFAULT, DataConfig, Scaler, TimeFeatures, WindowDataset,
                                              load_series, parse_freq, prepare, resolve_path, split_borders)


def frame(n=400, freq="h", cols=("a", "b", "c"), seed=0, start="2021-03-01"):
    rng = np.random.default_rng(seed)
    idx = pd.date_range(start, periods=n, freq=freq)
    t = np.arange(n)
    data = {c: np.sin(2 * np.pi * t / 24 + i) * (i + 1) + 0.1 * rng.standard_normal(n) + 10 * i
            for i, c in enumerate(cols)}
    return pd.DataFrame({"date": idx.strftime("%Y-%m-%d %H:%M:%S"), **data})


def write(df, path, **kw):
    df.to_csv(path, index=False, **kw)
    return path


# --------------------------------------------------------------------------------------------- time features


def _authors_marks(idx: pd.DatetimeIndex, freq: str) -> np.ndarray:
    """The authors' utils/timefeatures.py formulas, spelled out with pandas attributes."""
    f = {"second": idx.second / 59.0 - 0.5, "minute": idx.minute / 59.0 - 0.5, "hour": idx.hour / 23.0 - 0.5,
         "weekday": idx.day_of_week / 6.0 - 0.5, "day": (idx.day - 1) / 30.0 - 0.5,
         "yearday": (idx.day_of_year - 1) / 365.0 - 0.5, "month": (idx.month - 1) / 11.0 - 0.5,
         "week": (idx.isocalendar().week.to_numpy() - 1) / 52.0 - 0.5}
    table = {"h": ["hour", "weekday", "day", "yearday"], "min": ["minute", "hour", "weekday", "day", "yearday"],
             "s": ["second", "minute", "hour", "weekday", "day", "yearday"], "D": ["weekday", "day", "yearday"],
             "B": ["weekday", "day", "yearday"], "W": ["day", "week"], "ME": ["month"], "MS": ["month"],
             "QE": ["month"], "YE": []}
    return np.stack([np.asarray(f[k], np.float64) for k in table[freq]], -1) if table[freq] else np.zeros((len(idx), 0))


@pytest.mark.parametrize("freq", ["h", "min", "s", "D", "B", "W", "ME", "MS", "QE", "YE"])
def test_time_features_match_the_authors(freq):
    idx = pd.date_range("2019-12-20 07:13:29", periods=200 if freq in ("QE", "YE") else 500, freq=freq)
    got = TimeFeatures(freq)(idx.as_unit("ns").asi8)
    want = _authors_marks(idx, freq)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)
    if freq == "h":  # the ARCH.md example: 4 hourly marks in [-0.5, 0.5]
        assert got.shape[1] == 4 and got.min() >= -0.5 and got.max() <= 0.5


def test_authors_frequency_letters():
    assert parse_freq("t").freqstr == "min" and parse_freq("H").freqstr == "h" and parse_freq("15T").freqstr == "15min"
    assert TimeFeatures("t").dim == 5 and TimeFeatures("d").dim == 3 and TimeFeatures("m").dim == 1
    with pytest.raises(ConfigError, match="not a pandas frequency"):
        parse_freq("fortnightly")


# --------------------------------------------------------------------------------------------- readers


def test_csv_reader_detects_timestamp_and_frequency(tmp_path):
    df = frame(300, freq="15min")
    df = df[["a", "date", "b", "c"]].rename(columns={"date": "Timestamp"})  # not first, other spelling
    s = load_series(DataConfig(path=str(write(df, tmp_path / "x.csv"))))
    assert s.columns == ["a", "b", "c"] and s.freq == "15min" and s.timestamp_name == "Timestamp"
    assert s.values.dtype == np.float32 and s.values.flags.c_contiguous and s.values.shape == (300, 3)
    np.testing.assert_allclose(s.values, df[["a", "b", "c"]].to_numpy(np.float32))
    assert s.index[0] == pd.Timestamp("2021-03-01") and s.index[-1] == pd.Timestamp("2021-03-01") + 299 * pd.Timedelta("15min")
    assert s.future_index(2)[0] == s.index[-1] + pd.Timedelta("15min")


def test_parquet_and_non_iso_dates_read_like_csv(tmp_path):
    df = frame(200, freq="D")
    ref = load_series(DataConfig(path=str(write(df, tmp_path / "x.csv"))))
    df.assign(date=pd.to_datetime(df["date"])).to_parquet(tmp_path / "x.parquet", index=False)
    pq = load_series(DataConfig(path=str(tmp_path / "x.parquet")))
    us = df.assign(date=pd.to_datetime(df["date"]).dt.strftime("%m/%d/%Y"))  # pyarrow cannot parse: pandas fallback
    us_s = load_series(DataConfig(path=str(write(us, tmp_path / "us.csv"))))
    for s in (pq, us_s):
        np.testing.assert_array_equal(s.values, ref.values)
        np.testing.assert_array_equal(s.timestamps, ref.timestamps)
    assert ref.freq == "D" and TimeFeatures(ref.freq).names == ("weekday", "day", "yearday")


def test_unsorted_rows_are_sorted(tmp_path):
    df = frame(100)
    s = load_series(DataConfig(path=str(write(df.iloc[::-1], tmp_path / "rev.csv"))))
    np.testing.assert_allclose(s.values[:, 0], df["a"].to_numpy(np.float32))


def test_tmy3_quirks_are_handled():
    path = resolve_path("pvlib:723170TYA.CSV")
    s = load_series(DataConfig())  # the default data is the bundled TMY3 file
    assert len(s) == 8760 and s.freq == "h" and s.columns == list(TMY3_DEFAULT)
    assert not any(k in c for c in s.columns for k in ("source", "uncert", "flag"))
    assert s.index[0] == pd.Timestamp("1990-01-01 01:00") and s.index[-1] == pd.Timestamp("1991-01-01 00:00")
    assert (np.diff(s.timestamps) == 3600 * 10**9).all()  # regular although months come from 1980..2003
    raw = pd.read_csv(path, skiprows=1)
    # row 23 is "01/01/1988 24:00" -> 1990-01-02 00:00; the last row "12/31/1980 24:00" -> 1991-01-01 00:00
    assert raw.iloc[23]["Time (HH:MM)"] == "24:00" and s.index[23] == pd.Timestamp("1990-01-02 00:00")
    np.testing.assert_allclose(s.values[:, s.columns.index("temp_air")], raw["Dry-bulb (C)"].to_numpy(np.float32))
    np.testing.assert_allclose(s.values[-1, 0], raw["GHI (W/m^2)"].iloc[-1])
    with pytest.raises(ConfigError, match="leap year"):
        load_series(DataConfig(year=1992))
    one = load_series(DataConfig(columns=["temp_air", "wind_speed"]))
    assert one.columns == ["temp_air", "wind_speed"]


# --------------------------------------------------------------------------------------------- bad inputs


def _bad_no_timestamp(df):
    return df.drop(columns="date")


def _bad_duplicates(df):
    return pd.concat([df.iloc[:10], df.iloc[9:]])


def _bad_text_early(df):
    return df.assign(b=df["b"].astype(object).where(df.index != 5, "oops"))


def _bad_text_late(df):  # past the 2000 sniffed rows: caught by the streaming reader
    return df.assign(b=df["b"].astype(object).where(df.index != 2500, "oops"))


def _bad_nan(df):
    return df.assign(a=df["a"].where(df.index != 7))


def _bad_gap(df):
    return df.drop(index=[50, 51, 52])


@pytest.mark.parametrize("make, pattern", [
    (_bad_no_timestamp, "no timestamp column found"),
    (_bad_duplicates, "duplicate timestamps"),
    (_bad_text_early, r"column 'b' is not numeric \('oops' at line 7\)"),
    (_bad_text_late, r"column 'b' is not numeric \('oops' at line 2502\)"),
    (_bad_nan, "missing values"),
    (_bad_gap, "gap"),
])
def test_bad_files_raise_one_line_errors_naming_the_file(tmp_path, make, pattern):
    path = write(make(frame(3000)), tmp_path / "bad.csv")
    with pytest.raises(InputError, match=pattern) as info:
        load_series(DataConfig(path=str(path)))
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg


def test_missing_empty_and_one_column_files(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "one.csv").write_text("date\n2020-01-01\n")
    for name, pattern in (("nope.csv", "no such file"), ("empty.csv", "empty"), ("one.csv", "found 1 column")):
        with pytest.raises(InputError, match=pattern):
            load_series(DataConfig(path=str(tmp_path / name)))


def test_horizon_longer_than_data_is_an_error(tmp_path):
    s = load_series(DataConfig(path=str(write(frame(150), tmp_path / "short.csv"))))
    with pytest.raises(InputError, match=r"horizon too long.*seq_len \+ pred_len = 192") as info:
        prepare(s, DataConfig(seq_len=96, pred_len=96))
    assert "short.csv" in str(info.value)


@pytest.mark.parametrize("policy", ["ffill", "interpolate", "zero"])
def test_fill_policies_repair_gaps_and_nans(tmp_path, policy):
    df = frame(200)
    df.loc[3, "a"] = np.nan
    df = df.drop(index=[10, 11])  # two missing rows
    s = load_series(DataConfig(path=str(write(df, tmp_path / "holes.csv")), fill=policy))
    assert len(s) == 200 and (np.diff(s.timestamps) == 3600 * 10**9).all() and np.isfinite(s.values).all()
    a = s.values[:, 0]
    ref = frame(200)["a"].to_numpy(np.float32)
    expect = {"ffill": (ref[2], ref[9]), "interpolate": ((ref[2] + ref[4]) / 2, ref[9] + (ref[12] - ref[9]) / 3),
              "zero": (0.0, 0.0)}[policy]
    np.testing.assert_allclose([a[3], a[10]], expect, rtol=1e-5, atol=1e-6)


def test_off_grid_timestamps_are_an_error_even_with_fill(tmp_path):
    df = frame(100)
    df.loc[5, "date"] = "2021-03-01 05:30:00"
    with pytest.raises(InputError, match="off the h grid"):
        load_series(DataConfig(path=str(write(df, tmp_path / "off.csv")), fill="ffill", freq="h"))


# --------------------------------------------------------------------------------------------- splits, scaler


def test_splits_follow_the_authors():
    off = parse_freq("h")
    ett = split_borders(17420, DataConfig(split="ett", seq_len=96, pred_len=96), offset=off)
    assert ett == {"train": (0, 8640), "val": (8640 - 96, 11520), "test": (11520 - 96, 14400)}
    ettm = split_borders(69680, DataConfig(split="ett", seq_len=96, pred_len=96), offset=parse_freq("15min"))
    assert ettm["test"] == (4 * 11520 - 96, 4 * 14400)
    n = 26304  # ECL
    r = split_borders(n, DataConfig(split="ratio"), offset=off)
    assert r == {"train": (0, int(n * 0.7)), "val": (int(n * 0.7) - 96, n - int(n * 0.2)),
                 "test": (n - int(n * 0.2) - 96, n)}
    auto = split_borders(17420, DataConfig(), offset=off, source="/data/ETTh1.csv")
    assert auto == ett
    stamps = pd.date_range("2020-01-01", periods=1000, freq="h").as_unit("ns").asi8
    d = split_borders(1000, DataConfig(split="dates", train_end="2020-01-30", val_end="2020-02-05", seq_len=24,
                                       pred_len=12), offset=off, stamps=stamps)
    assert d["train"] == (0, 29 * 24) and d["test"] == (35 * 24 - 24, 1000)
    with pytest.raises(ConfigError, match="ratios"):
        split_borders(1000, DataConfig(split="ratio", ratios=(0.7, 0.2, 0.2)), offset=off)


def test_scaler_is_fitted_on_the_training_rows_only(tmp_path):
    df = frame(1000)
    s = load_series(DataConfig(path=str(write(df, tmp_path / "x.csv"))))
    raw = s.values.copy()
    cfg = DataConfig(seq_len=48, pred_len=24)
    p = prepare(s, cfg)
    train = raw[:700].astype(np.float64)
    np.testing.assert_allclose(p.scaler.mean, train.mean(0), rtol=1e-6)
    np.testing.assert_allclose(p.scaler.std, train.std(0), rtol=1e-5)  # population std, as sklearn
    np.testing.assert_allclose(p.data.numpy(), (raw - train.mean(0)) / train.std(0), atol=1e-5)
    np.testing.assert_array_equal(s.values, raw)  # not in place by default
    s.values[800:] += 1000.0  # changing the test rows does not move the scaler
    assert np.allclose(prepare(s, cfg).scaler.mean, p.scaler.mean)
    chunked = Scaler.fit(raw[:700], chunk=64)  # the chunked (Chan) update equals the one-shot numbers
    np.testing.assert_allclose(chunked.std, p.scaler.std, rtol=1e-9)
    p2 = prepare(s, cfg, inplace=True)
    assert p2.data.data_ptr() == s.values.ctypes.data


# --------------------------------------------------------------------------------------------- windows


def test_windows_are_views_and_batches_match_items(tmp_path):
    s = load_series(DataConfig(path=str(write(frame(500), tmp_path / "x.csv"))))
    cfg = DataConfig(seq_len=48, pred_len=24, targets=["c"])
    p = prepare(s, cfg)
    ds = p.dataset("val")
    b0, b1 = p.borders["val"]
    assert len(ds) == (b1 - b0) - 48 - 24 + 1
    item = ds[3]
    assert item["x"].data_ptr() == p.data[b0 + 3].data_ptr()  # a view: no copy per window
    assert item["x"].shape == (48, 3) and item["y"].shape == (24, 1) and item["x_mark"].shape == (48, 4)
    torch.testing.assert_close(item["y"][:, 0], p.data[b0 + 3 + 48:b0 + 3 + 72, 2])
    batch = ds.__getitems__([0, 3, len(ds) - 1])
    for k in ("x", "y", "x_mark"):
        torch.testing.assert_close(batch[k][1], item[k])
    hourly = TimeFeatures("h")(s.timestamps[b0 + 3:b0 + 51])
    np.testing.assert_allclose(item["x_mark"].numpy(), hourly)
    with pytest.raises(IndexError):
        ds.__getitems__([len(ds)])
    strided = p.dataset("test", stride=24)
    assert len(strided) == ((p.borders["test"][1] - p.borders["test"][0]) - 72) // 24 + 1
    with pytest.raises(ValueError, match="contiguous"):
        WindowDataset(p.data.t(), p.stamps, 0, 100, 48, 24)


# --------------------------------------------------------------------------------------------- baselines


def test_last_value_and_seasonal_naive():
    x = torch.arange(2 * 10 * 3, dtype=torch.float32).reshape(2, 10, 3)
    torch.testing.assert_close(last_value(x, 4), x[:, -1:].expand(-1, 4, -1))
    sn = seasonal_naive(x, 7, 3)  # repeats rows 7, 8, 9, 7, 8, 9, 7
    torch.testing.assert_close(sn, x[:, [7, 8, 9, 7, 8, 9, 7]])
    with pytest.raises(ValueError):
        seasonal_naive(x, 4, 11)


def test_dlinear_closed_form_is_least_squares_over_all_windows():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((300, 4)).cumsum(0).astype(np.float32)
    L, S = 12, 5
    dl = DLinearLS.fit(z, L, S, ridge=0.0, chunk_rows=100)  # several chunks
    win = np.stack([z[i:i + L + S] for i in range(len(z) - L - S + 1)])  # (W, L+S, K), explicit
    X = win[:, :L].transpose(0, 2, 1).reshape(-1, L)
    Y = win[:, L:].transpose(0, 2, 1).reshape(-1, S)
    sol, *_ = np.linalg.lstsq(np.c_[X, np.ones(len(X))], Y, rcond=None)
    np.testing.assert_allclose(dl.weight.numpy(), sol[:L], atol=2e-4)
    np.testing.assert_allclose(dl.bias.numpy(), sol[L], atol=2e-4)
    x = torch.from_numpy(win[:3, :L])
    torch.testing.assert_close(dl(x), torch.from_numpy((win[:3, :L].transpose(0, 2, 1) @ sol[:L] + sol[L]).transpose(0, 2, 1).astype(np.float32)), atol=1e-3, rtol=1e-3)
    # a noiseless linear trend is continued exactly
    trend = np.arange(200, dtype=np.float32)[:, None] * np.array([[0.5, -1.0]], np.float32)
    fit = DLinearLS.fit(trend / 100, L, S, ridge=0.0)
    x = torch.from_numpy(trend[None, 100:100 + L] / 100)
    torch.testing.assert_close(fit(x), torch.from_numpy(trend[None, 100 + L:100 + L + S] / 100), atol=1e-3, rtol=0)


def test_evaluate_baselines_and_season_that_does_not_fit(tmp_path):
    from vitsuite.pipelines.forecast.evaluate import EvalConfig, evaluate

    s = load_series(DataConfig(path=str(write(frame(600, freq="5min"), tmp_path / "x.csv"))))
    p = prepare(s, DataConfig(seq_len=48, pred_len=12))
    report = evaluate(None, p)  # baselines only; a day of 5-minute steps (288) does not fit 48 inputs
    assert set(report["models"]) == {"last_value", "dlinear"} and report["windows"] == 120 - 12 + 1
    lv = report["models"]["last_value"]
    x = p.data[p.borders["test"][0]:, :]
    W = report["windows"]
    err = torch.stack([x[47 + i] - x[48 + i:60 + i] for i in range(W)])  # explicit last-value errors
    assert lv["mse"] == pytest.approx(float((err**2).mean()), rel=1e-5)
    assert lv["per_horizon"]["mse"][0] == pytest.approx(float((err[:, 0] ** 2).mean()), rel=1e-5)
    with pytest.raises(ConfigError, match="eval.season"):
        evaluate(None, p, EvalConfig(season=100))


def test_dataframe_with_time_zone_keeps_wall_clock_marks():
    from vitsuite.pipelines.forecast.data import series_from_frame

    idx = pd.date_range("2021-03-27 22:00", periods=72, freq="h", tz="Europe/Berlin")  # spans the DST switch
    s = series_from_frame(pd.DataFrame({"v": np.arange(72.0)}, index=idx))
    assert s.tz == "Europe/Berlin" and s.freq == "h" and (s.index == idx).all()
    hours = TimeFeatures("h")(s.wall_clock())[:, 0]
    np.testing.assert_allclose(hours, idx.hour / 23.0 - 0.5, atol=1e-6)  # local hours, 02:00 skipped
    assert s.future_index(1)[0] == idx[-1] + pd.Timedelta("1h")
    with pytest.raises(InputError, match="DatetimeIndex"):
        series_from_frame(pd.DataFrame({"v": [1.0, 2.0]}))
