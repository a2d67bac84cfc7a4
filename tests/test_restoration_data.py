"""Restoration data: pairing, bicubic downsampling, synthetic rain and the datasets' alignment/determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vitsuite.core.errors import ConfigError, InputError
from vitsuite.core.imageio import write_image
from vitsuite.pipelines.restoration.data import (
    SKIMAGE_HOLDOUT,
    SKIMAGE_TRAIN,
    PairedImageDataset,
    SyntheticPairDataset,
    add_rain,
    bicubic_downsample,
    mod_crop,
    pair_by_stem,
    skimage_images,
)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real 96x128 colour photo crop, float32 RGB in [0, 1]."""
    return skimage_images(["astronaut"])["astronaut"][80:176, 160:288].copy()


def _d4(image: np.ndarray, k: int) -> np.ndarray:
    """The 8 flips/rotations of an ``(H, W, C)`` array, numbered 0..7."""
    rotated = np.rot90(image, k % 4)
    return rotated[:, ::-1] if k >= 4 else rotated


# ------------------------------------------------------------------------------------------ pairing


def _touch_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        write_image(folder / name, np.zeros((4, 4, 3), np.float32))


def test_pair_by_stem_matches_across_extensions_and_strips_suffix(tmp_path):
    _touch_images(tmp_path / "lq", ["0001x4.png", "0002x4.jpg", "0003x4.tif"])
    _touch_images(tmp_path / "gt", ["0001.png", "0002.png", "0003.tiff"])
    (tmp_path / "gt" / "notes.txt").write_text("not an image")
    (tmp_path / "gt" / ".hidden.png").write_bytes(b"")
    pairs = pair_by_stem(tmp_path / "lq", tmp_path / "gt", lq_suffix="x4")
    assert [(lq.name, gt.name) for lq, gt in pairs] == [
        ("0001x4.png", "0001.png"), ("0002x4.jpg", "0002.png"), ("0003x4.tif", "0003.tiff"),
    ]


def test_pair_by_stem_reports_unmatched_files_on_one_line(tmp_path):
    _touch_images(tmp_path / "lq", ["a.png", "b.png", "c.png", "d.png", "e.png"])
    _touch_images(tmp_path / "gt", ["a.png", "z.jpg"])
    with pytest.raises(InputError) as exc:
        pair_by_stem(tmp_path / "lq", tmp_path / "gt")
    message = str(exc.value)
    assert "\n" not in message
    assert "4 LQ image(s)" in message and "b.png, c.png, d.png, ..." in message
    assert "1 GT image(s)" in message and "z.jpg" in message


def test_pair_by_stem_missing_folder(tmp_path):
    with pytest.raises(InputError, match="LQ folder not found"):
        pair_by_stem(tmp_path / "nope", tmp_path)


# ------------------------------------------------------------------------------------ degradations


def test_bicubic_keeps_constants_constant():
    constant = np.full((17, 23, 3), 0.3, np.float32)  # not multiples of 3: borders are exercised too
    np.testing.assert_allclose(bicubic_downsample(constant, 3), 0.3, atol=1e-6)
    assert bicubic_downsample(constant, 3).shape == (6, 8, 3)
    batch = torch.full((2, 1, 16, 16), 0.7)
    np.testing.assert_allclose(bicubic_downsample(batch, 4).numpy(), 0.7, atol=1e-6)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_samples_a_ramp_at_the_pixel_centres(scale):
    ramp = np.tile(np.arange(24 * scale, dtype=np.float32), (4, 1))
    small = bicubic_downsample(ramp, scale)
    centres = (np.arange(24) + 0.5) * scale - 0.5  # output pixel i covers input pixels [i*s, (i+1)*s)
    # Interior (kernel fully inside the image): a symmetric kernel reproduces a ramp exactly.
    np.testing.assert_allclose(small[0, 2:-2], centres[2:-2], atol=1e-4)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_matches_pillow_in_the_interior(photo, scale):
    """Pillow's BICUBIC has the same kernel (a = -0.5, stretched by ``scale``) and centres, but it
    truncates and renormalises the kernel at the image border where we mirror. Measured on this
    photo: interior (2 output pixels from the border) max |diff| ~2e-7 (float32 round-off);
    outermost row/column up to ~0.04, second one ~0.008 (on a [0, 1] scale)."""
    image = mod_crop(photo, scale)
    ours = bicubic_downsample(image, scale)
    size = (image.shape[1] // scale, image.shape[0] // scale)
    pillow = np.stack(
        [np.asarray(Image.fromarray(image[:, :, c]).resize(size, Image.BICUBIC)) for c in range(3)], axis=-1
    )
    difference = np.abs(ours - pillow)
    assert difference[2:-2, 2:-2].max() < 1e-5
    assert 1e-3 < difference.max() < 0.06  # the borders do differ, by a bounded amount


def test_bicubic_numpy_and_torch_agree(photo):
    batch = torch.from_numpy(photo).permute(2, 0, 1)[None]
    from_torch = bicubic_downsample(batch, 4)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(bicubic_downsample(photo, 4), from_torch)


def test_add_rain_changes_the_image_within_range_and_is_seeded(photo):
    rainy = add_rain(photo, np.random.default_rng(3))
    assert rainy.shape == photo.shape and rainy.dtype == np.float32
    assert rainy.min() >= 0.0 and rainy.max() <= 1.0
    assert np.abs(rainy - photo).mean() > 0.01
    assert (rainy >= photo - 1e-6).all()  # screen blending only brightens
    np.testing.assert_array_equal(rainy, add_rain(photo, np.random.default_rng(3)))
    assert not np.array_equal(rainy, add_rain(photo, np.random.default_rng(4)))
    gray = add_rain(photo[:, :, 0], np.random.default_rng(3))
    assert gray.shape == photo.shape[:2]


# -------------------------------------------------------------------------------------- datasets


@pytest.fixture()
def sr_pair(tmp_path, photo):
    """GT photo and its x4 bicubic LQ, stored as float TIFFs (no quantisation: exact alignment checks)."""
    write_image(tmp_path / "gt" / "img.tif", photo, bit_depth=32)
    write_image(tmp_path / "lq" / "img.tif", bicubic_downsample(photo, 4), bit_depth=32)
    return pair_by_stem(tmp_path / "lq", tmp_path / "gt")


def test_sr_patches_are_aligned(sr_pair):
    dataset = PairedImageDataset(sr_pair, scale=4, patch_size=64, rng_seed=1)
    origins = set()
    for epoch in range(3):
        dataset.set_epoch(epoch)
        item = dataset[0]
        lq, gt = item["lq"].permute(1, 2, 0).numpy(), item["gt"].permute(1, 2, 0).numpy()
        assert lq.shape == (16, 16, 3) and gt.shape == (64, 64, 3) and item["name"] == "img"
        # Away from the patch border (2 LQ pixels), downsampling the GT patch reproduces the LQ patch;
        # a crop misaligned by one LQ pixel would differ by ~0.1 on this photo.
        np.testing.assert_allclose(lq[2:-2, 2:-2], bicubic_downsample(gt, 4)[2:-2, 2:-2], atol=1e-5)
        origins.add(float(gt[0, 0, 0]))
    assert len(origins) > 1  # each epoch crops elsewhere


def test_augment_applies_the_same_transform_to_lq_and_gt(sr_pair):
    plain = PairedImageDataset(sr_pair, scale=4, patch_size=64, augment=False, rng_seed=5)
    augmented = PairedImageDataset(sr_pair, scale=4, patch_size=64, augment=True, rng_seed=5)
    used = set()
    for epoch in range(12):
        plain.set_epoch(epoch)
        augmented.set_epoch(epoch)
        reference, item = plain[0], augmented[0]  # same crop: the crop is drawn before the flip
        gt_ref, lq_ref = (reference[k].permute(1, 2, 0).numpy() for k in ("gt", "lq"))
        gt_aug, lq_aug = (item[k].permute(1, 2, 0).numpy() for k in ("gt", "lq"))
        matches = [k for k in range(8) if np.array_equal(_d4(gt_ref, k), gt_aug)]
        assert matches, "augmented GT is not a flip/rotation of the plain GT"
        np.testing.assert_array_equal(_d4(lq_ref, matches[0]), lq_aug)
        used.add(matches[0])
    assert len(used) >= 3


def test_16bit_and_gray_inputs_load_as_rgb_float(tmp_path):
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 65536, (16, 16, 1)).astype(np.float32) / np.float32(65535)
    lq = np.dstack([rng.random((8, 8)), np.ones((8, 8))]).astype(np.float32)  # gray + alpha
    write_image(tmp_path / "gt" / "x.png", gt, bit_depth=16)
    write_image(tmp_path / "lq" / "x.png", lq)
    item = PairedImageDataset(pair_by_stem(tmp_path / "lq", tmp_path / "gt"), scale=2)[0]
    assert item["gt"].shape == (3, 16, 16) and item["lq"].shape == (3, 8, 8)
    assert item["gt"].dtype == torch.float32
    np.testing.assert_array_equal(item["gt"].numpy(), np.repeat(gt.transpose(2, 0, 1), 3, axis=0))
    np.testing.assert_allclose(item["lq"][1].numpy(), lq[:, :, 0], atol=0.5 / 255)  # alpha dropped, gray kept


def test_mismatched_sizes_raise_one_line_input_error(tmp_path):
    write_image(tmp_path / "gt" / "x.png", np.zeros((30, 40, 3), np.float32))
    write_image(tmp_path / "lq" / "x.png", np.zeros((10, 10, 3), np.float32))
    dataset = PairedImageDataset(pair_by_stem(tmp_path / "lq", tmp_path / "gt"), scale=2)
    with pytest.raises(InputError) as exc:
        dataset[0]
    message = str(exc.value)
    assert "\n" not in message
    assert "gt/x.png is 30x40" in message.replace("\\", "/") and "lq/x.png is 10x10" in message.replace("\\", "/")


def test_gt_is_mod_cropped_before_the_size_check(tmp_path):
    write_image(tmp_path / "gt" / "x.png", np.zeros((33, 42, 3), np.float32))
    write_image(tmp_path / "lq" / "x.png", np.zeros((8, 10, 3), np.float32))
    item = PairedImageDataset(pair_by_stem(tmp_path / "lq", tmp_path / "gt"), scale=4)[0]
    assert item["gt"].shape == (3, 32, 40)


def test_patch_size_must_be_a_multiple_of_the_scale(sr_pair):
    with pytest.raises(ConfigError, match="multiple"):
        PairedImageDataset(sr_pair, scale=4, patch_size=30)


def test_synthetic_sr_items_are_seeded_and_vary_per_epoch(photo):
    def make(seed):
        return SyntheticPairDataset([photo], task="sr", scale=2, patch_size=32, augment=True, length=4, rng_seed=seed)

    first, second = make(7), make(7)
    assert len(first) == 4
    for index in range(4):
        a, b = first[index], second[index]
        assert a["lq"].shape == (3, 16, 16) and a["gt"].shape == (3, 32, 32)
        assert torch.equal(a["lq"], b["lq"]) and torch.equal(a["gt"], b["gt"])
    assert not torch.equal(first[0]["gt"], first[1]["gt"])  # different items, different patches
    assert not torch.equal(make(8)[0]["gt"], first[0]["gt"])
    first.set_epoch(1)
    assert not torch.equal(first[0]["gt"], second[0]["gt"])

    item = second[0]
    expected = bicubic_downsample(item["gt"][None], 2)[0].clamp(0, 1)
    torch.testing.assert_close(item["lq"], torch.round(expected * 255) / 255, atol=1e-6, rtol=0)

    batch = next(iter(DataLoader(second, batch_size=4)))
    assert batch["lq"].shape == (4, 3, 16, 16) and len(batch["name"]) == 4


def test_synthetic_derain_validation_is_deterministic(photo):
    def make():
        return SyntheticPairDataset([photo, photo[::-1].copy()], task="derain", rng_seed=0, quantize_lq=False)

    first, second = make(), make()
    for index in range(2):
        a, b = first[index], second[index]
        assert a["lq"].shape == a["gt"].shape == (3, 96, 128)
        assert torch.equal(a["lq"], b["lq"])
        assert a["lq"].min() >= 0 and a["lq"].max() <= 1
        assert (a["lq"] - a["gt"]).abs().mean() > 0.01
    with pytest.raises(ConfigError, match="scale must be 1"):
        SyntheticPairDataset([photo], task="derain", scale=2)


def test_skimage_images_returns_the_holdout_photos():
    assert not set(SKIMAGE_TRAIN) & set(SKIMAGE_HOLDOUT)
    images = skimage_images(list(SKIMAGE_HOLDOUT) + ["camera", "logo"])
    assert set(images) == set(SKIMAGE_HOLDOUT) | {"camera", "logo"}
    for name, image in images.items():
        assert image.dtype == np.float32 and image.ndim == 3 and image.shape[2] == 3, name
        assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.05, name
    assert images["astronaut"].shape == (512, 512, 3)
    np.testing.assert_array_equal(images["camera"][:, :, 0], images["camera"][:, :, 2])  # gray replicated
    with pytest.raises(ConfigError, match="unknown"):
        skimage_images(["eagle"])
