#pragma once
// Reuse of large output buffers.
//
// glibc serves allocations of >= 32 MiB (its largest mmap threshold) with a fresh mmap, and the
// first touch of every page then costs a fault: ~4 GB/s on this project's machines, more than
// the kernels themselves take for a large activation. An op that returns a new large tensor
// on every call (a style-transfer step calls the same ops on the same shapes again and again)
// therefore keeps the storage of its last large output per slot and hands it out again once
// no tensor refers to it any more (storage use count 1: only the cache). Each call gets a new
// TensorImpl on that storage, so no autograd metadata is shared. Cost: the cache holds one
// buffer per slot after its last use. FASTNST_REUSE_OUTPUTS=0 turns it off.

#include <ATen/ATen.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace fastnst {
namespace cpu {

// Smaller outputs are not worth a retained buffer... down to a point: glibc also returns the
// top of its heap to the kernel once more than its trim threshold (twice the dynamic mmap
// threshold) is free there, so a training step that frees two 8 MiB activations pays the
// page faults again on the next step. 1 MiB and up are reused.
constexpr int64_t kReuseMinBytes = int64_t{1} << 20;

// kGramWiden / kGramWidenOut: the 16-bit Gram backward's fp32 copies of x and of the gradient
// (temporaries, free again when the call returns). kConv: conv3x3_winograd's outputs.
enum class OutSlot : int {
  kGramBackward = 0, kNormForward, kNormBackward, kMeanStdBackward, kNormPad, kGramWiden, kGramWidenOut, kConv, kCount
};

inline bool reuse_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("FASTNST_REUSE_OUTPUTS");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return enabled;
}

// Bytes a tensor of these sizes and strides spans; 0 when it is empty.
inline int64_t span_bytes(at::IntArrayRef sizes, at::IntArrayRef strides, const at::TensorOptions& opts) {
  int64_t numel = 1, span = 1;
  for (size_t i = 0; i < sizes.size(); ++i) {
    numel *= sizes[i];
    span += (sizes[i] - 1) * strides[i];
  }
  return numel == 0 ? 0 : span * static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(opts.dtype())));
}

inline at::Tensor reusable_empty(OutSlot slot, at::IntArrayRef sizes, at::IntArrayRef strides,
                                 const at::TensorOptions& opts) {
  const int64_t bytes = span_bytes(sizes, strides, opts);
  if (!reuse_enabled() || bytes < kReuseMinBytes || !opts.device().is_cpu())
    return at::empty_strided(sizes, strides, opts);
  static std::mutex mu;
  static std::array<c10::Storage, static_cast<size_t>(OutSlot::kCount)> cache;
  std::lock_guard<std::mutex> lock(mu);
  c10::Storage& st = cache[static_cast<size_t>(slot)];
  if (!st || st.use_count() != 1 || static_cast<int64_t>(st.nbytes()) != bytes) {
    st = at::empty_strided(sizes, strides, opts).storage();
  }
  return at::empty({0}, opts).set_(st, 0, sizes, strides);
}

// reusable_empty with a pool of buffers per slot, for an op called several times per network
// pass with outputs of several sizes, some alive together (a residual chain: each stage's
// output is read while the next one is written): a free buffer of the requested size is handed
// out again; otherwise a new buffer joins the pool while the pool stays within kPoolBytes
// (free buffers of other sizes are dropped to make room). Buffers over kPoolMaxBytes are never
// kept, so that a large image's buffers do not stay allocated between calls.
constexpr int64_t kPoolMaxBytes = int64_t{256} << 20;
constexpr int64_t kPoolBytes = int64_t{512} << 20;
constexpr int kPoolEntries = 8;

inline at::Tensor reusable_empty_pooled(OutSlot slot, at::IntArrayRef sizes, at::IntArrayRef strides,
                                        const at::TensorOptions& opts) {
  const int64_t bytes = span_bytes(sizes, strides, opts);
  if (!reuse_enabled() || bytes < kReuseMinBytes || bytes > kPoolMaxBytes || !opts.device().is_cpu())
    return at::empty_strided(sizes, strides, opts);
  static std::mutex mu;
  static std::array<std::array<c10::Storage, kPoolEntries>, static_cast<size_t>(OutSlot::kCount)> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& pool = cache[static_cast<size_t>(slot)];
  auto is_free = [](const c10::Storage& st) { return st && st.use_count() == 1; };
  for (auto& st : pool)
    if (is_free(st) && static_cast<int64_t>(st.nbytes()) == bytes) return at::empty({0}, opts).set_(st, 0, sizes, strides);
  int64_t held = 0;
  for (auto& st : pool) held += st ? static_cast<int64_t>(st.nbytes()) : 0;
  for (auto& st : pool)  // drop free buffers of other sizes until the new one fits
    if (held + bytes > kPoolBytes && is_free(st)) {
      held -= static_cast<int64_t>(st.nbytes());
      st = c10::Storage();
    }
  if (held + bytes <= kPoolBytes) {
    for (auto& st : pool)
      if (!st) {
        st = at::empty_strided(sizes, strides, opts).storage();
        return at::empty({0}, opts).set_(st, 0, sizes, strides);
      }
    for (auto& st : pool)  // full of entries: replace a free one
      if (is_free(st)) {
        st = c10::Storage();
        st = at::empty_strided(sizes, strides, opts).storage();
        return at::empty({0}, opts).set_(st, 0, sizes, strides);
      }
  }
  return at::empty_strided(sizes, strides, opts);
}

}  // namespace cpu
}  // namespace fastnst
