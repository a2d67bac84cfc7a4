"""The restoration pipeline end to end through ``vitsuite-restore``: train, evaluate, predict, export,
and the one-line errors for bad inputs (tiny models, small real photographs from scikit-image)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vitsuite.core.imageio import read_image, write_image
from vitsuite.pipelines.restoration.cli import build_parser
from vitsuite.core.cli import run
from vitsuite.pipelines.restoration.data import bicubic_downsample, skimage_images
from vitsuite.pipelines.restoration.predict import Restorer

TINY_HAT = dict(embed_dim=16, depths=[1], num_heads=[2], window_size=4, compress_ratio=2, squeeze_factor=4,
                num_feat=8, drop_path_rate=0.0)


def cli(*argv: str) -> int:
    return run(build_parser(), [str(a) for a in argv])


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Ground-truth crops of real photos and their bicubic x2 LR versions (LR stems end in 'x2')."""
    root = tmp_path_factory.mktemp("photos")
    gt, lq = root / "gt", root / "lq"
    gt.mkdir(), lq.mkdir()
    imgs = skimage_images(["astronaut", "coffee", "chelsea"])
    for name, im in imgs.items():
        crop = im[40:88, 60:112]  # 48 x 52: a multiple of 2
        write_image(gt / f"{name}.png", crop)
        write_image(lq / f"{name}x2.png", bicubic_downsample(crop, 2))
    return {"root": root, "gt": gt, "lq": lq}


@pytest.fixture(scope="module")
def trained(photos, tmp_path_factory) -> Path:
    """A tiny HAT x2 trained for a few steps by the train command (validation on the paired folders)."""
    out = tmp_path_factory.mktemp("run")
    cfg = out / "cfg.yaml"
    cfg.write_text(json.dumps({
        "data": {"task": "sr", "scale": 2, "train_gt": str(photos["gt"]), "val_gt": str(photos["gt"]),
                 "val_lq": str(photos["lq"]), "lq_suffix": "x2", "patch_size": 16, "patches_per_epoch": 8},
        "model": {"name": "hat", "kwargs": TINY_HAT},
        "train": {"max_steps": 4, "batch_size": 4, "val_every": 2, "ckpt_every": 2, "log_every": 1,
                  "ema_decay": 0.9, "progress": False, "device": "cpu"},
    }))
    assert cli("train", "--config", cfg, "--output-dir", out / "train", "--save", out / "tiny_x2.pt") == 0
    return out / "tiny_x2.pt"


def test_train_writes_a_loadable_restorer_with_validation_scores(trained):
    r = Restorer.load(trained)
    assert (r.task, r.scale, r.model_name) == ("sr", 2, "hat")
    val = r.meta["train"]["val"]
    assert set(val) >= {"psnr", "ssim", "baseline_psnr", "baseline_ssim"} and np.isfinite(val["baseline_psnr"])
    assert (trained.parent / "train" / "best.pt").is_file()
    rows = (trained.parent / "train" / "metrics.csv").read_text().splitlines()
    assert any(",val," in row for row in rows)


def test_evaluate_paired_folders_papers_convention(trained, photos, tmp_path, capsys):
    assert cli("evaluate", "--checkpoint", trained, "--lq", photos["lq"], "--gt", photos["gt"], "--lq-suffix", "x2",
               "--output-dir", tmp_path, "--json") == 0
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["convention"] == {"y_channel": True, "crop_border": 2, "quantized_8bit": True, "self_ensemble": False}
    assert [r["name"] for r in report["rows"]] == ["astronaut", "chelsea", "coffee"]
    assert (tmp_path / "metrics.csv").read_text().splitlines()[-1].startswith("mean,")
    # the RGB option and a custom border change the numbers
    assert cli("evaluate", "--checkpoint", trained, "--lq", photos["lq"], "--gt", photos["gt"], "--lq-suffix", "x2",
               "--rgb", "--crop-border", "0", "--output-dir", tmp_path / "rgb") == 0
    rgb = json.loads((tmp_path / "rgb" / "metrics.json").read_text())
    assert rgb["mean"]["psnr"] != report["mean"]["psnr"]


def test_evaluate_ground_truth_only_degrades_like_training(trained, photos, tmp_path):
    assert cli("evaluate", "--checkpoint", trained, "--gt", photos["gt"], "--output-dir", tmp_path) == 0
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["baseline"] == "bicubic" and len(report["rows"]) == 3


def test_predict_folder_keeps_names_reports_bad_files_and_never_writes_inputs(trained, photos, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for p in photos["lq"].iterdir():
        (src / p.name).write_bytes(p.read_bytes())
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    write_image(src / "dot.png", np.zeros((1, 1, 3), np.float32))
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    out = tmp_path / "out"
    assert cli("predict", src, "-o", out, "--checkpoint", trained, "--tile", "16", "--overlap", "8") == 1
    err = capsys.readouterr()
    text = err.out + err.err
    assert "broken.png" in text and "dot.png" in text
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == ["astronautx2.png", "chelseax2.png", "coffeex2.png"]
    img, info = read_image(out / "astronautx2.png")
    assert img.shape == (48, 52, 3)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # inputs untouched
    summary = json.loads((out / "summary.json").read_text())
    assert {f["status"] for f in summary["files"]} == {"processed", "failed"}
    # the output folder may not be the input folder
    assert cli("predict", src, "-o", src, "--checkpoint", trained) == 2


def test_predict_tiled_matches_untiled_for_the_trained_model(trained, photos, tmp_path):
    r = Restorer.load(trained)
    lq, _ = read_image(photos["lq"] / "coffeex2.png")
    from vitsuite.pipelines.restoration.predict import PredictOptions

    whole = r.restore(lq, PredictOptions(tile=0))
    tiled = r.restore(lq, PredictOptions(tile=12, overlap=8))
    mse = float(np.mean((whole - tiled) ** 2))
    assert mse == 0 or 10 * np.log10(1 / mse) > 40


@pytest.mark.parametrize("argv,needle", [
    (("--scale", "4"), "x2 model"),
    (("--model", "drsformer"), ""),
    (("--task", "derain"), "super-resolution model"),
])
def test_predict_refuses_mismatched_checkpoints_in_one_line(trained, photos, tmp_path, capsys, argv, needle):
    code = cli("predict", photos["lq"], "-o", tmp_path / "o", "--checkpoint", trained, *argv)
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and err.startswith("error:")
    assert needle in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").glob("*.png"))


def test_predict_refuses_a_checkpoint_that_is_not_a_restoration_model(photos, tmp_path, capsys):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"this is not a checkpoint")
    assert cli("predict", photos["lq"], "-o", tmp_path / "o", "--checkpoint", bad) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "garbage.pt" in err


def test_export_matches_eager(trained, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    assert cli("export", "--checkpoint", trained, "-o", tmp_path / "tiny.onnx", "--tile", "16") == 0
    assert (tmp_path / "tiny.onnx").is_file()
    assert "max |exported - eager|" in capsys.readouterr().out


@pytest.mark.parametrize("depth", [8, 16])
def test_streamed_integer_output_equals_rounded_restore(trained, photos, depth):
    """The large-image path (tiles streamed band by band into integer samples) gives the rounded
    result of the float path, without a float copy of the output."""
    from vitsuite.pipelines.restoration.predict import PredictOptions

    r = Restorer.load(trained)
    lq, _ = read_image(photos["lq"] / "chelseax2.png")
    opts = PredictOptions(tile=12, overlap=8)
    q = r.restore_quantized(lq, depth, opts)
    ref = r.restore(lq, opts) * (255 if depth == 8 else 65535)
    assert q.dtype == (np.uint8 if depth == 8 else np.uint16) and q.shape == (48, 52, 3)
    assert np.abs(q.astype(np.float64) - ref).max() <= 0.5 + 1e-3
