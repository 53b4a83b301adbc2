#pragma once
// Index maps of the networks' virtual convolution inputs X = reflect_pad(upsample_nearest(x, up), pad)
// (conv_winograd.cpp, conv_direct.cpp): the kernels read X through them and never form it.

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace fastnst {
namespace cpu {

// map[i] = the source index of index i of reflect_pad(upsample(n, up), pad), i < n up + 2 pad.
inline std::vector<int64_t> reflect_upsample_map(int64_t n, int64_t up, int64_t pad) {
  const int64_t m = n * up;
  std::vector<int64_t> map(static_cast<size_t>(m + 2 * pad));
  for (int64_t i = 0; i < m + 2 * pad; ++i) {
    int64_t u = i - pad;
    if (u < 0) u = -u;
    if (u >= m) u = 2 * (m - 1) - u;
    map[static_cast<size_t>(i)] = u / up;
  }
  return map;
}

// The checks every such op makes of the virtual input's geometry (pad smaller than the
// upsampled sides, X at least k x k) and of its bias (None or float32 [Co] on x's device,
// returned contiguous).
inline void check_virtual_input(const char* op, int64_t Hx, int64_t Wx, int64_t upsample, int64_t pad, int64_t k) {
  TORCH_CHECK(Hx >= 1 && Wx >= 1 && pad < Hx * upsample && pad < Wx * upsample, op, ": reflection padding ", pad,
              " must be smaller than the (upsampled) height and width ", Hx * upsample, " x ", Wx * upsample);
  const int64_t Hv = Hx * upsample + 2 * pad, Wv = Wx * upsample + 2 * pad;
  TORCH_CHECK(Hv >= k && Wv >= k, op, ": the (upsampled, padded) input must be at least ", k, " x ", k, ", got ", Hv,
              " x ", Wv);
}

inline at::Tensor checked_bias(const char* op, const c10::optional<at::Tensor>& bias0, int64_t Co, const at::Tensor& x) {
  if (!bias0.has_value() || !bias0->defined()) return at::Tensor();
  at::Tensor bias = bias0->contiguous();
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == Co && bias.scalar_type() == at::kFloat, op,
              ": bias must be float32 [", Co, "], got ", bias.scalar_type(), " ", bias.sizes());
  TORCH_CHECK(bias.device() == x.device(), op, ": bias must be on x's device");
  return bias;
}

}  // namespace cpu
}  // namespace fastnst
