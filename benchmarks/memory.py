"""Process memory readings shared by the benchmark scripts (Linux ``/proc/self/status``)."""

from __future__ import annotations

import resource


def _status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Current resident set size in MiB (NaN where ``/proc`` is missing)."""
    value = _status_mb("VmRSS")
    return float("nan") if value is None else value


def peak_rss_mb() -> float:
    """Peak RSS of this process in MiB: ``VmHWM`` (reset at exec, unlike ``ru_maxrss``, which keeps a
    forked parent's high-water mark), ``ru_maxrss`` as a fallback."""
    value = _status_mb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if value is None else value
