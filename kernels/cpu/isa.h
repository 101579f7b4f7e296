// Which SIMD path the CPU kernels run. Every fast kernel (int4 matmul,
// attention) has a scalar path that is its exact reference and SIMD paths that
// produce the same bits, chosen at run time so one binary runs on any x86-64.
#pragma once

namespace chatradio::kernels::cpu {

enum class CpuIsa { Scalar, Avx2, Avx512Vnni };

const char* cpu_isa_name(CpuIsa isa);
// True when the path is compiled in and this CPU (and OS) can run it.
bool cpu_isa_supported(CpuIsa isa);
// The best supported path, unless CHATRADIO_CPU_ISA=scalar|avx2|avx512vnni
// names a supported one (read once; an unsupported or unknown request falls
// back to the best path with a warning on stderr).
CpuIsa cpu_default_isa();

#if defined(__x86_64__) || defined(__i386__)
// The CPU has F16C (half <-> float conversions), asked through CPUID.
bool cpu_has_f16c();
#endif

}  // namespace chatradio::kernels::cpu
