#include "core/nn/cpu_features.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace gd {

bool CpuinfoListsBf16(absl::string_view cpuinfo) {
  for (absl::string_view line : absl::StrSplit(cpuinfo, '\n')) {
    if (!absl::ConsumePrefix(&line, "flags")) continue;
    for (absl::string_view flag : absl::StrSplit(line, ' ', absl::SkipWhitespace())) {
      if (flag == "avx512_bf16" || flag == "amx_bf16") return true;
    }
  }
  return false;
}

bool CpuHasBf16Instructions() {
  static const bool has = [] {
    std::ifstream in("/proc/cpuinfo");
    if (!in) return true;
    std::stringstream text;
    text << in.rdbuf();
    return CpuinfoListsBf16(text.str());
  }();
  return has;
}

bool CpuEmulates(Precision precision) {
  return precision == Precision::kBFloat16 && !CpuHasBf16Instructions();
}

}  // namespace gd
