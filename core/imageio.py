"""Reading and writing 2-D images for every pipeline: one float convention, one set of error messages.

:func:`read_image` returns ``float32 (H, W, C)`` in ``[0, 1]`` with the channels as stored
(1 gray, 2 gray+alpha, 3 RGB, 4 RGBA; always RGB order, alpha last) plus an :class:`ImageInfo`
describing the file, so a pipeline can write its result back with the same bit depth and alpha.
:func:`write_image` is the inverse and writes atomically.

The decoder is chosen from the file's *content* (magic bytes), not its extension, because a
misnamed file (a JPEG saved as ``.png``) is common and every decoder below handles it; the
extension only has to be one of :data:`IMAGE_EXTS`:

* PNG -> OpenCV: it keeps 16-bit colour (Pillow reduces 16-bit RGB PNGs to 8 bits) and expands
  palettes and sub-byte depths; the stored colour type is read from the IHDR chunk so gray+alpha
  (which OpenCV expands to BGRA) is returned as 2 channels.
* TIFF -> tifffile: float samples, planar layouts, extra samples and palettes are all explicit.
  Compressions tifffile cannot decode without the optional ``imagecodecs`` package (LZW, JPEG)
  fall back to OpenCV, and photometric models it leaves undecoded (CMYK, YCbCr) to Pillow.
* everything else (JPEG, BMP, WebP) -> Pillow, which applies the EXIF orientation the way photo
  viewers do (OpenCV's ``IMREAD_UNCHANGED`` ignores it).
"""

from __future__ import annotations

import contextlib
import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import tifffile
import torch
from PIL import Image, ImageOps

from vitsuite.core.errors import InputError, UserError
from vitsuite.core.fileio import atomic_path

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")

_MODES = {1: "gray", 2: "gray_alpha", 3: "rgb", 4: "rgba"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
_CORRUPT = "cannot decode image (file is truncated or not an image)"

# Largest bit depth each output format can store; see write_image.
_MAX_WRITE_DEPTH = {".png": 16, ".tif": 32, ".tiff": 32, ".jpg": 8, ".jpeg": 8, ".bmp": 8, ".webp": 8}
_NO_ALPHA_EXTS = (".jpg", ".jpeg", ".bmp")


@dataclass
class ImageInfo:
    """What :func:`read_image` found in a file.

    ``channels`` is as stored (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA; palettes count as their
    expanded colours). ``bit_depth`` is 8 or 16 for integer images (1-, 2- and 4-bit images are
    reported as 8, the grid they are returned on) and 32 for floating-point TIFFs of any width.
    """

    path: str
    height: int
    width: int
    channels: int
    bit_depth: int
    has_alpha: bool

    @property
    def mode(self) -> str:
        """``"gray"``, ``"gray_alpha"``, ``"rgb"`` or ``"rgba"``."""
        return _MODES[self.channels]


# ----------------------------------------------------------------------------------------- reading


def read_image(path: str | Path) -> tuple[np.ndarray, ImageInfo]:
    """Read a PNG/JPEG/TIFF/BMP/WebP image as ``float32 (H, W, C)`` in ``[0, 1]`` plus its :class:`ImageInfo`.

    Integer images are divided by 255 (8-bit and below) or 65535 (16-bit). Floating-point TIFFs
    are taken to be on the ``[0, 1]`` scale already and are clipped to it (values outside are
    not meaningful to the models that consume these arrays); NaN or inf raise. Channels are in
    RGB(A) order with C as stored: gray stays 1 channel and alpha stays the last channel.
    Palettes are expanded to RGB (RGBA when the palette has transparency), 1-bit images become
    0/1, JPEG/WebP EXIF orientation is applied. Only the first page of a multi-page TIFF is read.

    Raises :class:`InputError` (one line naming the file) for a missing, empty, truncated or
    corrupt file, an unsupported extension or sample type, NaN/inf samples or a 0-size image.
    """
    path = Path(path)
    if path.suffix.lower() not in IMAGE_EXTS:
        raise InputError(
            f"unsupported image extension {path.suffix or '(none)'!r}; expected one of {', '.join(IMAGE_EXTS)}",
            path=path,
        )
    if not path.exists():
        raise InputError("file not found", path=path)
    if not path.is_file():
        raise InputError("is not a file", path=path)
    data = path.read_bytes()
    if not data:
        raise InputError("file is empty", path=path)

    if data.startswith(_PNG_SIGNATURE):
        pixels = _decode_png(data, path)
    elif data[:4] in _TIFF_MAGICS:
        pixels = _decode_tiff(data, path)
    else:
        pixels = _decode_pil(data, path)

    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    height, width, channels = pixels.shape
    if height == 0 or width == 0:
        raise InputError(f"image has zero size ({height}x{width})", path=path)
    if channels not in _MODES:
        raise InputError(
            f"image has {channels} channels; expected 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA)", path=path
        )

    image, bit_depth = _to_unit_float(pixels, path)
    info = ImageInfo(
        path=str(path), height=height, width=width, channels=channels, bit_depth=bit_depth,
        has_alpha=channels in (2, 4),
    )
    return image, info


def _to_unit_float(pixels: np.ndarray, path: Path) -> tuple[np.ndarray, int]:
    """Integer/bool/float samples -> ``float32`` in ``[0, 1]`` and the bit depth to report."""
    if pixels.dtype == np.bool_:
        return pixels.astype(np.float32), 8
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / np.float32(255.0), 8
    if pixels.dtype == np.uint16:
        return pixels.astype(np.float32) / np.float32(65535.0), 16
    if np.issubdtype(pixels.dtype, np.floating):
        if not np.isfinite(pixels).all():
            raise InputError("image contains NaN or inf values", path=path)
        return np.clip(pixels.astype(np.float32), 0.0, 1.0), 32
    raise InputError(
        f"unsupported sample type {pixels.dtype} (expected 8/16-bit unsigned integers or float)", path=path
    )


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    # OpenCV prints its own warnings for truncated files; we raise a one-line InputError instead.
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def _cv2_decode(data: bytes) -> np.ndarray | None:
    """OpenCV decode with ``IMREAD_UNCHANGED`` (keeps depth and alpha); colour comes back as RGB(A)."""
    with _quiet_opencv():
        try:
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error:
            return None
    if pixels is None:
        return None
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    elif pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGBA)
    return pixels


def _decode_png(data: bytes, path: Path) -> np.ndarray:
    # IHDR is always the first chunk: length(4) 'IHDR'(4) width(4) height(4) depth(1) colour type(1).
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise InputError(_CORRUPT, path=path)
    colour_type = data[25]
    pixels = _cv2_decode(data)
    if pixels is None:
        raise InputError(_CORRUPT, path=path)
    if colour_type in (0, 4) and pixels.ndim == 3:
        # Stored as gray (+alpha, or a tRNS colour key); OpenCV expanded it to RGB(A) with R=G=B.
        pixels = pixels[:, :, [0, 3]] if pixels.shape[2] == 4 else pixels[:, :, 0]
    return pixels


def _decode_tiff(data: bytes, path: Path) -> np.ndarray:
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages[0]
            photometric = page.photometric
            samples = int(page.samplesperpixel)
            colormap = page.colormap
            axes = page.axes
            try:
                pixels = page.asarray()
            except ValueError as exc:
                if "imagecodecs" not in str(exc):
                    raise
                return _decode_tiff_cv2(data, path, samples, str(page.compression.name))
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types (TiffFileError, ValueError, struct.error...)
        raise InputError(_CORRUPT, path=path) from exc

    if "S" in axes:
        pixels = np.moveaxis(pixels, axes.index("S"), -1)  # planar (separate) layout -> samples last
    image_ndim = 3 if "S" in axes else 2
    while pixels.ndim > image_ndim and pixels.shape[0] == 1:  # drop singleton leading axes (e.g. a 1-deep 'Z')
        pixels = pixels[0]
    if pixels.ndim not in (2, 3):
        raise InputError(f"unsupported TIFF layout (axes {axes}, shape {tuple(pixels.shape)})", path=path)

    if photometric == tifffile.PHOTOMETRIC.MINISWHITE:
        if pixels.dtype == np.bool_:
            pixels = ~pixels
        elif np.issubdtype(pixels.dtype, np.integer):
            pixels = np.iinfo(pixels.dtype).max - pixels
        else:
            pixels = 1.0 - pixels
    elif photometric == tifffile.PHOTOMETRIC.PALETTE:
        if colormap is None or pixels.ndim != 2:
            raise InputError("palette TIFF without a usable colour map", path=path)
        rgb = np.moveaxis(np.asarray(colormap)[:, pixels.astype(np.intp)], 0, -1)
        # The TIFF colour map is 16-bit by definition; most writers store 8-bit colours times 257.
        pixels = (rgb // 257).astype(np.uint8) if np.all(rgb % 257 == 0) else rgb.astype(np.uint16)
    elif photometric not in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB):
        # CMYK, YCbCr, CIELab...: Pillow converts these to RGB.
        return _decode_pil(data, path)
    return pixels


def _decode_tiff_cv2(data: bytes, path: Path, samples: int, compression: str) -> np.ndarray:
    pixels = _cv2_decode(data)
    if pixels is None:
        raise InputError(
            f"cannot decode TIFF compression {compression} (install the 'imagecodecs' package)", path=path
        )
    if samples == 2 and pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = pixels[:, :, [0, 3]]  # OpenCV expands gray+alpha to RGBA
    return pixels


def _decode_pil(data: bytes, path: Path) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)  # photo viewers honour the EXIF orientation
    except Image.DecompressionBombError as exc:
        raise InputError(f"image is too large to decode safely ({exc})", path=path) from exc
    except Exception as exc:  # UnidentifiedImageError, OSError('truncated'), SyntaxError, ValueError...
        raise InputError(_CORRUPT, path=path) from exc

    mode = image.mode
    if mode == "1":
        return np.asarray(image, dtype=np.bool_)
    if mode in ("L", "LA", "RGB", "RGBA"):
        return np.asarray(image)
    if mode in ("P", "PA"):
        has_transparency = mode == "PA" or "transparency" in image.info
        return np.asarray(image.convert("RGBA" if has_transparency else "RGB"))
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)
    if mode in ("RGBa", "La"):  # premultiplied alpha -> straight alpha
        return np.asarray(image.convert(mode[0] + "A" if mode == "La" else "RGBA"))
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return np.asarray(image.convert("RGB"))
    raise InputError(f"unsupported image mode {mode!r}", path=path)


# ----------------------------------------------------------------------------------------- writing


def write_image(
    path: str | Path, image: np.ndarray, bit_depth: int = 8, *, drop_alpha: bool = False
) -> Path:
    """Write ``image`` (float ``(H, W, C)`` or ``(H, W)`` in ``[0, 1]``, C in 1..4, or already quantised
    uint8 / uint16 samples) atomically; return ``path``.

    The format comes from the extension. Values are clipped to ``[0, 1]`` and *rounded* to the
    integer grid. ``bit_depth`` (8, 16 or 32) is the requested precision; each format stores as
    much of it as it can: PNG up to 16 bits, TIFF up to 32 (float32 samples), JPEG/WebP/BMP 8
    bits only - so ``write_image(out, x, info.bit_depth)`` always works for an ``info`` from
    :func:`read_image`. JPEG is written at quality 95, WebP losslessly (restoration outputs
    should not gain the encoder's own artefacts), gray WebP as RGB (WebP has no gray mode).

    JPEG and BMP cannot store alpha. Silently dropping it would turn transparent pixels into
    whatever colour they happen to hold, so this raises :class:`UserError` unless
    ``drop_alpha=True`` (then the alpha channel is discarded, not composited).
    Unknown extensions raise :class:`UserError` before anything is written; NaN/inf raise too.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in _MAX_WRITE_DEPTH:
        raise UserError(
            f"cannot write image format {path.suffix or '(none)'!r}; use one of {', '.join(IMAGE_EXTS)}", path=path
        )
    if bit_depth not in (8, 16, 32):
        raise UserError(f"bit depth must be 8, 16 or 32, got {bit_depth}", path=path)
    image = np.asarray(image)
    if image.dtype in (np.uint8, np.uint16):
        # already quantised samples (e.g. written band by band by a tiled predictor): stored as they
        # are, at their own depth (uint16 -> 16-bit where the format allows, else rescaled to 8)
        if image.ndim == 2:
            image = image[:, :, None]
        if image.dtype == np.uint16 and _MAX_WRITE_DEPTH[ext] < 16:
            image = (image.astype(np.uint32) * 255 + 32767) // 65535
            image = image.astype(np.uint8)
        if ext in _NO_ALPHA_EXTS and image.shape[2] in (2, 4):
            if not drop_alpha:
                raise UserError(f"{ext[1:].upper()} cannot store an alpha channel; pass drop_alpha=True", path=path)
            image = image[:, :, : image.shape[2] - 1]
        with atomic_path(path) as tmp:
            tmp.write_bytes(_encode(np.ascontiguousarray(image), ext))
        return path
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"write_image expects a float image in [0, 1] or uint8/uint16 samples, got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in _MODES or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"write_image expects (H, W) or (H, W, C) with C in 1..4 and H, W > 0, got {image.shape}")
    if not np.isfinite(image).all():
        raise UserError("image to write contains NaN or inf values", path=path)

    channels = image.shape[2]
    if ext in _NO_ALPHA_EXTS and channels in (2, 4):
        if not drop_alpha:
            raise UserError(
                f"{ext[1:].upper()} cannot store an alpha channel; write .png/.tif/.webp or pass drop_alpha=True",
                path=path,
            )
        image = image[:, :, : channels - 1]

    depth = min(bit_depth, _MAX_WRITE_DEPTH[ext])
    if depth == 32:
        samples = np.ascontiguousarray(np.clip(image, 0.0, 1.0), dtype=np.float32)
    else:
        samples = _quantize(image, depth)

    with atomic_path(path) as tmp:
        tmp.write_bytes(_encode(samples, ext))
    return path


def _quantize(image: np.ndarray, depth: int, rows: int = 256) -> np.ndarray:
    """``(H, W, C)`` float in [0, 1] (clipped) -> uint8 / uint16, rounded to nearest, in bands of ``rows``
    rows so that a large output (e.g. 8192 x 8192 x 3) never has a full-size float temporary."""
    max_value = np.float32(255.0 if depth == 8 else 65535.0)
    out = np.empty(image.shape, np.uint8 if depth == 8 else np.uint16)
    for r0 in range(0, image.shape[0], rows):
        band = np.clip(image[r0:r0 + rows].astype(np.float32), 0.0, 1.0)
        out[r0:r0 + rows] = np.rint(band * max_value)  # float32 is exact enough: error << 0.5 step at 65535
    return out


def _encode(samples: np.ndarray, ext: str) -> bytes:
    """``(H, W, C)`` uint8/uint16/float32 samples -> encoded file bytes for ``ext``."""
    channels = samples.shape[2]
    if ext == ".png":
        if channels == 2:
            return _encode_png_gray_alpha(samples)  # neither OpenCV nor Pillow writes 16-bit gray+alpha
        if channels == 3:
            samples = cv2.cvtColor(samples, cv2.COLOR_RGB2BGR)
        elif channels == 4:
            samples = cv2.cvtColor(samples, cv2.COLOR_RGBA2BGRA)
        ok, buffer = cv2.imencode(".png", samples)
        if not ok:
            raise RuntimeError("OpenCV failed to encode PNG")
        return buffer.tobytes()
    if ext in (".tif", ".tiff"):
        buffer = io.BytesIO()
        kwargs: dict = {"photometric": "rgb" if channels >= 3 else "minisblack", "compression": "zlib"}
        if channels in (2, 4):
            kwargs.update(planarconfig="contig", extrasamples=["unassalpha"])
        if channels == 1:
            samples = samples[:, :, 0]
        tifffile.imwrite(buffer, samples, **kwargs)
        return buffer.getvalue()
    # JPEG / BMP / WebP: 8-bit through Pillow.
    pil_image = Image.fromarray(samples[:, :, 0] if channels == 1 else samples)  # uint8 -> L / LA / RGB / RGBA
    buffer = io.BytesIO()
    if ext in (".jpg", ".jpeg"):
        pil_image.save(buffer, format="JPEG", quality=95)
    elif ext == ".webp":
        if channels < 3:
            pil_image = pil_image.convert("RGBA" if channels == 2 else "RGB")
        pil_image.save(buffer, format="WEBP", lossless=True, exact=True)  # exact: keep RGB under alpha 0
    else:
        pil_image.save(buffer, format="BMP")
    return buffer.getvalue()


def _encode_png_gray_alpha(samples: np.ndarray) -> bytes:
    """Minimal PNG encoder for gray+alpha (colour type 4) at 8 or 16 bits; filter 0 on every row."""
    height, width, _ = samples.shape
    depth = 16 if samples.dtype == np.uint16 else 8
    rows = samples.astype(">u2" if depth == 16 else np.uint8).reshape(height, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # leading filter byte 0 per row

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, depth, 4, 0, 0, 0)
    return (
        _PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b"")
    )


# ----------------------------------------------------------------------------------------- tensors


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, C)`` or ``(H, W)`` array -> contiguous ``float32`` tensor ``(1, C, H, W)``."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"to_tensor expects (H, W) or (H, W, C), got {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """``(1, C, H, W)`` or ``(C, H, W)`` tensor (any device/dtype) -> ``float32 (H, W, C)`` array."""
    if tensor.ndim == 4:
        if tensor.shape[0] != 1:
            raise ValueError(f"to_numpy expects a batch of one, got {tuple(tensor.shape)}")
        tensor = tensor[0]
    if tensor.ndim != 3:
        raise ValueError(f"to_numpy expects (1, C, H, W) or (C, H, W), got {tuple(tensor.shape)}")
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).permute(1, 2, 0).numpy())
