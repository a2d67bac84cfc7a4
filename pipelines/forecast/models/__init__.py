"""Forecasting model families; importing this package registers them."""

from . import itransformer  # noqa: F401
