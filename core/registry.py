"""The model registry: named constructors, official-checkpoint translators, official functions.

Each model family file (``pipelines/<field>/models/<family>.py``) registers

* :class:`ModelSpec` entries -- a name (``hat_l``, ``vitpose_b``...), the field, a builder that
  takes the family's config fields as keyword arguments, and the paper-size defaults;
* an :class:`OfficialSpec` per official ``model_id`` (the ids of ``shared/reference``) -- how the
  authors' constructor arguments become our model, how their state-dict keys become ours, and how
  their configuration is inferred from a released checkpoint's tensor shapes;
* pure functions the authors' code exposes (``official_function``), e.g. ViTPose's heatmap decoder.

Registration happens when a family module is imported. :func:`ensure_registered` imports every
``vitsuite.pipelines.<field>.models`` package on first use, so ``import vitsuite.models`` stays
cheap and a pipeline never has to be imported by hand.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .checkpoint import load_checkpoint, load_state_dict_checked
from .errors import CheckpointError, UserError


class UnknownModelError(UserError, KeyError):
    """A model name or official ``model_id`` that nothing registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


@dataclass
class ModelSpec:
    """One named constructor (a paper size or a family default).

    ``builder(**config)`` returns an ``nn.Module``; ``defaults`` are the named configuration's
    values, which ``build_model`` overrides with the caller's keyword arguments.
    """

    name: str
    field: str
    family: str
    builder: Callable[..., nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def build(self, **overrides: Any) -> nn.Module:
        """Build the model with ``defaults`` updated by ``overrides``."""
        return self.builder(**{**self.defaults, **overrides})


@dataclass
class OfficialSpec:
    """How one official model (a reference ``model_id``) maps onto the suite.

    * ``build(official_kwargs) -> nn.Module``: our module configured like the authors' class
      constructed with ``official_kwargs`` (JSON form, as in ``meta.json``).
    * ``convert(state_dict, official_kwargs) -> state_dict``: official key names/layouts to ours
      (identity when the names are kept).
    * ``detect(state_dict) -> official_kwargs | None``: infer the constructor arguments from a
      released checkpoint's tensor shapes; ``None`` when the checkpoint is not of this model.
    """

    model_id: str
    field: str
    build: Callable[[Mapping[str, Any]], nn.Module]
    convert: Callable[[Mapping[str, torch.Tensor], Mapping[str, Any]], dict[str, torch.Tensor]] | None = None
    detect: Callable[[Mapping[str, torch.Tensor]], dict[str, Any] | None] | None = None
    description: str = ""
    # Constructor arguments that tensor shapes cannot tell (e.g. attention heads); ``detect`` fills
    # them with the paper's value and a user overrides them in ``load_official_checkpoint``.
    uninferable: tuple[str, ...] = ()


_MODELS: dict[str, ModelSpec] = {}
_OFFICIAL: dict[str, OfficialSpec] = {}
_FUNCTIONS: dict[tuple[str, str], Callable[..., Any]] = {}
_DISCOVERED = False


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a named constructor; names are unique across the suite."""
    if spec.name in _MODELS and _MODELS[spec.name].builder is not spec.builder:
        raise ValueError(f"model name '{spec.name}' registered twice")
    _MODELS[spec.name] = spec
    return spec


def register_official(spec: OfficialSpec) -> OfficialSpec:
    """Add the translator for one official ``model_id``."""
    _OFFICIAL[spec.model_id] = spec
    return spec


def register_official_function(model_id: str, call: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Expose a pure function of the authors' code as ``official_function(model_id, call)``."""
    _FUNCTIONS[(model_id, call)] = fn
    return fn


def ensure_registered() -> None:
    """Import every ``vitsuite.pipelines.<field>.models`` package once (they register on import)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    import vitsuite.pipelines as pipelines

    for info in pkgutil.iter_modules(pipelines.__path__):
        if not info.ispkg:
            continue
        name = f"{pipelines.__name__}.{info.name}.models"
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


def list_models(field: str | None = None) -> list[ModelSpec]:
    """All named constructors (optionally of one field), sorted by field then name."""
    ensure_registered()
    specs = [s for s in _MODELS.values() if field is None or s.field == field]
    return sorted(specs, key=lambda s: (s.field, s.name))


def list_official() -> list[str]:
    """Official ``model_id`` values that :func:`from_official` can build."""
    ensure_registered()
    return sorted(_OFFICIAL)


def get_model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` called ``name`` (an :class:`UnknownModelError` lists the known names)."""
    ensure_registered()
    if name not in _MODELS:
        known = ", ".join(sorted(_MODELS)) or "none yet"
        raise UnknownModelError(f"unknown model '{name}' (known: {known})")
    return _MODELS[name]


def build_model(name: str, **config: Any) -> nn.Module:
    """Build the named model; keyword arguments override the named configuration."""
    return get_model_spec(name).build(**config)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable and frozen), as the reference ``param_count`` counts them."""
    return sum(p.numel() for p in module.parameters())


def count_model_parameters(name: str, **config: Any) -> int:
    """Parameter count of a named model, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = build_model(name, **config)
    return count_parameters(model)


def get_official_spec(model_id: str) -> OfficialSpec:
    """The translator for ``model_id``; :class:`UnknownModelError` when it is not implemented."""
    ensure_registered()
    if model_id not in _OFFICIAL:
        known = ", ".join(sorted(_OFFICIAL)) or "none yet"
        raise UnknownModelError(f"official model '{model_id}' is not implemented (implemented: {known})")
    return _OFFICIAL[model_id]


def from_official(
    model_id: str, official_kwargs: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor] | None = None
) -> nn.Module:
    """Our module for the authors' ``model_id`` built with their constructor arguments, in eval mode.

    ``state_dict`` (official key names) is converted and loaded strictly; a mismatch raises a
    :class:`CheckpointError` listing missing/unexpected keys and shape mismatches.
    """
    spec = get_official_spec(model_id)
    model = spec.build(dict(official_kwargs))
    if state_dict is not None:
        sd = spec.convert(state_dict, official_kwargs) if spec.convert else dict(state_dict)
        load_state_dict_checked(model, sd, source=f"{model_id} state dict")
    return model.eval()


def official_function(model_id: str, call: str) -> Callable[..., Any]:
    """A pure function of the authors' code (e.g. ``("pose_decode", "keypoints_from_heatmaps")``)."""
    ensure_registered()
    if (model_id, call) not in _FUNCTIONS:
        raise UnknownModelError(f"official function '{model_id}.{call}' is not implemented")
    return _FUNCTIONS[(model_id, call)]


def detect_official(state_dict: Mapping[str, torch.Tensor]) -> list[tuple[str, dict[str, Any]]]:
    """Every ``(model_id, official_kwargs)`` whose detector recognises ``state_dict``."""
    ensure_registered()
    found = []
    for model_id, spec in sorted(_OFFICIAL.items()):
        if spec.detect is None:
            continue
        kwargs = spec.detect(state_dict)
        if kwargs is not None:
            found.append((model_id, kwargs))
    return found


def load_official_checkpoint(path, model_id: str | None = None, **overrides: Any) -> nn.Module:
    """Build the right model from an authors' released checkpoint file, in eval mode.

    The configuration is inferred from tensor shapes by the registered detectors (the way
    spandrel does for restoration models); ``model_id`` picks the family when several detectors
    match, and ``overrides`` set constructor arguments that shapes cannot tell (e.g. ``img_range``).
    """
    state_dict = load_checkpoint(path)
    if model_id is not None:
        spec = get_official_spec(model_id)
        if spec.detect is None:
            raise CheckpointError(f"{path}: {model_id} cannot infer its configuration; use from_official()")
        kwargs = spec.detect(state_dict)
        if kwargs is None:
            raise CheckpointError(f"{path}: not a {model_id} checkpoint (its tensors do not match that model's layout)")
        candidates = [(model_id, kwargs)]
    else:
        candidates = detect_official(state_dict)
        if not candidates:
            raise CheckpointError(
                f"{path}: no known model matches this checkpoint ({len(state_dict)} tensors, first key "
                f"'{next(iter(state_dict))}'); pass model_id= if it is one of: {', '.join(list_official()) or 'none yet'}"
            )
        if len(candidates) > 1:
            ids = ", ".join(c[0] for c in candidates)
            raise CheckpointError(f"{path}: checkpoint matches several models ({ids}); pass model_id=")
    found_id, kwargs = candidates[0]
    kwargs.update(overrides)
    try:
        return from_official(found_id, kwargs, state_dict)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
