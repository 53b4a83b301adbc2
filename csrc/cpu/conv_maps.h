#pragma once
// Index maps of the networks' virtual convolution inputs X = reflect_pad(upsample_nearest(x, up), pad)
// (conv_winograd.cpp, conv_direct.cpp): the kernels read X through them and never form it.

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

}  // namespace cpu
}  // namespace fastnst
