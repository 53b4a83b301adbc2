#pragma once
// Run-time CPU feature detection. AVX-512 kernels are compiled with function-level target
// attributes and only called when the running CPU has AVX-512F.
#include <cstdlib>
#include <cstring>
#include <string>

namespace fastnst {
namespace cpu {

// FASTNST_AVX512=0 hides AVX-512 altogether (every kernel takes its generic path), so that
// those paths can be tested, and compared with the AVX-512 ones, on CPUs with it.
inline bool has_avx512() {
#if defined(FASTNST_X86)
  static const bool ok = [] {
    const char* v = std::getenv("FASTNST_AVX512");
    return __builtin_cpu_supports("avx512f") != 0 && !(v && std::strcmp(v, "0") == 0);
  }();
  return ok;
#else
  return false;
#endif
}

// AVX-512 with the byte/word and vector-length extensions (every AVX-512 CPU but Xeon Phi):
// the float16/bfloat16 kernels' masked 16-bit loads and stores need them.
inline bool has_avx512_lowp() {
#if defined(FASTNST_X86)
  static const bool ok =
      has_avx512() && __builtin_cpu_supports("avx512bw") != 0 && __builtin_cpu_supports("avx512vl") != 0;
  return ok;
#else
  return false;
#endif
}

// AVX512-BF16 (vcvtneps2bf16: fp32 -> bf16 rounded to nearest even in one instruction).
// FASTNST_AVX512BF16=0 hides it, so that the integer rounding which CPUs without it take can be
// tested on CPUs with it.
inline bool has_avx512bf16() {
#if defined(FASTNST_X86)
  static const bool ok = [] {
    const char* v = std::getenv("FASTNST_AVX512BF16");
    return has_avx512_lowp() && __builtin_cpu_supports("avx512bf16") != 0 && !(v && std::strcmp(v, "0") == 0);
  }();
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
