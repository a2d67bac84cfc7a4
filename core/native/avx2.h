// Shared pieces of vitsuite's AVX2 + FMA kernels: the 6 x 16 register tile of the matmuls (GEMM and
// attention), horizontal max / sum, and vectorised float32 math - 2^x (softmax, erf), erf and exact
// GELU (matmul epilogues). The math is hand-written because these kernels keep values in registers:
// PyTorch's own vectorised math (ATen's Vectorized / Sleef) is compiled per CPU capability inside
// libtorch and not an API for extensions.
#pragma once

#include <immintrin.h>
#include <cmath>
#include <cstdint>

namespace vitsuite_vec {

constexpr int kMR = 6, kNR = 16;  // register tile: rows of the left operand x columns of the product

struct Tile {
  __m256 c[kMR][2];  // row t: columns 0-7, 8-15
};

// acc(6 x 16) = sum over k < kn of a_t[k * kStride] * b[k][0..16), a_t the 6 row pointers (kStride 1:
// plain rows; kMR: a packed 6-row panel), b a packed panel (kn x 16 contiguous). Per k: 2 loads of b, 6
// broadcasts, 12 FMAs - FMA-bound on Zen 3 / Skylake. The 12 accumulators are named variables: an
// indexed array was kept in memory by the compiler (50 vs 170 GFLOP/s).
template <int kStride>
inline Tile tile_6x16(const float* const a[kMR], const float* b, int64_t kn) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00,
         c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4], *a5 = a[5];
  for (int64_t k = 0; k < kn; ++k) {
    const __m256 b0 = _mm256_loadu_ps(b + kNR * k), b1 = _mm256_loadu_ps(b + kNR * k + 8);
    const int64_t ak = k * kStride;
    __m256 av = _mm256_broadcast_ss(a0 + ak);
    c00 = _mm256_fmadd_ps(av, b0, c00); c01 = _mm256_fmadd_ps(av, b1, c01);
    av = _mm256_broadcast_ss(a1 + ak);
    c10 = _mm256_fmadd_ps(av, b0, c10); c11 = _mm256_fmadd_ps(av, b1, c11);
    av = _mm256_broadcast_ss(a2 + ak);
    c20 = _mm256_fmadd_ps(av, b0, c20); c21 = _mm256_fmadd_ps(av, b1, c21);
    av = _mm256_broadcast_ss(a3 + ak);
    c30 = _mm256_fmadd_ps(av, b0, c30); c31 = _mm256_fmadd_ps(av, b1, c31);
    av = _mm256_broadcast_ss(a4 + ak);
    c40 = _mm256_fmadd_ps(av, b0, c40); c41 = _mm256_fmadd_ps(av, b1, c41);
    av = _mm256_broadcast_ss(a5 + ak);
    c50 = _mm256_fmadd_ps(av, b0, c50); c51 = _mm256_fmadd_ps(av, b1, c51);
  }
  return Tile{{{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}}};
}

// Horizontal maximum / sum of the 8 lanes.
inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// In-register transpose of an 8 x 8 float block: r[i][j] -> r[j][i].
inline void transpose8x8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)), s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)), s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0)), s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0)), s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20); r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20); r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31); r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31); r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// Rows [p * 16, p * 16 + 16) of src (n rows of k floats, row stride ld) as the right operand of
// tile_6x16: dst[kk][j] = src[p * 16 + j][kk] for kk < k, j < 16, zero for rows past n. The layout of
// the GEMM's packed weights and of the attention's packed keys. A full panel goes by 8 x 8 register
// transposes (the attention packs k per head and call: element by element that was 15 % of HAT's
// window attention).
inline void pack_panel(const float* src, int64_t ld, int64_t n, int64_t k, int64_t p, float* dst) {
  int64_t k8 = 0;
  if (p * kNR + kNR <= n) {
    k8 = k / 8 * 8;
    for (int64_t kk = 0; kk < k8; kk += 8)
      for (int h = 0; h < 2; ++h) {
        __m256 r[8];
        for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(src + (p * kNR + h * 8 + j) * ld + kk);
        transpose8x8(r);
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + (kk + i) * kNR + h * 8, r[i]);
      }
  }
  for (int j = 0; j < kNR; ++j) {
    const int64_t row = p * kNR + j;
    if (row < n) {
      const float* r = src + row * ld;
      for (int64_t kk = k8; kk < k; ++kk) dst[kk * kNR + j] = r[kk];
    } else {
      for (int64_t kk = k8; kk < k; ++kk) dst[kk * kNR + j] = 0.f;
    }
  }
}

// 2^x for x <= 0 (a softmax's exponent after its maximum is subtracted, in base 2), relative error
// <= 8e-8; below -126 it returns 2^-126 (~1e-38: nothing next to the row's 1). n = round(x) by the
// 1.5 * 2^23 trick (its low mantissa bits then hold n, and shifted into the exponent field they scale
// the polynomial), r = x - n exact in [-1/2, 1/2], 2^r a degree-6 minimax polynomial. Fewer instructions
// than a general e^x (no ln 2 reduction, no float-int conversion, no upper clamp): attention 4-6 %
// faster than with the Cephes e^x it replaced.
inline __m256 exp2_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-126.f));
  const __m256 magic = _mm256_set1_ps(12582912.f);
  const __m256 t = _mm256_add_ps(x, magic);
  const __m256 r = _mm256_sub_ps(x, _mm256_sub_ps(t, magic));
  __m256 p = _mm256_set1_ps(1.535336188319500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.339887440266574e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(9.618437357674640e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.550332471162809e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(2.402264791363012e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(6.931472028550421e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  const __m256i scale = _mm256_slli_epi32(_mm256_castps_si256(t), 23);
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), scale));
}

// erf(x), absolute error <= 1.5e-7 (Abramowitz & Stegun 7.1.26: 1 - t (a1 + ... a5 t^4) exp(-x^2),
// t = 1 / (1 + p |x|)), sign restored.
inline __m256 erf256(__m256 x) {
  const __m256 sign = _mm256_and_ps(x, _mm256_set1_ps(-0.f));
  const __m256 ax = _mm256_andnot_ps(_mm256_set1_ps(-0.f), x);
  const __m256 t = _mm256_div_ps(_mm256_set1_ps(1.f), _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), ax, _mm256_set1_ps(1.f)));
  __m256 p = _mm256_set1_ps(1.061405429f);
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
  p = _mm256_mul_ps(p, t);
  // exp(-x^2) = 2^(-x^2 log2 e)
  const __m256 e = exp2_nonpositive(_mm256_mul_ps(_mm256_mul_ps(ax, ax), _mm256_set1_ps(-1.4426950408889634f)));
  return _mm256_or_ps(_mm256_fnmadd_ps(p, e, _mm256_set1_ps(1.f)), sign);
}

// exact (erf) GELU: x / 2 (1 + erf(x / sqrt 2))
inline __m256 gelu256(__m256 x) {
  const __m256 half_x = _mm256_mul_ps(x, _mm256_set1_ps(0.5f));
  return _mm256_fmadd_ps(half_x, erf256(_mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f))), half_x);
}

}  // namespace vitsuite_vec
