"""Tests of core/train.py: learning, logs, best checkpoint, exact resume, clipping, bf16, DDP."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vitsuite.core.checkpoint import load_checkpoint, read_checkpoint
from vitsuite.core.errors import CheckpointError, ConfigError
from vitsuite.core.train import TrainConfig, Trainer

SCRIPT = Path(__file__).with_name("ddp_train_script.py")
_spec = importlib.util.spec_from_file_location("ddp_train_script", SCRIPT)
toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toy)

VAL = toy.ToyRegression(16, seed=1)


def _cfg(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(batch_size=8, lr=1e-2, weight_decay=0.01, log_every=5, output_dir=str(tmp_path),
                progress=False, device="cpu")
    return TrainConfig(**{**base, **kw})


def _rows(folder: Path, split: str) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == split]


def _assert_same(a, b, where="state") -> None:
    """Recursive bitwise equality of nested dicts / lists / tensors."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_fit_learns_logs_and_keeps_best(tmp_path):
    scores = iter([0.1, 0.5, 0.3, 0.9, 0.2, 0.4])  # scripted metric: best at the 4th validation (step 40)

    def val_fn(model):
        return {**toy.toy_val(model, VAL), "score": next(scores)}

    cfg = _cfg(tmp_path, max_steps=60, lr=5e-2, warmup_steps=5, val_every=10, best_metric="score", best_mode="max")
    summary = Trainer(toy.toy_model(), toy.ToyRegression(), toy.toy_loss, cfg, val_fn=val_fn).fit()

    train, val = _rows(tmp_path, "train"), _rows(tmp_path, "val")
    assert [r["step"] for r in train] == list(range(5, 61, 5))
    assert [r["step"] for r in val] == list(range(10, 61, 10))
    assert train[-1]["loss"] < 0.3 * train[0]["loss"] and val[-1]["loss"] < 0.3 * val[0]["loss"]
    assert {"lr", "mae", "epoch", "time"} <= train[0].keys()
    with open(tmp_path / "metrics.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(train) + len(val) and {"split", "loss", "score", "mae"} <= table[0].keys()
    assert float(table[0]["loss"]) == pytest.approx(train[0]["loss"])

    best, last = read_checkpoint(tmp_path / "best.pt"), read_checkpoint(tmp_path / "last.pt")
    assert summary["best"]["value"] == 0.9 and summary["best"]["step"] == 40
    assert best["step"] == 40 and best["best"]["value"] == 0.9 and last["step"] == 60
    model = toy.toy_model(seed=5).eval()
    model.load_state_dict(load_checkpoint(tmp_path / "best.pt"))  # generic loader finds "model"
    with torch.no_grad():
        assert toy.toy_val(model, VAL)["loss"] == pytest.approx(val[3]["loss"], rel=1e-5)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary files left


def test_interrupted_runs_resume_bitwise(tmp_path):
    # 44 samples / batch 8 -> 5 batches an epoch, reshuffled each epoch; dropout, EMA, warmup+cosine, clipping.
    kw = dict(max_steps=16, warmup_steps=3, min_lr=1e-4, ema_decay=0.9, grad_clip=1.0, log_every=3,
              val_every=4, ckpt_every=4)
    data = toy.ToyRegression(44)
    val_fn = lambda m: toy.toy_val(m, VAL)  # noqa: E731

    a = Trainer(toy.toy_model(), data, toy.toy_loss, _cfg(tmp_path / "a", **kw), val_fn=val_fn)
    a.fit()

    calls = []

    def crashing_loss(model, batch):
        calls.append(1)
        if len(calls) == 7:
            raise RuntimeError("simulated crash")
        return toy.toy_loss(model, batch)

    b_dir = tmp_path / "b"
    with pytest.raises(RuntimeError, match="simulated crash"):  # crash in step 7: last.pt is from step 4
        Trainer(toy.toy_model(), data, crashing_loss, _cfg(b_dir, **kw), val_fn=val_fn).fit()
    assert read_checkpoint(b_dir / "last.pt")["epoch_step"] == 4  # mid-epoch
    # Resume with different initial weights (they must be overwritten); stop mid-epoch 2 at step 11.
    s2 = Trainer(toy.toy_model(seed=3), data, toy.toy_loss, _cfg(b_dir, resume=True, stop_after=11, **kw),
                 val_fn=val_fn).fit()
    assert (s2["resumed_from"], s2["step"]) == (4, 11)
    b = Trainer(toy.toy_model(seed=4), data, toy.toy_loss, _cfg(b_dir, resume="auto", **kw), val_fn=val_fn)
    s3 = b.fit()
    assert (s3["resumed_from"], s3["step"]) == (11, 16)

    _assert_same(a.module.state_dict(), b.module.state_dict(), "model")
    _assert_same(a.ema.module.state_dict(), b.ema.module.state_dict(), "ema")
    _assert_same(a.optimizer.state_dict(), b.optimizer.state_dict(), "optimizer")
    _assert_same(a.scheduler.state_dict(), b.scheduler.state_dict(), "scheduler")
    ckpt_a, ckpt_b = read_checkpoint(tmp_path / "a" / "last.pt"), read_checkpoint(b_dir / "last.pt")
    for key in ("model", "ema", "params_ema", "optimizer", "best", "step", "rng"):
        _assert_same(ckpt_a[key], ckpt_b[key], key)
    # Validation (rank-0 only under DDP) must not shift the training RNG streams.
    c = Trainer(toy.toy_model(), data, toy.toy_loss, _cfg(tmp_path / "c", **kw), val_fn=None)
    c.fit()
    _assert_same(a.module.state_dict(), c.module.state_dict(), "model without validation")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    for split in ("train", "val"):  # the logs of the interrupted run read like the uninterrupted one's
        assert strip(_rows(tmp_path / "a", split)) == strip(_rows(b_dir, split))


def test_grad_clip_bounds_the_applied_gradient(tmp_path):
    def max_applied_norm(clip: float) -> float:
        trainer = Trainer(toy.toy_model(), toy.ToyRegression(), toy.toy_loss,
                          _cfg(tmp_path / str(clip), max_steps=6, lr=5.0, grad_clip=clip, log_every=1))
        norms = []
        trainer.optimizer.register_step_pre_hook(
            lambda opt, *_: norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in trainer.params])))
        )
        trainer.fit()
        return max(norms)

    assert max_applied_norm(0.0) > 0.5  # unclipped gradients of this run exceed the bound ...
    assert max_applied_norm(0.5) <= 0.5 * (1 + 1e-4)  # ... and clipping keeps them within it
    assert max(r["grad_norm"] for r in _rows(tmp_path / "0.5", "train")) > 0.5  # logged norm is pre-clip


def test_bf16_autocast_on_cpu(tmp_path):
    dtypes = set()

    def loss_fn(model, batch):
        dtypes.add(model(batch[1]).dtype)
        return toy.toy_loss(model, batch)

    summary = Trainer(toy.toy_model(), toy.ToyRegression(), loss_fn, _cfg(tmp_path, max_steps=4, amp="bf16")).fit()
    assert dtypes == {torch.bfloat16} and torch.isfinite(torch.tensor(summary["train"]["loss"]))
    assert all(p.dtype == torch.float32 for p in read_checkpoint(tmp_path / "last.pt")["model"].values())


def test_config_and_resume_errors(tmp_path):
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ConfigError, match="fp16"):
        Trainer(toy.toy_model(), toy.ToyRegression(), toy.toy_loss, _cfg(tmp_path, amp="fp16"))
    with pytest.raises(CheckpointError, match="last.pt"):
        Trainer(toy.toy_model(), toy.ToyRegression(), toy.toy_loss, _cfg(tmp_path, resume=True)).fit()


def _torchrun(out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_torchrun_two_gloo_ranks(tmp_path):
    # gloo on CPU sometimes aborts one rank at interpreter shutdown after everything finished
    # (SIGABRT, "terminate called without an active exception", pytorch/pytorch#179291), which
    # makes torchrun exit non-zero. Each rank therefore writes done-<rank>.json after fit()
    # returned (training, checkpoints and process-group teardown complete). A non-zero exit is
    # accepted only when both done-files exist, i.e. the failure came after all the work this
    # test checks; otherwise the run is retried once (a second failure fails the test). All the
    # assertions below still hold the run to its full result.
    for attempt in range(2):
        out = tmp_path / f"run{attempt}"
        proc = _torchrun(out)
        done_files = [out / f"done-{r}.json" for r in range(2)]
        if all(f.is_file() for f in done_files):
            break
    else:
        pytest.fail(f"torchrun failed twice (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    done = [json.loads(f.read_text()) for f in done_files]

    assert [d["world_size"] for d in done] == [2, 2] and [d["step"] for d in done] == [6, 6]
    assert done[0]["model"] == done[1]["model"] and done[0]["ema"] == done[1]["ema"]  # ranks in sync
    epoch0 = [set(d["seen"][:32]) for d in done]  # 64 samples, 8 per rank-batch: 4 steps an epoch
    assert not epoch0[0] & epoch0[1] and epoch0[0] | epoch0[1] == set(range(64))  # sharded, complete
    assert [d["val_calls"] for d in done] == [2, 0]  # validation on rank 0 only

    last = read_checkpoint(out / "last.pt")
    model = toy.toy_model()
    model.load_state_dict(last["model"])
    assert last["step"] == 6 and toy.digest(model) == done[0]["model"]
    assert len(last["rng"]["ranks"]) == 2 and (out / "best.pt").is_file()
    assert [r["step"] for r in _rows(out, "train")] == [2, 4, 6] and [r["step"] for r in _rows(out, "val")] == [3, 6]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["best.pt", "last.pt", "metrics.csv", "metrics.jsonl", "done-0.json", "done-1.json"]
    )
