"""Export a model for a fixed input size (ONNX, or TorchScript where ONNX cannot express an op)
and check the exported program against eager PyTorch.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .fileio import atomic_path

FORMATS = ("onnx", "torchscript")


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def export_model(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    path: str | os.PathLike,
    *,
    format: str = "onnx",
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    opset: int = 18,
) -> Path:
    """Write ``model`` (eval mode, CPU) traced at the shapes of ``example_inputs`` to ``path`` atomically.

    ``format="onnx"`` uses the TorchScript-based ONNX exporter (fast, no extra dependency beyond
    ``onnx``); ``format="torchscript"`` writes a ``torch.jit.trace`` archive.
    """
    if format not in FORMATS:
        raise UserError(f"unknown export format '{format}' (use {' or '.join(FORMATS)})")
    model = model.eval()
    args = _as_tuple(example_inputs)
    path = Path(path)
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on fixed shapes
        if format == "torchscript":
            traced = torch.jit.trace(model, args, check_trace=False)
            traced.save(str(tmp))
        else:
            names = list(input_names or [f"input{i}" for i in range(len(args))])
            torch.onnx.export(model, args, str(tmp), input_names=names,
                              output_names=list(output_names) if output_names else None,
                              opset_version=opset, dynamo=False, do_constant_folding=True)
    return path


def run_exported(path: str | os.PathLike, inputs: Sequence[torch.Tensor] | torch.Tensor) -> list[np.ndarray]:
    """Run an exported file on CPU (onnxruntime for ``.onnx``, ``torch.jit.load`` otherwise)."""
    path = Path(path)
    args = _as_tuple(inputs)
    if path.suffix == ".onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {i.name: a.detach().cpu().numpy() for i, a in zip(sess.get_inputs(), args)}
        return list(sess.run(None, feeds))
    module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return [o.numpy() for o in _as_tuple(module(*args))]


def verify_export(path: str | os.PathLike, model: nn.Module, inputs: Sequence[torch.Tensor] | torch.Tensor,
                  *, atol: float = 1e-4, rtol: float = 1e-4) -> float:
    """Max |exported - eager| over all outputs; raises ``AssertionError`` beyond ``atol + rtol * |eager|``."""
    args = _as_tuple(inputs)
    with torch.no_grad():
        eager = [o.detach().cpu().numpy() for o in _as_tuple(model.eval()(*args))]
    got = run_exported(path, args)
    if len(got) != len(eager):
        raise AssertionError(f"{path}: {len(got)} outputs, eager model gives {len(eager)}")
    worst = 0.0
    for i, (g, e) in enumerate(zip(got, eager)):
        if g.shape != e.shape:
            raise AssertionError(f"{path}: output {i} shape {g.shape} != eager {e.shape}")
        diff = float(np.abs(g - e).max()) if e.size else 0.0
        worst = max(worst, diff)
        if not np.allclose(g, e, atol=atol, rtol=rtol):
            raise AssertionError(f"{path}: output {i} differs from eager by {diff:.3e} (atol {atol}, rtol {rtol})")
    return worst
