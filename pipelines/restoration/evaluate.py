"""Scoring a restorer the way the papers' tables do: PSNR / SSIM on the Y channel of YCbCr.

Convention (SwinIR / HAT / DRCT tables, BasicSR's test scripts; DRSformer's deraining tables also
report Y): outputs and references are quantised to 8 bits, converted to the BT.601 luma
``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` (R, G, B in [0, 1]), ``crop_border`` pixels are
removed on every side (``crop_border = scale`` for SR, 0 for deraining), then PSNR with peak 255
and SSIM (Gaussian 11x11, sigma 1.5) are computed per image and averaged (:mod:`.metrics`).
``y_channel=False`` scores RGB instead. Every run also scores the baseline the model must beat
(bicubic upsampling for SR, the degraded input for deraining) on the same pairs.

Pairs come from paired folders (LQ and GT matched by file stem) or from ground-truth images only,
degraded the same way as in training (bicubic downsampling / synthetic rain, fixed seed).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from vitsuite.core.errors import InputError
from vitsuite.core.fileio import atomic_write_text

from .data import SKIMAGE, SKIMAGE_HOLDOUT, SyntheticPairDataset, pair_by_stem, read_rgb, skimage_images
from .metrics import psnr, ssim
from .predict import PredictOptions, Restorer



def paired_folder(lq_dir: str | os.PathLike, gt_dir: str | os.PathLike, lq_suffix: str = "") -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, lq (h, w, 3), gt (H, W, 3))`` float32 RGB for files matched by stem."""
    for lq, gt in pair_by_stem(lq_dir, gt_dir, lq_suffix):
        yield gt.stem, read_rgb(lq), read_rgb(gt)


def synthetic_pairs(gt_source: str | os.PathLike, task: str, scale: int, *, seed: int = 1,
                    rain: dict[str, Any] | None = None) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Ground-truth images (a folder, or ``"skimage"``: the held-out photographs) degraded as in
    training: GT mod-cropped to the scale and bicubic-downsampled (SR), or rain added (deraining)."""
    if os.fspath(gt_source) == SKIMAGE:
        named = skimage_images(list(SKIMAGE_HOLDOUT))
        names, images = list(named), list(named.values())
    else:
        from vitsuite.core.batch import list_inputs
        from vitsuite.core.imageio import IMAGE_EXTS

        paths = list(list_inputs(gt_source, IMAGE_EXTS))
        names, images = [p.stem for p in paths], paths
    ds = SyntheticPairDataset(images, task, scale if task == "sr" else 1, None, rng_seed=seed, rain=rain)
    for i, name in enumerate(names):
        item = ds[i]
        yield name, item["lq"].permute(1, 2, 0).numpy(), item["gt"].permute(1, 2, 0).numpy()


def baseline(lq: torch.Tensor, scale: int) -> torch.Tensor:
    """What a model must beat: ``(B, 3, h, w)`` -> bicubic upsampling by ``scale`` (torch's bicubic,
    a = -0.75, clamped; SR) or the degraded input itself (``scale`` 1, deraining)."""
    if scale == 1:
        return lq
    return torch.nn.functional.interpolate(lq, scale_factor=scale, mode="bicubic", align_corners=False).clamp_(0, 1)


def evaluate_pairs(restorer: Restorer, pairs: Iterator[tuple[str, np.ndarray, np.ndarray]],
                   options: PredictOptions | None = None, *, crop_border: int | None = None,
                   y_channel: bool = True) -> dict[str, Any]:
    """Score ``restorer`` and the baseline on ``pairs``; returns ``{"rows": [...], "mean": {...}, ...}``.

    Each row: ``name``, ``psnr``, ``ssim``, ``baseline_psnr``, ``baseline_ssim`` (dB / [0, 1]).
    ``crop_border`` defaults to the restorer's scale (SR) or 0 (deraining).
    """
    scale = restorer.scale
    border = crop_border if crop_border is not None else (scale if restorer.task == "sr" else 0)
    rows = []
    for name, lq, gt in pairs:
        if lq.shape[0] * scale != gt.shape[0] or lq.shape[1] * scale != gt.shape[1]:
            raise InputError(f"{name}: LQ {lq.shape[1]}x{lq.shape[0]} x{scale} does not give the GT size "
                             f"{gt.shape[1]}x{gt.shape[0]}")
        out = restorer.restore(lq, options, source=name)
        to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float()  # noqa: E731
        pred, ref, low = to_t(out), to_t(gt), to_t(lq)
        base = baseline(low, scale)
        rows.append({"name": name,
                     "psnr": float(psnr(pred, ref, border, y_channel)[0]),
                     "ssim": float(ssim(pred, ref, border, y_channel)[0]),
                     "baseline_psnr": float(psnr(base, ref, border, y_channel)[0]),
                     "baseline_ssim": float(ssim(base, ref, border, y_channel)[0])})
    if not rows:
        raise InputError("no image pairs to evaluate")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "baseline_psnr", "baseline_ssim")}
    return {"model": restorer.describe(), "task": restorer.task, "scale": scale, "rows": rows, "mean": mean,
            "convention": {"y_channel": y_channel, "crop_border": border, "quantized_8bit": True,
                           "self_ensemble": bool(options and options.self_ensemble)},
            "baseline": "bicubic" if scale > 1 else "input"}


def format_report(report: dict[str, Any]) -> str:
    """A small fixed-width table: one row per image and the mean."""
    base = report["baseline"]
    conv = report["convention"]
    head = (f"{report['model']}: {'Y' if conv['y_channel'] else 'RGB'} PSNR/SSIM, crop_border {conv['crop_border']}"
            + (", x8 self-ensemble" if conv["self_ensemble"] else ""))
    lines = [head, f"{'image':<24}{'PSNR':>9}{'SSIM':>9}{base + ' PSNR':>16}{base + ' SSIM':>16}"]
    for r in report["rows"] + [{"name": "mean", **report["mean"]}]:
        lines.append(f"{r['name'][:23]:<24}{r['psnr']:>9.2f}{r['ssim']:>9.4f}{r['baseline_psnr']:>16.2f}"
                     f"{r['baseline_ssim']:>16.4f}")
    return "\n".join(lines)


def write_report(report: dict[str, Any], output_dir: str | os.PathLike) -> dict[str, Path]:
    """``metrics.csv`` (per image + mean) and ``metrics.json`` in ``output_dir``, written atomically."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["name", "psnr", "ssim", "baseline_psnr", "baseline_ssim"])
    w.writeheader()
    for r in report["rows"] + [{"name": "mean", **report["mean"]}]:
        w.writerow(r)
    paths = {"csv": atomic_write_text(out / "metrics.csv", buf.getvalue()),
             "json": atomic_write_text(out / "metrics.json", json.dumps(report, indent=2))}
    return paths


def evaluate(restorer: Restorer, *, lq: str | None = None, gt: str = SKIMAGE, lq_suffix: str = "",
             options: PredictOptions | None = None, crop_border: int | None = None, y_channel: bool = True,
             seed: int = 1, rain: dict[str, Any] | None = None) -> dict[str, Any]:
    """Paired folders when ``lq`` is given, else ground-truth images (``gt``, default the held-out
    scikit-image photographs) degraded for the restorer's task. See :func:`evaluate_pairs`."""
    pairs = (paired_folder(lq, gt, lq_suffix) if lq else
             synthetic_pairs(gt, restorer.task, restorer.scale, seed=seed, rain=rain))
    return evaluate_pairs(restorer, pairs, options, crop_border=crop_border, y_channel=y_channel)


__all__: Sequence[str] = ["baseline", "evaluate", "evaluate_pairs", "paired_folder", "synthetic_pairs", "format_report",
                          "write_report"]
