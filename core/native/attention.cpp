// Multi-head attention softmax(q k^T * scale + mask) v for float32 on AVX2 + FMA CPUs (vitsuite native
// op).
//
// Why a hand-written kernel: PyTorch's CPU SDPA (its flash kernel) runs the zoo's shapes - 192-600
// tokens, head dim 64, 6-16 heads - at 90-115 GFLOP/s with 2 threads on the AVX2 EPYC, ~60 % of what
// the matmul units give, and a batched GEMM + softmax is slower still (the score matrices round-trip
// through memory). Here the score rows of 48 queries stay in L2 (up to a few thousand keys), so each
// such group takes one pass: scores with the 6 x 16 register tile of the GEMM (avx2.h) against k packed
// once per head (each 16-key panel reused from L1 for all the group's tiles), scaled, masked and their
// row maxima taken on the way out; a row softmax in place; then the product with v packed once per head,
// normalised on the way out. Measured 1.2-1.4x SDPA's rate with 2 threads on those shapes (head dim 64;
// ~1.1x at head dim 32). The output is written as (B, N, heads, Dv): the layout the next projection
// reads, so the usual transpose copy disappears.
//
// Operator (namespace vitsuite_native):
//   attention(q (B, H, Nq, D), k (B, H, Nk, D), v (B, H, Nk, Dv), scale, mask (B, H, Nq, Nk) or None)
//     -> (B, Nq, H, Dv); any strides (0 to broadcast a mask), the last dimension contiguous. The mask is
//     additive and finite: a row of scores that are all -inf gives the mean of v (SDPA: NaN).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <vector>

#include "avx2.h"

namespace {

using vitsuite_vec::exp2_nonpositive;
using vitsuite_vec::hmax;
using vitsuite_vec::hsum;
using vitsuite_vec::kMR;
using vitsuite_vec::kNR;
using vitsuite_vec::Tile;
using vitsuite_vec::tile_6x16;

constexpr int64_t kRowsPerUnit = 8 * kMR;  // query rows per parallel work item
constexpr int64_t kChunkBytes = 32 << 20;  // packed k / v of at most this many bytes at once

struct Geometry {
  int64_t B, H, Nq, Nk, D, Dv, Pk, Pv;
  int64_t q_sb, q_sh, q_sn, k_sb, k_sh, k_sn, v_sb, v_sh, v_sn, m_sb, m_sh, m_sn;
  int64_t kp_size() const { return Pk * D * kNR; }   // packed k of one head: [Pk][D][16]
  int64_t vp_size() const { return Pv * Nk * kNR; }  // packed v of one head: [Pv][Nk][16]
};

// k and v rows come strided out of the qkv projection's output (HAT: 2304 bytes apart, a new page every
// other row, where the hardware prefetcher stops), so the rows a few steps ahead are prefetched: HAT's
// window attention 3-4 % faster, head dim 64 shapes ~1 %.
inline void prefetch_row(const float* row, int64_t floats) {
  const char* r = reinterpret_cast<const char*>(row);
  for (int64_t b = 0; b < floats * 4; b += 64) _mm_prefetch(r + b, _MM_HINT_T0);
}

void pack_head(const Geometry& g, const float* k, const float* v, float* kp, float* vp) {
  for (int64_t pk = 0; pk < g.Pk; ++pk) {
    for (int64_t key = (pk + 1) * kNR; key < std::min((pk + 2) * kNR, g.Nk); ++key) prefetch_row(k + key * g.k_sn, g.D);
    vitsuite_vec::pack_panel(k, g.k_sn, g.Nk, g.D, pk, kp + pk * g.D * kNR);
  }
  constexpr int64_t kAhead = 8;  // v rows prefetched this many keys ahead
  for (int64_t key = 0; key < g.Nk; ++key) {
    const float* src = v + key * g.v_sn;
    if (key + kAhead < g.Nk) prefetch_row(src + kAhead * g.v_sn, g.Dv);
    for (int64_t pv = 0; pv < g.Pv; ++pv) {
      float* dst = vp + (pv * g.Nk + key) * kNR;
      const int64_t cols = std::min<int64_t>(kNR, g.Dv - pv * kNR);
      if (cols == kNR) {  // two vector copies (std::copy of 16 floats was a memmove call: 5 % of the kernel)
        _mm256_storeu_ps(dst, _mm256_loadu_ps(src + pv * kNR));
        _mm256_storeu_ps(dst + 8, _mm256_loadu_ps(src + pv * kNR + 8));
      } else {
        for (int64_t j = 0; j < kNR; ++j) dst[j] = j < cols ? src[pv * kNR + j] : 0.f;
      }
    }
  }
}

// Query rows [r0, r0 + mr) of one head, mr <= kRowsPerUnit -> out rows (stride H * Dv between rows).
// s: kRowsPerUnit x Pk*16 scratch. Each packed k / v panel (4-20 KB) is loaded into L1 once for all the
// rows' 6-row tiles.
// mask: the head's (Nq, Nk) additive mask rows (row stride m_sn) or nullptr.
void rows_block(const Geometry& g, const float* q, const float* kp, const float* vp, const float* mask,
                float scale, int64_t r0, int64_t mr, float* s, float* out) {
  const int64_t ns = g.Pk * kNR;  // score row length (keys padded to 16)
  const int64_t tiles = (mr + kMR - 1) / kMR;
  // Scores are kept in base 2 (times log2 e, the mask too): the softmax then needs 2^x, cheaper than e^x.
  constexpr float l2e = 1.4426950408889634f;
  const __m256 vscale = _mm256_set1_ps(scale * l2e), vl2e = _mm256_set1_ps(l2e);
  // Scores are scaled, masked and their row maxima taken as the tiles are stored (one pass less).
  __m256 rowmax[kRowsPerUnit];
  std::fill(rowmax, rowmax + kRowsPerUnit, _mm256_set1_ps(-INFINITY));
  const float* mrow[kRowsPerUnit];
  if (mask)
    for (int64_t t = 0; t < tiles * kMR; ++t) mrow[t] = mask + std::min<int64_t>(r0 + t, g.Nq - 1) * g.m_sn;
  for (int64_t pk = 0; pk < g.Pk; ++pk) {
    const int64_t j0 = pk * kNR;
    const bool full = j0 + kNR <= g.Nk;
    for (int64_t ti = 0; ti < tiles; ++ti) {
      const float* qrow[kMR];
      for (int t = 0; t < kMR; ++t)  // rows past the end repeat the last row (computed, not stored)
        qrow[t] = q + std::min<int64_t>(r0 + ti * kMR + t, g.Nq - 1) * g.q_sn;
      const Tile c = tile_6x16<1>(qrow, kp + pk * g.D * kNR, g.D);
      for (int t = 0; t < kMR; ++t) {
        const int64_t row = ti * kMR + t;
        float* srow = s + row * ns + j0;
        __m256 y0 = _mm256_mul_ps(c.c[t][0], vscale), y1 = _mm256_mul_ps(c.c[t][1], vscale);
        if (full) {
          if (mask) {
            y0 = _mm256_fmadd_ps(_mm256_loadu_ps(mrow[row] + j0), vl2e, y0);
            y1 = _mm256_fmadd_ps(_mm256_loadu_ps(mrow[row] + j0 + 8), vl2e, y1);
          }
          _mm256_storeu_ps(srow, y0);
          _mm256_storeu_ps(srow + 8, y1);
        } else {  // the last, partial panel: masked keys scalar, padded keys -inf
          _mm256_storeu_ps(srow, y0);
          _mm256_storeu_ps(srow + 8, y1);
          for (int j = 0; j < kNR; ++j)
            srow[j] = j0 + j < g.Nk ? srow[j] + (mask ? mrow[row][j0 + j] * l2e : 0.f) : -INFINITY;
          y0 = _mm256_loadu_ps(srow);
          y1 = _mm256_loadu_ps(srow + 8);
        }
        rowmax[row] = _mm256_max_ps(rowmax[row], _mm256_max_ps(y0, y1));
      }
    }
  }
  float inv_sum[kRowsPerUnit];
  for (int64_t t = 0; t < tiles * kMR; ++t) {
    float* row = s + t * ns;
    const __m256 mx = _mm256_set1_ps(hmax(rowmax[t]));
    __m256 sum = _mm256_setzero_ps();
    for (int64_t j = 0; j < ns; j += 8) {
      const __m256 x = _mm256_sub_ps(_mm256_loadu_ps(row + j), mx);
      const __m256 e = exp2_nonpositive(x);
      _mm256_storeu_ps(row + j, e);
      sum = _mm256_add_ps(sum, e);
    }
    // padded keys gave 2^-126 ~ 1e-38 each: below float resolution of the sum (>= 1)
    inv_sum[t] = 1.f / hsum(sum);
  }
  const int64_t ldo = g.H * g.Dv;
  for (int64_t pv = 0; pv < g.Pv; ++pv) {
    const int64_t cols = std::min<int64_t>(kNR, g.Dv - pv * kNR);
    for (int64_t ti = 0; ti < tiles; ++ti) {
      const float* prow[kMR];
      for (int t = 0; t < kMR; ++t) prow[t] = s + (ti * kMR + t) * ns;
      const Tile c = tile_6x16<1>(prow, vp + pv * g.Nk * kNR, g.Nk);
      const int rows = static_cast<int>(std::min<int64_t>(kMR, mr - ti * kMR));
      for (int t = 0; t < rows; ++t) {
        float* o = out + (ti * kMR + t) * ldo + pv * kNR;
        const __m256 is = _mm256_set1_ps(inv_sum[ti * kMR + t]);
        const __m256 y0 = _mm256_mul_ps(c.c[t][0], is), y1 = _mm256_mul_ps(c.c[t][1], is);
        if (cols == kNR) {
          _mm256_storeu_ps(o, y0);
          _mm256_storeu_ps(o + 8, y1);
        } else {
          alignas(32) float tmp[kNR];
          _mm256_store_ps(tmp, y0);
          _mm256_store_ps(tmp + 8, y1);
          std::copy(tmp, tmp + cols, o);
        }
      }
    }
  }
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                     const c10::optional<at::Tensor>& mask) {
  for (const at::Tensor* t : {&q, &k, &v})
    TORCH_CHECK(t->dim() == 4 && t->scalar_type() == at::kFloat && t->device().is_cpu() && t->stride(3) == 1,
                "attention: q, k, v must be float32 CPU tensors (B, H, N, D) with a contiguous last dimension");
  Geometry g{};
  g.B = q.size(0); g.H = q.size(1); g.Nq = q.size(2); g.D = q.size(3); g.Nk = k.size(2); g.Dv = v.size(3);
  TORCH_CHECK(k.size(0) == g.B && v.size(0) == g.B && k.size(1) == g.H && v.size(1) == g.H && k.size(3) == g.D &&
                  v.size(2) == g.Nk,
              "attention: q (B, H, Nq, D), k (B, H, Nk, D) and v (B, H, Nk, Dv) do not match");
  auto out = at::empty({g.B, g.Nq, g.H, g.Dv}, q.options());
  if (out.numel() == 0) return out;
  TORCH_CHECK(g.Nk > 0 && g.D > 0, "attention: no keys");
  g.Pk = (g.Nk + kNR - 1) / kNR; g.Pv = (g.Dv + kNR - 1) / kNR;
  g.q_sb = q.stride(0); g.q_sh = q.stride(1); g.q_sn = q.stride(2);
  g.k_sb = k.stride(0); g.k_sh = k.stride(1); g.k_sn = k.stride(2);
  g.v_sb = v.stride(0); g.v_sh = v.stride(1); g.v_sn = v.stride(2);
  const float* mp = nullptr;
  if (mask.has_value() && mask->defined()) {
    const at::Tensor& m = *mask;
    TORCH_CHECK(m.dim() == 4 && m.scalar_type() == at::kFloat && m.device().is_cpu() && m.size(0) == g.B &&
                    m.size(1) == g.H && m.size(2) == g.Nq && m.size(3) == g.Nk && (g.Nk == 1 || m.stride(3) == 1),
                "attention: mask must be a float32 CPU tensor (B, H, Nq, Nk) (broadcast strides allowed) with a "
                "contiguous last dimension");
    g.m_sb = m.stride(0); g.m_sh = m.stride(1); g.m_sn = m.stride(2);
    mp = m.data_ptr<float>();
  }
  const float *qp = q.data_ptr<float>(), *kptr = k.data_ptr<float>(), *vptr = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t heads = g.B * g.H, per_head = g.kp_size() + g.vp_size();
  const int64_t groups = (g.Nq + kRowsPerUnit - 1) / kRowsPerUnit;
  // All query rows of one head: its packed k / v (~80 KB each for 325 keys x 64) stay in L2 from the
  // packing to the last row group.
  auto head_rows = [&](int64_t bh, float* kp, int64_t g0, int64_t g1, float* s) {
    const int64_t bi = bh / g.H, hi = bh % g.H;
    const float* qh = qp + bi * g.q_sb + hi * g.q_sh;
    const float* mh = mp ? mp + bi * g.m_sb + hi * g.m_sh : nullptr;
    for (int64_t gi = g0; gi < g1; ++gi) {
      const int64_t r0 = gi * kRowsPerUnit, mr = std::min(kRowsPerUnit, g.Nq - r0);
      rows_block(g, qh, kp, kp + g.kp_size(), mh, static_cast<float>(scale), r0, mr, s,
                 op + ((bi * g.Nq + r0) * g.H + hi) * g.Dv);
    }
  };
  auto pack = [&](int64_t bh, float* kp) {
    const int64_t bi = bh / g.H, hi = bh % g.H;
    pack_head(g, kptr + bi * g.k_sb + hi * g.k_sh, vptr + bi * g.v_sb + hi * g.v_sh, kp, kp + g.kp_size());
  };
  const int64_t threads = at::get_num_threads();
  if (heads >= 2 * threads && (heads % threads == 0 || heads >= 8 * threads)) {
    // Enough heads to share out evenly: each thread packs and finishes whole heads.
    // A mask shared by the batch (HAT / Swin windows: one (heads, N, N) bias for all windows) is read
    // head by head: one head's mask rows (256 KB for 256 x 256) stay in L2 across the windows instead
    // of all heads' (1.5 MB) cycling through L3.
    const bool head_major = mp && g.m_sb == 0 && g.B > 1;
    at::parallel_for(0, heads, 1, [&](int64_t a, int64_t b) {
      std::vector<float> kp(per_head), s(kRowsPerUnit * g.Pk * kNR);
      for (int64_t u = a; u < b; ++u) {
        const int64_t bh = head_major ? (u % g.B) * g.H + u / g.B : u;
        pack(bh, kp.data());
        head_rows(bh, kp.data(), 0, groups, s.data());
      }
    });
    return out;
  }
  // Few heads: pack them all (in chunks of bounded size), then share out (head, row group) items.
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(heads, kChunkBytes / (4 * per_head)));
  std::vector<float> packed(chunk * per_head);
  for (int64_t h0 = 0; h0 < heads; h0 += chunk) {
    const int64_t hn = std::min(chunk, heads - h0);
    at::parallel_for(0, hn, 1, [&](int64_t a, int64_t b) {
      for (int64_t i = a; i < b; ++i) pack(h0 + i, packed.data() + i * per_head);
    });
    at::parallel_for(0, hn * groups, 1, [&](int64_t a, int64_t b) {
      std::vector<float> s(kRowsPerUnit * g.Pk * kNR);
      for (int64_t u = a; u < b; ++u)
        head_rows(h0 + u / groups, packed.data() + (u / groups) * per_head, u % groups, u % groups + 1, s.data());
    });
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vitsuite_native, m) {
  m.def("attention(Tensor q, Tensor k, Tensor v, float scale, Tensor? mask) -> Tensor");
  m.impl("attention", c10::DispatchKey::CPU, &attention);
}
