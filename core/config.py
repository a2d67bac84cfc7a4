"""Typed configurations from YAML files with dotted ``--set key=value`` overrides.

A pipeline describes its configuration as a :class:`Config` (a pydantic model that forbids
unknown keys) or a plain dataclass; :func:`load_config` reads a YAML preset from
``configs/<field>/``, applies the overrides and validates the result. Every problem becomes a
one-line :class:`~vitsuite.core.errors.ConfigError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from .errors import ConfigError

T = TypeVar("T")


class Config(BaseModel):
    """Base for pipeline configs: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def parse_value(text: str) -> Any:
    """Parse the right-hand side of ``--set key=value`` as YAML (``3`` -> int, ``[1,2]`` -> list, ``a`` -> str)."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b.c=value`` override applied (creating dicts on the way)."""
    out = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set '{item}': expected key=value")
        key, _, raw = item.partition("=")
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set '{item}': empty key")
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set '{item}': '{'.'.join(parts[: i + 1])}' is not a section")
            node = nxt
        node[parts[-1]] = parse_value(raw)
    return out


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping; a missing file, a syntax error or a non-mapping is a :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file not found", path=path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"invalid YAML{where}: {getattr(exc, 'problem', exc)}", path=path) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, found {type(data).__name__}", path=path)
    return data


def _format_validation_error(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{loc}'")
        elif err["type"] == "missing":
            parts.append(f"missing key '{loc}'")
        else:
            got = err.get("input")
            got_s = f" (got {got!r})" if got is not None and not isinstance(got, (dict, list)) else ""
            parts.append(f"{loc}: {err['msg']}{got_s}")
    more = len(exc.errors()) - 3
    return f"{source}: " + "; ".join(parts) + (f"; +{more} more" if more > 0 else "")


def _unknown_dataclass_keys(cls: type, data: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Keys of ``data`` that the (nested) dataclass ``cls`` does not declare."""
    fields = {f.name for f in dataclasses.fields(cls)}
    try:  # resolves string annotations (``from __future__ import annotations``)
        hints = typing.get_type_hints(cls)
    except Exception:
        hints = {}
    bad = []
    for key, value in data.items():
        if key not in fields:
            bad.append(prefix + key)
            continue
        ftype = hints.get(key)
        if isinstance(ftype, type) and dataclasses.is_dataclass(ftype) and isinstance(value, Mapping):
            bad += _unknown_dataclass_keys(ftype, value, prefix + key + ".")
    return bad


def validate_config(cls: type[T], data: Mapping[str, Any], *, source: str = "config") -> T:
    """Validate ``data`` into ``cls`` (a pydantic model or a dataclass); errors name ``source`` and the key."""
    if dataclasses.is_dataclass(cls):
        # Plain dataclasses ignore unknown keys under pydantic; check them ourselves.
        unknown = _unknown_dataclass_keys(cls, data)
        if unknown:
            raise ConfigError(f"{source}: unknown key '{unknown[0]}'" + (f" (+{len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    try:
        if isinstance(cls, type) and issubclass(cls, BaseModel):
            return cls.model_validate(dict(data))
        return TypeAdapter(cls).validate_python(dict(data))
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from exc


def load_config(
    cls: type[T], path: str | os.PathLike | None = None, overrides: Iterable[str] = (), *, base: Mapping[str, Any] | None = None
) -> T:
    """Build a validated ``cls`` from ``base`` defaults, the YAML file at ``path``, then ``overrides``."""
    data: dict[str, Any] = _deep_copy(base or {})
    source = "config"
    if path is not None:
        data = _merge(data, read_yaml(path))
        source = str(path)
    overrides = list(overrides)
    if overrides:
        data = apply_overrides(data, overrides)
        source += " with --set " + " ".join(overrides)
    return validate_config(cls, data, source=source)


def _merge(a: dict[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = _deep_copy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-serialisable dict of a pydantic model or dataclass config."""
    if isinstance(cfg, BaseModel):
        return cfg.model_dump(mode="json")
    if dataclasses.is_dataclass(cfg):
        return TypeAdapter(type(cfg)).dump_python(cfg, mode="json")
    raise TypeError(f"not a config: {type(cfg).__name__}")
