"""Remote-sensing model families (ChannelViT, SatMAE++); importing this package registers them."""

from . import channelvit  # noqa: F401
from . import satmaepp  # noqa: F401,E402
from . import satmaepp_mae  # noqa: F401,E402
