"""Checkpoint I/O: safe loading, unwrapping of the usual nestings, mismatch reports, atomic saves.

Only ``torch.load(weights_only=True)`` and safetensors are used: arbitrary pickled objects are
never executed.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .errors import CheckpointError
from .fileio import atomic_path

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")


def save_checkpoint(obj: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Save a (nested) dict of tensors / plain Python values atomically.

    ``.safetensors`` paths take a flat ``{name: tensor}`` dict; other suffixes use
    ``torch.save`` and must hold only types that ``torch.load(weights_only=True)`` accepts
    (tensors, dicts, lists, tuples, str, int, float, bool, None).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in obj.items()}, str(tmp))
        else:
            torch.save(dict(obj), tmp)
    return path


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file safely, without unwrapping.

    Raises :class:`CheckpointError` (one line naming the file) when the file is missing,
    corrupt, or holds pickled objects that are not plain data.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint file not found", path=path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device=str(map_location)))
        # MAE-family repos (SatMAE++) save their argparse ``args`` beside the weights: a plain
        # attribute bag, safe to rebuild, so it is the one class allowed beyond plain data.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # torch/pickle/safetensors raise many types for a bad file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            reason = "holds pickled Python objects; only plain tensors/dicts are loaded (weights_only=True)"
        raise CheckpointError(f"cannot read checkpoint: {reason}", path=path) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a dict of tensors, found {type(obj).__name__}", path=path)
    return obj


# Keys under which training frameworks nest the weights, in order of preference:
# BasicSR (HAT, DRCT, DRSformer) saves ``params_ema`` and/or ``params``; mmpose and Lightning
# ``state_dict``; many research repos ``model`` / ``net``; our trainer ``model`` (+ ``ema``).
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model_state_dict", "model", "net", "module")
STRIP_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def unwrap_state_dict(obj: Mapping[str, Any], *, prefer: str | None = None) -> dict[str, torch.Tensor]:
    """Find the weights inside a checkpoint container and strip wrapper prefixes.

    ``obj`` may be a flat ``{name: tensor}`` dict or nest it under one of :data:`WRAPPER_KEYS`
    (possibly several levels deep, e.g. ``{"state_dict": {"model": ...}}``); ``prefer`` names a
    key to try first (e.g. ``"params"`` to skip EMA weights). Non-tensor entries beside the
    weights (step counters, metadata) are dropped. ``module.`` / ``_orig_mod.`` prefixes that
    every key shares are removed.
    """
    cur: Any = obj
    keys = ((prefer,) if prefer else ()) + WRAPPER_KEYS
    for _ in range(4):
        if _is_tensor_dict(cur):
            break
        nxt = next((cur[k] for k in keys if isinstance(cur, Mapping) and isinstance(cur.get(k), Mapping)), None)
        if nxt is None:
            break
        cur = nxt
    if not isinstance(cur, Mapping):
        raise CheckpointError("no state dict found in checkpoint")
    sd = {k: v for k, v in cur.items() if torch.is_tensor(v)}
    if not sd:
        raise CheckpointError(f"no tensors found in checkpoint (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
    for prefix in STRIP_PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_checkpoint(path: str | os.PathLike, *, prefer: str | None = None) -> dict[str, torch.Tensor]:
    """Read ``.pth/.pt/.ckpt/.bin/.safetensors`` safely and return the unwrapped ``{name: tensor}`` dict."""
    path = Path(path)
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(
            f"unsupported checkpoint type '{path.suffix}' (expected one of {', '.join(CHECKPOINT_SUFFIXES)})", path=path
        )
    try:
        return unwrap_state_dict(read_checkpoint(path), prefer=prefer)
    except CheckpointError as exc:
        if str(path) in str(exc):
            raise
        raise CheckpointError(str(exc), path=path) from exc


def _short_list(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... (+{len(names) - limit} more)" if len(names) > limit else "")


def mismatch_report(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Describe how ``state_dict`` fails to fit ``model`` in a few lines, or ``None`` when it fits.

    Lists missing keys, unexpected keys and shape mismatches (at most six names each).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return None
    lines = []
    if missing:
        lines.append(f"missing {len(missing)} keys: {_short_list(missing)}")
    if unexpected:
        lines.append(f"unexpected {len(unexpected)} keys: {_short_list(unexpected)}")
    if shapes:
        lines.append(f"{len(shapes)} shape mismatches: {_short_list(shapes, 4)}")
    return "; ".join(lines)


def builds_layout(build: Callable[[], torch.nn.Module], state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``build()`` (run on the meta device, so it costs nothing) has exactly ``state_dict``'s
    keys and shapes; a build that rejects its configuration counts as no. Detectors use it to confirm
    a configuration inferred from a checkpoint."""
    try:
        with torch.device("meta"):
            model = build()
    except (ValueError, RuntimeError, TypeError):
        return False
    return mismatch_report(model, state_dict) is None


def load_state_dict_checked(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: object = "checkpoint"
) -> torch.nn.Module:
    """Load ``state_dict`` strictly into ``model``; on mismatch raise :class:`CheckpointError` naming ``source``.

    Shapes are compared before loading, so a mismatch never surfaces as a long torch traceback.
    """
    report = mismatch_report(model, state_dict)
    if report is not None:
        name = type(model).__name__
        raise CheckpointError(f"{source}: does not fit {name}: {report}")
    model.load_state_dict(state_dict, strict=True)
    return model
