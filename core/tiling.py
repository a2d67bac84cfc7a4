"""N-D tiled inference with weighted blending, output scale factors and a streaming path.

A model ``fn`` is applied to overlapping tiles of a ``(B, C, *spatial)`` input and the tile outputs
are blended back into one ``(B, C_out, *spatial * scale)`` output. 2-D and 3-D are the intended
cases, but any number of spatial dims works.

* :func:`plan_tiles` / :class:`TilePlan` decide where the tiles go (shared by both paths).
* :func:`tiled_inference` works on an in-memory tensor.
* :func:`tiled_inference_stream` reads tiles through a :class:`TileReader` and hands finished output
  bands to a :class:`TileWriter`, holding only one tile-row band of the accumulator, so images larger
  than memory (memmaps, GeoTIFFs) can be processed. :class:`ArrayReader` / :class:`ArrayWriter`
  implement the protocol over numpy arrays and ``np.memmap``; slices are in array order
  ``(row, col)`` / ``(depth, row, col)`` so a rasterio ``Window.from_slices(*slices)`` maps directly.

Tile placement: per spatial dim the tile is ``tile`` rounded up to ``multiple_of``. If the image is at
least that large, the fewest tiles with steps ``<= tile - overlap`` are spread evenly from 0 to
``size - tile``: the last tile is shifted inward, so no tile leaves the image (no border padding).
If the image is smaller, that dim gets a single tile of ``round_up(size, multiple_of)``, padded with
``pad_mode`` (so ``multiple_of=tile`` forces a fixed model input size, and ``tile >= image`` with
``multiple_of=1`` is exactly the plain call).

``align`` (default 1: the placement above) puts every tile start at a multiple of ``align`` and
rounds the tile up to a multiple of it: the fewest aligned tiles with steps ``<= tile - overlap`` are
spread from 0 to ``round_up(size, align) - tile``, so the last tile may run up to ``align - 1`` px
past the image end (padded with ``pad_mode``, cropped from the output). For window-attention models
(Swin/HAT, window ``w``) ``align=w`` and ``multiple_of=w`` keep every tile's window grid on the
untiled run's grid, and the last tile sees exactly the bottom/right padding the untiled model adds
itself; for U-Nets with ``k`` 2x downsamplings ``align=2**k`` keeps the pooling phases.

Blending: each tile's output is multiplied by a separable weight map; weighted outputs and weights are
accumulated and divided at the end. Weights only fall off on sides that touch another tile, never at
the image border. ``margin`` (input px) zeroes the weight of the first pixels of every shared side,
discarding the pixels a finite-receptive-field model computes from the tile edge; the blend ramp spans
the rest of the overlap. With ``margin >= receptive-field radius`` and ``overlap >= 2 * margin``,
tiling a convolutional model is exact (weights still sum to 1 everywhere). With ``margin=0`` (the
default) all weights are strictly positive, but tile-edge pixels then leak into the blend.

We do not use MONAI's ``sliding_window_inference``: it has no output scale factor (super-resolution),
no streaming band accumulator, and its Gaussian map down-weights the image border as well.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from vitsuite.core.errors import InputError, UserError
from vitsuite.core.fileio import atomic_path

__all__ = [
    "Tile",
    "TilePlan",
    "plan_tiles",
    "read_padded",
    "tiled_inference",
    "tiled_inference_stream",
    "TileReader",
    "TileWriter",
    "ArrayReader",
    "ArrayWriter",
    "npy_writer",
]

BLENDS = ("linear", "gaussian", "constant")
PAD_MODES = ("reflect", "replicate", "constant")
IntOrSeq = int | Sequence[int]


def _per_dim(value: IntOrSeq, n: int, name: str, minimum: int) -> tuple[int, ...]:
    vals = (value,) * n if isinstance(value, int) else tuple(value)
    if len(vals) != n or not all(isinstance(v, int) and v >= minimum for v in vals):
        raise UserError(f"{name}={value!r} must be an int >= {minimum} or a sequence of {n} such ints")
    return vals


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TilePlan`.

    ``grid``: index of the tile in the tile grid. ``src``: input slices of exactly the tile size
    (they may run past the image end, the reader pads). ``dst``: output slices, clipped to the output
    image. ``crop``: the part of the model's output tile ``(C_out, *tile * scale)`` that lands in ``dst``.
    """

    grid: tuple[int, ...]
    src: tuple[slice, ...]
    dst: tuple[slice, ...]
    crop: tuple[slice, ...]


@dataclass(frozen=True)
class TilePlan:
    """Tile layout for an input of spatial ``shape``; built by :func:`plan_tiles`.

    ``tile``: effective tile size per dim (what the model sees); ``starts[d]``: tile start offsets
    along dim ``d`` (strictly increasing); ``out_shape``: ``shape * scale``. ``tiles`` lists every
    tile in raster order (first spatial dim slowest).
    """

    shape: tuple[int, ...]
    tile: tuple[int, ...]
    overlap: tuple[int, ...]
    scale: int
    starts: tuple[tuple[int, ...], ...]

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(n * self.scale for n in self.shape)

    @property
    def out_tile(self) -> tuple[int, ...]:
        return tuple(t * self.scale for t in self.tile)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.starts)

    def __len__(self) -> int:
        return math.prod(self.grid_shape)

    @property
    def tiles(self) -> list[Tile]:
        """All tiles in raster order (use ``iter(plan)`` to generate them lazily)."""
        return list(self)

    def __iter__(self) -> Iterator[Tile]:
        for grid in np.ndindex(*self.grid_shape):
            src, dst, crop = [], [], []
            for d, g in enumerate(grid):
                s, t, n = self.starts[d][g], self.tile[d], self.shape[d]
                src.append(slice(s, s + t))
                dst.append(slice(s * self.scale, min(s + t, n) * self.scale))
                crop.append(slice(0, (min(s + t, n) - s) * self.scale))
            yield Tile(tuple(grid), tuple(src), tuple(dst), tuple(crop))

    def neighbour_overlaps(self, d: int) -> list[tuple[int, int]]:
        """Per tile index along dim ``d``: overlap (input px) with the previous / next tile, 0 at the image border."""
        st, t = self.starts[d], self.tile[d]
        return [(st[j - 1] + t - st[j] if j else 0, st[j] + t - st[j + 1] if j + 1 < len(st) else 0)
                for j in range(len(st))]

    def profiles(self, blend: str = "linear", margin: IntOrSeq = 0, *, dtype=torch.float32,
                 device=None) -> list[list[torch.Tensor]]:
        """1-D blend weights ``[d][j] -> Tensor (tile[d] * scale,)``; a tile's weight map is their outer product.

        ``linear``: ramp ``(k + 1) / (L + 1)`` over each shared overlap of ``L`` output px (weights of
        two neighbours sum to exactly 1), 1 inside. ``gaussian``: ``exp(-(k - c)^2 / 2 sigma^2)`` with
        ``sigma = 0.125 * tile`` (MONAI's importance map), the half towards the image border set to 1.
        ``constant``: 1. ``margin`` (input px) sets the first ``margin * scale`` px of every shared side
        to 0 and shortens the ramp to match.
        """
        if blend not in BLENDS:
            raise UserError(f"blend={blend!r} must be one of {', '.join(BLENDS)}")
        margins = _per_dim(margin, len(self.shape), "margin", 0)
        out = []
        for d, m in enumerate(margins):
            if len(self.starts[d]) > 1 and 2 * m > self.overlap[d]:
                raise UserError(f"margin={m} needs overlap >= 2 * margin, got overlap={self.overlap[d]}")
            cache: dict[tuple[int, int], torch.Tensor] = {}  # few distinct (lo, hi): share the tensors
            for lo, hi in self.neighbour_overlaps(d):
                if (lo, hi) not in cache:
                    cache[lo, hi] = _profile(self.tile[d] * self.scale, lo * self.scale, hi * self.scale,
                                             blend, m * self.scale).to(device=device, dtype=dtype)
            out.append([cache[key] for key in self.neighbour_overlaps(d)])
        return out


def _profile(n: int, lo: int, hi: int, blend: str, m: int) -> torch.Tensor:
    """1-D weights of length ``n`` with ``lo`` / ``hi`` px shared with the previous / next tile (0: border)."""
    k = torch.arange(n, dtype=torch.float64)
    w = torch.ones(n, dtype=torch.float64)
    if blend == "gaussian" and (lo or hi):
        # same profile as monai's compute_importance_map(mode="gaussian", sigma_scale=0.125), written
        # out because importing monai costs ~10 s and it cannot leave one side flat
        c = (n - 1) / 2
        g = torch.exp(-0.5 * ((k - c) / (0.125 * n)) ** 2)
        w = torch.where(((k < c) & bool(lo)) | ((k > c) & bool(hi)), g, w)
    for ov, dist in ((lo, k), (hi, n - 1 - k)):  # dist: distance from that tile side
        if ov and blend == "linear":
            w = torch.minimum(w, ((dist - m + 1) / (ov - 2 * m + 1)).clamp(0, 1))
        if ov and m:
            w = torch.where(dist < m, torch.zeros_like(w), w)
    return w


def plan_tiles(shape: Sequence[int], tile: IntOrSeq, overlap: IntOrSeq = 0, scale: int = 1, *,
               multiple_of: IntOrSeq = 1, align: IntOrSeq = 1) -> TilePlan:
    """Place tiles over a spatial ``shape`` (e.g. ``(H, W)`` or ``(D, H, W)``); see the module docstring.

    ``tile``, ``overlap`` (input px), ``multiple_of`` and ``align`` are ints or per-dim tuples;
    ``scale`` is the integer output/input size ratio. Requires ``0 <= overlap < tile`` and, with
    ``align > 1``, ``tile - overlap >= align`` (the tile is first rounded up to a multiple of
    ``lcm(multiple_of, align)``).
    """
    shape = tuple(int(n) for n in shape)
    nd = len(shape)
    if nd == 0 or min(shape) < 1:
        raise InputError(f"cannot tile an input of spatial shape {shape}")
    tiles, overlaps = _per_dim(tile, nd, "tile", 1), _per_dim(overlap, nd, "overlap", 0)
    mult, aligns = _per_dim(multiple_of, nd, "multiple_of", 1), _per_dim(align, nd, "align", 1)
    if not isinstance(scale, int) or scale < 1:
        raise UserError(f"scale={scale!r} must be an int >= 1")
    eff, starts = [], []
    for n, t, o, m, a in zip(shape, tiles, overlaps, mult, aligns):
        t = _round_up(t, math.lcm(m, a))
        if o >= t:
            raise UserError(f"overlap={o} must be smaller than the tile size {t}")
        if n <= t:  # one tile; smaller than `tile` but padded to a multiple of `multiple_of`
            eff.append(_round_up(n, m))
            starts.append((0,))
            continue
        # in units of `align` (a = 1: pixels): first tile at 0, last at round_up(n, a) - t (for a = 1
        # shifted inward, never padded), steps <= tile - overlap spread evenly so no tile nearly
        # duplicates its neighbour
        span, step = (_round_up(n, a) - t) // a, (t - o) // a
        if step < 1:
            raise UserError(f"tile {t} - overlap {o} must be at least align={a} (tile starts are multiples of it)")
        count = -(-span // step) + 1  # fewest tiles with steps <= tile - overlap
        eff.append(t)
        starts.append(tuple(i * span // (count - 1) * a for i in range(count)))
    return TilePlan(shape, tuple(eff), overlaps, scale, tuple(starts))


def read_padded(read_box: Callable[[tuple[slice, ...]], torch.Tensor], shape: Sequence[int],
                slices: Sequence[slice], pad_mode: str = "reflect") -> torch.Tensor:
    """Read a possibly out-of-bounds region with padding, using one in-bounds box read.

    ``read_box(box) -> Tensor (*lead, *box_size)`` reads an in-bounds box (e.g. a numpy/rasterio
    window); ``shape``: the spatial shape of the source; ``slices``: the wanted region (any start/stop,
    step 1). Returns ``(*lead, *region_size)``, out-of-bounds filled by ``pad_mode``: ``reflect``
    (mirror without repeating the edge, any pad width), ``replicate`` (edge value) or ``constant`` (0).
    """
    if pad_mode not in PAD_MODES:
        raise UserError(f"pad_mode={pad_mode!r} must be one of {', '.join(PAD_MODES)}")
    idx = {}  # dim -> source index of every output position, for dims that need padding
    for d, (s, n) in enumerate(zip(slices, shape)):
        if s.start < 0 or s.stop > n:
            i = torch.arange(s.start, s.stop)
            if pad_mode == "reflect" and n > 1:
                i = i.remainder(2 * n - 2)
                i = torch.where(i >= n, i.neg().add(2 * n - 2), i)
            idx[d] = i.clamp(0, n - 1)
    box = tuple(slice(int(idx[d].min()), int(idx[d].max()) + 1) if d in idx else s for d, s in enumerate(slices))
    x = read_box(box)
    nlead = x.dim() - len(slices)
    for d, i in idx.items():
        x = x.index_select(nlead + d, i - box[d].start)
        if pad_mode == "constant":
            pos = torch.arange(slices[d].start, slices[d].stop)
            x = x.index_fill(nlead + d, torch.nonzero((pos < 0) | (pos >= shape[d])).flatten(), 0)
    return x


@torch.no_grad()
def _run(plan: TilePlan, read: Callable[[tuple[slice, ...]], torch.Tensor],
         write: Callable[[tuple[slice, ...], torch.Tensor], None], fn: Callable, *, tile_batch: int,
         blend: str, margin: IntOrSeq, out_dtype, device, canvas_device, progress: bool) -> None:
    """Shared engine. ``read(src) -> (B, C, *tile)``; ``write(slices, (B, C_out, *band))``.

    Tiles run in raster order, ``tile_batch`` per ``fn`` call; the accumulator is one band of
    ``tile[0] * scale`` output rows along the first spatial dim, flushed to ``write`` as soon as the
    tiles of one grid row are done.
    """
    if not isinstance(tile_batch, int) or tile_batch < 1:
        raise UserError(f"tile_batch={tile_batch!r} must be an int >= 1")
    canvas_device = torch.device(canvas_device)
    device = canvas_device if device is None else torch.device(device)
    out_shape, out_tile, grid_shape = plan.out_shape, plan.out_tile, plan.grid_shape
    profiles = plan.profiles(blend, margin, dtype=torch.float64)  # validates blend/margin before any fn call
    band_rows = min(out_tile[0], out_shape[0])
    band_full = tuple(slice(0, n) for n in out_shape[1:])
    acc = wsum = None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan), desc="tiles", unit="tile")
    tiles = iter(plan)  # lazy: memory stays independent of the number of tiles
    while group := list(itertools.islice(tiles, tile_batch)):
        xs = torch.stack([read(t.src) for t in group])  # (k, B, C, *tile)
        k, nb = xs.shape[:2]
        y = fn(xs.flatten(0, 1).to(device))
        if y.dim() != 2 + len(out_tile) or y.shape[0] != k * nb or tuple(y.shape[2:]) != out_tile:
            raise UserError(f"model output for {k * nb} tiles of size {plan.tile} has shape {tuple(y.shape)}, "
                            f"expected (N={k * nb}, C_out, *tile * scale={out_tile}) (scale={plan.scale})")
        if acc is None:  # allocate the band once C_out and the output dtype are known
            out_dtype = out_dtype or y.dtype
            acc_dtype = torch.float64 if out_dtype == torch.float64 else torch.float32
            profiles = plan.profiles(blend, margin, dtype=acc_dtype, device=canvas_device)
            acc = _zeros((nb, y.shape[1], band_rows, *out_shape[1:]), acc_dtype, canvas_device)
            wsum = _zeros((band_rows, *out_shape[1:]), acc_dtype, canvas_device)
        elif y.shape[1] != acc.shape[1]:
            raise UserError(f"model returned {y.shape[1]} channels for some tiles and {acc.shape[1]} for others")
        y = y.to(canvas_device, acc.dtype).unflatten(0, (k, nb))
        for t, yt in zip(group, y):
            w = profiles[0][t.grid[0]]
            for d in range(1, len(t.grid)):
                w = w.unsqueeze(-1) * profiles[d][t.grid[d]]
            w = w[t.crop]
            lo = t.dst[0].start  # the band starts at this tile row's first output row
            region = (slice(0, t.dst[0].stop - lo), *t.dst[1:])
            acc[(..., *region)] += yt[(..., *t.crop)] * w
            wsum[region] += w
            if any(g != n - 1 for g, n in zip(t.grid[1:], grid_shape[1:])):
                continue
            # last tile of a grid row: rows [lo, nxt) get no more contributions -> normalise, write, shift
            g0 = t.grid[0]
            nxt = plan.starts[0][g0 + 1] * plan.scale if g0 + 1 < grid_shape[0] else out_shape[0]
            n = nxt - lo
            write((slice(lo, nxt), *band_full), (acc[:, :, :n] / wsum[:n]).to(out_dtype))
            acc[:, :, :band_rows - n] = acc[:, :, n:].clone()
            acc[:, :, band_rows - n:] = 0
            wsum[:band_rows - n] = wsum[n:].clone()
            wsum[band_rows - n:] = 0
        if bar is not None:
            bar.update(len(group))
    if bar is not None:
        bar.close()


def _zeros(shape, dtype, device) -> torch.Tensor:
    # CPU bands are numpy-backed so that their memory is visible to tracemalloc (streaming memory checks).
    if device.type == "cpu":
        return torch.from_numpy(np.zeros(shape, dtype=torch.empty(0, dtype=dtype).numpy().dtype))
    return torch.zeros(shape, dtype=dtype, device=device)


def tiled_inference(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], tile: IntOrSeq,
                    overlap: IntOrSeq = 0, *, scale: int = 1, tile_batch: int = 1, blend: str = "linear",
                    margin: IntOrSeq = 0, pad_mode: str = "reflect", multiple_of: IntOrSeq = 1,
                    out_dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                    progress: bool = False, align: IntOrSeq = 1) -> torch.Tensor:
    """Apply ``fn`` to overlapping tiles of ``x`` and blend the results.

    ``x``: ``(B, C, *spatial)``. ``fn``: ``(N, C, *tile) -> (N, C_out, *tile * scale)`` with
    ``N = B * k`` for ``k <= tile_batch`` tiles per call (tile-major), called under ``torch.no_grad``
    on ``device`` (default: ``x.device``); the accumulator and result stay on ``x.device``.
    ``tile`` / ``overlap`` / ``margin`` / ``multiple_of`` / ``align`` are in input pixels, int or per
    spatial dim (``align``: tile starts at multiples of it, see :func:`plan_tiles`);
    ``blend``: ``linear`` | ``gaussian`` | ``constant``; ``pad_mode``: ``reflect`` | ``replicate`` |
    ``constant`` for tiles that must be padded (image smaller than the tile or ``multiple_of``, or
    an aligned last tile running past the image end).
    Returns ``(B, C_out, *spatial * scale)`` of dtype ``out_dtype`` (default: ``fn``'s output dtype).
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 3:
        raise InputError(f"expected a tensor (B, C, *spatial), got {getattr(x, 'shape', type(x))}")
    if pad_mode not in PAD_MODES:
        raise UserError(f"pad_mode={pad_mode!r} must be one of {', '.join(PAD_MODES)}")
    plan = plan_tiles(x.shape[2:], tile, overlap, scale, multiple_of=multiple_of, align=align)
    out: list[torch.Tensor] = []

    def write(slices, band):
        if not out:
            out.append(torch.empty((*band.shape[:2], *plan.out_shape), dtype=band.dtype, device=x.device))
        out[0][(..., *slices)] = band

    _run(plan, lambda s: read_padded(lambda box: x[(..., *box)], plan.shape, s, pad_mode), write, fn,
         tile_batch=tile_batch, blend=blend, margin=margin, out_dtype=out_dtype, device=device,
         canvas_device=x.device, progress=progress)
    return out[0]


@runtime_checkable
class TileReader(Protocol):
    """Source of input tiles. ``shape``: ``(C, *spatial)``. ``read(slices)``: ``slices`` are spatial
    (``(rows, cols)`` for 2-D), may run past the image end; returns ``(C, *region)`` padded as needed."""

    shape: tuple[int, ...]

    def read(self, slices: tuple[slice, ...]) -> torch.Tensor: ...


@runtime_checkable
class TileWriter(Protocol):
    """Sink of finished output. ``write(slices, tensor)``: ``tensor`` ``(C_out, *region)`` is final for
    the in-bounds spatial region ``slices``; each output pixel is written exactly once."""

    def write(self, slices: tuple[slice, ...], tensor: torch.Tensor) -> None: ...


class ArrayReader:
    """:class:`TileReader` over a ``(C, *spatial)`` numpy array or ``np.memmap`` (only tiles are loaded).

    ``dtype``: optional numpy dtype to convert tiles to (e.g. ``float32`` for uint16 imagery).
    """

    def __init__(self, array: np.ndarray, pad_mode: str = "reflect", dtype=None):
        if array.ndim < 2:
            raise InputError(f"expected an array (C, *spatial), got shape {array.shape}")
        if pad_mode not in PAD_MODES:
            raise UserError(f"pad_mode={pad_mode!r} must be one of {', '.join(PAD_MODES)}")
        self.array, self.pad_mode, self.dtype = array, pad_mode, dtype
        self.shape = tuple(array.shape)

    @classmethod
    def from_npy(cls, path: str | os.PathLike, **kwargs) -> "ArrayReader":
        """Memory-map a ``.npy`` file of shape ``(C, *spatial)``."""
        try:
            return cls(np.load(path, mmap_mode="r"), **kwargs)
        except (OSError, ValueError) as e:
            raise InputError(f"cannot memory-map: {e}", path=path) from e

    def _box(self, box: tuple[slice, ...]) -> torch.Tensor:
        a = self.array[(slice(None), *box)]
        return torch.from_numpy(np.ascontiguousarray(a, dtype=self.dtype or a.dtype))

    def read(self, slices: tuple[slice, ...]) -> torch.Tensor:
        """Return ``(C, *region)`` for spatial ``slices`` (padded with ``pad_mode`` outside the array)."""
        return read_padded(self._box, self.shape[1:], slices, self.pad_mode)


class ArrayWriter:
    """:class:`TileWriter` into a preallocated ``(C_out, *spatial_out)`` numpy array or ``np.memmap``."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def write(self, slices: tuple[slice, ...], tensor: torch.Tensor) -> None:
        """Store ``tensor`` ``(C_out, *region)`` at spatial ``slices`` (cast to the array's dtype)."""
        tensor = tensor.detach().cpu()
        self.array[(slice(None), *slices)] = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


@contextlib.contextmanager
def npy_writer(path: str | os.PathLike, shape: Sequence[int], dtype=np.float32) -> Iterator[ArrayWriter]:
    """Yield an :class:`ArrayWriter` over a new ``.npy`` memmap of ``shape`` ``(C_out, *spatial_out)``;
    the file is written to a temporary name and atomically renamed to ``path`` on success."""
    with atomic_path(path) as tmp:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=tuple(shape))
        yield ArrayWriter(mm)
        mm.flush()


def tiled_inference_stream(reader: TileReader, writer: TileWriter, fn: Callable[[torch.Tensor], torch.Tensor],
                           tile: IntOrSeq, overlap: IntOrSeq = 0, *, scale: int = 1, tile_batch: int = 1,
                           blend: str = "linear", margin: IntOrSeq = 0, multiple_of: IntOrSeq = 1,
                           out_dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                           progress: bool = False, align: IntOrSeq = 1) -> TilePlan:
    """Streaming :func:`tiled_inference` for inputs larger than memory; same tiles and result.

    Reads ``(C, *tile)`` tiles from ``reader`` (shape ``(C, *spatial)``; it does the padding) in raster
    order, calls ``fn`` on ``(k, C, *tile)`` batches on ``device`` (default CPU), and writes finished
    bands ``(C_out, rows, *spatial_out[1:])`` covering ``slices = (rows, full, ...)`` to ``writer``
    top to bottom. Only one band of ``tile[0] * scale`` output rows (a slab along the first spatial dim
    in 3-D) of the accumulator is held in CPU memory. Returns the :class:`TilePlan` used.
    """
    shape = tuple(reader.shape)
    if len(shape) < 2:
        raise InputError(f"reader.shape must be (C, *spatial), got {shape}")
    plan = plan_tiles(shape[1:], tile, overlap, scale, multiple_of=multiple_of, align=align)

    def read(slices):
        t = reader.read(slices)
        want = (shape[0], *(s.stop - s.start for s in slices))
        if tuple(t.shape) != want:
            raise InputError(f"reader returned a tile of shape {tuple(t.shape)}, expected {want}")
        return t.unsqueeze(0)

    _run(plan, read, lambda s, band: writer.write(s, band[0]), fn, tile_batch=tile_batch, blend=blend,
         margin=margin, out_dtype=out_dtype, device=device, canvas_device="cpu", progress=progress)
    return plan
