"""Offline defaults applied before gradio / huggingface_hub / albumentations are imported, and the
name of the CPU this runs on.

Nothing in the suite downloads weights or data at run time; these variables keep the
libraries from calling out (analytics, version checks, hub retries).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

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


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else ``platform.processor()``: kernel speeds differ
    between CPU kinds (e.g. AVX2 EPYC vs AVX-512 Xeon), so benchmark reports and kernel timings name it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
