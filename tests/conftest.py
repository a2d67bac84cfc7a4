"""Test-wide settings: offline environment, few threads, paths to the shared reference fixtures."""

from __future__ import annotations

import os
from pathlib import Path

from vitsuite.core.env import OFFLINE_ENV

for _k, _v in OFFLINE_ENV.items():
    os.environ.setdefault(_k, _v)
# Every test process times its own kernel choices (no file from an earlier run or the user's cache);
# tests of the cache point it at a temporary file.
os.environ["VITSUITE_KERNEL_CACHE"] = "0"

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def reference_root() -> Path:
    """``$VITSUITE_REFERENCE`` or ``../shared/reference`` beside the repository (as in CI)."""
    env = os.environ.get("VITSUITE_REFERENCE")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "reference"


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Two cores on the CI machine: tests run with two intra-op threads and a fixed seed.
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    torch.manual_seed(0)
    yield
