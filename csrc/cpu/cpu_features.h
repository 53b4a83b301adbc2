#pragma once
// Run-time CPU feature detection. AVX-512 kernels are compiled with function-level target
// attributes and only called when the running CPU has AVX-512F.
#include <string>

namespace fastnst {
namespace cpu {

inline bool has_avx512() {
#if defined(FASTNST_X86)
  static const bool ok = __builtin_cpu_supports("avx512f") != 0;
  return ok;
#else
  return false;
#endif
}

// Kernels this binary carries.
inline std::string compiled_isa() {
#if defined(FASTNST_X86)
  return "avx512f, generic";
#else
  return "generic";
#endif
}

// Which of them this CPU runs.
inline std::string runtime_isa() { return has_avx512() ? "avx512f" : "generic"; }

}  // namespace cpu
}  // namespace fastnst
