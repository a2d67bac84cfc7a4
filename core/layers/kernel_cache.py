"""Kernel choices of the CPU fast path kept across processes (a timing cache, like TensorRT's).

:func:`vitsuite.core.layers.fast.choose_kernel` times the equivalent kernels of each new shape on its
first call. That is cheap in a long job but not in a command that runs one image: DRSformer's first
forward times ~100 shapes (1.9 -> 9.9 s on the 2-core EPYC), HAT's first ~2.7 s more than the next.
So each timing is also written (at exit, atomically) to a small JSON file and a later process on the
same machine takes the choice from there instead of timing again.

Entries are keyed by the shape key and a context - CPU model and instruction set, torch version, the
native kernels' source digest and the intra-op thread count - so a new machine, a new torch or new
kernels time afresh, and an entry is only used when it lists exactly the candidates on offer. All
candidates compute the same function, so a stale entry can cost speed, never change a result.

``VITSUITE_KERNEL_CACHE``: unset - ``$XDG_CACHE_HOME/vitsuite/kernel-choices.json`` (default
``~/.cache``); ``0`` / ``off`` - no file, every process times its own (the test suite and
``benchmarks/models.py`` run this way); any other value - that file.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
from pathlib import Path
from typing import Iterable, Optional

import torch

from vitsuite.core.env import cpu_model
from vitsuite.core.fileio import atomic_write_text

__all__ = ["cache_path", "lookup", "record", "save"]

ENV = "VITSUITE_KERNEL_CACHE"
FORMAT = 1
MAX_ENTRIES = 4096  # oldest entries go first beyond this (a zoo's worth of shapes is a few hundred)
_LOG = logging.getLogger(__name__)
# path: the file read (None: disabled); entries: what it held; new: timings of this process
_STATE: dict = {"loaded": False, "path": None, "entries": {}, "new": {}, "at_exit": False}


def cache_path() -> Optional[Path]:
    """The cache file this process uses, or None when ``VITSUITE_KERNEL_CACHE`` turns it off."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in ("0", "off", "false", "no"):
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vitsuite" / "kernel-choices.json"


def _context() -> str:
    """Where a timing holds: CPU, instruction set, torch, native kernel sources, threads."""
    if "context" not in _STATE:
        from vitsuite.core import native

        try:
            capability = torch.backends.cpu.get_cpu_capability()
        except Exception:  # very old torch
            capability = "?"
        _STATE["context"] = f"{cpu_model()}|{capability}|torch {torch.__version__}|native {native.source_digest()}"
    return f"{_STATE['context']}|threads {torch.get_num_threads()}"


def _entry_key(key: tuple) -> str:
    return f"{_context()}|{key!r}"


def _read(path: Path) -> dict[str, dict[str, float]]:
    """The entries of ``path`` ({} when missing; a damaged or foreign file is ignored, with one log line)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        _LOG.warning("ignoring kernel choice cache %s: %s", path, exc)
        return {}
    entries = data.get("entries") if isinstance(data, dict) and data.get("format") == FORMAT else None
    if not isinstance(entries, dict):
        _LOG.warning("ignoring kernel choice cache %s: not a format-%d cache", path, FORMAT)
        return {}
    return {k: v for k, v in entries.items()
            if isinstance(v, dict) and v and all(isinstance(t, (int, float)) for t in v.values())}


def _load() -> None:
    if not _STATE["loaded"]:
        _STATE["loaded"] = True
        _STATE["path"] = path = cache_path()
        _STATE["entries"] = _read(path) if path is not None else {}


def lookup(key: tuple, names: Iterable[str]) -> Optional[str]:
    """The kernel an earlier process chose for ``key`` in this context, if it timed exactly ``names``."""
    _load()
    if _STATE["path"] is None:
        return None
    best = _STATE["entries"].get(_entry_key(key))
    if best is None or set(best) != set(names):
        return None
    return min(best, key=best.__getitem__)


def record(key: tuple, best: dict[str, float]) -> None:
    """Remember the fastest call (s) of each candidate timed for ``key``; written by :func:`save` at exit."""
    _load()
    if _STATE["path"] is None or len(best) < 2:
        return
    entry = {name: float(t) for name, t in best.items()}
    _STATE["entries"][_entry_key(key)] = _STATE["new"][_entry_key(key)] = entry
    if not _STATE["at_exit"]:
        _STATE["at_exit"] = True
        atexit.register(save)


def save() -> Optional[Path]:
    """Merge this process's timings into the cache file (temp file + rename, so concurrent processes
    never see half a file); the path written, or None (nothing new, disabled, or not writable)."""
    path, new = _STATE["path"], _STATE["new"]
    if path is None or not new:
        return None
    entries = _read(path)
    for k in new:  # re-inserted: the newest entries are the last ones dropped
        entries.pop(k, None)
    entries.update(new)
    while len(entries) > MAX_ENTRIES:
        del entries[next(iter(entries))]
    try:
        atomic_write_text(path, json.dumps({"format": FORMAT, "entries": entries}, indent=0))
    except OSError as exc:  # read-only home, full disk: the next process times again
        _LOG.info("kernel choice cache not written (%s): %s", path, exc)
        return None
    new.clear()
    return path
