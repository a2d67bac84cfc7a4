"""Toy regression task for tests/test_train.py, and the two-rank DDP run that torchrun launches.

``python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_train_script.py OUT`` trains
the toy model with :class:`vitsuite.core.train.Trainer` and then writes ``OUT/done-<rank>.json``
(final step, parameter digests, the sample indices this rank trained on, validation calls).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset


class ToyRegression(Dataset):
    """``n`` samples of a noisy linear function of 4 inputs; items are ``(index, x, y)``."""

    def __init__(self, n: int = 48, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.5 + 0.05 * torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return i, self.x[i], self.y[i]


def toy_model(seed: int = 0) -> torch.nn.Module:
    """A tiny MLP with dropout (so training consumes the torch RNG)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.GELU(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 1)
    )


def toy_loss(model: torch.nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
    """MSE loss plus the mean absolute error as an extra logged scalar."""
    _, x, y = batch
    err = model(x).squeeze(-1).float() - y
    return err.pow(2).mean(), {"mae": float(err.detach().abs().mean())}


def toy_val(model: torch.nn.Module, data: ToyRegression) -> dict[str, float]:
    """Validation MSE of ``model`` on all of ``data``."""
    return {"loss": float((model(data.x).squeeze(-1).float() - data.y).pow(2).mean())}


def digest(module: torch.nn.Module) -> str:
    """SHA-256 of all state-dict tensors (bitwise equality check across processes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def main(out: Path) -> None:
    """Train on two ranks, then record what this rank did in ``done-<rank>.json``."""
    from vitsuite.core.fileio import atomic_write_text
    from vitsuite.core.train import TrainConfig, Trainer

    rank = int(os.environ["RANK"])
    seen: list[int] = []
    val_calls: list[int] = []
    val_data = ToyRegression(16, seed=1)

    def loss_fn(model, batch):
        seen.extend(batch[0].tolist())
        return toy_loss(model, batch)

    def val_fn(model):
        val_calls.append(1)
        return toy_val(model, val_data)

    cfg = TrainConfig(max_steps=6, batch_size=8, lr=1e-2, warmup_steps=2, ema_decay=0.5, log_every=2,
                      val_every=3, ckpt_every=3, output_dir=str(out), progress=False, device="cpu")
    # Each rank starts from different weights: DDP must broadcast rank 0's.
    trainer = Trainer(toy_model(seed=rank), ToyRegression(64), loss_fn, cfg, val_fn=val_fn)
    summary = trainer.fit()  # ends with cleanup_distributed(): gc, barrier, destroy
    done = {"rank": rank, "world_size": trainer.dist.world_size, "step": summary["step"],
            "model": digest(trainer.module), "ema": digest(trainer.ema.module), "seen": seen,
            "val_calls": len(val_calls)}
    atomic_write_text(out / f"done-{rank}.json", json.dumps(done))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
