"""Heatmap -> keypoint decoding of top-down pose models, as MMPose 0.x (ViTPose's code base) does it.

Three variants, selected like the authors' ``keypoints_from_heatmaps``:

* ``post_process="default"``: integer argmax plus a quarter-pixel step toward the larger neighbour;
* ``post_process="unbiased"`` (DARK): Gaussian modulation of the map, then one Newton step on its log;
* ``use_udp=True`` (ViTPose's test setting): DARK-UDP refinement and the unbiased (W-1) coordinate map.

Everything is vectorised over instances and keypoints (no loop over maps). The Gaussian blur uses
``scipy.ndimage`` instead of OpenCV: the official kernels (odd sizes >= 11) are the sigma formula
below, and both border rules used officially (zero padding, reflect-101) exist in scipy.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def gaussian_kernel_1d(kernel: int) -> np.ndarray:
    """Normalised 1-D Gaussian of odd size ``kernel`` with OpenCV's default sigma for that size."""
    if kernel % 2 != 1:
        raise ValueError(f"Gaussian kernel size must be odd, got {kernel}")
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    x = np.arange(kernel, dtype=np.float64) - (kernel - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def gaussian_blur(maps: np.ndarray, kernel: int, mode: str) -> np.ndarray:
    """Separable Gaussian blur over the last two axes of ``maps`` (..., H, W).

    ``mode="constant"`` pads with zeros ("same" convolution); ``mode="mirror"`` is reflect-101.
    """
    g = gaussian_kernel_1d(kernel)
    out = ndimage.correlate1d(maps, g, axis=-1, mode=mode, cval=0.0)
    return ndimage.correlate1d(out, g, axis=-2, mode=mode, cval=0.0)


def argmax_preds(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer argmax locations and raw maxima.

    heatmaps (N, K, H, W) -> preds (N, K, 2) float32 (x, y), maxvals (N, K, 1) float32. Ties go to
    the first pixel in row-major order; maps whose maximum is <= 0 get the location (-1, -1).
    """
    n, k, _, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    idx = np.argmax(flat, axis=2)
    maxvals = np.take_along_axis(flat, idx[..., None], axis=2).astype(np.float32)
    preds = np.stack([idx % w, idx // w], axis=-1).astype(np.float32)
    preds = np.where(maxvals > 0.0, preds, np.float32(-1.0))
    return preds, maxvals


def _at(maps: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """maps (N, K, H, W) sampled at integer (y, x) of shape (N, K); indices are clipped into range."""
    h, w = maps.shape[-2:]
    yi = np.clip(y, 0, h - 1)
    xi = np.clip(x, 0, w - 1)
    n, k = np.meshgrid(np.arange(maps.shape[0]), np.arange(maps.shape[1]), indexing="ij")
    return maps[n, k, yi, xi]


def refine_quarter_offset(preds: np.ndarray, heatmaps: np.ndarray) -> np.ndarray:
    """'default': step 0.25 px toward the larger neighbour where 2 <= x <= W-2 and 2 <= y <= H-2."""
    h, w = heatmaps.shape[-2:]
    px, py = preds[..., 0].astype(np.int64), preds[..., 1].astype(np.int64)
    inside = (px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)
    dx = _at(heatmaps, py, px + 1) - _at(heatmaps, py, px - 1)
    dy = _at(heatmaps, py + 1, px) - _at(heatmaps, py - 1, px)
    step = np.stack([np.sign(dx), np.sign(dy)], axis=-1).astype(np.float32) * np.float32(0.25)
    return np.where(inside[..., None], preds + step, preds)


def refine_dark(preds: np.ndarray, heatmaps: np.ndarray, kernel: int) -> np.ndarray:
    """DARK (Zhang et al. 2020): modulate each map, then one Newton step on its log.

    Modulation: zero-padded Gaussian blur, rescaled so each map keeps its maximum. The step uses
    central differences (second derivatives with step 2) and applies where 2 <= x <= W-3 and
    2 <= y <= H-3 and the Hessian is not singular.
    """
    h, w = heatmaps.shape[-2:]
    blurred = gaussian_blur(heatmaps, kernel, mode="constant").astype(np.float32)
    peak = heatmaps.max(axis=(-2, -1), keepdims=True)
    blurred *= peak / blurred.max(axis=(-2, -1), keepdims=True)
    logm = np.log(np.maximum(blurred, np.float32(1e-10)))
    px, py = preds[..., 0].astype(np.int64), preds[..., 1].astype(np.int64)
    inside = (px > 1) & (px < w - 2) & (py > 1) & (py < h - 2)
    c = _at(logm, py, px)
    dx = 0.5 * (_at(logm, py, px + 1) - _at(logm, py, px - 1))
    dy = 0.5 * (_at(logm, py + 1, px) - _at(logm, py - 1, px))
    dxx = 0.25 * (_at(logm, py, px + 2) - 2 * c + _at(logm, py, px - 2))
    dyy = 0.25 * (_at(logm, py + 2, px) - 2 * c + _at(logm, py - 2, px))
    dxy = 0.25 * (_at(logm, py + 1, px + 1) - _at(logm, py - 1, px + 1) - _at(logm, py + 1, px - 1)
                  + _at(logm, py - 1, px - 1))
    det = dxx * dyy - dxy**2
    ok = inside & (det != 0)
    safe = np.where(ok, det, 1.0).astype(np.float64)
    # offset = -H^-1 g with the closed-form 2x2 inverse
    ox = -(dyy * dx - dxy * dy) / safe
    oy = -(-dxy * dx + dxx * dy) / safe
    offset = np.stack([ox, oy], axis=-1).astype(np.float32)
    return np.where(ok[..., None], preds + offset, preds)


def refine_dark_udp(preds: np.ndarray, heatmaps: np.ndarray, kernel: int) -> np.ndarray:
    """DARK-UDP (Huang et al. 2020): reflect-101 blur, clip to [0.001, 50], log, edge padding, one Newton step.

    The step applies to every keypoint (the edge padding supplies neighbours, ``eps * I`` keeps the
    Hessian invertible). For maps whose maximum is <= 0 (location -1) the authors' flat indexing reads
    a neighbouring map; here the clipped corner of the map itself is read instead.
    """
    blurred = gaussian_blur(heatmaps, kernel, mode="mirror").astype(np.float32)
    logm = np.log(np.clip(blurred, np.float32(0.001), np.float32(50.0)))
    padded = np.pad(logm, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    x = preds[..., 0].astype(np.int64) + 1
    y = preds[..., 1].astype(np.int64) + 1
    c = _at(padded, y, x)
    xp, xm = _at(padded, y, x + 1), _at(padded, y, x - 1)
    yp, ym = _at(padded, y + 1, x), _at(padded, y - 1, x)
    dx, dy = 0.5 * (xp - xm), 0.5 * (yp - ym)
    dxx = xp - 2 * c + xm
    dyy = yp - 2 * c + ym
    dxy = 0.5 * (_at(padded, y + 1, x + 1) - xp - yp + 2 * c - xm - ym + _at(padded, y - 1, x - 1))
    eps = float(np.finfo(np.float32).eps)
    hess = np.stack([np.stack([dxx + eps, dxy], -1), np.stack([dxy, dyy + eps], -1)], -2).astype(np.float64)
    grad = np.stack([dx, dy], axis=-1).astype(np.float64)[..., None]
    offset = (np.linalg.inv(hess) @ grad)[..., 0]
    return (preds - offset).astype(np.float32)


def transform_preds(coords: np.ndarray, center: np.ndarray, scale: np.ndarray, heatmap_size: tuple[int, int],
                    use_udp: bool = False) -> np.ndarray:
    """Heatmap (x, y) -> image pixels for crops given by ``center`` (N, 2) and ``scale`` (N, 2) (box size / 200).

    coords (N, K, 2); ``heatmap_size`` is (W, H). Without UDP the crop edge maps to heatmap
    coordinate W (H); with UDP to W-1 (H-1).
    """
    w, h = heatmap_size
    size = scale.astype(np.float32) * np.float32(200.0)
    denom = np.array([w - 1.0, h - 1.0] if use_udp else [w, h], dtype=np.float32)
    unit = size / denom
    origin = center.astype(np.float32) - size * np.float32(0.5)
    return (coords * unit[:, None, :] + origin[:, None, :]).astype(np.float32)


def keypoints_from_heatmaps(
    heatmaps,
    center,
    scale,
    unbiased: bool = False,
    post_process: str | bool | None = "default",
    kernel: int = 11,
    valid_radius_factor: float = 0.0546875,
    use_udp: bool = False,
    target_type: str = "GaussianHeatmap",
) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints in image pixels from heatmaps, with the authors' options and defaults.

    heatmaps (N, K, H, W); center, scale (N, 2) -> preds (N, K, 2) float32 (x, y), maxvals (N, K, 1)
    float32 (raw maxima). Inputs are not modified. ``valid_radius_factor`` only matters for the
    CombinedTarget head, which ViTPose does not use (not supported here).
    """
    heatmaps = np.array(heatmaps, dtype=np.float32, copy=True)
    center, scale = np.asarray(center), np.asarray(scale)
    if post_process is False:
        post_process = None
    elif post_process is True:
        post_process = "default"
    if unbiased and post_process == "default":  # the authors' deprecated spelling
        post_process = "unbiased"
    if post_process not in (None, "default", "unbiased"):
        raise ValueError(f"post_process '{post_process}' is not supported (use None, 'default' or 'unbiased')")
    if target_type.lower() != "gaussianheatmap":
        raise ValueError(f"target_type '{target_type}' is not supported (ViTPose uses GaussianHeatmap)")
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be (N, K, H, W), got shape {heatmaps.shape}")
    _, _, h, w = heatmaps.shape
    preds, maxvals = argmax_preds(heatmaps)
    if use_udp:
        preds = refine_dark_udp(preds, heatmaps, kernel)
    elif post_process == "unbiased":
        preds = refine_dark(preds, heatmaps, kernel)
    elif post_process == "default":
        preds = refine_quarter_offset(preds, heatmaps)
    return transform_preds(preds, center, scale, (w, h), use_udp=use_udp), maxvals
