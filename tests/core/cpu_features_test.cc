// The bf16-instruction check behind gd-server's warning, on constructed /proc/cpuinfo texts.
#include <gtest/gtest.h>

#include "core/nn/cpu_features.h"

namespace gd {
namespace {

TEST(CpuFeatures, FindsBf16InstructionsAmongTheFlags) {
  EXPECT_TRUE(CpuinfoListsBf16("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 rdpid\n"));
  EXPECT_TRUE(CpuinfoListsBf16("flags\t: sse4_2 amx_bf16 amx_tile\n"));
}

TEST(CpuFeatures, AnAvx2CpuHasNone) {
  // This development VM's flags, abridged: AVX2 and FMA, nothing of AVX-512.
  EXPECT_FALSE(CpuinfoListsBf16("model name\t: AMD EPYC\nflags\t\t: fpu sse4_2 fma avx avx2\n"));
  // Names that contain the words without being the flags do not count.
  EXPECT_FALSE(CpuinfoListsBf16("model name\t: avx512_bf16 lab\nflags\t: avx2 xavx512_bf16\n"));
  EXPECT_FALSE(CpuinfoListsBf16(""));
}

}  // namespace
}  // namespace gd
