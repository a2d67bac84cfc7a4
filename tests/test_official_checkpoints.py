"""``load_official_checkpoint`` on every reference fixture: the state dict saved in the authors'
usual containers is recognised, its configuration inferred from tensor shapes, and the built model
reproduces the fixture output. Only the arguments a family declares ``uninferable`` are passed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import reference_root
from vitsuite.core.checkpoint import save_checkpoint
from vitsuite.core.registry import UnknownModelError, get_official_spec, load_official_checkpoint

CASES = sorted(p.parent for p in reference_root().glob("*/*/state_dict.safetensors")) if reference_root().is_dir() else []
CONTAINERS = {
    "params_ema": lambda sd: {"params_ema": sd},              # BasicSR (HAT, DRCT, DRSformer)
    "state_dict": lambda sd: {"meta": {"epoch": 1}, "state_dict": sd},  # mmpose, Lightning
    "model_module": lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},  # MAE + DDP
}


def _lookup(kwargs: dict, key: str):
    """A constructor argument at the top level or inside one sub-config (e.g. ViTPose's ``backbone``)."""
    if key in kwargs:
        return kwargs[key]
    return next((v[key] for v in kwargs.values() if isinstance(v, dict) and key in v), None)


@pytest.mark.parametrize("container", sorted(CONTAINERS))
@pytest.mark.parametrize("case", CASES, ids=[f"{c.parent.name}/{c.name}" for c in CASES])
def test_load_official_checkpoint_reproduces_fixture(tmp_path: Path, case: Path, container: str):
    meta = json.loads((case / "meta.json").read_text())
    model_id = meta["model_id"]
    try:
        spec = get_official_spec(model_id)
    except UnknownModelError:
        pytest.skip(f"model '{model_id}' not implemented yet")
    if spec.detect is None:
        pytest.skip(f"model '{model_id}' has no config detector yet")
    sd = load_file(str(case / "state_dict.safetensors"))
    path = tmp_path / "official.pth"
    save_checkpoint(CONTAINERS[container](sd), path)
    kwargs = meta["official_kwargs"]
    overrides = {k: v for k in spec.uninferable if (v := _lookup(kwargs, k)) is not None}
    model = load_official_checkpoint(path, **overrides)
    io = load_file(str(case / "io.safetensors"))
    args = [io[f"input.{n}"] for n in meta["inputs"]]
    call_kwargs = dict(meta.get("call_kwargs", {}))
    call_kwargs.update({k: io[v] for k, v in meta.get("tensor_call_kwargs", {}).items()})
    with torch.no_grad():
        out = getattr(model, meta["call"])(*args, **call_kwargs)
    out = out if isinstance(out, (tuple, list)) else (out,)
    for name, got in zip(meta["outputs"], out):
        want = io[f"output.{name}"]
        assert torch.allclose(got.double(), want.double(), atol=meta["atol"], rtol=meta.get("rtol", 0.0)), (
            f"{model_id}/{case.name}.{name}: max diff {(got.double() - want.double()).abs().max():.3e}"
        )
