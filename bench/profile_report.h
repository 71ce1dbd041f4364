// gd-bench --profile: one table per profiled request, from an OpProfile of the engine running
// it. Rows are operator classes, columns the engine's phases (UNet forward, classifier forward,
// the classifier's input gradient, the sampler's update, the rest), in milliseconds per sampling
// step, with each class's FLOPs, achieved GFLOP/s and fraction of the matrix-product peak.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/nn/op_profile.h"

namespace gd::bench {

struct ProfileRun {
  std::string title;     // e.g. "batch 8, DDIM ddim25, scale 1"
  int64_t steps = 0;     // engine iterations the request took
  double seconds = 0;    // wall time of the request
  double peak_gflops = 0;
};

// The table as aligned text (for a terminal) and as Markdown (for docs/benchmarks.md).
std::string FormatProfileText(const ProfileRun& run, const OpProfile::Table& table);
std::string FormatProfileMarkdown(const ProfileRun& run, const OpProfile::Table& table);

// The `count` operators (by name and phase) that took the most exclusive time, per step, with
// their class and share of the profiled time: what a class's cell is made of.
std::string FormatTopOperatorsText(const ProfileRun& run,
                                   const std::vector<OpProfile::Operator>& operators, size_t count);
std::string FormatTopOperatorsMarkdown(const ProfileRun& run,
                                       const std::vector<OpProfile::Operator>& operators,
                                       size_t count);

}  // namespace gd::bench
