// Row-wise LayerNorm for float32 on AVX2 + FMA CPUs (vitsuite native op).
//
// Why: ATen's CPU LayerNorm takes ~60 us for iTransformer's 325 x 512 tokens with 2 threads (its
// moments are a Welford cascade over a generic reduction), more than twice an elementwise add of the same
// size (~25 us); the model calls it seven times a forward. Here a row (a few KB) is read once for its
// sum, once for the centred sum of squares (two passes, as ATen's result: no E[x^2] - E[x]^2
// cancellation) and once more to write y, all from L1; rows are shared out in blocks across PyTorch's
// OpenMP pool.
//
// Operator (namespace vitsuite_native):
//   layer_norm(x (M, N) rows contiguous, weight (N,) or None, bias (N,) or None, eps) -> (M, N)
//     y = (x - mean) / sqrt(var + eps) * weight + bias per row, var biased (divided by N).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>
#include <algorithm>
#include <cmath>

#include "avx2.h"

namespace {

using vitsuite_vec::hsum;

// One row: n floats at x -> y. Four accumulators per pass (the adds' latency, not their count, bounds a
// single chain).
void norm_row(const float* x, float* y, int64_t n, const float* w, const float* b, float eps) {
  const int64_t n32 = n / 32 * 32, n8 = n / 8 * 8;
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t j = 0;
  for (; j < n32; j += 32) {
    s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + j));
    s1 = _mm256_add_ps(s1, _mm256_loadu_ps(x + j + 8));
    s2 = _mm256_add_ps(s2, _mm256_loadu_ps(x + j + 16));
    s3 = _mm256_add_ps(s3, _mm256_loadu_ps(x + j + 24));
  }
  for (; j < n8; j += 8) s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + j));
  float sum = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; j < n; ++j) sum += x[j];
  const float mean = sum / static_cast<float>(n);
  const __m256 vm = _mm256_set1_ps(mean);
  s0 = s1 = s2 = s3 = _mm256_setzero_ps();
  for (j = 0; j < n32; j += 32) {
    const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + j), vm), d1 = _mm256_sub_ps(_mm256_loadu_ps(x + j + 8), vm);
    const __m256 d2 = _mm256_sub_ps(_mm256_loadu_ps(x + j + 16), vm), d3 = _mm256_sub_ps(_mm256_loadu_ps(x + j + 24), vm);
    s0 = _mm256_fmadd_ps(d0, d0, s0);
    s1 = _mm256_fmadd_ps(d1, d1, s1);
    s2 = _mm256_fmadd_ps(d2, d2, s2);
    s3 = _mm256_fmadd_ps(d3, d3, s3);
  }
  for (; j < n8; j += 8) {
    const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + j), vm);
    s0 = _mm256_fmadd_ps(d, d, s0);
  }
  float ss = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; j < n; ++j) ss += (x[j] - mean) * (x[j] - mean);
  const float rstd = 1.f / std::sqrt(ss / static_cast<float>(n) + eps);
  const __m256 vr = _mm256_set1_ps(rstd), one = _mm256_set1_ps(1.f), zero = _mm256_setzero_ps();
  for (j = 0; j < n8; j += 8) {
    const __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm), vr);
    const __m256 vw = w ? _mm256_loadu_ps(w + j) : one, vb = b ? _mm256_loadu_ps(b + j) : zero;
    _mm256_storeu_ps(y + j, _mm256_fmadd_ps(d, vw, vb));
  }
  for (; j < n; ++j) y[j] = (x[j] - mean) * rstd * (w ? w[j] : 1.f) + (b ? b[j] : 0.f);
}

at::Tensor layer_norm(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                      const c10::optional<at::Tensor>& bias, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.device().is_cpu() && x.stride(1) == 1,
              "layer_norm: x must be a float32 CPU tensor (M, N) with contiguous rows");
  const int64_t M = x.size(0), N = x.size(1);
  const float* w = nullptr;
  const float* b = nullptr;
  for (const auto* t : {&weight, &bias}) {
    if (t->has_value() && (*t)->defined()) {
      const at::Tensor& p = **t;
      TORCH_CHECK(p.dim() == 1 && p.size(0) == N && p.scalar_type() == at::kFloat && p.is_contiguous(),
                  "layer_norm: weight and bias must be contiguous float32 (N,)");
      (t == &weight ? w : b) = p.data_ptr<float>();
    }
  }
  auto out = at::empty({M, N}, x.options());
  if (out.numel() == 0) return out;
  const float* xp = x.data_ptr<float>();
  float* yp = out.data_ptr<float>();
  const int64_t ldx = x.stride(0);
  // ~16 KB of rows per work item: enough to amortise the fork, small enough to split 300 rows evenly.
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(N, 1));
  at::parallel_for(0, M, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) norm_row(xp + r * ldx, yp + r * N, N, w, b, static_cast<float>(eps));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vitsuite_native, m) {
  m.def("layer_norm(Tensor x, Tensor? weight, Tensor? bias, float eps) -> Tensor");
  m.impl("layer_norm", c10::DispatchKey::CPU, &layer_norm);
}
