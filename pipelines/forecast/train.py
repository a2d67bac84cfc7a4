"""Training a forecaster with :class:`vitsuite.core.train.Trainer` (plain process or ``torchrun``).

``run_training(cfg)`` reads the data (:mod:`.data`), builds the model from the registry, trains
on the training windows with the MSE loss on the target variates, validates once per epoch (MSE on
the validation windows, normalised scale), then -- on rank 0 -- reloads the best-validation weights,
scores them and the baselines on the test windows (:mod:`.evaluate`) and writes
``forecaster.pt`` (:class:`~.predict.Forecaster`) and the metrics into ``train.output_dir``.

The authors' recipe (``run.py``): Adam, lr 1e-4 halved after every epoch (``lradj='type1'``),
batch 32, 10 epochs with early stopping (patience 3) on the validation MSE. Here ``lradj: type1``
becomes a step schedule with a milestone at every epoch boundary and ``gamma`` 0.5; instead of
stopping early, every epoch is run and the best-validation checkpoint is kept, which is the model
early stopping would have restored.
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

from .data import DataConfig, Prepared, _already_batched, load_series, prepare
from .evaluate import EvalConfig, evaluate, format_table, model_forward, write_report
from .predict import Forecaster


class ModelConfig(Config):
    """The ``model`` section: a registered forecasting model and overrides of its preset sizes."""

    name: str = "itransformer"  # itransformer (ECL/Weather sizes), itransformer_etth1, itransformer_etth1_long, ...
    d_model: int | None = None  # None keeps the named preset's value
    n_heads: int | None = None
    e_layers: int | None = None
    d_ff: int | None = None
    dropout: float | None = None
    activation: str | None = None
    use_norm: bool | None = None


class TrainSection(TrainSectionBase):
    """The ``train`` section (mapped onto :class:`vitsuite.core.train.TrainConfig`); shared knobs in the base."""

    epochs: int = 10
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 32  # per rank
    lr: float = 1e-4
    optimizer: Literal["adam", "adamw"] = "adam"
    lradj: Literal["type1", "cosine", "constant"] = "type1"  # type1: halve the LR after every epoch (authors)
    val_every: int | None = None  # steps; None: once per epoch
    seed: int = 2023
    output_dir: str = "runs/forecast"


class ForecastConfig(Config):
    """The whole pipeline configuration: ``data``, ``model``, ``train``, ``eval`` (presets in configs/forecast/)."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalConfig = Field(default_factory=EvalConfig)


def model_kwargs(cfg: ForecastConfig) -> dict[str, Any]:
    """Constructor overrides for ``build_model(cfg.model.name, ...)``: window sizes plus the set sizes."""
    kw = {k: v for k, v in cfg.model.model_dump().items() if k != "name" and v is not None}
    return {"seq_len": cfg.data.seq_len, "pred_len": cfg.data.pred_len, **kw}


def build_forecast_model(cfg: ForecastConfig) -> nn.Module:
    """The model named in ``cfg.model`` (a :mod:`vitsuite.models` registry name) at the configured sizes."""
    from vitsuite.core.registry import build_model, get_model_spec

    spec = get_model_spec(cfg.model.name)
    if spec.field != "forecast":
        raise ConfigError(f"model.name: '{cfg.model.name}' is a {spec.field} model, not a forecasting model")
    try:
        return build_model(cfg.model.name, **model_kwargs(cfg))
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"model: cannot build '{cfg.model.name}': {exc}") from None


def trainer_config(t: TrainSection, steps_per_epoch: int) -> TrainConfig:
    """Map the ``train`` section onto the core trainer's config (epochs -> steps, type1 -> milestones)."""
    max_steps = t.max_steps or t.epochs * steps_per_epoch
    milestones: tuple[int, ...] = ()
    scheduler = {"type1": "step", "cosine": "cosine", "constant": "constant"}[t.lradj]
    if t.lradj == "type1":
        milestones = tuple(range(steps_per_epoch, max_steps, steps_per_epoch))
    return TrainConfig(
        max_steps=max_steps, batch_size=t.batch_size, lr=t.lr, optimizer=t.optimizer, weight_decay=t.weight_decay,
        scheduler=scheduler, milestones=milestones, gamma=0.5, warmup_steps=t.warmup_steps, grad_clip=t.grad_clip,
        amp=t.amp, ema_decay=t.ema_decay, val_every=t.val_every or min(steps_per_epoch, max_steps),
        log_every=t.log_every, seed=t.seed, num_workers=t.num_workers, output_dir=t.output_dir, resume=t.resume,
        device=t.device, best_metric="loss", best_mode="min", progress=t.progress)


class TargetMSE:
    """The loss: MSE between the forecast of the target variates and the truth (normalised scale)."""

    def __init__(self, targets: list[int], n_vars: int):
        self.idx = None if targets == list(range(n_vars)) else torch.as_tensor(targets)

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        pred = model(batch["x"], batch.get("x_mark"))
        if self.idx is not None:
            pred = pred[..., self.idx.to(pred.device)]
        return F.mse_loss(pred, batch["y"])


def validation_fn(prep: Prepared, batch_size: int = 256):
    """``val_fn(model) -> {"loss": MSE, "mae": MAE}`` over every validation window (targets, normalised)."""
    ds = prep.dataset("val")
    idx = torch.as_tensor(prep.targets)

    def val_fn(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        se = ae = count = 0.0
        for batch in ds.batches(batch_size):
            err = model_forward(model, batch, device)[..., idx.to(device)] - batch["y"].to(device)
            se += float((err**2).sum())
            ae += float(err.abs().sum())
            count += err.numel()
        return {"loss": se / count, "mae": ae / count}

    return val_fn


def forecaster_meta(cfg: ForecastConfig, prep: Prepared) -> dict[str, Any]:
    """What a :class:`~.predict.Forecaster` stores beside the weights."""
    return {"model_name": cfg.model.name, "model_kwargs": model_kwargs(cfg), "seq_len": cfg.data.seq_len,
            "pred_len": cfg.data.pred_len, "columns": list(prep.series.columns), "targets": prep.target_names,
            **prep.scaler.to_meta(), "freq": prep.series.freq, "timestamp": prep.series.timestamp_name,
            "data": config_to_dict(cfg.data), "trained_on": prep.series.source,
            "config": config_to_dict(cfg)}


def run_training(cfg: ForecastConfig, *, save: str | os.PathLike | None = None, echo: bool = True) -> dict[str, Any]:
    """Train, keep the best-validation weights, evaluate on the test part, write the forecaster.

    Returns the trainer's summary plus ``forecaster`` (path) and ``report`` (the test evaluation)
    on rank 0; other ranks return the trainer summary only. ``save`` copies ``forecaster.pt`` there.
    """
    series = load_series(cfg.data)
    prep = prepare(series, cfg.data, inplace=True)
    train_ds = prep.dataset("train")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    steps_per_epoch = len(train_ds) // (cfg.train.batch_size * world)
    if steps_per_epoch < 1:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} x {world} rank(s) exceeds the "
                          f"{len(train_ds)} training windows")
    model = build_forecast_model(cfg)
    tcfg = trainer_config(cfg.train, steps_per_epoch)
    trainer = Trainer(model, train_ds, TargetMSE(prep.targets, len(series.columns)), tcfg,
                      val_fn=validation_fn(prep, cfg.eval.batch_size), collate_fn=_already_batched)
    summary = trainer.fit()
    if int(os.environ.get("RANK", "0")) != 0:
        return summary
    net = trainer.best_model()
    out = Path(tcfg.output_dir)
    report = evaluate(net, prep, cfg.eval, model_name=cfg.model.name, device=trainer.device)
    paths = write_report(report, out)
    meta = forecaster_meta(cfg, prep)
    meta["test"] = {name: {k: m[k] for k in ("mse", "mae", "mse_orig", "mae_orig")}
                    for name, m in report["models"].items()}
    meta["best"] = summary["best"]
    path = Forecaster(net, meta).save(out / "forecaster.pt")
    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, save)
    if echo:
        print(format_table(report))
        print(f"forecaster: {path}" + (f" (copied to {save})" if save else "") + f"; metrics: {paths['metrics']}")
    return {**summary, "forecaster": str(path), "report": report}
