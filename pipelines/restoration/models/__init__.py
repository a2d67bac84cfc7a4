"""Restoration model families; importing this package registers them."""

from . import drct, hat  # noqa: F401
from . import drsformer  # noqa: F401
