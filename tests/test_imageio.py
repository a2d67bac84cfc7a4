"""core.imageio: exact round trips, channel layouts, EXIF orientation, palettes and one-line errors."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from vitsuite.core import imageio
from vitsuite.core.errors import InputError, UserError
from vitsuite.core.imageio import ImageInfo, read_image, to_numpy, to_tensor, write_image


def _grid_image(rng: np.random.Generator, shape: tuple[int, ...], levels: int) -> np.ndarray:
    """Random float32 image whose values lie exactly on the ``levels - 1`` integer grid."""
    return (rng.integers(0, levels, shape).astype(np.float32) / np.float32(levels - 1))


def _assert_one_line_naming(exc: pytest.ExceptionInfo, name: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert name in message


@pytest.mark.parametrize("ext", [".png", ".tif", ".tiff"])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_8bit_round_trip_is_exact(tmp_path, ext, channels):
    image = _grid_image(np.random.default_rng(channels), (9, 7, channels), 256)
    write_image(tmp_path / f"a{ext}", image, bit_depth=8)
    back, info = read_image(tmp_path / f"a{ext}")
    assert back.dtype == np.float32 and back.shape == (9, 7, channels)
    np.testing.assert_array_equal(back, image)
    assert info == ImageInfo(str(tmp_path / f"a{ext}"), 9, 7, channels, 8, channels in (2, 4))
    assert info.mode == {1: "gray", 2: "gray_alpha", 3: "rgb", 4: "rgba"}[channels]


@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_round_trip_keeps_values_8bit_cannot(tmp_path, ext, channels):
    image = _grid_image(np.random.default_rng(10 + channels), (8, 6, channels), 65536)
    image[0, 0, 0] = np.float32(1000) / np.float32(65535)  # not a multiple of 257: off the 8-bit grid
    write_image(tmp_path / f"a{ext}", image, bit_depth=16)
    back, info = read_image(tmp_path / f"a{ext}")
    np.testing.assert_array_equal(back, image)
    assert info.bit_depth == 16 and info.channels == channels

    write_image(tmp_path / f"b{ext}", image, bit_depth=8)
    coarse, _ = read_image(tmp_path / f"b{ext}")
    assert not np.array_equal(coarse, image)
    np.testing.assert_allclose(coarse, image, atol=0.5 / 255 + 1e-6)  # rounded, not truncated


def test_float_tiff_is_clipped_and_reported_as_32bit(tmp_path):
    data = np.array([[-0.5, 0.25], [0.75, 2.0]], np.float32)
    tifffile.imwrite(tmp_path / "f.tif", data)
    image, info = read_image(tmp_path / "f.tif")
    np.testing.assert_array_equal(image[:, :, 0], [[0.0, 0.25], [0.75, 1.0]])
    assert info.bit_depth == 32 and info.mode == "gray"

    write_image(tmp_path / "g.tif", image, bit_depth=32)
    back, info = read_image(tmp_path / "g.tif")
    np.testing.assert_array_equal(back, image)
    assert info.bit_depth == 32


def test_float_tiff_with_nan_is_an_input_error(tmp_path):
    tifffile.imwrite(tmp_path / "nan.tif", np.array([[0.1, np.nan]], np.float32))
    with pytest.raises(InputError, match="NaN or inf") as exc:
        read_image(tmp_path / "nan.tif")
    _assert_one_line_naming(exc, "nan.tif")


def test_rgb_order_and_lzw_tiff_fallback(tmp_path):
    # OpenCV writes LZW TIFFs (tifffile needs imagecodecs for LZW) in BGR order: we must return RGB.
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200  # red
    cv2.imwrite(str(tmp_path / "lzw.tif"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "red.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    for name in ("lzw.tif", "red.png"):
        image, info = read_image(tmp_path / name)
        assert info.mode == "rgb"
        np.testing.assert_allclose(image[0, 0], [200 / 255, 0, 0])


def test_jpeg_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :32] = (255, 0, 0)  # left half red, right half blue
    stored[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: viewers rotate the stored image 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "photo.jpg", quality=95, exif=exif.tobytes())

    image, info = read_image(tmp_path / "photo.jpg")
    assert image.shape == (64, 32, 3) and (info.height, info.width) == (64, 32)
    # Clockwise: the stored left (red) half ends up on top.
    assert image[8, 16, 0] > 0.9 and image[8, 16, 2] < 0.1
    assert image[56, 16, 2] > 0.9 and image[56, 16, 0] < 0.1


def test_palette_png_is_expanded(tmp_path):
    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255]
    image = Image.fromarray(indices).convert("P")
    image.putdata(indices.ravel().tolist())
    image.putpalette(palette)
    image.save(tmp_path / "p.png")
    image.save(tmp_path / "pt.png", transparency=1)

    rgb, info = read_image(tmp_path / "p.png")
    assert info.mode == "rgb"
    expected = np.array(palette, np.float32).reshape(3, 3)[indices] / 255
    np.testing.assert_array_equal(rgb, expected)

    rgba, info = read_image(tmp_path / "pt.png")
    assert info.mode == "rgba" and info.has_alpha
    np.testing.assert_array_equal(rgba[..., :3], expected)
    np.testing.assert_array_equal(rgba[..., 3], (indices != 1).astype(np.float32))


@pytest.mark.parametrize("ext", [".png", ".tif", ".bmp"])
def test_one_bit_images_read_as_zero_one_gray(tmp_path, ext):
    bits = np.random.default_rng(0).integers(0, 2, (5, 9)).astype(bool)
    Image.fromarray(bits).save(tmp_path / f"b{ext}")
    image, info = read_image(tmp_path / f"b{ext}")
    assert info.mode == "gray" and info.bit_depth == 8
    np.testing.assert_array_equal(image[:, :, 0], bits.astype(np.float32))


def test_misnamed_file_is_decoded_by_content(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 4), 128, np.uint8)).save(buffer, format="JPEG")
    (tmp_path / "actually_jpeg.png").write_bytes(buffer.getvalue())
    image, info = read_image(tmp_path / "actually_jpeg.png")
    assert info.mode == "gray" and abs(float(image.mean()) - 128 / 255) < 0.02


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("random.png", np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes(), "cannot decode"),
        ("truncated.png", _png_bytes()[:2000], "cannot decode"),
        ("truncated.jpg", _jpeg_bytes()[:1000], "cannot decode"),
        ("truncated.tif", b"II*\x00" + b"\x08\x00\x00\x00\x05", "cannot decode"),
        ("empty.png", b"", "file is empty"),
        ("animation.gif", b"GIF89a", "unsupported image extension"),
    ],
)
def test_bad_files_raise_one_line_input_error(tmp_path, name, content, expected):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=expected) as exc:
        read_image(tmp_path / name)
    _assert_one_line_naming(exc, name)


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not found") as exc:
        read_image(tmp_path / "nowhere.png")
    _assert_one_line_naming(exc, "nowhere.png")


def test_jpeg_refuses_alpha_unless_dropped(tmp_path):
    rgba = np.random.default_rng(0).random((8, 8, 4)).astype(np.float32)
    with pytest.raises(UserError, match="alpha") as exc:
        write_image(tmp_path / "out.jpg", rgba)
    _assert_one_line_naming(exc, "out.jpg")
    assert list(tmp_path.iterdir()) == []
    write_image(tmp_path / "out.jpg", rgba, drop_alpha=True)
    assert read_image(tmp_path / "out.jpg")[1].mode == "rgb"


def test_write_is_atomic(tmp_path, monkeypatch):
    image = np.zeros((4, 4, 3), np.float32)
    with pytest.raises(UserError, match="cannot write image format") as exc:
        write_image(tmp_path / "out.gif", image)
    _assert_one_line_naming(exc, "out.gif")
    assert list(tmp_path.iterdir()) == []

    write_image(tmp_path / "keep.png", image)
    before = (tmp_path / "keep.png").read_bytes()

    def failing_encoder(samples, ext):
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(imageio, "_encode", failing_encoder)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        write_image(tmp_path / "keep.png", np.ones((4, 4, 3), np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]  # no temp file left, old file intact
    assert (tmp_path / "keep.png").read_bytes() == before


def test_write_clips_and_rounds(tmp_path):
    values = np.array([[-0.3, 0.5 / 255 + 1e-4, 0.49 / 255, 1.7]], np.float32)
    write_image(tmp_path / "c.png", values)
    back, _ = read_image(tmp_path / "c.png")
    np.testing.assert_array_equal(np.rint(back[0, :, 0] * 255), [0, 1, 0, 255])


def test_tensor_helpers_round_trip():
    image = np.random.default_rng(0).random((5, 6, 3)).astype(np.float32)
    tensor = to_tensor(image)
    assert tensor.shape == (1, 3, 5, 6) and tensor.dtype == torch.float32
    np.testing.assert_array_equal(to_numpy(tensor), image)
    np.testing.assert_array_equal(to_numpy(tensor[0].double()), image)
    assert to_tensor(image[:, :, 0]).shape == (1, 1, 5, 6)
