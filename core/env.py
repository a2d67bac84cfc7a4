"""Offline defaults applied before gradio / huggingface_hub / albumentations are imported.

Nothing in the suite downloads weights or data at run time; these variables keep the
libraries from calling out (analytics, version checks, hub retries).
"""

from __future__ import annotations

import os

OFFLINE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
}


def apply_offline_env() -> None:
    """Set the offline defaults unless the user already set them."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
