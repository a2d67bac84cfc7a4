"""Data for restoration: paired folders, degradations (bicubic downsampling, synthetic rain) and datasets.

Every dataset item is a dict ``{"lq": Tensor (3, h, w), "gt": Tensor (3, h * scale, w * scale),
"name": str}`` of float32 RGB in ``[0, 1]`` (``scale`` is 1 for deraining), so the default
``collate`` stacks a batch as long as the patches have one size.

Randomness (crops, flips, rain) comes from a NumPy generator seeded per item by
``(rng_seed, epoch, index)``: an item is the same whatever the number of DataLoader workers or
the order in which they fetch it, a fixed seed gives a reproducible validation set, and training
sees new patches every epoch once :meth:`set_epoch` is called (``core.train.Trainer`` calls it on
the dataset before each epoch). The worker seed is deliberately *not* mixed in: it would make
the patches depend on ``num_workers`` and on which worker happens to fetch which index.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from vitsuite.core.errors import ConfigError, InputError
from vitsuite.core.imageio import IMAGE_EXTS, read_image

__all__ = [
    "SKIMAGE",
    "SKIMAGE_HOLDOUT",
    "SKIMAGE_TRAIN",
    "PairedImageDataset",
    "SyntheticPairDataset",
    "add_rain",
    "bicubic_downsample",
    "mod_crop",
    "pair_by_stem",
    "read_rgb",
    "skimage_images",
]

# ------------------------------------------------------------------------------------------ pairing


def _images_by_key(folder: Path, suffix: str, role: str) -> dict[str, Path]:
    """Image files directly in ``folder`` keyed by stem (with ``suffix`` stripped from the end)."""
    if not folder.is_dir():
        raise InputError(f"{role} folder not found", path=folder)
    by_key: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTS or not path.is_file():
            continue
        key = path.stem[: -len(suffix)] if suffix and path.stem.endswith(suffix) else path.stem
        if key in by_key:
            raise InputError(f"{role} images {by_key[key].name} and {path.name} have the same name stem", path=folder)
        by_key[key] = path
    if not by_key:
        raise InputError(f"{role} folder has no images ({', '.join(IMAGE_EXTS)})", path=folder)
    return by_key


def _few(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (", ..." if len(names) > limit else "")


def pair_by_stem(lq_dir: str | Path, gt_dir: str | Path, lq_suffix: str = "") -> list[tuple[Path, Path]]:
    """Pair low-quality and ground-truth images by file stem; return ``[(lq_path, gt_path), ...]`` sorted by stem.

    Extensions may differ (``0001.jpg`` pairs with ``0001.png``). ``lq_suffix`` is removed from
    the end of LQ stems first, for the DIV2K/Set5 naming ``0001x4.png`` <-> ``0001.png``
    (``lq_suffix="x4"``). Only files directly in the folders with an extension from
    ``IMAGE_EXTS`` count; hidden files are skipped. Files without a partner raise one
    :class:`InputError` line giving the counts and a few names on each side.
    """
    lq_dir, gt_dir = Path(lq_dir), Path(gt_dir)
    lq_by_key = _images_by_key(lq_dir, lq_suffix, "LQ")
    gt_by_key = _images_by_key(gt_dir, "", "GT")
    lq_only = sorted(lq_by_key.keys() - gt_by_key.keys())
    gt_only = sorted(gt_by_key.keys() - lq_by_key.keys())
    if lq_only or gt_only:
        parts = []
        if lq_only:
            names = _few([lq_by_key[k].name for k in lq_only])
            parts.append(f"{len(lq_only)} LQ image(s) in {lq_dir} without GT ({names})")
        if gt_only:
            names = _few([gt_by_key[k].name for k in gt_only])
            parts.append(f"{len(gt_only)} GT image(s) in {gt_dir} without LQ ({names})")
        hint = f" (LQ stem suffix {lq_suffix!r} is stripped before matching)" if lq_suffix else ""
        raise InputError("unmatched images: " + "; ".join(parts) + hint)
    return [(lq_by_key[key], gt_by_key[key]) for key in sorted(gt_by_key)]


# ------------------------------------------------------------------------------------ degradations


def mod_crop(image: np.ndarray | torch.Tensor, scale: int) -> np.ndarray | torch.Tensor:
    """Crop the bottom/right so height and width are multiples of ``scale``.

    NumPy images are ``(H, W, ...)``; tensors are ``(..., H, W)``. Returns a view.
    """
    if isinstance(image, torch.Tensor):
        height, width = image.shape[-2:]
        return image[..., : height - height % scale, : width - width % scale]
    height, width = image.shape[:2]
    return image[: height - height % scale, : width - width % scale]


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = -0.5 (MATLAB's and Pillow's 'bicubic')."""
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    near = 1.5 * ax3 - 2.5 * ax2 + 1.0
    far = -0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0
    return np.where(ax <= 1.0, near, np.where(ax < 2.0, far, 0.0))


def _resize_taps(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Input indices and weights ``(out_len, taps)`` of bicubic resampling along one axis.

    ``scale`` = input length / output length. Output pixel ``i`` is centred on input coordinate
    ``(i + 0.5) * scale - 0.5`` (pixel centres aligned, as MATLAB ``imresize`` and Pillow do).
    When downsampling (``scale > 1``) the kernel is stretched by ``scale`` so it also low-passes
    (MATLAB's default antialiasing); indices outside the image are mirrored (symmetric padding,
    the edge pixel repeated once) and each row of weights is normalised to sum to 1.
    """
    kernel_stretch = max(scale, 1.0)
    half_width = 2.0 * kernel_stretch
    centres = (np.arange(out_len, dtype=np.float64) + 0.5) * scale - 0.5
    taps = int(math.ceil(2 * half_width)) + 2
    indices = np.floor(centres - half_width).astype(np.int64)[:, None] + np.arange(taps)[None, :]
    weights = _cubic((centres[:, None] - indices) / kernel_stretch) / kernel_stretch
    weights /= weights.sum(axis=1, keepdims=True)
    # Symmetric padding: ... 1 0 | 0 1 2 ... n-1 | n-1 n-2 ... (period 2n also covers tiny images).
    period = np.mod(indices, 2 * in_len)
    indices = np.where(period < in_len, period, 2 * in_len - 1 - period)
    used = np.abs(weights).sum(axis=0) > 0  # the two guard taps are often zero everywhere
    return indices[:, used], weights[:, used]


def _resize_matrix(in_len: int, out_len: int, scale: float) -> np.ndarray:
    """Dense ``(out_len, in_len)`` float64 matrix of :func:`_resize_taps` (mirrored taps summed).

    Applying the resize as two matrix products is much faster on CPU than gathering tap by tap
    (about 30x for a batch of 256x256 patches, 4x for a 2K image) and the matrices stay small.
    """
    indices, weights = _resize_taps(in_len, out_len, scale)
    matrix = np.zeros((out_len, in_len), np.float64)
    rows = np.broadcast_to(np.arange(out_len)[:, None], indices.shape)
    np.add.at(matrix, (rows, indices), weights)
    return matrix


def bicubic_downsample(image: np.ndarray | torch.Tensor, scale: int) -> np.ndarray | torch.Tensor:
    """Bicubic downsampling by an integer ``scale`` with MATLAB ``imresize(img, 1/scale, 'bicubic')`` semantics.

    Cubic kernel a = -0.5 stretched by ``scale`` (antialiasing), pixel-centre alignment,
    symmetric border padding, normalised weights - the way the LR images of DIV2K, Set5 etc.
    were made for the SR papers. (Equality with MATLAB itself is not tested here; against
    Pillow's ``BICUBIC``, which uses the same kernel but truncates it at the borders, the
    interior agrees to float32 round-off - see ``tests/test_restoration_data.py``.) The output
    is not rounded to 8 bits (MATLAB rounds ``uint8`` inputs).

    ``image``: NumPy float ``(H, W, C)`` / ``(H, W)`` or tensor ``(B, C, H, W)``; the output has
    the same type, dtype and layout with size ``ceil(H / scale) x ceil(W / scale)`` (use
    :func:`mod_crop` first for exact ``H / scale``).
    """
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    scale = int(scale)
    if isinstance(image, np.ndarray):
        planes = image[:, :, None] if image.ndim == 2 else image
        if planes.ndim != 3:
            raise ValueError(f"bicubic_downsample expects (H, W) or (H, W, C) arrays, got {image.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(planes.transpose(2, 0, 1)))[None]
        small = bicubic_downsample(tensor, scale)[0].permute(1, 2, 0).numpy()
        return np.ascontiguousarray(small[:, :, 0] if image.ndim == 2 else small)
    if image.ndim != 4:
        raise ValueError(f"bicubic_downsample expects (B, C, H, W) tensors, got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"bicubic_downsample expects a float image, got {image.dtype}")
    if scale == 1:
        return image.clone()
    height, width = image.shape[-2:]
    rows = torch.from_numpy(_resize_matrix(height, math.ceil(height / scale), scale)).to(image.device, image.dtype)
    cols = torch.from_numpy(_resize_matrix(width, math.ceil(width / scale), scale)).to(image.device, image.dtype)
    return torch.matmul(torch.matmul(rows, image), cols.T)  # (oh, H) @ (B, C, H, W) @ (W, ow)


def _as_range(value: float | tuple[float, float], name: str) -> tuple[float, float]:
    low, high = (value, value) if np.isscalar(value) else tuple(value)
    if low > high:
        raise ValueError(f"{name} range must be (low, high), got {value}")
    return float(low), float(high)


def _streak_kernel(length: float, angle_deg: float) -> np.ndarray:
    """Motion-blur line kernel: an anti-aliased line of ``length`` px, ``angle_deg`` clockwise from vertical, peak 1."""
    size = int(math.ceil(length)) | 1  # odd, so the line is centred on the seed
    kernel = np.zeros((size, size), np.float32)
    centre = (size - 1) / 2
    dx = math.sin(math.radians(angle_deg)) * (length - 1) / 2
    dy = math.cos(math.radians(angle_deg)) * (length - 1) / 2
    shift = 4  # cv2.line takes fixed-point coordinates with 4 fractional bits: sub-pixel endpoints
    start = (round((centre - dx) * 2**shift), round((centre - dy) * 2**shift))
    end = (round((centre + dx) * 2**shift), round((centre + dy) * 2**shift))
    cv2.line(kernel, start, end, color=1.0, thickness=1, lineType=cv2.LINE_AA, shift=shift)
    return kernel / max(float(kernel.max()), 1e-6)


def add_rain(
    image: np.ndarray,
    rng: np.random.Generator,
    density: float | tuple[float, float] = (0.001, 0.006),
    length: float | tuple[float, float] = (10.0, 35.0),
    angle: float = 20.0,
    intensity: float | tuple[float, float] = (0.3, 0.8),
    layers: int | tuple[int, int] = (1, 3),
) -> np.ndarray:
    """Add synthetic rain streaks to a clean image (Rain100-style synthesis); return float32 of the same shape.

    ``image``: float ``(H, W, C)`` or ``(H, W)`` in ``[0, 1]``. Each of ``layers`` streak layers
    (a number drawn from the range) is made of sparse random seeds (a fraction ``density`` of
    the pixels, each with a random brightness) smeared by a motion-blur line kernel whose
    ``length`` in pixels is drawn per layer and whose tilt from vertical is drawn once per
    image from ``[-angle, angle]`` degrees (plus a jitter of up to 3 degrees per layer, as
    near and far rain falls almost parallel), slightly blurred so streaks are not one pixel wide,
    scaled by an ``intensity`` drawn per layer and *screen*-blended onto the image,
    ``1 - (1 - image) * (1 - streaks)``: rain only brightens, equally in every channel, and the
    result stays in ``[0, 1]``. Ranges are ``(low, high)`` tuples or single values. All
    randomness comes from ``rng``, so a seeded generator gives the same rain.
    """
    image = np.asarray(image, dtype=np.float32)
    height, width = image.shape[:2]
    low_layers, high_layers = (layers, layers) if np.isscalar(layers) else layers
    n_layers = int(rng.integers(low_layers, high_layers + 1))
    tilt = float(rng.uniform(-angle, angle))
    density_range = _as_range(density, "density")
    length_range = _as_range(length, "length")
    intensity_range = _as_range(intensity, "intensity")

    rain = np.zeros((height, width), np.float32)
    for _ in range(n_layers):
        seeds = (rng.random((height, width)) < rng.uniform(*density_range)).astype(np.float32)
        seeds *= rng.uniform(0.5, 1.0, (height, width)).astype(np.float32)
        kernel = _streak_kernel(rng.uniform(*length_range), tilt + rng.uniform(-3.0, 3.0))
        streaks = cv2.filter2D(seeds, -1, kernel, borderType=cv2.BORDER_REFLECT)
        streaks = cv2.GaussianBlur(streaks, (3, 3), 0.6)
        layer = np.clip(streaks, 0.0, 1.0) * np.float32(rng.uniform(*intensity_range))
        rain = 1.0 - (1.0 - rain) * (1.0 - layer)  # screen-blend the layers with each other too
    rain = rain[:, :, None] if image.ndim == 3 else rain
    return np.clip(1.0 - (1.0 - image) * (1.0 - rain), 0.0, 1.0).astype(np.float32)


# -------------------------------------------------------------------------------------- datasets


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image as float32 RGB ``(H, W, 3)`` in [0, 1] for training/evaluation pairs.

    Gray is replicated to 3 channels. Alpha is dropped, not composited: the restoration models
    see the stored colours, and compositing over an arbitrary background would change the
    target. 16-bit images keep their precision (the result is float).
    """
    image, _ = read_image(path)
    return _rgb(image)


def _rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` with C in 1..4 (or ``(H, W)``) -> ``(H, W, 3)`` float32: gray replicated, alpha dropped."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] in (1, 2):
        return np.ascontiguousarray(np.repeat(image[:, :, :1], 3, axis=2))
    return np.ascontiguousarray(image[:, :, :3])


def _tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, C)`` float32 -> contiguous ``(C, H, W)`` tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def _d4_augmenter() -> A.Compose:
    # A.D4 draws one of the 8 flips/rotations by 90 degrees (BasicSR's hflip + vflip + rot90) and
    # applies it to `image` and every additional target. The shape check must be off for SR,
    # where LQ and GT differ in size; D4 is size-independent, so the same element is correct
    # for both (checked in the tests).
    return A.Compose([A.D4(p=1.0)], additional_targets={"gt": "image"}, is_check_shapes=False)


class _SeededDataset(Dataset):
    """Per-item NumPy generators from ``(rng_seed, epoch, index)`` and the D4 augmentation."""

    def __init__(self, augment: bool, rng_seed: int):
        self.augment = augment
        self.rng_seed = int(rng_seed)
        self.epoch = 0
        self._augmenter = _d4_augmenter() if augment else None

    def set_epoch(self, epoch: int) -> None:
        """Select the random stream of ``epoch`` (new crops/flips/rain each epoch)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.rng_seed, self.epoch, int(index)])

    def _apply_d4(self, rng: np.random.Generator, lq: np.ndarray, gt: np.ndarray | None = None):
        """Same random flip/rotation on ``lq`` and ``gt`` (``(H, W, C)`` arrays, sizes may differ)."""
        if self._augmenter is None:
            return lq, gt
        self._augmenter.set_random_seed(int(rng.integers(2**31)))
        if gt is None:
            return self._augmenter(image=lq)["image"], None
        out = self._augmenter(image=lq, gt=gt)
        return out["image"], out["gt"]


def _check_patch_size(patch_size: int | None, scale: int) -> None:
    if patch_size is not None and (patch_size <= 0 or patch_size % scale):
        raise ConfigError(f"patch_size {patch_size} must be a positive multiple of the scale {scale}")


class PairedImageDataset(_SeededDataset):
    """Pairs of LQ/GT image files (from :func:`pair_by_stem`) as training patches or whole validation images.

    ``scale`` is the SR factor (1 for deraining). Both images are read with :func:`read_rgb`
    (gray -> 3 channels, alpha dropped, 16-bit kept as float). With ``mod_crop=True`` the GT is
    first cropped to a multiple of ``scale`` (the papers' test sets are evaluated that way);
    then ``GT size == LQ size * scale`` must hold, otherwise :class:`InputError` names both
    files and sizes. ``patch_size`` (GT pixels, a multiple of ``scale``) crops aligned patches:
    the LQ patch at ``(top, left)`` pairs with the GT patch at ``(top * scale, left * scale)``;
    ``None`` returns whole images (batch them one at a time). ``augment`` applies one of the
    8 flips/rotations identically to both.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str | Path, str | Path]],
        scale: int = 1,
        patch_size: int | None = None,
        augment: bool = False,
        rng_seed: int = 0,
        mod_crop: bool = True,
    ):
        super().__init__(augment, rng_seed)
        if not pairs:
            raise InputError("no image pairs given")
        _check_patch_size(patch_size, scale)
        self.pairs = [(Path(lq), Path(gt)) for lq, gt in pairs]
        self.scale = int(scale)
        self.patch_size = patch_size
        self.mod_crop = mod_crop

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        lq_path, gt_path = self.pairs[index]
        lq, gt = read_rgb(lq_path), read_rgb(gt_path)
        if self.mod_crop:
            gt = mod_crop(gt, self.scale)
        s = self.scale
        if gt.shape[:2] != (lq.shape[0] * s, lq.shape[1] * s):
            cropped = f" (after cropping to a multiple of {s})" if self.mod_crop and s > 1 else ""
            raise InputError(
                f"GT {gt_path} is {gt.shape[0]}x{gt.shape[1]}{cropped} but LQ {lq_path} is "
                f"{lq.shape[0]}x{lq.shape[1]}; expected GT = LQ x {s}"
            )
        rng = self._rng(index)
        if self.patch_size is not None:
            lq_patch = self.patch_size // s
            if lq.shape[0] < lq_patch or lq.shape[1] < lq_patch:
                raise InputError(
                    f"LQ {lq_path} is {lq.shape[0]}x{lq.shape[1]}, smaller than the {lq_patch}x{lq_patch} "
                    f"patch (patch_size {self.patch_size} / scale {s})"
                )
            top = int(rng.integers(0, lq.shape[0] - lq_patch + 1))
            left = int(rng.integers(0, lq.shape[1] - lq_patch + 1))
            lq = lq[top : top + lq_patch, left : left + lq_patch]
            gt = gt[top * s : (top + lq_patch) * s, left * s : (left + lq_patch) * s]
        lq, gt = self._apply_d4(rng, lq, gt)
        return {"lq": _tensor(lq), "gt": _tensor(gt), "name": gt_path.stem}


class SyntheticPairDataset(_SeededDataset):
    """Clean images degraded on the fly: bicubic downsampling (``task="sr"``) or synthetic rain (``"derain"``).

    ``gt_images``: image paths (read with :func:`read_rgb` at every access) and/or float
    ``(H, W, C)`` arrays in [0, 1] (gray/alpha handled like files). Item ``i`` uses image
    ``i % len(gt_images)``; ``length`` (default ``len(gt_images)``) lets a few images yield
    many random patches per epoch. Per item: the GT is mod-cropped, a ``patch_size`` crop is
    taken at a random position (``None``: the whole image, and no randomness for SR), then the
    D4 augmentation (if ``augment``), then the degradation:

    * ``"sr"``: :func:`bicubic_downsample` by ``scale``;
    * ``"derain"`` (``scale`` must be 1): :func:`add_rain` with ``rain`` keyword overrides.

    ``quantize_lq`` rounds the LQ to the 8-bit grid, as the saved LR/rainy PNGs that the
    models meet at test time are. Same ``rng_seed`` and epoch -> same items; see the module
    docstring for the seeding.
    """

    def __init__(
        self,
        gt_images: Sequence[str | Path | np.ndarray],
        task: str = "sr",
        scale: int = 1,
        patch_size: int | None = None,
        augment: bool = False,
        length: int | None = None,
        rng_seed: int = 0,
        rain: Mapping[str, object] | None = None,
        quantize_lq: bool = True,
    ):
        super().__init__(augment, rng_seed)
        if task not in ("sr", "derain"):
            raise ConfigError(f"task must be 'sr' or 'derain', got {task!r}")
        if task == "derain" and scale != 1:
            raise ConfigError(f"deraining keeps the image size: scale must be 1, got {scale}")
        if not gt_images:
            raise InputError("no GT images given")
        _check_patch_size(patch_size, scale)
        self.gt_images = list(gt_images)
        self.task = task
        self.scale = int(scale)
        self.patch_size = patch_size
        self.length = len(self.gt_images) if length is None else int(length)
        self.rain = dict(rain or {})
        self.quantize_lq = quantize_lq

    def __len__(self) -> int:
        return self.length

    def _gt(self, index: int) -> tuple[np.ndarray, str]:
        source = self.gt_images[index % len(self.gt_images)]
        if isinstance(source, np.ndarray):
            return _rgb(source), f"image{index % len(self.gt_images):04d}"
        return read_rgb(source), Path(source).stem

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        gt, name = self._gt(index)
        gt = mod_crop(gt, self.scale)
        rng = self._rng(index)
        if self.patch_size is not None:
            if gt.shape[0] < self.patch_size or gt.shape[1] < self.patch_size:
                raise InputError(
                    f"GT image {name} is {gt.shape[0]}x{gt.shape[1]}, smaller than the "
                    f"{self.patch_size}x{self.patch_size} patch"
                )
            top = int(rng.integers(0, gt.shape[0] - self.patch_size + 1))
            left = int(rng.integers(0, gt.shape[1] - self.patch_size + 1))
            gt = gt[top : top + self.patch_size, left : left + self.patch_size]
        gt, _ = self._apply_d4(rng, gt)
        gt = np.ascontiguousarray(gt)
        if self.task == "sr":
            lq = np.clip(bicubic_downsample(gt, self.scale), 0.0, 1.0)  # bicubic overshoots at edges
        else:
            lq = add_rain(gt, rng, **self.rain)
        if self.quantize_lq:
            lq = np.round(lq * 255.0) / 255.0
        return {"lq": _tensor(lq.astype(np.float32)), "gt": _tensor(gt), "name": name}


# -------------------------------------------------------------------------- scikit-image photos

# Bundled with scikit-image (no download). Colour and gray photographs only; gray ones are
# replicated to RGB. Not used: graphics (colorwheel, logo) in the split, and the data sets
# that skimage fetches with pooch (brain, cells3d, eagle, kidney, lily, skin...).
_SKIMAGE_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket",  # hold-out
    "hubble_deep_field", "retina", "immunohistochemistry", "motorcycle",
    "brick", "grass", "gravel", "camera", "moon", "coins", "page", "text", "clock",
)
_SKIMAGE_GRAPHICS = ("colorwheel", "logo")

#: Evaluation photos: four varied colour images (portrait, food, animal fur, outdoor scene).
#: data-source name for the real photographs bundled with scikit-image (split below)
SKIMAGE = "skimage"
SKIMAGE_HOLDOUT = ("astronaut", "coffee", "chelsea", "rocket")
#: Training photos: every other bundled photograph (colour and gray), never the hold-out ones.
SKIMAGE_TRAIN = tuple(name for name in _SKIMAGE_PHOTOS if name not in SKIMAGE_HOLDOUT)


def _load_skimage(name: str) -> np.ndarray:
    from skimage import data  # optional dependency, only needed for these demo images

    if name == "motorcycle":
        return data.stereo_motorcycle()[0]  # left view of the stereo pair
    return getattr(data, name)()


def skimage_images(names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Real photographs bundled with scikit-image (offline) as float32 RGB ``(H, W, 3)`` in [0, 1].

    ``names`` defaults to ``SKIMAGE_TRAIN + SKIMAGE_HOLDOUT``; ``colorwheel`` and ``logo``
    (graphics) can be asked for too. Gray images are replicated to 3 channels, logo's alpha is
    dropped. Unknown names raise :class:`ConfigError`.
    """
    available = _SKIMAGE_PHOTOS + _SKIMAGE_GRAPHICS
    names = list(SKIMAGE_TRAIN + SKIMAGE_HOLDOUT) if names is None else list(names)
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ConfigError(f"unknown scikit-image image(s) {', '.join(unknown)}; available: {', '.join(available)}")
    images = {}
    for name in names:
        pixels = np.asarray(_load_skimage(name))
        scale = 255.0 if pixels.dtype == np.uint8 else 1.0
        images[name] = _rgb(pixels.astype(np.float32) / np.float32(scale))
    return images
