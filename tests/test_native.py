"""The optional native CPU kernels (vitsuite.core.native): results against PyTorch's, fallbacks."""

import pytest
import torch
import torch.nn.functional as F

from vitsuite.core import native
import vitsuite.core.layers.fast as fast_path


@pytest.fixture(scope="module")
def built():
    if not native.available():  # visible skip: no AVX2, no compiler, or disabled
        pytest.skip(f"native kernels unavailable here: {native.why_unavailable()}")


def _reference(x_nhwc, weight, bias, padding, dilation, relu):
    y = F.conv2d(x_nhwc.permute(0, 3, 1, 2), weight, bias, 1, padding, dilation, weight.shape[0])
    return (F.relu(y) if relu else y).permute(0, 2, 3, 1)


@pytest.mark.parametrize("C", [8, 24, 48])           # 16-channel slices, and an 8-channel tail
@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("padding", ["same", "rows_only", "wide"])
def test_depthwise_nhwc_matches_conv2d(built, C, k, dilation, padding):
    """Odd sizes, 37 rows (three row blocks), widths with a tail after the 4-pixel tiles, two images,
    bias on / off, ReLU on / off, asymmetric row / column padding."""
    g = torch.Generator().manual_seed(C * 100 + k * 10 + dilation)
    half = dilation * (k // 2)
    pad = {"same": (half, half), "rows_only": (half, 0), "wide": (half + 1, 2)}[padding]
    x = torch.randn(2, 41, 23, C, generator=g)[:, 2:39]  # a row band: images at a larger stride
    weight = torch.randn(C, 1, k, k, generator=g)
    bias = torch.randn(C, generator=g)
    if 23 + 2 * pad[1] - dilation * (k - 1) <= 0:
        pytest.skip("kernel wider than the padded input")
    wt = weight[:, 0].permute(1, 2, 0).contiguous()
    for b in (None, bias):
        for relu in (False, True):
            got = native.depthwise_nhwc(x, wt, b, pad, dilation, relu)
            want = _reference(x, weight, b, pad, dilation, relu)
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_depthwise_nhwc_input_smaller_than_kernel_and_checks(built):
    x = torch.randn(1, 2, 3, 16)
    weight = torch.randn(16, 1, 5, 5)
    wt = weight[:, 0].permute(1, 2, 0).contiguous()
    torch.testing.assert_close(native.depthwise_nhwc(x, wt, None, (2, 2)), _reference(x, weight, None, (2, 2), 1, False))
    with pytest.raises(RuntimeError, match="multiple of 8"):
        native.depthwise_nhwc(torch.randn(1, 4, 4, 12), torch.randn(3, 3, 12), None, (1, 1))
    with pytest.raises(RuntimeError, match="float32"):
        native.depthwise_nhwc(x.double(), wt, None, (2, 2))
    with pytest.raises(RuntimeError, match="larger than the padded input"):
        native.depthwise_nhwc(x, wt, None, (0, 0))


def test_core_depthwise_conv2d_offers_native_only_where_it_applies(built, monkeypatch):
    """core's depthwise_conv2d: the native candidate equals F.conv2d (+ReLU); it is not offered for
    channel counts off the multiple of 8 or for NCHW memory; autograd takes F.conv2d."""
    offered = {}

    def choose(key, candidates):
        offered[key] = sorted(candidates)
        return candidates["native"]() if "native" in candidates else candidates["direct"]()

    monkeypatch.setattr(fast_path, "choose_kernel", choose)
    weight, bias = torch.randn(32, 1, 3, 3), torch.randn(32)
    x = torch.randn(1, 32, 11, 9).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for relu in (False, True):
            got = fast_path.depthwise_conv2d(x, weight, bias, (1, 1), 1, relu)
            want = F.conv2d(x, weight, bias, 1, 1, 1, 32)
            torch.testing.assert_close(got, F.relu(want) if relu else want, rtol=1e-5, atol=1e-5)
        assert all(v == ["direct", "native"] for v in offered.values()) and len(offered) == 2
        offered.clear()
        fast_path.depthwise_conv2d(x.contiguous(), weight, bias, (1, 1))                  # NCHW memory
        fast_path.depthwise_conv2d(torch.randn(1, 12, 5, 5).contiguous(memory_format=torch.channels_last),
                                   torch.randn(12, 1, 3, 3), None, (1, 1))                 # 12 channels
        fast_path.depthwise_conv2d(x, weight, None, (2, 2), 2)                             # dilated
    assert list(offered.values()) == [["direct", "native", "polyphase"]]
    xg = x.clone().requires_grad_()
    y = fast_path.depthwise_conv2d(xg, weight, bias, (1, 1), relu=True)
    y.sum().backward()
    assert xg.grad is not None


def test_native_weight_cache_follows_updates(built):
    weight = torch.nn.Parameter(torch.randn(16, 1, 3, 3))
    first = fast_path._native_weight(weight)
    assert fast_path._native_weight(weight) is first
    with torch.no_grad():
        weight.mul_(2)
    torch.testing.assert_close(fast_path._native_weight(weight), 2 * first)


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setattr(native, "_STATE", {})
    monkeypatch.setenv("VITSUITE_NATIVE", "0")
    assert not native.available()
    assert "VITSUITE_NATIVE" in native.why_unavailable()
    with pytest.raises(RuntimeError, match="unavailable: disabled by VITSUITE_NATIVE"):
        native.depthwise_nhwc(torch.randn(1, 4, 4, 8), torch.randn(3, 3, 8), None, (1, 1))
    x = torch.randn(1, 16, 6, 6).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():  # falls back to PyTorch's kernel, same function
        got = fast_path.depthwise_conv2d(x, torch.ones(16, 1, 3, 3), None, (1, 1))
    torch.testing.assert_close(got, F.conv2d(x, torch.ones(16, 1, 3, 3), None, 1, 1, 1, 16))


def test_build_failure_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(native, "_STATE", {})
    monkeypatch.delenv("VITSUITE_NATIVE", raising=False)
    monkeypatch.setattr(native, "_cpu_supported", lambda: True)

    def broken():
        raise RuntimeError("Error building extension 'vitsuite_native'\nno compiler")

    monkeypatch.setattr(native, "_build", broken)
    with pytest.warns(RuntimeWarning, match="no compiler"):
        assert not native.available()
    assert not native.available()  # decided once, no second warning
    assert "build failed" in native.why_unavailable()


def _chain_reference(x, w1, b1, w2):
    """dw2(relu(dw1(x) + b1)) of x (B, H, W, C) with (k, k, C) kernels, through F.conv2d."""
    a = _reference(x, w1.permute(2, 0, 1).unsqueeze(1), b1, (w1.shape[0] // 2,) * 2, 1, True)
    return _reference(a, w2.permute(2, 0, 1).unsqueeze(1), None, (w2.shape[0] // 2,) * 2, 1, False)


@pytest.mark.parametrize("C", [8, 24, 48])
@pytest.mark.parametrize("k1, k2", [(3, 3), (3, 5), (5, 3), (5, 5), (1, 7)])
@pytest.mark.parametrize("rows", [(0, 19), (0, 4), (3, 11), (15, 19), (9, 10)])
def test_depthwise_chain_matches_two_convolutions(built, C, k1, k2, rows):
    """Row ranges touching the top / bottom border, inner bands, a single row; two images at a larger
    stride; an 8-channel tail slice; bias on and off; the same arithmetic as two depthwise_nhwc calls."""
    g = torch.Generator().manual_seed(C * 100 + k1 * 10 + k2)
    x = torch.randn(2, 23, 13, C, generator=g)[:, 2:21]  # 19 rows, images at a larger stride
    w1, w2, b1 = torch.randn(k1, k1, C, generator=g), torch.randn(k2, k2, C, generator=g), torch.randn(C, generator=g)
    r0, r1 = rows
    for b in (None, b1):
        got = native.depthwise_chain(x, w1, b, w2, rows)
        torch.testing.assert_close(got, _chain_reference(x, w1, b, w2)[:, r0:r1], rtol=1e-5, atol=1e-5)
        two = native.depthwise_nhwc(native.depthwise_nhwc(x, w1, b, (k1 // 2,) * 2, 1, True), w2, None, (k2 // 2,) * 2)
        assert torch.equal(got, two[:, r0:r1])  # bit for bit


def test_depthwise_chain_checks(built):
    x = torch.randn(1, 6, 5, 16)
    w = torch.randn(3, 3, 16)
    with pytest.raises(RuntimeError, match="outside the image"):
        native.depthwise_chain(x, w, None, w, (2, 7))
    with pytest.raises(RuntimeError, match="odd k"):
        native.depthwise_chain(x, torch.randn(2, 2, 16), None, w, (0, 6))
    with pytest.raises(RuntimeError, match="multiple of 8"):
        native.depthwise_chain(torch.randn(1, 6, 5, 12), torch.randn(3, 3, 12), None, torch.randn(3, 3, 12), (0, 6))


def test_core_depthwise_chain_and_rows_fallbacks_agree(built):
    """core's depthwise_chain: native on the inference fast path, two depthwise_rows calls elsewhere
    (autograd; channels not a multiple of 8) -- the same function."""
    x = torch.randn(1, 17, 9, 24)
    w1, w2, b1 = torch.randn(5, 5, 24), torch.randn(3, 3, 24), torch.randn(24)
    want = _chain_reference(x, w1, b1, w2)[:, 4:12]
    with torch.inference_mode():
        fast = fast_path.depthwise_chain(x, w1, b1, w2, (4, 12))
    with torch.enable_grad():
        plain = fast_path.depthwise_chain(x.requires_grad_(), w1, b1, w2, (4, 12))
        plain.sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(fast, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain.detach(), want, rtol=1e-5, atol=1e-5)
    x12, w12 = torch.randn(1, 8, 6, 12), torch.randn(3, 3, 12)
    with torch.inference_mode():
        got = fast_path.depthwise_chain(x12, w12, None, w12, (0, 8))
    torch.testing.assert_close(got, _chain_reference(x12, w12, None, w12), rtol=1e-5, atol=1e-5)
    weight = torch.randn(24, 1, 3, 3)
    full = _reference(x, weight, None, (1, 1), 1, False)
    for rows in ((0, 17), (0, 5), (6, 11), (16, 17)):
        torch.testing.assert_close(fast_path.depthwise_rows(x, weight, None, rows), full[:, rows[0]:rows[1]],
                                   rtol=1e-5, atol=1e-5)


def test_channel_run_sum_matches_slice_adds(built):
    """Runs of odd lengths (vector body and scalar tail), from two sources and within one, a length-1
    run, bias and ReLU (NaN passes through as in torch.relu); the core function's fallback agrees."""
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(2, 3, 5, 40, generator=g), torch.randn(2, 3, 5, 24, generator=g)
    a[0, 0, 0, 3] = float("nan")
    runs = [(0, 19, 0, 0, 0, 20), (19, 1, 0, 19, 1, 0), (20, 23, 1, 1, 0, 17)]
    bias = torch.randn(43, generator=g)
    srcs = [a, b]
    want = torch.cat([srcs[sa][..., pa:pa + n] + srcs[sb][..., pb:pb + n] for _, n, sa, pa, sb, pb in runs], -1)
    for bi in (None, bias):
        for relu in (False, True):
            ref = want + bi if bi is not None else want
            ref = F.relu(ref) if relu else ref
            got = native.channel_run_sum(srcs, runs, 43, bi, relu)
            torch.testing.assert_close(got, ref, equal_nan=True)
            with torch.inference_mode():
                torch.testing.assert_close(fast_path.channel_run_sum(srcs, runs, 43, bi, relu), ref, equal_nan=True)
            with torch.enable_grad():
                torch.testing.assert_close(fast_path.channel_run_sum(srcs, runs, 43, bi, relu), ref, equal_nan=True)
    assert torch.isnan(native.channel_run_sum(srcs, runs, 43, None, True)[0, 0, 0, 3])
    with pytest.raises(RuntimeError, match="cover"):
        native.channel_run_sum(srcs, runs[:2], 43, None, False)
    with pytest.raises(RuntimeError, match="past its source"):
        native.channel_run_sum(srcs, [(0, 30, 1, 0, 0, 0)], 30, None, False)


@pytest.mark.parametrize("kh, kw, pad", [(1, 3, (0, 1)), (3, 1, (1, 0)), (2, 4, (1, 2)), (5, 3, (0, 0))])
def test_depthwise_nhwc_rectangular_and_even_kernels(built, kh, kw, pad):
    x = torch.randn(1, 9, 6, 16)
    weight, bias = torch.randn(16, 1, kh, kw), torch.randn(16)
    wt = weight[:, 0].permute(1, 2, 0).contiguous()
    torch.testing.assert_close(native.depthwise_nhwc(x, wt, bias, pad), _reference(x, weight, bias, pad, 1, False),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("M", [1, 7, 73, 300])  # 300: threads split the rows (few weight panels)
@pytest.mark.parametrize("K", [1, 255, 769, 1700])   # one and several 768-wide K blocks, ragged
@pytest.mark.parametrize("N", [1, 16, 17, 40])
def test_linear_packed_matches_f_linear(built, M, K, N):
    g = torch.Generator().manual_seed(M * 1000 + K + N)
    x, w, b = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g), torch.randn(N, generator=g)
    packed = native.pack_linear_weight(w)
    assert packed.shape == (-(-N // 16), K, 16)
    for bias in (None, b):
        torch.testing.assert_close(native.linear_packed(x, packed, N, bias), F.linear(x, w, bias), rtol=1e-5, atol=1e-4)
    # the epilogue (activation, residual) belongs to the last K block only
    res = torch.randn(M, N, generator=g)
    torch.testing.assert_close(native.linear_packed(x, packed, N, b, res, "gelu"), F.gelu(F.linear(x, w, b)) + res,
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("M, K", [(7, 255), (300, 255), (300, 769)])
def test_linear_packed_many_panels_per_thread(built, M, K):
    """Wide outputs (63 weight panels): threads split the columns and read x's rows in place (short rows)
    or pack them (long rows)."""
    g = torch.Generator().manual_seed(M + K)
    x, w, b = torch.randn(M, K, generator=g), torch.randn(1000, K, generator=g), torch.randn(1000, generator=g)
    res = torch.randn(M, 1000, generator=g)
    got = native.linear_packed(x, native.pack_linear_weight(w), 1000, b, res, "gelu")
    torch.testing.assert_close(got, F.gelu(F.linear(x, w, b)) + res, rtol=1e-5, atol=1e-4)


def test_linear_packed_checks(built):
    packed = native.pack_linear_weight(torch.randn(20, 8))
    with pytest.raises(RuntimeError, match="does not match"):
        native.linear_packed(torch.randn(3, 9), packed, 20)
    with pytest.raises(RuntimeError, match="does not match"):
        native.linear_packed(torch.randn(3, 8), packed, 40)
    with pytest.raises(RuntimeError, match="contiguous float32"):
        native.linear_packed(torch.randn(8, 3).t(), packed, 20)
    with pytest.raises(RuntimeError, match=r"bias must be \(N,\)"):
        native.linear_packed(torch.randn(3, 8), packed, 20, torch.randn(7))


@pytest.mark.parametrize("act", ["none", "gelu", "leaky_relu"])
def test_fast_linear_native_candidate(built, monkeypatch, act):
    """The native candidate of core's fast linear / linear_add equals the plain ops; only Parameters (or
    whole views of them) and derived() weights are packed, the pack follows in-place updates, the pack budget is honoured, and big weights choose
    between MKL and native by timing."""
    lin = torch.nn.Linear(24, 40)
    x, res = torch.randn(2, 37, 24), torch.randn(2, 37, 40)
    monkeypatch.setattr(fast_path, "LINEAR_KERNEL", "native")
    with torch.no_grad():
        want = fast_path.linear(x, lin.weight, lin.bias, act, slope=0.2)  # plain path
        torch.testing.assert_close(fast_path.linear(x, lin.weight, lin.bias, act, slope=0.2, fast=True), want,
                                   rtol=1e-5, atol=1e-5)
        assert lin.weight in fast_path._NATIVE_LINEAR
        kept = res.clone()
        torch.testing.assert_close(fast_path.linear_add(x, res, lin.weight, lin.bias, fast=True),
                                   res + F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
        assert torch.equal(res, kept)
        lin.weight.mul_(-1)  # in-place update: repacked
        torch.testing.assert_close(fast_path.linear(x, lin.weight, None, fast=True), F.linear(x, lin.weight),
                                   rtol=1e-5, atol=1e-5)
        part = lin.weight[:20]  # part of a Parameter: never packed
        assert fast_path._native_packed(part) is None
        assert fast_path._native_packed(lin.weight * 2) is None  # a per-call temporary: never packed
    with torch.inference_mode():  # a derived() weight (an inference tensor here): packed once, as it is
        padded = fast_path.derived(lin, "test_padded", [lin.weight], lambda: F.pad(lin.weight, (0, 0, 0, 8)))
        torch.testing.assert_close(fast_path.linear(x, padded, None, act, slope=0.2, fast=True),
                                   fast_path.linear(x, padded, None, act, slope=0.2), rtol=1e-5, atol=1e-5)
        packed = fast_path._NATIVE_LINEAR[padded][2]
        assert packed.shape == (3, 24, 16) and fast_path._native_packed(padded) is packed
        assert fast_path.derived(lin, "test_padded", [lin.weight], lambda: None) is padded
    with torch.no_grad():
        conv = torch.nn.Conv2d(24, 40, 1)  # a 1x1 convolution's weight.flatten(1): its Parameter is packed
        xc = torch.randn(2, 5, 7, 24)
        torch.testing.assert_close(fast_path.linear(xc, conv.weight.flatten(1), conv.bias, act, slope=0.2, fast=True),
                                   fast_path.linear(xc, conv.weight.flatten(1), conv.bias, act, slope=0.2),
                                   rtol=1e-5, atol=1e-5)
        assert conv.weight in fast_path._NATIVE_LINEAR
        other = torch.nn.Linear(24, 48)
        monkeypatch.setattr(fast_path, "NATIVE_PACK_MAX_BYTES", 0)
        assert fast_path._native_packed(other.weight) is None and fast_path._NATIVE_LINEAR[other.weight][2] is None
        monkeypatch.setattr(fast_path, "NATIVE_PACK_MAX_BYTES", 1 << 30)
        assert fast_path._native_packed(other.weight) is None  # the refusal stands while the weight is unchanged
        other.weight.add_(0)
        monkeypatch.setattr(fast_path, "LINEAR_KERNEL", "auto")
        monkeypatch.setattr(fast_path, "_CHOICE", {})
        monkeypatch.setattr(fast_path, "PACK_MAX_BYTES", 0)  # "big" weight: MKL or native, timed
        torch.testing.assert_close(fast_path.linear(x, other.weight, other.bias, fast=True),
                                   F.linear(x, other.weight, other.bias), rtol=1e-5, atol=1e-5)
        (key, chosen), = fast_path._CHOICE.items()
        assert chosen in ("mkl", "native")


def test_suspended_takes_pytorch_kernels_and_nests(built):
    lin = torch.nn.Linear(24, 40)
    with native.suspended():
        assert not native.available() and native.why_unavailable() == "suspended"
        with native.suspended():
            assert not native.available()
        assert not native.available()
        assert fast_path._native_packed(lin.weight) is None
        x = torch.randn(1, 16, 6, 6).contiguous(memory_format=torch.channels_last)
        assert not fast_path._native_depthwise_ok(x, torch.ones(16, 1, 3, 3), None)
        with pytest.raises(RuntimeError, match="unavailable: suspended"):
            native.pack_linear_weight(lin.weight.detach())
    assert native.available() and native.why_unavailable() == ""
    assert fast_path._native_packed(lin.weight) is not None


def _sdpa(q, k, v, mask, scale):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


@pytest.mark.parametrize("nq, nk", [(1, 1), (5, 16), (37, 50), (97, 33), (49, 130)])  # row / key tails
@pytest.mark.parametrize("d, dv", [(64, 64), (30, 30), (7, 20), (32, 17)])
@pytest.mark.parametrize("mask", [None, "per_head", "per_window", "full"])
def test_attention_matches_sdpa(built, nq, nk, d, dv, mask):
    """q / k / v as strided views of packed projections (the models' layout), two images of three heads;
    additive masks broadcast over images or heads or full; output token-major (B, N, heads, Dv)."""
    g = torch.Generator().manual_seed(nq * 1000 + nk * 10 + d + dv)
    B, H = 2, 3
    q = torch.randn(B, nq, H, d + 3, generator=g)[..., 1:d + 1].transpose(1, 2)   # strided rows, offset start
    kv = torch.randn(B, nk, 2, H, max(d, dv), generator=g).permute(2, 0, 3, 1, 4)
    k, v = kv[0, ..., :d], kv[1, ..., :dv]
    shape = {None: None, "per_head": (1, H, nq, nk), "per_window": (B, 1, nq, nk), "full": (B, H, nq, nk)}[mask]
    m = None if shape is None else torch.randn(shape, generator=g) * 3 - 50 * (torch.rand(shape, generator=g) < 0.2)
    scale = 0.3
    got = native.attention(q, k, v, scale, m)
    assert got.shape == (B, nq, H, dv) and got.is_contiguous()
    torch.testing.assert_close(got.transpose(1, 2), _sdpa(q, k, v, m, scale), rtol=1e-5, atol=2e-6)


def test_attention_large_logits_and_checks(built):
    """Scores far from 0 (the max is subtracted before exp) and one-line errors for bad inputs."""
    q, k, v = torch.randn(1, 2, 20, 8) * 30, torch.randn(1, 2, 40, 8) * 30, torch.randn(1, 2, 40, 8)
    torch.testing.assert_close(native.attention(q, k, v, 1.0).transpose(1, 2), _sdpa(q, k, v, None, 1.0),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="do not match"):
        native.attention(q, k[:, :1], v, 1.0)
    with pytest.raises(RuntimeError, match="contiguous last dimension"):
        native.attention(q.transpose(-1, -2), k, v, 1.0)
    with pytest.raises(RuntimeError, match="float32"):
        native.attention(q.double(), k.double(), v.double(), 1.0)
    assert native.attention(q[:, :, :0], k, v, 1.0).shape == (1, 0, 2, 8)


def test_core_attention_offers_native_only_where_it_applies(built, monkeypatch):
    """core's attention() times the native kernel against PyTorch's path in CPU fp32 inference with no /
    additive masks; bool masks, dropout and autograd keep PyTorch's; results agree either way."""
    import importlib

    attn_mod = importlib.import_module("vitsuite.core.layers.attention")

    monkeypatch.setattr(fast_path, "_CHOICE", {})
    q, k, v = (torch.randn(2, 4, 70, 16) for _ in range(3))
    bias = torch.randn(4, 70, 70)
    want = _sdpa(q, k, v, bias, None)
    with torch.inference_mode():
        got = attn_mod.attention(q, k, v, bias=bias)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        (key, chosen), = fast_path._CHOICE.items()
        assert key[0] == "attention" and chosen in ("pytorch", "native")
        monkeypatch.setitem(fast_path._CHOICE, key, "native")  # the chosen-native path, whatever was timed
        got = attn_mod.attention(q, k, v, bias=bias)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert got.transpose(1, 2).is_contiguous()  # the transpose back to tokens is free
        bool_mask = torch.rand(70, 70) > 0.3
        attn_mod.attention(q, k, v, bias=bias, mask=bool_mask)
        attn_mod.attention(q, k, v, dropout_p=0.5)
    assert len(fast_path._CHOICE) == 1  # neither of the last two was offered the native kernel
    q.requires_grad_(True)
    attn_mod.attention(q, k, v).sum().backward()  # autograd: PyTorch's path
    assert q.grad is not None and len(fast_path._CHOICE) == 1


@pytest.mark.parametrize("act", ["none", "gelu", "leaky_relu"])
@pytest.mark.parametrize("M, K, N", [(1, 8, 16), (37, 300, 40), (73, 512, 17), (37, 300, 1000)])  # tails, two K blocks;
# the last: > 24 weight panels per thread, x packed (the others read x in place)
def test_linear_packed_epilogue(built, act, M, K, N):
    """Activation and residual add fused into the last K block's epilogue: act(x W^T + b) + residual, a
    residual with strided rows included; the GELU is the exact (erf) one."""
    g = torch.Generator().manual_seed(M + K + N)
    x, w, b = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g) / K ** 0.5, torch.randn(N, generator=g)
    res = torch.randn(M, N + 5, generator=g)[:, 2:N + 2]
    f = {"none": lambda y: y, "gelu": F.gelu, "leaky_relu": lambda y: F.leaky_relu(y, 0.2)}[act]
    packed = native.pack_linear_weight(w)
    for r in (None, res):
        got = native.linear_packed(x, packed, N, b, r, act, 0.2)
        want = f(F.linear(x, w, b)) + (0 if r is None else r)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    t = torch.linspace(-9, 9, 4001)[:, None]
    torch.testing.assert_close(native.linear_packed(t, native.pack_linear_weight(torch.ones(1, 1)), 1, act="gelu"),
                               F.gelu(t.double()).float(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="act must be one of"):
        native.linear_packed(x, packed, N, act="relu")
    with pytest.raises(RuntimeError, match="residual must be"):
        native.linear_packed(x, packed, N, residual=torch.randn(M + 1, N))


@pytest.mark.parametrize("M, K, N", [(1000, 48, 40), (433, 100, 17), (2000, 300, 64)])
def test_linear_packed_row_split(built, M, K, N):
    """Few output columns and many rows: threads split the rows (each packs only its own); same result,
    with the epilogue."""
    g = torch.Generator().manual_seed(M + K + N)
    x, w, b = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g) / K ** 0.5, torch.randn(N, generator=g)
    res = torch.randn(M, N, generator=g)
    got = native.linear_packed(x, native.pack_linear_weight(w), N, b, res, "gelu")
    torch.testing.assert_close(got, F.gelu(F.linear(x, w, b)) + res, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("M, N", [(1, 1), (7, 13), (325, 512), (33, 1000), (4, 180)])  # vector tails, rows split
def test_layer_norm_matches_f_layer_norm(built, M, N):
    g = torch.Generator().manual_seed(M * 1000 + N)
    x = torch.randn(M, N + 5, generator=g)[:, 2:N + 2] * 4 + 3  # rows at a larger stride, off-centre
    w, b = torch.randn(N, generator=g), torch.randn(N, generator=g)
    for weight, bias, eps in ((w, b, 1e-5), (None, None, 1e-6), (w, None, 1e-3)):
        got = native.layer_norm(x, weight, bias, eps)
        want = F.layer_norm(x, (N,), weight, bias, eps)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)
    with pytest.raises(RuntimeError, match="layer_norm: weight and bias"):
        native.layer_norm(x, w[:-1] if N > 1 else torch.ones(2), None, 1e-5)
    with pytest.raises(RuntimeError, match="layer_norm: x must be"):
        native.layer_norm(x.double(), None, None, 1e-5)


def test_fast_layer_norm_is_chosen_per_shape_and_agrees(built, monkeypatch):
    """core's layer_norm() times the native kernel against the module in inference only; a 3-D input is
    normalised row by row; autograd and an unsuitable norm keep the module's path."""
    monkeypatch.setattr(fast_path, "_CHOICE", {})
    norm = torch.nn.LayerNorm(40)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 9, 40)
    want = norm(x)
    with torch.inference_mode():
        got = fast_path.layer_norm(x, norm, fast=True)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)
        (key, chosen), = fast_path._CHOICE.items()
        assert key == ("layer_norm", 18, 40, True, True) and chosen in ("aten", "native")
        monkeypatch.setitem(fast_path._CHOICE, key, "native")
        got = fast_path.layer_norm(x, norm, fast=True)
        assert got.shape == x.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)
        fast_path.layer_norm(x, torch.nn.LayerNorm((9, 40)), fast=True)  # two normalised dims: the module
        fast_path.layer_norm(x, norm, fast=False)
    assert len(fast_path._CHOICE) == 1


def test_cpu_cache_reuses_large_blocks_and_passes_small_ones_through(built):
    """Inside the scope, freed blocks >= 256 KB come back for the next allocation of their size (also
    when freed after the scope ends); small ones stay with PyTorch's allocator; oneDNN's scratch memory
    (raw allocations, freed through whichever allocator is current) works across the switch; the limit
    frees blocks beyond it; nested scopes uninstall once; the results are the same."""
    ops = torch.ops.vitsuite_native
    native.empty_cpu_cache()
    before = native.cpu_cache_stats()
    x = torch.randn(1, 64, 48, 48).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 64, 3, 3)
    want = F.conv2d(x, w, padding=1)
    with native.cpu_cache():
        with native.cpu_cache():  # nested
            assert native.cpu_cache_stats()["depth"] == before["depth"] + 2
        assert native.cpu_cache_stats()["depth"] == before["depth"] + 1
        big = torch.empty(300 << 10, dtype=torch.uint8)
        small = torch.empty(1000)
        stats = native.cpu_cache_stats()
        assert stats["live_bytes"] >= 300 << 10 and stats["misses"] == before["misses"] + 1
        ptr = big.data_ptr()
        del big
        again = torch.empty(300 << 10, dtype=torch.uint8)
        assert again.data_ptr() == ptr and native.cpu_cache_stats()["hits"] == before["hits"] + 1
        got = F.conv2d(x, w, padding=1)  # oneDNN, with its scratchpad
        outlives = torch.empty(512 << 10, dtype=torch.uint8)
    assert native.cpu_cache_stats()["depth"] == before["depth"]
    torch.testing.assert_close(got, want)
    cached = native.cpu_cache_stats()["cached_bytes"]
    del outlives, again, small
    assert native.cpu_cache_stats()["cached_bytes"] >= cached + (512 << 10) + (300 << 10)
    assert torch.empty(512 << 10, dtype=torch.uint8).data_ptr() != 0  # the system allocator again
    native.empty_cpu_cache()
    assert native.cpu_cache_stats()["cached_bytes"] == 0
    try:
        ops.cpu_cache_set_limit(0)  # nothing kept
        with native.cpu_cache():
            t = torch.empty(400 << 10, dtype=torch.uint8)
            del t
            assert native.cpu_cache_stats()["cached_bytes"] == 0
    finally:
        ops.cpu_cache_set_limit(int(native._STATE.get("cache_limit", 2048) * (1 << 20)))


def test_cpu_cache_disabled_by_environment(built, monkeypatch):
    monkeypatch.setenv("VITSUITE_CPU_CACHE", "0")
    depth = native.cpu_cache_stats()["depth"]
    with native.cpu_cache():
        assert native.cpu_cache_stats()["depth"] == depth


def test_cpu_cache_scope_ends_on_errors_and_models_leave_no_scope(built):
    depth = native.cpu_cache_stats()["depth"]
    with pytest.raises(ValueError):
        with native.cpu_cache():
            raise ValueError("inside")
    assert native.cpu_cache_stats()["depth"] == depth
    from vitsuite.models import build_model

    model = build_model("drsformer", dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 1, 1, 1)).eval()
    x = torch.rand(1, 3, 24, 24)
    with torch.inference_mode():
        y = model(x)
        with pytest.raises(RuntimeError):
            model(torch.rand(1, 4, 24, 24))  # a bad input fails inside the scope
    assert native.cpu_cache_stats()["depth"] == depth
    with torch.no_grad():
        torch.testing.assert_close(model(x), y)
