"""Helpers shared by the per-family model tests (tests/test_models_*.py)."""

from __future__ import annotations

from typing import Callable, Mapping

import pytest
import torch

from conftest import reference_root


def randomize_(model: torch.nn.Module, seed: int = 0, vector_scale: float = 0.1,
               bias_table_scale: float = 0.5) -> torch.nn.Module:
    """Non-trivial weights in place (as the fixtures have): matrices ~ N(0, 1/fan_in), every 1-d
    parameter (biases, norm affines, temperatures) shifted by N(0, vector_scale), relative-position
    bias tables ~ N(0, bias_table_scale); returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.copy_(torch.randn(p.shape, generator=g) * bias_table_scale)
            elif p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * p[0].numel() ** -0.5)
            else:
                p.add_(torch.randn(p.shape, generator=g) * vector_scale)
    return model.eval()


def assert_detector_rejects_other_families(family: str,
                                           detect: Callable[[Mapping[str, torch.Tensor]], object]) -> None:
    """``detect`` returns None for every other family's fixture state dict (skips when there is none)."""
    from safetensors.torch import load_file

    paths = [p for p in reference_root().glob("*/*/state_dict.safetensors") if p.parts[-3] != family]
    if not paths:
        pytest.skip("no other fixtures")
    for p in paths:
        assert detect(load_file(str(p))) is None, p
