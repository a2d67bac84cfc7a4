"""Typed configs with --set overrides, and the CLI's one-line user errors."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vitsuite.core import cli
from vitsuite.core.config import Config, apply_overrides, config_to_dict, load_config
from vitsuite.core.errors import ConfigError, UserError


@dataclass
class OptimCfg:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)


@dataclass
class TrainCfg:
    name: str = "run"
    steps: int = 10
    optim: OptimCfg = field(default_factory=OptimCfg)


class ModelCfg(Config):
    embed_dim: int = 32
    depths: list[int] = [2, 2]
    upsampler: str = "pixelshuffle"


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: demo\noptim:\n  lr: 0.01\n")
    cfg = load_config(TrainCfg, path, ["optim.betas=[0.8, 0.9]", "steps=5"])
    assert cfg == TrainCfg(name="demo", steps=5, optim=OptimCfg(lr=0.01, betas=(0.8, 0.9)))
    assert config_to_dict(cfg)["optim"]["betas"] == [0.8, 0.9]
    m = load_config(ModelCfg, overrides=["depths=[6,6,6]", "embed_dim=180"])
    assert m.depths == [6, 6, 6] and m.embed_dim == 180


@pytest.mark.parametrize(
    "yaml_text,overrides,message",
    [
        ("", ["optim.lrr=1"], "unknown key 'optim.lrr'"),
        ("nmae: x\n", [], "unknown key 'nmae'"),
        ("steps: many\n", [], "steps: Input should be a valid integer"),
        ("", ["steps"], "expected key=value"),
        ("steps: [1, 2\n", [], "invalid YAML"),
        ("- a\n- b\n", [], "expected a mapping"),
        ("", ["name.sub=1"], "'name' is not a section"),
    ],
)
def test_config_errors_are_one_line(tmp_path, yaml_text, overrides, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    if overrides == ["name.sub=1"]:
        path.write_text("name: x\n")
    with pytest.raises(ConfigError) as exc:
        load_config(TrainCfg, path, overrides)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_pydantic_config_errors():
    with pytest.raises(ConfigError, match="unknown key 'embeddim'"):
        load_config(ModelCfg, overrides=["embeddim=3"])
    with pytest.raises(ConfigError, match="depths.0: Input should be a valid integer"):
        load_config(ModelCfg, overrides=["depths=[a, 2]"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(ModelCfg, "/nonexistent/x.yaml")


def test_apply_overrides_does_not_mutate():
    base = {"a": {"b": 1}}
    out = apply_overrides(base, ["a.b=2", "a.c=x"])
    assert base == {"a": {"b": 1}} and out == {"a": {"b": 2, "c": "x"}}


def _toy_parser():
    parser, sub = cli.make_parser("toy", "toy cli")
    p = sub.add_parser("fail")

    def fail(args):
        raise UserError("input.png: not an image")

    p.set_defaults(func=fail)
    p = sub.add_parser("ok")
    p.set_defaults(func=lambda args: 0)
    return parser


def test_user_error_one_line(capsys):
    assert cli.run(_toy_parser(), ["ok"]) == 0
    assert cli.run(_toy_parser(), ["fail"]) == 2
    err = capsys.readouterr().err
    assert err == "error: input.png: not an image\n"
    with pytest.raises(UserError):
        cli.run(_toy_parser(), ["--debug", "fail"])


def test_vitsuite_command_info_and_models():
    exe = Path(sys.executable).with_name("vitsuite")
    out = subprocess.run([str(exe), "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch:" in out.stdout and "cpu threads:" in out.stdout
    out = subprocess.run([str(exe), "models"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([str(exe), "nonsense"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_models_command_lists_parameter_counts(monkeypatch, capsys):
    from torch import nn

    from vitsuite.core import registry

    monkeypatch.setattr(registry, "_MODELS", {})
    monkeypatch.setattr(registry, "_DISCOVERED", True)
    registry.register_model(registry.ModelSpec("lin", "test", "toy", lambda n=1000: nn.Linear(n, n), {}, "a linear"))
    assert cli.run(cli.build_parser(), ["models"]) == 0
    out = capsys.readouterr().out
    assert "lin" in out and "1.00M" in out and "a linear" in out


def test_cpu_autocast_warns_when_the_cpu_has_no_native_half_precision(monkeypatch):
    """bf16 autocast on a CPU without AVX512-BF16 / AMX is emulated (5-30x slower than float32): say so."""
    import warnings

    import torch

    from vitsuite.core import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_native", lambda dtype: False)
    with pytest.warns(RuntimeWarning, match="no native torch.bfloat16"):
        with runtime.autocast(cpu, torch.bfloat16):
            pass
    monkeypatch.setattr(runtime, "cpu_has_native", lambda dtype: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with runtime.autocast(cpu, torch.bfloat16):
            assert torch.is_autocast_enabled("cpu")
        with runtime.autocast(cpu, torch.float32):  # float32 never warns
            pass
    monkeypatch.undo()
    assert isinstance(runtime.cpu_has_native(torch.bfloat16), bool) and runtime.cpu_has_native(torch.float32)
