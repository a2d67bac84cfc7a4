// Depthwise 2-D convolution on channels-last float32 tensors for AVX2 + FMA CPUs (vitsuite native op).
//
// Why a hand-written kernel: on AVX2 CPUs oneDNN runs channels-last depthwise convolutions with its
// brdgmm kernel at 15-40 GFLOP/s (its faster blocked-layout kernel needs nChw8c tensors, which PyTorch
// ops cannot keep between calls); DRSformer spends ~40 % of its forward there. This kernel packs each
// 16-channel slice of a block of input rows into a zero-padded contiguous buffer (no border branches,
// full cache lines, no 4 KB-stride cache-set conflicts) and accumulates 4 output pixels x 16 channels
// in registers. Same arithmetic order per output as a direct convolution (sum over kernel rows, then
// columns), fp32 throughout.
//
// Operators (x (B, H, W, C) float32, each image contiguous, C a multiple of 8 -- callers fall back otherwise;
// weights (kh, kw, C) contiguous):
//   vitsuite_native::depthwise_nhwc(x, w, bias (C) or None, pad_h, pad_w, dilation, relu) -> (B, Ho, Wo, C),
//     Ho = H + 2 pad_h - dilation (kh - 1);
//   vitsuite_native::depthwise_chain(x, w1, b1 or None, w2, row0, row1) -> (B, row1 - row0, W, C): rows of
//     dw2(relu(dw1(x) + b1)), two "same" convolutions in one pass (DRSformer's MSFN stages: ~1.5-2x the
//     two separate calls, the intermediate never leaves the core's L1 / L2).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>
#include <algorithm>
#include <cstring>
#include <vector>

namespace {

constexpr int kLanes = 8;      // floats per AVX2 register
constexpr int kPix = 4;        // output pixels per register tile
constexpr int kRowBlock = 16;  // output rows per task (bounds the packed buffer)

// Image row h of channels [c, c + nc), nc in {8, 16}, into dst: pad zero pixels, the W pixels, pad zero
// pixels, nc floats each (a row of zeros when h is outside [0, H)).
inline void pack_row(const float* x, float* dst, int64_t H, int64_t W, int64_t C, int64_t h, int64_t pad, int64_t c,
                     int nc) {
  const int64_t Wp = W + 2 * pad;
  if (h < 0 || h >= H) {
    std::memset(dst, 0, sizeof(float) * Wp * nc);
    return;
  }
  std::memset(dst, 0, sizeof(float) * pad * nc);
  std::memset(dst + (pad + W) * nc, 0, sizeof(float) * pad * nc);
  const float* src = x + h * W * C + c;
  float* d = dst + pad * nc;
  if (nc == 16) {
    for (int64_t w = 0; w < W; ++w) {
      _mm256_storeu_ps(d + 16 * w, _mm256_loadu_ps(src + w * C));
      _mm256_storeu_ps(d + 16 * w + 8, _mm256_loadu_ps(src + w * C + 8));
    }
  } else {
    for (int64_t w = 0; w < W; ++w) _mm256_storeu_ps(d + 8 * w, _mm256_loadu_ps(src + w * C));
  }
}

inline __m256 finish(__m256 v, bool relu) { return relu ? _mm256_max_ps(v, _mm256_setzero_ps()) : v; }

// One output row of an NC-channel slice: in[i] is the packed (zero-padded, NC floats per pixel) input row
// that kernel row i reads, wl the slice's weights (kh, kw, NC) contiguous (weights strided by C ran ~35 %
// slower), bias NC floats or null; writes Wo pixels at orow, ostride floats apart.
template <int NC>
void conv_row(const float* const* in, int64_t kh, int64_t kw, int64_t d, const float* wl, const float* bias,
              float* orow, int64_t ostride, int64_t Wo, bool relu) {
  constexpr int V = NC / kLanes;  // registers per pixel
  __m256 b[V];
  for (int v = 0; v < V; ++v) b[v] = bias ? _mm256_loadu_ps(bias + kLanes * v) : _mm256_setzero_ps();
  int64_t wo = 0;
  for (; wo + kPix <= Wo; wo += kPix) {
    __m256 acc[kPix][V];
    for (int p = 0; p < kPix; ++p)
      for (int v = 0; v < V; ++v) acc[p][v] = b[v];
    for (int64_t i = 0; i < kh; ++i) {
      const float* src = in[i] + wo * NC;
      const float* wr = wl + i * kw * NC;
      for (int64_t j = 0; j < kw; ++j) {
        const float* p0 = src + j * d * NC;
        const float* wj = wr + j * NC;
        for (int v = 0; v < V; ++v) {
          const __m256 wv = _mm256_loadu_ps(wj + kLanes * v);
          for (int p = 0; p < kPix; ++p)
            acc[p][v] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(p0 + p * NC + kLanes * v), acc[p][v]);
        }
      }
    }
    for (int p = 0; p < kPix; ++p)
      for (int v = 0; v < V; ++v) _mm256_storeu_ps(orow + (wo + p) * ostride + kLanes * v, finish(acc[p][v], relu));
  }
  for (; wo < Wo; ++wo) {
    __m256 acc[V];
    for (int v = 0; v < V; ++v) acc[v] = b[v];
    for (int64_t i = 0; i < kh; ++i)
      for (int64_t j = 0; j < kw; ++j) {
        const float* p0 = in[i] + (wo + j * d) * NC;
        const float* wj = wl + (i * kw + j) * NC;
        for (int v = 0; v < V; ++v)
          acc[v] = _mm256_fmadd_ps(_mm256_loadu_ps(wj + kLanes * v), _mm256_loadu_ps(p0 + kLanes * v), acc[v]);
      }
    for (int v = 0; v < V; ++v) _mm256_storeu_ps(orow + wo * ostride + kLanes * v, finish(acc[v], relu));
  }
}

// conv_row for the slice width nc (16, or 8 for the last slice when C is not a multiple of 16).
inline void conv_row_any(int nc, const float* const* in, int64_t kh, int64_t kw, int64_t d, const float* wl,
                         const float* bias, float* orow, int64_t ostride, int64_t Wo, bool relu) {
  if (nc == 16)
    conv_row<16>(in, kh, kw, d, wl, bias, orow, ostride, Wo, relu);
  else
    conv_row<8>(in, kh, kw, d, wl, bias, orow, ostride, Wo, relu);
}

// The slice's weights (k, nc) out of w (k, C) from channel c on, contiguous.
inline void slice_weights(const float* w, float* dst, int64_t k, int64_t C, int64_t c, int nc) {
  for (int64_t i = 0; i < k; ++i) std::memcpy(dst + i * nc, w + i * C + c, sizeof(float) * nc);
}

inline const float* optional_bias(const c10::optional<at::Tensor>& bias, int64_t C, at::Tensor& keep,
                                  const char* op) {
  if (!bias.has_value() || !bias->defined()) return nullptr;
  keep = bias->contiguous();
  TORCH_CHECK(keep.scalar_type() == at::kFloat && keep.numel() == C, op, ": bias must be (C,) float32");
  return keep.data_ptr<float>();
}

inline void check_image(const at::Tensor& x, const char* op) {
  // Each image must be contiguous (H, W, C); images may sit at any stride (row bands of a batch).
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.device().is_cpu() && x.stride(3) == 1 &&
                  x.stride(2) == x.size(3) && x.stride(1) == x.size(2) * x.size(3),
              op, ": x must be a float32 CPU tensor (B, H, W, C) with contiguous images");
  TORCH_CHECK(x.size(3) % kLanes == 0, op, ": channels must be a multiple of 8");
}

at::Tensor depthwise_nhwc(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias,
                          int64_t pad_h, int64_t pad_w, int64_t dilation, bool relu) {
  check_image(x, "depthwise_nhwc");
  TORCH_CHECK(w.dim() == 3 && w.scalar_type() == at::kFloat && w.is_contiguous() && w.size(2) == x.size(3),
              "depthwise_nhwc: w must be a contiguous float32 tensor (kh, kw, C)");
  TORCH_CHECK(dilation >= 1 && pad_h >= 0 && pad_w >= 0, "depthwise_nhwc: bad padding / dilation");
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3), kh = w.size(0), kw = w.size(1);
  at::Tensor b;
  const float* bptr = optional_bias(bias, C, b, "depthwise_nhwc");
  const int64_t Ho = H + 2 * pad_h - dilation * (kh - 1), Wo = W + 2 * pad_w - dilation * (kw - 1);
  const int64_t Wp = W + 2 * pad_w;
  TORCH_CHECK(Ho > 0 && Wo > 0, "depthwise_nhwc: kernel larger than the padded input");
  auto out = at::empty({B, Ho, Wo, C}, x.options());
  const int64_t chunks = (C + 15) / 16;  // 16-channel slices (the last one may hold 8)
  const int64_t row_blocks = (Ho + kRowBlock - 1) / kRowBlock;
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t halo = dilation * (kh - 1);
  at::parallel_for(0, B * chunks * row_blocks, 1, [&](int64_t begin, int64_t end) {
    // the block's padded input rows [r0, r1 + halo) of one slice, contiguous
    std::vector<float> scratch((kRowBlock + halo) * Wp * 16);
    std::vector<float> wlocal(kh * kw * 16), blocal(16);
    std::vector<const float*> in(kh);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / (chunks * row_blocks);
      const int64_t c = (t / row_blocks) % chunks * 16;
      const int64_t rb = t % row_blocks;
      const int nc = std::min<int64_t>(16, C - c);
      const int64_t r0 = rb * kRowBlock, r1 = std::min(Ho, r0 + kRowBlock);
      const float* xn = xp + n * x.stride(0);
      for (int64_t hp = r0; hp < r1 + halo; ++hp)
        pack_row(xn, scratch.data() + (hp - r0) * Wp * nc, H, W, C, hp - pad_h, pad_w, c, nc);
      slice_weights(wp, wlocal.data(), kh * kw, C, c, nc);
      if (bptr) std::memcpy(blocal.data(), bptr + c, sizeof(float) * nc);
      float* on = op + n * Ho * Wo * C + c;
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t i = 0; i < kh; ++i) in[i] = scratch.data() + (r - r0 + i * dilation) * Wp * nc;
        conv_row_any(nc, in.data(), kh, kw, dilation, wlocal.data(), bptr ? blocal.data() : nullptr,
                     on + r * Wo * C, C, Wo, relu);
      }
    }
  });
  return out;
}

// Ring-buffer slot of row h (h may be negative) among k slots of `size` floats.
inline float* slot(std::vector<float>& ring, int64_t h, int64_t k, int64_t size) {
  return ring.data() + ((h % k + k) % k) * size;
}

// y = dw2(relu(dw1(x) + b1)), rows [row0, row1) of the result; both convolutions "same" (odd square kernels,
// stride 1, zero padding: the intermediate is zero outside the image). Per 16-channel slice the input rows
// and the intermediate rows pass through two small rings (a few rows each: 25-85 KB at W = 128, in L1 /
// L2), so the intermediate is never written to memory and the input is read once; each output equals the
// two-call result bit for bit (same arithmetic order).
at::Tensor depthwise_chain(const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                           const at::Tensor& w2, int64_t row0, int64_t row1) {
  check_image(x, "depthwise_chain");
  for (const at::Tensor* w : {&w1, &w2})
    TORCH_CHECK(w->dim() == 3 && w->scalar_type() == at::kFloat && w->is_contiguous() && w->size(2) == x.size(3) &&
                    w->size(0) == w->size(1) && w->size(0) % 2 == 1,
                "depthwise_chain: weights must be contiguous float32 (k, k, C) with odd k");
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  TORCH_CHECK(0 <= row0 && row0 < row1 && row1 <= H, "depthwise_chain: rows [", row0, ", ", row1,
              ") outside the image's ", H);
  at::Tensor b;
  const float* bptr = optional_bias(b1, C, b, "depthwise_chain");
  const int64_t k1 = w1.size(0), k2 = w2.size(0), p1 = k1 / 2, p2 = k2 / 2, Ho = row1 - row0;
  auto out = at::empty({B, Ho, W, C}, x.options());
  const int64_t chunks = (C + 15) / 16;
  const float* xp = x.data_ptr<float>();
  const float* w1p = w1.data_ptr<float>();
  const float* w2p = w2.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t Wx = W + 2 * p1, Wa = W + 2 * p2;  // padded row lengths of the two rings
  // One task per image and slice covering all rows: the intermediate's halo rows are computed once.
  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> xring(k1 * Wx * 16), aring(k2 * Wa * 16), wl1(k1 * k1 * 16), wl2(k2 * k2 * 16), bl(16);
    std::vector<const float*> xin(k1), ain(k2);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / chunks, c = t % chunks * 16;
      const int nc = std::min<int64_t>(16, C - c);
      slice_weights(w1p, wl1.data(), k1 * k1, C, c, nc);
      slice_weights(w2p, wl2.data(), k2 * k2, C, c, nc);
      if (bptr) std::memcpy(bl.data(), bptr + c, sizeof(float) * nc);
      const float* xn = xp + n * x.stride(0);
      float* on = op + n * Ho * W * C + c;
      int64_t x_next = row0 - p2 - p1;  // next input row to pack
      int64_t a_next = row0 - p2;       // next intermediate row to compute
      for (int64_t r = row0; r < row1; ++r) {
        for (; a_next <= r + p2; ++a_next) {
          float* arow = slot(aring, a_next, k2, Wa * nc);
          if (a_next < 0 || a_next >= H) {
            std::memset(arow, 0, sizeof(float) * Wa * nc);
            continue;
          }
          for (; x_next <= a_next + p1; ++x_next)
            pack_row(xn, slot(xring, x_next, k1, Wx * nc), H, W, C, x_next, p1, c, nc);
          for (int64_t i = 0; i < k1; ++i) xin[i] = slot(xring, a_next - p1 + i, k1, Wx * nc);
          std::memset(arow, 0, sizeof(float) * p2 * nc);
          std::memset(arow + (p2 + W) * nc, 0, sizeof(float) * p2 * nc);
          conv_row_any(nc, xin.data(), k1, k1, 1, wl1.data(), bptr ? bl.data() : nullptr, arow + p2 * nc, nc, W, true);
        }
        for (int64_t i = 0; i < k2; ++i) ain[i] = slot(aring, r - p2 + i, k2, Wa * nc);
        conv_row_any(nc, ain.data(), k2, k2, 1, wl2.data(), nullptr, on + (r - row0) * W * C, C, W, false);
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(vitsuite_native, m) {
  m.def("depthwise_nhwc(Tensor x, Tensor w, Tensor? bias, int pad_h, int pad_w, int dilation, bool relu) -> Tensor");
  m.impl("depthwise_nhwc", c10::DispatchKey::CPU, &depthwise_nhwc);
  m.def("depthwise_chain(Tensor x, Tensor w1, Tensor? b1, Tensor w2, int row0, int row1) -> Tensor");
  m.impl("depthwise_chain", c10::DispatchKey::CPU, &depthwise_chain);
}
