"""Inference for restoration: one trained model in one file, tiled prediction that does not change
results, self-ensemble, image folders, export.

A trained restorer is one file (:class:`Restorer`, ``.pt``): ``{"model": state_dict, "meta": {...}}``
with ``meta`` = ``format`` (``vitsuite.restoration/1``), ``task`` (``sr`` | ``derain``), ``scale``
(1 for deraining), ``model_name`` (a registered name) and ``model_kwargs`` (so
``build_model(model_name, **model_kwargs)`` rebuilds it), optionally ``train`` (data, steps,
metrics). It loads with ``torch.load(weights_only=True)``. The authors' released checkpoints (BasicSR
``params_ema`` / ``params``) load too, through :func:`vitsuite.models.load_official_checkpoint`.

Tiling (:class:`PredictOptions`): images larger than ``tile`` are cut into overlapping tiles with
:func:`vitsuite.core.tiling.tiled_inference`, blended linearly over the overlap after discarding
``margin`` px at every shared tile side, and every tile starts at a multiple of ``align``:

* HAT / DRCT (window ``w`` = 16): ``align = multiple_of = w``. The (shifted) window grid of every tile
  is then the untiled run's grid, and the aligned last tile gets exactly the bottom/right reflect
  padding the untiled model adds itself. Windows are what make unaligned tiling inexact. Measured
  with ``benchmarks/restoration.py --psnr`` on a 200 x 200 astronaut crop, paper-size HAT x4,
  random init: 64 px tiles, overlap 32, margin 16 give PSNR(tiled, untiled) 77.8 dB aligned and
  44.7 dB unaligned; 96 px tiles 84.0 dB (44.6 dB unaligned); 64 px tiles with overlap 16 / margin 8
  67.0 dB. The default 256 px tile has fewer seams per pixel than these, so its error is below theirs.
* DRSformer (three 2x down-samplings): ``align = 8`` keeps the pixel-unshuffle phases. Its
  transposed (channel) attention pools over the whole input, so no tiling is exact for it; the
  error falls with the tile size, not with the overlap. Paper-size, random init, 512 x 512
  astronaut: 44.6 dB with 256 px tiles, 48.9 dB with 384 px tiles. Hence the 512 px default (peak
  RSS about 2.4 GB on CPU): images up to 512 px run untiled, i.e. exactly.

Random weights are a proxy: trained weights attend further, so the margins carry headroom (an
overlap of 16 / margin 8 still gave 67 dB). Re-measure with ``--checkpoint`` for a trained model.

Self-ensemble (x8) runs inside the tile function: each tile goes through the 8 flips x rot90s in one
batch (two batches of 4 for non-square tiles), the inverse transform is applied to the outputs and
they are averaged, so memory stays bounded by the tile, not by 8 copies of the image.

Channels: gray (C=1) is replicated to RGB for the model and the output converted back to one channel
by the *mean* of R, G, B (the least-squares projection onto gray, which undoes the replication
exactly; Y would weight the channels 0.299/0.587/0.114 and differ only where the model adds colour).
Alpha (gray+alpha, RGBA) does not go through the model: for SR it is resized by bicubic
interpolation (``align_corners=False``) and clipped to [0, 1], for deraining it is kept unchanged.
Outputs are clipped to [0, 1].
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitsuite.core.checkpoint import load_state_dict_checked, read_checkpoint, save_checkpoint
from vitsuite.core.errors import CheckpointError, InputError, UserError

__all__ = [
    "FORMAT",
    "TASKS",
    "BUNDLED",
    "SAMPLES",
    "MIN_SIDE",
    "TILE_DEFAULTS",
    "PredictOptions",
    "TileSettings",
    "Restorer",
    "load_restorer",
    "self_ensemble",
    "predict_paths",
    "export_restorer",
]

FORMAT = "vitsuite.restoration/1"
TASKS = ("sr", "derain")
ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED = {"sr": ASSETS / "hat_light_x2.pt", "derain": ASSETS / "drsformer_light.pt"}
SAMPLES = ASSETS / "samples"  # bundled sample inputs per task: samples/sr/*.png (low-res), samples/derain/*.png (rainy)
_TASK_NAMES = {"sr": "super-resolution", "derain": "deraining"}
MIN_SIDE = 4  # smaller images are mostly padding for the models (a 1 px side cannot even be reflect-padded)

# Default tiling per model family (input px), chosen from the measurements in the module docstring;
# ``align`` / ``multiple_of`` come from the model itself (Restorer._geometry). HAT/DRCT: 256 px tiles
# cost (256 / 224)^2 = 1.31x the untiled compute at overlap 32 and keep peak RSS near 1.9 GB for
# paper-size HAT x4; DRCT (same windows) is not measured separately.
TILE_DEFAULTS: dict[str, dict[str, int]] = {
    "hat": {"tile": 256, "overlap": 32, "margin": 16},
    "drct": {"tile": 256, "overlap": 32, "margin": 16},
    "drsformer": {"tile": 512, "overlap": 32, "margin": 8},
    "other": {"tile": 256, "overlap": 32, "margin": 8},
}


@dataclass
class PredictOptions:
    """Every knob of restoration inference. ``None`` means "the model's default" (see :data:`TILE_DEFAULTS`).

    * ``tile``: tile size in input px (0: the whole image in one call). Images not larger than the
      tile run untiled.
    * ``overlap``: minimum overlap of neighbouring tiles (input px; aligned steps may overlap more).
    * ``margin``: px discarded at every shared tile side before blending (``overlap >= 2 * margin``).
    * ``align``: tile starts at multiples of this (default: the model's window / down-sampling grid).
    * ``blend``: ``linear`` | ``gaussian`` | ``constant`` (see :mod:`vitsuite.core.tiling`).
    * ``tile_batch``: tiles per forward call (for one image of several tiles).
    * ``batch_size``: consecutive same-size images per forward in :func:`predict_paths` (the images of
      a group are tiled together: a forward holds ``batch_size * tile_batch`` tiles).
    * ``self_ensemble``: average over the 8 flips x 90-degree rotations (8x the compute).
    * ``dtype``: ``float32`` | ``bf16`` | ``fp16`` (autocast; the blending stays float32).
    * ``device``: ``cpu`` | ``cuda[:N]`` | ``auto`` (``None``: where the model already is). Tiles are
      moved there; the image canvas stays in CPU memory.
    * ``progress``: a tile progress bar inside each image.
    """

    tile: int | None = None
    overlap: int | None = None
    margin: int | None = None
    align: int | None = None
    blend: str = "linear"
    tile_batch: int = 1
    batch_size: int = 1
    self_ensemble: bool = False
    dtype: str = "float32"
    device: str | None = None
    progress: bool = False

    def __post_init__(self):
        for name in ("tile", "overlap", "margin"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 0):
                raise UserError(f"{name}={v!r} must be an int >= 0")
        if self.align is not None and (not isinstance(self.align, int) or self.align < 1):
            raise UserError(f"align={self.align!r} must be an int >= 1")
        for name in ("tile_batch", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise UserError(f"{name}={v!r} must be an int >= 1")


@dataclass(frozen=True)
class TileSettings:
    """The concrete tiling :meth:`Restorer.tile_settings` derives from :class:`PredictOptions` for a model."""

    tile: int
    overlap: int
    margin: int
    align: int
    multiple_of: int


# ---------------------------------------------------------------------------------------------
# self-ensemble


def _transform(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    return torch.rot90(x.flip(-1) if flip else x, k, dims=(-2, -1))


def _inverse(y: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    y = torch.rot90(y, -k, dims=(-2, -1))
    return y.flip(-1) if flip else y


_VARIANTS = [(k, f) for f in (False, True) for k in range(4)]


def self_ensemble(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` averaged over the 8 dihedral transforms: ``mean_T T^-1(fn(T(x)))`` for ``x (N, C, H, W)``.

    Variants that share a shape run in one call (all 8 for square inputs; for non-square ones the
    even and odd rotations are two calls of 4), stacked along the batch.
    """

    def run(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        square = x.shape[-2] == x.shape[-1]
        groups = [_VARIANTS] if square else [[v for v in _VARIANTS if v[0] % 2 == p] for p in (0, 1)]
        total = None
        for group in groups:
            y = fn(torch.cat([_transform(x, k, f) for k, f in group]))
            for i, (k, f) in enumerate(group):
                yi = _inverse(y[i * n:(i + 1) * n], k, f).float()
                total = yi.clone() if total is None else total.add_(yi)
        return total.div_(len(_VARIANTS))

    return run


# ---------------------------------------------------------------------------------------------
# the model file


def _family(model_name: str) -> str:
    """Registered name or official id -> model family (``hat_s`` -> ``hat``)."""
    from vitsuite.core.registry import get_model_spec, list_official

    if model_name in list_official():
        return model_name
    return get_model_spec(model_name).family


def _task_of(family: str) -> str:
    return "derain" if family == "drsformer" else "sr"


def _config_kwargs(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "cfg", None)
    if cfg is None or not is_dataclass(cfg):
        return {}
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}


@dataclass
class Restorer:
    """A restoration model plus its ``meta`` (see the module docstring); ``model`` is in eval mode."""

    model: nn.Module
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.model.eval()
        self.meta = {"format": FORMAT, **self.meta}
        if "scale" not in self.meta:
            self.meta["scale"] = int(getattr(self.model, "upscale", 1))
        if "task" not in self.meta:
            self.meta["task"] = "sr" if self.meta["scale"] > 1 else "derain"
        if self.meta["task"] not in TASKS:
            raise CheckpointError(f"unknown restoration task {self.meta['task']!r} "
                                  f"(expected one of {', '.join(TASKS)})")

    # ------------------------------------------------------------------ properties
    @property
    def task(self) -> str:
        return str(self.meta["task"])

    @property
    def scale(self) -> int:
        return int(self.meta["scale"])

    @property
    def model_name(self) -> str | None:
        return self.meta.get("model_name")

    @property
    def family(self) -> str:
        name = self.model_name
        try:
            return _family(name) if name else "other"
        except UserError:
            return "other"

    @property
    def device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def to(self, device: str | torch.device) -> "Restorer":
        from vitsuite.core.runtime import resolve_device

        self.model.to(resolve_device(device) if isinstance(device, str) else device)
        return self

    def describe(self) -> str:
        """One line: what this model is and where it came from."""
        src = self.meta.get("source")
        what = f"{self.model_name or type(self.model).__name__} x{self.scale}" if self.task == "sr" else \
            f"{self.model_name or type(self.model).__name__} (deraining)"
        return what + (f" from {src}" if src else "") + (" (authors' checkpoint)" if self.meta.get("official") else "")

    # ------------------------------------------------------------------ building, saving, loading
    @classmethod
    def build(cls, model_name: str, *, train: Mapping[str, Any] | None = None, **model_kwargs: Any) -> "Restorer":
        """A freshly initialised registered model (e.g. for training) with its meta filled in."""
        from vitsuite.models import build_model

        model = build_model(model_name, **model_kwargs)
        return cls.from_model(model, model_name, model_kwargs, train=train)

    @classmethod
    def from_model(cls, model: nn.Module, model_name: str, model_kwargs: Mapping[str, Any] | None = None, *,
                   train: Mapping[str, Any] | None = None) -> "Restorer":
        """Wrap a built model. The stored ``model_kwargs`` are the model's whole config dataclass (when it
        has one) updated by ``model_kwargs``, so the file does not depend on the registry's defaults."""
        kwargs = {**_config_kwargs(model), **(model_kwargs or {})}
        family = _family(model_name)
        meta: dict[str, Any] = {"task": _task_of(family), "scale": int(getattr(model, "upscale", 1)),
                                "model_name": model_name, "model_kwargs": kwargs}
        if train:
            meta["train"] = dict(train)
        return cls(model, meta)

    def save(self, path: str | os.PathLike) -> Path:
        """Write weights + meta atomically (``.pt``, ``weights_only``-loadable)."""
        if not self.model_name:
            raise UserError("cannot save a Restorer without meta['model_name'] (build it with Restorer.build)")
        sd = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        meta = {k: v for k, v in self.meta.items() if k != "source"}
        return save_checkpoint({"model": sd, "meta": {**meta, "format": FORMAT}}, path)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, task: str | None = None, model_id: str | None = None,
             scale: int | None = None, device: str | torch.device = "cpu", **overrides: Any) -> "Restorer":
        """Load one of our files, an authors' checkpoint, or (``path=None``) the bundled model of ``task``.

        ``model_id``: the expected model (registered name such as ``hat_s`` or a family ``hat`` /
        ``drct`` / ``drsformer``); a file of another model is a :class:`CheckpointError`. ``scale`` /
        ``task``: what the caller expects; a file that differs is a :class:`UserError`. ``overrides``:
        config fields the checkpoint cannot tell (authors' files: e.g. ``img_range``) or inference
        settings (``pad_mode``); changing the architecture gives a :class:`CheckpointError`.
        """
        if task is not None and task not in TASKS:
            raise UserError(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")
        if path is None:
            path = BUNDLED[task or "sr"]
            if not path.is_file():
                what = "super-resolution" if (task or "sr") == "sr" else "deraining"
                raise CheckpointError(f"the bundled {what} model is missing from this install", path=path)
        path = Path(path)
        ckpt = read_checkpoint(path)
        meta = ckpt.get("meta")
        if isinstance(meta, dict) and meta.get("format") == FORMAT:
            restorer = cls._ours(path, ckpt, meta, model_id, overrides)
        elif isinstance(meta, dict) and isinstance(meta.get("format"), str):
            raise CheckpointError(f"is a {meta['format']} file, not a restoration model ({FORMAT})", path=path)
        else:
            restorer = cls._official(path, model_id, overrides)
        restorer.meta["source"] = str(path)
        if task is not None and task != restorer.task:
            raise UserError(f"{path} is a {_TASK_NAMES[restorer.task]} model; task {task} was requested")
        if scale is not None and int(scale) != restorer.scale:
            raise UserError(f"{path} is a x{restorer.scale} model; --scale {scale} was requested")
        return restorer.to(device)

    @classmethod
    def _ours(cls, path: Path, ckpt: Mapping[str, Any], meta: dict[str, Any], model_id: str | None,
              overrides: Mapping[str, Any]) -> "Restorer":
        from vitsuite.models import build_model

        name, kwargs = meta.get("model_name"), meta.get("model_kwargs")
        if not isinstance(name, str) or not isinstance(kwargs, dict) or not isinstance(ckpt.get("model"), dict):
            raise CheckpointError("restoration file without model_name / model_kwargs / model weights", path=path)
        if model_id is not None and _family(model_id) != _family(name):
            raise CheckpointError(f"holds a {name} model, not {model_id}", path=path)
        try:
            model = build_model(name, **{**kwargs, **overrides})
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"cannot build {name} from its meta: {exc}", path=path) from None
        load_state_dict_checked(model, ckpt["model"], source=path)
        meta = dict(meta)
        if overrides:
            meta["model_kwargs"] = {**kwargs, **overrides}
        return cls(model, meta)

    @classmethod
    def _official(cls, path: Path, model_id: str | None, overrides: Mapping[str, Any]) -> "Restorer":
        from vitsuite.models import load_official_checkpoint

        official_id = _family(model_id) if model_id is not None else None
        model = load_official_checkpoint(path, official_id, **overrides)
        family = type(model).__name__.lower()
        family = family if family in ("hat", "drct", "drsformer") else (official_id or family)
        meta = {"task": _task_of(family), "scale": int(getattr(model, "upscale", 1)), "model_name": family,
                "model_kwargs": _config_kwargs(model), "official": True}
        return cls(model, meta)

    # ------------------------------------------------------------------ inference settings
    def _geometry(self) -> tuple[int, int]:
        """``(align, multiple_of)`` of the model: its window (HAT/DRCT) or down-sampling grid (DRSformer)."""
        cfg = getattr(self.model, "cfg", None)
        ws = getattr(cfg, "window_size", None)
        if isinstance(ws, int) and ws > 1:
            return ws, ws
        pm = getattr(cfg, "pad_multiple", None)
        if isinstance(pm, int) and pm > 1:
            return pm, pm
        return 1, 1

    def tile_settings(self, options: PredictOptions | None = None) -> TileSettings:
        """Fill the ``None`` fields of ``options`` with this model's defaults and check them."""
        o = options or PredictOptions()
        d = TILE_DEFAULTS.get(self.family, TILE_DEFAULTS["other"])
        align, mult = self._geometry()
        align = o.align if o.align is not None else align
        tile = d["tile"] if o.tile is None else o.tile
        if tile:
            tile = -(-tile // math.lcm(mult, align)) * math.lcm(mult, align)
        # defaults shrink with a small tile (at most half of it) and with a small overlap
        overlap = min(d["overlap"], tile // 2) if o.overlap is None else o.overlap
        margin = min(d["margin"], overlap // 2) if o.margin is None else o.margin
        if tile:
            if overlap >= tile or tile - overlap < align:
                raise UserError(f"overlap={overlap} is too large for tile={tile} (tile - overlap must be >= {align}, "
                                "the alignment of tile starts)")
            if 2 * margin > overlap:
                raise UserError(f"margin={margin} needs overlap >= 2 * margin, got overlap={overlap}")
        return TileSettings(tile, overlap, margin, align, mult)

    def _forward(self, options: PredictOptions, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        from vitsuite.core.runtime import autocast, resolve_dtype

        dtype = resolve_dtype(options.dtype)
        model = self.model

        def run(x: torch.Tensor) -> torch.Tensor:
            with autocast(device, dtype):
                y = model(x.to(device, torch.float32))
            return y.float()

        return self_ensemble(run) if options.self_ensemble else run

    # ------------------------------------------------------------------ inference
    def restore_tensor(self, x: torch.Tensor, options: PredictOptions | None = None, *,
                       source: str | os.PathLike | None = None) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, H*s, W*s)`` float32 in [0, 1], on ``x``'s device.

        ``source`` names the input in error messages.
        """
        from vitsuite.core.runtime import resolve_device
        from vitsuite.core.tiling import tiled_inference

        o = options or PredictOptions()
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            raise InputError(f"expected a tensor (B, 3, H, W), got {tuple(getattr(x, 'shape', ())) or type(x)}",
                             path=source)
        H, W = int(x.shape[-2]), int(x.shape[-1])
        if min(H, W) < MIN_SIDE:
            raise InputError(f"image is {W}x{H} pixels; at least {MIN_SIDE}x{MIN_SIDE} needed", path=source)
        ts = self.tile_settings(o)
        device = self.device if o.device is None else resolve_device(o.device)
        if device != self.device:
            self.model.to(device)
        fn = self._forward(o, device)
        x = x.float()
        with torch.inference_mode():
            if not ts.tile or (H <= ts.tile and W <= ts.tile):
                y = fn(x).to(x.device)
            else:
                y = tiled_inference(x, fn, ts.tile, ts.overlap, scale=self.scale, tile_batch=o.tile_batch,
                                    blend=o.blend, margin=ts.margin, pad_mode="reflect", multiple_of=ts.multiple_of,
                                    align=ts.align, out_dtype=torch.float32, device=device, progress=o.progress)
            if y.shape[-2:] != (H * self.scale, W * self.scale):
                raise UserError(f"model returned {tuple(y.shape)} for input {tuple(x.shape)}; expected scale "
                                f"{self.scale} (does meta['scale'] match the model?)")
            return y.clamp_(0, 1)

    def restore_quantized(self, image: np.ndarray, bit_depth: int, options: PredictOptions | None = None, *,
                          source: str | os.PathLike | None = None) -> np.ndarray:
        """Large-image path: RGB ``(H, W, 3)`` float32 in [0, 1] -> ``(H*s, W*s, 3)`` uint8 (``bit_depth`` 8)
        or uint16 (16), the same values :meth:`restore` gives once rounded.

        Tiles stream through :func:`vitsuite.core.tiling.tiled_inference_stream` and each finished band
        of output rows is rounded straight into the integer result, so no float32 copy of the (scale^2
        times larger) output ever exists: memory is the tile's model activations + one band + the
        integer output. Images that run untiled (not larger than the tile) take :meth:`restore`.
        """
        from vitsuite.core.runtime import resolve_device
        from vitsuite.core.tiling import ArrayReader, tiled_inference_stream

        o = options or PredictOptions()
        image = _as_unit_float(image, source)
        if image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"restore_quantized takes RGB (H, W, 3), got {image.shape}", path=source)
        H, W = image.shape[:2]
        ts = self.tile_settings(o)
        max_value = {8: 255.0, 16: 65535.0}[bit_depth]
        if min(H, W) < MIN_SIDE or not ts.tile or (H <= ts.tile and W <= ts.tile):
            return np.rint(self.restore(image, o, source=source) * max_value).astype(np.uint8 if bit_depth == 8 else np.uint16)
        device = self.device if o.device is None else resolve_device(o.device)
        if device != self.device:
            self.model.to(device)
        fn = self._forward(o, device)
        s = self.scale
        out = np.empty((H * s, W * s, 3), np.uint8 if bit_depth == 8 else np.uint16)

        class _QuantizingWriter:
            def write(self, slices, band: torch.Tensor) -> None:  # band (3, rows, W*s) float32
                rows = band.clamp(0, 1).mul_(max_value).round_().permute(1, 2, 0).numpy()
                out[slices[0], slices[1]] = rows

        reader = ArrayReader(np.moveaxis(image, -1, 0), pad_mode="reflect")  # (3, H, W) view, tiles copied
        with torch.inference_mode():
            tiled_inference_stream(reader, _QuantizingWriter(), fn, ts.tile, ts.overlap, scale=s,
                                   tile_batch=o.tile_batch, blend=o.blend, margin=ts.margin,
                                   multiple_of=ts.multiple_of, align=ts.align, out_dtype=torch.float32,
                                   device=device, progress=o.progress)
        return out

    def restore(self, image: np.ndarray, options: PredictOptions | None = None, *,
                source: str | os.PathLike | None = None) -> np.ndarray:
        """``(H, W, C)`` (or ``(H, W)``) float in [0, 1], C = 1..4 -> ``(H*s, W*s, C)`` float32 in [0, 1].

        Integer arrays (uint8 / uint16) are scaled to [0, 1] first. See the module docstring for
        gray and alpha.
        """
        return self.restore_batch([image], options, sources=[source])[0]

    def restore_batch(self, images: Sequence[np.ndarray], options: PredictOptions | None = None, *,
                      sources: Sequence[str | os.PathLike | None] | None = None) -> list[np.ndarray]:
        """:meth:`restore` for several images of the same shape in one forward (tiled together)."""
        if not images:
            return []
        sources = list(sources) if sources is not None else [None] * len(images)
        arrays = [_as_unit_float(im, src) for im, src in zip(images, sources)]
        shape = arrays[0].shape
        if any(a.shape != shape for a in arrays):
            raise InputError(f"restore_batch needs images of one shape, got {sorted({a.shape for a in arrays})}")
        squeeze = len(shape) == 2
        if squeeze:
            arrays = [a[:, :, None] for a in arrays]
        H, W, C = arrays[0].shape
        if min(H, W) < MIN_SIDE:
            raise InputError(f"image is {W}x{H} pixels; at least {MIN_SIDE}x{MIN_SIDE} needed", path=sources[0])
        stack = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, C, H, W)
        ncol = 3 if C >= 3 else 1
        colour = stack[:, :ncol]
        if ncol == 1:
            colour = colour.expand(-1, 3, -1, -1)
        y = self.restore_tensor(colour.contiguous(), options, source=sources[0])
        if ncol == 1:
            y = y.mean(1, keepdim=True)
        if C in (2, 4):
            alpha = stack[:, C - 1:]
            if self.scale > 1:
                alpha = F.interpolate(alpha, scale_factor=self.scale, mode="bicubic", align_corners=False).clamp_(0, 1)
            y = torch.cat([y, alpha], 1)
        out = [t.permute(1, 2, 0).numpy() for t in y]  # (H, W, C) views of the canvas: no copy of a large output
        return [o[:, :, 0] for o in out] if squeeze else out


def _as_unit_float(image: np.ndarray, source=None) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255
    elif a.dtype == np.uint16:
        a = a.astype(np.float32) / 65535
    elif not np.issubdtype(a.dtype, np.floating):
        raise InputError(f"expected a float image in [0, 1] (or uint8/uint16), got dtype {a.dtype}", path=source)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 2, 3, 4)):
        raise InputError(f"expected an image (H, W) or (H, W, C) with C in 1..4, got shape {a.shape}", path=source)
    if not np.isfinite(a).all():
        raise InputError("image contains NaN or inf values", path=source)
    return np.clip(a, 0, 1).astype(np.float32, copy=False)


def load_restorer(path: str | os.PathLike | None = None, **kwargs: Any) -> Restorer:
    """:meth:`Restorer.load` (``None``: the bundled model of ``task``, default ``sr``)."""
    return Restorer.load(path, **kwargs)


# ---------------------------------------------------------------------------------------------
# folders


BIT_DEPTHS = ("same", 8, 16, 32)


class _Grouped:
    """The per-file function for :func:`run_batch` with ``batch_size > 1``: on a file that is not cached yet
    it reads the following files of this rank's shard (``index + k * world_size``, the order run_batch
    processes them in) while they have the same shape, restores them in one call and keeps their outputs
    until run_batch asks for them. A file that cannot be read ends the group; it fails on its own turn."""

    def __init__(self, restorer: Restorer, options: PredictOptions, srcs: list[Path], dsts: list[Path],
                 skip_existing: bool, write: Callable[[Path, np.ndarray, Any], dict]):
        self.r, self.o, self.write = restorer, options, write
        self.index = {s: i for i, s in enumerate(srcs)}
        self.srcs, self.dsts, self.skip_existing = srcs, dsts, skip_existing
        self.cache: dict[Path, tuple[np.ndarray, Any]] = {}

    def __call__(self, src: Path, dst: Path) -> dict:
        from vitsuite.core.distributed import dist_info
        from vitsuite.core.imageio import read_image

        src = Path(src).absolute()
        if src in self.cache:
            out, info = self.cache.pop(src)
            return self.write(dst, out, info)
        self.cache.clear()  # anything left over belongs to files run_batch will not ask for again
        img, info = read_image(src)
        group, infos, paths = [img], [info], [src]
        world = max(1, dist_info().world_size)
        i = self.index.get(src)
        j = i + world if i is not None else len(self.srcs)
        while len(group) < self.o.batch_size and j < len(self.srcs):
            if self.skip_existing and self.dsts[j].exists():  # run_batch will skip it
                j += world
                continue
            try:
                nxt, ninfo = read_image(self.srcs[j])
            except UserError:
                break
            if nxt.shape != img.shape:
                break
            group.append(nxt)
            infos.append(ninfo)
            paths.append(self.srcs[j])
            j += world
        outs = self.r.restore_batch(group, self.o, sources=paths)
        for p, o, inf in zip(paths[1:], outs[1:], infos[1:]):
            self.cache[p] = (o, inf)
        return self.write(dst, outs[0], info)


def predict_paths(restorer: Restorer, inputs: str | os.PathLike | Sequence[str | os.PathLike],
                  output_dir: str | os.PathLike, options: PredictOptions | None = None, *, ext: str | None = None,
                  bit_depth: int | str = "same", suffix: str = "", skip_existing: bool = False, overwrite: bool = True,
                  recursive: bool = False, drop_alpha: bool = False, progress: bool = True, debug: bool = False):
    """Restore every image of ``inputs`` (folder, glob, file, ``@list.txt`` or a list of paths) into ``output_dir``.

    Outputs keep the input names (plus ``suffix``) and sub-folders, the extension of the input unless
    ``ext`` is given, and the input's bit depth unless ``bit_depth`` is 8 / 16 / 32 (each format stores
    what it can: PNG up to 16, TIFF 32-bit float, JPEG/WebP/BMP 8). ``drop_alpha``: write images with
    alpha to formats without it (JPEG/BMP) by discarding the alpha channel. Runs through
    :func:`vitsuite.core.batch.run_batch`: sharded over torchrun ranks, atomic outputs, never into the
    input folder, unreadable files recorded (one line each) and listed at the end, ``summary.json``,
    a progress bar over files. ``options.batch_size > 1`` restores runs of consecutive same-size
    images in one forward. Returns the :class:`~vitsuite.core.batch.BatchResult`.
    """
    from vitsuite.core.batch import list_inputs, output_path_for, run_batch
    from vitsuite.core.imageio import IMAGE_EXTS, read_image, write_image

    o = options or PredictOptions()
    if bit_depth not in BIT_DEPTHS:
        raise UserError(f"bit_depth={bit_depth!r} must be one of 'same', 8, 16, 32")
    if ext is not None:
        ext = ext if ext.startswith(".") else f".{ext}"
        if ext.lower() not in IMAGE_EXTS:
            raise UserError(f"output extension {ext!r} is not an image format ({', '.join(IMAGE_EXTS)})")
    if isinstance(inputs, (str, os.PathLike)):
        files = list_inputs(inputs, IMAGE_EXTS, recursive=recursive)
    else:
        files = inputs if hasattr(inputs, "root") else list(inputs)  # an InputList keeps its root folder
        if not files:
            raise UserError("no input files to process")
    restorer.tile_settings(o)  # bad tiling options fail once, before any file

    def write(dst: Path, out: np.ndarray, info) -> dict:
        depth = info.bit_depth if bit_depth == "same" else int(bit_depth)
        write_image(dst, out, depth, drop_alpha=drop_alpha)
        stored = min(depth, {".png": 16, ".tif": 32, ".tiff": 32}.get(dst.suffix.lower(), 8))
        return {"input": [info.height, info.width, info.channels], "output": list(out.shape[:2]),
                "mode": info.mode, "bit_depth": stored}

    if o.batch_size > 1:
        root = Path(getattr(files, "root", None) or os.path.commonpath([str(Path(p).absolute().parent) for p in files]))
        srcs = [Path(p).absolute() for p in files]
        dsts = [output_path_for(s, root, output_dir, suffix, ext) for s in srcs]
        process: Callable[[Path, Path], dict] = _Grouped(restorer, o, srcs, dsts, skip_existing, write)
    else:
        def process(src: Path, dst: Path) -> dict:
            img, info = read_image(src)
            depth = info.bit_depth if bit_depth == "same" else int(bit_depth)
            stored = min(depth, {".png": 16, ".tif": 32, ".tiff": 32}.get(dst.suffix.lower(), 8))
            if info.channels == 3 and stored in (8, 16):  # RGB: stream the tiles into integer samples
                return write(dst, restorer.restore_quantized(img, stored, o, source=src), info)
            return write(dst, restorer.restore(img, o, source=src), info)

    return run_batch(files, output_dir, process, suffix=suffix, ext=ext, skip_existing=skip_existing,
                     overwrite=overwrite, progress=progress, debug=debug)


# ---------------------------------------------------------------------------------------------
# export


class _Exportable(nn.Module):
    """``(1, 3, tile, tile)`` in [0, 1] -> clipped restored image: the graph exporters trace."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).clamp(0, 1)


def export_restorer(restorer: Restorer, path: str | os.PathLike, tile: int | None = None, *, verify: bool = True,
                    format: str | None = None, atol: float = 1e-4) -> dict[str, Any]:
    """Export ``restorer.model`` for a fixed ``(1, 3, tile, tile)`` input (default: the model's tile size).

    ``.onnx`` -> ONNX (opset 18), anything else (``.pt``, ``.ts``) -> TorchScript trace; ``format``
    (``onnx`` | ``torchscript``) overrides the suffix. When the ONNX exporter cannot express the model
    the TorchScript archive is written instead, to ``<path>.pt``, and the result says so
    (``fallback``). With ``verify`` the exported program is run (onnxruntime / ``torch.jit.load``) and
    compared with eager PyTorch (``max_abs_diff``; beyond ``atol`` raises ``AssertionError``). Tiling is
    not part of the graph: run it around the exported model with the tile / overlap / align in the
    sidecar ``<path>.json`` (meta + export info).
    """
    from vitsuite.core.export import export_model, verify_export
    from vitsuite.core.fileio import atomic_write_text

    path = Path(path)
    fmt = format or ("onnx" if path.suffix.lower() == ".onnx" else "torchscript")
    ts = restorer.tile_settings(PredictOptions(tile=tile) if tile else None)
    size = tile or ts.tile
    if not size or size < MIN_SIDE:
        raise UserError(f"export needs a tile size >= {MIN_SIDE}, got {size}")
    model = _Exportable(restorer.model.eval().cpu()).eval()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    fallback = None
    try:
        export_model(model, x, path, format=fmt, input_names=["image"], output_names=["restored"])
    except Exception as exc:  # the ONNX exporter raises many types for an op it cannot express
        if fmt != "onnx":
            raise
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        fallback = f"ONNX export failed ({type(exc).__name__}: {reason}); wrote TorchScript instead"
        warnings.warn(fallback)
        fmt, path = "torchscript", path.with_suffix(".pt")
        export_model(model, x, path, format="torchscript")
    diff = verify_export(path, model, x, atol=atol, rtol=atol) if verify else None
    meta = {k: v for k, v in restorer.meta.items() if k != "train"}
    meta["export"] = {"format": fmt, "input": [1, 3, size, size],
                      "output": [1, 3, size * restorer.scale, size * restorer.scale], "max_abs_diff": diff,
                      "fallback": fallback, "tiling": asdict(replace(ts, tile=size))}
    side = path.with_name(path.name + ".json")
    atomic_write_text(side, json.dumps(meta, indent=2, default=str) + "\n")
    return {"path": str(path), "meta": str(side), "format": fmt, "max_abs_diff": diff, "fallback": fallback}
