"""Time-series data for forecasting: readers, validation, the authors' splits, scaling, time marks, windows.

The whole way from a file to training batches::

    series = load_series(cfg.data)          # CSV / Parquet / TMY3 -> Series (T, N) float32 + int64 timestamps
    prep = prepare(series, cfg.data)        # splits, scaler fitted on the train rows, target columns
    ds = prep.dataset("train")              # WindowDataset: views into one contiguous (T, N) tensor

Conventions follow the iTransformer code (thuml/iTransformer ``data_provider/data_loader.py``):
ETT files are split 12/4/4 months of 30 days, every other file 70 % / rest / 20 % by rows; the
validation and test windows start ``seq_len`` rows before their border (so the first test window's
input lies in the validation part); a per-variate ``StandardScaler`` is fitted on the training rows
only; time marks are the authors' ``timeF`` features (:class:`TimeFeatures`).

Memory: a file is read straight into one preallocated float32 array (CSV with pyarrow's streaming
reader, Parquet batch by batch), scaled in place, and windows are slices of it -- nothing is copied
per window, and time marks are computed per batch from the int64 timestamps instead of being stored.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import pandas as pd
import torch
from pandas.tseries.frequencies import to_offset
from torch.utils.data import Dataset

from vitsuite.core.config import Config
from vitsuite.core.errors import ConfigError, InputError

# Column names taken for the timestamp when none is given (compared case-insensitively).
TIMESTAMP_NAMES = ("date", "datetime", "timestamp", "time", "ds", "date_time", "dt", "time_stamp")
BUNDLED_PREFIX = "pvlib:"
BUNDLED_DEFAULT = "pvlib:723170TYA.CSV"  # NREL TMY3, Greensboro NC, shipped inside the pvlib wheel
FILL_POLICIES = ("none", "ffill", "interpolate", "zero")
_CSV_SUFFIXES = (".csv", ".txt", ".tsv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zst")
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
_SNIFF_ROWS = 2000


class DataConfig(Config):
    """The ``data`` section: where the series comes from, how it is cut into windows and split."""

    path: str = BUNDLED_DEFAULT  # a CSV / Parquet file, or "pvlib:<file>" for a TMY3 file in the pvlib wheel
    format: Literal["auto", "csv", "parquet", "tmy3"] = "auto"  # auto: by suffix (and TMY3 header sniffing)
    timestamp: str | None = None  # timestamp column; None: detected (date, datetime, timestamp, ... or a first date column)
    columns: list[str] | None = None  # variates fed to the model; None: every column but the timestamp (all must be numeric)
    targets: list[str] | None = None  # variates forecast and scored; None: all (M -> M); a subset: M -> S / M -> K
    freq: str | None = None  # pandas frequency ("h", "15min", "D", "MS", ...); None: inferred from the timestamps
    fill: Literal["none", "ffill", "interpolate", "zero"] = "none"  # missing values / missing rows; "none" = error
    sep: str = ","  # CSV delimiter
    year: int = 1990  # TMY3 only: the single (non-leap) year every month is moved to
    seq_len: int = 96  # input window L
    pred_len: int = 96  # horizon S
    split: Literal["auto", "ett", "ratio", "dates"] = "auto"  # auto: "ett" for ETT*.csv files, else "ratio"
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train / val / test fractions of the rows ("ratio")
    train_end: str | None = None  # "dates": first timestamp of the validation part
    val_end: str | None = None  # "dates": first timestamp of the test part
    time_marks: bool = True  # timeF calendar features as extra tokens (the authors' embed='timeF'); False: none
    mark_freq: str | None = None  # frequency the marks are computed for; None: the data's; the authors' scripts keep "h"


# ---------------------------------------------------------------------------------------------
# frequencies and time features

# The authors' single-letter frequencies (run.py ``--freq``) and pandas 1.x aliases -> pandas 3 names.
_FREQ_ALIASES = {"t": "min", "T": "min", "H": "h", "S": "s", "L": "ms", "U": "us", "N": "ns", "d": "D",
                 "b": "B", "w": "W", "m": "ME", "M": "ME", "q": "QE", "Q": "QE", "a": "YE", "A": "YE",
                 "y": "YE", "Y": "YE"}


def parse_freq(text: str, *, what: str = "data.freq") -> pd.DateOffset:
    """A pandas offset from a frequency string; authors' letters (``h``, ``t``, ``d``, ``m``) are accepted."""
    m = re.fullmatch(r"\s*(\d*)\s*([A-Za-z]+(?:-[A-Za-z]+)?)\s*", str(text))
    if m is not None and m.group(2) in _FREQ_ALIASES:
        text = m.group(1) + _FREQ_ALIASES[m.group(2)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return to_offset(text)
    except (ValueError, TypeError):
        raise ConfigError(f"{what}: '{text}' is not a pandas frequency (e.g. h, 15min, D, W, MS)") from None


def fixed_step(offset: pd.DateOffset) -> int | None:
    """The offset's length in ns when it is fixed (hours, minutes, days on naive clocks), else ``None``."""
    try:
        return int(pd.Timedelta(offset).value)
    except (ValueError, TypeError):
        return None


def offset_from_step(step_ns: int, first_ns: int) -> pd.DateOffset:
    """A readable offset for a constant step: whole days as ``nD``, 7 days as ``W-<weekday>``, else ticks."""
    day = 86_400 * 10**9
    if step_ns == 7 * day:
        weekday = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")[(first_ns // day + 3) % 7]
        return to_offset(f"W-{weekday}")
    if step_ns % day == 0:
        return to_offset(f"{step_ns // day}D")
    return to_offset(pd.Timedelta(step_ns))


def default_season(offset: pd.DateOffset) -> int:
    """The seasonal period in steps for the seasonal-naive baseline: one day for sub-daily data,
    a week for daily, a year for weekly/monthly/quarterly, 1 (= last value) otherwise."""
    step = fixed_step(offset)
    day = 86_400 * 10**9
    if step is not None and step < day:
        return max(1, day // step) if day % step == 0 else 1
    name = type(offset).__name__
    if step == day or name == "Day":
        return 7
    if name == "BusinessDay":
        return 5
    if name == "Week":
        return 52
    if name.startswith("Month"):
        return 12
    if name.startswith("Quarter"):
        return 4
    return 1


class TimeFeatures:
    """The authors' ``timeF`` calendar features (``utils/timefeatures.py``), vectorised in NumPy.

    ``__call__(ns)`` maps int64 wall-clock nanoseconds of any shape ``(...)`` to float32 ``(..., M)``.
    Each feature is scaled to [-0.5, 0.5]: second/59, minute/59, hour/23, weekday/6, (day-1)/30,
    (day_of_year-1)/365, (month-1)/11, (iso_week-1)/52, each minus 0.5. Which features a frequency gets
    follows the authors' table: hourly -> hour, weekday, day, day of year (M = 4); minutely adds minute
    first; secondly adds second; daily / business daily -> weekday, day, day of year; weekly -> day,
    week; monthly / quarterly -> month; yearly -> none. Offsets the authors did not list take the
    nearest one (``MS`` like ``ME``, sub-second like seconds).
    """

    _TABLE = (  # (offset class names, features) in the authors' order
        (("YearEnd", "YearBegin"), ()),
        (("QuarterEnd", "QuarterBegin"), ("month",)),
        (("MonthEnd", "MonthBegin", "SemiMonthEnd", "SemiMonthBegin", "BusinessMonthEnd", "BusinessMonthBegin"),
         ("month",)),
        (("Week",), ("day", "week")),
        (("Day",), ("weekday", "day", "yearday")),
        (("BusinessDay", "CustomBusinessDay"), ("weekday", "day", "yearday")),
        (("Hour", "BusinessHour"), ("hour", "weekday", "day", "yearday")),
        (("Minute",), ("minute", "hour", "weekday", "day", "yearday")),
    )
    _SECONDLY = ("second", "minute", "hour", "weekday", "day", "yearday")

    def __init__(self, freq: str | pd.DateOffset):
        offset = parse_freq(freq, what="data.mark_freq") if isinstance(freq, str) else freq
        name = type(offset).__name__
        self.freq = offset.freqstr
        self.names: tuple[str, ...] = self._SECONDLY
        for names, feats in self._TABLE:
            if name in names:
                self.names = feats
                break

    @property
    def dim(self) -> int:
        """M, the number of mark tokens."""
        return len(self.names)

    def __call__(self, ns: np.ndarray) -> np.ndarray:
        ns = np.asarray(ns, dtype=np.int64)
        out = np.empty(ns.shape + (len(self.names),), dtype=np.float32)
        if not self.names:
            return out
        t = ns.astype("datetime64[ns]")
        days = t.astype("datetime64[D]")
        months = t.astype("datetime64[M]")
        in_day = (t - days).astype(np.int64)  # ns since midnight
        for i, name in enumerate(self.names):
            if name == "second":
                v = (in_day // 10**9 % 60) / 59.0
            elif name == "minute":
                v = (in_day // (60 * 10**9) % 60) / 59.0
            elif name == "hour":
                v = (in_day // (3600 * 10**9)) / 23.0
            elif name == "weekday":  # 1970-01-01 was a Thursday (Monday = 0)
                v = ((days.astype(np.int64) + 3) % 7) / 6.0
            elif name == "day":
                v = (days - months.astype("datetime64[D]")).astype(np.int64) / 30.0
            elif name == "yearday":
                v = (days - t.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.int64) / 365.0
            elif name == "month":
                v = (months.astype(np.int64) % 12) / 11.0
            else:  # ISO week; weekly data only, so pandas' isocalendar is fast enough
                week = pd.DatetimeIndex(ns.ravel()).isocalendar().week.to_numpy(np.int64).reshape(ns.shape)
                v = (week - 1) / 52.0
            out[..., i] = v - 0.5
        return out


# ---------------------------------------------------------------------------------------------
# the series and its reading


@dataclass
class Series:
    """A regular multivariate series in original units.

    ``values`` (T, N) float32 C-contiguous; ``timestamps`` (T,) int64 ns (UTC when ``tz`` is set,
    else naive wall clock), strictly increasing on the ``freq`` grid.
    """

    values: np.ndarray
    timestamps: np.ndarray
    columns: list[str]
    freq: str
    source: str = "<memory>"
    timestamp_name: str = "timestamp"
    tz: str | None = None

    def __len__(self) -> int:
        return len(self.timestamps)

    @property
    def offset(self) -> pd.DateOffset:
        return parse_freq(self.freq)

    @property
    def index(self) -> pd.DatetimeIndex:
        """The timestamps as a pandas index (tz-aware when the file had offsets)."""
        idx = pd.DatetimeIndex(self.timestamps.astype("datetime64[ns]"), name=self.timestamp_name)
        return idx.tz_localize("UTC").tz_convert(self.tz) if self.tz else idx

    def wall_clock(self) -> np.ndarray:
        """(T,) int64 local wall-clock ns, what the calendar features are computed from."""
        if not self.tz:
            return self.timestamps
        return self.index.tz_localize(None).as_unit("ns").asi8

    def frame(self, rows: slice = slice(None)) -> pd.DataFrame:
        """A DataFrame of ``rows`` (values copied), indexed by timestamp."""
        return pd.DataFrame(self.values[rows], index=self.index[rows], columns=self.columns)

    def future_index(self, steps: int) -> pd.DatetimeIndex:
        """The ``steps`` timestamps after the last one."""
        last = self.index[-1]
        return pd.date_range(last, periods=steps + 1, freq=self.offset, name=self.timestamp_name)[1:]


def resolve_path(path: str | os.PathLike) -> Path:
    """A file path; ``pvlib:<name>`` is a file in the installed pvlib wheel's ``data`` folder."""
    text = os.fspath(path)
    if text.startswith(BUNDLED_PREFIX):
        import importlib.util

        spec = importlib.util.find_spec("pvlib")  # locate without importing (pvlib's import takes a second)
        if spec is None or not spec.submodule_search_locations:
            raise InputError(f"{text}: the bundled data ships with pvlib; install it (pip install pvlib)")
        folder = Path(list(spec.submodule_search_locations)[0]) / "data"
        found = folder / text[len(BUNDLED_PREFIX):]
        if not found.is_file():
            raise InputError(f"{text}: not in pvlib's data folder {folder}")
        return found
    p = Path(text).expanduser()
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a folder, expected a CSV or Parquet file")
    return p


def _is_tmy3(path: Path) -> bool:
    """TMY3 files start with a 7-field site line and then the ``Date (MM/DD/YYYY),Time (HH:MM)`` header."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096).decode("latin-1", "replace").splitlines()
    except OSError:
        return False
    return len(head) > 1 and head[1].startswith("Date (MM/DD/YYYY),Time (HH:MM)")


def detect_format(path: Path, fmt: str = "auto") -> str:
    """``csv``, ``parquet`` or ``tmy3`` from ``fmt`` or the file name (TMY3 files are sniffed)."""
    if fmt != "auto":
        return fmt
    name = path.name.lower()
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(_CSV_SUFFIXES) or "." not in name:
        return "tmy3" if _is_tmy3(path) else "csv"
    raise InputError(f"{path}: unsupported file type; expected .csv or .parquet (or set data.format)")


# TMY3 measurement columns -> short names (pvlib's where it has one); flags, sources and uncertainties are dropped.
TMY3_COLUMNS = {
    "ETR (W/m^2)": "etr", "ETRN (W/m^2)": "etrn", "GHI (W/m^2)": "ghi", "DNI (W/m^2)": "dni",
    "DHI (W/m^2)": "dhi", "GH illum (lx)": "ghi_illum", "DN illum (lx)": "dni_illum", "DH illum (lx)": "dhi_illum",
    "Zenith lum (cd/m^2)": "zenith_lum", "TotCld (tenths)": "total_cloud", "OpqCld (tenths)": "opaque_cloud",
    "Dry-bulb (C)": "temp_air", "Dew-point (C)": "temp_dew", "RHum (%)": "relative_humidity",
    "Pressure (mbar)": "pressure", "Wdir (degrees)": "wind_direction", "Wspd (m/s)": "wind_speed",
    "Hvis (m)": "visibility", "CeilHgt (m)": "ceiling_height", "Pwat (cm)": "precipitable_water",
    "AOD (unitless)": "aod", "Alb (unitless)": "albedo", "Lprecip depth (mm)": "precip_depth",
    "Lprecip quantity (hr)": "precip_hours",
}
# The default variates: irradiance, temperature, humidity, pressure, wind speed, clouds, water vapour.
# Left out: extraterrestrial irradiance (a deterministic function of the sun's position), the
# illuminances (near copies of the irradiances), wind direction (circular), the ceiling height and
# visibility (capped codes, 77777 = unlimited), AOD / albedo (all zero in this file) and precipitation.
TMY3_DEFAULT = ("ghi", "dni", "dhi", "temp_air", "temp_dew", "relative_humidity", "pressure", "wind_speed",
                "total_cloud", "opaque_cloud", "precipitable_water")


def read_tmy3(path: str | os.PathLike, *, year: int = 1990, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read an NREL TMY3 CSV into a regular hourly DataFrame indexed by timestamp.

    Quirks handled: the first line is a site header (skipped); the hour runs 01:00 .. 24:00, and
    24:00 becomes 00:00 of the next day; each month comes from a different year (1980 .. 2003 in
    Greensboro's file), so every row is moved to ``year`` (a non-leap year; TMY Februaries have 28
    days) -- the index is then regular from ``year``-01-01 01:00 to ``year+1``-01-01 00:00. Columns get
    the short names of :data:`TMY3_COLUMNS`; ``columns`` picks among them (default :data:`TMY3_DEFAULT`).
    """
    path = Path(path)
    if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        raise ConfigError(f"data.year: {year} is a leap year; TMY3 files have 8760 hours (use a non-leap year)")
    try:
        raw = pd.read_csv(path, skiprows=1, encoding="latin-1")
    except Exception as exc:  # pandas raises many types for a broken file
        raise InputError(f"cannot read TMY3 file: {str(exc).splitlines()[0]}", path=path) from None
    if "Date (MM/DD/YYYY)" not in raw or "Time (HH:MM)" not in raw:
        raise InputError("not a TMY3 file (no 'Date (MM/DD/YYYY)' / 'Time (HH:MM)' columns)", path=path)
    date = pd.to_datetime(raw["Date (MM/DD/YYYY)"], format="%m/%d/%Y", errors="coerce")
    hour = pd.to_numeric(raw["Time (HH:MM)"].astype(str).str.split(":").str[0], errors="coerce")
    if date.isna().any() or hour.isna().any():
        raise InputError("unreadable date or time in the TMY3 file", path=path)
    # Move each row to `year` first, then add the hour: 24:00 on Dec 31 rolls into `year + 1`.
    coerced = pd.to_datetime(pd.DataFrame({"year": year, "month": date.dt.month, "day": date.dt.day}))
    stamps = coerced + pd.to_timedelta(hour.to_numpy(np.int64), unit="h")
    frame = raw.rename(columns=TMY3_COLUMNS)
    names = list(columns) if columns else list(TMY3_DEFAULT)
    unknown = [c for c in names if c not in frame.columns or c not in TMY3_COLUMNS.values()]
    if unknown:
        raise ConfigError(f"data.columns: {unknown[0]!r} is not a TMY3 variable (choose from {', '.join(TMY3_COLUMNS.values())})")
    out = frame[names].astype(np.float32)
    out.index = pd.DatetimeIndex(stamps, name="timestamp")
    return out


def _sniff_csv(path: Path, sep: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep=sep, nrows=_SNIFF_ROWS)
    except pd.errors.EmptyDataError:
        raise InputError("the file is empty", path=path) from None
    except Exception as exc:
        raise InputError(f"cannot read CSV: {str(exc).strip().splitlines()[0]}", path=path) from None


def _parses_as_dates(col: pd.Series) -> bool:
    if pd.api.types.is_datetime64_any_dtype(col):
        return True
    if pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        return False  # numbers could be epoch seconds, but a silent guess would be worse than an error
    vals = col.dropna()
    if vals.empty:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(vals.astype(str), errors="coerce", format="mixed")
    return bool(parsed.notna().all())


def detect_timestamp(head: pd.DataFrame, name: str | None, path: Path) -> str:
    """The timestamp column: ``name`` if given, else a column called date/datetime/timestamp/..., else
    the first column whose values all parse as dates."""
    if name is not None:
        if name not in head.columns:
            raise InputError(f"timestamp column '{name}' not found (columns: {_names(head.columns)})", path=path)
        return name
    by_name = [c for c in head.columns if str(c).strip().lower() in TIMESTAMP_NAMES]
    for col in by_name + [c for c in head.columns if c not in by_name]:
        if _parses_as_dates(head[col]):
            return str(col)
    raise InputError(
        f"no timestamp column found (columns: {_names(head.columns)}); add a 'date' column of dates or "
        "name it with data.timestamp (--timestamp)", path=path)


def _names(cols: Sequence[Any], limit: int = 8) -> str:
    cols = [str(c) for c in cols]
    return ", ".join(cols[:limit]) + (f", ... (+{len(cols) - limit})" if len(cols) > limit else "")


def _value_columns(head: pd.DataFrame, ts: str, columns: Sequence[str] | None, path: Path) -> list[str]:
    """The variates: ``columns`` or every column but the timestamp; each must be numeric in the sample."""
    if columns:
        missing = [c for c in columns if c not in head.columns]
        if missing:
            raise InputError(f"column '{missing[0]}' not found (columns: {_names(head.columns)})", path=path)
        if ts in columns:
            raise ConfigError(f"data.columns: '{ts}' is the timestamp column")
        cols = list(columns)
    else:
        cols = [str(c) for c in head.columns if c != ts]
    if not cols:
        raise InputError("no value columns besides the timestamp", path=path)
    for c in cols:
        _check_numeric(head[c], c, path, row0=0)
    return cols


def _check_numeric(col: pd.Series, name: str, path: Path, row0: int) -> None:
    """Raise naming the first non-numeric value (file line = header + 1-based row)."""
    if pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        return
    num = pd.to_numeric(col, errors="coerce")
    bad = np.flatnonzero(num.isna().to_numpy() & col.notna().to_numpy())
    if bad.size:
        where = f"line {row0 + int(bad[0]) + 2}"
        raise InputError(
            f"column '{name}' is not numeric ({col.iloc[bad[0]]!r} at {where}); choose numeric columns with "
            "data.columns (--columns)", path=path)


def _count_rows(path: Path) -> int | None:
    """An upper bound of the data rows of an uncompressed CSV (newlines, no parsing), or ``None``."""
    if path.name.lower().endswith(_COMPRESSED):
        return None
    lines, last = 0, b"\n"
    with open(path, "rb") as fh:
        while True:
            block = fh.read(1 << 24)
            if not block:
                break
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")  # includes the header line: one row of slack


def _to_ns(values: Any, tz_holder: list, path: Path, row0: int) -> np.ndarray:
    """Datetimes (arrow/pandas/np) -> int64 ns; tz-aware values go to UTC and the tz is remembered."""
    try:
        idx = pd.DatetimeIndex(values)
        if idx.tz is not None:
            tz_holder.append(str(idx.tz))
            idx = idx.tz_convert("UTC").tz_localize(None)
        ns = idx.as_unit("ns").asi8
    except pd.errors.OutOfBoundsDatetime as exc:
        raise InputError(f"timestamp out of the supported range 1677..2262 ({exc})", path=path) from None
    nat = np.flatnonzero(idx.isna())
    if nat.size:
        raise InputError(f"missing timestamp at line {row0 + int(nat[0]) + 2}", path=path)
    return ns


class _Filler:
    """Batches written into preallocated (rows, N) float32 + (rows,) int64 buffers, so the file's
    values exist once in memory (no list of batches to concatenate). ``rows=None`` (compressed files,
    row count unknown) collects the batches and concatenates once at the end."""

    def __init__(self, rows: int | None, n: int):
        self.pos = 0
        self.values = np.empty((rows, n), np.float32) if rows is not None else None
        self.stamps = np.empty(rows, np.int64) if rows is not None else None
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, values: np.ndarray, stamps: np.ndarray) -> None:
        k = len(stamps)
        if self.values is None:
            self._parts.append((np.asarray(values, np.float32), stamps))
        else:
            if self.pos + k > len(self.values):  # cannot happen for a newline-counted bound; stay correct anyway
                grow = max(k, len(self.values) // 2)
                self.values = np.concatenate([self.values, np.empty((grow, self.values.shape[1]), np.float32)])
                self.stamps = np.concatenate([self.stamps, np.empty(grow, np.int64)])
            self.values[self.pos:self.pos + k] = values
            self.stamps[self.pos:self.pos + k] = stamps
        self.pos += k

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.values is None:
            if not self._parts:
                return np.empty((0, 0), np.float32), np.empty(0, np.int64)
            return np.concatenate([v for v, _ in self._parts]), np.concatenate([s for _, s in self._parts])
        return self.values[:self.pos], self.stamps[:self.pos]


def _csv_blocks(path: Path, block: int = 1 << 23) -> Iterator[bytes]:
    """The file's data lines (header skipped) in ~``block``-byte pieces cut at line ends; compressed
    files (.gz, .bz2, .zst ...) are decompressed on the way. Fields must not contain newlines."""
    import pyarrow as pa

    with pa.input_stream(str(path), compression="detect") as fh:
        rest = b""
        header_done = False
        while True:
            chunk = fh.read(block)
            if not chunk:
                if rest.strip():
                    yield rest
                return
            buf = rest + chunk
            if not header_done:
                nl = buf.find(b"\n")
                if nl < 0:
                    rest = buf
                    continue
                buf, header_done = buf[nl + 1:], True
            cut = buf.rfind(b"\n") + 1
            rest = buf[cut:]
            if cut:
                yield buf[:cut]


def _read_csv(path: Path, ts: str, cols: list[str], header: list[str], sep: str, tz: list
              ) -> tuple[np.ndarray, np.ndarray]:
    """Parse a CSV block by block with pyarrow straight into preallocated float32 values and int64
    timestamps (ISO timestamps); other date formats fall back to pandas.

    Blocks are parsed one at a time (pyarrow's own streaming reader reads far ahead, which cost
    more memory than the data itself); each block's rows are copied into the final arrays at once.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    types = {c: pa.float32() for c in cols}
    types[ts] = pa.timestamp("ns")
    opts = dict(read_options=pacsv.ReadOptions(column_names=header),
                parse_options=pacsv.ParseOptions(delimiter=sep),
                convert_options=pacsv.ConvertOptions(column_types=types, include_columns=[ts] + cols))
    fill, row0 = _Filler(_count_rows(path), len(cols)), 0
    for blk in _csv_blocks(path):
        try:
            table = pacsv.read_csv(pa.py_buffer(blk), **opts)
        except pa.ArrowInvalid as exc:
            msg = str(exc)
            m = re.search(r"CSV column #(\d+).*?conversion error.*?invalid value '([^']*)'", msg, re.S)
            if m and header[int(m.group(1))] == ts:  # dates pyarrow cannot parse (e.g. 01/02/2020): pandas reads all
                return _read_csv_pandas(path, ts, cols, sep, tz)
            if m:  # find the row: re-read this block's column as text
                name = header[int(m.group(1))]
                text = pacsv.read_csv(pa.py_buffer(blk), read_options=opts["read_options"],
                                      parse_options=opts["parse_options"],
                                      convert_options=pacsv.ConvertOptions(column_types={name: pa.string()},
                                                                           include_columns=[name]))
                _check_numeric(text.column(0).to_pandas(), name, path, row0)
            raise InputError(f"malformed CSV after line {row0 + 1}: {msg.splitlines()[0]}", path=path) from None
        stamps = _to_ns(table.column(0).to_numpy(zero_copy_only=False), tz, path, row0)
        values = np.column_stack([table.column(i + 1).to_numpy(zero_copy_only=False) for i in range(len(cols))])
        fill.add(values, stamps)
        row0 += len(stamps)
        del table
    pa.default_memory_pool().release_unused()  # hand the parser's buffers back to the OS
    return fill.result()


def _read_csv_pandas(path: Path, ts: str, cols: list[str], sep: str, tz: list) -> tuple[np.ndarray, np.ndarray]:
    df = pd.read_csv(path, sep=sep, usecols=[ts] + cols)
    for c in cols:
        _check_numeric(df[c], c, path, row0=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stamps = pd.to_datetime(df[ts], errors="coerce", format="mixed")
    bad = np.flatnonzero(stamps.isna().to_numpy() & df[ts].notna().to_numpy())
    if bad.size:
        raise InputError(f"timestamp {df[ts].iloc[bad[0]]!r} at line {int(bad[0]) + 2} is not a date", path=path)
    return np.ascontiguousarray(df[cols].to_numpy(np.float32)), _to_ns(stamps, tz, path, 0)


def _read_parquet(path: Path, timestamp: str | None, columns: Sequence[str] | None, tz: list
                  ) -> tuple[str, list[str], np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise InputError(f"cannot read Parquet: {str(exc).strip().splitlines()[0]}", path=path) from None
    head = pf.read_row_group(0).slice(0, _SNIFF_ROWS).to_pandas() if pf.num_row_groups else pd.DataFrame()
    if head.empty:
        raise InputError("the file is empty", path=path)
    if isinstance(head.index, pd.DatetimeIndex):  # a DataFrame saved with its DatetimeIndex
        head = head.reset_index()
    ts = detect_timestamp(head, timestamp, path)
    cols = _value_columns(head, ts, columns, path)
    fill, row0 = _Filler(pf.metadata.num_rows, len(cols)), 0
    for batch in pf.iter_batches(batch_size=1 << 20, columns=[ts] + cols):
        stamps = batch.column(0).to_pandas()
        if not pd.api.types.is_datetime64_any_dtype(stamps):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                stamps = pd.to_datetime(stamps, errors="coerce", format="mixed")
        block = np.column_stack([batch.column(i + 1).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
                                 for i in range(len(cols))])
        fill.add(block, _to_ns(stamps, tz, path, row0))
        row0 += batch.num_rows
    values, stamps = fill.result()
    return ts, cols, values, stamps


def read_table(path: str | os.PathLike, *, fmt: str = "auto", timestamp: str | None = None,
               columns: Sequence[str] | None = None, sep: str = ",", year: int = 1990
               ) -> tuple[np.ndarray, np.ndarray, list[str], str, str | None]:
    """Read a file's raw rows: ``(values (T, N) float32, timestamps (T,) int64 ns, columns, timestamp
    name, tz)``, unvalidated (order, gaps and NaNs are checked by :func:`regularise`)."""
    p = resolve_path(path)
    kind = detect_format(p, fmt)
    tz: list[str] = []
    if kind == "tmy3":
        df = read_tmy3(p, year=year, columns=columns)
        return (np.ascontiguousarray(df.to_numpy(np.float32)), df.index.as_unit("ns").asi8, list(df.columns),
                "timestamp", None)
    if kind == "parquet":
        ts, cols, values, stamps = _read_parquet(p, timestamp, columns, tz)
    else:
        head = _sniff_csv(p, sep)
        if head.shape[1] < 2:
            hint = f" (is the delimiter '{sep}'? set data.sep)" if head.shape[1] == 1 else ""
            raise InputError(f"expected a timestamp column and value columns, found {head.shape[1]} column{hint}", path=p)
        ts = detect_timestamp(head, timestamp, p)
        cols = _value_columns(head, ts, columns, p)
        values, stamps = _read_csv(p, ts, cols, [str(c) for c in head.columns], sep, tz)
    return values, stamps, cols, ts, (tz[0] if tz else None)


def _first_gap_message(stamps: np.ndarray, step_ns: int | None, offset: pd.DateOffset) -> str:
    d = np.diff(stamps)
    bad = np.flatnonzero(d != step_ns) if step_ns is not None else np.array([0])
    i = int(bad[0]) if bad.size else 0
    a, b = pd.Timestamp(stamps[i]), pd.Timestamp(stamps[i + 1])
    return f"{bad.size} gap(s) in the {offset.freqstr} timestamps, first between {a} and {b}"


def regularise(values: np.ndarray, stamps: np.ndarray, *, freq: str | None, fill: str, source: str
               ) -> tuple[np.ndarray, np.ndarray, pd.DateOffset]:
    """Check (and with a fill policy repair) a series: sorted, no duplicates, on a regular grid, no NaNs.

    Rows out of order are sorted. Duplicate timestamps are always an error. Missing rows (gaps) and
    missing values (NaN / inf) are errors unless ``fill`` is ``ffill`` (then back-fill for leading
    gaps), ``interpolate`` (linear, edges held) or ``zero``; gaps become rows first. Timestamps off the
    frequency grid are an error. Returns ``(values, stamps, offset)``; ``values`` is modified in place
    where possible.
    """
    if fill not in FILL_POLICIES:
        raise ConfigError(f"data.fill: '{fill}' is not one of {', '.join(FILL_POLICIES)}")
    if len(stamps) < 2:
        raise InputError(f"needs at least 2 rows, found {len(stamps)}", path=source)
    d = np.diff(stamps)
    if (d <= 0).any():
        order = np.argsort(stamps, kind="stable")
        stamps, values = stamps[order], values[order]
        d = np.diff(stamps)
        dup = np.flatnonzero(d == 0)
        if dup.size:
            raise InputError(f"duplicate timestamps: {pd.Timestamp(stamps[dup[0]])} appears more than once "
                             f"({dup.size} duplicate rows); remove or aggregate them", path=source)
    if freq:
        offset = parse_freq(freq)
    else:
        offset = _infer_offset(stamps, d)
    step = fixed_step(offset)
    if step is not None:
        regular = bool((d == step).all())
    else:
        expected = pd.date_range(pd.Timestamp(stamps[0]), periods=len(stamps), freq=offset).as_unit("ns").asi8
        regular = bool(np.array_equal(expected, stamps))
    del d
    if not regular:
        if fill == "none":
            raise InputError(_first_gap_message(stamps, step, offset) + "; set data.fill=ffill|interpolate|zero "
                             "(--fill) to fill missing rows, or data.freq if the frequency is wrong", path=source)
        values, stamps = _reindex(values, stamps, offset, step, source)
    bad = ~np.isfinite(values)
    if bad.any():
        if fill == "none":
            r, c = np.argwhere(bad)[0]
            raise InputError(f"{int(bad.sum())} missing values (NaN), first in row {int(r) + 1} "
                             f"({pd.Timestamp(stamps[r])}) of column {int(c) + 1}; set data.fill=ffill|interpolate|zero "
                             "(--fill)", path=source)
        values = _fill(values, bad, fill, source)
    return np.ascontiguousarray(values, dtype=np.float32), stamps, offset


def _infer_offset(stamps: np.ndarray, d: np.ndarray) -> pd.DateOffset:
    if d.min() == d.max():
        return offset_from_step(int(d[0]), int(stamps[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guess = pd.infer_freq(pd.DatetimeIndex(stamps[:100_000].astype("datetime64[ns]")))
    if guess is not None and (len(stamps) <= 100_000 or pd.date_range(
            pd.Timestamp(stamps[0]), periods=len(stamps), freq=guess).as_unit("ns").asi8[-1] == stamps[-1]):
        return to_offset(guess)
    steps, counts = np.unique(d, return_counts=True)  # gaps: the most common step is the frequency
    return offset_from_step(int(steps[np.argmax(counts)]), int(stamps[0]))


def _reindex(values: np.ndarray, stamps: np.ndarray, offset: pd.DateOffset, step: int | None, source: str
             ) -> tuple[np.ndarray, np.ndarray]:
    """Put the rows on the regular grid from the first to the last timestamp; new rows are NaN."""
    if step is not None:
        rel = stamps - stamps[0]
        if (rel % step).any():
            i = int(np.flatnonzero(rel % step)[0])
            raise InputError(f"timestamp {pd.Timestamp(stamps[i])} is off the {offset.freqstr} grid that starts at "
                             f"{pd.Timestamp(stamps[0])}; resample the file or set data.freq", path=source)
        pos = rel // step
        grid = stamps[0] + np.arange(int(pos[-1]) + 1, dtype=np.int64) * step
    else:
        grid = pd.date_range(pd.Timestamp(stamps[0]), pd.Timestamp(stamps[-1]), freq=offset).as_unit("ns").asi8
        pos = pd.Index(grid).get_indexer(stamps)
        if (pos < 0).any():
            i = int(np.flatnonzero(pos < 0)[0])
            raise InputError(f"timestamp {pd.Timestamp(stamps[i])} is off the {offset.freqstr} grid; resample the "
                             "file or set data.freq", path=source)
    out = np.full((len(grid), values.shape[1]), np.nan, np.float32)
    out[pos] = values
    return out, grid


def _fill(values: np.ndarray, bad: np.ndarray, fill: str, source: str) -> np.ndarray:
    values[bad] = np.nan
    empty = np.flatnonzero(bad.all(0))
    if empty.size:
        raise InputError(f"column {int(empty[0]) + 1} has no values at all", path=source)
    if fill == "zero":
        values[bad] = 0.0
        return values
    frame = pd.DataFrame(values, copy=False)
    if fill == "ffill":
        frame = frame.ffill().bfill()  # leading gaps take the first value
    else:
        frame = frame.interpolate(method="linear", limit_direction="both")
    return frame.to_numpy(np.float32)


def series_from_frame(df: pd.DataFrame, *, freq: str | None = None, fill: str = "none",
                      source: str = "<memory>") -> Series:
    """A :class:`Series` from a DataFrame with a DatetimeIndex and numeric columns (validated like a file)."""
    if not isinstance(df.index, pd.DatetimeIndex):
        raise InputError("the DataFrame needs a DatetimeIndex", path=source)
    for c in df.columns:
        _check_numeric(df[c], str(c), Path(source), row0=0)
    tz = str(df.index.tz) if df.index.tz is not None else None
    idx = df.index.tz_convert("UTC").tz_localize(None) if tz else df.index
    values, stamps, offset = regularise(np.array(df.to_numpy(np.float32), order="C"), idx.as_unit("ns").asi8,
                                        freq=freq, fill=fill, source=source)
    return Series(values, stamps, [str(c) for c in df.columns], offset.freqstr, source,
                  str(df.index.name or "timestamp"), tz)


def load_series(cfg: DataConfig, path: str | os.PathLike | None = None) -> Series:
    """Read and validate ``path`` (default ``cfg.path``) into a :class:`Series` (see :func:`regularise`)."""
    path = os.fspath(path if path is not None else cfg.path)
    values, stamps, cols, ts, tz = read_table(path, fmt=cfg.format, timestamp=cfg.timestamp, columns=cfg.columns,
                                              sep=cfg.sep, year=cfg.year)
    source = str(resolve_path(path)) if not path.startswith(BUNDLED_PREFIX) else path
    values, stamps, offset = regularise(values, stamps, freq=cfg.freq, fill=cfg.fill, source=source)
    return Series(values, stamps, cols, offset.freqstr, source, ts, tz)


# ---------------------------------------------------------------------------------------------
# splits and scaling


def split_borders(n: int, cfg: DataConfig, *, offset: pd.DateOffset, stamps: np.ndarray | None = None,
                  source: str = "") -> dict[str, tuple[int, int]]:
    """Row ranges ``{split: (begin, end)}`` of train / val / test, as the authors cut them.

    ``ett``: 12 / 4 / 4 months of 30 days of rows (ETTh: 8640 / 2880 / 2880 hourly rows). ``ratio``:
    ``int(n * r_train)`` train rows, ``int(n * r_test)`` test rows, the rest validation. ``dates``:
    validation from ``train_end``, test from ``val_end``. Validation and test begin ``seq_len`` rows
    before their border, so their first window's input is the end of the previous part.
    """
    scheme = cfg.split
    if scheme == "auto":
        scheme = "ett" if re.match(r"ett[hm]\d", Path(source).name.lower()) else "ratio"
    L = cfg.seq_len
    if scheme == "ett":
        step = fixed_step(offset)
        if step is None or (3600 * 10**9) % step:
            raise ConfigError(f"data.split: 'ett' needs hourly or finer data that divides an hour, got {offset.freqstr}")
        month = 30 * 24 * (3600 * 10**9 // step)
        num_train, num_val, num_test = 12 * month, 4 * month, 4 * month
        if n < num_train + num_val + num_test:
            raise InputError(f"the 'ett' split needs {num_train + num_val + num_test} rows (20 months), "
                             f"the file has {n}; use data.split=ratio", path=source)
        ends = (num_train, num_train + num_val, num_train + num_val + num_test)
    elif scheme == "ratio":
        r = cfg.ratios
        if min(r) < 0 or r[0] <= 0 or r[2] <= 0 or not math.isclose(sum(r), 1.0, abs_tol=1e-6):
            raise ConfigError(f"data.ratios: {list(r)} must be three non-negative fractions summing to 1 "
                              "(train and test > 0)")
        num_train, num_test = int(n * r[0]), int(n * r[2])
        ends = (num_train, n - num_test, n)
    else:
        if not cfg.train_end or not cfg.val_end or stamps is None:
            raise ConfigError("data.split: 'dates' needs data.train_end and data.val_end")
        try:
            t1, t2 = (pd.Timestamp(cfg.train_end).as_unit("ns").value, pd.Timestamp(cfg.val_end).as_unit("ns").value)
        except ValueError as exc:
            raise ConfigError(f"data.train_end / data.val_end: {exc}") from None
        if t1 >= t2:
            raise ConfigError("data.train_end must come before data.val_end")
        a, b = (int(np.searchsorted(stamps, t, side="left")) for t in (t1, t2))
        ends = (a, b, n)
    borders = {"train": (0, ends[0]), "val": (ends[0] - L, ends[1]), "test": (ends[1] - L, ends[2])}
    need = cfg.seq_len + cfg.pred_len
    for name, (b0, b1) in borders.items():
        if b0 < 0 or b1 - b0 < need:
            have = max(0, b1 - max(b0, 0))
            raise InputError(
                f"horizon too long for the data: the {name} part has {have} rows but one window needs "
                f"seq_len + pred_len = {need} ({n} rows in all); shorten data.pred_len / data.seq_len or give more data",
                path=source)
    return borders


@dataclass
class Scaler:
    """Per-variate standardisation ``(x - mean) / std`` (sklearn ``StandardScaler``: population std, 0 -> 1)."""

    mean: np.ndarray  # (N,) float64
    std: np.ndarray  # (N,) float64

    @classmethod
    def fit(cls, values: np.ndarray, chunk: int = 1 << 18) -> "Scaler":
        """Fit on ``values`` (T, N) in float64, chunk by chunk (Chan's parallel update; no (T, N) temporary)."""
        n, mean, m2 = 0, np.zeros(values.shape[1]), np.zeros(values.shape[1])
        for a in range(0, len(values), chunk):
            block = values[a:a + chunk].astype(np.float64)
            k = len(block)
            bm = block.mean(0)
            bm2 = ((block - bm) ** 2).sum(0)
            delta = bm - mean
            mean = mean + delta * k / (n + k)
            m2 = m2 + bm2 + delta**2 * n * k / (n + k)
            n += k
        std = np.sqrt(m2 / max(n, 1))
        std[std == 0] = 1.0  # constant columns stay centred, as sklearn does
        return cls(mean, std)

    def transform_(self, values: np.ndarray) -> np.ndarray:
        """Scale float32 ``values`` in place (no second copy of the data) and return them."""
        values -= self.mean.astype(values.dtype)
        values /= self.std.astype(values.dtype)
        return values

    def transform(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.mean) / self.std).astype(np.float32)

    def inverse(self, values: np.ndarray | torch.Tensor, cols: Sequence[int] | None = None) -> np.ndarray:
        """Back to original units; ``cols`` are the variate indices of the last axis (default: all)."""
        v = values.detach().cpu().numpy() if torch.is_tensor(values) else np.asarray(values)
        m, s = (self.mean, self.std) if cols is None else (self.mean[list(cols)], self.std[list(cols)])
        return (v * s + m).astype(np.float32)

    def to_meta(self) -> dict[str, list[float]]:
        return {"mean": [float(x) for x in self.mean], "std": [float(x) for x in self.std]}


# ---------------------------------------------------------------------------------------------
# windows


def _already_batched(batch: Any) -> Any:
    """collate_fn for datasets whose ``__getitems__`` returns a finished batch (module level: picklable)."""
    return batch


class WindowDataset(Dataset):
    """Forecasting windows over one contiguous scaled (T, N) float32 tensor, without copying windows.

    Window ``i`` starts at row ``begin + i * stride``: ``x`` = rows ``[s, s + L)`` (all N variates,
    a view), ``y`` = rows ``[s + L, s + L + S)`` of the target variates (a view when all variates are
    targets), ``x_mark`` = the time features of ``x``'s timestamps, computed on the fly (M, or
    ``None`` without marks). ``__getitems__`` gathers a whole batch with one indexing op per tensor
    (the DataLoader calls it with the batch's indices) and returns ``{"x": (B, L, N), "x_mark":
    (B, L, M) | None, "y": (B, S, K)}``; use ``collate_fn=_already_batched``.
    """

    def __init__(self, data: torch.Tensor, stamps: torch.Tensor, begin: int, end: int, seq_len: int, pred_len: int,
                 targets: Sequence[int] | None = None, marks: TimeFeatures | None = None, stride: int = 1):
        if not data.is_contiguous() or data.dtype != torch.float32:
            raise ValueError("data must be a contiguous float32 tensor")
        self.data, self.stamps, self.marks = data, stamps, marks
        self.begin, self.end, self.L, self.S, self.stride = begin, end, seq_len, pred_len, stride
        all_vars = targets is None or list(targets) == list(range(data.shape[1]))
        self.targets = None if all_vars else torch.as_tensor(list(targets), dtype=torch.long)
        self._n = max(0, (end - begin - seq_len - pred_len) // stride + 1)
        self._ar_x = torch.arange(seq_len)
        self._ar_y = torch.arange(seq_len, seq_len + pred_len)

    def __len__(self) -> int:
        return self._n

    def start(self, i: int) -> int:
        """The first row of window ``i``."""
        if not 0 <= i < self._n:
            raise IndexError(i)
        return self.begin + i * self.stride

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | None]:
        s = self.start(i)
        y = self.data[s + self.L:s + self.L + self.S]
        return {"x": self.data[s:s + self.L],
                "x_mark": None if self.marks is None else torch.from_numpy(self.marks(self.stamps[s:s + self.L].numpy())),
                "y": y if self.targets is None else y[:, self.targets]}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor | None]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        if idx.numel() and (idx.min() < 0 or idx.max() >= self._n):
            raise IndexError(f"window index out of range [0, {self._n})")
        starts = (self.begin + idx * self.stride)[:, None]
        x = self.data[starts + self._ar_x]  # (B, L, N): the one copy, into the batch
        y = self.data[starts + self._ar_y]  # (B, S, N)
        if self.targets is not None:
            y = y[..., self.targets]  # (B, S, K)
        mark = None
        if self.marks is not None:
            mark = torch.from_numpy(self.marks(self.stamps[starts + self._ar_x].numpy()))
        return {"x": x, "x_mark": mark, "y": y}

    def batches(self, batch_size: int):
        """All windows in order, ``batch_size`` at a time (evaluation)."""
        for a in range(0, self._n, batch_size):
            yield self.__getitems__(range(a, min(a + batch_size, self._n)))


@dataclass
class Prepared:
    """A series made ready for a model: scaled tensor, split borders, scaler, targets, time marks."""

    series: Series
    data: torch.Tensor  # (T, N) float32 scaled; shares memory with series.values when prepared in place
    stamps: torch.Tensor  # (T,) int64 wall-clock ns
    scaler: Scaler
    borders: dict[str, tuple[int, int]]
    targets: list[int]  # indices of the target variates among the columns
    seq_len: int
    pred_len: int
    marks: TimeFeatures | None
    split_scheme: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def target_names(self) -> list[str]:
        return [self.series.columns[i] for i in self.targets]

    def dataset(self, split: str, stride: int = 1) -> WindowDataset:
        """Windows of ``train``, ``val`` or ``test`` (stride 1 as the authors; larger for backtests)."""
        b0, b1 = self.borders[split]
        return WindowDataset(self.data, self.stamps, b0, b1, self.seq_len, self.pred_len, self.targets,
                             self.marks, stride)


def target_indices(columns: Sequence[str], targets: Sequence[str] | None, source: str = "") -> list[int]:
    """Indices of ``targets`` among ``columns`` (all when ``None``)."""
    if not targets:
        return list(range(len(columns)))
    missing = [t for t in targets if t not in columns]
    if missing:
        raise ConfigError(f"data.targets: '{missing[0]}' is not among the columns ({_names(columns)})")
    return [list(columns).index(t) for t in targets]


def make_marks(cfg: DataConfig, series: Series) -> TimeFeatures | None:
    """The time-feature function for this data (``None`` when marks are off or the frequency has none)."""
    if not cfg.time_marks:
        return None
    tf = TimeFeatures(cfg.mark_freq or series.freq)
    return tf if tf.dim else None


def prepare(series: Series, cfg: DataConfig, *, inplace: bool = False, scaler: Scaler | None = None) -> Prepared:
    """Split, fit the scaler on the training rows (or use ``scaler``), scale, and wrap as tensors.

    ``inplace=True`` scales ``series.values`` itself (the training and evaluation paths do this, so the
    data exists once in memory); otherwise a scaled copy is made.
    """
    borders = split_borders(len(series), cfg, offset=series.offset, stamps=series.timestamps, source=series.source)
    scheme = cfg.split if cfg.split != "auto" else ("ett" if re.match(r"ett[hm]\d", Path(series.source).name.lower())
                                                    else "ratio")
    if scaler is None:
        scaler = Scaler.fit(series.values[: borders["train"][1]])
    values = series.values if inplace else series.values.copy()
    scaler.transform_(values)
    return Prepared(series, torch.from_numpy(values), torch.from_numpy(series.wall_clock()), scaler, borders,
                    target_indices(series.columns, cfg.targets, series.source), cfg.seq_len, cfg.pred_len,
                    make_marks(cfg, series), scheme)
