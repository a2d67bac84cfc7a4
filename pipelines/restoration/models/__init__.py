"""Restoration model families; importing this package registers them."""

from . import drct, hat  # noqa: F401
