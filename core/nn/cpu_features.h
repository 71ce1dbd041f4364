// What the CPU offers for reduced precision. bf16 on a CPU without bf16 instructions is emulated
// by oneDNN: slower than fp32 (7x for the bundled model on an AVX2 VM, docs/benchmarks.md) and
// less accurate, so gd-server warns when asked for it there and the parity suite skips it.
#pragma once

#include "absl/strings/string_view.h"
#include "core/nn/config.h"

namespace gd {

// Whether a /proc/cpuinfo text lists bf16 instructions (avx512_bf16 or amx_bf16) in its flags.
bool CpuinfoListsBf16(absl::string_view cpuinfo);

// CpuinfoListsBf16 of this machine's /proc/cpuinfo, read once; true where it cannot be read
// (not Linux), so that nothing is claimed about a CPU that was not looked at.
bool CpuHasBf16Instructions();

// Whether this machine's CPU would emulate `precision`: bf16 without bf16 instructions.
bool CpuEmulates(Precision precision);

}  // namespace gd
