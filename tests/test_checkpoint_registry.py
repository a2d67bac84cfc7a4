"""Checkpoint loading/unwrapping/mismatch reports and the model registry contract."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from vitsuite.core import registry
from vitsuite.core.checkpoint import load_checkpoint, load_state_dict_checked, save_checkpoint, unwrap_state_dict
from vitsuite.core.errors import CheckpointError
from vitsuite.core.registry import ModelSpec, OfficialSpec


class TinyNet(nn.Module):
    def __init__(self, width: int = 4, depth: int = 2):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x)


def _official_layout(model: TinyNet) -> dict[str, torch.Tensor]:
    """An 'official' naming that differs from ours: blocks.N.fc.* and out.*"""
    sd = {}
    for k, v in model.state_dict().items():
        k = k.replace("layers.", "blocks.").replace(".weight", ".fc.weight").replace(".bias", ".fc.bias")
        sd[k.replace("head.fc.", "out.")] = v
    return sd


def _convert(sd, kwargs):
    out = {}
    for k, v in sd.items():
        k = k.replace("blocks.", "layers.").replace(".fc.", ".").replace("out.", "head.")
        out[k] = v
    return out


def _detect(sd):
    if "out.weight" not in sd:
        return None
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    return {"width": sd["out.weight"].shape[1], "depth": depth}


@pytest.fixture
def tiny_registered(monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", {})
    monkeypatch.setattr(registry, "_OFFICIAL", {})
    monkeypatch.setattr(registry, "_DISCOVERED", True)
    registry.register_model(ModelSpec("tiny_s", "test", "tiny", TinyNet, {"width": 4, "depth": 1}, "small"))
    registry.register_model(ModelSpec("tiny_l", "test", "tiny", TinyNet, {"width": 16, "depth": 3}, "large"))
    registry.register_official(OfficialSpec("tiny", "test", lambda kw: TinyNet(**kw), _convert, _detect))
    return registry


WRAPS = ["flat", "params_ema", "params", "state_dict", "model", "module", "nested"]
CASES = [(w, s) for w in WRAPS for s in (".pth", ".pt", ".ckpt", ".bin")] + [("flat", ".safetensors"), ("module", ".safetensors")]


@pytest.mark.parametrize("wrap,suffix", CASES)
def test_load_checkpoint_unwraps_containers(tmp_path, wrap, suffix):
    sd = TinyNet().state_dict()
    obj = {
        "flat": sd,
        "params_ema": {"params_ema": sd, "params": {k: v * 0 for k, v in sd.items()}},
        "params": {"params": sd},
        "state_dict": {"state_dict": sd, "meta": {"epoch": 3}},
        "model": {"model": sd, "optimizer": {"state": {}}, "step": 7},
        "module": {f"module.{k}": v for k, v in sd.items()},
        "nested": {"state_dict": {"model": {f"_orig_mod.{k}": v for k, v in sd.items()}}},
    }[wrap]
    path = tmp_path / f"ckpt{suffix}"
    save_checkpoint(obj, path)
    loaded = load_checkpoint(path)
    assert loaded.keys() == sd.keys()
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)  # params_ema preferred over params


def test_mae_style_checkpoint_with_argparse_args(tmp_path):
    import argparse

    sd = TinyNet().state_dict()
    path = tmp_path / "checkpoint-799.pth"
    torch.save({"model": sd, "optimizer": {}, "epoch": 799, "args": argparse.Namespace(lr=1e-3, input_size=96)}, path)
    loaded = load_checkpoint(path)
    assert loaded.keys() == sd.keys()


def test_prefer_selects_non_ema_weights():
    sd = TinyNet().state_dict()
    zeros = {k: v * 0 for k, v in sd.items()}
    got = unwrap_state_dict({"params_ema": sd, "params": zeros}, prefer="params")
    assert all(torch.equal(got[k], zeros[k]) for k in sd)


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": Evil()}, fh, protocol=2)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    msg = str(exc.value)
    assert "evil.pth" in msg and "\n" not in msg


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_checkpoint_one_line_error(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(CheckpointError, match="unsupported checkpoint type"):
        load_checkpoint(tmp_path / "w.txt")


def test_mismatch_report_lists_missing_unexpected_and_shapes():
    model = TinyNet(width=4, depth=2)
    sd = TinyNet(width=8, depth=3).state_dict()
    sd.pop("head.bias")
    with pytest.raises(CheckpointError) as exc:
        load_state_dict_checked(model, sd, source="x.pth")
    msg = str(exc.value)
    assert "x.pth" in msg and "TinyNet" in msg
    assert "missing 1 keys: head.bias" in msg
    assert "unexpected 2 keys: layers.2.weight, layers.2.bias" in msg
    assert "shape mismatches" in msg and "layers.0.weight (8, 8) vs model (4, 4)" in msg
    assert len(msg) < 600 and "\n" not in msg


def test_registry_build_list_count(tiny_registered):
    names = [s.name for s in registry.list_models()]
    assert names == ["tiny_l", "tiny_s"]
    model = registry.build_model("tiny_l", depth=2)  # override a named configuration
    assert len(model.layers) == 2 and model.head.in_features == 16
    assert registry.count_model_parameters("tiny_s") == 4 * 4 + 4 + 4 + 1
    with pytest.raises(registry.UnknownModelError, match="unknown model 'nope'.*tiny_l, tiny_s"):
        registry.build_model("nope")


def test_from_official_converts_and_loads(tiny_registered):
    ours = TinyNet(width=6, depth=2)
    official_sd = _official_layout(ours)
    model = registry.from_official("tiny", {"width": 6, "depth": 2}, official_sd)
    assert not model.training
    x = torch.randn(3, 6)
    assert torch.equal(model(x), ours(x))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        registry.from_official("tiny", {"width": 5, "depth": 2}, official_sd)
    with pytest.raises(registry.UnknownModelError, match="not implemented"):
        registry.from_official("hat_nonexistent", {}, official_sd)


@pytest.mark.parametrize("width,depth", [(4, 1), (12, 3)])
def test_load_official_checkpoint_infers_config(tmp_path, tiny_registered, width, depth):
    ours = TinyNet(width=width, depth=depth)
    path = tmp_path / "official.pth"
    save_checkpoint({"params_ema": _official_layout(ours)}, path)
    model = registry.load_official_checkpoint(path)
    assert model.head.in_features == width and len(model.layers) == depth
    x = torch.randn(2, width)
    assert torch.equal(model(x), ours(x))
    assert registry.load_official_checkpoint(path, model_id="tiny").head.in_features == width


def test_load_official_checkpoint_unknown_layout(tmp_path, tiny_registered):
    path = tmp_path / "other.pth"
    save_checkpoint({"weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="no known model matches.*pass model_id"):
        registry.load_official_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a tiny checkpoint"):
        registry.load_official_checkpoint(path, model_id="tiny")


def test_official_function_registry(monkeypatch):
    monkeypatch.setattr(registry, "_FUNCTIONS", {})
    monkeypatch.setattr(registry, "_DISCOVERED", True)
    registry.register_official_function("toy", "double", lambda a: a * 2)
    assert registry.official_function("toy", "double")(3) == 6
    with pytest.raises(registry.UnknownModelError):
        registry.official_function("toy", "triple")
