"""Runtime choices shared by every predict/benchmark path: device, threads, precision, compile."""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch
from torch import nn

from .errors import UserError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_device(name: str | None = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; an explicit name is checked for availability."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"unknown device '{name}' (use cpu, cuda, cuda:N or auto)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but CUDA is not available on this machine")
    return dev


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype:
    """Map ``float32``/``bf16``/``fp16`` (and aliases) to a torch dtype."""
    if name is None:
        return torch.float32
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise UserError(f"unknown dtype '{name}' (use one of {', '.join(sorted(DTYPES))})")
    return DTYPES[name]


def set_threads(num_threads: int | None) -> None:
    """Set intra-op CPU threads (``None``/0 leaves torch's default)."""
    if num_threads:
        torch.set_num_threads(int(num_threads))


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Mixed-precision autocast for ``dtype`` below float32 on ``device``; a no-op for float32."""
    if dtype == torch.float32:
        yield
        return
    if device.type == "cpu" and not cpu_has_native(dtype):
        warnings.warn(f"this CPU has no native {dtype} arithmetic (torch sees {torch.backends.cpu.get_cpu_capability()}): "
                      f"autocast to {dtype} runs several times slower than float32 here", RuntimeWarning, stacklevel=3)
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def cpu_has_native(dtype: torch.dtype) -> bool:
    """Whether oneDNN runs ``dtype`` (bf16 / fp16) matmuls and convolutions natively on this CPU.

    Without AVX512-BF16 / AMX (e.g. AVX2-only EPYCs) CPU autocast emulates them: measured 5-30x slower
    than float32 on the zoo's models, so the option then only costs time.
    """
    probe = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}.get(dtype)
    try:
        return probe is None or bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):
        return False


def prepare_model(
    model: nn.Module, device: torch.device, *, channels_last: bool = False, compile: bool = False
) -> nn.Module:
    """Move ``model`` to ``device`` in eval mode, optionally channels_last and ``torch.compile``d."""
    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    return model
