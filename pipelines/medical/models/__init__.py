"""Medical model families; importing this package registers them."""

from . import duoformer, hbformer, paratranscnn  # noqa: F401
