"""Forecasting: iTransformer on CSV / Parquet multivariate time series."""
