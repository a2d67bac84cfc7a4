"""CPU inference fast path shared by the model zoo: oneDNN matmuls with fused activation / residual,
caches of derived (padded / pre-scaled) weights, and the switches that decide when it applies.

Which matmul kernel is fastest depends on the CPU: on an AVX-512 CPU oneDNN
(``torch.ops.mkldnn._linear_pointwise``, the kernel Inductor emits) with GELU / LeakyReLU / residual
fused into its epilogue ran the zoo's token matmuls 20-40 % faster than MKL's sgemm (``addmm``); on an
AVX2 EPYC MKL wins the wide ViT-L matmuls and the fused-GELU epilogue is slower than a separate GELU.
So :func:`linear` / :func:`linear_add` time the equivalent kernels on the first call of each shape and
keep the fastest (``VITSUITE_LINEAR_KERNEL`` pins one); among them the native GEMM of
:mod:`vitsuite.core.native` on a weight packed once, which beats MKL with 2 threads on the AVX2 EPYC. :func:`fast_inference` says when the path
applies (CPU float32, no autograd, no autocast, no graph capture: tracing, scripting or torch.compile,
oneDNN present); everything else (training, bf16/fp16 autocast, export, GPUs) runs the plain ops,
which compute the same function. Also here: Winograd F(2x2, 3x3) for float32 3x3 convolutions on CPU,
and :func:`depthwise_conv2d`, the same per-shape timing among oneDNN, the polyphase form of dilated
kernels and the native AVX2 kernel of :mod:`vitsuite.core.native`.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from vitsuite.core import native
from vitsuite.core.layers import kernel_cache

__all__ = [
    "cpu_autocast_enabled",
    "inplace_ok",
    "fast_inference",
    "graph_capture",
    "linear",
    "linear_add",
    "tensor_key",
    "keep_alive",
    "derived",
    "padded_head_dim",
    "pad_heads_out",
    "pad_heads_in",
    "mlp_residual",
    "winograd_conv3x3",
    "use_winograd",
    "choose_kernel",
    "polyphase_depthwise_conv2d",
    "depthwise_conv2d",
    "depthwise_rows",
    "depthwise_chain",
    "channel_run_sum",
    "inference_memory",
]


def cpu_autocast_enabled() -> bool:
    """``torch.is_autocast_enabled("cpu")`` (its device argument appeared in torch 2.4)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch 2.3
        return torch.is_autocast_cpu_enabled()


def inplace_ok(*tensors: Tensor) -> bool:
    """True when in-place updates cannot break autograd (no grad mode, or nothing requires grad)."""
    return not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors)


_ONEDNN: Optional[bool] = None


def _onednn_available() -> bool:
    """Whether ``torch.ops.mkldnn._linear_pointwise`` (the oneDNN matmul Inductor uses) works here."""
    global _ONEDNN
    if _ONEDNN is None:
        try:
            op = torch.ops.mkldnn._linear_pointwise
            # explicit float32: the probe must not depend on torch's default dtype
            x, w = torch.ones(2, 3, dtype=torch.float32), torch.ones(4, 3, dtype=torch.float32)
            _ONEDNN = bool(torch.backends.mkldnn.is_available()) and bool(
                torch.equal(op(x, w, None, "none", [], ""), x @ w.t())
                and torch.equal(op.binary(x, x @ w.t(), w, None, "add"), 2 * (x @ w.t())))
        except Exception:  # older/other builds: plain PyTorch ops
            _ONEDNN = False
    return _ONEDNN


def graph_capture() -> bool:
    """True while TorchScript traces/scripts or ``torch.compile`` (Dynamo) captures a graph: the eager-only
    kernels of this module (oneDNN calls on non-constant weights, ``out=`` writes into views) are left to
    the compiler, which fuses the plain ops itself."""
    compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return torch.jit.is_tracing() or torch.jit.is_scripting() or bool(compiling and compiling())


def fast_inference(x: Tensor) -> bool:
    """True when the inference fast path applies: CPU float32, no autograd, no CPU autocast, not
    tracing/scripting/compiling (under autocast the matmul inputs would be bf16/fp16 for the fp32 oneDNN call).

    The fast path runs the token matmuls through oneDNN (``mkldnn._linear_pointwise``; MKL's sgemm
    is ~40% slower for widths such as 3*180) with GELU / LeakyReLU / residual add fused, and pads
    attention head dims to multiples of 8 (zero weights, identical results) for the SDPA kernel.
    Export (tracing), torch.compile and training take the plain path, which computes the same function.
    """
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not cpu_autocast_enabled() and not graph_capture() and _onednn_available())


# Pre-packed (oneDNN blocked layout) copies of Parameters, reused while the Parameter is unchanged.
_PACKED: WeakIdKeyDictionary = WeakIdKeyDictionary()  # Parameter -> (tensor_key, pinned source, packed copy)
PACK_MAX_ROWS = 512  # pack weights used with at most this many rows (tokens) per call; 0 disables
# ... and of at most this size: iTransformer's (<= 3 MB) gain 9 % per forward, ViTPose-B's 9 MB MLP
# weights 2 %, not worth a second copy of a ViT-L's 1.2 GB of weights.
PACK_MAX_BYTES = 4 << 20


def _per_weight(store: WeakIdKeyDictionary, weight: Tensor, make: Callable[[], Optional[Tensor]]) -> Optional[Tensor]:
    """``make()`` cached in ``store`` for ``weight`` while it is unchanged (:func:`tensor_key`). The entry
    pins the weight's storage (:func:`keep_alive`): after ``.to()`` / ``.data =`` a new storage could
    otherwise reuse its address with the same version counter and pass for the old weights."""
    key = tensor_key(weight)
    hit = store.get(weight)
    if hit is None or hit[0] != key:
        hit = store[weight] = (key, keep_alive(weight), make())
    return hit[2]


def _maybe_packed(x: Tensor, weight: Tensor) -> Tensor:
    """``weight`` in oneDNN's blocked layout when it pays, else ``weight`` itself (made contiguous: oneDNN
    takes a row-strided weight view, e.g. a slice of a stacked tensor, through a path ~100x slower).

    oneDNN re-lays out a plain weight on every call; with few rows (a few hundred tokens) that is
    5-20 % of the matmul. Only ``nn.Parameter`` weights are packed (a stable identity to cache on,
    invalidated by in-place updates through :func:`tensor_key`); the copy costs the weight's memory
    once more, hence the row limit.
    """
    if (not isinstance(weight, nn.Parameter) or x.numel() > PACK_MAX_ROWS * weight.shape[1]
            or weight.numel() * weight.element_size() > PACK_MAX_BYTES):
        return weight.contiguous()
    return _per_weight(_PACKED, weight, lambda: torch.ops.mkldnn._reorder_linear_weight(
        weight.detach(), max(1, x.numel() // weight.shape[1])))


# Weights packed for the native GEMM (vitsuite.core.native.linear_packed), reused while unchanged. The
# packed copy costs the weight's memory once more (a ViT-L: 1.2 GB), so the total is capped.
_NATIVE_LINEAR: WeakIdKeyDictionary = WeakIdKeyDictionary()  # Parameter -> (tensor_key, pinned source, packed)
NATIVE_PACK_MAX_BYTES = int(float(os.environ.get("VITSUITE_NATIVE_PACK_MB", "2048")) * (1 << 20))


# Tensors made by :func:`derived` (padded / pre-scaled weights): constant while their sources are, and
# kept by their module's cache, so like Parameters they may carry a packed copy of their own.
_DERIVED: WeakIdKeyDictionary = WeakIdKeyDictionary()  # derived tensor -> True


def _parameter_of(weight: Tensor) -> Optional[Tensor]:
    """The ``nn.Parameter`` that ``weight`` is, or that it is a whole-tensor view of (a 1x1 convolution's
    ``weight.flatten(1)``), or ``weight`` itself when :func:`derived` made it; None otherwise (a
    per-call temporary: packing it would cost more than the matmul saves)."""
    if isinstance(weight, nn.Parameter) or weight in _DERIVED:
        return weight
    base = weight._base
    if (isinstance(base, nn.Parameter) and base.numel() == weight.numel() and base.data_ptr() == weight.data_ptr()
            and base.is_contiguous() and weight.is_contiguous()):
        return base
    return None


def _native_packed(weight: Tensor) -> Optional[Tensor]:
    """``weight (N, K)`` packed for :func:`vitsuite.core.native.linear_packed`, cached per Parameter; None
    when the native GEMM does not apply (not an ``nn.Parameter``, a whole view of one or a :func:`derived`
    tensor, not float32, the packed total would exceed ``VITSUITE_NATIVE_PACK_MB``, or the native kernels
    are unavailable)."""
    param = _parameter_of(weight)
    if param is None or weight.dim() != 2 or weight.dtype != torch.float32 or not native.available():
        return None

    def make() -> Optional[Tensor]:  # None (a refusal, remembered until the weight changes) over budget
        size = -(-weight.shape[0] // 16) * 16 * weight.shape[1] * 4
        others = sum(v[2].numel() * 4 for w, v in _NATIVE_LINEAR.items() if w is not param and v[2] is not None)
        return native.pack_linear_weight(weight.detach()) if size + others <= NATIVE_PACK_MAX_BYTES else None

    packed = _per_weight(_NATIVE_LINEAR, param, make)
    if packed is not None and packed.shape[1] != weight.shape[1]:  # another view's layout: not this one's
        return None
    return packed


def _native_candidate(weight: Tensor, bias: Optional[Tensor]) -> Optional[Tensor]:
    """The packed weight when the native GEMM is a candidate for this call: float32 bias (or none), and
    the kernel not pinned to another one (``VITSUITE_LINEAR_KERNEL``: no pack for a kernel never run)."""
    if LINEAR_KERNEL not in ("auto", "native") or (bias is not None and bias.dtype != torch.float32):
        return None
    return _native_packed(weight)


def _native_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], packed: Tensor, act: str = "none",
                   slope: float = 0.01, residual: Optional[Tensor] = None) -> Tensor:
    """``act(x (..., K) @ weight.T + bias) + residual`` through the native GEMM on ``packed`` -> ``(..., N)``;
    the activation and the add are fused into its epilogue (``residual``: same rows as ``x``, N columns;
    a copy is avoided unless its rows are strided)."""
    N, K = weight.shape
    res = None
    if residual is not None:
        res = residual.reshape(-1, N)
        if res.stride(-1) != 1:
            res = res.contiguous()
    y = native.linear_packed(x.reshape(-1, K).contiguous(), packed, N, bias, res, act, slope)
    return y.view(*x.shape[:-1], N)


# Which kernel runs a fast-path matmul is measured, not assumed: on an AVX-512 CPU oneDNN with fused
# GELU / residual beat MKL's sgemm by 20-40 % for every token-matmul shape of the zoo, while on an AVX2
# EPYC (the benchmark machine kind) the fused GELU epilogue runs at 89-105 against 108-137 GFLOP/s for
# MKL + a separate GELU, and MKL wins ViT-L's 1024-wide matmuls. So, like ``cudnn.benchmark``, the first
# call of each (op, activation, rows, in, out) shape times the equivalent candidates and the fastest
# serves every later call of that shape in this process.
LINEAR_KERNEL = os.environ.get("VITSUITE_LINEAR_KERNEL", "auto")  # auto | onednn | onednn_unfused | mkl | native
LINEAR_KERNELS = ("onednn", "onednn_unfused", "mkl", "native")
_CHOICE: dict[tuple, str] = {}  # shape key -> kernel name
# A choice made by timing on a shared virtual machine can fall in one of its slow phases (~0.1-0.5 s, in
# which the native GEMM, streaming its weights from the shared L3, loses its lead over MKL while its
# fastest calls elsewhere keep it): a shape whose runner-up came within RETUNE_MARGIN of the winner is
# timed a second time on its first call RETUNE_AFTER_S after the first timing, and the fastest calls of
# both timings decide for good.
_RETUNE: dict[tuple, tuple[float, dict[str, float]]] = {}  # shape key -> (first timing's end, fastest call per kernel)
RETUNE_AFTER_S = 1.0
RETUNE_MARGIN = 1.15


def _apply_act_(y: Tensor, act: str, slope: float) -> Tensor:
    """``act`` applied in place to a fresh matmul output."""
    if act == "gelu":
        return torch.ops.aten.gelu_(y)
    if act == "leaky_relu":
        return F.leaky_relu_(y, slope)
    return y


def _time_candidates(candidates: dict[str, Callable[[], Tensor]],
                     prior: Optional[dict[str, float]] = None) -> tuple[str, Tensor, dict[str, float]]:
    """Name of the fastest candidate, one output of it and each candidate's fastest call (s); ``prior``:
    fastest calls of an earlier timing of the same candidates, counted in.

    After one warm call each (which also builds packed weights / oneDNN primitives), the candidates run
    in interleaved rounds, the order rotating so that no kernel always follows another one's cache
    traffic: at least 8 timed rounds, calls under ~3 ms up to 40 (~60 ms of tuning per shape, once per
    process). A candidate's score is its fastest call: the machine's noise (on a shared virtual machine
    a 1-4 ms matmul's time moves by 10-20 % between calls, more than the 3-12 % that separate the
    kernels) only ever adds time, so the minimum estimates what the kernel itself costs.

    Only one output is alive at a time (dropped before the next call), so every call gets the block
    the previous one freed: when each candidate kept its last output, glibc returned some of those
    megabyte blocks to the system and re-mapped them on the next call, and one candidate could page-fault
    in every call of a tuning run (iTransformer's qkv: ~450 faults a call, 3.0 -> 3.7 ms) - which it
    never does inside the model - and lose the choice. The chosen candidate runs once more for the
    output.
    """
    times: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    if len(names) == 1:
        return names[0], candidates[names[0]](), {}
    rounds, start = 0, time.perf_counter()
    while rounds < 9 or (rounds < 41 and time.perf_counter() - start < 0.06):
        for i in range(len(names)):
            name = names[(i + rounds) % len(names)]
            t0 = time.perf_counter()
            out = candidates[name]()
            if rounds:
                times[name].append(time.perf_counter() - t0)
            del out
        rounds += 1
    best = {n: min(times[n] + ([prior[n]] if prior and n in prior else [])) for n in names}
    name = min(names, key=best.__getitem__)
    return name, candidates[name](), best


def _dispatch(key: tuple, candidates: dict[str, Callable[[], Tensor]], weight: Tensor) -> Tensor:
    """Run the kernel chosen for ``key`` (chosen now, by timing, on the first call of that shape).

    Weights above :data:`PACK_MAX_BYTES` (not packed for oneDNN, see :func:`_maybe_packed`) take MKL or,
    timed against it, the native GEMM (its weight is packed once): oneDNN
    re-lays out an unpacked weight into a fresh buffer on every call, a cost (memory traffic, page
    faults for ViT-L's 4-16 MB weights) that a tuning loop on one cache-hot weight does not see. In
    whole-model runs on the AVX2 EPYC the two rules were within the noise (SatMAE++ ViT-L, ViTPose-B:
    1.00-1.09x against the official either way), so the rule that cannot pick a hidden per-call
    re-layout is kept.
    """
    if LINEAR_KERNEL != "auto":  # pinned (VITSUITE_LINEAR_KERNEL)
        return candidates[LINEAR_KERNEL if LINEAR_KERNEL in candidates else "onednn"]()
    if weight.numel() * weight.element_size() > PACK_MAX_BYTES:
        if "native" in candidates:  # its weight is packed once, so the per-call re-layout argument is moot
            return choose_kernel(key, {"mkl": candidates["mkl"], "native": candidates["native"]})
        return candidates["mkl"]()
    return choose_kernel(key, candidates)


def _known_kernel(key: tuple, weight: Tensor, bias: Optional[Tensor], native_call: Callable[[Tensor], Tensor],
                  mkl_call: Callable[[], Tensor]) -> Optional[Tensor]:
    """The output of the kernel already chosen for ``key`` when it is the native GEMM (``native_call(packed
    weight)``) or MKL (``mkl_call()``), else None: a matmul whose choice is made skips building its candidates
    (~10-19 us of Python a call; iTransformer makes 14 such calls a forward)."""
    if LINEAR_KERNEL != "auto" or (_RETUNE and key in _RETUNE):  # pinned, or a second timing is due
        return None
    name = _CHOICE.get(key)
    if name == "native":
        packed = _native_candidate(weight, bias)
        if packed is not None:
            return native_call(packed)
    elif name == "mkl":
        return mkl_call()
    return None


def _in_dispatch_mode() -> bool:
    """Whether a ``TorchDispatchMode`` (e.g. ``FlopCounterMode``) is active."""
    try:
        return torch._C._len_torch_dispatch_stack() > 0
    except AttributeError:  # pragma: no cover - older torch
        return False


def choose_kernel(key: tuple, candidates: dict[str, Callable[[], Tensor]]) -> Tensor:
    """Run the candidate chosen for ``key`` - timed on the first call of that key (a close call once more
    on its first call :data:`RETUNE_AFTER_S` later; see :func:`_time_candidates`), remembered for the
    process and in the kernel choice cache (:mod:`vitsuite.core.layers.kernel_cache`), from which a later
    process on the same machine takes it without timing. Every candidate must compute the same function
    and return a fresh tensor (each runs several times while timing). Inference only.

    Calls of one shape may offer different candidates (a weight that can be packed for the native GEMM
    and one that cannot, e.g. under a dispatch mode such as the FLOP counter): when the stored choice is
    not among them, that candidate set gets a choice of its own."""
    name = _CHOICE.get(key)
    if name is not None and name not in candidates:
        key = key + (tuple(sorted(candidates)),)
        name = _CHOICE.get(key)
    if name is None and _in_dispatch_mode():
        # Under a dispatch mode (FLOP counter, tracing tools) times mean nothing and every timed call
        # would be seen (FLOPs counted ~10x over): one candidate runs, nothing is stored.
        return candidates[next(iter(candidates))]()
    if name is None:
        name = kernel_cache.lookup(key, candidates)  # timed by an earlier process in this context
        if name is not None:
            _CHOICE[key] = name
            return candidates[name]()
        name, out, best = _time_candidates(candidates)
        _CHOICE[key] = name
        if len(best) > 1 and sorted(best.values())[1] < RETUNE_MARGIN * best[name]:  # a close call
            _RETUNE[key] = (time.perf_counter(), best)
        kernel_cache.record(key, best)  # a close call's entry is replaced after its second timing
        return out
    pending = _RETUNE.get(key) if _RETUNE else None
    if pending is not None and time.perf_counter() - pending[0] >= RETUNE_AFTER_S and not _in_dispatch_mode():
        del _RETUNE[key]
        if set(pending[1]) == set(candidates):  # the same kernels on offer: time them again
            name, out, best = _time_candidates(candidates, prior=pending[1])
            _CHOICE[key] = name
            kernel_cache.record(key, best)
            return out
    return candidates[name]()


def polyphase_depthwise_conv2d(x: Tensor, weight: Tensor, padding: tuple[int, int], dilation: int,
                               bias: Optional[Tensor] = None) -> Tensor:
    """``F.conv2d(x, weight, bias, 1, padding, dilation, groups=C)`` for a depthwise ``weight (C, 1, kh, kw)``
    computed as an undilated convolution of the ``dilation**2`` polyphase components of the zero-padded
    input (output pixel (d i + a, d j + b) only reads input pixels of phase (a, b)); bit-identical.

    Why: oneDNN's depthwise kernels fall off a cliff for wide dilated kernels on AVX2 - a 7x7 kernel with
    dilation 2 on 96 channels at 128x128 took 62-83 ms (2-3 GFLOP/s) against 4.8 ms this way (DRSformer's
    MEFC experts); 3x3 / 5x5 dilated kernels stay faster direct, hence the timed choice of
    :func:`depthwise_conv2d`.

    Args:
        x: (B, C, H, W), best channels-last. padding: (rows, cols) of zeros on each side.
    Returns:
        (B, C, Ho, Wo) channels-last view, Ho = H + 2 rows - dilation (kh - 1) (likewise Wo).
    """
    B, C, H, W = x.shape
    d, (kh, kw), (ph, pw) = dilation, weight.shape[-2:], padding
    Ho, Wo = H + 2 * ph - d * (kh - 1), W + 2 * pw - d * (kw - 1)
    ho, wo = -(-Ho // d), -(-Wo // d)              # output rows / cols per phase
    hi, wi = ho + kh - 1, wo + kw - 1              # input rows / cols per phase ("valid" conv)
    padded = x.new_zeros(B, d * hi, d * wi, C)     # d * hi >= H + 2 ph: the image and its zero border fit
    padded[:, ph:ph + H, pw:pw + W] = x.permute(0, 2, 3, 1)
    phases = padded.view(B, hi, d, wi, d, C).permute(0, 2, 4, 1, 3, 5).reshape(B * d * d, hi, wi, C)
    y = F.conv2d(phases.permute(0, 3, 1, 2), weight, bias, 1, 0, 1, C)   # (B d d, C, ho, wo)
    y = y.permute(0, 2, 3, 1).reshape(B, d, d, ho, wo, C).permute(0, 3, 1, 4, 2, 5).reshape(B, d * ho, d * wo, C)
    return y[:, :Ho, :Wo].permute(0, 3, 1, 2)


_NATIVE_WEIGHTS: WeakIdKeyDictionary = WeakIdKeyDictionary()  # (C, 1, kh, kw) weight -> (key, pin, (kh, kw, C))


def _native_weight(weight: Tensor) -> Tensor:
    """``weight (C, 1, kh, kw)`` as the native kernel's ``(kh, kw, C)``, cached while it is unchanged
    (inference tensors, e.g. weights derived under ``inference_mode``, have no version to check: redone,
    a few microseconds)."""
    if weight.is_inference():
        return weight[:, 0].permute(1, 2, 0).contiguous()
    return _per_weight(_NATIVE_WEIGHTS, weight, lambda: weight[:, 0].permute(1, 2, 0).contiguous())


def _native_depthwise_ok(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> bool:
    """Whether :func:`vitsuite.core.native.depthwise_nhwc` can take this call (channels-last images, any
    batch stride; channels a multiple of 8; float32) and the extension is loaded (built on the first such
    call)."""
    if x.dim() != 4 or weight.shape[1] != 1 or weight.shape[0] % 8 or weight.dtype != torch.float32:
        return False
    C, H, W = x.shape[1:]
    return (x.stride(1) == 1 and x.stride(3) == C and x.stride(2) == W * C
            and (bias is None or bias.dtype == torch.float32) and native.available())


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], padding: tuple[int, int],
                     dilation: int = 1, relu: bool = False) -> Tensor:
    """Depthwise ``F.conv2d`` (stride 1, groups = C), then ReLU when ``relu``: ``x (B, C, H, W)``, ``weight
    (C, 1, kh, kw)`` -> ``(B, C, Ho, Wo)``.

    On the CPU inference fast path the kernel is the fastest, timed per shape (:func:`choose_kernel`), of
    oneDNN's direct kernel, :func:`polyphase_depthwise_conv2d` (dilated kernels) and the native AVX2
    kernel (:mod:`vitsuite.core.native`, channels-last ``x``, C a multiple of 8; ReLU fused), all the
    same function. Elsewhere (autograd, autocast, export, GPUs): ``F.conv2d``.
    """
    C = weight.shape[0]
    if not fast_inference(x):
        y = F.conv2d(x, weight, bias, 1, padding, dilation, C)
        return F.relu(y) if relu else y

    def direct() -> Tensor:
        return _relu_(F.conv2d(x, weight, bias, 1, padding, dilation, C), relu)

    candidates = {"direct": direct}
    if dilation > 1:
        candidates["polyphase"] = lambda: _relu_(polyphase_depthwise_conv2d(x, weight, padding, dilation, bias), relu)
    if _native_depthwise_ok(x, weight, bias):
        candidates["native"] = lambda: native.depthwise_nhwc(
            x.permute(0, 2, 3, 1), _native_weight(weight), bias, padding, dilation, relu).permute(0, 3, 1, 2)
    if len(candidates) == 1:
        return direct()
    return choose_kernel(("depthwise", tuple(x.shape), tuple(weight.shape), bias is not None, tuple(padding),
                          dilation, relu), candidates)


def _relu_(y: Tensor, relu: bool) -> Tensor:
    return y.relu_() if relu else y


def depthwise_rows(x: Tensor, weight: Tensor, bias: Optional[Tensor], rows: tuple[int, int], dilation: int = 1,
                   relu: bool = False) -> Tensor:
    """Rows ``rows[0]:rows[1]`` of the depthwise "same" convolution (odd square kernel, zero padding) of a
    channels-last map, then ReLU when ``relu``: ``x (B, H, W, C)``, ``weight (C, 1, k, k)`` ->
    ``(B, rows[1] - rows[0], W, C)``, each image contiguous.

    Reads only the input rows the kernel needs; zero padding applies at the image border alone, so a
    band's rows equal those of the whole convolution (row-band processing of large maps). The kernel is
    :func:`depthwise_conv2d`'s choice.
    """
    r0, r1 = rows
    p, H = dilation * (weight.shape[-1] // 2), x.shape[1]
    i0, i1 = max(r0 - p, 0), min(r1 + p, H)
    m = max(p - (r0 - i0), p - (i1 - r1))  # zero rows needed beyond the image (symmetric conv padding)
    y = depthwise_conv2d(x[:, i0:i1].permute(0, 3, 1, 2), weight, bias, (m, p), dilation, relu)
    y = y.permute(0, 2, 3, 1).contiguous()
    j0 = r0 - i0 + m - p
    return y if y.shape[1] == r1 - r0 else y[:, j0:j0 + r1 - r0]


def depthwise_chain(x: Tensor, weight1: Tensor, bias1: Optional[Tensor], weight2: Tensor,
                    rows: tuple[int, int]) -> Tensor:
    """Rows ``rows[0]:rows[1]`` of ``dw2(relu(dw1(x) + bias1))``, two depthwise "same" convolutions (odd
    square kernels, stride 1, zero padding; the intermediate is zero outside the image) of a channels-last
    map: ``x (B, H, W, C)``, ``weight1 (k1, k1, C)``, ``weight2 (k2, k2, C)`` (kernels channels-last, i.e. a
    conv weight ``w (C, 1, k, k)`` as ``w[:, 0].permute(1, 2, 0)``), ``bias1 (C,)`` or None ->
    ``(B, rows[1] - rows[0], W, C)``.

    On the CPU inference fast path with the native kernels (C a multiple of 8, contiguous images) one
    pass of :func:`vitsuite.core.native.depthwise_chain` (the intermediate stays in cache; 1.5-2x the two
    calls); elsewhere two :func:`depthwise_rows` calls, the same arithmetic.
    """
    r0, r1 = rows
    B, H, W, C = x.shape
    if (fast_inference(x) and C % 8 == 0 and x.stride(3) == 1 and x.stride(2) == C and x.stride(1) == W * C
            and weight1.dtype == weight2.dtype == torch.float32 and (bias1 is None or bias1.dtype == torch.float32)
            and native.available()):
        return native.depthwise_chain(x, weight1.contiguous(), bias1, weight2.contiguous(), rows)
    halo = weight2.shape[0] // 2
    s0, s1 = max(r0 - halo, 0), min(r1 + halo, H)  # intermediate rows the second convolution reads
    a = depthwise_rows(x, weight1.permute(2, 0, 1).unsqueeze(1), bias1, (s0, s1), relu=True)
    return depthwise_rows(a, weight2.permute(2, 0, 1).unsqueeze(1), None, (r0 - s0, r1 - s0))


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], act: str = "none",
           slope: float = 0.01, fast: bool = False) -> Tensor:
    """``act(x @ weight.T + bias)`` with ``act`` in ``none`` / ``gelu`` (exact) / ``leaky_relu``.

    x: (..., K), weight: (N, K), bias: (N,) or None -> (..., N). With ``fast`` (see
    :func:`fast_inference`) the kernel is the fastest measured here of oneDNN with the activation fused,
    oneDNN then the activation, MKL's sgemm then the activation, and (``nn.Parameter`` weights) the
    native GEMM on a once-packed weight with the activation in its epilogue (the same function).
    """
    if fast:
        k = weight.shape[-1]
        key = ("linear", act, x.numel() // k, k, weight.shape[0], bias is not None)
        out = _known_kernel(key, weight, bias, lambda p: _native_linear(x, weight, bias, p, act, slope),
                            lambda: _apply_act_(F.linear(x, weight, bias), act, slope))
        if out is not None:
            return out
        epilogue = {"gelu": ("gelu", [], "none"), "leaky_relu": ("leaky_relu", [slope], "")}.get(act, ("none", [], ""))

        def onednn() -> Tensor:
            return torch.ops.mkldnn._linear_pointwise(x, _maybe_packed(x, weight), bias, *epilogue)

        def onednn_unfused() -> Tensor:
            y = torch.ops.mkldnn._linear_pointwise(x, _maybe_packed(x, weight), bias, "none", [], "")
            return _apply_act_(y, act, slope)

        def mkl() -> Tensor:
            return _apply_act_(F.linear(x, weight, bias), act, slope)

        candidates = {"onednn": onednn, "mkl": mkl}
        if act != "none":
            candidates["onednn_unfused"] = onednn_unfused
        packed = _native_candidate(weight, bias)
        if packed is not None:
            candidates["native"] = lambda: _native_linear(x, weight, bias, packed, act, slope)
        return _dispatch(key, candidates, weight)
    y = F.linear(x, weight, bias)
    if act == "gelu":
        return F.gelu(y)
    if act == "leaky_relu":
        return F.leaky_relu(y, slope)
    return y


def linear_add(x: Tensor, other: Tensor, weight: Tensor, bias: Optional[Tensor], fast: bool = False) -> Tensor:
    """``other + x @ weight.T + bias``; x: (..., K), other: same number of rows, N columns -> (..., N).

    With ``fast``: the fastest measured here of one oneDNN call with the add fused, MKL's sgemm followed by
    an in-place add, and (``nn.Parameter`` weights) the native packed-weight GEMM with the add in its
    epilogue (``other`` is never written)."""
    if fast:
        other2 = other.reshape(x.shape[:-1] + other.shape[-1:])
        k = weight.shape[-1]
        key = ("linear_add", x.numel() // k, k, weight.shape[0], bias is not None)
        out = _known_kernel(key, weight, bias, lambda p: _native_linear(x, weight, bias, p, residual=other2),
                            lambda: F.linear(x, weight, bias).add_(other2))
        if out is not None:
            return out

        def onednn() -> Tensor:
            return torch.ops.mkldnn._linear_pointwise.binary(x, other2, _maybe_packed(x, weight), bias, "add")

        def mkl() -> Tensor:
            return F.linear(x, weight, bias).add_(other2)

        candidates = {"onednn": onednn, "mkl": mkl}
        packed = _native_candidate(weight, bias)
        if packed is not None:
            candidates["native"] = lambda: _native_linear(x, weight, bias, packed, residual=other2)
        return _dispatch(key, candidates, weight)
    return other + F.linear(x, weight, bias)


def tensor_key(*tensors: Tensor) -> tuple:
    """Cache key of tensors' contents: version counters, storage pointers, devices and dtypes.

    Optimizer steps and ``load_state_dict`` (in-place) bump the versions; ``.to()`` / ``.float()``
    move the storage. Store :func:`keep_alive` of the same tensors with the cached value so an old
    storage cannot be freed and its address reused by new weights while the entry exists. Inference
    tensors (e.g. :func:`derived` weights made under ``inference_mode``) have no version counter: they
    count as unchanged while their storage is the same.
    """
    return tuple((0 if t.is_inference() else t._version, t.data_ptr(), t.device, t.dtype) for t in tensors)


def keep_alive(*tensors: Tensor) -> tuple:
    """Detached views that pin the storages named in a :func:`tensor_key`."""
    return tuple(t.detach() for t in tensors)


def derived(module: nn.Module, name: str, sources: Sequence[Tensor], fn) -> Tensor:
    """``fn()`` cached on ``module`` while ``sources`` (parameters) are unchanged (see :func:`tensor_key`).

    Meant for inference-only derived weights (padded heads, pre-scaled matrices).
    """
    key = tensor_key(*sources)
    store = module.__dict__.setdefault("_derived_cache", {})
    hit = store.get(name)
    if hit is not None and hit[0] == key:
        return hit[2]
    value = fn()
    store[name] = (key, keep_alive(*sources), value)
    for t in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(t, Tensor):
            _DERIVED[t] = True
    return value


def padded_head_dim(head_dim: int) -> int:
    """Head dims are padded to multiples of 8 on the fast path (30 -> 32: ~25% faster SDPA on CPU)."""
    return -(-head_dim // 8) * 8


def pad_heads_out(weight: Tensor, n_chunks: int, heads: int, head_dim: int, padded: int) -> Tensor:
    """Rows (or bias entries) laid out ``(n_chunks, heads, head_dim)`` -> ``(n_chunks, heads, padded)``
    with zero padding; e.g. a qkv Linear whose outputs feed padded heads."""
    if padded == head_dim:
        return weight
    w = weight.reshape(n_chunks, heads, head_dim, -1)
    return F.pad(w, (0, 0, 0, padded - head_dim)).reshape(n_chunks * heads * padded, *weight.shape[1:])


def pad_heads_in(weight: Tensor, heads: int, head_dim: int, padded: int) -> Tensor:
    """Input columns laid out ``(heads, head_dim)`` -> ``(heads, padded)`` with zero columns (e.g. proj)."""
    if padded == head_dim:
        return weight
    w = weight.reshape(weight.shape[0], heads, head_dim)
    return F.pad(w, (0, padded - head_dim)).reshape(weight.shape[0], heads * padded)


def layer_norm(x: Tensor, norm: nn.LayerNorm, fast: bool = False) -> Tensor:
    """``norm(x)`` for ``x (..., C)``; with ``fast`` (see :func:`fast_inference`) the faster measured here
    of ATen's LayerNorm and the native row kernel (:func:`vitsuite.core.native.layer_norm`, same
    function, two-pass variance as ATen's), chosen per shape."""
    if not fast or len(norm.normalized_shape) != 1 or not native.available() or x.stride(-1) != 1:
        return norm(x)
    c = x.shape[-1]
    weight, bias = norm.weight, norm.bias
    rows = x.reshape(-1, c)
    key = ("layer_norm", rows.shape[0], c, weight is not None, bias is not None)
    return choose_kernel(key, {
        "aten": lambda: norm(x),
        "native": lambda: native.layer_norm(rows, weight, bias, norm.eps).view(x.shape)})


def mlp_residual(mlp: nn.Module, x: Tensor, residual: Tensor, fast: bool) -> Tensor:
    """``residual + mlp(x)`` for a timm ``Mlp`` with GELU (fc1 + GELU and fc2 + add fused when fast)."""
    if not fast:
        m = mlp(x)
        return residual.add_(m) if inplace_ok(residual, m) else residual + m
    h = linear(x, mlp.fc1.weight, mlp.fc1.bias, "gelu", fast=True)
    return linear_add(h, residual, mlp.fc2.weight, mlp.fc2.bias, fast=True)


# Winograd F(2x2, 3x3): a 3x3 conv as 16 GEMMs over 4x4 input tiles (2.25x fewer multiplies than
# direct convolution). G is the standard kernel transform; kron(G, G) maps a flattened 3x3 kernel to
# its 16 transformed taps. The input (B^T) and output (A^T) transforms are written out below.
_WINO_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
_WINO_MIN_PIXELS = 512  # below this the per-call weight transform costs more than the GEMMs save


def _wino_kernel_transform(like: Tensor) -> Tensor:
    """kron(G, G) as a (16, 9) tensor on ``like``'s device/dtype (explicit device: safe under a meta context)."""
    g = torch.tensor(_WINO_G, dtype=like.dtype, device=like.device)
    return torch.einsum("ai,bj->abij", g, g).reshape(16, 9)


def winograd_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """3x3 convolution, stride 1, padding 1, by Winograd F(2x2, 3x3) (inference helper).

    Args:
        x: (B, Cin, H, W), best channels-last (any H, W). weight: (Cout, Cin, 3, 3). bias: (Cout,) or None.

    Returns:
        (B, Cout, H, W) as a channels-last view, equal to ``F.conv2d(x, weight, bias, padding=1)`` up to
        float32 rounding (measured more accurate than oneDNN's direct kernel against float64).
    """
    B, C, H, W = x.shape
    Co = weight.shape[0]
    th, tw = (H + 1) // 2, (W + 1) // 2
    # Transformed weights (16, Cin, Cout): one (16 x 9) @ (9 x Cin) product per output channel; the
    # permute is free for channels-last weights.
    u = torch.matmul(_wino_kernel_transform(weight), weight.permute(0, 2, 3, 1).reshape(Co, 9, C)).permute(1, 2, 0)
    # Input tiles: rows 2i..2i+3 / cols 2j..2j+3 of the zero-padded map; V = B^T d B done separably
    # on strided views (B^T rows: d0-d2, d1+d2, d2-d1, d1-d3).
    p = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1 + 2 * tw - W, 1, 1 + 2 * th - H))
    r = [p[:, i:i + 2 * th:2] for i in range(4)]
    v = x.new_empty(4, 4, B, th, tw, C)
    for a, t in enumerate((r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3])):
        c = [t[:, :, j:j + 2 * tw:2] for j in range(4)]
        torch.sub(c[0], c[2], out=v[a, 0])
        torch.add(c[1], c[2], out=v[a, 1])
        torch.sub(c[2], c[1], out=v[a, 2])
        torch.sub(c[1], c[3], out=v[a, 3])
    m = torch.bmm(v.view(16, -1, C), u).view(4, 4, B, th, tw, Co)
    # Y = A^T M A with A^T = [[1, 1, 1, 0], [0, 1, -1, -1]], again separably; outputs interleave 2x2.
    y = x.new_empty(B, th, 2, tw, 2, Co)
    for i, s in enumerate((m[0] + m[1] + m[2], m[1] - m[2] - m[3])):
        torch.add(s[0] + s[1], s[2], out=y[:, :, i, :, 0])
        torch.sub(s[1] - s[2], s[3], out=y[:, :, i, :, 1])
    y = y.view(B, 2 * th, 2 * tw, Co)[:, :H, :W]
    if bias is not None:
        y = y + bias
    return y.permute(0, 3, 1, 2)


def use_winograd(x: Tensor) -> bool:
    """Winograd pays on CPU float32 inference for large-enough maps; training, autocast, tracing and
    GPUs (cuDNN picks its own algorithms) keep the library convolution."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not cpu_autocast_enabled() and not graph_capture()
            and x.shape[-2] * x.shape[-1] >= _WINO_MIN_PIXELS)


def channel_run_sum(srcs: Sequence[Tensor], runs: Sequence[tuple[int, int, int, int, int, int]], width: int,
                    bias: Optional[Tensor] = None, relu: bool = False) -> Tensor:
    """Sums of channel runs of channels-last maps: for each run ``(dst, length, src_a, pos_a, src_b, pos_b)``
    (covering ``[0, width)`` in order), ``out[..., dst:dst + length] = srcs[src_a][..., pos_a:pos_a + length]
    + srcs[src_b][..., pos_b:pos_b + length]``, then ``+ bias`` and ReLU when given: ``srcs`` ``(B, H, W, C_i)``
    -> ``(B, H, W, width)`` (e.g. a 2-input grouped convolution's member sums).

    On the CPU inference fast path one pass of :func:`vitsuite.core.native.channel_run_sum`; elsewhere
    slice adds and a concatenation (the same arithmetic).
    """
    if (all(fast_inference(t) and t.stride(3) == 1 and t.stride(2) == t.shape[3]
            and t.stride(1) == t.shape[2] * t.shape[3] for t in srcs)
            and (bias is None or bias.dtype == torch.float32) and native.available()):
        return native.channel_run_sum(list(srcs), list(runs), width, bias, relu)
    y = torch.cat([srcs[a][..., pa:pa + n] + srcs[b][..., pb:pb + n] for _, n, a, pa, b, pb in runs], -1)
    if bias is not None:
        y = y + bias
    return F.relu(y) if relu else y


def inference_memory(x: Tensor) -> contextlib.AbstractContextManager:
    """:func:`vitsuite.core.native.cpu_cache` (large temporaries reuse freed blocks instead of faulting in
    new pages) on the CPU inference fast path of ``x``; a null context elsewhere."""
    return native.cpu_cache() if fast_inference(x) else contextlib.nullcontext()
