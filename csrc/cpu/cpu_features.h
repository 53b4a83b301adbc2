#pragma once
// Run-time CPU feature detection and the ISA levels the CPU kernels dispatch on.
//
// Levels, each including the ones below it:
//   generic     baseline x86-64 (or any other CPU): fastnst's portable loops, ATen/MKL GEMMs
//   avx2        AVX2 + FMA: the Gram's fp32 SYRK and GEMM on AVX2 tiles (gemm_avx2.h); the
//               norm and style-swap ops run their generic loops
//   avx512      AVX-512 F + BW + VL (every AVX-512 CPU but Xeon Phi): fastnst's own fp32 GEMM,
//               norm and style-swap kernels, and their 16-bit twins
//   avx512bf16  + AVX512-BF16: bf16 pairs multiplied by vdpbf16ps (fp32 accumulation),
//               vcvtneps2bf16 rounding, bf16 GEMMs to oneDNN
//   amx         + AMX-BF16 tiles: bf16 GEMMs to oneDNN, which runs them on AMX (detected where
//               the compiler's __builtin_cpu_supports knows "amx-bf16": GCC 11 and later)
// Kernels are compiled with function-level target attributes and only called when the level in
// use includes their ISA. The level in use is the CPU's, or lower where the environment asks:
//   FASTNST_CPU_ISA=generic|avx2|avx512|avx512bf16|amx   (a level the CPU lacks is an error,
//                                                         raised by every op; never a crash)
//   FASTNST_AVX512=0       = FASTNST_CPU_ISA=avx2 (kept for scripts that used it)
//   FASTNST_AVX512BF16=0   hides AVX512-BF16 only (and AMX with it)
// so that every path this CPU can run is tested, and compared, on it.
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace fastnst {
namespace cpu {

enum class Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3, kAmx = 4 };

inline const char* isa_name(Isa i) {
  switch (i) {
    case Isa::kGeneric: return "generic";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx512Bf16: return "avx512bf16";
    default: return "amx";
  }
}

// The highest level this CPU has.
inline Isa cpu_isa() {
#if defined(FASTNST_X86)
  static const Isa isa = [] {
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) return Isa::kGeneric;
    if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl")))
      return Isa::kAvx2;
    if (!__builtin_cpu_supports("avx512bf16")) return Isa::kAvx512;
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
    if (__builtin_cpu_supports("amx-bf16")) return Isa::kAmx;
#endif
    return Isa::kAvx512Bf16;
  }();
  return isa;
#else
  return Isa::kGeneric;
#endif
}

// The level in use and, when the environment asked for one this CPU cannot run (or an unknown
// name), the error every op raises.
struct IsaChoice {
  Isa isa;
  std::string error;
};

inline const IsaChoice& isa_choice() {
  static const IsaChoice choice = [] {
    const Isa have = cpu_isa();
    IsaChoice c{have, ""};
    if (const char* v = std::getenv("FASTNST_CPU_ISA"); v && *v) {
      const std::string s(v);
      int found = -1;
      for (int i = 0; i <= static_cast<int>(Isa::kAmx); ++i)
        if (s == isa_name(static_cast<Isa>(i))) found = i;
      if (found < 0) {
        c.error = "FASTNST_CPU_ISA must be one of generic, avx2, avx512, avx512bf16, amx; got '" + s + "'";
      } else if (static_cast<Isa>(found) > have) {
        c.error = "FASTNST_CPU_ISA=" + s + " asks for a path this CPU cannot run: it has " +
                  std::string(isa_name(have)) + " at most";
      } else {
        c.isa = static_cast<Isa>(found);
      }
    }
    const char* a = std::getenv("FASTNST_AVX512");
    if (a && std::strcmp(a, "0") == 0 && c.isa > Isa::kAvx2) c.isa = Isa::kAvx2;
    const char* b = std::getenv("FASTNST_AVX512BF16");
    if (b && std::strcmp(b, "0") == 0 && c.isa > Isa::kAvx512) c.isa = Isa::kAvx512;
    return c;
  }();
  return choice;
}

// Called at the entry of every CPU op: a bad FASTNST_CPU_ISA is a clear error there.
inline void check_isa() {
  const IsaChoice& c = isa_choice();
  TORCH_CHECK(c.error.empty(), "fastnst: ", c.error);
}

inline Isa isa() { return isa_choice().isa; }

// AVX-512 F/BW/VL: fastnst's own vector kernels (fp32 and the 16-bit formats).
inline bool has_avx512() { return isa() >= Isa::kAvx512; }
inline bool has_avx512_lowp() { return has_avx512(); }

// AVX512-BF16 (vdpbf16ps, vcvtneps2bf16).
inline bool has_avx512bf16() { return isa() >= Isa::kAvx512Bf16; }

// AMX-BF16 tiles (used through oneDNN).
inline bool has_amx() { return isa() >= Isa::kAmx; }

// Kernels this binary carries.
inline std::string compiled_isa() {
#if defined(FASTNST_X86)
  return "avx512, avx512bf16, avx2, generic";
#else
  return "generic";
#endif
}

// The level in use.
inline std::string runtime_isa() { return isa_name(isa()); }

}  // namespace cpu
}  // namespace fastnst
