"""Restoration metrics against scikit-image on real photographs, plus the paper conventions.

Averaging regions: scikit-image's ``structural_similarity`` filters the whole image (reflect
padding) and then averages the SSIM map over the image cropped by ``(win_size - 1) // 2 = 5``
pixels on every side. With ``gaussian_weights=True, sigma=1.5`` its window is the 11-tap Gaussian
truncated at 3.5 sigma (radius 5), i.e. exactly ours, so the averaged pixels never see the
padding and both implementations compute the same numbers: the tolerance is float64 round-off.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage import color, data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from vitsuite.core.errors import InputError
from vitsuite.pipelines.restoration.metrics import psnr, rgb_to_y, ssim


def _to_batch(*images: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` float arrays -> ``(B, 3, H, W)`` float64 tensor."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def photo_pairs() -> tuple[np.ndarray, np.ndarray]:
    """Two real photos (clean) and degraded versions: noise on one, blur on the other. Float64 [0, 1]."""
    rng = np.random.default_rng(0)
    astronaut = data.astronaut()[100:196, 150:278].astype(np.float64) / 255
    coffee = data.coffee()[150:246, 200:328].astype(np.float64) / 255
    noisy = np.clip(astronaut + rng.normal(0.0, 0.04, astronaut.shape), 0, 1)
    blurred = gaussian_filter(coffee, sigma=(1.2, 1.2, 0))
    return np.stack([astronaut, coffee]), np.stack([noisy, blurred])


def _skimage_quantised(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255)


def _skimage_y(image: np.ndarray) -> np.ndarray:
    # skimage's rgb2ycbcr is the same BT.601 studio-swing transform (Y in [16, 235]).
    return color.rgb2ycbcr(_skimage_quantised(image) / 255)[..., 0]


def test_rgb_to_y_matches_bt601_studio_swing():
    rgb = np.random.default_rng(0).random((7, 5, 3))
    ours = rgb_to_y(torch.from_numpy(rgb).permute(2, 0, 1))[0].numpy() * 255
    np.testing.assert_allclose(ours, color.rgb2ycbcr(rgb)[..., 0], atol=1e-9)
    white_black = rgb_to_y(torch.tensor([[[1.0, 0.0]]] * 3)) * 255
    np.testing.assert_allclose(white_black.numpy().ravel(), [235.0, 16.0], atol=1e-4)


def test_psnr_and_ssim_match_skimage_on_rgb(photo_pairs):
    clean, degraded = photo_pairs
    ours_psnr = psnr(_to_batch(*degraded), _to_batch(*clean), y_channel=False)
    ours_ssim = ssim(_to_batch(*degraded), _to_batch(*clean), y_channel=False)
    for i in range(2):
        ref_psnr = peak_signal_noise_ratio(
            _skimage_quantised(clean[i]), _skimage_quantised(degraded[i]), data_range=255
        )
        ref_ssim = structural_similarity(
            _skimage_quantised(degraded[i]), _skimage_quantised(clean[i]), gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=255, channel_axis=-1,
        )
        assert ours_psnr[i].item() == pytest.approx(ref_psnr, abs=1e-9)
        assert ours_ssim[i].item() == pytest.approx(ref_ssim, abs=1e-9)
    assert 0.2 < ours_ssim.min() and ours_ssim.max() < 0.99  # the degradations are real, not trivial


def test_psnr_and_ssim_match_skimage_on_y_with_crop(photo_pairs):
    clean, degraded = photo_pairs
    border = 4
    ours_psnr = psnr(_to_batch(*degraded), _to_batch(*clean), crop_border=border)
    ours_ssim = ssim(_to_batch(*degraded), _to_batch(*clean), crop_border=border)
    crop = (slice(border, -border), slice(border, -border))
    for i in range(2):
        y_clean, y_degraded = _skimage_y(clean[i])[crop], _skimage_y(degraded[i])[crop]
        ref_psnr = peak_signal_noise_ratio(y_clean, y_degraded, data_range=255)
        ref_ssim = structural_similarity(
            y_degraded, y_clean, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
        )
        assert ours_psnr[i].item() == pytest.approx(ref_psnr, abs=1e-9)
        assert ours_ssim[i].item() == pytest.approx(ref_ssim, abs=1e-9)


def test_psnr_closed_form_on_constant_offset():
    target = torch.full((1, 3, 16, 16), 100 / 255, dtype=torch.float64)
    pred = target + 3 / 255  # every sample off by exactly 3 levels -> MSE 9
    expected = 10 * np.log10(255**2 / 9)
    assert psnr(pred, target, y_channel=False).item() == pytest.approx(expected, abs=1e-9)
    # On Y, an equal offset on R, G, B moves Y by 3 * (65.481 + 128.553 + 24.966) / 255.
    y_offset = 3 * (65.481 + 128.553 + 24.966) / 255
    assert psnr(pred, target).item() == pytest.approx(10 * np.log10(255**2 / y_offset**2), abs=1e-9)
    # data_range rescales the input, not the result.
    assert psnr(pred * 255, target * 255, y_channel=False, data_range=255).item() == pytest.approx(expected, abs=1e-9)


def test_identical_images_give_inf_psnr_and_unit_ssim(photo_pairs):
    clean, _ = photo_pairs
    batch = _to_batch(*clean)
    assert torch.isinf(psnr(batch, batch.clone())).all()
    assert torch.equal(ssim(batch, batch.clone()), torch.ones(2, dtype=torch.float64))


def test_crop_border_excludes_the_border(photo_pairs):
    clean, degraded = photo_pairs
    pred, target = _to_batch(*degraded), _to_batch(*clean)
    border = 3
    scribbled = pred.clone()
    scribbled[..., :border, :] = 0.0
    scribbled[..., :, -border:] = 1.0
    for metric in (psnr, ssim):
        assert torch.equal(metric(scribbled, target, crop_border=border), metric(pred, target, crop_border=border))
        assert not torch.equal(metric(scribbled, target), metric(pred, target))


def test_gray_input_is_its_own_y(photo_pairs):
    clean, degraded = photo_pairs
    gray_clean = _to_batch(*clean)[:, :1]
    gray_degraded = _to_batch(*degraded)[:, :1]
    assert torch.equal(psnr(gray_degraded, gray_clean), psnr(gray_degraded, gray_clean, y_channel=False))
    assert torch.equal(ssim(gray_degraded, gray_clean), ssim(gray_degraded, gray_clean, y_channel=False))


def test_quantize_rounds_to_the_8bit_grid():
    target = torch.full((1, 1, 12, 12), 0.5, dtype=torch.float64)
    pred = target + 0.4 / 255  # rounds to the same level as the target
    assert torch.isinf(psnr(pred, target))
    assert torch.isfinite(psnr(pred, target, quantize=False))


def test_mismatched_shapes_raise_one_line_input_error():
    with pytest.raises(InputError) as exc:
        psnr(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 18))
    message = str(exc.value)
    assert "\n" not in message and "(1, 3, 16, 16)" in message and "(1, 3, 16, 18)" in message


def test_ssim_refuses_images_smaller_than_the_window():
    with pytest.raises(InputError, match="at least 11x11"):
        ssim(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16), crop_border=3)
