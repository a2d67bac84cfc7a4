"""The Gradio restoration demo on 127.0.0.1 with tiny checkpoints: through gradio_client (API) and in
headless Chromium (a person's clicks). Never depends on the bundled weights."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402

from vitsuite.apps.restoration import BUNDLED_CHOICES, DEFAULT_HOST, build_demo, launch  # noqa: E402
from vitsuite.core.imageio import read_image, write_image  # noqa: E402
from vitsuite.pipelines.restoration import predict  # noqa: E402
from vitsuite.pipelines.restoration.predict import PredictOptions, Restorer  # noqa: E402

MAX_FILE_SIZE = "100kb"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    hat = Restorer.build("hat", upscale=2, embed_dim=24, depths=(1,), num_heads=(2,), window_size=8, compress_ratio=3,
                         squeeze_factor=8, num_feat=16)
    drs = Restorer.build("drsformer", dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 1, 1, 1), ffn_expansion_factor=2.0,
                         mefc_steps=1)
    return hat.save(d / "tiny_hat.pt"), drs.save(d / "tiny_drs.pt")


@pytest.fixture(scope="module")
def app(ckpts):
    port = _free_port()
    demo = launch(checkpoint=list(ckpts), port=port, max_file_size=MAX_FILE_SIZE, prevent_thread_lock=True,
                  quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        yield demo, url, Client(url, verbose=False)
    finally:
        demo.close()


def _png(path: Path, h: int, w: int, c: int = 3, bit_depth: int = 8, seed: int = 0) -> Path:
    img = np.random.default_rng(seed).random((h, w, c), dtype=np.float32)
    return write_image(path, img, bit_depth)


def _restore(client: Client, png: Path, model: str = "tiny_hat.pt", scale=2, tile=0, overlap=0, ensemble=False):
    return client.predict(handle_file(str(png)), model, scale, tile, overlap, ensemble, api_name="/restore")


def _one_line_error(client: Client, *args, match: str, **kwargs) -> str:
    with pytest.raises(Exception, match=match) as err:
        _restore(client, *args, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg.strip() and "Traceback" not in msg
    return msg


def test_binds_loopback_by_default(app):
    demo, _, _ = app
    assert DEFAULT_HOST == "127.0.0.1" and demo.server_name == "127.0.0.1"


@pytest.mark.parametrize("tile,overlap", [(0, 0), (16, 8)])
def test_upload_restores_like_the_pipeline(app, ckpts, tmp_path, tile, overlap):
    _, _, client = app
    src = _png(tmp_path / "photo.png", 30, 44)  # not a multiple of the window: the model pads
    (before, after), out, status = _restore(client, src, tile=tile, overlap=overlap)
    assert Path(out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    got, info = read_image(out)
    assert got.shape == (60, 88, 3) and info.bit_depth == 8
    img, _ = read_image(src)
    want = Restorer.load(ckpts[0]).restore(img, PredictOptions(tile=tile, overlap=overlap))
    assert np.abs(got - np.rint(want * 255) / 255).max() <= 1 / 255 + 1e-6
    assert read_image(before)[0].shape == (60, 88, 3)  # the slider's input side is aligned with the output
    assert read_image(after)[0].shape == (60, 88, 3)
    assert "44x30" in status and "88x60" in status and "\n" not in status
    assert ("tiles 16 px" in status) == bool(tile)


def test_16bit_alpha_survives_and_derain_keeps_size(app, ckpts, tmp_path):
    _, _, client = app
    src = _png(tmp_path / "rgba16.png", 24, 20, c=4, bit_depth=16)
    _, out, status = _restore(client, src)
    got, info = read_image(out)
    assert got.shape == (48, 40, 4) and info.bit_depth == 16 and "16-bit" in status
    want = Restorer.load(ckpts[0]).restore(read_image(src)[0], PredictOptions(tile=0))
    assert np.abs(got - want).max() <= 2 / 65535
    _, out, status = _restore(client, _png(tmp_path / "rain.png", 24, 20), model="tiny_drs.pt", scale=1)
    assert read_image(out)[0].shape == (24, 20, 3) and "deraining" in status


def test_bad_inputs_are_one_line_errors(app, tmp_path):
    _, _, client = app
    bad = tmp_path / "broken.png"
    bad.write_bytes(_png(tmp_path / "ok.png", 16, 16).read_bytes()[:60])  # truncated
    msg = _one_line_error(client, bad, match="cannot decode image")
    assert "broken.png" in msg and str(tmp_path) not in msg  # the file's name, not the server's upload folder
    _one_line_error(client, _png(tmp_path / "dot.png", 1, 1), match="image is 1x1 pixels")
    _one_line_error(client, _png(tmp_path / "s.png", 16, 16), scale=4, match="is a x2 model; x4 was requested")
    _one_line_error(client, _png(tmp_path / "t.png", 16, 16), tile=16, overlap=16, match="overlap=16 is too large")


def test_missing_bundled_model_is_a_message(app, tmp_path, monkeypatch):
    _, _, client = app
    monkeypatch.setitem(predict.BUNDLED, "derain", tmp_path / "not_trained_yet.pt")
    *_, note = client.predict("Deraining (light DRSformer)", api_name="/model_info")
    assert note.startswith("Model not available:") and "bundled deraining model is missing" in note and "\n" not in note
    _one_line_error(client, _png(tmp_path / "r.png", 16, 16), model="Deraining (light DRSformer)", scale=1,
                    match="bundled deraining model is missing")


def test_builds_without_bundled_weights_or_checkpoints(tmp_path, monkeypatch):
    for task in ("sr", "derain"):
        monkeypatch.setitem(predict.BUNDLED, task, tmp_path / f"missing_{task}.pt")
    demo = build_demo()  # bundled models load on first use: a missing file is a message, not a crash
    dropdown = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "model")
    assert [c[1] for c in dropdown.choices] == list(BUNDLED_CHOICES) and dropdown.value == next(iter(BUNDLED_CHOICES))


def test_upload_size_is_limited(app, tmp_path):
    _, _, client = app
    big = _png(tmp_path / "big.png", 256, 256)  # noise does not compress: ~190 KB
    assert big.stat().st_size > 100_000
    with pytest.raises(Exception, match="exceeds the maximum file size"):
        _restore(client, big)


def test_browser_upload_run_and_download(app, tmp_path):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).is_file():
        pytest.skip(f"chromium not installed: no `chromium` on PATH and no {chromium} (apt-get install chromium)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    _, url, _ = app
    src = _png(tmp_path / "upload.png", 24, 36)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page()
            page.goto(url, wait_until="networkidle")
            page.locator("#model-info").get_by_text("hat x2").wait_for(timeout=20_000)  # demo.load described the model
            page.locator("input[type=file]").first.set_input_files(str(src))
            page.locator('#input-file a[download="upload.png"]').wait_for(timeout=20_000)  # the upload finished
            page.get_by_role("button", name="Restore").click()
            link = page.locator("#output-file a[download]")
            link.wait_for(timeout=30_000)
            assert link.get_attribute("download") == "upload_x2.png"
            png = page.request.get(link.get_attribute("href")).body()
            (tmp_path / "downloaded.png").write_bytes(png)
            assert read_image(tmp_path / "downloaded.png")[0].shape == (48, 72, 3)
            imgs = page.locator("#compare img")
            imgs.first.wait_for(timeout=10_000)
            assert imgs.count() >= 2 and all(imgs.nth(i).get_attribute("src") for i in range(imgs.count()))
            page.wait_for_function("() => [...document.querySelectorAll('#compare img')]"
                                   ".every(i => i.complete && i.naturalWidth === 72)", timeout=10_000)
            assert "36x24" in page.locator("#status").inner_text()
            page.screenshot(path=str(tmp_path / "restoration_demo.png"), full_page=True)
        finally:
            browser.close()
