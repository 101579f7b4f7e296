#include "kernels/cpu/isa.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace chatradio::kernels::cpu {

#if defined(__x86_64__) || defined(__i386__)
// F16C through CPUID (leaf 1, ECX bit 29): clang before 16 does not know
// "f16c" in __builtin_cpu_supports, and the fuzz and sanitizer builds use clang 14.
bool cpu_has_f16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
}
#endif

namespace {

#if defined(__x86_64__) || defined(__i386__)
bool cpu_has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
}
bool cpu_has_avx512vnni() {
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni");
}
#endif

}  // namespace

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::Scalar: return "scalar";
    case CpuIsa::Avx2: return "avx2";
    case CpuIsa::Avx512Vnni: return "avx512vnni";
  }
  return "?";
}

bool cpu_isa_supported(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::Scalar: return true;
#if defined(__x86_64__) || defined(__i386__)
    case CpuIsa::Avx2: return cpu_has_avx2();
    case CpuIsa::Avx512Vnni: return cpu_has_avx512vnni();
#else
    default: return false;
#endif
  }
  return false;
}

CpuIsa cpu_default_isa() {
  // Function-local static: decided once, thread-safe, no mutable global.
  static const CpuIsa chosen = [] {
    CpuIsa best = CpuIsa::Scalar;
    for (CpuIsa isa : {CpuIsa::Avx2, CpuIsa::Avx512Vnni}) {
      if (cpu_isa_supported(isa)) best = isa;
    }
    const char* env = std::getenv("CHATRADIO_CPU_ISA");
    if (!env || !*env) return best;
    for (CpuIsa isa : {CpuIsa::Scalar, CpuIsa::Avx2, CpuIsa::Avx512Vnni}) {
      if (std::strcmp(env, cpu_isa_name(isa)) == 0) {
        if (cpu_isa_supported(isa)) return isa;
        std::fprintf(stderr, "chatradio: CHATRADIO_CPU_ISA=%s not supported by this CPU; using %s\n", env,
                     cpu_isa_name(best));
        return best;
      }
    }
    std::fprintf(stderr, "chatradio: unknown CHATRADIO_CPU_ISA=%s (scalar|avx2|avx512vnni); using %s\n",
                 env, cpu_isa_name(best));
    return best;
  }();
  return chosen;
}

}  // namespace chatradio::kernels::cpu
