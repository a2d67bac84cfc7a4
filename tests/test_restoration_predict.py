"""Tests for vitsuite.pipelines.restoration.predict (and the ``align`` option of core.tiling): the
model file, tiling that does not change results, self-ensemble, channel / bit-depth handling of
folders, one-line errors, export. Tiny models and small images only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from vitsuite.core.errors import CheckpointError, InputError, UserError
from vitsuite.core.imageio import read_image, write_image
from vitsuite.core.tiling import plan_tiles, tiled_inference
from vitsuite.pipelines.restoration.predict import (BUNDLED, FORMAT, PredictOptions, Restorer, export_restorer,
                                                    predict_paths, self_ensemble)

TINY_HAT = dict(embed_dim=24, depths=(1, 1), num_heads=(2, 2), window_size=8, squeeze_factor=8)


def photo(h: int, w: int) -> np.ndarray:
    """A real photo crop (float32 (h, w, 3) in [0, 1]); a smooth synthetic image without scikit-image."""
    try:
        from skimage import data

        return np.ascontiguousarray(data.astronaut()[40:40 + h, 150:150 + w]).astype(np.float32) / 255
    except ImportError:
        yy, xx = np.mgrid[0:h, 0:w] / 16.0
        rng = np.random.default_rng(0)
        img = np.stack([np.sin(xx + yy), np.cos(0.7 * xx * yy), (xx > 2) ^ (yy > 1.5)], -1) * 0.4 + 0.5
        return (img + 0.03 * rng.standard_normal((h, w, 3))).clip(0, 1).astype(np.float32)


def psnr(a, b) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1 / mse)


class ConvSR(nn.Module):
    """Convolutions (receptive-field radius ``depth``) + PixelShuffle around a nearest upscale, in [0, 1]."""

    def __init__(self, scale: int = 2, depth: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.upscale = scale
        chans = [3] + [8] * (depth - 1) + [3 * scale * scale]
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1), nn.Tanh()]
        layers[-1] = nn.PixelShuffle(scale)
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        up = nn.functional.interpolate(x, scale_factor=self.upscale, mode="nearest")
        return 0.5 + 0.5 * torch.tanh(self.net(x) + up - 0.5)


def conv_sr(scale: int = 2, depth: int = 3, seed: int = 0) -> nn.Module:
    return ConvSR(scale, depth, seed).eval()


def conv_restorer(scale: int = 2) -> Restorer:
    return Restorer(conv_sr(scale), {"task": "sr", "scale": scale})


@pytest.fixture(scope="module")
def tiny_hat() -> Restorer:
    torch.manual_seed(0)
    return Restorer.build("hat", upscale=2, **TINY_HAT)


# ---------------------------------------------------------------- core.tiling: align


@pytest.mark.parametrize("n,t,o,a", [(70, 32, 16, 8), (83, 32, 8, 8), (200, 64, 32, 16), (64, 32, 16, 16),
                                     (33, 32, 8, 8), (100, 24, 4, 1), (257, 256, 32, 16)])
def test_plan_align_starts_on_grid(n, t, o, a):
    plan = plan_tiles((n,), t, o, align=a, multiple_of=a)
    starts, tt = plan.starts[0], plan.tile[0]
    assert tt % a == 0 and all(s % a == 0 for s in starts) and starts[0] == 0
    if n > tt:
        steps = [b - c for c, b in zip(starts, starts[1:])]
        assert all(0 < s <= tt - o for s in steps)  # overlap >= requested
        last_end = starts[-1] + tt
        assert last_end == -(-n // a) * a  # ends where the untiled model's own padding ends
        span, step = (last_end - tt) // a, (tt - o) // a
        assert len(starts) == 1 + -(-span // step)  # the fewest aligned tiles
    cover = np.zeros(n, int)
    for tl in plan:
        cover[tl.dst[0]] += 1
    assert cover.min() >= 1


def test_plan_align_one_is_the_old_placement():
    for n, t, o in [(37, 16, 4), (50, 16, 4), (100, 7, 3), (61, 16, 5)]:
        assert plan_tiles((n,), t, o) == plan_tiles((n,), t, o, align=1)
        count = -(-(n - t) // (t - o)) + 1
        assert plan_tiles((n,), t, o).starts[0] == tuple(i * (n - t) // (count - 1) for i in range(count))
    with pytest.raises(UserError, match="align"):
        plan_tiles((100,), 32, 28, align=8)  # step of 4 px cannot stay on an 8 px grid
    with pytest.raises(UserError):
        plan_tiles((100,), 32, 8, align=0)
    assert plan_tiles((50, 90), 20, 4, align=(1, 8)).tile == (20, 24)  # tile rounded to the grid


def test_tiled_inference_align_pads_last_tile_and_is_exact_for_pointwise():
    x = torch.randn(1, 2, 45, 53)
    seen = []

    def fn(t):
        seen.append(t.shape[-2:])
        return t * 2

    y = tiled_inference(x, fn, 16, 4, align=8, multiple_of=8)
    torch.testing.assert_close(y, x * 2)
    assert all(s == (16, 16) for s in seen)


# ---------------------------------------------------------------- tiling through the restorer


def test_conv_model_tiled_equals_untiled_exactly():
    r = conv_restorer(2)
    x = torch.from_numpy(photo(50, 61)).permute(2, 0, 1)[None]
    ref = r.restore_tensor(x, PredictOptions(tile=0))
    y = r.restore_tensor(x, PredictOptions(tile=24, overlap=8, margin=4, tile_batch=3))
    assert y.shape == (1, 3, 100, 122)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


def test_tiny_hat_aligned_tiles_match_untiled(tiny_hat):
    x = torch.from_numpy(photo(70, 83)).permute(2, 0, 1)[None].contiguous()
    ref = tiny_hat.restore_tensor(x, PredictOptions(tile=0))
    assert tiny_hat.tile_settings(PredictOptions(tile=32)).align == 8  # the window
    aligned = psnr(tiny_hat.restore_tensor(x, PredictOptions(tile=32, overlap=16, margin=4)), ref)
    unaligned = psnr(tiny_hat.restore_tensor(x, PredictOptions(tile=32, overlap=16, margin=4, align=1)), ref)
    assert aligned >= 50, aligned
    assert aligned > unaligned + 20, (aligned, unaligned)  # the window grid is what makes tiling (in)exact


def test_tile_settings_defaults_and_errors(tiny_hat):
    ts = tiny_hat.tile_settings()
    assert ts.align == ts.multiple_of == 8 and ts.tile % 8 == 0 and ts.overlap >= 2 * ts.margin
    small = tiny_hat.tile_settings(PredictOptions(tile=20))
    assert small.tile == 24 and small.overlap <= 12 and small.tile - small.overlap >= 8
    with pytest.raises(UserError, match="margin"):
        tiny_hat.tile_settings(PredictOptions(tile=64, overlap=8, margin=8))
    with pytest.raises(UserError):
        PredictOptions(tile=-1)


# ---------------------------------------------------------------- self-ensemble


@pytest.mark.parametrize("shape", [(2, 3, 12, 12), (1, 3, 10, 14)])
def test_self_ensemble_identity_and_inverse(shape):
    x = torch.rand(*shape)
    calls = []

    def ident(t):
        calls.append(tuple(t.shape))
        return t

    torch.testing.assert_close(self_ensemble(ident)(x), x)
    square = shape[-1] == shape[-2]
    assert len(calls) == (1 if square else 2) and calls[0][0] == shape[0] * (8 if square else 4)
    # a non-equivariant model: the ensemble is the mean of the inverse-transformed outputs
    model = conv_sr(2, depth=2)
    with torch.no_grad():
        want = torch.zeros(shape[0], 3, shape[2] * 2, shape[3] * 2)
        for f in (False, True):
            for k in range(4):
                t = torch.rot90(x.flip(-1) if f else x, k, dims=(-2, -1))
                o = torch.rot90(model(t), -k, dims=(-2, -1))
                want += (o.flip(-1) if f else o) / 8
        torch.testing.assert_close(self_ensemble(model)(x), want, atol=1e-5, rtol=1e-5)


def test_self_ensemble_through_restore():
    r = Restorer(nn.Identity(), {"task": "derain", "scale": 1})
    img = photo(20, 27)
    np.testing.assert_allclose(r.restore(img, PredictOptions(self_ensemble=True, tile=16, overlap=4)), img, atol=1e-6)


# ---------------------------------------------------------------- channels


def test_gray_and_alpha_handling():
    r = conv_restorer(2)
    rgb = photo(16, 20)
    gray = rgb.mean(-1, keepdims=True)
    out_gray = r.restore(gray)
    assert out_gray.shape == (32, 40, 1)
    want = r.restore(np.repeat(gray, 3, -1)).mean(-1, keepdims=True)  # replicated to RGB, mean back
    np.testing.assert_allclose(out_gray, want, atol=1e-6)
    assert r.restore(gray[..., 0]).shape == (32, 40)  # 2-D in, 2-D out
    alpha = np.linspace(0, 1, 16 * 20, dtype=np.float32).reshape(16, 20, 1)
    rgba = r.restore(np.concatenate([rgb, alpha], -1))
    assert rgba.shape == (32, 40, 4)
    np.testing.assert_allclose(rgba[..., :3], r.restore(rgb), atol=1e-6)
    a2 = torch.nn.functional.interpolate(torch.from_numpy(alpha).permute(2, 0, 1)[None], scale_factor=2,
                                         mode="bicubic", align_corners=False).clamp(0, 1)[0, 0].numpy()
    np.testing.assert_allclose(rgba[..., 3], a2, atol=1e-6)
    assert r.restore(np.concatenate([gray, alpha], -1)).shape == (32, 40, 2)
    derain = Restorer(nn.Identity(), {"task": "derain", "scale": 1})
    np.testing.assert_array_equal(derain.restore(np.concatenate([rgb, alpha], -1))[..., 3], alpha[..., 0])
    out = r.restore((rgb * 255).astype(np.uint8))
    assert out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1


def test_tiny_image_is_a_one_line_error(tmp_path):
    r = conv_restorer(2)
    with pytest.raises(InputError, match=r"^x\.png: image is 1x1 pixels; at least 4x4 needed$"):
        r.restore(np.zeros((1, 1, 3), np.float32), source="x.png")
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "x.png", np.zeros((1, 1, 3), np.float32))
    write_image(src / "ok.png", photo(8, 8))
    res = predict_paths(r, src, tmp_path / "out", progress=False)
    (bad,) = res.failed
    assert "x.png: image is 1x1 pixels" in bad.error and "\n" not in bad.error
    assert (tmp_path / "out" / "ok.png").is_file()


# ---------------------------------------------------------------- folders


def test_predict_paths_modes_bit_depths_and_corrupt_file(tmp_path):
    r = conv_restorer(2)
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rgb = photo(12, 10)
    write_image(src / "gray.png", rgb[..., :1])
    write_image(src / "rgba.png", np.concatenate([rgb, rgb[..., :1]], -1))
    write_image(src / "sub" / "deep16.png", rgb, bit_depth=16)
    write_image(src / "ga16.tif", np.concatenate([rgb[..., :1], rgb[..., 1:2]], -1), bit_depth=16)
    write_image(src / "photo.jpg", rgb)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    out = tmp_path / "out"
    res = predict_paths(r, src, out, PredictOptions(tile=8, overlap=4, margin=1), recursive=True, progress=False)
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before  # nothing written into the input folder
    assert res.counts["processed"] == 5 and res.counts["failed"] == 1
    (bad,) = res.failed
    assert "broken.png" in bad.error and "\n" not in bad.error and "broken.png" in res.report()
    assert not (out / "broken.png").exists()
    for name, channels, depth in [("gray.png", 1, 8), ("rgba.png", 4, 8), ("sub/deep16.png", 3, 16),
                                  ("ga16.tif", 2, 16), ("photo.jpg", 3, 8)]:
        img, info = read_image(out / name)
        assert (info.height, info.width, info.channels, info.bit_depth) == (24, 20, channels, depth), name
    # bit depth / extension overrides and suffix
    res = predict_paths(r, src / "sub", tmp_path / "out8", ext="tif", bit_depth=8, suffix="_x2", progress=False)
    assert read_image(tmp_path / "out8" / "deep16_x2.tif")[1].bit_depth == 8
    with pytest.raises(UserError, match="input folder"):
        predict_paths(r, src, src / "results", progress=False)
    with pytest.raises(UserError, match="bit_depth"):
        predict_paths(r, src, out, bit_depth=12, progress=False)


def test_predict_paths_batch_size_groups_same_size_images(tmp_path):
    r = conv_restorer(2)
    calls = []
    r.model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    src = tmp_path / "in"
    src.mkdir()
    for i, (h, w) in enumerate([(12, 10), (12, 10), (12, 10), (9, 11), (12, 10)]):
        write_image(src / f"im{i}.png", photo(h, w)[::-1] if i % 2 else photo(h, w))
    res1 = predict_paths(r, src, tmp_path / "one", progress=False)
    assert res1.ok and calls == [1] * 5
    calls.clear()
    res2 = predict_paths(r, src, tmp_path / "two", PredictOptions(batch_size=2), progress=False)
    assert res2.ok and calls == [2, 1, 1, 1]  # (im0, im1), im2 (next differs in size), im3, im4
    for i in range(5):
        np.testing.assert_array_equal(read_image(tmp_path / "one" / f"im{i}.png")[0],
                                      read_image(tmp_path / "two" / f"im{i}.png")[0])


# ---------------------------------------------------------------- the model file


def test_save_load_roundtrip_and_meta(tmp_path, tiny_hat):
    path = tiny_hat.save(tmp_path / "m.pt")
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["meta"]["format"] == FORMAT and ckpt["meta"]["task"] == "sr" and ckpt["meta"]["scale"] == 2
    assert ckpt["meta"]["model_name"] == "hat" and ckpt["meta"]["model_kwargs"]["window_size"] == 8
    r = Restorer.load(path, scale=2, task="sr", model_id="hat_s")
    img = photo(20, 24)
    np.testing.assert_array_equal(r.restore(img), tiny_hat.restore(img))
    assert r.scale == 2 and r.family == "hat" and "m.pt" in r.describe()


def test_scale_and_task_mismatch_are_one_line_errors(tmp_path, tiny_hat):
    path = tiny_hat.save(tmp_path / "checkpoint.pt")
    with pytest.raises(UserError, match=r"checkpoint\.pt is a x2 model; --scale 4 was requested$") as e:
        Restorer.load(path, scale=4)
    assert "\n" not in str(e.value) and not isinstance(e.value, CheckpointError)
    with pytest.raises(UserError, match="task derain was requested"):
        Restorer.load(path, task="derain")


def test_wrong_model_checkpoints_are_one_line_errors(tmp_path, tiny_hat):
    ours = tiny_hat.save(tmp_path / "hat.pt")
    with pytest.raises(CheckpointError, match="holds a hat model, not drct") as e:
        Restorer.load(ours, model_id="drct")
    assert "\n" not in str(e.value)
    # a HAT x4 state dict in a file that says x2
    torch.manual_seed(0)
    x4 = Restorer.build("hat", upscale=4, **TINY_HAT)
    bad = {"model": x4.model.state_dict(), "meta": dict(tiny_hat.meta)}
    torch.save(bad, tmp_path / "x4_as_x2.pt")
    with pytest.raises(CheckpointError, match="x4_as_x2.pt: does not fit HAT: unexpected .*upsample") as e:
        Restorer.load(tmp_path / "x4_as_x2.pt")
    assert "\n" not in str(e.value)
    # authors' (BasicSR) containers: a DRCT file loaded as HAT, and a HAT file that loads
    drct = Restorer.build("drct", upscale=2, embed_dim=24, depths=(1, 1), num_heads=(2, 2), window_size=8, gc=8)
    torch.save({"params_ema": drct.model.state_dict()}, tmp_path / "DRCT_x2.pth")
    with pytest.raises(CheckpointError, match="DRCT_x2.pth: not a hat checkpoint") as e:
        Restorer.load(tmp_path / "DRCT_x2.pth", model_id="hat")
    assert "\n" not in str(e.value)
    off = Restorer.load(tmp_path / "DRCT_x2.pth", scale=2)
    assert off.meta["official"] and off.family == "drct" and off.task == "sr" and off.scale == 2
    torch.save({"params": tiny_hat.model.state_dict()}, tmp_path / "HAT_x2.pth")
    hat = Restorer.load(tmp_path / "HAT_x2.pth", model_id="hat")
    img = photo(16, 16)
    np.testing.assert_allclose(hat.restore(img), tiny_hat.restore(img), atol=1e-6)
    hat.save(tmp_path / "resaved.pt")  # an authors' checkpoint converts to our format
    np.testing.assert_allclose(Restorer.load(tmp_path / "resaved.pt").restore(img), tiny_hat.restore(img), atol=1e-6)
    torch.save({"model": {}, "meta": {"format": "vitsuite-forecast/1"}}, tmp_path / "forecaster.pt")
    with pytest.raises(CheckpointError, match="not a restoration model"):
        Restorer.load(tmp_path / "forecaster.pt")


def test_bundled_model_missing_or_loads():
    if BUNDLED["derain"].is_file():
        assert Restorer.load(task="derain").task == "derain"
    else:
        with pytest.raises(CheckpointError, match="the bundled deraining model is missing from this install"):
            Restorer.load(task="derain")
    with pytest.raises(UserError, match="unknown task"):
        Restorer.load(task="denoise")


# ---------------------------------------------------------------- export


@pytest.mark.parametrize("suffix", [".onnx", ".pt"])
def test_export_matches_eager(tmp_path, tiny_hat, suffix):
    info = export_restorer(tiny_hat, tmp_path / f"hat{suffix}", tile=32)
    assert info["format"] in ("onnx", "torchscript") and info["max_abs_diff"] < 1e-4
    if suffix == ".onnx":
        assert info["format"] == "onnx" and info["fallback"] is None  # ONNX expresses every HAT op
        import onnxruntime as ort

        x = torch.from_numpy(photo(32, 32)).permute(2, 0, 1)[None].contiguous()
        sess = ort.InferenceSession(info["path"], providers=["CPUExecutionProvider"])
        (got,) = sess.run(None, {"image": x.numpy()})
        want = tiny_hat.restore_tensor(x, PredictOptions(tile=0)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)
    assert (tmp_path / f"hat{suffix}.json").is_file()
