"""PSNR and SSIM as the super-resolution and deraining papers report them.

The tables of SwinIR, HAT and DRCT (super-resolution) and Restormer/DRSformer (deraining) are
computed on saved 8-bit images, on the luma channel Y of ITU-R BT.601 "studio swing" YCbCr
(MATLAB's ``rgb2ycbcr``), after removing ``scale`` pixels on every side for SR. SSIM is the
original Wang et al. (2004) index: an 11x11 Gaussian window with sigma 1.5, K1 = 0.01,
K2 = 0.03 on the 0-255 scale, averaged over the "valid" part of the filtered map (the window
never leaves the image, so 5 pixels on each side of the map are excluded, as with MATLAB's
``filter2(..., 'valid')`` in the reference code). This module reproduces that convention:

* ``quantize=True`` (default) first rounds the images to the 8-bit grid, ``round(clip(x) * 255)``,
  as happens when the network output is saved as PNG and then evaluated.
* the Y channel is kept in floating point (as BasicSR's Python evaluation, used by SwinIR/HAT/
  DRCT, does). MATLAB's ``rgb2ycbcr`` applied to ``uint8`` images returns ``uint8``, i.e. a
  rounded Y; pass ``round_y=True`` to mimic evaluation scripts that run MATLAB on uint8 images.

Everything is vectorised torch; statistics are computed in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vitsuite.core.errors import InputError

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

# BT.601 studio-swing luma for R, G, B in [0, 1]: Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255.
_Y_WEIGHTS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0


def rgb_to_y(rgb: torch.Tensor) -> torch.Tensor:
    """Luma of BT.601 studio-swing YCbCr (MATLAB ``rgb2ycbcr``): ``(..., 3, H, W)`` in [0, 1] -> ``(..., 1, H, W)``.

    The result is on the [0, 1] scale, i.e. ``Y / 255`` with ``Y`` in [16, 235] for inputs in [0, 1].
    Keeps the input's dtype and device.
    """
    if rgb.ndim < 3 or rgb.shape[-3] != 3:
        raise ValueError(f"rgb_to_y expects (..., 3, H, W), got {tuple(rgb.shape)}")
    weights = torch.tensor(_Y_WEIGHTS, dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)
    return ((rgb * weights).sum(dim=-3, keepdim=True) + _Y_OFFSET) / 255.0


def _prepare(
    pred: torch.Tensor,
    target: torch.Tensor,
    crop_border: int,
    y_channel: bool,
    data_range: float,
    quantize: bool,
    round_y: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images -> float64 ``(B, C', H', W')`` on the 0-255 scale, border removed, Y taken if asked."""
    if pred.shape != target.shape:
        raise InputError(
            f"prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}"
        )
    if pred.ndim == 3:
        pred, target = pred[None], target[None]
    if pred.ndim != 4:
        raise ValueError(f"expected (B, C, H, W) or (C, H, W) images, got {tuple(pred.shape)}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")

    def one(image: torch.Tensor) -> torch.Tensor:
        image = image.detach().to(torch.float64) / data_range
        if quantize:
            image = torch.round(image.clamp(0.0, 1.0) * 255.0) / 255.0
        if y_channel:
            if image.shape[1] == 3:
                image = rgb_to_y(image)
            elif image.shape[1] != 1:  # gray: Y is the image itself
                raise ValueError(f"y_channel=True needs 1 or 3 channels, got {image.shape[1]}")
        image = image * 255.0
        if round_y:
            image = torch.round(image)
        if crop_border:
            image = image[..., crop_border:-crop_border, crop_border:-crop_border]
        return image

    pred, target = one(pred), one(target)
    if pred.shape[-1] == 0 or pred.shape[-2] == 0:
        raise InputError(f"images of shape {tuple(target.shape)} are empty after removing a {crop_border}-pixel border")
    return pred, target


def psnr(
    pred: torch.Tensor,
    target: torch.Tensor,
    crop_border: int = 0,
    y_channel: bool = True,
    data_range: float = 1.0,
    *,
    quantize: bool = True,
    round_y: bool = False,
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: ``(B, C, H, W)`` in ``[0, data_range]`` -> float64 ``(B,)``.

    ``crop_border`` pixels are removed on every side (papers: ``scale`` for SR, 0 for deraining);
    ``y_channel`` evaluates the BT.601 luma of RGB inputs (gray inputs are their own Y);
    ``quantize`` rounds both images to the 8-bit grid first (see the module docstring). The mean
    squared error is taken over channels and pixels of each image; identical images give ``inf``.
    Mismatched shapes raise :class:`InputError`.
    """
    pred, target = _prepare(pred, target, crop_border, y_channel, data_range, quantize, round_y)
    mse = (pred - target).pow(2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(255.0**2 / mse)


def _gaussian_window(device: torch.device) -> torch.Tensor:
    """1-D normalised Gaussian, 11 taps, sigma 1.5 (MATLAB ``fspecial('gaussian', 11, 1.5)`` is its outer product)."""
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=device) - (SSIM_WINDOW - 1) / 2
    window = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    return window / window.sum()


def _filter_valid(images: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of ``(N, 1, H, W)`` without padding -> ``(N, 1, H - 10, W - 10)``."""
    images = F.conv2d(images, window.view(1, 1, -1, 1))
    return F.conv2d(images, window.view(1, 1, 1, -1))


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    crop_border: int = 0,
    y_channel: bool = True,
    data_range: float = 1.0,
    *,
    quantize: bool = True,
    round_y: bool = False,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per image: ``(B, C, H, W)`` in ``[0, data_range]`` -> float64 ``(B,)``.

    Gaussian window 11x11, sigma 1.5, K1 = 0.01, K2 = 0.03 on the 0-255 scale, population
    (not sample) variances; the SSIM map is averaged over its valid region (5 pixels on each
    side excluded) and then over channels when ``y_channel=False``. ``crop_border``,
    ``y_channel`` and ``quantize`` as in :func:`psnr`. Images must be at least 11x11 after
    cropping. Identical images give exactly 1.
    """
    pred, target = _prepare(pred, target, crop_border, y_channel, data_range, quantize, round_y)
    batch, channels, height, width = pred.shape
    if height < SSIM_WINDOW or width < SSIM_WINDOW:
        raise InputError(
            f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after removing the "
            f"{crop_border}-pixel border, got {height}x{width}"
        )
    c1 = (SSIM_K1 * 255.0) ** 2
    c2 = (SSIM_K2 * 255.0) ** 2
    window = _gaussian_window(pred.device)

    # All five local statistics in one filtering pass: stack them along the batch axis.
    x = pred.reshape(batch * channels, 1, height, width)
    y = target.reshape(batch * channels, 1, height, width)
    stats = _filter_valid(torch.cat([x, y, x * x, y * y, x * y]), window)
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.chunk(5)
    var_x = e_xx - mu_x**2
    var_y = e_yy - mu_y**2
    cov_xy = e_xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.reshape(batch, channels, -1).mean(dim=2).mean(dim=1)

