"""Training a restoration model with :class:`vitsuite.core.train.Trainer` (plain process or ``torchrun``).

``run_training(cfg)`` builds the training set (paired LQ/GT folders, or ground-truth images degraded
on the fly: bicubic downsampling for SR, synthetic rain for deraining; ``"skimage"`` names the real
photographs that ship with scikit-image), builds the registered model, trains it with an L1 (or
Charbonnier) loss, Adam, a warmup + cosine or step schedule and an optional EMA, validates PSNR /
SSIM (Y channel, ``crop_border = scale``) every ``val_every`` steps, keeps the best checkpoint, and
on rank 0 writes ``restorer.pt`` (:class:`~.predict.Restorer`: weights + model name + sizes + scale
+ the validation scores next to the bicubic / identity baseline).

The papers' recipe (HAT/DRCT: Adam 2e-4, batch 32 of 64 px LQ patches, 500k iterations, step
decay; DRSformer: AdamW 3e-4, progressive patches, 300k iterations) is far beyond a 2-core CPU; the
configs in ``configs/restoration/`` are the same recipe at demo size.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from vitsuite.core.config import Config, config_to_dict
from vitsuite.core.errors import ConfigError
from vitsuite.core.train import TrainConfig, Trainer, TrainSectionBase

from .data import (SKIMAGE, SKIMAGE_HOLDOUT, SKIMAGE_TRAIN, PairedImageDataset, SyntheticPairDataset, pair_by_stem,
                   skimage_images)
from .evaluate import baseline
from .metrics import psnr, ssim
from .predict import Restorer



class DataSection(Config):
    """The ``data`` section: what to train and validate on."""

    task: Literal["sr", "derain"] = "sr"
    scale: int = 2  # SR factor (1 for deraining)
    train_gt: str = SKIMAGE  # folder of ground-truth images, or "skimage"
    train_lq: str | None = None  # folder of matching low-quality images (paired data); None: degrade train_gt
    val_gt: str | None = SKIMAGE  # "skimage" = the held-out photographs; None: no validation
    val_lq: str | None = None
    lq_suffix: str = ""  # stripped from LQ stems before pairing (e.g. "x2" for DIV2K's 0001x2.png)
    patch_size: int = 64  # ground-truth patch side (LQ patch = patch_size / scale)
    patches_per_epoch: int = 800  # random patches drawn per epoch from the (few) training images
    augment: bool = True  # random flips / 90-degree rotations (albumentations D4)
    val_crop: int | None = 192  # centre-crop validation GT images to this side (None: whole images)
    rain: dict[str, Any] = Field(default_factory=dict)  # add_rain keyword overrides (deraining)
    seed: int = 0


class ModelSection(Config):
    """The ``model`` section: a registered restoration model and constructor overrides."""

    name: str = "hat"
    kwargs: dict[str, Any] = Field(default_factory=dict)  # e.g. embed_dim, depths, num_heads, window_size


class TrainSection(TrainSectionBase):
    """The ``train`` section (mapped onto :class:`vitsuite.core.train.TrainConfig`); shared knobs in the base."""

    max_steps: int = 1000
    batch_size: int = 8  # per rank
    lr: float = 2e-4
    optimizer: Literal["adam", "adamw"] = "adam"
    betas: tuple[float, float] = (0.9, 0.99)
    scheduler: Literal["cosine", "step", "constant"] = "cosine"
    milestones: list[int] = Field(default_factory=list)  # step schedule: LR x gamma at these steps
    gamma: float = 0.5
    min_lr: float = 1e-7
    loss: Literal["l1", "charbonnier"] = "l1"
    charbonnier_eps: float = 1e-3
    ema_decay: float = 0.999
    val_every: int = 200
    log_every: int = 20
    ckpt_every: int = 200
    output_dir: str = "runs/restoration"


class EvalSection(Config):
    """How validation scores: the papers' convention by default (Y channel, ``crop_border = scale``)."""

    y_channel: bool = True
    crop_border: int | None = None  # None: the scale (SR) / 0 (deraining)


class RestorationConfig(Config):
    """The whole training configuration (presets in ``configs/restoration/``)."""

    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)


# ------------------------------------------------------------------------------------------ pieces


def crop_border_for(cfg: RestorationConfig) -> int:
    """The evaluation border: ``eval.crop_border`` or the SR scale (0 for deraining)."""
    if cfg.eval.crop_border is not None:
        return cfg.eval.crop_border
    return cfg.data.scale if cfg.data.task == "sr" else 0


def _images(source: str, names: tuple[str, ...]) -> list:
    """``"skimage"`` -> the named bundled photographs as arrays; otherwise a folder (paths)."""
    if source == SKIMAGE:
        return list(skimage_images(list(names)).values())
    from vitsuite.core.batch import list_inputs
    from vitsuite.core.imageio import IMAGE_EXTS

    return list(list_inputs(source, IMAGE_EXTS))


def build_datasets(cfg: RestorationConfig) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset | None]:
    """Training patches and whole (centre-cropped) validation pairs from the ``data`` section."""
    d = cfg.data
    scale = d.scale if d.task == "sr" else 1
    if d.task == "derain" and d.scale not in (1, None):
        raise ConfigError(f"data.scale: deraining keeps the size (scale 1), got {d.scale}")
    if d.train_lq:
        train = PairedImageDataset(pair_by_stem(d.train_lq, d.train_gt, d.lq_suffix), scale, d.patch_size,
                                   augment=d.augment, rng_seed=d.seed)
    else:
        train = SyntheticPairDataset(_images(d.train_gt, SKIMAGE_TRAIN), d.task, scale, d.patch_size,
                                     augment=d.augment, length=d.patches_per_epoch, rng_seed=d.seed, rain=d.rain)
    val = None
    if d.val_gt:
        if d.val_lq:
            val = PairedImageDataset(pair_by_stem(d.val_lq, d.val_gt, d.lq_suffix), scale, None, rng_seed=d.seed + 1)
        else:
            gts = _images(d.val_gt, SKIMAGE_HOLDOUT)
            if d.val_crop:
                gts = [_centre_crop(g, d.val_crop, scale) if not isinstance(g, (str, os.PathLike)) else g for g in gts]
            val = SyntheticPairDataset(gts, d.task, scale, None, rng_seed=d.seed + 1, rain=d.rain)
    return train, val


def _centre_crop(image, side: int, scale: int):
    """Centre ``side x side`` crop (rounded down to a multiple of ``scale``) of an ``(H, W, C)`` array."""
    side = side - side % scale
    H, W = image.shape[:2]
    top, left = max((H - side) // 2, 0), max((W - side) // 2, 0)
    return image[top:top + side, left:left + side]


def build_restoration_model(cfg: RestorationConfig) -> nn.Module:
    """The registered model of ``cfg.model`` (``upscale`` = ``data.scale`` for SR models)."""
    from vitsuite.core.registry import build_model, get_model_spec

    spec = get_model_spec(cfg.model.name)
    if spec.field != "restoration":
        raise ConfigError(f"model.name: '{cfg.model.name}' is a {spec.field} model, not a restoration model")
    kwargs = dict(cfg.model.kwargs)
    if cfg.data.task == "sr":
        kwargs.setdefault("upscale", cfg.data.scale)
    try:
        model = build_model(cfg.model.name, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"model: cannot build '{cfg.model.name}': {exc}") from None
    if int(getattr(model, "upscale", 1)) != (cfg.data.scale if cfg.data.task == "sr" else 1):
        raise ConfigError(f"model '{cfg.model.name}' upsamples x{getattr(model, 'upscale', 1)} but data.task is "
                          f"{cfg.data.task} with scale {cfg.data.scale}")
    return model


class PixelLoss:
    """``loss_fn(model, batch)``: L1, or Charbonnier ``mean(sqrt((y - gt)^2 + eps^2))`` (DRSformer/MPRNet)."""

    def __init__(self, kind: str = "l1", eps: float = 1e-3):
        self.kind, self.eps = kind, eps

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        pred = model(batch["lq"])
        if self.kind == "charbonnier":
            return torch.sqrt((pred - batch["gt"]).pow(2) + self.eps**2).mean()
        return F.l1_loss(pred, batch["gt"])


def validation_fn(val: torch.utils.data.Dataset, scale: int, crop_border: int, y_channel: bool):
    """``val_fn(model) -> {"psnr", "ssim", "baseline_psnr", "baseline_ssim"}`` (means over the pairs)."""
    baseline_scores: dict[str, float] = {}

    def val_fn(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        ps, ss, bp, bs = [], [], [], []
        for i in range(len(val)):
            item = val[i]
            lq, gt = item["lq"][None].to(device), item["gt"][None].to(device)
            pred = model(lq).clamp(0, 1)
            ps.append(float(psnr(pred, gt, crop_border, y_channel)[0]))
            ss.append(float(ssim(pred, gt, crop_border, y_channel)[0]))
            if not baseline_scores:
                b = baseline(lq, scale)
                bp.append(float(psnr(b, gt, crop_border, y_channel)[0]))
                bs.append(float(ssim(b, gt, crop_border, y_channel)[0]))
        if not baseline_scores:
            baseline_scores.update(baseline_psnr=sum(bp) / len(bp), baseline_ssim=sum(bs) / len(bs))
        return {"psnr": sum(ps) / len(ps), "ssim": sum(ss) / len(ss), **baseline_scores}

    return val_fn


def trainer_config(t: TrainSection, has_val: bool) -> TrainConfig:
    """Map the ``train`` section onto the core trainer's config (best checkpoint by validation PSNR)."""
    return TrainConfig(
        max_steps=t.max_steps, batch_size=t.batch_size, lr=t.lr, optimizer=t.optimizer, weight_decay=t.weight_decay,
        betas=tuple(t.betas), scheduler=t.scheduler, milestones=tuple(t.milestones), gamma=t.gamma,
        warmup_steps=t.warmup_steps, min_lr=t.min_lr, grad_clip=t.grad_clip, amp=t.amp, ema_decay=t.ema_decay,
        val_every=t.val_every, log_every=t.log_every, ckpt_every=t.ckpt_every, seed=t.seed,
        num_workers=t.num_workers, output_dir=t.output_dir, resume=t.resume, device=t.device,
        best_metric="psnr" if has_val else "loss", best_mode="max" if has_val else "min", progress=t.progress)


def run_training(cfg: RestorationConfig, *, save: str | os.PathLike | None = None,
                 echo: bool = True) -> dict[str, Any]:
    """Train, keep the best-validation weights (EMA when enabled), write ``restorer.pt``.

    Returns the trainer's summary plus ``restorer`` (path) and ``val`` (the final validation
    scores of the kept weights) on rank 0; other ranks return the trainer summary only. ``save``
    also copies ``restorer.pt`` there.
    """
    train, val = build_datasets(cfg)
    model = build_restoration_model(cfg)
    scale = cfg.data.scale if cfg.data.task == "sr" else 1
    border = crop_border_for(cfg)
    tcfg = trainer_config(cfg.train, val is not None)
    val_fn = validation_fn(val, scale, border, cfg.eval.y_channel) if val is not None else None
    trainer = Trainer(model, train, PixelLoss(cfg.train.loss, cfg.train.charbonnier_eps), tcfg, val_fn=val_fn)
    summary = trainer.fit()
    if int(os.environ.get("RANK", "0")) != 0:
        return summary
    net = trainer.best_model()
    out = Path(tcfg.output_dir)
    scores = None
    if val_fn is not None:
        with torch.no_grad():
            scores = val_fn(net)
    kwargs = dict(cfg.model.kwargs)
    if cfg.data.task == "sr":
        kwargs.setdefault("upscale", scale)
    info = {"config": config_to_dict(cfg), "steps": summary.get("step"), "val": scores,
            "val_convention": {"y_channel": cfg.eval.y_channel, "crop_border": border, "crop": cfg.data.val_crop}}
    restorer = Restorer.from_model(net.cpu(), cfg.model.name, kwargs, train=info)
    path = restorer.save(out / "restorer.pt")
    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, save)
    if echo:
        if scores:
            print(f"validation ({len(val)} images): PSNR {scores['psnr']:.2f} dB / SSIM {scores['ssim']:.4f}; "
                  f"{'bicubic' if scale > 1 else 'input'}: {scores['baseline_psnr']:.2f} dB / {scores['baseline_ssim']:.4f}")
        print(f"restorer: {path}" + (f" (copied to {save})" if save else ""))
    return {**summary, "restorer": str(path), "val": scores}
