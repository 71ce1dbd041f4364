// DPM-Solver++'s order as the API defines it (SampleRequest.solver_order): 1, 2 or 3, and 0 for
// the default. Torch-free: the engine checks and applies it, the client library checks and
// describes requests with it.
#pragma once

#include <cstdint>

namespace gd {

inline constexpr int64_t kDefaultSolverOrder = 2;
inline constexpr int64_t kMaxSolverOrder = 3;

// The order a request runs at: its own, or the default for 0.
constexpr int64_t EffectiveSolverOrder(int64_t requested) {
  return requested == 0 ? kDefaultSolverOrder : requested;
}

}  // namespace gd
