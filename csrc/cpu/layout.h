#pragma once
// The layout rule every [B, C, L] result of the CPU kernels follows (fastnst/ops/gram.py's
// grad_strides applies the same rule to fake tensors): x's layout when x is channels-innermost
// (a channels_last image viewed as [B, C, H*W]), else contiguous.

#include <ATen/ATen.h>

#include "out_cache.h"

namespace fastnst {
namespace cpu {

inline bool channels_innermost(const at::Tensor& x) {
  const int64_t C = x.size(1);
  return C > 1 && x.stride(1) == 1 && x.stride(2) == C;
}

// A [B, C, L] tensor of x's sizes in the rule's layout, from the large-output cache.
inline at::Tensor rule_output(const at::Tensor& x, at::ScalarType dtype, OutSlot slot) {
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  auto opts = x.options().dtype(dtype);
  if (channels_innermost(x)) return reusable_empty(slot, {B, C, L}, {C * L, 1, C}, opts);
  return reusable_empty(slot, {B, C, L}, {C * L, L, 1}, opts);
}

}  // namespace cpu
}  // namespace fastnst
