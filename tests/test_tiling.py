"""Tests for vitsuite.core.tiling: tile planning, blending, exactness on finite-receptive-field models,
super-resolution, padding, batching and the bounded-memory streaming path."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest
import torch
from torch import nn

from vitsuite.core.errors import InputError, UserError
from vitsuite.core.tiling import (ArrayReader, ArrayWriter, TilePlan, TileReader, TileWriter, npy_writer,
                                  plan_tiles, read_padded, tiled_inference, tiled_inference_stream)

torch.set_num_threads(1)


def convnet(nd: int, cin: int, cout: int, depth: int, seed: int = 0, shuffle: int = 1) -> nn.Module:
    """``depth`` stacked 3^nd zero-padded convs (receptive-field radius ``depth``), optional PixelShuffle."""
    torch.manual_seed(seed)
    conv = nn.Conv2d if nd == 2 else nn.Conv3d
    chans = [cin] + [6] * (depth - 1) + [cout * shuffle**nd]
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [conv(chans[i], chans[i + 1], 3, padding=1), nn.Tanh()]
    layers = layers[:-1]
    if shuffle > 1:
        layers.append(nn.PixelShuffle(shuffle))
    return nn.Sequential(*layers).eval()


def untiled(model, x):
    with torch.no_grad():
        return model(x)


# ---------------------------------------------------------------- planning


@pytest.mark.parametrize("n,t,o", [(37, 16, 4), (50, 16, 4), (16, 16, 5), (17, 16, 15), (100, 7, 3), (9, 32, 8)])
def test_plan_1d_covers_without_padding(n, t, o):
    plan = plan_tiles((n,), t, o)
    starts = plan.starts[0]
    assert list(starts) == sorted(set(starts)) and starts[0] == 0
    tt = plan.tile[0]
    if n >= t:
        assert tt == t and starts[-1] == n - t  # last tile shifted inward, never past the image
        steps = [b - a for a, b in zip(starts, starts[1:])]
        assert all(s <= t - o for s in steps)  # overlap >= requested
        assert max(steps, default=0) - min(steps, default=0) <= 1  # evenly spread
        assert len(starts) == 1 + -(-(n - t) // (t - o))  # and no more tiles than needed
    else:
        assert tt == n and starts == (0,)
    cover = np.zeros(n, int)
    for tl in plan.tiles:
        assert tl.src[0].stop - tl.src[0].start == tt
        cover[tl.dst[0]] += 1
    assert cover.min() >= 1


def test_plan_nd_scale_and_multiple_of():
    plan = plan_tiles((37, 50, 9), (16, 20, 8), (4, 6, 2), scale=2, multiple_of=(1, 8, 4))
    assert plan.tile == (16, 24, 8) and plan.out_shape == (74, 100, 18) and plan.out_tile == (32, 48, 16)
    assert len(plan.tiles) == len(plan) == np.prod(plan.grid_shape)
    assert plan.tiles[0].grid == (0, 0, 0) and plan.tiles[1].grid == (0, 0, 1)  # raster order
    for tl in plan.tiles:
        for d in range(3):
            assert tl.dst[d].start == tl.src[d].start * 2
            assert tl.dst[d].stop - tl.dst[d].start == tl.crop[d].stop <= plan.out_tile[d]
            assert tl.dst[d].stop <= plan.out_shape[d]
    # dims smaller than the tile: one tile, padded only up to the multiple (or to a fixed size)
    small = plan_tiles((5, 7), 16, 4, multiple_of=8)
    assert small.tile == (8, 8) and small.starts == ((0,), (0,))
    assert plan_tiles((5, 7), 16, 4, multiple_of=16).tile == (16, 16)  # fixed model input size


@pytest.mark.parametrize("kw", [dict(tile=8, overlap=8), dict(tile=0, overlap=0), dict(tile=(8,), overlap=2),
                                dict(tile=8, overlap=-1), dict(tile=8, overlap=2, scale=0)])
def test_plan_rejects_bad_arguments(kw):
    with pytest.raises(UserError):
        plan_tiles((30, 30), **kw)


# ---------------------------------------------------------------- blend weights


@pytest.mark.parametrize("blend", ["linear", "gaussian", "constant"])
def test_weights_positive_border_not_downweighted(blend):
    plan = plan_tiles((61,), 16, 5, scale=2)
    prof = plan.profiles(blend)[0]
    assert all(bool((p > 0).all()) for p in prof)
    assert prof[0][0] == 1 and prof[-1][-1] == 1  # image borders keep full weight
    assert all(bool((p <= 1).all()) for p in prof)
    single = plan_tiles((12,), 16, 5).profiles(blend)[0]
    assert len(single) == 1 and bool((single[0] == 1).all())


def test_linear_weights_partition_of_unity_and_ramp_only_in_overlap():
    plan = plan_tiles((61,), 16, 5)
    prof, ovs = plan.profiles("linear")[0], plan.neighbour_overlaps(0)
    total = torch.zeros(61, dtype=torch.float64)
    for s, p, (lo, hi) in zip(plan.starts[0], prof, ovs):
        assert 5 <= max(lo, hi) and lo + hi <= 16  # ramps of one tile do not meet
        total[s:s + 16] += p.double()
        assert bool((p[lo:16 - hi] == 1).all()) and bool((p[:lo] < 1).all()) and bool((p[16 - hi:] < 1).all())
    torch.testing.assert_close(total, torch.ones(61, dtype=torch.float64), atol=1e-6, rtol=0)


def test_margin_zeroes_shared_sides_and_sum_stays_one():
    plan = plan_tiles((61,), 16, 6, scale=2)
    prof = plan.profiles("linear", margin=3)[0]
    total = torch.zeros(122, dtype=torch.float64)
    for s, p in zip(plan.starts[0], prof):
        total[2 * s:2 * s + 32] += p.double()
    assert bool((prof[1][:6] == 0).all()) and bool((prof[1][-6:] == 0).all()) and prof[0][0] == 1
    torch.testing.assert_close(total, torch.ones(122, dtype=torch.float64), atol=1e-6, rtol=0)
    with pytest.raises(UserError):
        plan.profiles("linear", margin=4)  # overlap 6 < 2 * margin
    with pytest.raises(UserError):
        plan.profiles("cosine")


@pytest.mark.parametrize("blend", ["linear", "gaussian", "constant"])
@pytest.mark.parametrize("shape,tile,overlap", [((37, 50), 16, 5), ((13, 19, 11), (8, 6, 5), (3, 2, 1))])
def test_identity_roundtrip(blend, shape, tile, overlap):
    x = torch.randn(2, 3, *shape)
    y = tiled_inference(x, lambda t: t, tile, overlap, blend=blend)
    torch.testing.assert_close(y, x, atol=1e-6, rtol=1e-6)
    c = torch.full((1, 1, *shape), 3.25)
    torch.testing.assert_close(tiled_inference(c, lambda t: t, tile, overlap, blend=blend), c, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- exactness on finite receptive fields


@pytest.mark.parametrize("blend", ["linear", "gaussian", "constant"])
@pytest.mark.parametrize("shape,tile,overlap", [((45, 38), 16, 6), ((45, 38), (20, 13), (8, 7)), ((33, 61), 24, 11)])
def test_conv2d_tiled_equals_untiled(blend, shape, tile, overlap):
    model = convnet(2, 3, 5, depth=3)  # receptive-field radius 3
    x = torch.randn(2, 3, *shape)
    y = tiled_inference(x, model, tile, overlap, margin=3, blend=blend)
    assert y.shape == (2, 5, *shape)
    torch.testing.assert_close(y, untiled(model, x), atol=1e-5, rtol=1e-5)


def test_conv_without_margin_is_not_exact():
    """Guards the test above: tile-border pixels do differ, so margin is what makes tiling exact."""
    model = convnet(2, 3, 5, depth=3)
    x = torch.randn(1, 3, 45, 38)
    err = (tiled_inference(x, model, 16, 6, margin=0) - untiled(model, x)).abs().max()
    assert err > 1e-3


@pytest.mark.parametrize("shape,tile,overlap", [((19, 22, 17), (8, 10, 8), 4), ((19, 22, 17), 9, (5, 6, 4))])
def test_conv3d_tiled_equals_untiled(shape, tile, overlap):
    model = convnet(3, 2, 3, depth=2)  # radius 2
    x = torch.randn(1, 2, *shape)
    y = tiled_inference(x, model, tile, overlap, margin=2, tile_batch=4)
    torch.testing.assert_close(y, untiled(model, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("blend", ["linear", "gaussian"])
def test_super_resolution_scale2(blend):
    model = convnet(2, 3, 3, depth=2, shuffle=2)  # conv -> conv -> PixelShuffle(2), input radius 2
    x = torch.randn(1, 3, 41, 29)
    y = tiled_inference(x, model, 12, 5, scale=2, margin=2, blend=blend, tile_batch=2)
    assert y.shape == (1, 3, 82, 58)
    torch.testing.assert_close(y, untiled(model, x), atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError, match="scale"):
        tiled_inference(x, model, 12, 5, scale=3)  # the model does not upscale by 3


@pytest.mark.parametrize("blend", ["linear", "gaussian", "constant"])
def test_tile_at_least_image_is_plain_call(blend):
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 4, 3, padding=1)

    def global_model(t):  # non-local: any padding or blending would change the result
        with torch.no_grad():
            return conv(t - t.mean(dim=(2, 3), keepdim=True))

    x = torch.randn(2, 3, 37, 50)
    assert torch.equal(tiled_inference(x, global_model, 64, 8, blend=blend), global_model(x))
    assert torch.equal(tiled_inference(x, global_model, (37, 50), 8, blend=blend), global_model(x))
    v = torch.randn(1, 1, 7, 9, 5)
    assert torch.equal(tiled_inference(v, lambda t: t * t.std(), 16, 4, blend=blend), v * v.std())


def test_tile_batch_equals_unbatched():
    model = convnet(2, 3, 4, depth=2)
    x = torch.randn(2, 3, 45, 38)
    calls = []

    def fn(t):
        calls.append(t.shape[0])
        return model(t)

    y1 = tiled_inference(x, fn, 16, 4, margin=2)
    n1 = len(calls)
    calls.clear()
    y3 = tiled_inference(x, fn, 16, 4, margin=2, tile_batch=3)
    assert len(calls) == -(-n1 // 3) and calls[0] == 3 * 2  # 3 tiles x B=2 per call
    torch.testing.assert_close(y3, y1, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------- padding, multiple_of, dtypes, errors


@pytest.mark.parametrize("mode,np_mode", [("reflect", "reflect"), ("replicate", "edge"), ("constant", "constant")])
def test_read_padded_matches_numpy(mode, np_mode):
    a = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    reads = []

    def read_box(box):
        reads.append(box)
        return torch.from_numpy(a[(slice(None), *box)])

    got = read_padded(read_box, (5, 3), (slice(-4, 14), slice(1, 11)), mode)
    want = np.pad(a, ((0, 0), (4, 9), (0, 8)), mode=np_mode)[:, :, 1:11]
    np.testing.assert_array_equal(got.numpy(), want)
    assert len(reads) == 1
    assert read_padded(read_box, (5, 3), (slice(1, 4), slice(0, 2)), mode).shape == (2, 3, 2)
    assert reads[-1] == (slice(1, 4), slice(0, 2))  # in-bounds: reads only the region


@pytest.mark.parametrize("pad_mode", ["reflect", "replicate", "constant"])
def test_small_input_and_multiple_of(pad_mode):
    x = torch.randn(1, 2, 5, 11)
    seen = []
    w = torch.randn(3, 2)

    def fn(t):  # pointwise, but insists on sizes divisible by 8 (e.g. window * patch)
        assert t.shape[2] % 8 == 0 and t.shape[3] % 8 == 0, t.shape
        seen.append(t.clone())
        return torch.einsum("oc,nc...->no...", w, t)

    y = tiled_inference(x, fn, 16, 4, multiple_of=8, pad_mode=pad_mode)
    torch.testing.assert_close(y, torch.einsum("oc,nc...->no...", w, x))
    assert seen[0].shape == (1, 2, 8, 16)
    np_mode = {"reflect": "reflect", "replicate": "edge", "constant": "constant"}[pad_mode]
    np.testing.assert_array_equal(seen[0].numpy(), np.pad(x.numpy(), ((0, 0), (0, 0), (0, 3), (0, 5)), mode=np_mode))
    # large image, tile not a multiple: the tile is enlarged (no padding), all tiles divisible by 8
    x2 = torch.randn(1, 2, 50, 41)
    torch.testing.assert_close(tiled_inference(x2, fn, 13, 4, multiple_of=8), torch.einsum("oc,nc...->no...", w, x2))


def test_out_dtype_and_model_dtype():
    x = torch.randn(1, 3, 30, 27)

    def half_model(t):  # e.g. a model running in reduced precision
        return (t * 2).to(torch.float16)

    y = tiled_inference(x, half_model, 12, 4)
    assert y.dtype == torch.float16
    y32 = tiled_inference(x, half_model, 12, 4, out_dtype=torch.float32)
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32, x * 2, atol=1e-2, rtol=1e-3)
    y64 = tiled_inference(x.double(), lambda t: t.double() + 1, 12, 4)
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64, x.double() + 1, atol=1e-12, rtol=0)
    yi = tiled_inference(torch.randint(0, 255, (1, 1, 20, 20), dtype=torch.uint8), lambda t: t.float() / 255, 8, 2)
    assert yi.dtype == torch.float32


def test_device_argument_moves_tiles():
    x = torch.randn(1, 1, 20, 20)
    devices = []

    def fn(t):
        devices.append(t.device)
        return t

    y = tiled_inference(x, fn, 8, 2, device="cpu")
    assert y.device == x.device and set(devices) == {torch.device("cpu")}


def test_errors():
    with pytest.raises(InputError):
        tiled_inference(torch.randn(3, 20), lambda t: t, 8, 2)
    with pytest.raises(UserError, match="shape"):
        tiled_inference(torch.randn(1, 1, 20, 20), lambda t: t[..., :-1], 8, 2)
    with pytest.raises(UserError):
        tiled_inference(torch.randn(1, 1, 20, 20), lambda t: t, 8, 2, pad_mode="wrap")
    with pytest.raises(UserError):
        tiled_inference(torch.randn(1, 1, 20, 20), lambda t: t, 8, 2, tile_batch=0)


# ---------------------------------------------------------------- streaming


class RecordingWriter(ArrayWriter):
    def __init__(self, array, log):
        super().__init__(array)
        self.count = np.zeros(array.shape[1:], int)
        self.bands, self.log = [], log

    def write(self, slices, tensor):
        assert tensor.shape == (self.array.shape[0], *(s.stop - s.start for s in slices))
        self.count[slices] += 1
        self.bands.append(slices)
        self.log.append(("write", slices[0].stop))
        super().write(slices, tensor)


class RecordingReader(ArrayReader):
    def __init__(self, array, log, **kw):
        super().__init__(array, **kw)
        self.log = log

    def read(self, slices):
        self.log.append(("read", slices[0].start))
        return super().read(slices)


@pytest.mark.parametrize("nd,scale", [(2, 1), (2, 2), (3, 1)])
def test_stream_equals_in_memory_and_writes_each_pixel_once(nd, scale):
    shape = (3, 45, 38) if nd == 2 else (2, 19, 14, 11)
    tile, overlap = (16, 6) if nd == 2 else (8, 4)
    model = convnet(nd, shape[0], 4, depth=2, shuffle=scale)
    arr = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = np.full((4, *(n * scale for n in shape[1:])), np.nan, np.float32)
    log: list = []
    reader, writer = RecordingReader(arr, log, pad_mode="reflect"), RecordingWriter(out, log)
    assert isinstance(reader, TileReader) and isinstance(writer, TileWriter)
    plan = tiled_inference_stream(reader, writer, model, tile, overlap, scale=scale, margin=2, tile_batch=3)
    assert isinstance(plan, TilePlan)
    ref = tiled_inference(torch.from_numpy(arr)[None], model, tile, overlap, scale=scale, margin=2, tile_batch=3)
    np.testing.assert_allclose(out, ref[0].numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(out, untiled(model, torch.from_numpy(arr)[None])[0].numpy(), atol=1e-5, rtol=1e-5)
    assert (writer.count == 1).all()
    rows = [b[0] for b in writer.bands]
    assert rows[0].start == 0 and all(a.stop == b.start for a, b in zip(rows, rows[1:]))
    assert max(r.stop - r.start for r in rows) <= plan.out_tile[0]
    # streaming: the first band is written before tiles of the last grid row are read
    first_write = next(i for i, e in enumerate(log) if e[0] == "write")
    assert any(e == ("read", plan.starts[0][-1]) for e in log[first_write:])


def test_stream_memmap_roundtrip(tmp_path):
    model = convnet(2, 2, 3, depth=2)
    arr = np.random.default_rng(1).standard_normal((2, 40, 33)).astype(np.float32)
    np.save(tmp_path / "in.npy", arr)
    with npy_writer(tmp_path / "out.npy", (3, 40, 33)) as writer:
        tiled_inference_stream(ArrayReader.from_npy(tmp_path / "in.npy"), writer, model, 16, 4, margin=2)
        assert not (tmp_path / "out.npy").exists()  # atomic: appears only on success
    got = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(got, untiled(model, torch.from_numpy(arr)[None])[0].numpy(), atol=1e-5, rtol=1e-5)
    with pytest.raises(InputError):
        ArrayReader.from_npy(tmp_path / "missing.npy")


def test_stream_memory_independent_of_height():
    """Peak traced memory (numpy allocations: accumulator band, tile reads) does not grow with height."""
    width, c_out, tile = 1024, 8, (16, 256)

    def peak(height):
        arr = np.random.default_rng(0).random((1, height, width), np.float32)
        out = np.zeros((c_out, height, width), np.float32)
        fn = lambda t: t.repeat(1, c_out, 1, 1) * 2  # noqa: E731
        gc.collect()  # empty the interpreter's free lists so both runs start alike
        tracemalloc.start()
        try:
            tiled_inference_stream(ArrayReader(arr), ArrayWriter(out), fn, tile, 4)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert np.abs(out - 2 * arr).max() < 1e-5  # complete and correct

    band = c_out * tile[0] * width * 4  # the float32 accumulator band: 512 KiB
    small, large = peak(96), peak(1536)  # full output canvas at 1536 rows: 48 MiB
    assert small >= band  # the accumulator is visible to tracemalloc at all
    assert large <= small + band // 4  # independent of the height ...
    assert large < 2 * band  # ... i.e. about one band, not a canvas
