"""Gradio demo of the restoration pipeline: upload an image, pick a model (super-resolution or
deraining), tiling and self-ensemble, compare before / after and download the full-resolution PNG.

Thin by design: loading and restoring are :meth:`Restorer.load` / :meth:`Restorer.restore` of
:mod:`vitsuite.pipelines.restoration.predict`, image I/O is :mod:`vitsuite.core.imageio`. Models are
the two bundled ones plus the ``--checkpoint`` files given at launch; checkpoints are never uploaded
(a checkpoint is a pickle: only files on the server are offered). Binds 127.0.0.1 by default and
limits uploads (``max_file_size``).

The upload is a ``gr.File``, not a ``gr.Image``: gr.Image decodes the upload with Pillow first, which
fails with a traceback on files our reader handles (float / planar TIFFs) or rejects (corrupt files
then never reach our one-line errors), and as soon as it converts (``image_mode``, EXIF) it re-encodes
to 8-bit RGB(A), losing 16-bit samples and gray+alpha. ``gr.File`` passes the bytes through untouched
to :func:`read_image`, so 16-bit PNGs and alpha survive; the output PNG keeps the input's bit depth
(up to 16) and alpha.

    python -m vitsuite.apps.restoration            # or: vitsuite-restore demo
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from vitsuite.core.env import apply_offline_env

apply_offline_env()  # before gradio is imported: no analytics, no hub calls

DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_FILE_SIZE = "20mb"

# The bundled models: choice label -> task of Restorer.load(None, task=...).
BUNDLED_CHOICES = {
    "Super-resolution x2 (light HAT)": "sr",
    "Deraining (light DRSformer)": "derain",
}
SCALES = [("x1 (deraining)", 1), ("x2", 2), ("x3", 3), ("x4", 4)]
IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"]

log = logging.getLogger(__name__)


def _path_of(file: Any) -> str | None:
    """Gradio hands uploads over as a path string (or an object with ``.name`` in older versions)."""
    if file is None:
        return None
    return str(getattr(file, "name", file))


def _as_list(checkpoint: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[Path]:
    if checkpoint is None:
        return []
    if isinstance(checkpoint, (str, os.PathLike)):
        return [Path(checkpoint)]
    return [Path(c) for c in checkpoint]


def _checkpoint_labels(paths: list[Path]) -> dict[str, Path]:
    """Dropdown label -> file: the file name, or the whole path when two files share a name."""
    names = [p.name for p in paths]
    labels: dict[str, Path] = {}
    for p in paths:
        label = p.name if names.count(p.name) == 1 and p.name not in BUNDLED_CHOICES else str(p.absolute())
        labels[label] = p.absolute()
    return labels


def _one_line(exc: BaseException, replace: dict[str, str] | None = None) -> str:
    """The first line of an error message, server paths of the upload replaced by its file name."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for old, new in (replace or {}).items():
        msg = msg.replace(old, new)
    return msg


def _html_text(msg: str) -> str:
    """gr.Error renders its message as HTML: escape what could start markup (``&``, ``<``), keep ``>=`` readable."""
    return msg.replace("&", "&amp;").replace("<", "&lt;")


def _preview_png(image, path: Path, scale: int) -> Path:
    """An 8-bit PNG of ``image`` (float (H, W, C) in [0, 1]) enlarged ``scale`` times by pixel repetition."""
    import numpy as np
    from PIL import Image

    a = np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    im = Image.fromarray(a)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    im.save(path, format="PNG")
    return path


def build_demo(checkpoint: str | os.PathLike | Sequence[str | os.PathLike] | None = None, device: str = "cpu"):
    """The Gradio Blocks app (not launched). API name of the main function: ``/restore``.

    ``checkpoint``: one or more server-side model files (ours or the authors') offered beside the
    two bundled models; they are loaded now, so a bad file fails at launch. The first one is
    selected by default, otherwise the bundled super-resolution model. Bundled models load when
    first chosen (a missing one is a one-line message, not a crash).
    """
    import gradio as gr

    from vitsuite.core.batch import split_ext
    from vitsuite.core.errors import UserError
    from vitsuite.core.imageio import read_image, write_image
    from vitsuite.pipelines.restoration.predict import SAMPLES
    from vitsuite.pipelines.restoration.predict import PredictOptions, Restorer

    extra = _checkpoint_labels(_as_list(checkpoint))
    cache: dict[str, Restorer] = {}
    lock = threading.Lock()
    for label, path in extra.items():
        cache[label] = Restorer.load(path, device=device)  # a bad --checkpoint fails here, with one line
    choices = list(BUNDLED_CHOICES) + list(extra)
    default_choice = next(iter(extra), choices[0])
    run_dirs: list[Path] = []  # our output folders; gradio copies the files into its own cache on return

    def get_restorer(choice: str | None) -> Restorer:
        """The cached restorer of a dropdown choice (loaded on first use)."""
        choice = choice or default_choice
        with lock:
            if choice not in cache:
                if choice in BUNDLED_CHOICES:
                    try:
                        cache[choice] = Restorer.load(None, task=BUNDLED_CHOICES[choice], device=device)
                    except UserError as exc:
                        raise UserError(f"{_one_line(exc)} (train it or start the demo with --checkpoint FILE)") \
                            from None
                else:
                    raise UserError(f"unknown model {choice!r}; choose one of: {', '.join(choices)}")
            return cache[choice]

    def model_info(choice: str | None):
        """On a model change: its scale, default tiling and a one-line description."""
        try:
            r = get_restorer(choice)
        except UserError as exc:
            return gr.update(), gr.update(), gr.update(), f"Model not available: {_one_line(exc)}"
        ts = r.tile_settings(PredictOptions())
        what = "super-resolution" if r.task == "sr" else "deraining"
        note = (f"Model: {r.describe()} - {what}, output x{r.scale}; default tile {ts.tile} px, overlap "
                f"{ts.overlap} px")
        return r.scale, ts.tile, ts.overlap, note

    def restore(file: Any, choice: str | None, scale: float | None, tile: float | None, overlap: float | None,
                ensemble: bool):
        """Restore the upload -> ((before, after) for the slider, output PNG, status line)."""
        src = _path_of(file)
        if not src:
            raise gr.Error("Upload an image first (PNG, JPEG, TIFF, BMP or WebP).", print_exception=False)
        name = Path(src).name
        hide = {src: name, str(Path(src).parent) + os.sep: ""}  # never show the server's upload folder
        try:
            r = get_restorer(choice)
            if scale is not None and int(scale) != r.scale:
                raise UserError(f"{choice or default_choice} is a x{r.scale} model; x{int(scale)} was requested "
                                "(the scale is fixed by the model: choose another model)")
            opts = PredictOptions(tile=None if tile is None else int(tile),
                                  overlap=None if overlap is None else int(overlap),
                                  self_ensemble=bool(ensemble))
            ts = r.tile_settings(opts)
            img, info = read_image(src)
            t0 = time.perf_counter()
            out = r.restore(img, opts, source=name)
            seconds = time.perf_counter() - t0
            with lock:  # the previous run's files are in gradio's cache by now
                while run_dirs:
                    shutil.rmtree(run_dirs.pop(), ignore_errors=True)
                out_dir = Path(tempfile.mkdtemp(prefix="vitsuite-restore-"))
                run_dirs.append(out_dir)
            stem = split_ext(name)[0]
            dst = write_image(out_dir / f"{stem}_{'x%d' % r.scale if r.task == 'sr' else 'derained'}.png", out,
                              info.bit_depth)
            before = _preview_png(img, out_dir / f"{stem}_input.png", r.scale)
        except UserError as exc:
            raise gr.Error(_html_text(_one_line(exc, hide)), print_exception=False) from None
        except Exception as exc:  # anything else: one line for the user, the traceback in the server log
            log.exception("restoration failed for %s", name)
            raise gr.Error(_html_text(f"{type(exc).__name__}: {_one_line(exc, hide)}"), print_exception=False) \
                from None
        H, W = img.shape[:2]
        tiling = "whole image" if not ts.tile or (H <= ts.tile and W <= ts.tile) else \
            f"tiles {ts.tile} px, overlap {ts.overlap} px"
        status = (f"{r.describe()} | {name}: {W}x{H} {info.mode} {info.bit_depth}-bit -> {out.shape[1]}x{out.shape[0]} "
                  f"PNG {min(info.bit_depth, 16)}-bit | {tiling}{', self-ensemble x8' if ensemble else ''} | "
                  f"{seconds:.2f} s")
        return (str(before), str(dst)), str(dst), status

    # delete_cache: uploads and results older than a day leave gradio's cache (checked hourly)
    with gr.Blocks(title="vitsuite restoration", delete_cache=(3600, 86400)) as demo:
        gr.Markdown(
            "## Image restoration: super-resolution (HAT) and deraining (DRSformer)\n"
            "Upload an image, choose a model and press **Restore**. The slider compares the input (enlarged "
            "by pixel repetition to the output size for super-resolution) with the result; the download is "
            "the full-resolution PNG with the input's bit depth and alpha.")
        with gr.Row():
            with gr.Column(scale=1):
                file = gr.File(label="Image (PNG, JPEG, TIFF, BMP, WebP; 16-bit and alpha are kept)",
                               file_types=IMAGE_TYPES, type="filepath", elem_id="input-file")
                model = gr.Dropdown(label="Model", choices=choices, value=default_choice, elem_id="model")
                scale = gr.Radio(label="Scale (fixed by the model)", choices=SCALES, value=None, elem_id="scale")
                with gr.Row():
                    tile = gr.Number(label="Tile (input px, 0 = whole image)", value=None, precision=0, minimum=0)
                    overlap = gr.Number(label="Overlap (px)", value=None, precision=0, minimum=0)
                ensemble = gr.Checkbox(label="Self-ensemble (8 flips / rotations, 8x slower)", value=False)
                run = gr.Button("Restore", variant="primary", elem_id="run")
                info = gr.Markdown(elem_id="model-info")
                samples = sorted(SAMPLES.glob("*/*.png"))
                if samples:
                    gr.Examples([[str(p)] for p in samples], inputs=[file],
                                label="Bundled samples (low-resolution / rainy)")
            with gr.Column(scale=2):
                slider = gr.ImageSlider(label="Before / after", type="filepath", format="png", elem_id="compare")
                out_file = gr.File(label="Result (full-resolution PNG)", elem_id="output-file")
                status = gr.Markdown(elem_id="status")
        model.change(model_info, model, [scale, tile, overlap, info], api_name="model_info")
        demo.load(model_info, model, [scale, tile, overlap, info], api_name=False)
        run.click(restore, [file, model, scale, tile, overlap, ensemble], [slider, out_file, status],
                  api_name="restore")
    return demo


def launch(checkpoint: str | os.PathLike | Sequence[str | os.PathLike] | None = None, host: str = DEFAULT_HOST,
           port: int | None = 7860, max_file_size: str | int | None = DEFAULT_MAX_FILE_SIZE,
           prevent_thread_lock: bool = False, quiet: bool = False, device: str = "cpu"):
    """Build and launch the demo; returns the Blocks (useful with ``prevent_thread_lock=True`` in tests)."""
    demo = build_demo(checkpoint, device=device)
    demo.queue(default_concurrency_limit=1)  # one restoration at a time: they use every core
    demo.launch(server_name=host, server_port=port, max_file_size=max_file_size,
                prevent_thread_lock=prevent_thread_lock, quiet=quiet, show_error=True)
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vitsuite.apps.restoration", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append",
                        help="a model file offered beside the bundled models (repeatable; ours or the authors')")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-file-size", default=DEFAULT_MAX_FILE_SIZE)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    args = parser.parse_args(argv)
    try:
        launch(args.checkpoint, args.host, args.port, args.max_file_size, device=args.device)
    except Exception as exc:  # UserError from a bad --checkpoint: one line, no traceback
        from vitsuite.core.errors import UserError

        if not isinstance(exc, UserError):
            raise
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
