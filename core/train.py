"""The one small training loop shared by every pipeline.

:class:`Trainer` runs a step-based loop in a plain process or under ``torchrun`` (DDP; gloo on
CPU, nccl on GPU). It owns the optimizer (Adam/AdamW, no weight decay on biases/norms), the LR
schedule (warmup + cosine/step/constant via ``LambdaLR``), gradient clipping, AMP (bf16 autocast,
fp16 + ``GradScaler`` on CUDA), an EMA copy (``torch.optim.swa_utils.AveragedModel``), validation
with best-checkpoint tracking, CSV/JSONL metric logs, a tqdm bar, and exact resume.

Exact resume: the data order of epoch ``e`` is a pure function of ``(seed, e)``
(``DistributedSampler`` also in a single process), and the checkpoint stores the position inside
the epoch, every rank's RNG state and the partial log window. A run interrupted at any step and
resumed from ``last.pt`` therefore ends with bitwise the same weights, EMA and optimizer state as
an uninterrupted one (with ``num_workers=0``; random augmentation inside worker processes is
reseeded per epoch, not per batch, so it repeats only from epoch starts).

Outputs in ``output_dir`` (written by rank 0 only, atomically): ``last.pt`` every ``ckpt_every``
steps and at the end, ``best.pt`` whenever the validation metric improves, ``metrics.jsonl`` and
``metrics.csv`` (rows with ``split`` = ``train`` or ``val``). Checkpoints hold ``model`` (the
unwrapped state dict), ``ema`` (also under ``params_ema``, which generic loaders prefer),
``optimizer``, ``scheduler``, ``scaler``, ``step``, ``best``, ``rng`` and ``config``; all of it loads
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import math
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, IterableDataset

from .checkpoint import read_checkpoint, save_checkpoint
from .config import Config
from .distributed import all_gather_objects, cleanup_distributed, init_distributed
from .errors import CheckpointError, ConfigError
from .fileio import atomic_write_text

_CHOICES = {
    "optimizer": ("adam", "adamw"),
    "scheduler": ("cosine", "step", "constant"),
    "amp": ("none", "bf16", "fp16"),
    "best_mode": ("max", "min"),
}


@dataclass
class TrainConfig:
    """Every knob of :class:`Trainer`. Steps count optimizer updates; epochs are derived."""

    max_steps: int = 1000  # length of the run and of the LR schedule
    stop_after: int = 0  # stop (and write last.pt) after this many steps; the schedule still spans max_steps; 0 = off
    batch_size: int = 32  # per rank
    lr: float = 1e-3
    weight_decay: float = 0.05  # not applied to biases / 1-d params / model.no_weight_decay()
    optimizer: str = "adamw"  # "adam" | "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: str = "cosine"  # "cosine" | "step" | "constant", after a linear warmup
    warmup_steps: int = 0
    milestones: tuple[int, ...] = ()  # "step" schedule: multiply the LR by gamma at each of these steps
    gamma: float = 0.1
    min_lr: float = 0.0  # floor of the LR after warmup (cosine decays to it)
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    amp: str = "none"  # "none" | "bf16" | "fp16" (fp16 on CUDA only)
    ema_decay: float = 0.0  # 0 = no EMA
    val_every: int = 0  # validate every N steps (and at the end); 0 = only at the end
    log_every: int = 10  # write a train row (mean over the window) every N steps
    ckpt_every: int = 0  # write last.pt every N steps (and at the end); 0 = only at the end
    seed: int = 0
    shuffle: bool = True
    num_workers: int = 0
    output_dir: str = "runs/train"
    resume: bool | str = False  # False | True (output_dir/last.pt must exist) | "auto" (if it exists) | a path
    device: str = "auto"  # "auto" = cuda:LOCAL_RANK if available else cpu
    best_metric: str = "loss"  # key of val_fn's dict tracked for best.pt
    best_mode: str = "min"  # "min" | "max"
    val_all_ranks: bool = False  # call val_fn on every rank (for distributed evaluation); rank 0's result is used
    find_unused_parameters: bool = False  # passed to DistributedDataParallel
    progress: bool = True  # tqdm bar on rank 0 (only when stderr is a TTY)

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self.milestones = tuple(int(m) for m in self.milestones)
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"train.{key}: '{getattr(self, key)}' is not one of {', '.join(allowed)}")
        if self.max_steps < 1 or self.batch_size < 1:
            raise ConfigError("train.max_steps and train.batch_size must be >= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay: {self.ema_decay} is not in [0, 1)")


class TrainSectionBase(Config):
    """The knobs every pipeline's YAML ``train`` section shares (pipelines subclass it, add their own
    fields and change defaults, then map it onto :class:`TrainConfig`)."""

    batch_size: int = 32  # per rank
    lr: float = 1e-3
    optimizer: Literal["adam", "adamw"] = "adamw"
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    ema_decay: float = 0.0  # 0 = no EMA
    amp: Literal["none", "bf16", "fp16"] = "none"
    log_every: int = 50
    seed: int = 0
    num_workers: int = 0
    output_dir: str = "runs/train"
    resume: bool | str = False  # False | True | "auto" | a checkpoint path
    device: str = "auto"
    progress: bool = True


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """LR multiplier at ``step`` (0-based): linear warmup, then cosine / step / constant, floored at ``min_lr``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0
    if cfg.scheduler == "cosine":
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.scheduler == "step":
        return max(floor, cfg.gamma ** bisect.bisect_right(cfg.milestones, step))
    return 1.0


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, NumPy and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """All global RNG states of this process as ``weights_only``-loadable values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the RNG states captured by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def to_device(batch: Any, device: torch.device) -> Any:
    """Move the tensors of a (nested dict / list / tuple) batch to ``device``."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


class MetricLog:
    """``metrics.jsonl`` (one object per row) and ``metrics.csv`` (union of all columns) in one folder.

    Rows are appended; the CSV is rewritten (atomically) only when a row brings a new column.
    ``keep_until`` (a resumed step) keeps the earlier rows up to that step and drops the rest,
    so a resumed run's logs read like an uninterrupted run's; ``None`` starts afresh.
    """

    def __init__(self, folder: str | Path, keep_until: int | None = None):
        self.jsonl, self.csv = Path(folder) / "metrics.jsonl", Path(folder) / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        if keep_until is not None and self.jsonl.is_file():
            for line in self.jsonl.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by the interruption
                    continue
                if row.get("step", 0) <= keep_until:
                    self.rows.append(row)
        self.fields: list[str] = []
        self._rewrite()

    def _csv_text(self, rows: list[dict[str, Any]], header: bool) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.fields, restval="", lineterminator="\n")
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()

    def _rewrite(self) -> None:
        self.fields = list(dict.fromkeys(k for row in self.rows for k in row))
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in self.rows))
        atomic_write_text(self.csv, self._csv_text(self.rows, header=True) if self.fields else "")

    def append(self, row: Mapping[str, Any]) -> None:
        """Add one row to both files."""
        row = dict(row)
        self.rows.append(row)
        if any(k not in self.fields for k in row):
            self._rewrite()
            return
        with open(self.jsonl, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        with open(self.csv, "a", newline="") as fh:
            fh.write(self._csv_text([row], header=False))


class Trainer:
    """Step-based training of ``model`` on ``train_dataset`` with ``loss_fn``, single-process or DDP.

    ``loss_fn(model, batch)`` gets the (DDP-wrapped when distributed) model in train mode and a
    batch already moved to the device; it returns a scalar loss or ``(loss, {name: scalar})``.
    ``val_fn(model)`` gets the unwrapped model (the EMA copy when ``ema_decay`` > 0) in eval mode
    under ``torch.no_grad()`` and returns ``{metric: float}``; it runs on rank 0 (on every rank
    with ``val_all_ranks``) and must not depend on the training RNG streams, which are restored
    around it. Map-style datasets are sharded with ``DistributedSampler``; iterable datasets must
    shard themselves (a ``set_epoch(epoch)`` method is called when present).

    The process group is initialised here when launched by ``torchrun`` and torn down at the end
    of :meth:`fit` if this trainer created it.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        train_dataset: Dataset,
        loss_fn: Callable[[torch.nn.Module, Any], Any],
        config: TrainConfig,
        val_fn: Callable[[torch.nn.Module], Mapping[str, float]] | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ):
        cfg = self.config = config
        self.loss_fn, self.val_fn, self.collate_fn, self.dataset = loss_fn, val_fn, collate_fn, train_dataset
        self._owns_group = not (dist.is_available() and dist.is_initialized())
        self.dist = init_distributed(None if cfg.device == "auto" else cfg.device)
        if cfg.device == "auto":
            self.device = torch.device(f"cuda:{self.dist.local_rank}" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(cfg.device)
        if cfg.amp == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.amp: fp16 needs a CUDA device (use bf16 on CPU)")
        self.output_dir = Path(cfg.output_dir)

        self.module = model.to(self.device)
        self.model: torch.nn.Module = self.module
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(
                self.module, device_ids=ids, find_unused_parameters=cfg.find_unused_parameters
            )
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = self._build_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")
        self.ema: torch.optim.swa_utils.AveragedModel | None = None
        if cfg.ema_decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.module, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)

        self.sampler: DistributedSampler | None = None
        if not isinstance(train_dataset, IterableDataset):
            self.sampler = DistributedSampler(
                train_dataset, self.dist.world_size, self.dist.rank, shuffle=cfg.shuffle, seed=cfg.seed
            )
            if len(self.sampler) < cfg.batch_size:
                raise ConfigError(
                    f"train.batch_size {cfg.batch_size} exceeds the {len(self.sampler)} samples per rank"
                )
        self.step = self.epoch = self.epoch_step = 0
        self.best: dict[str, Any] = {"metric": cfg.best_metric, "mode": cfg.best_mode, "value": None, "step": None}
        self._window: dict[str, float] = {}  # sums of the step stats since the last train row
        self._step_lr = cfg.lr
        self.last_train: dict[str, Any] = {}
        self.last_val: dict[str, Any] = {}

    # ----------------------------------------------------------------- building blocks
    def _build_optimizer(self) -> torch.optim.Optimizer:
        from timm.optim import param_groups_weight_decay

        cfg = self.config
        skip = getattr(self.module, "no_weight_decay", lambda: ())()
        groups = param_groups_weight_decay(self.module, cfg.weight_decay, no_weight_decay_list=skip)
        cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        return cls(groups, lr=cfg.lr, betas=cfg.betas)

    def _autocast(self):
        if self.config.amp == "none":
            return nullcontext()
        dtype = torch.bfloat16 if self.config.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _batches(self, epoch: int, skip: int) -> Iterator[Any]:
        """Batches of ``epoch`` after the first ``skip`` (which were consumed before a resume)."""
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + self.dist.rank)  # worker seeds
        common = dict(num_workers=cfg.num_workers, collate_fn=self.collate_fn, generator=gen,
                      pin_memory=self.device.type == "cuda")
        if hasattr(self.dataset, "set_epoch"):  # datasets that draw random crops / degradations per epoch
            self.dataset.set_epoch(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)  # the permutation depends on (seed, epoch) only
            batches = list(BatchSampler(self.sampler, cfg.batch_size, drop_last=True))[skip:]
            return iter(DataLoader(self.dataset, batch_sampler=batches, **common))
        loader = DataLoader(self.dataset, batch_size=cfg.batch_size, drop_last=True, **common)
        return islice(iter(loader), skip, None)

    def _train_step(self, batch: Any) -> dict[str, float]:
        cfg = self.config
        with self._autocast():
            out = self.loss_fn(self.model, to_device(batch, self.device))
        loss, extras = out if isinstance(out, tuple) else (out, {})
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        stats = {"loss": float(loss.detach()), **{k: float(v) for k, v in extras.items()}}
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip))
        self._step_lr = self.optimizer.param_groups[0]["lr"]  # the LR this step used, for the log
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.module)
        return stats

    def _log_train(self, log: MetricLog | None, t0: float) -> dict[str, Any]:
        """Mean of the window's stats over steps and ranks, as one train row."""
        n = self._window.pop("_n")
        keys = sorted(self._window)
        vals = torch.tensor([self._window[k] / n for k in keys], dtype=torch.float64)
        if self.dist.distributed:
            dist.all_reduce(vals)
            vals /= self.dist.world_size
        self._window = {}
        row = {"step": self.step, "split": "train", "epoch": self.epoch,
               "lr": self._step_lr, **dict(zip(keys, vals.tolist())),
               "time": round(time.time() - t0, 3)}
        if log is not None:
            log.append(row)
        return row

    def _validate(self, log: MetricLog | None) -> bool:
        """Run ``val_fn``, log it, update ``best``; returns True when the tracked metric improved."""
        cfg = self.config
        metrics: dict[str, float] | None = None
        if self.dist.is_main or cfg.val_all_ranks:
            net = self.ema.module if self.ema is not None else self.module
            state = rng_state()  # validation must not shift the training RNG streams
            net.eval()
            with torch.no_grad(), self._autocast():
                metrics = {k: float(v) for k, v in self.val_fn(net).items()}  # type: ignore[misc]
            net.train()
            set_rng_state(state)
        if self.dist.distributed:
            box = [metrics]
            dist.broadcast_object_list(box, src=0)
            metrics = box[0]
        assert metrics is not None
        if cfg.best_metric not in metrics:
            raise ConfigError(f"train.best_metric '{cfg.best_metric}' is not among val metrics {sorted(metrics)}")
        value, prev = metrics[cfg.best_metric], self.best["value"]
        improved = prev is None or (value > prev if cfg.best_mode == "max" else value < prev)
        if improved:
            self.best.update(value=value, step=self.step)
        self.last_val = {"step": self.step, "split": "val", "epoch": self.epoch, **metrics}
        if log is not None:
            log.append({**self.last_val, f"best_{cfg.best_metric}": self.best["value"]})
        return improved

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The full training state of this rank (without the other ranks' RNG states)."""
        ema = self.ema.module.state_dict() if self.ema is not None else None
        return {
            "model": self.module.state_dict(),
            "ema": ema,
            "ema_updates": int(self.ema.n_averaged) if self.ema is not None else 0,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "epoch_step": self.epoch_step,
            "log_window": dict(self._window),
            "best": dict(self.best),
            "config": asdict(self.config),
            **({"params_ema": ema} if ema is not None else {}),  # same tensors, stored once
        }

    def _save(self, names: list[str]) -> None:
        """Write the checkpoint under ``names`` (rank 0); every rank contributes its RNG state."""
        ranks = all_gather_objects(rng_state())
        if self.dist.is_main:
            ckpt = {**self.state_dict(), "rng": {"world_size": self.dist.world_size, "ranks": ranks}}
            for name in names:
                save_checkpoint(ckpt, self.output_dir / name)

    def load_state_dict(self, ckpt: Mapping[str, Any]) -> None:
        """Restore a checkpoint written by :meth:`fit` (model, EMA, optimizer, schedule, scaler, counters, RNG)."""
        missing = [k for k in ("model", "optimizer", "scheduler", "step", "rng") if k not in ckpt]
        if missing:
            raise CheckpointError(f"not a training checkpoint (missing {', '.join(missing)})")
        self.module.load_state_dict(ckpt["model"])
        if self.ema is not None:
            if ckpt.get("ema") is None:
                raise CheckpointError("checkpoint has no EMA weights but train.ema_decay > 0")
            self.ema.module.load_state_dict(ckpt["ema"])
            self.ema.n_averaged.fill_(ckpt["ema_updates"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.epoch, self.epoch_step = ckpt["step"], ckpt["epoch"], ckpt["epoch_step"]
        self._window = dict(ckpt.get("log_window", {}))
        if (ckpt["best"]["metric"], ckpt["best"]["mode"]) == (self.config.best_metric, self.config.best_mode):
            self.best.update(ckpt["best"])
        ranks = ckpt["rng"]["ranks"]
        set_rng_state(ranks[self.dist.rank % len(ranks)])

    def best_model(self) -> torch.nn.Module:
        """The unwrapped model in eval mode with the weights a user should keep after :meth:`fit`:
        ``best.pt`` (else ``last.pt``), its EMA copy when EMA is on."""
        best = self.output_dir / "best.pt"
        ckpt = read_checkpoint(best if best.is_file() else self.output_dir / "last.pt")
        weights = ckpt.get("ema") if self.config.ema_decay > 0 and ckpt.get("ema") else ckpt["model"]
        self.module.eval().load_state_dict(weights)
        return self.module

    def _resume_path(self) -> Path | None:
        resume, last = self.config.resume, self.output_dir / "last.pt"
        if resume is False or resume in ("", "none", "false"):
            return None
        if resume == "auto":
            return last if last.is_file() else None
        path = last if resume is True or resume == "true" else Path(str(resume))
        if not path.is_file():
            raise CheckpointError("cannot resume: checkpoint not found", path=path)
        return path

    # ----------------------------------------------------------------- the loop
    def fit(self) -> dict[str, Any]:
        """Train until ``max_steps`` (or ``stop_after``); returns a summary dict.

        Summary keys: ``step``, ``epoch``, ``best`` (metric, mode, value, step), ``train`` (last
        train row), ``val`` (last val row), ``resumed_from`` (step or None), ``output_dir``, ``seconds``.
        """
        cfg, t0 = self.config, time.time()
        seed_everything(cfg.seed + self.dist.rank)
        path = self._resume_path()
        if path is not None:
            self.load_state_dict(read_checkpoint(path))
        resumed_from = self.step if path is not None else None
        log = MetricLog(self.output_dir, keep_until=resumed_from) if self.dist.is_main else None
        stop = min(cfg.max_steps, cfg.stop_after) if cfg.stop_after > 0 else cfg.max_steps

        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (self.dist.is_main and cfg.progress and sys.stderr.isatty()))
        self.module.train()
        try:
            while self.step < stop:
                seen = False
                for batch in self._batches(self.epoch, self.epoch_step):
                    seen = True
                    stats = self._train_step(batch)
                    self.step += 1
                    self.epoch_step += 1
                    for k, v in stats.items():
                        self._window[k] = self._window.get(k, 0.0) + v
                    self._window["_n"] = self._window.get("_n", 0) + 1
                    bar.update(1)
                    self._after_step(log, bar, stop, t0)
                    if self.step >= stop:
                        break
                else:
                    if not seen and self.epoch_step == 0:
                        raise ConfigError("the training data yields no full batch")
                    self.epoch, self.epoch_step = self.epoch + 1, 0
        finally:
            bar.close()
        summary = {"step": self.step, "epoch": self.epoch, "best": dict(self.best), "train": self.last_train,
                   "val": self.last_val, "resumed_from": resumed_from, "output_dir": str(self.output_dir),
                   "seconds": round(time.time() - t0, 3)}
        if self._owns_group:
            cleanup_distributed()
        return summary

    def _after_step(self, log: MetricLog | None, bar: Any, stop: int, t0: float) -> None:
        """Logging, validation and checkpointing due after the current step."""
        cfg, step = self.config, self.step
        final = step == cfg.max_steps
        if step % max(cfg.log_every, 1) == 0 or final:
            self.last_train = self._log_train(log, t0)
            bar.set_postfix(loss=f"{self.last_train['loss']:.4g}", lr=f"{self.last_train['lr']:.3g}")
        improved = False
        if self.val_fn is not None and ((cfg.val_every > 0 and step % cfg.val_every == 0) or final):
            improved = self._validate(log)
        names = ["last.pt"] if (cfg.ckpt_every > 0 and step % cfg.ckpt_every == 0) or step == stop else []
        if improved:
            names.append("best.pt")
        if names:
            self._save(names)
