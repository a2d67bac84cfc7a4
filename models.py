"""Public face of the model registry (see :mod:`vitsuite.core.registry`).

>>> from vitsuite.models import list_models, build_model, from_official, load_official_checkpoint
"""

from vitsuite.core.checkpoint import load_checkpoint
from vitsuite.core.registry import (
    ModelSpec,
    OfficialSpec,
    UnknownModelError,
    build_model,
    count_model_parameters,
    count_parameters,
    detect_official,
    from_official,
    list_models,
    list_official,
    load_official_checkpoint,
    official_function,
)

__all__ = [
    "ModelSpec",
    "OfficialSpec",
    "UnknownModelError",
    "build_model",
    "count_model_parameters",
    "count_parameters",
    "detect_official",
    "from_official",
    "list_models",
    "list_official",
    "load_checkpoint",
    "load_official_checkpoint",
    "official_function",
]
