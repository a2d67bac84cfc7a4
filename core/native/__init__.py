"""Optional native CPU kernels, compiled on first use (C++ / AVX2, PyTorch's own build helper).

:func:`depthwise_nhwc` is a channels-last depthwise convolution (``depthwise_nhwc.cpp``) that runs
1.3-2x faster than oneDNN's channels-last depthwise kernel on AVX2 CPUs, :func:`linear_packed` a
float32 ``act(x @ W^T + b) + residual`` on a weight packed once by :func:`pack_linear_weight`
(``linear_packed.cpp``), 1.0-1.2x MKL's sgemm on the token matmuls of the ViT family with GELU / the
residual add in its epilogue, and :func:`attention` multi-head ``softmax(q k^T s + mask) v``
(``attention.cpp``), 1.2-1.4x PyTorch's CPU SDPA on the zoo's attention shapes, and :func:`layer_norm`
(``layer_norm.cpp``), a row LayerNorm ~1.2x ATen's on iTransformer's tokens; :func:`depthwise_chain`
two chained depthwise convolutions in one pass and :func:`channel_run_sum` a grouped convolution's member
sums (DRSformer's MSFN); :func:`cpu_cache` a caching CPU allocator scoped to inference forwards
(``cpu_cache.cpp``: no page faults for large temporaries) (all measured on the AMD EPYC of
``docs/models.md``; shared register tile and vector math in ``avx2.h``). The extension is built once per
source version with ``torch.utils.cpp_extension.load`` into PyTorch's extension cache (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``; ~15 s with a C++ compiler and ninja) and loaded with
``torch.ops.load_library``; no Python module is imported from it.

It is an accelerator only: when the CPU lacks AVX2/FMA, no compiler is found, the build fails, or
``VITSUITE_NATIVE=0``, :func:`available` is False (one warning names the reason) and callers use
PyTorch's kernels, which compute the same function. Callers time it against those per shape
(:func:`vitsuite.core.layers.fast.choose_kernel`), so it only runs where it is faster.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

__all__ = ["attention", "available", "channel_run_sum", "cpu_cache", "cpu_cache_stats", "depthwise_chain",
           "depthwise_nhwc", "empty_cpu_cache", "layer_norm", "linear_packed", "pack_linear_weight",
           "source_digest", "suspended", "why_unavailable"]

_SOURCES = [Path(__file__).with_name(name)
            for name in ("attention.cpp", "channel_runs.cpp", "cpu_cache.cpp", "depthwise_nhwc.cpp", "layer_norm.cpp",
                         "linear_packed.cpp")]
_HEADERS = [Path(__file__).with_name("avx2.h")]  # included by the sources: part of the build's version
_LOG = logging.getLogger(__name__)
_STATE: dict[str, object] = {}  # "ok": bool, "why": str, "digest": str
_SUSPENDED = [0]  # depth of suspended() contexts


def _cpu_supported() -> bool:
    """AVX2 + FMA as PyTorch sees them (its dispatcher capability is AVX2 or better on such CPUs)."""
    try:
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512", "AVX512_BF16", "AMX")
    except Exception:  # very old torch: no capability query
        return False


def source_digest() -> str:
    """12 hex digits naming this version of the kernels' sources (and of torch): the build's name."""
    if "digest" not in _STATE:
        data = b"".join(p.read_bytes() for p in _SOURCES + _HEADERS) + torch.__version__.encode()
        _STATE["digest"] = hashlib.sha256(data).hexdigest()[:12]
    return str(_STATE["digest"])


def _build() -> None:
    """Compile (or reuse the cached build of) the extension and register its operators."""
    # PyTorch logs a CUDA_HOME notice when its build helper is imported on a CPU-only machine; it says
    # nothing about this build.
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.utils import cpp_extension

            cpp_extension.load(
                f"vitsuite_native_{source_digest()}", [str(p) for p in _SOURCES], is_python_module=False,
                verbose=False,
                # -fopenmp: at::parallel_for is inlined as OpenMP regions. Nothing links a libgomp: its
                # entry points resolve to the one torch has loaded, so both share one thread pool.
                extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"])
    finally:
        log.setLevel(level)


def available() -> bool:
    """Whether the native operators are built and loaded (builds them on the first call) and not
    :func:`suspended`."""
    if _SUSPENDED[0]:
        return False
    if "ok" not in _STATE:
        why = ""
        if os.environ.get("VITSUITE_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
            why = "disabled by VITSUITE_NATIVE"
        elif not _cpu_supported():
            why = "the CPU has no AVX2/FMA"
        else:
            try:
                _LOG.info("loading vitsuite's native CPU kernels (compiled once per version, ~15 s)")
                _build()
            except Exception as exc:  # no compiler / ninja, build error: PyTorch kernels instead
                why = f"build failed ({type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''})"
                warnings.warn(f"vitsuite native kernels unavailable, using PyTorch's: {why}", RuntimeWarning,
                              stacklevel=2)
        _STATE.update(ok=not why, why=why)
    return bool(_STATE["ok"])


@contextlib.contextmanager
def suspended():
    """Within this context :func:`available` is False, so callers take PyTorch's kernels (A/B
    comparisons; the built operators stay loaded)."""
    _SUSPENDED[0] += 1
    try:
        yield
    finally:
        _SUSPENDED[0] -= 1


def _require() -> None:
    """Raise a one-line RuntimeError with the reason when the native operators cannot run."""
    if not available():
        raise RuntimeError(f"vitsuite native kernels unavailable: {why_unavailable()}")


@contextlib.contextmanager
def cpu_cache():
    """Within this context PyTorch's CPU tensors of 256 KB or more come from a cache of freed blocks
    (``cpu_cache.cpp``): a forward that repeats its shapes allocates no new pages (glibc mmaps or trims
    large blocks, so each forward otherwise re-faults its large temporaries: ~8 % of DRSformer's time on
    the VMs of docs/models.md). Blocks made inside return to the cache when freed, inside or outside;
    at most ``VITSUITE_CPU_CACHE_MB`` (default 2048) stay cached; :func:`empty_cpu_cache` frees them.
    A no-op when the native kernels are unavailable or ``VITSUITE_CPU_CACHE=0``. Nests; thread-safe."""
    entered = False
    if os.environ.get("VITSUITE_CPU_CACHE", "1").strip().lower() not in ("0", "false", "no", "off") and available():
        if "cache_limit" not in _STATE:
            mb = float(os.environ.get("VITSUITE_CPU_CACHE_MB", "2048"))
            torch.ops.vitsuite_native.cpu_cache_set_limit(int(mb * (1 << 20)))
            _STATE["cache_limit"] = mb
        entered = bool(torch.ops.vitsuite_native.cpu_cache_enter())
    try:
        yield
    finally:
        if entered:
            torch.ops.vitsuite_native.cpu_cache_exit()


def cpu_cache_stats() -> dict[str, int]:
    """``cached_bytes`` (free blocks kept), ``live_bytes`` (blocks in use), ``hits``, ``misses``,
    ``depth`` (open :func:`cpu_cache` scopes); zeros when the native kernels are unavailable."""
    keys = ("cached_bytes", "live_bytes", "hits", "misses", "depth")
    if not available():
        return dict.fromkeys(keys, 0)
    return dict(zip(keys, (int(v) for v in torch.ops.vitsuite_native.cpu_cache_stats())))


def empty_cpu_cache() -> None:
    """Free every block :func:`cpu_cache` keeps (blocks in use return to the cache when freed)."""
    if available():
        torch.ops.vitsuite_native.cpu_cache_empty()


def why_unavailable() -> str:
    """The reason :func:`available` is False ('' when it is True)."""
    if available():
        return ""
    return "suspended" if _SUSPENDED[0] else str(_STATE["why"])


def depthwise_nhwc(x: Tensor, weight: Tensor, bias: Optional[Tensor], padding: tuple[int, int],
                   dilation: int = 1, relu: bool = False) -> Tensor:
    """Depthwise convolution (stride 1, zero padding) of a channels-last image, optionally ReLU'd.

    Args:
        x: (B, H, W, C) float32 CPU tensor, each image contiguous (any batch stride), C a multiple of 8.
        weight: (kh, kw, C) contiguous float32 (the ``(C, 1, kh, kw)`` conv weight permuted).
        bias: (C,) or None. padding: (rows, cols) of zeros on each side.
    Returns:
        (B, Ho, Wo, C) with Ho = H + 2 rows - dilation (kh - 1) (likewise Wo); ReLU applied when ``relu``.
    Raises RuntimeError (with the reason) when the native kernels are unavailable here.
    """
    _require()
    return torch.ops.vitsuite_native.depthwise_nhwc(x, weight, bias, int(padding[0]), int(padding[1]),
                                                    int(dilation), bool(relu))


def depthwise_chain(x: Tensor, weight1: Tensor, bias1: Optional[Tensor], weight2: Tensor,
                    rows: tuple[int, int]) -> Tensor:
    """Rows ``rows[0]:rows[1]`` of ``dw2(relu(dw1(x) + bias1))``: two depthwise "same" convolutions
    (stride 1, zero padding, odd square kernels) in one pass, the intermediate kept in a few rows of cache.

    Args:
        x: (B, H, W, C) float32 CPU tensor, each image contiguous (any batch stride), C a multiple of 8.
        weight1, weight2: (k1, k1, C) and (k2, k2, C) contiguous float32 (conv weights permuted).
        bias1: (C,) or None.
    Returns:
        (B, rows[1] - rows[0], W, C), equal to two :func:`depthwise_nhwc` calls bit for bit.
    Raises RuntimeError (with the reason) when the native kernels are unavailable here.
    """
    _require()
    return torch.ops.vitsuite_native.depthwise_chain(x, weight1, bias1, weight2, int(rows[0]), int(rows[1]))


def channel_run_sum(srcs: list[Tensor], runs: list[tuple[int, int, int, int, int, int]], width: int,
                    bias: Optional[Tensor] = None, relu: bool = False) -> Tensor:
    """Sums of channel runs in one pass (``channel_runs.cpp``): for each run ``(dst, length, src_a, pos_a,
    src_b, pos_b)``, ``out[..., dst + i] = act(srcs[src_a][..., pos_a + i] + srcs[src_b][..., pos_b + i] +
    bias[dst + i])`` for ``i < length``; the runs cover ``[0, width)`` in order.

    Args:
        srcs: (B, H, W, C_i) float32 CPU tensors of one spatial size, each image contiguous.
        bias: (width,) or None; ``relu`` applies ReLU last.
    Returns:
        (B, H, W, width). Raises RuntimeError (with the reason) when the native kernels are unavailable here.
    """
    _require()
    flat = [int(v) for run in runs for v in run]
    return torch.ops.vitsuite_native.channel_run_sum(list(srcs), flat, int(width), bias, bool(relu))


def pack_linear_weight(weight: Tensor) -> Tensor:
    """``weight (N, K)`` float32 -> the layout :func:`linear_packed` reads: ``(ceil(N / 16), K, 16)``
    panels of 16 output columns, zero-padded. Pack once per weight (it costs a copy of the weight).
    Raises RuntimeError (with the reason) when the native kernels are unavailable here."""
    _require()
    return torch.ops.vitsuite_native.pack_linear_weight(weight)


_ACTS = {"none": 0, "gelu": 1, "leaky_relu": 2}


def linear_packed(x: Tensor, packed: Tensor, n: int, bias: Optional[Tensor] = None, residual: Optional[Tensor] = None,
                  act: str = "none", slope: float = 0.01) -> Tensor:
    """``act(x @ W^T + bias) + residual`` for ``x (M, K)`` contiguous float32, ``packed =
    pack_linear_weight(W)``, ``W (n, K)``, ``residual (M, n)`` (rows contiguous) or None, ``act`` one of
    ``none`` / ``gelu`` (exact, erf to 1.5e-7) / ``leaky_relu`` (``slope``) -> ``(M, n)``; the activation
    and the add run in the matmul's epilogue (the output is written once). Raises RuntimeError (with the
    reason) when the native kernels are unavailable here."""
    _require()
    if act not in _ACTS:
        raise ValueError(f"linear_packed: act must be one of {sorted(_ACTS)}, got {act!r}")
    return torch.ops.vitsuite_native.linear_packed(x, packed, int(n), bias, residual, _ACTS[act], float(slope))


def layer_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float) -> Tensor:
    """LayerNorm over the last dimension of ``x (M, N)`` float32 with contiguous rows, ``weight`` / ``bias``
    ``(N,)`` contiguous or None -> ``(M, N)``: ``(x - mean) / sqrt(var + eps) * weight + bias`` per row,
    the variance biased, as ``F.layer_norm`` (``layer_norm.cpp``). Raises RuntimeError (with the
    reason) when the native kernels are unavailable here."""
    _require()
    return torch.ops.vitsuite_native.layer_norm(x, weight, bias, float(eps))


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float, mask: Optional[Tensor] = None) -> Tensor:
    """``softmax(q k^T * scale + mask) v`` per head: ``q (B, H, Nq, D)``, ``k (B, H, Nk, D)``, ``v (B, H, Nk,
    Dv)`` float32, any strides with the last dimension contiguous; ``mask`` additive, finite, broadcastable
    to ``(B, H, Nq, Nk)`` -> ``(B, Nq, H, Dv)`` contiguous (the token-major layout the output projection
    reads: ``.reshape(B, Nq, H * Dv)`` is a view). Raises RuntimeError (with the reason) when the native
    kernels are unavailable here."""
    _require()
    if mask is not None:
        mask = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        if mask.stride(-1) != 1 and mask.shape[-1] > 1:
            mask = mask.contiguous()
    return torch.ops.vitsuite_native.attention(q, k, v, float(scale), mask)
