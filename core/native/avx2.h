// Shared pieces of vitsuite's AVX2 + FMA kernels: the 6 x 16 register tile of the matmuls (GEMM and
// attention) and vectorised float32 math - 2^x (softmax, erf), erf and exact GELU (matmul epilogues). The math
// is hand-written because these kernels keep values in registers: PyTorch's own vectorised math (ATen's
// Vectorized / Sleef) is compiled per CPU capability inside libtorch and not an API for extensions.
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

// Rows [p * 16, p * 16 + 16) of src (n rows of k floats, row stride ld) as the right operand of
// tile_6x16: dst[kk][j] = src[p * 16 + j][kk] for kk < k, j < 16, zero for rows past n. The layout of
// the GEMM's packed weights and of the attention's packed keys.
inline void pack_panel(const float* src, int64_t ld, int64_t n, int64_t k, int64_t p, float* dst) {
  for (int j = 0; j < kNR; ++j) {
    const int64_t row = p * kNR + j;
    if (row < n) {
      const float* r = src + row * ld;
      for (int64_t kk = 0; kk < k; ++kk) dst[kk * kNR + j] = r[kk];
    } else {
      for (int64_t kk = 0; kk < k; ++kk) dst[kk * kNR + j] = 0.f;
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
