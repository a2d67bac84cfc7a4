// Sums of channel runs of channels-last tensors, with bias and ReLU, for AVX2 CPUs (vitsuite native op).
//
// Why: a 2-input grouped convolution computed as depthwise convolutions (DRSformer's MSFN mixers) ends in
// "output channel g = member 0's channel + member 1's channel", i.e. a few adds of channel slices. ATen
// runs an add of two channel slices (rows of 63-127 floats at a stride) at ~9 GB/s and the bias and
// ReLU are two more passes; here every pixel's runs are added, biased and ReLU'd in one pass from L1.
//
// Operator (namespace vitsuite_native):
//   channel_run_sum(srcs: list of (B, H, W, C_i) float32 with contiguous images, runs: int list of
//     (dst, len, src_a, pos_a, src_b, pos_b) sextuples covering [0, width) in order, width, bias (width,)
//     or None, relu) -> (B, H, W, width):
//     out[..., dst + i] = act(srcs[src_a][..., pos_a + i] + srcs[src_b][..., pos_b + i] + bias[dst + i]).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>
#include <vector>

namespace {

struct Run {
  int64_t dst, len, src_a, pos_a, src_b, pos_b;
};

at::Tensor channel_run_sum(const std::vector<at::Tensor>& srcs, const std::vector<int64_t>& runs, int64_t width,
                           const c10::optional<at::Tensor>& bias, bool relu) {
  TORCH_CHECK(!srcs.empty(), "channel_run_sum: no source tensors");
  const at::Tensor& s0 = srcs[0];
  TORCH_CHECK(s0.dim() == 4, "channel_run_sum: sources must be (B, H, W, C)");
  const int64_t B = s0.size(0), H = s0.size(1), W = s0.size(2);
  for (const auto& s : srcs)
    TORCH_CHECK(s.dim() == 4 && s.size(0) == B && s.size(1) == H && s.size(2) == W && s.scalar_type() == at::kFloat &&
                    s.device().is_cpu() && s.stride(3) == 1 && s.stride(2) == s.size(3) &&
                    s.stride(1) == s.size(2) * s.size(3),
                "channel_run_sum: sources must be float32 CPU (B, H, W, C) tensors of one size, images contiguous");
  TORCH_CHECK(runs.size() % 6 == 0, "channel_run_sum: runs must be sextuples (dst, len, src_a, pos_a, src_b, pos_b)");
  std::vector<Run> rs;
  int64_t covered = 0;
  for (size_t i = 0; i < runs.size(); i += 6) {
    Run r{runs[i], runs[i + 1], runs[i + 2], runs[i + 3], runs[i + 4], runs[i + 5]};
    TORCH_CHECK(r.dst == covered && r.len > 0, "channel_run_sum: runs must cover the output channels in order");
    for (int64_t s : {r.src_a, r.src_b}) TORCH_CHECK(0 <= s && s < (int64_t)srcs.size(), "channel_run_sum: bad source");
    TORCH_CHECK(r.pos_a >= 0 && r.pos_a + r.len <= srcs[r.src_a].size(3) && r.pos_b >= 0 &&
                    r.pos_b + r.len <= srcs[r.src_b].size(3),
                "channel_run_sum: a run reads past its source's channels");
    covered += r.len;
    rs.push_back(r);
  }
  TORCH_CHECK(covered == width, "channel_run_sum: runs cover ", covered, " of ", width, " output channels");
  at::Tensor b;
  const float* bp = nullptr;
  if (bias.has_value() && bias->defined()) {
    b = bias->contiguous();
    TORCH_CHECK(b.scalar_type() == at::kFloat && b.numel() == width, "channel_run_sum: bias must be (width,) float32");
    bp = b.data_ptr<float>();
  }
  auto out = at::empty({B, H, W, width}, s0.options());
  std::vector<const float*> base(srcs.size());
  std::vector<int64_t> chans(srcs.size()), image(srcs.size());
  for (size_t i = 0; i < srcs.size(); ++i) {
    base[i] = srcs[i].data_ptr<float>();
    chans[i] = srcs[i].size(3);
    image[i] = srcs[i].stride(0);
  }
  float* op = out.data_ptr<float>();
  const int64_t HW = H * W;
  const __m256 zero = _mm256_setzero_ps();
  // ~16 KB of output per task
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(width, 1));
  at::parallel_for(0, B * HW, grain, [&](int64_t begin, int64_t end) {
    for (int64_t px = begin; px < end; ++px) {
      const int64_t n = px / HW, p = px % HW;
      float* o = op + px * width;
      for (const Run& r : rs) {
        const float* a = base[r.src_a] + n * image[r.src_a] + p * chans[r.src_a] + r.pos_a;
        const float* c = base[r.src_b] + n * image[r.src_b] + p * chans[r.src_b] + r.pos_b;
        float* d = o + r.dst;
        const float* bb = bp ? bp + r.dst : nullptr;
        int64_t i = 0;
        for (; i + 8 <= r.len; i += 8) {
          __m256 v = _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(c + i));
          if (bb) v = _mm256_add_ps(v, _mm256_loadu_ps(bb + i));
          if (relu) v = _mm256_max_ps(zero, v);  // NaN passes through, as torch.relu
          _mm256_storeu_ps(d + i, v);
        }
        for (; i < r.len; ++i) {
          float v = a[i] + c[i];
          if (bb) v += bb[i];
          d[i] = relu && v < 0.f ? 0.f : v;
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vitsuite_native, m) {
  m.def("channel_run_sum(Tensor[] srcs, int[] runs, int width, Tensor? bias, bool relu) -> Tensor");
  m.impl("channel_run_sum", c10::DispatchKey::CPU, &channel_run_sum);
}
