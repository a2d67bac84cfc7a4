// Matrix product y = x @ W^T (+ bias) for float32 on AVX2 + FMA CPUs, with W pre-packed once (vitsuite
// native op).
//
// Why a hand-written GEMM: the ViT-family models spend 80-90 % of a CPU forward in token matmuls with
// M = 150-600 rows, which MKL's sgemm (what PyTorch calls) runs at 75-90 % of this CPU's fp32 peak and
// oneDNN no faster. Packing the weight once (it is constant at inference) into 16-column panels, and
// each call's activations into 6-row panels (per K block), lets a 6 x 16 register tile
// (12 accumulators, 2 weight vectors, 1 broadcast) run at ~90 % of peak: 1.1-1.2x MKL's rate on the
// zoo's shapes with 2 threads. Each output is the sum over K in 768-wide blocks (a different order
// than MKL's: float rounding differs at the 1e-6 relative level).
//
// Operators (namespace vitsuite_native):
//   pack_linear_weight(w (N, K)) -> (ceil(N / 16), K, 16) panels, zero-padded columns
//   linear_packed(x (M, K) contiguous, packed, n (= N), bias (N) or None, residual (M, N) or None,
//                 act, slope) -> y = act(x W^T + bias) + residual (M, N); act 0 none, 1 exact GELU, 2 leaky
//                 ReLU (slope), applied with the residual add in the epilogue of the last K block, so
//                 the output is written once.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>
#include <algorithm>
#include <vector>

#include "avx2.h"

namespace {

using vitsuite_vec::kMR;  // register tile: rows of x
using vitsuite_vec::kNR;  // ... x columns of y
// K block. Every block but the first reads and rewrites the thread's part of y (megabytes: from L3),
// so fewer, longer blocks pay more than a weight panel that fits L1 (16 x 256 floats): with 768 the
// panel (48 KB) streams from L2 and the whole-model forwards ran 2-11 % faster than with 256 (in-process
// paired A/B on the AVX2 EPYC, 2026-12-07: ViT-L 433 tokens 1.09-1.11x, ViTPose-B 1.04x, DuoFormer
// 1.05x, HAT 1.05x, iTransformer 1.03-1.06x, DRSformer 1.02x; 1024 within the noise of 768, 128
// slower; capping the packed x block at 336 KB instead: no better).
constexpr int64_t kKC = 768;
constexpr int64_t kMC = 72;       // rows per x block (72 x 768 floats = 216 KB, in L2) ...
constexpr int64_t kMCPacked = 336;  // ... up to this many when a thread packs x
constexpr int64_t kPanelsPerThread = 16;  // fewer weight panels per thread: threads split the rows
constexpr int64_t kDirectMaxPanels = 24;  // up to this many panels per thread: x's rows read in place ...
constexpr int64_t kShortRowK = 512;       // ... and twice as many when x's rows are this short

// x rows [i0, i0 + mb) and columns [k0, k0 + kb) -> 6-row panels, k-major: ap[panel][k][6] (zero rows
// past M).
void pack_rows(const float* x, float* ap, int64_t M, int64_t K, int64_t i0, int64_t mb, int64_t k0, int64_t kb) {
  for (int64_t r = 0; r < mb; r += kMR) {
    float* dst = ap + (r / kMR) * kb * kMR;
    for (int t = 0; t < kMR; ++t) {
      const int64_t i = i0 + r + t;
      if (i < M) {
        const float* src = x + i * K + k0;
        for (int64_t k = 0; k < kb; ++k) dst[k * kMR + t] = src[k];
      } else {
        for (int64_t k = 0; k < kb; ++k) dst[k * kMR + t] = 0.f;
      }
    }
  }
}

enum Act { kNone = 0, kGelu = 1, kLeakyRelu = 2 };

// What the last K block does to a finished tile: act, then + residual rows (stride ldr).
struct Epilogue {
  int act;
  float slope;
  const float* res;
  int64_t ldr;
};

inline __m256 activate(__m256 v, const Epilogue& ep) {
  if (ep.act == kGelu) return vitsuite_vec::gelu256(v);
  if (ep.act == kLeakyRelu)
    return _mm256_blendv_ps(_mm256_mul_ps(v, _mm256_set1_ps(ep.slope)), v, _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ));
  return v;
}

// Row halves of a tile: plain loads / stores, or (kMasked) lane-masked ones that touch only the valid
// columns of an edge panel (AMD's masked stores are slow: full tiles keep the plain ones).
template <bool kMasked>
struct Lanes {
  __m256i m0, m1;  // valid lanes of columns 0-7, 8-15 (kMasked only)
  __m256 load(const float* p, int half) const {
    if constexpr (kMasked) return _mm256_maskload_ps(p, half ? m1 : m0);
    else return _mm256_loadu_ps(p);
  }
  void store(float* p, int half, __m256 v) const {
    if constexpr (kMasked) _mm256_maskstore_ps(p, half ? m1 : m0, v);
    else _mm256_storeu_ps(p, v);
  }
};

// The finished accumulators c of a tile's first mr rows -> y: (first ? bias : y) + c, then on the last K
// block (ep given) activated and the residual added.
template <bool kMasked>
inline void store_tile(const __m256 (&c)[kMR][2], const Lanes<kMasked>& lanes, float* y, int64_t ldy, int mr,
                       bool first, const float* bias, const Epilogue* ep, const float* res) {
  __m256 base[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  if (first && bias) for (int h = 0; h < 2; ++h) base[h] = lanes.load(bias + 8 * h, h);
  for (int t = 0; t < mr; ++t) {
    float* row = y + t * ldy;
    for (int h = 0; h < 2; ++h) {
      __m256 v = _mm256_add_ps(c[t][h], first ? base[h] : lanes.load(row + 8 * h, h));
      if (ep) {
        v = activate(v, *ep);
        if (res) v = _mm256_add_ps(v, lanes.load(res + t * ep->ldr + 8 * h, h));
      }
      lanes.store(row + 8 * h, h, v);
    }
  }
}

// One 6 x 16 tile: acc = x rows (kb long; kStride 1: the rows of x in place, kMR: a packed 6-row panel,
// see tile_6x16) x b_panel (kb x 16), stored by store_tile for the mr x nr valid part (res points at the
// tile's first residual element). An edge tile (the last rows, or a last panel of fewer than 16 columns:
// N = 180 has 11 full panels + 4 columns) goes through lane masks (a scalar loop here cost 8 % of a
// 4096 x 360 -> 180 matmul).
template <int kStride>
void tile(const float* const rows[kMR], const float* b, int64_t kb, float* y, int64_t ldy, int mr, int nr, bool first,
          const float* bias, const Epilogue* ep, const float* res) {
  const vitsuite_vec::Tile tl = vitsuite_vec::tile_6x16<kStride>(rows, b, kb);
  if (nr == kNR) {
    store_tile(tl.c, Lanes<false>{}, y, ldy, mr, first, bias, ep, res);
    return;
  }
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const Lanes<true> lanes{_mm256_cmpgt_epi32(_mm256_set1_epi32(nr), lane),
                          _mm256_cmpgt_epi32(_mm256_set1_epi32(nr - 8), lane)};
  store_tile(tl.c, lanes, y, ldy, mr, first, bias, ep, res);
}

at::Tensor pack_linear_weight(const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kFloat && w.device().is_cpu(),
              "pack_linear_weight: w must be a float32 CPU matrix (N, K)");
  const at::Tensor wc = w.contiguous();
  const int64_t N = wc.size(0), K = wc.size(1), P = (N + kNR - 1) / kNR;
  auto packed = at::empty({P, K, kNR}, wc.options());
  const float* src = wc.data_ptr<float>();
  float* dst = packed.data_ptr<float>();
  at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) vitsuite_vec::pack_panel(src, K, N, K, p, dst + p * K * kNR);
  });
  return packed;
}

at::Tensor linear_packed(const at::Tensor& x, const at::Tensor& packed, int64_t n,
                         const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual,
                         int64_t act, double slope) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(),
              "linear_packed: x must be a contiguous float32 CPU matrix (M, K)");
  TORCH_CHECK(packed.dim() == 3 && packed.scalar_type() == at::kFloat && packed.is_contiguous() &&
                  packed.size(1) == x.size(1) && packed.size(2) == kNR && packed.size(0) == (n + kNR - 1) / kNR,
              "linear_packed: packed weight does not match x (M, K) and n");
  const float* bptr = nullptr;
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    b = bias->contiguous();
    TORCH_CHECK(b.scalar_type() == at::kFloat && b.numel() == n, "linear_packed: bias must be (N,) float32");
    bptr = b.data_ptr<float>();
  }
  TORCH_CHECK(act >= kNone && act <= kLeakyRelu, "linear_packed: act must be 0 (none), 1 (gelu) or 2 (leaky_relu)");
  const int64_t M = x.size(0), K = x.size(1), P = packed.size(0);
  Epilogue ep{static_cast<int>(act), static_cast<float>(slope), nullptr, 0};
  if (residual.has_value() && residual->defined()) {
    const at::Tensor& r = *residual;
    TORCH_CHECK(r.dim() == 2 && r.scalar_type() == at::kFloat && r.size(0) == M && r.size(1) == n &&
                    (n == 1 || r.stride(1) == 1),
                "linear_packed: residual must be a float32 (M, N) matrix with contiguous rows");
    ep.res = r.data_ptr<float>();
    ep.ldr = r.stride(0);
  }
  auto y = at::empty({M, n}, x.options());
  if (M == 0) return y;
  if (K == 0) {  // no product: the epilogue alone
    y.copy_(bptr ? b.expand({M, n}) : at::zeros({M, n}, x.options()));
    if (act == kGelu) y = at::gelu(y);
    if (act == kLeakyRelu) y = at::leaky_relu(y, slope);
    return ep.res ? y.add_(*residual) : y;
  }
  const float* xp = x.data_ptr<float>();
  const float* wp = packed.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // One block of x rows [i0, i0 + mb) x K block k0 against weight panels [p0, p1): ap the block packed
  // in 6-row panels, or nullptr to read x's rows in place (6 row pointers; rows past M repeat the last
  // row, computed but not stored).
  auto block = [&](const float* ap, int64_t i0, int64_t mb, int64_t k0, int64_t kb, int64_t p0, int64_t p1) {
    const bool last = k0 + kb == K;
    for (int64_t p = p0; p < p1; ++p) {
      const float* bpanel = wp + (p * K + k0) * kNR;
      const int nr = static_cast<int>(std::min<int64_t>(kNR, n - p * kNR));
      for (int64_t r = 0; r < mb; r += kMR) {
        const int mr = static_cast<int>(std::min<int64_t>(kMR, mb - r));
        float* yt = yp + (i0 + r) * n + p * kNR;
        const float* bt = bptr ? bptr + p * kNR : nullptr;
        const float* rt = last && ep.res ? ep.res + (i0 + r) * ep.ldr + p * kNR : nullptr;
        const float* rows[kMR];
        if (ap) {
          const float* a = ap + (r / kMR) * kb * kMR;  // the packed panel: row t at a[k * 6 + t]
          for (int t = 0; t < kMR; ++t) rows[t] = a + t;
          tile<kMR>(rows, bpanel, kb, yt, n, mr, nr, k0 == 0, bt, last ? &ep : nullptr, rt);
        } else {
          for (int t = 0; t < kMR; ++t) rows[t] = xp + std::min<int64_t>(i0 + r + t, M - 1) * K + k0;
          tile<1>(rows, bpanel, kb, yt, n, mr, nr, k0 == 0, bt, last ? &ep : nullptr, rt);
        }
      }
    }
  };
  const int64_t blocks = (M + kMC - 1) / kMC;
  if (P >= kPanelsPerThread * at::get_num_threads() || blocks < 2 * at::get_num_threads()) {
    // Threads split the output columns (weight panels): each streams its own weights and reads all of x.
    // With many panels each it packs x's rows itself (M x K floats, small next to its share of the
    // product); with few, the packing is 5-8 % of its share and the rows are read in place instead
    // (measured: +5 % for 325 x 512 -> 512, -2.5 % for 433 x 1024 -> 3072, 2 threads). Short rows (K <=
    // 512: 2 KB apart, the prefetcher keeps up) are read in place up to 48 panels a thread, sparing each
    // thread a packing of all of x (whole forwards, paired: ChannelViT-S 1.07x, HBFormer 1.05x,
    // iTransformer 1.03x; read in place at 48 panels with K = 1024 / 4096 instead: ViT-L 0.91x).
    const int64_t direct_max = K <= kShortRowK ? 2 * kDirectMaxPanels : kDirectMaxPanels;
    at::parallel_for(0, P, 1, [&](int64_t p_begin, int64_t p_end) {
      const bool pack = p_end - p_begin > direct_max;
      int64_t mc = kMC;
      if (pack) {  // one pass over the thread's weights per block: fewer, larger blocks (+1-4 %)
        const int64_t nblocks = (M + kMCPacked - 1) / kMCPacked;
        mc = ((M + nblocks - 1) / nblocks + kMR - 1) / kMR * kMR;
      }
      std::vector<float> ap(pack ? mc * kKC : 0);
      for (int64_t k0 = 0; k0 < K; k0 += kKC) {
        const int64_t kb = std::min(kKC, K - k0);
        for (int64_t i0 = 0; i0 < M; i0 += mc) {
          const int64_t mb = std::min(mc, M - i0);
          if (pack) pack_rows(xp, ap.data(), M, K, i0, (mb + kMR - 1) / kMR * kMR, k0, kb);
          block(pack ? ap.data() : nullptr, i0, mb, k0, kb, p_begin, p_end);
        }
      }
    });
  } else {
    // Few output columns, many rows (1x1 convolutions over a feature map, HAT's 4096-token matmuls):
    // threads split the rows and each reads all the (small) weight panels. x's rows are read in place:
    // a block of them stays in L2 while it meets every panel, and packing it cost more than it saved
    // (4096 x 180 -> 60: 124 -> 148 GFLOP/s, 16384 x 96 -> 48: 132 -> 166; never slower on the zoo's
    // row-split shapes).
    at::parallel_for(0, blocks, 1, [&](int64_t b_begin, int64_t b_end) {
      for (int64_t bi = b_begin; bi < b_end; ++bi) {
        const int64_t i0 = bi * kMC, mb = std::min(kMC, M - i0);
        for (int64_t k0 = 0; k0 < K; k0 += kKC) {
          const int64_t kb = std::min(kKC, K - k0);
          block(nullptr, i0, mb, k0, kb, 0, P);
        }
      }
    });
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vitsuite_native, m) {
  m.def("pack_linear_weight(Tensor w) -> Tensor");
  m.def("linear_packed(Tensor x, Tensor packed, int n, Tensor? bias, Tensor? residual=None, int act=0, "
        "float slope=0.01) -> Tensor");
  m.impl("pack_linear_weight", c10::DispatchKey::CPU, &pack_linear_weight);
  m.impl("linear_packed", c10::DispatchKey::CPU, &linear_packed);
}
